"""Rows ↔ records and connection set-up for :mod:`filterproxy.state.store` (kept apart to keep it small)."""

from __future__ import annotations

import datetime as dt
import hashlib
import os
from typing import Any

import sqlalchemy as sa

from filterproxy.state import shapes
from filterproxy.state.model import Device, Override, Pause, Review, User


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def at(t: dt.datetime) -> dt.datetime:
    """A stored time, aware and in UTC (SQLite hands back naive times: they were stored in UTC)."""
    return t.replace(tzinfo=dt.UTC) if t.tzinfo is None else t.astimezone(dt.UTC)


def utc(t: dt.datetime | None) -> dt.datetime | None:
    """SQLite hands back naive times: they were stored in UTC."""
    if t is None:
        return None
    return t.replace(tzinfo=dt.UTC) if t.tzinfo is None else t.astimezone(dt.UTC)


def sha(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def url(url: str) -> str:
    """``postgresql://`` → the psycopg 3 driver; anything else as given."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def sqlite_engine(url: str, *, writer: bool = True) -> sa.Engine:
    """SQLite in WAL mode with ``synchronous=FULL``: a committed change survives kill -9 and power loss.
    The ``writer`` begins with ``BEGIN IMMEDIATE`` so two writers queue on ``busy_timeout`` instead of failing
    on lock upgrade; the reader (serial polls, listings) with a plain ``BEGIN``, which takes no write lock."""
    path = sa.engine.make_url(url).database
    if path and path != ":memory:":
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    engine = sa.create_engine(url, connect_args={"isolation_level": None, "check_same_thread": False})

    @sa.event.listens_for(engine, "connect")
    def _pragmas(dbapi_conn: Any, _record: Any) -> None:
        cur = dbapi_conn.cursor()
        for pragma in ("journal_mode=WAL", "synchronous=FULL", "busy_timeout=10000", "foreign_keys=ON"):
            cur.execute("PRAGMA " + pragma)  # constant text: no value is ever built into it
        cur.close()

    @sa.event.listens_for(engine, "begin")
    def _begin(conn: sa.Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE" if writer else "BEGIN")

    return engine


def override(r: Any) -> Override:
    return Override(
        r.id, r.group, r.name, r.action, r.created_by, r.created_role, at(r.created_at), utc(r.expires_at), r.note
    )


def pause(r: Any) -> Pause:
    return Pause(r.id, r.client, r.group, r.created_by, at(r.created_at), at(r.expires_at))


def device(r: Any) -> Device:
    return Device(r.id, r.name, r.group, r.ip, r.mac, r.doh_id, utc(r.last_seen))


def user(r: Any) -> User:
    groups = tuple(g for g in r.groups.split(",") if g)
    return User(r.name, r.role, groups, r.password_hash, at(r.created_at))


def review(r: Any) -> Review:
    return Review(
        r.id,
        r.group,
        r.host_or_url,
        r.reason_id,
        r.message,
        r.status,
        at(r.created_at),
        r.decided_by,
        utc(r.decided_at),
        r.note,
        r.override_id,
    )


class Rec:
    """Attribute access over a merged row dict (update_device's answer)."""

    def __init__(self, d: dict[str, Any]):
        self.__dict__.update(d)


def device_fields(changes: dict[str, str | None]) -> dict[str, Any]:
    """Normalised device fields (the keys given; None clears ip/mac/doh_id)."""
    check = {
        "name": shapes.user_name,
        "group": shapes.group,
        "ip": shapes.ip,
        "mac": shapes.mac,
        "doh_id": shapes.doh_id,
    }
    out: dict[str, Any] = {}
    for key, value in changes.items():
        if value is None:
            if key in ("name", "group"):
                raise shapes.ShapeError(f"device {key}: required")
            out[key] = None
        else:
            out[key] = check[key](value)
    return out


def pause_group(p: Pause, dev_groups: dict[int, str]) -> str | None:
    """The group a pause concerns: its group, its device's group, or None (an address)."""
    if p.group is not None:
        return p.group
    if p.client and p.client.startswith("device:"):
        return dev_groups.get(int(p.client[7:]))
    return None


def review_host(host_or_url: str) -> str:
    from urllib.parse import urlsplit

    text = host_or_url if "://" in host_or_url else "http://" + host_or_url
    return shapes.host(urlsplit(text).hostname or "")


def state_url(cfg: object) -> str:
    """``server.state_db`` or ``sqlite:///<state_dir>/state.db``."""
    server = getattr(cfg, "server", None)
    url = getattr(server, "state_db", None)
    if url:
        return str(url)
    state_dir = getattr(server, "state_dir", "") or "."
    return "sqlite:///" + os.path.join(os.path.abspath(state_dir), "state.db")
