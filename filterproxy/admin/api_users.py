"""Users and bearer tokens, for admins: list, add (the password hashed with argon2id in a thread), change a
user's role and groups, remove a user, list and revoke tokens.

What ``filterproxy admin user|token`` does from the shell, through the same store (every change audited
with its actor). A teacher's groups must be groups of the running configuration; the last admin can be
neither removed nor made a teacher. Password hashes and token secrets never leave the server.
"""

from __future__ import annotations

from typing import Any

from filterproxy.admin.errors import ApiError
from filterproxy.admin.fields import Field
from filterproxy.admin.routes import Call, Endpoint, iso, record
from filterproxy.state import accounts
from filterproxy.state.model import User

MIN_PASSWORD = 8  # characters


def _user(u: User) -> dict[str, Any]:
    """A user as JSON, without the password hash."""
    return {"name": u.name, "role": u.role, "groups": list(u.groups), "created_at": iso(u.created_at)}


def _groups(call: Call, role: str | None) -> tuple[str, ...]:
    """The body's groups, each a group of the running configuration (400 otherwise)."""
    groups = tuple(dict.fromkeys(call.body.get("groups") or ()))
    known = call.ctx.engine.config.groups
    unknown = [g for g in groups if g not in known]
    if unknown:
        raise ApiError(400, f"unknown group(s) {', '.join(unknown)} (groups: {', '.join(known)})")
    if role == "teacher" and not groups:
        raise ApiError(400, "'groups': a teacher needs at least one group")
    return () if role == "admin" else groups


async def list_users(call: Call) -> list[dict[str, Any]]:
    return [_user(u) for u in await call.run(call.ctx.store.users)]


def _hash(password: str) -> str:
    from filterproxy.passwords import hash_password

    return hash_password(password)


async def add_user(call: Call) -> dict[str, Any]:
    b = call.body
    if len(b["password"]) < MIN_PASSWORD:
        raise ApiError(400, f"'password': at least {MIN_PASSWORD} characters")
    groups = _groups(call, b["role"])
    hashed = await call.run(_hash, b["password"])  # argon2id: ~50 ms and 64 MiB, off the loop (rule 9)
    u = await call.run(call.ctx.store.add_user, call.actor, b["name"], b["role"], hashed, groups)
    return _user(u)


async def update_user(call: Call) -> dict[str, Any]:
    b = call.body
    if not b:
        raise ApiError(400, "give 'role' and/or 'groups'")
    role = b.get("role")
    groups = _groups(call, role) if "groups" in b else None
    u = await call.run(accounts.update_user, call.ctx.store, call.actor, call.path("name"), role, groups)
    return _user(u)


async def remove_user(call: Call) -> dict[str, Any]:
    name = call.path("name")
    await call.run(accounts.remove_user, call.ctx.store, call.actor, name)
    return {"name": name, "removed": True}


async def list_tokens(call: Call) -> list[dict[str, Any]]:
    return [record(t) for t in await call.run(call.ctx.store.tokens)]


async def revoke_token(call: Call) -> dict[str, Any]:
    tid = call.path("id")
    name = await call.run(accounts.revoke_token_id, call.ctx.store, call.actor, tid)
    return {"id": tid, "name": name, "removed": True}


_ROLE = Field(choices=("admin", "teacher"), max_len=16)
_GROUPS = Field("list", max_len=64, doc="a teacher's groups (groups of the configuration)")
_ADD = {
    "name": Field(required=True, max_len=64),
    "role": Field(required=True, choices=("admin", "teacher"), max_len=16),
    "groups": _GROUPS,
    "password": Field(required=True, max_len=1024, doc=f"at least {MIN_PASSWORD} characters; stored as argon2id"),
}
_CHANGE = {"role": _ROLE, "groups": _GROUPS}

ENDPOINTS = [
    Endpoint("GET", "/users", list_users, "Users with their role and groups", "admin"),
    Endpoint("POST", "/users", add_user, "Add a user (a teacher: with their groups)", "admin", _ADD, status=201),
    Endpoint("PATCH", "/users/{name}", update_user, "Change a user's role or groups", "admin", _CHANGE),
    Endpoint("DELETE", "/users/{name}", remove_user, "Remove a user, their tokens and sessions", "admin", {}),
    Endpoint("GET", "/tokens", list_tokens, "Bearer tokens (never their secrets)", "admin"),
    Endpoint("DELETE", "/tokens/{id:int}", revoke_token, "Revoke a bearer token", "admin", {}),
]
