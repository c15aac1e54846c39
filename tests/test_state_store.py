"""The state store on SQLite: every method, serial and audit in the change's transaction, teacher limits,
migrations (empty database, idempotent reopen), and a change that returned surviving kill -9."""

from __future__ import annotations

import datetime as dt
import os
import signal
import sqlite3
import subprocess
import sys

import pytest
import sqlalchemy as sa
import yaml

from filterproxy.passwords import hash_password, verify_password
from filterproxy.state import schema
from filterproxy.state.model import Actor
from filterproxy.state.store import Forbidden, NotFound, StateError, Store, state_url

ADMIN = Actor("root", "admin")
LAN = Actor("lan", "teacher", frozenset({"pupils"}))
HASH = hash_password("correct horse")


@pytest.fixture
def store(tmp_path):
    s = Store.open(f"sqlite:///{tmp_path}/state.db")
    yield s
    s.close()


def _counts(s: Store) -> tuple[int, int]:
    return s.serial(), len(s.audit())


def test_migrates_an_empty_database_and_reopens_idempotently(tmp_path):
    url = f"sqlite:///{tmp_path}/sub/state.db"
    s = Store.open(url)
    s.add_override(ADMIN, "pupils", "a.example", "block")
    s.close()
    s = Store.open(url)  # second open: no step runs again, the data stays
    assert [o.name for o in s.overrides()] == ["a.example"] and s.serial() == 1
    with s.engine.connect() as c:
        assert c.execute(sa.select(schema.schema_version.c.version)).scalar_one() == len(schema.MIGRATIONS)
        assert c.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert c.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
    s.close()


def test_a_newer_schema_is_refused(tmp_path):
    url = f"sqlite:///{tmp_path}/state.db"
    Store.open(url).close()
    with sqlite3.connect(tmp_path / "state.db") as c:
        c.execute("UPDATE schema_version SET version = 99")
    with pytest.raises(RuntimeError, match="schema version 99"):
        Store.open(url)


def test_a_later_migration_step_runs_once(tmp_path):
    url = f"sqlite:///{tmp_path}/state.db"
    Store.open(url).close()
    ran = []
    schema.MIGRATIONS.append(lambda conn: ran.append(1))
    try:
        Store.open(url).close()
        Store.open(url).close()
    finally:
        schema.MIGRATIONS.pop()
    assert ran == [1]


def test_overrides(store):
    o = store.add_override(ADMIN, "pupils", "WWW.Example.COM.", "allow", minutes=30, note="maths")
    assert (o.name, o.action, o.created_by, o.created_role, o.note) == (
        "www.example.com",
        "allow",
        "root",
        "admin",
        "maths",
    )
    assert o.expires_at is not None and 29 * 60 < (o.expires_at - o.created_at).total_seconds() <= 30 * 60
    b = store.add_override(ADMIN, "staff", "bad.example", "block")
    assert b.expires_at is None
    assert [x.id for x in store.overrides()] == [o.id, b.id]
    assert [x.id for x in store.overrides(frozenset({"staff"}))] == [b.id]
    store.remove_override(ADMIN, o.id)
    assert [x.id for x in store.overrides()] == [b.id]
    with pytest.raises(NotFound):
        store.remove_override(ADMIN, o.id)
    for bad in (
        ("pupils", "not a name!", "allow"),
        ("pupils", "x.example", "maybe"),
        ("bad group", "x.example", "allow"),
    ):
        with pytest.raises(StateError):
            store.add_override(ADMIN, *bad)  # type: ignore[arg-type]
    with pytest.raises(StateError):
        store.add_override(ADMIN, "pupils", "x.example", "allow", minutes=0)


def test_expired_overrides_leave_the_live_rules(store):
    o = store.add_override(ADMIN, "pupils", "a.example", "allow", minutes=60)
    past = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)
    store.set_override_expiry(ADMIN, o.id, past)
    assert store.overrides() == [] and store.live().overrides == ()
    later = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=5)
    store.set_override_expiry(ADMIN, o.id, later)
    live = store.live()
    assert [x.id for x in live.overrides] == [o.id] and live.next_expiry == later


def test_every_live_change_bumps_the_serial_and_is_audited(store):
    steps = [
        lambda: store.add_override(ADMIN, "pupils", "a.example", "block"),
        lambda: store.add_pause(ADMIN, 10, group="pupils"),
        lambda: store.add_device(ADMIN, "tab", "pupils", ip="10.0.0.5"),
        lambda: store.update_device(ADMIN, 1, mac="AA-BB-CC-DD-EE-FF"),
        lambda: store.remove_pause(ADMIN, 1),
        lambda: store.remove_override(ADMIN, 1),
        lambda: store.remove_device(ADMIN, 1),
    ]
    for i, step in enumerate(steps, 1):
        step()
        assert _counts(store) == (i, i)
    actions = [e.action for e in reversed(store.audit())]
    assert actions == [
        "override.add", "pause.add", "device.add", "device.update", "pause.remove", "override.remove", "device.remove"
    ]  # fmt: skip
    assert store.audit()[-1].target == "override 1" and store.audit()[-1].actor == "root"
    store.touch_devices({})  # no audit, no serial
    assert _counts(store) == (7, 7)


def test_a_refused_or_failed_change_writes_nothing(store, tmp_path):
    with pytest.raises(Forbidden):
        store.add_override(LAN, "staff", "a.example", "allow", minutes=10)
    assert _counts(store) == (0, 0) and store.overrides() == []
    # the audit insert fails (table gone): the override and the serial bump roll back with it
    with sqlite3.connect(tmp_path / "state.db") as c:
        c.execute("ALTER TABLE audit RENAME TO audit_gone")
    with pytest.raises(sa.exc.OperationalError):
        store.add_override(ADMIN, "pupils", "a.example", "allow")
    assert store.serial() == 0 and store.overrides() == []


def test_teacher_limits(store):
    store.teacher_max_minutes = 480
    o = store.add_override(LAN, "pupils", "a.example", "allow", minutes=45)
    assert o.created_role == "teacher"
    with pytest.raises(Forbidden, match="at most 480"):
        store.add_override(LAN, "pupils", "b.example", "allow", minutes=481)
    with pytest.raises(Forbidden):
        store.add_override(LAN, "pupils", "b.example", "allow")  # no lasting rules
    with pytest.raises(Forbidden):
        store.add_override(LAN, "staff", "b.example", "block", minutes=10)
    with pytest.raises(Forbidden):
        store.remove_override(LAN, store.add_override(ADMIN, "staff", "c.example", "block").id)
    store.remove_override(LAN, o.id)
    assert store.add_pause(LAN, 30, group="pupils").group == "pupils"
    with pytest.raises(Forbidden):
        store.add_pause(LAN, 30, group="staff")
    with pytest.raises(Forbidden):
        store.add_pause(LAN, 30, client="10.0.0.9")  # an address's group is the configuration's: admins only
    d = store.add_device(ADMIN, "tab", "pupils", ip="10.0.0.5")
    assert store.add_pause(LAN, 30, client=f"device:{d.id}").client == f"device:{d.id}"
    assert {p.group or p.client for p in store.pauses(frozenset({"pupils"}))} == {"pupils", f"device:{d.id}"}
    with pytest.raises(Forbidden):
        store.add_user(LAN, "x", "admin", HASH)


def test_pauses(store):
    p = store.add_pause(ADMIN, 15, client="AA:BB:CC:DD:EE:FF")
    assert p.client == "aa:bb:cc:dd:ee:ff" and p.group is None
    q = store.add_pause(ADMIN, 15, client=" 10.0.0.7 ")
    assert q.client == "10.0.0.7"
    for kwargs in ({}, {"client": "10.0.0.7", "group": "pupils"}, {"client": "nobody"}, {"client": "device:9"}):
        with pytest.raises(StateError):
            store.add_pause(ADMIN, 15, **kwargs)
    assert [x.id for x in store.pauses()] == [p.id, q.id]
    assert store.live().next_expiry == p.expires_at
    store.remove_pause(ADMIN, p.id)
    with pytest.raises(NotFound):
        store.remove_pause(ADMIN, p.id)


def test_devices(store):
    d = store.add_device(ADMIN, "tab", "pupils", mac="AA-BB-CC-DD-EE-01", doh_id="tab1")
    assert (d.mac, d.doh_id, d.ip) == ("aa:bb:cc:dd:ee:01", "tab1", None)
    with pytest.raises(StateError, match="exists"):
        store.add_device(ADMIN, "tab2", "pupils", mac="aa:bb:cc:dd:ee:01")
    with pytest.raises(StateError, match="needs an ip"):
        store.add_device(ADMIN, "tab3", "pupils")
    with pytest.raises(StateError):
        store.update_device(ADMIN, d.id, colour="blue")
    u = store.update_device(ADMIN, d.id, group="staff", ip="10.0.0.8")
    assert (u.group, u.ip, u.mac) == ("staff", "10.0.0.8", "aa:bb:cc:dd:ee:01")
    with pytest.raises(Forbidden):
        store.update_device(LAN, d.id, group="pupils")
    seen = dt.datetime(2026, 12, 1, 8, 0, tzinfo=dt.UTC)
    store.touch_devices({d.id: seen})
    assert store.devices()[0].last_seen == seen
    store.add_pause(ADMIN, 5, client=f"device:{d.id}")
    store.remove_device(ADMIN, d.id)
    assert store.devices() == [] and store.pauses() == []  # its pauses go with it


def test_users_tokens_sessions(store):
    assert store.add_user(ADMIN, "root", "admin", HASH).groups == ()
    t = store.add_user(ADMIN, "lan", "teacher", HASH, ("pupils", "class-3a"))
    assert store.user("lan") == t and [u.name for u in store.users()] == ["lan", "root"]
    for bad in (("lan", "teacher", HASH, ("pupils",)), ("x", "teacher", HASH, ()), ("y", "boss", HASH, ())):
        with pytest.raises(StateError):
            store.add_user(ADMIN, *bad)  # type: ignore[arg-type]
    with pytest.raises(StateError, match="argon2id"):
        store.add_user(ADMIN, "z", "admin", "sha256:abc")
    token, secret = store.create_token(ADMIN, "backup", "lan")
    assert len(secret) >= 43 and token.user == "lan"
    with store.engine.connect() as c:  # only a hash of the secret is kept
        assert secret not in repr(c.execute(sa.select(schema.tokens)).fetchall())
    assert store.token_user(secret).name == "lan"  # type: ignore[union-attr]
    assert store.token_user("nope") is None
    assert store.tokens()[0].last_used is not None
    sid, csrf = store.create_session("lan", 8)
    assert store.session_user(sid) == (t, csrf)
    store.set_password(LAN, "lan", hash_password("new one"))  # ends its sessions
    assert store.session_user(sid) is None and verify_password(store.user("lan").password_hash, "new one")  # type: ignore[union-attr]
    with pytest.raises(Forbidden):
        store.set_password(LAN, "root", HASH)
    sid, _ = store.create_session("lan", 8)
    store.end_session(sid)
    assert store.session_user(sid) is None
    old, _ = store.create_session("lan", -1)  # expired
    assert store.session_user(old) is None
    store.revoke_token(ADMIN, "backup")
    assert store.token_user(secret) is None
    store.create_token(ADMIN, "t2", "lan")
    store.remove_user(ADMIN, "lan")
    assert store.user("lan") is None and store.tokens() == []
    with pytest.raises(NotFound):
        store.remove_user(ADMIN, "lan")
    actions = {e.action for e in store.audit()}
    assert {"user.add", "token.create", "session.login", "session.logout", "user.passwd", "user.remove"} <= actions


def test_reviews(store):
    r = store.add_review("pupils", "https://wiki.example/page", "category/adult/ut1-adult", "for homework")
    assert r.status == "open" and store.audit()[0].actor == "anonymous"
    d = store.add_review("staff", "games.example", "category/games", None)
    assert [x.id for x in store.reviews(groups=frozenset({"pupils"}))] == [r.id]
    with pytest.raises(Forbidden):
        store.decide_review(LAN, d.id, approve=True, minutes=30)
    ok = store.decide_review(LAN, r.id, approve=True, minutes=30)
    assert ok.status == "approved" and ok.decided_by == "lan" and ok.override_id is not None
    assert [(o.group, o.name, o.action) for o in store.overrides()] == [("pupils", "wiki.example", "allow")]
    with pytest.raises(StateError, match="already approved"):
        store.decide_review(ADMIN, r.id, approve=False)
    no = store.decide_review(ADMIN, d.id, approve=False, note="not for school")
    assert no.status == "denied" and no.override_id is None
    assert [x.id for x in store.reviews(status="open")] == []
    assert store.serial() == 1  # only the approval changed the live rules


def test_export_yaml(store):
    store.add_override(ADMIN, "pupils", "wiki.example", "allow", minutes=60)
    store.add_override(ADMIN, "pupils", "bad.example", "block")
    store.add_override(ADMIN, "staff", "x.example", "block")
    text = store.export_overrides_yaml()
    assert yaml.safe_load(text) == {
        "groups": {"pupils": {"allow": ["wiki.example"], "block": ["bad.example"]}, "staff": {"block": ["x.example"]}}
    }
    assert "# override 1 by root, until 20" in text and "# override 2 by root, until removed" in text
    assert yaml.safe_load(store.export_overrides_yaml(frozenset({"nobody"}))) == {"groups": {}}


def test_urls(tmp_path):
    class Cfg:
        class server:  # noqa: N801
            state_db = None
            state_dir = str(tmp_path)

    assert state_url(Cfg) == f"sqlite:///{tmp_path}/state.db"
    Cfg.server.state_db = "postgresql://fp@db.example/fp"  # type: ignore[assignment]
    assert state_url(Cfg) == "postgresql://fp@db.example/fp"
    with pytest.raises(StateError, match="expected sqlite"):
        Store.open("mysql://x/y")


WRITER = """
import sys, time
from filterproxy.state.model import Actor
from filterproxy.state.store import Store
s = Store.open(sys.argv[1])
o = s.add_override(Actor("root", "admin"), "pupils", "durable.example", "block")
print(o.id, flush=True)
time.sleep(60)
"""


def test_a_returned_change_survives_kill_9(tmp_path):
    url = f"sqlite:///{tmp_path}/state.db"
    p = subprocess.Popen([sys.executable, "-c", WRITER, url], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout is not None
        oid = int(p.stdout.readline())
    finally:
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
    s = Store.open(url)
    assert [(o.id, o.name) for o in s.overrides()] == [(oid, "durable.example")] and s.serial() == 1
    s.close()


def test_state_db_is_checked_in_the_config(tmp_path):
    from conftest import write_config

    from filterproxy.config import ConfigError, load_config

    groups = "groups: [home]\ndefault_group: home\n"
    cfg = write_config(tmp_path, "server:\n  state_db: mysql://fp@db/fp\n" + groups, {"home": "name: Home\n"})
    with pytest.raises(ConfigError, match=r"filterproxy.yaml:2: 'server.state_db' must be postgresql://"):
        load_config(str(cfg))
    cfg = write_config(
        tmp_path, "server:\n  state_db: postgresql://fp@db.example/fp\n" + groups, {"home": "name: Home\n"}
    )
    assert state_url(load_config(str(cfg))) == "postgresql://fp@db.example/fp"
