"""Why blocked? A name or URL and a group or a device → the verdict in plain words, and the technical
detail (list, rule, file:line, schedule) in a fold. The answer is ``GET /api/v1/explain``'s, unchanged."""

from __future__ import annotations

from typing import Any

from starlette.responses import Response

from filterproxy.admin.console import Page, View
from filterproxy.admin.console.pages.groups import category_name, display_name
from filterproxy.admin.errors import ApiError

DETAIL = ("reason", "list", "category", "rule", "source", "schedule", "rewrite", "client_match", "short_id")


def _client(d: dict[str, Any]) -> str | None:
    """How ``/explain?client=`` names a device: its address, ``mac:…`` or ``doh:…``."""
    if d["ip"]:
        return str(d["ip"])
    if d["mac"]:
        return f"mac:{d['mac']}"
    return f"doh:{d['doh_id']}" if d["doh_id"] else None


def sentence(view: View, answer: dict[str, Any], group_name: str) -> str:
    """The verdict in one plain sentence: what happened for which group, and because of what."""
    action = answer["action"]
    reason = answer["reason"]
    if reason == "schedule" and not answer.get("category"):
        reason = "schedule_only"  # an allow_only window: everything but the allow list
    values = {
        "group": group_name,
        "name": answer.get("rule") or answer["input"],
        "list": answer.get("list") or "",
        "category": category_name(view, answer["category"]) if answer.get("category") else "",
        "schedule": answer.get("schedule") or "",
        "source": answer.get("source") or "",
        "rewrite": answer.get("rewrite") or "",
    }
    head = view.t(f"why.verdict.{action}", **values)
    return f"{head} {view.t(f'why.because.{reason}', **values)}"


async def why_page(view: View) -> Response:
    groups = {g["id"]: display_name(view, g) for g in await view.api("/groups")}
    devices = [d for d in (await view.api("/devices") if view.admin else []) if _client(d)]
    choices = [(f"group:{gid}", view.t("why.group_option", name=name)) for gid, name in groups.items()]
    choices += [(f"client:{_client(d)}", view.t("why.device_option", name=d["name"])) for d in devices]
    q = view.request.query_params.get("q", "").strip()
    who = view.request.query_params.get("who") or (choices[0][0] if choices else "")
    answer: dict[str, Any] | None = None
    said: str | None = None
    error: str | None = None
    if q:
        kind, _, value = who.partition(":")
        try:
            if kind not in ("group", "client") or not value:
                raise ApiError(400, view.t("why.pick_who"))
            answer = await view.api("/explain", {"q": q, kind: value})
        except ApiError as exc:
            error = exc.detail
        if answer is not None and "error" in answer:
            error = str(answer["error"])
            answer = None
        if answer is not None:
            said = sentence(view, answer, groups.get(answer["group"], answer["group"]))
    return view.render("why.html", q=q, who=who, choices=choices, answer=answer, said=said, error=error, detail=DETAIL)


PAGES = [Page("/why", why_page, nav="why")]
