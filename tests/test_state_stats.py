"""Statistics (filterproxy.state.stats): the counter, the upsert, roll-up, retention and the series shape,
on SQLite and on a real PostgreSQL (tests/pg.py)."""

from __future__ import annotations

import datetime as dt
import random
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from conftest import write_config
from pg import postgres_server, postgres_url  # noqa: F401  (fixtures)

from filterproxy.config import ConfigError, load_config
from filterproxy.state import schema, stats
from filterproxy.state.stats import StatsCounter, StatsWriter
from filterproxy.state.store import StateError, Store

NOW = 1_765_000_800  # 2025-12-06 06:00:00 UTC, a whole hour
DAY = 86400


def _open(url: str) -> sa.Engine:
    return Store.open(url).engine  # the store's own engine settings (SQLite WAL + BEGIN IMMEDIATE, psycopg 3)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.e2e)])  # e2e: a PostgreSQL server
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[sa.Engine]:
    url = request.getfixturevalue("postgres_url") if request.param == "postgresql" else f"sqlite:///{tmp_path}/s.db"
    e = _open(url)
    yield e
    e.dispose()


def _rows(engine: sa.Engine, table: sa.Table, series: bool = False) -> list[tuple]:
    """The table's rows (without the pre-added series rows, unless ``series``)."""
    q = sa.select(table).order_by(*table.primary_key.columns)
    if not series:
        q = q.where(table.c.category != "*")
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(q)]


def test_counter_keys_by_minute_and_is_off_until_enabled() -> None:
    c = StatsCounter()
    c.add("pupils", "adult", "block", "udp", 3, now=NOW + 5)
    assert c.take() == {}  # off: a process without a state database keeps nothing
    c.enabled = True
    c.add("pupils", "adult", "block", "udp", 3, now=NOW + 5)
    c.add("pupils", "adult", "block", "udp", 2, now=NOW + 59)
    c.add("pupils", "adult", "block", "udp", 1, now=NOW + 60)
    c.add("", "", "allow", "http", 1, now=NOW)
    assert c.take() == {
        (NOW, "pupils", "adult", "block", "udp"): 5,
        (NOW + 60, "pupils", "adult", "block", "udp"): 1,
        (NOW, "unknown", "none", "allow", "http"): 1,
    }
    assert c.take() == {}


def test_counter_is_bounded_and_sheds_the_oldest_minutes() -> None:
    c = StatsCounter(max_keys=3)
    c.enabled = True
    for i in range(5):
        c.add("g", "none", "allow", "udp", 10, now=NOW + 60 * i)
    kept = c.take()
    assert sorted(k[0] for k in kept) == [NOW + 120, NOW + 180, NOW + 240]
    assert c.dropped == 20


def test_two_flushes_add_up(engine: sa.Engine) -> None:
    key = (NOW, "pupils", "adult", "block", "udp")
    stats.write(
        engine, {key: 3, (NOW, "pupils", "none", "allow", "udp"): 7, (NOW + 60, "staff", "x", "allow", "tcp"): 1}
    )
    stats.write(engine, {key: 4})
    assert _rows(engine, schema.stats_minute) == [
        (NOW, "pupils", "adult", "block", "udp", 7),
        (NOW, "pupils", "none", "allow", "udp", 7),
        (NOW + 60, "staff", "x", "allow", "tcp", 1),
    ]
    day = NOW - NOW % DAY
    assert _rows(engine, schema.stats_day, series=True) == [  # the same counts per day, and the series rows
        (day, "*", "*", "allow", "*", 8),
        (day, "*", "*", "block", "*", 7),
        (day, "pupils", "*", "allow", "*", 7),
        (day, "pupils", "*", "block", "*", 7),
        (day, "pupils", "adult", "block", "udp", 7),
        (day, "pupils", "none", "allow", "udp", 7),
        (day, "staff", "*", "allow", "*", 1),
        (day, "staff", "x", "allow", "tcp", 1),
    ]


def test_a_failed_write_keeps_counting_and_retries(engine: sa.Engine, tmp_path: Path) -> None:
    c = StatsCounter()
    broken = sa.create_engine(f"sqlite:///{tmp_path}/missing/dir/x.db")  # cannot open: an outage
    w = StatsWriter(broken, 60, retention_days=90, housekeeping=False, counter=c)
    c.enabled = True
    c.add("pupils", "adult", "block", "udp", 2, now=NOW)
    assert not w.flush()
    c.add("pupils", "adult", "block", "udp", 1, now=NOW + 1)
    w.engine = engine  # the database is back
    assert w.flush()
    assert _rows(engine, schema.stats_minute) == [(NOW, "pupils", "adult", "block", "udp", 3)]


def test_roll_up_after_seven_days(engine: sa.Engine) -> None:
    old = NOW - 8 * DAY  # an hour 8 days ago: its minutes go, its hour row stays
    recent = NOW - 6 * DAY
    counts = {
        (old, "pupils", "adult", "block", "udp"): 1,
        (old + 60, "pupils", "adult", "block", "udp"): 2,
        (old + 3540, "pupils", "adult", "block", "udp"): 3,
        (old + 3600, "pupils", "adult", "block", "udp"): 4,
        (recent, "pupils", "adult", "block", "udp"): 5,
    }
    stats.write(engine, counts)
    stats.write(engine, {(old, "pupils", "none", "allow", "tcp"): 9})
    assert stats.roll_up(engine, now=NOW) == 5 * 3  # each with its two series rows
    assert _rows(engine, schema.stats_hour) == [
        (old, "pupils", "adult", "block", "udp", 6),
        (old, "pupils", "none", "allow", "tcp", 9),
        (old + 3600, "pupils", "adult", "block", "udp", 4),
        (recent, "pupils", "adult", "block", "udp", 5),
    ]
    assert _rows(engine, schema.stats_minute) == [(recent, "pupils", "adult", "block", "udp", 5)]
    assert stats.roll_up(engine, now=NOW) == 0
    # a month's totals read the same before and after
    window = (_at(NOW - 10 * DAY), _at(NOW))
    assert stats.stats(engine, *window, 3600, now=NOW)["totals"] == [
        {"group": "pupils", "category": "adult", "action": "block", "protocol": "udp", "count": 15},
        {"group": "pupils", "category": "none", "action": "allow", "protocol": "tcp", "count": 9},
    ]


def test_retention_deletes_old_rows(engine: sa.Engine) -> None:
    stats.write(
        engine, {(NOW - 91 * DAY, "g", "none", "allow", "udp"): 1, (NOW - 89 * DAY, "g", "none", "allow", "udp"): 2}
    )
    stats.roll_up(engine, now=NOW)
    stats.write(engine, {(NOW - 60, "g", "none", "allow", "udp"): 3})
    stats.expire(engine, 90, now=NOW)
    assert [r[5] for r in _rows(engine, schema.stats_hour)] == [2, 3]
    assert [r[5] for r in _rows(engine, schema.stats_day)] == [2, 3]
    stats.expire(engine, 1, now=NOW)
    assert [r[5] for r in _rows(engine, schema.stats_hour)] == [3]
    assert [r[5] for r in _rows(engine, schema.stats_minute)] == [3]


def _at(t: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(t, dt.UTC)


def test_series_shape(engine: sa.Engine) -> None:
    stats.write(
        engine,
        {
            (NOW, "pupils", "adult", "block", "udp"): 2,
            (NOW + 60, "pupils", "adult", "block", "http"): 1,
            (NOW + 120, "staff", "none", "allow", "udp"): 5,
            (NOW + 3600, "pupils", "none", "allow", "udp"): 7,  # outside [from, to)
            (NOW - 9 * DAY, "pupils", "adult", "block", "udp"): 4,  # an hour row after the roll-up
        },
    )
    stats.roll_up(engine, now=NOW)
    out = stats.stats(engine, _at(NOW), _at(NOW + 3600), 120, now=NOW)
    assert out == {
        "from": "2025-12-06T06:00:00+00:00",
        "to": "2025-12-06T07:00:00+00:00",
        "step": 120,
        "group": None,
        "series": [
            {"action": "allow", "counts": [0, 5] + [0] * 28},
            {"action": "block", "counts": [3] + [0] * 29},
        ],
        "totals": [
            {"group": "pupils", "category": "adult", "action": "block", "protocol": "http", "count": 1},
            {"group": "pupils", "category": "adult", "action": "block", "protocol": "udp", "count": 2},
            {"group": "staff", "category": "none", "action": "allow", "protocol": "udp", "count": 5},
        ],
    }
    only = stats.stats(engine, _at(NOW - 10 * DAY), _at(NOW), 86400, group="pupils", now=NOW)
    assert only["series"] == [{"action": "block", "counts": [0, 4] + [0] * 8}]  # the hour row, day 2 of 10
    assert [t["count"] for t in only["totals"]] == [4]
    for bad in ((NOW, NOW, 60), (NOW, NOW + 60, 30), (NOW, NOW + 400 * DAY, 60)):
        with pytest.raises(ValueError):
            stats.stats(engine, _at(bad[0]), _at(bad[1]), bad[2])


def test_any_window_adds_up_from_days_hours_and_minutes(engine: sa.Engine) -> None:
    """Windows not aligned to anything: totals (day + hour + minute rows) and series equal a plain sum."""
    rnd = random.Random(7)
    counts = {
        (
            NOW - rnd.randrange(6 * DAY) // 60 * 60,
            rnd.choice("ab"),
            rnd.choice("xy"),
            rnd.choice(("allow", "block")),
            "udp",
        ): rnd.randint(1, 9)
        for _ in range(400)
    }
    stats.write(engine, counts)
    for _ in range(40):
        step = rnd.choice((60, 300, 3600, 7200, DAY))
        lo = NOW - rnd.randrange(6 * DAY)
        lo -= lo % step if rnd.random() < 0.5 else 0  # half of them start on a step
        hi = lo + rnd.randrange(60, 6 * DAY)
        group = rnd.choice((None, "a"))
        out = stats.stats(engine, _at(lo), _at(hi), step, group=group, now=NOW)
        want = {k: n for k, n in counts.items() if lo <= k[0] < hi and group in (None, k[1])}
        got = {(t["group"], t["category"], t["action"]): t["count"] for t in out["totals"]}
        plain: dict[tuple, int] = {}
        for k, n in want.items():
            plain[k[1:4]] = plain.get(k[1:4], 0) + n
        assert got == plain, (lo, hi, step, group)
        by_action = {s["action"]: sum(s["counts"]) for s in out["series"]}
        assert by_action == {a: sum(n for k, n in want.items() if k[3] == a) for a in by_action}


@pytest.mark.parametrize(
    "text, why",
    [
        (
            "admin:\n  stats_retention_days: 7\n",
            r"filterproxy\.yaml:2: 'admin\.stats_retention_days' must be 8 to 3660",
        ),
        ("admin:\n  stats_retention_days: ninety\n", r"filterproxy\.yaml:2: .*stats_retention_days"),
        ("admin:\n  stats_flush_seconds: 0\n", r"filterproxy\.yaml:2: 'admin\.stats_flush_seconds' must be over 0"),
    ],
)
def test_stats_settings_are_checked_with_file_and_line(tmp_path: Path, text: str, why: str) -> None:
    with pytest.raises(ConfigError, match=why):
        load_config(str(write_config(tmp_path, text, {"kids": "name: Kids\n"})))


def test_stats_settings_defaults_and_values(tmp_path: Path) -> None:
    assert (load_config().admin.stats_retention_days, load_config().admin.stats_flush_seconds) == (90, 30.0)
    cfg = load_config(
        str(
            write_config(
                tmp_path, "admin: {stats_retention_days: 30, stats_flush_seconds: 1}\n", {"kids": "name: Kids\n"}
            )
        )
    )
    assert (cfg.admin.stats_retention_days, cfg.admin.stats_flush_seconds) == (30, 1.0)


def test_the_store_answers_stats(tmp_path: Path) -> None:
    store = Store.open(f"sqlite:///{tmp_path}/state.db")
    try:
        stats.write(store.engine, {(NOW, "pupils", "adult", "block", "doh"): 2})
        out = stats.answer(store, _at(NOW), _at(NOW + 120), 60)
        assert out["series"] == [{"action": "block", "counts": [2, 0]}] and out["totals"][0]["protocol"] == "doh"
        with pytest.raises(StateError, match="step"):
            stats.answer(store, _at(NOW), _at(NOW + 120), 59)
    finally:
        store.close()


def test_the_main_process_writer_rolls_up_and_expires(engine: sa.Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stats, "FIRST_TIDY", 0.0)
    now = time.time()
    old, ancient = int(now - 8 * DAY) // 60 * 60, int(now - 100 * DAY) // 60 * 60
    stats.write(engine, {(old, "g", "none", "allow", "udp"): 1, (ancient, "g", "none", "allow", "udp"): 1})
    c = StatsCounter()
    w = StatsWriter(engine, 0.05, retention_days=90, housekeeping=True, counter=c).start()
    try:
        deadline = time.monotonic() + 10
        while _rows(engine, schema.stats_minute) or len(_rows(engine, schema.stats_hour)) != 1:
            assert time.monotonic() < deadline, "no roll-up / retention pass ran"
            time.sleep(0.05)
        assert [r[0] for r in _rows(engine, schema.stats_hour)] == [old - old % 3600]
    finally:
        w.stop()
