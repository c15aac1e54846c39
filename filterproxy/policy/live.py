"""The live rules (control API overrides, pauses, devices) compiled for the decision engine.

:class:`LiveTables` is built once per :meth:`Engine.set_live <filterproxy.policy.engine.Engine.set_live>`
(house rule 4): overrides by group and name with their verdicts made in advance, pauses by group and by
client key (IP, MAC, DoH id; a ``device:<id>`` pause becomes its device's keys), devices as client rules.
Lookups compare the expiry with the decision time, so a rule stops at its minute even before the
watcher rebuilds.
"""

from __future__ import annotations

import datetime as dt
import zoneinfo
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from filterproxy.config.model import ClientRule
from filterproxy.verdict import Action, Reason, Verdict

if TYPE_CHECKING:
    from filterproxy.clients import Client
    from filterproxy.state.model import LiveRules, Override, Pause


def _until(t: dt.datetime | None, tz: zoneinfo.ZoneInfo) -> str:
    return f"until {t.astimezone(tz):%H:%M}" if t is not None else "until removed"


def _override_verdict(o: Override, tz: zoneinfo.ZoneInfo) -> Verdict:
    return Verdict(
        Action.ALLOW if o.action == "allow" else Action.BLOCK,
        Reason.OVERRIDE,
        o.group,
        category=None if o.action == "allow" else "override",
        list_id=f"override:{o.id}",
        rule=f"{o.action} {o.name}",
        source=f"override {o.id} by {o.created_role} {o.created_by}, {_until(o.expires_at, tz)}",
    )


def _pause_verdict(p: Pause, group: str, tz: zoneinfo.ZoneInfo) -> Verdict:
    who = f"client {p.client}" if p.client else f"group {p.group}"
    return Verdict(
        Action.BLOCK,
        Reason.PAUSE,
        group,
        category="pause",
        list_id=f"pause:{p.id}",
        rule=f"pause {who}",
        source=f"pause {p.id} by {p.created_by}, {_until(p.expires_at, tz)}",
    )


@dataclass(frozen=True)
class LiveTables:
    """One compiled :class:`~filterproxy.state.model.LiveRules`; immutable, swapped as one reference."""

    serial: int = 0
    overrides: dict[str, dict[str, tuple[dt.datetime | None, Verdict]]] = field(default_factory=dict)
    group_pauses: dict[str, Pause] = field(default_factory=dict)
    client_pauses: dict[tuple[str, str], Pause] = field(default_factory=dict)  # ("ip"|"mac"|"doh", value)
    device_rules: tuple[ClientRule, ...] = ()
    tz: zoneinfo.ZoneInfo = field(default_factory=lambda: zoneinfo.ZoneInfo("UTC"))
    device_keys: dict[tuple[str, str], int] = field(default_factory=dict)  # ("ip"|"mac"|"doh", value) → device id
    pause_verdicts: dict[tuple[int, str], Verdict] = field(default_factory=dict)  # (pause id, group), made on use

    @classmethod
    def build(cls, rules: LiveRules, tz: zoneinfo.ZoneInfo) -> LiveTables:
        ovs: dict[str, dict[str, tuple[dt.datetime | None, Verdict]]] = {}
        for o in sorted(rules.overrides, key=lambda o: o.id):  # the newest rule for a name wins
            ovs.setdefault(o.group, {})[o.name] = (o.expires_at, _override_verdict(o, tz))
        devices = {d.id: d for d in rules.devices}
        gp: dict[str, Pause] = {}
        cp: dict[tuple[str, str], Pause] = {}
        for p in rules.pauses:
            if p.group is not None:
                gp[p.group] = _later(gp.get(p.group), p)
            elif p.client and p.client.startswith("device:"):
                d = devices.get(int(p.client[7:]))
                keys = [] if d is None else [("ip", d.ip), ("mac", d.mac), ("doh", d.doh_id)]
                for kind, value in keys:
                    if value:
                        cp[(kind, value)] = _later(cp.get((kind, value)), p)
            elif p.client:
                kind = "ip" if len(p.client) != 17 or p.client.count(":") != 5 or "." in p.client else "mac"
                cp[(kind, p.client)] = _later(cp.get((kind, p.client)), p)
        rules_ = []
        for d in rules.devices:
            for kind, value in (("doh", d.doh_id), ("mac", d.mac), ("ip", d.ip)):
                if value:
                    rules_.append(ClientRule(kind, value, d.group, f"device {d.id} ({d.name})"))
        device_keys = {
            (k, v.lower()): d.id
            for d in rules.devices
            for k, v in (("doh", d.doh_id), ("mac", d.mac), ("ip", d.ip))
            if v
        }
        return cls(rules.serial, ovs, gp, cp, tuple(rules_), tz, device_keys)

    def device_of(self, client: Client) -> int | None:
        """The id of the named device ``client`` is (DoH id > MAC > IP, as the group), for its last-seen time."""
        keys = self.device_keys
        if not keys:
            return None
        for kind, value in (("doh", client.doh), ("mac", client.mac), ("ip", client.ip)):
            if value:
                did = keys.get((kind, value.lower()))
                if did is not None:
                    return did
        return None

    def _utc(self, at: dt.datetime | None) -> dt.datetime:
        """The decision time in UTC (rules expire at absolute times); a naive ``at`` is the engine's local time."""
        if at is None:
            return dt.datetime.now(dt.UTC)
        return (at.replace(tzinfo=self.tz) if at.tzinfo is None else at).astimezone(dt.UTC)

    def override(self, group: str, host: str, at: dt.datetime | None) -> Verdict | None:
        """The override of ``group`` for ``host`` or its nearest parent (overrides cover subdomains): a dict
        probe per name level; the clock is read only for a hit that expires."""
        names = self.overrides.get(group)
        if not names:
            return None
        name = host
        while True:  # filterproxy.names.self_and_parents, inlined: this runs in every decision of the group
            hit = names.get(name)
            if hit is not None and (hit[0] is None or hit[0] > self._utc(at)):
                return hit[1]
            i = name.find(".")
            if i < 0:
                return None
            name = name[i + 1 :]

    def pause(self, group: str, client: Client | str | None, at: dt.datetime | None) -> Verdict | None:
        """A pause of ``client`` (by IP, MAC or DoH id) or of its ``group`` in force at ``at``."""
        p = None
        if self.client_pauses and client is not None:
            if isinstance(client, str):
                from filterproxy.clients import Client

                client = Client.parse(client)
            p = self.client_pause(client, at)
        if p is None:
            p = self.group_pauses.get(group)
            if p is None or p.expires_at <= self._utc(at):
                return None
        v = self.pause_verdicts.get((p.id, group))
        if v is None:  # a paused client is decided for itself on every query: its verdict is made once
            v = self.pause_verdicts[(p.id, group)] = _pause_verdict(p, group, self.tz)
        return v

    def client_pause(self, client: Client | None, at: dt.datetime | None) -> Pause | None:
        """The pause of this very client (by IP, MAC or DoH id), not its group's."""
        if client is None or not self.client_pauses:
            return None
        for key in (("ip", client.ip), ("mac", (client.mac or "").lower()), ("doh", client.doh)):
            p = self.client_pauses.get(key) if key[1] else None  # type: ignore[arg-type]
            if p is not None and p.expires_at > self._utc(at):
                return p
        return None


def _later(old: Pause | None, new: Pause) -> Pause:
    return new if old is None or new.expires_at > old.expires_at else old


EMPTY = LiveTables()
