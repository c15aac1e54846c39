"""The garbage-collection policy of the serving processes, in one place.

Loaded state (lists, matchers, config, caches) is large and long-lived. Left to the collector, every
older-generation collection walks it again (tens of ms: a latency spike every query waiting behind it
pays). So after a load it is *frozen*: moved out of the collector's generations, never walked again,
and still freed by reference counting when a reload drops it. Reference cycles frozen meanwhile are
reclaimed by an occasional full collection after unfreezing.
"""

from __future__ import annotations

import ctypes
import gc


def freeze_loaded() -> None:
    """After a (re)load: reclaim what the previous state left (unfreeze, full collection), then freeze."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()


def freeze_young() -> None:
    """Periodic, cheap: collect the two younger generations and freeze what survives them."""
    gc.collect(1)
    gc.freeze()


def collect_young() -> None:
    """Every tick of a busy loop: a young-generation collection (~0.05 ms). Replaced cache entries free
    old objects as fast as new ones arrive, so the allocation count alone would rarely start one."""
    gc.collect(0)


def trim_memory() -> None:
    """Give freed heap back to the OS after a list build (a 1M-name build peaks at ~4x what it keeps)."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
