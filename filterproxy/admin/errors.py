"""Every failure of the control API as JSON ``{"error": code, "detail": why}``, never a traceback.

:class:`ApiError` is raised by the handlers and the auth layer; the store's ``StateError`` carries its own
status; anything else is a 500 ``{"error": "internal"}``, logged and counted (``filterproxy_admin_errors_total``).
"""

from __future__ import annotations

import logging
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

log = logging.getLogger("filterproxy.admin")

CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "too_large",
    415: "unsupported_media_type",
    429: "too_many_attempts",
    500: "internal",
}


class ApiError(Exception):
    """A request the API refuses: HTTP ``status``, ``detail`` for the caller, optional extra headers."""

    def __init__(self, status: int, detail: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.headers = headers or {}


def error_response(status: int, detail: str | None, headers: dict[str, str] | None = None) -> JSONResponse:
    body: dict[str, Any] = {"error": CODES.get(status, "error"), "detail": detail}
    return JSONResponse(body, status_code=status, headers=headers)


def from_exception(exc: BaseException) -> JSONResponse:
    """The answer to an exception a handler raised (see the module docstring)."""
    from filterproxy.metrics.catalogue import ADMIN_ERRORS
    from filterproxy.state.shapes import ShapeError
    from filterproxy.state.store import StateError

    if isinstance(exc, ApiError):
        return error_response(exc.status, exc.detail, exc.headers)
    if isinstance(exc, StateError):
        return error_response(int(getattr(exc, "status", 400)), str(exc))
    if isinstance(exc, ShapeError):
        return error_response(400, str(exc))
    ADMIN_ERRORS.inc()
    log.error("admin: request failed: %r", exc, exc_info=exc)
    return JSONResponse({"error": "internal", "detail": "internal error (logged)"}, status_code=500)


async def http_exception(request: Request, exc: Exception) -> Response:
    """Starlette's own refusals (no such route, method not allowed) as JSON."""
    assert isinstance(exc, HTTPException)
    status = exc.status_code
    detail = {404: f"no such endpoint: {request.url.path}", 405: f"method {request.method} not allowed here"}
    return error_response(status, detail.get(status, str(exc.detail)), dict(exc.headers or {}))


async def internal(request: Request, exc: Exception) -> Response:
    return from_exception(exc)
