"""Fuzzing: random and mutated packets against the parsers (in process) and a running server (UDP+TCP).

Bounded in time (~12 s in all). Passes when nothing but WireError escapes the parsers, the server never
logs a traceback, and it still answers properly afterwards.
"""

from __future__ import annotations

import os
import random
import socket
import struct
import time

import dns.edns
import dns.message
import dns.query
import pytest

from filterproxy.dns import wire
from filterproxy.dns.testing import FakeUpstream, ServerProcess, synth_a
from filterproxy.names import normalize_host

SEED = int(os.environ.get("FILTERPROXY_FUZZ_SEED", "20261123"))


def seeds() -> list[bytes]:
    out = []
    for name, t, kw in [
        ("www.example.com", "A", {}),
        ("a.b.c.d.e.example", "AAAA", {"use_edns": 0}),
        ("svc.example", "HTTPS", {"want_dnssec": True}),
        (".", "NS", {}),
        ("adult.test", "TXT", {"use_edns": 0, "options": [dns.edns.GenericOption(10, b"c" * 8)]}),
        ("x" * 63 + ".example", "MX", {"use_edns": 0, "payload": 65535}),
    ]:
        out.append(dns.message.make_query(name, t, **kw).to_wire())
    r = dns.message.make_response(dns.message.make_query("www.example.com", "A"))
    r.answer.append(dns.rrset.from_text("www.example.com.", 60, "IN", "CNAME", "cdn.example.net."))
    r.answer.append(dns.rrset.from_text("cdn.example.net.", 60, "IN", "A", "192.0.2.1"))
    out.append(r.to_wire())
    return out


def mutate(rng: random.Random, data: bytes) -> bytes:
    b = bytearray(data)
    for _ in range(rng.randint(1, 6)):
        op = rng.randrange(7)
        if op == 0 and b:  # flip bits
            i = rng.randrange(len(b))
            b[i] ^= 1 << rng.randrange(8)
        elif op == 1 and b:  # random byte
            b[rng.randrange(len(b))] = rng.randrange(256)
        elif op == 2:  # truncate
            del b[rng.randrange(len(b) + 1) :]
        elif op == 3:  # insert junk
            i = rng.randrange(len(b) + 1)
            b[i:i] = rng.randbytes(rng.randint(1, 40))
        elif op == 4 and len(b) >= 12:  # random section counts
            struct.pack_into(">H", b, rng.choice((4, 6, 8, 10)), rng.choice((0, 1, 2, 255, 65535)))
        elif op == 5 and len(b) > 13:  # compression pointer somewhere
            i = rng.randrange(12, len(b) - 1)
            b[i], b[i + 1] = 0xC0 | rng.randrange(64), rng.randrange(256)
        elif op == 6 and len(b) >= 3:  # QR / opcode / flags
            b[2] = rng.randrange(256)
    return bytes(b)


def corpus(rng: random.Random, n: int) -> list[bytes]:
    base = seeds()
    out = []
    for i in range(n):
        if i % 5 == 0:
            out.append(rng.randbytes(rng.randint(0, 700)))
        else:
            out.append(mutate(rng, rng.choice(base)))
    return out


def test_parsers_only_raise_wire_errors():
    rng = random.Random(SEED)
    for data in corpus(rng, 20000):
        for fn in (wire.parse_query, wire.parse_message):
            try:
                fn(data)
            except wire.WireError:
                pass
        for qname in (b"\x03www\x07example\x03com\x00", data[12:40]):
            try:
                wire.scan_reply(data, qname, 1, 0, 86400, 300)
            except wire.WireError:
                pass
        wire.header_reply(data, wire.FORMERR)
        wire.strip_svcb(data[12:], ech=True, h3=True)
        try:
            name = wire.policy_name(wire.read_name(data, 12, allow_pointers=False)[0])
        except wire.WireError:
            continue
        if name:  # whatever we hand the engine, it accepts as canonical (no per-query exceptions)
            assert normalize_host(name) == name


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fuzz")
    up = FakeUpstream(zone={"svc.example": [("HTTPS", wire.pack_svcb(1, b"\x00", [(5, b"x")]))]}).start()
    (tmp / "adult.txt").write_text("adult.test\n")
    cfg = tmp / "filterproxy.yaml"
    cfg.write_text(f"""
server: {{state_dir: {tmp / "state"}}}
upstreams: {{servers: ["{up.address}"], timeout: 0.5}}
dns: {{rate_limit: 0}}
policies_dir: {os.path.join(os.path.dirname(__file__), "..", "policies")}
groups: [teen]
default_group: teen
lists:
  - {{id: adult, category: adult, format: domains, path: adult.txt}}
""")
    srv = ServerProcess(
        ["--config", str(cfg), "--dns-listen", "127.0.0.1:0", "--proxy-listen", "off", "--metrics-listen", "off"],
        log_path=str(tmp / "run.log"),
    ).start()
    yield srv
    srv.stop()
    up.stop()


def test_server_survives_fuzzing(server):
    rng = random.Random(SEED + 1)
    packets = corpus(rng, 60000)
    addr = ("127.0.0.1", server.port)
    deadline = time.monotonic() + 8
    sent = 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.setblocking(False)
        while time.monotonic() < deadline and sent < len(packets):
            try:
                s.sendto(packets[sent], addr)
            except (BlockingIOError, OSError):
                time.sleep(0.001)
            sent += 1
            if sent % 200 == 0:  # drain replies so our buffer does not fill
                try:
                    while True:
                        s.recv(65535)
                except (BlockingIOError, OSError):
                    pass
                time.sleep(0.002)
    # TCP: garbage lengths, partial frames, mutated messages, abrupt closes
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        with socket.create_connection(addr, timeout=2) as c:
            for _ in range(rng.randint(1, 8)):
                p = packets[rng.randrange(len(packets))]
                ln = len(p) if rng.random() < 0.8 else rng.randrange(65536)
                try:
                    c.sendall(struct.pack(">H", ln) + p)
                except OSError:
                    break
            if rng.random() < 0.5:
                try:
                    c.settimeout(0.2)
                    c.recv(65535)
                except OSError:
                    pass
    assert server.alive()
    for tcp in (False, True):
        q = dns.message.make_query("after-fuzz.example", "A")
        r = (dns.query.tcp if tcp else dns.query.udp)(q, "127.0.0.1", port=server.port, timeout=3)
        assert [x.to_text() for rrset in r.answer for x in rrset] == [synth_a("after-fuzz.example")]
    out = server.output()
    assert "Traceback" not in out, out[-4000:]
    assert sent > 1000
