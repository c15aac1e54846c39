"""TCP serving on the asyncio loop: RFC 7766 framing, pipelined queries answered as they complete.

Connections are bounded so that no one address can deny TCP to the others (:class:`Connections`): at
most ``dns.tcp_max_per_client`` per client address; at most ``dns.tcp_max_connections`` in all, where a
new connection evicts the one idle longest; and while more than 75% of that cap is used, the idle timeout
between queries (``dns.tcp_idle_timeout``) drops to 1.5 s. Admission and answering are the UDP path's
(:mod:`filterproxy.dns.admission`, :mod:`filterproxy.dns.answering`); a rate-limited TCP query is always
answered REFUSED (no spoofing).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import struct
import time
from typing import TYPE_CHECKING, Protocol

from filterproxy import metrics
from filterproxy.dns import wire
from filterproxy.dns.admission import admit, limited, over_limit
from filterproxy.dns.answering import Tally, failed_reply, handle, pack
from filterproxy.dns.deferred import Deferred, LoopReactor, to_future
from filterproxy.dns.responses import Reply, servfail

if TYPE_CHECKING:
    from filterproxy.dns.chain import Chain
    from filterproxy.dns.clients import ClientState

log = logging.getLogger("filterproxy.dns")

_U16 = struct.Struct(">H")
MAX_INFLIGHT = 32  # queries of one connection waiting for an upstream before it stops reading


class _Closable(Protocol):
    def close(self) -> None: ...


class Connections:
    """The open TCP connections, their caps, and which of them wait for a query (idle, oldest first)."""

    PRESSURE = 0.75  # share of the global cap above which idle connections get PRESSURE_IDLE
    PRESSURE_IDLE = 1.5  # seconds a connection may wait for its next query under pressure
    EVICT_MIN_IDLE = 0.5  # a connection idle for less is not evicted (its first query may be on its way)

    def __init__(self, max_connections: int, max_per_client: int, idle_timeout: float) -> None:
        self.max_connections = max_connections
        self.max_per_client = max_per_client
        self.idle_timeout = idle_timeout
        self.open: dict[_Closable, str] = {}  # connection → client address
        self.per_client: dict[str, int] = {}
        self.idle: dict[_Closable, float] = {}  # connection → waiting since; insertion order is age order

    def add(self, conn: _Closable, ip: str, now: float) -> str | None:
        """Take a new connection: None when admitted, else why not (a ``DNS_REFUSED`` reason)."""
        if self.per_client.get(ip, 0) >= self.max_per_client:
            return "tcp-client-limit"
        if len(self.open) >= self.max_connections and not self._evict(now):
            return "tcp-limit"
        self.open[conn] = ip
        self.per_client[ip] = self.per_client.get(ip, 0) + 1
        if self.pressed():  # those idle past the short timeout go now (their own waits began before)
            cutoff = now - self.timeout()
            while self.idle:
                oldest, since = next(iter(self.idle.items()))
                if since > cutoff:
                    break
                self._close(oldest)
        return None

    def remove(self, conn: _Closable) -> None:
        """Forget a connection (idempotent: an evicted one is removed again when its handler ends)."""
        self.idle.pop(conn, None)
        ip = self.open.pop(conn, None)
        if ip is not None:
            n = self.per_client[ip] - 1
            if n:
                self.per_client[ip] = n
            else:
                del self.per_client[ip]

    def waiting(self, conn: _Closable, now: float) -> float:
        """``conn`` waits for its next query from ``now``; returns the idle timeout to wait with."""
        self.idle.pop(conn, None)
        self.idle[conn] = now
        return self.timeout()

    def busy(self, conn: _Closable) -> None:
        self.idle.pop(conn, None)

    def pressed(self) -> bool:
        return len(self.open) > self.max_connections * self.PRESSURE

    def timeout(self) -> float:
        return min(self.idle_timeout, self.PRESSURE_IDLE) if self.pressed() else self.idle_timeout

    def _evict(self, now: float) -> bool:
        """Close the connection idle longest, if it has been idle EVICT_MIN_IDLE; True when one went."""
        for conn, since in self.idle.items():
            if now - since < self.EVICT_MIN_IDLE:
                return False
            self._close(conn)
            return True
        return False

    def _close(self, conn: _Closable) -> None:
        self.remove(conn)
        try:
            conn.close()
        except (OSError, RuntimeError):  # already gone, or the loop is closing
            pass


class TcpListener:
    """The TCP side of one address."""

    def __init__(
        self,
        chain: Chain,
        tally: Tally,
        *,
        idle_timeout: float = 10.0,
        max_connections: int = 256,
        max_per_client: int = 16,
        deadline: float = 8.0,
        protocol: str = "tcp",
    ) -> None:
        self.chain = chain
        self.tally = tally
        self.protocol = protocol  # the metrics' protocol label: tcp, or dot over TLS (filterproxy.dns.dot)
        self.conns = Connections(max_connections, max_per_client, idle_timeout)
        self.deadline = deadline
        self.loop: asyncio.AbstractEventLoop | None = None
        self.reactor: LoopReactor | None = None
        self._server: asyncio.base_events.Server | None = None

    async def start(
        self,
        host: str,
        port: int,
        *,
        sock: socket.socket | None = None,
        reuse_port: bool = False,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        """Listen on ``sock`` (bound) when given, else on ``host:port``; over TLS with ``tls``."""
        self.loop = asyncio.get_running_loop()
        self.reactor = LoopReactor(self.loop)
        # a TLS handshake gets the idle timeout: a client that connects and stays silent holds no more
        hs = self.conns.idle_timeout if tls is not None else None
        if sock is not None:
            self._server = await asyncio.start_server(
                self._client, sock=sock, backlog=256, ssl=tls, ssl_handshake_timeout=hs
            )
        else:
            self._server = await asyncio.start_server(
                self._client,
                host,
                port,
                reuse_address=True,
                reuse_port=reuse_port or None,
                backlog=256,
                ssl=tls,
                ssl_handshake_timeout=hs,
            )

    @property
    def port(self) -> int:
        """The bound port (after :meth:`start`)."""
        assert self._server is not None and self._server.sockets
        return int(self._server.sockets[0].getsockname()[1])

    def close(self) -> None:
        if self._server is not None:
            self._server.close()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        ip = peer[0] if peer else ""
        refused = self.conns.add(writer, ip, time.monotonic())
        if refused is not None:
            metrics.DNS_REFUSED.inc(refused)
            writer.close()
            return
        inflight: set[asyncio.Task] = set()
        try:
            await self._serve(reader, writer, ip, inflight)
        except (ConnectionError, OSError):
            pass
        except asyncio.CancelledError:  # shutdown; ended quietly (3.11's stream callback logs a cancelled handler)
            pass
        finally:
            self.conns.remove(writer)
            for t in inflight:
                t.cancel()
            try:
                writer.close()
            except Exception:
                pass

    async def _serve(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, ip: str, inflight: set[asyncio.Task]
    ) -> None:
        """Read queries until the client goes or idles out; answer each as soon as it is ready."""
        clients = self.chain.clients
        conns = self.conns
        while True:
            try:
                hdr = await asyncio.wait_for(reader.readexactly(2), conns.waiting(writer, time.monotonic()))
                conns.busy(writer)
                data = await asyncio.wait_for(reader.readexactly(_U16.unpack(hdr)[0]), conns.timeout())
            except (TimeoutError, asyncio.IncompleteReadError, ConnectionError, OSError):
                break
            now = time.monotonic()
            st = clients.table.get(ip) or clients.state(ip, now)
            out: bytes | tuple[wire.Query, Deferred] | None
            if over_limit(st, int(now)):
                out = limited(st, data, always_answer=True)
            else:
                try:
                    out = self._query(data, st, now)
                except Exception:
                    metrics.DNS_ERRORS.inc("exception")
                    log.exception("dns: error handling a %s query; answered SERVFAIL", self.protocol)
                    out = wire.header_reply(data, wire.SERVFAIL)
            if out is None:
                continue
            if isinstance(out, bytes):
                writer.write(_U16.pack(len(out)) + out)
            else:  # waits for an upstream: answer when ready, keep reading (pipelining)
                if len(inflight) >= MAX_INFLIGHT:
                    await asyncio.wait(inflight, return_when=asyncio.FIRST_COMPLETED)
                t = asyncio.ensure_future(self._finish(out, writer, st))
                inflight.add(t)
                t.add_done_callback(inflight.discard)
            await writer.drain()
        if inflight:
            await asyncio.wait(inflight, timeout=self.deadline)

    def _query(self, data: bytes, st: ClientState, now: float) -> bytes | tuple[wire.Query, Deferred] | None:
        q, early = admit(data, st)
        if q is None:
            return early
        r = handle(self.chain, q, st, self.protocol, self.reactor, now)
        if type(r) is Reply:
            return self._answer(q, r, st, now)
        return (q, r)

    def _answer(self, q: wire.Query, r: Reply, st: ClientState, now: float) -> bytes:
        msg, _ = pack(q, r, now, 65535)
        group = st.group
        assert group is not None  # admission.admit refuses clients without a group
        self.tally.count(group, q.qtype, r, self.protocol)
        self.tally.record(q, r, st, now, self.chain.decisions)
        return msg

    async def _finish(
        self, pending: tuple[wire.Query, Deferred], writer: asyncio.StreamWriter, st: ClientState
    ) -> None:
        q, d = pending
        loop = self.loop
        assert loop is not None  # start() set it before serving
        try:
            r = await asyncio.wait_for(to_future(d, loop), self.deadline)
        except TimeoutError:
            metrics.DNS_ERRORS.inc("timeout")
            r = servfail(time.monotonic(), (wire.EDE_NETWORK_ERROR, "timeout"))
        except Exception as exc:
            r = failed_reply(q, exc, time.monotonic())
        try:
            msg = self._answer(q, r, st, time.monotonic())
        except Exception:
            metrics.DNS_ERRORS.inc("exception")
            log.exception("dns: error packing a %s reply; answered SERVFAIL", self.protocol)
            fallback = wire.header_reply(q.data, wire.SERVFAIL)
            assert fallback is not None  # q was parsed: its header is usable
            msg = fallback
        if not writer.is_closing():
            writer.write(_U16.pack(len(msg)) + msg)
