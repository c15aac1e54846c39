"""Child processes of ``filterproxy run`` (proxy workers, DNS workers): one way to stop them."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterable


def terminate_all(procs: Iterable[subprocess.Popen], timeout: float = 10.0) -> None:
    """SIGTERM every process still running, wait up to ``timeout`` s in all, then SIGKILL what is left."""
    procs = list(procs)
    for p in procs:
        if p.poll() is None:
            try:
                p.terminate()
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + timeout
    for p in procs:
        try:
            p.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(5)
