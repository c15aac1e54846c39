"""One explained verdict as a JSON object: what ``filterproxy explain --json`` prints and ``GET /api/v1/explain``
answers (house rule 2), built in one place so the two cannot drift.
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from filterproxy.clients import Client
    from filterproxy.policy.engine import Engine
    from filterproxy.verdict import Verdict


def split_input(item: str) -> tuple[str, str | None]:
    """A name or a URL → (host, url or None); ValueError for a URL without a host."""
    s = item.strip()
    if "://" in s or "/" in s:
        parts = urlsplit(s if "://" in s else "http://" + s)
        if not parts.hostname:
            raise ValueError(f"{item!r}: no host name in this URL")
        return parts.hostname, s if "://" in s else "http://" + s
    return s, None


def explain_item(
    engine: Engine, item: str, client: Client | None, group: str | None, at: dt.datetime | None
) -> tuple[Verdict, str, str | None]:
    """(verdict, host, address as a browser reads it) for one name or URL; ValueError for bad input."""
    from filterproxy.names import canonical_ip

    host, url = split_input(item)
    address = canonical_ip(host)  # an IP literal as a browser reads it: 0x7f.1 → 127.0.0.1
    return engine.decide(client, host, url, at, group=group, explain=True), host, address


def verdict_json(engine: Engine, item: str, v: Verdict, how: str) -> dict[str, Any]:
    """The ``explain --json`` object of one verdict (``how``: how the client was matched, or ``--group``)."""
    pol = engine.config.groups.get(v.group)
    return {
        "input": item,
        "action": v.action.value,
        "group": v.group,
        "reason": v.reason.value,
        "category": v.category,
        "list": v.list_id,
        "rule": v.rule,
        "source": v.source,
        "schedule": v.schedule,
        "rewrite": v.rewrite,
        "legal": v.legal,
        "short_id": v.short_id,
        "client_match": how,
        "policy_description": (pol.description or None) if pol is not None else None,
    }


def explain_json(
    engine: Engine, item: str, client: Client | None, group: str | None, how: str, at: dt.datetime | None = None
) -> dict[str, Any]:
    """One input's object: the verdict's fields, or ``{"input", "error"}`` when it cannot be decided."""
    try:
        v, _, _ = explain_item(engine, item, client, group, at)
    except ValueError as exc:
        return {"input": item, "error": str(exc)}
    return verdict_json(engine, item, v, how)
