"""The neighbour table reader: ``ip -j neigh`` and ``/proc/net/arp`` parsers, and lookups that never read."""

from __future__ import annotations

import json
import threading

import pytest

from filterproxy.neighbours import NeighbourTable, parse_ip_neigh, parse_proc_arp

IP_NEIGH = [
    {"dst": "10.0.0.7", "dev": "eth0", "lladdr": "AA:BB:CC:00:00:07", "state": ["REACHABLE"]},
    {"dst": "fd00::7", "dev": "eth0", "lladdr": "aa:bb:cc:00:00:07", "state": ["STALE"]},
    {"dst": "FD00:0:0:0::8", "dev": "eth0", "lladdr": "aa:bb:cc:00:00:08", "router": None, "state": ["DELAY"]},
    {"dst": "fe80::1%eth0", "dev": "eth0", "lladdr": "aa:bb:cc:00:00:01", "state": ["PERMANENT"]},
    {"dst": "10.0.0.9", "dev": "eth0", "state": ["FAILED"]},  # no link-layer address: left out
    {"dst": "fd00::9", "dev": "eth0", "state": ["INCOMPLETE"]},
    {"dst": "10.0.0.10", "dev": "eth0", "lladdr": "00:00:00:00:00:00", "state": ["NOARP"]},
    {"dst": "not-an-address", "dev": "eth0", "lladdr": "aa:bb:cc:00:00:11", "state": ["STALE"]},
]


@pytest.mark.parametrize(
    "ip, mac",
    [
        ("10.0.0.7", "aa:bb:cc:00:00:07"),
        ("fd00::7", "aa:bb:cc:00:00:07"),
        ("fd00::8", "aa:bb:cc:00:00:08"),  # canonical text, as dns/clients and http/identity ask
        ("fe80::1", "aa:bb:cc:00:00:01"),
        ("10.0.0.9", None),
        ("fd00::9", None),
        ("10.0.0.10", None),
    ],
)
def test_parse_ip_neigh(ip, mac):
    table = parse_ip_neigh(json.dumps(IP_NEIGH))
    assert table.get(ip) == mac
    assert len(table) == 4


def test_parse_ip_neigh_empty():
    assert parse_ip_neigh("") == {} and parse_ip_neigh("[]") == {}


def test_parse_proc_arp():
    text = (
        "IP address       HW type     Flags       HW address            Mask     Device\n"
        "192.168.1.20     0x1         0x2         AA:BB:CC:DD:EE:20     *        eth0\n"
        "192.168.1.21     0x1         0x0         00:00:00:00:00:00     *        eth0\n"
    )
    assert parse_proc_arp(text) == {"192.168.1.20": "aa:bb:cc:dd:ee:20"}


def test_lookups_never_read_on_the_calling_thread():
    """A lookup (DNS UDP thread, mitmproxy loop) returns what was read; reading happens in the reader thread."""
    callers: list[threading.Thread] = []
    read = threading.Event()

    def reader() -> dict[str, str]:
        callers.append(threading.current_thread())
        read.set()
        return {"fd00::7": "aa:bb:cc:00:00:07"}

    table = NeighbourTable(reader)
    assert table.lookup("fd00::7") is None  # nothing read yet: the reader is started, the caller goes on
    assert read.wait(10)
    assert callers and threading.current_thread() not in callers
    for _ in range(1000):  # the swap is one reference: the reader thread sets it right after reading
        if table.lookup("fd00::7"):
            break
        read.wait(0.01)
    assert table.lookup("fd00::7") == "aa:bb:cc:00:00:07"


def test_failed_read_keeps_the_last_table():
    tables = [{"10.0.0.7": "aa:bb:cc:00:00:07"}]

    def reader() -> dict[str, str]:
        if not tables:
            raise OSError("netlink went away")
        return tables.pop()

    table = NeighbourTable(reader)
    table.refresh()
    table.refresh()
    assert table.table == {"10.0.0.7": "aa:bb:cc:00:00:07"}


def test_dns_client_state_without_mac_is_rebuilt_soon(monkeypatch):
    """A client seen before its MAC was in the table gets its MAC group after the short retry, not 30 s later."""
    from filterproxy.dns import clients as clmod
    from filterproxy.dns.cache import PackedCaches
    from filterproxy.policy.live import LiveTables

    class _Clients:
        uses_mac = True
        default_group = "teen"

        def group_for(self, client):
            return ("kid", "mac") if client.mac else ("teen", "default")

    class _Engine:
        clients = _Clients()
        live = LiveTables()  # no control-API rules: no pauses, no devices

    macs: dict[str, str] = {}
    monkeypatch.setattr(clmod, "mac_for_ip", macs.get)
    table = clmod.ClientTable(_Engine(), ["fd00::/8"], 0, PackedCaches(["kid", "teen"], 16), refresh=30.0)
    assert table.state("fd00::7", now=100.0).group == "teen"
    macs["fd00::7"] = "aa:bb:cc:00:00:07"
    # the UDP hot loops read table.get(ip) and never look at expires: housekeeping (once a second) must drop
    # the state built without the MAC, or the client keeps the wrong group until the 30 s rebuild
    table.expire_misses(now=100.0 + clmod.MAC_MISS_RETRY / 2)
    assert table.table["fd00::7"].group == "teen"  # not yet: within the retry
    table.expire_misses(now=100.0 + clmod.MAC_MISS_RETRY + 0.1)
    assert "fd00::7" not in table.table
    assert table.state("fd00::7", now=100.0 + clmod.MAC_MISS_RETRY + 0.1).group == "kid"
    st = table.state("fd00::7", now=103.0)
    table.expire_misses(now=110.0)
    assert table.table.get("fd00::7") is st  # found: kept for the full refresh period
    assert table.state("fd00::7", now=110.0) is st
