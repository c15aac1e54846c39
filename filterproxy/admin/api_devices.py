"""Named devices: an address, a MAC or a DoH id mapped to a group (admins), with when each was last seen."""

from __future__ import annotations

from typing import Any

from filterproxy.admin.errors import ApiError
from filterproxy.admin.fields import Field
from filterproxy.admin.routes import Call, Endpoint, record

_KEYS = ("ip", "mac", "doh_id")


def _shaped(call: Call, body: dict[str, Any]) -> dict[str, Any]:
    """The body's group checked against the running configuration, its address fields in canonical form."""
    from filterproxy.state import shapes

    out = dict(body)
    if "group" in out:
        groups = call.ctx.engine.config.groups
        if out["group"] not in groups:
            raise ApiError(400, f"unknown group {out['group']!r} (groups: {', '.join(groups)})")
    for key, shape in (("ip", shapes.ip), ("mac", shapes.mac), ("doh_id", shapes.doh_id)):
        if out.get(key) is not None:
            out[key] = shape(out[key])
    return out


async def list_devices(call: Call) -> list[dict[str, Any]]:
    return [record(d) for d in await call.run(call.ctx.store.devices)]


async def add_device(call: Call) -> dict[str, Any]:
    b = _shaped(call, call.body)
    if sum(b.get(k) is not None for k in _KEYS) != 1:
        raise ApiError(400, "give exactly one of 'ip', 'mac' and 'doh_id'")
    d = await call.run(
        call.ctx.store.add_device, call.actor, b["name"], b["group"], b.get("ip"), b.get("mac"), b.get("doh_id")
    )
    return record(d)


async def update_device(call: Call) -> dict[str, Any]:
    b = _shaped(call, call.body)
    if not b:
        raise ApiError(400, "nothing to change: give one of name, group, ip, mac, doh_id")
    d = await call.run(call.ctx.store.update_device, call.actor, call.path("id"), **b)
    return record(d)


async def remove_device(call: Call) -> dict[str, Any]:
    await call.run(call.ctx.store.remove_device, call.actor, call.path("id"))
    return {"id": call.path("id"), "removed": True}


def _fields(required: bool) -> dict[str, Field]:
    return {
        "name": Field(required=required, max_len=64),
        "group": Field(required=required, max_len=64),
        "ip": Field(max_len=64),
        "mac": Field(max_len=17),
        "doh_id": Field(max_len=64),
    }


ENDPOINTS = [
    Endpoint("GET", "/devices", list_devices, "The named devices, with last_seen", "admin"),
    Endpoint(
        "POST", "/devices", add_device, "Name a device (ip, mac or doh_id → group)", "admin", _fields(True), status=201
    ),
    Endpoint("PATCH", "/devices/{id:int}", update_device, "Change a device", "admin", _fields(False)),
    Endpoint("DELETE", "/devices/{id:int}", remove_device, "Forget a device", "admin"),
]
