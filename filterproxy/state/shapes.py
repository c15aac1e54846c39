"""Shape checks for what the state store is given: names, groups, clients, durations.

The store cannot know the running configuration (which groups exist, which lists block what): the admin
layer checks that. Here each value is checked for its form and normalised once, at the edge (house
rule 5), with a :class:`~filterproxy.state.store.StateError`-compatible ``ValueError`` message.
"""

from __future__ import annotations

import ipaddress
import re

from filterproxy.names import NameError_, canonical_host

_GROUP = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_USER = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}")
_DOH = re.compile(r"[A-Za-z0-9_-]{1,64}")
_MAC = re.compile(r"[0-9a-f]{2}([:-]?[0-9a-f]{2}){5}")


class ShapeError(ValueError):
    """A value of the wrong form (the store turns it into a 400)."""


def group(value: str) -> str:
    if not isinstance(value, str) or not _GROUP.fullmatch(value):
        raise ShapeError(f"group {value!r}: expected letters, digits, '_', '.', '-' (at most 64)")
    return value


def user_name(value: str) -> str:
    if not isinstance(value, str) or not _USER.fullmatch(value):
        raise ShapeError(f"name {value!r}: expected letters, digits, '_', '.', '@', '-' (at most 64)")
    return value


def host(value: str) -> str:
    """A host name or address, canonical (filterproxy.names.canonical_host)."""
    try:
        name = canonical_host(value)
    except (NameError_, ValueError, AttributeError):
        raise ShapeError(f"name {value!r}: not a host name") from None
    if not name:
        raise ShapeError("name: empty")
    return name


def ip(value: str) -> str:
    try:
        return str(ipaddress.ip_address(value.strip()))
    except (ValueError, AttributeError):
        raise ShapeError(f"ip {value!r}: not an IP address") from None


def mac(value: str) -> str:
    v = value.strip().lower() if isinstance(value, str) else ""
    if not _MAC.fullmatch(v):
        raise ShapeError(f"mac {value!r}: expected six hex bytes, e.g. aa:bb:cc:dd:ee:ff")
    hexes = v.replace(":", "").replace("-", "")
    return ":".join(hexes[i : i + 2] for i in range(0, 12, 2))


def doh_id(value: str) -> str:
    if not isinstance(value, str) or not _DOH.fullmatch(value):
        raise ShapeError(f"doh_id {value!r}: expected letters, digits, '_', '-' (at most 64)")
    return value


def client(value: str) -> str:
    """A pause's client: an IP address, a MAC address or ``device:<id>`` (canonical form)."""
    v = value.strip() if isinstance(value, str) else ""
    if v.startswith("device:"):
        if not v[7:].isdigit():
            raise ShapeError(f"client {value!r}: expected device:<id>")
        return f"device:{int(v[7:])}"
    try:
        return ip(v)
    except ShapeError:
        pass
    try:
        return mac(v)
    except ShapeError:
        raise ShapeError(f"client {value!r}: expected an IP address, a MAC address or device:<id>") from None


def minutes(value: float | None, *, required: bool = False) -> float | None:
    """A duration in minutes: positive, at most a year; fractional minutes are accepted (tests, scripts)."""
    if value is None:
        if required:
            raise ShapeError("minutes: required")
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 525600:
        raise ShapeError(f"minutes {value!r}: expected a number of minutes between 0 and 525600")
    return float(value)
