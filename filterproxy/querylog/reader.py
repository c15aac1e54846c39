"""The query log's reader: ``filterproxy querylog`` and ``GET /api/v1/querylog`` (see :mod:`filterproxy.querylog`).

Reads every process's daily files of a folder, merges them in time order and filters them; a line it cannot
read (a cut last line after a crash, an id never defined) is skipped.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import re
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from filterproxy.config import Config

log = logging.getLogger("filterproxy.querylog")

FILE_RE = re.compile(r"^querylog-(\d{4}-\d{2}-\d{2})(?:\.[A-Za-z0-9_-]+)?\.qlog$")


def directory(cfg: Config) -> str:
    """Where the daily files are: ``querylog.path``, else ``<server.state_dir>/querylog``."""
    return os.path.abspath(cfg.querylog.path or os.path.join(cfg.server.state_dir, "querylog"))


def daily_files(path: str) -> list[tuple[dt.date, str]]:
    try:
        names = os.listdir(path)
    except OSError:
        return []
    out = []
    for name in names:
        m = FILE_RE.match(name)
        if m:
            try:
                out.append((dt.date.fromisoformat(m.group(1)), name))
            except ValueError:
                continue
    return sorted(out)


def read(
    path: str,
    *,
    since: dt.datetime | None = None,
    group: str | None = None,
    action: str | None = None,
    tz: dt.tzinfo | None = None,
) -> Iterator[dict]:
    """Records of every daily file under ``path`` (all processes merged), oldest first, filtered.

    Times are printed in ``tz`` (None: the machine's). Tolerant: a line it cannot read (a cut last line
    after a crash, a reference to an id never defined) is skipped. ``since`` must be timezone-aware.
    """
    rows: list[tuple[float, int, dict]] = []
    first = since.date() - dt.timedelta(days=1) if since is not None else dt.date.min
    floor = since.timestamp() if since is not None else None
    for day, name in daily_files(path):
        if day < first:
            continue
        try:
            with open(os.path.join(path, name), "rb") as f:
                data = f.read().decode("utf-8", "replace")
        except OSError as exc:
            log.warning("querylog: cannot read %s: %s", name, exc)
            continue
        for when, rec in parse(data, tz):
            if group is not None and rec["group"] != group:
                continue
            if action is not None and rec["action"] != action:
                continue
            if floor is not None and when < floor:
                continue
            rows.append((when, len(rows), rec))
    rows.sort(key=lambda r: (r[0], r[1]))
    for row in rows:
        yield row[2]


def parse(text: str, tz: dt.tzinfo | None = None) -> Iterator[tuple[float, dict]]:
    """The records of one daily file's text, as (Unix time, record) in file order (see :meth:`QueryLog._encode`)."""
    clients: dict[str, str] = {}
    infos: dict[str, list[str | None]] = {}
    sec: int | None = None
    for line in text.split("\n")[:-1]:  # the part after the last newline is a cut line: never whole
        try:
            kind = line[:2]
            if kind == "T ":
                sec = int(line[2:])
            elif kind == "C ":
                ref, network = line[2:].split(" ", 1)
                clients[ref] = network
            elif kind == "D ":
                ref, *fields = line[2:].split("\t")
                if len(fields) != 8:
                    continue
                infos[ref] = [v or None for v in fields]
            elif line.startswith("#"):  # a (re)opened file: its id tables start again
                clients.clear()
                infos.clear()
            elif sec is not None:
                ms, ref_c, ref_d = line.split(" ")
                group, proto, name, kind_, act, reason, list_id, category = infos[ref_d]
                when = sec + int(ms) / 1000
                local = dt.datetime.fromtimestamp(when, tz=dt.UTC).astimezone(tz)
                rec = {
                    "time": local.isoformat(timespec="milliseconds"),
                    "client": clients[ref_c],
                    "proto": proto,
                    "group": group,
                    "name": name,
                    "qtype" if proto == "dns" else "method": kind_,
                    "action": act,
                    "reason": reason,
                    "list": list_id,
                    "category": category,
                }
                yield when, rec
        except (ValueError, KeyError):
            continue


def parse_since(text: str, tz: dt.tzinfo | None) -> dt.datetime:
    """``--since``: an ISO date or date-time; without an offset it is in ``tz`` (the configured timezone)."""
    try:
        when = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(
            f"--since {text!r}: expected an ISO date or time, e.g. 2026-03-02 or 2026-03-02T08:30"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=tz) if tz is not None else when.astimezone()
    return when


_COLUMNS = ("time", "client", "proto", "group", "name", "type", "action", "reason", "list")


def table(records: Iterator[dict]) -> Iterator[str]:
    """A readable table, one line a record (``type``: the DNS query type or the HTTP method)."""
    yield "  ".join(c.upper() for c in _COLUMNS)
    for rec in records:
        row = dict(rec, type=rec.get("qtype") or rec.get("method"))
        yield "  ".join("-" if row.get(c) is None else str(row[c]) for c in _COLUMNS)


def command(
    cfg: Config, *, since: str | None, group: str | None, action: str | None, as_json: bool, out: Any, err: Any
) -> int:
    """``filterproxy querylog``: print the records (JSON lines or a table); ValueError for bad input."""
    path = directory(cfg)
    files = daily_files(path)
    if not cfg.querylog.enabled:
        if not files:
            raise ValueError(
                f"{cfg.path}: the query log is off (querylog.enabled: false) and {path} holds no records; "
                "turn it on as deploy/privacy.md shows"
            )
        print(f"filterproxy: note: the query log is off in {cfg.path}; showing the records left in {path}", file=err)
    tz = None
    try:
        from zoneinfo import ZoneInfo

        tz = ZoneInfo(cfg.timezone)
    except Exception:
        pass
    when = parse_since(since, tz) if since else None
    records = read(path, since=when, group=group, action=action, tz=tz)
    if as_json:
        for rec in records:
            print(json.dumps(rec, ensure_ascii=False, separators=(",", ":")), file=out)
    else:
        for line in table(records):
            print(line, file=out)
    return 0
