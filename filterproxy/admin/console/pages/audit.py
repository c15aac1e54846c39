"""``/audit`` (also ``/admin``; admins): the audit log, the users with their role and groups (add a teacher
limited to groups, remove a user) and the bearer tokens (revoke). Every change is an htmx call to
``/api/v1/users`` or ``/api/v1/tokens``."""

from __future__ import annotations

from typing import Any

from starlette.responses import Response

from filterproxy.admin.console import Page, View

SHOWN = 200  # audit entries on the page


async def audit_page(view: View) -> Response:
    users: list[dict[str, Any]] = await view.api("/users")
    tokens: list[dict[str, Any]] = await view.api("/tokens")
    audit: list[dict[str, Any]] = await view.api("/audit", {"limit": SHOWN})
    return view.render(
        "audit.html", users=users, tokens=tokens, audit=audit, groups=view.ctx.engine.config.groups, me=view.user
    )


PAGES = [
    Page("/audit", audit_page, nav="audit", access="admin"),
    Page("/admin", audit_page, nav="audit", access="admin"),
]
