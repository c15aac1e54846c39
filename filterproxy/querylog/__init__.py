"""Optional query log (DNS and HTTP decisions), private by default; and its reader.

Off unless the administrator turns it on (``querylog.enabled``). When on:

* client addresses are anonymised before anything is written: IPv4 to its /24, IPv6 to its /48
  (``anonymise=False`` must be set explicitly to keep full addresses);
* one file per day and per writing process, ``querylog-YYYY-MM-DD.<proto>-<pid>.qlog`` (local date of
  the query), in a compact text form that ``filterproxy querylog`` prints as a table or JSON lines: each
  client network and each verdict is written once per file (``C``/``D`` lines), a record is a fixed-width
  ``<ms> <client id> <verdict id>`` line (docs/decisions/querylog-format.md). DNS workers and proxy workers
  are separate processes: each owns its files, so no two processes ever append to one file and no line is
  ever torn (the reader merges them);
* files older than ``retention_days`` are deleted (at start, at each new day, and hourly);
* a record is two machine numbers: the client's id (its network, looked up once per DNS client state) and
  the verdict's id (kept in the DNS packed reply), from per-process :class:`Ids` tables. The UDP hot path
  appends them to ``array`` buffers (no allocation, no lock, no syscall); a writer thread turns a batch
  into lines with numpy every ``interval`` seconds, without touching per-record objects. When the disk
  cannot keep up, records are dropped (``filterproxy_querylog_dropped_total``), never the query delayed.

A record: ``time, client, proto (dns|http), group, name, qtype (DNS) or method (HTTP), action, reason,
list, category``. The log never leaves the machine: metrics carry aggregate counters only.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import os
import threading
import time
from array import array
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from filterproxy import metrics
from filterproxy.querylog.reader import command, daily_files, directory, parse, parse_since, read, table
from filterproxy.querylog.records import (
    _GEN_BITS,
    _INDEX,
    Ids,
    Info,
    _Buffer,
    _field,
    _opt,
    _tail,
    _text,
    anonymise_ip,
    info,
)

__all__ = [
    "Info",
    "QueryLog",
    "acquire",
    "anonymise_ip",
    "command",
    "directory",
    "info",
    "parse",
    "parse_since",
    "read",
    "release",
    "table",
]

if TYPE_CHECKING:
    import numpy as np

    from filterproxy.config import Config

log = logging.getLogger("filterproxy.querylog")

_CACHE_MAX = 65536  # client addresses → client ids remembered (put() by address)
_CLIENTS_MAX = 65536  # client networks per id generation
_VERDICTS_MAX = 262_144  # verdicts per id generation
_HEADER = b"#filterproxy-querylog 1\n"  # starts a file, and each later append to it (id tables reset)


@functools.cache
def _digits() -> tuple[np.ndarray, np.ndarray]:
    """(a byte → its 2 hex digits, ms → 3 decimal digits): made when the first log opens, so that a process
    with the log off never imports numpy (tests/test_secrets_e2e.py)."""
    import numpy as np

    hex2 = np.frombuffer("".join(f"{i:02x}" for i in range(256)).encode(), np.uint16)
    ms3 = np.frombuffer("".join(f"{i:03d}" for i in range(1000)).encode(), np.uint8).reshape(1000, 3)
    return hex2, ms3


_RECORD = 22  # bytes of a record line: "<ms, 3 digits> <client id, 8 hex> <verdict id, 8 hex>\n"


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
    """Daily query-log files with anonymised clients, retention, and a writer thread.

    ``path`` is the directory holding the daily files. ``tz`` (a ``tzinfo``) sets what "a day" is;
    default: the machine's local time. ``tag`` names this process's files (None: ``querylog-DAY.qlog``).
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
        max_verdicts: int = _VERDICTS_MAX,
    ) -> None:
        if not isinstance(retention_days, int) or isinstance(retention_days, bool) or retention_days < 1:
            raise ValueError(f"querylog retention_days must be a whole number of days >= 1, got {retention_days!r}")
        self.path = os.path.abspath(path)
        self.retention_days = retention_days
        self.anonymise = bool(anonymise)
        self.tz = tz
        self.tag = tag
        self.interval = interval
        self.cap = max_queue  # records queued per buffer; beyond, records are dropped and counted
        self.dropped = 0
        self.written = 0
        # per-process id tables: a record is two ints, resolved to text only when first written to a file
        self.clients = Ids(_CLIENTS_MAX)  # client network → id
        self.verdicts = Ids(max_verdicts)  # the 8 fields of a verdict → id
        self._addresses: dict[str, int] = {}  # client address → client id (put() by address)
        self.clients.on_roll.append(self._addresses.clear)
        self._shared = _Buffer(wall=True)  # put(): every thread, under a lock
        self._buffers = [self._shared]
        self._put_lock = threading.Lock()
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
        # ids defined in the open file: generation byte → (serial, one flag per index), per table
        self._defined: tuple[dict[int, tuple[int, np.ndarray]], dict[int, tuple[int, np.ndarray]]] = ({}, {})
        self.sweep()
        self._thread = threading.Thread(target=self._run, name="filterproxy-querylog", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ producers
    def on_roll(self, hook: Callable[[], None]) -> None:
        """Run ``hook`` when an id table starts a new generation (whoever keeps ids must drop them)."""
        self.clients.on_roll.append(hook)
        self.verdicts.on_roll.append(hook)

    def client(self, address: str) -> int:
        """The client id of ``address``: its network when anonymising (computed here, once per address)."""
        c = self._addresses.get(address)
        if c is None:
            text = anonymise_ip(address) if self.anonymise else _field(str(address))
            c = self.clients.get(text)
            if len(self._addresses) >= _CACHE_MAX:
                self._addresses.clear()
            self._addresses[address] = c
        return c

    def verdict(self, what: Info | tuple) -> int:
        """The verdict id of a record's 8 fields (a DNS packed reply keeps it: its hits log that int)."""
        fields = what.fields if type(what) is Info else tuple(what)
        if len(fields) != 8:
            raise ValueError(f"a query-log record has 8 fields, got {len(fields)}")
        return self.verdicts.get(fields)

    def buffer(self) -> tuple[array, Callable[[float], None], Callable[[int], None], int, Callable[[], None]]:
        """A buffer of one producer thread (a UDP loop): (ids, append a time, append an id, capacity, drop).

        The hot path, per record: ``if len(ids) < cap: add_time(now); add_id(client_ref | verdict_id)``, else
        ``drop()`` — two appends of machine values, no allocation, no lock (one thread per buffer).
        """
        b = _Buffer(wall=False)
        self._buffers = [*self._buffers, b]
        return b.ids, b.times.append, b.ids.append, self.cap, self.drop

    def put(self, when: float | dt.datetime, client: str | int, what: Info | tuple | int) -> int:
        """Queue one record; never blocks. ``when``: monotonic seconds or an aware datetime; ``client``: an
        address or a :meth:`client` id; ``what``: the fields or a :meth:`verdict` id. Returns the verdict id."""
        vid = what if type(what) is int else self.verdict(what)  # type: ignore[arg-type]
        cid = client if type(client) is int else self.client(client)  # type: ignore[arg-type]
        wall = when.timestamp() if isinstance(when, dt.datetime) else when + time.time() - time.monotonic()
        b = self._shared
        with self._put_lock:
            if len(b.ids) < self.cap:
                b.times.append(wall)
                b.ids.append(cid << 32 | vid)
            else:
                self.dropped += 1
        return vid

    def drop(self) -> None:
        """Count one record a full buffer could not take."""
        self.dropped += 1

    def queued(self) -> int:
        """Records waiting for the writer."""
        return sum(len(b.ids) for b in self._buffers)

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
        self.put(when, client_ip, Info(group, proto, name, kind, _text(action), _opt(reason), list_id, category))

    # ------------------------------------------------------------------ writer thread
    def _local_day(self, sec: int) -> dt.date:
        return dt.datetime.fromtimestamp(sec, tz=dt.UTC).astimezone(self.tz).date()  # tz None: the machine's

    def _open(self, day: dt.date) -> None:
        """Open this process's file of ``day`` for appending; its id tables start empty (a header says so)."""
        if self._file is not None:
            self._file.close()
            self._file = None
        suffix = f".{self.tag}" if self.tag else ""
        name = os.path.join(self.path, f"querylog-{day.isoformat()}{suffix}.qlog")
        fd = os.open(name, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o640)
        torn = False
        size = os.fstat(fd).st_size
        if size:  # a crash may have cut the last line: start on a fresh one
            torn = os.pread(fd, 1, size - 1) != b"\n"
        self._file = os.fdopen(fd, "ab", buffering=0)
        self._file.write((b"\n" if torn else b"") + _HEADER)
        self._defined = ({}, {})
        if self._day is not None and day > self._day:
            self.sweep(today=day)
        self._day = day

    def _write(self, out: list[bytes], records: int) -> None:
        if not out or self._file is None:
            return
        try:
            self._file.write(b"".join(out))
            self.written += records
        except Exception:
            log.exception("querylog: could not write %d records", records)
        out.clear()

    def _define(self, refs: np.ndarray, ids: Ids, which: int, out: list[bytes]) -> list[int]:
        """Definition lines for the ids in ``refs`` not yet defined in the open file; the generations gone."""
        import numpy as np

        gens = refs >> _GEN_BITS
        g0 = int(gens[0])
        groups = [(g0, refs)] if bool((gens == g0).all()) else [(int(g), refs[gens == g]) for g in np.unique(gens)]
        defined, gone = self._defined[which], []
        for g, sub in groups:
            table = ids.tables.get(g)
            if table is None:
                gone.append(g)
                continue
            serial, values = table
            seen = defined.get(g)
            if seen is None or seen[0] != serial:  # new in this file, or the generation byte was reused
                seen = defined[g] = (serial, np.zeros(ids.cap, dtype=bool))
            index = sub & _INDEX
            new = index[~seen[1][index]]
            if not new.size:
                continue
            new = np.unique(new)
            seen[1][new] = True
            base = g << _GEN_BITS
            if which == 0:
                out += [f"C {base | k:08x} {values[k]}\n".encode("utf-8", "replace") for k in new.tolist()]
            else:
                out += [f"D {base | k:08x}\t{_tail(values[k])}\n".encode("utf-8", "replace") for k in new.tolist()]
        return gone

    def _encode(self, wall: np.ndarray, refs: np.ndarray) -> None:
        """Records (Unix times, ``client id << 32 | verdict id``) → the daily files' lines, vectorised.

        No per-record Python: the record lines ``<ms> <client id> <verdict id>`` are built as one byte
        matrix; per second a ``T <unix second>`` line; per file, each id's ``C``/``D`` line before its first
        record (only the ids not yet defined there are looked up). docs/decisions/querylog-format.md.
        """
        import numpy as np

        n = len(wall)
        secs = np.floor(wall).astype(np.int64)
        ms = np.clip(((wall - secs) * 1000).astype(np.int64), 0, 999)
        cids = (refs >> np.uint64(32)).astype(np.uint32)
        vids = (refs & np.uint64(0xFFFFFFFF)).astype(np.uint32)
        lines = np.empty((n, _RECORD), dtype=np.uint8)
        hex2, ms3 = _digits()
        lines[:, 0:3] = np.take(ms3, ms, axis=0)
        lines[:, 3] = lines[:, 12] = 32
        lines[:, 4:12] = np.take(hex2, cids.astype(">u4").view(np.uint8)).view(np.uint8).reshape(n, 8)  # 8 hex digits
        lines[:, 13:21] = np.take(hex2, vids.astype(">u4").view(np.uint8)).view(np.uint8).reshape(n, 8)
        lines[:, 21] = 10
        cuts = (np.flatnonzero(secs[1:] != secs[:-1]) + 1).tolist()
        out: list[bytes] = []
        count = 0
        for a, b in zip([0, *cuts], [*cuts, n], strict=True):  # one run per second (a few per batch)
            sec = int(secs[a])
            day = self._local_day(sec)
            if day < self._oldest_kept:  # already past retention: never written
                continue
            if day != self._day or self._file is None:
                self._write(out, count)
                count = 0
                self._open(day)
            gone = self._define(cids[a:b], self.clients, 0, out) + [-1]
            gone_v = self._define(vids[a:b], self.verdicts, 1, out) + [-1]
            run = lines[a:b]
            if len(gone) > 1 or len(gone_v) > 1:  # ids of a generation no longer kept: those records are lost
                keep = ~(np.isin(cids[a:b] >> _GEN_BITS, gone) | np.isin(vids[a:b] >> _GEN_BITS, gone_v))
                self.dropped += int((~keep).sum())
                run = run[keep]
            out.append(b"T %d\n" % sec)
            out.append(run.tobytes())
            count += len(run)
        self._write(out, count)

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

    def _take(self) -> tuple[np.ndarray, np.ndarray] | None:
        """The queued records of every buffer (their heads: producers only append), as Unix times and refs."""
        import numpy as np

        walls, refs = [], []
        offset = time.time() - time.monotonic()
        for b in self._buffers:
            n = len(b.ids)
            if not n:
                continue
            t, i = b.times[:n], b.ids[:n]
            del b.times[:n]
            del b.ids[:n]
            w = np.frombuffer(t, dtype=np.float64)
            walls.append(w if b.wall else w + offset)
            refs.append(np.frombuffer(i, dtype=np.uint64))
        if not walls:
            return None
        if len(walls) == 1:
            return walls[0], refs[0]
        return np.concatenate(walls), np.concatenate(refs)

    def _drain(self) -> None:
        self._busy = True
        try:
            batch = self._take()
            if batch is None:
                return
            try:
                self._encode(*batch)
            except Exception:
                log.exception("querylog: could not write %d records", len(batch[0]))
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
        for day, name in daily_files(self.path):
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
        while (self.queued() or self._busy) and time.monotonic() < deadline:
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
