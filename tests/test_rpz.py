"""RPZ export checked by a real Unbound: it must answer block/allow exactly as filterproxy decides."""

from __future__ import annotations

import gzip
import io
import random
import shutil
import socket
import subprocess
import time

import dns.message
import dns.query
import dns.rcode
import pytest
from conftest import DATA, LISTS, write_config
from dnslib import QTYPE, RR, A
from dnslib.server import BaseResolver, DNSServer

from filterproxy.config import load_config
from filterproxy.lists.rpz import export_rpz
from filterproxy.lists.store import build_snapshot
from filterproxy.policy.engine import Engine


class AnswerEverything(BaseResolver):
    """A stand-in for the Internet: every name exists and resolves to 192.0.2.1."""

    def resolve(self, request, handler):
        reply = request.reply()
        if request.q.qtype == QTYPE.A:
            reply.add_answer(RR(request.q.qname, QTYPE.A, rdata=A("192.0.2.1"), ttl=60))
        return reply


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def engine(tmp_path_factory, data_dir):
    tmp = tmp_path_factory.mktemp("rpz")
    (tmp / "national.txt").write_text("forbidden.example\nwikipedia-bad.wikipedia.org\n")
    cfg = write_config(
        tmp,
        f"""
        default_group: kid
        lists:
          - {{id: national, category: illegal, format: domains, match: subdomains, path: national.txt}}
          - {{id: social, category: social, format: wildcard, path: {LISTS / "hagezi/wildcard/social.txt"}}}
          - {{id: doh, category: bypass, format: rpz, path: {LISTS / "hagezi/rpz/doh.txt"}}}
          - {{id: gambling, category: gambling, format: hosts, path: {LISTS / "sinfonietta/gambling-hosts.txt"}}}
          - {{id: dating, category: dating, format: ut1, path: {LISTS / "ut1/dating"}}}
          - {{id: games, category: games, format: ut1, path: {LISTS / "ut1/games"}}}
    """,
        {
            "kid": """
        name: Kid
        block_categories: [social, bypass, gambling, dating]
        allow: [wikipedia.org, instagram.com]
        block: [custom-block.example]
    """
        },
    )
    config = load_config(str(cfg))
    return Engine(config, build_snapshot(config.lists))


def test_unbound_with_exported_rpz_agrees_with_filterproxy(engine, tmp_path):
    if not shutil.which("unbound"):
        pytest.fail("unbound is not installed (the test command installs Debian's unbound)")
    zone = tmp_path / "kid.rpz"
    buf = io.StringIO()
    counts = export_rpz(engine, "kid", buf)
    zone.write_text(buf.getvalue())
    assert counts["block"] > 10000

    up_port, ub_port = free_port(), free_port()
    from dnslib.server import DNSLogger

    upstream = DNSServer(
        AnswerEverything(), port=up_port, address="127.0.0.1", logger=DNSLogger("-request,-reply,-truncated")
    )
    upstream.start_thread()
    conf = tmp_path / "unbound.conf"
    conf.write_text(f"""
server:
    interface: 127.0.0.1@{ub_port}
    port: {ub_port}
    do-ip6: no
    do-not-query-localhost: no
    username: ""
    chroot: ""
    directory: "{tmp_path}"
    pidfile: "{tmp_path}/unbound.pid"
    use-syslog: no
    logfile: ""
    verbosity: 0
    module-config: "respip iterator"
    num-threads: 1
    cache-max-ttl: 0
    access-control: 127.0.0.0/8 allow
rpz:
    name: "rpz.filterproxy"
    zonefile: "{zone}"
    rpz-log: no
forward-zone:
    name: "."
    forward-addr: 127.0.0.1@{up_port}
""")
    check = subprocess.run(["unbound-checkconf", str(conf)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    proc = subprocess.Popen(["unbound", "-d", "-c", str(conf)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 60
        while True:
            try:
                dns.query.udp(dns.message.make_query("probe.example.", "A"), "127.0.0.1", port=ub_port, timeout=0.5)
                break
            except Exception:
                assert proc.poll() is None, proc.stdout.read().decode()
                assert time.time() < deadline, "unbound did not start"
                time.sleep(0.2)

        snap = engine.snapshot
        rnd = random.Random(3)
        active = {li.index for li in snap.lists if li.category in ("illegal", "social", "bypass", "gambling", "dating")}
        listed = sorted({name for name, li, *_ in snap.domains.records() if li in active})
        other = sorted({name for name, li, *_ in snap.domains.records() if li not in active})
        with gzip.open(DATA / "queries/cloudflare_radar_top100k_2024-01-22_2024-01-29.csv.gz", "rt") as f:
            next(f)
            popular = [line.strip() for line in f if line.strip()]
        names = (
            rnd.sample(listed, 1500)
            + [f"sub.{n}" for n in rnd.sample(listed, 500)]
            + rnd.sample(popular, 1000)
            + rnd.sample(other, 300)
        )
        names += [
            "forbidden.example",
            "x.forbidden.example",
            "wikipedia.org",
            "en.wikipedia.org",
            "wikipedia-bad.wikipedia.org",
            "instagram.com",
            "www.instagram.com",
            "custom-block.example",
            "use-application-dns.net",
            "facebook.com",
            "m.facebook.com",
        ]
        disagreements = []
        blocked = 0
        for name in names:
            v = engine.decide(None, name, group="kid")
            r = dns.query.udp(dns.message.make_query(name + ".", "A"), "127.0.0.1", port=ub_port, timeout=2)
            unbound_blocks = r.rcode() == dns.rcode.NXDOMAIN
            blocked += v.blocked
            if unbound_blocks != v.blocked:
                disagreements.append((name, v.reason.value, dns.rcode.to_text(r.rcode())))
        assert not disagreements, disagreements[:20]
        assert blocked > 1500  # the sample really exercised blocking
    finally:
        proc.terminate()
        proc.wait(10)
        upstream.stop()
