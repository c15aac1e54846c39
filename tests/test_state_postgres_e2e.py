"""The state store on a real PostgreSQL (tests/pg.py): every store check of test_state_store.py that takes the
``store`` fixture runs again here on PostgreSQL; then two ``filterproxy run`` gateways share one database and
an override written on one answers on the other's DNS within seconds."""

from __future__ import annotations

import inspect
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import dns.message
import dns.query
import dns.rcode
import pytest
import sqlalchemy as sa
import yaml
from pg import postgres_server, postgres_url  # noqa: F401  (fixtures)

from filterproxy.dns.testing import FakeUpstream, ServerProcess
from filterproxy.state import schema
from filterproxy.state.model import Actor
from filterproxy.state.store import Store
from filterproxy.state.watch import LiveWatcher

sys.path.insert(0, str(Path(__file__).parent))
import test_state_store as _sqlite_checks  # noqa: E402

# The same checks, collected here again with this module's ``store`` (PostgreSQL); those that also take
# ``tmp_path`` reach into the SQLite file itself and stay SQLite-only.
for _name, _fn in vars(_sqlite_checks).items():
    _params = inspect.signature(_fn).parameters if _name.startswith("test_") else {}
    if "store" in _params and "tmp_path" not in _params:
        globals()[_name] = _fn


@pytest.fixture
def store(postgres_url: str) -> Iterator[Store]:  # noqa: F811
    s = Store.open(postgres_url)
    yield s
    s.close()


def test_the_store_runs_on_postgresql(store: Store) -> None:
    assert store.engine.dialect.name == "postgresql"


# ---------------------------------------------------------------- two gateways, one database


def _gateway(tmp_path: Path, name: str, url: str, upstream: FakeUpstream) -> ServerProcess:
    d = tmp_path / name
    (d / "policies").mkdir(parents=True)
    (d / "policies" / "kids.yaml").write_text("name: Kids\nblock_categories: [adult]\nblock_mode: nxdomain\n")
    (d / "adult.txt").write_text("blocked.example\n")
    doc = {
        "server": {"state_dir": str(d / "state"), "state_db": url},
        "admin": {"stats_flush_seconds": 1},
        "upstreams": {"servers": [upstream.address], "timeout": 1.0},
        "dns": {"allowed_networks": ["127.0.0.0/8"], "rate_limit": 0},
        "policies_dir": "policies",
        "groups": ["kids"],
        "default_group": "kids",
        "lists": [{"id": "adult", "category": "adult", "format": "domains", "path": "adult.txt"}],
    }
    (d / "filterproxy.yaml").write_text(yaml.safe_dump(doc))
    args = ["--config", str(d / "filterproxy.yaml"), "--dns-listen", "127.0.0.1:0", "--proxy-listen", "off"]
    args += ["--metrics-listen", "off", "--admin-listen", "off"]
    return ServerProcess(args, log_path=str(d / "run.log")).start()


def _rcode(gw: ServerProcess, name: str) -> int:
    q = dns.message.make_query(name, "A")
    return dns.query.udp(q, "127.0.0.1", port=gw.port, timeout=3).rcode()


def test_two_gateways_share_overrides_and_statistics(tmp_path: Path, postgres_url: str) -> None:  # noqa: F811
    up = FakeUpstream().start()
    a = _gateway(tmp_path, "a", postgres_url, up)
    b = _gateway(tmp_path, "b", postgres_url, up)
    store = Store.open(postgres_url)
    try:
        for gw in (a, b, a):
            assert _rcode(gw, "fine.example") == dns.rcode.NOERROR  # cached and packed on both
        store.add_override(Actor("root", "admin"), "kids", "fine.example", "block")  # "written on a"
        deadline, allowed = time.monotonic() + 5, 3
        while _rcode(b, "fine.example") != dns.rcode.NXDOMAIN:
            assert time.monotonic() < deadline, "gateway b did not apply the override within 5 s\n" + b.output()[-2000:]
            allowed += 1
            time.sleep(0.1)
        assert _rcode(a, "fine.example") == dns.rcode.NXDOMAIN

        # both gateways' counts add up in the one database (upsert-increment)
        want = (("kids", "none", "allow", "udp"), allowed)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with store.engine.connect() as conn:
                q = sa.select(sa.func.sum(schema.stats_minute.c.count)).where(
                    *(
                        schema.stats_minute.c[k] == v
                        for k, v in zip(("group", "category", "action", "protocol"), want[0])
                    )
                )
                got = conn.execute(q).scalar()
            if got == want[1]:
                break
            time.sleep(0.2)
        assert got == want[1]
    finally:
        store.close()
        a.stop()
        b.stop()
        up.stop()


class _Engine:
    """What the watcher needs of an engine: ``set_live``."""

    def __init__(self) -> None:
        self.live: list[int] = []

    def set_live(self, rules: object) -> None:
        self.live.append(rules.serial)  # type: ignore[attr-defined]


def _wait_for_listener(store: Store) -> None:
    """Until the watcher's LISTEN connection is there (a NOTIFY before it would be lost)."""
    q = sa.text("SELECT count(*) FROM pg_stat_activity WHERE query = 'LISTEN filterproxy_live'")
    deadline = time.monotonic() + 10
    while True:
        with store.engine.connect() as conn:
            if conn.execute(q).scalar():
                return
        assert time.monotonic() < deadline, "the watcher never LISTENed"
        time.sleep(0.05)


def test_a_change_wakes_the_watchers_by_notify(postgres_url: str) -> None:  # noqa: F811
    """With the serial poll at 10 minutes, only PostgreSQL's NOTIFY (sent in the change's transaction) can
    bring the override to the watcher within the 5 s it gets here."""
    store = Store.open(postgres_url)
    engine, changed = _Engine(), threading.Event()
    watcher = LiveWatcher(postgres_url, lambda: engine, changed.set, poll=600).start()
    try:
        assert engine.live == [0]
        changed.clear()
        _wait_for_listener(store)
        store.add_override(Actor("root", "admin"), "kids", "fine.example", "block")
        assert changed.wait(5), "no NOTIFY reached the watcher"
        assert engine.live == [0, 1] and [o.name for o in watcher.rules.overrides] == ["fine.example"]
    finally:
        watcher.stop()
        store.close()
