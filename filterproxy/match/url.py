"""Host + path-prefix URL rules (UT1 / squidGuard ``urls`` lists: ``host[:port]/path`` per line).

Semantics — squidGuard's urllist, tightened where it surprises people:

* **Host**: a rule for ``example.com`` matches ``example.com`` and every subdomain
  (``www.example.com``, ``m.example.com``). squidGuard only strips ``(www|web|ftp)[0-9]*.`` from the
  request; matching all subdomains covers that and the mobile/CDN twins a child would try next.
  Leading ``www.``/``web.``/``ftp.`` labels (optionally numbered, ``www3.``) are stripped from the
  rule too, as squidGuard's list format prescribes, so ``www.x.com/p`` also blocks ``x.com/p`` (but
  never down to a bare TLD or a ``co.uk``-shaped suffix).
  A port or user info in a rule is ignored (squidGuard does the same). IP-address hosts match exactly.
* **Path**: prefix match at a boundary. ``x.com/games`` matches ``/games``, ``/games/``,
  ``/games/1``, ``/games?id=1`` and ``/games;jsessionid=…`` but not ``/gamesworld`` — squidGuard's
  plain string prefix would, which blocks unrelated pages (``/sk`` → ``/skates``). A rule ending in
  ``/`` matches anything below it. Inside a query the boundaries are ``&`` and ``;``, and a rule
  ending in ``?``, ``&`` or ``=`` matches any continuation (``/index.php?`` → every query).
* **Case**: host and path are compared case-insensitively (ASCII letters only; percent-escapes keep
  their byte value). squidGuard lower-cases both sides, and UT1 lists are curated for it: a phishing
  path listed as ``/NkP72vYO/`` must still block ``/nkp72vyo/`` on a case-insensitive server (IIS,
  macOS), while two different pages on one host that differ only in letter case are rare.
* **Normalisation** (same for rules and requests, see :func:`normalize_path`): drop the fragment
  (a browser never sends it: ``x.com/#ce`` means the site root), percent-escape non-ASCII and unsafe
  characters as UTF-8, decode escaped unreserved characters (``%7E`` → ``~``), upper-case the other
  escapes, resolve ``.``/``..`` segments (``host/.`` → ``host/``) and collapse runs of ``/`` (the
  squidGuard "multiple slash" bypass fix). The query keeps its own spelling apart from escapes.

Lookups walk the request host and its parents (never a bare TLD); per host, the rules sit in a dict
keyed by normalised path prefix, and only the cut points of the request path (``/ ? & = ;``) are
probed, so a lookup costs O(path delimiters) dict probes on hosts that have rules and one dict miss
per label otherwise. When several rules match, the most specific host wins, then the longest path.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterator
from urllib.parse import quote, unquote

from filterproxy.names import normalize_host

__all__ = ["normalize_url_entry", "normalize_path", "UrlPrefixMatcher"]

_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://")
_AUTHORITY_END = re.compile(r"[/?]")
_SQUID_HOST_PREFIX = re.compile(r"(?:www|web|ftp)[0-9]*\.")
_PORT = re.compile(r"[0-9]{1,5}")
_ESCAPE = re.compile(r"%([0-9a-fA-F]{2})")
_SLASHES = re.compile(r"/{2,}")
_CUT = re.compile(r"[/?&=;]")
# Left alone by quote(): RFC 3986 reserved characters keep their literal-vs-escaped spelling (the
# difference can matter to the server), '%' keeps existing escapes; anything else unsafe is escaped.
_SAFE = "!$&'()*+,;=:@/?[]%"
_NEEDS_QUOTE = re.compile(r"[^A-Za-z0-9\-._~!$&'()*+,;=:@/?\[\]%]")
_UNRESERVED = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~")


def _fix_escape(m: re.Match[str]) -> str:
    ch = chr(int(m.group(1), 16))
    return ch.lower() if ch in _UNRESERVED else "%" + m.group(1).upper()


def _normalize_component(text: str) -> str:
    """Escape unsafe/non-ASCII (UTF-8), fold ASCII case, decode unreserved escapes, upper-case the rest."""
    if _NEEDS_QUOTE.search(text):
        text = quote(text, safe=_SAFE, encoding="utf-8", errors="surrogateescape")
    text = text.lower()
    return _ESCAPE.sub(_fix_escape, text) if "%" in text else text


def _remove_dot_segments(path: str) -> str:
    """RFC 3986 §5.2.4 for an absolute path: ``/a/./b/../c`` → ``/a/c``, ``/a/..`` → ``/``."""
    segments = path.split("/")[1:]
    out: list[str] = []
    for seg in segments:
        if seg == ".":
            continue
        if seg == "..":
            if out:
                out.pop()
            continue
        out.append(seg)
    result = "/" + "/".join(out)
    if segments[-1] in (".", "..") and out:
        result += "/"
    return result


def normalize_path(path: str) -> str:
    """Canonical, case-folded ``/path[?query]`` for matching (rules and requests alike).

    Idempotent: ``normalize_path(normalize_path(p)) == normalize_path(p)``.
    """
    path = path.split("#", 1)[0]
    if not path.startswith("/"):
        path = "/" + path
    p, qmark, query = path.partition("?")
    p = _normalize_component(p)
    if "/." in p:
        p = _remove_dot_segments(p)
    if "//" in p:
        p = _SLASHES.sub("/", p)
    return p + "?" + _normalize_component(query) if qmark else p


def _entry_host(authority: str, line: str) -> str:
    """Canonical host of a rule: no user info or port, punycode, lower case, www/web/ftp stripped."""
    authority = authority.rpartition("@")[2]
    if authority.startswith("["):
        end = authority.find("]")
        port = authority[end + 1 :]
        if end < 0 or (port and not (port[0] == ":" and _PORT.fullmatch(port[1:]))):
            raise ValueError(f"invalid IPv6 host in URL entry {line!r}")
        try:
            return f"[{ipaddress.IPv6Address(authority[1:end]).compressed}]"
        except ValueError:
            raise ValueError(f"invalid IPv6 host in URL entry {line!r}") from None
    host, colon, port = authority.partition(":")
    if colon and not (_PORT.fullmatch(port) and 0 < int(port) < 65536):
        raise ValueError(f"invalid port {port!r} in URL entry {line!r}")
    try:
        host = unquote(host, errors="strict").strip(".")
    except UnicodeDecodeError:
        raise ValueError(f"host in URL entry {line!r} is not UTF-8 once percent-decoded") from None
    if not host:
        raise ValueError(f"no host in URL entry {line!r}")
    try:
        return str(ipaddress.IPv4Address(host))
    except ValueError:
        pass
    try:
        host = normalize_host(host)
    except ValueError as exc:
        raise ValueError(f"bad host in URL entry {line!r}: {exc}") from None
    if "." not in host:
        raise ValueError(f"host {host!r} in URL entry {line!r} has a single label (it would cover a TLD)")
    while (m := _SQUID_HOST_PREFIX.match(host)) and not _looks_like_public_suffix(host[m.end() :]):
        host = host[m.end() :]
    return host


def _looks_like_public_suffix(name: str) -> bool:
    """True for a single label or a ``co.uk``-shaped pair (short label under a two-letter ccTLD):
    ``www.co.uk/x`` must not become a rule for every ``.co.uk`` site."""
    first, dot, tld = name.rpartition(".")
    return not dot or ("." not in first and len(tld) == 2 and len(first) <= 3)


def normalize_url_entry(line: str) -> tuple[str, str]:
    """``host[:port]/path`` (a scheme is tolerated) → ``(host, path_prefix)``, both canonical.

    ``path_prefix`` starts with ``/``, so ``host + path_prefix`` is the rule's display form and parses
    back to the same pair. Raises ValueError with the reason for empty lines, comments, embedded
    white space, bad ports and hosts that are not usable names or addresses.
    """
    text = line.strip()
    if not text:
        raise ValueError("empty URL entry")
    if text.startswith("#"):
        raise ValueError(f"comment, not a URL entry: {text[:70]!r}")
    if any(ch.isspace() for ch in text):
        raise ValueError(f"white space inside URL entry {text[:70]!r}")
    if m := _SCHEME.match(text):
        text = text[m.end() :]
    text = text.split("#", 1)[0]
    cut = _AUTHORITY_END.search(text)
    authority, rest = (text[: cut.start()], text[cut.start() :]) if cut else (text, "")
    return _entry_host(authority, line.strip()), normalize_path(rest)


class UrlPrefixMatcher:
    """host + path-prefix rules (UT1 urls lists); compiled per host for O(path components) lookups.

    Build with :meth:`add`, then :meth:`freeze`; frozen matchers are immutable (a list refresh builds
    a new one). Memory: one dict per host plus one str key per rule, measured ~275 bytes per distinct
    rule (UT1's 42,842 url lines → 23,688 rules ≈ 6.5 MB). A rule added again with another record keeps
    both (:meth:`matches` returns every one, so a legal list is seen whatever list came first); :meth:`match`
    returns the first. Lookups measured at ~2 µs on a host without rules, ~5 µs with.
    """

    def __init__(self) -> None:
        self._rules: dict[str, dict[str, int]] = {}
        self._index: dict[str, tuple[int, dict[str, int]]] = {}
        self._more: dict[tuple[str, str], list[int]] = {}  # (host, path) → the records after the first
        self._count = 0
        self._frozen = False

    def add(self, entry: str, record: int) -> None:
        """Add one ``host[:port]/path`` rule (see :func:`normalize_url_entry`; ValueError if unusable)."""
        if self._frozen:
            raise RuntimeError("UrlPrefixMatcher is frozen; build a new one")
        host, path = normalize_url_entry(entry)
        rules = self._rules.setdefault(host, {})
        if path not in rules:
            rules[path] = record
            self._count += 1
        elif record != rules[path] and record not in (more := self._more.setdefault((host, path), [])):
            more.append(record)

    def freeze(self) -> None:
        """Compile the per-host tables (longest rule length per host bounds the probing)."""
        if self._frozen:
            return
        self._index = {host: (max(map(len, rules)), rules) for host, rules in self._rules.items()}
        self._rules = {}
        self._frozen = True

    def __len__(self) -> int:
        """Distinct rules."""
        return self._count

    def match(self, host: str, path: str) -> tuple[str, int] | None:
        """Rule matching a request, as ``(host + path_prefix, record)``, or None.

        ``host`` is the canonical request host (lower case, punycode, no port; a trailing dot, a stray
        port and an unbracketed IPv6 address are tolerated); ``path`` is the request target's path and
        query as sent (normalised here).
        """
        for candidate, prefix, rules in self._walk(host, path):
            return candidate + prefix, rules[prefix]
        return None

    def matches(self, host: str, path: str) -> list[tuple[str, int]]:
        """Every rule matching a request and every record of each, most specific host first, then the
        longest path, then in the order added (arguments as for :meth:`match`)."""
        out: list[tuple[str, int]] = []
        more = self._more
        for candidate, prefix, rules in self._walk(host, path):
            out.append((candidate + prefix, rules[prefix]))
            if more:
                out.extend((candidate + prefix, rec) for rec in more.get((candidate, prefix), ()))
        return out

    def _walk(self, host: str, path: str) -> Iterator[tuple[str, str, dict[str, int]]]:
        """``(host, path prefix, that host's rules)`` of every matching rule, in :meth:`matches` order."""
        if not self._frozen:
            raise RuntimeError("UrlPrefixMatcher.match() before freeze()")
        index = self._index
        host = host.rstrip(".").lower()  # cheap insurance: a stray capital must not fail open
        if ":" in host:
            host = _request_host_with_colon(host)
        request: str | None = None  # normalised only when some host in the chain has rules
        candidate = host
        is_ip = host.startswith("[") or host.rpartition(".")[2].isdigit()
        while True:
            hit = index.get(candidate)
            if hit is not None:
                if request is None:
                    request = normalize_path(path)
                for prefix in _prefixes(hit[1], request, hit[0]):
                    yield candidate, prefix, hit[1]
            if is_ip:
                return
            dot = candidate.find(".")
            candidate = candidate[dot + 1 :]
            if dot < 0 or "." not in candidate:  # never a bare TLD
                return


def _request_host_with_colon(host: str) -> str:
    """``name:port`` → ``name``; an IPv6 address, bracketed or not → ``[compressed]`` like the rules."""
    if host.count(":") == 1:
        return host.partition(":")[0]
    try:
        return f"[{ipaddress.IPv6Address(host.strip('[]')).compressed}]"
    except ValueError:
        return host


def _prefixes(rules: dict[str, int], request: str, maxlen: int) -> Iterator[str]:
    """The rules in ``rules`` that are boundary prefixes of ``request`` (both normalised), longest first."""
    last = None
    if len(request) <= maxlen and request in rules:
        yield (last := request)
    q = request.find("?")
    if q < 0:
        q = len(request)
    cuts = [m.start() for m in _CUT.finditer(request, 0, min(len(request), maxlen + 1))]
    for i in reversed(cuts):
        c = request[i]
        # A rule that ends with this delimiter: "/" always; "?", "&", "=" once in the query.
        if i + 1 <= maxlen and (c == "/" or (i >= q and c in "?&=")) and request[: i + 1] in rules:
            if request[: i + 1] != last:  # lengths only shrink: a repeat follows its twin
                yield (last := request[: i + 1])
        # A rule that ends just before it: a path boundary, or a parameter boundary in the query.
        if 0 < i <= maxlen and (c in "/?;" if i <= q else c in "&;") and request[:i] in rules:
            if request[:i] != last:
                yield (last := request[:i])
