"""The DNS side of ``filterproxy run``: the chain, the listeners of one address, housekeeping, swaps.

Housekeeping runs once a second on the loop: metrics published, a group's packed replies dropped when
its schedules change, client states rebuilt every 30 s when MAC rules exist (leases move), and the
loaded caches frozen out of the garbage collector's walks (:mod:`filterproxy.gcpolicy`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from filterproxy import gcpolicy, metrics, querylog
from filterproxy.dns.server import DnsServer

if TYPE_CHECKING:
    from filterproxy.config import Config
    from filterproxy.dns.encrypted import Listener
    from filterproxy.policy.engine import Engine

log = logging.getLogger("filterproxy.dns")

FREEZE_EVERY = 5  # housekeeping ticks (seconds) between two freezes of what the young generations kept
FULL_EVERY = 3600  # ticks between two full collections (reclaims reference cycles frozen meanwhile)
MAC_REFRESH_EVERY = 30  # ticks between two rebuilds of the client states when MAC rules exist


class DnsService:
    """The DNS side of ``filterproxy run``: chain + listeners + periodic housekeeping."""

    def __init__(
        self,
        cfg: Config,
        engine: Engine,
        *,
        listen: tuple[str, int],
        upstreams: list[str] | None = None,
        reuse_port: bool = False,
    ) -> None:
        from filterproxy.dns.chain import build_chain

        self.cfg = cfg
        self.engine = engine
        self.chain = build_chain(cfg, engine, upstreams=upstreams)
        timeout = cfg.upstreams.timeout
        deadline = min(15.0, timeout * (len(upstreams or cfg.upstreams.servers) + 1) + 0.5)
        self.server = DnsServer(
            self.chain,
            listen[0],
            listen[1],
            tcp_idle_timeout=cfg.dns.tcp_idle_timeout,
            tcp_max_connections=cfg.dns.tcp_max_connections,
            tcp_max_per_client=cfg.dns.tcp_max_per_client,
            reuse_port=reuse_port,
            deadline=deadline,
        )
        ql = self.server.tally.querylog = querylog.acquire(cfg, "dns")  # before the listeners start (see Tally)
        if ql is not None:
            self.chain.clients.querylog = ql  # client states carry their client ids
            ql.on_roll(self._querylog_rolled)
        self._timer: asyncio.Task | None = None
        self._schedules: dict[str, tuple[bool, ...]] = {}
        self.encrypted: list[Listener] = []  # DoT / DoH (start_encrypted)

    @property
    def address(self) -> tuple[str, int]:
        return self.server.host, self.server.port

    async def start(self) -> None:
        self.chain.log()
        if self.engine.clients.uses_mac:  # MAC rules: read the neighbour table before the first query
            from filterproxy.neighbours import TABLE

            await asyncio.get_running_loop().run_in_executor(None, TABLE.warm)
        await self.server.start()
        self._schedules = self._active_schedules()
        self._timer = asyncio.get_running_loop().create_task(self._housekeeping())

    async def start_encrypted(self) -> None:
        """The DoT and DoH listeners ``server.dot_listen`` / ``doh_listen`` turn on (main process only)."""
        from filterproxy.dns.encrypted import start_encrypted

        self.encrypted = await start_encrypted(self)

    async def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        for listener in self.encrypted:
            await listener.stop()
        await self.server.stop()
        await self.chain.close()
        querylog.release(self.server.tally.querylog)

    def _querylog_rolled(self) -> None:
        """The query log started a new id generation: packed replies and client states holding ids go."""
        self.chain.packed.clear()
        self.chain.clients.reset()

    def on_swap(self) -> None:
        """Call after ``engine.swap``: packed replies carry old verdicts."""
        self.chain.on_swap()

    def on_live(self) -> None:
        """Call (on the loop) after ``engine.set_live``: memoised verdicts and packed replies go, and client
        states are rebuilt (a device may have moved a client to another group)."""
        self.chain.on_swap()
        self.chain.clients.reset()

    def on_config(self, cfg: Config) -> None:
        """Call after ``engine.swap`` with a new configuration: its groups, clients and ACL reach the chain
        (and every listener that answers through it); every cached verdict and packed reply goes."""
        self.chain.on_config(cfg)
        self._schedules = self._active_schedules()

    def _active_schedules(self) -> dict[str, tuple[bool, ...]]:
        now = self.engine.now()
        return {
            g: tuple(s.active(now) for s in p.schedules) for g, p in self.engine.config.groups.items() if p.schedules
        }

    async def _housekeeping(self) -> None:
        ticks = 0
        while True:
            await asyncio.sleep(1.0)
            ticks += 1
            try:
                self._tick(ticks)
            except Exception:
                log.exception("dns: housekeeping failed")

    def _tick(self, ticks: int) -> None:
        """One second of housekeeping (``ticks`` since the start)."""
        self.server.tally.flush()
        self.chain.clients.expire_misses()  # states built before the neighbour table knew the client's MAC
        self.chain.clients.sweep_seen()  # named devices that asked something this second: last-seen times
        metrics.DNS_CACHE_ENTRIES.set("answers", value=len(self.chain.answer_cache))
        metrics.DNS_CACHE_ENTRIES.set("packed", value=len(self.chain.packed))
        cur = self._active_schedules()
        for g, act in cur.items():
            if self._schedules.get(g) != act:
                log.info("dns: schedules of group %s changed; its cached answers are dropped", g)
                self.chain.on_schedules_changed(g)
        self._schedules = cur
        if ticks % MAC_REFRESH_EVERY == 0 and self.engine.clients.uses_mac:
            self.chain.clients.reset()
        if ticks % FREEZE_EVERY == 0:
            t0 = time.perf_counter()
            if ticks % FULL_EVERY == 0:
                gcpolicy.freeze_loaded()
            else:
                gcpolicy.freeze_young()
            log.debug("dns: gc freeze took %.1f ms", (time.perf_counter() - t0) * 1000)
