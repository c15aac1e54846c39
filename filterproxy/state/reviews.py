"""Review requests ("blocked by mistake"): the checks shared by the block page's form and the control API.

Both doors take the same three values from a student — the host, the reason id the block page showed, an
optional message — and the group the requester's identity resolves to; the address is used only to rate
limit (in memory, per process) and is never stored (:meth:`filterproxy.state.store.Store.add_review`).
"""

from __future__ import annotations

import re
import threading
import time
from collections import OrderedDict, deque

from filterproxy.state import shapes

MAX_MESSAGE = 500  # characters: the form trims to this; the API answers 400 above it
MAX_PER_WINDOW = 5  # requests per address and window; the next one gets 429
WINDOW = 10 * 60.0  # seconds
_MAX_ADDRESSES = 10000  # addresses tracked at once (the oldest forgotten first): bounded memory
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2066-\u2069]")
_REASON = re.compile(r"[A-Za-z0-9_.:/@+-]{1,200}")


class RequestLimiter:
    """At most ``limit`` requests per address within ``window`` seconds (thread-safe, bounded memory)."""

    def __init__(self, limit: int = MAX_PER_WINDOW, window: float = WINDOW) -> None:
        self.limit, self.window = limit, window
        self._seen: OrderedDict[str, deque[float]] = OrderedDict()
        self._lock = threading.Lock()

    def allow(self, address: str, now: float | None = None) -> int | None:
        """None when this request is within the limit (and counts it), else the seconds to wait."""
        now = time.monotonic() if now is None else now
        with self._lock:
            q = self._seen.setdefault(address, deque())
            self._seen.move_to_end(address)
            while q and q[0] <= now - self.window:
                q.popleft()
            if len(q) >= self.limit:
                return max(1, int(q[0] + self.window - now + 0.999))
            q.append(now)
            while len(self._seen) > _MAX_ADDRESSES:
                self._seen.popitem(last=False)
            return None


def clean_message(text: str | None, cap: int | None = MAX_MESSAGE) -> str | None:
    """Control and bidi characters removed, whitespace trimmed, cut to ``cap`` characters; None when empty."""
    if not text:
        return None
    out = _CONTROL.sub("", text.replace("\r\n", "\n").replace("\t", " ")).strip()
    if cap is not None:
        out = out[:cap].rstrip()
    return out or None


def clean_host(value: str) -> str:
    """The page's host, canonical (a URL is reduced to its host: a full URL may carry personal tokens)."""
    from urllib.parse import urlsplit

    text = value.strip()
    if "://" in text:
        text = urlsplit(text).hostname or ""
    return shapes.host(text)


def clean_reason(value: str) -> str:
    """A verdict's short id as the block page showed it (``category/adult/ut1-adult``, ``override:17``…)."""
    text = value.strip()
    if not _REASON.fullmatch(text):
        raise shapes.ShapeError("reason_id: expected the reason code shown on the block page")
    return text
