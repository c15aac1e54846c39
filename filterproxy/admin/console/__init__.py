"""The web console: server-rendered pages (Jinja2) over the control API, on the admin server at ``/``
(pages) and ``/static/...`` (our CSS/JS and the vendored htmx and uPlot), next to ``/api/v1``.

Conventions for a page (the console holds no state logic: it reads through the API and changes through it)

* **A page** is a module ``filterproxy/admin/console/pages/<name>.py`` exporting
  ``PAGES = [Page("/groups", groups_page, nav="groups")]``; :func:`all_pages` finds every module there, so no
  list needs editing. The handler is ``async def groups_page(view: View) -> Response`` and ends with
  ``return view.render("groups.html", rows=rows)``. ``access="admin"`` for admin-only pages (teachers get
  a 403 page and no nav link), ``"public"`` only for the sign-in page.
* **The template** ``templates/<name>.html`` starts with ``{% extends "base.html" %}`` and fills
  ``{% block title %}`` and ``{% block content %}``. Every visible string is ``{{ t("groups.title") }}``.
  No inline ``<script>``, ``<style>``, ``style=`` or ``on*=``/``hx-on`` attributes: the CSP is
  ``default-src 'self'``; put CSS in ``static/console.css`` and behaviour in ``static/<name>.js``
  (``{% block scripts %}``). Tables sit in ``<div class="scroll">`` so 360 px never scrolls sideways.
* **The nav** is :data:`NAV` (key, path, i18n key, admin only); a page passes ``nav=<key>`` so its
  entry is highlighted. The eight entries exist already; add no others without telling the maintainer.
* **Strings** go in :mod:`.i18n`, in both ``VI`` (the default) and ``EN``, keys prefixed with the page's
  nav key (``groups.title``); a test checks both have the same keys.
* **Who is signed in**: the ``filterproxy_session`` cookie (path ``/``) → ``view.user`` (a
  :class:`~filterproxy.state.model.User`), ``view.csrf``, ``view.admin``. A page that is not public
  redirects to ``/login?next=<path>`` before its handler runs when the session is missing or over.
* **Reading**: ``await view.api("/status")`` or ``await view.api("/stats", {"from": ..., "step": 3600})``
  calls the GET endpoint's handler in process with the signed-in user's rights (the same role and group
  checks as over HTTP); an :class:`~filterproxy.admin.errors.ApiError` becomes the error page. The browser
  may also read ``/api/v1/...`` itself (``fetch``, same origin, the cookie goes along).
* **Changing**: always an htmx call from the browser to ``/api/v1/...``, never a console route:
  ``<form hx-post="/api/v1/overrides" hx-ext="json-enc" hx-swap="none" data-reload>``. ``base.html`` sends
  ``X-CSRF-Token`` with every htmx request (``hx-headers`` on ``<body>``); ``static/console.js`` encodes
  the form as JSON (``type=number`` inputs, and radios or selects with ``data-number``, as numbers; empty
  fields left out; checkboxes as booleans),
  shows an error's ``detail`` in the ``#flash`` region, and on success reloads the page (``data-reload``),
  goes to ``data-redirect="/path"``, or shows ``data-done="text"`` in ``#flash``. Use ``hx-delete``
  (with ``hx-confirm``) for removals; ``hx-post`` with an empty form sends ``{}``.
"""

from __future__ import annotations

import importlib
import logging
import pkgutil
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from filterproxy.admin.console import i18n
from filterproxy.admin.errors import ApiError
from filterproxy.admin.routes import Call, Context, Principal

if TYPE_CHECKING:
    from filterproxy.state.model import User

log = logging.getLogger("filterproxy.admin.console")
HERE = Path(__file__).parent
# 'unsafe-inline' nowhere: uPlot and htmx set styles through the CSSOM, which CSP allows
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "font-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
LANG_COOKIE = "lang"
Access = Literal["public", "user", "admin"]


@dataclass(frozen=True)
class NavItem:
    """One entry of the header's navigation."""

    key: str
    path: str
    admin: bool = False  # shown to admins only (the API refuses teachers there)


NAV = (
    NavItem("dashboard", "/"),
    NavItem("groups", "/groups"),
    NavItem("devices", "/devices", admin=True),
    NavItem("reviews", "/reviews"),
    NavItem("why", "/why"),
    NavItem("lists", "/lists"),
    NavItem("querylog", "/querylog", admin=True),
    NavItem("audit", "/audit", admin=True),
)

templates = Jinja2Templates(directory=str(HERE / "templates"))
templates.env.globals["NAV"] = NAV


class View:
    """One page request as a page handler sees it: the user, the language, rendering and API reads."""

    def __init__(self, ctx: Context, request: Request, principal: Principal | None, lang: str, nav: str | None):
        self.ctx, self.request, self.principal, self.lang, self.nav = ctx, request, principal, lang, nav

    @property
    def user(self) -> User | None:
        return self.principal.user if self.principal else None

    @property
    def csrf(self) -> str | None:
        return self.principal.csrf if self.principal else None

    @property
    def admin(self) -> bool:
        return self.principal is not None and self.principal.user.role == "admin"

    def t(self, key: str, **values: Any) -> str:
        return i18n.t(self.lang, key, **values)

    async def api(self, path: str, query: dict[str, Any] | None = None) -> Any:
        """The answer of ``GET /api/v1<path>`` (no path parameters) for the signed-in user, in process."""
        from filterproxy.admin.fields import parse_query

        ep = next((e for e in self.ctx.endpoints if e.method == "GET" and e.path == path), None)
        if ep is None:
            raise ApiError(404, f"no endpoint GET {path}")
        if ep.access != "public":
            if self.principal is None:
                raise ApiError(401, "sign in")
            if ep.access == "admin" and not self.admin:
                raise ApiError(403, "admins only")
        params = {k: str(v) for k, v in (query or {}).items() if v is not None}
        call = Call(self.ctx, self.request, self.principal, {}, parse_query(params, ep.query or {}))
        result = await ep.handler(call)
        if isinstance(result, Response):
            raise ApiError(500, f"GET {path} does not answer JSON")
        return result

    def render(self, template: str, status_code: int = 200, **values: Any) -> Response:
        """``template`` with the page's common values (user, lang, t, nav, csrf) and ``values``."""
        common = {
            "t": self.t,
            "lang": self.lang,
            "user": self.user,
            "admin": self.admin,
            "csrf": self.csrf or "",
            "nav": self.nav,
            "path": self.request.url.path,
        }
        resp = templates.TemplateResponse(self.request, template, {**common, **values}, status_code=status_code)
        return secure(resp)


Handler = Callable[[View], Awaitable[Response]]


@dataclass(frozen=True)
class Page:
    """One console route: its path, its handler, the nav entry it highlights, who may see it."""

    path: str
    handler: Handler
    nav: str | None = None
    access: Access = "user"


def secure(resp: Response) -> Response:
    """The console's security headers on one response."""
    resp.headers["Content-Security-Policy"] = CSP
    resp.headers["X-Content-Type-Options"] = "nosniff"
    resp.headers["Referrer-Policy"] = "no-referrer"
    resp.headers["Cache-Control"] = "no-store"
    return resp


def language(request: Request) -> tuple[str, bool]:
    """(the language, whether to remember it): ``?lang=`` first, then the cookie, then Vietnamese."""
    asked = request.query_params.get("lang")
    if asked in i18n.LANGS:
        return asked, True
    kept = request.cookies.get(LANG_COOKIE)
    return (kept if kept in i18n.LANGS else i18n.DEFAULT), False


async def signed_in(ctx: Context, request: Request) -> Principal | None:
    """The signed-in caller of a page request (the session cookie), or None."""
    from filterproxy.admin.auth import COOKIE, authenticate

    if not request.cookies.get(COOKIE):
        return None
    try:
        return await authenticate(ctx, request)
    except ApiError:
        return None


def _route(ctx: Context, page: Page) -> Route:
    async def endpoint(request: Request) -> Response:
        lang, remember = language(request)
        principal = None if page.access == "public" else await signed_in(ctx, request)
        view = View(ctx, request, principal, lang, page.nav)
        if page.access != "public" and principal is None:
            resp: Response = RedirectResponse(f"/login?next={quote(request.url.path)}", status_code=303)
        elif page.access == "admin" and not view.admin:
            resp = view.render("error.html", 403, status=403, detail=view.t("error.admins_only"))
        else:
            try:
                resp = await page.handler(view)
            except Exception as exc:  # a refusal → its status on the error page; anything else: logged, a 500
                from filterproxy.state.store import StateError

                if isinstance(exc, ApiError):
                    status, detail = exc.status, exc.detail
                elif isinstance(exc, StateError):
                    status, detail = int(getattr(exc, "status", 400)), str(exc)
                else:
                    log.error("console: %s failed: %r", request.url.path, exc, exc_info=exc)
                    status, detail = 500, view.t("error.internal")
                resp = view.render("error.html", status, status=status, detail=detail)
        if remember:
            resp.set_cookie(LANG_COOKIE, lang, max_age=365 * 86400, path="/", samesite="strict")
        return secure(resp)

    endpoint.__name__ = page.handler.__name__
    return Route(page.path, endpoint, methods=["GET"])


def all_pages() -> list[Page]:
    """Every page of the console: the ``PAGES`` of each module in :mod:`.pages`, sorted by module name."""
    package = importlib.import_module(f"{__name__}.pages")

    found: list[Page] = []
    for mod in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name):
        found.extend(importlib.import_module(f"{package.__name__}.{mod.name}").PAGES)
    return found


class _Static(StaticFiles):
    """The static files, with the console's security headers (and cached: names carry versions)."""

    async def get_response(self, path: str, scope: Any) -> Response:
        resp = await super().get_response(path, scope)
        resp.headers["X-Content-Type-Options"] = "nosniff"
        resp.headers["Cache-Control"] = "public, max-age=3600"
        return resp


def routes(ctx: Context) -> list[BaseRoute]:
    """The console's routes for :func:`filterproxy.admin.server.build_app`: pages and ``/static``."""
    out: list[BaseRoute] = [_route(ctx, p) for p in all_pages()]
    out.append(Mount("/static", app=_Static(directory=str(HERE / "static")), name="static"))
    return out
