"""The target of an HTTP request: the host and full URL to decide on, and whether its names agree.

:func:`target` reads the host the way mitmproxy's ``pretty_host``/``pretty_url`` do, in one pass over the
headers (it runs on every request). :func:`host_problem` refuses requests that name their host
ambiguously, so the name decided on is the name the origin serves. An IP literal is read here, once, the
way browsers read it (``http://0x7f.1/`` is ``127.0.0.1``, :func:`filterproxy.names.canonical_ip`); a host
that ends in a number but is no address is refused.
"""

from __future__ import annotations

from mitmproxy import connection, http
from mitmproxy.net.http import url as murl
from mitmproxy.proxy import mode_specs

from filterproxy.names import NameError_, canonical_ip

_H2 = (b"HTTP/2.0", b"HTTP/3", b"HTTP/3.0")


def fingerprint(req: http.Request) -> tuple:
    """What the decision depended on; compared by identity first, so an unchanged request costs ~0.3 µs."""
    d = req.data
    return d.host, d.port, d.scheme, d.authority, d.path, d.headers.fields


def target(req: http.Request) -> tuple[str, str, bool]:
    """(host to decide on, full URL, has Proxy-Authorization) in one pass over the headers.

    The same as mitmproxy's ``pretty_host``/``pretty_url`` (Host header, or ``:authority`` on HTTP/2 and
    3, before the connection address), at a third of their cost: three header look-ups per request
    are a measurable part of the filter's overhead.
    """
    d = req.data
    hh = d.authority if d.authority and d.http_version in _H2 else None
    auth = False
    for k, v in d.headers.fields:
        n = len(k)
        if n == 4 and hh is None and k.lower() == b"host":
            hh = v
        elif n == 19 and k.lower() == b"proxy-authorization":
            auth = True
    scheme = d.scheme.decode("ascii", "replace") or "http"
    if hh:
        head, colon, tail = hh.rpartition(b":")
        if colon and tail.isdigit() and head and b"[" not in head and hh.isascii():  # name:port (fast path)
            host, port = head.decode("ascii").lower(), int(tail)
        elif not colon and hh.isascii():  # name
            host, port = hh.decode("ascii").lower(), None
        else:  # IPv6, IDN, odd spellings
            host, port = murl.parse_authority(hh.decode("utf-8", "surrogateescape"), check=False)
        if port is None:
            port = murl.default_port(scheme) or d.port
    else:
        host, port = d.host, d.port
    if ":" in host or host.rstrip(".").rpartition(".")[2][:1].isdigit():  # maybe an IP literal (names: no)
        host = _address(host)
    shown = f"[{host}]" if ":" in host else host
    if murl.default_port(scheme) != port:
        shown = f"{shown}:{port}"
    return host, f"{scheme}://{shown}{d.path.decode('utf-8', 'surrogateescape')}", auth


def _address(host: str) -> str:
    """An IP literal's canonical address (``2130706433`` → ``127.0.0.1``); anything else as it is (a name,
    or a host that is no valid address, which :func:`host_problem` refuses)."""
    try:
        return canonical_ip(host) or host
    except NameError_:
        return host


def _bad_address(host: str) -> bool:
    """A host that ends in a number but is no IP address (``256.0.0.1``, ``1.2.3.4.5``, ``0x1.08``): browsers
    refuse such a URL, and the filter cannot tell which address it would reach."""
    try:
        canonical_ip(host)  # a name returns at once (its last label starts with a letter)
    except NameError_:
        return True
    return False


def _host_name(value: bytes) -> str:
    """The name in a ``Host`` / ``:authority`` value: lower case, no port, no trailing dot."""
    if b":" not in value and value.isascii():
        return value.decode("ascii").lower().rstrip(".")
    host, _port = murl.parse_authority(value.decode("utf-8", "surrogateescape"), check=False)
    return host.lower().rstrip(".")


# modes whose request target is what the client named (absolute form, CONNECT); in the others (transparent,
# WireGuard, local) it is the connection's destination address, which a Host name does not contradict
_NAMED_TARGET = (mode_specs.RegularMode, mode_specs.UpstreamMode)


def _is_address(host: str) -> bool:
    """An IP literal: IPv6, or a last label of digits (no top-level domain is numeric)."""
    return ":" in host or host.rpartition(".")[2].isdigit()


def host_problem(req: http.Request, client: connection.Client, tunnel_host: str | None = None) -> str | None:
    """Why the request names its host ambiguously (→ 400), or None.

    The filter decides on one name; an origin may use another (the last of two ``Host`` lines, the URL).
    Refused: more than one ``Host``; HTTP/2-3 ``Host`` ≠ ``:authority``; HTTP/1 ``Host`` ≠ the absolute-form
    or CONNECT target (``tunnel_host``: the request's own target may have been re-routed since), or ≠ the SNI
    of an intercepted TLS connection. (Reverse mode rewrites ``Host`` itself.) HTTP/2-3 may reuse a connection
    for another name (connection coalescing, RFC 9113 9.1.1), so the SNI is not compared there; every
    request is decided on its own ``:authority`` anyway.
    """
    d = req.data
    hosts = [v for k, v in d.headers.fields if len(k) == 4 and k.lower() == b"host"]
    if len(hosts) > 1:
        return "more than one Host header"
    if _bad_address(d.host.rstrip(".")) or (d.authority and _bad_address(_host_name(d.authority))):
        return "the host is not a valid IP address"
    if not hosts:
        return None  # HTTP/1.0 or HTTP/2 without Host: decided on the target / :authority
    name = _host_name(hosts[0])
    if _bad_address(name):
        return "the Host header is not a valid IP address"
    if d.http_version in _H2:
        if d.authority and _host_name(d.authority) != name:
            return "the Host header disagrees with :authority"
        return None
    mode = client.proxy_mode
    if tunnel_host is not None:
        if name != tunnel_host:
            return "the Host header disagrees with the CONNECT target"
    elif (
        (target := d.host.lower().rstrip(".")) != name
        and not isinstance(mode, mode_specs.ReverseMode)
        and (isinstance(mode, _NAMED_TARGET) or not _is_address(target))
    ):
        return "the Host header disagrees with the request target"
    if client.tls and client.sni and client.sni.lower().rstrip(".") != name:
        return "the Host header disagrees with the TLS server name (SNI)"
    return None
