"""UDP and TCP listeners around the chain.

**UDP hot path** (one thread per socket, plain blocking ``recvfrom``/``sendto``; measured ~2.5x faster
than an event-loop reader on this hardware). Per packet::

    data, addr = recvfrom()                       # one syscall
    st = clients[addr[0]]                         # links 1-3: group, ACL result, rate-limit window
    st.count += 1 (new second: reset)             # rate limit
    e = st.cache.get(data[2:])                    # link 4: packed reply of this group for these exact bytes
    sendto(data[:2] + e.bytes)                    # the ID patched in; TTLs aged once per second per entry
    hits[e.slot] += 1                             # metrics: a plain int, published once a second

Anything else — a new question, an expired entry, a malformed packet, a refused client — goes to the
slow path on the same thread: hand-parsed query, then the chain (links 5..11). Blocked and cached names
are answered there synchronously. Cache misses are resolved on this thread too (``ThreadReactor``): its
UDP upstream sockets are read every few client packets, or after 1 ms without any, while queries are
out. Only stream upstreams (TCP/DoT/DoH) run on the asyncio loop, whose results come back through a
queue and a wake-up datagram. One thread owns the hot path: no GIL ping-pong with the loop.

**TCP** runs on the asyncio loop: RFC 7766 framing, pipelined queries answered as they complete,
``dns.tcp_idle_timeout`` between queries, at most ``dns.tcp_max_connections`` at once (new ones are
closed at once beyond that).

Fail closed: an exception anywhere in handling a query answers SERVFAIL and is counted; it never
forwards an unchecked answer.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import socket
import struct
import threading
import time

from filterproxy import metrics
from filterproxy.dns import responses, wire
from filterproxy.dns.cache import aged, make_entry
from filterproxy.dns.chain import Chain, Request
from filterproxy.dns.deferred import LoopReactor, to_future
from filterproxy.dns.responses import Reply
from filterproxy.dns.upstream import ThreadReactor
from filterproxy.dns.wire import REFUSED, WireError

log = logging.getLogger("filterproxy.dns")

_U16 = struct.Struct(">H")
_QTYPE = wire.QTYPE_NAMES


class Tally:
    """Per-query metric counting on plain ints, one slot per label combination.

    ``hits[i]`` counts answers from the packed cache (the UDP hot path: ``hits[e.slot] += 1``), ``other[i]``
    every other answer. Slots only ever grow; :meth:`flush` publishes the growth since the last flush
    into the metrics counters, so there is no read-and-reset race between the UDP thread and the loop.
    Cache entries hold the slot number (an int), which keeps them invisible to the garbage collector.
    """

    def __init__(self) -> None:
        self.slots: dict[tuple, int] = {}
        self.keys: list[tuple] = []
        self.hits: list[int] = []
        self.other: list[int] = []
        self._seen: list[tuple[int, int]] = []
        self._lock = threading.Lock()

    def slot(self, group: str, qtype: int, r: Reply, protocol: str) -> int:
        v = r.verdict
        blocked = (group, v.category or "none", v.reason.value) if r.action == "block" and v is not None else None
        key = (group, _QTYPE.get(qtype, "other"), r.action, protocol, blocked)
        i = self.slots.get(key)
        if i is None:
            with self._lock:
                i = self.slots.get(key)
                if i is None:
                    self.keys.append(key)
                    self.hits.append(0)
                    self.other.append(0)
                    self._seen.append((0, 0))
                    i = self.slots[key] = len(self.keys) - 1
        return i

    def count(self, group: str, qtype: int, r: Reply, protocol: str) -> int:
        i = self.slot(group, qtype, r, protocol)
        self.other[i] += 1
        return i

    def flush(self) -> None:
        hits = 0
        for i in range(len(self.keys)):
            a, b = self.hits[i], self.other[i]
            sa, sb = self._seen[i]
            da, db = a - sa, b - sb
            if not (da or db):
                continue
            self._seen[i] = (a, b)
            group, qtype, action, protocol, blocked = self.keys[i]
            metrics.DNS_QUERIES.inc(group, qtype, action, protocol, amount=da + db)
            if blocked is not None:
                metrics.DNS_BLOCKED.inc(*blocked, amount=da + db)
            hits += da
        if hits:
            metrics.DNS_CACHE_HITS.inc(amount=hits)


def pack(q: wire.Query, r: Reply, now: float, max_size: int) -> tuple[bytes, list[tuple[int, int]]]:
    """Reply → wire bytes for this query; TTLs aged to ``now`` unless the reply is fixed."""
    ad = r.ad and (q.do or bool(q.flags & 0x0020))
    raw = r.raw
    if raw is not None and not r.answer and not r.authority and raw.qend == q.qend:
        return wire.pack_raw(q, r.rcode, raw, int(now - r.stored), ad=ad, max_size=max_size)
    r.materialize()
    ttls = None
    if not r.fixed:
        el = int(now - r.stored)
        if el > 0:
            ttls = ([rr.ttl - el for rr in r.answer], [rr.ttl - el for rr in r.authority],
                    [rr.ttl - el for rr in r.additional])
    return wire.pack_reply(q, r.rcode, r.answer, r.authority, r.additional, ttls=ttls, ede=r.ede, ad=ad,
                           max_size=max_size)


class DnsServer:
    """The UDP and TCP listeners of one address, sharing one chain."""

    POLL_EVERY = 8  # client packets between two looks at the upstream sockets (when queries are out)
    POLL_IDLE = 0.001  # recv timeout while upstream queries are out and no client packet comes
    IDLE_WAKE = 1.0  # seconds between two wake-ups of an idle UDP thread (cache sweeping)
    IDLE_SWEEP = 4096  # keys a sweep step may look at when no client is waiting (else cache.Sweep.BUDGET)
    TICK = 0.01  # seconds between two housekeeping steps of the UDP thread (see _tick)

    def __init__(self, chain: Chain, host: str, port: int, *, tcp_idle_timeout: float = 10.0,
                 tcp_max_connections: int = 256, reuse_port: bool = False, deadline: float = 8.0):
        self.chain = chain
        self.host, self.port = host, port
        self.family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.tcp_idle_timeout = tcp_idle_timeout
        self.tcp_max_connections = tcp_max_connections
        self.reuse_port = reuse_port
        self.deadline = deadline
        self.tally = Tally()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.sock: socket.socket | None = None
        self.reactor: ThreadReactor | None = None
        self.loop_reactor: LoopReactor | None = None
        self._thread: threading.Thread | None = None
        self._tcp: asyncio.base_events.Server | None = None
        self._tcp_conns = 0
        self._running = False
        self.batched = False  # recvmmsg/sendmmsg (filterproxy.dns.mmsg) on the UDP hot path
        self._wake: socket.socket | None = None
        self.wake_addr = None
        self._held: list[tuple[bytes, tuple]] | None = None  # replies to send after the batch (batched loop)

    def _udp_socket(self) -> socket.socket:
        s = socket.socket(self.family, socket.SOCK_DGRAM)
        if self.reuse_port:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        for opt, size in ((socket.SO_RCVBUF, 4 << 20), (socket.SO_SNDBUF, 4 << 20)):
            try:
                s.setsockopt(socket.SOL_SOCKET, opt, size)
            except OSError:
                pass
        return s

    def _bind_any_port(self) -> tuple[socket.socket, socket.socket]:
        """A UDP and a TCP socket bound to the same free port (the kernel picks the UDP one; retried
        while its TCP twin is taken)."""
        for _ in range(50):
            u = self._udp_socket()
            u.bind((self.host, 0))
            t = socket.socket(self.family, socket.SOCK_STREAM)
            t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if self.reuse_port:  # DNS workers join this address
                t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            try:
                t.bind((self.host, u.getsockname()[1]))
                return u, t
            except OSError:
                u.close()
                t.close()
        raise OSError(f"no port free for both UDP and TCP on {self.host}")

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        tcp_sock = None
        if self.port == 0:  # any free port (tests): one whose TCP twin is free too
            s, tcp_sock = self._bind_any_port()
        else:
            s = self._udp_socket()
            s.bind((self.host, self.port))
        self.port = s.getsockname()[1]
        self.sock = s
        # wake-ups for the UDP thread (results from the loop, stop): a datagram from a known address
        w = socket.socket(self.family, socket.SOCK_DGRAM)
        local = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(self.host, self.host)
        w.bind((local, 0))
        w.connect((local, self.port))
        w.setblocking(False)
        self._wake = w
        self.wake_addr = w.getsockname()
        self.reactor = ThreadReactor(self.loop, self._send_wake, self._set_polling)
        self._set_polling(False)
        self.loop_reactor = LoopReactor(self.loop)
        if tcp_sock is not None:
            self._tcp = await asyncio.start_server(self._tcp_client, sock=tcp_sock, backlog=256)
        else:
            self._tcp = await asyncio.start_server(self._tcp_client, self.host, self.port, reuse_address=True,
                                                   reuse_port=self.reuse_port or None, backlog=256)
        self._running = True
        target, args, self.batched = self._pick_udp_loop(s)
        self._thread = threading.Thread(target=target, args=args, name=f"filterproxy-dns-udp-{self.port}",
                                        daemon=True)
        self._thread.start()

    def _pick_udp_loop(self, s: socket.socket) -> tuple:
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
        try:
            self._wake.send(b"\x00")
        except OSError:  # buffer full: the thread is awake anyway
            pass

    def _set_polling(self, on: bool) -> None:
        """While upstream queries are out, ``recvfrom`` returns every POLL_IDLE s to look at them; else every
        IDLE_WAKE s (an idle thread still sweeps expired cache entries)."""
        usec = int((self.POLL_IDLE if on else self.IDLE_WAKE) * 1e6)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", usec // 1000000, usec % 1000000))

    async def stop(self) -> None:
        self._running = False
        if self._tcp is not None:
            self._tcp.close()
        if self._wake is not None:
            self._send_wake()
        if self._thread is not None:
            await asyncio.get_running_loop().run_in_executor(None, self._thread.join, 2.0)
        if self.reactor is not None:
            self.reactor.close()
        for sk in (self.sock, self._wake):
            if sk is not None:
                sk.close()
        self.tally.flush()

    # ------------------------------------------------------------------ UDP
    def _udp_loop(self) -> None:
        sock = self.sock
        recv = sock.recvfrom
        send = sock.sendto
        clients = self.chain.clients
        table = clients.table
        state = clients.state
        mono = time.monotonic
        slow = self._udp_slow
        reactor = self.reactor
        hits = self.tally.hits
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
                # link 3: rate limit (a window per second)
                if st.sec != sec:
                    st.sec = sec
                    st.count = 1
                else:
                    st.count += 1
                    if st.count > st.limit:
                        self._limited(st, data, addr)
                        continue
                # link 4: the packed reply of this group for exactly these bytes
                key = data[2:]
                e = st.cache.get(key)
                if e is not None and e[0] > now:
                    if e[1] < sec:  # TTLs to age (once a second, or less for long TTLs)
                        e = aged(e, sec)
                        st.cache[key] = e
                    send(data[:2] + e[2], addr)
                    hits[e[3]] += 1
                    continue
                slow(data, addr, st, now)
            except Exception:  # never let the listener die; the query gets SERVFAIL when possible
                if not self._running:
                    break
                self._crashed("udp", data, addr)

    def _udp_loop_batched(self, bs) -> None:
        """:meth:`_udp_loop` on batches: one ``recvmmsg`` for every queued query, one ``sendmmsg`` for the
        packed replies among them (:mod:`filterproxy.dns.mmsg`). Same links, same order, per datagram."""
        from filterproxy.dns.mmsg import NAME, SLOT

        clients = self.chain.clients
        table = clients.table
        state = clients.state
        ips: dict[bytes, str] = {}  # source address bytes → the text form the client table is keyed by
        mono = time.monotonic
        slow = self._udp_slow
        reactor = self.reactor
        hits = self.tally.hits
        tick, sweep, idle_budget = self._tick, self.chain.sweep, self.IDLE_SWEEP
        next_tick = 0.0
        recv, flush = bs.recv, bs.flush
        rbuf, names, sbuf, name_base = bs.rbuf, bs.names, bs.sbuf, bs.name_base
        lens, len_step, len_at, ipv4 = bs.lens, bs.len_step, bs.len_at, bs.ipv4
        iov_lens, iov_step, iov_at, msg_names, msg_step = bs.iov_lens, bs.iov_step, bs.iov_at, bs.msg_names, bs.msg_step
        name_words, slot_words = NAME // 4, SLOT // 2
        rids, sids = bs.rids, bs.sids
        v6 = bs.family == socket.AF_INET6
        sendto = self.sock.sendto
        # datagrams go out in bursts, one per batch: upstream queries (reactor.held) and the replies to
        # cache misses (self._held) — a datagram that wakes its sleeping receiver costs ~3x one that does not
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
                    raw = bytes(names[noff + 8:noff + 24]) if v6 else ipv4[i * name_words + 1]
                    ip = ips.get(raw)
                    if ip is None:
                        if len(ips) >= 65536:
                            ips.clear()
                        ip = ips[raw] = bs.ip(i)
                    st = table.get(ip)
                    if st is None:
                        st = state(ip, now)
                    # link 3: rate limit (a window per second)
                    if st.sec != sec:
                        st.sec = sec
                        st.count = 1
                    else:
                        st.count += 1
                        if st.count > st.limit:
                            self._limited(st, bytes(rbuf[off:end]), bs.addr(i, ip))
                            continue
                    # link 4: the packed reply of this group for exactly these bytes (the ID is not in the key)
                    key = bytes(rbuf[off + 2:end])
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
                            sbuf[so + 2:so + size] = body
                            iov_lens[j * iov_step + iov_at] = size
                            msg_names[j * msg_step] = name_base + noff
                            j += 1
                        else:
                            sendto(bytes(rbuf[off:off + 2]) + body, bs.addr(i, ip))
                        hits[e[3]] += 1
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
                self._crashed("udp", data, bs.addr(i) if data is not None and i < n else None)

    def _tick(self, now: float) -> float:
        """Housekeeping on the UDP thread, every TICK seconds while packets come; returns the next time.

        * Expired cache entries go, a small slice at a time (cache.Sweep: the keys due by now in a pass of
          ``cache.sweep_interval`` seconds, at most 256 a step; slices of 2048 keys 10x a second took 1-3 ms
          each and set the p99 of cache hits, unpaced slices of 256 keys every tick took ~10% of the thread).
        * A young-generation collection: replaced cache entries free old objects as fast as new ones
          arrive, so the collector's allocation count barely moves and would never start one. Every tick,
          each takes ~0.05 ms under the bench load (every 10 ticks they took 0.8 ms at the median, over
          1 ms at the 90th percentile: pauses that every query waiting behind them pays).
        """
        self.chain.sweep(now)
        gc.collect(0)
        return now + self.TICK

    def _crashed(self, protocol: str, data: bytes | None, addr) -> None:
        metrics.DNS_ERRORS.inc("exception")
        log.exception("dns: error handling a %s query; answered SERVFAIL", protocol)
        if protocol == "udp" and data and addr:
            r = wire.header_reply(data, wire.SERVFAIL)
            if r:
                try:
                    self.sock.sendto(r, addr)
                except OSError:
                    pass

    def _limited(self, st, data: bytes, addr) -> None:
        metrics.DNS_RATELIMITED.inc(st.group or "unknown")
        if st.count <= 2 * st.limit:
            metrics.DNS_REFUSED.inc("ratelimit")
            r = wire.header_reply(data, REFUSED)
            if r:
                self.sock.sendto(r, addr)

    def _admit(self, data: bytes, st) -> tuple[wire.Query | None, bytes | None]:
        """Parse and admit a query: (query, None) to go on, or (None, reply or None to drop)."""
        try:
            q = wire.parse_query(data)
        except WireError as exc:
            metrics.DNS_MALFORMED.inc()
            return None, (wire.header_reply(data, exc.rcode) if exc.rcode is not None else None)
        if not st.allowed:  # link 2: no open resolver
            metrics.DNS_REFUSED.inc("acl")
            return None, wire.header_reply(data, REFUSED)
        if st.group is None:
            metrics.DNS_REFUSED.inc("unknown-client")
            return None, wire.header_reply(data, REFUSED)
        if q.edns and q.edns_version != 0:  # RFC 6891 §6.1.3
            return None, wire.pack_reply(q, wire.BADVERS)[0]
        return q, None

    def _handle(self, q: wire.Query, st, protocol: str, reactor, now: float):
        """An admitted query through the chain: a Reply, or a Deferred of one; SERVFAIL if the chain fails."""
        try:
            return self.chain.handle(Request(q.qname, wire.policy_name(q.qname), q.qtype, q.qclass, q.do, q.cd,
                                             st.group, protocol, now, reactor))
        except Exception:
            metrics.DNS_ERRORS.inc("exception")
            log.exception("dns: chain failed for %s/%s; answered SERVFAIL", q.name, q.qtype_name)
            return responses.servfail(now, (wire.EDE_OTHER, "error"))

    def _udp_slow(self, data: bytes, addr, st, now: float) -> None:
        if len(data) < 12 and addr == self.wake_addr:  # a wake-up from the loop
            self.reactor.drain()
            return
        q, early = self._admit(data, st)
        if q is None:
            if early:
                self.sock.sendto(early, addr)
            return
        r = self._handle(q, st, "udp", self.reactor, now)
        if type(r) is Reply:
            self._udp_answer(q, r, addr, st, now)
        else:
            r.add(lambda value, error: self._udp_later(q, value, error, addr, st))

    def _udp_later(self, q: wire.Query, r, error, addr, st) -> None:
        """A Deferred reply arrived (on this thread)."""
        now = time.monotonic()
        if error is not None or type(r) is not Reply:
            metrics.DNS_ERRORS.inc("exception")
            log.error("dns: chain failed for %s/%s: %r; answered SERVFAIL", q.name, q.qtype_name, error)
            r = responses.servfail(now, (wire.EDE_OTHER, "error"))
        try:
            self._udp_answer(q, r, addr, st, now)
        except Exception:
            self._crashed("udp", q.data, addr)

    def _send_held(self) -> None:
        """Send the replies held by :meth:`_udp_answer` (batched loop), in one burst."""
        held = self._held
        sendto = self.sock.sendto
        for msg, addr in held:
            try:
                sendto(msg, addr)
            except OSError:  # a full buffer or an unreachable client: UDP may drop
                pass
        held.clear()

    def _udp_answer(self, q: wire.Query, r: Reply, addr, st, now: float) -> None:
        msg, offsets = pack(q, r, now, q.max_udp())
        held = self._held
        if held is not None:
            held.append((msg, addr))
        else:
            self.sock.sendto(msg, addr)
        slot = self.tally.count(st.group, q.qtype, r, "udp")
        if r.expires > now and st.packed is not None:
            st.packed.put(q.data[2:], make_entry(msg, offsets, r.expires, now, r.fixed, slot))

    # ------------------------------------------------------------------ TCP
    async def _tcp_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._tcp_conns >= self.tcp_max_connections:
            metrics.DNS_REFUSED.inc("tcp-limit")
            writer.close()
            return
        self._tcp_conns += 1
        inflight: set[asyncio.Task] = set()
        try:
            peer = writer.get_extra_info("peername")
            ip = peer[0] if peer else ""
            clients = self.chain.clients
            while True:
                try:
                    hdr = await asyncio.wait_for(reader.readexactly(2), self.tcp_idle_timeout)
                    size = _U16.unpack(hdr)[0]
                    data = await asyncio.wait_for(reader.readexactly(size), self.tcp_idle_timeout)
                except (asyncio.TimeoutError, asyncio.IncompleteReadError, ConnectionError, OSError):
                    break
                now = time.monotonic()
                st = clients.table.get(ip) or clients.state(ip, now)
                sec = int(now)
                if st.sec != sec:
                    st.sec, st.count = sec, 1
                else:
                    st.count += 1
                    if st.count > st.limit:
                        metrics.DNS_RATELIMITED.inc(st.group or "unknown")
                        metrics.DNS_REFUSED.inc("ratelimit")
                        r = wire.header_reply(data, REFUSED)
                        if r:
                            writer.write(_U16.pack(len(r)) + r)
                        continue
                try:
                    out = self._tcp_query(data, st, now)
                except Exception:
                    metrics.DNS_ERRORS.inc("exception")
                    log.exception("dns: error handling a tcp query; answered SERVFAIL")
                    out = wire.header_reply(data, wire.SERVFAIL)
                if out is None:
                    continue
                if isinstance(out, bytes):
                    writer.write(_U16.pack(len(out)) + out)
                else:  # waits for an upstream: answer when ready, keep reading (pipelining)
                    if len(inflight) >= 32:
                        await asyncio.wait(inflight, return_when=asyncio.FIRST_COMPLETED)
                    t = asyncio.ensure_future(self._tcp_finish(out, writer, st))
                    inflight.add(t)
                    t.add_done_callback(inflight.discard)
                await writer.drain()
            if inflight:
                await asyncio.wait(inflight, timeout=self.deadline)
        except (ConnectionError, OSError):
            pass
        finally:
            self._tcp_conns -= 1
            for t in inflight:
                t.cancel()
            try:
                writer.close()
            except Exception:
                pass

    def _tcp_query(self, data: bytes, st, now: float):
        q, early = self._admit(data, st)
        if q is None:
            return early
        r = self._handle(q, st, "tcp", self.loop_reactor, now)
        if type(r) is Reply:
            return self._tcp_answer(q, r, st, now)
        return (q, r)

    def _tcp_answer(self, q: wire.Query, r: Reply, st, now: float) -> bytes:
        msg, _ = pack(q, r, now, 65535)
        self.tally.count(st.group, q.qtype, r, "tcp")
        return msg

    async def _tcp_finish(self, pending, writer: asyncio.StreamWriter, st) -> None:
        q, d = pending
        try:
            r = await asyncio.wait_for(to_future(d, self.loop), self.deadline)
        except asyncio.TimeoutError:
            metrics.DNS_ERRORS.inc("timeout")
            r = responses.servfail(time.monotonic(), (wire.EDE_NETWORK_ERROR, "timeout"))
        except Exception as exc:
            metrics.DNS_ERRORS.inc("exception")
            log.error("dns: chain failed for %s/%s: %r; answered SERVFAIL", q.name, q.qtype_name, exc)
            r = responses.servfail(time.monotonic(), (wire.EDE_OTHER, "error"))
        try:
            msg = self._tcp_answer(q, r, st, time.monotonic())
        except Exception:
            metrics.DNS_ERRORS.inc("exception")
            log.exception("dns: error packing a tcp reply; answered SERVFAIL")
            msg = wire.header_reply(q.data, wire.SERVFAIL)
        if not writer.is_closing():
            writer.write(_U16.pack(len(msg)) + msg)


class DnsService:
    """The DNS side of ``filterproxy run``: chain + listeners + periodic housekeeping."""

    def __init__(self, cfg, engine, *, listen: tuple[str, int], upstreams: list[str] | None = None,
                 reuse_port: bool = False):
        from filterproxy.dns.chain import build_chain

        self.cfg = cfg
        self.engine = engine
        self.chain = build_chain(cfg, engine, upstreams=upstreams)
        timeout = cfg.upstreams.timeout
        deadline = min(15.0, timeout * (len(upstreams or cfg.upstreams.servers) + 1) + 0.5)
        self.server = DnsServer(self.chain, listen[0], listen[1], tcp_idle_timeout=cfg.dns.tcp_idle_timeout,
                                tcp_max_connections=cfg.dns.tcp_max_connections, reuse_port=reuse_port,
                                deadline=deadline)
        self._timer: asyncio.Task | None = None
        self._schedules: dict[str, tuple[bool, ...]] = {}

    @property
    def address(self) -> tuple[str, int]:
        return self.server.host, self.server.port

    async def start(self) -> None:
        self.chain.log()
        await self.server.start()
        self._schedules = self._active_schedules()
        self._timer = asyncio.get_running_loop().create_task(self._housekeeping())

    def on_swap(self) -> None:
        """Call after ``engine.swap``: packed replies carry old verdicts."""
        self.chain.on_swap()

    def _active_schedules(self) -> dict[str, tuple[bool, ...]]:
        now = self.engine.now()
        return {g: tuple(s.active(now) for s in p.schedules) for g, p in self.engine.config.groups.items()
                if p.schedules}

    async def _housekeeping(self) -> None:
        """Every second: publish metrics; on a schedule change drop that group's packed replies;
        every 30 s rebuild client states when MAC rules exist (leases move)."""
        ticks = 0
        while True:
            await asyncio.sleep(1.0)
            ticks += 1
            try:
                self.server.tally.flush()
                metrics.DNS_CACHE_ENTRIES.set("answers", value=len(self.chain.answer_cache))
                metrics.DNS_CACHE_ENTRIES.set("packed", value=len(self.chain.packed))
                cur = self._active_schedules()
                for g, act in cur.items():
                    if self._schedules.get(g) != act:
                        log.info("dns: schedules of group %s changed; its cached answers are dropped", g)
                        self.chain.on_schedules_changed(g)
                self._schedules = cur
                if ticks % 30 == 0 and self.engine.clients.uses_mac:
                    self.chain.clients.reset()
                if ticks % 5 == 0:
                    # Caches hold ~100k long-lived objects. Left to the collector, every older-generation
                    # collection walks them all (tens of ms: a latency spike); frozen, they are never walked
                    # again, and still freed by reference counting when evicted. Once an hour one
                    # full collection reclaims whatever reference cycles were frozen meanwhile.
                    t0 = time.perf_counter()
                    if ticks % 3600 == 0:
                        gc.unfreeze()
                        gc.collect()
                    else:
                        gc.collect(1)
                    gc.freeze()
                    log.debug("dns: gc freeze took %.1f ms", (time.perf_counter() - t0) * 1000)
            except Exception:
                log.exception("dns: housekeeping failed")

    async def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        await self.server.stop()
        await self.chain.close()
