"""The resolver as a chain of small links. The order lives in ONE function, :func:`build_chain`.

Each link gets the request and the rest of the chain (``nxt``) and returns a :class:`Reply` — or, when it
has to wait for an upstream, a :class:`~filterproxy.dns.deferred.Deferred` of one. Everything that can be
answered without the network (blocked names, cached answers) is answered synchronously; upstream
exchanges go through the request's reactor (the UDP thread's own, or the asyncio loop's for TCP
clients), and the rest of the chain runs when the reply is there, on that same thread. Links that look
at the answer (CNAME cloaking, SVCB rewriting, the cache) use :func:`then`, which works on both.

Every link reports itself at start-up, so the log shows the chain as configured::

    dns chain  1 clients    client → group by IP/CIDR; default group teen
    dns chain  2 acl        allowed networks 127.0.0.0/8, ...
    ...

Links 1–4 run at the edge, per packet, in the servers (they must run before the packed-reply lookup and
the UDP hot path inlines them); links 5–11 run in :meth:`Chain.handle`. The chain never decides policy
itself: the policy and answer-check links only ask ``engine.decide`` (STYLE rule 1).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from filterproxy import metrics
from filterproxy.dns import responses, wire
from filterproxy.dns.cache import AnswerCache, PackedCaches, TtlPolicy, from_upstream
from filterproxy.dns.clients import ClientTable
from filterproxy.dns.deferred import Deferred
from filterproxy.dns.responses import BlockAnswers, Reply
from filterproxy.dns.upstream import AllUpstreamsFailed, UpstreamError, UpstreamGroup, parse_upstream
from filterproxy.dns.wire import ANY, CLASS_IN, CNAME, SERVFAIL
from filterproxy.names import self_and_parents
from filterproxy.verdict import Action, Reason, Verdict

log = logging.getLogger("filterproxy.dns")

Result = Reply | Deferred
Next = Callable[["Request"], Result]


@dataclass(slots=True)
class Request:
    """One question as the chain sees it (already admitted, group known)."""

    qname: bytes  # lower-case wire name
    name: str | None  # canonical host name for the policy engine; "" for the root; None: unfilterable
    qtype: int
    qclass: int
    do: bool
    cd: bool
    group: str
    protocol: str  # udp | tcp
    now: float
    reactor: Any = None  # who runs upstream attempts for this request (ThreadReactor | LoopReactor)


def then(r: Result, fn: Callable[[Reply], Reply]) -> Result:
    """``fn(reply)`` now when ``r`` is a reply, else once the Deferred has it (errors pass through)."""
    if type(r) is Reply:
        return fn(r)
    return r.then(fn)


class Link:
    """A chain link: ``__call__(req, nxt)`` answers or passes on; ``describe()`` says how it is configured."""

    name = "link"

    def describe(self) -> str:
        return ""

    def __call__(self, req: Request, nxt: Next) -> Result:  # pragma: no cover - interface
        return nxt(req)


# ---------------------------------------------------------------- edge links (run by the servers)

class EdgeLink(Link):
    """A link the servers run per packet before the packed-reply lookup (see server.py)."""

    def __init__(self, name: str, describe: Callable[[], str]):
        self.name = name
        self._describe = describe

    def describe(self) -> str:
        return self._describe()


# ---------------------------------------------------------------- decisions

class Decisions:
    """``engine.decide`` with a memo per group: the same names come back all the time (short-TTL names,
    blocked names whose answers expired, CNAME targets shared by many names) and a decision costs
    10-40 µs. Dropped with the packed replies — on a snapshot swap and when a group's schedules change —
    so a memoised verdict is never staler than a packed reply."""

    def __init__(self, engine, size: int = 65536):
        self.engine = engine
        self.size = size
        self.memo: dict[str, dict[str, Verdict]] = {}
        self._default: dict[tuple, Verdict] = {}

    def decide(self, name: str, group: str) -> Verdict:
        m = self.memo.get(group)
        if m is None:
            m = self.memo.setdefault(group, {})
        v = m.get(name)
        if v is None:
            v = self.engine.decide(None, name, group=group)
            if v.reason is not Reason.ERROR:  # errors are never remembered
                if v.reason is Reason.DEFAULT:  # one shared object for "nothing matched" (memory, GC)
                    v = self._default.setdefault((group, v), v)
                if len(m) >= self.size:
                    m.clear()
                m[name] = v
        return v

    def clear(self, group: str | None = None) -> None:
        if group is None:
            self.memo = {}
        else:
            self.memo.pop(group, None)


# ---------------------------------------------------------------- links

class SanityLink(Link):
    """Questions we do not serve: non-IN classes, zone transfers, ANY (RFC 8482), unfilterable names."""

    name = "sanity"

    def describe(self) -> str:
        return "REFUSED for non-IN classes, AXFR/IXFR, ANY, and names that cannot be filtered"

    def __call__(self, req: Request, nxt: Next) -> Result:
        if req.qclass != CLASS_IN or req.qtype in (251, 252):
            metrics.DNS_REFUSED.inc("qtype")
            return responses.refused(req.now)
        if req.qtype == ANY:
            metrics.DNS_REFUSED.inc("any")
            return responses.refused(req.now)
        if req.name is None:  # bytes no host name has: cannot be checked, so not answered (fail closed)
            metrics.DNS_REFUSED.inc("name")
            return responses.refused(req.now, (wire.EDE_PROHIBITED, "unfilterable-name"))
        return nxt(req)


class PolicyLink(Link):
    """``engine.decide`` on the question: block (per group block_mode), SafeSearch CNAME, or pass on."""

    name = "policy"

    def __init__(self, engine, answers: BlockAnswers, decisions: Decisions):
        self.engine = engine
        self.answers = answers
        self.decisions = decisions

    def describe(self) -> str:
        modes = ", ".join(f"{g}={p.block_mode}" for g, p in self.engine.config.groups.items())
        return f"engine.decide on the question; block modes {modes}; {self.answers.describe()}"

    def __call__(self, req: Request, nxt: Next) -> Result:
        if not req.name:  # the root: not a host
            return nxt(req)
        v = self.decisions.decide(req.name, req.group)
        if v.action is Action.BLOCK:
            if v.reason is Reason.ERROR:
                metrics.DNS_ERRORS.inc("policy")
            mode = self.answers.mode_for(v, req.name, self.engine.policy(req.group).block_mode)
            r = self.answers.block(req.qname, req.qtype, v, mode, req.now)
            # the question's verdict changes only with the lists (swap) or a schedule window, and both
            # drop the packed replies: until then this packed reply stays (clients still get blocked_ttl)
            r.expires = math.inf
            return r
        if v.action is Action.REWRITE and v.rewrite:
            target = wire.text_to_name(v.rewrite)
            sub = dataclasses.replace(req, qname=target, name=v.rewrite)
            qname, qtype, now, answers = req.qname, req.qtype, req.now, self.answers
            block_mode = self.engine.policy(req.group).block_mode

            def cname(r: Reply) -> Reply:
                if r.action == "block" and r.verdict is not None:  # the safe target itself is blocked
                    return answers.block(qname, qtype, r.verdict, block_mode, now)
                if r.rcode == SERVFAIL:
                    return r
                return answers.rewrite(qname, target, r, v, now)

            return then(nxt(sub), cname)
        return nxt(req)


class AnswerCheckLink(Link):
    """Blocking also checks the answer: every CNAME target (CNAME cloaking) and, when lists have IPs,
    every A/AAAA address goes through ``engine.decide``; a hit blocks the question."""

    name = "answer-check"

    def __init__(self, engine, answers: BlockAnswers, decisions: Decisions):
        self.engine = engine
        self.answers = answers
        self.decisions = decisions

    def describe(self) -> str:
        return f"CNAME targets and A/AAAA addresses ({len(self.engine.snapshot.ips)} listed IPs) through engine.decide"

    def __call__(self, req: Request, nxt: Next) -> Result:
        r = nxt(req)
        if type(r) is Reply:
            return self.check(req, r)
        return r.then(functools.partial(self.check, req))

    def check(self, req: Request, r: Reply) -> Reply:
        if r.fixed:
            return r
        raw = r.raw
        engine = self.engine
        check_ips = bool(engine.snapshot.ips)
        if raw is not None and not r.answer and not raw.cnames and not (check_ips and raw.addrs):
            return r  # the usual answer: no CNAME, no listed addresses to look at
        if raw is None and not r.answer:
            return r
        decide = self.decisions.decide
        for host in _answer_hosts(r, check_ips):
            if not host:
                continue
            v = decide(host, req.group)
            if v.action is Action.BLOCK:
                mode = self.answers.mode_for(v, host, engine.policy(req.group).block_mode)
                if mode == "nodata":
                    mode = "nxdomain"
                return self.answers.block(req.qname, req.qtype, v, mode, req.now)
        return r


def _answer_hosts(r: Reply, check_ips: bool):
    """CNAME/DNAME targets (and A/AAAA addresses when lists hold IPs) of an answer, as policy names."""
    raw = r.raw
    if raw is not None and not r.answer:  # straight from the bytes, no parsing
        for off in raw.cname_offsets():
            yield wire.policy_name(wire.read_name(raw.msg, off)[0])
        if check_ips:
            for t, off, ln in raw.addr_items():
                yield wire.RR(b"", t, 1, 0, raw.msg[off:off + ln]).address()
        return
    for rr in r.answer:
        t = rr.type
        if t == CNAME or t == wire.DNAME:
            yield wire.policy_name(rr.rdata)
        elif check_ips and (t == wire.A or t == wire.AAAA):
            yield rr.address()


class SvcbLink(Link):
    """HTTPS/SVCB answers lose ``ech`` (and ``h3`` from alpn when dns.strip_h3): the proxy must see SNI."""

    name = "svcb"

    def __init__(self, strip_ech: bool, strip_h3: bool):
        self.ech = strip_ech
        self.h3 = strip_h3

    def describe(self) -> str:
        parts = [p for p, on in (("ech", self.ech), ("alpn h3", self.h3)) if on]
        return "strip " + " and ".join(parts) + " from HTTPS/SVCB records" if parts else "off"

    def __call__(self, req: Request, nxt: Next) -> Result:
        if not (self.ech or self.h3) or req.qtype not in (wire.SVCB, wire.HTTPS):
            return nxt(req)
        ech, h3 = self.ech, self.h3

        def strip(r: Reply) -> Reply:
            r.materialize()
            if not any(rr.type in (wire.SVCB, wire.HTTPS) for rr in r.answer):
                return r
            ans = [wire.RR(rr.name, rr.type, rr.cls, rr.ttl, wire.strip_svcb(rr.rdata, ech=ech, h3=h3))
                   if rr.type in (wire.SVCB, wire.HTTPS) else rr for rr in r.answer]
            return dataclasses.replace(r, answer=ans, raw=None)

        return then(nxt(req), strip)


class CacheLink(Link):
    """Upstream answers, group-independent; concurrent misses for one question share one upstream query."""

    name = "cache"

    def __init__(self, cache: AnswerCache, ttl: TtlPolicy):
        self.cache = cache
        self.ttl = ttl

    def describe(self) -> str:
        t = self.ttl
        return (f"{self.cache.describe()}, TTL {t.min_ttl}..{t.max_ttl}s, negative ≤ {t.negative_ttl}s "
                f"(SOA minimum, RFC 2308)")

    def __call__(self, req: Request, nxt: Next) -> Result:
        # bytes, not a tuple: an atom the garbage collector never tracks
        key = req.qname + bytes((req.qtype >> 8, req.qtype & 0xFF, req.qclass >> 8, req.qclass & 0xFF,
                                 req.do << 1 | req.cd))
        r = self.cache.get(key, req.now)
        if r is not None:
            metrics.DNS_CACHE_HITS.inc()
            return r
        inflight = req.reactor.inflight if req.reactor is not None else None
        if inflight is not None:
            d = inflight.get(key)
            if d is not None:  # someone is already asking: share their answer
                return d
        metrics.DNS_CACHE_MISSES.inc()
        res = nxt(req)
        if type(res) is Reply:
            self.cache.put(key, res)
            return res
        cache = self.cache
        if inflight is not None:
            inflight[key] = res

        def done(value, error) -> None:
            if inflight is not None and inflight.get(key) is res:
                del inflight[key]
            if error is None and type(value) is Reply:
                cache.put(key, value)

        res.add(done)
        return res


class _Resolve:
    """Ask an upstream group; upstream messages become cacheable replies."""

    def __init__(self, group: UpstreamGroup, ttl: TtlPolicy):
        self.group = group
        self.ttl = ttl

    def __call__(self, req: Request) -> Result:
        if self.group.all_down(req.now):  # fail fast, no waiting for timeouts
            return responses.servfail(req.now, (wire.EDE_NO_REACHABLE_AUTHORITY, "upstreams-down"))
        q = wire.build_query(req.qname, req.qtype, req.qclass, cd=req.cd, do=req.do)
        qname, qtype, ttl = req.qname, req.qtype, self.ttl

        def ok(res) -> Reply:
            raw, name = res
            now = time.monotonic()
            try:
                r = from_upstream(raw, qname, qtype, ttl, now, name)
            except wire.WireError:
                r = None
            if r is None:
                metrics.DNS_UPSTREAM_ERRORS.inc(name, "protocol")
                return responses.servfail(now, (wire.EDE_NETWORK_ERROR, "bad-upstream-reply"))
            return r

        def failed(exc: BaseException) -> Reply:
            now = time.monotonic()
            if isinstance(exc, AllUpstreamsFailed):
                ede = (wire.EDE_NO_REACHABLE_AUTHORITY, "upstreams-down") if exc.down else (
                    wire.EDE_NETWORK_ERROR, "upstreams-failed")
                return responses.servfail(now, ede)
            if not isinstance(exc, UpstreamError):
                metrics.DNS_ERRORS.inc("upstream")
                log.error("dns: upstream exchange failed: %r", exc)
            return responses.servfail(now, (wire.EDE_NETWORK_ERROR, "upstream-error"))

        return self.group.exchange_d(q, req.reactor).then(ok, failed)


class ConditionalLink(Link):
    """``upstreams.conditional``: names in a zone go to that zone's own servers (e.g. school.lan)."""

    name = "conditional"

    def __init__(self, zones: dict[str, UpstreamGroup], ttl: TtlPolicy):
        self.zones = {z: _Resolve(g, ttl) for z, g in zones.items()}
        self.groups = zones

    def describe(self) -> str:
        if not self.zones:
            return "none"
        return "; ".join(f"{z} → {g.describe()}" for z, g in self.groups.items())

    def __call__(self, req: Request, nxt: Next) -> Result:
        if self.zones and req.name:
            for name in self_and_parents(req.name):
                r = self.zones.get(name)
                if r is not None:
                    return r(req)
        return nxt(req)


class UpstreamLink(Link):
    """The configured upstreams (last link: always answers)."""

    name = "upstream"

    def __init__(self, group: UpstreamGroup, ttl: TtlPolicy):
        self.group = group
        self._resolve = _Resolve(group, ttl)

    def describe(self) -> str:
        return self.group.describe()

    def __call__(self, req: Request, nxt: Next) -> Result:
        return self._resolve(req)


# ---------------------------------------------------------------- the chain

class Chain:
    """The links in order; :meth:`handle` runs links 5.. for an admitted request."""

    def __init__(self, edge: list[Link], links: list[Link], *, clients: ClientTable, packed: PackedCaches,
                 answer_cache: AnswerCache, groups: list[UpstreamGroup], answers: BlockAnswers, blocked_ttl: int,
                 decisions: Decisions):
        self.decisions = decisions
        self.edge = edge
        self.links = links
        self.clients = clients
        self.packed = packed
        self.answer_cache = answer_cache
        self.groups = groups
        self.answers = answers
        self.blocked_ttl = blocked_ttl
        handler: Next = _end
        for link in reversed(links):
            handler = _bind(link, handler)
        self.handle: Next = handler

    def log(self) -> None:
        for i, link in enumerate(self.edge + self.links, 1):
            log.info("dns chain %2d %-12s %s", i, link.name, link.describe())

    def sweep(self, now: float, budget: int = 256) -> int:
        """Drop a slice of expired cache entries (answers and packed replies); run by the UDP thread."""
        return self.answer_cache.sweep(now, budget) + self.packed.sweep(now, budget)

    def on_swap(self) -> None:
        """A new snapshot: every verdict and packed reply may be stale (the answer cache has no policy in it)."""
        self.decisions.clear()
        self.packed.clear()

    def on_schedules_changed(self, group: str) -> None:
        """A schedule window of ``group`` opened or closed: its verdicts and packed replies go."""
        self.decisions.clear(group)
        self.packed.clear(group)

    async def close(self) -> None:
        for g in self.groups:
            await g.close()


def _bind(link: Link, nxt: Next) -> Next:
    """``link`` with the rest of the chain bound: a C-level partial, no extra Python frame per link."""
    return functools.partial(link.__call__, nxt=nxt)


def _end(req: Request) -> Reply:  # pragma: no cover - the upstream link always answers
    return responses.servfail(req.now, (wire.EDE_OTHER, "no-upstream"))


def build_chain(cfg, engine, *, upstreams: list[str] | None = None) -> Chain:
    """THE order of the resolver. Change it here, and only here."""
    ttl = TtlPolicy(cfg.cache.min_ttl, cfg.cache.max_ttl, cfg.cache.negative_ttl)
    answers = BlockAnswers(cfg.server.block_page_ipv4, cfg.server.block_page_ipv6, cfg.cache.blocked_ttl)
    packed = PackedCaches(engine.config.groups, cfg.cache.size, cfg.cache.sweep_interval)
    clients = ClientTable(engine, cfg.dns.allowed_networks, cfg.dns.rate_limit, packed)
    servers = upstreams or cfg.upstreams.servers
    main = UpstreamGroup([parse_upstream(a) for a in servers], cfg.upstreams.strategy, cfg.upstreams.timeout)
    zones = {z: UpstreamGroup([parse_upstream(a) for a in addrs], "failover", cfg.upstreams.timeout)
             for z, addrs in cfg.upstreams.conditional.items()}
    answer_cache = AnswerCache(cfg.cache.size, cfg.cache.sweep_interval)
    decisions = Decisions(engine)

    edge: list[Link] = [
        # 1. clients: source IP/CIDR (and MAC, from the neighbour table, when configured) → group
        EdgeLink("clients", clients.describe_groups),
        # 2. acl: addresses outside dns.allowed_networks are REFUSED — never an open resolver
        EdgeLink("acl", clients.describe_acl),
        # 3. ratelimit: queries/s per address above dns.rate_limit are REFUSED, then dropped
        EdgeLink("ratelimit", clients.describe_ratelimit),
        # 4. packed: final replies per (group, request bytes), ID patched; UDP only (the hot path)
        EdgeLink("packed", lambda: f"per group, {cfg.cache.size} entries each, TTLs aged per second; "
                                   f"cleared on list reload and schedule changes"),
    ]
    links: list[Link] = [
        # 5. sanity: REFUSED for non-IN classes, zone transfers, ANY, unfilterable names
        SanityLink(),
        # 6. policy: engine.decide on the question → block answer + EDE, bypass canary, SafeSearch CNAME
        PolicyLink(engine, answers, decisions),
        # 7. answer-check: CNAME targets and A/AAAA addresses of the answer through engine.decide (cloaking)
        AnswerCheckLink(engine, answers, decisions),
        # 8. svcb: strip ech (and h3) from HTTPS/SVCB answers so the HTTP proxy sees the real SNI
        SvcbLink(cfg.dns.strip_ech, cfg.dns.strip_h3),
        # 9. cache: upstream answers, shared by all groups (no policy in them), TTL and RFC 2308 aware
        CacheLink(answer_cache, ttl),
        # 10. conditional: zones with their own servers (upstreams.conditional)
        ConditionalLink(zones, ttl),
        # 11. upstream: the configured servers, failover or parallel, health-tracked
        UpstreamLink(main, ttl),
    ]
    return Chain(edge, links, clients=clients, packed=packed, answer_cache=answer_cache,
                 groups=[main, *zones.values()], answers=answers, blocked_ttl=cfg.cache.blocked_ttl,
                 decisions=decisions)
