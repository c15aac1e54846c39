"""The OpenAPI 3.1 document of the control API, built from the same endpoint tables the server mounts."""

from __future__ import annotations

import re
from typing import Any

from filterproxy import __version__
from filterproxy.admin.fields import schema
from filterproxy.admin.routes import Endpoint

PREFIX = "/api/v1"
_PARAM = re.compile(r"\{(\w+)(?::(\w+))?\}")
_PATH_TYPES = {"int": "integer", None: "string", "str": "string"}  # Starlette's converters
_ERROR = {
    "description": "an error",
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "properties": {"error": {"type": "string"}, "detail": {"type": ["string", "null"]}},
                "required": ["error", "detail"],
            }
        }
    },
}


def openapi_path(path: str) -> str:
    """``/overrides/{id:int}`` → ``/api/v1/overrides/{id}``."""
    return PREFIX + _PARAM.sub(r"{\1}", path)


def _operation(ep: Endpoint) -> dict[str, Any]:
    op: dict[str, Any] = {
        "summary": ep.summary,
        "operationId": f"{ep.method.lower()}_{ep.handler.__name__}",
        "responses": {
            str(ep.status): {"description": "success", "content": {ep.produces: {}}},
            "400": _ERROR,
            "default": _ERROR,
        },
    }
    if ep.access == "public":
        op["security"] = []
    if ep.access == "admin":
        op["description"] = "admins only"
    params: list[dict[str, Any]] = [
        {"name": m.group(1), "in": "path", "required": True, "schema": {"type": _PATH_TYPES[m.group(2)]}}
        for m in _PARAM.finditer(ep.path)
    ]
    for name, p in schema(ep.query or {})["properties"].items():
        params.append(
            {"name": name, "in": "query", "required": bool(ep.query and ep.query[name].required), "schema": p}
        )
    if params:
        op["parameters"] = params
    if ep.body:
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": schema(ep.body)}}}
    return op


def document(endpoints: list[Endpoint]) -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for ep in endpoints:
        paths.setdefault(openapi_path(ep.path), {})[ep.method.lower()] = _operation(ep)
    return {
        "openapi": "3.1.0",
        "info": {"title": "filterproxy control API", "version": __version__},
        "paths": paths,
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "session": {"type": "apiKey", "in": "cookie", "name": "filterproxy_session"},
            }
        },
        "security": [{"bearer": []}, {"session": []}],
    }
