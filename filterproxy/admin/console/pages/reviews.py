"""``/reviews``: the review requests inbox (a teacher's: their groups', as the API answers) with approve
(1 hour, a school day = ``admin.teacher_max_minutes``, always: admins only) and deny with a note; every
decision is an htmx call to ``/api/v1/reviews/{id}/approve|deny``."""

from __future__ import annotations

import datetime as dt
from typing import Any

from starlette.responses import Response

from filterproxy.admin.console import Page, View, i18n

STATUSES = ("open", "approved", "denied")


def ago(view: View, when: str | None) -> str:
    """An ISO time as "3 min ago" in the page's language ("" for None)."""
    if not when:
        return ""
    seconds = (dt.datetime.now(dt.UTC) - dt.datetime.fromisoformat(when)).total_seconds()
    return view.t("reviews.ago", age=i18n.duration(view.lang, max(0.0, seconds)))


async def reviews_page(view: View) -> Response:
    status = view.request.query_params.get("status", "open")
    status = status if status in STATUSES else "open"
    rows: list[dict[str, Any]] = await view.api("/reviews", {"status": status})
    rows.reverse()  # the newest first
    for r in rows:
        r["age"] = ago(view, r["created_at"])
        r["decided_age"] = ago(view, r.get("decided_at"))
    day = view.ctx.engine.config.admin.teacher_max_minutes
    return view.render(
        "reviews.html",
        rows=rows,
        status=status,
        statuses=STATUSES,
        school_day=day,
        school_day_text=i18n.duration(view.lang, day * 60),
    )


PAGES = [Page("/reviews", reviews_page, nav="reviews")]
