"""The RPZ zone's SOA serial: RFC 1982 comparison, the YYYYMMDDnn sequence, and `export rpz --out`, which
keeps the serial while the content is unchanged and raises it when the content changes."""

from __future__ import annotations

import datetime
import os
from pathlib import Path

import pytest
from conftest import write_config

from filterproxy import cli
from filterproxy.config import load_config
from filterproxy.lists.rpz import RpzSerialError, date_serial, next_serial, serial_gt, write_rpz_file
from filterproxy.lists.store import build_snapshot
from filterproxy.policy.engine import Engine

MAX = 2**32 - 1
DAY = datetime.date(2026, 12, 6)


@pytest.mark.parametrize(
    ("a", "b", "newer"),
    [
        (1, 0, True),
        (0, 1, False),
        (5, 5, False),
        (0, MAX, True),  # wraps: 0 comes after 2^32 - 1
        (MAX, 0, False),
        (2**31 - 1, 0, True),  # the largest step forward
        (2**31, 0, False),  # exactly half way: undefined, so never "newer"
        (0, 2**31, False),
        (2026120600, 1796532384, True),  # a date serial after the old time.time() serials
    ],
)
def test_serial_gt_is_rfc1982(a, b, newer):
    assert serial_gt(a, b) is newer


@pytest.mark.parametrize(
    ("prev", "day", "expected"),
    [
        (None, DAY, 2026120600),  # first zone
        (2026120600, DAY, 2026120601),  # second change the same day
        (2026120507, DAY, 2026120600),  # date rollover: the next day starts at nn = 00
        (2026120699, DAY, 2026120700),  # the 101st change of a day borrows from the next day ...
        (2026120700, datetime.date(2026, 12, 7), 2026120701),  # ... which then goes on from there
        (1796532384, DAY, 2026120600),  # from a time.time() serial of an older export
        (2099123100, DAY, 2099123101),  # a serial ahead of the date (e.g. set with --serial): +1
        (MAX, DAY, 2026120600),  # RFC 1982: today's date serial is newer than 2^32 - 1
        (MAX, datetime.date(2148, 1, 1), 0),  # and where it is not, 2^32 - 1 wraps to 0
    ],
)
def test_next_serial(prev, day, expected):
    got = next_serial(prev, day)
    assert got == expected
    assert prev is None or serial_gt(got, prev)


def test_date_serial():
    assert date_serial(DAY) == 2026120600
    assert date_serial(datetime.date(2027, 1, 1)) == 2027010100


def _engine(tmp: Path, names: list[str]) -> Engine:
    (tmp / "national.txt").write_text("".join(n + "\n" for n in names))
    cfg = write_config(
        tmp,
        """
        default_group: isp
        lists:
          - {id: national, category: illegal, format: domains, match: subdomains, path: national.txt}
        """,
        {"isp": "name: ISP\nbypass_defences: false\n"},
    )
    config = load_config(str(cfg))
    return Engine(config, build_snapshot(config.lists))


def _serial(path: Path) -> int:
    return int(path.read_text().splitlines()[1].split()[4])


def test_serial_follows_content_not_the_clock(tmp_path):
    out = tmp_path / "national.rpz"
    a = _engine(tmp_path, ["bad.example", "worse.example"])
    first = write_rpz_file(a, "isp", str(out), today=DAY)
    assert (first.serial, first.changed, first.counts["block"]) == (2026120600, True, 2)
    assert _serial(out) == 2026120600 and "bad.example CNAME .\n" in out.read_text()
    assert out.stat().st_mode & 0o777 == 0o644  # the DNS server (another user) reads it

    # unchanged content: same serial, even on another day, and the file is not touched
    stat = out.stat()
    again = write_rpz_file(a, "isp", str(out), today=DAY + datetime.timedelta(days=3))
    assert (again.serial, again.changed) == (2026120600, False)
    assert (out.stat().st_ino, out.stat().st_mtime_ns) == (stat.st_ino, stat.st_mtime_ns)

    # changed content: the next serial of the day, the file replaced by rename (never written in place)
    b = _engine(tmp_path, ["bad.example", "worse.example", "new.example"])
    changed = write_rpz_file(b, "isp", str(out), today=DAY)
    assert (changed.serial, changed.changed) == (2026120601, True)
    assert _serial(out) == 2026120601 and "new.example CNAME .\n" in out.read_text()
    assert out.stat().st_ino != stat.st_ino
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]

    # the next day's change starts the next day's sequence
    c = _engine(tmp_path, ["bad.example"])
    assert write_rpz_file(c, "isp", str(out), today=DAY + datetime.timedelta(days=1)).serial == 2026120700


def test_serial_read_back_from_a_zone_rewritten_by_a_server(tmp_path):
    out = tmp_path / "national.rpz"
    out.write_text("national.rpz. 300 IN SOA localhost. root.localhost. 2026120605 3600 600 1209600 300\n")
    res = write_rpz_file(_engine(tmp_path, ["bad.example"]), "isp", str(out), today=DAY)
    assert (res.serial, res.changed) == (2026120606, True)


def test_a_file_without_soa_is_not_overwritten(tmp_path):
    out = tmp_path / "national.rpz"
    out.write_text("not a zone\n")
    with pytest.raises(RpzSerialError, match="no SOA serial"):
        write_rpz_file(_engine(tmp_path, ["bad.example"]), "isp", str(out), today=DAY)
    assert out.read_text() == "not a zone\n"


def test_explicit_serial(tmp_path):
    out = tmp_path / "national.rpz"
    a = _engine(tmp_path, ["bad.example"])
    assert write_rpz_file(a, "isp", str(out), serial=7).serial == 7
    assert write_rpz_file(a, "isp", str(out), serial=7).changed is False  # same serial, same content
    assert write_rpz_file(a, "isp", str(out), serial=8).serial == 8  # a newer version, same content: written
    b = _engine(tmp_path, ["bad.example", "new.example"])
    with pytest.raises(RpzSerialError, match="not newer"):
        write_rpz_file(b, "isp", str(out), serial=6)
    with pytest.raises(RpzSerialError, match="already in"):
        write_rpz_file(b, "isp", str(out), serial=8)
    assert _serial(out) == 8 and "new.example" not in out.read_text()
    assert write_rpz_file(b, "isp", str(out), serial=0x8000_0007).serial == 0x8000_0007  # 2^31 - 1 ahead: newer


def test_cli_export_out_and_serial(tmp_path, capsys):
    _engine(tmp_path, ["bad.example"])
    cfg, out = str(tmp_path / "filterproxy.yaml"), tmp_path / "national.rpz"
    argv = ["export", "rpz", "--config", cfg, "--group", "isp", "--out", str(out)]
    assert cli.main(argv) == 0
    assert "(written)" in capsys.readouterr().err
    first = _serial(out)
    assert cli.main(argv) == 0
    assert "unchanged" in capsys.readouterr().err and _serial(out) == first
    assert cli.main([*argv, "--serial", str(first - 1)]) == 2
    assert "not newer" in capsys.readouterr().err
    assert cli.main([*argv, "--serial", str(2**32)]) == 2
    assert "between 0 and 4294967295" in capsys.readouterr().err
    assert cli.main(["export", "rpz", "--config", cfg, "--group", "isp", "--serial", "42"]) == 0
    assert "\n@ SOA localhost. root.localhost. 42 " in capsys.readouterr().out
