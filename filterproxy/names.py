"""Normalise names once, at the edge: lower case, IDNA/punycode, no trailing dot; IP literals read the way
browsers read them (WHATWG URL host parser: ``0x7f.1`` and ``2130706433`` are ``127.0.0.1``).

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


_IPV4_DIGITS = {10: frozenset("0123456789"), 16: frozenset("0123456789abcdef"), 8: frozenset("01234567")}


def _ipv4_number(part: str) -> int | None:
    """One part of an IPv4 address as the WHATWG URL standard reads it: decimal, ``0x`` hex (``0x`` alone is
    0) or ``0``-led octal; None when it is no number. (``int()`` alone would take ``_``, ``+`` and non-ASCII digits.)"""
    if not part:
        return None
    radix = 10
    if part[:2] == "0x":
        part, radix = part[2:], 16
    elif len(part) > 1 and part[0] == "0":
        part, radix = part[1:], 8
    if not part:
        return 0
    digits = _IPV4_DIGITS[radix]
    return int(part, radix) if all(c in digits for c in part) else None


def _ipv4(name: str) -> str | None:
    """The WHATWG IPv4 parser on a lower-case name without a trailing dot: the dotted-decimal address,
    None when the name does not end in a number (a domain name), NameError_ when it does but is no address."""
    parts = name.split(".")
    if not _ends_in_number(parts[-1]):
        return None
    numbers: list[int] = []
    for part in parts if len(parts) <= 4 else ():
        n = _ipv4_number(part)
        if n is None:
            break
        numbers.append(n)
    if len(numbers) != len(parts):
        raise NameError_(f"{name!r} ends in a number but is not an IPv4 address")
    *head, tail = numbers
    if any(n > 255 for n in head) or tail >= 256 ** (5 - len(numbers)):
        raise NameError_(f"IPv4 address out of range: {name!r}")
    value = tail + sum(n << (8 * (3 - i)) for i, n in enumerate(head))
    return str(ipaddress.IPv4Address(value))


def _ipv6(text: str) -> str:
    """An IPv6 literal (with or without brackets) in its compressed lower-case form; an IPv4-mapped address
    (``::ffff:127.0.0.1``) as the IPv4 address it reaches. NameError_ when it is no address."""
    inner = text[1:-1] if text.startswith("[") and text.endswith("]") else text
    if "%" in inner:  # a zone id: not part of a URL host
        raise NameError_(f"IPv6 zone ids are not allowed: {text!r}")
    try:
        addr = ipaddress.IPv6Address(inner)
    except ValueError:
        raise NameError_(f"invalid IPv6 address {text!r}") from None
    return str(addr.ipv4_mapped or addr)


def canonical_host(text: str) -> str:
    """``text`` as the one canonical host the filter decides on, read the way browsers do (WHATWG URL host
    parser): an IP literal becomes its canonical address (``0x7f.1``, ``0177.0.0.1``, ``2130706433`` and
    ``127.1`` all → ``127.0.0.1``; ``[::FFFF:7F00:1]`` → ``127.0.0.1``; ``[2001:DB8::0:1]`` → ``2001:db8::1``),
    a name is :func:`normalize_host`'d. NameError_ for a host that is neither, including one that ends in a
    number but is no IPv4 address (``256.1.1.1``, ``1.2.3.4.5``, ``example.123``): browsers refuse those.
    """
    t = text.strip()
    if ":" in t or t.startswith("["):
        return _ipv6(t.lower())
    name = normalize_host(t)
    if not name.rpartition(".")[2][:1].isdigit():
        return name  # the usual case: the last label of a name (its top-level domain) starts with a letter
    return _ipv4(name) or name


def canonical_ip(text: str) -> str | None:
    """The canonical address of an IP literal (see :func:`canonical_host`), None for anything that is not
    one (a name, valid or not); NameError_ for a host that ends in a number but is no address."""
    t = text.strip().rstrip(".")
    if ":" not in t and not t.startswith("[") and not t.rpartition(".")[2][:1].isdigit():
        return None  # fast path: the last label of a name (its top-level domain) starts with a letter
    try:
        host = canonical_host(t)
    except NameError_:
        if ":" in t or t.startswith("[") or _ends_in_number(t):
            raise
        return None
    return host if is_ip(host) else None


def _ends_in_number(text: str) -> bool:
    """WHATWG "ends in a number": the last label is all ASCII digits, or ``0x`` and hex digits."""
    last = text.lower().rpartition(".")[2]
    return (last.isascii() and last.isdigit()) or _ipv4_number(last) is not None


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
