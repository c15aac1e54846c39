"""Every filterproxy metric, defined once, exposed through one registry.

Hot paths (a DNS server answering tens of thousands of queries a second in Python) never call
prometheus_client: they count in plain dicts through the small classes below, and a custom collector
turns that state into metric families only when someone scrapes or pushes.

Cost on the hot path::

    DNS_QUERIES.inc(group, qtype, action, protocol)      # one dict lookup + store
    DNS_UPSTREAM_DURATION.observe(0.012, upstream)       # + one bisect

Labels only ever take values from bounded sets (CONTRIBUTING.md rule 6). Each label has a
:class:`LabelSet`: known values, plus at most ``extra`` further values learned at run time (custom
groups, configured list ids); anything beyond folds to ``"other"``. Values are checked once, the first
time a label combination is seen, never per call. Domains, URLs and client addresses are never labels.

Several processes: :func:`enable_multiprocess` makes each process write its state atomically to
``DIR/<pid>-<token>.json`` every few seconds and at exit; the process that is scraped (or pushes) adds
up its own state, the files of the other processes, and an archive of processes that have exited, so
counters of dead workers stay counted. A high-water mark of what was last exposed keeps every counter
monotonic even when a worker is killed before its last flush, or the serving process restarts.

Thread safety: ``inc``/``observe`` are not locked (a lock would double their cost). The serving paths
are single-threaded event loops; a rare lost increment between two threads racing on the same series
is an accepted inaccuracy, never a crash.
"""

from __future__ import annotations

import atexit
import base64
import bisect
import enum
import fcntl
import gzip
import hashlib
import hmac
import json
import logging
import math
import os
import platform
import re
import secrets
import socket
import ssl
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import basic_auth_handler, choose_encoder, push_to_gateway
from prometheus_client.registry import Collector

log = logging.getLogger("filterproxy.metrics")

__all__ = [
    "Counter", "Gauge", "Histogram", "Info", "Derived", "LabelSet", "MetricsCollector", "COLLECTOR", "REGISTRY",
    "enable_multiprocess", "flush", "serve", "MetricsServer", "Pusher", "configure_labels", "parse_listen",
    "DEFAULT_LISTEN",
]

DEFAULT_LISTEN = "127.0.0.1:9108"
OTHER = "other"
NAMESPACE = "filterproxy"

# Above this many raw (non-canonical) label tuples per metric, new ones are folded on every call.
_ALIAS_LIMIT = 4096
# Values learned at run time: no dots or colons, so a domain or an address can never become one.
_LEARNED_VALUE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_+-]{0,63}$")
# Values declared from the configuration (list and group ids may contain dots).
_CONFIGURED_VALUE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:+-]{0,63}$")


# --------------------------------------------------------------------------- label sets

class LabelSet:
    """A bounded set of values for one label.

    ``known`` values are always accepted; up to ``extra`` more (matching a conservative pattern) are
    learned the first time they are seen; everything else becomes ``"other"``. ``None`` becomes
    ``"none"`` and enum members their value, so callers may pass ``Verdict`` fields as they are.
    """

    def __init__(self, name: str, known: Iterable[str] = (), *, extra: int = 0,
                 aliases: Mapping[Any, str] | None = None) -> None:
        self.name = name
        self._known: set[str] = set(known)
        self._extra = extra
        self._learned: set[str] = set()
        self._aliases = dict(aliases or {})
        self._lock = threading.Lock()

    @property
    def values(self) -> frozenset[str]:
        """Every value currently accepted (known and learned)."""
        return frozenset(self._known | self._learned)

    def add(self, values: Iterable[str]) -> None:
        """Accept these values (e.g. group ids or list ids from the configuration)."""
        with self._lock:
            for v in values:
                v = str(v)
                if _CONFIGURED_VALUE.match(v):
                    self._known.add(v)
                    self._learned.discard(v)

    def fold(self, value: Any) -> str:
        """The value to expose for ``value``: itself when accepted, else ``"other"``."""
        if value is None:
            value = "none"
        elif isinstance(value, enum.Enum):
            value = value.value if isinstance(value.value, str) else value.name.lower()
        elif type(value) is not str:
            alias = self._aliases.get(value)
            value = alias if alias is not None else str(value)
        if value in self._known or value in self._learned:
            return value
        alias = self._aliases.get(value)
        if alias is not None:
            return alias
        if len(self._learned) < self._extra and _LEARNED_VALUE.match(value):
            with self._lock:
                if len(self._learned) < self._extra:
                    self._learned.add(value)
                    return value
        return OTHER


DEFAULT_GROUPS = ("primary", "lower-secondary", "upper-secondary", "staff", "child", "teen", "adult")
DEFAULT_CATEGORIES = ("adult", "gambling", "violence", "drugs", "dating", "social", "games", "chat", "bypass",
                      "malware", "phishing", "illegal")
QTYPES = ("A", "AAAA", "CNAME", "MX", "TXT", "NS", "SOA", "PTR", "SRV", "HTTPS", "SVCB", "ANY", "CAA", "DS",
          "DNSKEY", "NAPTR")
_QTYPE_CODES = {1: "A", 28: "AAAA", 5: "CNAME", 15: "MX", 16: "TXT", 2: "NS", 6: "SOA", 12: "PTR", 33: "SRV",
                65: "HTTPS", 64: "SVCB", 255: "ANY", 257: "CAA", 43: "DS", 48: "DNSKEY", 35: "NAPTR"}
# verdict.Reason values (kept literal so metrics imports nothing of the engine)
REASONS = ("legal", "allowlist", "schedule", "category", "blocklist", "bypass", "safesearch", "default",
           "unknown-client", "error")

GROUP = LabelSet("group", DEFAULT_GROUPS + ("default", "unknown"), extra=32)
CATEGORY = LabelSet("category", DEFAULT_CATEGORIES + ("none",), extra=16)
LIST = LabelSet("list", (), extra=128)
UPSTREAM = LabelSet("upstream", (), extra=16)
QTYPE = LabelSet("qtype", QTYPES, aliases={**_QTYPE_CODES, **{q.lower(): q for q in QTYPES}})
ACTION = LabelSet("action", ("allow", "block", "rewrite"), extra=4)
PROTOCOL = LabelSet("protocol", ("udp", "tcp", "dot", "doh", "doq"))
REASON = LabelSet("reason", REASONS, extra=4)
REFUSED_REASON = LabelSet("reason", ("acl", "unknown-client", "ratelimit", "qtype", "opcode", "any"), extra=4)
LIST_FAILURE_REASON = LabelSet("reason", ("download", "http", "timeout", "parse", "empty", "signature",
                                          "expired", "too-large", "io", "config"), extra=4)
RELOAD_RESULT = LabelSet("result", ("success", "failure", "unchanged"))
UPSTREAM_ERROR_KIND = LabelSet("kind", ("timeout", "refused", "servfail", "network", "tls", "protocol", "http",
                                        "truncated"), extra=4)
DNS_ERROR_KIND = LabelSet("kind", ("exception", "timeout", "policy", "cache", "upstream", "encode", "decode"),
                          extra=16)
HTTP_HOOK = LabelSet("hook", ("requestheaders", "request", "responseheaders", "response", "error", "http_connect",
                              "tls_clienthello", "tls_start_client", "tls_start_server", "websocket_message",
                              "client_connected", "server_connect", "configure"), extra=8)
ENGINE = LabelSet("engine", ("google", "youtube", "bing", "duckduckgo", "yandex", "yahoo", "ecosia", "brave",
                             "qwant", "coccoc"), extra=8)
DNS_CACHE_KIND = LabelSet("cache", ("answers", "packed"))
IMAGE_MATCH_KIND = LabelSet("kind", ("exact", "pdq", "md5", "sha1", "sha256"), extra=4)


def configure_labels(*, groups: Iterable[str] = (), lists: Iterable[str] = (), upstreams: Iterable[str] = (),
                     categories: Iterable[str] = ()) -> None:
    """Declare the configured group ids, list ids, upstream names and categories as label values.

    Call it after loading the configuration. Values not declared are still learned (bounded); this
    only makes sure configured ones never fold to ``"other"`` because of the learning limit.
    """
    GROUP.add(groups)
    LIST.add(lists)
    UPSTREAM.add(upstreams)
    CATEGORY.add(categories)


def _clean_info(value: Any, limit: int = 64) -> str:
    """Info label values (list version, publisher) are free text from files: printable, bounded."""
    if isinstance(value, enum.Enum):
        value = value.value
    text = "".join(ch for ch in str(value) if ch.isprintable())
    return text[:limit] if text else "unknown"


# --------------------------------------------------------------------------- metric classes

class _Metric:
    """Common part: name, help text, label names and their bounded sets."""

    kind = ""

    def __init__(self, name: str, documentation: str, labels: Sequence[tuple[str, LabelSet]] = (), *,
                 collector: MetricsCollector | None = None) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames: tuple[str, ...] = tuple(n for n, _ in labels)
        self._sets: tuple[LabelSet, ...] = tuple(s for _, s in labels)
        self._lock = threading.Lock()
        (collector if collector is not None else COLLECTOR).register(self)

    def _fold(self, key: tuple) -> tuple[str, ...]:
        if len(key) != len(self._sets):
            raise ValueError(f"{self.name}: expected labels {self.labelnames}, got {len(key)} values {key!r}")
        return tuple(s.fold(v) for s, v in zip(self._sets, key))

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}{{{','.join(self.labelnames)}}}>"


class Counter(_Metric):
    """A labelled counter kept in a plain ``dict[tuple[str, ...], int]``.

    ``inc`` costs one dict lookup and one store. Label values are checked the first time a
    combination is seen (slow path), never again.
    """

    kind = "counter"

    def __init__(self, name: str, documentation: str, labels: Sequence[tuple[str, LabelSet]] = (), *,
                 collector: MetricsCollector | None = None) -> None:
        if not name.endswith("_total"):
            raise ValueError(f"counter {name} must end with _total")
        super().__init__(name, documentation, labels, collector=collector)
        self._values: dict[tuple, float] = {}
        self._alias: dict[tuple, tuple[str, ...]] = {}

    def inc(self, *labelvalues: Any, amount: float = 1) -> None:
        """Add ``amount`` (default 1, never negative) to the series of these label values."""
        v = self._values
        try:
            v[labelvalues] += amount
        except KeyError:
            self._first(labelvalues, amount)

    def _first(self, key: tuple, amount: float) -> None:
        if amount < 0:
            raise ValueError(f"{self.name}: counters only go up (amount={amount})")
        folded = self._fold(key)
        with self._lock:
            v = self._values
            if folded == key:
                v[folded] = v.get(folded, 0) + amount
            elif len(self._alias) < _ALIAS_LIMIT:
                self._alias[key] = folded
                v[key] = v.get(key, 0) + amount
            else:
                v[folded] = v.get(folded, 0) + amount

    def init(self, *labelvalues: Any) -> None:
        """Create the series at 0, so the first real increment is seen as an increase."""
        self.inc(*labelvalues, amount=0)

    def snapshot(self) -> dict[tuple[str, ...], float]:
        """Folded copy of this process's state (``dict(...)`` copies atomically under the GIL)."""
        values = dict(self._values)
        alias = self._alias
        out: dict[tuple[str, ...], float] = {}
        for k, n in values.items():
            f = alias.get(k, k)
            out[f] = out.get(f, 0) + n
        return out

    def value(self, *labelvalues: Any) -> float:
        """This process's count for these label values (for tests and `filterproxy` status output)."""
        return self.snapshot().get(self._fold(labelvalues), 0)

    def _reset(self) -> None:
        with self._lock:
            self._values.clear()
            self._alias.clear()

    def family(self, state: Mapping[tuple[str, ...], float]) -> Metric:
        fam = CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for key in sorted(state):
            fam.add_metric(key, state[key])
        return fam


class Histogram(_Metric):
    """Fixed buckets in plain int lists: ``observe(value, *labelvalues)`` is one bisect and two adds."""

    kind = "histogram"

    def __init__(self, name: str, documentation: str, labels: Sequence[tuple[str, LabelSet]] = (), *,
                 buckets: Sequence[float], collector: MetricsCollector | None = None) -> None:
        if list(buckets) != sorted(buckets) or not buckets:
            raise ValueError(f"{name}: buckets must be sorted and non-empty")
        super().__init__(name, documentation, labels, collector=collector)
        self.buckets: tuple[float, ...] = tuple(float(b) for b in buckets if b != math.inf)
        # per series: [count in bucket 0, ..., count in +Inf bucket, sum]
        self._values: dict[tuple, list] = {}
        self._alias: dict[tuple, tuple[str, ...]] = {}

    def observe(self, value: float, *labelvalues: Any) -> None:
        """Record one observation (seconds, for the duration histograms)."""
        try:
            s = self._values[labelvalues]
        except KeyError:
            s = self._first(labelvalues)
        s[bisect.bisect_left(self.buckets, value)] += 1
        s[-1] += value

    def _first(self, key: tuple) -> list:
        folded = self._fold(key)
        with self._lock:
            v = self._values
            if folded == key:
                return v.setdefault(folded, [0] * (len(self.buckets) + 1) + [0.0])
            if len(self._alias) < _ALIAS_LIMIT:
                self._alias[key] = folded
                return v.setdefault(key, [0] * (len(self.buckets) + 1) + [0.0])
            return v.setdefault(folded, [0] * (len(self.buckets) + 1) + [0.0])

    def snapshot(self) -> dict[tuple[str, ...], list]:
        values = {k: list(s) for k, s in list(self._values.items())}
        out: dict[tuple[str, ...], list] = {}
        for k, s in values.items():
            f = self._alias.get(k, k)
            acc = out.get(f)
            out[f] = s if acc is None else [a + b for a, b in zip(acc, s)]
        return out

    def _reset(self) -> None:
        with self._lock:
            self._values.clear()
            self._alias.clear()

    def family(self, state: Mapping[tuple[str, ...], list]) -> Metric:
        fam = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        bounds = [_fmt_le(b) for b in self.buckets] + ["+Inf"]
        for key in sorted(state):
            s = state[key]
            cum, buckets = 0, []
            for le, n in zip(bounds, s[:-1]):
                cum += n
                buckets.append((le, cum))
            fam.add_metric(list(key), buckets, s[-1])
        return fam


def _fmt_le(b: float) -> str:
    return repr(float(b)) if b != int(b) or abs(b) >= 1e15 else f"{float(b):.1f}"


class Gauge(_Metric):
    """A labelled gauge: ``set(*labelvalues, value=...)``, ``inc``/``dec``, or a function read at scrape time.

    ``multiprocess_mode`` says how the values of several live processes combine: ``"mostrecent"``
    (the last one set wins), ``"sum"`` or ``"max"``. Gauges of exited processes are dropped: gauges
    describe running processes, counters are history.
    """

    kind = "gauge"
    MODES = ("mostrecent", "sum", "max")

    def __init__(self, name: str, documentation: str, labels: Sequence[tuple[str, LabelSet]] = (), *,
                 multiprocess_mode: str = "mostrecent", collector: MetricsCollector | None = None) -> None:
        if name.endswith("_total"):
            raise ValueError(f"gauge {name} must not end with _total")
        if multiprocess_mode not in self.MODES:
            raise ValueError(f"{name}: multiprocess_mode must be one of {self.MODES}")
        super().__init__(name, documentation, labels, collector=collector)
        self.multiprocess_mode = multiprocess_mode
        self._values: dict[tuple[str, ...], tuple[float, float]] = {}  # key → (value, time set)
        self._function: Callable[[], Any] | None = None

    def set(self, *labelvalues: Any, value: float) -> None:
        """Set the series of these label values to ``value``."""
        key = self._fold(labelvalues)
        self._values[key] = (float(value), time.time())

    def inc(self, *labelvalues: Any, amount: float = 1) -> None:
        key = self._fold(labelvalues)
        with self._lock:
            old = self._values.get(key, (0.0, 0.0))[0]
            self._values[key] = (old + amount, time.time())

    def dec(self, *labelvalues: Any, amount: float = 1) -> None:
        self.inc(*labelvalues, amount=-amount)

    def remove(self, *labelvalues: Any) -> None:
        """Forget one series (e.g. a list that was removed from the configuration)."""
        self._values.pop(self._fold(labelvalues), None)

    def clear(self) -> None:
        self._values.clear()

    def set_function(self, fn: Callable[[], Any] | None) -> None:
        """Read the value(s) at scrape time. Unlabelled gauge: ``fn() -> float``; labelled gauge:
        ``fn() -> Mapping[tuple[label values...], float]``. ``None`` removes the function."""
        self._function = fn

    def value(self, *labelvalues: Any) -> float | None:
        state = self.snapshot()
        hit = state.get(self._fold(labelvalues))
        return None if hit is None else hit[0]

    def snapshot(self) -> dict[tuple[str, ...], tuple[Any, float]]:
        out = dict(self._values)
        fn = self._function
        if fn is not None:
            now = time.time()
            try:
                result = fn()
            except Exception:  # a broken callback must not break the scrape
                log.exception("metrics: gauge function of %s failed", self.name)
                result = None
            if result is not None:
                if self.labelnames:
                    for k, val in dict(result).items():
                        k = k if isinstance(k, tuple) else (k,)
                        out[self._fold(k)] = (float(val), now)
                else:
                    out[()] = (float(result), now)
        return out

    def _reset(self) -> None:  # gauges survive fork: they are state, not history
        pass

    def family(self, state: Mapping[tuple[str, ...], tuple[Any, float]]) -> Metric:
        fam = GaugeMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for key in sorted(state):
            fam.add_metric(key, state[key][0])
        return fam


class Info(Gauge):
    """An info-style gauge (value 1) whose info labels change as a whole.

    ``key`` labels select the slot (e.g. ``list``); ``set(*key_values, *info_values)`` replaces the
    previous info of that slot, so an old version never lingers as a second series.
    """

    kind = "info"

    def __init__(self, name: str, documentation: str, keys: Sequence[tuple[str, LabelSet]],
                 infos: Sequence[str], *, collector: MetricsCollector | None = None) -> None:
        super().__init__(name, documentation, keys, collector=collector)
        self.infonames: tuple[str, ...] = tuple(infos)

    def set(self, *labelvalues: Any, value: float = 1) -> None:  # type: ignore[override]
        n = len(self.labelnames)
        if len(labelvalues) != n + len(self.infonames):
            raise ValueError(f"{self.name}: expected {self.labelnames + self.infonames}, got {labelvalues!r}")
        key = self._fold(labelvalues[:n])
        self._values[key] = (tuple(_clean_info(v) for v in labelvalues[n:]), time.time())

    def info(self, *keyvalues: Any) -> tuple[str, ...] | None:
        hit = self._values.get(self._fold(keyvalues))
        return None if hit is None else hit[0]

    def inc(self, *a: Any, **k: Any) -> None:  # pragma: no cover - guard
        raise TypeError("Info has no inc")

    def family(self, state: Mapping[tuple[str, ...], tuple[Any, float]]) -> Metric:
        fam = GaugeMetricFamily(self.name, self.documentation, labels=self.labelnames + self.infonames)
        for key in sorted(state):
            fam.add_metric(list(key) + list(state[key][0]), 1)
        return fam


class Derived(_Metric):
    """A gauge computed at scrape time from another gauge's (aggregated) state."""

    kind = "derived"

    def __init__(self, name: str, documentation: str, source: Gauge,
                 fn: Callable[[float, float], float], *, collector: MetricsCollector | None = None) -> None:
        super().__init__(name, documentation, tuple(zip(source.labelnames, source._sets)), collector=collector)
        self.source = source
        self.fn = fn

    def compute(self, source_state: Mapping[tuple[str, ...], tuple[float, float]], now: float) -> Metric:
        fam = GaugeMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for key in sorted(source_state):
            fam.add_metric(key, self.fn(source_state[key][0], now))
        return fam


# --------------------------------------------------------------------------- collector + multiprocess

class MetricsCollector(Collector):
    """Turns the plain-Python state of every metric into metric families at scrape time."""

    def __init__(self) -> None:
        self.metrics: dict[str, _Metric] = {}
        self._mp: _Multiprocess | None = None

    def register(self, metric: _Metric) -> None:
        if metric.name in self.metrics:
            raise ValueError(f"metric {metric.name} defined twice")
        self.metrics[metric.name] = metric

    def local_state(self) -> dict[str, dict]:
        return {name: m.snapshot() for name, m in self.metrics.items() if not isinstance(m, Derived)}

    def describe(self) -> Iterator[Metric]:
        for m in self.metrics.values():
            if isinstance(m, Histogram):
                yield HistogramMetricFamily(m.name, m.documentation, labels=m.labelnames)
            elif isinstance(m, Counter):
                yield CounterMetricFamily(m.name, m.documentation, labels=m.labelnames)
            else:
                yield GaugeMetricFamily(m.name, m.documentation, labels=m.labelnames)

    def collect(self) -> Iterator[Metric]:
        state = self.local_state()
        if self._mp is not None:
            state = self._mp.aggregate(state, self.metrics)
        now = time.time()
        for name, m in self.metrics.items():
            if isinstance(m, Derived):
                yield m.compute(state.get(m.source.name, {}), now)
            else:
                yield m.family(state.get(name, {}))

    def reset(self) -> None:
        """Zero every counter and histogram of this process (tests, and the child after a fork)."""
        for m in self.metrics.values():
            if isinstance(m, (Counter, Histogram)):
                m._reset()

    # multiprocess --------------------------------------------------------
    def enable_multiprocess(self, directory: str, *, interval: float = 5.0) -> None:
        if self._mp is not None:
            if os.path.abspath(directory) == self._mp.directory:
                return
            self._mp.stop()
        self._mp = _Multiprocess(self, directory, interval)
        self._mp.start()

    def disable_multiprocess(self) -> None:
        if self._mp is not None:
            self._mp.stop()
            self._mp = None

    def flush(self) -> None:
        if self._mp is not None:
            self._mp.write()

    def _after_fork_in_child(self) -> None:
        self.reset()
        if self._mp is not None:
            self._mp.after_fork()


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


_FILE_RE = re.compile(r"^(\d+)-([0-9a-f]+)\.json$")
_ARCHIVE = "archive.json"  # counters of exited processes
_EXPOSED = "exposed.json"  # high-water mark of counters already exposed
_LOCK = ".lock"


class _Multiprocess:
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
        doc = {"pid": self.pid, "start": self.start_ticks, "written": time.time(),
               "metrics": _encode(state, self.collector.metrics)}
        with self._write_lock:
            _atomic_json(os.path.join(self.directory, self.filename), doc)

    # reading --------------------------------------------------------------
    def aggregate(self, own: dict[str, dict], metrics: Mapping[str, _Metric]) -> dict[str, dict]:
        """Own state + live files + archive of dead ones; compacts dead files; keeps counters monotonic."""
        os.makedirs(self.directory, mode=0o750, exist_ok=True)  # an admin may have cleaned it up
        lock_fd = os.open(os.path.join(self.directory, _LOCK), os.O_RDWR | os.O_CREAT, 0o640)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX)
            archive = _read_json(os.path.join(self.directory, _ARCHIVE)) or {"metrics": {}, "merged": []}
            merged_names = set(archive.get("merged", []))
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
            total = self._monotonic(total, metrics)
            return total
        finally:
            fcntl.flock(lock_fd, fcntl.LOCK_UN)
            os.close(lock_fd)

    def _compact(self, archive: dict, archived: dict[str, dict], dead: list[tuple[str, dict]],
                 metrics: Mapping[str, _Metric]) -> None:
        """Fold exited processes' counters into the archive, then delete their files (crash-safe:
        the archive names the files it already contains, so a crash in between never counts twice)."""
        for _, doc in dead:
            _merge(archived, _decode(doc.get("metrics", {}), metrics), metrics, live=False)
        present = set(os.listdir(self.directory))
        names = [n for n in archive.get("merged", []) if n in present] + [n for n, _ in dead]
        _atomic_json(os.path.join(self.directory, _ARCHIVE),
                     {"metrics": _encode(archived, metrics), "merged": names})
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
            if not isinstance(m, (Counter, Histogram)):
                continue
            old = hwm.get(name, {})
            for key, val in series.items():
                prev = old.get(key)
                if prev is None:
                    changed = True
                    continue
                if isinstance(m, Histogram):
                    if any(p > v for p, v in zip(prev, val)):
                        series[key] = [max(p, v) for p, v in zip(prev, val)]
                    if series[key] != prev:
                        changed = True
                elif prev > val:
                    series[key] = prev
                elif val != prev:
                    changed = True
            for key, prev in old.items():  # a series that vanished (unreadable file) stays at its mark
                if key not in series:
                    series[key] = prev
        if changed or not os.path.exists(path):
            counters = {n: s for n, s in total.items() if isinstance(metrics.get(n), (Counter, Histogram))}
            _atomic_json(path, {"metrics": _encode(counters, metrics)})
        return total


def _merge(into: dict[str, dict], state: Mapping[str, Mapping], metrics: Mapping[str, _Metric], *,
           live: bool) -> None:
    for name, series in state.items():
        m = metrics.get(name)
        if m is None or isinstance(m, Derived):
            continue
        acc = into.setdefault(name, {})
        if isinstance(m, Histogram):
            for key, s in series.items():
                prev = acc.get(key)
                acc[key] = list(s) if prev is None else [a + b for a, b in zip(prev, s)]
        elif isinstance(m, Counter):
            for key, n in series.items():
                acc[key] = acc.get(key, 0) + n
        elif live:  # gauges (and infos) of live processes only
            mode = m.multiprocess_mode  # type: ignore[attr-defined]
            for key, (val, ts) in series.items():
                prev = acc.get(key)
                if prev is None:
                    acc[key] = (val, ts)
                elif mode == "sum":
                    acc[key] = (prev[0] + val, max(prev[1], ts))
                elif mode == "max":
                    acc[key] = (max(prev[0], val), max(prev[1], ts))
                elif ts > prev[1]:
                    acc[key] = (val, ts)


def _encode(state: Mapping[str, Mapping], metrics: Mapping[str, _Metric]) -> dict:
    out: dict[str, list] = {}
    for name, series in state.items():
        m = metrics.get(name)
        if m is None or not series:
            continue
        if isinstance(m, (Counter, Histogram)):
            out[name] = [[list(k), v] for k, v in series.items()]
        else:
            out[name] = [[list(k), list(v[0]) if isinstance(v[0], tuple) else v[0], v[1]] for k, v in series.items()]
    return out


def _decode(doc: Mapping[str, list], metrics: Mapping[str, _Metric]) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for name, rows in doc.items():
        m = metrics.get(name)
        if m is None:
            continue  # a metric a newer/older version defined: ignore
        series: dict = {}
        try:
            if isinstance(m, Histogram):
                width = len(m.buckets) + 2
                for k, v in rows:
                    if len(k) == len(m.labelnames) and len(v) == width:
                        series[tuple(k)] = list(v)
            elif isinstance(m, Counter):
                for k, v in rows:
                    if len(k) == len(m.labelnames):
                        series[tuple(k)] = v
            else:
                for k, v, ts in rows:
                    if len(k) == len(m.labelnames):
                        series[tuple(k)] = (tuple(v) if isinstance(v, list) else v, ts)
        except (TypeError, ValueError):
            log.warning("metrics: malformed state for %s ignored", name)
            continue
        out[name] = series
    return out


def _read_json(path: str) -> dict | None:
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
        return doc if isinstance(doc, dict) else None
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return None


def _atomic_json(path: str, doc: dict) -> None:
    d, base = os.path.split(path)
    tmp = os.path.join(d, f".tmp-{base}-{os.getpid()}-{threading.get_ident()}")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(doc, f, separators=(",", ":"))
    os.replace(tmp, path)


# --------------------------------------------------------------------------- the registry

COLLECTOR = MetricsCollector()
REGISTRY = CollectorRegistry(auto_describe=False)

_DNS_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
_IMAGE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)

# ---- build
BUILD_INFO = Info(
    "filterproxy_build_info", "filterproxy version and Python version (value is always 1).",
    keys=(), infos=("version", "python"))

# ---- dns
DNS_QUERIES = Counter(
    "filterproxy_dns_queries_total", "DNS queries answered, by age group, query type, action and transport.",
    (("group", GROUP), ("qtype", QTYPE), ("action", ACTION), ("protocol", PROTOCOL)))
DNS_BLOCKED = Counter(
    "filterproxy_dns_blocked_total", "DNS queries blocked, by age group, category and reason.",
    (("group", GROUP), ("category", CATEGORY), ("reason", REASON)))
DNS_CACHE_HITS = Counter("filterproxy_dns_cache_hits_total", "DNS answers served from the cache.")
DNS_CACHE_MISSES = Counter("filterproxy_dns_cache_misses_total", "DNS lookups not found in the cache.")
DNS_CACHE_ENTRIES = Gauge(
    "filterproxy_dns_cache_entries", "Live entries in the DNS caches: upstream answers (shared by all groups) and "
    "packed replies (all groups); expired ones are swept within seconds.", (("cache", DNS_CACHE_KIND),),
    multiprocess_mode="sum")
DNS_UPSTREAM_DURATION = Histogram(
    "filterproxy_dns_upstream_duration_seconds",
    "Time of each exchange with an upstream resolver, failures included (until the error).",
    (("upstream", UPSTREAM),), buckets=_DNS_BUCKETS)
DNS_UPSTREAM_ERRORS = Counter(
    "filterproxy_dns_upstream_errors_total", "Failed exchanges with an upstream resolver, by kind.",
    (("upstream", UPSTREAM), ("kind", UPSTREAM_ERROR_KIND)))
DNS_RATELIMITED = Counter(
    "filterproxy_dns_ratelimited_total", "DNS queries dropped by the per-client rate limit.", (("group", GROUP),))
DNS_REFUSED = Counter(
    "filterproxy_dns_refused_total", "DNS queries answered REFUSED, by reason.", (("reason", REFUSED_REASON),))
DNS_MALFORMED = Counter("filterproxy_dns_malformed_total", "DNS messages that could not be parsed.")
DNS_ERRORS = Counter(
    "filterproxy_dns_errors_total", "Internal errors in the DNS path, answered SERVFAIL (fail closed).",
    (("kind", DNS_ERROR_KIND),))

# ---- http
HTTP_REQUESTS = Counter(
    "filterproxy_http_requests_total", "HTTP(S) requests seen by the proxy, by age group, action and reason.",
    (("group", GROUP), ("action", ACTION), ("reason", REASON)))
HTTP_BLOCKED = Counter(
    "filterproxy_http_blocked_total", "HTTP(S) requests blocked, by age group and category.",
    (("group", GROUP), ("category", CATEGORY)))
HTTP_ERRORS = Counter(
    "filterproxy_http_errors_total", "Exceptions in a proxy hook that blocked the flow (fail closed), by hook.",
    (("hook", HTTP_HOOK),))
HTTP_SAFESEARCH_REWRITES = Counter(
    "filterproxy_http_safesearch_rewrites_total", "Search requests rewritten to SafeSearch, by group and engine.",
    (("group", GROUP), ("engine", ENGINE)))

# ---- lists
LISTS_ENTRIES = Gauge(
    "filterproxy_lists_entries", "Entries in the loaded snapshot, by list and category.",
    (("list", LIST), ("category", CATEGORY)))
LISTS_INFO = Info(
    "filterproxy_lists_info", "Version of each loaded list (value is always 1).",
    keys=(("list", LIST),), infos=("version",))
LISTS_LAST_SUCCESS = Gauge(
    "filterproxy_lists_last_success_timestamp_seconds", "When each list was last fetched and verified (Unix time).",
    (("list", LIST),), multiprocess_mode="max")
LISTS_AGE = Derived(
    "filterproxy_lists_age_seconds", "Seconds since each list was last fetched and verified (computed at scrape).",
    LISTS_LAST_SUCCESS, lambda ts, now: max(0.0, now - ts))
LISTS_UPDATE_FAILURES = Counter(
    "filterproxy_lists_update_failures_total", "Failed list updates (the last good copy stays in use), by reason.",
    (("list", LIST), ("reason", LIST_FAILURE_REASON)))
LISTS_RELOADS = Counter(
    "filterproxy_lists_reloads_total", "Snapshot reloads, by result.", (("result", RELOAD_RESULT),))
BUNDLE_INFO = Info(
    "filterproxy_bundle_info", "Publisher and serial of the signed list bundle in use (value is always 1).",
    keys=(), infos=("publisher", "serial"))
BUNDLE_SERIAL = Gauge("filterproxy_bundle_serial", "Serial number of the signed list bundle in use.")

# ---- imagehash
IMAGEHASH_IMAGES = Counter("filterproxy_imagehash_images_total", "Images hashed by the proxy.")
IMAGEHASH_MATCHES = Counter(
    "filterproxy_imagehash_matches_total", "Images matching a hash list (blocked and reported), by list and kind.",
    (("list", LIST), ("kind", IMAGE_MATCH_KIND)))
IMAGEHASH_DURATION = Histogram(
    "filterproxy_imagehash_duration_seconds", "Time to decode and hash one image.", buckets=_IMAGE_BUCKETS)

# ---- reports
REPORTS_QUEUE_DEPTH = Gauge(
    "filterproxy_reports_queue_depth", "Reports waiting for delivery.", multiprocess_mode="sum")
REPORTS_DELIVERED = Counter("filterproxy_reports_delivered_total", "Reports delivered.")
REPORTS_DELIVERY_FAILURES = Counter("filterproxy_reports_delivery_failures_total", "Failed report deliveries.")


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("filterproxy")
    except Exception:
        import sys

        return getattr(sys.modules.get("filterproxy"), "__version__", "unknown")


BUILD_INFO.set(_version(), platform.python_version())

REGISTRY.register(COLLECTOR)
ProcessCollector(namespace="", registry=REGISTRY)
PlatformCollector(registry=REGISTRY)
GCCollector(registry=REGISTRY)

os.register_at_fork(after_in_child=COLLECTOR._after_fork_in_child)


def _flush_at_exit() -> None:
    try:
        COLLECTOR.flush()
    except Exception:  # at exit, never raise
        pass


atexit.register(_flush_at_exit)


def enable_multiprocess(directory: str, *, interval: float = 5.0) -> None:
    """Share counters between processes through ``directory`` (e.g. ``$STATE/metrics``).

    Call it in every process (workers and the one serving ``/metrics``), before forking or in each
    child. Each process writes its state every ``interval`` seconds and at exit (``atexit``: install a
    SIGTERM handler that exits normally, or call :func:`flush`); the serving process adds them up.
    A forked child starts its counters at zero under a new identity (an at-fork hook), so nothing
    the parent counted is counted twice.
    """
    COLLECTOR.enable_multiprocess(directory, interval=interval)


def flush() -> None:
    """Write this process's state now (no-op unless multiprocess is enabled)."""
    COLLECTOR.flush()


# --------------------------------------------------------------------------- serving

def parse_listen(listen: str, default_host: str = "127.0.0.1") -> tuple[str, int]:
    """``"HOST:PORT"``, ``"[V6]:PORT"``, ``":PORT"`` or ``"PORT"`` → (host, port); host defaults to loopback."""
    text = listen.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest.lstrip(":")
    elif text.count(":") == 1:
        host, port = text.split(":")
    elif text.isdigit():
        host, port = "", text
    else:
        raise ValueError(f"invalid listen address {listen!r} (expected HOST:PORT)")
    try:
        p = int(port)
    except ValueError:
        raise ValueError(f"invalid port in {listen!r}") from None
    if not 0 <= p < 65536:
        raise ValueError(f"invalid port in {listen!r}")
    return host or default_host, p


class _PasswordCheck:
    """Verify a Basic-auth password against a bcrypt (``$2b$…``) or SHA-256 (``sha256:HEX``/``HEX``) hash."""

    def __init__(self, user: str, hashed: str) -> None:
        self.user = user
        self.hashed = hashed.strip()
        self._ok_cache: set[bytes] = set()  # digests of header values already verified (bcrypt is slow)
        if self.hashed.startswith(("$2a$", "$2b$", "$2y$")):
            self.kind = "bcrypt"
            self._bcrypt = _bcrypt_verifier()
        else:
            hexpart = self.hashed[7:] if self.hashed.lower().startswith("sha256:") else self.hashed
            if not re.fullmatch(r"[0-9a-fA-F]{64}", hexpart):
                raise ValueError("basic_auth hash must be bcrypt ($2b$...) or sha256:<64 hex digits>")
            self.kind = "sha256"
            self._digest = bytes.fromhex(hexpart)

    def check_header(self, header: str | None) -> bool:
        if not header or not header.startswith("Basic "):
            return False
        tag = hashlib.sha256(header.encode()).digest()
        if tag in self._ok_cache:
            return True
        try:
            user, _, password = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8").partition(":")
        except (ValueError, UnicodeDecodeError):
            return False
        ok_user = hmac.compare_digest(user.encode(), self.user.encode())
        if self.kind == "sha256":
            ok_pw = hmac.compare_digest(hashlib.sha256(password.encode()).digest(), self._digest)
        else:
            ok_pw = self._bcrypt(password, self.hashed)
        if ok_user and ok_pw:
            if len(self._ok_cache) > 16:
                self._ok_cache.clear()
            self._ok_cache.add(tag)
            return True
        return False


def _bcrypt_verifier() -> Callable[[str, str], bool]:
    try:
        import bcrypt  # type: ignore[import-not-found]

        return lambda pw, h: bcrypt.checkpw(pw.encode(), h.encode())
    except ImportError:
        pass
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            import crypt  # Python < 3.13; glibc/libxcrypt understands $2b$
        except ImportError:
            crypt = None  # type: ignore[assignment]
    if crypt is not None and (crypt.crypt("x", "$2b$04$" + "a" * 22) or "").startswith("$2b$"):
        return lambda pw, h: hmac.compare_digest((crypt.crypt(pw, h) or "").encode(), h.encode())
    raise ValueError("bcrypt hashes need the 'bcrypt' package here; use sha256:<hex> or install bcrypt")


class MetricsServer:
    """A running ``/metrics`` + ``/healthz`` HTTP(S) server in a daemon thread."""

    def __init__(self, httpd: ThreadingHTTPServer, thread: threading.Thread, tls: bool) -> None:
        self.httpd = httpd
        self.thread = thread
        self.tls = tls

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.httpd.server_address[:2]
        return str(host), int(port)

    @property
    def port(self) -> int:
        return self.address[1]

    @property
    def url(self) -> str:
        host, port = self.address
        host = f"[{host}]" if ":" in host else host
        return f"{'https' if self.tls else 'http'}://{host}:{port}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


def serve(listen: str = DEFAULT_LISTEN, *, basic_auth: tuple[str, str] | None = None,
          certfile: str | None = None, keyfile: str | None = None,
          registry: CollectorRegistry | None = None) -> MetricsServer:
    """Serve ``/metrics`` (Prometheus text or OpenMetrics, gzip when asked) and ``/healthz``.

    ``listen`` is ``"HOST:PORT"``; without a host it binds 127.0.0.1. ``basic_auth`` is
    ``(user, hash)`` with a bcrypt or ``sha256:HEX`` hash; it protects ``/metrics`` (``/healthz``
    reveals nothing and stays open for load balancers). ``certfile``/``keyfile`` turn on TLS.
    """
    host, port = parse_listen(listen)
    reg = registry if registry is not None else REGISTRY
    check = _PasswordCheck(*basic_auth) if basic_auth else None
    ctx: ssl.SSLContext | None = None
    if certfile:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(certfile, keyfile)

    class Handler(BaseHTTPRequestHandler):
        server_version = "filterproxy-metrics"
        sys_version = ""
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # no access log: it would hold client IPs
            pass

        def _send(self, code: int, body: bytes, ctype: str = "text/plain; charset=utf-8",
                  extra: Mapping[str, str] | None = None, head: bool = False) -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            for k, v in (extra or {}).items():
                self.send_header(k, v)
            self.end_headers()
            if not head:
                self.wfile.write(body)

        def do_GET(self, head: bool = False) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/healthz":
                self._send(200, b"ok\n", head=head)
            elif path == "/metrics":
                if check is not None and not check.check_header(self.headers.get("Authorization")):
                    self._send(401, b"authentication required\n",
                               extra={"WWW-Authenticate": 'Basic realm="filterproxy metrics"'}, head=head)
                    return
                encoder, ctype = choose_encoder(self.headers.get("Accept", ""))
                try:
                    body = encoder(reg)
                except Exception:
                    log.exception("metrics: collecting failed")
                    self._send(500, b"collect failed\n", head=head)
                    return
                extra = {}
                if "gzip" in self.headers.get("Accept-Encoding", ""):
                    body = gzip.compress(body, compresslevel=5)
                    extra["Content-Encoding"] = "gzip"
                self._send(200, body, ctype, extra, head=head)
            elif path == "/":
                self._send(200, b'<html><body><a href="/metrics">metrics</a> <a href="/healthz">healthz</a>'
                                b"</body></html>\n", "text/html; charset=utf-8", head=head)
            else:
                self._send(404, b"not found\n", head=head)

        def do_HEAD(self) -> None:
            self.do_GET(head=True)

    family = socket.AF_INET6 if ":" in host else socket.AF_INET

    class Server(ThreadingHTTPServer):
        address_family = family
        daemon_threads = True
        allow_reuse_address = True

        def finish_request(self, request: Any, client_address: Any) -> None:
            request.settimeout(30)
            if ctx is not None:  # handshake in the request thread, not in the accept loop
                try:
                    request = ctx.wrap_socket(request, server_side=True)
                except (ssl.SSLError, OSError):
                    return
            super().finish_request(request, client_address)

    httpd = Server((host, port), Handler)
    thread = threading.Thread(target=httpd.serve_forever, name="filterproxy-metrics-http", daemon=True)
    thread.start()
    return MetricsServer(httpd, thread, ctx is not None)


# --------------------------------------------------------------------------- pushing

class Pusher:
    """Push the registry to a Pushgateway every ``interval`` seconds (gateways that cannot be scraped).

    ``grouping_key`` identifies the gateway, e.g. ``{"gateway": id, "school": ..., "province": ...}``:
    aggregate counters only, never anything about a child. Uses PUT, so each push replaces the group.
    """

    def __init__(self, gateway_url: str, job: str = "filterproxy", grouping_key: Mapping[str, str] | None = None,
                 interval: float = 60, *, auth: tuple[str, str] | None = None, timeout: float = 10,
                 registry: CollectorRegistry | None = None) -> None:
        if not gateway_url:
            raise ValueError("Pusher needs a gateway URL")
        for k, v in (grouping_key or {}).items():
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", k) or not str(v):
                raise ValueError(f"invalid grouping key {k}={v!r}")
        if interval <= 0:
            raise ValueError("push interval must be positive")
        self.gateway_url = gateway_url
        self.job = job
        self.grouping_key = {k: str(v) for k, v in (grouping_key or {}).items()}
        self.interval = interval
        self.timeout = timeout
        self.registry = registry if registry is not None else REGISTRY
        self.auth = auth
        self.pushes = 0
        self.failures = 0
        self.last_error: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _handler(self, url: str, method: str, timeout: float | None, headers: list, data: bytes) -> Callable:
        if self.auth:
            return basic_auth_handler(url, method, timeout, headers, data, self.auth[0], self.auth[1])
        from prometheus_client.exposition import default_handler

        return default_handler(url, method, timeout, headers, data)

    def push_once(self) -> bool:
        """Push now; True on success (failures are logged, not raised)."""
        try:
            push_to_gateway(self.gateway_url, job=self.job, registry=self.registry, grouping_key=self.grouping_key,
                            timeout=self.timeout, handler=self._handler)
        except Exception as exc:
            self.failures += 1
            if self.last_error != str(exc):
                log.warning("metrics: push to %s failed: %s", self.gateway_url, exc)
            self.last_error = str(exc)
            return False
        self.pushes += 1
        self.last_error = None
        return True

    def start(self) -> Pusher:
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="filterproxy-metrics-push", daemon=True)
        self._thread.start()
        return self

    def _loop(self) -> None:
        while True:
            self.push_once()
            if self._stop.wait(self.interval):
                return

    def stop(self, *, final_push: bool = True) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.timeout + 5)
        if final_push:
            self.push_once()
