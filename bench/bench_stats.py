#!/usr/bin/env python3
"""Statistics benchmark: 30 days of per-minute decision counts of a school, then ``stats()`` over 30 days.

    .venv/bin/python bench/bench_stats.py [--days 30] [--postgres] [--seed 1]

The school: 6 groups × 8 categories × 2 actions × 3 protocols, sparse: a combination has counts in a minute
with a probability that follows the day (school hours on weekdays busy, evenings light, nights and weekends
nearly idle); allows are mostly category "none". The rows are written with the server's own upsert
(``stats.write``: minute, hour and day rows with their series rows, one transaction per simulated flush of
10 minutes), then timed: ``stats()`` over the whole window at 1-minute and 1-hour steps (all groups, one
group), before and after the roll-up the server runs (minute rows older than 7 days deleted; the hour rows
answer for them). ``--postgres`` repeats it on a throw-away PostgreSQL cluster (tests/pg.py). Prints the
figures and the ratio after/before the roll-up.
"""

from __future__ import annotations

import argparse
import datetime as dt
import random
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import sqlalchemy as sa

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from filterproxy.state import schema, stats  # noqa: E402
from filterproxy.state.store import Store  # noqa: E402

GROUPS = ("primary", "lower-secondary", "upper-secondary", "staff", "guests", "library")
CATEGORIES = ("none", "adult", "gambling", "games", "social", "malware", "proxy", "violence")
ACTIONS = ("allow", "block")
PROTOCOLS = ("udp", "tcp", "http")
NOW = 1_765_000_800  # a whole hour: 2025-12-06 06:00 UTC


def _busy(t: int) -> float:
    """How likely a combination has counts in the minute starting at ``t`` (a school's week)."""
    d = dt.datetime.fromtimestamp(t, dt.UTC) + dt.timedelta(hours=7)  # local time, UTC+7
    if d.weekday() >= 5:
        return 0.02
    if 7 <= d.hour < 17:
        return 0.35
    return 0.08 if 17 <= d.hour < 22 else 0.01


def fill(engine: sa.Engine, days: int, seed: int) -> int:
    """Write ``days`` of minutes ending at NOW; returns the rows written."""
    rnd = random.Random(seed)
    combos = [
        (g, c, a, p)
        for g in GROUPS
        for c in CATEGORIES
        for a in ACTIONS
        for p in PROTOCOLS
        if (a == "allow") == (c == "none") or rnd.random() < 0.1  # allows are uncategorised, a few are not
    ]
    rows, batch = 0, {}
    for t in range(NOW - days * 86400, NOW, 60):
        p = _busy(t)
        for g, c, a, proto in combos:
            if rnd.random() < p:
                batch[(t, g, c, a, proto)] = rnd.randint(1, 40 if a == "allow" else 5)
        if len(batch) > 5000 or t % 600 == 540:
            stats.write(engine, batch)
            rows += len(batch)
            batch = {}
    stats.write(engine, batch)
    return rows + len(batch)


def _ms(fn: Callable[[], object], repeat: int = 5) -> float:
    fn()  # warm the cache
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best * 1000


def _queries(engine: sa.Engine, days: int) -> dict[str, float]:
    a = dt.datetime.fromtimestamp(NOW - days * 86400, dt.UTC)
    b = dt.datetime.fromtimestamp(NOW, dt.UTC)
    return {
        "1-minute steps, all groups": _ms(lambda: stats.stats(engine, a, b, 60, now=NOW)),
        "1-minute steps, one group": _ms(lambda: stats.stats(engine, a, b, 60, group="primary", now=NOW)),
        "1-hour steps, all groups": _ms(lambda: stats.stats(engine, a, b, 3600, now=NOW)),
        "1-hour steps, one group": _ms(lambda: stats.stats(engine, a, b, 3600, group="primary", now=NOW)),
    }


def _count(engine: sa.Engine, table: sa.Table) -> int:
    with engine.connect() as conn:
        return conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one()


def run(label: str, url: str, days: int, seed: int) -> None:
    engine = Store.open(url).engine
    t0 = time.perf_counter()
    rows = fill(engine, days, seed)
    took = time.perf_counter() - t0
    print(f"\n{label}: {rows:,} counts (minute × combination) for {days} days")
    print(f"written in {took:.1f} s ({rows / took:,.0f} rows/s)")
    before = _queries(engine, days)
    t0 = time.perf_counter()
    moved = stats.roll_up(engine, now=NOW)
    took = time.perf_counter() - t0
    minutes, hours = _count(engine, schema.stats_minute), _count(engine, schema.stats_hour)
    print(f"roll-up: {moved:,} minute rows deleted in {took:.2f} s; {minutes:,} minute + {hours:,} hour rows left")
    after = _queries(engine, days)
    print(f"{'stats() over ' + str(days) + ' days':34} {'no roll-up':>12} {'rolled up':>12} {'ratio':>7}")
    for k in before:
        print(f"{k:34} {before[k]:10.1f} ms {after[k]:10.1f} ms {after[k] / before[k]:6.2f}x")
    engine.dispose()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--days", type=int, default=30)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--postgres", action="store_true", help="also on a throw-away PostgreSQL cluster")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run("SQLite", f"sqlite:///{tmp}/state.db", a.days, a.seed)
    if a.postgres:
        from pg import running_cluster

        with running_cluster() as pg:
            run("PostgreSQL", pg.url(pg.create_database()), a.days, a.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
