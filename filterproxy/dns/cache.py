"""DNS caches, two layers.

* :class:`AnswerCache` — upstream answers, **group-independent** (no policy in them), keyed by
  ``(qname, qtype, qclass, DO, CD)``. TTL-respecting, ``cache.min_ttl``/``max_ttl`` clamped, negative
  answers (NXDOMAIN/NODATA) kept for the SOA's negative TTL (RFC 2308 §5), capped by
  ``cache.negative_ttl``. SERVFAIL and friends are never cached.
* :class:`PackedCache` — final, packed replies **per group**, keyed by the client's request bytes minus
  the 2-byte ID (so the question's case, flags and EDNS record are all part of the key). The UDP hot
  path is: slice, one dict lookup, patch the ID, ``sendto``. Entries age their TTLs (a few
  ``pack_into`` calls, not a re-pack) every second, or every 1/64 of their TTL for long TTLs (see
  :func:`age_step`); they die when their shortest TTL does, when the snapshot is swapped, or when the
  group's schedules change.

Both are plain dicts, bounded by ``cache.size`` with FIFO eviction of the oldest eighth: reads never
take a lock (a dict lookup is atomic under the GIL); writes and evictions take one, because the UDP
thread and the event loop thread both write. Expired entries do not wait for eviction: :class:`Sweep`
walks each dict once every ``cache.sweep_interval`` seconds (30), a slice at a time (the UDP thread
calls it 100 times a second; each call looks at the keys due by then, at most 256), and drops them, so
memory follows the live answers — a burst of short-TTL names does not stay resident until the cache is
full — and no step holds the thread for more than a fraction of a millisecond. Pacing matters: looking
at a key costs ~0.5 µs (a dict probe and the entry, both cold), so walking 2 x 256 keys every 10 ms
took ~10% of the UDP thread under load; one pass per 30 s over 100k entries takes ~0.2%.
"""

from __future__ import annotations

import struct
import threading
from dataclasses import dataclass

from filterproxy.dns import wire
from filterproxy.dns.responses import Reply
from filterproxy.dns.wire import NOERROR, NXDOMAIN, RR, SOA


@dataclass(slots=True)
class TtlPolicy:
    """``cache`` section values that shape lifetimes."""

    min_ttl: int = 0
    max_ttl: int = 86400
    negative_ttl: int = 300

    def clamp(self, ttl: int) -> int:
        return max(self.min_ttl, min(ttl, self.max_ttl))


def _soa_negative_ttl(authority: list[RR]) -> int | None:
    for rr in authority:
        if rr.type == SOA and len(rr.rdata) >= 22:
            minimum = int.from_bytes(rr.rdata[-4:], "big")
            return min(rr.ttl, minimum)
    return None


def lifetime(msg: wire.Message, pol: TtlPolicy) -> int:
    """Seconds an upstream answer may be cached (0: do not cache)."""
    rc = msg.rcode
    if rc == NOERROR and msg.answer:
        return pol.clamp(min(rr.ttl for rr in msg.answer))
    if rc in (NOERROR, NXDOMAIN):  # negative: NODATA or NXDOMAIN
        neg = _soa_negative_ttl(msg.authority)
        if neg is None:  # RFC 2308 §5: without an SOA, do not cache (unless min_ttl says so)
            return pol.min_ttl
        return max(pol.min_ttl, min(neg, pol.negative_ttl, pol.max_ttl))
    return 0


def to_reply(msg: wire.Message, pol: TtlPolicy, now: float, upstream: str | None = None) -> Reply:
    """An upstream message as a cacheable reply: TTLs clamped, negative SOA TTL set to its lifetime."""
    life = lifetime(msg, pol)
    lo, hi = pol.min_ttl, pol.max_ttl
    answer = [
        rr if lo <= rr.ttl <= hi else RR(rr.name, rr.type, rr.cls, pol.clamp(rr.ttl), rr.rdata) for rr in msg.answer
    ]
    if msg.answer or not life:
        authority = msg.authority
    else:  # negative answer: its SOA tells downstream caches the same lifetime
        authority = [RR(rr.name, rr.type, rr.cls, life, rr.rdata) if rr.type == SOA else rr for rr in msg.authority]
    additional = [rr for rr in msg.additional if rr.type != wire.OPT]
    return Reply(
        msg.rcode,
        answer,
        authority,
        additional,
        stored=now,
        expires=now + life if life > 0 else 0.0,
        ad=bool(msg.flags & 0x0020),
        upstream=upstream,
    )


def from_upstream(
    buf: bytes, qname: bytes, qtype: int, pol: TtlPolicy, now: float, upstream: str | None = None
) -> Reply | None:
    """An upstream reply to (qname, qtype) as a cacheable reply; None when it answers another question.

    The usual reply is only walked (:func:`wire.scan_reply`) and kept as bytes; unusual ones are parsed.
    Raises WireError when malformed.
    """
    res = wire.scan_reply(buf, qname, qtype, pol.min_ttl, pol.max_ttl, pol.negative_ttl)
    if res is not None:
        rcode, flags, raw = res
        return Reply(
            rcode,
            (),
            (),
            (),
            stored=now,
            expires=now + raw.life if raw.life > 0 else 0.0,
            ad=bool(flags & 0x0020),
            upstream=upstream,
            raw=raw,
        )
    msg = wire.parse_message(buf)
    if msg.question is None or msg.question[0] != qname or msg.question[1] != qtype or msg.tc:
        return None
    return to_reply(msg, pol, now, upstream)


_TUPLE_NEW = tuple.__new__
_RAW = wire.RawAnswer
_U32 = struct.Struct(">I")


class AnswerCache:
    """Upstream answers (group-independent), bounded FIFO with TTL expiry."""

    def __init__(self, size: int, sweep_interval: float = 30.0):
        self.size = max(16, size)
        self._d: dict[bytes, Reply | tuple] = {}
        self._lock = threading.Lock()
        self.sweep = Sweep(self._d, self._lock, 2, sweep_interval)  # (rcode, stored, expires, ...) or a Reply

    def describe(self) -> str:
        return f"{self.size} entries"

    def get(self, key: bytes, now: float) -> Reply | None:
        r = self._d.get(key)
        if r is None:
            return None
        if type(r) is not Reply:  # a raw reply, stored as atoms (see put); Reply is final, so this narrows r
            if r[2] <= now:
                self._d.pop(key, None)
                return None
            return Reply(
                r[0], (), (), (), stored=r[1], expires=r[2], ad=r[3], upstream=r[4], raw=_TUPLE_NEW(_RAW, r[5:])
            )
        if r.expires <= now:
            self._d.pop(key, None)
            return None
        return r

    def put(self, key: bytes, reply: Reply) -> None:
        if reply.expires <= reply.stored:
            return
        raw = reply.raw
        if raw is not None and not reply.answer and not reply.authority:
            # ONE flat tuple of atoms: the collector stops tracking it at its first young collection (100k
            # entries, no GC scans). Not a tuple inside a tuple: the collector's pass reorders its list so
            # the outer tuple is looked at before the inner one is untracked, and stays tracked until an
            # older-generation collection (4k such entries made those take ~3 ms). Nor a NamedTuple:
            # subclasses are never untracked.
            entry: Reply | tuple = (reply.rcode, reply.stored, reply.expires, reply.ad, reply.upstream, *raw)
        else:
            entry = reply
        with self._lock:
            d = self._d
            d.pop(key, None)
            d[key] = entry
            if len(d) > self.size:
                _evict(d, len(d) - self.size + self.size // 8)

    def clear(self) -> None:
        with self._lock:
            self._d.clear()

    def __len__(self) -> int:
        return len(self._d)


class Sweep:
    """Drops a cache dict's expired entries: one pass over its keys every ``interval`` seconds, spread
    over the calls (each looks at the keys due by ``now``, at most ``budget``).

    A pass takes the keys as they are (oldest first) and works through them over as many calls as it
    needs; entries replaced or removed meanwhile are looked up again, so a fresh entry is never dropped.
    An entry is dropped at most ~2 intervals after it expired (the pass that started before it was put
    does not see it; the next one does). ``interval`` 0: no pacing, each call looks at ``budget`` keys.
    Entries are tuples with their expiry time at index ``field`` (or, in the answer cache, Reply objects).
    """

    __slots__ = ("d", "lock", "field", "interval", "todo", "pos", "start")

    BUDGET = 256

    def __init__(self, d: dict, lock: threading.Lock, field: int, interval: float = 30.0):
        self.d = d
        self.lock = lock
        self.field = field  # index of the expiry time in a tuple entry
        self.interval = interval
        self.todo: list = []
        self.pos = 0
        self.start = 0.0  # when the current pass began

    def __call__(self, now: float, budget: int = BUDGET) -> int:
        """One step; the number of entries dropped."""
        todo = self.todo
        if self.pos >= len(todo):
            if not self.d:
                return 0
            with self.lock:
                todo = self.todo = list(self.d)
            self.pos = 0
            self.start = now
        at = self.pos
        end = at + budget
        if self.interval > 0:  # only the keys due by now: the pass lasts ``interval`` seconds
            due = int(len(todo) * (now - self.start) / self.interval) + 1
            if due < end:
                end = due
            if end <= at:
                return 0
        self.pos = end
        d, f, n = self.d, self.field, 0
        with self.lock:
            for k in todo[at:end]:
                e = d.get(k)
                if e is not None and (e[f] if type(e) is tuple else e.expires) <= now:
                    del d[k]
                    n += 1
        if end >= len(todo):
            self.todo = []  # the pass is over: no key kept alive by it
        return n


def _evict(d: dict, n: int) -> None:
    """Drop the ``n`` oldest entries (dicts keep insertion order). Caller holds the lock."""
    it = iter(list(d.keys())[:n])
    for k in it:
        d.pop(k, None)


# A packed entry: (expires, fresh until second, reply without its ID, tally slot, base second, ages, log) —
# one flat tuple of atoms, so the garbage collector drops it from its lists at the first look.
#   ages: b"" (fixed TTLs) or ">HI" (offset, TTL as of ``base``) per record
#   log: the query log's verdict id of this answer (an int, QueryLog.verdict), 0 when the log is off
ENTRY_EXPIRES, ENTRY_FRESH, ENTRY_BYTES, ENTRY_SLOT, ENTRY_BASE, ENTRY_AGES, ENTRY_LOG = range(7)
NEVER = 1 << 62
_AGE = struct.Struct(">HI")


def age_step(ttl: int) -> int:
    """Seconds between two re-renderings of a cached reply whose shortest TTL is ``ttl``.

    Every second for TTLs up to 2 minutes; above that, 1/64 of the TTL (a one-hour answer is re-rendered
    once a minute): the TTL a client sees is never more than 1.6% above the true remainder, and the
    hot path re-renders ~50x less often.
    """
    return max(1, ttl >> 6) if ttl > 127 else 1


class PackedCache:
    """Packed replies of one group: request bytes (after the ID) → entry tuple (see ENTRY_*)."""

    __slots__ = ("d", "size", "_lock", "group", "sweep")

    def __init__(self, group: str, size: int, lock: threading.Lock, sweep_interval: float = 30.0):
        self.group = group
        self.d: dict[bytes, tuple] = {}
        self.size = max(16, size)
        self._lock = lock
        self.sweep = Sweep(self.d, lock, ENTRY_EXPIRES, sweep_interval)

    def put(self, key: bytes, entry: tuple) -> None:
        with self._lock:
            d = self.d
            d[key] = entry
            if len(d) > self.size:
                _evict(d, len(d) - self.size + self.size // 8)

    def clear(self) -> None:
        with self._lock:
            self.d.clear()


def make_entry(
    msg: bytes,
    offsets: list[tuple[int, int]],
    expires: float,
    now: float,
    fixed: bool,
    slot: int,
    logged: int = 0,
) -> tuple:
    """A packed-cache entry for ``msg`` (a full reply; its ID is cut off here); ``logged``: its query-log verdict id."""
    sec = int(now)
    if fixed or not offsets:
        return (expires, NEVER, msg[2:], slot, sec, b"", logged)
    pack = _AGE.pack
    parts = []
    low = 1 << 31
    for off, ttl in offsets:
        parts.append(pack(off - 2, ttl))
        if ttl < low:
            low = ttl
    return (expires, sec + age_step(low) - 1, msg[2:], slot, sec, b"".join(parts), logged)


def aged(entry: tuple, sec: int) -> tuple:
    """The entry re-rendered for second ``sec``: every TTL lowered by the seconds since it was packed."""
    expires, _fresh, body, slot, base, ages, logged = entry
    if not ages:
        return (expires, NEVER, body, slot, base, ages, logged)
    el = sec - base
    buf = bytearray(body)
    pack = _U32.pack_into
    left = 1 << 31
    for off, ttl in _AGE.iter_unpack(ages):
        t = ttl - el
        if t < 0:
            t = 0
        if t < left:
            left = t
        pack(buf, off, t)
    return (expires, sec + age_step(left) - 1, bytes(buf), slot, base, ages, logged)


class PackedCaches:
    """One :class:`PackedCache` per group, plus the ones for refused/unknown clients (always empty)."""

    EMPTY: dict = {}

    def __init__(self, groups, size: int, sweep_interval: float = 30.0):
        self._lock = threading.Lock()
        self.size, self.sweep_interval = size, sweep_interval
        self.by_group: dict[str, PackedCache] = {g: PackedCache(g, size, self._lock, sweep_interval) for g in groups}

    def set_groups(self, groups) -> None:
        """A reloaded configuration's groups: one empty cache each (swapped as one reference)."""
        self.by_group = {g: PackedCache(g, self.size, self._lock, self.sweep_interval) for g in groups}

    def for_group(self, group: str | None) -> PackedCache | None:
        return self.by_group.get(group) if group is not None else None

    def clear(self, group: str | None = None) -> None:
        for g, c in self.by_group.items():
            if group is None or g == group:
                c.clear()

    def sweep(self, now: float, budget: int = Sweep.BUDGET) -> int:
        """A :class:`Sweep` step in every group's cache."""
        return sum(c.sweep(now, budget) for c in self.by_group.values())

    def __len__(self) -> int:
        return sum(len(c.d) for c in self.by_group.values())
