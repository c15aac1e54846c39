"""Wire-format helpers (filterproxy.dns.wire): parametrised tables, checked against dnspython."""

from __future__ import annotations

import struct

import dns.edns
import dns.message
import dns.rdatatype
import pytest

from filterproxy.dns import wire
from filterproxy.dns.wire import RR, WireError


def q(name: str = "www.Example.com", rdtype: str = "A", **kw) -> bytes:
    m = dns.message.make_query(name, rdtype, **kw)
    m.id = 0x1234
    return m.to_wire()


# ---------------------------------------------------------------- parse_query


@pytest.mark.parametrize(
    "data, qname, qtype, edns, do, size",
    [
        (q(), b"\x03www\x07example\x03com\x00", 1, False, False, 512),
        (q("EXAMPLE.org.", "AAAA", use_edns=0, payload=4096), b"\x07example\x03org\x00", 28, True, False, 4096),
        (q("a.b", "HTTPS", want_dnssec=True), b"\x01a\x01b\x00", 65, True, True, 1232),
        (q(".", "NS"), b"\x00", 2, False, False, 512),
        (
            q("x.test", "TXT", use_edns=0, options=[dns.edns.GenericOption(10, b"12345678")]),
            b"\x01x\x04test\x00",
            16,
            True,
            False,
            1232,
        ),
    ],
)
def test_parse_query_valid(data, qname, qtype, edns, do, size):
    pq = wire.parse_query(data)
    assert pq.id == 0x1234
    assert pq.qname == qname
    assert pq.qtype == qtype and pq.qclass == 1
    assert pq.edns is edns and pq.do is do
    assert pq.udp_size == size or not edns
    assert pq.qend == 12 + len(qname) + 4


def _hdr(flags=0x0100, qd=1, an=0, ns=0, ar=0, qid=7):
    return struct.pack(">HHHHHH", qid, flags, qd, an, ns, ar)


@pytest.mark.parametrize(
    "data, rcode, why",
    [
        (b"", None, "empty"),
        (b"\x00" * 11, None, "short header"),
        (_hdr(flags=0x8100) + b"\x00\x00\x01\x00\x01", None, "a response"),
        (_hdr(flags=0x2100) + b"\x00\x00\x01\x00\x01", wire.NOTIMP, "opcode UPDATE"),
        (_hdr(qd=0), wire.FORMERR, "no question"),
        (_hdr(qd=2) + b"\x00\x00\x01\x00\x01" * 2, wire.FORMERR, "two questions"),
        (_hdr() + b"\x03www", wire.FORMERR, "name runs past the end"),
        (_hdr() + b"\x03www\x00\x00", wire.FORMERR, "type/class truncated"),
        (_hdr() + b"\xc0\x0c\x00\x01\x00\x01", wire.FORMERR, "pointer in the question"),
        (_hdr() + b"\x40" + b"a" * 64 + b"\x00\x00\x01\x00\x01", wire.FORMERR, "label of 64"),
        (_hdr() + (b"\x3f" + b"a" * 63) * 5 + b"\x00\x00\x01\x00\x01", wire.FORMERR, "name over 255"),
        (_hdr(ar=1) + b"\x00\x00\x01\x00\x01", wire.FORMERR, "missing additional record"),
        (
            _hdr(ar=1) + b"\x00\x00\x01\x00\x01" + b"\x00\x00\x29\x04\xd0\x00\x00\x00\x00\x00\x05\x00",
            wire.FORMERR,
            "OPT rdata truncated",
        ),
        (
            _hdr(ar=2) + b"\x00\x00\x01\x00\x01" + (b"\x00\x00\x29\x04\xd0\x00\x00\x00\x00\x00\x00") * 2,
            wire.FORMERR,
            "two OPT records",
        ),
        (
            _hdr(ar=1) + b"\x00\x00\x01\x00\x01" + b"\x00\x00\x29\x04\xd0\x00\x00\x00\x00\x00\x04\x00\x0a\x00\x09",
            wire.FORMERR,
            "EDNS option longer than OPT",
        ),
    ],
)
def test_parse_query_invalid(data, rcode, why):
    with pytest.raises(WireError) as ei:
        wire.parse_query(data)
    assert ei.value.rcode == rcode, why


def test_parse_query_edns_version():
    m = dns.message.make_query("a.test", "A", use_edns=1)
    assert wire.parse_query(m.to_wire()).edns_version == 1


# ---------------------------------------------------------------- names


@pytest.mark.parametrize(
    "wire_name, text, policy",
    [
        (b"\x03www\x07example\x03com\x00", "www.example.com", "www.example.com"),
        (b"\x03WwW\x07ExAmPlE\x03CoM\x00", "WwW.ExAmPlE.CoM", "www.example.com"),
        (b"\x00", "", ""),
        (b"\x04_dns\x08resolver\x04arpa\x00", "_dns.resolver.arpa", "_dns.resolver.arpa"),
        (b"\x03a b\x04test\x00", "a\\032b.test", None),
        (b"\x03a.b\x04test\x00", "a\\046b.test", None),
        (b"\x02\xc3\xa9\x04test\x00", "\\195\\169.test", None),
        (b"\x05xn--a\x04test\x00", "xn--a.test", "xn--a.test"),
        (b"\x03co-\x04test\x00", "co-.test", None),  # the engine refuses these labels: so do we
        (b"\x03-co\x04test\x00", "-co.test", None),
        (b"\x03t*t\x04test\x00", "t*t.test", None),
    ],
)
def test_names(wire_name, text, policy):
    assert wire.name_to_text(wire_name) == text
    assert wire.policy_name(wire_name) == policy


def test_policy_names_are_already_canonical():
    """The resolver hands policy_name's output to the engine without normalising it again
    (Engine.decide(canonical=True)): every name it admits must come back unchanged from normalize_host."""
    import random

    from filterproxy.names import NameError_, normalize_host

    rng = random.Random(5)
    alphabet = b"abcXYZ019-_*.\xc3\xa9 "
    admitted = 0
    for i in range(20000):
        labels = []
        for _ in range(rng.randint(1, 6)):
            n = rng.choice((1, 2, 3, 5, 8, 63, 64)) if i % 7 == 0 else rng.randint(1, 12)
            labels.append(
                bytes(rng.choice(alphabet) if rng.random() < 0.06 else rng.choice(b"abcdefxyz0189") for _ in range(n))
            )
        if i % 11 == 0:  # long names: near the 253-character limit
            labels = [b"a" * 63] * 3 + [b"b" * rng.randint(55, 61)]
        name = b"".join(bytes((len(lab),)) + lab for lab in labels if len(lab) < 64) + b"\x00"
        p = wire.policy_name(name)
        if p is None or p == "":
            continue
        admitted += 1
        try:
            assert normalize_host(p) == p, name
        except NameError_ as exc:
            raise AssertionError(f"policy_name admitted {p!r}, normalize_host refuses it: {exc}") from None
    assert admitted > 5000  # the generator exercises the admitted side, not only refusals


@pytest.mark.parametrize(
    "buf, off, expect",
    [
        (b"\x01a\x00\xc0\x00", 3, b"\x01a\x00"),
        (b"\x01a\x00\x01b\xc0\x00", 3, b"\x01b\x01a\x00"),
    ],
)
def test_read_name_pointers(buf, off, expect):
    assert wire.read_name(buf, off)[0] == expect


@pytest.mark.parametrize(
    "buf, off",
    [
        (b"\xc0\x00", 0),  # points at itself
        (b"\x00\xc0\x03\xc0\x01", 1),  # forward pointer
        (b"\x05ab", 0),  # past the end
        (b"\x80\x00", 0),  # reserved label type
    ],
)
def test_read_name_rejects(buf, off):
    with pytest.raises(WireError):
        wire.read_name(buf, off)


# ---------------------------------------------------------------- packing


def test_pack_reply_roundtrip_with_dnspython():
    data = q("Www.Example.COM", "A", use_edns=0)
    pq = wire.parse_query(data)
    name = b"\x03www\x07example\x03com\x00"
    cdn = b"\x03cdn\x07example\x03net\x00"
    answer = [RR(name, wire.CNAME, 1, 300, cdn), RR(cdn, wire.A, 1, 60, bytes([192, 0, 2, 1]))]
    msg, offs = wire.pack_reply(pq, wire.NOERROR, answer, ede=(17, "category/adult/x"))
    m = dns.message.from_wire(msg)
    assert m.id == 0x1234 and m.rcode() == 0
    assert str(m.question[0].name) == "Www.Example.COM."  # the question as the client sent it
    assert [str(r) for r in m.answer] == [
        "Www.Example.COM. 300 IN CNAME cdn.example.net.",
        "cdn.example.net. 60 IN A 192.0.2.1",
    ]
    ede = [o for o in m.options if o.otype == dns.edns.EDE]
    assert ede and ede[0].code == 17 and ede[0].text == "category/adult/x"
    assert sorted(t for _, t in offs) == [60, 300]
    aged = wire.age_ttls(msg, offs, 10)
    assert [r.ttl for r in dns.message.from_wire(aged).answer] == [290, 50]
    assert [r.ttl for r in dns.message.from_wire(wire.age_ttls(msg, offs, 1000)).answer] == [0, 0]


def test_pack_reply_without_edns_has_no_opt():
    pq = wire.parse_query(q("a.test"))
    msg, _ = wire.pack_reply(pq, wire.NXDOMAIN, ede=(15, "x"))
    m = dns.message.from_wire(msg)
    assert m.rcode() == dns.rcode.NXDOMAIN and m.edns == -1


@pytest.mark.parametrize("edns, limit, truncated", [(False, 512, True), (True, 1232, False), (True, 600, True)])
def test_pack_reply_truncates(edns, limit, truncated):
    pq = wire.parse_query(q("many.test", use_edns=0 if edns else False))
    name = b"\x04many\x04test\x00"
    answer = [RR(name, wire.A, 1, 60, bytes([10, 0, i // 256, i % 256])) for i in range(40)]
    msg, _ = wire.pack_reply(pq, wire.NOERROR, answer, max_size=limit)
    m = dns.message.from_wire(msg)
    assert bool(m.flags & dns.flags.TC) is truncated
    assert (len(m.answer[0]) if m.answer else 0) == (0 if truncated else 40)


def test_badvers_extended_rcode():
    pq = wire.parse_query(dns.message.make_query("a.test", "A", use_edns=1).to_wire())
    m = dns.message.from_wire(wire.pack_reply(pq, wire.BADVERS)[0])
    assert m.rcode() == dns.rcode.BADVERS


@pytest.mark.parametrize(
    "data, rcode, has_question",
    [
        (q("a.test"), wire.REFUSED, True),
        (_hdr(qd=2) + b"\x00\x00\x01\x00\x01" * 2, wire.FORMERR, False),
        (_hdr() + b"\xc0\x0c\x00\x01\x00\x01", wire.FORMERR, False),
        (b"\x00" * 5, wire.FORMERR, None),
        (_hdr(flags=0x8000), wire.FORMERR, None),
    ],
)
def test_header_reply(data, rcode, has_question):
    r = wire.header_reply(data, rcode)
    if has_question is None:
        assert r is None
        return
    m = dns.message.from_wire(r, question_only=True) if has_question else None
    assert r[3] & 0xF == rcode and r[2] & 0x80
    if m is not None:
        assert str(m.question[0].name) == "a.test."


def test_parse_message_decompresses():
    m = dns.message.make_response(dns.message.make_query("www.example.com", "MX"))
    m.answer.append(dns.rrset.from_text("www.example.com.", 300, "IN", "CNAME", "mail.example.com."))
    m.answer.append(dns.rrset.from_text("mail.example.com.", 300, "IN", "MX", "10 mx1.example.com."))
    m.authority.append(
        dns.rrset.from_text("example.com.", 60, "IN", "SOA", "ns.example.com. host.example.com. 1 2 3 4 5")
    )
    msg = wire.parse_message(m.to_wire())
    assert msg.question == (b"\x03www\x07example\x03com\x00", 15, 1)
    assert msg.answer[0].rdata == b"\x04mail\x07example\x03com\x00"
    assert msg.answer[1].rdata == b"\x00\x0a\x03mx1\x07example\x03com\x00"
    assert msg.authority[0].rdata.endswith(struct.pack(">IIIII", 1, 2, 3, 4, 5))
    assert wire.policy_name(msg.answer[0].target()) == "mail.example.com"


# ---------------------------------------------------------------- SVCB / HTTPS


def svcb(params, prio=1, target=b"\x00"):
    return wire.pack_svcb(prio, target, params)


ALPN_H3_H2 = (1, b"\x02h3\x02h2")
ECH = (5, b"\x00\x05hello")
HINT = (4, bytes([192, 0, 2, 1]))


@pytest.mark.parametrize(
    "params, ech, h3, expect",
    [
        ([ALPN_H3_H2, HINT, ECH], True, False, [ALPN_H3_H2, HINT]),
        ([ALPN_H3_H2, HINT, ECH], True, True, [(1, b"\x02h2"), HINT]),
        ([ALPN_H3_H2, HINT, ECH], False, False, [ALPN_H3_H2, HINT, ECH]),
        ([(0, b"\x00\x05"), ALPN_H3_H2, ECH], True, False, [ALPN_H3_H2]),  # mandatory=ech dropped with it
        ([(0, b"\x00\x01\x00\x05"), ALPN_H3_H2, ECH], True, False, [(0, b"\x00\x01"), ALPN_H3_H2]),
        ([(1, b"\x02h3\x05h3-29"), (2, b""), HINT], False, True, [HINT]),  # only h3: alpn and no-default-alpn go
        ([HINT], True, True, [HINT]),
    ],
)
def test_strip_svcb(params, ech, h3, expect):
    out = wire.strip_svcb(svcb(params), ech=ech, h3=h3)
    assert wire.parse_svcb(out) == (1, b"\x00", expect)


@pytest.mark.parametrize("rdata", [b"", b"\x00\x01", svcb([ECH])[:-2], b"\x00\x00\x00"])
def test_strip_svcb_malformed_or_alias_unchanged(rdata):
    assert wire.strip_svcb(rdata) == rdata


def test_strip_svcb_readable_by_dnspython():
    out = wire.strip_svcb(svcb([ALPN_H3_H2, HINT, ECH]), ech=True, h3=True)
    rd = dns.rdata.from_wire(dns.rdataclass.IN, dns.rdatatype.HTTPS, out, 0, len(out))
    assert "ech" not in rd.to_text() and 'alpn="h2"' in rd.to_text()


def test_ede_option_layout():
    assert wire.ede_option(16, "legal") == b"\x00\x0f\x00\x07\x00\x10legal"


# ---------------------------------------------------------------- raw replies (scan_reply / pack_raw)


def upstream_reply(rrs=(), auth=(), rcode=0, qname="www.example.com.", rdtype="A", edns=True) -> bytes:
    q = dns.message.make_query(qname, rdtype, use_edns=0 if edns else False)
    r = dns.message.make_response(q)
    r.set_rcode(rcode)
    for text in rrs:
        r.answer.append(dns.rrset.from_text(*text))
    for text in auth:
        r.authority.append(dns.rrset.from_text(*text))
    return r.to_wire()


QN = b"\x03www\x07example\x03com\x00"
SOA_TEXT = ("example.com.", 3600, "IN", "SOA", "ns.example.com. admin.example.com. 1 2 3 4 120")


@pytest.mark.parametrize(
    "rrs, auth, rcode, life, cnames, addrs",
    [
        ([("www.example.com.", 300, "IN", "A", "192.0.2.1")], [], 0, 300, 0, 1),
        (
            [
                ("www.example.com.", 300, "IN", "CNAME", "cdn.example.net."),
                ("cdn.example.net.", 60, "IN", "A", "192.0.2.2"),
            ],
            [],
            0,
            60,
            1,
            1,
        ),
        ([("www.example.com.", 90000, "IN", "A", "192.0.2.1")], [], 0, 3600, 0, 1),  # max_ttl
        ([], [SOA_TEXT], 3, 120, 0, 0),  # NXDOMAIN: the SOA minimum
        ([], [SOA_TEXT], 0, 120, 0, 0),  # NODATA
        ([], [], 3, 0, 0, 0),  # no SOA: not cached
        ([], [], 2, 0, 0, 0),  # SERVFAIL
    ],
)
def test_scan_reply(rrs, auth, rcode, life, cnames, addrs):
    buf = upstream_reply(rrs, auth, rcode)
    rc, _flags, raw = wire.scan_reply(buf, QN, 1, 0, 3600, 300)
    assert rc == rcode and raw.life == life
    assert len(raw.cname_offsets()) == cnames and len(list(raw.addr_items())) == addrs
    if cnames:
        assert wire.policy_name(wire.read_name(buf, raw.cname_offsets()[0])[0]) == "cdn.example.net"


@pytest.mark.parametrize(
    "buf, why",
    [
        (upstream_reply(qname="other.example.com."), "another question"),
        (
            upstream_reply([("www.example.com.", 1, "IN", "A", "192.0.2.1")], rdtype="A")[:2]
            + b"\x83\x80"
            + upstream_reply([("www.example.com.", 1, "IN", "A", "192.0.2.1")])[4:],
            "truncated (TC)",
        ),
    ],
)
def test_scan_reply_unusual_takes_the_slow_path(buf, why):
    assert wire.scan_reply(buf, QN, 1, 0, 3600, 300) is None, why


def test_scan_reply_rejects_forward_pointers():
    buf = bytearray(upstream_reply([("www.example.com.", 300, "IN", "A", "192.0.2.1")], edns=False))
    qend = 12 + len(QN) + 4
    buf[qend : qend + 2] = b"\xc0\x7f"  # owner name pointing forward
    with pytest.raises(WireError):
        wire.scan_reply(bytes(buf), QN, 1, 0, 3600, 300)


@pytest.mark.parametrize("edns, elapsed", [(True, 0), (False, 0), (True, 50)])
def test_pack_raw_matches_a_parsed_reply(edns, elapsed):
    buf = upstream_reply(
        [("www.example.com.", 300, "IN", "CNAME", "cdn.example.net."), ("cdn.example.net.", 60, "IN", "A", "192.0.2.2")]
    )
    _rc, _f, raw = wire.scan_reply(buf, QN, 1, 0, 3600, 300)
    client = dns.message.make_query("WWW.Example.COM", "A", use_edns=0 if edns else False)
    client.id = 999
    pq = wire.parse_query(client.to_wire())
    msg, offs = wire.pack_raw(pq, 0, raw, elapsed)
    m = dns.message.from_wire(msg)
    assert m.id == 999 and str(m.question[0].name) == "WWW.Example.COM."
    assert [str(r) for r in m.answer] == [
        f"WWW.Example.COM. {300 - elapsed} IN CNAME cdn.example.net.",
        f"cdn.example.net. {max(0, 60 - elapsed)} IN A 192.0.2.2",
    ]
    assert (m.edns == 0) is edns and len(offs) == 2
    # the offsets let a packed copy age
    aged = dns.message.from_wire(wire.age_ttls(msg, offs, 5))
    assert [r.ttl for r in aged.answer] == [300 - elapsed - 5, max(0, 60 - elapsed - 5)]
