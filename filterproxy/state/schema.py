"""The state store's tables (SQLAlchemy Core) and their migrations.

One :data:`METADATA` holds every table of the state database, so other modules (statistics, …) define
theirs on it too. :data:`MIGRATIONS` is the ordered list of schema steps; ``schema_version`` records how
many ran. A new step is appended (never edited): ``MIGRATIONS.append(step)`` where ``step(conn)`` runs in
the migrating transaction. :func:`migrate` runs the missing steps at open.
"""

from __future__ import annotations

from collections.abc import Callable

import sqlalchemy as sa

METADATA = sa.MetaData()

_TS = sa.DateTime(timezone=True)

schema_version = sa.Table(
    "schema_version",
    METADATA,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("version", sa.Integer, nullable=False),
)

serial = sa.Table(
    "serial",
    METADATA,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("value", sa.BigInteger, nullable=False),
)

users = sa.Table(
    "users",
    METADATA,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("role", sa.String(16), nullable=False),
    sa.Column("groups", sa.Text, nullable=False, default=""),  # comma-separated group ids
    sa.Column("password_hash", sa.Text, nullable=False),
    sa.Column("created_at", _TS, nullable=False),
)

tokens = sa.Table(
    "tokens",
    METADATA,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("name", sa.String(64), nullable=False, unique=True),
    sa.Column("user", sa.String(64), sa.ForeignKey("users.name", ondelete="CASCADE"), nullable=False),
    sa.Column("secret_sha256", sa.String(64), nullable=False, unique=True),
    sa.Column("created_at", _TS, nullable=False),
    sa.Column("last_used", _TS, nullable=True),
)

sessions = sa.Table(
    "sessions",
    METADATA,
    sa.Column("secret_sha256", sa.String(64), primary_key=True),
    sa.Column("user", sa.String(64), sa.ForeignKey("users.name", ondelete="CASCADE"), nullable=False),
    sa.Column("csrf", sa.String(64), nullable=False),
    sa.Column("created_at", _TS, nullable=False),
    sa.Column("expires_at", _TS, nullable=False),
)

overrides = sa.Table(
    "overrides",
    METADATA,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("group", sa.String(64), nullable=False),
    sa.Column("name", sa.String(255), nullable=False),
    sa.Column("action", sa.String(8), nullable=False),
    sa.Column("created_by", sa.String(80), nullable=False),
    sa.Column("created_role", sa.String(16), nullable=False),
    sa.Column("created_at", _TS, nullable=False),
    sa.Column("expires_at", _TS, nullable=True),
    sa.Column("note", sa.Text, nullable=True),
)

pauses = sa.Table(
    "pauses",
    METADATA,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("client", sa.String(64), nullable=True),
    sa.Column("group", sa.String(64), nullable=True),
    sa.Column("created_by", sa.String(80), nullable=False),
    sa.Column("created_at", _TS, nullable=False),
    sa.Column("expires_at", _TS, nullable=False),
)

devices = sa.Table(
    "devices",
    METADATA,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("name", sa.String(80), nullable=False, unique=True),
    sa.Column("group", sa.String(64), nullable=False),
    sa.Column("ip", sa.String(64), nullable=True),
    sa.Column("mac", sa.String(17), nullable=True),
    sa.Column("doh_id", sa.String(64), nullable=True),
    sa.Column("last_seen", _TS, nullable=True),
)

reviews = sa.Table(
    "reviews",
    METADATA,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("group", sa.String(64), nullable=False),
    sa.Column("host_or_url", sa.Text, nullable=False),
    sa.Column("reason_id", sa.String(200), nullable=False),
    sa.Column("message", sa.Text, nullable=True),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("created_at", _TS, nullable=False),
    sa.Column("decided_by", sa.String(80), nullable=True),
    sa.Column("decided_at", _TS, nullable=True),
    sa.Column("note", sa.Text, nullable=True),
    sa.Column("override_id", sa.Integer, nullable=True),
)

audit = sa.Table(
    "audit",
    METADATA,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("at", _TS, nullable=False, index=True),
    sa.Column("actor", sa.String(80), nullable=False),
    sa.Column("role", sa.String(16), nullable=False),
    sa.Column("action", sa.String(40), nullable=False),
    sa.Column("target", sa.String(200), nullable=False),
    sa.Column("detail", sa.JSON, nullable=False),
)


def _stats_table(name: str) -> sa.Table:
    """Decision counts (filterproxy.state.stats): a time bucket and bounded labels; no client, no name column.
    Rows with category and protocol "*" (and group "*") are the pre-added series; the index reads them."""
    table = sa.Table(
        name,
        METADATA,
        sa.Column("t", sa.BigInteger, primary_key=True),  # bucket start, Unix seconds (UTC)
        sa.Column("group", sa.String(64), primary_key=True),
        sa.Column("category", sa.String(64), primary_key=True),
        sa.Column("action", sa.String(16), primary_key=True),
        sa.Column("protocol", sa.String(16), primary_key=True),
        sa.Column("count", sa.BigInteger, nullable=False),
        sqlite_with_rowid=False,  # clustered on the primary key: a time range is one contiguous read
    )
    sa.Index(f"ix_{name}_series", table.c.group, table.c.category, table.c.protocol, table.c.t, table.c.action,
             table.c.count)  # fmt: skip
    return table


stats_minute = _stats_table("stats_minute")  # the last 7 days
stats_hour = _stats_table("stats_hour")  # until admin.stats_retention_days
stats_day = _stats_table("stats_day")  # the same, per day: a month's totals read ~30 rows per combination


def _v1(conn: sa.Connection) -> None:
    """Version 1: users, tokens, sessions, live rules, reviews, audit, and the serial row."""
    METADATA.create_all(conn, tables=[serial, users, tokens, sessions, overrides, pauses, devices, reviews, audit])
    conn.execute(sa.insert(serial).values(id=1, value=0))


def _v2(conn: sa.Connection) -> None:
    """Version 2: the statistics tables (per minute for 7 days; per hour and per day until the retention)."""
    METADATA.create_all(conn, tables=[stats_minute, stats_hour, stats_day])


Migration = Callable[[sa.Connection], None]
MIGRATIONS: list[Migration] = [_v1, _v2]
"""Schema steps in order; step N (1-based) brings the database to version N. Append, never edit."""


def migrate(conn: sa.Connection) -> int:
    """Run the steps the database has not seen, inside the caller's transaction; returns the version."""
    METADATA.create_all(conn, tables=[schema_version])
    row = conn.execute(sa.select(schema_version.c.version).where(schema_version.c.id == 1)).first()
    version = row[0] if row else 0
    if version > len(MIGRATIONS):
        raise RuntimeError(f"state database is at schema version {version}; this filterproxy knows {len(MIGRATIONS)}")
    for step in MIGRATIONS[version:]:
        step(conn)
    if row is None:
        conn.execute(sa.insert(schema_version).values(id=1, version=len(MIGRATIONS)))
    elif version != len(MIGRATIONS):
        conn.execute(sa.update(schema_version).where(schema_version.c.id == 1).values(version=len(MIGRATIONS)))
    return len(MIGRATIONS)
