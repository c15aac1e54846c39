"""``/lists``: the ministry's repository this gateway follows (when ``distribution:`` is set: its last
check, last success, trusted root and snapshot versions, and why an update was refused), then every list
being served with its entries, last update, version/serial, signature state and the error of the last
update; admins get "Update now" (``POST /api/v1/lists/update``, its progress read from
``GET /api/v1/lists/update`` by ``static/lists.js``)."""

from __future__ import annotations

from typing import Any

from starlette.responses import Response

from filterproxy.admin.console import Page, View
from filterproxy.admin.console.pages.reviews import ago


async def lists_page(view: View) -> Response:
    status = await view.api("/status")
    rows: list[dict[str, Any]] = status["lists"]
    for li in rows:
        li["ago"] = ago(view, li.get("updated_at"))
    job: dict[str, Any] = await view.api("/lists/update") if view.admin else {"state": "idle"}
    dist = status.get("distribution")
    if dist:
        dist = {**dist, "checked_ago": ago(view, dist["checked_at"]), "success_ago": ago(view, dist["last_success"])}
    return view.render("lists.html", rows=rows, job=job, dist=dist)


PAGES = [Page("/lists", lists_page, nav="lists")]
