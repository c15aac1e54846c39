"""UDP serving: one thread per socket owns the hot path, with no event loop in the way.

Per packet: ``recvfrom``; the client's state (ACL result, group, rate-limit window) in one dict lookup;
the rate limit; the packed reply of this group for these exact bytes, sent with the query's ID patched
in. Anything else (a new question, an expired entry, a malformed packet, a refused client) takes the
slow path on the same thread: admission, then the chain. Cache misses are resolved on this thread too
(:class:`~filterproxy.dns.upstream.ThreadReactor`, polled every few packets while queries are out);
only stream upstreams run on the asyncio loop, whose results come back through a wake-up datagram.
Where recvmmsg/sendmmsg work (:mod:`filterproxy.dns.mmsg`) the batched loop does the same per datagram.
Why a thread and bursts: docs/decisions/dns-udp-thread.md, docs/decisions/dns-held-sends.md.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from filterproxy import gcpolicy, metrics
from filterproxy.dns import wire
from filterproxy.dns.admission import admit, limited, over_limit
from filterproxy.dns.answering import Tally, failed_reply, handle, pack
from filterproxy.dns.cache import aged, make_entry
from filterproxy.dns.responses import Reply
from filterproxy.dns.upstream import ThreadReactor

if TYPE_CHECKING:
    from filterproxy.dns.chain import Chain
    from filterproxy.dns.clients import ClientState
    from filterproxy.dns.mmsg import BatchSocket

log = logging.getLogger("filterproxy.dns")

_WAKE_FROM = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}  # wildcard → the address to wake it from


def udp_socket(family: int, reuse_port: bool) -> socket.socket:
    """A UDP socket with 4 MiB buffers (when the kernel allows), joining an SO_REUSEPORT group if asked."""
    s = socket.socket(family, socket.SOCK_DGRAM)
    if reuse_port:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    for opt, size in ((socket.SO_RCVBUF, 4 << 20), (socket.SO_SNDBUF, 4 << 20)):
        try:
            s.setsockopt(socket.SOL_SOCKET, opt, size)
        except OSError:
            pass
    return s


class UdpListener:
    """The UDP side of one address: its thread, its upstream reactor, its wake-up socket."""

    POLL_EVERY = 8  # client packets between two looks at the upstream sockets (when queries are out)
    POLL_IDLE = 0.001  # recv timeout while upstream queries are out and no client packet comes
    IDLE_WAKE = 1.0  # seconds between two wake-ups of an idle UDP thread (cache sweeping)
    IDLE_SWEEP = 4096  # keys a sweep step may look at when no client is waiting (else cache.Sweep.BUDGET)
    TICK = 0.01  # seconds between two housekeeping steps of the UDP thread (see _tick)

    # ``sock`` and ``reactor`` as the UDP thread sees them: start() sets both before the thread runs, so
    # the thread's paths use them with no None check (the public ones stay None until start, for stop)
    _sock: socket.socket
    _reactor: ThreadReactor

    def __init__(self, chain: Chain, tally: Tally) -> None:
        self.chain = chain
        self.tally = tally
        self.clock: Callable[[], float] = time.monotonic  # the loops' clock (tests pin it)
        self.sock: socket.socket | None = None
        self.reactor: ThreadReactor | None = None
        self.batched = False  # recvmmsg/sendmmsg (filterproxy.dns.mmsg) on the hot path
        self.wake_addr: tuple | None = None
        self._wake: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._running = False
        self._held: list[tuple[bytes, tuple]] | None = None  # replies to send after the batch (batched loop)

    def start(self, loop: asyncio.AbstractEventLoop, sock: socket.socket) -> None:
        """Serve ``sock`` (bound) on a new thread; stream upstreams run on ``loop``."""
        self.sock = self._sock = sock
        host, port = sock.getsockname()[:2]
        # wake-ups for the thread (results from the loop, stop): a datagram from a known address
        w = socket.socket(sock.family, socket.SOCK_DGRAM)
        local = _WAKE_FROM.get(host, host)
        w.bind((local, 0))
        w.connect((local, port))
        w.setblocking(False)
        self._wake = w
        self.wake_addr = w.getsockname()
        self.reactor = self._reactor = ThreadReactor(loop, self._send_wake, self._set_polling)
        self._set_polling(False)
        self._running = True
        target, args, self.batched = self._pick_udp_loop(sock)
        self._thread = threading.Thread(target=target, args=args, name=f"filterproxy-dns-udp-{port}", daemon=True)
        self._thread.start()

    async def stop(self) -> None:
        self._running = False
        if self._wake is not None:
            self._send_wake()
        if self._thread is not None:
            await asyncio.get_running_loop().run_in_executor(None, self._thread.join, 2.0)
        if self.reactor is not None:
            self.reactor.close()
        for sk in (self.sock, self._wake):
            if sk is not None:
                sk.close()

    def _pick_udp_loop(self, s: socket.socket) -> tuple[Callable[..., None], tuple, bool]:
        """(loop, its arguments, batched?): the batched loop where recvmmsg/sendmmsg work, else the plain one."""
        from filterproxy.dns import mmsg

        bs = None
        if mmsg.available():
            try:
                bs = mmsg.BatchSocket(s)
            except OSError as exc:  # e.g. a libc whose mmsghdr layout the batched loop does not expect
                log.warning("dns: batched UDP I/O unavailable (%s)", exc)
        if bs is not None:
            log.info("dns: UDP loop: batched (recvmmsg/sendmmsg, up to %d datagrams a call)", mmsg.BATCH)
            return self._udp_loop_batched, (bs,), True
        log.info("dns: UDP loop: plain (recvfrom/sendto)")
        return self._udp_loop, (), False

    def _send_wake(self) -> None:
        w = self._wake
        assert w is not None  # made by start() before the reactor that calls this, and kept
        try:
            w.send(b"\x00")
        except OSError:  # buffer full: the thread is awake anyway
            pass

    def _set_polling(self, on: bool) -> None:
        """While upstream queries are out, ``recvfrom`` returns every POLL_IDLE s to look at them; else every
        IDLE_WAKE s (an idle thread still sweeps expired cache entries)."""
        usec = int((self.POLL_IDLE if on else self.IDLE_WAKE) * 1e6)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", usec // 1000000, usec % 1000000))

    # ------------------------------------------------------------------ the loops
    def _udp_loop(self) -> None:
        """The plain loop: one ``recvfrom`` and one ``sendto`` per query (a measured hot loop)."""
        sock = self._sock
        recv = sock.recvfrom
        send = sock.sendto
        clients = self.chain.clients
        table = clients.table
        state = clients.state
        mono = self.clock
        over = over_limit
        slow = self._udp_slow
        reactor = self._reactor
        hits = self.tally.hits
        # the query log (when on): each packed hit is one record too, two ints appended inline (QueryLog.buffer)
        qids, qtime, qid, qcap, qdrop = self.tally.log_buffer()
        poll_every = self.POLL_EVERY - 1
        n = 0
        tick, sweep, idle_budget = self._tick, self.chain.sweep, self.IDLE_SWEEP
        next_tick = 0.0
        while self._running:
            data = addr = None
            try:
                try:
                    data, addr = recv(4096)
                except BlockingIOError:  # the poll timeout: nothing from clients, look upstream
                    now = mono()
                    reactor.poll(now)
                    sweep(now, idle_budget)  # an idle server drops its expired entries too
                    continue
                now = mono()
                if reactor.pending:
                    n += 1
                    if not n & poll_every:
                        reactor.poll(now)
                if now >= next_tick:
                    next_tick = tick(now)
                sec = int(now)
                st = table.get(addr[0])
                if st is None:
                    st = state(addr[0], now)
                if over(st, sec):
                    self._limited(st, data, addr)
                    continue
                # the packed reply of this group for exactly these bytes
                key = data[2:]
                e = st.cache.get(key)
                if e is not None and e[0] > now:
                    if e[1] < sec:  # TTLs to age (once a second, or less for long TTLs)
                        e = aged(e, sec)
                        st.cache[key] = e
                    send(data[:2] + e[2], addr)
                    hits[e[3]] += 1
                    if qids is not None:
                        if len(qids) < qcap:
                            qtime(now)
                            qid(st.qlid | e[6])
                        else:
                            qdrop()
                    continue
                slow(data, addr, st, now)
            except Exception:  # never let the listener die; the query gets SERVFAIL when possible
                if not self._running:
                    break
                self._crashed(data, addr)

    def _udp_loop_batched(self, bs: BatchSocket) -> None:  # noqa: C901 - a measured hot loop, inlined on purpose
        """:meth:`_udp_loop` on batches: one ``recvmmsg`` for every queued query, one ``sendmmsg`` for the
        packed replies among them. Same links, same order, per datagram.

        A measured hot loop (hence its length): the rate-limit window of
        :func:`filterproxy.dns.admission.over_limit` is inlined (tests/test_dns_admission.py proves they
        agree), the query ID is copied as one 16-bit word, IPv4 client keys are ints, and replies are written
        straight into the send batch (docs/decisions/dns-batched-loop.md).
        """
        from filterproxy.dns.mmsg import NAME, SLOT

        clients = self.chain.clients
        table = clients.table
        state = clients.state
        ips: dict[bytes | int, str] = {}  # source address → the text form the client table is keyed by
        mono = self.clock
        slow = self._udp_slow
        reactor = self._reactor
        hits = self.tally.hits
        # the query log (when on): each packed hit is one record too, two ints appended inline (QueryLog.buffer)
        qids, qtime, qid, qcap, qdrop = self.tally.log_buffer()
        tick, sweep, idle_budget = self._tick, self.chain.sweep, self.IDLE_SWEEP
        next_tick = 0.0
        recv, flush = bs.recv, bs.flush
        rbuf, names, sbuf, name_base = bs.rbuf, bs.names, bs.sbuf, bs.name_base
        lens, len_step, len_at, ipv4 = bs.lens, bs.len_step, bs.len_at, bs.ipv4
        iov_lens, iov_step, iov_at, msg_names, msg_step = bs.iov_lens, bs.iov_step, bs.iov_at, bs.msg_names, bs.msg_step
        name_words, slot_words = NAME // 4, SLOT // 2
        rids, sids = bs.rids, bs.sids
        v6 = bs.family == socket.AF_INET6
        sendto = self._sock.sendto
        # datagrams go out in bursts, one per batch: upstream queries (reactor.held) and the replies to
        # cache misses (self._held); why: docs/decisions/dns-held-sends.md
        reactor.hold = True
        held = self._held = []
        send_held = self._send_held
        while self._running:
            i = n = 0
            data = None
            try:
                n = recv()
                if not n:  # the poll timeout: nothing from clients, look upstream
                    now = mono()
                    reactor.poll(now)
                    if reactor.held:
                        reactor.send_held()
                    if held:
                        send_held()
                    sweep(now, idle_budget)
                    continue
                now = mono()
                if now >= next_tick:
                    next_tick = tick(now)
                sec = int(now)
                j = 0  # replies queued for sendmmsg
                for i in range(n):
                    off = i * SLOT
                    end = off + lens[i * len_step + len_at]
                    noff = i * NAME
                    # the client's address as a dict key: an int for IPv4 (no allocation), bytes for IPv6
                    raw = bytes(names[noff + 8 : noff + 24]) if v6 else ipv4[i * name_words + 1]
                    ip = ips.get(raw)
                    if ip is None:
                        if len(ips) >= 65536:
                            ips.clear()
                        ip = ips[raw] = bs.ip(i)
                    st = table.get(ip)
                    if st is None:
                        st = state(ip, now)
                    # the rate-limit window: admission.over_limit, inlined
                    if st.sec != sec:
                        st.sec = sec
                        st.count = 1
                    else:
                        st.count += 1
                        if st.count > st.limit:
                            self._limited(st, bytes(rbuf[off:end]), bs.addr(i, ip))
                            continue
                    # the packed reply of this group for exactly these bytes (the ID is not in the key)
                    key = bytes(rbuf[off + 2 : end])
                    e = st.cache.get(key)
                    if e is not None and e[0] > now:
                        if e[1] < sec:
                            e = aged(e, sec)
                            st.cache[key] = e
                        body = e[2]
                        size = len(body) + 2
                        if size <= SLOT:  # into slot j of the send batch, to the query's own address
                            so = j * SLOT
                            sids[j * slot_words] = rids[i * slot_words]  # the query's ID
                            sbuf[so + 2 : so + size] = body
                            iov_lens[j * iov_step + iov_at] = size
                            msg_names[j * msg_step] = name_base + noff
                            j += 1
                        else:
                            sendto(bytes(rbuf[off : off + 2]) + body, bs.addr(i, ip))
                        hits[e[3]] += 1
                        if qids is not None:
                            if len(qids) < qcap:
                                qtime(now)
                                qid(st.qlid | e[6])
                            else:
                                qdrop()
                        continue
                    data = bytes(rbuf[off:end])
                    slow(data, bs.addr(i, ip), st, now)
                    data = None
                if j:
                    bs.pending = j
                    flush()
                if reactor.held:
                    reactor.send_held()
                if reactor.pending:
                    reactor.poll(mono())
                    if reactor.held:  # failovers
                        reactor.send_held()
                if held:
                    send_held()
            except Exception:  # never let the listener die; the query gets SERVFAIL when possible
                if not self._running:
                    break
                bs.pending = 0  # replies of this batch not sent: their clients retry
                self._crashed(data, bs.addr(i) if data is not None and i < n else None)

    def _tick(self, now: float) -> float:
        """Housekeeping on the UDP thread, every TICK seconds while packets come; returns the next time.

        A paced slice of the expired cache entries (cache.Sweep), and a young-generation collection
        (pacing and frequency measured: docs/decisions/dns-sweep-pacing.md, docs/decisions/dns-gc-young-every-tick.md).
        """
        self.chain.sweep(now)
        gcpolicy.collect_young()
        return now + self.TICK

    # ------------------------------------------------------------------ the slow path
    def _crashed(self, data: bytes | None, addr: tuple | None) -> None:
        metrics.DNS_ERRORS.inc("exception")
        log.exception("dns: error handling a udp query; answered SERVFAIL")
        if data and addr:
            r = wire.header_reply(data, wire.SERVFAIL)
            if r:
                try:
                    self._sock.sendto(r, addr)
                except OSError:
                    pass

    def _limited(self, st: ClientState, data: bytes, addr: tuple) -> None:
        r = limited(st, data)
        if r:
            self._sock.sendto(r, addr)

    def _udp_slow(self, data: bytes, addr: tuple, st: ClientState, now: float) -> None:
        if len(data) < 12 and addr == self.wake_addr:  # a wake-up from the loop
            self._reactor.drain()
            return
        q, early = admit(data, st)
        if q is None:
            if early:
                self._sock.sendto(early, addr)
            return
        r = handle(self.chain, q, st, "udp", self._reactor, now)
        if type(r) is Reply:
            self._udp_answer(q, r, addr, st, now)
        else:
            r.add(lambda value, error: self._udp_later(q, value, error, addr, st))

    def _udp_later(
        self, q: wire.Query, r: Reply | None, error: BaseException | None, addr: tuple, st: ClientState
    ) -> None:
        """A Deferred reply arrived (on this thread)."""
        now = self.clock()
        if error is not None or type(r) is not Reply:
            r = failed_reply(q, error, now)
        try:
            self._udp_answer(q, r, addr, st, now)
        except Exception:
            self._crashed(q.data, addr)

    def _send_held(self) -> None:
        """Send the replies held by :meth:`_udp_answer` (batched loop), in one burst."""
        held = self._held
        assert held is not None  # the batched loop, the only caller, set it
        sendto = self._sock.sendto
        for msg, addr in held:
            try:
                sendto(msg, addr)
            except OSError:  # a full buffer or an unreachable client: UDP may drop
                pass
        held.clear()

    def _udp_answer(self, q: wire.Query, r: Reply, addr: tuple, st: ClientState, now: float) -> None:
        msg, offsets = pack(q, r, now, q.max_udp())
        held = self._held
        if held is not None:
            held.append((msg, addr))
        else:
            self._sock.sendto(msg, addr)
        group = st.group
        assert group is not None  # admission.admit refuses clients without a group
        slot = self.tally.count(group, q.qtype, r, "udp")
        logged = self.tally.record(q, r, st, now, self.chain.decisions)
        if r.expires > now and st.packed is not None:
            st.packed.put(q.data[2:], make_entry(msg, offsets, r.expires, now, r.fixed, slot, logged))
