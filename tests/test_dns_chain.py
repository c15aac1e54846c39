"""The resolver chain's links in isolation (filterproxy.dns.chain); the whole chain is tested end to end
against a running server in test_dns_server.py."""

from __future__ import annotations

import pytest

from filterproxy.dns import wire
from filterproxy.dns.cache import TtlPolicy
from filterproxy.dns.chain import ConditionalLink, Request
from filterproxy.dns.upstream import UdpUpstream, UpstreamGroup


def _request(name: str) -> Request:
    return Request(wire.text_to_name(name), name, wire.A, wire.CLASS_IN, False, False, "kids", "udp", 0.0)


@pytest.mark.parametrize("name, zone", [
    ("school.lan", "school.lan"),
    ("printer.school.lan", "school.lan"),
    ("a.b.school.lan", "school.lan"),
    ("lab.sub.school.lan", "sub.school.lan"),  # the most specific zone wins
    ("sub.school.lan", "sub.school.lan"),
    ("xschool.lan", None),  # a suffix of the text, not a parent domain
    ("lan", None),
    ("school.lan.example", None),
    ("example.org", None),
])
def test_conditional_zone_of_a_name(name, zone):
    groups = {z: UpstreamGroup([UdpUpstream("127.0.0.1", 9)]) for z in ("school.lan", "sub.school.lan")}
    link = ConditionalLink(groups, TtlPolicy())
    link.zones = {z: (lambda req, z=z: z) for z in link.zones}  # which zone's resolver would be asked
    assert link.pre(_request(name)) == zone


def test_conditional_without_zones_passes_everything_on():
    assert ConditionalLink({}, TtlPolicy()).pre(_request("printer.school.lan")) is None
