"""Proxy worker processes: N mitmproxy instances (in-process ``DumpMaster`` + :class:`FilterAddon`)
sharing one listening address with ``SO_REUSEPORT`` (mitmproxy is one event loop, so it scales by processes).

mitmproxy 11 has no reuse-port option; :func:`_enable_reuse_port` adds it inside the worker process only
and refuses to start on a mitmproxy that listens differently (docs/decisions/http-reuseport-workers.md).
Used by ``filterproxy run`` (:mod:`filterproxy.runner`)::

    workers = ProxyWorkers(args, cfg, ("0.0.0.0", 8080), 2)
    workers.start()     # returns when every worker listens; raises RuntimeError otherwise
    workers.reload()    # SIGHUP → each worker rebuilds its engine in a thread and swaps it in
    workers.stop()

Workers load the runner's configuration (``args.config``, ``extra_list``, ``client_group``, ``state_dir``);
the mitmproxy CA (``<state_dir>/mitmproxy``) is created once by the parent first. Workers stop with the
parent, and one that exits unexpectedly is restarted with back-off. A worker is also a command:
``python -m filterproxy.http.server --listen 127.0.0.1:8080 --config FILE``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence

from filterproxy.config.proxy import PROXY_MODE_KINDS, UDP_MODE_KINDS, mode_kind

log = logging.getLogger("filterproxy.http.server")

__all__ = ["ProxyWorkers", "worker_main"]

READY_TIMEOUT = 300.0  # seconds for a worker to load its lists and listen (1M domains load in a few s)


_MODE_KINDS = PROXY_MODE_KINDS
_UDP_MODES = UDP_MODE_KINDS
_mode_kind = mode_kind


def _config_modes(cfg) -> list[str]:
    """``server.proxy_modes`` of the configuration (``--proxy-mode`` flags replace it)."""
    return list(cfg.server.proxy_modes) if cfg is not None else ["regular"]


def _bind_check(host: str, port: int) -> int:
    """Resolve port 0 and fail early on an address that is taken (by someone not using SO_REUSEPORT)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(family, socket.SOCK_STREAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        s.bind((host, port))
        return s.getsockname()[1]
    except OSError as exc:
        raise RuntimeError(f"proxy: cannot listen on {host}:{port}: {exc.strerror}") from None
    finally:
        s.close()


class _Worker:
    __slots__ = ("index", "proc", "ready_fd", "started", "restarts")

    def __init__(self, index: int) -> None:
        self.index = index
        self.proc: subprocess.Popen | None = None
        self.ready_fd: int | None = None
        self.started = 0.0
        self.restarts = 0


class ProxyWorkers:
    """``workers`` mitmproxy processes listening on ``listen`` with SO_REUSEPORT.

    ``args`` is the ``filterproxy run`` namespace (``config``, ``extra_list``, ``client_group``,
    ``state_dir``); ``cfg`` the loaded configuration (for ``state_dir``). ``mode`` is one mitmproxy mode
    or a list (default ``args.proxy_mode``, else ``server.proxy_modes``): the first listens on ``listen``, the others
    on their own ``@PORT`` — ``regular`` (explicit proxy), ``transparent@8081`` (gateway + nftables
    redirect, deploy/transparent-proxy.md), ``wireguard@51820`` (deploy/wireguard.md; a UDP server that
    cannot be shared, so only worker 0 runs it). ``options``
    are extra mitmproxy options (``{"ssl_insecure": "true"}``); ``metrics_dir`` the shared
    multi-process metrics folder (default ``<state_dir>/metrics``; ``""`` = off).
    """

    def __init__(
        self,
        args: argparse.Namespace | None,
        cfg,
        listen: tuple[str, int],
        workers: int,
        *,
        mode: str | None = None,
        options: Mapping[str, str] | None = None,
        metrics_dir: str | None = None,
        ready_timeout: float = READY_TIMEOUT,
    ) -> None:
        if workers < 1:
            raise ValueError("proxy workers must be at least 1")
        self.args = args
        self.cfg = cfg
        self.host, self.port = listen[0], int(listen[1])
        self.count = workers
        modes = mode if mode is not None else (getattr(args, "proxy_mode", None) or _config_modes(cfg))
        self.modes: list[str] = [modes] if isinstance(modes, str) else list(modes) or ["regular"]
        for m in self.modes:
            kind = _mode_kind(m)
            if kind not in _MODE_KINDS:
                raise ValueError(f"proxy mode {m!r}: expected one of {', '.join(_MODE_KINDS)}")
            if kind in _UDP_MODES and m is self.modes[0] and workers != 1:
                raise ValueError(
                    f"{kind} mode on the main listen address runs in one proxy worker "
                    f"(a UDP server cannot be shared); add it as a second mode, e.g. {kind}@51820"
                )
        self.options = dict(options or {})
        state_dir = getattr(args, "state_dir", None) or (cfg.server.state_dir if cfg is not None else "")
        self.state_dir = os.path.abspath(state_dir) if state_dir else ""
        if "confdir" not in self.options and self.state_dir:
            self.options["confdir"] = os.path.join(self.state_dir, "mitmproxy")
        self.metrics_dir = (
            metrics_dir
            if metrics_dir is not None
            else (os.path.join(self.state_dir, "metrics") if self.state_dir else "")
        )
        self.ready_timeout = ready_timeout
        self._workers: list[_Worker] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._monitor: threading.Thread | None = None

    # ------------------------------------------------------------ public
    @property
    def address(self) -> tuple[str, int]:
        return self.host, self.port

    @property
    def pids(self) -> list[int]:
        return [w.proc.pid for w in self._workers if w.proc is not None and w.proc.poll() is None]

    def start(self) -> ProxyWorkers:
        """Spawn the workers; return when every one listens, raise RuntimeError (all stopped) otherwise."""
        if _mode_kind(self.modes[0]) not in _UDP_MODES:
            self.port = _bind_check(self.host, self.port)
        self._ensure_ca()
        self._stopping.clear()
        self._workers = [_Worker(i) for i in range(self.count)]
        try:
            for w in self._workers:
                self._spawn(w)
            self._wait_ready(self._workers)
        except BaseException:
            self.stop(timeout=5)
            raise
        self._monitor = threading.Thread(target=self._watch, name="filterproxy-proxy-workers", daemon=True)
        self._monitor.start()
        log.info(
            "proxy: %d worker(s) listening on %s:%d (%s mode), pids %s",
            self.count,
            self.host,
            self.port,
            " + ".join(self.modes),
            " ".join(map(str, self.pids)),
        )
        return self

    def reload(self) -> None:
        """Tell every worker to reload configuration, lists and users file (SIGHUP; swapped in a thread)."""
        for w in self._workers:
            if w.proc is not None and w.proc.poll() is None:
                try:
                    w.proc.send_signal(signal.SIGHUP)
                except ProcessLookupError:
                    pass

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM every worker, wait up to ``timeout`` s, then SIGKILL what is left."""
        from filterproxy.procs import terminate_all

        self._stopping.set()
        terminate_all((w.proc for w in self._workers if w.proc is not None), timeout)
        for w in self._workers:
            self._close_ready(w)
        if self._monitor is not None and self._monitor is not threading.current_thread():
            self._monitor.join(timeout=2)

    def __enter__(self) -> ProxyWorkers:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ------------------------------------------------------------ internals
    def _ensure_ca(self) -> None:
        confdir = self.options.get("confdir")
        if not confdir:
            return
        from mitmproxy.certs import CertStore

        confdir = os.path.expanduser(confdir)
        os.makedirs(confdir, mode=0o700, exist_ok=True)
        CertStore.from_store(confdir, "mitmproxy", 2048)  # creates the CA once if missing

    def _command(self, w: _Worker, ready_fd: int) -> list[str]:
        a = self.args
        cmd = [
            sys.executable,
            "-m",
            "filterproxy.http.server",
            "--listen",
            f"{self.host}:{self.port}",
            "--ready-fd",
            str(ready_fd),
            "--index",
            str(w.index),
            "--reuse-port",
            "--parent",
            str(os.getpid()),
        ]
        for m in self.modes:
            # UDP modes (WireGuard) cannot share a port between processes: worker 0 serves them alone
            if w.index == 0 or _mode_kind(m) not in _UDP_MODES or m is self.modes[0]:
                cmd += ["--mode", m]
        if a is not None and getattr(a, "config", None):
            cmd += ["--config", os.path.abspath(a.config)]
        for spec in getattr(a, "extra_list", None) or []:
            cmd += ["--extra-list", spec]
        for spec in getattr(a, "client_group", None) or []:
            cmd += ["--client-group", spec]
        if self.state_dir:
            cmd += ["--state-dir", self.state_dir]
        if self.metrics_dir:
            cmd += ["--metrics-dir", self.metrics_dir]
        if getattr(a, "verbose", False):
            cmd += ["--verbose"]
        spool = getattr(a, "spool", None) or (self.cfg.reports.spool if self.cfg is not None else None)
        if spool:
            cmd += ["--set", f"filterproxy_spool={os.path.abspath(spool)}"]
        # workers only write image-match reports to the spool; the main process delivers them
        cmd += ["--set", "filterproxy_deliver_reports=false"]
        for k, v in self.options.items():
            cmd += ["--set", f"{k}={v}"]
        return cmd

    def _spawn(self, w: _Worker) -> None:
        r, wfd = os.pipe()
        try:
            w.proc = subprocess.Popen(
                self._command(w, wfd), pass_fds=(wfd,), stdin=subprocess.DEVNULL, start_new_session=False
            )
        except BaseException:
            os.close(r)
            raise
        finally:
            os.close(wfd)
        self._close_ready(w)
        w.ready_fd = r
        w.started = time.monotonic()

    @staticmethod
    def _close_ready(w: _Worker) -> None:
        if w.ready_fd is not None:
            try:
                os.close(w.ready_fd)
            except OSError:
                pass
            w.ready_fd = None

    def _wait_ready(self, workers: Sequence[_Worker]) -> None:
        from filterproxy.procs import wait_ready

        waiting = {w.ready_fd: (f"worker {w.index}", w.proc) for w in workers if w.ready_fd is not None}
        for w in workers:
            w.ready_fd = None  # wait_ready closes them
        wait_ready(waiting, self.ready_timeout, "proxy")

    def _watch(self) -> None:
        """Restart workers that exit while serving (back-off 1 s doubling to 30 s)."""
        while not self._stopping.wait(1.0):
            for w in self._workers:
                p = w.proc
                if p is None or p.poll() is None or self._stopping.is_set():
                    continue
                uptime = time.monotonic() - w.started
                w.restarts = 0 if uptime > 60 else w.restarts + 1
                delay = min(30.0, 2.0 ** min(w.restarts, 5) / 2)
                log.error(
                    "proxy: worker %d (pid %d) exited with status %s; restarting in %.0f s",
                    w.index,
                    p.pid,
                    p.returncode,
                    delay,
                )
                if self._stopping.wait(delay):
                    return
                try:
                    self._spawn(w)
                except OSError as exc:
                    log.error("proxy: cannot restart worker %d: %s", w.index, exc)
                    continue
                threading.Thread(target=self._drain_ready, args=(w,), daemon=True).start()

    def _drain_ready(self, w: _Worker) -> None:
        try:
            self._wait_ready([w])
            log.info("proxy: worker %d restarted (pid %d)", w.index, w.proc.pid if w.proc else -1)
        except RuntimeError as exc:
            log.error("%s", exc)


# ---------------------------------------------------------------- the worker process


def _enable_reuse_port() -> None:
    """Make mitmproxy's TCP listeners join a SO_REUSEPORT group (this process only)."""
    import inspect

    from mitmproxy.proxy import mode_servers

    cls = mode_servers.AsyncioServerInstance
    original = cls.listen
    if getattr(original, "_filterproxy_reuse_port", False):
        return
    src = inspect.getsource(original)
    if "asyncio.start_server(self.handle_stream, host, port)" not in src:
        raise RuntimeError(
            "this mitmproxy version listens differently; SO_REUSEPORT workers are not supported (run one proxy worker)"
        )

    async def listen(self, host: str, port: int):
        if self.mode.transport_protocol != "tcp" or port == 0:
            return await original(self, host, port)
        server = await asyncio.start_server(self.handle_stream, host or None, port, reuse_port=True)
        return [server]

    listen._filterproxy_reuse_port = True  # type: ignore[attr-defined]
    cls.listen = listen  # type: ignore[method-assign]


class _ReadySignal:
    """Writes ``ready PID HOST:PORT`` to the parent's pipe once mitmproxy listens."""

    def __init__(self, fd: int | None) -> None:
        self.fd = fd

    def running(self) -> None:
        from mitmproxy import ctx

        if self.fd is None:
            return
        ps = ctx.master.addons.get("proxyserver")
        addrs = ps.listen_addrs() if ps is not None else []
        where = " ".join(f"{a[0]}:{a[1]}" for a in addrs) or "?"
        try:
            os.write(self.fd, f"ready {os.getpid()} {where}\n".encode())
            os.close(self.fd)
        except OSError:
            pass
        self.fd = None


def _parse_worker_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m filterproxy.http.server",
        description="One filterproxy HTTP(S) proxy worker (mitmproxy + FilterAddon).",
    )
    p.add_argument("--listen", default="127.0.0.1:8080", metavar="HOST:PORT")
    p.add_argument(
        "--mode",
        action="append",
        default=[],
        help="mitmproxy mode (repeatable): regular (default), transparent[@PORT], wireguard[@PORT], ...",
    )
    p.add_argument("--config", "-c", metavar="FILE")
    p.add_argument("--extra-list", action="append", default=[], metavar="FORMAT:CATEGORY:PATH")
    p.add_argument("--client-group", action="append", default=[], metavar="CIDR=GROUP")
    p.add_argument("--state-dir", metavar="DIR")
    p.add_argument("--metrics-dir", metavar="DIR", help="shared multi-process metrics folder")
    p.add_argument("--set", action="append", default=[], metavar="OPTION=VALUE", help="mitmproxy option")
    p.add_argument("--ready-fd", type=int, help=argparse.SUPPRESS)
    p.add_argument("--index", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--reuse-port", action="store_true", help="join a SO_REUSEPORT group (several workers)")
    p.add_argument("--parent", type=int, help=argparse.SUPPRESS)  # exit when this process is no longer our parent
    p.add_argument("--verbose", "-v", action="store_true")
    return p.parse_args(argv)


async def _serve(a: argparse.Namespace) -> int:
    from mitmproxy import exceptions, hooks, options
    from mitmproxy.tools.dump import DumpMaster

    from filterproxy.config import parse_hostport
    from filterproxy.http.addon import FilterAddon
    from filterproxy.procs import exit_with_parent

    host, port = parse_hostport(a.listen, "--listen", 8080)
    opts = options.Options(listen_host=host, listen_port=port, mode=a.mode or ["regular"])
    master = DumpMaster(opts, with_termlog=True, with_dumper=False)
    specs = [f"filterproxy_extra_list={x}" for x in a.extra_list]
    specs += [f"filterproxy_client_group={x}" for x in a.client_group]
    if a.config:
        specs.append(f"filterproxy_config={a.config}")
    if a.state_dir:
        specs.append(f"filterproxy_state_dir={a.state_dir}")
    try:
        opts.update(termlog_verbosity="debug" if a.verbose else "warn")
        # deferred: set before the addon registers them, so its first configure loads the right lists once
        opts.set(*a.set, *specs, defer=True)
        addon = FilterAddon()
        master.addons.add(addon, _ReadySignal(a.ready_fd))
        # AddonManager.add() runs no configure event (mitmdump's script loader does it by hand): load now.
        master.addons.invoke_addon_sync(addon, hooks.ConfigureHook(set(opts.keys())))
    except exceptions.OptionsError as exc:
        print(f"filterproxy proxy worker {a.index}: error: {exc}", file=sys.stderr)
        return 2
    if a.metrics_dir:
        from filterproxy import metrics

        metrics.enable_multiprocess(a.metrics_dir)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, master.shutdown)
    if a.parent:
        if os.getppid() != a.parent:
            return 1
        watcher = loop.create_task(exit_with_parent(a.parent, master.shutdown, f"proxy worker {a.index}"))
        # (the variable keeps a strong reference to the task while we run)
    try:
        await master.run()
        if a.parent:
            watcher.cancel()
    except SystemExit as exc:  # errorcheck: an error was logged during start-up (e.g. address in use)
        return int(exc.code or 1)
    return 0


def worker_main(argv: list[str] | None = None) -> int:
    """Entry point of one worker process."""
    a = _parse_worker_args(argv)
    # filterproxy's own messages at INFO; mitmproxy's go through its termlog at "warn" (its INFO lines
    # name every client address and connection).
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter(f"%(asctime)s %(levelname)s %(name)s[w{a.index}]: %(message)s"))
    fp_log = logging.getLogger("filterproxy")
    fp_log.addHandler(handler)
    fp_log.setLevel(logging.DEBUG if a.verbose else logging.INFO)
    fp_log.propagate = False
    if a.reuse_port:
        _enable_reuse_port()
    # the standard asyncio loop, not uvloop (docs/decisions/http-reuseport-workers.md)
    try:
        return asyncio.run(_serve(a))
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(worker_main())
