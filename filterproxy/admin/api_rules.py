"""Overrides (allow/block one name for one group, until they expire) and pauses (a client or a group).

Teachers may add only temporary *allows* for their own groups, at most ``admin.teacher_max_minutes``;
an allow of a name on the legal list is refused (403) for everyone (``filterproxy.state.live.check_override``).
Pauses are for admins. Every change goes to the store with the caller as the :class:`Actor` (audited).
"""

from __future__ import annotations

from typing import Any

from starlette.responses import Response

from filterproxy.admin.errors import ApiError
from filterproxy.admin.fields import Field
from filterproxy.admin.routes import Call, Endpoint, record

MAX_MINUTES = 525600  # a year


def _known_group(call: Call, group: str) -> None:
    groups = call.ctx.engine.config.groups
    if group not in groups:
        raise ApiError(400, f"unknown group {group!r} (groups: {', '.join(groups)})")


async def add_override(call: Call) -> dict[str, Any]:
    b, actor = call.body, call.actor
    _known_group(call, b["group"])
    call.may_manage(b["group"])
    if actor.role == "teacher":
        limit = call.ctx.engine.config.admin.teacher_max_minutes
        if b["action"] != "allow":
            raise ApiError(403, "teachers may only allow names (temporarily)")
        if b.get("minutes") is None or b["minutes"] > limit:
            raise ApiError(403, f"teachers may allow for at most {limit} minutes ('minutes' ≤ {limit})")
    from filterproxy.state.live import check_override

    # the canonical name; Forbidden (403) for an allow of a name on the legal list
    name = check_override(call.ctx.engine, b["group"], b["name"], b["action"])
    o = await call.run(
        call.ctx.store.add_override, actor, b["group"], name, b["action"], b.get("minutes"), b.get("note")
    )
    return record(o)


async def list_overrides(call: Call) -> list[dict[str, Any]]:
    return [record(o) for o in await call.run(call.ctx.store.overrides, call.groups())]


async def remove_override(call: Call) -> dict[str, Any]:
    oid = call.path("id")
    if not call.admin:  # a teacher removes overrides of their groups only
        mine = {o.id for o in await call.run(call.ctx.store.overrides, call.groups())}
        if oid not in mine:
            raise ApiError(403, f"override {oid} is not one of your groups'")
    await call.run(call.ctx.store.remove_override, call.actor, oid)
    return {"id": oid, "removed": True}


async def export_overrides(call: Call) -> Response:
    from filterproxy.state.export import overrides_yaml

    text = overrides_yaml(await call.run(call.ctx.store.overrides, call.groups()))
    return Response(text, media_type="text/yaml; charset=utf-8")


async def add_pause(call: Call) -> dict[str, Any]:
    b = call.body
    if (b.get("client") is None) == (b.get("group") is None):
        raise ApiError(400, "give exactly one of 'client' (IP, MAC or device:<id>) and 'group'")
    client = None
    if b.get("group") is not None:
        _known_group(call, b["group"])
    else:
        from filterproxy.state.shapes import client as client_shape

        client = client_shape(b["client"])
    p = await call.run(call.ctx.store.add_pause, call.actor, b["minutes"], client=client, group=b.get("group"))
    return record(p)


async def list_pauses(call: Call) -> list[dict[str, Any]]:
    return [record(p) for p in await call.run(call.ctx.store.pauses, call.groups())]


async def remove_pause(call: Call) -> dict[str, Any]:
    pid = call.path("id")
    await call.run(call.ctx.store.remove_pause, call.actor, pid)
    return {"id": pid, "removed": True}


_MINUTES = Field("number", low=0.01, high=MAX_MINUTES, doc="until it expires (none: until removed)")
_OVERRIDE = {
    "group": Field(required=True, max_len=64),
    "name": Field(required=True, max_len=253, doc="a host name (its subdomains too) or an address"),
    "action": Field(required=True, choices=("allow", "block")),
    "minutes": _MINUTES,
    "note": Field(max_len=500),
}
_PAUSE = {
    "client": Field(max_len=64, doc="an IP address, a MAC address or device:<id>"),
    "group": Field(max_len=64),
    "minutes": Field("number", required=True, low=0.01, high=MAX_MINUTES),
}

ENDPOINTS = [
    Endpoint("POST", "/overrides", add_override, "Allow or block a name for a group", body=_OVERRIDE, status=201),
    Endpoint("GET", "/overrides", list_overrides, "The unexpired overrides (a teacher's: their groups')"),
    Endpoint("GET", "/overrides/export", export_overrides, "The overrides as YAML", produces="text/yaml"),
    Endpoint("DELETE", "/overrides/{id:int}", remove_override, "Remove an override"),
    Endpoint("POST", "/pause", add_pause, "Pause a client or a group (allowlist only)", "admin", _PAUSE, status=201),
    Endpoint("GET", "/pause", list_pauses, "The unexpired pauses", "admin"),
    Endpoint("DELETE", "/pause/{id:int}", remove_pause, "End a pause", "admin"),
]
