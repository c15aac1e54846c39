"""Optional query log (DNS and HTTP decisions), private by default; and its reader.

Off unless the administrator turns it on (``querylog.enabled``). When on:

* client addresses are anonymised before anything is written: IPv4 to its /24, IPv6 to its /48
  (``anonymise=False`` must be set explicitly to keep full addresses);
* one file per day and per writing process, ``querylog-YYYY-MM-DD.<proto>-<pid>.jsonl`` (local date of
  the query), one JSON object a line. DNS workers and proxy workers are separate processes: each owns its
  files, so no two processes ever append to one file and no line is ever torn (the reader merges them);
* files older than ``retention_days`` are deleted (at start, at each new day, and hourly);
* the serving path only appends a tuple to a bounded list (no lock, no syscall); a writer thread formats
  and writes a batch every ``interval`` seconds. When the disk cannot keep up, records are dropped
  (``filterproxy_querylog_dropped_total``), never the query delayed.

A record: ``time, client, proto (dns|http), group, name, qtype (DNS) or method (HTTP), action, reason,
list, category``. The log never leaves the machine: metrics and pushes carry aggregate counters only.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import logging
import os
import re
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from filterproxy import metrics

if TYPE_CHECKING:
    from filterproxy.config import Config
    from filterproxy.verdict import Verdict

log = logging.getLogger("filterproxy.querylog")

_FILE_RE = re.compile(r"^querylog-(\d{4}-\d{2}-\d{2})(?:\.[A-Za-z0-9_-]+)?\.jsonl$")
_INFO_KEYS = ("group", "proto", "name", None, "action", "reason", "list", "category")
_CACHE_MAX = 65536
_MS = [f"{i:03d}" for i in range(1000)]  # milliseconds as text, looked up rather than formatted

# what the hot paths queue: (monotonic seconds or an aware datetime, client address, Info)
# Info = (group, proto, name, qtype or method, action, reason, list, category): one tuple per verdict,
# made once (a DNS packed reply carries its own), so a cached answer is logged without any formatting
Info = tuple[str, str, str, str, str, "str | None", "str | None", "str | None"]


def anonymise_ip(address: str) -> str:
    """IPv4 → ``a.b.c.0/24``, IPv6 → ``x:y:z::/48`` (IPv4-mapped IPv6 as IPv4); ``"invalid"`` if unparsable."""
    text = str(address).strip()
    if text.startswith("[") and "]" in text:
        text = text[1 : text.index("]")]
    text = text.split("%", 1)[0]  # scope id of link-local addresses
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return "invalid"
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    prefix = 24 if ip.version == 4 else 48
    return str(ipaddress.ip_network(f"{ip}/{prefix}", strict=False))


def info(group: str, proto: str, name: str, kind: str, action: Any, v: Verdict | None) -> Info:
    """The logged part of one decision (``kind``: the DNS query type or the HTTP method)."""
    if v is None:
        return (group, proto, name, kind, _text(action), None, None, None)
    return (group, proto, name, kind, _text(action), v.reason.value, v.list_id, v.category)


def directory(cfg: Config) -> str:
    """Where the daily files are: ``querylog.path``, else ``<server.state_dir>/querylog``."""
    return os.path.abspath(cfg.querylog.path or os.path.join(cfg.server.state_dir, "querylog"))


_OPEN: dict[tuple[str, str], list] = {}  # (tag, folder) → [QueryLog, users]: one writer per file
_OPEN_LOCK = threading.Lock()


def acquire(cfg: Config, proto: str) -> QueryLog | None:
    """This process's query log for ``proto`` (``dns``/``http``), or None when it is off.

    Listeners of one process share one log (one writer per file); :func:`release` it when done.
    """
    q = cfg.querylog
    if not q.enabled:
        return None
    key = (f"{proto}-{os.getpid()}", directory(cfg))
    with _OPEN_LOCK:
        hit = _OPEN.get(key)
        if hit is not None:
            hit[1] += 1
            return hit[0]
        tz: dt.tzinfo | None = None
        try:
            from zoneinfo import ZoneInfo

            tz = ZoneInfo(cfg.timezone)  # "a day" is the schools' day, as for schedules
        except Exception:
            log.warning("querylog: unknown timezone %r; days follow the machine's clock", cfg.timezone)
        ql = QueryLog(key[1], q.retention_days, q.anonymise, tz=tz, tag=key[0])
        _OPEN[key] = [ql, 1]
    log.info("querylog: on, %s records to %s (%d days kept)", proto.upper(), ql.path, ql.retention_days)
    return ql


def release(ql: QueryLog | None) -> None:
    """Give back a log from :func:`acquire`; the last user writes what is queued and closes it."""
    if ql is None:
        return
    with _OPEN_LOCK:
        key = (ql.tag or "", ql.path)
        hit = _OPEN.get(key)
        if hit is not None and hit[0] is ql:
            hit[1] -= 1
            if hit[1] > 0:
                return
            del _OPEN[key]
    ql.close()


class QueryLog:
    """Daily JSON-lines query log with anonymised clients, retention, and a writer thread.

    ``path`` is the directory holding the daily files. ``tz`` (a ``tzinfo``) sets what "a day" is;
    default: the machine's local time. ``tag`` names this process's files (None: ``querylog-DAY.jsonl``).
    """

    def __init__(
        self,
        path: str,
        retention_days: int = 7,
        anonymise: bool = True,
        *,
        tz: dt.tzinfo | None = None,
        max_queue: int = 100_000,
        tag: str | None = None,
        interval: float = 0.2,
    ) -> None:
        if not isinstance(retention_days, int) or isinstance(retention_days, bool) or retention_days < 1:
            raise ValueError(f"querylog retention_days must be a whole number of days >= 1, got {retention_days!r}")
        self.path = os.path.abspath(path)
        self.retention_days = retention_days
        self.anonymise = bool(anonymise)
        self.tz = tz
        self.tag = tag
        self.interval = interval
        # the hot path: ``if len(buf) < cap: buf.append(item) else: ql.dropped += 1`` (list.append is atomic;
        # the writer takes the head with one slice and one ``del``, so producers never wait)
        self.buf: list[tuple] = []
        self.cap = max_queue
        self.dropped = 0
        self.written = 0
        os.makedirs(self.path, mode=0o750, exist_ok=True)
        if not self.anonymise:
            log.warning("querylog: client anonymisation is OFF: full client addresses are written to %s", self.path)
        self._file: Any = None
        self._day: dt.date | None = None
        self._last_sweep = 0.0
        self._oldest_kept = dt.date.min
        self._closing = False
        self._closed = False
        self._busy = False
        self._published = (0, 0)
        self._wake = threading.Event()
        self._clients: dict[str, str] = {}
        self._tails: dict[int, tuple[tuple, str]] = {}
        self.sweep()
        self._thread = threading.Thread(target=self._run, name="filterproxy-querylog", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ hot path
    def put(self, when: float | dt.datetime, client: str, what: Info) -> None:
        """Queue one record (``when``: monotonic seconds, or an aware datetime); never blocks."""
        if len(self.buf) < self.cap:
            self.buf.append((when, client, what))
        else:
            self.dropped += 1

    def drop(self) -> None:
        """Count one record the full buffer could not take (the UDP loops append inline, see :meth:`put`)."""
        self.dropped += 1

    def log(
        self,
        time: float | dt.datetime,
        client_ip: str,
        group: str,
        name: str,
        kind: str,
        action: Any,
        *,
        reason: Any = None,
        list_id: str | None = None,
        category: str | None = None,
        proto: str = "dns",
    ) -> None:
        """Queue one record; ``time`` is a Unix time or a datetime (naive: the machine's local time)."""
        if isinstance(time, dt.datetime):
            when = time if time.tzinfo is not None else time.astimezone()
        else:
            when = dt.datetime.fromtimestamp(float(time), tz=dt.UTC)
        what = (group, proto, name, kind, _text(action), _opt(reason), list_id, category)
        self.put(when, client_ip, what)

    # ------------------------------------------------------------------ writer thread
    def _second(self, sec: int) -> tuple[str, str, dt.date]:
        """The parts of a line for Unix second ``sec``: ``{"time":"<date>T<h:m:s>.``, ``<zone>",``, local day."""
        local = dt.datetime.fromtimestamp(sec, tz=dt.UTC).astimezone(self.tz)  # tz None: the machine's time
        iso = local.isoformat()
        return '{"time":"' + iso[:19] + ".", iso[19:] + '",', local.date()

    def _client(self, address: str) -> str:
        """``"client":"<address cut to its network>",`` (cached: a client asks many times)."""
        out = self._clients.get(address)
        if out is None:
            text = anonymise_ip(address) if self.anonymise else str(address)
            out = '"client":' + json.dumps(text) + ","
            if len(self._clients) >= _CACHE_MAX:
                self._clients.clear()
            self._clients[address] = out
        return out

    def _tail(self, what: tuple) -> str:
        """The rest of the line after the client, for one Info (cached by identity: a packed reply's record is
        one tuple; the cache holds it, so its id is not reused while cached)."""
        hit = self._tails.get(id(what))
        if hit is not None and hit[0] is what:
            return hit[1]
        group, proto, name, kind, action, reason, list_id, category = what
        rec = {"proto": proto, "group": group, "name": name, "qtype" if proto == "dns" else "method": kind}
        rec.update(action=action, reason=reason)
        if list_id is not None:  # absent rather than null: fewer bytes per line (the reader fills them in)
            rec["list"] = list_id
        if category is not None:
            rec["category"] = category
        out = json.dumps(rec, ensure_ascii=False, separators=(",", ":"))[1:] + "\n"
        if len(self._tails) >= _CACHE_MAX:
            self._tails.clear()
        self._tails[id(what)] = (what, out)
        return out

    def _format(self, item: tuple, offset: float) -> tuple[dt.date, str]:
        """One record → (local day, its line without the newline): the general path of :meth:`_lines`."""
        when, client, what = item
        if isinstance(when, dt.datetime):
            local = when.astimezone(self.tz)
            head, zone = '{"time":"' + local.isoformat(timespec="milliseconds") + '",', ""
            day, ms = local.date(), ""
        else:
            wall = when + offset
            sec = int(wall)
            (head, zone, day), ms = self._second(sec), _MS[int((wall - sec) * 1000)]
        return day, head + ms + zone + self._client(client) + self._tail(what)[:-1]

    def _lines(self, items: list[tuple], offset: float) -> list[tuple[dt.date, list[str]]]:
        """Records → lines per local day, in order: the writer's per-record work, kept to two dict lookups
        and one three-part string (the writer shares the GIL, and in the benchmark the core, with the UDP
        thread). The 1000 ``{"time":"…ms…",`` heads of a second are made once, when the second starts."""
        out: list[tuple[dt.date, list[str]]] = []
        clients, tails, client_of, tail_of = self._clients, self._tails, self._client, self._tail
        cur = -1
        stamps: list[str] = []
        lines: list[str] | None = None
        for item in items:
            when, client, what = item
            if what is None:  # a packed reply made while the log was off
                continue
            if type(when) is not float:
                day, line = self._format(item, offset)
                out.append((day, [line + "\n"]))
                lines, cur = None, -1
                continue
            wall = when + offset
            sec = int(wall)
            if sec != cur or lines is None:
                cur = sec
                head, zone, day = self._second(sec)
                stamps = [head + ms + zone for ms in _MS]
                if lines is None or out[-1][0] != day:  # (lines, when set, is out[-1]'s)
                    lines = []
                    out.append((day, lines))
            c = clients.get(client) or client_of(client)
            hit = tails.get(id(what))
            t = hit[1] if hit is not None and hit[0] is what else tail_of(what)
            lines.append(f"{stamps[int((wall - sec) * 1000)]}{c}{t}")
        return out

    def _open(self, day: dt.date) -> None:
        if self._file is not None:
            self._file.close()
        suffix = f".{self.tag}" if self.tag else ""
        name = os.path.join(self.path, f"querylog-{day.isoformat()}{suffix}.jsonl")
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
        self._file = os.fdopen(fd, "a", encoding="utf-8", buffering=64 * 1024)
        if self._day is not None and day > self._day:
            self.sweep(today=day)
        self._day = day

    def _run(self) -> None:
        while True:
            self._wake.wait(self.interval)
            self._wake.clear()
            self._drain()
            self._publish()
            if time.monotonic() - self._last_sweep > 3600:  # hourly, also under constant load
                self.sweep()
            if self._closing:
                self._drain()
                self._publish()
                if self._file is not None:
                    self._file.close()
                    self._file = None
                return

    def _drain(self) -> None:
        buf = self.buf
        self._busy = True
        try:
            n = len(buf)
            if not n:
                return
            items = buf[:n]
            del buf[:n]  # producers only append: the head is ours
            try:
                days = self._lines(items, time.time() - time.monotonic())
            except Exception:
                log.exception("querylog: could not format %d records", n)
                return
            for day, lines in days:
                if day < self._oldest_kept:  # already past retention: never write it
                    continue
                try:
                    if day != self._day or self._file is None:
                        self._open(day)
                    self._file.write("".join(lines))
                    self.written += len(lines)
                except Exception:
                    log.exception("querylog: could not write %d records", len(lines))
            if self._file is not None:
                try:
                    self._file.flush()
                except OSError:
                    log.exception("querylog: flush failed")
        finally:
            self._busy = False

    def _publish(self) -> None:
        written, dropped = self.written, self.dropped
        w0, d0 = self._published
        if written > w0:
            metrics.QUERYLOG_WRITTEN.inc(amount=written - w0)
        if dropped > d0:
            metrics.QUERYLOG_DROPPED.inc(amount=dropped - d0)
        self._published = (written, dropped)

    # ------------------------------------------------------------------ retention
    def sweep(self, today: dt.date | None = None) -> list[str]:
        """Delete daily files past the retention; return the names deleted.

        At most ``retention_days`` daily files are kept, today's included, so no entry is kept
        longer than ``retention_days`` days.
        """
        self._last_sweep = time.monotonic()
        if today is None:
            today = (dt.datetime.now(self.tz) if self.tz else dt.datetime.now()).date()
        oldest_kept = today - dt.timedelta(days=self.retention_days - 1)
        self._oldest_kept = oldest_kept
        removed: list[str] = []
        for day, name in _daily_files(self.path):
            if day < oldest_kept:
                try:
                    os.unlink(os.path.join(self.path, name))
                    removed.append(name)
                except FileNotFoundError:  # another process's sweep was first
                    pass
                except OSError:
                    log.warning("querylog: could not delete %s", name)
        if removed:
            log.info("querylog: deleted %d file(s) past the %d-day retention", len(removed), self.retention_days)
        return sorted(removed)

    # ------------------------------------------------------------------ lifecycle
    def flush(self, timeout: float = 10.0) -> None:
        """Wait until everything queued so far is written (tests, shutdown)."""
        deadline = time.monotonic() + timeout
        while (self.buf or self._busy) and time.monotonic() < deadline:
            self._wake.set()
            time.sleep(0.005)

    def close(self) -> None:
        """Write what is queued and stop the writer thread."""
        if self._closed:
            return
        self._closed = self._closing = True
        self._wake.set()
        self._thread.join(timeout=30)

    def __enter__(self) -> QueryLog:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _text(value: Any) -> str:
    if hasattr(value, "value") and isinstance(value.value, str):  # enums (Action, Reason)
        value = value.value
    return str(value)


def _opt(value: Any) -> str | None:
    return None if value is None else _text(value)


def _daily_files(path: str) -> list[tuple[dt.date, str]]:
    try:
        names = os.listdir(path)
    except OSError:
        return []
    out = []
    for name in names:
        m = _FILE_RE.match(name)
        if m:
            try:
                out.append((dt.date.fromisoformat(m.group(1)), name))
            except ValueError:
                continue
    return sorted(out)


# ---------------------------------------------------------------------- the reader (filterproxy querylog)
def read(
    path: str, *, since: dt.datetime | None = None, group: str | None = None, action: str | None = None
) -> Iterator[dict]:
    """Records of every daily file under ``path`` (all processes merged), oldest first, filtered.

    Tolerant: lines that are not JSON objects are skipped, and ``qname`` (older files) reads as ``name``.
    ``since`` must be timezone-aware.
    """
    rows: list[tuple[dt.datetime, int, dict]] = []
    first = since.date() - dt.timedelta(days=1) if since is not None else dt.date.min
    for day, name in _daily_files(path):
        if day < first:
            continue
        try:
            with open(os.path.join(path, name), encoding="utf-8", errors="replace") as f:
                lines = f.readlines()
        except OSError as exc:
            log.warning("querylog: cannot read %s: %s", name, exc)
            continue
        for line in lines:
            rec = _record(line)
            if rec is None or (group is not None and rec.get("group") != group):
                continue
            if action is not None and rec.get("action") != action:
                continue
            when = _when(rec.get("time"))
            if since is not None and (when is None or when < since):
                continue
            rows.append((when or dt.datetime.min.replace(tzinfo=dt.UTC), len(rows), rec))
    rows.sort(key=lambda r: (r[0], r[1]))
    for row in rows:
        yield row[2]


def _record(line: str) -> dict | None:
    try:
        rec = json.loads(line)
    except ValueError:
        return None
    if not isinstance(rec, dict):
        return None
    if "name" not in rec and "qname" in rec:
        rec["name"] = rec.pop("qname")
    for key in ("reason", "list", "category"):  # written only when set
        rec.setdefault(key, None)
    return rec


def _when(text: Any) -> dt.datetime | None:
    try:
        when = dt.datetime.fromisoformat(str(text))
    except ValueError:
        return None
    return when if when.tzinfo is not None else when.astimezone()


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
    files = _daily_files(path)
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
    records = read(path, since=when, group=group, action=action)
    if as_json:
        for rec in records:
            print(json.dumps(rec, ensure_ascii=False, separators=(",", ":")), file=out)
    else:
        for line in table(records):
            print(line, file=out)
    return 0
