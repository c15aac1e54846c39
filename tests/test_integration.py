"""Whole-product checks against a running `filterproxy run`:

* a list reload (SIGHUP, as `filterproxy lists reload` sends) under continuous query load loses no query;
* a real Prometheus scrapes the running filterproxy and reads the blocked-query counter back.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request

import dns.message
import dns.query
import dns.rcode
import pytest
import yaml

from filterproxy.dns.testing import FakeUpstream, ServerProcess


def _setup(tmp_path, upstream: FakeUpstream):
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "kids.yaml").write_text("name: Kids\nblock_categories: [adult]\nblock_mode: nxdomain\n")
    (tmp_path / "adult.txt").write_text("".join(f"blocked{i}.example\n" for i in range(1000)))
    cfg = tmp_path / "filterproxy.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "server": {"state_dir": str(tmp_path / "state")},
                "upstreams": {"servers": [upstream.address], "timeout": 1.0},
                "dns": {"allowed_networks": ["127.0.0.0/8"], "rate_limit": 0},
                "policies_dir": "policies",
                "groups": ["kids"],
                "default_group": "kids",
                "lists": [
                    {
                        "id": "adult",
                        "category": "adult",
                        "format": "domains",
                        "match": "subdomains",
                        "path": str(tmp_path / "adult.txt"),
                    }
                ],
            }
        )
    )
    return cfg


def _ask(port: int, name: str) -> dns.message.Message:
    return dns.query.udp(dns.message.make_query(name, "A"), "127.0.0.1", port=port, timeout=2)


@pytest.fixture()
def running(tmp_path):
    up = FakeUpstream().start()
    cfg = _setup(tmp_path, up)
    proc = ServerProcess(
        [
            "--config",
            str(cfg),
            "--dns-listen",
            "127.0.0.1:0",
            "--proxy-listen",
            "off",
            "--metrics-listen",
            "127.0.0.1:0",
        ],
        log_path=str(tmp_path / "run.log"),
    ).start()
    yield proc, cfg, tmp_path
    proc.stop()
    up.stop()


def test_reload_under_load_loses_no_query(running):
    proc, cfg, tmp = running
    assert _ask(proc.port, "newly-listed.example.").rcode() == dns.rcode.NOERROR
    stop = threading.Event()
    results = {"ok": 0, "fail": []}

    def load(offset: int) -> None:
        i = 0
        while not stop.is_set() and i < 20000:
            name = f"blocked{(i + offset) % 1000}.example." if i % 3 == 0 else f"allowed{(i + offset) % 500}.example."
            try:
                r = _ask(proc.port, name)
                if r.rcode() == dns.rcode.SERVFAIL:
                    results["fail"].append((name, "SERVFAIL"))
                else:
                    results["ok"] += 1
            except Exception as exc:  # timeout = a dropped query
                results["fail"].append((name, type(exc).__name__))
            i += 1

    threads = [threading.Thread(target=load, args=(k * 97,)) for k in range(4)]
    for t in threads:
        t.start()
    time.sleep(1.0)
    # the list changes (as 'lists update' would) and the reload is requested the way 'lists reload' does it
    (tmp / "adult.txt").write_text("".join(f"blocked{i}.example\n" for i in range(1000)) + "newly-listed.example\n")
    r = subprocess.run(
        [sys.executable, "-m", "filterproxy", "lists", "reload", "--config", str(cfg)], capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr
    deadline = time.time() + 30
    while time.time() < deadline:
        if _ask(proc.port, "newly-listed.example.").rcode() == dns.rcode.NXDOMAIN:
            break
        time.sleep(0.2)
    else:
        pytest.fail("the reloaded list never took effect:\n" + proc.output()[-2000:])
    time.sleep(1.0)  # keep the load on after the swap too
    stop.set()
    for t in threads:
        t.join(30)
    assert results["ok"] > 500, results["ok"]
    assert results["fail"] == [], f"{len(results['fail'])} failed queries during reload: {results['fail'][:10]}"


def _promql(base: str, query: str) -> float | None:
    url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": query})
    with urllib.request.urlopen(url, timeout=5) as resp:
        doc = json.load(resp)
    res = doc["data"]["result"]
    return float(res[0]["value"][1]) if res else None


def test_prometheus_scrapes_blocked_counters(running, tmp_path):
    prom = shutil.which("prometheus")
    if not prom:
        pytest.fail("prometheus is not installed (the test command installs Debian's prometheus)")
    proc, _cfg, _tmp = running
    assert proc.metrics_url, "metrics endpoint not logged"
    target = urllib.parse.urlsplit(proc.metrics_url).netloc
    for i in range(25):
        assert _ask(proc.port, f"blocked{i}.example.").rcode() == dns.rcode.NXDOMAIN
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    conf = tmp_path / "prometheus.yml"
    conf.write_text(
        yaml.safe_dump(
            {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "scrape_configs": [{"job_name": "filterproxy", "static_configs": [{"targets": [target]}]}],
            }
        )
    )
    p = subprocess.Popen(
        [
            prom,
            f"--config.file={conf}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 60
        value = None
        while time.time() < deadline:
            try:
                value = _promql(base, 'sum(filterproxy_dns_blocked_total{group="kids",category="adult"})')
            except OSError:
                value = None
            if value is not None and value >= 25:
                break
            time.sleep(0.5)
        assert value is not None and value >= 25, value
        # the list's compliance figures are there too: entries and age
        entries = _promql(base, 'filterproxy_lists_entries{list="adult"}')
        assert entries == 1000
        assert _promql(base, 'filterproxy_lists_age_seconds{list="adult"}') is not None
        # and no client address or domain ever became a label
        with urllib.request.urlopen(proc.metrics_url, timeout=5) as resp:
            text = resp.read().decode()
        assert "blocked1.example" not in text and "127.0.0.1" not in text.replace(target, "")
    finally:
        p.terminate()
        p.wait(10)


def _wait_for_log(proc, needle: str, count: int, timeout: float = 30) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and proc.output().count(needle) < count:
        time.sleep(0.1)
    assert proc.output().count(needle) >= count, proc.output()[-2000:]


def test_reload_refuses_a_collapsed_list_and_skips_an_unchanged_one(running):
    """SIGHUP applies the same last-good rule as 'lists update': a list overwritten with junk (1,000
    entries → a handful) is refused with the reason, and the listed names stay blocked."""
    proc, cfg, tmp = running
    assert _ask(proc.port, "blocked500.example.").rcode() == dns.rcode.NXDOMAIN
    reload = [sys.executable, "-m", "filterproxy", "lists", "reload", "--config", str(cfg)]
    subprocess.run(reload, check=True, capture_output=True)
    _wait_for_log(proc, "reload: lists unchanged", 1)
    (tmp / "adult.txt").write_bytes(bytes(range(256)) * 40 + b"\nonly-this.example\n")
    subprocess.run(reload, check=True, capture_output=True)
    needle = "reload failed, keeping the running configuration and lists: list adult shrank from 1,000 to 1 entries"
    _wait_for_log(proc, needle, 1)
    assert _ask(proc.port, "blocked500.example.").rcode() == dns.rcode.NXDOMAIN
    assert _ask(proc.port, "only-this.example.").rcode() == dns.rcode.NOERROR
