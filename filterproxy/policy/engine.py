"""The decision engine: the ONLY place lists, groups and schedules combine.

``Engine.decide(client, host, url=None, at=None) -> Verdict`` serves the DNS and the HTTP paths alike.
Precedence, first that applies wins (tested in tests/test_engine.py):

1. **legal**     a national/legal list matches (domain, URL, URL hash): blocked for every group,
                 no allowlist overrides it
2. **override**  a live allow or block rule of the group for the name or a parent (control API,
                 :mod:`filterproxy.policy.live`)
3. **allowlist** the group's ``allow`` names, or an allow source (e.g. a school whitelist)
   **pause**     a live pause of the client or its group blocks everything the steps above did not allow
4. **schedule**  an active schedule window blocks the name's category (or everything, ``allow_only``)
5. **category**  a list of a category the group blocks (minus that category's ``@@`` exceptions),
                 then the group's own ``block`` additions, then the built-in bypass canaries
6. **ip-literal** the host is an IP address the client named (``http://203.0.113.7/``, CONNECT, no SNI) and
                 the group has ``block_ip_literals``, outside its ``ip_literal_exempt`` networks (private,
                 loopback, link-local by default). Not for the resolver: its addresses come from answers.
7. **safesearch** a search host is rewritten to its safe variant
8. **default**   allow
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import ipaddress
import linecache
import logging
import os
import threading
import zoneinfo
from collections.abc import Callable, Container
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple, TypeVar

from filterproxy.clients import Client, ClientMap
from filterproxy.lists.parsers import ALLOW
from filterproxy.lists.snapshot import unpack
from filterproxy.names import canonical_host, is_ip, self_and_parents
from filterproxy.policy import safesearch
from filterproxy.policy.live import EMPTY as _NO_LIVE
from filterproxy.policy.live import LiveTables
from filterproxy.policy.model import Policy
from filterproxy.verdict import Action, FullHashCheck, Reason, Verdict

if TYPE_CHECKING:
    from filterproxy.config import Config
    from filterproxy.lists.snapshot import ListInfo, Snapshot
    from filterproxy.state.model import LiveRules

log = logging.getLogger("filterproxy.policy")

# One piece of evidence: (list index, line, flags, rule text, hashed).
_Match = tuple[int, int, int, str, bool]
_V = TypeVar("_V")


def _covering(names: dict[str, _V], host: str, with_subdomains: Callable[[_V], bool]) -> str | None:
    """The entry of ``names`` that covers ``host``: the host itself, or a parent whose value says
    (``with_subdomains(value)``) that it covers subdomains. A policy's own lists are small dicts."""
    if not names:
        return None
    for depth, name in enumerate(self_and_parents(host)):
        value = names.get(name)
        if value is not None and (depth == 0 or with_subdomains(value)):
            return name
    return None


def _allow_covers_subdomains(sub: bool) -> bool:
    """A policy ``allow`` value: does the name cover its subdomains?"""
    return sub


def _block_covers_subdomains(hit: tuple[bool, int]) -> bool:
    """A policy ``block`` value (include subdomains, line): does the name cover its subdomains?"""
    return hit[0]


def _group_of(clients: ClientMap, client: Client | str | None) -> str | None:
    """The group of ``client`` in ``clients`` (the default group for None)."""
    if client is None:
        return clients.default_group
    if isinstance(client, str):
        client = Client.parse(client)
    return clients.group_for(client)[0]


_Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _exempt(networks: tuple[_Network, ...], host: str) -> bool:
    """Is the IP literal ``host`` inside one of ``networks`` (the group's ``ip_literal_exempt``)?"""
    addr = ipaddress.ip_address(host)
    return any(addr in net for net in networks)


def _ip_literal_verdict(pol: Policy) -> Verdict | None:
    """The group's block verdict for IP literals (one shared object), or None when it allows them."""
    if not pol.ip_literals_blocked:
        return None
    return Verdict(
        Action.BLOCK,
        Reason.IP_LITERAL,
        pol.id,
        list_id=f"policy:{pol.id}",
        rule="block_ip_literals: true" if pol.block_ip_literals else f"block_ip_literals (default for tone {pol.tone})",
        source=pol.ip_literals_source or None,
    )


@dataclass(frozen=True)
class _GroupTables:
    """Per-group list indices, precomputed at every snapshot swap (never in the hot path)."""

    policy: Policy
    block_lists: frozenset[int]  # lists whose category the group always blocks
    regex_lists: tuple[int, ...]  # lists with regexes that can matter for this group
    default: Verdict  # "nothing matched": one shared object (verdicts are frozen)
    ip_literal: Verdict | None = None  # the block for a host that is an IP literal (None: allowed)
    ip_exempt: tuple[_Network, ...] = ()  # networks the group may still open by address
    hash_lists: frozenset[int] = frozenset()  # lists whose URL-hash prefix hits can change this group's verdict


class _Loaded(NamedTuple):
    """What one decision reads, swapped as ONE reference (CONTRIBUTING.md rule 4): a reload that changes
    the configuration and the lists never lets a decision see the new groups with the old tables."""

    snapshot: Snapshot
    tables: dict[str, _GroupTables]
    legal: frozenset[int]
    allow_src: frozenset[int]
    config: Config
    clients: ClientMap  # the configuration's rules, joined by the live devices
    tz: zoneinfo.ZoneInfo
    live: LiveTables  # overrides and pauses (filterproxy.policy.live)
    base_clients: ClientMap  # the configuration's rules alone


class _HashHits:
    """URL-hash prefix hits during one decision: counted when ``confirmed`` holds ``(list id, digest)``;
    without ``confirmed``, gathered in ``pending`` (when it is a list) for the caller to confirm."""

    __slots__ = ("confirmed", "pending")

    def __init__(self, confirmed: Container[tuple[str, bytes]] | None, pending: list[FullHashCheck] | None):
        self.confirmed = confirmed
        self.pending = pending

    def counts(self, info: ListInfo, t: _GroupTables, digest: bytes) -> bool:
        """Is this prefix hit evidence? Only when confirmed; else it is remembered if it matters to the group."""
        if self.confirmed is not None:
            return (info.id, digest) in self.confirmed
        if self.pending is not None and info.index in t.hash_lists:
            src = info.source
            self.pending.append(FullHashCheck(info.id, src.fullhash_url or "", src.fullhash_fails_closed, digest))
        return False


class Engine:
    """Decides for one configuration and one list snapshot; :meth:`swap` replaces either, or both, atomically."""

    def __init__(self, config: Config, snapshot: Snapshot, clients: ClientMap | None = None):
        self._lock = threading.Lock()
        self._state: _Loaded
        self._rules: LiveRules | None = None
        self.swap(snapshot, config, clients)

    # ------------------------------------------------------------------ snapshot
    def swap(self, snapshot: Snapshot, config: Config | None = None, clients: ClientMap | None = None) -> None:
        """Install a new snapshot, and with ``config`` a new configuration (groups, client rules, time zone;
        ``clients`` a client map already built for it). Tables are built first, then one reference is replaced."""
        if config is None:
            config, clients = self._state.config, clients or self._state.base_clients
        elif clients is None:
            clients = ClientMap(config.clients, config.default_group)
        tz = zoneinfo.ZoneInfo(config.timezone)
        legal = frozenset(li.index for li in snapshot.lists if li.source.is_legal)
        allow_src = frozenset(li.index for li in snapshot.lists if li.source.allow)
        groups: dict[str, _GroupTables] = {}
        for gid, pol in config.groups.items():
            cats = pol.block_categories | {c for s in pol.schedules for c in s.block}
            blk = frozenset(
                li.index for li in snapshot.lists if li.category in pol.block_categories and not li.source.allow
            )
            rx = tuple(
                i for i in snapshot.regexes if i in legal or i in allow_src or snapshot.lists[i].category in cats
            )
            exempt = tuple(ipaddress.ip_network(n) for n in pol.ip_literal_exempt)
            default = Verdict(Action.ALLOW, Reason.DEFAULT, gid)
            hl = legal | allow_src | {li.index for li in snapshot.lists if li.category in cats}
            groups[gid] = _GroupTables(pol, blk, rx, default, _ip_literal_verdict(pol), exempt, frozenset(hl))
        with self._lock:
            live = LiveTables.build(self._rules, tz) if self._rules is not None else _NO_LIVE
            joined = clients.with_rules(live.device_rules) if live.device_rules else clients
            self._state = _Loaded(snapshot, groups, legal, allow_src, config, joined, tz, live, clients)

    def set_live(self, rules: LiveRules) -> None:
        """Install the control API's live rules (overrides, pauses, devices): compiled here, then one
        reference is replaced; the configuration and the lists stay."""
        with self._lock:
            st = self._state
            live = LiveTables.build(rules, st.tz)
            joined = st.base_clients.with_rules(live.device_rules) if live.device_rules else st.base_clients
            self._rules = rules
            self._state = st._replace(clients=joined, live=live)

    @property
    def live(self) -> LiveTables:
        return self._state.live

    @property
    def snapshot(self) -> Snapshot:
        return self._state.snapshot

    @property
    def config(self) -> Config:
        return self._state.config

    @property
    def clients(self) -> ClientMap:
        return self._state.clients

    @property
    def tz(self) -> zoneinfo.ZoneInfo:
        return self._state.tz

    # ------------------------------------------------------------------ clients
    def group_for(self, client: Client | str | None) -> str | None:
        return _group_of(self.clients, client)

    def policy(self, group: str) -> Policy:
        return self.config.groups[group]

    def now(self) -> dt.datetime:
        return dt.datetime.now(self.tz)

    def localtime(self, at: dt.datetime | None) -> dt.datetime:
        if at is None:
            return self.now()
        if at.tzinfo is None:
            return at.replace(tzinfo=self.tz)
        return at.astimezone(self.tz)

    # ------------------------------------------------------------------ decide
    def decide(
        self,
        client: Client | str | None,
        host: str,
        url: str | None = None,
        at: dt.datetime | None = None,
        *,
        group: str | None = None,
        explain: bool = False,
        canonical: bool = False,
        ip_literals: bool = True,
        confirmed: Container[tuple[str, bytes]] | None = None,
    ) -> Verdict:
        """The verdict for ``client`` asking for ``host`` (and ``url`` on the HTTP path) at time ``at``.

        ``host`` should be canonical (the data paths normalise at the edge); anything else is normalised
        here, unless ``canonical`` says it already is (the DNS path's names come out of
        ``wire.policy_name``, which admits only what normalisation returns unchanged; ~1.4 µs a name).
        ``group`` skips the client look-up. ``explain`` fills the rule text from the source file.
        ``ip_literals=False`` when ``host`` is an address the client did not name (a DNS answer's, the
        destination of a transparent connection): IP lists apply to it, ``block_ip_literals`` does not.

        A URL-hash entry that matched only on its 4-byte prefix is no evidence by itself. Without
        ``confirmed``, such hits that could change the verdict come back in ``Verdict.pending`` (the verdict
        itself ignores them); the caller asks the lists' endpoints and decides again with ``confirmed``, the
        ``(list id, full digest)`` pairs the endpoints confirmed (docs/fullhash.md).
        """
        hashes = None if url is None else _HashHits(confirmed, [] if confirmed is None else None)
        try:
            v = self._decide(client, host, url, at, group, explain, canonical, ip_literals, hashes)
        except Exception:  # fail closed, on purpose (CONTRIBUTING.md rule 3)
            log.exception("decision failed for %r; blocking", host)
            return Verdict(Action.BLOCK, Reason.ERROR, group or "", category=None)
        if hashes is not None and hashes.pending and v.reason is not Reason.LEGAL:  # a legal block stays
            return dataclasses.replace(v, pending=tuple(hashes.pending))
        return v

    def _decide(
        self,
        client: Client | str | None,
        host: str,
        url: str | None,
        at: dt.datetime | None,
        group: str | None,
        explain: bool,
        canonical: bool = False,
        ip_literals: bool = True,
        hashes: _HashHits | None = None,
    ) -> Verdict:
        snap, tables, legal, allow_src, _config, clients, _tz, live, _base = self._state
        if group is None:
            group = _group_of(clients, client)
            if group is None:
                return Verdict(Action.BLOCK, Reason.UNKNOWN_CLIENT, "")
        t = tables.get(group)
        if t is None:
            raise KeyError(f"unknown group {group!r}")
        pol = t.policy
        if not canonical:
            host = canonical_host(host)  # an IP literal as browsers read it (0x7f.1 → 127.0.0.1)

        matches = self._evidence(snap, t, host, url, hashes)

        # 1. legal
        blocked = self._legal(snap, legal, matches, group, explain)
        if blocked is not None:
            return blocked

        # 2. live overrides of the group (allow or block)
        over = self._live_override(live, pol, host, group, at)
        if over is not None:
            return over

        # 3. allowlist (group names, then allow sources)
        allowed = self._allowed(snap, allow_src, pol, matches, host, group)
        if allowed is not None:
            return allowed

        # a live pause of the client or its group blocks everything else
        paused = live.pause(group, client, at)
        if paused is not None:
            return paused

        # category exceptions (@@ rules inside block lists) void blocks of their own category
        excepted = {snap.lists[m[0]].category for m in matches if m[2] & ALLOW} if matches else ()

        # 4. schedules
        if pol.schedules:
            blocked = self._scheduled(snap, pol, matches, excepted, allow_src, at, group, explain)
            if blocked is not None:
                return blocked

        # 5. categories, then the group's own block additions, then bypass canaries
        for m in matches:
            if m[0] in t.block_lists and not m[2] & ALLOW and snap.lists[m[0]].category not in excepted:
                return self._block_verdict(snap, group, Reason.CATEGORY, m, explain)
        blocked = self._own_block(pol, host, group)
        if blocked is not None:
            return blocked

        # 6. IP literals the client named, outside the group's exempt (private) networks
        if ip_literals and t.ip_literal is not None and is_ip(host) and not _exempt(t.ip_exempt, host):
            return t.ip_literal

        # 7. SafeSearch, 8. default
        return self._safesearch(pol, host, group) or t.default

    def _allowed(
        self, snap: Snapshot, allow_src: frozenset[int], pol: Policy, matches: list[_Match], host: str, group: str
    ) -> Verdict | None:
        """Step 3: the group's allow names, then allow sources; SafeSearch still applies to what they allow."""
        allowed = self._allowlisted(pol, host)
        if allowed is None and matches:
            allowed = self._allow_source(snap, allow_src, matches, group)
        if allowed is not None:
            return self._safesearch(pol, host, group) or allowed
        return None

    def _allow_source(
        self, snap: Snapshot, allow_src: frozenset[int], matches: list[_Match], group: str
    ) -> Verdict | None:
        """Step 2, after the group's own names: the first match from an allow source (or an allow rule in one)."""
        for m in matches:
            if m[0] in allow_src or (m[2] & ALLOW and snap.lists[m[0]].source.allow):
                info = snap.lists[m[0]]
                return Verdict(
                    Action.ALLOW,
                    Reason.ALLOWLIST,
                    group,
                    category=info.category,
                    list_id=info.id,
                    rule=m[3],
                    source=f"{self._file_for(info, m)}:{m[1]}",
                )
        return None

    def _scheduled(
        self,
        snap: Snapshot,
        pol: Policy,
        matches: list[_Match],
        excepted: Container[str],
        allow_src: frozenset[int],
        at: dt.datetime | None,
        group: str,
        explain: bool,
    ) -> Verdict | None:
        """Step 3: the first active window that blocks a matched category, or blocks everything (``allow_only``)."""
        local = self.localtime(at)
        for s in pol.schedules:
            if not s.active(local):
                continue
            for m in matches:
                cat = snap.lists[m[0]].category
                if cat in s.block and not m[2] & ALLOW and cat not in excepted and m[0] not in allow_src:
                    return self._block_verdict(snap, group, Reason.SCHEDULE, m, explain, schedule=s.name)
            if s.allow_only:
                return Verdict(
                    Action.BLOCK, Reason.SCHEDULE, group, category="schedule", schedule=s.name, rule="allow_only"
                )
        return None

    # ------------------------------------------------------------------ helpers
    def _legal(
        self, snap: Snapshot, legal: frozenset[int], matches: list[_Match], group: str, explain: bool
    ) -> Verdict | None:
        """Step 1: the first match from a legal list (no allowlist and no override opens it)."""
        for m in matches:
            if m[0] in legal and not m[2] & ALLOW:
                return self._block_verdict(snap, group, Reason.LEGAL, m, explain)
        return None

    def _live_override(
        self, live: LiveTables, pol: Policy, host: str, group: str, at: dt.datetime | None
    ) -> Verdict | None:
        """Step 2: the group's live override for ``host``; an allow still gets SafeSearch, like the allowlist."""
        if not live.overrides:
            return None
        over = live.override(group, host, at)
        if over is None or over.action is not Action.ALLOW:
            return over
        return self._safesearch(pol, host, group) or over

    def _evidence(
        self, snap: Snapshot, t: _GroupTables, host: str, url: str | None, hashes: _HashHits | None = None
    ) -> list[_Match]:
        """Every rule that matches, gathered once: domain rules, regexes, IP literal, URL rules.
        Each is (list index, line, flags, rule text, hashed)."""
        matches: list[_Match] = []
        if is_ip(host):
            for li, line in snap.ips.get(host, ()):  # every list naming the address, in list order
                matches.append((li, line, 0, host, False))
        else:
            for m in snap.domains.lookup(host):
                matches.append((m.list_idx, m.line, m.flags, m.name, False))
            for li in t.regex_lists:
                for rx, line, flags in snap.regexes[li]:
                    if rx.search(host):
                        matches.append((li, line, flags, rx.pattern, False))
        if url is not None:
            matches.extend(self._url_matches(snap, t, host, url, hashes or _HashHits(None, None)))
        return matches

    def _block_verdict(
        self, snap: Snapshot, group: str, reason: Reason, m: _Match, explain: bool, schedule: str | None = None
    ) -> Verdict:
        """A block verdict naming the list, rule and source line of match ``m``."""
        info = snap.lists[m[0]]
        src = info.source
        file = self._file_for(info, m)
        rule = m[3]
        if explain and file and not src.hashed:
            text = linecache.getline(file, m[1]).strip() if not file.endswith(".gz") else ""
            rule = text or rule
        return Verdict(
            Action.BLOCK,
            reason,
            group,
            category=info.category,
            list_id=info.id,
            rule=None if src.hashed else rule,
            source=f"{file}:{m[1]}" if file else None,
            legal=src.is_legal,
            hashed=src.hashed,
            schedule=schedule,
        )

    @staticmethod
    def _allowlisted(pol: Policy, host: str) -> Verdict | None:
        name = _covering(pol.allow, host, _allow_covers_subdomains)
        if name is None:
            return None
        return Verdict(
            Action.ALLOW,
            Reason.ALLOWLIST,
            pol.id,
            list_id=f"policy:{pol.id}",
            rule=name,
            source=f"{pol.file}:{pol.allow_lines.get(name, 0)}",
        )

    @staticmethod
    def _own_block(pol: Policy, host: str, group: str) -> Verdict | None:
        """Step 4, after the categories: the group's own ``block`` additions, then the bypass canaries."""
        name = _covering(pol.block, host, _block_covers_subdomains)
        if name is not None:
            return Verdict(
                Action.BLOCK,
                Reason.BLOCKLIST,
                group,
                category="custom",
                list_id=f"policy:{pol.id}",
                rule=name,
                source=f"{pol.file}:{pol.block[name][1]}",
            )
        if pol.bypass_defences and host in safesearch.BYPASS_CANARIES:
            return Verdict(
                Action.BLOCK,
                Reason.BYPASS,
                group,
                category="bypass",
                list_id="builtin:bypass",
                rule=f"{host} → {safesearch.BYPASS_CANARIES[host]}",
            )
        return None

    @staticmethod
    def _safesearch(pol: Policy, host: str, group: str) -> Verdict | None:
        t = safesearch.target(host, pol.safesearch, pol.youtube)
        if t is None:
            return None
        engine, target = t
        level = pol.youtube if engine == "youtube" else pol.safesearch
        return Verdict(
            Action.REWRITE,
            Reason.SAFESEARCH,
            group,
            category="search",
            list_id=f"safesearch:{engine}",
            rule=f"{host} → {target} ({level})",
            rewrite=target,
        )

    @staticmethod
    def _url_matches(snap: Snapshot, t: _GroupTables, host: str, url: str, hashes: _HashHits) -> list[_Match]:
        out: list[_Match] = []
        if snap.urls is not None:
            from urllib.parse import urlsplit

            parts = urlsplit(url if "://" in url else "http://" + url)
            path = parts.path or "/"
            if parts.query:
                path += "?" + parts.query
            for entry, rec in snap.urls.matches(host, path):  # every rule and list: a legal one is never hidden
                li, line = unpack(rec)
                out.append((li, line, 0, entry, False))
        if snap.urlhashes is not None:
            for expr, rec, digest, full in snap.urlhashes.hits(url):
                li, line = unpack(rec)
                if full or hashes.counts(snap.lists[li], t, digest):
                    out.append((li, line, 0, expr, True))
        return out

    @staticmethod
    def _file_for(info: ListInfo, m: _Match) -> str | None:
        files = info.files
        if not files:
            return None
        if len(files) == 1:
            return files[0]
        # UT1 folders: domains / urls / expressions
        want = (
            "urls"
            if "/" in m[3] and not m[3].startswith("^")
            else ("expressions" if m[3].startswith("^") or "\\" in m[3] else "domains")
        )
        return next((f for f in files if os.path.basename(f).startswith(want)), files[0])
