"""Parsers for the list formats real blocklists use.

Every parser turns a file into :class:`Entry` records with the line they came from. Lines that cannot be
parsed are skipped and counted (the first few kept with file:line); structural problems (unreadable
file, a source that yields zero entries) raise :class:`ListError`.

Match semantics per format (what a user of that format expects):

========== =================================================================================
hosts      ``IP name [name...]``: each name **exactly** (hosts(5) semantics, like Pi-hole)
domains    one name per line: **exactly** (hagezi/dibdot "domains" lists name subdomains explicitly)
adblock    ``||d^`` d and subdomains; ``|d^|`` exactly; ``@@`` exceptions; ``*`` and ``/re/`` → regex
wildcard   ``*.d`` → d **and** its subdomains (hagezi's AdBlock twin ``||d^`` matches the apex too);
           a bare ``d`` exactly
rpz        ``d CNAME .`` exactly, ``*.d CNAME .`` subdomains only (RPZ lists both for apex+subs);
           ``CNAME rpz-passthru.`` is an exception
ut1        folder with ``domains`` (squidGuard: d and subdomains), ``urls``, ``expressions``
regex      one ``/regex/`` (or bare regex) per line, searched in the name
urls       UT1-style ``host[:port]/path`` prefixes (HTTP only)
urlhash    SHA-256 hex of a Safe Browsing URL expression, or an 8-hex-digit prefix (HTTP only)
imagehash  ``md5:``/``sha1:``/``sha256:``/``pdq:`` hashes (HTTP image responses); the other image formats:
           ``threatexchange`` (ThreatExchange/HMA CSV or TSV export), ``md5``/``sha1`` (one digest a line)
========== =================================================================================

Image-hash formats yield one ``imageblock`` entry per stretch of the file: arrays of digests
(:class:`~filterproxy.match.imagehash.listfile.ImageHashBlock`), not one object per hash.

A source may override the domain semantics with ``match: exact`` or ``match: subdomains``.
"""

from __future__ import annotations

import gzip
import io
import ipaddress
import logging
import os
import re
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from filterproxy.names import NameError_, normalize_host

if TYPE_CHECKING:
    from filterproxy.match.imagehash.listfile import ImageHashBlock

log = logging.getLogger("filterproxy.lists")

# Domain match flags (combined per record).
EXACT = 1  # the name itself
SUBS = 2  # strict subdomains of the name
ALLOW = 4  # an exception rule (@@, rpz-passthru, allow source)
BOTH = EXACT | SUBS

DOMAIN_FORMATS = ("hosts", "domains", "adblock", "wildcard", "rpz", "ut1", "regex")
URL_FORMATS = ("urls", "urlhash")
IMAGE_FORMATS = ("imagehash", "threatexchange", "md5", "sha1")  # = listfile.IMAGE_LIST_FORMATS
FORMATS = DOMAIN_FORMATS + URL_FORMATS + IMAGE_FORMATS
# Formats whose rule text is never shown to users (a source's ``hashed`` default).
HASHED_FORMATS = frozenset({"urlhash", *IMAGE_FORMATS})
# Formats read in place from a local category folder (never downloaded as one file).
FOLDER_FORMATS = frozenset({"ut1"})

MAX_REPORTED_ERRORS = 5


class ListError(Exception):
    """A list that cannot be used at all (unreadable, unknown format, zero entries)."""


@dataclass(slots=True)
class Entry:
    """One parsed rule. ``kind`` is domain | ip | regex | url | urlhash | imagehash | imageblock."""

    kind: str
    value: str
    flags: int
    line: int
    extra: str | None = None  # imagehash: item id
    block: ImageHashBlock | None = None  # imageblock: the hashes of many lines (value: their kind)


@dataclass
class ParseStats:
    """What parsing a file produced: counts and the first few skipped lines with file:line."""

    path: str
    entries: int = 0
    skipped: int = 0
    ips: int = 0
    comments: int = 0
    other: int = 0  # rows of a kind the list carries but filterproxy does not use (a video hash): not errors
    errors: list[str] = field(default_factory=list)
    header_count: int | None = None  # "Number of entries: N" stated by the list itself

    def skip(self, line: int, why: str) -> None:
        self.skipped += 1
        if len(self.errors) < MAX_REPORTED_ERRORS:
            self.errors.append(f"{self.path}:{line}: {why}")


def open_text(path: str) -> io.TextIOBase:
    """Open a list file as text, transparently gunzipping ``.gz`` or gzip-magic files."""
    try:
        raw = open(path, "rb")
    except OSError as exc:
        raise ListError(f"{path}: cannot open list: {exc.strerror}") from None
    magic = raw.read(2)
    raw.seek(0)
    stream = gzip.GzipFile(fileobj=raw) if magic == b"\x1f\x8b" else raw
    return io.TextIOWrapper(stream, encoding="utf-8", errors="replace", newline=None)


_HEADER_COUNT = re.compile(r"(?:number of (?:entries|unique domains)|blocked domains|entries)\s*:\s*([\d,]+)", re.I)
_HOSTS_SKIP = frozenset(
    {
        "localhost",
        "localhost.localdomain",
        "local",
        "broadcasthost",
        "ip6-localhost",
        "ip6-loopback",
        "ip6-localnet",
        "ip6-mcastprefix",
        "ip6-allnodes",
        "ip6-allrouters",
        "ip6-allhosts",
        "0.0.0.0",
    }
)


def _note_header(stats: ParseStats, text: str) -> None:
    if stats.header_count is None:
        m = _HEADER_COUNT.search(text)
        if m:
            stats.header_count = int(m.group(1).replace(",", ""))


def _strip_comment(line: str) -> str:
    i = line.find("#")
    return line if i < 0 else line[:i]


def _content_lines(f: io.TextIOBase, stats: ParseStats) -> Iterator[tuple[int, str]]:
    """(line number, text) of lines with content; ``#``/``!`` comment lines are counted (and read for a
    stated entry count), inline ``# comments`` cut off."""
    for n, raw in enumerate(f, 1):
        s = raw.strip()
        if not s or s[0] in "#!":
            if s:
                stats.comments += 1
                _note_header(stats, s)
            continue
        s = _strip_comment(s).strip()
        if s:
            yield n, s


def _domain_or_ip(token: str, flags: int, lineno: int, stats: ParseStats) -> Entry | None:
    if _is_ip(token):
        stats.ips += 1
        return Entry("ip", str(ipaddress.ip_address(token.strip("[]"))), flags, lineno)
    try:
        return Entry("domain", normalize_host(token), flags, lineno)
    except NameError_ as exc:
        stats.skip(lineno, f"{exc} (expected a domain name)")
        return None


def _is_ip(token: str) -> bool:
    try:
        ipaddress.ip_address(token.strip("[]"))
        return True
    except ValueError:
        return False


def parse_hosts(f: io.TextIOBase, stats: ParseStats) -> Iterator[Entry]:
    """hosts(5): ``IP name [alias...]  # comment``; localhost/IPv6 header lines are not rules."""
    for n, raw in enumerate(f, 1):
        s = raw.strip()
        if not s or s[0] == "#":
            if s:
                stats.comments += 1
                _note_header(stats, s)
            continue
        fields = _strip_comment(s).split()
        if not fields:
            continue
        if not _is_ip(fields[0]):
            stats.skip(n, f"expected 'IP name...' but line starts with {fields[0][:40]!r}")
            continue
        if len(fields) == 1:
            stats.skip(n, "address without a host name")
            continue
        for name in fields[1:]:
            if name.lower() in _HOSTS_SKIP:
                continue
            e = _domain_or_ip(name, EXACT, n, stats)
            if e is not None and e.kind == "domain":
                yield e


def parse_domains(f: io.TextIOBase, stats: ParseStats, flags: int = EXACT) -> Iterator[Entry]:
    """One name per line; ``#`` comments (whole-line and inline); bare IPs become IP entries."""
    for n, s in _content_lines(f, stats):
        token = s.split()[0]
        e = _domain_or_ip(token, flags, n, stats)
        if e is not None:
            yield e


def parse_wildcard(f: io.TextIOBase, stats: ParseStats) -> Iterator[Entry]:
    """``*.d`` → d and subdomains; bare ``d`` → exactly d."""
    for n, s in _content_lines(f, stats):
        if s.startswith("*."):
            e = _domain_or_ip(s[2:], BOTH, n, stats)
        elif "*" in s:
            yield from _name_regex(s, "exact", 0, n, stats)
            continue
        else:
            e = _domain_or_ip(s, EXACT, n, stats)
        if e is not None:
            yield e


_NAME_CHARS = "[a-z0-9_\\-.]*"


def _name_regex(pattern: str, mode: str, flags: int, n: int, stats: ParseStats) -> Iterator[Entry]:
    """A name pattern with ``*`` (``cdn.us*.exponea.com``) or a leading ``-`` → one regex entry.

    mode: ``sub`` (the name or a subdomain), ``exact`` (the whole name), ``loose`` (name ends with it).
    """
    p = pattern.lower()
    if not p.isascii() or not re.fullmatch(r"[a-z0-9_.\-*]+", p):
        stats.skip(n, f"invalid wildcard pattern {pattern!r}")
        return
    core = _NAME_CHARS.join(re.escape(part) for part in p.split("*"))
    rx = {"sub": "^(?:" + _NAME_CHARS + "\\.)?" + core + "$", "exact": "^" + core + "$", "loose": core + "$"}[mode]
    yield Entry("regex", rx, flags, n)


# Modifiers that still make sense for a DNS/host rule (AdGuard DNS semantics); others → rule skipped.
_ADB_MODIFIERS_OK = {"important", "doc", "document", "all", "domain", "denyallow", "client", "ctag", "dnstype"}


def parse_adblock(f: io.TextIOBase, stats: ParseStats) -> Iterator[Entry]:
    """AdBlock / AdGuard DNS syntax: ``||d^``, ``|d^|``, ``@@`` exceptions, ``/regex/``, ``!`` comments."""
    for n, raw in enumerate(f, 1):
        s = raw.strip()
        if not s or s[0] == "!" or s[0] == "#" or s.startswith("[Adblock"):
            if s:
                stats.comments += 1
                _note_header(stats, s)
            continue
        e = _adblock_rule(s, n, stats)
        if e is not None:
            yield e


def _adblock_rule(rule: str, n: int, stats: ParseStats) -> Entry | None:
    """One AdBlock rule line (stripped, not a comment) → its entry; None when it is skipped."""
    allow = ALLOW if rule.startswith("@@") else 0
    s = rule[2:] if allow else rule
    if s.startswith("/") and s.endswith("/") and len(s) > 2:
        return _adblock_regex(s[1:-1], allow, n, stats)
    if "$" in s:
        s, _, mods = s.partition("$")
        names = {m.split("=", 1)[0].lstrip("~") for m in mods.split(",") if m}
        if names - _ADB_MODIFIERS_OK:
            stats.skip(n, f"modifier(s) {sorted(names - _ADB_MODIFIERS_OK)} do not apply to DNS names")
            return None
    body, flags = _adblock_host(s)
    if not body or "/" in body or "^" in body:
        stats.skip(n, f"not a host rule: {rule[:60]!r}")
        return None
    if "*" in body or body[0] in "-.":
        mode = "loose" if not s.startswith("|") else ("sub" if s.startswith("||") else "exact")
        return next(_name_regex(body, mode, allow, n, stats), None)
    return _domain_or_ip(body, flags | allow, n, stats)


def _adblock_regex(pattern: str, allow: int, n: int, stats: ParseStats) -> Entry | None:
    """A ``/regex/`` rule (without its slashes) → a regex entry, if it compiles."""
    try:
        re.compile(pattern)
    except re.error as exc:
        stats.skip(n, f"invalid regex: {exc}")
        return None
    return Entry("regex", pattern, allow, n)


def _adblock_host(s: str) -> tuple[str, int]:
    """``||d^`` → (d, BOTH); ``|d^|`` or ``|d^`` → (d, EXACT); a bare ``d`` → (d, BOTH)."""
    if s.startswith("||"):
        body, flags = s[2:], BOTH
    elif s.startswith("|"):
        body, flags = s[1:], EXACT
    else:
        body, flags = s, BOTH
    exact_end = body.endswith("|")
    body = body.rstrip("|")
    if body.endswith("^"):
        body = body[:-1]
    if s.startswith("|") and not s.startswith("||") and not exact_end:
        flags = EXACT
    return body, flags


_RPZ_SPECIAL = {"rpz-ip", "rpz-nsdname", "rpz-nsip", "rpz-client-ip"}
_RPZ_TYPES = {"CNAME", "A", "AAAA", "TXT", "MX", "NS", "SOA", "DNAME", "PTR", "SRV"}


def parse_rpz(f: io.TextIOBase, stats: ParseStats) -> Iterator[Entry]:
    """RPZ zone file: QNAME triggers (``d CNAME .``, ``*.d CNAME .``, ``rpz-passthru.`` exceptions)."""
    origin = ""
    depth = 0
    for n, raw in enumerate(f, 1):
        s = raw.split(";", 1)[0].strip()
        if not s:
            if raw.strip():
                stats.comments += 1
                _note_header(stats, raw)
            continue
        if depth:
            depth += s.count("(") - s.count(")")
            continue
        if s.startswith("$"):
            parts = s.split()
            if parts[0].upper() == "$ORIGIN" and len(parts) > 1:
                origin = parts[1].rstrip(".").lower()
            continue
        if "(" in s:
            depth = s.count("(") - s.count(")")
        e = _rpz_record(s, raw, origin, n, stats)
        if e is not None:
            yield e


def _rpz_record(s: str, raw: str, origin: str, n: int, stats: ParseStats) -> Entry | None:
    """One resource record (``s``: ``raw`` without its comment) → the domain entry of its QNAME trigger;
    None for records that are not rules (SOA, NS, the apex) and for skipped ones."""
    parts = s.split()
    if raw[:1] in (" ", "\t"):
        parts.insert(0, "@")  # owner omitted: same as the previous record (SOA/NS lines of the apex)
    rtype_i = next((i for i, p in enumerate(parts) if p.upper() in _RPZ_TYPES), None)
    if rtype_i is None or rtype_i == 0:
        stats.skip(n, "expected 'name [ttl] [class] TYPE data'")
        return None
    rtype = parts[rtype_i].upper()
    if rtype in ("SOA", "NS"):
        return None
    owner = _rpz_owner(parts[0], origin)
    if owner is None:
        return None
    if not owner or _RPZ_SPECIAL & set(owner.lower().split(".")):
        stats.skip(n, "only QNAME triggers are supported")
        return None
    rdata = parts[rtype_i + 1] if len(parts) > rtype_i + 1 else ""
    allow = ALLOW if rtype == "CNAME" and rdata.lower() in ("rpz-passthru.", "rpz-passthru") else 0
    if owner.startswith("*."):
        e = _domain_or_ip(owner[2:], SUBS | allow, n, stats)
    else:
        e = _domain_or_ip(owner, EXACT | allow, n, stats)
    return e if e is not None and e.kind == "domain" else None


def _rpz_owner(owner: str, origin: str) -> str | None:
    """The owner name relative to ``$ORIGIN`` (an absolute name loses its final dot); None for ``@``."""
    if owner.endswith("."):
        owner = owner[:-1]
    elif owner == "@":
        return None
    if origin and (owner.lower() == origin or owner.lower().endswith("." + origin)):
        owner = owner[: -len(origin)].rstrip(".")
    return owner


def parse_regex(f: io.TextIOBase, stats: ParseStats) -> Iterator[Entry]:
    """One regex per line (``/re/`` or bare), searched in the name; ``#``/``!`` comments."""
    for n, raw in enumerate(f, 1):
        s = raw.strip()
        if not s or s[0] in "#!":
            continue
        if s.startswith("/") and s.endswith("/") and len(s) > 2:
            s = s[1:-1]
        try:
            re.compile(s)
        except re.error as exc:
            stats.skip(n, f"invalid regex: {exc}")
            continue
        yield Entry("regex", s, 0, n)


def parse_urls(f: io.TextIOBase, stats: ParseStats) -> Iterator[Entry]:
    """UT1-style ``host[:port]/path`` lines (no scheme), checked by the URL matcher."""
    from filterproxy.match.url import normalize_url_entry

    for n, raw in enumerate(f, 1):
        s = raw.strip()
        if not s or s[0] == "#":
            continue
        try:
            host, path = normalize_url_entry(s)
        except ValueError as exc:
            stats.skip(n, str(exc))
            continue
        yield Entry("url", f"{host}{path}", 0, n)


_HEX = re.compile(r"^[0-9a-fA-F]+$")


def parse_urlhash(f: io.TextIOBase, stats: ParseStats) -> Iterator[Entry]:
    """One SHA-256 hex (64 digits) or 4-byte prefix (8 digits) per line; ``#`` comments."""
    for n, raw in enumerate(f, 1):
        s = _strip_comment(raw).strip()
        if not s:
            continue
        token = s.split()[0].split(",")[0]
        if not _HEX.match(token) or len(token) not in (8, 64):
            stats.skip(n, f"expected 64 or 8 hex digits, got {token[:70]!r}")
            continue
        yield Entry("urlhash", token.lower(), 0, n)


def parse_image_blocks(fmt: str, path: str, stats: ParseStats) -> Iterator[Entry]:
    """An image-hash list (formats: :mod:`filterproxy.match.imagehash.listfile`) as ``imageblock``
    entries; rows of other signal types are counted in ``stats.other`` and logged once."""
    from filterproxy.match.imagehash.listfile import read_image_blocks

    others: Counter[str] = Counter()

    def other(signal_type: str) -> None:
        stats.other += 1
        others[signal_type] += 1

    try:
        for block in read_image_blocks(fmt, path, stats.skip, other):
            yield Entry("imageblock", block.kind, 0, int(block.lines[0]), None, block)
    except OSError as exc:
        raise ListError(f"{path}: cannot read list: {exc.strerror or exc}") from None
    if others:
        kinds = ", ".join(f"{k} {n}" for k, n in others.most_common())
        log.info("%s: %d rows of signal types not used for images left out (%s)", path, stats.other, kinds)


def parse_imagehash(path: str, stats: ParseStats, fmt: str = "imagehash") -> Iterator[Entry]:
    """One ``imagehash`` entry (``kind:hex``, item id in ``extra``) per hash of an image-hash list."""
    for e in parse_image_blocks(fmt, path, stats):
        assert e.block is not None  # parse_image_blocks yields imageblock entries only
        items = e.block.items or [None] * len(e.block.lines)
        for digest, line, item in zip(e.block.digests, e.block.lines.tolist(), items, strict=True):
            yield Entry("imagehash", f"{e.block.kind}:{digest.tobytes().hex()}", 0, line, item)


def parse_ut1(path: str, stats_for: Callable[[str], ParseStats]) -> Iterator[tuple[str, Entry]]:
    """UT1 category folder: ``domains`` (d and subdomains), ``urls``, ``expressions`` (regexes).

    ``stats_for(file)`` returns the ParseStats for each member file. Yields (member, entry).
    """
    found = False
    for member, parser in (
        ("domains", lambda f, st: parse_domains(f, st, BOTH)),
        ("urls", parse_urls),
        ("expressions", parse_regex),
        ("very_restrictive_expression", None),
    ):
        p = os.path.join(path, member)
        for candidate in (p, p + ".gz"):
            if os.path.exists(candidate):
                break
        else:
            continue
        if parser is None:
            continue  # opt-in only: these regexes over-block by design
        found = True
        st = stats_for(candidate)
        with open_text(candidate) as f:
            for e in parser(f, st):
                yield candidate, e
    if not found:
        raise ListError(f"{path}: not a UT1 category folder (expected 'domains' and/or 'urls' files)")


def iter_entries(
    fmt: str, path: str, stats_for: Callable[[str], ParseStats], match: str | None = None
) -> Iterator[tuple[str, Entry]]:
    """Parse ``path`` in format ``fmt``; yields (file, entry). ``match`` overrides domain semantics."""
    if fmt not in FORMATS:
        raise ListError(f"{path}: unknown list format {fmt!r} (expected one of: {', '.join(FORMATS)})")
    override = {None: None, "exact": EXACT, "subdomains": BOTH}[match]
    if fmt == "ut1":
        if not os.path.isdir(path):
            raise ListError(f"{path}: format ut1 expects a category folder")
        it: Iterator[tuple[str, Entry]] = parse_ut1(path, stats_for)
    elif fmt in IMAGE_FORMATS:
        if os.path.isdir(path):
            raise ListError(f"{path}: is a folder; format {fmt} expects a file")
        st = stats_for(path)
        it = ((path, e) for e in parse_image_blocks(fmt, path, st))
    else:
        if os.path.isdir(path):
            raise ListError(f"{path}: is a folder; format {fmt} expects a file")
        st = stats_for(path)
        parser = {
            "hosts": parse_hosts,
            "domains": parse_domains,
            "adblock": parse_adblock,
            "wildcard": parse_wildcard,
            "rpz": parse_rpz,
            "regex": parse_regex,
            "urls": parse_urls,
            "urlhash": parse_urlhash,
        }[fmt]

        def gen() -> Iterator[tuple[str, Entry]]:
            with open_text(path) as f:
                for e in parser(f, st):
                    yield path, e

        it = gen()
    for file, e in it:
        if override is not None and e.kind == "domain":
            e.flags = (e.flags & ALLOW) | override
        yield file, e
