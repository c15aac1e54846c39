"""The ``groups:`` and ``clients:`` sections: age groups (each a policy file) and who belongs to which."""

from __future__ import annotations

import ipaddress
import os
import re
from typing import Any

from filterproxy.config.loader import Section, load_yaml, where_item, where_key
from filterproxy.config.model import ClientRule
from filterproxy.config.policy import parse_policy
from filterproxy.config.sections import resolve_path
from filterproxy.policy.model import Policy
from filterproxy.vocabulary import DOH_ID_RE, ID_RE, ConfigError

CLIENT_KINDS = ("user", "doh", "mac", "ip", "cidr")
_MAC_RE = re.compile(r"(?:[0-9a-fA-F]{2}[:-]){5}[0-9a-fA-F]{2}")


def _group_specs(top: Section, pdir: str) -> Any:
    """``groups:`` as a mapping id → spec; without it, every policy file in the policies folder is a group."""
    raw = top.get("groups", None, types=(dict, list))
    if raw is None:
        if not os.path.isdir(pdir):
            raise ConfigError(f"{top.where()}: no 'groups' and policies folder {pdir} not found")
        names = sorted(f[:-5] for f in os.listdir(pdir) if f.endswith(".yaml"))
        return {n: {"policy": n} for n in names}
    if isinstance(raw, list):
        return {str(n): {"policy": str(n)} for n in raw}
    return raw


def parse_groups(top: Section, path: str) -> dict[str, Policy]:
    pdir = resolve_path(path, top.get("policies_dir", "policies", types=(str,)))
    raw = _group_specs(top, pdir)
    groups: dict[str, Policy] = {}
    for gid, spec in raw.items():
        where = where_key(raw, gid, path)
        if not ID_RE.match(str(gid)):
            raise ConfigError(f"{where}: invalid group id {gid!r}")
        if isinstance(spec, str):
            spec = {"policy": spec}
        sec = Section(spec, f"groups.{gid}", where)
        pfile = sec.get("policy", gid, types=(str,))
        sec.done()
        ppath = pfile if pfile.endswith(".yaml") else os.path.join(pdir, pfile + ".yaml")
        ppath = resolve_path(path, ppath) if not os.path.isabs(ppath) else ppath
        if not os.path.exists(ppath):
            raise ConfigError(f"{where}: group {gid!r}: policy file not found: {ppath}")
        groups[str(gid)] = parse_policy(load_yaml(ppath), str(gid), ppath)
    if not groups:
        raise ConfigError(f"{top.where('groups')}: at least one group is required")
    return groups


def _client_value(kind: str, value: str) -> str:
    """The canonical spelling of a client rule's value; ValueError when it is not one."""
    if kind == "ip":
        return str(ipaddress.ip_address(value))
    if kind == "cidr":
        return str(ipaddress.ip_network(value, strict=False))
    if kind == "doh" and not DOH_ID_RE.match(value):
        raise ValueError(value)
    if kind == "mac":
        if not _MAC_RE.fullmatch(value):
            raise ValueError(value)
        return value.lower().replace("-", ":")
    return value


def parse_clients(raw: Any, path: str, groups: dict[str, Policy]) -> list[ClientRule]:
    out: list[ClientRule] = []
    for i, item in enumerate(raw):
        where = where_item(raw, i, path)
        sec = Section(item, f"clients[{i}]", where)
        group = sec.get("group", None, types=(str,))
        if group not in groups:
            raise ConfigError(
                f"{sec.where('group')}: clients[{i}]: unknown group {group!r} (groups: {', '.join(groups)})"
            )
        kinds = [k for k in CLIENT_KINDS if sec.get(k) is not None]
        if len(kinds) != 1:
            raise ConfigError(f"{where}: clients[{i}] needs exactly one of user, doh, mac, ip, cidr")
        kind = kinds[0]
        value = str(sec.get(kind))
        try:
            value = _client_value(kind, value)
        except ValueError:
            raise ConfigError(f"{sec.where(kind)}: clients[{i}]: invalid {kind} {value!r}") from None
        sec.done()
        out.append(ClientRule(kind, value, group, where))
    return out
