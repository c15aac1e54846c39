"""Live rules into every deciding process: :class:`LiveWatcher` polls the store's serial and swaps them in.

One daemon thread per process (the main ``filterproxy run``, each DNS worker, each proxy worker) reads
``store.serial()`` every second and at the rules' next expiry; when it moved, it builds
:class:`~filterproxy.state.model.LiveRules`, calls ``engine.set_live`` and then ``on_change`` (the DNS
service drops its memoised verdicts and packed replies on its event loop). The thread never touches a
serving path itself (house rule 9).

The store is opened lazily: a SQLite file that does not exist yet (a fresh install) means no live rules,
and nothing is created. A store that cannot be opened or read is logged once and retried; the last
rules stay (a PostgreSQL outage keeps serving what was live).
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from filterproxy.state.model import EMPTY, LiveRules

if TYPE_CHECKING:
    from filterproxy.policy.engine import Engine
    from filterproxy.state.store import Store

log = logging.getLogger("filterproxy.state")

POLL = 1.0  # seconds between two reads of the serial
RETRY = 10.0  # seconds between two attempts to open a store that failed


def _sqlite_path(url: str) -> str | None:
    if url.startswith("sqlite:///"):
        return url[len("sqlite:///") :]
    return None


class LiveWatcher:
    """Keeps ``engine()``'s live rules in step with the store at ``url`` (see the module docstring).

    ``engine`` is a getter: a process that reloads builds a new engine (the proxy workers), and the
    watcher installs the current rules into it as soon as it sees it.
    """

    def __init__(
        self,
        url: str,
        engine: Callable[[], Engine | None],
        on_change: Callable[[], None] | None = None,
        *,
        poll: float = POLL,
    ) -> None:
        self.url = url
        self.engine = engine
        self.on_change = on_change
        self.poll = poll
        self.rules: LiveRules = EMPTY
        self._store: Store | None = None
        self._applied: tuple[object, ...] | None = None  # (id(engine), serial, next expiry) last installed
        self._failing = False
        self._next_open = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, sync: bool = True) -> LiveWatcher:
        """Start polling; ``sync``: read the rules now, before the first query is served (off the event loop)."""
        if sync:
            self._check_logged()
        self._thread = threading.Thread(target=self._run, name="filterproxy-state-watch", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._store is not None:
            self._store.close()

    def _run(self) -> None:
        if self._applied is None:
            self._check_logged()
        pg = self.url.startswith(("postgresql://", "postgres://"))
        notified = PgNotifyWait(self.url, self._stop) if pg else None
        while not self._stop.wait(0 if notified else self._wait()):
            if notified is not None:
                notified.wait(self._wait())  # the poll's sleep, cut short by the store's NOTIFY
            self._check_logged()
        if notified is not None:
            notified.close()

    def _check_logged(self) -> None:
        """:meth:`check` for the thread: an error in applying the rules is logged and tried again at the next
        poll; the thread never dies of it (a dead watcher would leave every later change unapplied)."""
        try:
            self.check()
        except Exception:
            log.exception("state: could not apply the live rules; trying again at the next poll")

    def _wait(self) -> float:
        nxt = self.rules.next_expiry
        if nxt is None:
            return self.poll
        until = (nxt - dt.datetime.now(dt.UTC)).total_seconds()
        return max(0.05, min(self.poll, until + 0.01))

    def _open(self) -> Store | None:
        import time

        from filterproxy.state.store import Store

        if self._store is not None:
            return self._store
        path = _sqlite_path(self.url)
        if path is not None and not os.path.exists(path):
            return None  # no state yet: nothing to apply, nothing created
        if time.monotonic() < self._next_open:
            return None
        try:
            self._store = Store.open(self.url)
        except Exception as exc:  # serve without live rules rather than stop the resolver
            self._next_open = time.monotonic() + RETRY
            if not self._failing:
                log.error("state: cannot open %s (%s); serving without live rules until it opens", self.url, exc)
            self._failing = True
            return None
        return self._store

    def check(self) -> bool:
        """One poll: rebuild and install when the serial moved, a rule expired or the engine is new."""
        engine = self.engine()
        store = self._open()
        if engine is None:
            return False
        try:
            if store is not None:
                now = dt.datetime.now(dt.UTC)
                expired = self.rules.next_expiry is not None and self.rules.next_expiry <= now
                serial = store.serial()
                if serial != self.rules.serial or expired or self._applied is None:
                    self.rules = store.live(now)
        except Exception as exc:  # keep the last rules (a database outage must not open or close anything)
            if not self._failing:
                log.error("state: cannot read %s (%s); keeping the last live rules", self.url, exc)
            self._failing = True
            return False
        if self._failing and store is not None:
            log.info("state: %s readable again", self.url)
        self._failing = False
        key = (id(engine), self.rules.serial, self.rules.next_expiry)
        if key == self._applied:
            return False
        engine.set_live(self.rules)
        self._applied = key
        if self.on_change is not None:
            self.on_change()
        return True


def load_live(cfg: object, engine: Engine) -> LiveRules:
    """The live rules of the store ``cfg`` names, installed into ``engine`` once (``filterproxy explain``);
    no rules when there is no state yet (nothing is created) or it cannot be read (logged)."""
    from filterproxy.state.store import state_url

    watcher = LiveWatcher(state_url(cfg), lambda: engine)
    try:
        watcher.check()
    finally:
        if watcher._store is not None:
            watcher._store.close()
    return watcher.rules


class PgNotifyWait:
    """PostgreSQL: a sleep that ends early when a store change NOTIFYs (``Store._change`` in the same
    transaction as the serial bump), so a change reaches this process in milliseconds rather than at the
    next poll. Its own autocommit connection, LISTENing; when it breaks, it sleeps and reconnects later
    (the serial poll still runs, so nothing is missed)."""

    def __init__(self, url: str, stop: threading.Event) -> None:
        self.url = url
        self.stop = stop  # checked every second, so stopping the watcher never waits for a long poll
        self._conn: Any = None
        self._retry_at = 0.0

    def _connect(self) -> Any:
        import time

        import psycopg

        from filterproxy.state.store import NOTIFY_CHANNEL

        if self._conn is None and time.monotonic() >= self._retry_at:
            try:
                self._conn = psycopg.connect(self.url, autocommit=True, connect_timeout=5)
                self._conn.execute(f"LISTEN {NOTIFY_CHANNEL}")  # a constant identifier, never a value
            except Exception as exc:  # the serial poll carries on alone
                log.warning("state: cannot LISTEN on %s (%s); polling only, retry in %.0f s", self.url, exc, RETRY)
                self.close()
                self._retry_at = time.monotonic() + RETRY
        return self._conn

    def wait(self, timeout: float) -> None:
        """Return after ``timeout`` seconds or at the first NOTIFY, whichever comes first."""
        conn = self._connect()
        if conn is None:
            self.stop.wait(timeout)
            return
        import time

        end = time.monotonic() + timeout
        try:
            while (left := end - time.monotonic()) > 0 and not self.stop.is_set():
                if any(True for _ in conn.notifies(timeout=min(1.0, left), stop_after=1)):
                    return
        except Exception as exc:  # the connection broke: reconnect at the next wait (or later)
            log.warning("state: LISTEN connection to %s lost (%s)", self.url, exc)
            self.close()

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception:
                pass
            self._conn = None
