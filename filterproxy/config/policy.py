"""Policy files (``policies/<group>.yaml``) → :class:`filterproxy.policy.model.Policy`; errors name file:line."""

from __future__ import annotations

import ipaddress
import re
from typing import Any

from filterproxy.config.loader import Section, where_item
from filterproxy.names import NameError_, canonical_host, normalize_host
from filterproxy.policy.model import BLOCK_MODES, DAYS, SAFESEARCH_LEVELS, TONES, Policy, Schedule
from filterproxy.vocabulary import KNOWN_CATEGORIES, LANGUAGES, ConfigError

_DAY_SETS = {"weekdays": DAYS[:5], "weekend": DAYS[5:], "all": DAYS, "daily": DAYS}


def check_categories(policy: Policy, list_categories: set[str]) -> None:
    """Categories must be known ids or provided by a configured list (typos must not pass)."""
    for cat in policy.block_categories | {c for s in policy.schedules for c in s.block}:
        if cat not in KNOWN_CATEGORIES and cat not in list_categories:
            raise ConfigError(
                f"{policy.file}: policy {policy.id!r} names unknown category {cat!r} "
                f"(known: {', '.join(sorted(KNOWN_CATEGORIES | list_categories))})"
            )


def _names(sec: Section, key: str) -> dict[str, tuple[bool, int]]:
    out: dict[str, tuple[bool, int]] = {}
    raw = sec.get(key, [], types=(list,))
    for i, item in enumerate(raw):
        line = raw.item_lines[i] if hasattr(raw, "item_lines") else 0
        s = str(item).strip()
        exact = s.startswith("=")  # "=example.org": only that name
        s = s.lstrip("=")
        if s.startswith("*."):
            s = s[2:]
        try:
            out[canonical_host(s)] = (not exact, line)  # an IP literal too (an admin may allow a printer's address)
        except NameError_ as exc:
            raise ConfigError(f"{sec.file}:{line}: {key}: {exc} (expected a domain name or an IP address)") from None
    return out


def _ip_literals(sec: Section, p: Policy) -> None:
    """``block_ip_literals`` (default: on, unless the tone is ``adult``) and ``ip_literal_exempt`` (CIDRs)."""
    p.block_ip_literals = sec.get("block_ip_literals", None, types=(bool,))
    p.ip_literals_source = sec.where("tone" if p.block_ip_literals is None else "block_ip_literals")
    raw = sec.get("ip_literal_exempt", None, types=(list,))
    if raw is None:
        return
    nets = []
    for i, item in enumerate(raw):
        try:
            if not isinstance(item, str):
                raise ValueError(item)
            nets.append(str(ipaddress.ip_network(item.strip(), strict=False)))
        except ValueError:
            raise ConfigError(
                f"{where_item(raw, i, sec.file)}: 'policy {p.id}.ip_literal_exempt' has invalid network {item!r} "
                "(expected a CIDR like 192.168.0.0/16 or fd00::/8)"
            ) from None
    p.ip_literal_exempt = tuple(nets)


def _localized_names(sec: Section, gid: str) -> dict[str, str]:
    """``names: {vi: ..., en: ...}``: keys are block-page languages, values non-empty strings."""
    raw = sec.get("names", {}, types=(dict,))
    where = raw.where if hasattr(raw, "where") else (lambda _k=None: sec.where("names"))
    out: dict[str, str] = {}
    for lang, text in raw.items():
        if lang not in LANGUAGES:
            raise ConfigError(
                f"{where(lang)}: 'policy {gid}.names' has unknown language {lang!r} "
                f"(expected keys: {', '.join(LANGUAGES)})"
            )
        if not isinstance(text, str) or not text.strip():
            raise ConfigError(f"{where(lang)}: 'policy {gid}.names.{lang}' must be a non-empty string, got {text!r}")
        out[lang] = text.strip()
    return out


def _time(text: Any, where: str) -> int:
    m = re.fullmatch(r"(\d{1,2}):(\d{2})", str(text).strip())
    if not m or int(m.group(1)) > 24 or int(m.group(2)) > 59:
        raise ConfigError(f"{where}: expected a time like 07:30, got {text!r}")
    return min(int(m.group(1)) * 60 + int(m.group(2)), 24 * 60)


def _days(s: Section) -> frozenset[int]:
    days_raw = s.get("days", "all", types=(str, list))
    days: set[int] = set()
    for d in [days_raw] if isinstance(days_raw, str) else days_raw:
        d = str(d).lower()[:3] if str(d).lower() not in _DAY_SETS else str(d).lower()
        if d in _DAY_SETS:
            days |= {DAYS.index(x) for x in _DAY_SETS[d]}
        elif d in DAYS:
            days.add(DAYS.index(d))
        else:
            raise ConfigError(f"{s.where('days')}: unknown day {d!r} (expected mon..sun, weekdays, weekend, all)")
    return frozenset(days)


def _schedule(item: Any, i: int, where: str) -> Schedule:
    s = Section(item, f"schedules[{i}]", where)
    name = s.get("name", f"schedule-{i + 1}", types=(str,))
    days = _days(s)
    start = _time(s.get("from", "00:00"), s.where("from"))
    end = _time(s.get("to", "24:00"), s.where("to"))
    block = frozenset(str(c) for c in s.get("block_categories", [], types=(list,)))
    allow_only = s.get("allow_only", False, types=(bool,))
    if not block and not allow_only:
        raise ConfigError(f"{where}: schedule {name!r} needs 'block_categories' or 'allow_only: true'")
    s.done()
    return Schedule(name, days, start, end, block, allow_only, source=where)


def parse_policy(raw: Any, gid: str, path: str) -> Policy:
    """Build a Policy from a loaded YAML mapping; errors name file:line."""
    sec = Section(raw, f"policy {gid}", f"{path}:1")
    p = Policy(id=gid, name=sec.get("name", gid, types=(str,)), file=path)
    p.names = _localized_names(sec, gid)
    p.description = sec.get("description", "", types=(str,))
    p.tone = sec.get("tone", "teen", choices=TONES)
    p.block_categories = frozenset(str(c) for c in sec.get("block_categories", [], types=(list,)))
    allow = _names(sec, "allow")
    p.allow = {n: sub for n, (sub, _l) in allow.items()}
    p.allow_lines = {n: line for n, (_s, line) in allow.items()}
    p.block = _names(sec, "block")
    p.safesearch = sec.get("safesearch", "strict", choices=SAFESEARCH_LEVELS)
    p.youtube = sec.get("youtube", p.safesearch, choices=SAFESEARCH_LEVELS)
    p.block_mode = sec.get("block_mode", "blockpage", choices=BLOCK_MODES)
    p.bypass_defences = sec.get("bypass_defences", True, types=(bool,))
    p.passthrough = [normalize_host(str(x)) for x in sec.get("passthrough", [], types=(list,))]
    _ip_literals(sec, p)
    scheds = sec.get("schedules", [], types=(list,))
    for i, item in enumerate(scheds):
        p.schedules.append(_schedule(item, i, scheds.where(i) if hasattr(scheds, "where") else f"{path}:?"))
    sec.done()
    p.sources = {str(k): sec.where(str(k)) for k in sec.data}
    return p
