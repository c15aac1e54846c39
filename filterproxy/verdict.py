"""The one answer every data path gets from the policy engine.

A :class:`Verdict` is frozen and never ambiguous: an action, the reason for it, and the evidence
(group, category, list id, rule, source file:line).  DNS carries ``short_id`` as EDE text, the block
page shows it, ``filterproxy explain`` prints everything.
"""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass


class Action(str, enum.Enum):
    """What the data path must do."""

    ALLOW = "allow"
    BLOCK = "block"
    REWRITE = "rewrite"  # SafeSearch: answer with / redirect to the engine's safe host


class Reason(str, enum.Enum):
    """Why; in precedence order (the first that applies wins)."""

    LEGAL = "legal"  # national/legal list (CSAM, illegal content): every group, no allowlist overrides
    OVERRIDE = "override"  # a live allow/block rule set through the control API (filterproxy.state)
    ALLOWLIST = "allowlist"  # group's allowlist
    PAUSE = "pause"  # a live pause of the client or its group: everything not allowed above is blocked
    SCHEDULE = "schedule"  # a schedule window blocks this (e.g. social during school hours)
    CATEGORY = "category"  # a list of a category the group blocks
    BLOCKLIST = "blocklist"  # the group's own block additions
    BYPASS = "bypass"  # built-in bypass defences (DoH canary, Private Relay, DDR)
    IP_LITERAL = "ip-literal"  # the proxy was asked for an IP address, not a name (block_ip_literals)
    SAFESEARCH = "safesearch"  # search engine rewritten to its safe variant
    DEFAULT = "default"  # nothing matched
    UNKNOWN_CLIENT = "unknown-client"  # client outside every configured network
    ERROR = "error"  # internal error: fail closed


@dataclass(frozen=True, slots=True)
class FullHashCheck:
    """A URL-hash list matched only on a 4-byte prefix: the full hash must be confirmed by the list's
    endpoint (:mod:`filterproxy.http.fullhash`) before it counts. Carries no URL, only hashes."""

    list_id: str
    endpoint: str  # the list's ``fullhash_url``
    fail_closed: bool  # endpoint unreachable → treat as confirmed (legal lists by default)
    digest: bytes  # SHA-256 of the matched expression; only its first 4 bytes are ever sent

    @property
    def prefix(self) -> bytes:
        return self.digest[:4]


@dataclass(frozen=True, slots=True)
class Verdict:
    """The engine's decision for one request, with the evidence for it."""

    action: Action
    reason: Reason
    group: str
    category: str | None = None
    list_id: str | None = None
    rule: str | None = None
    source: str | None = None  # "file:line" of the rule, when it came from a file
    rewrite: str | None = None  # SafeSearch target host (action == REWRITE)
    schedule: str | None = None  # name of the schedule window that applied
    legal: bool = False  # mandated by law (DNS: EDE 16 Censored; HTTP: 451)
    hashed: bool = False  # rule from a hashed list: never show its text to users
    # URL-hash prefix hits that could change this verdict: confirm them, then decide again with ``confirmed``
    pending: tuple[FullHashCheck, ...] = ()

    @property
    def blocked(self) -> bool:
        return self.action is Action.BLOCK

    @property
    def short_id(self) -> str:
        """A short reason id for users (block page, DNS EDE text): never the rule itself."""
        parts = [self.reason.value]
        if self.category:
            parts.append(self.category)
        if self.list_id and not self.hashed:
            parts.append(self.list_id)
        return "/".join(parts)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["action"] = self.action.value
        d["reason"] = self.reason.value
        d["short_id"] = self.short_id
        d["pending"] = [{"list": c.list_id, "prefix": c.prefix.hex()} for c in self.pending]
        return d
