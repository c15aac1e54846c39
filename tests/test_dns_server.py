"""End to end: ``filterproxy run`` as a real subprocess, queried with dnspython (and dig), with fake
upstreams on loopback (filterproxy.dns.testing.FakeUpstream, built on dnslib)."""

from __future__ import annotations

import re
import shutil
import signal
import socket
import subprocess
import textwrap
import time
import urllib.request
from pathlib import Path

import dns.edns
import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import pytest
import yaml
from shared_data import DATA  # noqa: E402

from filterproxy.dns import wire
from filterproxy.dns.testing import FakeUpstream, ServerProcess, synth_a

DOH_HOSTS = DATA / "blocklists" / "hagezi" / "hosts" / "doh.txt"

HTTPS_RDATA = wire.pack_svcb(1, b"\x00", [(1, b"\x02h3\x02h2"), (4, bytes([192, 0, 2, 80])), (5, b"\x00\x04ECH!")])
ZONE = {
    "cloak.example": [("CNAME", "cdn.adult-tracker.test")],
    "cdn.adult-tracker.test": [("A", "192.0.2.66")],
    "clean-cname.example": [("CNAME", "cdn.clean.example")],
    "badip.example": [("A", "198.51.100.7")],
    "forcesafesearch.google.com": [("A", "216.239.38.120")],
    "svc.example": [("HTTPS", HTTPS_RDATA)],
    "many.example": [("A", f"10.0.0.{i}") for i in range(1, 41)],
    "ttl.example": [("A", "192.0.2.9", 100)],
}

POLICIES = {
    "home": """
        name: Home
        block_categories: [adult, bypass]
        block: [custom-block.test]
        block_mode: blockpage
        safesearch: strict
        schedules:
          - {name: always, days: all, from: "00:00", to: "24:00", block_categories: [games]}
    """,
    "kids": """
        name: Kids
        block_categories: [adult, bypass, games]
        block_mode: nxdomain
    """,
    "teens": """
        name: Teens
        block_categories: [adult]
        block_mode: "null"
        safesearch: "off"
    """,
}

LISTS = {
    "adult.txt": "adult.test\nadult-tracker.test\n198.51.100.7\n",
    "illegal.txt": "csam.test\n",
    "games.txt": "game.test\n",
}


def ask(
    port: int,
    name: str,
    rdtype: str = "A",
    *,
    src: str = "127.0.0.1",
    edns: bool = True,
    tcp: bool = False,
    timeout: float = 3.0,
    want_dnssec: bool = False,
) -> dns.message.Message:
    q = dns.message.make_query(name, rdtype, use_edns=0 if edns else False, want_dnssec=want_dnssec)
    if tcp:
        return dns.query.tcp(q, "127.0.0.1", port=port, timeout=timeout, source=src)
    return dns.query.udp(q, "127.0.0.1", port=port, timeout=timeout, source=src)


def ede(m: dns.message.Message) -> tuple[int, str] | None:
    for o in m.options:
        if o.otype == dns.edns.EDE:
            return o.code, o.text
    return None


def addrs(m: dns.message.Message, rdtype: str = "A") -> list[str]:
    t = dns.rdatatype.from_text(rdtype)
    return [r.to_text() for rrset in m.answer if rrset.rdtype == t for r in rrset]


def write_setup(
    tmp: Path,
    *,
    upstreams: list[str],
    upstream_opts: dict | None = None,
    cache: dict | None = None,
    dns_opts: dict | None = None,
) -> Path:
    (tmp / "policies").mkdir(exist_ok=True)
    for name, text in POLICIES.items():
        (tmp / "policies" / f"{name}.yaml").write_text(textwrap.dedent(text))
    for name, text in LISTS.items():
        (tmp / name).write_text(text)
    doc = {
        "server": {"state_dir": str(tmp / "state")},
        "upstreams": {"servers": upstreams, "timeout": 0.5, **(upstream_opts or {})},
        "cache": cache or {},
        "dns": {
            "allowed_networks": ["127.0.0.1/32", "127.0.0.2/32", "127.0.0.3/32", "127.0.0.4/32"],
            "strip_h3": True,
            **(dns_opts or {}),
        },
        "policies_dir": "policies",
        "groups": ["home", "kids", "teens"],
        "default_group": "home",
        "clients": [{"ip": "127.0.0.2", "group": "kids"}, {"ip": "127.0.0.3", "group": "teens"}],
        "lists": [
            {"id": "test-adult", "category": "adult", "format": "domains", "match": "subdomains", "path": "adult.txt"},
            {"id": "test-illegal", "category": "illegal", "format": "domains", "path": "illegal.txt", "legal": True},
            {"id": "test-games", "category": "games", "format": "domains", "path": "games.txt"},
        ],
    }
    cfg = tmp / "filterproxy.yaml"
    cfg.write_text(yaml.safe_dump(doc, sort_keys=False))
    return cfg


def start(tmp: Path, cfg: Path, *extra_args: str, env: dict | None = None) -> ServerProcess:
    args = [
        "--config",
        str(cfg),
        "--dns-listen",
        "127.0.0.1:0",
        "--proxy-listen",
        "off",
        "--metrics-listen",
        "127.0.0.1:0",
        *extra_args,
    ]
    return ServerProcess(args, log_path=str(tmp / "run.log"), env=env).start()


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


# ---------------------------------------------------------------- the main server


@pytest.fixture(scope="module", params=["batched", "plain"])
def env(request, tmp_path_factory):
    """The main server, once with the batched UDP loop (recvmmsg/sendmmsg) and once with the plain one."""
    tmp = tmp_path_factory.mktemp(f"dns-{request.param}")
    up = FakeUpstream(zone=ZONE, truncate={"big.example"}, negative_ttl=120).start()
    school = FakeUpstream(zone={"printer.school.lan": [("A", "10.9.9.9")]}).start()
    cfg = write_setup(
        tmp,
        upstreams=[up.address],
        upstream_opts={"conditional": {"school.lan": [school.address]}},
        cache={"blocked_ttl": 20},
    )
    srv = start(
        tmp,
        cfg,
        "--extra-list",
        f"hosts:bypass:{DOH_HOSTS}",
        "--dns-workers",
        "1",
        env={"FILTERPROXY_DNS_MMSG": "1" if request.param == "batched" else "0"},
    )
    assert f"UDP loop: {request.param}" in srv.output(), srv.output()[-2000:]
    yield {"port": srv.port, "up": up, "school": school, "srv": srv, "tmp": tmp, "cfg": cfg}
    srv.stop()
    up.stop()
    school.stop()
    assert "Traceback" not in srv.output(), srv.output()[-4000:]


@pytest.mark.parametrize(
    "src, rdtype, rcode, answer",
    [
        ("127.0.0.1", "A", "NOERROR", ["127.0.0.1"]),  # home: blockpage
        ("127.0.0.1", "AAAA", "NOERROR", ["::1"]),
        ("127.0.0.1", "TXT", "NOERROR", []),  # other types: NODATA
        ("127.0.0.2", "A", "NXDOMAIN", []),  # kids: nxdomain
        ("127.0.0.2", "AAAA", "NXDOMAIN", []),
        ("127.0.0.3", "A", "NOERROR", ["0.0.0.0"]),  # teens: null
        ("127.0.0.3", "AAAA", "NOERROR", ["::"]),
    ],
)
def test_block_modes_per_group(env, src, rdtype, rcode, answer):
    m = ask(env["port"], "www.adult.test", rdtype, src=src)
    assert dns.rcode.to_text(m.rcode()) == rcode
    assert addrs(m, rdtype) == answer
    assert ede(m) == (17, "category/adult/test-adult")
    assert all(rrset.ttl <= 20 for rrset in m.answer + m.authority)  # cache.blocked_ttl


@pytest.mark.parametrize(
    "name, src, code, text",
    [
        ("csam.test", "127.0.0.3", 16, "legal/illegal/test-illegal"),  # legal: every group, Censored
        ("custom-block.test", "127.0.0.1", 15, "blocklist/custom/policy:home"),  # the group's own block list
        ("game.test", "127.0.0.1", 17, "schedule/games/test-games"),  # schedule window
        ("game.test", "127.0.0.2", 17, "category/games/test-games"),
        ("use-application-dns.net", "127.0.0.1", 15, "bypass/bypass/builtin:bypass"),
    ],
)
def test_ede_codes(env, name, src, code, text):
    m = ask(env["port"], name, src=src)
    assert ede(m) == (code, text)


def test_blocked_without_edns_has_no_opt(env):
    m = ask(env["port"], "adult.test", edns=False)
    assert m.edns == -1 and addrs(m) == ["127.0.0.1"]


@pytest.mark.parametrize(
    "name, rdtype, rcode, n_answers",
    [
        ("use-application-dns.net", "A", "NXDOMAIN", 0),
        ("mask.icloud.com", "A", "NXDOMAIN", 0),
        ("mask-h2.icloud.com", "AAAA", "NXDOMAIN", 0),
        ("_dns.resolver.arpa", "SVCB", "NOERROR", 0),  # RFC 9462 DDR: NODATA
    ],
)
def test_bypass_canaries(env, name, rdtype, rcode, n_answers):
    m = ask(env["port"], name, rdtype)
    assert dns.rcode.to_text(m.rcode()) == rcode and len(m.answer) == n_answers
    assert ede(m)[0] in (15, 17)  # 15: the built-in canary rule; 17: a bypass list names it too


def test_real_list_extra(env):
    m = ask(env["port"], "dns.google", src="127.0.0.1")
    assert addrs(m) == ["127.0.0.1"]
    code, text = ede(m)
    assert code == 17 and text.startswith("category/bypass/extra-bypass-doh.txt")
    assert addrs(ask(env["port"], "dns.google", src="127.0.0.3")) != ["0.0.0.0"]  # teens do not block bypass


def test_cname_cloaking(env):
    m = ask(env["port"], "cloak.example", src="127.0.0.2")
    assert m.rcode() == dns.rcode.NXDOMAIN
    assert ede(m) == (17, "category/adult/test-adult")
    m = ask(env["port"], "cloak.example", src="127.0.0.1")
    assert addrs(m) == ["127.0.0.1"] and not [r for r in m.answer if r.rdtype == dns.rdatatype.CNAME]
    ok = ask(env["port"], "clean-cname.example")
    assert addrs(ok) == [synth_a("cdn.clean.example")]


def test_answer_ip_blocked(env):
    m = ask(env["port"], "badip.example", src="127.0.0.3")
    assert addrs(m) == ["0.0.0.0"] and ede(m) == (17, "category/adult/test-adult")


def test_safesearch_cname_and_address(env):
    m = ask(env["port"], "www.google.com")
    assert [str(r) for r in m.answer if r.rdtype == dns.rdatatype.CNAME][0].endswith(
        "IN CNAME forcesafesearch.google.com."
    )
    assert addrs(m) == ["216.239.38.120"]
    assert str(m.answer[0].name) == "www.google.com."
    m2 = ask(env["port"], "www.google.com", src="127.0.0.3")  # teens: SafeSearch off
    assert not [r for r in m2.answer if r.rdtype == dns.rdatatype.CNAME]
    assert env["up"].count("forcesafesearch.google.com") == 1  # the target is cached


def test_https_record_ech_and_h3_stripped(env):
    m = ask(env["port"], "svc.example", "HTTPS")
    (rd,) = [r for rrset in m.answer for r in rrset]
    text = rd.to_text()
    assert "ech" not in text and 'alpn="h2"' in text and "192.0.2.80" in text


def test_dig_https(env):
    assert shutil.which("dig"), "dig not installed (test.sh installs dnsutils)"
    out = subprocess.run(
        ["dig", "+tries=1", "+time=2", "-p", str(env["port"]), "@127.0.0.1", "svc.example", "HTTPS", "+short"],
        capture_output=True,
        text=True,
        timeout=10,
    ).stdout
    assert "ech" not in out and "h2" in out


def test_refused_outside_allowed_networks(env):
    m = ask(env["port"], "example.com", src="127.0.0.9")
    assert m.rcode() == dns.rcode.REFUSED and not m.answer


def test_tcp(env):
    m = ask(env["port"], "tcp-name.example", tcp=True)
    assert addrs(m) == [synth_a("tcp-name.example")]
    m = ask(env["port"], "adult.test", tcp=True, src="127.0.0.2")
    assert m.rcode() == dns.rcode.NXDOMAIN and ede(m)[0] == 17


def test_tcp_pipelined(env):
    names = [f"pipe{i}.example" for i in range(20)]
    with socket.create_connection(("127.0.0.1", env["port"]), timeout=5) as s:
        ids = {}
        for i, n in enumerate(names):
            q = dns.message.make_query(n, "A")
            q.id = 1000 + i
            ids[q.id] = n
            w = q.to_wire()
            s.sendall(len(w).to_bytes(2, "big") + w)
        got = {}
        for _ in names:
            ln = int.from_bytes(_recv(s, 2), "big")
            r = dns.message.from_wire(_recv(s, ln))
            got[r.id] = addrs(r)
    assert got == {i: [synth_a(n)] for i, n in ids.items()}


def _recv(s: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        c = s.recv(n - len(buf))
        assert c, "connection closed"
        buf += c
    return buf


def test_upstream_truncation_retried_over_tcp(env):
    m = ask(env["port"], "big.example")
    assert addrs(m) == [synth_a("big.example")]
    assert env["up"].count("big.example", "A", "udp") == 1 and env["up"].count("big.example", "A", "tcp") == 1


def test_client_truncation_then_tcp(env):
    m = ask(env["port"], "many.example", edns=False)
    assert m.flags & dns.flags.TC and not m.answer
    m = ask(env["port"], "many.example", edns=False, tcp=True)
    assert len(addrs(m)) == 40


def test_conditional_forwarding(env):
    m = ask(env["port"], "printer.school.lan")
    assert addrs(m) == ["10.9.9.9"]
    assert env["school"].count("printer.school.lan") == 1 and env["up"].count("printer.school.lan") == 0


def test_cache_ttl_decrements(env):
    m1 = ask(env["port"], "ttl.example")
    assert m1.answer[0].ttl == 100
    time.sleep(2.2)
    m2 = ask(env["port"], "ttl.example")
    assert 96 <= m2.answer[0].ttl <= 98
    assert env["up"].count("ttl.example") == 1


def test_negative_caching(env):
    for _ in range(3):
        m = ask(env["port"], "missing.nx.test")
        assert m.rcode() == dns.rcode.NXDOMAIN
        assert m.authority and m.authority[0].rdtype == dns.rdatatype.SOA and m.authority[0].ttl <= 120
    assert env["up"].count("missing.nx.test") == 1


def test_case_of_question_is_echoed(env):
    m = ask(env["port"], "MiXeD.ExAmPlE")
    assert str(m.question[0].name) == "MiXeD.ExAmPlE." and addrs(m) == [synth_a("mixed.example")]


def test_formerr_and_garbage(env):
    port = env["port"]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(2)
        # readable header, two questions → FORMERR
        s.sendto(b"\x12\x34\x01\x00\x00\x02\x00\x00\x00\x00\x00\x00" + b"\x00\x00\x01\x00\x01" * 2, ("127.0.0.1", port))
        r = s.recv(512)
        assert r[:2] == b"\x12\x34" and r[3] & 0xF == 1
        s.sendto(b"\x01\x02\x03", ("127.0.0.1", port))  # not even a header: dropped
        with pytest.raises(socket.timeout):
            s.settimeout(0.3)
            s.recv(512)
    assert addrs(ask(port, "still-alive.example")) == [synth_a("still-alive.example")]


@pytest.mark.parametrize("rdtype", ["ANY", "AXFR"])
def test_refused_types(env, rdtype):
    if rdtype == "AXFR":
        m = ask(env["port"], "example.com", rdtype, tcp=True)
    else:
        m = ask(env["port"], "example.com", rdtype)
    assert m.rcode() == dns.rcode.REFUSED


def test_metrics(env):
    srv = env["srv"]
    ask(env["port"], "adult.test")
    time.sleep(1.3)  # the UDP thread's counts are published once a second
    text = urllib.request.urlopen(srv.metrics_url + "/metrics", timeout=5).read().decode()
    lines = [ln for ln in text.splitlines() if ln.startswith("filterproxy_dns_")]
    assert any(
        ln.startswith('filterproxy_dns_blocked_total{category="adult",group="home",reason="category"}') for ln in lines
    )
    assert any('protocol="tcp"' in ln for ln in lines if ln.startswith("filterproxy_dns_queries_total"))
    assert any(ln.startswith("filterproxy_dns_refused_total") for ln in lines)
    for ln in lines:  # never a client address or a domain as a label (upstreams are configured names)
        ln = re.sub(r'upstream="[^"]*"', "", ln)
        assert "127.0.0." not in ln and ".example" not in ln and ".test" not in ln


def test_pid_file(env):
    pid = (env["tmp"] / "state" / "filterproxy.pid").read_text().strip()
    assert int(pid) == env["srv"].proc.pid


def test_reload_on_sighup(env):
    port, tmp, srv = env["port"], env["tmp"], env["srv"]
    assert addrs(ask(port, "later.test", src="127.0.0.1")) == [synth_a("later.test")]
    (tmp / "adult.txt").write_text(LISTS["adult.txt"] + "later.test\n")
    done = srv.output().count("reload: config generation")
    srv.signal(signal.SIGHUP)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and srv.output().count("reload: config generation") == done:
        time.sleep(0.1)
    assert addrs(ask(port, "later.test")) == ["127.0.0.1"]  # packed replies were dropped
    # a broken list keeps the last good snapshot
    (tmp / "adult.txt").write_text("")
    before = srv.output().count("reload failed")
    srv.signal(signal.SIGHUP)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and srv.output().count("reload failed") == before:
        time.sleep(0.1)
    assert srv.output().count("reload failed") == before + 1
    assert addrs(ask(port, "later.test")) == ["127.0.0.1"]
    (tmp / "adult.txt").write_text(LISTS["adult.txt"])


# ---------------------------------------------------------------- upstream failures


def _cache_entries(srv) -> dict[str, float]:
    text = urllib.request.urlopen(srv.metrics_url + "/metrics", timeout=5).read().decode()
    return {
        m.group(1): float(m.group(2))
        for m in re.finditer(r'^filterproxy_dns_cache_entries\{cache="(\w+)"\} (\S+)$', text, re.M)
    }


@pytest.mark.parametrize("loop", ["batched", "plain"])
def test_expired_cache_entries_are_swept(tmp_path, loop):
    """Short-TTL answers leave both caches within seconds of cache.sweep_interval, even when no query comes;
    live ones stay."""
    up = FakeUpstream(ttl=4).start()  # short.test: 4 s
    long_up = FakeUpstream(ttl=3600).start()  # long.test, by conditional forwarding
    cfg = write_setup(
        tmp_path,
        upstreams=[up.address],
        upstream_opts={"conditional": {"long.test": [long_up.address]}},
        cache={"sweep_interval": 2},
    )
    srv = start(tmp_path, cfg, env={"FILTERPROXY_DNS_MMSG": "1" if loop == "batched" else "0"})
    try:
        for i in range(300):
            assert addrs(ask(srv.port, f"n{i}.short.test")) == [synth_a(f"n{i}.short.test")]
        for i in range(20):
            assert addrs(ask(srv.port, f"n{i}.long.test")) == [synth_a(f"n{i}.long.test")]
        deadline = time.monotonic() + 3
        while (n := _cache_entries(srv)).get("answers", 0) < 320 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert n["answers"] >= 320 and n["packed"] >= 320, n  # all there, once published (every second)
        deadline = time.monotonic() + 12  # TTL 4 s, then up to two 2-s passes (the idle thread wakes every second)
        while ((n := _cache_entries(srv))["answers"] > 20 or n["packed"] > 20) and time.monotonic() < deadline:
            time.sleep(0.3)
        assert n == {"answers": 20, "packed": 20}, n
        asked = sum(long_up.queries.values())
        assert asked == 20
        for i in range(20):  # the live answers were kept: no new upstream query
            assert addrs(ask(srv.port, f"n{i}.long.test")) == [synth_a(f"n{i}.long.test")]
        assert sum(long_up.queries.values()) == asked
    finally:
        srv.stop()
        up.stop()
        long_up.stop()
    assert "Traceback" not in srv.output(), srv.output()[-3000:]


def test_failover_and_all_down_recovery(tmp_path):
    dead = free_port()  # nothing listens: ICMP port unreachable
    good = FakeUpstream().start()
    cfg = write_setup(tmp_path, upstreams=[f"127.0.0.1:{dead}", good.address])
    srv = start(tmp_path, cfg)
    try:
        t0 = time.monotonic()
        for i in range(5):
            assert addrs(ask(srv.port, f"fo{i}.example")) == [synth_a(f"fo{i}.example")]
        assert time.monotonic() - t0 < 3
        port = good.port
        good.stop()
        # every upstream down: SERVFAIL, and quickly once they are known to be down
        m = ask(srv.port, "down1.example", timeout=5)
        assert m.rcode() == dns.rcode.SERVFAIL
        t0 = time.monotonic()
        m = ask(srv.port, "down2.example", timeout=5)
        assert m.rcode() == dns.rcode.SERVFAIL and time.monotonic() - t0 < 0.5
        assert ede(m)[0] in (22, 23)
        # the upstream comes back on the same port: answers resume within the back-off
        good2 = FakeUpstream(port=port).start()
        try:
            deadline = time.monotonic() + 12
            while time.monotonic() < deadline:
                m = ask(srv.port, "back.example", timeout=3)
                if m.rcode() == dns.rcode.NOERROR:
                    break
                time.sleep(0.3)
            assert addrs(m) == [synth_a("back.example")]
        finally:
            good2.stop()
    finally:
        srv.stop()
    assert "Traceback" not in srv.output(), srv.output()[-3000:]


@pytest.mark.parametrize("loop", ["batched", "plain"])
def test_concurrent_misses_share_one_upstream_query_each_group_its_own_answer(tmp_path, loop):
    """Identical questions asked while the first is out wait for the same upstream reply, and each
    client's group still judges it: the CNAME target is a game, blocked for kids, allowed for teens."""
    up = FakeUpstream(
        zone={"share.example": [("CNAME", "game.test")], "game.test": [("A", "192.0.2.77")]}, delay=0.4
    ).start()
    cfg = write_setup(tmp_path, upstreams=[up.address], upstream_opts={"timeout": 2.0})
    srv = start(tmp_path, cfg, env={"FILTERPROXY_DNS_MMSG": "1" if loop == "batched" else "0"})
    socks = []
    try:
        for src in ("127.0.0.3", "127.0.0.2", "127.0.0.3"):  # teens, kids, teens again
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind((src, 0))
            s.settimeout(3)
            s.sendto(dns.message.make_query("share.example", "A", use_edns=0).to_wire(), ("127.0.0.1", srv.port))
            socks.append(s)
        teen, kid, teen2 = (dns.message.from_wire(s.recv(4096)) for s in socks)
        assert up.queries[("share.example", "A", "udp")] == 1  # one upstream query for all three
        assert addrs(teen) == addrs(teen2) == ["192.0.2.77"]
        assert [r for r in teen.answer if r.rdtype == dns.rdatatype.CNAME]
        assert kid.rcode() == dns.rcode.NXDOMAIN and ede(kid) == (17, "category/games/test-games")
        # from the cache now, still judged per group
        assert ask(srv.port, "share.example", src="127.0.0.2").rcode() == dns.rcode.NXDOMAIN
        assert addrs(ask(srv.port, "share.example", src="127.0.0.3")) == ["192.0.2.77"]
        assert up.queries[("share.example", "A", "udp")] == 1
    finally:
        for s in socks:
            s.close()
        srv.stop()
        up.stop()
    assert "Traceback" not in srv.output(), srv.output()[-3000:]


def test_parallel_strategy_with_a_silent_upstream(tmp_path):
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # bound, never answers: timeouts
    silent.bind(("127.0.0.1", 0))
    good = FakeUpstream().start()
    cfg = write_setup(
        tmp_path,
        upstreams=[f"127.0.0.1:{silent.getsockname()[1]}", good.address],
        upstream_opts={"strategy": "parallel"},
    )
    srv = start(tmp_path, cfg)
    try:
        for i in range(5):
            t0 = time.monotonic()
            assert addrs(ask(srv.port, f"par{i}.example")) == [synth_a(f"par{i}.example")]
            assert time.monotonic() - t0 < 0.4  # the fastest wins, no waiting for the silent one
    finally:
        srv.stop()
        good.stop()
        silent.close()


def test_rate_limit_and_tcp_limits(tmp_path):
    up = FakeUpstream().start()
    cfg = write_setup(
        tmp_path, upstreams=[up.address], dns_opts={"rate_limit": 20, "tcp_max_connections": 2, "tcp_idle_timeout": 0.5}
    )
    srv = start(tmp_path, cfg)
    try:
        q = dns.message.make_query("rl.example", "A").to_wire()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(0.5)
            for _ in range(60):
                s.sendto(q, ("127.0.0.1", srv.port))
            rcodes = []
            try:
                while True:
                    rcodes.append(s.recv(512)[3] & 0xF)
            except TimeoutError:
                pass
        assert 15 <= rcodes.count(0) <= 25  # ~20 answered (the window may straddle a second)
        assert rcodes.count(5) >= 15  # then REFUSED, then dropped
        assert len(rcodes) < 60
        time.sleep(1.1)
        assert addrs(ask(srv.port, "rl.example")) == [synth_a("rl.example")]
        # TCP: at most 2 connections; a third is closed at once
        c1 = socket.create_connection(("127.0.0.1", srv.port), timeout=3)
        c2 = socket.create_connection(("127.0.0.1", srv.port), timeout=3)
        time.sleep(0.1)
        c3 = socket.create_connection(("127.0.0.1", srv.port), timeout=3)
        assert c3.recv(10) == b""
        c3.close()
        # an idle connection is closed after tcp_idle_timeout
        t0 = time.monotonic()
        assert c1.recv(10) == b"" and 0.3 < time.monotonic() - t0 < 3
        c1.close()
        c2.close()
        time.sleep(0.1)
        assert addrs(ask(srv.port, "after-tcp.example", tcp=True)) == [synth_a("after-tcp.example")]
    finally:
        srv.stop()
        up.stop()


def test_tcp_upstream_for_udp_clients(tmp_path):
    """A stream upstream: the UDP thread hands the exchange to the loop and gets the answer back."""
    up = FakeUpstream(zone={"cname.example": [("CNAME", "www.adult.test")]}).start()
    cfg = write_setup(tmp_path, upstreams=["tcp://" + up.address])
    srv = start(tmp_path, cfg)
    try:
        for i in range(20):
            assert addrs(ask(srv.port, f"t{i}.example")) == [synth_a(f"t{i}.example")]
        assert up.count("t3.example", "A", "tcp") == 1 and up.count("t3.example", "A", "udp") == 0
        m = ask(srv.port, "cname.example", src="127.0.0.2")
        assert m.rcode() == dns.rcode.NXDOMAIN and ede(m)[0] == 17
        assert addrs(ask(srv.port, "t3.example", tcp=True)) == [synth_a("t3.example")]
    finally:
        srv.stop()
        up.stop()
    assert "Traceback" not in srv.output(), srv.output()[-3000:]
