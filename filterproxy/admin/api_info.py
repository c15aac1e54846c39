"""Read-only answers: explain a verdict, the running status, the audit trail and the query log."""

from __future__ import annotations

import collections
import datetime as dt
import time
from typing import Any

from filterproxy import __version__
from filterproxy.admin.errors import ApiError
from filterproxy.admin.fields import Field
from filterproxy.admin.routes import Call, Endpoint, iso, record


async def explain(call: Call) -> dict[str, Any]:
    """Exactly what ``filterproxy explain --json`` prints for one input."""
    from filterproxy.clients import Client
    from filterproxy.policy.explain import explain_json

    q, engine = call.query, call.ctx.engine
    if (q.get("group") is None) == (q.get("client") is None):
        raise ApiError(400, "give exactly one of 'group' and 'client'")
    client = None
    if q.get("group") is not None:
        group, how = q["group"], "--group"
        if group not in engine.config.groups:
            raise ApiError(400, f"unknown group {group!r} (groups: {', '.join(engine.config.groups)})")
    else:
        client = Client.parse(q["client"])
        found, how = engine.clients.group_for(client)
        if found is None:
            raise ApiError(400, f"client {q['client']}: matches no client rule and there is no default_group")
        group = found
    call.may_manage(group)
    return explain_json(engine, q["q"], client, group, how)


def _signature(li: Any) -> str | None:
    """``verified``: installed from the distribution repository (TUF metadata checked by the updater);
    ``pinned``: a sha256 pin; else None."""
    from filterproxy.distribution.gateway import is_distributed

    if is_distributed(li.source):
        return "verified"
    return "pinned" if li.source.sha256 else None


def _lists(call: Call) -> list[dict[str, Any]]:
    from filterproxy.admin.api_lists import last_errors
    from filterproxy.distribution.gateway import is_distributed, list_errors
    from filterproxy.lists.snapshot_cache import list_version

    out = []
    now = time.time()
    errors = last_errors(call.ctx)  # each list's failure in the last update run from the API
    cfg = call.ctx.engine.config
    # the distribution's refusals (bad signature, rollback, expiry, hash...): the last good copy still serves
    refused = list_errors(cfg.server.state_dir) if cfg.distribution.url else {}
    for li in call.ctx.engine.snapshot.lists:
        version, ts = list_version(li)
        distributed = is_distributed(li.source)
        serial = int(version) if distributed and version.isdigit() else None  # the published list version
        if distributed and li.id not in errors and (li.id in refused or "*" in refused):
            errors[li.id] = refused.get(li.id) or refused["*"]
        out.append(
            {
                "id": li.id,
                "category": li.category,
                "entries": li.entries,
                "version": version,
                "serial": serial,
                "updated_at": iso(dt.datetime.fromtimestamp(ts, dt.UTC)) if ts else None,
                "age_seconds": round(now - ts) if ts else None,
                # a downloaded list is refreshed this often (None: a local file); older than it: stale
                "refresh_seconds": li.source.refresh if li.source.url else None,
                "signature": _signature(li),
                "error": errors.get(li.id),
            }
        )
    return out


def _upstreams(call: Call) -> list[dict[str, Any]]:
    """Each upstream's health as the DNS chain sees it (read only: plain attributes, no lock needed)."""
    dns = call.ctx.served.dns
    if dns is None:
        return []
    now = time.monotonic()
    out = []
    for link in dns.chain.links:
        groups = {"": link.group} if link.name == "upstream" else getattr(link, "groups", {})
        for zone, group in groups.items():
            for u in group.upstreams:
                out.append(
                    {
                        "name": u.name,
                        "zone": zone or None,
                        "healthy": u.healthy(now),
                        "failures": u.fails,
                        "down_for_seconds": round(max(0.0, u.down_until - now), 1),
                    }
                )
    return out


def _reports(call: Call) -> dict[str, int | None]:
    """How many image-match reports wait in the spool, and how many were sent (None: unreadable)."""
    spool = call.ctx.served.reports
    try:
        if spool is None:
            from filterproxy.reports import ReportSpool

            spool = ReportSpool.from_config(call.ctx.served.cfg, None)
        found = spool.list()
        return {"pending": len(found.get("pending", [])), "sent": len(found.get("sent", []))}
    except (OSError, ValueError):
        return {"pending": None, "sent": None}


def _distribution(cfg: Any) -> dict[str, Any] | None:
    """The ministry's repository this gateway follows (``distribution:``), as its last update left it: None
    when not configured."""
    d = cfg.distribution
    if not d.url:
        return None
    from filterproxy.distribution.gateway import read_state

    state = read_state(cfg.server.state_dir)

    def when(key: str) -> str | None:
        t = state.get(key)
        return iso(dt.datetime.fromtimestamp(t, dt.UTC)) if isinstance(t, int | float) else None

    return {
        "url": d.url,
        "mirrors": list(d.mirrors),
        "province": d.province,
        "served_from": state.get("url"),
        "root_version": state.get("root_version"),
        "snapshot_version": state.get("snapshot_version"),
        "checked_at": when("checked_at"),
        "last_success": when("last_success"),
        "error": state.get("error"),  # {reason, message} of a refused update; the last good lists serve
        "refused": state.get("refused") or [],
        "lists": {k: v.get("version") for k, v in (state.get("lists") or {}).items()},
    }


async def status(call: Call) -> dict[str, Any]:
    ctx = call.ctx
    cfg = ctx.engine.config
    now = dt.datetime.now(dt.UTC)
    return {
        "version": __version__,
        "started_at": iso(ctx.started),
        "uptime_seconds": round((now - ctx.started).total_seconds()),
        "config": {"generation": ctx.served.generation, "digest": cfg.digest, "path": cfg.path},
        "lists": _lists(call),
        "distribution": _distribution(cfg),
        "upstreams": _upstreams(call),
        "reports": await call.run(_reports, call),
        "live": {"serial": await call.run(ctx.store.serial)},
    }


def _since(text: str | None) -> dt.datetime | None:
    if text is None:
        return None
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise ApiError(400, f"'since' {text!r}: expected an ISO date or time, e.g. 2026-03-02T08:30+07:00") from None
    return when if when.tzinfo is not None else when.replace(tzinfo=dt.UTC)


async def audit(call: Call) -> list[dict[str, Any]]:
    q = call.query
    rows = await call.run(call.ctx.store.audit, _since(q.get("since")), q.get("limit", 500))
    return [record(a) for a in rows]


def _read_querylog(call: Call, since: dt.datetime | None) -> list[dict]:
    from filterproxy import querylog

    q = call.query
    recs = querylog.read(
        querylog.directory(call.ctx.engine.config), since=since, group=q.get("group"), action=q.get("action")
    )
    name = q.get("name")
    if name:  # a part of the name, as typed: "youtube" finds www.youtube.com
        recs = (r for r in recs if name.lower() in (r.get("name") or ""))
    return list(collections.deque(recs, maxlen=q.get("limit", 1000)))  # the newest, oldest first


async def querylog_records(call: Call) -> list[dict]:
    if not call.ctx.engine.config.querylog.enabled:
        raise ApiError(403, "the query log is off (querylog.enabled: false; deploy/privacy.md says why)")
    return await call.run(_read_querylog, call, _since(call.query.get("since")))


_EXPLAIN = {
    "q": Field(required=True, max_len=2048, doc="a name, an address or a URL"),
    "group": Field(max_len=64),
    "client": Field(max_len=128, doc="an IP address, user:NAME, mac:AA:.. or doh:ID"),
}
_AUDIT = {"since": Field(max_len=40, doc="ISO 8601"), "limit": Field("int", low=1, high=5000)}
_QUERYLOG = {
    "since": Field(max_len=40, doc="ISO 8601"),
    "group": Field(max_len=64),
    "action": Field(choices=("block", "allow", "rewrite", "refused", "error")),
    "name": Field(max_len=253, doc="only records whose name contains this"),
    "limit": Field("int", low=1, high=10000, doc="the newest this many records (default 1000)"),
}

ENDPOINTS = [
    Endpoint("GET", "/explain", explain, "The verdict for a name or URL, and why", query=_EXPLAIN),
    Endpoint("GET", "/status", status, "Version, uptime, config generation, lists, upstreams, report queue"),
    Endpoint("GET", "/audit", audit, "Who changed what, newest first", "admin", query=_AUDIT),
    Endpoint(
        "GET", "/querylog", querylog_records, "Query log records (when querylog.enabled)", "admin", None, _QUERYLOG
    ),
]
