"""The proxy's listeners in ``filterproxy.yaml``: ``server.proxy_modes`` and ``http.listener_groups``.

``proxy_modes`` lists mitmproxy modes: the first serves ``server.proxy_listen``, every other one its own
``MODE@PORT`` on the same address (``[regular, transparent@8081]``: the explicit proxy on 8080, the
nftables redirect target on 8081). ``listener_groups`` gives every client of one of those ports a group
(``{8081: students}``, ``{51821: child}`` for one WireGuard tunnel per child). Errors name file:line.
"""

from __future__ import annotations

from typing import Any

from filterproxy.config.loader import Section, where_item, where_key
from filterproxy.vocabulary import ConfigError

PROXY_MODE_KINDS = ("regular", "transparent", "wireguard", "reverse", "upstream", "socks5", "local")
UDP_MODE_KINDS = ("wireguard",)  # a UDP server cannot be shared between processes


def mode_kind(spec: str) -> str:
    """``transparent@8081`` → ``transparent``; ``reverse:http://x@81`` → ``reverse``."""
    return spec.split("@", 1)[0].split(":", 1)[0].strip().lower()


def mode_port(spec: str) -> int | None:
    """The ``@PORT`` (or ``@HOST:PORT``) of a mode spec, None without one; ValueError if it is no port."""
    head, at, tail = spec.rpartition("@")
    if not at or not head:
        return None
    port = tail.rsplit(":", 1)[-1]
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(port)
    return int(port)


def parse_proxy_modes(s: Section, proxy_listen: tuple[str, int] | None, workers: int) -> list[str]:
    """``server.proxy_modes`` → the mode specs (default ``[regular]``), checked."""
    raw = s.get("proxy_modes", None, types=(list,))
    if raw is None:
        return ["regular"]
    if not raw:
        raise ConfigError(f"{s.where('proxy_modes')}: 'server.proxy_modes' is empty (expected e.g. [regular])")
    modes: list[str] = []
    ports: dict[int, str] = {proxy_listen[1]: "server.proxy_listen"} if proxy_listen else {}
    for i, item in enumerate(raw):
        where = where_item(raw, i, s.file)
        spec = str(item).strip() if isinstance(item, str | int) else ""
        kind = mode_kind(spec)
        if kind not in PROXY_MODE_KINDS:
            raise ConfigError(
                f"{where}: 'server.proxy_modes': unknown mode {item!r} "
                f"(expected one of {', '.join(PROXY_MODE_KINDS)}, e.g. transparent@8081)"
            )
        try:
            port = mode_port(spec)
        except ValueError:
            raise ConfigError(f"{where}: 'server.proxy_modes': invalid port in {spec!r} (expected MODE@PORT)") from None
        if i > 0 and port is None:
            raise ConfigError(
                f"{where}: 'server.proxy_modes': {spec!r} needs its own port (MODE@PORT, e.g. {kind}@8081): "
                "only the first mode listens on server.proxy_listen"
            )
        if i == 0 and kind in UDP_MODE_KINDS and workers != 1:
            raise ConfigError(
                f"{where}: 'server.proxy_modes': {kind} as the first mode runs in one proxy worker "
                f"(a UDP server cannot be shared); list it second, e.g. [regular, {kind}@51820]"
            )
        if port is not None:
            if port in ports:
                raise ConfigError(f"{where}: 'server.proxy_modes': port {port} is already used by {ports[port]}")
            ports[port] = spec
        modes.append(spec)
    return modes


def parse_listener_groups(h: Section) -> dict[int, str]:
    """``http.listener_groups`` (PORT → GROUP) → {port: group}; ports and groups are checked later."""
    raw = h.get("listener_groups", {}, types=(dict,))
    out: dict[int, str] = {}
    for key, group in raw.items():
        where = where_key(raw, key, h.file)
        port = int(key) if isinstance(key, int | str) and str(key).strip().isdigit() else 0
        if not 0 < port < 65536 or isinstance(key, bool):
            raise ConfigError(f"{where}: 'http.listener_groups': {key!r} is not a port (expected PORT: GROUP)")
        if not isinstance(group, str) or not group:
            raise ConfigError(f"{where}: 'http.listener_groups.{port}' must be a group name, got {group!r}")
        out[port] = group
    return out


def check_listener_groups(raw_http: Any, path: str, modes: list[str], groups: dict[str, Any]) -> None:
    """Every ``http.listener_groups`` port is a ``MODE@PORT`` of ``server.proxy_modes`` and every group exists."""
    raw = raw_http.get("listener_groups") if isinstance(raw_http, dict) else None
    if not raw:
        return
    ports = {p: m for m in modes if (p := mode_port(m)) is not None}
    for key, group in raw.items():
        where = where_key(raw, key, path)
        if int(key) not in ports:
            listed = ", ".join(f"{p} ({m})" for p, m in ports.items()) or "none"
            raise ConfigError(
                f"{where}: 'http.listener_groups': port {key} is not the port of a listener in "
                f"server.proxy_modes (MODE@PORT; listeners with a port: {listed})"
            )
        if group not in groups:
            raise ConfigError(
                f"{where}: 'http.listener_groups.{key}': unknown group {group!r} (groups: {', '.join(groups)})"
            )
