"""The state store: users, tokens, sessions, overrides, pauses, devices, reviews, statistics and the audit.

SQLite by default (``<state_dir>/state.db``, WAL mode: a change answered with 2xx survives ``kill -9``);
``server.state_db: postgresql://…`` lets several gateways share it. Built on SQLAlchemy Core (no
string-built SQL); the schema is migrated at open, with a version table (:mod:`filterproxy.state.schema`).

Every change to the live rules (overrides, pauses, devices) bumps one ``serial`` in the same
transaction; deciding processes poll it (and PostgreSQL also NOTIFYs) to rebuild :class:`LiveRules`.
Every state change writes an :class:`AuditEntry` in the same transaction.

Methods are synchronous (SQLAlchemy's); the admin server calls them in a thread (house rule 9).

INTERFACE CONTRACT (coordinator): the signatures below are what the admin server codes against. Keep
them; add methods freely.
"""

from __future__ import annotations

import datetime as dt
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa

from filterproxy.state import rows as R
from filterproxy.state import schema as S
from filterproxy.state import shapes
from filterproxy.state.model import (
    Actor,
    AuditEntry,
    Device,
    LiveRules,
    Override,
    OverrideAction,
    Pause,
    Review,
    Role,
    Token,
    User,
)

TEACHER_MAX_MINUTES = 480  # config admin.teacher_max_minutes: one school day
NOTIFY_CHANNEL = "filterproxy_live"  # PostgreSQL: NOTIFY with every serial bump, LISTENed to by the watchers


class StateError(Exception):
    """A request the store refuses (unknown id, a duplicate name, a teacher outside their groups, the legal
    list): the admin server answers it with 400/403/404 and ``str(exc)`` as ``detail``."""

    status = 400


class NotFound(StateError):
    status = 404


class Forbidden(StateError):
    status = 403


def _shape(fn: Any, *args: Any) -> Any:
    """``fn(*args)`` with a malformed value answered as a StateError (400)."""
    try:
        return fn(*args)
    except shapes.ShapeError as exc:
        raise StateError(str(exc)) from None


def state_url(cfg: object) -> str:
    """``server.state_db`` or ``sqlite:///<state_dir>/state.db``."""
    return R.state_url(cfg)


class Store:
    """One database, opened once per process (``Store.open(url)``)."""

    def __init__(
        self,
        engine: sa.Engine,
        url: str,
        teacher_max_minutes: float = TEACHER_MAX_MINUTES,
        reader: sa.Engine | None = None,
    ):
        self.engine = engine  # changes
        self.reader = reader or engine  # reads (SQLite: without the writers' lock)
        self.url = url
        self.teacher_max_minutes = teacher_max_minutes

    @classmethod
    def open(cls, url: str) -> Store:
        """``sqlite:////abs/path/state.db`` or ``postgresql://user@host:port/db``; migrates the schema."""
        real = R.url(url)
        if real.startswith("sqlite"):
            engine = R.sqlite_engine(real)
        elif real.startswith("postgresql+psycopg://"):
            engine = sa.create_engine(real, pool_pre_ping=True)
        else:
            raise StateError(f"state_db {url!r}: expected sqlite:///PATH or postgresql://…")
        with engine.begin() as conn:
            if engine.dialect.name == "postgresql":  # one migrator at a time across gateways
                conn.execute(sa.select(sa.func.pg_advisory_xact_lock(0x66707374)))
            S.migrate(conn)
        reader = R.sqlite_engine(real, writer=False) if real.startswith("sqlite") else None
        return cls(engine, url, reader=reader)

    @classmethod
    def for_config(cls, cfg: object) -> Store:
        """The store named by ``server.state_db``, default ``sqlite:///<state_dir>/state.db``."""
        store = cls.open(state_url(cfg))
        admin = getattr(cfg, "admin", None)
        store.teacher_max_minutes = getattr(admin, "teacher_max_minutes", TEACHER_MAX_MINUTES)
        return store

    def close(self) -> None:
        self.engine.dispose()
        self.reader.dispose()

    # ---------------------------------------------------------------- transactions
    @contextmanager
    def _change(
        self, actor: Actor, action: str, target: str, detail: dict[str, Any] | None = None, *, live: bool = False
    ) -> Iterator[tuple[sa.Connection, dict[str, Any]]]:
        """One transaction for a state change: yields (connection, audit detail to fill); on success writes
        the audit row and, for the live rules (``live``), bumps the serial — all in the same commit."""
        info: dict[str, Any] = dict(detail or {})
        with self.engine.begin() as conn:
            yield conn, info
            target = info.pop("_target", target)
            conn.execute(
                sa.insert(S.audit).values(
                    at=R.now(), actor=actor.name, role=actor.role, action=action, target=target, detail=info
                )
            )
            if live:
                conn.execute(sa.update(S.serial).where(S.serial.c.id == 1).values(value=S.serial.c.value + 1))
                if conn.dialect.name == "postgresql":  # delivered at commit: the watchers wake (state.watch)
                    conn.execute(sa.select(sa.func.pg_notify(NOTIFY_CHANNEL, "")))

    def _teacher_minutes(self, actor: Actor, minutes: float | None) -> None:
        if actor.role == "teacher" and (minutes is None or minutes > self.teacher_max_minutes):
            raise Forbidden(f"teachers set rules of at most {self.teacher_max_minutes:g} minutes")

    @staticmethod
    def _may(actor: Actor, group: str) -> None:
        if not actor.may_manage(group):
            raise Forbidden(f"{actor.name} may not manage group {group}")

    @staticmethod
    def _admin(actor: Actor) -> None:
        if actor.role not in ("admin", "system"):
            raise Forbidden("only an admin may do this")

    # ---------------------------------------------------------------- live rules
    def serial(self) -> int:
        """The change counter of the live rules (cheap: one row)."""
        with self.reader.connect() as conn:
            return int(conn.execute(sa.select(S.serial.c.value).where(S.serial.c.id == 1)).scalar_one())

    def live(self, now: dt.datetime | None = None) -> LiveRules:
        """All unexpired overrides and pauses, and all devices, as one value."""
        now = now or R.now()
        with self.reader.begin() as conn:  # one snapshot of the three tables and the serial
            serial = int(conn.execute(sa.select(S.serial.c.value).where(S.serial.c.id == 1)).scalar_one())
            ovs = tuple(R.override(r) for r in conn.execute(self._overrides_q(now)))
            ps = tuple(R.pause(r) for r in conn.execute(self._pauses_q(now)))
            devs = tuple(R.device(r) for r in conn.execute(sa.select(S.devices).order_by(S.devices.c.id)))
        ends = [o.expires_at for o in ovs if o.expires_at] + [p.expires_at for p in ps]
        return LiveRules(serial, ovs, ps, devs, min(ends) if ends else None)

    @staticmethod
    def _overrides_q(now: dt.datetime, groups: frozenset[str] | None = None) -> sa.Select[Any]:
        c = S.overrides.c
        q = sa.select(S.overrides).where(sa.or_(c.expires_at.is_(None), c.expires_at > now)).order_by(c.id)
        return q.where(c.group.in_(sorted(groups))) if groups is not None else q

    @staticmethod
    def _pauses_q(now: dt.datetime) -> sa.Select[Any]:
        return sa.select(S.pauses).where(S.pauses.c.expires_at > now).order_by(S.pauses.c.id)

    # ---------------------------------------------------------------- overrides
    def add_override(
        self,
        actor: Actor,
        group: str,
        name: str,
        action: OverrideAction,
        minutes: int | None = None,
        note: str | None = None,
    ) -> Override:
        try:
            group, name, mins = shapes.group(group), shapes.host(name), shapes.minutes(minutes)
        except shapes.ShapeError as exc:
            raise StateError(str(exc)) from None
        if action not in ("allow", "block"):
            raise StateError(f"action {action!r}: expected allow or block")
        self._may(actor, group)
        self._teacher_minutes(actor, mins)
        detail = {"group": group, "name": name, "action": action, "minutes": mins}
        with self._change(actor, "override.add", "", detail, live=True) as (conn, info):
            o = self._insert_override(conn, actor, group, name, action, mins, note)
            info["_target"] = f"override {o.id}"
        return o

    @staticmethod
    def _insert_override(
        conn: sa.Connection, actor: Actor, group: str, name: str, action: str, mins: float | None, note: str | None
    ) -> Override:
        now = R.now()
        expires = now + dt.timedelta(minutes=mins) if mins is not None else None
        values = dict(
            group=group,
            name=name,
            action=action,
            created_by=actor.name,
            created_role=actor.role,
            created_at=now,
            expires_at=expires,
            note=note,
        )
        oid = conn.execute(sa.insert(S.overrides).values(**values).returning(S.overrides.c.id)).scalar_one()
        return Override(oid, group, name, action, actor.name, actor.role, now, expires, note)  # type: ignore[arg-type]

    def overrides(self, groups: frozenset[str] | None = None) -> list[Override]:
        """Unexpired overrides (of ``groups`` only, when given)."""
        with self.reader.connect() as conn:
            return [R.override(r) for r in conn.execute(self._overrides_q(R.now(), groups))]

    def remove_override(self, actor: Actor, override_id: int) -> None:
        with self._change(actor, "override.remove", f"override {override_id}", live=True) as (conn, info):
            row = conn.execute(sa.select(S.overrides).where(S.overrides.c.id == override_id)).first()
            if row is None:
                raise NotFound(f"override {override_id}: not found")
            self._may(actor, row.group)
            info.update(group=row.group, name=row.name, action=row.action)
            conn.execute(sa.delete(S.overrides).where(S.overrides.c.id == override_id))

    def set_override_expiry(self, actor: Actor, override_id: int, expires_at: dt.datetime | None) -> None:
        """Move an override's expiry (admins; tests and scripts that need an exact time)."""
        self._admin(actor)
        with self._change(actor, "override.expiry", f"override {override_id}", live=True) as (conn, info):
            n = conn.execute(
                sa.update(S.overrides).where(S.overrides.c.id == override_id).values(expires_at=expires_at)
            ).rowcount
            if not n:
                raise NotFound(f"override {override_id}: not found")
            info["expires_at"] = expires_at.isoformat() if expires_at else None

    # ---------------------------------------------------------------- pauses
    def add_pause(self, actor: Actor, minutes: int, client: str | None = None, group: str | None = None) -> Pause:
        try:
            mins = shapes.minutes(minutes, required=True)
            client = shapes.client(client) if client is not None else None
            group = shapes.group(group) if group is not None else None
        except shapes.ShapeError as exc:
            raise StateError(str(exc)) from None
        if (client is None) == (group is None):
            raise StateError("a pause names either a client or a group")
        self._teacher_minutes(actor, mins)
        with self._change(actor, "pause.add", "", {"client": client, "group": group}, live=True) as (conn, info):
            if group is not None:
                self._may(actor, group)
            elif client is not None and client.startswith("device:"):
                dev = conn.execute(sa.select(S.devices).where(S.devices.c.id == int(client[7:]))).first()
                if dev is None:
                    raise NotFound(f"{client}: no such device")
                self._may(actor, dev.group)
            else:
                self._admin(actor)  # an address's group is the configuration's: teachers pause devices or groups
            now = R.now()
            expires = now + dt.timedelta(minutes=mins or 0)
            values = dict(client=client, group=group, created_by=actor.name, created_at=now, expires_at=expires)
            pid = conn.execute(sa.insert(S.pauses).values(**values).returning(S.pauses.c.id)).scalar_one()
            info["_target"] = f"pause {pid}"
            info["minutes"] = mins
        return Pause(pid, client, group, actor.name, now, expires)

    def pauses(self, groups: frozenset[str] | None = None) -> list[Pause]:
        with self.reader.connect() as conn:
            out = [R.pause(r) for r in conn.execute(self._pauses_q(R.now()))]
            if groups is None:
                return out
            dev_groups = {r.id: r.group for r in conn.execute(sa.select(S.devices.c.id, S.devices.c.group))}
        return [p for p in out if R.pause_group(p, dev_groups) in groups]

    def remove_pause(self, actor: Actor, pause_id: int) -> None:
        with self._change(actor, "pause.remove", f"pause {pause_id}", live=True) as (conn, info):
            row = conn.execute(sa.select(S.pauses).where(S.pauses.c.id == pause_id)).first()
            if row is None:
                raise NotFound(f"pause {pause_id}: not found")
            dev_groups = {r.id: r.group for r in conn.execute(sa.select(S.devices.c.id, S.devices.c.group))}
            g = R.pause_group(R.pause(row), dev_groups)
            if g is None:
                self._admin(actor)
            else:
                self._may(actor, g)
            info.update(client=row.client, group=row.group)
            conn.execute(sa.delete(S.pauses).where(S.pauses.c.id == pause_id))

    # ---------------------------------------------------------------- devices
    def add_device(
        self,
        actor: Actor,
        name: str,
        group: str,
        ip: str | None = None,
        mac: str | None = None,
        doh_id: str | None = None,
    ) -> Device:
        fields = _shape(R.device_fields, {"name": name, "group": group, "ip": ip, "mac": mac, "doh_id": doh_id})
        if not (fields.get("ip") or fields.get("mac") or fields.get("doh_id")):
            raise StateError("a device needs an ip, a mac or a doh_id")
        self._may(actor, fields["group"])
        with self._change(actor, "device.add", "", dict(fields), live=True) as (conn, info):
            self._unique_device(conn, fields)
            did = conn.execute(sa.insert(S.devices).values(**fields).returning(S.devices.c.id)).scalar_one()
            info["_target"] = f"device {did}"
        return Device(did, fields["name"], fields["group"], fields.get("ip"), fields.get("mac"), fields.get("doh_id"))

    @staticmethod
    def _unique_device(conn: sa.Connection, fields: dict[str, Any], exclude: int | None = None) -> None:
        c = S.devices.c
        for key in ("name", "ip", "mac", "doh_id"):
            if fields.get(key) is None:
                continue
            q = sa.select(c.id).where(c[key] == fields[key])
            if exclude is not None:
                q = q.where(c.id != exclude)
            if conn.execute(q).first() is not None:
                raise StateError(f"a device with {key} {fields[key]} exists")

    def devices(self) -> list[Device]:
        with self.reader.connect() as conn:
            return [R.device(r) for r in conn.execute(sa.select(S.devices).order_by(S.devices.c.id))]

    def update_device(self, actor: Actor, device_id: int, **changes: str | None) -> Device:
        unknown = set(changes) - {"name", "group", "ip", "mac", "doh_id"}
        if unknown:
            raise StateError(f"unknown device field(s): {', '.join(sorted(unknown))}")
        fields = _shape(R.device_fields, changes)
        with self._change(actor, "device.update", f"device {device_id}", dict(fields), live=True) as (conn, _info):
            row = conn.execute(sa.select(S.devices).where(S.devices.c.id == device_id)).first()
            if row is None:
                raise NotFound(f"device {device_id}: not found")
            self._may(actor, row.group)
            if "group" in fields:
                self._may(actor, fields["group"])
            merged = {**row._asdict(), **fields}
            if not (merged["ip"] or merged["mac"] or merged["doh_id"]):
                raise StateError("a device needs an ip, a mac or a doh_id")
            self._unique_device(conn, fields, exclude=device_id)
            if fields:
                conn.execute(sa.update(S.devices).where(S.devices.c.id == device_id).values(**fields))
        return R.device(R.Rec(merged))

    def remove_device(self, actor: Actor, device_id: int) -> None:
        with self._change(actor, "device.remove", f"device {device_id}", live=True) as (conn, info):
            row = conn.execute(sa.select(S.devices).where(S.devices.c.id == device_id)).first()
            if row is None:
                raise NotFound(f"device {device_id}: not found")
            self._may(actor, row.group)
            info.update(name=row.name, group=row.group)
            conn.execute(sa.delete(S.pauses).where(S.pauses.c.client == f"device:{device_id}"))
            conn.execute(sa.delete(S.devices).where(S.devices.c.id == device_id))

    def touch_devices(self, seen: dict[int, dt.datetime]) -> None:
        """Record last-seen times (device id → time); no audit entry, no serial bump. A time older than the
        stored one is ignored: every deciding process writes its own, in any order."""
        if not seen:
            return
        c = S.devices.c
        with self.engine.begin() as conn:
            for did, at in sorted(seen.items()):  # sorted: gateways sharing PostgreSQL lock rows in one order
                at = at.astimezone(dt.UTC)
                newer = sa.or_(c.last_seen.is_(None), c.last_seen < at)
                conn.execute(sa.update(S.devices).where(c.id == did, newer).values(last_seen=at))

    # ---------------------------------------------------------------- users, tokens, sessions
    def add_user(self, actor: Actor, name: str, role: Role, password_hash: str, groups: tuple[str, ...] = ()) -> User:
        self._admin(actor)
        try:
            name = shapes.user_name(name)
            groups = tuple(shapes.group(g) for g in groups)
        except shapes.ShapeError as exc:
            raise StateError(str(exc)) from None
        if role not in ("admin", "teacher"):
            raise StateError(f"role {role!r}: expected admin or teacher")
        if role == "teacher" and not groups:
            raise StateError("a teacher needs at least one group")
        if not password_hash.startswith("$argon2id$"):
            raise StateError("password_hash: expected an argon2id hash (filterproxy.passwords.hash_password)")
        now = R.now()
        detail = {"role": role, "groups": list(groups)}
        with self._change(actor, "user.add", f"user {name}", detail) as (conn, _info):
            if conn.execute(sa.select(S.users.c.name).where(S.users.c.name == name)).first() is not None:
                raise StateError(f"user {name} exists")
            values = dict(name=name, role=role, groups=",".join(groups), password_hash=password_hash, created_at=now)
            conn.execute(sa.insert(S.users).values(**values))
        return User(name, role, groups, password_hash, now)

    def user(self, name: str) -> User | None:
        with self.reader.connect() as conn:
            row = conn.execute(sa.select(S.users).where(S.users.c.name == name)).first()
        return R.user(row) if row else None

    def users(self) -> list[User]:
        with self.reader.connect() as conn:
            return [R.user(r) for r in conn.execute(sa.select(S.users).order_by(S.users.c.name))]

    def remove_user(self, actor: Actor, name: str) -> None:
        self._admin(actor)
        with self._change(actor, "user.remove", f"user {name}") as (conn, _info):
            for t in (S.tokens, S.sessions):
                conn.execute(sa.delete(t).where(t.c.user == name))
            if not conn.execute(sa.delete(S.users).where(S.users.c.name == name)).rowcount:
                raise NotFound(f"user {name}: not found")

    def set_password(self, actor: Actor, name: str, password_hash: str) -> None:
        if actor.name != name:
            self._admin(actor)
        if not password_hash.startswith("$argon2id$"):
            raise StateError("password_hash: expected an argon2id hash (filterproxy.passwords.hash_password)")
        with self._change(actor, "user.passwd", f"user {name}") as (conn, _info):
            q = sa.update(S.users).where(S.users.c.name == name).values(password_hash=password_hash)
            if not conn.execute(q).rowcount:
                raise NotFound(f"user {name}: not found")
            conn.execute(sa.delete(S.sessions).where(S.sessions.c.user == name))  # other logins end

    def create_token(self, actor: Actor, name: str, user: str) -> tuple[Token, str]:
        """A new bearer token for ``user``; returns the record and the secret (shown once, stored hashed)."""
        if actor.name != user:
            self._admin(actor)
        try:
            name = shapes.user_name(name)
        except shapes.ShapeError as exc:
            raise StateError(str(exc)) from None
        secret = secrets.token_urlsafe(32)
        now = R.now()
        with self._change(actor, "token.create", f"token {name}", {"user": user}) as (conn, _info):
            if conn.execute(sa.select(S.users.c.name).where(S.users.c.name == user)).first() is None:
                raise NotFound(f"user {user}: not found")
            if conn.execute(sa.select(S.tokens.c.id).where(S.tokens.c.name == name)).first() is not None:
                raise StateError(f"token {name} exists")
            values = dict(name=name, user=user, secret_sha256=R.sha(secret), created_at=now)
            tid = conn.execute(sa.insert(S.tokens).values(**values).returning(S.tokens.c.id)).scalar_one()
        return Token(tid, name, user, now), secret

    def tokens(self) -> list[Token]:
        with self.reader.connect() as conn:
            rows = conn.execute(sa.select(S.tokens).order_by(S.tokens.c.id))
            return [Token(r.id, r.name, r.user, R.utc(r.created_at), R.utc(r.last_used)) for r in rows]  # type: ignore[arg-type]

    def revoke_token(self, actor: Actor, name: str) -> None:
        self._admin(actor)
        with self._change(actor, "token.revoke", f"token {name}") as (conn, _info):
            if not conn.execute(sa.delete(S.tokens).where(S.tokens.c.name == name)).rowcount:
                raise NotFound(f"token {name}: not found")

    def token_user(self, secret: str) -> User | None:
        """The user a bearer token acts as (None: unknown or revoked)."""
        with self.engine.begin() as conn:
            row = conn.execute(sa.select(S.tokens).where(S.tokens.c.secret_sha256 == R.sha(secret))).first()
            if row is None:
                return None
            conn.execute(sa.update(S.tokens).where(S.tokens.c.id == row.id).values(last_used=R.now()))
            u = conn.execute(sa.select(S.users).where(S.users.c.name == row.user)).first()
        return R.user(u) if u else None

    def create_session(self, user: str, hours: float) -> tuple[str, str]:
        """A login session: returns (session secret for the cookie, CSRF token). Stored hashed."""
        u = self.user(user)
        if u is None:
            raise NotFound(f"user {user}: not found")
        secret, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        now = R.now()
        actor = Actor(u.name, u.role, frozenset(u.groups))
        with self._change(actor, "session.login", f"user {user}") as (conn, _info):
            values = dict(
                secret_sha256=R.sha(secret),
                user=user,
                csrf=csrf,
                created_at=now,
                expires_at=now + dt.timedelta(hours=hours),
            )
            conn.execute(sa.insert(S.sessions).values(**values))
        return secret, csrf

    def session_user(self, secret: str) -> tuple[User, str] | None:
        """(user, CSRF token) of a live session, or None."""
        with self.reader.connect() as conn:
            s = conn.execute(sa.select(S.sessions).where(S.sessions.c.secret_sha256 == R.sha(secret))).first()
            if s is None or (R.utc(s.expires_at) or R.now()) <= R.now():
                return None
            u = conn.execute(sa.select(S.users).where(S.users.c.name == s.user)).first()
        return (R.user(u), s.csrf) if u else None

    def end_session(self, secret: str) -> None:
        with self.engine.begin() as conn:
            s = conn.execute(sa.select(S.sessions).where(S.sessions.c.secret_sha256 == R.sha(secret))).first()
            if s is None:
                return
            conn.execute(sa.delete(S.sessions).where(S.sessions.c.secret_sha256 == s.secret_sha256))
            conn.execute(
                sa.insert(S.audit).values(
                    at=R.now(), actor=s.user, role="user", action="session.logout", target=f"user {s.user}", detail={}
                )
            )

    # ---------------------------------------------------------------- reviews
    def add_review(self, group: str, host_or_url: str, reason_id: str, message: str | None) -> Review:
        """From a block page: no actor, no address (the audit records "anonymous")."""
        try:
            group = shapes.group(group)
        except shapes.ShapeError as exc:
            raise StateError(str(exc)) from None
        if not host_or_url or len(host_or_url) > 2048 or len(reason_id) > 200 or len(message or "") > 2000:
            raise StateError("review: host_or_url (≤2048), reason_id (≤200) and message (≤2000) expected")
        now = R.now()
        anon = Actor("anonymous", "system")
        with self._change(anon, "review.add", "", {"group": group}) as (conn, info):
            values = dict(
                group=group,
                host_or_url=host_or_url,
                reason_id=reason_id,
                message=message,
                status="open",
                created_at=now,
            )
            rid = conn.execute(sa.insert(S.reviews).values(**values).returning(S.reviews.c.id)).scalar_one()
            info["_target"] = f"review {rid}"
        return Review(rid, group, host_or_url, reason_id, message, "open", now)

    def reviews(self, status: str | None = None, groups: frozenset[str] | None = None) -> list[Review]:
        q = sa.select(S.reviews).order_by(S.reviews.c.id)
        if status is not None:
            q = q.where(S.reviews.c.status == status)
        if groups is not None:
            q = q.where(S.reviews.c.group.in_(sorted(groups)))
        with self.reader.connect() as conn:
            return [R.review(r) for r in conn.execute(q)]

    def decide_review(
        self, actor: Actor, review_id: int, approve: bool, minutes: int | None = None, note: str | None = None
    ) -> Review:
        """Approve (creates an allow override for the review's group and host) or deny."""
        try:
            mins = shapes.minutes(minutes)
        except shapes.ShapeError as exc:
            raise StateError(str(exc)) from None
        if approve:
            self._teacher_minutes(actor, mins)
        action = "review.approve" if approve else "review.deny"
        with self._change(actor, action, f"review {review_id}", live=approve) as (conn, info):
            row = conn.execute(sa.select(S.reviews).where(S.reviews.c.id == review_id)).first()
            if row is None:
                raise NotFound(f"review {review_id}: not found")
            self._may(actor, row.group)
            if row.status != "open":
                raise StateError(f"review {review_id} is already {row.status}")
            oid = None
            if approve:
                host = _shape(R.review_host, row.host_or_url)
                oid = self._insert_override(
                    conn, actor, row.group, host, "allow", mins, note or f"review {review_id}"
                ).id
                info["override"] = oid
            now = R.now()
            values = dict(
                status="approved" if approve else "denied",
                decided_by=actor.name,
                decided_at=now,
                note=note,
                override_id=oid,
            )
            conn.execute(sa.update(S.reviews).where(S.reviews.c.id == review_id).values(**values))
            row = conn.execute(sa.select(S.reviews).where(S.reviews.c.id == review_id)).one()
        return R.review(row)

    # ---------------------------------------------------------------- audit
    def audit(self, since: dt.datetime | None = None, limit: int = 500) -> list[AuditEntry]:
        """Newest first."""
        q = sa.select(S.audit).order_by(S.audit.c.id.desc()).limit(max(1, min(limit, 10000)))
        if since is not None:
            q = q.where(S.audit.c.at >= since)
        with self.reader.connect() as conn:
            return [
                AuditEntry(r.id, R.utc(r.at), r.actor, r.role, r.action, r.target, dict(r.detail or {}))  # type: ignore[arg-type]
                for r in conn.execute(q)
            ]

    # ---------------------------------------------------------------- export
    def export_overrides_yaml(self, groups: frozenset[str] | None = None) -> str:
        """The live overrides as YAML a config-as-code person can read: group → allow/block lists, each name
        with a comment saying who set it and until when (filterproxy.state.export)."""
        from filterproxy.state.export import overrides_yaml

        return overrides_yaml(self.overrides(groups))
