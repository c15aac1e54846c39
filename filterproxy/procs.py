"""Child processes of ``filterproxy run`` (proxy workers, DNS workers): one way to wait until they listen,
one way to stop them."""

from __future__ import annotations

import asyncio
import logging
import os
import select
import subprocess
import time
from collections.abc import Callable, Iterable


def wait_ready(waiting: dict[int, tuple[str, subprocess.Popen | None]], timeout: float, what: str) -> None:
    """Wait until every child has written a line starting with ``ready`` to its pipe.

    ``waiting`` maps the read end of each child's ready pipe to (its name for messages, its process); every
    one of those fds is closed here. RuntimeError (``what`` first: "dns", "proxy") when a child exits or
    closes its pipe without saying ready, or when some are still silent after ``timeout`` s.
    """
    pending = dict(waiting)
    buf = {fd: b"" for fd in pending}
    deadline = time.monotonic() + timeout
    try:
        while pending:
            left = deadline - time.monotonic()
            if left <= 0:
                raise RuntimeError(f"{what}: {len(pending)} worker(s) not ready after {timeout:.0f} s")
            readable, _, _ = select.select(list(pending), [], [], min(left, 0.5))
            for fd in readable:
                name, proc = pending[fd]
                chunk = os.read(fd, 4096)
                buf[fd] += chunk
                if b"\n" in buf[fd] and buf[fd].startswith(b"ready"):
                    del pending[fd]
                elif not chunk:  # pipe closed without "ready": the child failed
                    code = proc.wait(10) if proc is not None else None
                    raise RuntimeError(
                        f"{what}: {name} exited before it was ready (exit status {code}); see its messages above"
                    )
            for fd, (name, proc) in pending.items():
                if proc is not None and fd not in readable and proc.poll() is not None:
                    raise RuntimeError(
                        f"{what}: {name} exited before it was ready (exit status {proc.returncode})"
                        "; see its messages above"
                    )
    finally:
        for fd in waiting:
            try:
                os.close(fd)
            except OSError:
                pass


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


async def exit_with_parent(parent: int, stop: Callable[[], object], what: str, interval: float = 1.0) -> None:
    """Call ``stop()`` once the parent process ``parent`` is gone (we get re-parented, even after its SIGKILL).

    Polled rather than PR_SET_PDEATHSIG, which fires when the *thread* that spawned us ends (the runner
    starts workers from an executor thread). ``what`` names the child in the log line.
    """
    while os.getppid() == parent:
        await asyncio.sleep(interval)
    logging.getLogger("filterproxy.procs").warning("%s: parent process %d is gone; stopping", what, parent)
    stop()
