"""More DNS processes on one address (``server.dns_workers`` / ``--dns-workers N``).

One Python process answers ~65k queries/s on one core; a gateway with more cores runs N processes
whose UDP and TCP sockets join one ``SO_REUSEPORT`` group, and the kernel spreads clients over them
(by source address and port). ``filterproxy run`` serves DNS itself and starts N-1 of these workers:
each is ``filterproxy run`` again with the same configuration, extra lists, client groups and upstreams,
DNS only (no proxy, no /metrics, no PID file), loading the same compiled snapshot (memory-mapped: the
pages are shared). Their counters reach the main process through the multi-process metrics folder.

* the main process binds first (port 0 is resolved there), then the workers join its address;
* ``start()`` returns once every worker listens (a line on a pipe), or raises;
* SIGHUP to the main process is forwarded (each worker re-reads configuration and lists and swaps its own
  engine, one config generation more: :mod:`filterproxy.reload`);
* a worker that dies is restarted (with back-off); workers exit when the main process is gone.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import threading

from filterproxy.procs import terminate_all, wait_ready

log = logging.getLogger("filterproxy.dns")

READY_TIMEOUT = 120.0


class DnsWorkers:
    """``count`` worker processes serving DNS on ``listen`` next to the main process."""

    def __init__(
        self,
        args: argparse.Namespace,
        listen: tuple[str, int],
        count: int,
        *,
        state_dir: str,
        ready_timeout: float = READY_TIMEOUT,
    ):
        self.args = args
        self.host, self.port = listen
        self.count = count
        self.state_dir = state_dir
        self.ready_timeout = ready_timeout
        self.procs: list[subprocess.Popen | None] = [None] * count
        self.generation = 1  # the parent's config generation: where a worker started now begins
        self._stopping = threading.Event()
        self._monitor: threading.Thread | None = None

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs if p is not None and p.poll() is None]

    def command(self, ready_fd: int) -> list[str]:
        a = self.args
        host = f"[{self.host}]" if ":" in self.host else self.host
        cmd = (
            [sys.executable, "-m", "filterproxy"]
            + (["--verbose"] if getattr(a, "verbose", False) else [])
            + [
                "run",
                "--dns-listen",
                f"{host}:{self.port}",
                "--proxy-listen",
                "off",
                "--metrics-listen",
                "off",
                "--dns-workers",
                "1",
                "--state-dir",
                self.state_dir,
                "--worker-of",
                str(os.getpid()),
                "--ready-fd",
                str(ready_fd),
                "--config-generation",
                str(self.generation),
            ]
        )
        if getattr(a, "config", None):
            cmd += ["--config", os.path.abspath(a.config)]
        for flag, values in (
            ("--extra-list", a.extra_list),
            ("--client-group", a.client_group),
            ("--upstream", getattr(a, "upstream", None)),
        ):
            for v in values or ():
                cmd += [flag, v]
        return cmd

    def _spawn(self, i: int) -> tuple[subprocess.Popen, int]:
        r, w = os.pipe()
        try:
            p = subprocess.Popen(self.command(w), pass_fds=(w,), stdin=subprocess.DEVNULL)
        finally:
            os.close(w)
        self.procs[i] = p
        return p, r

    def _wait_ready(self, spawned: list[tuple[int, subprocess.Popen, int]]) -> None:
        wait_ready({r: (f"worker {i + 1}", p) for i, p, r in spawned}, self.ready_timeout, "dns")

    def start(self) -> DnsWorkers:
        spawned = []
        try:
            for i in range(self.count):
                p, r = self._spawn(i)
                spawned.append((i, p, r))
            self._wait_ready(spawned)
        except BaseException:
            self.stop(timeout=5)
            raise
        self._monitor = threading.Thread(target=self._watch, name="filterproxy-dns-workers", daemon=True)
        self._monitor.start()
        return self

    def _watch(self) -> None:
        backoff = [1.0] * self.count
        while not self._stopping.wait(1.0):
            for i, p in enumerate(self.procs):
                if p is None or p.poll() is None or self._stopping.is_set():
                    continue
                log.error(
                    "dns: worker %d (pid %d) exited with status %s; restarting in %.0fs",
                    i + 1,
                    p.pid,
                    p.returncode,
                    backoff[i],
                )
                if self._stopping.wait(backoff[i]):
                    return
                backoff[i] = min(60.0, backoff[i] * 2)
                try:
                    np_, r = self._spawn(i)
                    self._wait_ready([(i, np_, r)])
                    log.info("dns: worker %d restarted (pid %d)", i + 1, np_.pid)
                except (OSError, RuntimeError) as exc:
                    log.error("%s", exc)

    def reload(self) -> None:
        """Forward SIGHUP: each worker rebuilds its engine off its serving path and swaps it in."""
        for p in self.procs:
            if p is not None and p.poll() is None:
                try:
                    p.send_signal(signal.SIGHUP)
                except ProcessLookupError:
                    pass

    def stop(self, timeout: float = 10.0) -> None:
        self._stopping.set()
        terminate_all((p for p in self.procs if p is not None), timeout)
        if self._monitor is not None and self._monitor is not threading.current_thread():
            self._monitor.join(timeout=2)
