"""The admin server: the control API's Starlette app, served by hypercorn on ``filterproxy run``'s loop.

:func:`build_app` mounts the endpoint tables of the ``api_*`` modules (``AREAS``: reviews and statistics
plug in as two more modules) under ``/api/v1``; each request goes through one wrapper: body size cap
(413), authentication (401), role (403), CSRF for cookie sessions (403), body and query tables (400),
then the handler; every exception becomes JSON (:mod:`.errors`). The web console's pages (``/``) and files
(``/static``) are mounted next to it (:mod:`.console`: they read and change through this API).
:class:`AdminServer` binds ``server.admin_listen`` (port 0: any free port, logged), over TLS when
``admin.tls_cert_file`` is set.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from filterproxy.admin import (
    api_devices,
    api_groups,
    api_info,
    api_lists,
    api_reviews,
    api_rules,
    api_stats,
    api_users,
    auth,
)
from filterproxy.admin.errors import ApiError, from_exception, http_exception, internal
from filterproxy.admin.fields import MAX_BODY, parse_body, parse_query
from filterproxy.admin.routes import Call, Context, Endpoint, Served
from filterproxy.admin.spec import PREFIX, document
from filterproxy.asgi import AsgiListener
from filterproxy.vocabulary import ConfigError

log = logging.getLogger("filterproxy.admin")

# one module per area, each with ENDPOINTS
AREAS = (auth, api_rules, api_devices, api_groups, api_info, api_reviews, api_stats, api_users, api_lists)


async def _openapi(call: Call) -> dict[str, Any]:
    return document(endpoints())


def endpoints() -> list[Endpoint]:
    """Every endpoint of the API (the OpenAPI document's included)."""
    spec = Endpoint("GET", "/openapi.json", _openapi, "This document (OpenAPI 3.1)", "public")
    return [ep for area in AREAS for ep in area.ENDPOINTS] + [spec]


async def _read_body(request: Request) -> bytes:
    """The request body, at most MAX_BODY bytes (413 beyond, read no further)."""
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > MAX_BODY:
        raise ApiError(413, f"the body is larger than {MAX_BODY} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY:
            raise ApiError(413, f"the body is larger than {MAX_BODY} bytes")
    return bytes(body)


async def _handle(ctx: Context, ep: Endpoint, request: Request) -> Response:
    raw = await _read_body(request) if request.method in ("POST", "PUT", "PATCH", "DELETE") else b""
    principal = None
    if ep.access != "public":
        principal = await auth.authenticate(ctx, request)
        if ep.access == "admin" and principal.user.role != "admin":
            raise ApiError(403, "admins only")
        auth.check_csrf(principal, request)
    body = parse_body(raw, ep.body) if ep.body is not None else {}
    query = parse_query(request.query_params, ep.query or {})
    result = await ep.handler(Call(ctx, request, principal, body, query))
    if isinstance(result, Response):
        return result
    return JSONResponse(result, status_code=ep.status)


def _route(ctx: Context, ep: Endpoint) -> Route:
    async def endpoint(request: Request) -> Response:
        try:
            return await _handle(ctx, ep, request)
        except Exception as exc:  # never a traceback: refusals → their status, anything else → a logged 500
            return from_exception(exc)

    endpoint.__name__ = ep.handler.__name__
    return Route(PREFIX + ep.path, endpoint, methods=[ep.method])


def build_app(ctx: Context) -> Starlette:
    from filterproxy.admin import console

    ctx.endpoints = endpoints()  # the console calls them in process (it imports nothing from here: no cycle)
    return Starlette(
        routes=[_route(ctx, ep) for ep in ctx.endpoints] + console.routes(ctx),  # the web console at / and /static
        exception_handlers={HTTPException: http_exception, Exception: internal},
    )


def tls_context(cert: str, key: str) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    try:
        ctx.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"'admin.tls_cert_file' {cert} / 'admin.tls_key_file' {key}: cannot load them: {exc}"
        ) from None
    return ctx


class AdminServer:
    """hypercorn serving the control API on one address, on the running asyncio loop."""

    def __init__(self, ctx: Context, tls: ssl.SSLContext | None) -> None:
        self.ctx = ctx
        self.tls = tls
        self.app = build_app(ctx)
        self.listener = AsgiListener("admin: the control API", log, errorlog="filterproxy.admin.hypercorn")

    @property
    def sock(self) -> socket.socket | None:
        """The listening socket, once started."""
        return self.listener.sock

    async def start(self, host: str, port: int) -> int:
        """Bind, start serving in a task; returns the bound port."""
        # TCP_NODELAY: hypercorn writes a response's head and body apart, and with Nagle the body of every
        # answer after the first on a keep-alive connection waited for the client's delayed ACK (~40 ms a call;
        # docs/performance.md, "Admin server")
        return await self.listener.start(self.app, host, port, self.tls, nodelay=True)

    async def stop(self) -> None:
        await self.listener.stop()
        try:
            await asyncio.get_running_loop().run_in_executor(None, self.ctx.store.close)
        except Exception:
            log.exception("admin: closing the state store failed")


async def start_admin(served: Served) -> AdminServer | None:
    """The control API on ``server.admin_listen`` (None: off, or it could not start — filtering goes on)."""
    from filterproxy.admin.auth import LoginLimiter
    from filterproxy.state.store import Store

    cfg = served.cfg
    if cfg.server.admin_listen is None:
        log.info("admin API off (--admin-listen off)")
        return None
    host, port = cfg.server.admin_listen
    a = cfg.admin
    tls = tls_context(a.tls_cert_file, a.tls_key_file) if a.tls_cert_file and a.tls_key_file else None
    loop = asyncio.get_running_loop()
    try:
        store = await loop.run_in_executor(None, Store.for_config, cfg)
    except Exception as exc:
        log.error("admin: cannot open the state store: %s; the control API is off", exc)
        return None
    server = AdminServer(Context(store, served, LoginLimiter(), tls=tls is not None), tls)
    try:
        port = await server.start(host, port)
    except OSError as exc:
        log.error("admin: cannot listen on %s:%d: %s; the control API is off", host, port, exc.strerror or exc)
        await server.stop()
        return None
    shown = f"[{host}]" if ":" in host else host
    scheme = "https" if tls else "http"
    log.info("admin API on %s://%s:%d%s", scheme, shown, port, PREFIX)
    try:
        anyone = bool(await loop.run_in_executor(None, store.users))
    except Exception:  # the hint is a courtesy: the API answers anyway
        anyone = True
    if not anyone:  # first start: say how to get in (there is never a default password)
        log.warning(
            "admin: no user yet: create one with '%s' (the password is read from stdin), then open the console "
            "at %s://%s:%d/",
            auth.first_user_command(cfg),
            scheme,
            shown,
            port,
        )
    return server
