"""``/querylog`` (admins): while ``querylog.enabled``, a banner saying so and for how long records are kept,
filters by group, action and name, and the newest records with addresses as stored (anonymised unless
``querylog.anonymise`` is off); while off, a page saying so and how to turn it on."""

from __future__ import annotations

from typing import Any

from starlette.responses import Response

from filterproxy.admin.console import Page, View

ACTIONS = ("block", "allow", "rewrite", "refused", "error")
SHOWN = 500  # records on the page


async def querylog_page(view: View) -> Response:
    cfg = view.ctx.engine.config
    ql = cfg.querylog
    if not ql.enabled:
        return view.render("querylog.html", enabled=False, querylog=ql, rows=[], groups=cfg.groups, actions=ACTIONS)
    p = view.request.query_params
    chosen = {
        "group": p.get("group") if p.get("group") in cfg.groups else None,
        "action": p.get("action") if p.get("action") in ACTIONS else None,
        "name": (p.get("name") or "").strip()[:253] or None,
    }
    rows: list[dict[str, Any]] = await view.api("/querylog", {**chosen, "limit": SHOWN})
    rows.reverse()  # the newest first
    return view.render(
        "querylog.html", enabled=True, querylog=ql, rows=rows, groups=cfg.groups, actions=ACTIONS, chosen=chosen
    )


PAGES = [Page("/querylog", querylog_page, nav="querylog", access="admin")]
