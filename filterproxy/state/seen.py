"""Named devices' last-seen times: when each deciding process last had traffic from a device, and the
neighbour table.

:data:`SEEN` holds one timestamp per device id and nothing else (no name, no site, no count): never a
browsing history. The serving paths only store into it: the DNS client table when it builds a client's
state and in its once-a-second sweep of the states that asked something since (never per packet), the
proxy per request, DoH per request. A :class:`SeenWriter` thread per process hands the newest times to
``Store.touch_devices`` every ``admin.devices_seen_seconds`` (default 30), never on an event loop
(house rule 9). In the main process it first reads the kernel's neighbour table: a device whose MAC or
IP is there in state REACHABLE, STALE, DELAY or PROBE is seen at the time the kernel last confirmed it.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from filterproxy.clients import Client
    from filterproxy.config import Config
    from filterproxy.policy.live import LiveTables
    from filterproxy.state.store import Store

log = logging.getLogger("filterproxy.state")


class SeenDevices:
    """Device id → the last time (Unix seconds) this process saw traffic from it, not yet written.

    ``note`` is one dict store (atomic under the GIL), so the serving paths call it without a lock; a note
    that races with ``take`` may be lost, and the next one (within a second for an active client) replaces it.
    """

    def __init__(self) -> None:
        self._seen: dict[int, float] = {}

    def note(self, device_id: int, at: float | None = None) -> None:
        self._seen[device_id] = time.time() if at is None else at

    def note_client(self, live: LiveTables, client: Client) -> None:
        """Note ``client`` when it is a named device of ``live`` (nothing when there are no devices)."""
        if live.device_keys:
            did = live.device_of(client)
            if did is not None:
                self._seen[did] = time.time()

    def take(self) -> dict[int, float]:
        """Everything noted since the last take."""
        out, self._seen = self._seen, {}
        return out

    def give_back(self, seen: dict[int, float]) -> None:
        """Times a failed write could not store: kept for the next try (the newer time wins)."""
        for did, at in seen.items():
            if self._seen.get(did, 0.0) < at:
                self._seen[did] = at


SEEN = SeenDevices()
"""This process's last-seen times: the DNS client table, DoH and the proxy addon note into it."""


def neighbour_sightings(live: LiveTables, reader: Callable[[], list[tuple[str, str, float]]]) -> dict[int, float]:
    """Devices present in the neighbour table: device id → when the kernel last confirmed them (Unix seconds)."""
    keys = live.device_keys
    if not any(kind in ("ip", "mac") for kind, _ in keys):
        return {}
    now = time.time()
    out: dict[int, float] = {}
    for ip, mac, age in reader():
        did = keys.get(("mac", mac)) if mac else None
        if did is None:
            did = keys.get(("ip", ip))
        if did is not None:
            out[did] = max(out.get(did, 0.0), now - age)
    return out


class SeenWriter:
    """The thread that writes :data:`SEEN` to the store at ``url`` every ``interval`` seconds.

    ``live`` (the main process only): the engine's current live tables, whose devices are looked up in
    the neighbour table before each write. The store is opened on the first write that has something to
    write (a device exists, so the database does); a failed write keeps the times for the next one.
    """

    def __init__(
        self,
        url: str,
        interval: float,
        *,
        live: Callable[[], LiveTables] | None = None,
        seen: SeenDevices = SEEN,
        neighbours: Callable[[], list[tuple[str, str, float]]] | None = None,
    ) -> None:
        self.url = url
        self.interval = interval
        self.live = live
        self.seen = seen
        if neighbours is None:
            from filterproxy.neighbours import read_present

            neighbours = read_present
        self.neighbours = neighbours
        self._store: Store | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_error = float("-inf")

    def start(self) -> SeenWriter:
        self._thread = threading.Thread(target=self._run, name="filterproxy-seen", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        self.flush()
        if self._store is not None:
            self._store.close()
            self._store = None

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.flush()

    def flush(self) -> bool:
        """Write what was noted (and, in the main process, seen in the neighbour table); True when written."""
        try:
            if self.live is not None:
                self.seen.give_back(neighbour_sightings(self.live(), self.neighbours))
        except Exception as exc:  # the traffic's times are written all the same
            self._warn("cannot read the neighbour table for devices' last-seen times: %s", exc)
        seen = self.seen.take()
        if not seen:
            return True
        try:
            if self._store is None:
                from filterproxy.state.store import Store

                self._store = Store.open(self.url)
            self._store.touch_devices({did: dt.datetime.fromtimestamp(at, dt.UTC) for did, at in seen.items()})
            return True
        except Exception as exc:  # the database is away: keep the times, retry at the next interval
            self.seen.give_back(seen)
            self._warn("cannot write devices' last-seen times, kept for the next try: %s", exc)
            return False

    def _warn(self, msg: str, exc: Exception) -> None:
        if time.monotonic() - self._last_error > 60:
            self._last_error = time.monotonic()
            log.warning("state: " + msg, exc)


def start_writer(cfg: Config, live: Callable[[], LiveTables] | None = None) -> SeenWriter:
    """This process's writer for the configuration's state database (``live``: the main process)."""
    from filterproxy.state.store import state_url

    return SeenWriter(state_url(cfg), cfg.admin.devices_seen_seconds, live=live).start()
