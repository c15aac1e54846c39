"""What both listeners do with an admitted query: the chain call, the reply packing, the metric tally.

Fail closed: an exception in the chain answers SERVFAIL and is counted; it never forwards an
unchecked answer.
"""

from __future__ import annotations

import logging
import threading
import time
from array import array
from collections.abc import Callable
from typing import TYPE_CHECKING

from filterproxy import metrics
from filterproxy.dns import responses, wire
from filterproxy.dns.chain import Request
from filterproxy.dns.responses import Reply
from filterproxy.state import stats

if TYPE_CHECKING:
    from filterproxy.dns.chain import Chain, Result
    from filterproxy.dns.clients import ClientState
    from filterproxy.dns.decisions import Decisions
    from filterproxy.querylog import QueryLog

log = logging.getLogger("filterproxy.dns")

_QTYPE = wire.QTYPE_NAMES


class Tally:
    """Per-query metric counting on plain ints, one slot per label combination.

    ``hits[i]`` counts answers from the packed cache (the UDP hot path: ``hits[e.slot] += 1``), ``other[i]``
    every other answer. Slots only ever grow; :meth:`flush` publishes the growth since the last flush
    into the metrics counters, so there is no read-and-reset race between the UDP thread and the loop.
    Cache entries hold the slot number (an int), which keeps them invisible to the garbage collector.

    ``querylog`` (set before the listeners start; None when ``querylog.enabled`` is off) gets one record per
    answered query: :meth:`record` on the slow paths, and the packed entry's own record on the UDP hit path.
    """

    def __init__(self) -> None:
        self.querylog: QueryLog | None = None
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

    def log_buffer(self) -> tuple[array | None, Callable, Callable, int, Callable[[], None]]:
        """A query-log buffer of its own for one UDP hot loop (QueryLog.buffer); (None, …, 0, a no-op) when off."""
        ql = self.querylog
        if ql is None:
            return None, _nothing, _nothing, 0, _nothing
        return ql.buffer()

    def record(self, q: wire.Query, r: Reply, st: ClientState, now: float, decisions: Decisions | None = None) -> int:
        """Queue the query-log record of an answered query; return its verdict id for the packed entry (0: off).

        An allowed answer comes from upstream without a verdict: the question's verdict (reason "default",
        or the allowlist that let it through) is the one the policy link memoised in ``decisions``.
        """
        ql = self.querylog
        if ql is None:
            return 0
        from filterproxy.querylog import info

        group = st.group or ""
        name = wire.policy_name(q.qname)
        v = r.verdict
        if v is None and name is not None and decisions is not None:
            memo = decisions.memo.get(group)
            v = memo.get(name) if memo is not None else None
        what = info(group, "dns", name or q.name, q.qtype_name, r.action, v)  # unfilterable: as sent
        return ql.put(now, st.qlid >> 32 or st.ip, what)

    def flush(self) -> None:
        """The growth since the last flush into the metrics and the statistics (once a second, not per query)."""
        hits = 0
        now = time.time()
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
            stats.COUNTER.add(group, blocked[1] if blocked else "none", action, protocol, da + db, now)
            hits += da
        if hits:
            metrics.DNS_CACHE_HITS.inc(amount=hits)


def _nothing(*_args: object) -> None:
    pass


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
            ttls = (
                [rr.ttl - el for rr in r.answer],
                [rr.ttl - el for rr in r.authority],
                [rr.ttl - el for rr in r.additional],
            )
    return wire.pack_reply(
        q, r.rcode, r.answer, r.authority, r.additional, ttls=ttls, ede=r.ede, ad=ad, max_size=max_size
    )


def handle(chain: Chain, q: wire.Query, st: ClientState, protocol: str, reactor: object, now: float) -> Result:
    """An admitted query through the chain: a Reply, or a Deferred of one; SERVFAIL if the chain fails."""
    try:
        group = st.group
        assert group is not None  # admission.admit refuses clients without a group
        name = wire.policy_name(q.qname)
        req = Request(q.qname, name, q.qtype, q.qclass, q.do, q.cd, group, protocol, now, reactor, client=st.paused)
        return chain.handle(req)
    except Exception:
        metrics.DNS_ERRORS.inc("exception")
        log.exception("dns: chain failed for %s/%s; answered SERVFAIL", q.name, q.qtype_name)
        return responses.servfail(now, (wire.EDE_OTHER, "error"))


def failed_reply(q: wire.Query, error: BaseException | None, now: float) -> Reply:
    """SERVFAIL for a Deferred that failed (counted and logged)."""
    metrics.DNS_ERRORS.inc("exception")
    log.error("dns: chain failed for %s/%s: %r; answered SERVFAIL", q.name, q.qtype_name, error)
    return responses.servfail(now, (wire.EDE_OTHER, "error"))
