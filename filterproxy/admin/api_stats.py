"""Statistics: decisions counted per group, category, action and protocol over a window, in steps
(:func:`filterproxy.state.stats.stats`; no client, no name). Admins see every group; a teacher their own."""

from __future__ import annotations

import datetime as dt
from typing import Any

from filterproxy.admin.errors import ApiError
from filterproxy.admin.fields import Field
from filterproxy.admin.routes import Call, Endpoint


def _time(name: str, text: str) -> dt.datetime:
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise ApiError(400, f"{name!r} {text!r}: expected an ISO 8601 time, e.g. 2026-12-01T08:00:00+07:00") from None
    if when.tzinfo is None:
        raise ApiError(400, f"{name!r} {text!r}: give the time with an offset (Z or +07:00)")
    return when


def _group(call: Call) -> str | None:
    """The group asked for, checked: None means all groups (admins only); a teacher of one group gets it."""
    group = call.query.get("group")
    if group is None and not call.admin:
        mine = sorted(call.actor.groups)
        if len(mine) != 1:
            raise ApiError(400, f"give 'group' (one of yours: {', '.join(mine)})")
        group = mine[0]
    if group is not None:
        groups = call.ctx.engine.config.groups
        if group not in groups:
            raise ApiError(400, f"unknown group {group!r} (groups: {', '.join(groups)})")
        call.may_manage(group)
    return group


async def get_stats(call: Call) -> dict[str, Any]:
    from filterproxy.state.stats import answer

    q = call.query
    start, end = _time("from", q["from"]), _time("to", q["to"])
    group = _group(call)  # a window or step stats() refuses is the store's StateError: 400
    return await call.run(answer, call.ctx.store, start, end, q["step"], group)


_STATS = {
    "from": Field(required=True, max_len=40, doc="ISO 8601 with an offset: the window's start"),
    "to": Field(required=True, max_len=40, doc="ISO 8601 with an offset: the window's end (excluded)"),
    "step": Field("int", required=True, low=60, high=31_622_400, doc="seconds per step, a whole number of minutes"),
    "group": Field(max_len=64, doc="one group (a teacher: one of theirs; default their only group)"),
}

ENDPOINTS = [
    Endpoint("GET", "/stats", get_stats, "Decisions counted per step, and the window's totals", query=_STATS),
]
