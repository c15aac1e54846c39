"""The kernel's neighbour table (IPv4 ARP and IPv6 NDP): client address → MAC, for ``clients: {mac: …}`` rules.

The table is read with ``ip -j neigh show`` (iproute2) in a background thread: every 30 s, and sooner
(at most every 2 s) when a lookup misses, so a new device is seen quickly. :meth:`NeighbourTable.lookup`
is one dict read and never waits for the reader, so neither the DNS UDP thread nor the mitmproxy event
loop blocks on it (CONTRIBUTING.md rule 9). Without iproute2 it falls back to ``/proc/net/arp`` (IPv4
only). Why iproute2 and not pyroute2 or /proc: docs/decisions/clients-neighbour-table.md.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import subprocess
import threading
import time
from collections.abc import Callable

log = logging.getLogger("filterproxy.clients")

__all__ = [
    "NeighbourTable",
    "PRESENT",
    "TABLE",
    "parse_ip_neigh",
    "parse_present",
    "parse_proc_arp",
    "read_neighbours",
    "read_present",
]

REFRESH_INTERVAL = 30.0  # seconds between two reads of the table
MISS_INTERVAL = 2.0  # a lookup that misses asks for an early read, at most this often
_NO_MAC = ("", "00:00:00:00:00:00")


def _canonical(ip: str) -> str | None:
    try:
        return str(ipaddress.ip_address(ip.split("%", 1)[0]))
    except ValueError:
        return None


def parse_ip_neigh(text: str) -> dict[str, str]:
    """``ip -j neigh show`` output → {address: mac} for IPv4 and IPv6 entries that have a link-layer address.

    Entries without one (``FAILED``, ``INCOMPLETE``) are left out; addresses are canonical
    (``ipaddress`` text, lower case), MACs lower case.
    """
    table: dict[str, str] = {}
    for entry in json.loads(text or "[]"):
        mac = str(entry.get("lladdr") or "").lower()
        ip = _canonical(str(entry.get("dst", "")))
        if ip is None or mac in _NO_MAC:
            continue
        table[ip] = mac
    return table


PRESENT = frozenset({"REACHABLE", "STALE", "DELAY", "PROBE"})  # states of a neighbour that answered lately


def parse_present(text: str) -> list[tuple[str, str, float]]:
    """``ip -s -j neigh show`` → (address, mac, seconds since the kernel last confirmed it) of the entries
    in a :data:`PRESENT` state, for devices' last-seen times (``FAILED``/``INCOMPLETE`` are left out)."""
    out: list[tuple[str, str, float]] = []
    for entry in json.loads(text or "[]"):
        state = entry.get("state") or []
        mac = str(entry.get("lladdr") or "").lower()
        ip = _canonical(str(entry.get("dst", "")))
        if ip is None or mac in _NO_MAC or not PRESENT.intersection(state):
            continue
        out.append((ip, mac, float(entry.get("confirmed", 0) or 0)))
    return out


def read_present(timeout: float = 5.0) -> list[tuple[str, str, float]]:
    """The present neighbours of this network namespace (blocking: the last-seen writer's thread); none
    without iproute2."""
    try:
        out = subprocess.run(
            ["ip", "-s", "-j", "neigh", "show"], capture_output=True, text=True, timeout=timeout, check=True
        ).stdout
    except FileNotFoundError:
        return []
    return parse_present(out)


def parse_proc_arp(text: str) -> dict[str, str]:
    """``/proc/net/arp`` (IPv4 only) → {address: mac}; incomplete entries (all-zero MAC) are left out."""
    table: dict[str, str] = {}
    for line in text.splitlines()[1:]:
        parts = line.split()
        if len(parts) >= 4 and parts[3] not in _NO_MAC:
            ip = _canonical(parts[0])
            if ip is not None:
                table[ip] = parts[3].lower()
    return table


def read_neighbours(timeout: float = 5.0) -> dict[str, str]:
    """The neighbour table of this network namespace (blocking: call it off the serving paths)."""
    try:
        out = subprocess.run(
            ["ip", "-j", "neigh", "show"], capture_output=True, text=True, timeout=timeout, check=True
        ).stdout
        return parse_ip_neigh(out)
    except FileNotFoundError:
        log.warning("clients: 'ip' (iproute2) not found; MAC rules see IPv4 clients only (/proc/net/arp)")
    with open("/proc/net/arp") as f:
        return parse_proc_arp(f.read())


class NeighbourTable:
    """Address → MAC from the neighbour table, read in a background thread; lookups never block."""

    def __init__(
        self,
        reader: Callable[[], dict[str, str]] = read_neighbours,
        *,
        interval: float = REFRESH_INTERVAL,
        miss_interval: float = MISS_INTERVAL,
    ) -> None:
        self.reader = reader
        self.interval = interval
        self.miss_interval = miss_interval
        self.table: dict[str, str] = {}
        self.read_at = float("-inf")  # monotonic time of the last read
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self._pid = 0  # the process whose thread reads (a forked child starts its own)

    def lookup(self, ip: str) -> str | None:
        """The MAC of ``ip`` (canonical address text) as last read, or None; starts the reader if needed."""
        mac = self.table.get(ip)
        if mac is None:
            if self._pid != os.getpid():
                self.start()
            elif time.monotonic() - self.read_at >= self.miss_interval:
                self._wake.set()
        return mac

    def refresh(self) -> None:
        """Read the table now (blocking) and swap it in as one reference; a failed read keeps the old one."""
        try:
            table = self.reader()
        except Exception as exc:  # a broken read must not stop the refresher; the last table stays in use
            log.warning("clients: cannot read the neighbour table: %s", exc)
            table = self.table
        self.table = table
        self.read_at = time.monotonic()

    def start(self) -> None:
        """Start the background reader of this process (idempotent)."""
        with self._lock:
            if self._pid == os.getpid():
                return
            self._pid = os.getpid()
        threading.Thread(target=self._run, name="filterproxy-neighbours", daemon=True).start()

    def warm(self) -> None:
        """Read once now and start the reader (start-up, off the serving paths)."""
        if self._pid != os.getpid():
            self.refresh()
            self.start()

    def _run(self) -> None:
        while True:
            if time.monotonic() - self.read_at >= self.miss_interval:  # not just read by warm()
                self.refresh()
            self._wake.wait(self.interval)
            self._wake.clear()


TABLE = NeighbourTable()
