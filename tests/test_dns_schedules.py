"""A schedule window that opens drops the group's cached DNS answers (dns/service housekeeping →
``Chain.on_schedules_changed``): a resolver on 127.0.0.1, queried with dnspython, with the engine's clock
(``engine.now``) set by the test instead of the wall clock."""

from __future__ import annotations

import asyncio
import datetime as dt
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).parent))
from conftest import write_config  # noqa: E402
from test_dns_server import addrs, ask, ede  # noqa: E402

from filterproxy.app import load_engine  # noqa: E402
from filterproxy.dns.service import DnsService  # noqa: E402
from filterproxy.dns.testing import FakeUpstream, synth_a  # noqa: E402

POLICY = """
    name: Home
    block_categories: [adult]
    block_mode: blockpage
    schedules:
      - {name: homework, days: all, from: "18:00", to: "20:00", block_categories: [games]}
"""


def _config(tmp: Path, upstream: str) -> Path:
    (tmp / "games.txt").write_text("game.test\n")
    (tmp / "adult.txt").write_text("adult.test\n")
    doc = {
        "server": {"state_dir": str(tmp / "state")},
        "upstreams": {"servers": [upstream], "timeout": 0.5},
        "dns": {"allowed_networks": ["127.0.0.1/32"]},
        "timezone": "UTC",
        "policies_dir": "policies",
        "groups": ["home"],
        "default_group": "home",
        "lists": [
            {"id": "test-games", "category": "games", "format": "domains", "path": "games.txt"},
            {"id": "test-adult", "category": "adult", "format": "domains", "path": "adult.txt"},
        ],
    }
    return write_config(tmp, yaml.safe_dump(doc), {"home": POLICY})


def test_cached_answers_dropped_when_a_window_opens(tmp_path):
    up = FakeUpstream().start()
    try:
        cfg, engine = load_engine(str(_config(tmp_path, up.address)))
        clock = [dt.datetime(2026, 3, 2, 17, 59, 58, tzinfo=dt.UTC)]
        engine.now = lambda: clock[0]  # type: ignore[method-assign]  # the injectable clock
        asyncio.run(_scenario(cfg, engine, clock))
    finally:
        up.stop()


async def _scenario(cfg, engine, clock: list[dt.datetime]) -> None:
    svc = DnsService(cfg, engine, listen=("127.0.0.1", 0))
    await svc.start()
    loop = asyncio.get_running_loop()
    port = svc.address[1]
    try:
        # before the window: allowed, and now cached (verdict memo + the group's packed reply, TTL 300 s)
        for _ in range(3):
            m = await loop.run_in_executor(None, ask, port, "game.test")
            assert addrs(m) == [synth_a("game.test")]
        assert len(svc.chain.packed) >= 1

        clock[0] = dt.datetime(2026, 3, 2, 18, 0, 1, tzinfo=dt.UTC)  # the homework window opens
        m = None
        for _ in range(50):  # housekeeping runs once a second; give it up to 5 s
            await asyncio.sleep(0.1)
            m = await loop.run_in_executor(None, ask, port, "game.test")
            if addrs(m) == ["127.0.0.1"]:
                break
        assert m is not None and addrs(m) == ["127.0.0.1"], m
        assert ede(m) == (17, "schedule/games/test-games")
    finally:
        await svc.stop()
