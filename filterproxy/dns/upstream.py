"""Upstream resolvers: plain UDP (retried over TCP when truncated), TCP, DNS-over-TLS, DNS-over-HTTPS.

Addresses (``upstreams.servers``, ``upstreams.conditional``, ``--upstream``)::

    9.9.9.9            9.9.9.9:53          udp://[2620:fe::fe]:53     plain DNS (UDP, TCP on truncation)
    tcp://10.0.0.1:53                                                  TCP only
    tls://dns.quad9.net         tls://dns.quad9.net:853#9.9.9.9        DNS-over-TLS (#IP: where to connect)
    https://dns.quad9.net/dns-query     https://host/dns-query{?dns}   DNS-over-HTTPS (POST; GET with {?dns})

Every query to an upstream is our own (random ID, lower-case name, EDNS 1232, no client cookie or
subnet): nothing of the client leaks. A reply must come from the address asked, carry our ID and our
question.

:class:`UpstreamGroup` applies the strategy — ``failover`` (in order) or ``parallel`` (the two best at
once, first good reply wins) — and tracks health: an upstream that times out or errs is skipped for a
back-off that doubles up to 5 s; when every upstream is down, queries get SERVFAIL at once instead of
waiting for timeouts, and the first upstream whose back-off has passed is probed by the next query.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import select
import socket
import ssl
import struct
import time
from collections import deque
from urllib.parse import urlsplit

from filterproxy import metrics
from filterproxy.config import parse_hostport
from filterproxy.dns import wire
from filterproxy.dns.deferred import Deferred, LoopReactor, to_future

log = logging.getLogger("filterproxy.dns")

BACKOFF_START = 0.5
BACKOFF_MAX = 5.0
_U16 = struct.Struct(">H")


class UpstreamError(Exception):
    """One exchange failed; ``kind`` is a metric label (timeout, network, tls, protocol, http, refused...)."""

    def __init__(self, kind: str, message: str = ""):
        super().__init__(message or kind)
        self.kind = kind


class AllUpstreamsFailed(Exception):
    """No upstream answered: ``down`` when none was even tried (all backing off)."""

    def __init__(self, down: bool, last: str = ""):
        super().__init__(last or ("all upstreams down" if down else "all upstreams failed"))
        self.down = down


# ---------------------------------------------------------------- single upstreams

class Upstream:
    """One upstream server with its health state."""

    proto = "udp"

    def __init__(self, name: str):
        self.name = name
        self.fails = 0
        self.down_until = 0.0

    def healthy(self, now: float) -> bool:
        return self.down_until <= now

    def ok(self) -> None:
        if self.fails:
            log.info("upstream %s is answering again", self.name)
        self.fails = 0
        self.down_until = 0.0

    def failed(self, now: float) -> None:
        self.fails += 1
        backoff = min(BACKOFF_MAX, BACKOFF_START * (2 ** (self.fails - 1)))
        if self.fails == 1 or self.fails % 20 == 0:
            log.warning("upstream %s failed (%d in a row); skipping it for %.1fs", self.name, self.fails, backoff)
        self.down_until = now + backoff

    async def exchange(self, query: bytes, timeout: float) -> bytes:  # pragma: no cover - abstract
        raise NotImplementedError

    async def close(self) -> None:
        pass


def _check_reply(query: bytes, reply: bytes) -> None:
    if len(reply) < 12:
        raise UpstreamError("protocol", "reply shorter than a header")
    if reply[:2] != query[:2] or not reply[2] & 0x80:
        raise UpstreamError("protocol", "reply ID or QR mismatch")


def _question_matches(query: bytes, reply: bytes) -> bool:
    qd = _U16.unpack_from(reply, 4)[0]
    if qd != 1:
        return False
    end = 12
    n = len(query)
    while end < n and query[end]:
        end += 1 + query[end]
    end += 5
    # upstreams echo the question as asked (ours is lower case); 0x20-style case changes take the long way
    return reply[12:end] == query[12:end] or wire.lower(reply[12:end]) == wire.lower(query[12:end])


class _UdpSocket:
    """A connected UDP socket with the queries in flight on it (ID → future)."""

    __slots__ = ("sock", "pending", "uses", "loop")

    def __init__(self, family: int, addr: tuple, loop: asyncio.AbstractEventLoop, on_readable):
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        self.sock.setblocking(False)
        self.sock.connect(addr)
        self.pending: dict[int, tuple[bytes, asyncio.Future]] = {}
        self.uses = 0
        self.loop = loop
        loop.add_reader(self.sock.fileno(), on_readable, self)

    def close(self) -> None:
        try:
            self.loop.remove_reader(self.sock.fileno())
        except Exception:
            pass
        self.sock.close()
        for _q, fut in self.pending.values():
            if not fut.done():
                fut.set_exception(UpstreamError("network", "socket closed"))
        self.pending.clear()


class UdpUpstream(Upstream):
    """Plain DNS over UDP; a truncated reply is asked again over TCP.

    A few connected sockets are shared by the queries in flight (matched by ID and question); each is
    replaced after 2,000 queries so the source port keeps changing (spoofing resistance).
    """

    POOL = 4
    REUSE = 2000

    def __init__(self, host: str, port: int, name: str | None = None):
        super().__init__(name or (f"{host}:{port}" if ":" not in host else f"[{host}]:{port}"))
        self.addr = (host, port)
        self.family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._socks: list[_UdpSocket] = []
        self._next = 0
        self.tcp = TcpUpstream(host, port, name=self.name)

    def _socket(self) -> _UdpSocket:
        loop = asyncio.get_running_loop()
        if len(self._socks) < self.POOL:
            s = _UdpSocket(self.family, self.addr, loop, self._readable)
            self._socks.append(s)
            return s
        self._next = (self._next + 1) % self.POOL
        s = self._socks[self._next]
        if s.uses >= self.REUSE and not s.pending:
            s.close()
            s = self._socks[self._next] = _UdpSocket(self.family, self.addr, loop, self._readable)
        return s

    def _readable(self, s: _UdpSocket) -> None:
        for _ in range(64):
            try:
                data = s.sock.recv(65535)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # ICMP port unreachable → ECONNREFUSED on a connected socket
                for _q, fut in list(s.pending.values()):
                    if not fut.done():
                        fut.set_exception(UpstreamError("refused" if isinstance(exc, ConnectionRefusedError)
                                                        else "network", str(exc)))
                s.pending.clear()
                return
            if len(data) < 12:
                continue
            item = s.pending.get(_U16.unpack_from(data)[0])
            if item is None:
                continue
            query, fut = item
            if not data[2] & 0x80 or not _question_matches(query, data):
                continue  # not our reply: keep waiting for the real one
            s.pending.pop(_U16.unpack_from(data)[0], None)
            if not fut.done():
                fut.set_result(data)

    async def exchange(self, query: bytes, timeout: float) -> bytes:
        s = self._socket()
        qid = secrets.randbits(16)
        while qid in s.pending:
            qid = secrets.randbits(16)
        q = _U16.pack(qid) + query[2:]
        fut = asyncio.get_running_loop().create_future()
        s.pending[qid] = (q, fut)
        s.uses += 1
        try:
            s.sock.send(q)
            reply = await asyncio.wait_for(fut, timeout)
        except asyncio.TimeoutError:
            raise UpstreamError("timeout", f"no reply within {timeout:.1f}s") from None
        except ConnectionRefusedError as exc:
            raise UpstreamError("refused", str(exc)) from None
        except OSError as exc:
            raise UpstreamError("network", str(exc)) from None
        finally:
            if s.pending.get(qid, (None, None))[1] is fut:
                s.pending.pop(qid, None)
        if reply[2] & 0x02:  # TC: the full answer needs TCP (RFC 7766)
            metrics.DNS_UPSTREAM_ERRORS.inc(self.name, "truncated")
            return query[:2] + (await self.tcp.exchange(query, timeout))[2:]
        return query[:2] + reply[2:]

    async def close(self) -> None:
        for s in self._socks:
            s.close()
        self._socks.clear()
        await self.tcp.close()


class _StreamConn:
    """One TCP/TLS connection carrying pipelined queries (RFC 7766 §6.2.1.1), replies matched by ID."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader = reader
        self.writer = writer
        self.pending: dict[int, asyncio.Future] = {}
        self.closed = False
        self.task = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        err: Exception = UpstreamError("network", "connection closed")
        try:
            while True:
                hdr = await self.reader.readexactly(2)
                data = await self.reader.readexactly(_U16.unpack(hdr)[0])
                if len(data) < 12:
                    raise UpstreamError("protocol", "short reply")
                fut = self.pending.pop(_U16.unpack_from(data)[0], None)
                if fut is not None and not fut.done():
                    fut.set_result(data)
        except (asyncio.IncompleteReadError, ConnectionError, OSError) as exc:
            err = UpstreamError("network", f"connection lost: {exc}")
        except UpstreamError as exc:
            err = exc
        except asyncio.CancelledError:
            pass
        finally:
            self.closed = True
            for fut in self.pending.values():
                if not fut.done():
                    fut.set_exception(err)
            self.pending.clear()
            try:
                self.writer.close()
            except Exception:
                pass


class TcpUpstream(Upstream):
    """DNS over TCP, or over TLS (DoT, RFC 7858) when ``tls`` is given; one reused connection."""

    proto = "tcp"

    def __init__(self, host: str, port: int, *, tls: ssl.SSLContext | None = None, server_name: str | None = None,
                 name: str | None = None):
        super().__init__(name or f"{'tls' if tls else 'tcp'}://{host}:{port}")
        self.host, self.port = host, port
        self.tls = tls
        self.server_name = server_name
        self.proto = "tls" if tls else "tcp"
        self._conn: _StreamConn | None = None
        self._lock: asyncio.Lock | None = None

    async def _connection(self, timeout: float) -> _StreamConn:
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            c = self._conn
            if c is not None and not c.closed:
                return c
            try:
                reader, writer = await asyncio.wait_for(asyncio.open_connection(
                    self.host, self.port, ssl=self.tls, server_hostname=self.server_name if self.tls else None),
                    timeout)
            except asyncio.TimeoutError:
                raise UpstreamError("timeout", "connect timed out") from None
            except ssl.SSLError as exc:
                raise UpstreamError("tls", str(exc)) from None
            except ConnectionRefusedError as exc:
                raise UpstreamError("refused", str(exc)) from None
            except OSError as exc:
                raise UpstreamError("network", str(exc)) from None
            self._conn = _StreamConn(reader, writer)
            return self._conn

    async def exchange(self, query: bytes, timeout: float) -> bytes:
        deadline = time.monotonic() + timeout
        for attempt in (0, 1):
            reused = self._conn is not None and not self._conn.closed
            c = await self._connection(max(0.05, deadline - time.monotonic()))
            qid = secrets.randbits(16)
            while qid in c.pending:
                qid = secrets.randbits(16)
            q = _U16.pack(qid) + query[2:]
            fut = asyncio.get_running_loop().create_future()
            c.pending[qid] = fut
            try:
                c.writer.write(_U16.pack(len(q)) + q)
                reply = await asyncio.wait_for(fut, max(0.05, deadline - time.monotonic()))
            except asyncio.TimeoutError:
                c.pending.pop(qid, None)
                raise UpstreamError("timeout", f"no reply within {timeout:.1f}s") from None
            except (UpstreamError, OSError) as exc:
                c.pending.pop(qid, None)
                if attempt == 0 and reused:  # the server closed an idle connection: once more, fresh
                    continue
                if isinstance(exc, UpstreamError):
                    raise
                raise UpstreamError("network", str(exc)) from None
            if not _question_matches(q, reply):
                raise UpstreamError("protocol", "reply to another question")
            return query[:2] + reply[2:]
        raise UpstreamError("network", "connection lost")

    async def close(self) -> None:
        c = self._conn
        if c is not None:
            c.task.cancel()
            try:
                c.writer.close()
            except Exception:
                pass
        self._conn = None


class HttpsUpstream(Upstream):
    """DNS-over-HTTPS (RFC 8484) with ``requests`` in a small thread pool (no extra dependency).

    POST ``application/dns-message`` by default; a URL template with ``{?dns}`` selects GET. The query ID
    is 0 on the wire (RFC 8484 §4.1, cache friendly) and restored on the reply.
    """

    proto = "doh"
    _executor = None

    def __init__(self, url: str, name: str | None = None):
        super().__init__(name or url.replace("{?dns}", ""))
        self.get = "{?dns}" in url
        self.url = url.replace("{?dns}", "")
        self._session = None

    def _post(self, body: bytes, timeout: float) -> bytes:
        import requests

        if self._session is None:
            self._session = requests.Session()
            self._session.headers.update({"Accept": "application/dns-message", "User-Agent": "filterproxy"})
        try:
            if self.get:
                import base64

                dns = base64.urlsafe_b64encode(body).rstrip(b"=").decode("ascii")
                r = self._session.get(self.url, params={"dns": dns}, timeout=timeout)
            else:
                r = self._session.post(self.url, data=body, timeout=timeout,
                                       headers={"Content-Type": "application/dns-message"})
        except requests.exceptions.SSLError as exc:
            raise UpstreamError("tls", str(exc)) from None
        except requests.exceptions.Timeout:
            raise UpstreamError("timeout", f"no reply within {timeout:.1f}s") from None
        except requests.exceptions.RequestException as exc:
            raise UpstreamError("network", str(exc)) from None
        if r.status_code != 200:
            raise UpstreamError("http", f"HTTP {r.status_code}")
        if not r.headers.get("Content-Type", "").startswith("application/dns-message"):
            raise UpstreamError("http", f"unexpected content type {r.headers.get('Content-Type')!r}")
        return r.content

    async def exchange(self, query: bytes, timeout: float) -> bytes:
        from concurrent.futures import ThreadPoolExecutor

        if HttpsUpstream._executor is None:
            HttpsUpstream._executor = ThreadPoolExecutor(max_workers=4, thread_name_prefix="filterproxy-doh")
        body = b"\x00\x00" + query[2:]
        loop = asyncio.get_running_loop()
        try:
            reply = await asyncio.wait_for(loop.run_in_executor(self._executor, self._post, body, timeout),
                                           timeout + 0.5)
        except asyncio.TimeoutError:
            raise UpstreamError("timeout", f"no reply within {timeout:.1f}s") from None
        if len(reply) < 12 or not reply[2] & 0x80 or not _question_matches(body, reply):
            raise UpstreamError("protocol", "not a reply to our question")
        return query[:2] + reply[2:]


def tls_context() -> ssl.SSLContext:
    """Verifying client context (system CAs; ``SSL_CERT_FILE`` honoured), TLS 1.2+."""
    ctx = ssl.create_default_context()
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    cafile = os.environ.get("SSL_CERT_FILE")
    if cafile:
        ctx.load_verify_locations(cafile)
    return ctx


def parse_upstream(addr: str) -> Upstream:
    """An upstream address (see the module docstring) → an :class:`Upstream`; ValueError when invalid."""
    a = addr.strip()
    if a.startswith("https://"):
        parts = urlsplit(a.replace("{?dns}", ""))
        if not parts.hostname:
            raise ValueError(f"invalid DoH URL {addr!r}")
        return HttpsUpstream(a)
    scheme = "udp"
    for prefix in ("udp://", "tcp://", "tls://"):
        if a.startswith(prefix):
            scheme, a = prefix[:3], a[len(prefix):]
            break
    a, _, ip = a.partition("#")
    host, port = parse_hostport(a, f"upstream {addr!r}", 853 if scheme == "tls" else 53)
    if scheme == "tls":
        return TcpUpstream(ip or host, port, tls=tls_context(), server_name=host,
                           name=f"tls://{host}:{port}")
    if scheme == "tcp":
        return TcpUpstream(ip or host, port)
    return UdpUpstream(ip or host, port)


# ---------------------------------------------------------------- the UDP thread's reactor

class _HotSock:
    """A connected, non-blocking UDP socket owned by the UDP thread, with its queries in flight."""

    __slots__ = ("sock", "pending", "uses", "upstream", "fd")

    def __init__(self, u: UdpUpstream):
        self.upstream = u
        self.sock = socket.socket(u.family, socket.SOCK_DGRAM)
        self.sock.setblocking(False)
        self.sock.connect(u.addr)
        self.fd = self.sock.fileno()
        self.pending: dict[int, tuple] = {}  # qid → (query, deferred)
        self.uses = 0


class ThreadReactor:
    """Upstream attempts for the UDP thread (see filterproxy.dns.deferred).

    UDP upstreams: one socket per upstream owned by the thread (replaced by a fresh one — a new source
    port — every 2,000 queries; the old one lives on until its replies are in). The thread's loop calls
    :meth:`poll` every few client packets while queries are out: one ``epoll_wait(0)`` tells which
    sockets have replies. Deadlines wait in one FIFO per timeout value (appended in time order: no
    heap). Stream upstreams (TCP, DoT, DoH, and the TCP retry of a truncated UDP reply) run on the
    asyncio ``loop``; their results come back through a queue, and ``wake()`` (a datagram to the UDP
    socket) makes the thread call :meth:`drain`.

    With ``hold`` set (the batched loop), queries are not sent as they are made but queued in ``held``
    and sent together by :meth:`send_held`, once per batch of client packets: a datagram that wakes a
    sleeping upstream on another core costs ~17 µs here, one sent while it is awake ~5 µs (2-core VM,
    loopback), and one query at a time — a cache miss every ~60 µs between cache hits — woke it every time.
    """

    REUSE = 2000
    LINGER = 1.0  # seconds the thread keeps polling after the last reply (avoids toggling per query)

    def __init__(self, loop: asyncio.AbstractEventLoop, wake, set_polling):
        self.loop = loop
        self.inflight: dict[bytes, Deferred] = {}
        self.pending = 0
        self._wake = wake
        self._set_polling = set_polling
        self._polling = False
        self._last = 0.0
        self._cur: dict[int, _HotSock] = {}  # id(upstream) → current socket
        self._by_fd: dict[int, _HotSock] = {}
        self._ep = select.epoll()
        # deadlines, one FIFO per timeout value: appended in time order, so each stays sorted (no heap)
        self._timers: dict[float, deque] = {}
        self._seq = 0
        self._done: deque = deque()
        self._rand = b""
        self._ri = 0
        self.hold = False  # queue UDP queries for send_held() instead of sending each at once
        self.held: list[tuple[_HotSock, int, bytes]] = []

    # ------------------------------------------------------------ attempts
    def attempt(self, u: Upstream, query: bytes, timeout: float, cb) -> None:
        """Send ``query`` to ``u``; ``cb(reply, None)`` or ``cb(None, error)`` later on this thread (at once
        when the attempt cannot even start). A callback, not a Deferred: one object less per cache miss."""
        if isinstance(u, UdpUpstream):
            self._udp(u, query, timeout, cb)
        else:
            self.on_loop(u.exchange(query, timeout)).add(cb)

    def _sock_for(self, u: UdpUpstream) -> _HotSock:
        hs = self._cur.get(id(u))
        if hs is None or hs.uses >= self.REUSE:  # a fresh source port now and then
            if hs is not None and not hs.pending:
                self._close(hs)
            hs = self._cur[id(u)] = _HotSock(u)
            self._by_fd[hs.fd] = hs
            self._ep.register(hs.fd, select.EPOLLIN)
        return hs

    def _close(self, hs: _HotSock) -> None:
        self._by_fd.pop(hs.fd, None)
        try:
            self._ep.unregister(hs.fd)
        except (OSError, ValueError):
            pass
        hs.sock.close()

    def _qid(self, hs: _HotSock) -> int:
        while True:
            if self._ri >= len(self._rand):
                self._rand, self._ri = os.urandom(4096), 0
            qid = (self._rand[self._ri] << 8) | self._rand[self._ri + 1]
            self._ri += 2
            if qid not in hs.pending:
                return qid

    def _udp(self, u: UdpUpstream, query: bytes, timeout: float, cb) -> None:
        try:
            hs = self._sock_for(u)
        except OSError as exc:
            cb(None, UpstreamError("network", str(exc)))
            return
        qid = self._qid(hs)
        q = _U16.pack(qid) + query[2:]
        hs.uses += 1
        self._seq += 1
        hs.pending[qid] = (q, cb, u, query, timeout, self._seq)
        now = time.monotonic()
        # only atoms in the queue: an answered query's objects are freed at once, not at its deadline
        fifo = self._timers.get(timeout)
        if fifo is None:
            fifo = self._timers[timeout] = deque()
        fifo.append((now + timeout, self._seq, hs.fd, qid))
        self.pending += 1
        self._last = now
        if not self._polling:
            self._polling = True
            self._set_polling(True)
        if self.hold:
            self.held.append((hs, qid, q))
        else:
            self._send(hs, qid, q)

    def _send(self, hs: _HotSock, qid: int, q: bytes) -> None:
        try:
            hs.sock.send(q)
        except ConnectionRefusedError as exc:
            self._settle(hs, qid, None, UpstreamError("refused", str(exc)))
        except OSError as exc:
            self._settle(hs, qid, None, UpstreamError("network", str(exc)))

    def send_held(self) -> None:
        """Send the queued queries, in one burst (a failed send fails over at once: its next attempt is
        queued and sent in this same call)."""
        held = self.held
        while held:
            batch = held[:]
            held.clear()
            for hs, qid, q in batch:
                token = hs.pending.get(qid)
                if token is not None and token[0] is q:  # still waiting (not settled meanwhile)
                    self._send(hs, qid, q)

    def _settle(self, hs: _HotSock, qid: int, value: bytes | None, error: BaseException | None) -> None:
        token = hs.pending.pop(qid, None)
        if token is None:
            return
        self.pending -= 1
        if not hs.pending and self._cur.get(id(hs.upstream)) is not hs:
            self._close(hs)  # a retired socket: all its replies are in
        cb = token[1]
        if error is not None:
            cb(None, error)
        elif value[2] & 0x02:  # truncated: the whole answer over TCP (RFC 7766), on the loop
            u, query, timeout = token[2], token[3], token[4]
            metrics.DNS_UPSTREAM_ERRORS.inc(u.name, "truncated")
            self.on_loop(u.tcp.exchange(query, timeout)).add(
                lambda r, e: cb(None, e) if e is not None else cb(query[:2] + r[2:], None))
        else:
            cb(token[3][:2] + value[2:], None)

    def poll(self, now: float) -> None:
        """Read replies from the UDP upstream sockets; fail attempts past their deadline."""
        for fd, _ev in self._ep.poll(0):
            hs = self._by_fd.get(fd)
            if hs is None:
                continue
            for _ in range(256):
                try:
                    data = hs.sock.recv(65535)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError as exc:  # ICMP port unreachable → ECONNREFUSED on a connected socket
                    err = UpstreamError("refused" if isinstance(exc, ConnectionRefusedError) else "network", str(exc))
                    for qid in list(hs.pending):
                        self._settle(hs, qid, None, err)
                    break
                if len(data) < 12 or not data[2] & 0x80:
                    continue
                qid = _U16.unpack_from(data)[0]
                token = hs.pending.get(qid)
                if token is None or not _question_matches(token[0], data):
                    continue  # not ours (late, spoofed or for an abandoned query)
                self._last = now
                self._settle(hs, qid, data, None)
                if not hs.pending:  # nothing more expected here (strays are read at the next readiness)
                    break
        for timers in self._timers.values():
            while timers and timers[0][0] <= now:
                _dl, seq, fd, qid = timers.popleft()
                hs = self._by_fd.get(fd)
                if hs is not None:
                    token = hs.pending.get(qid)
                    if token is not None and token[5] == seq:
                        self._settle(hs, qid, None, UpstreamError("timeout", "no reply in time"))
        if self.pending <= 0 and self._polling and now - self._last > self.LINGER:
            self.pending = 0
            self._polling = False
            self._set_polling(False)

    # ------------------------------------------------------------ work on the asyncio loop
    def on_loop(self, coro) -> Deferred:
        """Run ``coro`` on the asyncio loop; its result comes back to this thread via :meth:`drain`."""
        d = Deferred()

        def start() -> None:
            t = self.loop.create_task(coro)
            t.add_done_callback(lambda task: self._post(d, task))

        self.loop.call_soon_threadsafe(start)
        return d

    def _post(self, d: Deferred, task: asyncio.Task) -> None:  # on the loop thread
        if task.cancelled():
            self._done.append((d, None, UpstreamError("network", "cancelled")))
        else:
            exc = task.exception()
            self._done.append((d, None if exc else task.result(), exc))
        self._wake()

    def drain(self) -> None:
        """On the UDP thread (after a wake-up datagram): fulfil what the loop finished."""
        done = self._done
        while done:
            d, value, error = done.popleft()
            if error is not None:
                d.fail(error)
            else:
                d.resolve(value)

    def close(self) -> None:
        for hs in list(self._by_fd.values()):
            self._close(hs)
        self._cur.clear()
        self._ep.close()


# ---------------------------------------------------------------- groups and strategies

class PairSink(Deferred):
    """The plain sink of :meth:`UpstreamGroup.exchange_into`: a Deferred of (reply bytes, upstream name).
    (The resolver chain's lookups are sinks too: they turn the reply into a cacheable one directly.)"""

    __slots__ = ()

    def ok(self, reply: bytes, name: str) -> None:
        self._finish((reply, name), None)

    def failed(self, error: BaseException) -> None:
        self._finish(None, error)


class _Failover:
    """One exchange under ``failover``: the healthy upstreams in order until one answers."""

    __slots__ = ("group", "cands", "i", "query", "reactor", "sink", "u", "t0", "last")

    def __init__(self, group: "UpstreamGroup", cands: list[Upstream], query: bytes, reactor, sink):
        self.group, self.cands, self.query, self.reactor, self.sink = group, cands, query, reactor, sink
        self.i = 0
        self.u: Upstream | None = None
        self.t0 = 0.0
        self.last = ""

    def next(self) -> None:
        cands, i = self.cands, self.i
        now = time.monotonic()
        while 0 < i < len(cands) and not cands[i].healthy(now):  # marked down meanwhile: skip
            i += 1
        self.i = i
        if i >= len(cands):
            self.sink.failed(AllUpstreamsFailed(False, self.last))
            return
        self.u = u = cands[i]
        self.t0 = now
        self.group.attempt(u, self.query, self.reactor, self.on_reply)

    def on_reply(self, reply: bytes | None, exc: BaseException | None) -> None:
        u = self.u
        exc = self.group.judge(u, self.t0, reply, exc)
        if exc is None:
            self.sink.ok(reply, u.name)
            return
        self.last = f"{u.name}: {exc}"
        self.i += 1
        self.next()


class UpstreamGroup:
    """Upstreams with a strategy (``failover`` | ``parallel``), a per-attempt timeout and health tracking.

    The strategies are written once, on callbacks, so the UDP thread and the asyncio loop share them; a
    reactor (``attempt(upstream, query, timeout, cb)``) provides the attempts, a sink (``ok(reply, name)``,
    ``failed(error)``; see :class:`PairSink`) takes the outcome.
    """

    def __init__(self, upstreams: list[Upstream], strategy: str = "failover", timeout: float = 2.0):
        if not upstreams:
            raise ValueError("an upstream group needs at least one upstream")
        self.upstreams = upstreams
        self.strategy = strategy
        self.timeout = timeout

    def describe(self) -> str:
        return f"{self.strategy} over {', '.join(u.name for u in self.upstreams)} (timeout {self.timeout:g}s)"

    def all_down(self, now: float) -> bool:
        for u in self.upstreams:
            if u.healthy(now):
                return False
        return True

    def attempt(self, u: Upstream, query: bytes, reactor, cb) -> None:
        """One attempt through the reactor; a reactor that cannot even start it reports the error to ``cb``."""
        try:
            reactor.attempt(u, query, self.timeout, cb)
        except Exception as exc:
            cb(None, exc)

    @staticmethod
    def judge(u: Upstream, t0: float, reply: bytes | None, exc: BaseException | None) -> UpstreamError | None:
        """An attempt's outcome: metrics and health updated; None when ``reply`` is good, else the error."""
        now = time.monotonic()
        metrics.DNS_UPSTREAM_DURATION.observe(now - t0, u.name)
        if exc is None and (len(reply) < 12 or reply[3] & 0xF == wire.REFUSED):
            exc = UpstreamError("refused", "upstream answered REFUSED")  # misconfigured or limiting us
        if exc is None:
            if u.fails:
                u.ok()
            return None
        kind = exc.kind if isinstance(exc, UpstreamError) else "protocol"
        metrics.DNS_UPSTREAM_ERRORS.inc(u.name, kind)
        u.failed(now)
        return exc if isinstance(exc, UpstreamError) else UpstreamError(kind, repr(exc))

    def exchange_into(self, query: bytes, reactor, sink) -> None:
        """Ask the group; the first good reply goes to ``sink.ok(reply, upstream name)``, else
        ``sink.failed(AllUpstreamsFailed)`` (``down`` when every upstream is backing off)."""
        now = time.monotonic()
        cands = [u for u in self.upstreams if u.healthy(now)]
        if not cands:
            sink.failed(AllUpstreamsFailed(True))
        elif self.strategy == "parallel" and len(cands) > 1:
            self._parallel(cands[:2], cands[2:], query, reactor, sink)
        else:
            _Failover(self, cands, query, reactor, sink).next()

    def exchange_d(self, query: bytes, reactor) -> Deferred:
        """:meth:`exchange_into` as a Deferred of (reply, upstream name)."""
        d = PairSink()
        self.exchange_into(query, reactor, d)
        return d

    def _parallel(self, first: list[Upstream], rest: list[Upstream], query: bytes, reactor, sink) -> None:
        left = [len(first)]
        done = [False]

        def cb_for(u: Upstream):
            t0 = time.monotonic()

            def cb(value, error) -> None:
                error = self.judge(u, t0, value, error)
                if done[0]:
                    return
                if error is None:
                    done[0] = True
                    sink.ok(value, u.name)
                    return
                left[0] -= 1
                if left[0] == 0:  # both failed: the others in order
                    done[0] = True
                    if rest:
                        _Failover(self, rest, query, reactor, sink).next()
                    else:
                        sink.failed(AllUpstreamsFailed(False, f"{u.name}: {error}"))
            return cb

        for u in first:
            self.attempt(u, query, reactor, cb_for(u))

    async def exchange(self, query: bytes) -> tuple[bytes, str]:
        """Async form (tests, tools): run on the current loop."""
        loop = asyncio.get_running_loop()
        return await to_future(self.exchange_d(query, LoopReactor(loop)), loop)

    async def close(self) -> None:
        for u in self.upstreams:
            await u.close()
