"""The resolver chain's links in isolation (filterproxy.dns.chain); the whole chain is tested end to end
against a running server in test_dns_server.py."""

from __future__ import annotations

import pytest

from filterproxy.dns import wire
from filterproxy.dns.cache import TtlPolicy
from filterproxy.dns.chain import ConditionalLink, Request, _Posted
from filterproxy.dns.deferred import Deferred
from filterproxy.dns.upstream import UdpUpstream, UpstreamGroup


def _request(name: str) -> Request:
    return Request(wire.text_to_name(name), name, wire.A, wire.CLASS_IN, False, False, "kids", "udp", 0.0)


@pytest.mark.parametrize(
    "name, zone",
    [
        ("school.lan", "school.lan"),
        ("printer.school.lan", "school.lan"),
        ("a.b.school.lan", "school.lan"),
        ("lab.sub.school.lan", "sub.school.lan"),  # the most specific zone wins
        ("sub.school.lan", "sub.school.lan"),
        ("xschool.lan", None),  # a suffix of the text, not a parent domain
        ("lan", None),
        ("school.lan.example", None),
        ("example.org", None),
    ],
)
def test_conditional_zone_of_a_name(name, zone):
    groups = {z: UpstreamGroup([UdpUpstream("127.0.0.1", 9)]) for z in ("school.lan", "sub.school.lan")}
    link = ConditionalLink(groups, TtlPolicy())
    link.zones = {z: (lambda req, z=z: z) for z in link.zones}  # which zone's resolver would be asked
    assert link.pre(_request(name)) == zone


def test_conditional_without_zones_passes_everything_on():
    assert ConditionalLink({}, TtlPolicy()).pre(_request("printer.school.lan")) is None


def _outcome(d: Deferred) -> list:
    out: list = []
    d.add(lambda v, e: out.append(("err", type(e).__name__) if e is not None else ("ok", v)))
    return out


def test_posts_run_in_order_on_the_upstream_reply():
    seen = []
    posts = (
        lambda req, r: seen.append(("cache", r)) or r + "+answer-check",
        lambda req, r: seen.append(("policy", r, req.name)) or r + "+policy",
    )
    src = Deferred()
    out = _Posted(posts, _request("a.example"))
    src.add(out.run)
    got = _outcome(out)
    assert got == [] and seen == []  # nothing before the reply
    src.resolve("reply")
    assert seen == [("cache", "reply"), ("policy", "reply+answer-check", "a.example")]
    assert got == [("ok", "reply+answer-check+policy")]


def test_a_failing_post_fails_the_result_not_the_resolver_and_errors_pass_through():
    ran = []
    src = Deferred()
    out = _Posted((lambda req, r: 1 / 0, lambda req, r: ran.append(r)), _request("a.example"))
    src.add(out.run)
    got = _outcome(out)
    src.resolve("reply")  # must not raise here
    assert got == [("err", "ZeroDivisionError")] and ran == []  # the later post did not run
    src2 = Deferred()
    out2 = _Posted((lambda req, r: ran.append(r),), _request("a.example"))
    src2.add(out2.run)
    got2 = _outcome(out2)
    src2.fail(TimeoutError())
    assert got2 == [("err", "TimeoutError")] and ran == []
