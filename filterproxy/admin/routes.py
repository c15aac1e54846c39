"""What a handler is given and how an endpoint is declared: one :class:`Endpoint` per route, in tables.

Each ``api_*`` module exports ``ENDPOINTS``; :mod:`.server` mounts them and :mod:`.spec` describes them
from the same table, so a mounted route cannot be missing from the OpenAPI document.
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeVar

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from filterproxy.admin.errors import ApiError
from filterproxy.admin.fields import Fields
from filterproxy.neighbours import read_present as _read_present
from filterproxy.state.model import Actor, User
from filterproxy.state.reviews import RequestLimiter

if TYPE_CHECKING:
    from filterproxy.admin.auth import LoginLimiter
    from filterproxy.config import Config
    from filterproxy.policy.engine import Engine
    from filterproxy.state.store import Store

T = TypeVar("T")
Access = Literal["public", "user", "admin"]  # no login; any user (teachers limited to their groups); admins


class Served(Protocol):
    """What the API reads of the running process (``filterproxy.runner.Runner`` is one)."""

    engine: Engine
    cfg: Config
    generation: int
    dns: Any  # filterproxy.dns.service.DnsService | None
    reports: Any  # filterproxy.reports.ReportSpool | None


@dataclass
class Context:
    """One per admin server: the store, the running process, the login limiter."""

    store: Store
    served: Served
    limiter: LoginLimiter
    tls: bool = False
    started: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.UTC))
    review_limiter: RequestLimiter = field(default_factory=RequestLimiter)  # POST /reviews per address
    jobs: dict[str, Any] = field(default_factory=dict)  # background jobs by name (api_lists: "lists.update")
    endpoints: list[Endpoint] = field(default_factory=list)  # the API's, set by build_app (the console reads)
    # the kernel's present neighbours (address, MAC, seconds since confirmed), for GET /devices/unnamed
    neighbours: Callable[[], list[tuple[str, str, float]]] = field(default=_read_present)

    @property
    def engine(self) -> Engine:
        return self.served.engine  # the engine holds the configuration of the last reload


@dataclass
class Principal:
    """Who is calling: the user, and how they proved it (a session carries its CSRF token and secret)."""

    user: User
    via: Literal["token", "session"]
    csrf: str | None = None
    secret: str | None = None

    @property
    def actor(self) -> Actor:
        groups = frozenset(self.user.groups) if self.user.role == "teacher" else frozenset()
        return Actor(self.user.name, self.user.role, groups)


@dataclass
class Call:
    """One request as a handler sees it: checked body and query, path parameters, the caller."""

    ctx: Context
    request: Request
    principal: Principal | None
    body: dict[str, Any]
    query: dict[str, Any]

    @property
    def actor(self) -> Actor:
        assert self.principal is not None  # handlers of non-public endpoints only
        return self.principal.actor

    @property
    def admin(self) -> bool:
        return self.actor.role == "admin"

    def path(self, name: str) -> Any:
        return self.request.path_params[name]

    def may_manage(self, group: str) -> None:
        """403 unless the caller may act for ``group`` (admins: every group; teachers: theirs)."""
        if not self.actor.may_manage(group):
            raise ApiError(403, f"group {group!r} is not one of yours")

    def groups(self) -> frozenset[str] | None:
        """The groups the caller sees: None (all) for admins."""
        return None if self.admin else self.actor.groups

    async def run(self, fn: Callable[..., T], *args: Any, **kw: Any) -> T:
        """``fn(*args, **kw)`` in a worker thread: store calls block (house rule 9)."""
        return await run_in_threadpool(functools.partial(fn, *args, **kw))


Handler = Callable[[Call], Awaitable[Any]]


@dataclass(frozen=True)
class Endpoint:
    """One route: method, path (Starlette syntax), handler, who may call it, its body and query tables."""

    method: str
    path: str
    handler: Handler
    summary: str
    access: Access = "user"
    body: Fields | None = None
    query: Fields | None = None
    status: int = 200
    produces: str = "application/json"


def iso(t: dt.datetime | None) -> str | None:
    """ISO 8601 with an offset (the store keeps aware UTC times)."""
    if t is None:
        return None
    return (t if t.tzinfo is not None else t.replace(tzinfo=dt.UTC)).isoformat()


def record(obj: Any) -> dict[str, Any]:
    """A model record as JSON: its fields, times as ISO 8601, tuples and frozensets as lists."""
    import dataclasses

    out: dict[str, Any] = {}
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        if isinstance(v, dt.datetime):
            v = iso(v)
        elif isinstance(v, tuple | frozenset | set):
            v = sorted(v) if isinstance(v, frozenset | set) else list(v)
        out[f.name] = v
    return out
