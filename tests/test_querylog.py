"""filterproxy.querylog: anonymisation, daily files, retention, off-the-hot-path writing."""

from __future__ import annotations

import datetime as dt
import io
import json
import os
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from zoneinfo import ZoneInfo

import pytest

from filterproxy.querylog import QueryLog, anonymise_ip
from filterproxy.verdict import Action, Reason

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


def read_day(path: Path, day: str, tz: dt.tzinfo = UTC7) -> list[dict]:
    from filterproxy.querylog import parse

    f = path / f"querylog-{day}.qlog"
    return [rec for _when, rec in parse(f.read_text(encoding="utf-8"), tz)]


def _today_at(hour: int, minute: int) -> dt.datetime:
    return dt.datetime.now(UTC7).replace(hour=hour, minute=minute, second=0, microsecond=0)


def test_entries_are_anonymised_by_default(tmp_path):
    when = _today_at(9, 15)
    day = when.date().isoformat()
    with QueryLog(str(tmp_path), tz=UTC7) as ql:
        ql.log(
            when,
            "192.168.1.23",
            "primary",
            "example.com",
            "A",
            Action.BLOCK,
            reason=Reason.CATEGORY,
            list_id="default-adult",
            category="adult",
        )
        ql.log(when.timestamp(), "2001:db8:abcd:12::99", "teen", "xn--bcher-kva.example", "AAAA", "allow")
    rows = read_day(tmp_path, day)
    assert rows[0] == {
        "time": f"{day}T09:15:00.000+07:00",
        "client": "192.168.1.0/24",
        "proto": "dns",
        "group": "primary",
        "name": "example.com",
        "qtype": "A",
        "action": "block",
        "reason": "category",
        "list": "default-adult",
        "category": "adult",
    }
    assert rows[1]["client"] == "2001:db8:abcd::/48"
    assert rows[1]["category"] is None and rows[1]["reason"] is None  # unset: empty on disk, null when read
    text = (tmp_path / f"querylog-{day}.qlog").read_text()
    assert "192.168.1.23" not in text and "::99" not in text


def test_full_addresses_only_when_turned_off_explicitly(tmp_path, caplog):
    when = _today_at(9, 15)
    with caplog.at_level("WARNING", logger="filterproxy.querylog"):
        ql = QueryLog(str(tmp_path), anonymise=False, tz=UTC7)
    assert "anonymisation is OFF" in caplog.text
    ql.log(when, "192.168.1.23", "staff", "example.org", "A", "allow")
    ql.close()
    assert read_day(tmp_path, when.date().isoformat())[0]["client"] == "192.168.1.23"


def test_one_file_per_local_day(tmp_path):
    # 23:59:59 and 00:00:01 local time, logged as Unix times: two files, split at local midnight
    before = dt.datetime(2026, 3, 2, 23, 59, 59, tzinfo=UTC7).timestamp()
    after = dt.datetime(2026, 3, 3, 0, 0, 1, tzinfo=UTC7).timestamp()
    with QueryLog(str(tmp_path), tz=UTC7, retention_days=3650) as ql:
        ql.log(before, "10.0.0.1", "primary", "a.example", "A", "allow")
        ql.log(after, "10.0.0.1", "primary", "b.example", "A", "allow")
    assert [r["name"] for r in read_day(tmp_path, "2026-03-02")] == ["a.example"]
    assert [r["name"] for r in read_day(tmp_path, "2026-03-03")] == ["b.example"]


def _touch_day(path: Path, day: dt.date) -> Path:
    f = path / f"querylog-{day.isoformat()}.qlog"
    f.write_text("#filterproxy-querylog 1\n")
    return f


def test_retention_deletes_old_files_at_start_and_keeps_others(tmp_path):
    today = dt.datetime.now(UTC7).date()
    days = {n: _touch_day(tmp_path, today - dt.timedelta(days=n)) for n in (0, 1, 6, 7, 8, 30)}
    other = tmp_path / "notes.txt"
    other.write_text("not a log file")
    bad = tmp_path / "querylog-2026-13-45.qlog"
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
        assert ql.sweep(today=dt.date(2026, 5, 10)) == ["querylog-2026-05-08.qlog"]
        assert (tmp_path / "querylog-2026-05-09.qlog").exists()
    finally:
        ql.close()


def test_entries_already_past_retention_are_never_written(tmp_path):
    old = dt.datetime.now(UTC7) - dt.timedelta(days=30)
    with QueryLog(str(tmp_path), retention_days=7, tz=UTC7) as ql:
        ql.log(old, "10.0.0.1", "primary", "old.example", "A", "allow")
        ql.log(dt.datetime.now(UTC7), "10.0.0.1", "primary", "new.example", "A", "allow")
    names = sorted(os.listdir(tmp_path))
    assert names == [f"querylog-{dt.datetime.now(UTC7).date().isoformat()}.qlog"]


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "7"])
def test_retention_must_be_whole_days(tmp_path, bad):
    with pytest.raises(ValueError):
        QueryLog(str(tmp_path), retention_days=bad)


def test_log_is_cheap_and_never_blocks(tmp_path):
    ql = QueryLog(str(tmp_path), tz=UTC7, max_queue=1000)
    gate = threading.Event()
    original = ql._encode

    def slow_encode(wall, refs):  # a disk that cannot keep up
        gate.wait(10)
        return original(wall, refs)

    ql._encode = slow_encode  # type: ignore[method-assign]
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


# ----------------------------------------------------------------------------- per-process files, the reader


def _write(path: Path, name: str, rows: list, tail: str = "") -> None:
    """A daily file in the compact form (QueryLog._encode): dict rows become T/C/D/record lines, strings are
    written as they are (bad lines); ``tail`` is appended without a newline (a line cut by a crash)."""
    path.mkdir(parents=True, exist_ok=True)
    out = ["#filterproxy-querylog 1"]
    for i, r in enumerate(rows):
        if isinstance(r, str):
            out.append(r)
            continue
        when = dt.datetime.fromisoformat(r["time"])
        if when.tzinfo is None:
            when = when.astimezone()
        sec = int(when.timestamp())
        fields = [r.get("group", "teen"), "dns", r["name"], "A", r.get("action", "allow"), "", "", ""]
        out += [f"T {sec}", f"C {i} 10.0.0.0/24", f"D {i}\t" + "\t".join(fields), f"{when.microsecond // 1000} {i} {i}"]
    (path / name).write_text("\n".join(out) + "\n" + tail)


def test_reader_merges_the_processes_files_in_time_order_and_tolerates_bad_lines(tmp_path):
    rec = lambda t, name, **kw: {"time": f"2026-03-02T{t}+07:00", "group": "teen", "name": name, **kw}  # noqa: E731
    _write(tmp_path, "querylog-2026-03-02.dns-11.qlog", [rec("09:00:00.000", "a"), rec("09:00:02.000", "c")])
    _write(
        tmp_path,
        "querylog-2026-03-02.http-12.qlog",
        [rec("09:00:01.000", "b", action="block"), "not a record", "5 77 99", "T x"],  # bad, undefined ids
        tail="12 0 0",  # cut by a crash: never whole, never read
    )
    old = {"time": "2026-03-01T23:00:00.000+07:00", "name": "old.example", "group": "kids", "action": "allow"}
    _write(tmp_path, "querylog-2026-03-01.dns-3.qlog", [old])
    assert [r["name"] for r in ql_read(tmp_path)] == ["old.example", "a", "b", "c"]
    since = dt.datetime(2026, 3, 2, 9, 0, 1, tzinfo=UTC7)
    assert [r["name"] for r in ql_read(tmp_path, since=since)] == ["b", "c"]
    assert [r["name"] for r in ql_read(tmp_path, group="kids")] == ["old.example"]
    assert [r["name"] for r in ql_read(tmp_path, action="block")] == ["b"]
    assert ql_read(tmp_path, tz=UTC7)[1]["time"] == "2026-03-02T09:00:00.000+07:00"


def test_a_reopened_file_starts_its_id_tables_again_and_a_cut_line_stays_apart(tmp_path):
    day = dt.datetime.now(UTC7)
    with QueryLog(str(tmp_path), tz=UTC7) as ql:
        ql.log(day, "10.0.0.1", "teen", "a.example", "A", "allow")
    f = tmp_path / f"querylog-{day.date().isoformat()}.qlog"
    with open(f, "a") as out:
        out.write("3 0")  # a crash in the middle of a line
    with QueryLog(str(tmp_path), tz=UTC7) as ql:  # a restart appends: new ids, after a header on a new line
        ql.log(day, "10.9.9.9", "kids", "b.example", "AAAA", "block")
    rows = read_day(tmp_path, day.date().isoformat())
    assert [(r["name"], r["client"], r["group"]) for r in rows] == [
        ("a.example", "10.0.0.0/24", "teen"),
        ("b.example", "10.9.9.0/24", "kids"),
    ]


def ql_read(path: Path, **kw) -> list[dict]:
    from filterproxy.querylog import read

    return list(read(str(path), **kw))


def test_parse_since_reads_iso_in_the_configured_zone_and_names_the_bad_input():
    from filterproxy.querylog import parse_since

    assert parse_since("2026-03-02", UTC7) == dt.datetime(2026, 3, 2, tzinfo=UTC7)
    assert parse_since("2026-03-02T08:30+00:00", UTC7) == dt.datetime(2026, 3, 2, 8, 30, tzinfo=dt.UTC)
    with pytest.raises(ValueError, match=r"--since 'last week': expected an ISO date or time"):
        parse_since("last week", UTC7)


def _cfg(tmp_path: Path, enabled: bool, path: str | None = None) -> SimpleNamespace:
    return SimpleNamespace(
        path=str(tmp_path / "filterproxy.yaml"),
        querylog=SimpleNamespace(enabled=enabled, path=path, retention_days=2, anonymise=True),
        server=SimpleNamespace(state_dir=str(tmp_path / "state")),
        timezone="Asia/Ho_Chi_Minh",
    )


def test_command_says_when_the_log_is_off(tmp_path):
    from filterproxy.querylog import command

    out, err = io.StringIO(), io.StringIO()
    with pytest.raises(ValueError, match=r"filterproxy.yaml: the query log is off \(querylog.enabled: false\)"):
        command(_cfg(tmp_path, False), since=None, group=None, action=None, as_json=True, out=out, err=err)
    # turned off after an investigation: what is left is still shown, with a note
    today = dt.date.today().isoformat()
    rows = [{"time": f"{today}T10:00:00", "name": "x"}]
    _write(tmp_path / "state" / "querylog", f"querylog-{today}.dns-1.qlog", rows)
    assert command(_cfg(tmp_path, False), since=None, group=None, action=None, as_json=True, out=out, err=err) == 0
    assert json.loads(out.getvalue())["name"] == "x" and "the query log is off" in err.getvalue()


def test_one_writer_per_process_and_folder(tmp_path):
    from filterproxy.querylog import acquire, release

    assert acquire(_cfg(tmp_path, False), "dns") is None  # off by default: nothing opened, no folder
    assert not (tmp_path / "state").exists()
    cfg = _cfg(tmp_path, True)
    a, b = acquire(cfg, "dns"), acquire(cfg, "dns")
    h = acquire(cfg, "http")
    assert a is b and a is not h and a.path == str(tmp_path / "state" / "querylog")
    release(a)
    assert not a._closed  # still used by the second listener
    a.put(time.monotonic(), "10.9.8.7", ("teen", "dns", "a.example", "A", "allow", None, None, None))
    h.put(time.monotonic(), "10.9.8.7", ("teen", "http", "a.example", "GET", "allow", "default", None, None))
    release(b)
    release(h)
    assert a._closed and h._closed
    names = sorted(p.name for p in (tmp_path / "state" / "querylog").iterdir())
    day = dt.datetime.now(ZoneInfo("Asia/Ho_Chi_Minh")).date().isoformat()
    assert names == [f"querylog-{day}.dns-{os.getpid()}.qlog", f"querylog-{day}.http-{os.getpid()}.qlog"]
    (rec,) = ql_read(tmp_path / "state" / "querylog", group="teen", action="allow")[:1]
    assert rec["client"] == "10.9.8.0/24" and rec["qtype"] == "A" and rec["proto"] == "dns"


def test_retention_covers_every_process_file(tmp_path):
    today = dt.datetime.now(UTC7).date()
    old = today - dt.timedelta(days=5)
    _write(tmp_path, f"querylog-{old}.dns-7.qlog", [])
    _write(tmp_path, f"querylog-{old}.http-8.qlog", [])
    _write(tmp_path, f"querylog-{today}.http-8.qlog", [])
    QueryLog(str(tmp_path), retention_days=2, tz=UTC7).close()
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"querylog-{today}.http-8.qlog"]


def test_the_bounded_buffer_counts_drops_in_the_metric(tmp_path):
    from filterproxy import metrics

    before = metrics.QUERYLOG_DROPPED.value()
    written = metrics.QUERYLOG_WRITTEN.value()
    ql = QueryLog(str(tmp_path), tz=UTC7, max_queue=10, interval=60)  # the writer sleeps: the buffer fills
    what = ("teen", "dns", "a.example", "A", "allow", None, None, None)
    for _ in range(25):
        ql.put(time.monotonic(), "10.0.0.1", what)
    assert ql.queued() == 10 and ql.dropped == 15
    ql.close()
    assert metrics.QUERYLOG_DROPPED.value() - before == 15
    assert metrics.QUERYLOG_WRITTEN.value() - written == 10


def test_a_packed_reply_keeps_its_record_when_its_ttls_age():
    from filterproxy.dns.cache import ENTRY_LOG, aged, make_entry

    what = 0x01000007  # a verdict id (QueryLog.verdict)
    msg = b"\x00\x01" + bytes(40)
    e = make_entry(msg, [(30, 300)], expires=1e9, now=1000.0, fixed=False, slot=3, logged=what)
    assert e[ENTRY_LOG] == what and aged(e, 1100)[ENTRY_LOG] == what
    assert make_entry(msg, [], expires=1e9, now=1000.0, fixed=True, slot=3)[ENTRY_LOG] == 0  # the log is off


def test_config_errors_name_the_line_and_a_relative_path_follows_the_config_file(tmp_path):
    from filterproxy.config import ConfigError, load_config

    bad = tmp_path / "bad.yaml"
    bad.write_text("querylog:\n  enabled: true\n  retention_days: 0\n")
    with pytest.raises(ConfigError, match=r"bad.yaml:3: 'querylog.retention_days' must be a whole number of days"):
        load_config(str(bad))
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "kids.yaml").write_text("name: Kids\n")
    ok = tmp_path / "ok.yaml"
    ok.write_text("querylog:\n  enabled: true\n  path: logs/ql\n")
    assert load_config(str(ok)).querylog.path == str(tmp_path / "logs" / "ql")


# ----------------------------------------------------------------------------- id tables, the hot path's buffers

FIELDS = ("teen", "dns", "a.example", "A", "allow", "default", None, None)


def test_ids_are_deduplicated_per_network_and_per_verdict(tmp_path):
    with QueryLog(str(tmp_path), tz=UTC7) as ql:
        a, b, c = ql.client("10.1.2.3"), ql.client("10.1.2.200"), ql.client("10.1.3.1")
        assert a == b != c and a != 0 and c != 0  # one id per /24, never 0 ("no record")
        v = ql.verdict(FIELDS)
        assert ql.verdict(list(FIELDS)) == v and ql.verdict(FIELDS[:2] + ("b.example",) + FIELDS[3:]) != v
        assert ql.clients.value(a) == "10.1.2.0/24" and ql.verdicts.value(v) == FIELDS
        with pytest.raises(ValueError):
            ql.verdict(FIELDS[:7])


def test_the_hot_path_buffer_writes_records_from_two_ints(tmp_path):
    """What the UDP loops do per packed hit: two appends (time, client id << 32 | verdict id)."""
    with QueryLog(str(tmp_path), tz=UTC7) as ql:
        ids, add_time, add_id, cap, drop = ql.buffer()
        ref = ql.client("192.168.7.9") << 32
        blocked = ql.verdict(("kids", "dns", "bad.example", "AAAA", "block", "category", "adult", "adult"))
        for vid in (ql.verdict(FIELDS), blocked, blocked):
            add_time(time.monotonic())
            add_id(ref | vid)
        assert len(ids) == 3 and cap == ql.cap
    rows = read_day(tmp_path, dt.datetime.now(UTC7).date().isoformat())
    assert [(r["client"], r["group"], r["name"], r["qtype"], r["action"], r["list"]) for r in rows] == [
        ("192.168.7.0/24", "teen", "a.example", "A", "allow", None),
        ("192.168.7.0/24", "kids", "bad.example", "AAAA", "block", "adult"),
        ("192.168.7.0/24", "kids", "bad.example", "AAAA", "block", "adult"),
    ]
    assert rows[0]["reason"] == "default" and rows[1]["category"] == "adult"
    text = (tmp_path / f"querylog-{dt.datetime.now(UTC7).date().isoformat()}.qlog").read_text()
    assert text.count("\nD ") == 2 and text.count("\nC ") == 1  # each id defined once per file


def test_a_new_id_generation_keeps_records_correct_and_tells_the_id_holders(tmp_path):
    rolled = []
    now = dt.datetime.now(UTC7)
    ql = QueryLog(str(tmp_path), tz=UTC7, max_verdicts=4, interval=60)  # one batch, written at close
    ql.on_roll(lambda: rolled.append(ql.verdicts.serial))
    names = [f"n{i}.example" for i in range(10)]
    vids = [ql.verdict(FIELDS[:2] + (n,) + FIELDS[3:]) for n in names]
    assert rolled == [2, 3]  # 10 verdicts in tables of 4: two new generations, the holders told each time
    assert len({v >> 24 for v in vids}) == 3 and len(set(vids)) == 10
    cid = ql.client("10.0.0.1")
    for vid in vids[4:]:  # the current and the previous generation resolve
        ql.put(now, cid, vid)
    ql.put(now, cid, vids[0])  # the first generation is gone: that record is dropped and counted, never mislabelled
    ql.put(now, "10.0.0.1", FIELDS[:2] + ("n2.example",) + FIELDS[3:])  # by its fields: a new id, written
    ql.close()
    rows = read_day(tmp_path, now.date().isoformat())
    assert [r["name"] for r in rows] == names[4:] + ["n2.example"]
    assert ql.dropped == 1 and ql.written == 7


def test_a_batch_spanning_midnight_goes_to_two_files_each_with_its_definitions(tmp_path):
    before = dt.datetime(2026, 3, 2, 23, 59, 59, 500_000, tzinfo=UTC7)
    after = dt.datetime(2026, 3, 3, 0, 0, 0, 250_000, tzinfo=UTC7)
    ql = QueryLog(str(tmp_path), tz=UTC7, retention_days=3650, interval=60)  # one batch, written at close
    for when, ip in ((before, "10.0.0.1"), (after, "10.0.0.2"), (before, "10.0.0.3")):  # not in time order
        ql.put(when, ip, FIELDS)
    ql.close()
    first, second = read_day(tmp_path, "2026-03-02"), read_day(tmp_path, "2026-03-03")
    assert [r["time"] for r in first] == ["2026-03-02T23:59:59.500+07:00"] * 2
    assert [(r["time"], r["client"], r["name"]) for r in second] == [
        ("2026-03-03T00:00:00.250+07:00", "10.0.0.0/24", "a.example")
    ]
