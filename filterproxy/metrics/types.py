"""The metric types: bounded label sets, counters, gauges, histograms, and the collector that exposes them.

Hot paths (a DNS server answering tens of thousands of queries a second in Python) never call
prometheus_client: they count in plain dicts through the small classes below, and
:class:`MetricsCollector` turns that state into metric families only when someone scrapes::

    DNS_QUERIES.inc(group, qtype, action, protocol)      # one dict lookup + store
    DNS_UPSTREAM_DURATION.observe(0.012, upstream)       # + one bisect

Labels only ever take values from bounded sets: each label has a :class:`LabelSet`, values are checked
once, the first time a label combination is seen, never per call.

Thread safety: ``inc``/``observe`` are not locked (a lock would double their cost). The serving paths
are single-threaded event loops; a rare lost increment between two threads racing on the same series
is an accepted inaccuracy, never a crash.
"""

from __future__ import annotations

import bisect
import enum
import logging
import math
import os
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from filterproxy.metrics.multiprocess import Multiprocess

log = logging.getLogger("filterproxy.metrics")

OTHER = "other"

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

    def __init__(
        self, name: str, known: Iterable[str] = (), *, extra: int = 0, aliases: Mapping[Any, str] | None = None
    ) -> None:
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

    @property
    def known(self) -> frozenset[str]:
        """The values declared up front or from the configuration (never folded, never learned)."""
        return frozenset(self._known)

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

    def __init__(
        self,
        name: str,
        documentation: str,
        labels: Sequence[tuple[str, LabelSet]] = (),
        *,
        collector: MetricsCollector | None = None,
    ) -> None:
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


class _Sampled(_Metric):
    """A metric with state of its own (every kind but :class:`Derived`): a per-process snapshot of it, and
    the metric family of a (merged) snapshot."""

    def snapshot(self) -> dict[tuple[str, ...], Any]:
        raise NotImplementedError

    def family(self, state: Mapping[tuple[str, ...], Any]) -> Metric:
        raise NotImplementedError


class Counter(_Sampled):
    """A labelled counter kept in a plain ``dict[tuple[str, ...], int]``.

    ``inc`` costs one dict lookup and one store. Label values are checked the first time a
    combination is seen (slow path), never again.
    """

    kind = "counter"

    def __init__(
        self,
        name: str,
        documentation: str,
        labels: Sequence[tuple[str, LabelSet]] = (),
        *,
        collector: MetricsCollector | None = None,
    ) -> None:
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
            a = alias.get(k)
            f = k if a is None else a
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


class Histogram(_Sampled):
    """Fixed buckets in plain int lists: ``observe(value, *labelvalues)`` is one bisect and two adds."""

    kind = "histogram"

    def __init__(
        self,
        name: str,
        documentation: str,
        labels: Sequence[tuple[str, LabelSet]] = (),
        *,
        buckets: Sequence[float],
        collector: MetricsCollector | None = None,
    ) -> None:
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


class Gauge(_Sampled):
    """A labelled gauge: ``set(*labelvalues, value=...)``, ``inc``/``dec``, or a function read at scrape time.

    ``multiprocess_mode`` says how the values of several live processes combine: ``"mostrecent"``
    (the last one set wins), ``"sum"``, ``"max"`` or ``"min"``. Gauges of exited processes are dropped: gauges
    describe running processes, counters are history.
    """

    kind = "gauge"
    MODES = ("mostrecent", "sum", "max", "min")

    def __init__(
        self,
        name: str,
        documentation: str,
        labels: Sequence[tuple[str, LabelSet]] = (),
        *,
        multiprocess_mode: str = "mostrecent",
        collector: MetricsCollector | None = None,
    ) -> None:
        if name.endswith("_total"):
            raise ValueError(f"gauge {name} must not end with _total")
        if multiprocess_mode not in self.MODES:
            raise ValueError(f"{name}: multiprocess_mode must be one of {self.MODES}")
        super().__init__(name, documentation, labels, collector=collector)
        self.multiprocess_mode = multiprocess_mode
        # key → (value, time set); an Info's value is the tuple of its info label values
        self._values: dict[tuple[str, ...], tuple[Any, float]] = {}
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

    def __init__(
        self,
        name: str,
        documentation: str,
        keys: Sequence[tuple[str, LabelSet]],
        infos: Sequence[str],
        *,
        collector: MetricsCollector | None = None,
    ) -> None:
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

    def __init__(
        self,
        name: str,
        documentation: str,
        source: Gauge,
        fn: Callable[[float, float], float],
        *,
        collector: MetricsCollector | None = None,
    ) -> None:
        super().__init__(name, documentation, tuple(zip(source.labelnames, source._sets)), collector=collector)
        self.source = source
        self.fn = fn

    def compute(self, source_state: Mapping[tuple[str, ...], tuple[float, float]], now: float) -> Metric:
        fam = GaugeMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for key in sorted(source_state):
            fam.add_metric(key, self.fn(source_state[key][0], now))
        return fam


# --------------------------------------------------------------------------- collector

# The family type each kind is described as (gauges, infos and derived values are all gauges).
_DESCRIBE_FAMILY: dict[str, type[CounterMetricFamily | HistogramMetricFamily]] = {
    "counter": CounterMetricFamily,
    "histogram": HistogramMetricFamily,
}


class MetricsCollector(Collector):
    """Turns the plain-Python state of every metric into metric families at scrape time."""

    def __init__(self) -> None:
        self.metrics: dict[str, _Metric] = {}
        self._mp: Multiprocess | None = None

    def register(self, metric: _Metric) -> None:
        if metric.name in self.metrics:
            raise ValueError(f"metric {metric.name} defined twice")
        self.metrics[metric.name] = metric

    def local_state(self) -> dict[str, dict]:
        return {name: m.snapshot() for name, m in self.metrics.items() if isinstance(m, _Sampled)}

    def describe(self) -> Iterator[Metric]:
        for m in self.metrics.values():
            family = _DESCRIBE_FAMILY.get(m.kind, GaugeMetricFamily)
            yield family(m.name, m.documentation, labels=m.labelnames)

    def collect(self) -> Iterator[Metric]:
        state = self.local_state()
        if self._mp is not None:
            state = self._mp.aggregate(state, self.metrics)
        now = time.time()
        for name, m in self.metrics.items():
            if isinstance(m, Derived):
                yield m.compute(state.get(m.source.name, {}), now)
            elif isinstance(m, _Sampled):
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
        self._mp = Multiprocess(self, directory, interval)
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


# Every metric registers here unless given another collector (tests use private ones).
COLLECTOR = MetricsCollector()
