"""Client identity → group, with one explicit precedence.

Precedence (first that matches wins): proxy user name > DoH path id > MAC address > exact IP >
longest matching CIDR > ``default_group``. Anything else is unknown (the DNS path refuses it).
"""

from __future__ import annotations

import copy
import ipaddress
from dataclasses import dataclass
from typing import TYPE_CHECKING

from filterproxy.neighbours import TABLE

if TYPE_CHECKING:
    from filterproxy.config.model import ClientRule

PRECEDENCE = ("user", "doh", "mac", "ip", "cidr", "default")


@dataclass(frozen=True, slots=True)
class Client:
    """What a data path knows about who is asking."""

    ip: str | None = None
    user: str | None = None
    mac: str | None = None
    doh: str | None = None

    @classmethod
    def parse(cls, text: str) -> Client:
        """CLI helper: an IP address, ``user:NAME``, ``mac:AA:BB:..`` or ``doh:ID``; else a user name."""
        for prefix in ("user", "mac", "doh"):
            if text.startswith(prefix + ":"):
                return cls(**{prefix: text[len(prefix) + 1 :]})
        try:
            return cls(ip=str(ipaddress.ip_address(text)))
        except ValueError:
            return cls(user=text)


class ClientMap:
    """Compiled client rules; ``group_for`` is a few dict look-ups plus a scan of CIDRs by prefix length."""

    def __init__(self, rules: list[ClientRule], default_group: str | None):
        self.default_group = default_group
        self._by: dict[str, dict[str, str]] = {"user": {}, "doh": {}, "mac": {}, "ip": {}}
        nets: list[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, str]] = []
        for r in rules:
            if r.kind == "cidr":
                nets.append((ipaddress.ip_network(r.value, strict=False), r.group))
            else:
                self._by[r.kind].setdefault(r.value.lower() if r.kind != "ip" else r.value, r.group)
        nets.sort(key=lambda n: -n[0].prefixlen)
        self._nets = nets
        self._cache: dict[str, str | None] = {}

    def add_cidr(self, cidr: str, group: str) -> None:
        """Command-line ``--client-group CIDR=GROUP`` (takes precedence over same-length config CIDRs)."""
        self._nets.insert(0, (ipaddress.ip_network(cidr, strict=False), group))
        self._nets.sort(key=lambda n: -n[0].prefixlen)
        self._cache.clear()

    def with_rules(self, rules: tuple[ClientRule, ...] | list[ClientRule]) -> ClientMap:
        """A copy joined by ``rules`` (the control API's devices: user, doh, mac or ip rules) at the same
        precedence steps; for the same key a joined rule wins over the configuration's (it is newer)."""
        joined = copy.copy(self)
        joined._by = {k: dict(v) for k, v in self._by.items()}
        for r in rules:
            joined._by[r.kind][r.value.lower() if r.kind != "ip" else r.value] = r.group
        joined._cache = {}
        return joined

    @property
    def uses_mac(self) -> bool:
        return bool(self._by["mac"])

    def group_for(self, client: Client) -> tuple[str | None, str]:
        """(group, how) — how is the precedence step that decided, for explain."""
        if client.user and client.user.lower() in self._by["user"]:
            return self._by["user"][client.user.lower()], "user"
        if client.doh and client.doh.lower() in self._by["doh"]:
            return self._by["doh"][client.doh.lower()], "doh"
        if client.mac and client.mac.lower() in self._by["mac"]:
            return self._by["mac"][client.mac.lower()], "mac"
        if client.ip:
            g = self._by["ip"].get(client.ip)
            if g:
                return g, "ip"
            g = self._cidr(client.ip)
            if g:
                return g, "cidr"
        if self.default_group:
            return self.default_group, "default"
        return None, "unknown"

    def _cidr(self, ip: str) -> str | None:
        try:
            return self._cache[ip]
        except KeyError:
            pass
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            return None
        g = next((grp for net, grp in self._nets if addr.version == net.version and addr in net), None)
        if len(self._cache) > 65536:
            self._cache.clear()
        self._cache[ip] = g
        return g


def mac_for_ip(ip: str) -> str | None:
    """MAC of a LAN client (IPv4 or IPv6) from the neighbour table, as last read off the serving path."""
    return TABLE.lookup(ip)
