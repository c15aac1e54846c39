"""filterproxy.match.urlhash: Safe Browsing v4 canonicalisation, expressions, hashes and UrlHashSet."""

from __future__ import annotations

import hashlib
import random
import time
from urllib.parse import unquote_to_bytes

import pytest

from filterproxy.match.urlhash import (
    UrlHashSet,
    _unescape_fully,
    canonicalize,
    expression_hash,
    expressions,
    urlhash_lines,
)

# Every canonicalisation example of https://developers.google.com/safe-browsing/v4/urls-hashing,
# in the page's order. The doc's C string "http://\x01\x80.com/" holds the raw byte 0x80, so it is
# given as bytes (canonicalize accepts raw request bytes).
DOC_CANONICAL = [
    ("http://host/%25%32%35", "http://host/%25"),
    ("http://host/%25%32%35%25%32%35", "http://host/%25%25"),
    ("http://host/%2525252525252525", "http://host/%25"),
    ("http://host/asdf%25%32%35asd", "http://host/asdf%25asd"),
    ("http://host/%%%25%32%35asd%%", "http://host/%25%25%25asd%25%25"),
    ("http://www.google.com/", "http://www.google.com/"),
    (
        "http://%31%36%38%2e%31%38%38%2e%39%39%2e%32%36/%2E%73%65%63%75%72%65/%77%77%77%2E%65%62%61%79%2E%63%6F%6D/",
        "http://168.188.99.26/.secure/www.ebay.com/",
    ),
    (
        "http://195.127.0.11/uploads/%20%20%20%20/.verify/.eBaysecure=updateuserdataxplimnbqmn-xplmvalidateinfoswqpcmlx=hgplmcx/",
        "http://195.127.0.11/uploads/%20%20%20%20/.verify/.eBaysecure=updateuserdataxplimnbqmn-xplmvalidateinfoswqpcmlx=hgplmcx/",
    ),
    (
        "http://host%23.com/%257Ea%2521b%2540c%2523d%2524e%25f%255E00%252611%252A22%252833%252944_55%252B",
        "http://host%23.com/~a!b@c%23d$e%25f^00&11*22(33)44_55+",
    ),
    ("http://3279880203/blah", "http://195.127.0.11/blah"),
    ("http://www.google.com/blah/..", "http://www.google.com/"),
    ("www.google.com/", "http://www.google.com/"),
    ("www.google.com", "http://www.google.com/"),
    ("http://www.evil.com/blah#frag", "http://www.evil.com/blah"),
    ("http://www.GOOgle.com/", "http://www.google.com/"),
    ("http://www.google.com.../", "http://www.google.com/"),
    ("http://www.google.com/foo\tbar\rbaz\n2", "http://www.google.com/foobarbaz2"),
    ("http://www.google.com/q?", "http://www.google.com/q?"),
    ("http://www.google.com/q?r?", "http://www.google.com/q?r?"),
    ("http://www.google.com/q?r?s", "http://www.google.com/q?r?s"),
    ("http://evil.com/foo#bar#baz", "http://evil.com/foo"),
    ("http://evil.com/foo;", "http://evil.com/foo;"),
    ("http://evil.com/foo?bar;", "http://evil.com/foo?bar;"),
    (b"http://\x01\x80.com/", "http://%01%80.com/"),
    ("http://notrailingslash.com", "http://notrailingslash.com/"),
    ("http://www.gotaport.com:1234/", "http://www.gotaport.com/"),
    ("  http://www.google.com/  ", "http://www.google.com/"),
    ("http:// leadingspace.com/", "http://%20leadingspace.com/"),
    ("http://%20leadingspace.com/", "http://%20leadingspace.com/"),
    ("%20leadingspace.com/", "http://%20leadingspace.com/"),
    ("https://www.securesite.com/", "https://www.securesite.com/"),
    ("http://host.com/ab%23cd", "http://host.com/ab%23cd"),
    ("http://host.com//twoslashes?more//slashes", "http://host.com/twoslashes?more//slashes"),
]

# Beyond the doc: cases from Google's reference client (github.com/google/safebrowsing urls_test.go)
# where it agrees with the doc, plus the choices this module makes (see its docstring).
MORE_CANONICAL = [
    ("http://www.\u00fcmlat.com/", "http://www.xn--mlat-zra.com/"),  # IDN → punycode
    ("http://www.%C3%BCmlat.com/", "http://www.xn--mlat-zra.com/"),  # escaped UTF-8 IDN
    ("http://fa\u00df.de/", "http://xn--fa-hia.de/"),  # UTS #46 non-transitional, like browsers
    ("http://\u0441\u0430\u0439\u0442.\u0440\u0444/", "http://xn--80aswg.xn--p1ai/"),
    ("http://[2001:0470:1:18::114]:80/a", "http://[2001:470:1:18::114]/a"),  # IPv6 compressed, port dropped
    ("http%3A%2F%2Fwackyurl.com:80/", "http://wackyurl.com/"),
    ("http://W!eird<>Ho$^.com/", "http://w!eird<>ho$^.com/"),
    ("ftp://ftp.myfiles.com/", "ftp://ftp.myfiles.com/"),
    ("HTTP://Example.COM/Path", "http://example.com/Path"),  # scheme and host fold, path keeps case
    ("http://some%1bhost.com/%1b", "http://some%1Bhost.com/%1B"),  # upper-case hex, as the doc says
    ("http://user:pw@example.com:8080/x", "http://example.com/x"),
    ("www.google.com:8080/foo.html", "http://www.google.com/foo.html"),  # host:port is not a scheme
    ("//example.com/x", "http://example.com/x"),
    ("http://a.b/x?q=1#frag", "http://a.b/x?q=1"),
    ("http://a.b?x=1", "http://a.b/?x=1"),
    ("http://a.com/foo/.././bar/./../foo.html", "http://a.com/foo.html"),
    ("http://a.com//a//b///c////", "http://a.com/a/b/c/"),
    ("http://a.com/a//../b", "http://a.com/a/b"),  # dots first, then slashes (doc order)
    ("http://a.com/a/b/.", "http://a.com/a/b/"),
    ("http://a.com/%2e%2e/x", "http://a.com/x"),
    ("http://a.com/%3Fnot-a-query", "http://a.com/?not-a-query"),  # unescaped before parsing, per doc
    ("http://a.com/caf\u00e9", "http://a.com/caf%C3%A9"),
    ("http://0x12.0x43.0x44.0x01/", "http://18.67.68.1/"),
    ("http://012.034.01.055/", "http://10.28.1.45/"),
    ("http://12.0x12.01234/", "http://12.18.2.156/"),
    ("http://167838211/", "http://10.1.2.3/"),
    ("http://4294967295/", "http://255.255.255.255/"),
    ("http://0X7F.1/", "http://127.0.0.1/"),
    ("http://276.2.3/", "http://276.2.3/"),  # not a legal address: stays a name
    ("http://1.2.3.00x0/", "http://1.2.3.00x0/"),
    ("http://1.2.3.4.5/", "http://1.2.3.4.5/"),
    ("http://4294967296/", "http://4294967296/"),
]


@pytest.mark.parametrize("url, expected", DOC_CANONICAL, ids=[repr(u)[:60] for u, _ in DOC_CANONICAL])
def test_canonicalize_doc_examples(url: str | bytes, expected: str) -> None:
    assert canonicalize(url) == expected


@pytest.mark.parametrize("url, expected", MORE_CANONICAL, ids=[u[:60] for u, _ in MORE_CANONICAL])
def test_canonicalize_more(url: str, expected: str) -> None:
    assert canonicalize(url) == expected


def test_canonicalize_raw_byte_as_surrogate_escape() -> None:
    """Text decoded from raw bytes with surrogateescape canonicalises like the bytes themselves."""
    raw = b"http://\x01\x80.com/\xff"
    expected = "http://%01%80.com/%FF"
    assert canonicalize(raw.decode("utf-8", "surrogateescape")) == canonicalize(raw) == expected


@pytest.mark.parametrize(
    "url, expected", DOC_CANONICAL + MORE_CANONICAL, ids=[repr(u)[:60] for u, _ in DOC_CANONICAL + MORE_CANONICAL]
)
def test_canonicalize_is_idempotent(url: str | bytes, expected: str) -> None:
    assert canonicalize(expected) == expected


def test_unescape_deep_nesting_matches_repeated_passes() -> None:
    """The linear fallback for deeply nested escapes reaches the same fixed point as repeating
    whole-string passes (the definition in the doc)."""

    def repeated(data: bytes) -> bytes:
        while (decoded := unquote_to_bytes(data)) != data:
            data = decoded
        return data

    rnd = random.Random(7)
    for _ in range(5000):
        data = bytes(rnd.choice(b"%2535aAfF0x") for _ in range(rnd.randrange(1, 40)))
        assert _unescape_fully(data) == repeated(data), data


@pytest.mark.parametrize(
    "url",
    [
        "http://a.com/%" + "25" * 30_000,  # 30,000 levels of escaping
        "http://a.com/" + "%" * 20_000 + "25" * 20_000,
    ],
)
def test_canonicalize_hostile_escaping_is_linear(url: str) -> None:
    start = time.perf_counter()
    canonicalize(url)
    assert time.perf_counter() - start < 1.0


@pytest.mark.parametrize(
    "url",
    [
        "",
        ":",
        "/blah",
        "#ref",
        "/blah#ref",
        "?query#ref",
        "/blah?query#ref",
        "/blah;param",
        "http://#ref",
        "http:///blah#ref",
        "http://?query#ref",
        "http:///blah?query#ref",
        "http:///blah;param",
        "mailto:bryner@google.com",
        "http:www.google.com:8080/foo.html",
        "javascript:alert(1)",
        "http://...",
        "http://host:port/",
        "http://[::1/",
        "http://[not-ipv6]/",
    ],
)
def test_canonicalize_rejects(url: str) -> None:
    with pytest.raises(ValueError):
        canonicalize(url)


# The doc's expression examples, in the doc's order, plus more shapes the rules cover.
EXPRESSIONS = [
    (
        "http://a.b.c/1/2.html?param=1",
        [
            "a.b.c/1/2.html?param=1",
            "a.b.c/1/2.html",
            "a.b.c/",
            "a.b.c/1/",
            "b.c/1/2.html?param=1",
            "b.c/1/2.html",
            "b.c/",
            "b.c/1/",
        ],
    ),
    (
        "http://a.b.c.d.e.f.g/1.html",
        [
            "a.b.c.d.e.f.g/1.html",
            "a.b.c.d.e.f.g/",
            # (doc: skip b.c.d.e.f.g — only the last five components, and the full hostname)
            "c.d.e.f.g/1.html",
            "c.d.e.f.g/",
            "d.e.f.g/1.html",
            "d.e.f.g/",
            "e.f.g/1.html",
            "e.f.g/",
            "f.g/1.html",
            "f.g/",
        ],
    ),
    ("http://1.2.3.4/1/", ["1.2.3.4/1/", "1.2.3.4/"]),
    ("http://a.b/saw-it", ["a.b/saw-it", "a.b/"]),
    ("http://a.b/", ["a.b/"]),
    ("http://a.b/?", ["a.b/"]),  # an empty query adds no expression
    ("http://b/", ["b/"]),
    (
        "http://a.b.c/1/2/3/4/5/",
        [
            "a.b.c/1/2/3/4/5/",
            "a.b.c/",
            "a.b.c/1/",
            "a.b.c/1/2/",
            "a.b.c/1/2/3/",
            "b.c/1/2/3/4/5/",
            "b.c/",
            "b.c/1/",
            "b.c/1/2/",
            "b.c/1/2/3/",
        ],
    ),
    (
        "http://a.com/a/b/c/d/e.html?123",
        ["a.com/a/b/c/d/e.html?123", "a.com/a/b/c/d/e.html", "a.com/", "a.com/a/", "a.com/a/b/", "a.com/a/b/c/"],
    ),
    ("http://a.b.c.d.e.f.g.h.i/", ["a.b.c.d.e.f.g.h.i/", "e.f.g.h.i/", "f.g.h.i/", "g.h.i/", "h.i/"]),
    (
        "http://[2001:470:1:18::114]/a/b",
        ["[2001:470:1:18::114]/a/b", "[2001:470:1:18::114]/", "[2001:470:1:18::114]/a/"],
    ),
    (
        "http://www.google.com/q?r?s",
        [
            "www.google.com/q?r?s",
            "www.google.com/q",
            "www.google.com/",
            "google.com/q?r?s",
            "google.com/q",
            "google.com/",
        ],
    ),
]


@pytest.mark.parametrize("url, expected", EXPRESSIONS, ids=[u for u, _ in EXPRESSIONS])
def test_expressions(url: str, expected: list[str]) -> None:
    assert expressions(canonicalize(url)) == expected


def test_expressions_are_bounded() -> None:
    many = expressions(canonicalize("http://a.b.c.d.e.f.g.h/1/2/3/4/5/6.html?x=1"))
    assert len(many) == 30 and len(set(many)) == 30


def test_expressions_reject_non_canonical() -> None:
    with pytest.raises(ValueError):
        expressions("a.b.c/1/")


@pytest.mark.parametrize(
    "text, digest",
    [  # FIPS 180-2 examples quoted by the doc
        ("abc", "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"),
        (
            "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq",
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1",
        ),
    ],
)
def test_expression_hash(text: str, digest: str) -> None:
    assert expression_hash(text) == bytes.fromhex(digest)


def test_urlhash_lines() -> None:
    lines = urlhash_lines("HTTP://A.B.C/1/2.html?param=1#x")
    assert lines[0] == "canonical\thttp://a.b.c/1/2.html?param=1"
    assert [line.split("\t")[0] for line in lines[1:]] == EXPRESSIONS[0][1]
    for line in lines[1:]:
        expr, hexdigest = line.split("\t")
        assert hexdigest == hashlib.sha256(expr.encode()).hexdigest()


def _hex(expr: str) -> str:
    return expression_hash(expr).hex()


def _frozen(entries: list[tuple[str, int]]) -> UrlHashSet:
    s = UrlHashSet()
    s.extend(entries)
    s.freeze()
    return s


# (entries, url, expected lookup result)
LOOKUPS = [
    ([(_hex("evil.com/"), 1)], "http://www.evil.com/any/page.html", ("evil.com/", 1, True)),
    ([(_hex("evil.com/bad/"), 2)], "https://evil.com/bad/x?y=1", ("evil.com/bad/", 2, True)),
    ([(_hex("evil.com/bad/"), 2)], "https://evil.com/good/x", None),
    ([(_hex("evil.com/")[:8], 3)], "http://a.evil.com/", ("evil.com/", 3, False)),  # prefix entry
    ([(_hex("evil.com/")[:8].upper(), 3)], "http://evil.com/", ("evil.com/", 3, False)),
    ([(_hex("fine.com/"), 4)], "http://evil.com/", None),
    # the first listed expression in documented order wins: exact host+path before the parent host
    ([(_hex("b.c/"), 5), (_hex("a.b.c/1/2.html"), 6)], "http://a.b.c/1/2.html", ("a.b.c/1/2.html", 6, True)),
    # a full hash confirms over a prefix of the same expression
    ([(_hex("evil.com/")[:8], 7), (_hex("evil.com/"), 8)], "http://evil.com/", ("evil.com/", 8, True)),
    ([(_hex("195.127.0.11/blah"), 9)], "http://3279880203/blah", ("195.127.0.11/blah", 9, True)),
    ([(_hex("evil.com/"), 10), (_hex("evil.com/"), 11)], "http://evil.com/", ("evil.com/", 10, True)),
]


@pytest.mark.parametrize("entries, url, expected", LOOKUPS)
def test_lookup(entries: list[tuple[str, int]], url: str, expected: tuple[str, int, bool] | None) -> None:
    assert _frozen(entries).lookup(url) == expected


def test_lookup_canonical_input_skips_canonicalisation() -> None:
    s = _frozen([(_hex("evil.com/"), 1)])
    assert s.lookup("http://evil.com/x", canonical=True) == ("evil.com/", 1, True)


def test_full_hash_needs_all_32_bytes() -> None:
    """An entry that shares the 4-byte prefix but differs later must not match; a neighbour that
    shares the prefix must not hide the real entry."""
    real = expression_hash("evil.com/")
    fake = real[:4] + bytes(b ^ 0xFF for b in real[4:])
    assert _frozen([(fake.hex(), 1)]).lookup("http://evil.com/") is None
    assert _frozen([(fake.hex(), 1), (real.hex(), 2)]).lookup("http://evil.com/") == ("evil.com/", 2, True)


def test_empty_set() -> None:
    s = _frozen([])
    assert len(s) == 0 and s.lookup("http://evil.com/") is None


@pytest.mark.parametrize(
    "line",
    [
        "",
        "xyz",
        "0" * 63,
        "0" * 65,
        "0" * 9,
        "0" * 7,
        "g" * 64,
        "ba7816bf 8f01cfea",
        "0x" + "0" * 62,
    ],
)
def test_add_rejects_bad_hex(line: str) -> None:
    with pytest.raises(ValueError):
        UrlHashSet().add(line, 1)


def test_len_counts_distinct_entries_and_lifecycle() -> None:
    s = UrlHashSet()
    s.add(_hex("a.com/"), 1)
    s.add(_hex("a.com/"), 1)  # the same list twice: one entry
    s.add(_hex("a.com/"), 2)  # another list: its own entry (a legal list must not be hidden by an earlier one)
    s.add(_hex("b.com/")[:8], 3)
    assert len(s) == 3
    with pytest.raises(RuntimeError):
        s.lookup("http://a.com/")
    s.freeze()
    s.freeze()  # harmless
    assert len(s) == 3 and s.frozen
    with pytest.raises(RuntimeError):
        s.add(_hex("c.com/"), 4)


def test_scale_100k() -> None:
    """100,000 random full hashes + 10,000 prefixes: listed expressions are found, others are not,
    and a lookup stays in the microsecond range (loose bound; the docstring has the measured figure)."""
    rng = random.Random(20240601).randbytes  # seeded: prefix collisions are reproducible
    s = UrlHashSet()
    for i in range(100_000):
        s.add(rng(32).hex(), i)
    for i in range(10_000):
        s.add(rng(4).hex(), 100_000 + i)
    listed = [f"site{i}.example/" for i in range(200)]
    for i, expr in enumerate(listed):
        s.add(_hex(expr), 1_000_000 + i)
    s.freeze()
    assert len(s) >= 110_000
    for i, expr in enumerate(listed):
        assert s.lookup(f"http://www.{expr}page.html") == (expr, 1_000_000 + i, True)
    urls = [canonicalize(f"http://a.b.c{i}.example.org/1/2/3.html?q={i}") for i in range(2000)]
    start = time.perf_counter()
    misses = sum(s.lookup(u, canonical=True) is None for u in urls)
    per_url = (time.perf_counter() - start) / len(urls)
    # 20 expressions per URL; only a random 4-byte prefix entry can hit (≈ 5e-4 per URL)
    assert misses >= len(urls) - 5
    assert per_url < 2e-3, f"{per_url * 1e6:.0f} µs per 20-expression lookup"


def test_hits_returns_every_list_with_digest_and_kind() -> None:
    """Full hashes are marked full; a prefix listed by two lists comes back once per record, with the
    expression's full digest for the endpoint check (docs/fullhash.md)."""
    d = expression_hash("evil.com/")
    s = _frozen([(d.hex()[:8], 1 << 32 | 3), (d.hex()[:8].upper(), 2 << 32 | 9), (_hex("evil.com/x"), 5)])
    assert s.hits("http://evil.com/x") == [
        ("evil.com/x", 5, expression_hash("evil.com/x"), True),
        ("evil.com/", 1 << 32 | 3, d, False),
        ("evil.com/", 2 << 32 | 9, d, False),
    ]
    assert s.hits("http://fine.com/") == []
    both = _frozen([(d.hex(), 4 << 32 | 1), (d.hex(), 1 << 32 | 7), (d.hex(), 4 << 32 | 1)])  # one full hash, 2 lists
    assert both.hits("http://evil.com/") == [("evil.com/", 1 << 32 | 7, d, True), ("evil.com/", 4 << 32 | 1, d, True)]
    assert both.lookup("http://evil.com/") == ("evil.com/", 1 << 32 | 7, True)
    fake = d[:4] + bytes(b ^ 0xFF for b in d[4:])  # same 4 bytes, another hash: no full match
    assert _frozen([(fake.hex(), 1)]).hits("http://evil.com/") == []
