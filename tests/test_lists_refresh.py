"""The sources catalogue's ``sha256`` / ``max_bytes`` / ``refresh``, honoured end to end.

* bad values in ``sources.yaml`` or a ``lists:`` entry → a load error naming file:line;
* ``filterproxy lists update`` against a local HTTP server: a pin mismatch or an over-cap download keeps
  the last good copy and exits 1 naming the source, expected vs got;
* ``filterproxy run`` with a downloaded list missing on disk answers DNS at once from the starter list,
  fetches in the background and then blocks the fetched names (a broken source is logged and counted);
* a refresh (the running process's refresher, its clock moved on) picks up a changed list with a
  conditional GET, and an unchanged one costs a 304.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import dns.message
import dns.query
import dns.rcode
import pytest
import yaml

from filterproxy.config import ConfigError, load_config
from filterproxy.dns.testing import FakeUpstream, ServerProcess

V1 = b"# remote list v1\nremote-one.example\nremote-two.example\n"
V2 = b"# remote list v2\nremote-three.example\n"


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (http.server naming)
        srv: ListServer = self.server  # type: ignore[assignment]
        srv.hits.append((self.path, dict(self.headers)))
        srv.gate.wait(30)
        body = srv.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        etag = '"' + hashlib.sha256(body).hexdigest()[:16] + '"'
        if self.headers.get("If-None-Match") == etag:
            self.send_response(304)
            self.send_header("ETag", etag)
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("ETag", etag)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


class ListServer(ThreadingHTTPServer):
    """Serves ``files`` (path → bytes) with ETags; a request waits until ``gate`` is set."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.files: dict[str, bytes] = {}
        self.hits: list[tuple[str, dict]] = []
        self.gate = threading.Event()
        self.gate.set()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}{path}"

    def handle_error(self, request, client_address) -> None:  # a client gone: expected
        pass


@pytest.fixture
def lists_server():
    srv = ListServer()
    t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()
    yield srv
    srv.gate.set()
    srv.shutdown()
    srv.server_close()


def _setup(tmp_path: Path, sources: list[dict], lists: list[dict], upstream: str = "127.0.0.1:9") -> Path:
    (tmp_path / "policies").mkdir(exist_ok=True)
    (tmp_path / "policies" / "kids.yaml").write_text("name: Kids\nblock_categories: [adult]\nblock_mode: nxdomain\n")
    (tmp_path / "starter.txt").write_text("starter.example\n")
    (tmp_path / "sources.yaml").write_text(yaml.safe_dump({"sources": sources}, sort_keys=False))
    starter = {"id": "starter", "category": "adult", "format": "domains", "path": str(tmp_path / "starter.txt")}
    cfg = tmp_path / "filterproxy.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "server": {"state_dir": str(tmp_path / "state")},
                "upstreams": {"servers": [upstream], "timeout": 1.0},
                "dns": {"allowed_networks": ["127.0.0.0/8"], "rate_limit": 0},
                "policies_dir": "policies",
                "groups": ["kids"],
                "default_group": "kids",
                "sources": "sources.yaml",
                "lists": [starter, *lists],
            },
            sort_keys=False,
        )
    )
    return cfg


def _source(url: str, **kw: object) -> dict:
    return {"id": "remote", "url": url, "format": "domains", "category": "adult", **kw}


def _update(cfg: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "filterproxy", "lists", "update", "--config", str(cfg)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def _ask(port: int, name: str) -> int:
    return dns.query.udp(dns.message.make_query(name, "A"), "127.0.0.1", port=port, timeout=2).rcode()


def _until(check: Callable[[], bool], what: str, timeout: float = 30) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if check():
            return
        time.sleep(0.1)
    raise AssertionError(f"not within {timeout}s: {what}")


# --- bad settings are load errors naming file:line ----------------------------------------------------


@pytest.mark.unit
@pytest.mark.parametrize(
    ("key", "value", "needle"),
    [
        ("sha256", "abc123", "sha256 must be 64 lower-case hex digits"),
        ("max_bytes", "lots", "expected a size"),
        ("max_bytes", 0, "max_bytes must be a positive integer"),
        ("refresh", "soon", "expected seconds or a duration"),
        ("refresh", "1m", "refresh must be at least 300 s"),
    ],
)
def test_bad_download_settings_are_load_errors_with_file_line(tmp_path, key, value, needle):
    in_catalogue = _setup(tmp_path, [_source("http://127.0.0.1:9/l.txt", **{key: value})], [{"source": "remote"}])
    with pytest.raises(ConfigError) as exc:
        load_config(str(in_catalogue))
    text = (tmp_path / "sources.yaml").read_text().splitlines()
    line = next(i for i, t in enumerate(text, 1) if t.strip().startswith(f"{key}:"))
    assert f"{tmp_path / 'sources.yaml'}:{line}: {key}: {needle}" in str(exc.value)

    entry = {"source": "remote", key: value}
    in_entry = _setup(tmp_path, [_source("http://127.0.0.1:9/l.txt")], [entry])
    with pytest.raises(ConfigError) as exc:
        load_config(str(in_entry))
    assert f"{in_entry}:" in str(exc.value) and f"list 'remote': {key}: {needle}" in str(exc.value)


@pytest.mark.unit
def test_catalogue_settings_reach_the_list_and_an_entry_overrides_them(tmp_path):
    pin = hashlib.sha256(V1).hexdigest()
    cat = [_source("http://127.0.0.1:9/l.txt", sha256=pin.upper(), max_bytes="1KiB", refresh="6h")]
    cfg = load_config(str(_setup(tmp_path, cat, [{"source": "remote"}])))
    remote = next(s for s in cfg.lists if s.id == "remote")
    assert (remote.sha256, remote.max_bytes, remote.refresh) == (pin, 1024, 6 * 3600)
    cfg = load_config(str(_setup(tmp_path, cat, [{"source": "remote", "max_bytes": 2048, "refresh": "1d"}])))
    remote = next(s for s in cfg.lists if s.id == "remote")
    assert (remote.sha256, remote.max_bytes, remote.refresh) == (pin, 2048, 86_400)


@pytest.mark.unit
@pytest.mark.parametrize(
    ("error", "reason"),
    [
        ("sha256 mismatch: pinned 00, got 11", "sha256"),
        ("Content-Length 9 exceeds max_bytes (8)", "too-large"),
        ("larger than max_bytes (8 bytes)", "too-large"),
        ("timed out: read (after 4 attempts)", "timeout"),
        ("too slow: 10 bytes received when the time allowed ran out", "timeout"),
        ("rejected by validation: remote: downloaded file parses to zero entries", "empty"),
        ("HTTP 404 Not Found", "http"),
        ("connection failed: refused", "download"),
        (None, "download"),
    ],
)
def test_failure_reasons_are_a_bounded_set(error, reason):
    from filterproxy.lists.refresh import failure_reason
    from filterproxy.metrics.catalogue import LIST_FAILURE_REASON

    assert failure_reason(error) == reason
    assert reason in LIST_FAILURE_REASON.known


# --- lists update: pin and cap ------------------------------------------------------------------------


def test_update_refuses_a_pin_mismatch_and_keeps_the_last_good_copy(tmp_path, lists_server):
    lists_server.files["/remote.txt"] = V1
    pin = hashlib.sha256(V1).hexdigest()
    cfg = _setup(tmp_path, [_source(lists_server.url("/remote.txt"), sha256=pin)], [{"source": "remote"}])
    first = _update(cfg)
    assert first.returncode == 0, first.stderr
    local = tmp_path / "state" / "lists" / "remote.txt"
    assert local.read_bytes() == V1

    lists_server.files["/remote.txt"] = V2
    second = _update(cfg)
    assert second.returncode == 1, second.stdout + second.stderr
    got = hashlib.sha256(V2).hexdigest()
    assert f"remote: update failed, keeping the previous copy: sha256 mismatch: pinned {pin}, got {got}" in (
        second.stderr
    )
    assert local.read_bytes() == V1


def test_update_refuses_a_download_over_max_bytes_and_keeps_the_last_good_copy(tmp_path, lists_server):
    lists_server.files["/remote.txt"] = V1
    cfg = _setup(tmp_path, [_source(lists_server.url("/remote.txt"), max_bytes="1KiB")], [{"source": "remote"}])
    assert _update(cfg).returncode == 0
    big = b"".join(b"big%d.example\n" % i for i in range(200))  # ~2.6 kB, over the 1 KiB cap
    lists_server.files["/remote.txt"] = big
    second = _update(cfg)
    assert second.returncode == 1, second.stdout + second.stderr
    assert f"remote: update failed, keeping the previous copy: Content-Length {len(big)} exceeds max_bytes (1024)" in (
        second.stderr
    )
    assert (tmp_path / "state" / "lists" / "remote.txt").read_bytes() == V1


# --- filterproxy run: background fetch at start-up ----------------------------------------------------


def _metric(url: str, line_start: str) -> float:
    with urllib.request.urlopen(url + "/metrics", timeout=5) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(line_start):
                return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_run_serves_at_once_and_blocks_a_missing_list_once_fetched(tmp_path, lists_server):
    lists_server.files["/remote.txt"] = V1
    lists_server.gate.clear()  # the downloads wait until DNS was seen answering without them
    up = FakeUpstream().start()
    sources = [_source(lists_server.url("/remote.txt")), _source(lists_server.url("/gone.txt"), id="broken")]
    cfg = _setup(tmp_path, sources, [{"source": "remote"}, {"source": "broken"}], upstream=up.address)
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
    try:
        assert _ask(proc.port, "starter.example.") == dns.rcode.NXDOMAIN
        assert _ask(proc.port, "remote-one.example.") == dns.rcode.NOERROR  # not fetched yet
        _until(lambda: len(lists_server.hits) >= 2, "both downloads started")
        lists_server.gate.set()
        _until(lambda: _ask(proc.port, "remote-one.example.") == dns.rcode.NXDOMAIN, "the fetched list blocks")
        assert _ask(proc.port, "starter.example.") == dns.rcode.NXDOMAIN
        out = proc.output()
        assert f"lists: remote: fetched {len(V1)} bytes" in out, out[-3000:]
        assert "lists: broken: failed, serving without it for now: HTTP 404" in out, out[-3000:]
        assert proc.metrics_url
        failures = 'filterproxy_lists_update_failures_total{list="broken",reason="http"}'
        _until(lambda: _metric(proc.metrics_url, failures) == 1, "the failure counted")
        assert sum(1 for p, _ in lists_server.hits if p == "/remote.txt") == 1
    finally:
        lists_server.gate.set()
        proc.stop()
        up.stop()


def test_startup_fetch_gives_up_on_a_silent_server_within_its_time(tmp_path, lists_server, caplog):
    from filterproxy.lists.refresh import ListRefresher

    lists_server.files["/remote.txt"] = V1
    lists_server.gate.clear()  # the server accepts the request and never answers
    cfg = load_config(str(_setup(tmp_path, [_source(lists_server.url("/remote.txt"))], [{"source": "remote"}])))
    reloads: list[bool] = []

    async def reload() -> bool:
        reloads.append(True)
        return True

    refresher = ListRefresher(lambda: cfg, reload, startup_deadline=30, download_timeout=1)
    assert asyncio.run(refresher.fetch_missing()) == 0
    assert reloads == [] and not (tmp_path / "state" / "lists" / "remote.txt").exists()
    assert "lists: remote: failed, serving without it for now: timed out" in caplog.text
    assert "(no time left to retry)" in caplog.text


# --- a refresh picks up a changed list ----------------------------------------------------------------


def test_refresh_picks_up_a_changed_list_with_a_conditional_get(tmp_path, lists_server):
    from filterproxy.app import load_engine
    from filterproxy.cli import build_parser
    from filterproxy.runner import Runner, apply_overrides

    lists_server.files["/remote.txt"] = V1
    up = FakeUpstream().start()
    cfg_path = _setup(tmp_path, [_source(lists_server.url("/remote.txt"))], [{"source": "remote"}], up.address)
    args: argparse.Namespace = build_parser().parse_args(
        ["run", "--config", str(cfg_path), "--dns-listen", "127.0.0.1:0", "--proxy-listen", "off"]
        + ["--metrics-listen", "off"]
    )

    async def scenario() -> None:
        cfg, engine = load_engine(args.config, args.extra_list, args.client_group)
        apply_overrides(args, cfg)
        runner = Runner(args, cfg, engine)
        await runner.start()
        try:
            port = runner.dns.address[1]

            async def rcode(name: str) -> int:
                return await asyncio.to_thread(_ask, port, name)

            async def until(name: str, want: int) -> None:
                for _ in range(300):
                    if await rcode(name) == want:
                        return
                    await asyncio.sleep(0.1)
                raise AssertionError(f"{name} never answered {dns.rcode.to_text(want)}")

            await until("remote-one.example.", dns.rcode.NXDOMAIN)  # the start-up fetch
            lists_server.files["/remote.txt"] = V2
            refresher = runner.lists_refresh
            assert await refresher.refresh_due(time.time() + 3600) == 0  # not due yet: no request
            assert len(lists_server.hits) == 1
            assert await refresher.refresh_due(time.time() + 2 * 86_400) == 1
            await until("remote-three.example.", dns.rcode.NXDOMAIN)
            assert await rcode("remote-one.example.") == dns.rcode.NOERROR
            etag = lists_server.hits[-1][1].get("If-None-Match")
            assert etag, "the refresh was a conditional GET"
            cached = tmp_path / "state" / "lists" / "remote.txt"
            day_ago = time.time() - 86_400
            os.utime(cached, (day_ago, day_ago))  # fetched a day ago
            assert await refresher.refresh_due(time.time() + 5 * 86_400) == 0  # unchanged: 304
            # confirmed current just now: its age starts again (the console's freshness, the metric, the alert)
            from filterproxy.lists.snapshot_cache import list_version

            [li] = [li for li in runner.engine.snapshot.lists if li.id == "remote"]
            assert time.time() - list_version(li)[1] < 60 and time.time() - cached.stat().st_mtime < 60
            assert lists_server.hits[-1][1].get("If-None-Match") == '"' + hashlib.sha256(V2).hexdigest()[:16] + '"'
            del lists_server.files["/remote.txt"]  # the host breaks: the last good copy keeps serving
            assert await refresher.refresh_due(time.time() + 9 * 86_400) == 0
            assert (tmp_path / "state" / "lists" / "remote.txt").read_bytes() == V2
            assert await rcode("remote-three.example.") == dns.rcode.NXDOMAIN
        finally:
            await runner.stop()

    try:
        asyncio.run(scenario())
    finally:
        up.stop()
