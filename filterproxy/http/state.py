"""What the HTTP hooks read, and how it is (re)loaded: :class:`HttpState` and its :class:`StateKeeper`.

The keeper declares and reads the addon's mitmproxy options, loads configuration, lists and users file
through :func:`filterproxy.app.load_engine`, hot-swaps a new :class:`HttpState` built in a thread (SIGHUP or
:func:`reload_all`) as one reference, and (re)creates the image-match report spool. On a failed reload the
last good state keeps serving.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
import time
import weakref
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from mitmproxy import ctx, exceptions

from filterproxy import gcpolicy, metrics
from filterproxy.http import blockpage
from filterproxy.http.auth import UsersFile
from filterproxy.names import self_and_parents

if TYPE_CHECKING:
    from mitmproxy import connection

    from filterproxy.config import Config
    from filterproxy.http.images import ImageCheck
    from filterproxy.policy.engine import Engine
    from filterproxy.querylog import QueryLog
    from filterproxy.reports import ReportSpool
    from filterproxy.verdict import Verdict

log = logging.getLogger("filterproxy.http")

LOAD_KEYS = frozenset(
    {
        "filterproxy_config",
        "filterproxy_extra_list",
        "filterproxy_client_group",
        "filterproxy_state_dir",
        "filterproxy_review_form",
    }
)
SPOOL_KEYS = frozenset({"filterproxy_spool", "filterproxy_report_endpoint", "filterproxy_deliver_reports"})


@dataclass(frozen=True)
class HttpState:
    """Everything the hooks need, built off the serving path and swapped in as one reference."""

    engine: Engine
    users: UsersFile | None
    page: blockpage.BlockPageSettings
    passthrough: dict[str, frozenset[str]]  # group → host names (global + policy), suffix match
    passthrough_any: frozenset[str]  # the global http.passthrough names (groups not known yet)
    tones: dict[str, str]
    policy_names: dict[str, tuple[str, dict[str, str]]]  # group → (name, language → localized name)
    levels: dict[str, tuple[str, str]]  # group → (safesearch, youtube)
    generation: int = 0
    loaded_at: float = field(default_factory=time.time)
    descriptions: dict[str, str] = field(default_factory=dict)  # group → the policy's description

    @property
    def config(self) -> Config:
        return self.engine.config

    def is_passthrough(self, host: str, group: str | None) -> bool:
        """Is ``host`` (or a parent) a pass-through name for ``group`` (the global names if unknown)?"""
        names = self.passthrough.get(group, self.passthrough_any) if group else self.passthrough_any
        return bool(names) and any(name in names for name in self_and_parents(host))


def _passthrough_names(cfg: Config) -> set[str]:
    from filterproxy.names import NameError_, normalize_host
    from filterproxy.vocabulary import ConfigError

    names: set[str] = set()
    for name in cfg.http.passthrough:
        try:
            names.add(normalize_host(name.removeprefix("*.")))
        except NameError_ as exc:
            raise ConfigError(f"{cfg.path}: http.passthrough: {exc} (expected a domain name)") from None
    return names


def load_state(
    config_path: str | None,
    extra_lists: Sequence[str] = (),
    client_groups: Sequence[str] = (),
    *,
    state_dir: str | None = None,
    generation: int = 0,
    review_form: bool = False,
) -> HttpState:
    """Load configuration, lists, engine and users file (slow: run it off the event loop).

    Raises ``ConfigError``, ``ListError``, ``SetupError`` or ``UsersFileError`` with a file:line message.
    """
    from filterproxy.app import load_engine

    cfg, engine = load_engine(config_path, list(extra_lists), list(client_groups), state_dir=state_dir)
    if engine.clients.uses_mac:  # MAC rules: read the neighbour table now, off the event loop
        from filterproxy.neighbours import TABLE

        TABLE.warm()
    users = UsersFile.load(cfg.http.users_file, set(cfg.groups)) if cfg.http.users_file else None
    glob = _passthrough_names(cfg)
    try:
        metrics.configure_labels(
            groups=list(cfg.groups) + ["unknown"],
            lists=[li.id for li in engine.snapshot.lists],
            categories=sorted({li.category for li in engine.snapshot.lists}),
        )
    except Exception:  # labels are cosmetic; never fail a load on them
        log.debug("metrics labels not configured", exc_info=True)
    return HttpState(
        engine=engine,
        users=users,
        page=blockpage.BlockPageSettings.from_config(cfg.http, review_form),
        passthrough={g: frozenset(glob | set(p.passthrough)) for g, p in cfg.groups.items()},
        passthrough_any=frozenset(glob),
        tones={g: p.tone for g, p in cfg.groups.items()},
        policy_names={g: (p.name, p.names) for g, p in cfg.groups.items()},
        levels={g: (p.safesearch, p.youtube) for g, p in cfg.groups.items()},
        generation=generation,
        descriptions={g: p.description for g, p in cfg.groups.items() if p.description},
    )


def declare_options(loader: Any) -> None:
    """The addon's mitmproxy options (``mitmdump --options`` lists them)."""
    add = loader.add_option
    add("filterproxy_config", str | None, None, "filterproxy configuration file (default: the embedded one).")
    add(
        "filterproxy_extra_list",
        Sequence[str],
        [],
        "Extra list for this run, FORMAT:CATEGORY:PATH (repeatable), as 'filterproxy run --extra-list'.",
    )
    add(
        "filterproxy_client_group",
        Sequence[str],
        [],
        "Map a client network to a group, CIDR=GROUP (repeatable), as 'filterproxy run --client-group'.",
    )
    add("filterproxy_state_dir", str | None, None, "State folder (overrides server.state_dir).")
    add(
        "filterproxy_review_form",
        bool,
        False,
        "Show the 'blocked by mistake' form on block pages (review requests go to the state store; "
        "'filterproxy run' turns it on while its control API or a shared state_db is on).",
    )
    add(
        "filterproxy_proxy_names",
        Sequence[str],
        [],
        "Extra names of this proxy: requests to NAME:listen-port are answered by the proxy "
        "itself (/proxy.pac, /wpad.dat), never forwarded.",
    )
    add(
        "filterproxy_listener_group",
        Sequence[str],
        [],
        "Map a listener to a group, PORT=GROUP (repeatable): every client of the mode listening "
        "on PORT (e.g. wireguard@51821, one tunnel per child) gets GROUP, after proxy login. "
        "Added to http.listener_groups of the configuration (these win).",
    )
    add(
        "filterproxy_inspect_https",
        bool,
        True,
        "Open allowed HTTPS connections (URL rules, URL hashes, SafeSearch parameters, images). "
        "Off: only the host (CONNECT/SNI) is decided, allowed connections pass through untouched "
        "and blocked ones get the page if the CA is trusted, else are closed - for devices without the CA. "
        "Off here or in http.inspect_https of the configuration is off.",
    )
    add("filterproxy_reload_signal", bool, True, "Reload configuration, lists and users file on SIGHUP.")
    add(
        "filterproxy_config_generation",
        int,
        0,
        "Config generation of the first load ('filterproxy run' passes its own, so a restarted worker "
        "reports the generation it serves); each reload adds one.",
    )
    add(
        "filterproxy_spool",
        str | None,
        None,
        "Folder of the durable image-match report spool (default: reports.spool, else <state_dir>/reports).",
    )
    add(
        "filterproxy_report_endpoint",
        str | None,
        None,
        "HTTPS endpoint that receives image-match reports (default: reports.endpoint).",
    )
    add(
        "filterproxy_deliver_reports",
        bool,
        True,
        "Deliver spooled reports from this process. 'filterproxy run' turns it off in its "
        "proxy workers: the main process delivers.",
    )


def parse_listener_groups(specs: Sequence[str], groups: set[str] | None) -> dict[int, str]:
    """``PORT=GROUP`` options → {port: group}; ``OptionsError`` for a bad spec or an unknown group."""
    out: dict[int, str] = {}
    for spec in specs:
        port, sep, group = spec.partition("=")
        if not sep or not port.strip().isdigit() or not 0 < int(port) < 65536:
            raise exceptions.OptionsError(f"filterproxy_listener_group {spec!r}: expected PORT=GROUP")
        if groups is not None and group not in groups:
            raise exceptions.OptionsError(
                f"filterproxy_listener_group {spec!r}: unknown group {group!r} (groups: {', '.join(sorted(groups))})"
            )
        out[int(port)] = group
    return out


def _option_values() -> tuple:
    o = ctx.options
    return (
        o.filterproxy_config or None,
        tuple(o.filterproxy_extra_list),
        tuple(o.filterproxy_client_group),
        o.filterproxy_state_dir or None,
        bool(o.filterproxy_review_form),
    )


_KEEPERS: weakref.WeakSet[StateKeeper] = weakref.WeakSet()


def reload_all() -> list[Future]:
    """Reload every live addon state in this process (what SIGHUP does); returns their futures."""
    return [k.reload() for k in list(_KEEPERS)]


class StateKeeper:
    """Owns the current :class:`HttpState`, the option-derived settings, reloads and the report spool."""

    def __init__(self, images: ImageCheck, state: HttpState | None = None) -> None:
        self.state: HttpState | None = state
        self.images = images
        self.proxy_names: frozenset[str] = frozenset()
        self._opt_listener_groups: dict[int, str] = {}  # filterproxy_listener_group options
        self._opt_inspect_https = True  # the filterproxy_inspect_https option
        self._groups: tuple[HttpState | None, dict[int, str]] = (None, {})
        self.last_reload_error: str | None = None
        self.spool: ReportSpool | None = None  # set when the configuration is loaded
        self.querylog: QueryLog | None = None  # querylog.enabled of the first configuration loaded
        self._querylog_set = False
        self._loaded_options: tuple | None = None
        self._reload_lock = threading.Lock()
        self._reload_future: Future | None = None
        self._signal_installed = False
        self._running = False
        self._spool_key: tuple | None = None
        self._deliver_stop: threading.Event | None = None
        self._live: Any = None  # filterproxy.state.watch.LiveWatcher, once a configuration is loaded
        self._stats: Any = None  # filterproxy.state.stats.StatsWriter, while running
        self._seen: Any = None  # filterproxy.state.seen.SeenWriter, while running
        _KEEPERS.add(self)

    @property
    def header_timeout(self) -> float:
        """``http.header_timeout`` of the loaded configuration (0, no deadline, until one is loaded)."""
        return self.state.config.http.header_timeout if self.state is not None else 0.0

    # ------------------------------------------------------------ options
    def configure(self, updated: set[str]) -> None:
        o = ctx.options
        if "filterproxy_inspect_https" in updated:
            self._opt_inspect_https = bool(o.filterproxy_inspect_https)
        if "filterproxy_proxy_names" in updated:
            self.proxy_names = frozenset(n.strip().lower().rstrip(".") for n in o.filterproxy_proxy_names)
        reload = bool(LOAD_KEYS & updated)
        if reload or self.state is None:
            self._load()
        if self.state is not None and (SPOOL_KEYS & updated or reload):
            self._setup_spool()
        if self.state is not None and not self._querylog_set:  # read once: turning it on or off takes a restart
            from filterproxy import querylog

            self.querylog = querylog.acquire(self.state.config, "http")
            self._querylog_set = True
        if "filterproxy_listener_group" in updated or reload:
            groups = set(self.state.config.groups) if self.state is not None else None
            self._opt_listener_groups = parse_listener_groups(o.filterproxy_listener_group, groups)
            self._groups = (None, {})

    @property
    def inspect_https(self) -> bool:
        """``http.inspect_https`` of the loaded configuration and the option: off in either place is off."""
        st = self.state
        return self._opt_inspect_https and (st is None or st.config.http.inspect_https)

    @property
    def listener_groups(self) -> dict[int, str]:
        """Port → group: ``http.listener_groups`` of the loaded configuration, then the options (which win)."""
        st = self.state
        if self._groups[0] is not st:  # rebuilt once per swap or option change, not per request
            cfg_groups: dict[int, str] = st.config.http.listener_groups if st is not None else {}
            self._groups = (st, {**cfg_groups, **self._opt_listener_groups})
        return self._groups[1]

    def _load(self) -> None:
        opts = _option_values()
        if opts == self._loaded_options and self.state is not None:
            return
        t0 = time.monotonic()
        first = max(1, ctx.options.filterproxy_config_generation)
        try:
            gen = (self.state.generation + 1) if self.state else first
            state = load_state(*opts[:3], state_dir=opts[3], generation=gen, review_form=opts[4])
        except Exception as exc:
            raise exceptions.OptionsError(f"filterproxy: {exc}") from None
        self.state = state
        metrics.CONFIG_GENERATION.set("proxy", value=state.generation)
        self._loaded_options = opts
        self._watch_live(state.config)
        gcpolicy.freeze_loaded()
        snap = state.engine.snapshot
        log.info(
            "filterproxy http: %s loaded in %.1f s (config generation %d, digest %s) — "
            "%d groups, %d lists, %d entries%s",
            state.config.path,
            time.monotonic() - t0,
            state.generation,
            state.config.digest,
            len(state.config.groups),
            len(snap.lists),
            snap.total_entries,
            f", {len(state.users)} proxy users" if state.users is not None else "",
        )

    def _watch_live(self, cfg: Config) -> None:
        """The control API's live rules (filterproxy.state.watch), polled in a thread; the watcher installs
        them into each engine this keeper loads (the HTTP path caches no verdicts)."""
        from filterproxy.state.store import state_url
        from filterproxy.state.watch import LiveWatcher

        if self._live is None:
            self._live = LiveWatcher(state_url(cfg), lambda: self.state.engine if self.state else None)
            self._live.start(sync=False)

    # ------------------------------------------------------------ report spool
    def _setup_spool(self) -> None:
        """(Re)create the report spool from the options and the configuration (``configure`` only)."""
        from filterproxy.reports import ReportSpool

        assert self.state is not None  # configure() calls this only once a state is loaded
        cfg = self.state.config
        o = ctx.options
        endpoint = (o.filterproxy_report_endpoint or cfg.reports.endpoint) if o.filterproxy_deliver_reports else None
        key = (o.filterproxy_spool, endpoint, cfg.reports, cfg.server.state_dir, cfg.server.gateway_id)
        if key == self._spool_key:
            return
        try:
            spool = ReportSpool.from_config(cfg, endpoint, o.filterproxy_spool)
        except (OSError, ValueError) as exc:  # pictures on a hash list are still blocked; reports are lost
            log.error(
                "filterproxy: cannot use the report spool: %s (image matches will be blocked but not reported)", exc
            )
            return
        self._stop_delivery()
        self.spool = self.images.spool = spool
        self._spool_key = key
        if endpoint and self._deliver_stop is None and self._running:
            self._start_delivery()

    def _start_delivery(self) -> None:
        if self.spool is not None and self.spool.endpoint:
            self._deliver_stop = threading.Event()
            self.spool.start(self._deliver_stop)

    def _stop_delivery(self) -> None:
        if self._deliver_stop is not None:
            self._deliver_stop.set()
            self._deliver_stop = None

    # ------------------------------------------------------------ lifecycle / hot swap
    def running(self) -> None:
        self._running = True
        self._start_delivery()
        if self.state is not None and self._stats is None:  # decision counts (roll-up: filterproxy run's main)
            from filterproxy.state import stats

            self._stats = stats.start_writer(self.state.config, housekeeping=False)
        if self.state is not None and self._seen is None:  # named devices' last-seen times
            from filterproxy.state import seen

            self._seen = seen.start_writer(self.state.config)
        if not ctx.options.filterproxy_reload_signal or threading.current_thread() is not threading.main_thread():
            return
        try:
            asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, self.reload)
            self._signal_installed = True
        except (NotImplementedError, RuntimeError, ValueError):  # not on this platform / no loop
            log.debug("SIGHUP handler not installed", exc_info=True)

    def log_decision(self, client: connection.Client, v: Verdict, host: str, method: str) -> None:
        """One query-log record for a request decision (nothing when the log is off)."""
        ql = self.querylog
        if ql is not None:
            from filterproxy.querylog import info

            peer = client.peername[0] if client.peername else ""
            ql.put(time.monotonic(), peer, info(v.group or "unknown", "http", host, method, v.action, v))

    def done(self) -> None:
        self._stop_delivery()
        if self._stats is not None:
            self._stats.stop()  # writes what is left
            self._stats = None
        if self._seen is not None:
            self._seen.stop()  # writes what is left
            self._seen = None
        if self._live is not None:
            self._live.stop()
            self._live = None
        if self.querylog is not None:
            from filterproxy import querylog

            querylog.release(self.querylog)
            self.querylog, self._querylog_set = None, False
        if self._signal_installed:
            try:
                asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
            except (RuntimeError, ValueError):
                pass
            self._signal_installed = False

    def reload(self) -> Future:
        """Rebuild the state in a thread and swap it in; a reload already running is reused.

        On failure the current state stays (last known good) and the error is logged. Thread-safe.
        """
        with self._reload_lock:
            if self._reload_future is not None and not self._reload_future.done():
                return self._reload_future
            fut: Future = Future()
            self._reload_future = fut
        threading.Thread(target=self._reload_worker, args=(fut,), name="filterproxy-http-reload", daemon=True).start()
        return fut

    def _reload_worker(self, fut: Future) -> None:
        opts = self._loaded_options or (None, (), (), None, False)
        t0 = time.monotonic()
        try:
            old = self.state
            gen = (old.generation + 1) if old else 1
            state = load_state(*opts[:3], state_dir=opts[3], generation=gen, review_form=opts[4])
        except BaseException as exc:  # keep serving with the last good state
            self.last_reload_error = str(exc)
            log.error("filterproxy http: reload failed, keeping the current lists: %s", exc)
            fut.set_result(False)
            return
        self.state = state  # the swap: one reference
        self.last_reload_error = None
        metrics.CONFIG_GENERATION.set("proxy", value=state.generation)
        del old
        gcpolicy.freeze_loaded()
        log.info(
            "filterproxy http: reloaded in %.1f s (config generation %d, digest %s, %d entries)",
            time.monotonic() - t0,
            state.generation,
            state.config.digest,
            state.engine.snapshot.total_entries,
        )
        fut.set_result(True)
