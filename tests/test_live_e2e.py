"""Live rules reach a real `filterproxy run` within 2 s: an override and pauses written through the store (by
this test process, on the same state.db) apply over DNS and through the proxy; the answer cached before the
change is not served after it; expiry and removal restore the old verdict; the YAML files are untouched and
a lasting override survives a restart. The legal list stays first whatever the overrides say."""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import requests

sys.path.insert(0, str(Path(__file__).parent))
from test_dns_server import addrs, ask, ede, start, write_setup  # noqa: E402

from filterproxy.dns.testing import FakeUpstream, ServerProcess, synth_a  # noqa: E402
from filterproxy.state.model import Actor  # noqa: E402
from filterproxy.state.store import Store  # noqa: E402

ADMIN = Actor("root", "admin")
CONTRACT = 2.0  # seconds, for DNS and HTTP


def _poll(check: Callable[[], bool], seconds: float = CONTRACT) -> bool:
    deadline = time.monotonic() + seconds
    while True:
        if check():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)


def _reason(srv_port: int, name: str, src: str = "127.0.0.1") -> str | None:
    e = ede(ask(srv_port, name, src=src))
    return e[1] if e else None


def _allowed(port: int, name: str, src: str = "127.0.0.1") -> bool:
    return addrs(ask(port, name, src=src)) == [synth_a(name)]


def _digests(tmp: Path) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(tmp.rglob("*.yaml"))}


@pytest.fixture()
def upstream():
    up = FakeUpstream().start()
    yield up
    up.stop()


def _start(tmp: Path, cfg: Path) -> tuple[ServerProcess, dict[str, str]]:
    srv = start(tmp, cfg, "--proxy-listen", "127.0.0.1:0", "--proxy-workers", "1")
    assert _poll(lambda: "proxy listening on" in srv.output(), 90), srv.output()[-3000:]
    m = re.search(r"proxy listening on (\S+):(\d+)", srv.output())
    assert m
    return srv, {"http": f"http://127.0.0.1:{m.group(2)}"}


def _proxy_reason(proxies: dict[str, str], name: str) -> str:
    r = requests.get(f"http://{name}/", proxies=proxies, timeout=10)
    return r.headers.get("X-Filterproxy-Reason", "") if r.status_code in (403, 451) else ""


def test_live_rules_reach_dns_and_the_proxy(tmp_path, upstream):
    cfg = write_setup(tmp_path, upstreams=[upstream.address])
    yaml_before = _digests(tmp_path)
    db = tmp_path / "state" / "state.db"
    srv, proxies = _start(tmp_path, cfg)
    try:
        assert not db.exists()  # a fresh install: no state, nothing created
        assert _allowed(srv.port, "www.live.test")  # allowed, and now in the packed cache
        assert _proxy_reason(proxies, "www.live.test") == ""

        store = Store.open(f"sqlite:///{db}")
        over = store.add_override(ADMIN, "home", "live.test", "block")  # covers www.live.test
        assert _poll(lambda: (_reason(srv.port, "www.live.test") or "").startswith("override/")), srv.output()[-3000:]
        assert _poll(lambda: _proxy_reason(proxies, "www.live.test").startswith("override/")), srv.output()[-3000:]
        assert _allowed(srv.port, "www.live.test", src="127.0.0.3")  # another group (teens): no override

        # nobody can allow a name on the legal list: the engine keeps legal first
        store.add_override(ADMIN, "home", "csam.test", "allow")
        time.sleep(CONTRACT)
        assert (_reason(srv.port, "csam.test") or "").startswith("legal/")

        # a group pause: everything of kids (127.0.0.2) blocked, home (127.0.0.1) untouched
        assert _allowed(srv.port, "ok.example", src="127.0.0.2")
        gp = store.add_pause(ADMIN, 10, group="kids")
        assert _poll(lambda: (_reason(srv.port, "ok.example", src="127.0.0.2") or "").startswith("pause/"))
        assert _allowed(srv.port, "ok.example")

        # a client pause: 127.0.0.4 (home) is paused, 127.0.0.1 (home too) keeps the group's cached answers
        assert _allowed(srv.port, "other.example", src="127.0.0.4")
        cp = store.add_pause(ADMIN, 10, client="127.0.0.4")
        assert _poll(lambda: (_reason(srv.port, "other.example", src="127.0.0.4") or "").startswith("pause/"))
        assert _allowed(srv.port, "other.example")
        # a client pause through the proxy (its client is 127.0.0.1)
        assert _proxy_reason(proxies, "open.example") == ""
        hp = store.add_pause(ADMIN, 10, client="127.0.0.1")
        assert _poll(lambda: _proxy_reason(proxies, "open.example").startswith("pause/"))
        for p in (gp, cp, hp):
            store.remove_pause(ADMIN, p.id)
        assert _poll(lambda: _allowed(srv.port, "ok.example", src="127.0.0.2"))
        assert _poll(lambda: _allowed(srv.port, "other.example", src="127.0.0.4"))
        assert _poll(lambda: _proxy_reason(proxies, "open.example") == "")

        # expiry restores the old verdict (the watcher wakes at the rule's expiry)
        ends = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=1)
        store.set_override_expiry(ADMIN, over.id, ends)
        assert _poll(lambda: _allowed(srv.port, "www.live.test"), 1 + CONTRACT), srv.output()[-3000:]
        assert _poll(lambda: _proxy_reason(proxies, "www.live.test") == "")

        store.add_override(ADMIN, "home", "keep.test", "block")  # lasting: survives the restart
        assert _poll(lambda: (_reason(srv.port, "keep.test") or "").startswith("override/"))
        store.close()
    finally:
        srv.stop()
    assert "Traceback" not in srv.output(), srv.output()[-4000:]
    assert _digests(tmp_path) == yaml_before  # live state lives in the database, never in the YAML files

    args = ["--config", str(cfg), "--dns-listen", "127.0.0.1:0", "--proxy-listen", "off", "--metrics-listen", "off"]
    srv = ServerProcess(args, log_path=str(tmp_path / "run2.log")).start()  # its own log: a fresh port line
    try:
        assert (_reason(srv.port, "keep.test") or "").startswith("override/")
        assert _allowed(srv.port, "www.live.test")
    finally:
        srv.stop()


def test_every_dns_process_applies_live_rules(tmp_path, upstream):
    cfg = write_setup(tmp_path, upstreams=[upstream.address])
    srv = start(tmp_path, cfg, "--dns-workers", "2")
    try:
        assert re.search(r"2 processes \(pids \d+ \d+\)", srv.output()), srv.output()[-3000:]
        for _ in range(20):  # a fresh source port each: both processes cache the allowed answer
            assert _allowed(srv.port, "www.live.test")
        store = Store.open(f"sqlite:///{tmp_path}/state/state.db")
        store.add_override(ADMIN, "home", "live.test", "block")
        store.close()
        time.sleep(CONTRACT)
        reasons = {_reason(srv.port, "www.live.test") or "" for _ in range(20)}
        assert {r.split("/")[0] for r in reasons} == {"override"}, reasons
    finally:
        srv.stop()
