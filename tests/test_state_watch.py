"""LiveWatcher: lazy open (no state, nothing created), a store that cannot be opened, an outage that keeps the
last rules, a rebuild at the next expiry, and a new engine (a proxy worker's reload) getting the rules."""

from __future__ import annotations

import datetime as dt
import logging
import time

from filterproxy.state.model import EMPTY, Actor, LiveRules
from filterproxy.state.store import Store
from filterproxy.state.watch import LiveWatcher

ADMIN = Actor("root", "admin")


class _Engine:
    def __init__(self) -> None:
        self.installed: list[LiveRules] = []

    def set_live(self, rules: LiveRules) -> None:
        self.installed.append(rules)


def test_no_state_yet_means_no_rules_and_nothing_created(tmp_path):
    eng = _Engine()
    changes = []
    w = LiveWatcher(f"sqlite:///{tmp_path}/state.db", lambda: eng, lambda: changes.append(1))  # type: ignore[arg-type,return-value]
    assert w.check() and eng.installed == [EMPTY] and changes == [1]
    assert not w.check()  # nothing new: nothing installed, no cache dropped
    assert not (tmp_path / "state.db").exists()
    s = Store.open(f"sqlite:///{tmp_path}/state.db")
    o = s.add_override(ADMIN, "home", "a.example", "block")
    assert w.check() and [x.id for x in eng.installed[-1].overrides] == [o.id] and changes == [1, 1]
    s.close()
    w.stop()


def test_a_store_that_cannot_be_opened_serves_without_live_rules(tmp_path, caplog):
    (tmp_path / "state.db").write_bytes(b"this is no database" * 100)
    eng = _Engine()
    w = LiveWatcher(f"sqlite:///{tmp_path}/state.db", lambda: eng)  # type: ignore[arg-type,return-value]
    with caplog.at_level(logging.ERROR, logger="filterproxy.state"):
        w.check()
    assert eng.installed == [EMPTY]
    assert "cannot open" in caplog.text and "serving without live rules" in caplog.text


def test_an_outage_keeps_the_last_rules_and_expiry_rebuilds(tmp_path, caplog):
    s = Store.open(f"sqlite:///{tmp_path}/state.db")
    o = s.add_override(ADMIN, "home", "a.example", "block", minutes=60)
    eng = _Engine()
    w = LiveWatcher(s.url, lambda: eng)  # type: ignore[arg-type,return-value]
    w.check()
    assert [x.id for x in eng.installed[-1].overrides] == [o.id]

    class Down:
        def serial(self) -> int:
            raise OSError("connection refused")

    w._store, real = Down(), w._store  # type: ignore[assignment]
    with caplog.at_level(logging.ERROR, logger="filterproxy.state"):
        assert not w.check()
    assert "keeping the last live rules" in caplog.text and len(eng.installed) == 1
    w._store = real
    # the rule expires: the watcher rebuilds at that time although the serial moved only once more
    s.set_override_expiry(ADMIN, o.id, dt.datetime.now(dt.UTC) + dt.timedelta(seconds=0.2))
    assert w.check() and eng.installed[-1].next_expiry is not None
    assert 0 < w._wait() <= 0.25
    time.sleep(0.25)
    assert w.check() and eng.installed[-1].overrides == ()
    # a new engine (a proxy worker reloaded) gets the current rules at the next poll
    eng2 = _Engine()
    w.engine = lambda: eng2  # type: ignore[assignment,return-value]
    assert w.check() and eng2.installed == [eng.installed[-1]]
    s.close()
    w.stop()


def test_an_error_in_applying_the_rules_does_not_stop_the_watcher(tmp_path, caplog):
    """A failing set_live is logged and retried at the next poll: a dead watcher thread would leave every
    later change unapplied, silently."""

    class Flaky(_Engine):
        def __init__(self) -> None:
            super().__init__()
            self.fail = 2

        def set_live(self, rules: LiveRules) -> None:
            if self.fail:
                self.fail -= 1
                raise RuntimeError("engine busy")
            super().set_live(rules)

    s = Store.open(f"sqlite:///{tmp_path}/state.db")
    eng = Flaky()
    w = LiveWatcher(s.url, lambda: eng, poll=0.05)  # type: ignore[arg-type,return-value]
    with caplog.at_level(logging.ERROR, logger="filterproxy.state"):
        w.start()
        o = s.add_override(ADMIN, "home", "a.example", "block")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not (eng.installed and eng.installed[-1].overrides):
            time.sleep(0.02)
    assert w._thread is not None and w._thread.is_alive()
    assert [x.id for x in eng.installed[-1].overrides] == [o.id]
    assert "could not apply the live rules" in caplog.text
    w.stop()
    s.close()
