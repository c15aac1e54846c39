"""Downloaded lists kept fresh while ``filterproxy run`` serves: missing ones fetched at start-up in the
background, then every source again on its own ``refresh`` interval.

The resolver starts at once on the lists it has (the shipped starter lists, earlier downloads). A
:class:`ListRefresher` task then fetches the missing sources within a time budget (a deadline for all
of them, a timeout for each), logs one line per source, and asks for a reload when a list changed:
``Runner.reload``, the same rebuild-and-swap path as SIGHUP. Afterwards each source is fetched again
every ``refresh`` seconds, jittered by ±10 % so lists from one host are not all asked at once; a
conditional GET makes an unchanged list cost one request. A failure keeps the last good copy, is logged
and counted in ``filterproxy_lists_update_failures_total``. ``filterproxy lists update`` downloads with
the same :func:`fetch_list`. Only the main process refreshes (neither DNS nor proxy workers).

The ``distribution:`` repository is updated on the same timer every ``distribution.refresh`` seconds
plus a random delay of up to ``distribution.jitter`` (so a fleet restarted together does not ask the
ministry's server at the same second; a gateway that never installed anything asks at once), with
:func:`filterproxy.distribution.gateway.update`; newly installed lists are served after the reload.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import logging
import os
import random
import shutil
import threading
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar

from filterproxy.lists.fetch import FetchResult, Source, cache_paths, fetch
from filterproxy.lists.parsers import ListError, ParseStats, iter_entries
from filterproxy.lists.source import ListSource

if TYPE_CHECKING:
    from filterproxy.config import Config

log = logging.getLogger("filterproxy.lists")

STARTUP_DEADLINE = 300.0  # s for all start-up downloads; the lists already on disk serve meanwhile
DOWNLOAD_TIMEOUT = 120.0  # s for one download, retries included
RETRY_AFTER = 900.0  # s before a failed refresh is tried again (at most the source's own refresh)
RELOAD_RETRY = 60.0  # s before a reload that did not happen (another one running, or refused) is asked again
MAX_SLEEP = 300.0  # s between looks at the configuration (a reload may have added sources)
PARALLEL = 4  # downloads at once
_JITTER = 0.1

T = TypeVar("T")


def fetch_source(src: ListSource) -> Source:
    """The download description of a configured list (its catalogue fields included)."""
    return Source(
        id=src.id,
        url=src.url,
        format=src.format if src.format != "ut1" else "domains",
        category=src.category,
        match=src.match,
        sha256=src.sha256,
        max_bytes=src.max_bytes,
        refresh=src.refresh,
    )


def _parses_to_something(src: ListSource) -> Callable[[str], None]:
    """A ``validate`` callback for fetch: the downloaded file must yield at least one entry."""

    def validate(path: str) -> None:
        for _ in iter_entries(src.format, path, lambda p: ParseStats(p), src.match):
            return
        raise ListError(f"{src.id}: downloaded file parses to zero entries")

    return validate


def fetch_list(
    src: ListSource,
    state_dir: str,
    *,
    deadline: float | None = None,
    retries: int = 3,
    timeout: tuple[float, float] = (5, 30),
) -> FetchResult:
    """Download ``src`` into ``<state_dir>/lists``: pin, size cap and parse check applied, the last good
    copy kept on any failure; a list that also names a ``path`` gets a copy there."""
    cache = os.path.join(state_dir, "lists")
    os.makedirs(cache, exist_ok=True)
    res = fetch(
        fetch_source(src),
        cache,
        validate=_parses_to_something(src),
        deadline=deadline,
        retries=retries,
        timeout=timeout,
    )
    local = src.local_path(state_dir)
    if res.status == "not-modified":  # checked now and still current: its age (mtime) starts again
        _touch(res.path, local)
    if res.status == "failed" or not res.path or not local or os.path.abspath(res.path) == os.path.abspath(local):
        return res
    if res.status == "updated" or not os.path.exists(local):
        try:
            os.makedirs(os.path.dirname(local), exist_ok=True)
            shutil.copyfile(res.path, local)
        except OSError as exc:
            why = f"no space left on {os.path.dirname(local)}" if exc.errno == errno.ENOSPC else str(exc)
            return dataclasses.replace(res, status="failed", error=f"cannot copy into place: {why}")
    return res


def _touch(*paths: str | None) -> None:
    """Mark copies as verified now: a list's age (``filterproxy_lists_age_seconds``, the console's freshness,
    the fleet's stale-list alert) is the time since it was last fetched *or confirmed unchanged* (HTTP 304, same
    bytes), not since its content last changed, or a quiet upstream would look like a broken gateway."""
    for p in paths:
        if p and os.path.exists(p):
            with contextlib.suppress(OSError):
                os.utime(p)


def failure_reason(error: str | None) -> str:
    """The ``reason`` label (a bounded set, CONTRIBUTING.md rule 6) of a failed fetch's message."""
    e = error or ""
    for needle, reason in (
        ("sha256 mismatch", "sha256"),
        ("max_bytes", "too-large"),
        ("timed out", "timeout"),
        ("too slow", "timeout"),
        ("parses to zero", "empty"),
        ("rejected by validation", "parse"),
        ("HTTP ", "http"),
    ):
        if needle in e:
            return reason
    return "download"


async def _in_daemon_thread(fn: Callable[[], T]) -> T:
    """``fn()`` in a daemon thread: a download still running at shutdown never holds the exit (the
    executor's threads are joined at exit)."""
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[T] = loop.create_future()

    def settle(ok: bool, value: object) -> None:
        if not fut.done():
            fut.set_result(value) if ok else fut.set_exception(value)  # type: ignore[arg-type]

    def target() -> None:
        try:
            value: object = fn()
            ok = True
        except BaseException as exc:  # handed to the awaiting task, which logs it
            value, ok = exc, False
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nobody waits any more
            loop.call_soon_threadsafe(settle, ok, value)

    threading.Thread(target=target, name="filterproxy-lists-fetch", daemon=True).start()
    return await fut


def _jittered(seconds: float) -> float:
    return seconds * random.uniform(1 - _JITTER, 1 + _JITTER)


class ListRefresher:
    """The background task of ``filterproxy run`` that downloads lists and asks for reloads.

    ``config`` returns the configuration in use (a reload may replace it); ``reload`` rebuilds and
    swaps the snapshot, True when it did (or found nothing to change)."""

    def __init__(
        self,
        config: Callable[[], Config],
        reload: Callable[[], Awaitable[bool]],
        *,
        startup_deadline: float = STARTUP_DEADLINE,
        download_timeout: float = DOWNLOAD_TIMEOUT,
    ) -> None:
        self._config = config
        self._reload = reload
        self.startup_deadline = startup_deadline
        self.download_timeout = download_timeout
        self._due: dict[str, float] = {}  # list id -> wall-clock time of its next fetch
        self._reload_at: float | None = None  # a reload still owed, and when to ask again
        self._distribution_at: float | None = None  # wall-clock time of the next distribution update
        self._distribution_seen: object = None  # state.json's changed_at when the lists in use were loaded
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="filterproxy-lists-refresh")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def _sources(self) -> list[ListSource]:
        return [s for s in self._config().lists if s.url]

    async def _run(self) -> None:
        step: Callable[[], Awaitable[int]] = self.fetch_missing
        while True:
            try:
                await step()
            except Exception:  # a bug here must not take the resolver down: the lists on disk keep serving
                log.exception("lists: background download failed; trying again later")
            step = self.refresh_due
            await asyncio.sleep(self._sleep_time(time.time()))

    def _sleep_time(self, now: float) -> float:
        times = [self._due_at(s, now) for s in self._sources()]
        dist = self._distribution_due(now)
        if dist is not None:
            times.append(dist)
        if self._reload_at is not None:
            times.append(self._reload_at)
        return min(MAX_SLEEP, max(1.0, min(times, default=now + MAX_SLEEP) - now))

    def _due_at(self, src: ListSource, now: float) -> float:
        """When ``src`` is next fetched: known, or its last download's time plus its interval."""
        due = self._due.get(src.id)
        if due is None:
            data, meta = cache_paths(fetch_source(src), os.path.join(self._config().server.state_dir, "lists"))
            try:
                last = max(os.path.getmtime(p) for p in (data, meta) if os.path.exists(p))
                due = last + _jittered(src.refresh)
            except ValueError:  # neither file: never fetched
                due = now
            self._due[src.id] = due
        return due

    def _distribution_due(self, now: float) -> float | None:
        """When the distribution repository is next asked (None: no ``distribution.url``)."""
        cfg = self._config()
        if not cfg.distribution.url:
            return None
        if self._distribution_at is None:
            from filterproxy.distribution import gateway

            state = gateway.read_state(cfg.server.state_dir)
            self._distribution_seen = state.get("changed_at")
            last = state.get("last_success")
            if not isinstance(last, int | float):
                self._distribution_at = now  # nothing installed yet: at once
            else:
                wait = max(0.0, last + cfg.distribution.refresh - now)
                self._distribution_at = now + wait + random.uniform(0, cfg.distribution.jitter)
        return self._distribution_at

    async def update_distribution(self, now: float | None = None) -> int:
        """Update from the distribution repository when due; the number of lists installed (a reload is
        asked for when any was)."""
        from filterproxy.distribution import gateway

        now = time.time() if now is None else now
        due = self._distribution_due(now)
        if due is None or due > now:
            return 0
        cfg = self._config()
        self._distribution_at = now + cfg.distribution.refresh + random.uniform(0, cfg.distribution.jitter)
        res = await _in_daemon_thread(lambda: gateway.update(cfg.distribution, cfg.server.state_dir))
        if res.error is None:
            log.info("distribution: %d list(s) installed from %s", len(res.installed), res.url)
        # also lists installed meanwhile by 'filterproxy lists update' whose reload did not happen
        changed = gateway.read_state(cfg.server.state_dir).get("changed_at")
        if res.installed or changed != self._distribution_seen:
            self._distribution_seen = changed
            await self._ask_reload()
        return len(res.installed)

    async def fetch_missing(self) -> int:
        """Start-up: download every configured list without a local copy, within the time budget;
        reload when any arrived. The number of lists fetched."""
        state_dir = self._config().server.state_dir
        installed = await self.update_distribution()
        missing = [s for s in self._sources() if not os.path.exists(s.local_path(state_dir) or "")]
        if not missing:
            return installed
        log.info(
            "lists: fetching %d missing list%s in the background (%s); the lists on disk serve meanwhile",
            len(missing),
            "s" if len(missing) != 1 else "",
            ", ".join(s.id for s in missing),
        )
        async with self._lock:
            return await self._fetch_and_reload(missing, time.monotonic() + self.startup_deadline)

    async def refresh_due(self, now: float | None = None) -> int:
        """Fetch the lists whose refresh time has come (``now``: wall-clock time, the current one by
        default); reload when any changed, or when a reload is still owed. The number changed."""
        now = time.time() if now is None else now
        async with self._lock:
            await self.update_distribution(now)
            due = [s for s in self._sources() if self._due_at(s, now) <= now]
            changed = await self._fetch_and_reload(due, None) if due else 0
            if not changed and self._reload_at is not None and self._reload_at <= now:
                await self._ask_reload()
            return changed

    async def _fetch_and_reload(self, sources: list[ListSource], end: float | None) -> int:
        gate = asyncio.Semaphore(PARALLEL)
        results = await asyncio.gather(*(self._fetch_one(s, end, gate) for s in sources))
        changed = sum(results)
        if changed:
            await self._ask_reload()
        return changed

    async def _ask_reload(self) -> None:
        ok = await self._reload()
        self._reload_at = None if ok else time.time() + RELOAD_RETRY

    async def _fetch_one(self, src: ListSource, end: float | None, gate: asyncio.Semaphore) -> bool:
        """Fetch one list, log the outcome, schedule its next fetch; True when its content changed."""
        from filterproxy import metrics

        async with gate:
            deadline = time.monotonic() + self.download_timeout
            if end is not None:
                deadline = min(deadline, end)
            state_dir = self._config().server.state_dir
            if deadline <= time.monotonic():
                res = FetchResult(src.id, None, "failed", 0, "the start-up time budget ran out first", None, None)
            else:
                timeout = (5.0, min(15.0, self.download_timeout))  # a silent server: one download's time at most
                res = await _in_daemon_thread(lambda: fetch_list(src, state_dir, deadline=deadline, timeout=timeout))
        now = time.time()
        if res.status == "failed":
            self._due[src.id] = now + _jittered(min(src.refresh, RETRY_AFTER))
            metrics.LISTS_UPDATE_FAILURES.inc(src.id, failure_reason(res.error))
            kept = "keeping the last good copy" if res.path else "serving without it for now"
            log.warning("lists: %s: failed, %s: %s", src.id, kept, res.error)
            return False
        self._due[src.id] = now + _jittered(src.refresh)
        if res.status == "updated":
            log.info("lists: %s: fetched %s bytes", src.id, f"{res.bytes:,}")
            return True
        log.info("lists: %s: unchanged (%s bytes)", src.id, f"{res.bytes:,}")
        metrics.LISTS_LAST_SUCCESS.set(src.id, value=now)  # confirmed current (no reload: nothing changed)
        return False
