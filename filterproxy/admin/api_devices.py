"""Named devices: an address, a MAC or a DoH id mapped to a group (admins), with when each was last seen."""

from __future__ import annotations

import datetime as dt
import time
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


UNNAMED_MAX = 200  # a home or a classroom LAN; a school's routed subnets are grouped by network, not named


def _unnamed(devices: list[Any], present: list[tuple[str, str, float]]) -> list[dict[str, Any]]:
    """The neighbours no named device matches (by MAC, or by any of its addresses), one row per MAC with
    its addresses and when the kernel last confirmed it, newest first."""
    macs = {d.mac for d in devices if d.mac}
    ips = {d.ip for d in devices if d.ip}
    now = time.time()
    rows: dict[str, dict[str, Any]] = {}
    for ip, mac, age in present:
        if mac in macs:
            continue
        row = rows.setdefault(mac, {"mac": mac, "addresses": [], "last_seen": 0.0})
        row["addresses"].append(ip)
        row["last_seen"] = max(row["last_seen"], now - age)
    out = [r for r in rows.values() if not ips.intersection(r["addresses"])]
    out.sort(key=lambda r: (-r["last_seen"], r["mac"]))
    for r in out:
        r["addresses"].sort(key=lambda a: (":" in a, a))  # IPv4 first: the one people recognise
        r["last_seen"] = dt.datetime.fromtimestamp(r["last_seen"], dt.UTC).isoformat(timespec="seconds")
    return out[:UNNAMED_MAX]


async def unnamed_devices(call: Call) -> list[dict[str, Any]]:
    devices = await call.run(call.ctx.store.devices)
    return _unnamed(devices, await call.run(call.ctx.neighbours))


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
    """POST: name and group required; PATCH: any of them, and null clears ip, mac or doh_id (one must stay)."""
    clearable = not required
    return {
        "name": Field(required=required, max_len=64),
        "group": Field(required=required, max_len=64),
        "ip": Field(max_len=64, nullable=clearable, doc="null clears it (PATCH)" if clearable else ""),
        "mac": Field(max_len=17, nullable=clearable, doc="null clears it (PATCH)" if clearable else ""),
        "doh_id": Field(max_len=64, nullable=clearable, doc="null clears it (PATCH)" if clearable else ""),
    }


ENDPOINTS = [
    Endpoint("GET", "/devices", list_devices, "The named devices, with last_seen", "admin"),
    Endpoint(
        "GET",
        "/devices/unnamed",
        unnamed_devices,
        "Devices present on the local network (the neighbour table) that no named device matches, to name",
        "admin",
    ),
    Endpoint(
        "POST", "/devices", add_device, "Name a device (ip, mac or doh_id → group)", "admin", _fields(True), status=201
    ),
    Endpoint("PATCH", "/devices/{id:int}", update_device, "Change a device", "admin", _fields(False)),
    Endpoint("DELETE", "/devices/{id:int}", remove_device, "Forget a device", "admin"),
]
