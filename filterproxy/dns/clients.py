"""Who is asking: access control (``dns.allowed_networks``), client → group, per-client rate limit.

The three first links of the chain share one small object per source address, :class:`ClientState`,
so the UDP hot path pays one dict lookup for all of them. States are built on the first query from an
address (ACL check, ``engine.clients.group_for`` by IP/CIDR, and by MAC from the neighbour table when the
configuration has MAC rules; IPv4 and IPv6, :mod:`filterproxy.neighbours`) and rebuilt every ``refresh``
seconds, so a DHCP lease that moves to another device changes the group within that time; a state built
before the client's MAC was in the table is rebuilt after ``MAC_MISS_RETRY`` seconds.

Rate limit: ``dns.rate_limit`` queries per second per address (0 = off). Past the limit the next
``rate_limit`` queries of that second are answered REFUSED, anything beyond is dropped (a flood must
not cost us a reply each). Both are counted.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
import time
from typing import TYPE_CHECKING

from filterproxy.clients import Client, mac_for_ip
from filterproxy.state.seen import SEEN

if TYPE_CHECKING:
    from filterproxy.querylog import QueryLog

log = logging.getLogger("filterproxy.dns")

UNLIMITED = 1 << 62
MAC_MISS_RETRY = 2.0  # seconds a state built without the client's MAC (not in the table yet) is kept


class ClientState:
    """Per source address: ACL result, group, rate-limit window and the group's packed-reply cache."""

    __slots__ = (
        "ip",
        "allowed",
        "group",
        "how",
        "cache",
        "packed",
        "limit",
        "sec",
        "count",
        "expires",
        "paused",
        "device",
        "qlid",
    )

    def __init__(self, ip: str, allowed: bool, group: str | None, how: str, packed, limit: int, expires: float):
        self.ip = ip
        self.allowed = allowed
        self.group = group
        self.how = how
        self.packed = packed  # the group's PackedCache (None for refused clients)
        self.cache = packed.d if packed is not None else {}  # its dict: the hot path reads it directly
        self.limit = limit
        self.sec = 0
        self.count = 0
        self.expires = expires
        # a paused client (control API): decided for itself, without the group's packed replies and memo
        self.paused: Client | None = None
        self.device: int | None = None  # the named device (control API) this address is: its last-seen time
        self.qlid = 0  # the query log's client id << 32 (0: log off, or look the address up)


class ClientTable:
    """Source address → :class:`ClientState` (bounded; rebuilt every ``refresh`` seconds)."""

    def __init__(
        self,
        engine,
        allowed_networks: list[str],
        rate_limit: int,
        caches,
        *,
        refresh: float = 30.0,
        max_clients: int = 65536,
    ):
        self.engine = engine
        self.nets = [ipaddress.ip_network(n, strict=False) for n in allowed_networks]
        self.rate_limit = rate_limit
        self.limit = rate_limit if rate_limit > 0 else UNLIMITED
        self.caches = caches
        self.refresh = refresh
        self.max_clients = max_clients
        self.table: dict[str, ClientState] = {}
        self.devices: dict[str, ClientState] = {}  # the states of named devices: swept for their last-seen times
        # states built without the client's MAC (not in the neighbour table yet) → when to rebuild them: the hot
        # loops read ``table`` without looking at ``expires``, so housekeeping drops these (expire_misses)
        self.misses: dict[str, float] = {}
        self._swept = 0  # the monotonic second of the last sweep
        self.querylog: QueryLog | None = None  # the query log (when on): each state carries its client id
        self._lock = threading.Lock()

    def describe_acl(self) -> str:
        return (
            "allowed networks " + ", ".join(str(n) for n in self.nets)
            if self.nets
            else "no allowed networks (all REFUSED)"
        )

    def describe_groups(self) -> str:
        how = "IP/CIDR" + (" and MAC (neighbour table)" if self.engine.clients.uses_mac else "")
        dg = self.engine.clients.default_group
        return f"client → group by {how}; default group {dg or 'none (unknown clients REFUSED)'}"

    def describe_ratelimit(self) -> str:
        if self.rate_limit <= 0:
            return "off"
        return f"{self.rate_limit} queries/s per client; REFUSED up to 2x, dropped beyond"

    def state(self, ip: str, now: float | None = None) -> ClientState:
        """The state for ``ip``, building it when new or stale (slow path)."""
        now = time.monotonic() if now is None else now
        st = self.table.get(ip)
        if st is not None and st.expires > now:
            return st
        canon = ip
        try:
            addr = ipaddress.ip_address(ip.split("%", 1)[0])
            if addr.version == 6 and addr.ipv4_mapped is not None:
                addr = addr.ipv4_mapped
            canon = str(addr)
            allowed = any(addr.version == n.version and addr in n for n in self.nets)
        except ValueError:
            allowed = False
        group, how, ttl = None, "refused", self.refresh
        if allowed:
            mac = None
            if self.engine.clients.uses_mac:
                mac = mac_for_ip(canon)
                if mac is None:  # not in the neighbour table yet: the reader was asked to look again soon
                    ttl = min(ttl, MAC_MISS_RETRY)
            group, how = self.engine.clients.group_for(Client(ip=canon, mac=mac))
        paused = self.engine.live.client_pause(Client(ip=canon, mac=mac), None) if allowed else None
        pc = self.caches.for_group(group) if allowed and paused is None else None
        new = ClientState(canon, allowed, group, how, pc, self.limit, now + ttl)
        if paused is not None:
            new.paused = Client(ip=canon, mac=mac)
        if self.querylog is not None:  # anonymised once per state, not per query
            new.qlid = self.querylog.client(canon) << 32
        if st is not None:  # keep the rate-limit window across a refresh
            new.sec, new.count = st.sec, st.count
        new.device = self.engine.live.device_of(Client(ip=canon, mac=mac)) if allowed else None
        with self._lock:
            if len(self.table) >= self.max_clients:
                self.table.clear()
                self.devices.clear()
                self.misses.clear()
            self.table[ip] = new
            if ttl < self.refresh and allowed:
                self.misses[ip] = now + ttl
            else:
                self.misses.pop(ip, None)
            if new.device is not None:
                self.devices[ip] = new
            elif st is not None and st.device is not None:
                self.devices.pop(ip, None)
        if new.device is not None:
            SEEN.note(new.device)
        return new

    def expire_misses(self, now: float | None = None) -> None:
        """Once a second (housekeeping): forget the states built while the client's MAC was unknown, once
        their short life (``MAC_MISS_RETRY``) is over, so the next query looks the MAC up again."""
        if not self.misses:
            return
        now = time.monotonic() if now is None else now
        with self._lock:
            for ip, until in list(self.misses.items()):
                if until <= now:
                    del self.misses[ip]
                    st = self.table.get(ip)
                    if st is not None and st.expires <= now:
                        del self.table[ip]
                        self.devices.pop(ip, None)

    def sweep_seen(self, now: float | None = None) -> None:
        """Once a second (housekeeping): note the named devices that asked something since the last sweep
        (their rate-limit window moved), so the hot path writes nothing for last-seen times."""
        if not self.devices:
            return
        since = self._swept
        self._swept = int(time.monotonic() if now is None else now)
        for st in list(self.devices.values()):
            if st.sec >= since and st.device is not None:
                SEEN.note(st.device)

    def configure(self, allowed_networks: list[str], rate_limit: int) -> None:
        """A reloaded configuration's ACL and rate limit; every state is rebuilt (groups may have moved)."""
        self.nets = [ipaddress.ip_network(n, strict=False) for n in allowed_networks]
        self.rate_limit = rate_limit
        self.limit = rate_limit if rate_limit > 0 else UNLIMITED
        self.reset()

    def reset(self) -> None:
        """Forget every state (configuration or cache objects changed)."""
        with self._lock:
            self.table.clear()
            self.devices.clear()
            self.misses.clear()
