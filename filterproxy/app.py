"""The composition root: the one place that turns a config file plus overrides into ``(Config, Engine)``.

``filterproxy run``, every other sub-command and the mitmproxy addon build their state here, so a
``--state-dir``, an ``--extra-list`` or a ``--client-group`` means the same thing on every path.
Nothing in the package imports ``cli`` or ``runner``; they import this.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from filterproxy.clients import ClientMap
    from filterproxy.config import Config
    from filterproxy.policy.engine import Engine


class SetupError(Exception):
    """A command-line override that cannot be applied (the message names the flag and what was expected)."""


def load_config_with(
    config_path: str | None, *, state_dir: str | None = None, extra_lists: Sequence[str] = ()
) -> Config:
    """Load the config and apply the overrides that change what is loaded (state folder, extra lists).

    Downloaded lists are found in the state folder when they are used, so a ``state_dir`` here is all
    it takes for them to follow it."""
    from filterproxy.config import load_config
    from filterproxy.lists.source import parse_extra_list

    cfg = load_config(config_path)
    if state_dir:
        cfg.server.state_dir = os.path.abspath(state_dir)
    for spec in extra_lists:
        src = parse_extra_list(spec)
        assert src.path is not None  # an extra list is always a local file (FORMAT:CATEGORY:PATH)
        if not os.path.exists(src.path):
            raise SetupError(f"--extra-list {spec}: file not found: {src.path}")
        cfg.lists.append(src)
    return cfg


def load_engine(
    config_path: str | None,
    extra_lists: Sequence[str] | None = None,
    client_groups: Sequence[str] | None = None,
    *,
    state_dir: str | None = None,
    strict_lists: bool = False,
) -> tuple[Config, Engine]:
    """Config + list snapshot + engine, as ``run``, ``explain``, ``export`` and the addon all need them."""
    from filterproxy.lists.snapshot_cache import load_or_build
    from filterproxy.policy.engine import Engine

    cfg = load_config_with(config_path, state_dir=state_dir, extra_lists=extra_lists or ())
    snap = load_or_build(cfg, extra=bool(extra_lists), strict=strict_lists)
    return cfg, Engine(cfg, snap, client_map(cfg, client_groups or ()))


def client_map(cfg: Config, specs: Sequence[str]) -> ClientMap:
    """The configuration's client rules plus the ``--client-group CIDR=GROUP`` flags."""
    from filterproxy.clients import ClientMap

    clients = ClientMap(cfg.clients, cfg.default_group)
    for spec in specs:
        cidr, sep, group = spec.partition("=")
        if not sep or group not in cfg.groups:
            raise SetupError(f"--client-group {spec!r}: expected CIDR=GROUP with GROUP one of {', '.join(cfg.groups)}")
        try:
            clients.add_cidr(cidr, group)
        except ValueError:
            raise SetupError(f"--client-group {spec!r}: invalid CIDR {cidr!r}") from None
    return clients
