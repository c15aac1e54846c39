"""List parsers against the real lists in ../shared/data (every supported format and its quirks)."""

from __future__ import annotations

import io

import pytest
from conftest import LISTS

from filterproxy.lists import parsers
from filterproxy.lists.parsers import ALLOW, BOTH, EXACT, SUBS, ParseStats, iter_entries


def parse_file(fmt: str, path, match=None):
    stats: dict[str, ParseStats] = {}
    entries = [e for _f, e in iter_entries(fmt, str(path), lambda p: stats.setdefault(p, ParseStats(p)), match)]
    return entries, stats


# (relative path, format, expected entries): counts stated in the lists' own headers where they exist
HEADER_COUNTED = [
    ("hagezi/adblock/doh-vpn-proxy-bypass.txt", "adblock", 6752),
    ("hagezi/adblock/doh.txt", "adblock", 3368),
    ("hagezi/adblock/gambling.txt.gz", "adblock", 197362),
    ("hagezi/adblock/multi.txt.gz", "adblock", 139293),
    ("hagezi/adblock/nsfw.txt.gz", "adblock", 76936),
    ("hagezi/adblock/social.txt", "adblock", 882),
    ("hagezi/adblock/urlshortener.txt", "adblock", 9223),
    ("hagezi/wildcard/doh-vpn-proxy-bypass.txt", "wildcard", 6752),
    ("hagezi/wildcard/nsfw.txt.gz", "wildcard", 76936),
    ("hagezi/wildcard/social.txt", "wildcard", 882),
    ("hagezi/wildcard/doh-vpn-proxy-bypass-onlydomains.txt", "domains", 6752),
    ("hagezi/rpz/doh.txt", "rpz", 6736),
    ("hagezi/rpz/doh-vpn-proxy-bypass.txt", "rpz", 13504),
    ("hagezi/domains/doh.txt", "domains", 3844),
    ("hagezi/hosts/doh.txt", "hosts", 3844),
    ("stevenblack_trimmed/alternates_gambling-only.trimmed.txt", "domains", 6212),
    ("stevenblack_trimmed/unified_hosts.trimmed.txt.gz", "domains", 83808),
]


@pytest.mark.parametrize("rel,fmt,expected", HEADER_COUNTED, ids=[r for r, _f, _n in HEADER_COUNTED])
def test_entry_count_matches_list_header(data_dir, rel, fmt, expected):
    entries, stats = parse_file(fmt, LISTS / rel)
    st = stats[str(LISTS / rel)]
    assert st.header_count == expected, "header count not recognised"
    assert len(entries) == expected
    assert st.skipped == 0, st.errors


def test_hosts_compressed_lines_hold_the_same_names_as_the_plain_twin(data_dir):
    plain, _ = parse_file("hosts", LISTS / "hagezi/hosts/doh.txt")
    compressed, stats = parse_file("hosts", LISTS / "hagezi/hosts/doh-compressed.txt")
    assert {e.value for e in compressed} == {e.value for e in plain}
    # its header counts lines (up to 9 names each), and the file has no final newline
    assert stats[str(LISTS / "hagezi/hosts/doh-compressed.txt")].header_count == 428


def test_rpz_wildcard_pairs_cover_apex_and_subdomains(data_dir):
    entries, _ = parse_file("rpz", LISTS / "hagezi/rpz/doh.txt")
    flags: dict[str, int] = {}
    for e in entries:
        flags[e.value] = flags.get(e.value, 0) | e.flags
    assert flags["dns.paliska.net"] == BOTH
    # a real name that merely starts with "rpz-" is a QNAME trigger, not an RPZ special
    assert "rpz-public-resolver1.rrdns.pch.net" in flags
    adblock, _ = parse_file("adblock", LISTS / "hagezi/adblock/doh.txt")
    assert {e.value for e in adblock} == set(flags)


def test_blockads_full_hosts_file(data_dir):
    entries, stats = parse_file("hosts", LISTS / "blockads/hosts.txt.gz")
    st = next(iter(stats.values()))
    names = {e.value for e in entries}
    assert "localhost" not in names and "ip6-allnodes" not in names and "broadcasthost" not in names
    # stated "Blocked domains: 57183": 57178 names + 4 IP "names" + 1 invalid ('!log-boot.tiktokv.com')
    assert st.header_count == 57183
    assert len(entries) + st.ips + st.skipped == 57183
    assert st.skipped == 1 and "!log-boot" in st.errors[0] and ":56915:" in st.errors[0]


def test_sinfonietta_sinks_127_and_0(data_dir):
    social, _ = parse_file("hosts", LISTS / "sinfonietta/social-hosts.txt")
    gambling, _ = parse_file("hosts", LISTS / "sinfonietta/gambling-hosts.txt")
    assert len(social) > 3000 and len(gambling) > 2500
    assert all(e.flags == EXACT for e in social)


def test_dibdot_ip_lists_are_ips_not_names(data_dir):
    entries, stats = parse_file("domains", LISTS / "dibdot_doh/doh-ipv4.txt")
    assert entries and all(e.kind == "ip" for e in entries)
    v6, _ = parse_file("domains", LISTS / "dibdot_doh/doh-ipv6.txt")
    assert all(e.kind == "ip" and ":" in e.value for e in v6)


def test_ublock_unicode_tlds_become_punycode(data_dir):
    entries, stats = parse_file("adblock", LISTS / "hagezi/adblock/spam-tlds-ublock.txt")
    names = {e.value for e in entries}
    assert "xn--p1acf" in names  # рус
    assert all(n.isascii() for n in names)


def test_adguard_exceptions(data_dir):
    entries, stats = parse_file("adblock", LISTS / "adguard_sdns/exceptions.txt")
    assert entries and all(e.flags & ALLOW for e in entries)
    regexes = [e for e in entries if e.kind == "regex"]
    assert any("exponea" in e.value for e in regexes)


def test_stevenblack_oddities(data_dir):
    entries, _ = parse_file("domains", LISTS / "stevenblack_trimmed/unified_hosts.trimmed.txt.gz")
    names = {e.value for e in entries}
    assert "0.0.0.0.hpyrdr.com" in names  # a name that starts with 0.0.0.0.
    assert all(n == n.strip() for n in names)  # trailing spaces stripped


@pytest.mark.parametrize(
    "text,expected",
    [
        ("||a.com^", [("domain", "a.com", BOTH)]),
        ("|a.com^|", [("domain", "a.com", EXACT)]),
        ("@@||a.com^", [("domain", "a.com", BOTH | ALLOW)]),
        ("@@|a.com^|", [("domain", "a.com", EXACT | ALLOW)]),
        ("||A.COM.^", [("domain", "a.com", BOTH)]),
        ("||bücher.de^", [("domain", "xn--bcher-kva.de", BOTH)]),
        ("||x.com^$third-party", []),  # not applicable to DNS names: skipped and counted
        ("||x.com/path^", []),
        ("! comment", []),
        ("[Adblock Plus]", []),
        ("/^ad[0-9]+\\./", [("regex", "^ad[0-9]+\\.", 0)]),
    ],
)
def test_adblock_rules(text, expected):
    st = ParseStats("t")
    got = [(e.kind, e.value, e.flags) for e in parsers.parse_adblock(io.StringIO(text + "\n"), st)]
    assert got == expected


@pytest.mark.parametrize(
    "text,expected",
    [
        ("*.a.com", [("domain", "a.com", BOTH)]),
        ("a.com", [("domain", "a.com", EXACT)]),
        ("# c", []),
    ],
)
def test_wildcard_rules(text, expected):
    got = [(e.kind, e.value, e.flags) for e in parsers.parse_wildcard(io.StringIO(text + "\n"), ParseStats("t"))]
    assert got == expected


@pytest.mark.parametrize(
    "text,expected",
    [
        ("0.0.0.0 a.com b.com # x", [("a.com", EXACT), ("b.com", EXACT)]),
        ("127.0.0.1\tlocalhost", []),
        (":: ipv6.example", [("ipv6.example", EXACT)]),
        ("0.0.0.0 UPPER.Example.COM.", [("upper.example.com", EXACT)]),
    ],
)
def test_hosts_lines(text, expected):
    got = [(e.value, e.flags) for e in parsers.parse_hosts(io.StringIO(text + "\n"), ParseStats("t"))]
    assert got == expected


def test_hosts_garbage_is_reported_with_file_and_line():
    st = ParseStats("lists/x.hosts")
    list(parsers.parse_hosts(io.StringIO("0.0.0.0 ok.com\nnot-an-ip name\n0.0.0.0 bad..name\n"), st))
    assert st.skipped == 2
    assert st.errors[0].startswith("lists/x.hosts:2:") and "expected 'IP name" in st.errors[0]
    assert st.errors[1].startswith("lists/x.hosts:3:")


def test_rpz_relative_names_and_passthru():
    text = (
        "$ORIGIN rpz.example.\n@ SOA a. b. 1 2 3 4 5\n  NS a.\n"
        "bad.com CNAME .\n*.bad.com CNAME .\nok.bad.com CNAME rpz-passthru.\n"
        "abs.net.rpz.example. CNAME .\n32.1.0.0.127.rpz-ip CNAME .\n"
    )
    st = ParseStats("z")
    got = [(e.value, e.flags) for e in parsers.parse_rpz(io.StringIO(text), st)]
    assert got == [("bad.com", EXACT), ("bad.com", SUBS), ("ok.bad.com", EXACT | ALLOW), ("abs.net", EXACT)]
    assert st.skipped == 1  # rpz-ip trigger


def test_zero_entries_is_an_error(tmp_path):
    from filterproxy.lists.snapshot import ListSource, build_snapshot

    p = tmp_path / "empty.txt"
    p.write_text("# nothing here\n\n")
    with pytest.raises(parsers.ListError, match="zero entries"):
        build_snapshot([ListSource("e", "adult", "domains", str(p))])


def test_unknown_format_and_missing_file(tmp_path):
    with pytest.raises(parsers.ListError, match="unknown list format"):
        list(iter_entries("nope", str(tmp_path), lambda p: ParseStats(p)))
    with pytest.raises(parsers.ListError, match="cannot open"):
        list(iter_entries("domains", str(tmp_path / "missing.txt"), lambda p: ParseStats(p)))


def test_ut1_folders_all_parse(data_dir):
    from filterproxy.lists.snapshot import ListSource, build_snapshot

    cats = sorted(p for p in (LISTS / "ut1").iterdir() if p.is_dir())
    assert len(cats) > 25
    snap = build_snapshot([ListSource(f"ut1-{p.name}", p.name.replace("_", "-")[:30], "ut1", str(p)) for p in cats])
    by = {li.id: li for li in snap.lists}
    # redirector mixes in 22,530 bare IPv4 addresses: kept for IP matching, not names
    assert by["ut1-redirector"].ips >= 22000
    assert len(snap.ips) > 20000
    for li in snap.lists:
        assert li.entries > 0
        assert li.skipped <= max(5, li.entries // 100), (li.id, li.errors)
    # squidGuard semantics: a UT1 domain blocks its subdomains
    hits = snap.domains.lookup("www.sub.bet365.com")
    assert any(snap.lists[m.list_idx].id == "ut1-gambling" for m in hits)
