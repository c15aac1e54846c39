"""Export a group's effective block policy as a Response Policy Zone (RFC-draft RPZ, as read by BIND,
Unbound, PowerDNS Recursor and Knot Resolver), so an ISP or provincial resolver enforces the same
national list and age-group policy at scale without running filterproxy.

What RPZ can express is exported: every domain rule of the legal lists and of the categories the group
always blocks, the group's own block additions and bypass canaries (``CNAME .`` → NXDOMAIN; ``*.name``
for subdomains), and the allowlist as ``rpz-passthru.`` entries (left out where a legal rule covers the
name: no allowlist overrides the legal list). What it cannot express is listed in the zone's header:
schedules (time windows), regex rules, URL and hash rules (HTTP only), SafeSearch rewrites.

Resolvers take the zone by transfer (AXFR/IXFR, deploy/isp-rpz.md), so the SOA serial follows the
content, not the clock: :func:`write_rpz_file` keeps the serial of the zone already at the path when
nothing else changed (secondaries do not transfer) and otherwise moves to the next date-based
``YYYYMMDDnn`` serial, compared in RFC 1982 serial arithmetic.
"""

from __future__ import annotations

import datetime
import io
import os
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, TextIO

from filterproxy.fsutil import atomic_writer
from filterproxy.lists.parsers import ALLOW, EXACT, SUBS
from filterproxy.policy import safesearch
from filterproxy.verdict import Action, Reason

if TYPE_CHECKING:
    from filterproxy.lists.snapshot import Snapshot
    from filterproxy.policy.engine import Engine
    from filterproxy.policy.model import Policy


_SERIAL_MOD = 1 << 32
_SERIAL_HALF = 1 << 31
# the SOA record of a zone file: ours ("@ SOA m r SERIAL ...") or one rewritten by a server ("name TTL IN SOA ...")
_SOA_SERIAL = re.compile(r"^(\S+(?:[ \t]+\d+)?(?:[ \t]+IN)?[ \t]+SOA[ \t]+\S+[ \t]+\S+[ \t]+)(\d+)", re.M)


class RpzSerialError(ValueError):
    """No serial that secondaries would take as newer: an explicit serial too low, or a non-zone at the path."""


@dataclass(frozen=True)
class RpzFile:
    """The outcome of :func:`write_rpz_file`: the zone's serial, whether the file changed, the counts."""

    serial: int
    changed: bool
    counts: dict[str, int]


def serial_gt(a: int, b: int) -> bool:
    """RFC 1982 §3.2: is serial ``a`` newer than ``b``? (Undefined, and False, when they are 2^31 apart.)"""
    return (a < b and b - a > _SERIAL_HALF) or (a > b and a - b < _SERIAL_HALF)


def date_serial(day: datetime.date) -> int:
    """The first serial of ``day`` in the ``YYYYMMDDnn`` convention operators expect."""
    return day.year * 1_000_000 + day.month * 10_000 + day.day * 100


def next_serial(prev: int | None, day: datetime.date) -> int:
    """The serial for a changed zone: ``day``'s ``YYYYMMDD00`` when that is newer than ``prev``, else
    ``prev + 1`` (modulo 2^32: the 100th change of a day borrows from the next day, and a serial at
    2^32 - 1 wraps to 0, which RFC 1982 still counts as newer)."""
    base = date_serial(day)
    if prev is None or serial_gt(base, prev):
        return base
    return (prev + 1) % _SERIAL_MOD


def write_rpz_file(
    engine: Engine,
    group: str,
    path: str,
    *,
    ttl: int = 300,
    serial: int | None = None,
    today: datetime.date | None = None,
) -> RpzFile:
    """Export ``group``'s zone to ``path`` atomically (a reader never sees a torn zone).

    The zone already at ``path`` is the serial state: with the same content (serial aside) the file
    is left as it is and keeps its serial; changed content gets :func:`next_serial` of the old one,
    or ``serial`` when given (e.g. a list version), which must then be newer than the old serial.
    ``today`` (UTC by default) only picks the ``YYYYMMDD`` part; it is a parameter for tests.
    """
    body = io.StringIO()
    counts = _write_zone_body(engine, group, body)
    rest = body.getvalue()
    prev_serial, prev_text = _read_previous(path)
    same = prev_text is not None and prev_text == _zone_text(0, ttl, rest)
    if serial is not None:
        if serial != prev_serial and prev_serial is not None and not serial_gt(serial, prev_serial):
            raise RpzSerialError(
                f"--serial {serial} is not newer (RFC 1982) than {prev_serial} in {path}: secondaries would keep "
                "the old zone (remove the file to start over)"
            )
        if serial == prev_serial and not same:
            raise RpzSerialError(f"--serial {serial} is already in {path} with other content")
    elif same and prev_serial is not None:
        serial = prev_serial
    else:
        serial = next_serial(prev_serial, today or datetime.datetime.now(datetime.UTC).date())
    if same and serial == prev_serial:
        return RpzFile(serial, False, counts)
    mode = os.stat(path).st_mode & 0o777 if prev_text is not None else 0o644  # the DNS server reads it
    with atomic_writer(path, "w", perms=mode, encoding="utf-8") as f:
        f.write(_zone_text(serial, ttl, rest))
    return RpzFile(serial, True, counts)


def export_rpz(engine: Engine, group: str, out: TextIO, *, ttl: int = 300, serial: int | None = None) -> dict[str, int]:
    """Write the zone for ``group`` to ``out``; returns counts for logging and tests. Without ``serial``
    (and without a previous zone to compare with) the serial is today's ``YYYYMMDD00`` (UTC)."""
    body = io.StringIO()
    counts = _write_zone_body(engine, group, body)
    if serial is None:
        serial = date_serial(datetime.datetime.now(datetime.UTC).date())
    out.write(_zone_text(serial, ttl, body.getvalue()))
    return counts


def _zone_text(serial: int, ttl: int, rest: str) -> str:
    """$TTL and the SOA record, then the rest of the zone. Expire is 14 days, so a resolver that cannot
    reach the primary keeps enforcing the list through a long outage before it drops the zone."""
    return f"$TTL {ttl}\n@ SOA localhost. root.localhost. {serial} 3600 600 1209600 {ttl}\n{rest}"


def _read_previous(path: str) -> tuple[int | None, str | None]:
    """The serial of the zone file at ``path`` and its text with that serial set to 0 (None, None when
    there is no file). A file without a SOA record is refused rather than overwritten."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        return None, None
    m = _SOA_SERIAL.search(text)
    if not m:
        raise RpzSerialError(f"{path} exists but has no SOA serial: not a zone file (remove it or use another --out)")
    return int(m.group(2)) % _SERIAL_MOD, text[: m.start(2)] + "0" + text[m.end(2) :]


def _write_zone_body(engine: Engine, group: str, out: TextIO) -> dict[str, int]:
    """Everything after the SOA record: NS, comments, triggers; returns the counts."""
    snap = engine.snapshot
    pol = engine.policy(group)
    legal = {li.index for li in snap.lists if li.source.is_legal}
    active = legal | {li.index for li in snap.lists if li.category in pol.block_categories and not li.source.allow}
    block, legal_names, allow = _list_rules(engine, snap, group, active, legal)
    _add_policy_rules(pol, block, allow)
    skipped_regex = sum(len(v) for i, v in snap.regexes.items() if i in active)
    _write_header(out, group, pol, snap, active, skipped_regex)
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


def _write_header(out: TextIO, group: str, pol: Policy, snap: Snapshot, active: set[int], skipped_regex: int) -> None:
    """The NS record, then comments: the group, its lists and what RPZ cannot express."""
    out.write("  NS localhost.\n")
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
