"""Age-group policy as plain data: blocked categories, allow/block additions, SafeSearch, schedules, bypass
defences, IP literals. Parsing a policy file into these objects is :mod:`filterproxy.config.policy`."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from filterproxy.vocabulary import KNOWN_CATEGORIES, LANGUAGES  # noqa: F401  (re-exported for callers)

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
SAFESEARCH_LEVELS = ("off", "moderate", "strict")
BLOCK_MODES = ("blockpage", "nxdomain", "null")
TONES = ("child", "teen", "adult")
# Addresses a group may still open by IP literal when ``block_ip_literals`` is on (the school intranet, the
# home router, this machine): RFC 1918, loopback, link-local, IPv6 loopback, unique-local and link-local.
IP_LITERAL_EXEMPT = (
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "::1/128",
    "fc00::/7",
    "fe80::/10",
)


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
    source: str = field(default="", compare=False)  # file:line of the schedule's item in the policy file

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
    block_ip_literals: bool | None = None  # as written; None: by tone (see ip_literals_blocked)
    ip_literal_exempt: tuple[str, ...] = IP_LITERAL_EXEMPT  # CIDRs, canonical text
    ip_literals_source: str = ""  # file:line that decides it: block_ip_literals, else tone
    sources: dict[str, str] = field(default_factory=dict)  # top-level key → file:line (read-only views show it)

    @property
    def ip_literals_blocked(self) -> bool:
        """Are hosts that are IP literals (``http://203.0.113.7/``) blocked? By default for minors' tones."""
        return self.tone != "adult" if self.block_ip_literals is None else self.block_ip_literals
