"""The groups: each age group's policy in plain words (``GET /api/v1/groups``), its live overrides and
pauses, and the forms that add an override (``POST /api/v1/overrides``) or pause it (``POST /api/v1/pause``).

The YAML rules are shown read-only with their file:line; every change goes to the override layer.
"""

from __future__ import annotations

import datetime as dt
import zoneinfo
from typing import Any

from starlette.responses import Response

from filterproxy.admin.console import Page, View
from filterproxy.admin.errors import ApiError
from filterproxy.policy.model import DAYS

SLOT = 30  # minutes per cell of the weekly grid
SLOTS = 24 * 60 // SLOT
ALLOW_FOR = (("10m", 10), ("1h", 60), ("day", 480))  # "a school day": admin.teacher_max_minutes' default
PAUSE_FOR = (15, 30, 60, 120)
PAUSE_DEFAULT = 30


def display_name(view: View, g: dict[str, Any]) -> str:
    """The group's name in the page's language (``names:``), else its ``name``."""
    return str(g["names"].get(view.lang) or g["name"])


def category_name(view: View, category: str) -> str:
    from filterproxy.http.blockpage import CATEGORY_NAMES

    names = CATEGORY_NAMES.get(category)
    return names[0 if view.lang == "vi" else 1] if names else category


def local_time(view: View, iso: str | None, tz: str) -> str | None:
    """An API time (ISO 8601, UTC) as "HH:MM" today or "DD/MM HH:MM", in the configured time zone."""
    if iso is None:
        return None
    zone = zoneinfo.ZoneInfo(tz)
    t = dt.datetime.fromisoformat(iso).astimezone(zone)
    return t.strftime("%H:%M") if t.date() == dt.datetime.now(zone).date() else t.strftime("%d/%m %H:%M")


def _minutes(clock: str) -> int:
    h, m = clock.split(":")
    return int(h) * 60 + int(m)


def _covers(s: dict[str, Any], day: int, a: int, b: int) -> bool:
    """Does schedule ``s`` (as the API answers it) cover any minute of [a, b) on ``day`` (0 = Monday)?
    The same rule as :meth:`filterproxy.policy.model.Schedule.active`: an overnight window belongs to the
    days it starts."""
    days = {DAYS.index(d) for d in s["days"]}
    start, end = _minutes(s["from"]), _minutes(s["to"])
    if start < end:
        return day in days and a < end and b > start
    if start == end:
        return day in days
    return (day in days and b > start) or ((day - 1) % 7 in days and a < end)


def week_grid(schedules: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per day, one cell per half hour: which schedules are on (``allow_only`` wins the colour)."""
    rows = []
    for day, key in enumerate(DAYS):
        cells = []
        for slot in range(SLOTS):
            on = [s for s in schedules if _covers(s, day, slot * SLOT, (slot + 1) * SLOT)]
            kind = "only" if any(s["allow_only"] for s in on) else "block" if on else ""
            cells.append({"kind": kind, "names": ", ".join(s["name"] for s in on)})
        rows.append({"day": key, "cells": cells})
    return rows


async def _group(view: View, gid: str) -> dict[str, Any]:
    for g in await view.api("/groups"):
        if g["id"] == gid:
            return dict(g)
    if gid in view.ctx.engine.config.groups:
        raise ApiError(403, view.t("groups.not_yours", group=gid))
    raise ApiError(404, view.t("groups.unknown", group=gid))


async def groups_page(view: View) -> Response:
    groups = await view.api("/groups")
    overrides = await view.api("/overrides")
    pauses = await view.api("/pause") if view.admin else []
    rows = []
    for g in groups:
        rows.append(
            {
                "id": g["id"],
                "name": display_name(view, g),
                "description": g["description"],
                "categories": len(g["block_categories"]),
                "schedules": len(g["schedules"]),
                "overrides": sum(o["group"] == g["id"] for o in overrides),
                "paused": any(p["group"] == g["id"] for p in pauses),
                "safesearch": g["safesearch"],
            }
        )
    return view.render("groups.html", rows=rows)


async def group_page(view: View) -> Response:
    g = await _group(view, view.request.path_params["name"])
    tz = g["timezone"]
    overrides = [o for o in await view.api("/overrides") if o["group"] == g["id"]]
    for o in overrides:
        o["until"] = local_time(view, o["expires_at"], tz)
    pauses = [p for p in (await view.api("/pause") if view.admin else []) if p["group"] == g["id"]]
    for p in pauses:
        p["until"] = local_time(view, p["expires_at"], tz)
    categories = [{**c, "label": category_name(view, c["category"])} for c in g["block_categories"]]
    for s in g["schedules"]:
        s["labels"] = [category_name(view, c) for c in s["block_categories"]]
    return view.render(
        "group.html",
        g=g,
        name=display_name(view, g),
        categories=categories,
        grid=week_grid(g["schedules"]),
        days=DAYS,
        overrides=overrides,
        pauses=pauses,
        allow_for=ALLOW_FOR,
        pause_for=PAUSE_FOR,
        pause_default=PAUSE_DEFAULT,
        teacher_max=view.ctx.engine.config.admin.teacher_max_minutes,
    )


PAGES = [
    Page("/groups", groups_page, nav="groups"),
    Page("/groups/{name}", group_page, nav="groups"),
]
