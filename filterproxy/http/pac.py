"""Proxy auto-configuration (PAC) served by the proxy itself.

Browsers set to "automatic proxy configuration URL" ``http://PROXY:PORT/proxy.pac`` (or ``/wpad.dat``)
fetch this file straight from the proxy; it sends everything except local names through the proxy.
The proxy address in the file is the one the client used to fetch it (its ``Host`` header), so one
file works whatever name or address the school gives the gateway.
"""

from __future__ import annotations

import re

__all__ = ["PAC_PATHS", "PAC_CONTENT_TYPE", "render_pac"]

PAC_PATHS = frozenset({"/proxy.pac", "/wpad.dat"})
PAC_CONTENT_TYPE = "application/x-ns-proxy-autoconfig"
_HOSTPORT = re.compile(r"^(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]{1,253})(?::\d{1,5})?$")

_PAC = """\
// filterproxy: send all web traffic through the filtering proxy (local names go direct).
function FindProxyForURL(url, host) {{
  if (isPlainHostName(host) || host === "localhost" || shExpMatch(host, "*.local") ||
      shExpMatch(host, "127.*") || host === "[::1]" || host === "::1") {{
    return "DIRECT";
  }}
  return "PROXY {proxy}";
}}
"""


def render_pac(host_header: str | None, fallback: str) -> bytes:
    """The PAC file pointing at ``host_header`` (``HOST:PORT`` the client used), else ``fallback``."""
    proxy = host_header.strip() if host_header and _HOSTPORT.match(host_header.strip()) else fallback
    return _PAC.format(proxy=proxy).encode("ascii")
