"""DNS-over-HTTPS (RFC 8484) with ``requests`` in a small thread pool (no extra dependency)."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from filterproxy.dns.upstream.base import UpstreamError, question_matches
from filterproxy.dns.upstream.health import Upstream

if TYPE_CHECKING:  # at run time both are imported where first used
    from concurrent.futures import ThreadPoolExecutor

    import requests


class HttpsUpstream(Upstream):
    """DNS-over-HTTPS (RFC 8484) with ``requests`` in a small thread pool (no extra dependency).

    POST ``application/dns-message`` by default; a URL template with ``{?dns}`` selects GET. The query ID
    is 0 on the wire (RFC 8484 §4.1, cache friendly) and restored on the reply.
    """

    proto = "doh"
    _executor: ThreadPoolExecutor | None = None

    def __init__(self, url: str, name: str | None = None):
        super().__init__(name or url.replace("{?dns}", ""))
        self.get = "{?dns}" in url
        self.url = url.replace("{?dns}", "")
        self._session: requests.Session | None = None

    def _post(self, body: bytes, timeout: float) -> bytes:
        import requests

        if self._session is None:
            self._session = requests.Session()
            self._session.headers.update({"Accept": "application/dns-message", "User-Agent": "filterproxy"})
        try:
            if self.get:
                import base64

                dns = base64.urlsafe_b64encode(body).rstrip(b"=").decode("ascii")
                r = self._session.get(self.url, params={"dns": dns}, timeout=timeout)
            else:
                r = self._session.post(
                    self.url, data=body, timeout=timeout, headers={"Content-Type": "application/dns-message"}
                )
        except requests.exceptions.SSLError as exc:
            raise UpstreamError("tls", str(exc)) from None
        except requests.exceptions.Timeout:
            raise UpstreamError("timeout", f"no reply within {timeout:.1f}s") from None
        except requests.exceptions.RequestException as exc:
            raise UpstreamError("network", str(exc)) from None
        if r.status_code != 200:
            raise UpstreamError("http", f"HTTP {r.status_code}")
        if not r.headers.get("Content-Type", "").startswith("application/dns-message"):
            raise UpstreamError("http", f"unexpected content type {r.headers.get('Content-Type')!r}")
        return r.content

    async def exchange(self, query: bytes, timeout: float) -> bytes:
        from concurrent.futures import ThreadPoolExecutor

        if HttpsUpstream._executor is None:
            HttpsUpstream._executor = ThreadPoolExecutor(max_workers=4, thread_name_prefix="filterproxy-doh")
        body = b"\x00\x00" + query[2:]
        loop = asyncio.get_running_loop()
        try:
            reply = await asyncio.wait_for(
                loop.run_in_executor(self._executor, self._post, body, timeout), timeout + 0.5
            )
        except TimeoutError:
            raise UpstreamError("timeout", f"no reply within {timeout:.1f}s") from None
        if len(reply) < 12 or not reply[2] & 0x80 or not question_matches(body, reply):
            raise UpstreamError("protocol", "not a reply to our question")
        return query[:2] + reply[2:]
