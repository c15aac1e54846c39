"""Declarative checks of JSON bodies and query strings: a small table per endpoint, no pydantic.

A table maps a field name to a :class:`Field` (type, required, bounds); :func:`check_body` refuses unknown
fields, missing ones and wrong types with an :class:`~filterproxy.admin.errors.ApiError` 400 naming the
field. The same tables describe the endpoints in the OpenAPI document (:mod:`filterproxy.admin.spec`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from filterproxy.admin.errors import ApiError

MAX_BODY = 64 * 1024  # bytes: a larger request body is refused with 413


@dataclass(frozen=True)
class Field:
    """One field: ``kind`` is ``str``, ``int``, ``number`` (int or float), ``bool`` or ``list`` (of strings,
    each at most ``max_len``; a query string gives it comma-separated)."""

    kind: str = "str"
    required: bool = False
    max_len: int = 253
    choices: tuple[str, ...] = ()
    low: float | None = None
    high: float | None = None
    doc: str = ""
    nullable: bool = False  # an explicit null is kept (a PATCH clears the field); otherwise null = absent


Fields = Mapping[str, Field]

_JSON_TYPES = {"str": "string", "int": "integer", "number": "number", "bool": "boolean", "list": "array"}
MAX_ITEMS = 100  # items of a list field


def _typed(name: str, f: Field, v: Any) -> Any:
    ok = {
        "str": isinstance(v, str),
        "int": isinstance(v, int) and not isinstance(v, bool),
        "number": isinstance(v, int | float) and not isinstance(v, bool),
        "bool": isinstance(v, bool),
        "list": isinstance(v, list) and len(v) <= MAX_ITEMS and all(isinstance(x, str) for x in v),
    }[f.kind]
    if not ok:
        what = f"a list of at most {MAX_ITEMS} strings" if f.kind == "list" else _JSON_TYPES[f.kind]
        raise ApiError(400, f"{name!r}: expected {what}, got {type(v).__name__}")
    if f.kind == "list":
        if any(len(x) > f.max_len for x in v):
            raise ApiError(400, f"{name!r}: an item is longer than {f.max_len} characters")
    elif f.kind == "str":
        if len(v) > f.max_len:
            raise ApiError(400, f"{name!r}: longer than {f.max_len} characters")
        if f.choices and v not in f.choices:
            raise ApiError(400, f"{name!r}: expected one of {', '.join(f.choices)}")
    elif f.kind in ("int", "number"):
        if (f.low is not None and v < f.low) or (f.high is not None and v > f.high):
            raise ApiError(400, f"{name!r}: expected a value between {f.low:g} and {f.high:g}")
    return v


def check(fields: Fields, data: Mapping[str, Any], what: str = "field") -> dict[str, Any]:
    """``data`` checked against ``fields``: unknown names, missing required ones, wrong types → 400."""
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ApiError(400, f"unknown {what}{'s' if len(unknown) > 1 else ''}: {', '.join(unknown)}")
    out: dict[str, Any] = {}
    for name, f in fields.items():
        v = data.get(name)
        if v is None:
            if f.required:
                raise ApiError(400, f"{name!r}: required")
            if f.nullable and name in data:
                out[name] = None
            continue
        out[name] = _typed(name, f, v)
    return out


def parse_body(raw: bytes, fields: Fields) -> dict[str, Any]:
    """A JSON object body checked against ``fields`` (an empty body is an empty object)."""
    if not raw.strip():
        data: Any = {}
    else:
        try:
            data = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ApiError(400, f"the body is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ApiError(400, "the body must be a JSON object")
    return check(fields, data)


def parse_query(params: Mapping[str, str], fields: Fields) -> dict[str, Any]:
    """Query parameters (strings) converted to the fields' kinds, then checked like a body."""
    data: dict[str, Any] = {}
    for name, text in params.items():
        f = fields.get(name)
        if f is None or f.kind == "str":
            data[name] = text
        elif f.kind == "bool":
            data[name] = text.lower() in ("1", "true", "yes")
        elif f.kind == "list":
            data[name] = [x for x in text.split(",") if x]
        else:
            try:
                data[name] = int(text) if f.kind == "int" else float(text)
            except ValueError:
                raise ApiError(400, f"{name!r}: expected {_JSON_TYPES[f.kind]}, got {text!r}") from None
    return check(fields, data, "parameter")


def schema(fields: Fields) -> dict[str, Any]:
    """The JSON Schema of a field table (for the OpenAPI document)."""
    props: dict[str, Any] = {}
    for name, f in fields.items():
        p: dict[str, Any] = {"type": [_JSON_TYPES[f.kind], "null"] if f.nullable else _JSON_TYPES[f.kind]}
        if f.kind == "str":
            p["maxLength"] = f.max_len
        if f.kind == "list":
            p["items"] = {"type": "string", "maxLength": f.max_len}
            p["maxItems"] = MAX_ITEMS
        if f.choices:
            p["enum"] = list(f.choices)
        if f.low is not None:
            p["minimum"] = f.low
        if f.high is not None:
            p["maximum"] = f.high
        if f.doc:
            p["description"] = f.doc
        props[name] = p
    out: dict[str, Any] = {"type": "object", "properties": props, "additionalProperties": False}
    required = [n for n, f in fields.items() if f.required]
    if required:
        out["required"] = required
    return out
