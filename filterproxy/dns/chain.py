"""The resolver as a chain of small links. The order lives in ONE function, :func:`build_chain`.

A link has up to three parts, each optional:

* ``pre(req)`` — on the way down: answer now (a :class:`Reply`), answer later (a
  :class:`~filterproxy.dns.deferred.Deferred` of a Reply: an upstream exchange), or ``None``: pass on.
* ``post(req, reply)`` — on the way back, for requests the link passed on: look at or change the reply
  (CNAME cloaking, SVCB rewriting, the SafeSearch CNAME). Posts run deepest first, on the reply a
  link below gave — at once for a synchronous answer, when the upstream's reply is in otherwise.
* ``waiting(req, d)`` — the request went to an upstream (a link below answered with ``d``): the cache
  shares ``d`` with identical questions meanwhile.

:meth:`Chain.handle` runs the pres in order, then the posts of the links above the one that answered.
Everything that can be answered without the network (blocked names, cached answers) is answered
synchronously; upstream exchanges go through the request's reactor (the UDP thread's own, or the
asyncio loop's for TCP clients), and the posts run when the reply is there, on that same thread. Pre
and post instead of links wrapping links: a cache miss costs two Deferreds and no closure per link
(the wrapped form — a ``then`` per link, a Deferred per attempt — took ~5 µs more per miss: 54 → 49 µs
in a harness without syscalls).

Every link reports itself at start-up, so the log shows the chain as configured::

    dns chain  1 clients    client → group by IP/CIDR; default group teen
    dns chain  2 acl        allowed networks 127.0.0.0/8, ...
    ...

Links 1–4 run at the edge, per packet, in the servers (they must run before the packed-reply lookup and
the UDP hot path inlines them); links 5–11 run in :meth:`Chain.handle`. The chain never decides policy
itself: the policy and answer-check links only ask ``engine.decide`` (CONTRIBUTING.md rule 1).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from filterproxy import metrics
from filterproxy.dns import responses, wire
from filterproxy.dns.cache import AnswerCache, PackedCaches, Sweep, TtlPolicy, from_upstream
from filterproxy.dns.clients import ClientTable
from filterproxy.dns.decisions import Decisions
from filterproxy.dns.deferred import Deferred
from filterproxy.dns.responses import BlockAnswers, Reply
from filterproxy.dns.upstream import AllUpstreamsFailed, UpstreamError, UpstreamGroup, parse_upstream
from filterproxy.dns.wire import ANY, CLASS_IN, CNAME, SERVFAIL
from filterproxy.names import self_and_parents
from filterproxy.verdict import Action, Reason

log = logging.getLogger("filterproxy.dns")

Result = Reply | Deferred


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
    key: bytes = b""  # the answer-cache key (set by the cache link)
    pending: Any = None  # the upstream exchange this request started (set by the cache link)
    rewrite: Any = None  # SafeSearch: (question name, target name, verdict, block mode) (set by the policy link)
    client: Any = None  # a paused client (filterproxy.clients.Client): decided for itself, never from the memo


class Link:
    """A chain link (see the module docstring); ``describe()`` says how it is configured."""

    name = "link"
    pre: Callable[[Request], Result | None] | None = None
    post: Callable[[Request, Reply], Reply] | None = None
    waiting: Callable[[Request, Deferred], None] | None = None

    def describe(self) -> str:
        return ""


# ---------------------------------------------------------------- edge links (run by the servers)


class EdgeLink(Link):
    """A link the servers run per packet before the packed-reply lookup (see server.py)."""

    def __init__(self, name: str, describe: Callable[[], str]):
        self.name = name
        self._describe = describe

    def describe(self) -> str:
        return self._describe()


# ---------------------------------------------------------------- links


class SanityLink(Link):
    """Questions we do not serve: non-IN classes, zone transfers, ANY (RFC 8482), unfilterable names."""

    name = "sanity"

    def describe(self) -> str:
        return "REFUSED for non-IN classes, AXFR/IXFR, ANY, and names that cannot be filtered"

    def pre(self, req: Request) -> Reply | None:
        if req.qclass != CLASS_IN or req.qtype in (251, 252):
            metrics.DNS_REFUSED.inc("qtype")
            return responses.refused(req.now)
        if req.qtype == ANY:
            metrics.DNS_REFUSED.inc("any")
            return responses.refused(req.now)
        if req.name is None:  # bytes no host name has: cannot be checked, so not answered (fail closed)
            metrics.DNS_REFUSED.inc("name")
            return responses.refused(req.now, (wire.EDE_PROHIBITED, "unfilterable-name"))
        return None


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

    def pre(self, req: Request) -> Reply | None:
        if not req.name:  # the root: not a host
            return None
        v = self.decisions.decide(req.name, req.group, req.client)
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
            # the links below resolve the SafeSearch target; post() answers the question with a CNAME to it
            target = wire.text_to_name(v.rewrite)
            req.rewrite = (req.qname, target, v, self.engine.policy(req.group).block_mode)
            req.qname, req.name = target, v.rewrite
        return None

    def post(self, req: Request, r: Reply) -> Reply:
        rw = req.rewrite
        if rw is None:
            return r
        qname, target, v, block_mode = rw
        if r.action == "block" and r.verdict is not None:  # the safe target itself is blocked
            return self.answers.block(qname, req.qtype, r.verdict, block_mode, req.now)
        if r.rcode == SERVFAIL:
            return r
        return self.answers.rewrite(qname, target, r, v, req.now)


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

    def post(self, req: Request, r: Reply) -> Reply:
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
                yield wire.RR(b"", t, 1, 0, raw.msg[off : off + ln]).address()
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

    def post(self, req: Request, r: Reply) -> Reply:
        if not (self.ech or self.h3) or req.qtype not in (wire.SVCB, wire.HTTPS):
            return r
        r.materialize()
        if not any(rr.type in (wire.SVCB, wire.HTTPS) for rr in r.answer):
            return r
        ech, h3 = self.ech, self.h3
        ans = [
            wire.RR(rr.name, rr.type, rr.cls, rr.ttl, wire.strip_svcb(rr.rdata, ech=ech, h3=h3))
            if rr.type in (wire.SVCB, wire.HTTPS)
            else rr
            for rr in r.answer
        ]
        return dataclasses.replace(r, answer=ans, raw=None)


class CacheLink(Link):
    """Upstream answers, group-independent; concurrent misses for one question share one upstream query."""

    name = "cache"

    def __init__(self, cache: AnswerCache, ttl: TtlPolicy):
        self.cache = cache
        self.ttl = ttl

    def describe(self) -> str:
        t = self.ttl
        return (
            f"{self.cache.describe()}, TTL {t.min_ttl}..{t.max_ttl}s, negative ≤ {t.negative_ttl}s "
            f"(SOA minimum, RFC 2308)"
        )

    def pre(self, req: Request) -> Result | None:
        # bytes, not a tuple: an atom the garbage collector never tracks
        key = req.key = req.qname + bytes(
            (req.qtype >> 8, req.qtype & 0xFF, req.qclass >> 8, req.qclass & 0xFF, req.do << 1 | req.cd)
        )
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
        return None

    def waiting(self, req: Request, d: Deferred) -> None:
        req.pending = d
        if req.reactor is not None:
            req.reactor.inflight[req.key] = d

    def post(self, req: Request, r: Reply) -> Reply:
        """The first post on a reply from below: share it no longer, keep it."""
        d = req.pending
        if d is not None:
            inflight = req.reactor.inflight
            if inflight.get(req.key) is d:
                del inflight[req.key]
        self.cache.put(req.key, r)
        return r


class _Lookup(Deferred):
    """One upstream exchange of the chain, resolved with a cacheable Reply — SERVFAIL (with its EDE) when
    every upstream failed or the reply is unusable; it never fails (a sink of UpstreamGroup.exchange_into)."""

    __slots__ = ("qname", "qtype", "ttl")

    def __init__(self, qname: bytes, qtype: int, ttl: TtlPolicy):
        Deferred.__init__(self)
        self.qname, self.qtype, self.ttl = qname, qtype, ttl

    def ok(self, raw: bytes, name: str) -> None:
        now = time.monotonic()
        try:
            r = from_upstream(raw, self.qname, self.qtype, self.ttl, now, name)
        except wire.WireError:
            r = None
        except Exception as exc:  # never leave the question unanswered
            metrics.DNS_ERRORS.inc("upstream")
            log.error("dns: upstream reply failed to load: %r", exc)
            r = None
        if r is None:
            metrics.DNS_UPSTREAM_ERRORS.inc(name, "protocol")
            r = responses.servfail(now, (wire.EDE_NETWORK_ERROR, "bad-upstream-reply"))
        self._finish(r, None)

    def failed(self, exc: BaseException) -> None:
        now = time.monotonic()
        if isinstance(exc, AllUpstreamsFailed):
            ede = (
                (wire.EDE_NO_REACHABLE_AUTHORITY, "upstreams-down")
                if exc.down
                else (wire.EDE_NETWORK_ERROR, "upstreams-failed")
            )
        else:
            if not isinstance(exc, UpstreamError):
                metrics.DNS_ERRORS.inc("upstream")
                log.error("dns: upstream exchange failed: %r", exc)
            ede = (wire.EDE_NETWORK_ERROR, "upstream-error")
        self._finish(responses.servfail(now, ede), None)


class _Resolve:
    """Ask an upstream group; upstream messages become cacheable replies."""

    def __init__(self, group: UpstreamGroup, ttl: TtlPolicy):
        self.group = group
        self.ttl = ttl

    def __call__(self, req: Request) -> Result:
        if self.group.all_down(req.now):  # fail fast, no waiting for timeouts
            return responses.servfail(req.now, (wire.EDE_NO_REACHABLE_AUTHORITY, "upstreams-down"))
        q = wire.build_query(req.qname, req.qtype, req.qclass, cd=req.cd, do=req.do)
        lookup = _Lookup(req.qname, req.qtype, self.ttl)
        self.group.exchange_into(q, req.reactor, lookup)
        return lookup


class ConditionalLink(Link):
    """``upstreams.conditional``: names in a zone go to that zone's own servers (e.g. school.lan)."""

    name = "conditional"

    def __init__(self, zones: dict[str, UpstreamGroup], ttl: TtlPolicy):
        self.zones = {z: _Resolve(g, ttl) for z, g in zones.items()}
        self.groups = zones
        self._suffixes = tuple("." + z for z in zones)  # one str.endswith for the names in no zone

    def describe(self) -> str:
        if not self.zones:
            return "none"
        return "; ".join(f"{z} → {g.describe()}" for z, g in self.groups.items())

    def pre(self, req: Request) -> Result | None:
        name = req.name
        if self.zones and name and (name in self.zones or name.endswith(self._suffixes)):
            for zone in self_and_parents(name):  # the most specific zone
                r = self.zones.get(zone)
                if r is not None:
                    return r(req)
        return None


class UpstreamLink(Link):
    """The configured upstreams (last link: always answers)."""

    name = "upstream"

    def __init__(self, group: UpstreamGroup, ttl: TtlPolicy):
        self.group = group
        self._resolve = _Resolve(group, ttl)

    def describe(self) -> str:
        return self.group.describe()

    def pre(self, req: Request) -> Result:
        return self._resolve(req)


# ---------------------------------------------------------------- the chain


class Chain:
    """The links in order; :meth:`handle` runs links 5.. for an admitted request."""

    def __init__(
        self,
        edge: list[Link],
        links: list[Link],
        *,
        clients: ClientTable,
        packed: PackedCaches,
        answer_cache: AnswerCache,
        groups: list[UpstreamGroup],
        answers: BlockAnswers,
        blocked_ttl: int,
        decisions: Decisions,
    ):
        self.decisions = decisions
        self.edge = edge
        self.links = links
        self.clients = clients
        self.packed = packed
        self.answer_cache = answer_cache
        self.groups = groups
        self.answers = answers
        self.blocked_ttl = blocked_ttl
        # per link that may answer: its pre, and what runs for an answer from it — the posts of the links
        # above it (deepest first) and, for a Deferred, their waiting hooks
        self._pres: list[tuple[Callable, tuple, tuple]] = []
        for i, link in enumerate(links):
            if link.pre is not None:
                above = links[:i]
                self._pres.append(
                    (
                        link.pre,
                        tuple(k.post for k in reversed(above) if k.post is not None),
                        tuple(k.waiting for k in above if k.waiting is not None),
                    )
                )
        self._no_answer = tuple(k.post for k in reversed(links) if k.post is not None)

    def handle(self, req: Request) -> Result:
        """Links 5.. for an admitted request: a Reply, or a Deferred of one."""
        for entry in self._pres:
            r = entry[0](req)
            if r is not None:
                _pre, posts, waits = entry
                break
        else:  # pragma: no cover - the upstream link always answers
            r, posts, waits = responses.servfail(req.now, (wire.EDE_OTHER, "no-upstream")), self._no_answer, ()
        if type(r) is Reply:
            for post in posts:
                r = post(req, r)
            return r
        for w in waits:
            w(req, r)
        if not posts:
            return r
        out = _Posted(posts, req)
        r.add(out.run)
        return out

    def log(self) -> None:
        for i, link in enumerate(self.edge + self.links, 1):
            log.info("dns chain %2d %-12s %s", i, link.name, link.describe())

    def sweep(self, now: float, budget: int = Sweep.BUDGET) -> int:
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

    def on_config(self, cfg) -> None:
        """A reloaded configuration (already in the engine): new packed caches for its groups, the client
        states rebuilt under its ACL, rate limit and client rules, every memoised verdict dropped."""
        self.packed.set_groups(cfg.groups)
        self.clients.configure(cfg.dns.allowed_networks, cfg.dns.rate_limit)
        self.decisions.clear()

    async def close(self) -> None:
        for g in self.groups:
            await g.close()


class _Posted(Deferred):
    """The reply of a request that went upstream, once the posts of the links above ran on it (deepest
    first). A failing post fails this result, never the thread that resolves it."""

    __slots__ = ("posts", "req")

    def __init__(self, posts: tuple, req: Request):
        Deferred.__init__(self)
        self.posts, self.req = posts, req

    def run(self, r: Any, error: BaseException | None) -> None:
        if error is None:
            req = self.req
            try:
                for post in self.posts:
                    r = post(req, r)
            except Exception as exc:
                error = exc
        if error is not None:
            self._finish(None, error)
        else:
            self._finish(r, None)


def build_chain(cfg, engine, *, upstreams: list[str] | None = None) -> Chain:
    """THE order of the resolver. Change it here, and only here."""
    ttl = TtlPolicy(cfg.cache.min_ttl, cfg.cache.max_ttl, cfg.cache.negative_ttl)
    answers = BlockAnswers(cfg.server.block_page_ipv4, cfg.server.block_page_ipv6, cfg.cache.blocked_ttl)
    packed = PackedCaches(engine.config.groups, cfg.cache.size, cfg.cache.sweep_interval)
    clients = ClientTable(engine, cfg.dns.allowed_networks, cfg.dns.rate_limit, packed)
    servers = upstreams or cfg.upstreams.servers
    main = UpstreamGroup([parse_upstream(a) for a in servers], cfg.upstreams.strategy, cfg.upstreams.timeout)
    zones = {
        z: UpstreamGroup([parse_upstream(a) for a in addrs], "failover", cfg.upstreams.timeout)
        for z, addrs in cfg.upstreams.conditional.items()
    }
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
        EdgeLink(
            "packed",
            lambda: (
                f"per group, {cfg.cache.size} entries each, TTLs aged per second; "
                f"cleared on list reload and schedule changes"
            ),
        ),
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
    return Chain(
        edge,
        links,
        clients=clients,
        packed=packed,
        answer_cache=answer_cache,
        groups=[main, *zones.values()],
        answers=answers,
        blocked_ttl=cfg.cache.blocked_ttl,
        decisions=decisions,
    )
