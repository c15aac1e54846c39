"""Replies the resolver makes itself: block answers (per group ``block_mode``), bypass canaries,
SafeSearch CNAMEs, SERVFAIL/REFUSED — each blocked one with an RFC 8914 Extended DNS Error.

EDE codes (RFC 8914 §4):

* **15 Blocked**  — operator policy: the group's own block additions, bypass canaries, internal errors
* **16 Censored** — a national/legal list (``verdict.legal``): required by law, for every group
* **17 Filtered** — the age group's categories and schedules (what the family/school chose)

EXTRA-TEXT is ``verdict.short_id`` (``category/adult/default-adult``): never the rule or the list entry.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import final

from filterproxy.dns import wire
from filterproxy.dns.wire import AAAA, CLASS_IN, CNAME, NOERROR, NXDOMAIN, RR, SERVFAIL, SOA, A
from filterproxy.policy.safesearch import BYPASS_CANARIES
from filterproxy.verdict import Action, Reason, Verdict


@final  # never subclassed: the hot paths tell it apart with ``type(r) is Reply``, which mypy then narrows
@dataclass(slots=True)
class Reply:
    """What the chain answers for one question, before it is packed for one client.

    Record TTLs are as of ``stored`` (monotonic seconds); packing ages them. ``expires`` is when the
    reply stops being valid for the answer cache (0: never cache it). ``fixed`` replies are made here:
    their TTLs do not age. The record sections are ``()`` while the records are still in ``raw``.
    """

    rcode: int = NOERROR
    answer: Sequence[RR] = field(default_factory=list)
    authority: Sequence[RR] = field(default_factory=list)
    additional: Sequence[RR] = field(default_factory=list)
    stored: float = 0.0
    expires: float = 0.0
    ede: tuple[int, str] | None = None
    verdict: Verdict | None = None
    action: str = "allow"  # allow | block | rewrite | refused | error (metric label)
    fixed: bool = False
    ad: bool = False
    upstream: str | None = None  # which upstream answered (debug logging)
    raw: wire.RawAnswer | None = None  # an upstream reply kept as bytes (copied into client replies)

    def materialize(self) -> Reply:
        """Fill ``answer``/``authority`` from ``raw`` (parsed once, for links that edit records)."""
        raw = self.raw
        if raw is not None and not self.answer and not self.authority and (raw.an or raw.ns):
            msg = wire.parse_message(raw.msg)
            rrs = msg.answer + msg.authority
            ttls = list(raw.ttl_items())
            if len(rrs) == len(ttls):
                rrs = [rr._replace(ttl=t) for rr, (_off, t) in zip(rrs, ttls)]
            self.answer, self.authority = rrs[: raw.an], rrs[raw.an :]
            if not self.additional:
                self.additional = []
        return self


def ede_for(v: Verdict) -> tuple[int, str]:
    """The Extended DNS Error for a blocking verdict (code, EXTRA-TEXT)."""
    if v.legal or v.reason is Reason.LEGAL:
        code = wire.EDE_CENSORED
    elif v.reason in (Reason.CATEGORY, Reason.SCHEDULE, Reason.PAUSE):
        code = wire.EDE_FILTERED
    else:  # blocklist additions, bypass defences, unknown client, internal error
        code = wire.EDE_BLOCKED
    return code, v.short_id


def soa_record(owner: bytes, ttl: int) -> RR:
    """A synthetic SOA so downstream caches keep a blocked/negative answer ``ttl`` seconds at most (RFC 2308)."""
    mname = b"\x0bfilterproxy\x00"
    rname = b"\x07blocked\x0bfilterproxy\x00"
    rdata = mname + rname + struct.pack(">IIIII", 1, 3600, 600, 86400, ttl)
    return RR(owner, SOA, CLASS_IN, ttl, rdata)


class BlockAnswers:
    """Builds block replies from a verdict and the group's ``block_mode`` (blockpage | nxdomain | null)."""

    def __init__(self, block_page_ipv4: str, block_page_ipv6: str, blocked_ttl: int):
        self.v4 = ipaddress.IPv4Address(block_page_ipv4).packed
        self.v6 = ipaddress.IPv6Address(block_page_ipv6).packed
        self.ttl = max(1, int(blocked_ttl))

    def describe(self) -> str:
        return (
            f"block page {ipaddress.IPv4Address(self.v4)} / {ipaddress.IPv6Address(self.v6)}, "
            f"blocked answers TTL {self.ttl}s, EDE 15/16/17"
        )

    def mode_for(self, v: Verdict, name: str, block_mode: str) -> str:
        """nxdomain | nodata | null | blockpage. A bypass canary keeps its own negative answer whichever rule
        blocked it (a list may name it too): the client reads a negative answer as "not allowed here"."""
        canary = BYPASS_CANARIES.get(name)
        if canary is not None:
            return canary
        if v.reason is Reason.BYPASS:
            return "nxdomain"
        return block_mode

    def block(self, qname: bytes, qtype: int, v: Verdict, mode: str, now: float) -> Reply:
        answer: list[RR] = []
        authority: list[RR] = []
        r = Reply(
            answer=answer,
            authority=authority,
            stored=now,
            expires=now + self.ttl,
            ede=ede_for(v),
            verdict=v,
            action="block",
            fixed=True,
        )
        if mode == "nxdomain":
            r.rcode = NXDOMAIN
        elif mode in ("null", "blockpage") and qtype in (A, AAAA):
            if qtype == A:
                addr = b"\x00\x00\x00\x00" if mode == "null" else self.v4
            else:
                addr = bytes(16) if mode == "null" else self.v6
            answer.append(RR(qname, qtype, CLASS_IN, self.ttl, addr))
        # other types under null/blockpage, and "nodata": NOERROR without records
        if not answer:
            authority.append(soa_record(qname, self.ttl))
        return r

    def rewrite(self, qname: bytes, target: bytes, target_reply: Reply, v: Verdict, now: float) -> Reply:
        """SafeSearch: ``qname CNAME target`` followed by the target's own answer (resolved upstream)."""
        t = target_reply.materialize()
        elapsed = int(now - t.stored) if t.stored else 0
        answer = [RR(qname, CNAME, CLASS_IN, self.ttl, target)]
        # the target's records keep their own (aged) TTLs
        answer += [
            RR(rr.name, rr.type, rr.cls, max(0, rr.ttl - elapsed), rr.rdata)
            for rr in t.answer
            if not (t.fixed and rr.type == CNAME and rr.name == qname)
        ]
        authority = [RR(rr.name, rr.type, rr.cls, max(0, rr.ttl - elapsed), rr.rdata) for rr in t.authority]
        exp = now + self.ttl
        if t.expires:
            exp = min(exp, t.expires)
        else:
            exp = 0.0
        return Reply(
            t.rcode,
            answer,
            authority,
            [],
            stored=now,
            expires=exp,
            verdict=v,
            action="rewrite",
            ad=False,
            upstream=t.upstream,
        )


def servfail(now: float, ede: tuple[int, str] | None = None, action: str = "error") -> Reply:
    """SERVFAIL (never cached): upstreams unreachable or an internal error (fail closed)."""
    return Reply(SERVFAIL, stored=now, expires=0.0, ede=ede, action=action, fixed=True)


def refused(now: float, ede: tuple[int, str] | None = None) -> Reply:
    return Reply(wire.REFUSED, stored=now, expires=0.0, ede=ede, action="refused", fixed=True)


def verdict_is_block(v: Verdict) -> bool:
    return v.action is Action.BLOCK
