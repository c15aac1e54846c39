"""Devices' last-seen times (filterproxy.state.seen): which device a client is, the neighbour table's present
entries, the writer (the newest time wins, a failed write keeps the times), the DNS client table's sweep."""

from __future__ import annotations

import datetime as dt
import json
import time
import zoneinfo

import pytest

from filterproxy.clients import Client
from filterproxy.neighbours import parse_present
from filterproxy.policy.live import LiveTables
from filterproxy.state.model import Actor, Device, LiveRules
from filterproxy.state.seen import SeenDevices, SeenWriter, neighbour_sightings
from filterproxy.state.store import Store

UTC = zoneinfo.ZoneInfo("UTC")
ADMIN = Actor("root", "admin")


def _live(*devices: Device) -> LiveTables:
    return LiveTables.build(LiveRules(serial=1, devices=devices), UTC)


LIVE = _live(
    Device(1, "tablet", "kids", ip="10.0.0.5"),
    Device(2, "laptop", "kids", mac="aa:bb:cc:dd:ee:02"),
    Device(3, "phone", "kids", doh_id="phone3", ip="10.0.0.7"),
)


@pytest.mark.parametrize(
    ("client", "device"),
    [
        (Client(ip="10.0.0.5"), 1),
        (Client(ip="10.0.0.6", mac="AA:BB:CC:DD:EE:02"), 2),  # MACs in any case
        (Client(ip="10.0.0.5", mac="aa:bb:cc:dd:ee:02"), 2),  # MAC before IP, as for the group
        (Client(doh="phone3", ip="10.0.0.5"), 3),  # DoH id first
        (Client(ip="10.0.0.7"), 3),
        (Client(ip="10.0.0.9"), None),
        (Client(user="anna"), None),
    ],
)
def test_device_of(client, device):
    assert LIVE.device_of(client) == device
    assert LiveTables().device_of(client) is None


NEIGH = [
    {"dst": "10.0.0.5", "lladdr": "02:00:00:00:00:05", "confirmed": 12, "state": ["REACHABLE"]},
    {"dst": "10.0.0.6", "lladdr": "AA:BB:CC:DD:EE:02", "confirmed": 300, "state": ["STALE"]},
    {"dst": "10.0.0.7", "lladdr": "02:00:00:00:00:07", "confirmed": 3, "state": ["FAILED"]},
    {"dst": "fe80::1%eth0", "lladdr": "02:00:00:00:00:08", "confirmed": 1, "state": ["DELAY"]},
    {"dst": "10.0.0.9", "state": ["INCOMPLETE"]},
]


def test_parse_present_keeps_entries_that_answered_lately():
    assert parse_present(json.dumps(NEIGH)) == [
        ("10.0.0.5", "02:00:00:00:00:05", 12.0),
        ("10.0.0.6", "aa:bb:cc:dd:ee:02", 300.0),
        ("fe80::1", "02:00:00:00:00:08", 1.0),
    ]
    assert parse_present("") == []


def test_neighbour_sightings_by_mac_then_ip_at_the_confirmation_time():
    now = time.time()
    seen = neighbour_sightings(LIVE, lambda: parse_present(json.dumps(NEIGH)))
    assert set(seen) == {1, 2}  # device 3's address FAILED: not present
    assert abs(seen[1] - (now - 12)) < 2 and abs(seen[2] - (now - 300)) < 2
    called = []
    assert neighbour_sightings(_live(Device(4, "doh only", "kids", doh_id="x")), lambda: called.append(1) or []) == {}
    assert called == []  # no device with an address: the table is not read


@pytest.fixture
def store(tmp_path):
    s = Store.open(f"sqlite:///{tmp_path / 'state.db'}")
    yield s
    s.close()


def test_writer_keeps_the_newest_time_and_retries(store, tmp_path):
    d = store.add_device(ADMIN, "tablet", "kids", ip="10.0.0.5")
    serial = store.serial()
    t1 = dt.datetime(2026, 12, 1, 8, 0, tzinfo=dt.UTC)
    seen = SeenDevices()
    w = SeenWriter(store.url, 60, seen=seen, neighbours=lambda: [])
    seen.note(d.id, t1.timestamp())
    assert w.flush() and store.devices()[0].last_seen == t1
    seen.note(d.id, t1.timestamp() - 60)  # another process's older sighting: ignored
    assert w.flush() and store.devices()[0].last_seen == t1
    assert store.serial() == serial and len(store.audit()) == 1  # the add only: no audit, no serial
    w.stop()

    (tmp_path / "a-file").write_text("")  # a database under a file cannot be opened
    broken = SeenWriter(f"sqlite:///{tmp_path / 'a-file' / 'state.db'}", 60, seen=seen, neighbours=lambda: [])
    seen.note(d.id, t1.timestamp() + 60)
    assert not broken.flush()
    assert seen.take() == {d.id: t1.timestamp() + 60}  # kept for the next try


def test_main_writer_adds_neighbour_sightings(store):
    d = store.add_device(ADMIN, "laptop", "kids", mac="aa:bb:cc:dd:ee:02")
    live = _live(*store.devices())
    w = SeenWriter(store.url, 60, live=lambda: live, seen=SeenDevices(), neighbours=lambda: [("10.1.1.1", d.mac, 5.0)])
    assert w.flush()
    last = store.devices()[0].last_seen
    assert last is not None and abs(last.timestamp() - (time.time() - 5)) < 3
    w.stop()


def test_dns_client_table_notes_devices_at_build_and_in_the_sweep(monkeypatch):
    from filterproxy.dns import clients as clmod
    from filterproxy.dns.cache import PackedCaches

    class _Clients:
        uses_mac = False
        default_group = "kids"

        def group_for(self, client):
            return "kids", "default"

    class _Engine:
        clients = _Clients()
        live = LIVE

    seen = SeenDevices()
    monkeypatch.setattr(clmod, "SEEN", seen)
    table = clmod.ClientTable(_Engine(), ["10.0.0.0/8"], 0, PackedCaches(["kids"], 16), refresh=30.0)
    tablet, other = table.state("10.0.0.5", now=100.0), table.state("10.0.0.9", now=100.0)
    assert (tablet.device, other.device) == (1, None)
    assert set(seen.take()) == {1}  # noted when its state was built
    table.sweep_seen(now=100.5)
    assert set(seen.take()) == {1}  # the first sweep notes every device state
    tablet.sec = 100  # the rate-limit window the hot path moves on each query
    table.sweep_seen(now=101.2)
    assert set(seen.take()) == {1}
    table.sweep_seen(now=102.3)
    table.sweep_seen(now=103.4)
    assert seen.take() == {}  # silent since: not noted again
    tablet.sec = 103
    table.sweep_seen(now=104.0)
    assert set(seen.take()) == {1}
    table.reset()
    table.sweep_seen(now=105.0)
    assert seen.take() == {} and table.devices == {}
