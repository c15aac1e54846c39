"""The age groups' policies as the running engine holds them, read-only, each rule with its ``file:line``.

What the console's group pages show in plain words: blocked categories (and the lists that provide them),
SafeSearch and YouTube modes, schedules, the allow and block names, the client rules that put devices in
the group. Changes go through overrides and pauses (:mod:`.api_rules`), never into the YAML files.
Teachers see their own groups only.
"""

from __future__ import annotations

from typing import Any

from filterproxy.admin.errors import ApiError
from filterproxy.admin.routes import Call, Endpoint
from filterproxy.policy.model import DAYS, Policy, Schedule


def _clock(minute: int) -> str:
    return f"{minute // 60:02d}:{minute % 60:02d}"


def _schedule(s: Schedule) -> dict[str, Any]:
    return {
        "name": s.name,
        "days": [DAYS[d] for d in sorted(s.days)],
        "from": _clock(s.start),
        "to": _clock(s.end),
        "block_categories": sorted(s.block),
        "allow_only": s.allow_only,
        "source": s.source or None,
    }


def _names(p: Policy, names: dict[str, Any], lines: dict[str, int]) -> list[dict[str, Any]]:
    return [
        {"name": n, "subdomains": names[n], "source": f"{p.file}:{lines[n]}" if lines.get(n) else p.file}
        for n in sorted(names)
    ]


def summary(call: Call, p: Policy) -> dict[str, Any]:
    """One group's policy as JSON: every setting with the ``file:line`` it was read from."""
    cfg, engine = call.ctx.engine.config, call.ctx.engine
    by_category: dict[str, list[str]] = {}
    for li in engine.snapshot.lists:
        by_category.setdefault(li.category, []).append(li.id)
    src = p.sources.get
    return {
        "id": p.id,
        "name": p.name,
        "names": dict(p.names),
        "description": p.description or None,
        "tone": p.tone,
        "file": p.file,
        "default": cfg.default_group == p.id,
        "block_categories": [{"category": c, "lists": by_category.get(c, [])} for c in sorted(p.block_categories)],
        "safesearch": p.safesearch,
        "youtube": p.youtube,
        "block_mode": p.block_mode,
        "bypass_defences": p.bypass_defences,
        "ip_literals_blocked": p.ip_literals_blocked,
        "schedules": [_schedule(s) for s in p.schedules],
        "allow": _names(p, p.allow, p.allow_lines),
        "block": _names(p, {n: sub for n, (sub, _line) in p.block.items()}, {n: ln for n, (_s, ln) in p.block.items()}),
        "clients": [
            {"kind": c.kind, "value": c.value, "source": c.where or None} for c in cfg.clients if c.group == p.id
        ],
        "sources": {
            k: src(k) for k in ("block_categories", "safesearch", "youtube", "schedules", "allow", "block") if src(k)
        },
        "timezone": cfg.timezone,
    }


async def list_groups(call: Call) -> list[dict[str, Any]]:
    mine = call.groups()
    return [summary(call, p) for gid, p in call.ctx.engine.config.groups.items() if mine is None or gid in mine]


async def get_group(call: Call) -> dict[str, Any]:
    gid = call.path("name")
    p = call.ctx.engine.config.groups.get(gid)
    if p is None:
        raise ApiError(404, f"no group {gid!r}")
    call.may_manage(gid)
    return summary(call, p)


ENDPOINTS = [
    Endpoint("GET", "/groups", list_groups, "The groups' policies, each rule with its file:line (a teacher's: theirs)"),
    Endpoint("GET", "/groups/{name}", get_group, "One group's policy, each rule with its file:line"),
]
