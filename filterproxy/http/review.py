"""The block page's "blocked by mistake" form, answered by the proxy itself.

Students cannot reach the control API (it listens on 127.0.0.1 by default), so the form posts to
:data:`REVIEW_PATH` on the block page's own origin: a blocked ``http://`` page reaches the proxy as a
plain request, a blocked ``https://`` page through the intercepted tunnel that showed it, and the proxy's
own address (``is_self``) works too. The path is answered here on every host and never forwarded.

``requestheaders`` checks the method, the size and the per-address limit (the address is used for that
only) and marks the flow with the group the requester's identity resolved to; ``request`` (the body is
read by then) writes the review through the state store in a thread (house rule 9) and answers a
thank-you page. Stored: group, host, reason id, message — never the address, the user or the MAC.
"""

from __future__ import annotations

import asyncio
import html
import logging
import threading
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

from mitmproxy import http

from filterproxy.http import blockpage
from filterproxy.http.identity import peer_ip
from filterproxy.state import reviews, shapes

if TYPE_CHECKING:
    from filterproxy.http.state import HttpState

log = logging.getLogger("filterproxy.http")

REVIEW_PATH = blockpage.REVIEW_PATH  # /.well-known/filterproxy/review
MARK = "filterproxy_review"  # flow.metadata: the requester's group, set once the headers passed the checks
MAX_FORM = 16 * 1024  # bytes of form body

_TEXT = {
    "vi": {
        "thanks_title": "Đã gửi yêu cầu",
        "thanks": "Cảm ơn bạn! Thầy cô sẽ xem lại trang {host}. Nếu được mở, trang sẽ tự vào được sau ít phút.",
        "too_many": "Bạn đã gửi nhiều yêu cầu quá. Hãy thử lại sau {minutes} phút.",
        "bad": "Không đọc được yêu cầu này. Hãy quay lại trang bị chặn và gửi lại.",
        "failed": "Chưa gửi được yêu cầu lúc này. Hãy thử lại sau ít phút.",
    },
    "en": {
        "thanks_title": "Request sent",
        "thanks": "Thank you! A teacher will look at {host}. If it is opened, the page will work in a few minutes.",
        "too_many": "You have sent too many requests. Please try again in {minutes} minutes.",
        "bad": "This request could not be read. Please go back to the blocked page and send it again.",
        "failed": "The request could not be sent right now. Please try again in a few minutes.",
    },
}

_PAGE = (
    '<!DOCTYPE html>\n<html lang="{lang}"><head><meta charset="utf-8">'
    '<meta name="viewport" content="width=device-width, initial-scale=1"><meta name="referrer" content="no-referrer">'
    "<title>{title}</title><style>body{{font:17px/1.55 system-ui,sans-serif;max-width:36rem;margin:3rem auto;"
    "padding:0 1rem;color:#1d2330}}h1{{color:#1f6feb;font-size:1.5rem}}</style></head>"
    '<body><main><h1>{title}</h1><p id="review-answer">{text}</p></main></body></html>\n'
)


def is_review(req: http.Request) -> bool:
    """Is this request the block page's review form (on any host)?"""
    return req.path.split("?", 1)[0] == REVIEW_PATH


class ReviewDesk:
    """The proxy worker's side of review requests: the per-address limit and the store, opened on first use."""

    def __init__(self, limiter: reviews.RequestLimiter | None = None) -> None:
        self.limiter = limiter or reviews.RequestLimiter()
        self._store: Any = None  # filterproxy.state.store.Store, opened in a thread on the first request
        self._store_url: str | None = None
        self._lock = threading.Lock()

    def start(self, flow: http.HTTPFlow, st: HttpState, group: str) -> None:
        """``requestheaders``: refuse a wrong method, a large body or one request too many; else mark the flow
        (``request`` writes it once its body is read)."""
        req = flow.request
        if req.method != "POST":
            _answer(flow, st, 405, "bad", {"Allow": "POST"})
            return
        length = req.headers.get("content-length", "")
        if length and (not length.isdigit() or int(length) > MAX_FORM):
            _answer(flow, st, 413, "bad")
            return
        wait = self.limiter.allow(peer_ip(flow.client_conn) or "unknown")
        if wait is not None:
            _answer(flow, st, 429, "too_many", {"Retry-After": str(wait)}, minutes=max(1, (wait + 59) // 60))
            return
        flow.metadata[MARK] = group

    async def submit(self, flow: http.HTTPFlow, st: HttpState) -> None:
        """``request``: read the form, write the review in a thread, answer the thank-you page."""
        group = flow.metadata.pop(MARK)
        body = flow.request.get_content(strict=False) or b""
        try:
            if len(body) > MAX_FORM:
                raise shapes.ShapeError("the form is too large")
            form = parse_qs(body.decode("utf-8"), max_num_fields=10)
            host = reviews.clean_host(form.get("host", [""])[0])
            reason = reviews.clean_reason(form.get("reason", [""])[0])
            message = reviews.clean_message(form.get("message", [""])[0])  # trimmed to reviews.MAX_MESSAGE
        except (shapes.ShapeError, UnicodeDecodeError, ValueError):
            _answer(flow, st, 400, "bad")
            return
        try:
            await asyncio.get_running_loop().run_in_executor(None, self._write, st.config, group, host, reason, message)
        except Exception as exc:  # nothing is forwarded either way: the student is told to try again
            log.error("filterproxy http: cannot store a review request: %s", exc)
            _answer(flow, st, 503, "failed")
            return
        _answer(flow, st, 200, "thanks", host=host)

    def _write(self, cfg: Any, group: str, host: str, reason: str, message: str | None) -> None:
        from filterproxy.state.store import Store, state_url

        with self._lock:
            url = state_url(cfg)
            if self._store is None or self._store_url != url:
                self.close()
                self._store, self._store_url = Store.for_config(cfg), url
            store = self._store
        store.add_review(group, host, reason, message)

    def close(self) -> None:
        store, self._store = self._store, None
        if store is not None:
            store.close()


def _answer(
    flow: http.HTTPFlow, st: HttpState, status: int, key: str, extra: dict[str, str] | None = None, **values: Any
) -> None:
    """A short page in the requester's language; nothing is forwarded."""
    from filterproxy.http.responses import NO_STORE, _mark

    lang = blockpage.pick_language(flow.request.headers.get("accept-language"), st.page.default_language)
    t = _TEXT[lang]
    text = t[key].format(**{k: html.escape(str(v)) for k, v in values.items()})
    title = t["thanks_title"] if status == 200 else blockpage._TEXT[lang]["title"]
    body = _PAGE.format(lang=lang, title=html.escape(title), text=text)
    headers = {
        "Content-Type": "text/html; charset=utf-8",
        **NO_STORE,
        "Referrer-Policy": "no-referrer",
        "X-Content-Type-Options": "nosniff",
        "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'",
        **(extra or {}),
    }
    flow.response = http.Response.make(status, body.encode("utf-8"), headers)
    _mark(flow, "internal")
