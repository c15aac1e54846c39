"""The devices (admins): named devices with their group and when they were last seen, and the devices
present on the network that have no name yet (``GET /api/v1/devices/unnamed``); the forms add one
(``POST /api/v1/devices``, a new device by its MAC), rename it or move it to another group (``PATCH``),
forget it (``DELETE``) and pause it for 15 minutes, 1 hour or until 07:00 in the configured time zone
(``POST /api/v1/pause``).
"""

from __future__ import annotations

import datetime as dt
import math
import zoneinfo

from starlette.responses import Response

from filterproxy.admin.console import Page, View
from filterproxy.admin.console.pages.groups import display_name, local_time

MORNING = dt.time(7, 0)  # "until tomorrow morning"


def minutes_until_morning(tz: str, now: dt.datetime | None = None) -> int:
    """Whole minutes from ``now`` to the next 07:00 in ``tz`` (today's when it is still before 07:00)."""
    zone = zoneinfo.ZoneInfo(tz)
    local = (now or dt.datetime.now(dt.UTC)).astimezone(zone)
    morning = dt.datetime.combine(local.date(), MORNING, zone)
    if morning <= local:
        morning = dt.datetime.combine(local.date() + dt.timedelta(days=1), MORNING, zone)
    return max(1, math.ceil((morning - local).total_seconds() / 60))


async def devices_page(view: View) -> Response:
    tz = view.ctx.engine.config.timezone
    groups = {g["id"]: display_name(view, g) for g in await view.api("/groups")}
    pauses = await view.api("/pause")
    devices = []
    for d in await view.api("/devices"):
        paused = [p for p in pauses if p["client"] in (f"device:{d['id']}", d["ip"], d["mac"])]
        devices.append(
            {
                **d,
                "address": d["ip"] or d["mac"] or (f"DoH {d['doh_id']}" if d["doh_id"] else ""),
                "group_name": groups.get(d["group"], d["group"]),
                "seen": local_time(view, d["last_seen"], tz),
                "pauses": [{"id": p["id"], "until": local_time(view, p["expires_at"], tz)} for p in paused],
            }
        )
    unnamed = [
        {**u, "seen": local_time(view, u["last_seen"], tz), "suggested": "device-" + u["mac"][-5:].replace(":", "")}
        for u in await view.api("/devices/unnamed")
    ]
    return view.render(
        "devices.html",
        devices=devices,
        unnamed=unnamed,
        groups=groups,
        morning=minutes_until_morning(tz),
        timezone=tz,
    )


PAGES = [Page("/devices", devices_page, nav="devices", access="admin")]
