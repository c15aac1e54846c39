"""The live state's records: what the control API changes while ``filterproxy run`` serves.

Plain frozen dataclasses, shared by the store (:mod:`filterproxy.state.store`), the decision engine
(through :class:`LiveRules`) and the admin server (:mod:`filterproxy.admin`). Times are aware
``datetime`` objects in UTC; the API prints them as ISO 8601 with an offset.

Privacy: no record here names a child. A review request keeps the group (derived from the requester's
address) and never the address; statistics rows have no client and no name column.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any, Literal

Role = Literal["admin", "teacher"]
OverrideAction = Literal["allow", "block"]
ReviewStatus = Literal["open", "approved", "denied"]


@dataclass(frozen=True, slots=True)
class Actor:
    """Who makes a change: a user (with a role and, for teachers, their groups), a token, or the system."""

    name: str  # user name, "token:<name>", or "system" (expiry, start-up)
    role: Role | Literal["system"]
    groups: frozenset[str] = frozenset()  # a teacher's groups; empty for admins (all groups)

    def may_manage(self, group: str) -> bool:
        return self.role in ("admin", "system") or group in self.groups


@dataclass(frozen=True, slots=True)
class User:
    name: str
    role: Role
    groups: tuple[str, ...]
    password_hash: str  # $argon2id$… (filterproxy.passwords)
    created_at: dt.datetime


@dataclass(frozen=True, slots=True)
class Token:
    """A bearer token for scripts. The store keeps only the SHA-256 of the secret."""

    id: int
    name: str
    user: str  # the user whose role and groups the token carries
    created_at: dt.datetime
    last_used: dt.datetime | None = None


@dataclass(frozen=True, slots=True)
class Override:
    """A live rule for one group and one name (and its subdomains): allow or block, until it expires."""

    id: int
    group: str
    name: str  # canonical host name (filterproxy.names.canonical_host)
    action: OverrideAction
    created_by: str
    created_role: str
    created_at: dt.datetime
    expires_at: dt.datetime | None  # None: until removed
    note: str | None = None


@dataclass(frozen=True, slots=True)
class Pause:
    """Everything but the allowlist (and allow overrides) blocked for one client or one group."""

    id: int
    client: str | None  # an IP address, a MAC address (aa:bb:…) or "device:<id>"
    group: str | None
    created_by: str
    created_at: dt.datetime
    expires_at: dt.datetime


@dataclass(frozen=True, slots=True)
class Device:
    """A named client: maps an address, a MAC or a DoH id to a group (same precedence as config ``clients``)."""

    id: int
    name: str
    group: str
    ip: str | None = None
    mac: str | None = None
    doh_id: str | None = None
    last_seen: dt.datetime | None = None


@dataclass(frozen=True, slots=True)
class Review:
    """A "blocked by mistake" request from a block page: group, what and why; never who."""

    id: int
    group: str
    host_or_url: str
    reason_id: str
    message: str | None
    status: ReviewStatus
    created_at: dt.datetime
    decided_by: str | None = None
    decided_at: dt.datetime | None = None
    note: str | None = None
    override_id: int | None = None


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One state change: who (user and role), what, when. Review requests are recorded without a requester."""

    id: int
    at: dt.datetime
    actor: str
    role: str
    action: str  # e.g. "override.add", "pause.remove", "review.approve", "user.add"
    target: str  # e.g. "override 17", "group pupils"
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class LiveRules:
    """What the decision engine needs from the live state, as one immutable value (house rule 4).

    Built by the store from the unexpired rows; swapped into every deciding process when the store's
    serial moves (:class:`filterproxy.state.watch.LiveWatcher`). ``serial`` is the store's change counter
    at build time; ``next_expiry`` the earliest expiry among the rules (the watcher rebuilds then, so
    expired rules leave the caches too).
    """

    serial: int = 0
    overrides: tuple[Override, ...] = ()
    pauses: tuple[Pause, ...] = ()
    devices: tuple[Device, ...] = ()
    next_expiry: dt.datetime | None = None


EMPTY = LiveRules()
