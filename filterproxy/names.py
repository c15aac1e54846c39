"""Normalise names once, at the edge: lower case, IDNA/punycode, no trailing dot.

Everything inside filterproxy assumes canonical names (CONTRIBUTING.md rule 5).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterator

_LABEL_OK = re.compile(r"^[a-z0-9_*](?:[a-z0-9_\-*]{0,61}[a-z0-9_*])?$")


class NameError_(ValueError):
    """A string that is not a usable domain name."""


def _to_ascii(label: str) -> str:
    """IDNA 2008 with UTS #46 mapping, non-transitional (what browsers send: ``faß.de`` →
    ``xn--fa-hia.de``, not ``fass.de``), so DNS, URL and URL-hash paths agree on every name."""
    if label.isascii():
        return label
    import idna

    try:
        return idna.encode(label, uts46=True, transitional=False).decode("ascii")
    except idna.IDNAError:
        try:  # some list entries use symbols IDNA 2008 refuses; Python's IDNA 2003 codec takes them
            return label.encode("idna").decode("ascii")
        except UnicodeError as exc:
            raise NameError_(f"invalid internationalised label {label!r}: {exc}") from None


def normalize_host(name: str) -> str:
    """Return ``name`` lower-cased, punycoded, without trailing dot; raise NameError_ if unusable.

    Underscores are accepted (real service names and list entries use them); ``*`` only as a whole
    leading label, handled by the parsers, never here.
    """
    n = name.strip().rstrip(".").lower()
    if not n:
        raise NameError_("empty name")
    if len(n) > 253 and n.isascii():
        raise NameError_(f"name longer than 253 characters: {n[:40]}...")
    labels = n.split(".")
    out = []
    for label in labels:
        if not label:
            raise NameError_(f"empty label in {name!r}")
        a = _to_ascii(label)
        if not _LABEL_OK.match(a) or "*" in a:
            raise NameError_(f"invalid label {label!r} in {name!r}")
        out.append(a)
    result = ".".join(out)
    if len(result) > 253:
        raise NameError_(f"name longer than 253 characters: {result[:40]}...")
    return result


def is_ip(text: str) -> bool:
    """True for a literal IPv4 or IPv6 address (lists mix them in; they are not names)."""
    t = text.strip("[]")
    if ":" not in t and not t[-1:].isdigit():  # fast path (DNS hot path): an IPv4 ends in a digit, IPv6 has ':'
        return False
    try:
        ipaddress.ip_address(t)
        return True
    except ValueError:
        return False


def self_and_parents(host: str) -> Iterator[str]:
    """``host``, then each parent domain in turn: ``a.b.c`` → ``a.b.c``, ``b.c``, ``c``."""
    name = host
    while True:
        yield name
        i = name.find(".")
        if i < 0:
            return
        name = name[i + 1 :]
