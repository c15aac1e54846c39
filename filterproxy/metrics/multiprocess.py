"""Counters shared by several processes through state files in one folder.

Each process writes its state atomically to ``DIR/<pid>-<token>.json`` every few seconds and at exit;
the process that is scraped adds up its own state, the files of the other processes, and an archive
of processes that have exited, so counters of dead workers stay counted. A high-water mark
of what was last exposed keeps every counter monotonic even when a worker is killed before its last
flush, or the serving process restarts. Gauges count for live processes only: they describe running
processes, counters are history.

This module works on metric *kinds* (``"counter"``, ``"histogram"``, ``"gauge"``, ``"info"``), so it
needs nothing of :mod:`filterproxy.metrics.types` at import time.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import secrets
import threading
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from filterproxy.fsutil import atomic_write

if TYPE_CHECKING:
    from filterproxy.metrics.types import MetricsCollector, _Metric

log = logging.getLogger("filterproxy.metrics")

_FILE_RE = re.compile(r"^(\d+)-([0-9a-f]+)\.json$")
_ARCHIVE = "archive.json"  # counters of exited processes
_EXPOSED = "exposed.json"  # high-water mark of counters already exposed
_LOCK = ".lock"
_FILE_PERMS = 0o640  # like the lock file: the service's group may read, others not (the folder is 0750)
_HISTORY = ("counter", "histogram")  # kinds that only go up and outlive their process


def _proc_start(pid: int) -> int | None:
    """Start time of ``pid`` in clock ticks since boot (tells a live process from a reused pid)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
        return int(data.rsplit(b")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def _alive(pid: int, start: int | None) -> bool:
    if os.path.isdir("/proc/self"):
        now = _proc_start(pid)
        return now is not None and (start is None or now == start)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Multiprocess:
    """Per-process state files in one directory, and their aggregation in the serving process."""

    def __init__(self, collector: MetricsCollector, directory: str, interval: float) -> None:
        self.collector = collector
        self.directory = os.path.abspath(directory)
        self.interval = interval
        os.makedirs(self.directory, mode=0o750, exist_ok=True)
        self._new_identity()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._write_lock = threading.Lock()
        self._warned: set[str] = set()

    def _new_identity(self) -> None:
        self.pid = os.getpid()
        self.token = secrets.token_hex(6)
        self.start_ticks = _proc_start(self.pid)
        self.filename = f"{self.pid}-{self.token}.json"

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="filterproxy-metrics-flush", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        self.write()

    def after_fork(self) -> None:
        self._write_lock = threading.Lock()
        self._new_identity()
        self.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.write()
            except Exception:
                log.exception("metrics: writing %s failed", self.filename)

    # writing --------------------------------------------------------------
    def write(self) -> None:
        """Write this process's state atomically (tmp file + rename)."""
        if os.getpid() != self.pid:  # forked without the at-fork hook (should not happen)
            return
        state = self.collector.local_state()
        doc = {
            "pid": self.pid,
            "start": self.start_ticks,
            "written": time.time(),
            "metrics": _encode(state, self.collector.metrics),
        }
        with self._write_lock:
            # rewritten every few seconds, so not fsynced: a power cut loses those seconds either way
            _write_json(os.path.join(self.directory, self.filename), doc, durable=False)

    # reading --------------------------------------------------------------
    def aggregate(self, own: dict[str, dict], metrics: Mapping[str, _Metric]) -> dict[str, dict]:
        """Own state + live files + archive of dead ones; compacts dead files; keeps counters monotonic."""
        os.makedirs(self.directory, mode=0o750, exist_ok=True)  # an admin may have cleaned it up
        lock_fd = os.open(os.path.join(self.directory, _LOCK), os.O_RDWR | os.O_CREAT, 0o640)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX)
            archive = _read_json(os.path.join(self.directory, _ARCHIVE)) or {"metrics": {}, "merged": []}
            live, dead = self._scan(set(archive.get("merged", [])))

            # total = own + live + archive + dead (not yet archived)
            total: dict[str, dict] = {}
            _merge(total, own, metrics, live=True)
            for doc in live:
                _merge(total, _decode(doc.get("metrics", {}), metrics), metrics, live=True)
            archived = _decode(archive.get("metrics", {}), metrics)
            _merge(total, archived, metrics, live=False)
            for _, doc in dead:
                _merge(total, _decode(doc.get("metrics", {}), metrics), metrics, live=False)

            if dead:
                self._compact(archive, archived, dead, metrics)
            return self._monotonic(total, metrics)
        finally:
            fcntl.flock(lock_fd, fcntl.LOCK_UN)
            os.close(lock_fd)

    def _scan(self, merged_names: set[str]) -> tuple[list[dict], list[tuple[str, dict]]]:
        """The state files of other processes not yet archived: (docs of live ones, (name, doc) of dead ones)."""
        live: list[dict] = []
        dead: list[tuple[str, dict]] = []
        for name in sorted(os.listdir(self.directory)):
            m = _FILE_RE.match(name)
            if not m or name == self.filename or name in merged_names:
                continue
            doc = _read_json(os.path.join(self.directory, name))
            pid = int(m.group(1))
            if doc is None:
                if not _alive(pid, None) and name not in self._warned:
                    self._warned.add(name)
                    log.warning("metrics: unreadable state file %s of exited process ignored", name)
                continue
            if _alive(pid, doc.get("start")):
                live.append(doc)
            else:
                dead.append((name, doc))
        return live, dead

    def _compact(
        self, archive: dict, archived: dict[str, dict], dead: list[tuple[str, dict]], metrics: Mapping[str, _Metric]
    ) -> None:
        """Fold exited processes' counters into the archive, then delete their files (crash-safe:
        the archive names the files it already contains, so a crash in between never counts twice)."""
        for _, doc in dead:
            _merge(archived, _decode(doc.get("metrics", {}), metrics), metrics, live=False)
        present = set(os.listdir(self.directory))
        names = [n for n in archive.get("merged", []) if n in present] + [n for n, _ in dead]
        _write_json(os.path.join(self.directory, _ARCHIVE), {"metrics": _encode(archived, metrics), "merged": names})
        for name, _ in dead:
            try:
                os.unlink(os.path.join(self.directory, name))
            except FileNotFoundError:
                pass

    def _monotonic(self, total: dict[str, dict], metrics: Mapping[str, _Metric]) -> dict[str, dict]:
        """Never expose less than before: a worker killed before its last flush loses a few
        increments, and Prometheus would read any decrease as a reset (a false spike)."""
        path = os.path.join(self.directory, _EXPOSED)
        hwm = _decode((_read_json(path) or {}).get("metrics", {}), metrics)
        changed = False
        for name, series in total.items():
            m = metrics.get(name)
            if m is None or m.kind not in _HISTORY:
                continue
            old = hwm.get(name, {})
            for key, val in series.items():
                prev = old.get(key)
                if prev is None:
                    changed = True
                    continue
                series[key] = _at_least(prev, val, histogram=m.kind == "histogram")
                changed = changed or series[key] != prev
            for key, prev in old.items():  # a series that vanished (unreadable file) stays at its mark
                if key not in series:
                    series[key] = prev
        if changed or not os.path.exists(path):
            counters = {n: s for n, s in total.items() if n in metrics and metrics[n].kind in _HISTORY}
            _write_json(path, {"metrics": _encode(counters, metrics)})
        return total


def _at_least(prev: Any, val: Any, *, histogram: bool) -> Any:
    """``val`` raised to the high-water mark ``prev`` (bucket by bucket for a histogram)."""
    if histogram:
        return [max(p, v) for p, v in zip(prev, val)] if any(p > v for p, v in zip(prev, val)) else val
    return max(val, prev)


# ---------------------------------------------------------------- merging, one function per kind


def _merge_counters(acc: dict, series: Mapping, mode: str) -> None:
    for key, n in series.items():
        acc[key] = acc.get(key, 0) + n


def _merge_histograms(acc: dict, series: Mapping, mode: str) -> None:
    for key, s in series.items():
        prev = acc.get(key)
        acc[key] = list(s) if prev is None else [a + b for a, b in zip(prev, s)]


_COMBINE: dict[str, Callable[[float, float], float]] = {"sum": lambda a, b: a + b, "max": max, "min": min}


def _merge_gauges(acc: dict, series: Mapping, mode: str) -> None:
    """Gauges (and infos) by their ``multiprocess_mode``: ``mostrecent``, ``sum``, ``max`` or ``min``."""
    combine = _COMBINE.get(mode)
    for key, (val, ts) in series.items():
        prev = acc.get(key)
        if prev is None:
            acc[key] = (val, ts)
        elif combine is not None:
            acc[key] = (combine(prev[0], val), max(prev[1], ts))
        elif ts > prev[1]:
            acc[key] = (val, ts)


# kind → (merge function, does it count for exited processes too)
_MERGE: dict[str, tuple[Callable[[dict, Mapping, str], None], bool]] = {
    "counter": (_merge_counters, True),
    "histogram": (_merge_histograms, True),
    "gauge": (_merge_gauges, False),
    "info": (_merge_gauges, False),
}


def _merge(into: dict[str, dict], state: Mapping[str, Mapping], metrics: Mapping[str, _Metric], *, live: bool) -> None:
    for name, series in state.items():
        m = metrics.get(name)
        if m is None or m.kind not in _MERGE:  # derived values are computed after the merge
            continue
        acc = into.setdefault(name, {})
        merge, history = _MERGE[m.kind]
        if live or history:
            merge(acc, series, getattr(m, "multiprocess_mode", "mostrecent"))


# ---------------------------------------------------------------- the JSON form of a state


def _encode(state: Mapping[str, Mapping], metrics: Mapping[str, _Metric]) -> dict:
    out: dict[str, list] = {}
    for name, series in state.items():
        m = metrics.get(name)
        if m is None or not series:
            continue
        if m.kind in _HISTORY:
            out[name] = [[list(k), v] for k, v in series.items()]
        else:
            out[name] = [[list(k), list(v[0]) if isinstance(v[0], tuple) else v[0], v[1]] for k, v in series.items()]
    return out


def _decode_histogram(m: _Metric, rows: list) -> dict:
    width = len(m.buckets) + 2  # type: ignore[attr-defined]
    return {tuple(k): list(v) for k, v in rows if len(k) == len(m.labelnames) and len(v) == width}


def _decode_counter(m: _Metric, rows: list) -> dict:
    return {tuple(k): v for k, v in rows if len(k) == len(m.labelnames)}


def _decode_gauge(m: _Metric, rows: list) -> dict:
    return {tuple(k): (tuple(v) if isinstance(v, list) else v, ts) for k, v, ts in rows if len(k) == len(m.labelnames)}


# kind → decoder; every other kind (gauge, info) has rows of (key, value, time set)
_DECODE: dict[str, Callable[[Any, list], dict]] = {"counter": _decode_counter, "histogram": _decode_histogram}


def _decode(doc: Mapping[str, list], metrics: Mapping[str, _Metric]) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for name, rows in doc.items():
        m = metrics.get(name)
        if m is None:
            continue  # a metric a newer/older version defined: ignore
        try:
            out[name] = _DECODE.get(m.kind, _decode_gauge)(m, rows)
        except (TypeError, ValueError):
            log.warning("metrics: malformed state for %s ignored", name)
    return out


def _read_json(path: str) -> dict | None:
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
        return doc if isinstance(doc, dict) else None
    except (OSError, ValueError):
        return None


def _write_json(path: str, doc: dict, *, durable: bool = True) -> None:
    atomic_write(path, json.dumps(doc, separators=(",", ":")), perms=_FILE_PERMS, durable=durable)
