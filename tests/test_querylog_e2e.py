"""The query log through a real ``filterproxy run``: DNS over UDP (answered, then from the packed cache) and
TCP, HTTP through the proxy, then ``filterproxy querylog`` reads back anonymised records with group, action,
reason and list. With the log off (the default), no file is written and the reader says so.
"""

from __future__ import annotations

import http.server
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import dns.message
import dns.query
import dns.rcode
import pytest
import requests
import yaml

from filterproxy.dns.testing import FakeUpstream, ServerProcess
from filterproxy.querylog import parse

sys.path.insert(0, str(Path(__file__).parent))
from test_http_e2e import free_port  # noqa: E402


def _config(tmp_path: Path, upstream: FakeUpstream, querylog: dict | None) -> Path:
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "kids.yaml").write_text("name: Kids\nblock_categories: [adult]\nblock_mode: nxdomain\n")
    (tmp_path / "adult.txt").write_text("".join(f"blocked{i}.example\n" for i in range(10)))
    doc = {
        "server": {"state_dir": str(tmp_path / "state")},
        "upstreams": {"servers": [upstream.address], "timeout": 1.0},
        "dns": {"allowed_networks": ["127.0.0.0/8"], "rate_limit": 0},
        "policies_dir": "policies",
        "groups": ["kids"],
        "default_group": "kids",
        "lists": [
            {"id": "adult", "category": "adult", "format": "domains", "match": "subdomains", "path": "adult.txt"}
        ],
    }
    if querylog is not None:
        doc["querylog"] = querylog
    cfg = tmp_path / "filterproxy.yaml"
    cfg.write_text(yaml.safe_dump(doc))
    return cfg


class _Backend(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        body = b"hello"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def _start(tmp_path: Path, querylog: dict | None):
    up = FakeUpstream().start()
    cfg = _config(tmp_path, up, querylog)
    proxy_port = free_port()
    proc = ServerProcess(
        [
            "--config",
            str(cfg),
            "--dns-listen",
            "127.0.0.1:0",
            "--proxy-listen",
            f"127.0.0.1:{proxy_port}",
            "--proxy-workers",
            "1",
            "--metrics-listen",
            "off",
        ],
        log_path=str(tmp_path / "run.log"),
    ).start()
    deadline = time.monotonic() + 120
    while "proxy listening on" not in proc.output():
        assert proc.alive() and time.monotonic() < deadline, proc.output()[-3000:]
        time.sleep(0.1)
    return up, cfg, proc, proxy_port


def _traffic(proc: ServerProcess, proxy_port: int, backend_port: int) -> None:
    def udp(name: str) -> dns.message.Message:
        return dns.query.udp(dns.message.make_query(name, "A"), "127.0.0.1", port=proc.port, timeout=3)

    for _ in range(2):  # the second answer of each comes from the packed-reply cache (the UDP hot path)
        assert udp("blocked5.example").rcode() == dns.rcode.NXDOMAIN
        assert udp("fine.example").rcode() == dns.rcode.NOERROR
    tcp = dns.query.tcp(dns.message.make_query("blocked7.example", "AAAA"), "127.0.0.1", port=proc.port, timeout=3)
    assert tcp.rcode() == dns.rcode.NXDOMAIN
    s = requests.Session()
    s.trust_env = False
    s.proxies = {"http": f"http://127.0.0.1:{proxy_port}"}
    assert s.get("http://blocked9.example/page", timeout=10).status_code == 403
    assert s.get(f"http://localhost:{backend_port}/", timeout=10).text == "hello"


def _querylog(cfg: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "filterproxy", "querylog", "--config", str(cfg), *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def _records(cfg: Path, want: int, *args: str) -> list[dict]:
    """The reader's JSON records, once ``want`` are there (the writers flush every 0.2 s)."""
    deadline = time.monotonic() + 30
    while True:
        r = _querylog(cfg, "--json", *args)
        assert r.returncode == 0, r.stderr
        rows = [json.loads(line) for line in r.stdout.splitlines()]
        if len(rows) >= want or time.monotonic() > deadline:
            return rows
        time.sleep(0.2)


@pytest.fixture()
def backend():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Backend)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield srv.server_address[1]
    srv.shutdown()


def test_dns_and_http_decisions_are_logged_anonymised(tmp_path, backend):
    stale = tmp_path / "state" / "querylog" / "querylog-2020-01-01.dns-1.qlog"  # past the retention
    stale.parent.mkdir(parents=True)
    stale.write_text("#filterproxy-querylog 1\n")
    up, cfg, proc, proxy_port = _start(tmp_path, {"enabled": True, "retention_days": 2})
    try:
        _traffic(proc, proxy_port, backend)
        rows = _records(cfg, 7)
    finally:
        proc.stop()
        up.stop()
    dns_rows = [r for r in rows if r["proto"] == "dns"]
    http_rows = [r for r in rows if r["proto"] == "http"]
    seen = [(r["name"], r["qtype"], r["action"]) for r in dns_rows]
    assert sorted(seen) == sorted(
        [("blocked5.example", "A", "block")] * 2
        + [("fine.example", "A", "allow")] * 2
        + [("blocked7.example", "AAAA", "block")]
    ), rows
    assert [(r["name"], r["method"], r["action"]) for r in http_rows] == [
        ("blocked9.example", "GET", "block"),
        ("localhost", "GET", "allow"),
    ], rows
    for r in rows:
        assert r["client"] == "127.0.0.0/24" and r["group"] == "kids", r
        assert set(r) >= {"time", "client", "group", "name", "action", "reason", "list"}
    blocked = [r for r in rows if r["action"] == "block"]
    assert {(r["reason"], r["list"], r["category"]) for r in blocked} == {("category", "adult", "adult")}
    allowed = [r for r in rows if r["action"] == "allow"]  # an upstream answer: the question's verdict
    assert {(r["reason"], r["list"]) for r in allowed} == {("default", None)}
    # nothing on disk holds the full client address; the files are private
    folder = tmp_path / "state" / "querylog"
    assert not stale.exists()  # the running process enforces the retention
    files = sorted(folder.iterdir())
    assert {f.name.split(".")[1].split("-")[0] for f in files} == {"dns", "http"}  # one writer per process
    for f in files:
        assert "127.0.0.1" not in f.read_text()
        assert f.stat().st_mode & 0o007 == 0
    # the reader's filters and its table
    only = _records(cfg, 4, "--group", "kids", "--action", "block")
    assert len(only) == 4 and {r["action"] for r in only} == {"block"}
    assert _records(cfg, 0, "--since", "2999-01-01") == []
    table = _querylog(cfg, "--since", "2000-01-01")
    assert table.returncode == 0 and table.stdout.splitlines()[0].split()[:3] == ["TIME", "CLIENT", "PROTO"]
    assert "blocked9.example" in table.stdout
    bad = _querylog(cfg, "--since", "yesterday")
    assert bad.returncode != 0 and "--since 'yesterday'" in bad.stderr and "ISO" in bad.stderr


def test_off_by_default_writes_nothing(tmp_path, backend):
    up, cfg, proc, proxy_port = _start(tmp_path, None)
    try:
        _traffic(proc, proxy_port, backend)
    finally:
        proc.stop()
        up.stop()
    assert not (tmp_path / "state" / "querylog").exists()
    assert not list(tmp_path.rglob("querylog-*"))
    r = _querylog(cfg)
    assert r.returncode != 0 and "query log is off" in r.stderr and "querylog.enabled" in r.stderr


def test_each_dns_worker_writes_its_own_file(tmp_path):
    up = FakeUpstream().start()
    cfg = _config(tmp_path, up, {"enabled": True})
    args = ["--config", str(cfg), "--dns-listen", "127.0.0.1:0", "--dns-workers", "2"]
    proc = ServerProcess(
        [*args, "--proxy-listen", "off", "--metrics-listen", "off"], log_path=str(tmp_path / "run.log")
    )
    proc.start()
    try:
        for i in range(200):  # each query from a new source port: the kernel spreads them over both processes
            dns.query.udp(dns.message.make_query(f"n{i % 7}.example", "A"), "127.0.0.1", port=proc.port, timeout=3)
        rows = _records(cfg, 200)
    finally:
        proc.stop()
        up.stop()
    assert len(rows) == 200 and {r["name"] for r in rows} == {f"n{i}.example" for i in range(7)}
    files = sorted((tmp_path / "state" / "querylog").iterdir())
    assert len(files) == 2 and all(f.name.split(".")[1].startswith("dns-") for f in files)
    for f in files:  # whole records only: one writer per file
        text = f.read_text()
        assert text.endswith("\n") and all(rec["proto"] == "dns" for _when, rec in parse(text))
    assert sum(len(list(parse(f.read_text()))) for f in files) == 200
