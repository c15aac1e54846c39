"""``filterproxy run``: load once, then serve DNS (UDP+TCP), the HTTP(S) proxy workers and /metrics.

Start-up order: configuration and lists (``app.load_engine``), flag overrides, PID file, metrics
endpoint, DNS listeners, proxy workers, then (main process only) the background list downloads
(:mod:`filterproxy.lists.refresh`: missing lists, then each on its refresh). Each logs one line when it is ready::

    DoT listening on 0.0.0.0:853 (tls)                       (server.dot_listen / --dot-listen)
    DoH listening on https://0.0.0.0:443/dns-query (h2, http/1.1)   (server.doh_listen / --doh-listen)
    DNS listening on 127.0.0.1:5353 (udp, tcp)
    metrics on http://127.0.0.1:9108/metrics
    proxy listening on 127.0.0.1:8080 (2 workers)
    admin API on http://127.0.0.1:8088/api/v1                (server.admin_listen / --admin-listen)

Signals:

* **SIGHUP** (``filterproxy lists reload``, ``systemctl reload``): configuration, policies and lists are
  read again in a thread, off the serving path, then swapped in with ``engine.swap`` (config + snapshot,
  one reference); the DNS caches of verdicts and packed replies are dropped, the DNS and proxy workers
  reload too, and each logs the new config generation (:mod:`filterproxy.reload`). A failed reload
  (``file:line: why``) keeps what is served, is logged and counted
  (``filterproxy_config_reloads_total{result="failure"}``). Settings that need a restart are named in the log.
* **SIGTERM / SIGINT**: clean shutdown (listeners closed, workers stopped, PID file removed).

The PID is written to ``<state_dir>/filterproxy.pid`` so ``filterproxy lists reload`` can signal us.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
import time
from typing import TYPE_CHECKING, Any

from filterproxy.app import SetupError
from filterproxy.config.secrets import Secrets, load_secrets
from filterproxy.fsutil import atomic_write
from filterproxy.gcpolicy import freeze_loaded, trim_memory

if TYPE_CHECKING:
    from filterproxy.config import Config
    from filterproxy.lists.snapshot import Snapshot
    from filterproxy.policy.engine import Engine

log = logging.getLogger("filterproxy.run")


def _listen_flag(
    value: str | None, current: tuple[str, int] | None, default_port: int, flag: str
) -> tuple[str, int] | None:
    """``HOST:PORT`` | ``off`` flag → (host, port) | None; None value keeps ``current``."""
    from filterproxy.config import ConfigError, parse_hostport

    if value is None:
        return current
    if value.strip().lower() in ("off", "none", "false", ""):
        return None
    try:
        if value.strip().endswith(":0"):  # port 0: any free port (tests), reported in the "listening" line
            return parse_hostport(value.strip()[:-2], flag, default_port)[0], 0
        return parse_hostport(value, flag, default_port)
    except ConfigError as exc:
        raise SetupError(str(exc)) from None


def _check_encrypted(cfg: Config) -> None:
    """DoH/DoT (config or flags) need the certificate and the DNS service they answer through."""
    from filterproxy.config.sections import tls_missing

    s = cfg.server
    on = [flag for flag, v in (("--doh-listen", s.doh_listen), ("--dot-listen", s.dot_listen)) if v is not None]
    if not on:
        return
    missing = tls_missing(s)
    if missing:
        raise SetupError(f"{cfg.path}: {on[0]} needs 'server.{missing}' (a PEM file for the listener's certificate)")
    if s.dns_listen is None:
        raise SetupError(f"{on[0]} needs the DNS resolver it answers through (--dns-listen is off)")


def apply_overrides(args: argparse.Namespace, cfg: Config) -> None:
    """Command-line flags win over the configuration file (``--state-dir`` is applied at load, see :func:`run`)."""
    from filterproxy.config import ConfigError, check_upstream

    s = cfg.server
    s.dns_listen = _listen_flag(getattr(args, "dns_listen", None), s.dns_listen, 53, "--dns-listen")
    s.proxy_listen = _listen_flag(getattr(args, "proxy_listen", None), s.proxy_listen, 8080, "--proxy-listen")
    s.metrics_listen = _listen_flag(getattr(args, "metrics_listen", None), s.metrics_listen, 9108, "--metrics-listen")
    s.doh_listen = _listen_flag(getattr(args, "doh_listen", None), s.doh_listen, 443, "--doh-listen")
    s.dot_listen = _listen_flag(getattr(args, "dot_listen", None), s.dot_listen, 853, "--dot-listen")
    s.admin_listen = _listen_flag(getattr(args, "admin_listen", None), s.admin_listen, 8088, "--admin-listen")
    _check_encrypted(cfg)
    for flag in ("proxy_workers", "dns_workers"):
        v = getattr(args, flag, None)
        if v is not None:
            if v < 1:
                raise SetupError(f"--{flag.replace('_', '-')} must be at least 1")
            setattr(s, flag, v)
    if getattr(args, "upstream", None):
        for a in args.upstream:
            try:
                check_upstream(a, "--upstream")
            except ConfigError as exc:
                raise SetupError(str(exc)) from None
        cfg.upstreams.servers = list(args.upstream)
    if getattr(args, "state_dir", None):
        s.state_dir = os.path.abspath(args.state_dir)
    if getattr(args, "report_endpoint", None):
        cfg.reports.endpoint = args.report_endpoint
    if getattr(args, "spool", None):
        cfg.reports.spool = os.path.abspath(args.spool)


def _rss_mb() -> float:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _publish_lists(snapshot: Snapshot) -> None:
    """Entries, versions and ages of the lists being served (filterproxy_lists_*)."""
    try:
        from filterproxy.lists.snapshot_cache import publish_metrics

        publish_metrics(snapshot)
    except Exception:  # metrics must never stop the resolver
        log.debug("could not publish list metrics", exc_info=True)


class Runner:
    """The running process: engine, DNS service, proxy workers, metrics server, signal handling."""

    def __init__(self, args: argparse.Namespace, cfg: Config, engine: Engine) -> None:
        self.args = args
        self.cfg = cfg  # as started: listeners, upstreams, workers (the engine holds the reloaded one)
        self.engine = engine
        self.dns: Any = None  # filterproxy.dns.service.DnsService
        self.proxy: Any = None  # filterproxy.http.server.ProxyWorkers
        self.metrics_server: Any = None
        self.dns_workers: Any = None  # filterproxy.dns.workers.DnsWorkers (dns_workers > 1)
        self.worker: int | None = getattr(args, "worker_of", None)  # set in a DNS worker: the main process's PID
        self.reports: Any = None  # the report spool this process delivers from
        self.secrets = Secrets()  # read in start() (main process): the reports token
        self._reports_stop: Any = None
        self.lists_refresh: Any = None  # filterproxy.lists.refresh.ListRefresher (the main process only)
        self.admin: Any = None  # filterproxy.admin.server.AdminServer (the main process only)
        self.live: Any = None  # filterproxy.state.watch.LiveWatcher (every deciding process)
        self.stats: Any = None  # filterproxy.state.stats.StatsWriter (every deciding process)
        self.seen: Any = None  # filterproxy.state.seen.SeenWriter (every deciding process)
        self.pidfile: str | None = None
        self._stop: asyncio.Event | None = None
        self._reloading = False
        # the config generation served (+1 per successful reload); a DNS worker starts at its parent's
        self.generation: int = getattr(args, "config_generation", None) or 1

    # ------------------------------------------------------------------ start / stop
    async def start(self) -> None:
        from filterproxy import metrics
        from filterproxy import reload as config_reload

        cfg = self.cfg
        loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        loop.add_signal_handler(signal.SIGHUP, lambda: loop.create_task(self.reload()))

        if not self.worker:  # secret files first: an unusable one stops the start (ConfigError naming file:line)
            self.secrets = load_secrets(cfg)
        if not self.worker:  # the PID file names the main process ('filterproxy lists reload' signals it)
            self._write_pid()
        metrics.configure_labels(
            groups=cfg.groups,
            lists=[li.id for li in self.engine.snapshot.lists],
            upstreams=list(cfg.upstreams.servers),
            categories={li.category for li in self.engine.snapshot.lists},
        )
        _publish_lists(self.engine.snapshot)

        shared = cfg.server.proxy_listen is not None or cfg.server.dns_workers > 1 or self.worker
        if shared and cfg.server.state_dir:
            try:
                metrics.enable_multiprocess(os.path.join(cfg.server.state_dir, "metrics"))
            except Exception as exc:
                log.warning("metrics: cannot share counters with the worker processes: %s", exc)

        self._start_metrics()
        from filterproxy.state import stats  # decision counts into the state database (roll-up: main only)

        self.stats = stats.start_writer(cfg, housekeeping=not self.worker)
        from filterproxy.state import seen  # named devices' last-seen times (the neighbour table: main only)

        self.seen = seen.start_writer(cfg, live=None if self.worker else lambda: self.engine.live)

        if cfg.server.dns_listen is not None:
            from filterproxy.dns.service import DnsService

            n = cfg.server.dns_workers
            self.dns = DnsService(cfg, self.engine, listen=cfg.server.dns_listen, reuse_port=n > 1 or bool(self.worker))
            await self.dns.start()
            config_reload.publish("dns", self.generation, cfg)
            await self._start_live()
            host, port = self.dns.address
            if self.worker:
                log.info("dns worker of %d listening on %s:%d", self.worker, host, port)
                self._worker_ready()
                return
            if n > 1:
                from filterproxy.dns.workers import DnsWorkers

                self.dns_workers = DnsWorkers(self.args, (host, port), n - 1, state_dir=cfg.server.state_dir)
                self.dns_workers.generation = self.generation
                await loop.run_in_executor(None, self.dns_workers.start)
            await self.dns.start_encrypted()  # DoT / DoH, before the "DNS listening" line that says all is up
            log.info(
                "DNS listening on %s:%d (udp, tcp)%s",
                f"[{host}]" if ":" in host else host,
                port,
                f", {n} processes (pids {os.getpid()} {' '.join(map(str, self.dns_workers.pids))})"
                if self.dns_workers
                else "",
            )
        else:
            log.info("DNS off (--dns-listen off)")
            await self._start_live()

        if cfg.server.proxy_listen is not None:
            await self._start_proxy()
            self._start_reports()
        else:
            log.info("proxy off (--proxy-listen off)")
        if not self.worker:  # the control API (server.admin_listen): "admin API on http://H:P/api/v1"
            from filterproxy.admin.server import start_admin

            self.admin = await start_admin(self)
        self._start_lists_refresh()

    async def _start_live(self) -> None:
        """The control API's live rules (filterproxy.state.watch): polled in a thread; on a change the DNS
        caches drop their verdicts on this loop (the UDP thread never waits for it, house rule 9)."""
        from filterproxy.state.store import state_url
        from filterproxy.state.watch import LiveWatcher

        loop = asyncio.get_running_loop()

        def changed() -> None:
            if self.dns is not None:
                loop.call_soon_threadsafe(self.dns.on_live)

        watcher = LiveWatcher(state_url(self.cfg), lambda: self.engine, changed)
        self.live = await loop.run_in_executor(None, watcher.start)

    def _start_lists_refresh(self) -> None:
        """Download missing lists in the background, then each on its refresh interval; a list that
        changed is swapped in through :meth:`reload`. Only the main process fetches."""
        from filterproxy.lists.refresh import ListRefresher

        if self.worker:
            return
        self.lists_refresh = ListRefresher(lambda: self.engine.config, self.reload)  # the config a reload read
        self.lists_refresh.start()

    def _start_metrics(self) -> None:
        """``/metrics`` (Basic auth with an argon2id hash, TLS)."""
        from filterproxy import metrics

        cfg, m = self.cfg, self.cfg.metrics
        if cfg.server.metrics_listen is not None:
            host, port = cfg.server.metrics_listen
            auth = (m.basic_auth_user, m.basic_auth_hash) if m.basic_auth_user and m.basic_auth_hash else None
            self.metrics_server = metrics.serve(
                f"[{host}]:{port}" if ":" in host else f"{host}:{port}",
                basic_auth=auth,
                certfile=m.tls_cert_file,
                keyfile=m.tls_key_file.path if m.tls_key_file else None,
            )
            log.info("metrics on %s/metrics%s", self.metrics_server.url, " (basic auth)" if auth else "")

    def _start_reports(self) -> None:
        """Deliver the image-match reports the proxy workers spool (or just keep them, with no endpoint)."""
        import threading

        from filterproxy.reports import ReportSpool

        cfg = self.cfg
        try:
            self.reports = ReportSpool.from_config(cfg, cfg.reports.endpoint, token=self.secrets.reports_token)
        except (OSError, ValueError) as exc:
            log.error("reports: cannot use the spool: %s (image matches are still blocked)", exc)
            return
        self._reports_stop = threading.Event()
        self.reports.start(self._reports_stop, interval=2 if cfg.reports.endpoint else 30)

    async def _start_proxy(self) -> None:
        try:
            from filterproxy.http.server import ProxyWorkers
        except ImportError as exc:
            log.error("proxy: the HTTP(S) proxy is not available in this installation (%s); serving DNS only", exc)
            return
        listen = self.cfg.server.proxy_listen
        assert listen is not None  # start() calls this only when the proxy is on
        workers = self.cfg.server.proxy_workers
        try:
            self.proxy = ProxyWorkers(self.args, self.cfg, listen, workers)
            self.proxy.options["filterproxy_config_generation"] = self.generation
            # the block page's review form: someone can read the requests (the control API, or a shared store)
            review_form = self.cfg.server.admin_listen is not None or bool(self.cfg.server.state_db)
            self.proxy.options["filterproxy_review_form"] = "true" if review_form else "false"
            await asyncio.get_running_loop().run_in_executor(None, self.proxy.start)
        except Exception as exc:
            log.error("proxy: could not start on %s:%d: %s; serving DNS only", listen[0], listen[1], exc)
            self.proxy = None
            return
        host, port = getattr(self.proxy, "address", listen)
        log.info("proxy listening on %s:%d (%d worker%s)", host, port, workers, "s" if workers != 1 else "")

    async def wait(self) -> None:
        assert self._stop is not None
        await self._stop.wait()

    def _worker_ready(self) -> None:
        """A DNS worker: tell the main process we listen, and leave when it is gone."""
        fd = getattr(self.args, "ready_fd", None)
        if fd is not None:
            try:
                os.write(fd, b"ready\n")
                os.close(fd)
            except OSError:
                pass
        from filterproxy.procs import exit_with_parent

        assert self._stop is not None and self.worker is not None
        asyncio.get_running_loop().create_task(exit_with_parent(self.worker, self._stop.set, "dns worker"))

    async def stop(self) -> None:
        log.info("shutting down")
        if self.lists_refresh is not None:
            await self.lists_refresh.stop()
        if self.dns_workers is not None:
            try:
                await asyncio.get_running_loop().run_in_executor(None, self.dns_workers.stop)
            except Exception:
                log.exception("dns: stopping the workers failed")
        if self.proxy is not None:
            try:
                await asyncio.get_running_loop().run_in_executor(None, self.proxy.stop)
            except Exception:
                log.exception("proxy: stop failed")
        if self.live is not None:
            await asyncio.get_running_loop().run_in_executor(None, self.live.stop)
        if self.dns is not None:
            await self.dns.stop()
        if self.stats is not None:  # after the listeners (DnsServer.stop flushes its tally): their last counts too
            await asyncio.get_running_loop().run_in_executor(None, self.stats.stop)
        if self.seen is not None:  # writes the last times noted
            await asyncio.get_running_loop().run_in_executor(None, self.seen.stop)
        if self._reports_stop is not None:
            self._reports_stop.set()
        if self.admin is not None:
            await self.admin.stop()
        if self.metrics_server is not None:
            self.metrics_server.close()
        self._remove_pid()

    # ------------------------------------------------------------------ reload
    async def reload(self) -> bool:
        """Re-read configuration, policies and lists in a thread and swap them in as one reference
        (:mod:`filterproxy.reload`); on any failure keep serving what is loaded, log and count it."""
        from filterproxy import metrics
        from filterproxy import reload as config_reload

        if self._reloading:
            log.info("reload: already in progress")
            return False
        self._reloading = True
        t0 = time.monotonic()
        log.info("reload: reading %s, its policies and the lists again", self.engine.config.path)
        try:
            new = await asyncio.get_running_loop().run_in_executor(
                None, config_reload.load, self.args, lambda c: apply_overrides(self.args, c)
            )
            snap, cfg = new.snapshot, new.config
            if not snap.lists and self.engine.snapshot.lists:
                raise ValueError("the new snapshot has no lists at all")
            # a snapshot with the same inputs as the one being served is the same folder: keep its caches
            same_lists = snap.folder is not None and snap.folder == self.engine.snapshot.folder
            same_config = cfg.digest == self.engine.config.digest
            if not (same_lists and same_config):
                self.engine.swap(self.engine.snapshot if same_lists else snap, cfg, new.clients)
        except Exception as exc:
            metrics.CONFIG_RELOADS.inc("failure")
            metrics.LISTS_RELOADS.inc("failure")
            log.error(
                "reload failed, keeping the running configuration and lists: %s",
                exc,
                exc_info=log.isEnabledFor(logging.DEBUG),
            )
            return False
        finally:
            self._reloading = False
        self._apply(cfg, same_config, same_lists)
        metrics.CONFIG_RELOADS.inc("unchanged" if same_config else "success")
        metrics.LISTS_RELOADS.inc("unchanged" if same_lists else "success")
        trim_memory()
        log.info(
            "reload: config generation %d (digest %s, %s), %d lists, %d entries (%s) in %.1fs",
            self.generation,
            cfg.digest,
            "unchanged" if same_config else "changed",
            len(self.engine.snapshot.lists),
            self.engine.snapshot.total_entries,
            "unchanged" if same_lists else "new snapshot",
            time.monotonic() - t0,
        )
        return True

    def _apply(self, cfg: Config, same_config: bool, same_lists: bool) -> None:
        """After a successful reload: caches dropped, restart-only settings named, workers told, one generation more."""
        from filterproxy import reload as config_reload

        if self.dns is not None and not same_config:
            self.dns.on_config(cfg)
        elif self.dns is not None and not same_lists:
            self.dns.on_swap()
        changed = config_reload.restart_needed(self.cfg, cfg)
        if changed:
            log.warning(
                "reload: %s changed in %s: needs a restart (serving with the running values meanwhile)",
                ", ".join(changed),
                cfg.path,
            )
        self.generation += 1
        if self.proxy is not None:
            self.proxy.options["filterproxy_config_generation"] = self.generation  # for workers started later
            try:
                self.proxy.reload()
            except Exception:
                log.exception("proxy: reload failed")
        if self.dns_workers is not None:
            self.dns_workers.generation = self.generation
            self.dns_workers.reload()
        if not same_lists:
            _publish_lists(self.engine.snapshot)
        elif self.engine.snapshot.folder is not None:
            log.info("reload: lists unchanged (snapshot %s)", os.path.basename(self.engine.snapshot.folder))
        if self.dns is not None:
            config_reload.publish("dns", self.generation, cfg)

    # ------------------------------------------------------------------ PID file
    def _write_pid(self) -> None:
        d = self.cfg.server.state_dir
        if not d:
            return
        try:
            os.makedirs(d, exist_ok=True)
            path = os.path.join(d, "filterproxy.pid")
            atomic_write(path, f"{os.getpid()}\n")
            self.pidfile = path
        except OSError as exc:
            log.warning(
                "cannot write the PID file in %s: %s ('filterproxy lists reload' will not find us)", d, exc.strerror
            )

    def _remove_pid(self) -> None:
        if not self.pidfile:
            return
        try:
            with open(self.pidfile) as f:
                if f.read().strip() == str(os.getpid()):
                    os.unlink(self.pidfile)
        except OSError:
            pass


async def _serve(runner: Runner) -> int:
    try:
        await runner.start()
    except BaseException:
        await runner.stop()
        raise
    freeze_loaded()  # everything loaded so far is permanent: the collector never scans it again
    try:
        await runner.wait()
    finally:
        await runner.stop()
    return 0


def run(args: argparse.Namespace) -> int:
    """The ``run`` sub-command (see the module docstring)."""
    from filterproxy.app import load_engine

    t0 = time.monotonic()
    cfg, engine = load_engine(
        args.config, args.extra_list, args.client_group, state_dir=getattr(args, "state_dir", None)
    )
    apply_overrides(args, cfg)
    trim_memory()
    snap = engine.snapshot
    log.info(
        "loaded %s: %d groups, %d lists, %d entries in %.1fs (RSS %.0f MB)",
        cfg.path,
        len(cfg.groups),
        len(snap.lists),
        snap.total_entries,
        time.monotonic() - t0,
        _rss_mb(),
    )
    runner = Runner(args, cfg, engine)
    try:
        # The standard asyncio loop (see docs/decisions/core-event-loop.md).
        return asyncio.run(_serve(runner))
    except (OSError, RuntimeError) as exc:  # an address in use, a worker that could not start
        log.error("cannot start: %s", exc)
        print(f"filterproxy: error: {exc}", file=sys.stderr)
        return 1
