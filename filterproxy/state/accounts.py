"""Changes to users and tokens the control API makes beyond :class:`~filterproxy.state.store.Store`'s own:
a user's role and groups, revoking a token by id, and the guard that keeps at least one admin.

Each change goes through the store's audited transaction (``Store._change``), so it is recorded with its
actor like every other change; only admins may make them (``Forbidden`` otherwise).
"""

from __future__ import annotations

import sqlalchemy as sa

from filterproxy.state import rows as R
from filterproxy.state import schema as S
from filterproxy.state import shapes
from filterproxy.state.model import Actor, Role, User
from filterproxy.state.store import Forbidden, NotFound, StateError, Store


def _admins(conn: sa.Connection) -> set[str]:
    return {r.name for r in conn.execute(sa.select(S.users.c.name).where(S.users.c.role == "admin"))}


def _keeps_an_admin(conn: sa.Connection, name: str) -> None:
    """Refuse a change that would leave no admin (nobody could then manage users from the API)."""
    if _admins(conn) == {name}:
        raise Forbidden(f"{name} is the only admin: add another admin first")


def update_user(
    store: Store, actor: Actor, name: str, role: Role | None = None, groups: tuple[str, ...] | None = None
) -> User:
    """Set a user's role and/or groups (a teacher needs at least one group; an admin's are cleared)."""
    store._admin(actor)
    if role is not None and role not in ("admin", "teacher"):
        raise StateError(f"role {role!r}: expected admin or teacher")
    try:
        groups = tuple(dict.fromkeys(shapes.group(g) for g in groups)) if groups is not None else None
    except shapes.ShapeError as exc:
        raise StateError(str(exc)) from None
    detail = {"role": role, "groups": list(groups) if groups is not None else None}
    with store._change(actor, "user.update", f"user {name}", detail) as (conn, _info):
        row = conn.execute(sa.select(S.users).where(S.users.c.name == name)).first()
        if row is None:
            raise NotFound(f"user {name}: not found")
        new_role = role or row.role
        new_groups = groups if groups is not None else R.user(row).groups
        if new_role == "teacher" and not new_groups:
            raise StateError("a teacher needs at least one group")
        if new_role == "admin":
            new_groups = ()
        elif row.role == "admin":
            _keeps_an_admin(conn, name)
        values = {"role": new_role, "groups": ",".join(new_groups)}
        conn.execute(sa.update(S.users).where(S.users.c.name == name).values(**values))
        row = conn.execute(sa.select(S.users).where(S.users.c.name == name)).one()
    return R.user(row)


def remove_user(store: Store, actor: Actor, name: str) -> None:
    """Remove a user, their tokens and sessions; never the last admin."""
    store._admin(actor)
    with store.reader.connect() as conn:
        _keeps_an_admin(conn, name)
    store.remove_user(actor, name)


def revoke_token_id(store: Store, actor: Actor, token_id: int) -> str:
    """Revoke the token with this id; returns its name."""
    store._admin(actor)
    with store._change(actor, "token.revoke", f"token {token_id}") as (conn, info):
        row = conn.execute(sa.select(S.tokens).where(S.tokens.c.id == token_id)).first()
        if row is None:
            raise NotFound(f"token {token_id}: not found")
        info.update(name=row.name, user=row.user)
        info["_target"] = f"token {row.name}"
        conn.execute(sa.delete(S.tokens).where(S.tokens.c.id == token_id))
    return str(row.name)
