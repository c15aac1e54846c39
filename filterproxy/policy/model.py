"""Age-group policy: blocked categories, allow/block additions, SafeSearch, schedules, bypass defences."""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field
from typing import Any

from filterproxy.names import NameError_, normalize_host
from filterproxy.vocabulary import KNOWN_CATEGORIES, LANGUAGES


DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_DAY_SETS = {"weekdays": DAYS[:5], "weekend": DAYS[5:], "all": DAYS, "daily": DAYS}
SAFESEARCH_LEVELS = ("off", "moderate", "strict")
BLOCK_MODES = ("blockpage", "nxdomain", "null")
TONES = ("child", "teen", "adult")


@dataclass(frozen=True)
class Schedule:
    """A weekly time window. ``block`` categories are blocked inside it; ``allow_only`` blocks everything
    but the allowlist (e.g. bedtime for young children). A window whose end is before its start runs
    past midnight (its days are the days it starts)."""

    name: str
    days: frozenset[int]  # 0 = Monday
    start: int  # minutes after midnight
    end: int
    block: frozenset[str] = frozenset()
    allow_only: bool = False

    def active(self, at: dt.datetime) -> bool:
        minute = at.hour * 60 + at.minute
        day = at.weekday()
        if self.start < self.end:
            return day in self.days and self.start <= minute < self.end
        if self.start == self.end:
            return day in self.days
        # overnight: in the evening part of a listed day, or the morning after a listed day
        return (day in self.days and minute >= self.start) or ((day - 1) % 7 in self.days and minute < self.end)


@dataclass
class Policy:
    """One age group's policy, loaded from ``policies/<id>.yaml``."""

    id: str
    name: str  # the default display name; ``names`` overrides it per block-page language
    tone: str = "teen"
    block_categories: frozenset[str] = frozenset()
    allow: dict[str, bool] = field(default_factory=dict)  # name → include subdomains
    block: dict[str, tuple[bool, int]] = field(default_factory=dict)  # name → (include subdomains, line)
    safesearch: str = "strict"
    youtube: str = "strict"
    block_mode: str = "blockpage"
    bypass_defences: bool = True
    schedules: list[Schedule] = field(default_factory=list)
    passthrough: list[str] = field(default_factory=list)
    file: str = ""
    allow_lines: dict[str, int] = field(default_factory=dict)
    description: str = ""
    names: dict[str, str] = field(default_factory=dict)  # language ("vi", "en") → localized display name

    def check_categories(self, list_categories: set[str]) -> None:
        """Categories must be known ids or provided by a configured list (typos must not pass)."""
        from filterproxy.config import ConfigError

        for cat in self.block_categories | {c for s in self.schedules for c in s.block}:
            if cat not in KNOWN_CATEGORIES and cat not in list_categories:
                raise ConfigError(f"{self.file}: policy {self.id!r} names unknown category {cat!r} "
                                  f"(known: {', '.join(sorted(KNOWN_CATEGORIES | list_categories))})")


def _names(sec: Any, key: str, where: str, ConfigError: type) -> dict[str, tuple[bool, int]]:
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
            out[normalize_host(s)] = (not exact, line)
        except NameError_ as exc:
            raise ConfigError(f"{sec.data.file}:{line}: {key}: {exc} (expected a domain name)") from None
    return out


def _localized_names(sec: Any, gid: str, ConfigError: type) -> dict[str, str]:
    """``names: {vi: ..., en: ...}``: keys are block-page languages, values non-empty strings."""
    raw = sec.get("names", {}, types=(dict,))
    where = raw.where if hasattr(raw, "where") else (lambda _k=None: sec.where("names"))
    out: dict[str, str] = {}
    for lang, text in raw.items():
        if lang not in LANGUAGES:
            raise ConfigError(f"{where(lang)}: 'policy {gid}.names' has unknown language {lang!r} "
                              f"(expected keys: {', '.join(LANGUAGES)})")
        if not isinstance(text, str) or not text.strip():
            raise ConfigError(f"{where(lang)}: 'policy {gid}.names.{lang}' must be a non-empty string, got {text!r}")
        out[lang] = text.strip()
    return out


def _time(text: Any, where: str, ConfigError: type) -> int:
    m = re.fullmatch(r"(\d{1,2}):(\d{2})", str(text).strip())
    if not m or int(m.group(1)) > 24 or int(m.group(2)) > 59:
        raise ConfigError(f"{where}: expected a time like 07:30, got {text!r}")
    return min(int(m.group(1)) * 60 + int(m.group(2)), 24 * 60)


def parse_policy(raw: Any, gid: str, path: str, Section: type, ConfigError: type) -> Policy:
    """Build a Policy from a loaded YAML mapping; errors name file:line."""
    sec = Section(raw, f"policy {gid}", f"{path}:1")
    p = Policy(id=gid, name=sec.get("name", gid, types=(str,)), file=path)
    p.names = _localized_names(sec, gid, ConfigError)
    p.description = sec.get("description", "", types=(str,))
    p.tone = sec.get("tone", "teen", choices=TONES)
    cats = sec.get("block_categories", [], types=(list,))
    p.block_categories = frozenset(str(c) for c in cats)
    allow = _names(sec, "allow", path, ConfigError)
    p.allow = {n: sub for n, (sub, _l) in allow.items()}
    p.allow_lines = {n: line for n, (_s, line) in allow.items()}
    p.block = _names(sec, "block", path, ConfigError)
    p.safesearch = sec.get("safesearch", "strict", choices=SAFESEARCH_LEVELS)
    p.youtube = sec.get("youtube", p.safesearch, choices=SAFESEARCH_LEVELS)
    p.block_mode = sec.get("block_mode", "blockpage", choices=BLOCK_MODES)
    p.bypass_defences = sec.get("bypass_defences", True, types=(bool,))
    p.passthrough = [normalize_host(str(x)) for x in sec.get("passthrough", [], types=(list,))]
    scheds = sec.get("schedules", [], types=(list,))
    for i, item in enumerate(scheds):
        where = scheds.where(i) if hasattr(scheds, "where") else f"{path}:?"
        s = Section(item, f"schedules[{i}]", where)
        name = s.get("name", f"schedule-{i + 1}", types=(str,))
        days_raw = s.get("days", "all", types=(str, list))
        days: set[int] = set()
        for d in ([days_raw] if isinstance(days_raw, str) else days_raw):
            d = str(d).lower()[:3] if str(d).lower() not in _DAY_SETS else str(d).lower()
            if d in _DAY_SETS:
                days |= {DAYS.index(x) for x in _DAY_SETS[d]}
            elif d in DAYS:
                days.add(DAYS.index(d))
            else:
                raise ConfigError(f"{s.where('days')}: unknown day {d!r} (expected mon..sun, weekdays, weekend, all)")
        start = _time(s.get("from", "00:00"), s.where("from"), ConfigError)
        end = _time(s.get("to", "24:00"), s.where("to"), ConfigError)
        block = frozenset(str(c) for c in s.get("block_categories", [], types=(list,)))
        allow_only = s.get("allow_only", False, types=(bool,))
        if not block and not allow_only:
            raise ConfigError(f"{where}: schedule {name!r} needs 'block_categories' or 'allow_only: true'")
        s.done()
        p.schedules.append(Schedule(name, frozenset(days), start, end, block, allow_only))
    sec.done()
    return p
