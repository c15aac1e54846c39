"""A config reload reaches DNS: a policy edit plus SIGHUP to `filterproxy run` (what `filterproxy lists reload`
and `systemctl reload` send) is served by the resolver within 5 s, by the proxy workers and by the extra DNS
workers too, all at one config generation; an invalid edit keeps the running configuration."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import requests

sys.path.insert(0, str(Path(__file__).parent))
from test_dns_server import addrs, ask, ede, start, write_setup  # noqa: E402

from filterproxy.dns.testing import FakeUpstream, ServerProcess, synth_a  # noqa: E402

NAME = "x.reload.test"
CONTRACT = 5.0  # seconds: the README's promise for DNS


def _block_x(tmp: Path) -> None:
    home = tmp / "policies" / "home.yaml"
    text = home.read_text()
    assert "block: [custom-block.test]" in text
    home.write_text(text.replace("block: [custom-block.test]", f"block: [custom-block.test, {NAME}]"))


def _dns_blocks(srv: ServerProcess) -> bool:
    m = ask(srv.port, NAME)
    return addrs(m) == ["127.0.0.1"] and ede(m) is not None and ede(m)[1].startswith("blocklist/")


def _poll(check: Callable[[], bool], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while True:
        if check():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)


def _generation(srv: ServerProcess, role: str) -> float | None:
    assert srv.metrics_url
    text = requests.get(srv.metrics_url + "/metrics", timeout=5).text
    m = re.search(rf'^filterproxy_config_generation{{role="{role}"}} (\S+)$', text, re.M)
    return float(m.group(1)) if m else None


def _metric(srv: ServerProcess, line: str) -> float:
    assert srv.metrics_url
    text = requests.get(srv.metrics_url + "/metrics", timeout=5).text
    m = re.search(rf"^{re.escape(line)} (\S+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


@pytest.fixture()
def upstream():
    up = FakeUpstream().start()
    yield up
    up.stop()


def _stop(srv: ServerProcess) -> None:
    srv.stop()
    assert "Traceback" not in srv.output(), srv.output()[-4000:]


def test_policy_edit_reaches_dns_and_proxy_at_one_generation(tmp_path, upstream):
    cfg = write_setup(tmp_path, upstreams=[upstream.address])
    srv = start(tmp_path, cfg, "--proxy-listen", "127.0.0.1:0", "--proxy-workers", "1")
    try:
        assert _poll(lambda: "proxy listening on" in srv.output(), 90), srv.output()[-3000:]
        m = re.search(r"proxy listening on (\S+):(\d+)", srv.output())
        assert m
        proxies = {"http": f"http://127.0.0.1:{m.group(2)}"}

        def proxy_blocks() -> bool:
            r = requests.get(f"http://{NAME}/", proxies=proxies, timeout=10)
            return r.status_code == 403 and r.headers.get("X-Filterproxy-Reason", "").startswith("blocklist/")

        assert addrs(ask(srv.port, NAME)) == [synth_a(NAME)]  # allowed, and now in the packed cache
        assert not proxy_blocks()
        assert _poll(lambda: _generation(srv, "dns") == 1 and _generation(srv, "proxy") == 1, 20)

        _block_x(tmp_path)
        # a restart-only setting changed in the same edit: named in the log, the running upstream kept
        cfg.write_text(cfg.read_text().replace("timeout: 0.5", "timeout: 0.7"))
        srv.signal(signal.SIGHUP)
        assert _poll(lambda: _dns_blocks(srv), CONTRACT), srv.output()[-3000:]
        assert _poll(proxy_blocks, 30), srv.output()[-3000:]
        assert _poll(lambda: _generation(srv, "dns") == 2 and _generation(srv, "proxy") == 2, 20)
        out = srv.output()
        assert re.search(r"reload: config generation 2 \(digest [0-9a-f]{12}, changed\)", out), out[-3000:]
        assert "upstreams.timeout changed in" in out and "needs a restart" in out
        assert addrs(ask(srv.port, "still.example")) == [synth_a("still.example")]  # the upstream still serves
        assert _metric(srv, 'filterproxy_config_reloads_total{result="success"}') == 1
    finally:
        _stop(srv)


def test_invalid_edit_keeps_the_running_config(tmp_path, upstream):
    cfg = write_setup(tmp_path, upstreams=[upstream.address])
    srv = start(tmp_path, cfg)
    reload = [sys.executable, "-m", "filterproxy", "lists", "reload", "--config", str(cfg)]
    try:
        _block_x(tmp_path)
        subprocess.run(reload, check=True, capture_output=True, timeout=60)  # signals the PID file's process
        assert _poll(lambda: _dns_blocks(srv), CONTRACT), srv.output()[-3000:]

        home = tmp_path / "policies" / "home.yaml"
        home.write_text(home.read_text().replace("block_mode: blockpage", "block_mode: sometimes"))
        want = f"{home}:5: 'policy home.block_mode' must be one of"
        r = subprocess.run(reload, capture_output=True, text=True, timeout=60)  # checks the files first
        assert r.returncode == 2 and want in r.stderr, r.stderr
        srv.signal(signal.SIGHUP)  # a signal sent anyway (kill -HUP, systemctl reload)
        assert _poll(lambda: want in srv.output(), 30), srv.output()[-3000:]
        assert "reload failed, keeping the running configuration and lists" in srv.output()
        assert _dns_blocks(srv)  # the last good configuration serves on
        assert addrs(ask(srv.port, "ok.example")) == [synth_a("ok.example")]
        assert _metric(srv, 'filterproxy_config_reloads_total{result="failure"}') == 1
        assert _generation(srv, "dns") == 2  # the failed reload is no generation
    finally:
        _stop(srv)


def test_both_dns_processes_apply_the_edit(tmp_path, upstream):
    cfg = write_setup(tmp_path, upstreams=[upstream.address])
    srv = start(tmp_path, cfg, "--dns-workers", "2")
    try:
        assert re.search(r"2 processes \(pids \d+ \d+\)", srv.output()), srv.output()[-3000:]
        for _ in range(20):  # a fresh source port each: both processes cache the allowed answer
            assert addrs(ask(srv.port, NAME)) == [synth_a(NAME)]
        _block_x(tmp_path)
        srv.signal(signal.SIGHUP)
        # every answer, from many source ports (the kernel spreads them over both processes), within 5 s
        assert _poll(lambda: all(_dns_blocks(srv) for _ in range(20)), CONTRACT), srv.output()[-3000:]
        assert all(_dns_blocks(srv) for _ in range(60))
        # the lowest generation of the two processes moved: both serve generation 2
        assert _poll(lambda: _generation(srv, "dns") == 2, 20), srv.output()[-3000:]
    finally:
        _stop(srv)
