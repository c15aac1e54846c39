"""TCP serving on the asyncio loop: RFC 7766 framing, pipelined queries answered as they complete.

``dns.tcp_idle_timeout`` between queries, at most ``dns.tcp_max_connections`` at once (new ones are
closed at once beyond that). Admission and answering are the UDP path's (:mod:`filterproxy.dns.admission`,
:mod:`filterproxy.dns.answering`); a rate-limited TCP query is always answered REFUSED (no spoofing).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
import time
from typing import TYPE_CHECKING

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


class TcpListener:
    """The TCP side of one address."""

    def __init__(self, chain: Chain, tally: Tally, *, idle_timeout: float = 10.0, max_connections: int = 256,
                 deadline: float = 8.0) -> None:
        self.chain = chain
        self.tally = tally
        self.idle_timeout = idle_timeout
        self.max_connections = max_connections
        self.deadline = deadline
        self.loop: asyncio.AbstractEventLoop | None = None
        self.reactor: LoopReactor | None = None
        self._server: asyncio.base_events.Server | None = None
        self._conns = 0

    async def start(self, host: str, port: int, *, sock: socket.socket | None = None, reuse_port: bool = False) -> None:
        """Listen on ``sock`` (bound) when given, else on ``host:port``."""
        self.loop = asyncio.get_running_loop()
        self.reactor = LoopReactor(self.loop)
        if sock is not None:
            self._server = await asyncio.start_server(self._client, sock=sock, backlog=256)
        else:
            self._server = await asyncio.start_server(self._client, host, port, reuse_address=True,
                                                      reuse_port=reuse_port or None, backlog=256)

    def close(self) -> None:
        if self._server is not None:
            self._server.close()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._conns >= self.max_connections:
            metrics.DNS_REFUSED.inc("tcp-limit")
            writer.close()
            return
        self._conns += 1
        inflight: set[asyncio.Task] = set()
        try:
            peer = writer.get_extra_info("peername")
            await self._serve(reader, writer, peer[0] if peer else "", inflight)
        except (ConnectionError, OSError):
            pass
        finally:
            self._conns -= 1
            for t in inflight:
                t.cancel()
            try:
                writer.close()
            except Exception:
                pass

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, ip: str,
                     inflight: set[asyncio.Task]) -> None:
        """Read queries until the client goes or idles out; answer each as soon as it is ready."""
        clients = self.chain.clients
        while True:
            try:
                hdr = await asyncio.wait_for(reader.readexactly(2), self.idle_timeout)
                data = await asyncio.wait_for(reader.readexactly(_U16.unpack(hdr)[0]), self.idle_timeout)
            except (TimeoutError, asyncio.IncompleteReadError, ConnectionError, OSError):
                break
            now = time.monotonic()
            st = clients.table.get(ip) or clients.state(ip, now)
            if over_limit(st, int(now)):
                out = limited(st, data, always_answer=True)
            else:
                try:
                    out = self._query(data, st, now)
                except Exception:
                    metrics.DNS_ERRORS.inc("exception")
                    log.exception("dns: error handling a tcp query; answered SERVFAIL")
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
        r = handle(self.chain, q, st, "tcp", self.reactor, now)
        if type(r) is Reply:
            return self._answer(q, r, st, now)
        return (q, r)

    def _answer(self, q: wire.Query, r: Reply, st: ClientState, now: float) -> bytes:
        msg, _ = pack(q, r, now, 65535)
        self.tally.count(st.group, q.qtype, r, "tcp")
        return msg

    async def _finish(self, pending: tuple[wire.Query, Deferred], writer: asyncio.StreamWriter,
                      st: ClientState) -> None:
        q, d = pending
        try:
            r = await asyncio.wait_for(to_future(d, self.loop), self.deadline)
        except TimeoutError:
            metrics.DNS_ERRORS.inc("timeout")
            r = servfail(time.monotonic(), (wire.EDE_NETWORK_ERROR, "timeout"))
        except Exception as exc:
            r = failed_reply(q, exc, time.monotonic())
        try:
            msg = self._answer(q, r, st, time.monotonic())
        except Exception:
            metrics.DNS_ERRORS.inc("exception")
            log.exception("dns: error packing a tcp reply; answered SERVFAIL")
            msg = wire.header_reply(q.data, wire.SERVFAIL)
        if not writer.is_closing():
            writer.write(_U16.pack(len(msg)) + msg)
