"""DNS caches (filterproxy.dns.cache): lifetimes (RFC 2308), clamping, expiry, eviction, TTL ageing."""

from __future__ import annotations

import gc
import struct
import threading

import dns.message
import pytest

from filterproxy.dns import wire
from filterproxy.dns.cache import (
    AnswerCache,
    PackedCache,
    PackedCaches,
    Sweep,
    TtlPolicy,
    age_step,
    aged,
    from_upstream,
    lifetime,
    make_entry,
    to_reply,
)
from filterproxy.dns.responses import Reply
from filterproxy.dns.wire import RR
from filterproxy.policy.live import LiveTables

NAME = b"\x01a\x04test\x00"
ZONE = b"\x04test\x00"


def a(ttl: int) -> RR:
    return RR(NAME, wire.A, 1, ttl, b"\xc0\x00\x02\x01")


def soa(ttl: int, minimum: int) -> RR:
    rdata = b"\x02ns" + ZONE + b"\x05admin" + ZONE + struct.pack(">IIIII", 1, 2, 3, 4, minimum)
    return RR(ZONE, wire.SOA, 1, ttl, rdata)


def msg(rcode=0, answer=(), authority=()) -> wire.Message:
    return wire.Message(1, 0x8180 | rcode, (NAME, 1, 1), list(answer), list(authority), [])


POL = TtlPolicy(min_ttl=0, max_ttl=3600, negative_ttl=300)


@pytest.mark.parametrize(
    "m, pol, expect",
    [
        (msg(answer=[a(300)]), POL, 300),
        (msg(answer=[a(300), a(20)]), POL, 20),  # the shortest record rules
        (msg(answer=[a(90000)]), POL, 3600),  # max_ttl
        (msg(answer=[a(5)]), TtlPolicy(60, 3600, 300), 60),  # min_ttl
        (msg(answer=[a(0)]), POL, 0),  # TTL 0: not cached
        (msg(wire.NXDOMAIN, authority=[soa(3600, 120)]), POL, 120),  # SOA minimum
        (msg(wire.NXDOMAIN, authority=[soa(30, 120)]), POL, 30),  # SOA TTL when lower (RFC 2308 §5)
        (msg(wire.NXDOMAIN, authority=[soa(3600, 86400)]), POL, 300),  # capped by negative_ttl
        (msg(0, authority=[soa(3600, 100)]), POL, 100),  # NODATA
        (msg(wire.NXDOMAIN), POL, 0),  # no SOA: not cached
        (msg(wire.SERVFAIL), POL, 0),
        (msg(wire.REFUSED), POL, 0),
    ],
)
def test_lifetime(m, pol, expect):
    assert lifetime(m, pol) == expect


def test_to_reply_clamps_and_sets_negative_soa_ttl():
    r = to_reply(msg(wire.NXDOMAIN, authority=[soa(3600, 120)]), POL, now=1000.0)
    assert r.expires == 1120.0 and r.authority[0].ttl == 120
    r = to_reply(msg(answer=[a(90000)]), POL, now=1000.0)
    assert r.answer[0].ttl == 3600 and r.expires == 4600.0
    assert to_reply(msg(wire.SERVFAIL), POL, now=5.0).expires == 0.0


def test_answer_cache_expiry_and_eviction():
    c = AnswerCache(16)
    c.put(("k",), Reply(stored=0.0, expires=10.0))
    assert c.get(("k",), 9.9) is not None
    assert c.get(("k",), 10.0) is None and len(c) == 0
    c.put(("never",), Reply(stored=5.0, expires=0.0))  # not cacheable
    assert len(c) == 0
    for i in range(40):
        c.put((i,), Reply(stored=0.0, expires=100.0))
    assert len(c) <= 16
    assert c.get((39,), 1.0) is not None and c.get((0,), 1.0) is None  # oldest go first


@pytest.mark.parametrize("elapsed, ttls", [(0, [300, 60]), (1, [299, 59]), (59, [241, 1]), (61, [239, 0])])
def test_packed_entry_ages_ttls(elapsed, ttls):
    query = dns.message.make_query("a.test", "A")
    query.id = 77
    pq = wire.parse_query(query.to_wire())
    answer = [
        RR(NAME, wire.CNAME, 1, 300, b"\x01b\x04test\x00"),
        RR(b"\x01b\x04test\x00", wire.A, 1, 60, b"\x01\x02\x03\x04"),
    ]
    data, offs = wire.pack_reply(pq, 0, answer)
    e = make_entry(data, offs, expires=1e9, now=1000.5, fixed=False, slot=0)
    e2 = aged(e, 1000 + elapsed)
    m = dns.message.from_wire(b"\x00\x4d" + e2[2])
    assert [r.ttl for r in m.answer] == ttls
    assert e2[1] == 1000 + elapsed  # shortest TTL under 128 s: fresh for this second only


@pytest.mark.parametrize(
    "ttl, step", [(0, 1), (1, 1), (60, 1), (127, 1), (128, 2), (300, 4), (3600, 56), (86400, 1350)]
)
def test_age_step(ttl, step):
    assert age_step(ttl) == step


def test_long_ttls_age_in_steps():
    pq = wire.parse_query(dns.message.make_query("a.test", "A").to_wire())
    data, offs = wire.pack_reply(pq, 0, [a(3600)])
    e = make_entry(data, offs, expires=1e9, now=1000.0, fixed=False, slot=0)
    assert e[1] == 1000 + 56 - 1  # fresh for 56 s: the hot path re-renders only after that
    e2 = aged(e, 1100)
    assert dns.message.from_wire(b"\x00\x00" + e2[2]).answer[0].ttl == 3500 and e2[1] == 1100 + 54 - 1


def test_packed_entry_fixed_does_not_age():
    pq = wire.parse_query(dns.message.make_query("a.test", "A").to_wire())
    data, offs = wire.pack_reply(pq, 0, [a(30)])
    e = make_entry(data, offs, expires=1e9, now=0.0, fixed=True, slot=0)
    assert aged(e, 20)[2] == e[2]


def test_packed_cache_bounded():
    pc = PackedCache("g", 16, threading.Lock())
    for i in range(100):
        pc.put(bytes([i]), (1.0,))
    assert len(pc.d) <= 16 and bytes([99]) in pc.d
    pc.clear()
    assert not pc.d


def test_sweep_drops_expired_entries_a_slice_at_a_time():
    pc = PackedCache("g", 10000, threading.Lock(), sweep_interval=0)  # not paced: budget keys per step
    for i in range(1000):  # even keys expire at 10, odd ones at 100
        pc.put(b"k%d" % i, (10.0 if i % 2 == 0 else 100.0, 0, b"", 0, 0, b""))
    assert pc.sweep(5.0, budget=10_000) == 0 and len(pc.d) == 1000  # nothing expired yet
    dropped = [pc.sweep(20.0, budget=300) for _ in range(4)]
    assert dropped == [150, 150, 150, 50]  # 300 keys looked at per step: half of them expired
    assert len(pc.d) == 500 and all(e[0] == 100.0 for e in pc.d.values())
    assert pc.sweep.todo == []  # the pass is over: it keeps no keys alive


def test_sweep_never_drops_an_entry_replaced_during_its_pass():
    pc = PackedCache("g", 10000, threading.Lock(), sweep_interval=0)
    for i in range(10):
        pc.put(b"k%d" % i, (10.0,))
    assert pc.sweep(20.0, budget=5) == 5  # the pass started with all ten keys
    pc.put(b"k7", (50.0,))  # renewed meanwhile
    pc.d.pop(b"k8")  # gone meanwhile
    assert pc.sweep(20.0, budget=5) == 3
    assert pc.d == {b"k7": (50.0,)}


def test_sweep_is_paced_over_its_interval():
    """A pass over 1,000 keys with a 10-s interval looks at ~100 keys a second, whatever the call rate."""
    pc = PackedCache("g", 10000, threading.Lock(), sweep_interval=10)
    for i in range(1000):
        pc.put(b"k%d" % i, (1.0, 0, b"", 0, 0, b""))  # all expired at 1.0
    assert pc.sweep(100.0) == 1  # the pass starts: only the first key is due
    assert pc.sweep(100.0) == 0 and pc.sweep(100.0) == 0  # more calls at the same time: nothing more due
    assert pc.sweep(101.0) == 100 and pc.sweep(101.005) == 0  # one second later: a tenth of the keys
    assert pc.sweep(105.0, budget=256) == 256  # behind by 400 keys: at most the budget in one step
    assert pc.sweep(105.0, budget=10_000) == 144
    assert pc.sweep(111.0, budget=10_000) == 499 and not pc.d  # the interval is over: the rest, pass done
    assert pc.sweep.todo == [] and pc.sweep(200.0) == 0


def test_answer_cache_sweep_covers_both_entry_kinds():
    c = AnswerCache(1000, sweep_interval=0)
    c.put(b"obj", Reply(stored=0.0, expires=10.0, answer=[a(10)]))  # kept as a Reply
    raw = wire.RawAnswer(b"", 0, 0, 0, 0, b"", b"", b"", 10)
    c.put(b"raw", Reply(stored=0.0, expires=10.0, raw=raw))  # kept as a tuple of atoms
    c.put(b"live", Reply(stored=0.0, expires=99.0, answer=[a(99)]))
    assert c.sweep(11.0) == 2 and len(c) == 1 and c.get(b"live", 11.0) is not None


def test_raw_answers_leave_the_collector_at_their_first_young_collection():
    """Cached upstream answers (100k of them) must not stay tracked by the garbage collector: a tracked
    entry is walked by every collection of its generation (p99 of cache hits). Stored the way a miss
    stores them — parsed from the upstream's bytes, then put — and survivors of one young collection."""
    c = AnswerCache(10_000)
    q = wire.build_query(NAME, wire.A)
    reply = bytearray(q)
    reply[2:4] = b"\x81\x80"
    reply[6:8] = b"\x00\x01"  # one answer record, after the question
    reply[10:12] = b"\x00\x00"  # (the OPT record dropped)
    reply = (
        bytes(reply[: 12 + len(NAME) + 4]) + b"\xc0\x0c" + struct.pack(">HHIH", wire.A, 1, 60, 4) + b"\xc0\x00\x02\x01"
    )
    gc.collect()
    was = gc.isenabled()
    gc.disable()  # this test says when the collector runs
    try:
        for k in range(2000):
            r = from_upstream(reply, NAME, wire.A, POL, 0.0, "up")
            assert r is not None and r.raw is not None
            c.put(b"k%d" % k, r)
        gc.collect(0)
        entries = [c._d[b"k%d" % k] for k in range(2000)]
        assert all(type(e) is tuple for e in entries)
        assert not any(gc.is_tracked(e) for e in entries)
    finally:
        if was:
            gc.enable()
    got = c.get(b"k7", 1.0)
    assert got.raw is not None and got.raw.life == 60 and got.upstream == "up" and got.expires == 60.0


def test_packed_caches_sweep_every_group():
    pcs = PackedCaches(["a", "b"], 100, sweep_interval=0)
    for g in ("a", "b"):
        pcs.for_group(g).put(b"x", (1.0,))
        pcs.for_group(g).put(b"y", (9.0,))
    assert pcs.sweep(5.0) == 2 and len(pcs) == 2
    assert isinstance(pcs.for_group("a").sweep, Sweep)


# ---------------------------------------------------------------- client table (ACL, group, MAC)


class _Clients:
    def __init__(self, uses_mac: bool):
        self.uses_mac = uses_mac
        self.default_group = "home"
        self.asked = []

    def group_for(self, client):
        self.asked.append(client)
        if client.mac == "aa:bb:cc:dd:ee:ff":
            return "kids", "mac"
        if client.ip == "10.0.0.7":
            return "staff", "ip"
        return "home", "default"


class _Engine:
    def __init__(self, uses_mac: bool):
        self.clients = _Clients(uses_mac)
        self.live = LiveTables()  # no control API rules


@pytest.mark.parametrize(
    "ip, mac, allowed, group",
    [
        ("10.0.0.7", None, True, "staff"),
        ("10.0.0.8", "aa:bb:cc:dd:ee:ff", True, "kids"),  # MAC beats the default
        ("::ffff:10.0.0.7", None, True, "staff"),  # IPv4-mapped on a dual-stack socket
        ("192.0.2.1", None, False, None),  # outside allowed_networks: no open resolver
        ("not-an-ip", None, False, None),
    ],
)
def test_client_table(monkeypatch, ip, mac, allowed, group):
    from filterproxy.dns import clients as clmod
    from filterproxy.dns.cache import PackedCaches

    monkeypatch.setattr(clmod, "mac_for_ip", lambda a: mac)
    table = clmod.ClientTable(_Engine(uses_mac=True), ["10.0.0.0/8"], 50, PackedCaches(["home", "kids", "staff"], 64))
    st = table.state(ip, now=100.0)
    assert st.allowed is allowed and st.group == group
    assert (st.packed is not None) is allowed and st.limit == 50
    assert table.state(ip, now=101.0) is st  # cached until refresh
    assert table.state(ip, now=200.0) is not st  # rebuilt (leases move)


def test_client_table_rate_limit_off():
    from filterproxy.dns.cache import PackedCaches
    from filterproxy.dns.clients import UNLIMITED, ClientTable

    table = ClientTable(_Engine(uses_mac=False), ["127.0.0.0/8"], 0, PackedCaches(["home"], 64))
    assert table.state("127.0.0.1").limit == UNLIMITED
