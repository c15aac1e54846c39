"""Export a group's effective block policy as a Response Policy Zone (RFC-draft RPZ, as read by BIND,
Unbound, PowerDNS Recursor and Knot Resolver), so an ISP or provincial resolver enforces the same
national list and age-group policy at scale without running filterproxy.

What RPZ can express is exported: every domain rule of the legal lists and of the categories the group
always blocks, the group's own block additions and bypass canaries (``CNAME .`` → NXDOMAIN; ``*.name``
for subdomains), and the allowlist as ``rpz-passthru.`` entries (left out where a legal rule covers the
name: no allowlist overrides the legal list). What it cannot express is listed in the zone's header:
schedules (time windows), regex rules, URL and hash rules (HTTP only), SafeSearch rewrites.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, TextIO

from filterproxy.lists.parsers import ALLOW, EXACT, SUBS
from filterproxy.policy import safesearch
from filterproxy.verdict import Action, Reason

if TYPE_CHECKING:
    from filterproxy.lists.snapshot import Snapshot
    from filterproxy.policy.engine import Engine
    from filterproxy.policy.model import Policy


def export_rpz(engine: Engine, group: str, out: TextIO, *, ttl: int = 300) -> dict[str, int]:
    """Write the zone for ``group`` to ``out``; returns counts for logging and tests."""
    snap = engine.snapshot
    pol = engine.policy(group)
    legal = {li.index for li in snap.lists if li.source.is_legal}
    active = legal | {li.index for li in snap.lists if li.category in pol.block_categories and not li.source.allow}
    block, legal_names, allow = _list_rules(engine, snap, group, active, legal)
    _add_policy_rules(pol, block, allow)
    skipped_regex = sum(len(v) for i, v in snap.regexes.items() if i in active)
    _write_header(out, group, pol, snap, active, skipped_regex, ttl)
    n_pass = 0
    for name in sorted(allow):
        # no allowlist overrides the legal list: leave out passthru where a legal rule applies
        if engine.decide(None, name, group=group).reason is Reason.LEGAL:
            continue
        _write_triggers(out, name, allow[name], "rpz-passthru.")
        n_pass += 1
    n_block = 0
    for name in sorted(block):
        if name not in legal_names and _allowed(allow, name):
            continue  # RPZ would prefer this more specific block over the allowlisted parent
        _write_triggers(out, name, block[name], ".")
        n_block += 1
    return {"block": n_block, "passthru": n_pass, "regex_skipped": skipped_regex}


def _list_rules(
    engine: Engine, snap: Snapshot, group: str, active: set[int], legal: set[int]
) -> tuple[dict[str, int], set[str], dict[str, int]]:
    """The domain rules of the lists that apply to ``group``: (name → block flags, names a legal list
    blocks, name → allow EXACT/SUBS coverage). An exception inside a block list counts only where the
    engine does not block the name anyway."""
    block: dict[str, int] = {}
    legal_names: set[str] = set()
    allow: dict[str, int] = {}  # name → EXACT/SUBS coverage
    for name, li, _line, flags in snap.domains.records():
        is_allow_source = snap.lists[li].source.allow
        if li not in active and not is_allow_source:
            continue
        if flags & ALLOW or is_allow_source:
            if is_allow_source or engine.decide(None, name, group=group).action is not Action.BLOCK:
                allow[name] = allow.get(name, 0) | (flags & (EXACT | SUBS))
        else:
            block[name] = block.get(name, 0) | flags
            if li in legal:
                legal_names.add(name)
    return block, legal_names, allow


def _add_policy_rules(pol: Policy, block: dict[str, int], allow: dict[str, int]) -> None:
    """Add the group's own block additions, the bypass canaries and the group's allowlist."""
    for name, (sub, _line) in pol.block.items():
        block[name] = block.get(name, 0) | EXACT | (SUBS if sub else 0)
    if pol.bypass_defences:
        for name in safesearch.BYPASS_CANARIES:
            block[name] = block.get(name, 0) | EXACT
    for name, sub in pol.allow.items():
        allow[name] = allow.get(name, 0) | EXACT | (SUBS if sub else 0)


def _allowed(allow: dict[str, int], name: str) -> bool:
    """Does the allowlist cover ``name`` (itself, or a parent allowlisted with subdomains)?"""
    if allow.get(name, 0) & EXACT:
        return True
    i = name.find(".")
    while i >= 0:
        if allow.get(name[i + 1 :], 0) & SUBS:
            return True
        i = name.find(".", i + 1)
    return False


def _write_header(
    out: TextIO, group: str, pol: Policy, snap: Snapshot, active: set[int], skipped_regex: int, ttl: int
) -> None:
    """SOA and NS records, then comments: the group, its lists and what RPZ cannot express."""
    serial = int(time.time())
    out.write(f"$TTL {ttl}\n@ SOA localhost. root.localhost. {serial} 3600 600 86400 {ttl}\n  NS localhost.\n")
    out.write(f"; filterproxy RPZ export for group {group!r} ({pol.name})\n")
    out.write(f"; lists: {', '.join(snap.lists[i].id for i in sorted(active))}\n")
    out.write(
        "; not expressible in RPZ and left out: schedules"
        f" ({', '.join(s.name for s in pol.schedules) or 'none'}), {skipped_regex} regex rules,"
        " URL/URL-hash/image rules (HTTP proxy only), SafeSearch rewrites\n"
    )


def _write_triggers(out: TextIO, name: str, flags: int, target: str) -> None:
    """``name CNAME target`` for the name itself (EXACT), ``*.name CNAME target`` for its subdomains (SUBS)."""
    if flags & EXACT:
        out.write(f"{name} CNAME {target}\n")
    if flags & SUBS:
        out.write(f"*.{name} CNAME {target}\n")
