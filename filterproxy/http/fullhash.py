"""Full-hash confirmation of URL-hash prefix hits: ask the list's ``fullhash_url``, cache the answers.

A 4-byte prefix entry of a ``urlhash`` list matches one expression in 2^32 by chance, so with 100,000
prefixes about one URL in a few thousand would be blocked for nothing. The engine therefore returns a
prefix-only hit as ``Verdict.pending``; the addon awaits :meth:`FullHashConfirmer.confirm` and decides
again with the confirmed ``(list id, digest)`` pairs. The protocol is Safe Browsing's ``fullHashes.find``
reduced to its core (docs/fullhash.md): only 4-byte prefixes leave the gateway, never a URL or host.

Answers are cached for the durations the endpoint gives (positive per full hash, negative per prefix),
in bounded TLRU caches. Requests run in a small thread pool with ``requests`` (the DoH upstream's choice:
no extra dependency), so the mitmproxy event loop never waits on the network (CONTRIBUTING.md rule 9);
concurrent flows with the same prefix share one request. An endpoint that cannot be reached, or answers
anything but the documented JSON, fails closed or open as the list says (closed for legal lists),
counted in ``filterproxy_fullhash_checks_total``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import threading
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from cachetools import TLRUCache

from filterproxy import metrics
from filterproxy.verdict import FullHashCheck

if TYPE_CHECKING:
    import requests

__all__ = ["FullHashConfirmer", "FullHashError", "parse_answer", "parse_duration"]

log = logging.getLogger("filterproxy.fullhash")

TIMEOUT = 3.0  # seconds for one endpoint request (connect + read)
DEFAULT_DURATION = 300.0  # cache time when the answer gives none (Safe Browsing's usual value)
MAX_DURATION = 86_400.0  # never trust an answer for more than a day
MAX_PREFIXES = 64  # per request; a URL has at most 30 expressions
BACKOFF = 10.0  # seconds without asking an endpoint after it failed (its lists' failure mode applies)
MAX_ANSWER_BYTES = 1 << 20  # 64 prefixes' worth of full hashes is a few KB; more is not an answer
_DURATION = re.compile(r"(\d{1,9}(?:\.\d{1,9})?)s")  # google.protobuf.Duration in JSON: "300s", "1.5s"
_HEX64 = re.compile(r"[0-9a-fA-F]{64}")


class FullHashError(Exception):
    """The endpoint could not be reached or gave an answer outside the protocol."""


class _Backoff(FullHashError):
    """The endpoint failed within the last ``BACKOFF`` seconds (or while this flow waited on it): not
    asked again, so flows do not each wait for a timeout, and the failure is logged once."""


def parse_duration(value: Any, default: float = DEFAULT_DURATION) -> float:
    """``"300s"`` (or a number of seconds) → seconds, clamped to [0, 1 day]; absent → ``default``."""
    if value is None:
        return default
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str) and (m := _DURATION.fullmatch(value.strip())):
        seconds = float(m.group(1))
    else:
        raise FullHashError(f"duration must look like '300s', got {value!r}")
    return min(max(seconds, 0.0), MAX_DURATION)


def parse_answer(body: bytes, asked: Iterable[bytes]) -> tuple[dict[bytes, float], float]:
    """An endpoint's JSON answer → ({full hash: cache seconds}, negative cache seconds).

    Hashes that start with none of the ``asked`` prefixes are ignored (an endpoint may not widen the
    question); anything outside the protocol raises :class:`FullHashError`.
    """
    try:
        doc = json.loads(body)
    except ValueError as exc:
        raise FullHashError(f"answer is not JSON: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("matches", []), list):
        raise FullHashError("answer must be an object with a 'matches' list")
    prefixes = frozenset(asked)
    found: dict[bytes, float] = {}
    for m in doc.get("matches", []):
        h = m.get("hash") if isinstance(m, dict) else None
        if not isinstance(h, str) or not _HEX64.fullmatch(h):
            raise FullHashError(f"each match needs 'hash': 64 hex digits, got {m!r:.90}")
        digest = bytes.fromhex(h)
        if digest[:4] in prefixes:
            found[digest] = parse_duration(m.get("cacheDuration"))
    return found, parse_duration(doc.get("negativeCacheDuration"))


def _expiry(_key: object, value: tuple, _now: float) -> float:
    return float(value[0])  # every cached value starts with its expiry (monotonic time)


class FullHashConfirmer:
    """Confirms prefix hits with each list's endpoint; one per proxy process, kept across reloads.

    ``positive[(endpoint, digest)] = (expiry,)``: the endpoint listed this full hash.
    ``negative[(endpoint, prefix)] = (expiry, listed digests)``: every other hash with that prefix is not
    listed until ``expiry``; a listed digest whose positive entry expired first is asked again.
    """

    def __init__(self, *, timeout: float = TIMEOUT, max_entries: int = 100_000, workers: int = 4) -> None:
        self.timeout = timeout
        self._positive: TLRUCache[tuple[str, bytes], tuple[float]] = TLRUCache(
            max_entries, ttu=_expiry, timer=time.monotonic
        )
        self._negative: TLRUCache[tuple[str, bytes], tuple[float, frozenset[bytes]]] = TLRUCache(
            max_entries, ttu=_expiry, timer=time.monotonic
        )
        self._inflight: dict[tuple[str, bytes], asyncio.Future[None]] = {}
        self._failed_until: dict[str, float] = {}  # endpoint → monotonic time (configured endpoints: bounded)
        self._executor = ThreadPoolExecutor(workers, thread_name_prefix="fullhash")
        self._local = threading.local()  # one requests.Session per pool thread

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    # ------------------------------------------------------------ cache
    def _known(self, endpoint: str, digest: bytes) -> bool | None:
        """True: listed; False: not listed; None: ask (nothing cached, or a listed hash expired)."""
        if (endpoint, digest) in self._positive:
            return True
        neg = self._negative.get((endpoint, digest[:4]))
        if neg is None or digest in neg[1]:
            return None
        return False

    def _store(self, endpoint: str, asked: Sequence[bytes], found: dict[bytes, float], negative: float) -> None:
        now = time.monotonic()
        for digest, seconds in found.items():
            if seconds > 0:
                self._positive[(endpoint, digest)] = (now + seconds,)
        if negative > 0:
            for prefix in asked:
                listed = frozenset(d for d in found if d[:4] == prefix)
                self._negative[(endpoint, prefix)] = (now + negative, listed)

    # ------------------------------------------------------------ confirm
    async def confirm(self, checks: Sequence[FullHashCheck]) -> frozenset[tuple[str, bytes]]:
        """The ``(list id, digest)`` pairs of ``checks`` that count: confirmed by the list's endpoint (or its
        cached answer), or unconfirmable on a list that fails closed."""
        by_list: dict[tuple[str, str, bool], set[bytes]] = {}
        for c in checks:
            by_list.setdefault((c.list_id, c.endpoint, c.fail_closed), set()).add(c.digest)
        out: set[tuple[str, bytes]] = set()
        for (list_id, endpoint, fail_closed), digests in by_list.items():
            for digest, result in (await self._check_list(list_id, endpoint, fail_closed, digests)).items():
                metrics.FULLHASH_CHECKS.inc(list_id, result)
                if result in ("confirmed", "failed_closed"):
                    out.add((list_id, digest))
        return frozenset(out)

    async def _check_list(
        self, list_id: str, endpoint: str, fail_closed: bool, digests: set[bytes]
    ) -> dict[bytes, str]:
        """digest → result for one list (see ``FULLHASH_RESULT``)."""
        answers: dict[bytes, bool | None] = {d: self._known(endpoint, d) for d in digests}
        unknown = {d[:4] for d, known in answers.items() if known is None}
        error: Exception | None = None
        if unknown and endpoint:
            try:
                await self._ask(endpoint, sorted(unknown))
            except FullHashError as exc:
                error = exc
            answers = {d: self._known(endpoint, d) if known is None else known for d, known in answers.items()}
        elif unknown:
            error = FullHashError("the list has no fullhash_url")
        results: dict[bytes, str] = {}
        for d, known in answers.items():
            if known is None:
                results[d] = "failed_closed" if fail_closed else "failed_open"
            else:
                results[d] = "confirmed" if known else "not_listed"
        if error is not None and not isinstance(error, _Backoff):  # logged once per failed request
            log.warning(
                "list %s: full-hash endpoint %s failed (%s); its prefix hits are %s for %gs",
                list_id,
                endpoint or "(none)",
                error,
                "blocked (fails closed)" if fail_closed else "allowed (fails open)",
                BACKOFF,
            )
        return results

    async def _ask(self, endpoint: str, prefixes: list[bytes]) -> None:
        """Fill the caches for ``prefixes``; a request already in flight for a prefix is shared."""
        loop = asyncio.get_running_loop()
        if time.monotonic() < self._failed_until.get(endpoint, 0.0):
            raise _Backoff("failed moments ago")
        waits = [f for p in prefixes if (f := self._inflight.get((endpoint, p))) is not None]
        mine = [p for p in prefixes if (endpoint, p) not in self._inflight][:MAX_PREFIXES]
        if mine:
            fut: asyncio.Future[None] = loop.create_future()
            for p in mine:
                self._inflight[(endpoint, p)] = fut
            try:
                body = await loop.run_in_executor(self._executor, self._post, endpoint, mine)
                found, negative = parse_answer(body, mine)
                self._store(endpoint, mine, found, negative)
                fut.set_result(None)
            except Exception as exc:
                self._failed_until[endpoint] = time.monotonic() + BACKOFF
                fut.set_exception(_Backoff(str(exc)))
                fut.exception()  # retrieved: waiters re-raise it, nobody else must log it
                raise FullHashError(str(exc)) from None
            finally:
                for p in mine:
                    self._inflight.pop((endpoint, p), None)
        for f in waits:
            await asyncio.shield(f)

    def _post(self, endpoint: str, prefixes: list[bytes]) -> bytes:
        """One request (in a pool thread): the JSON body carries the prefixes and nothing else."""
        import requests

        session: requests.Session | None = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
            session.headers.update({"User-Agent": "filterproxy", "Accept": "application/json"})
        try:
            with session.post(
                endpoint, json={"prefixes": [p.hex() for p in prefixes]}, timeout=self.timeout, stream=True
            ) as r:
                if r.status_code != 200:
                    raise FullHashError(f"HTTP {r.status_code}")
                body: bytes = r.raw.read(MAX_ANSWER_BYTES + 1, decode_content=True)
        except requests.RequestException as exc:
            raise FullHashError(f"{type(exc).__name__}: {exc}") from None
        except OSError as exc:  # urllib3's read errors (a reset mid-body)
            raise FullHashError(f"{type(exc).__name__}: {exc}") from None
        if len(body) > MAX_ANSWER_BYTES:
            raise FullHashError(f"answer larger than {MAX_ANSWER_BYTES} bytes")
        return body
