"""Compact domain matcher: suffix semantics, multiple lists per name, persistence."""

from __future__ import annotations

import pytest

from filterproxy.lists.parsers import ALLOW, BOTH, EXACT, SUBS
from filterproxy.match.domain import DomainMatcher

RECORDS = [
    ("example.com", 0, 1, BOTH),
    ("ads.example.com", 1, 5, EXACT),
    ("example.com", 2, 9, SUBS),
    ("x.org", 0, 2, EXACT),
    ("ok.example.com", 3, 4, BOTH | ALLOW),
    ("com", 4, 7, SUBS),  # a TLD-wide rule (spam TLD lists)
]


@pytest.fixture(scope="module")
def matcher():
    return DomainMatcher.build(RECORDS)


@pytest.mark.parametrize("name,expected", [
    ("example.com", [(0, True), (4, False)]),
    ("www.example.com", [(0, False), (2, False), (4, False)]),
    ("ads.example.com", [(1, True), (0, False), (2, False), (4, False)]),
    ("a.ads.example.com", [(0, False), (2, False), (4, False)]),  # EXACT rule does not cover subdomains
    ("x.org", [(0, True)]),
    ("a.x.org", []),
    ("org", []),
    ("example.co", []),
    ("notexample.com", [(4, False)]),  # label boundary: "notexample.com" is not under "example.com"
    ("com", []),  # SUBS-only rule does not cover the apex
    ("deep.ok.example.com", [(3, False), (0, False), (2, False), (4, False)]),
])
def test_lookup_semantics(matcher, name, expected):
    assert [(m.list_idx, m.exact) for m in matcher.lookup(name)] == expected


def test_allow_flag_and_rule_line(matcher):
    m = matcher.lookup("ok.example.com")[0]
    assert m.flags & ALLOW and m.line == 4 and m.name == "ok.example.com"


def test_save_load_roundtrip(matcher, tmp_path):
    matcher.save(str(tmp_path))
    loaded = DomainMatcher.load(str(tmp_path))
    assert len(loaded) == len(matcher) == 5
    for name in ("example.com", "www.example.com", "ads.example.com", "x.org", "a.x.org", "deep.ok.example.com"):
        assert loaded.lookup(name) == matcher.lookup(name)
    assert sorted(loaded.records()) == sorted(RECORDS)


def test_memory_is_compact():
    import random

    rnd = random.Random(7)
    recs = [(f"h{rnd.getrandbits(40):x}.example{i % 1000}.com", 0, i, BOTH) for i in range(100_000)]
    m = DomainMatcher.build(recs)
    assert m.nbytes / len(m) < 24, "bytes per domain above the Raspberry Pi budget"
    assert all(m.lookup(n) for n, *_ in recs[:1000])
