"""Optional DNS query log, private by default.

Off unless the administrator turns it on (``querylog.enabled``). When on:

* client addresses are anonymised before anything is written: IPv4 to its /24, IPv6 to its /48
  (``anonymise=False`` must be set explicitly to keep full addresses);
* one file per day, ``querylog-YYYY-MM-DD.jsonl`` (local date of the query), one JSON object a line;
* files older than ``retention_days`` are deleted (at start, at each new day, and hourly);
* the serving path only appends a tuple to a bounded queue; a writer thread formats and writes.
  When the disk cannot keep up, lines are dropped (counted in ``dropped``), never the query delayed.

The log never leaves the machine: metrics and pushes carry aggregate counters only.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import logging
import os
import queue
import re
import threading
import time
from typing import Any

log = logging.getLogger("filterproxy.querylog")

_FILE_RE = re.compile(r"^querylog-(\d{4}-\d{2}-\d{2})\.jsonl$")
_STOP = object()


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


class QueryLog:
    """Daily JSON-lines query log with anonymised clients, retention, and a writer thread.

    ``path`` is the directory holding the daily files. ``tz`` (a ``tzinfo``) sets what "a day" is;
    default: the machine's local time.
    """

    def __init__(
        self,
        path: str,
        retention_days: int = 7,
        anonymise: bool = True,
        *,
        tz: dt.tzinfo | None = None,
        max_queue: int = 100_000,
    ) -> None:
        if not isinstance(retention_days, int) or isinstance(retention_days, bool) or retention_days < 1:
            raise ValueError(f"querylog retention_days must be a whole number of days >= 1, got {retention_days!r}")
        self.path = os.path.abspath(path)
        self.retention_days = retention_days
        self.anonymise = bool(anonymise)
        self.tz = tz
        self.dropped = 0
        self.written = 0
        os.makedirs(self.path, mode=0o750, exist_ok=True)
        if not self.anonymise:
            log.warning("querylog: client anonymisation is OFF: full client addresses are written to %s", self.path)
        self._queue: queue.Queue = queue.Queue(maxsize=max_queue)
        self._file: Any = None
        self._day: dt.date | None = None
        self._last_sweep = 0.0
        self._oldest_kept = dt.date.min
        self._closed = False
        self.sweep()
        self._thread = threading.Thread(target=self._run, name="filterproxy-querylog", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ hot path
    def log(
        self,
        time: float | dt.datetime,
        client_ip: str,
        group: str,
        qname: str,
        qtype: str,
        action: str,
        category: str | None = None,
    ) -> None:
        """Queue one entry (non-blocking; dropped and counted if the writer is behind)."""
        try:
            self._queue.put_nowait((time, client_ip, group, qname, qtype, action, category))
        except queue.Full:
            self.dropped += 1

    # ------------------------------------------------------------------ writer thread
    def _local(self, when: float | dt.datetime) -> dt.datetime:
        if isinstance(when, dt.datetime):
            if when.tzinfo is None:
                when = when.astimezone()  # naive: the machine's local time
        else:
            when = dt.datetime.fromtimestamp(float(when), tz=dt.UTC)
        return when.astimezone(self.tz)  # tz None: the machine's local time

    def _format(self, item: tuple) -> tuple[dt.date, str]:
        when, client, group, qname, qtype, action, category = item
        local = self._local(when)
        rec = {
            "time": local.isoformat(timespec="milliseconds"),
            "client": anonymise_ip(client) if self.anonymise else str(client),
            "group": _text(group),
            "qname": _text(qname),
            "qtype": _text(qtype),
            "action": _text(action),
            "category": _text(category) if category is not None else None,
        }
        return local.date(), json.dumps(rec, ensure_ascii=False, separators=(",", ":"))

    def _open(self, day: dt.date) -> None:
        if self._file is not None:
            self._file.close()
        name = os.path.join(self.path, f"querylog-{day.isoformat()}.jsonl")
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
        self._file = os.fdopen(fd, "a", encoding="utf-8", buffering=64 * 1024)
        if self._day is not None and day > self._day:
            self.sweep(today=day)
        self._day = day

    def _run(self) -> None:
        q = self._queue
        while True:
            try:
                item = q.get(timeout=1.0)
            except queue.Empty:
                self._idle()
                continue
            batch = [item]
            while len(batch) < 1000:  # drain what is there, then one flush per batch
                try:
                    batch.append(q.get_nowait())
                except queue.Empty:
                    break
            stop = False
            for it in batch:
                if it is _STOP:
                    stop = True
                    continue
                try:
                    day, line = self._format(it)
                    if day < self._oldest_kept:  # already past retention: never write it
                        continue
                    if day != self._day or self._file is None:
                        self._open(day)
                    self._file.write(line + "\n")
                    self.written += 1
                except Exception:
                    log.exception("querylog: could not write an entry")
            if self._file is not None:
                try:
                    self._file.flush()
                except OSError:
                    log.exception("querylog: flush failed")
            for _ in batch:
                q.task_done()
            if stop:
                if self._file is not None:
                    self._file.close()
                    self._file = None
                return

    def _idle(self) -> None:
        if time.monotonic() - self._last_sweep > 3600:
            self.sweep()

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
        try:
            names = os.listdir(self.path)
        except OSError:
            return removed
        for name in names:
            m = _FILE_RE.match(name)
            if not m:
                continue
            try:
                day = dt.date.fromisoformat(m.group(1))
            except ValueError:
                continue
            if day < oldest_kept:
                try:
                    os.unlink(os.path.join(self.path, name))
                    removed.append(name)
                except OSError:
                    log.warning("querylog: could not delete %s", name)
        if removed:
            log.info("querylog: deleted %d file(s) past the %d-day retention", len(removed), self.retention_days)
        return sorted(removed)

    # ------------------------------------------------------------------ lifecycle
    def flush(self, timeout: float = 10.0) -> None:
        """Wait until everything queued so far is written (tests, shutdown)."""
        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.005)

    def close(self) -> None:
        """Write what is queued and stop the writer thread."""
        if self._closed:
            return
        self._closed = True
        self._queue.put(_STOP)
        self._thread.join(timeout=30)

    def __enter__(self) -> QueryLog:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _text(value: Any) -> str:
    if hasattr(value, "value") and isinstance(value.value, str):  # enums (Action, Reason)
        value = value.value
    return str(value)
