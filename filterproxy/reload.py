"""Config reload (SIGHUP, ``filterproxy lists reload``, ``systemctl reload``): what one reload reads, what a
running process can apply, and the config generation every serving process reports.

A reload re-reads the configuration file, its policy files and the lists, and hands config + snapshot to
``Engine.swap`` as one reference, so DNS and the proxy decide with the same groups. What a running process
cannot change (listen addresses, upstreams, worker counts, cache sizes, ...) keeps its running value and is
logged by name as needing a restart. An invalid file keeps the running configuration (``file:line: why``).

Generation: every successful reload counts one. The main process, its DNS workers and its proxy workers
each log it with the configuration's digest and publish ``filterproxy_config_generation{role}`` (the lowest
of a role's processes); a worker started later begins at its parent's generation.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from filterproxy import metrics

if TYPE_CHECKING:
    from filterproxy.clients import ClientMap
    from filterproxy.config import Config
    from filterproxy.lists.snapshot import Snapshot

log = logging.getLogger("filterproxy.reload")

# sections a running process built its sockets, workers and caches from; their fields need a restart,
# except the ones listed in _LIVE (applied by DnsService.on_config)
_RESTART_SECTIONS = ("server", "upstreams", "cache", "dns", "metrics", "reports", "querylog")
_LIVE = {"dns": frozenset({"allowed_networks", "rate_limit"})}


@dataclass(frozen=True)
class Loaded:
    """One reload's inputs, read off the serving path: configuration, client map and list snapshot."""

    config: Config
    clients: ClientMap
    snapshot: Snapshot


def load(args: argparse.Namespace, adjust: Callable[[Config], None]) -> Loaded:
    """Read configuration, policies and lists again, as ``filterproxy run`` did at start (slow: call it in a
    thread). ``adjust`` applies the command-line flags. Raises ``ConfigError`` (file:line), ``SetupError``,
    ``ListError`` or a ``lists/guard`` refusal; the caller keeps what it serves."""
    from filterproxy.app import client_map, load_config_with
    from filterproxy.lists.snapshot_cache import load_or_build

    extra = getattr(args, "extra_list", None) or ()
    cfg = load_config_with(getattr(args, "config", None), state_dir=getattr(args, "state_dir", None), extra_lists=extra)
    adjust(cfg)
    clients = client_map(cfg, getattr(args, "client_group", None) or ())
    snap = load_or_build(cfg, extra=bool(extra), strict=False, refuse=True)
    return Loaded(cfg, clients, snap)


def restart_needed(running: Config, new: Config) -> list[str]:
    """The settings (``section.field``) that differ between ``running`` and ``new`` and cannot be applied live."""
    out = []
    for name in _RESTART_SECTIONS:
        old_sec, new_sec = getattr(running, name), getattr(new, name)
        live = _LIVE.get(name, frozenset())
        out += [
            f"{name}.{f.name}"
            for f in dataclasses.fields(old_sec)
            if f.name not in live and _setting(getattr(old_sec, f.name)) != _setting(getattr(new_sec, f.name))
        ]
    return out


def _setting(value: object) -> object:
    """A setting as compared across reloads: a secret file by its path (its ``where``, file:line, moves with edits)."""
    return getattr(value, "path", value) if hasattr(value, "where") else value


def publish(role: str, generation: int, config: Config) -> None:
    """Log and publish the config generation this process serves (``role``: dns or proxy)."""
    metrics.CONFIG_GENERATION.set(role, value=generation)
    log.info("%s: config generation %d (%s, digest %s)", role, generation, config.path, config.digest)
