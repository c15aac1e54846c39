"""The HTTP(S) path: a mitmproxy addon around the policy engine.

* :mod:`filterproxy.http.addon`      — ``FilterAddon``: the mitmproxy hooks
* :mod:`filterproxy.http.state`      — ``HttpState``, options, loading, hot swap (SIGHUP), report spool
* :mod:`filterproxy.http.identity`   — who is asking: proxy users, listener groups, IP/CIDR/MAC; per-connection state
* :mod:`filterproxy.http.target`     — the host and URL of a request; ambiguous ``Host`` → 400
* :mod:`filterproxy.http.responses`  — the proxy's own answers: block page, PAC file, 400/403/407, fail closed
* :mod:`filterproxy.http.protocol`   — mitmproxy protocol gaps closed here (HTTP/1 trailers → 400)
* :mod:`filterproxy.http.blockpage`  — the block page (vi/en, tone per age group, 403/451)
* :mod:`filterproxy.http.safesearch` — SafeSearch parameters and headers on forwarded requests
* :mod:`filterproxy.http.auth`       — proxy users file (``Proxy-Authorization: Basic`` → group)
* :mod:`filterproxy.http.pac`        — the PAC file served by the proxy itself
* :mod:`filterproxy.http.server`     — ``ProxyWorkers``: N mitmproxy processes on one SO_REUSEPORT address
"""
