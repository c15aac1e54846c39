"""The UDP thread's reactor: upstream attempts made and finished on the UDP thread (see dns.deferred).

UDP upstreams: one socket per upstream owned by the thread (a fresh one — a new source port — every
2,000 queries; the old one lives on until its replies are in). The thread's loop calls
:meth:`ThreadReactor.poll` every few client packets while queries are out: one ``epoll_wait(0)`` tells
which sockets have replies. Stream upstreams (TCP, DoT, DoH, and the TCP retry of a truncated UDP reply)
run on the asyncio loop; their results come back through a queue, and ``wake()`` (a datagram to the UDP
socket) makes the thread call :meth:`ThreadReactor.drain`.
"""

from __future__ import annotations

import asyncio
import os
import select
import socket
import time
from collections import deque
from collections.abc import Callable, Coroutine
from typing import Any

from filterproxy import metrics
from filterproxy.dns.deferred import Deferred
from filterproxy.dns.upstream.base import (
    U16,
    AttemptCallback,
    UpstreamError,
    question_matches,
)
from filterproxy.dns.upstream.health import Upstream
from filterproxy.dns.upstream.udp import UdpUpstream


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
    """Upstream attempts for the UDP thread (see the module docstring).

    Deadlines wait in one FIFO per timeout value (appended in time order: no heap). With ``hold`` set
    (the batched loop), queries are queued in ``held`` and sent together by :meth:`send_held`, once per
    batch of client packets: a datagram that wakes a sleeping upstream costs ~3x one sent while it is
    awake (docs/decisions/upstream-held-sends.md).
    """

    REUSE = 2000
    LINGER = 1.0  # seconds the thread keeps polling after the last reply (avoids toggling per query)

    def __init__(self, loop: asyncio.AbstractEventLoop, wake: Callable[[], None], set_polling: Callable[[bool], None]):
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
    def attempt(self, u: Upstream, query: bytes, timeout: float, cb: AttemptCallback) -> None:
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

    def _udp(self, u: UdpUpstream, query: bytes, timeout: float, cb: AttemptCallback) -> None:
        try:
            hs = self._sock_for(u)
        except OSError as exc:
            cb(None, UpstreamError("network", str(exc)))
            return
        qid = self._qid(hs)
        q = U16.pack(qid) + query[2:]
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
            return
        assert value is not None  # a reply or an error, never neither
        if value[2] & 0x02:  # truncated: the whole answer over TCP (RFC 7766), on the loop
            u, query, timeout = token[2], token[3], token[4]
            metrics.DNS_UPSTREAM_ERRORS.inc(u.name, "truncated")
            self.on_loop(u.tcp.exchange(query, timeout)).add(
                lambda r, e: cb(None, e) if e is not None else cb(query[:2] + r[2:], None)
            )
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
                qid = U16.unpack_from(data)[0]
                token = hs.pending.get(qid)
                if token is None or not question_matches(token[0], data):
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
    def on_loop(self, coro: Coroutine[Any, Any, Any]) -> Deferred:
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
