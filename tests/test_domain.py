"""Compact domain matcher: suffix semantics, multiple lists per name, persistence."""

from __future__ import annotations

import re

import pytest

from filterproxy.lists.parsers import ALLOW, BOTH, EXACT, SUBS
from filterproxy.match.domain import DomainMatch, DomainMatcher

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


@pytest.mark.parametrize(
    "name,expected",
    [
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
    ],
)
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


def _reference(records, name):
    """Brute force over the records: every suffix of ``name`` at a label boundary, longest first."""
    out = []
    for k in range(len(name) + 1):
        if k and name[k - 1] != ".":
            continue
        stored = name[k:]
        need = EXACT if k == 0 else SUBS
        out.extend((li, line, flags, stored, k == 0) for n, li, line, flags in records if n == stored and flags & need)
    return out


def test_lookup_matches_brute_force():
    """Random names over few labels (many parents, names in several lists, every flag mix)."""
    import random

    rnd = random.Random(11)
    labels = ["a", "b", "ab", "x", "com", "co", "uk", "xn--bcher-kva"]
    flag_mix = [EXACT, SUBS, BOTH, BOTH | ALLOW, SUBS | ALLOW, EXACT | ALLOW]

    def name():
        return ".".join(rnd.choice(labels) for _ in range(rnd.randint(1, 4)))

    recs = [(name(), rnd.randrange(6), rnd.randrange(1, 10**6), rnd.choice(flag_mix)) for _ in range(3000)]
    m = DomainMatcher.build(recs)
    assert any(len(m.lookup(n)) > 1 for n, *_ in recs), "no name in several lists: the test lost its point"
    queries = [name() for _ in range(3000)] + [n for n, *_ in recs[:500]] + ["www." + n for n, *_ in recs[:500]]
    for q in queries:
        assert m.lookup(q) == _reference(recs, q), q
    assert sorted(m.records()) == sorted(recs)


def test_results_are_domain_matches(matcher):
    m = matcher.lookup("www.example.com")[0]
    assert type(m) is DomainMatch and m == DomainMatch(0, 1, BOTH, "example.com", False)
    assert m.list_idx == 0 and m.name == "example.com" and not m.exact


def test_saved_records_are_raw_packed_records(matcher, tmp_path):
    """``domains.records``: 7 little-endian bytes (list u16, line u32, flags u8) per name, no header."""
    import struct

    matcher.save(str(tmp_path))
    raw = (tmp_path / "domains.records").read_bytes()
    assert len(raw) == 7 * len(matcher)
    assert not list(tmp_path.glob("*.npy"))
    kid = matcher._trie.key_id("gro.x.")  # "x.org": stored reversed with a trailing dot
    assert struct.unpack_from("<HIB", raw, 7 * kid) == (0, 2, EXACT)


@pytest.mark.parametrize(
    "change",
    [
        lambda b: b[:-1],  # truncated (a short write)
        lambda b: b + b"\0" * 7,  # one record too many
        lambda b: b"\x93NUMPY" + b,  # a header in front (the old .npy layout)
        lambda b: b"",  # empty
    ],
)
def test_load_refuses_records_of_the_wrong_size(matcher, tmp_path, change):
    matcher.save(str(tmp_path))
    path = tmp_path / "domains.records"
    path.write_bytes(change(path.read_bytes()))
    expected = rf"{re.escape(str(path))}: \d+ bytes of domain records, expected {7 * len(matcher)} "
    with pytest.raises(ValueError, match=expected):
        DomainMatcher.load(str(tmp_path))


def test_loaded_records_are_read_only(matcher, tmp_path):
    matcher.save(str(tmp_path))
    loaded = DomainMatcher.load(str(tmp_path))
    with pytest.raises(TypeError):
        loaded._buf[0] = 1  # mapped read-only: shared pages, never written by a serving process


def test_empty_matcher(tmp_path):
    m = DomainMatcher.build([])
    assert len(m) == 0 and m.lookup("example.com") == [] and list(m.records()) == []
    m.save(str(tmp_path))
    assert DomainMatcher.load(str(tmp_path)).lookup("example.com") == []
