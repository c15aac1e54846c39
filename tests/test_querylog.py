"""filterproxy.querylog: anonymisation, daily files, retention, off-the-hot-path writing."""

from __future__ import annotations

import datetime as dt
import json
import os
import threading
import time
from pathlib import Path

import pytest

from filterproxy.querylog import QueryLog, anonymise_ip
from filterproxy.verdict import Action

UTC7 = dt.timezone(dt.timedelta(hours=7))  # Asia/Ho_Chi_Minh has no DST


@pytest.mark.parametrize(
    "address, expected",
    [
        ("192.168.1.23", "192.168.1.0/24"),
        ("10.20.30.40", "10.20.30.0/24"),
        ("2001:db8:abcd:12:1:2:3:4", "2001:db8:abcd::/48"),
        ("2001:db8:abcd:ffff::1", "2001:db8:abcd::/48"),
        ("::ffff:203.0.113.9", "203.0.113.0/24"),  # IPv4-mapped: anonymised as IPv4
        ("[2001:db8:1:2::5]", "2001:db8:1::/48"),  # bracketed
        ("fe80::1%eth0", "fe80::/48"),  # scope id dropped
        ("not-an-ip", "invalid"),
        ("", "invalid"),
    ],
)
def test_anonymise_ip(address, expected):
    assert anonymise_ip(address) == expected


def read_day(path: Path, day: str) -> list[dict]:
    f = path / f"querylog-{day}.jsonl"
    return [json.loads(line) for line in f.read_text(encoding="utf-8").splitlines()]


def _today_at(hour: int, minute: int) -> dt.datetime:
    return dt.datetime.now(UTC7).replace(hour=hour, minute=minute, second=0, microsecond=0)


def test_entries_are_anonymised_by_default(tmp_path):
    when = _today_at(9, 15)
    day = when.date().isoformat()
    with QueryLog(str(tmp_path), tz=UTC7) as ql:
        ql.log(when, "192.168.1.23", "primary", "example.com", "A", Action.BLOCK, "adult")
        ql.log(when.timestamp(), "2001:db8:abcd:12::99", "teen", "xn--bcher-kva.example", "AAAA", "allow", None)
    rows = read_day(tmp_path, day)
    assert rows[0] == {
        "time": f"{day}T09:15:00.000+07:00",
        "client": "192.168.1.0/24",
        "group": "primary",
        "qname": "example.com",
        "qtype": "A",
        "action": "block",
        "category": "adult",
    }
    assert rows[1]["client"] == "2001:db8:abcd::/48"
    assert rows[1]["category"] is None
    text = (tmp_path / f"querylog-{day}.jsonl").read_text()
    assert "192.168.1.23" not in text and "::99" not in text


def test_full_addresses_only_when_turned_off_explicitly(tmp_path, caplog):
    when = _today_at(9, 15)
    with caplog.at_level("WARNING", logger="filterproxy.querylog"):
        ql = QueryLog(str(tmp_path), anonymise=False, tz=UTC7)
    assert "anonymisation is OFF" in caplog.text
    ql.log(when, "192.168.1.23", "staff", "example.org", "A", "allow", None)
    ql.close()
    assert read_day(tmp_path, when.date().isoformat())[0]["client"] == "192.168.1.23"


def test_one_file_per_local_day(tmp_path):
    # 23:59:59 and 00:00:01 local time, logged as Unix times: two files, split at local midnight
    before = dt.datetime(2026, 3, 2, 23, 59, 59, tzinfo=UTC7).timestamp()
    after = dt.datetime(2026, 3, 3, 0, 0, 1, tzinfo=UTC7).timestamp()
    with QueryLog(str(tmp_path), tz=UTC7, retention_days=3650) as ql:
        ql.log(before, "10.0.0.1", "primary", "a.example", "A", "allow")
        ql.log(after, "10.0.0.1", "primary", "b.example", "A", "allow")
    assert [r["qname"] for r in read_day(tmp_path, "2026-03-02")] == ["a.example"]
    assert [r["qname"] for r in read_day(tmp_path, "2026-03-03")] == ["b.example"]


def _touch_day(path: Path, day: dt.date) -> Path:
    f = path / f"querylog-{day.isoformat()}.jsonl"
    f.write_text('{"qname":"old.example"}\n')
    return f


def test_retention_deletes_old_files_at_start_and_keeps_others(tmp_path):
    today = dt.datetime.now(UTC7).date()
    days = {n: _touch_day(tmp_path, today - dt.timedelta(days=n)) for n in (0, 1, 6, 7, 8, 30)}
    other = tmp_path / "notes.txt"
    other.write_text("not a log file")
    bad = tmp_path / "querylog-2026-13-45.jsonl"
    bad.write_text("x")
    ql = QueryLog(str(tmp_path), retention_days=7, tz=UTC7)
    ql.close()
    # at most 7 daily files, today included: nothing older than 7 days survives
    assert {n for n, f in days.items() if f.exists()} == {0, 1, 6}
    assert other.exists() and bad.exists()


def test_sweep_on_day_change(tmp_path):
    ql = QueryLog(str(tmp_path), retention_days=2, tz=UTC7)
    try:
        removed = ql.sweep(today=dt.date(2026, 5, 10))
        assert removed == []
        _touch_day(tmp_path, dt.date(2026, 5, 8))
        _touch_day(tmp_path, dt.date(2026, 5, 9))
        assert ql.sweep(today=dt.date(2026, 5, 10)) == ["querylog-2026-05-08.jsonl"]
        assert (tmp_path / "querylog-2026-05-09.jsonl").exists()
    finally:
        ql.close()


def test_entries_already_past_retention_are_never_written(tmp_path):
    old = dt.datetime.now(UTC7) - dt.timedelta(days=30)
    with QueryLog(str(tmp_path), retention_days=7, tz=UTC7) as ql:
        ql.log(old, "10.0.0.1", "primary", "old.example", "A", "allow")
        ql.log(dt.datetime.now(UTC7), "10.0.0.1", "primary", "new.example", "A", "allow")
    names = sorted(os.listdir(tmp_path))
    assert names == [f"querylog-{dt.datetime.now(UTC7).date().isoformat()}.jsonl"]


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "7"])
def test_retention_must_be_whole_days(tmp_path, bad):
    with pytest.raises(ValueError):
        QueryLog(str(tmp_path), retention_days=bad)


def test_log_is_cheap_and_never_blocks(tmp_path):
    ql = QueryLog(str(tmp_path), tz=UTC7, max_queue=1000)
    gate = threading.Event()
    original = ql._format

    def slow_format(item):  # a disk that cannot keep up
        gate.wait(10)
        return original(item)

    ql._format = slow_format  # type: ignore[method-assign]
    try:
        t0 = time.perf_counter()
        for i in range(5000):
            ql.log(time.time(), "10.0.0.1", "primary", f"n{i}.example", "A", "allow")
        elapsed = time.perf_counter() - t0
        assert elapsed < 1.0, f"log() blocked: {elapsed:.2f}s for 5000 calls"
        assert ql.dropped >= 3000  # the queue holds 1000; the rest is dropped and counted
    finally:
        gate.set()
        ql.close()
    assert ql.written + ql.dropped == 5000


def test_file_permissions_are_private(tmp_path):
    with QueryLog(str(tmp_path / "ql"), tz=UTC7) as ql:
        ql.log(time.time(), "10.0.0.1", "primary", "a.example", "A", "allow")
    d = tmp_path / "ql"
    (f,) = list(d.iterdir())
    assert f.stat().st_mode & 0o007 == 0  # nothing for "others"
    assert d.stat().st_mode & 0o007 == 0


def test_flush_waits_for_the_writer(tmp_path):
    ql = QueryLog(str(tmp_path), tz=UTC7)
    try:
        now = dt.datetime.now(UTC7)
        for i in range(100):
            ql.log(now, "10.1.2.3", "teen", f"n{i}.example", "A", "allow")
        ql.flush()
        assert len(read_day(tmp_path, now.date().isoformat())) == 100
    finally:
        ql.close()
