"""The dashboard (``/``): today's queries and blocks, the trend chart (``static/dashboard.js`` reads
``/api/v1/stats``), blocks by category and group, list freshness, upstream health, image-match reports.
Aggregates only: no client and no name appears."""

from __future__ import annotations

import datetime as dt
from collections import Counter
from typing import Any

from starlette.responses import Response

from filterproxy.admin.console import Page, View
from filterproxy.admin.console.i18n import duration
from filterproxy.admin.console.pages.groups import display_name


async def _today(view: View) -> list[dict[str, Any]]:
    """The totals of today (the server's local day) for every group the user sees."""
    now = dt.datetime.now().astimezone()
    start = now.replace(hour=0, minute=0, second=0, microsecond=0)
    query = {"from": start.isoformat(), "to": (start + dt.timedelta(days=1)).isoformat(), "step": 86400}
    if view.admin:
        return list((await view.api("/stats", query))["totals"])
    user = view.user
    assert user is not None
    rows: list[dict[str, Any]] = []
    for group in sorted(user.groups):
        rows += (await view.api("/stats", {**query, "group": group}))["totals"]
    return rows


def _lists(view: View, lists: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for li in lists:
        age, refresh = li.get("age_seconds"), li.get("refresh_seconds")
        out.append(
            {
                **li,
                "age": view.t("dashboard.age", age=duration(view.lang, age)) if age is not None else None,
                "refresh": duration(view.lang, refresh) if refresh else None,
                "stale": bool(refresh) and (age is None or age > refresh),
            }
        )
    return out


async def dashboard_page(view: View) -> Response:
    status = await view.api("/status")
    totals = await _today(view)
    queries = sum(r["count"] for r in totals)
    blocked = [r for r in totals if r["action"] == "block"]
    by_category: Counter[str] = Counter()
    by_group: Counter[str] = Counter()
    for r in blocked:
        by_category[r["category"] or "-"] += r["count"]
        by_group[r["group"]] += r["count"]
    user = view.user
    assert user is not None
    names = {g["id"]: display_name(view, g) for g in await view.api("/groups")}
    # the chart's choice of group: admins all groups (the default) or one; a teacher one of theirs at a time
    chart_groups = ([("", view.t("dashboard.all_groups"))] if view.admin else []) + sorted(
        ((gid, name) for gid, name in names.items() if view.admin or gid in user.groups), key=lambda g: g[1]
    )
    return view.render(
        "dashboard.html",
        queries=queries,
        blocked=sum(by_category.values()),
        by_category=by_category.most_common(),
        by_group=by_group.most_common(),
        lists=_lists(view, status["lists"]),
        upstreams=status["upstreams"],
        reports=status["reports"],
        status=status,
        uptime=duration(view.lang, status["uptime_seconds"]),
        chart_groups=chart_groups,
    )


PAGES = [Page("/", dashboard_page, nav="dashboard")]
