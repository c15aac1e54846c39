"""The HTTP(S) path: a mitmproxy addon around the policy engine.

* :mod:`filterproxy.http.addon`      — ``FilterAddon``: options, hooks, per-connection state, hot swap
* :mod:`filterproxy.http.blockpage`  — the block page (vi/en, tone per age group, 403/451)
* :mod:`filterproxy.http.safesearch` — SafeSearch parameters and headers on forwarded requests
* :mod:`filterproxy.http.auth`       — proxy users file (``Proxy-Authorization: Basic`` → group)
* :mod:`filterproxy.http.pac`        — the PAC file served by the proxy itself
* :mod:`filterproxy.http.server`     — ``ProxyWorkers``: N mitmproxy processes on one SO_REUSEPORT address
"""
