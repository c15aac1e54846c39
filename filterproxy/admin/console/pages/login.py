"""Sign in (``/login``: a form that posts to ``/api/v1/login`` from ``static/login.js``) and sign out."""

from __future__ import annotations

from starlette.responses import RedirectResponse, Response

from filterproxy.admin.auth import first_user_command
from filterproxy.admin.console import Page, View, signed_in


def _next(view: View) -> str:
    """Where to go after signing in: a path on this site only (no ``//host``)."""
    asked = view.request.query_params.get("next", "/")
    return asked if asked.startswith("/") and not asked.startswith(("//", "/\\")) else "/"


async def login_page(view: View) -> Response:
    if await signed_in(view.ctx, view.request) is not None:
        return RedirectResponse(_next(view), status_code=303)  # already signed in
    setup = await view.api("/setup")
    command = "" if setup["users"] else first_user_command(view.ctx.served.cfg)  # the one the run log prints
    return view.render("login.html", has_users=setup["users"], command=command, next=_next(view))


async def logout_page(view: View) -> Response:
    return view.render("logout.html")


PAGES = [
    Page("/login", login_page, access="public"),
    Page("/logout", logout_page),
]
