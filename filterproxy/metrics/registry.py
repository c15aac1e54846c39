"""The process-wide registry: the catalogue's collector plus process, platform and GC metrics.

It also wires the collector to the process's life: a forked child starts its counters at zero, and
the state is written at exit when counters are shared between processes.
"""

from __future__ import annotations

import atexit
import os

from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector

# every metric is defined before the registry describes them
from filterproxy.metrics import catalogue  # noqa: F401
from filterproxy.metrics.types import COLLECTOR

REGISTRY = CollectorRegistry(auto_describe=False)
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
