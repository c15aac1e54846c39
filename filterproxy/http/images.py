"""Image-hash matching on the HTTP path: the first :class:`~filterproxy.http.responses.ResponseCheck`.

For responses whose ``Content-Type`` is an image and whose size is within ``http.max_image_bytes``
(decided at ``responseheaders`` from ``Content-Length``; a chunked body is buffered up to the cap, then
streams unhashed: :data:`~filterproxy.http.protocol.BODY_CAP`; larger bodies are never held), the body's exact
hashes (MD5/SHA-1/SHA-256) and PDQ hash with its 8 rotations/flips are computed in a worker process
(CPU-bound), matched against the snapshot's image-hash lists (exact, or PDQ Hamming distance
<= ``http.pdq_max_distance``), and a match replaces the response, is counted, and becomes a report in
the durable spool: list id, item id, match kind, distance and the URL as configured — never the image,
never the child's identity. Results are cached per (URL, ETag or length, SHA-256 of the body) for as long as
the same snapshot is served (a list update or reload empties the cache).
"""

from __future__ import annotations

import hashlib
import logging
import multiprocessing
import time
from collections.abc import Callable
from concurrent.futures import Executor, ProcessPoolExecutor
from typing import TYPE_CHECKING

from cachetools import LRUCache

from filterproxy import metrics
from filterproxy.http.protocol import BODY_CAP
from filterproxy.lists.snapshot import unpack
from filterproxy.verdict import Action, Reason, Verdict

if TYPE_CHECKING:
    from filterproxy.http.state import HttpState

log = logging.getLogger("filterproxy.http.images")

MARK = "filterproxy_image"  # flow.metadata key: this response is an image to hash


class ImageCheck:
    """Hash image responses and block those on a hash list; one per proxy worker."""

    def __init__(
        self,
        state: Callable[[], HttpState | None],
        spool=None,
        *,
        executor: Executor | None = None,
        cache_size: int = 4096,
    ):
        self._state = state  # returns the addon's current HttpState (hot-swapped)
        self.spool = spool  # filterproxy.reports.ReportSpool (set by the addon once configured)
        self._executor = executor
        self._cache: LRUCache = LRUCache(maxsize=cache_size)
        self._owner: tuple | None = None  # the snapshot and distance the cached answers belong to

    def _for_lists(self, st) -> None:
        """Forget the cached answers when the lists or the match distance changed: a picture seen before a
        hotline's update must be matched against the new list (and a cached match names the old snapshot's
        records, so its report would cite the wrong item)."""
        snap = st.engine.snapshot
        owner = (id(snap), snap.built_at, snap.folder, st.config.http.pdq_max_distance)
        if owner != self._owner:
            self._cache.clear()
            self._owner = owner

    def _pool(self) -> Executor:
        if self._executor is None:
            # one extra process: hashing (~4-8 ms a 1 MP JPEG) never stalls the proxy's event loop. Spawned, not
            # forked: the proxy has threads (reload, metrics) whose locks a fork could copy held.
            self._executor = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"))
        return self._executor

    def close(self) -> None:
        if isinstance(self._executor, ProcessPoolExecutor):
            self._executor.shutdown(wait=False, cancel_futures=True)

    def responseheaders(self, flow, info: dict) -> None:
        st = self._state()
        if st is None or st.engine.snapshot.images is None or not st.config.http.image_hashing:
            return
        ctype = flow.response.headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if not ctype.startswith("image/") or ctype == "image/svg+xml":
            return
        cap = st.config.http.max_image_bytes
        length = flow.response.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > cap):
            return  # too large to hash: streamed through untouched
        flow.response.stream = False  # buffer this one body to hash it; no length (chunked): up to `cap` bytes,
        flow.metadata[BODY_CAP] = max(cap, flow.metadata.get(BODY_CAP, 0))  # then it streams, unhashed
        flow.metadata[MARK] = True

    def response(self, flow, info: dict):
        if not flow.metadata.get(MARK) or flow.response.stream:
            return None  # not an image to hash, or over the cap: streamed, no body kept
        st = self._state()
        assert st is not None  # MARK is set only when a state was loaded, and a loaded state is never unset
        body = flow.response.content or b""
        if not body or len(body) > st.config.http.max_image_bytes:
            return None
        self._for_lists(st)
        key = (flow.request.pretty_url, flow.response.headers.get("etag") or len(body), hashlib.sha256(body).digest())
        if key in self._cache:
            hit = self._cache[key]
            return self._verdict(st, hit, flow, info, cached=True) if hit is not None else None
        return self._check(st, body, key, flow, info)

    async def _check(self, st, body: bytes, key, flow, info: dict) -> Verdict | None:
        from filterproxy.match.imagehash import hash_image_bytes_async

        t = time.perf_counter()
        hashes = await hash_image_bytes_async(body, executor=self._pool())
        metrics.IMAGEHASH_DURATION.observe(time.perf_counter() - t)
        metrics.IMAGEHASH_IMAGES.inc()
        snap = st.engine.snapshot
        if snap.images is None:
            return None
        try:
            m = snap.images.match(hashes, max_distance=st.config.http.pdq_max_distance)
        except OSError as exc:  # the snapshot's index files cannot be read (a failing disk): say which
            log.error("image hash index unreadable, picture %s not checked: %s", flow.request.pretty_url, exc)
            return None
        self._cache[key] = m
        return self._verdict(st, m, flow, info) if m is not None else None

    def _verdict(self, st, m, flow, info: dict, *, cached: bool = False) -> Verdict:
        snap = st.engine.snapshot
        li, _line = unpack(m.record)
        lst = snap.lists[li]
        group = info.get("group") or ""
        metrics.IMAGEHASH_MATCHES.inc(lst.id, m.kind)
        if self.spool is not None:
            try:
                self.spool.submit(
                    list_id=lst.id,
                    item_id=snap.image_items.get(m.record),
                    match_kind=m.kind,
                    distance=m.distance,
                    url=flow.request.pretty_url,
                    client=flow.client_conn.peername[0] if flow.client_conn.peername else None,
                )
            except OSError:
                log.exception("image match on list %s: report could not be spooled", lst.id)
        log.warning(
            "image on hash list %s blocked (%s, distance %d)%s",
            lst.id,
            m.kind,
            m.distance,
            " (cached result)" if cached else "",
        )
        return Verdict(
            Action.BLOCK,
            Reason.LEGAL if lst.source.is_legal else Reason.CATEGORY,
            group,
            category=lst.category,
            list_id=lst.id,
            legal=lst.source.is_legal,
            hashed=True,
        )
