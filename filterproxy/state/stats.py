"""Statistics without surveillance: decisions counted per minute by group × category × action × protocol.

Every deciding process feeds :data:`COUNTER` from the places that already aggregate for the metrics (the
DNS ``Tally`` flush once a second, the proxy's per-decision count), so the DNS hot path pays nothing per
query. A :class:`StatsWriter` thread adds the counts to the state database every ``admin.stats_flush_seconds``
with an upsert-increment (gateways sharing a PostgreSQL database add up) into minute, hour and day rows, each
with pre-added series rows (category and protocol ``*``), so a month's answer reads a few thousand rows. A
failed write keeps the counts in memory (bounded) and retries. The main process deletes minute rows after 7
days (the hour rows keep the counts: the roll-up) and every row after ``admin.stats_retention_days``. The
tables have no client and no name column.

:func:`stats` answers ``GET /api/v1/stats`` (shape in docs/control-api.md, section "Statistics").
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from filterproxy.state.schema import stats_day, stats_hour, stats_minute

if TYPE_CHECKING:
    from filterproxy.config import Config
    from filterproxy.state.store import Store

log = logging.getLogger("filterproxy.stats")

Key = tuple[int, str, str, str, str]  # (minute start in Unix seconds, group, category, action, protocol)

MINUTE, HOUR, DAY = 60, 3600, 86400
ROLL_UP_AFTER = 7 * DAY  # minute rows older than this are deleted: the hour rows keep their counts
HOUSEKEEPING_EVERY = 600.0  # seconds between two roll-up + retention passes (main process)
FIRST_TIDY = 5.0  # seconds after the start: the first pass (out of the start-up's way)
MAX_KEYS = 100_000  # counts kept in memory while the database is unreachable; the oldest minutes go first
MAX_BUCKETS = 100_000  # a stats() answer has at most this many time steps
_KEY_COLS = ("t", "group", "category", "action", "protocol")


class StatsCounter:
    """One process's counts not yet written, keyed by (minute, group, category, action, protocol).

    Off (``add`` returns at once) until a :class:`StatsWriter` turns it on, so a process without a state
    database keeps nothing. Thread-safe: the listeners add, the writer takes.
    """

    def __init__(self, max_keys: int = MAX_KEYS) -> None:
        self.enabled = False
        self.max_keys = max_keys
        self.dropped = 0  # counts lost because the buffer was full (a long database outage)
        self._counts: dict[Key, int] = {}
        self._lock = threading.Lock()

    def add(self, group: str, category: str, action: str, protocol: str, n: int = 1, now: float | None = None) -> None:
        if not self.enabled or n <= 0:
            return
        t = int(time.time() if now is None else now)
        key = (t - t % MINUTE, group or "unknown", category or "none", action, protocol)
        with self._lock:
            self._counts[key] = self._counts.get(key, 0) + n
            if len(self._counts) > self.max_keys:
                self._shed()

    def take(self) -> dict[Key, int]:
        """Everything counted since the last take (the buffer starts empty again)."""
        with self._lock:
            out, self._counts = self._counts, {}
        return out

    def give_back(self, counts: dict[Key, int]) -> None:
        """Counts a failed write could not store: merged back for the next try (bounded)."""
        with self._lock:
            for k, n in counts.items():
                self._counts[k] = self._counts.get(k, 0) + n
            if len(self._counts) > self.max_keys:
                self._shed()

    def _shed(self) -> None:
        """Drop the oldest minutes until the buffer fits again (called with the lock held)."""
        for k in sorted(self._counts)[: len(self._counts) - self.max_keys]:
            self.dropped += self._counts.pop(k)


COUNTER = StatsCounter()
"""This process's counter: the DNS tally and the proxy addon add to it."""


ALL = "*"  # the pre-added rows: category and protocol "*" (group "*": all groups) hold the series
LEVELS = ((MINUTE, stats_minute), (HOUR, stats_hour), (DAY, stats_day))


def _upsert(engine: sa.Engine, table: sa.Table) -> sa.Executable:
    """INSERT into ``table`` adding to the count of a row that exists (the dialect's ``on_conflict_do_update``;
    SQLite and PostgreSQL spell it the same)."""
    if engine.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        pg = pg_insert(table)
        return pg.on_conflict_do_update(
            index_elements=list(_KEY_COLS), set_={"count": table.c.count + pg.excluded["count"]}
        )
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

    lite = sqlite_insert(table)
    return lite.on_conflict_do_update(
        index_elements=list(_KEY_COLS), set_={"count": table.c.count + lite.excluded["count"]}
    )


def _expand(counts: dict[Key, int], size: int) -> list[dict[str, Any]]:
    """Counts per ``size``-second bucket: each key, its group's series row and the all-groups series row."""
    out: dict[Key, int] = {}
    for (t, g, c, a, p), n in counts.items():
        b = t - t % size
        for k in ((b, g, c, a, p), (b, g, ALL, a, ALL), (b, ALL, ALL, a, ALL)):
            out[k] = out.get(k, 0) + n
    return [dict(zip(_KEY_COLS, k), count=n) for k, n in sorted(out.items())]  # sorted: no deadlocks between


def write(engine: sa.Engine, counts: dict[Key, int]) -> None:  # gateways adding to the same rows
    """Add ``counts`` (per minute) to the minute, hour and day rows, in one transaction."""
    if not counts:
        return
    with engine.begin() as conn:
        for size, table in LEVELS:
            conn.execute(_upsert(engine, table), _expand(counts, size))


def _lock_housekeeping(conn: sa.Connection) -> None:
    """Gateways sharing PostgreSQL: one housekeeping pass at a time."""
    if conn.dialect.name == "postgresql":
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(7311001)"))


def _minute_horizon(now: float) -> int:
    """Minute rows before this (whole hours, 7 days ago) are gone: the hour rows answer for them."""
    cutoff = int(now - ROLL_UP_AFTER)
    return cutoff - cutoff % HOUR


def roll_up(engine: sa.Engine, now: float | None = None) -> int:
    """After 7 days the counts are kept per hour: the minute rows of hours that ended before go (their hour
    and day rows were added with them). Returns the minute rows deleted."""
    cutoff = _minute_horizon(time.time() if now is None else now)
    with engine.begin() as conn:
        _lock_housekeeping(conn)
        return conn.execute(sa.delete(stats_minute).where(stats_minute.c.t < cutoff)).rowcount


def expire(engine: sa.Engine, retention_days: int, now: float | None = None) -> int:
    """Delete the rows older than the retention period (a day row once its whole day is); returns how many."""
    cutoff = int((time.time() if now is None else now) - retention_days * 86400)
    with engine.begin() as conn:
        _lock_housekeeping(conn)
        return sum(conn.execute(sa.delete(t).where(t.c.t < cutoff - (size - MINUTE))).rowcount for size, t in LEVELS)


def _epoch(t: dt.datetime) -> int:
    if t.tzinfo is None:
        raise ValueError("times must carry an offset (e.g. 2026-12-01T00:00:00Z)")
    return int(t.timestamp())


def stats(
    engine: sa.Engine,
    from_: dt.datetime,
    to: dt.datetime,
    step_seconds: int,
    group: str | None = None,
    now: float | None = None,
) -> dict[str, Any]:
    """Counts in ``[from_, to)``: one series per action in steps of ``step_seconds``, and the window's totals by
    group, category, action and protocol (shape: docs/control-api.md, "Statistics").

    Counts older than 7 days are hourly: such an hour counts in the step (and the window) where it starts.
    Raises ``ValueError`` for a window the API should refuse (400).
    """
    start, end = _epoch(from_), _epoch(to)
    if step_seconds < MINUTE or step_seconds % MINUTE:
        raise ValueError("step must be a whole number of minutes, in seconds (60, 3600, …)")
    if end <= start:
        raise ValueError("'to' must be after 'from'")
    n = -(-(end - start) // step_seconds)
    if n > MAX_BUCKETS:
        raise ValueError(f"{n} steps asked; at most {MAX_BUCKETS}: use a longer step")
    horizon = _minute_horizon(time.time() if now is None else now)
    series: dict[str, list[int]] = {}
    totals: dict[tuple[str, str, str, str], int] = {}
    with engine.connect() as conn:
        for table, lo, hi in _series_pieces(start, end, step_seconds, horizon):
            for t, action, count in conn.execute(_series_query(table, lo, hi, group)):
                counts = series.get(action)
                if counts is None:
                    counts = series[action] = [0] * n
                counts[(t - start) // step_seconds] += count
        for table, lo, hi in _total_pieces(start, end, horizon):
            for g, c, a, p, count in conn.execute(_totals_query(table, lo, hi, group)):
                totals[(g, c, a, p)] = totals.get((g, c, a, p), 0) + int(count)
    return {
        "from": dt.datetime.fromtimestamp(start, dt.UTC).isoformat(),
        "to": dt.datetime.fromtimestamp(end, dt.UTC).isoformat(),
        "step": step_seconds,
        "group": group,
        "series": [{"action": a, "counts": series[a]} for a in sorted(series)],
        "totals": [
            {"group": g, "category": c, "action": a, "protocol": p, "count": totals[(g, c, a, p)]}
            for g, c, a, p in sorted(totals)
        ],
    }


def answer(
    store: Store, from_: dt.datetime, to: dt.datetime, step_seconds: int, group: str | None = None
) -> dict[str, Any]:
    """``GET /api/v1/stats``: :func:`stats` on the store's read engine; a bad window raises ``StateError`` (400)."""
    from filterproxy.state.store import StateError

    try:
        return stats(store.reader, from_, to, step_seconds, group)
    except ValueError as exc:
        raise StateError(str(exc)) from None


Piece = tuple[sa.Table, int, int]  # rows of this table with lo <= t < hi


def _minutes(lo: int, hi: int, horizon: int) -> list[Piece]:
    """[lo, hi) at minute resolution: minute rows after the horizon, hour rows (by their start) before it."""
    out = []
    if lo < min(hi, horizon):
        out.append((stats_hour, lo, min(hi, horizon)))
    if max(lo, horizon) < hi:
        out.append((stats_minute, max(lo, horizon), hi))
    return out


def _series_pieces(start: int, end: int, step: int, horizon: int) -> list[Piece]:
    """Where the series come from: the coarsest rows the step and the start are whole multiples of."""
    for size, table in reversed(LEVELS[1:]):
        if step % size == 0 and start % size == 0:
            whole = end - end % size
            return [(table, start, whole)] + _minutes(whole, end, horizon)  # a last part-bucket from minutes
    return _minutes(start, end, horizon)


def _total_pieces(start: int, end: int, horizon: int) -> list[Piece]:
    """[start, end) as whole days (day rows), whole hours (hour rows) and the minutes at the edges."""
    out: list[Piece] = []

    def cover(lo: int, hi: int, level: int) -> None:
        if level == 0:
            out.extend(_minutes(lo, hi, horizon))
            return
        size, table = LEVELS[level]
        a, b = -(-lo // size) * size, hi // size * size
        if a >= b:
            cover(lo, hi, level - 1)
            return
        out.append((table, a, b))
        cover(lo, a, level - 1)
        cover(b, hi, level - 1)

    cover(start, end, len(LEVELS) - 1)
    return [p for p in out if p[1] < p[2]]


def _series_query(table: sa.Table, lo: int, hi: int, group: str | None) -> sa.Select[Any]:
    c = table.c
    where = (c.group == (group or ALL), c.category == ALL, c.protocol == ALL, c.t >= lo, c.t < hi)
    return sa.select(c.t, c.action, c.count).where(*where)


def _totals_query(table: sa.Table, lo: int, hi: int, group: str | None) -> sa.Select[Any]:
    c = table.c
    cols = (c.group, c.category, c.action, c.protocol)
    where = [c.t >= lo, c.t < hi, c.category != ALL]
    if group is not None:
        where.append(c.group == group)
    return sa.select(*cols, sa.func.sum(c.count)).where(*where).group_by(*cols)


class StatsWriter:
    """The thread that writes :data:`COUNTER` to the database every ``interval`` seconds.

    ``target`` is the state database's URL (opened, and created, by the thread on its first write; retried
    while it fails) or an open engine. ``housekeeping`` (the main process only): roll-up and retention every
    :data:`HOUSEKEEPING_EVERY` seconds. ``stop`` writes what is left.
    """

    def __init__(
        self,
        target: str | sa.Engine,
        interval: float,
        *,
        retention_days: int,
        housekeeping: bool,
        counter: StatsCounter = COUNTER,
    ) -> None:
        self.url = target if isinstance(target, str) else None
        self.engine = target if isinstance(target, sa.Engine) else None
        self.interval, self.retention_days = interval, retention_days
        self.housekeeping = housekeeping
        self.counter = counter
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_error = 0.0

    def start(self) -> StatsWriter:
        self.counter.enabled = True
        self._thread = threading.Thread(target=self._run, name="filterproxy-stats", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        self.flush()

    def _engine(self) -> sa.Engine:
        if self.engine is None:
            from filterproxy.state.store import Store

            assert self.url is not None
            self.engine = Store.open(self.url).engine  # creates and migrates the database when missing
        return self.engine

    def flush(self) -> bool:
        """Write what was counted; on failure keep it for the next try. True when written."""
        counts = self.counter.take()
        try:
            write(self._engine(), counts)
            return True
        except Exception as exc:  # the database is away: count on in memory, retry at the next interval
            self.counter.give_back(counts)
            if time.monotonic() - self._last_error > 60:
                self._last_error = time.monotonic()
                log.warning("stats: cannot write %d counts, kept for the next try: %s", len(counts), exc)
            return False

    def tidy(self, now: float | None = None) -> None:
        """Roll-up, then retention (errors logged; the next pass tries again)."""
        try:
            moved = roll_up(self._engine(), now)
            gone = expire(self._engine(), self.retention_days, now)
            if moved or gone:
                log.info("stats: %d minute rows rolled up into hours, %d rows past retention deleted", moved, gone)
        except Exception:
            log.exception("stats: roll-up/retention failed; next pass in %.0f s", HOUSEKEEPING_EVERY)

    def _run(self) -> None:
        next_tidy = time.monotonic() + (FIRST_TIDY if self.housekeeping else float("inf"))
        while not self._stop.wait(self.interval):
            self.flush()
            if time.monotonic() >= next_tidy:
                self.tidy()
                next_tidy = time.monotonic() + HOUSEKEEPING_EVERY


def start_writer(cfg: Config, *, housekeeping: bool) -> StatsWriter:
    """This process's writer for the configuration's state database (``housekeeping``: the main process)."""
    from filterproxy.state.store import state_url

    a = cfg.admin
    return StatsWriter(
        state_url(cfg), a.stats_flush_seconds, retention_days=a.stats_retention_days, housekeeping=housekeeping
    ).start()
