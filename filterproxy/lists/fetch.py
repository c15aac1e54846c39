"""Downloading list sources into a cache with last-known-good semantics.

``fetch`` brings one :class:`~filterproxy.config.sources.Source` into ``cache_dir/<id>.txt``:

* conditional GET (``If-None-Match`` / ``If-Modified-Since`` from ``cache_dir/<id>.meta.json``);
  a 304 reuses the cached file;
* streamed to a temporary file with a size cap (``Content-Length`` checked up front, the streamed
  bytes as they arrive), truncation detected (body shorter than ``Content-Length``);
* gzip undone transparently when the body starts with the gzip magic: the cache holds the plain list;
* an optional SHA-256 pin over the stored bytes and an optional ``validate`` callback run on the new file;
* retries with exponential backoff on connection errors, timeouts, truncation and 5xx - never on 4xx,
  size or pin failures, which would fail the same way again;
* the cached file is replaced atomically and only on success (a byte-identical body is ``not-modified``);
* an optional ``deadline`` bounds the whole fetch, retries included (``filterproxy run`` fetches in the
  background and must not hang on a server that drips bytes).

A ``format: ut1`` source is a local category folder, read in place. The catalogue itself is parsed by
:mod:`filterproxy.config.sources`.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import sys
import tempfile
import time
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import IO, Any
from urllib.parse import urlsplit

import requests

from filterproxy import __version__

# re-exported: callers and tests use fetch.Source etc.
from filterproxy.config.sources import DEFAULT_MAX_BYTES as DEFAULT_MAX_BYTES
from filterproxy.config.sources import DEFAULT_REFRESH as DEFAULT_REFRESH
from filterproxy.config.sources import MATCH_MODES as MATCH_MODES
from filterproxy.config.sources import MIN_REFRESH as MIN_REFRESH
from filterproxy.config.sources import SOURCE_FORMATS as SOURCE_FORMATS
from filterproxy.config.sources import Source as Source
from filterproxy.config.sources import SourcesError as SourcesError
from filterproxy.config.sources import load_sources as load_sources
from filterproxy.config.sources import parse_duration as parse_duration
from filterproxy.config.sources import parse_size as parse_size
from filterproxy.fsutil import atomic_write, fsync_dir
from filterproxy.lists.parsers import FOLDER_FORMATS

log = logging.getLogger("filterproxy.fetch")

USER_AGENT = f"filterproxy/{__version__} (+list refresh)"
_CHUNK = 1 << 16


@dataclass(frozen=True)
class FetchResult:
    """Outcome of one :func:`fetch`.

    ``path`` is the cached list now in use (the previous one when the fetch failed; None when
    there is none) and ``bytes`` its size; ``etag``/``last_modified``/``sha256`` describe it too.
    """

    source_id: str
    path: str | None
    status: str  # "updated" | "not-modified" | "failed"
    bytes: int
    error: str | None
    etag: str | None
    last_modified: str | None
    sha256: str | None = None


# --- fetching -----------------------------------------------------------------------------------


class _Failed(Exception):
    """A fetch attempt that must not be retried."""


class _Retry(Exception):
    """A fetch attempt that may succeed when tried again (network, 5xx, truncation)."""


def cache_paths(source: Source, cache_dir: str) -> tuple[str, str]:
    """(cached file, metadata file) for ``source`` in ``cache_dir``."""
    base = os.path.join(cache_dir, source.id)
    return base + ".txt", base + ".meta.json"


def _read_meta(meta_path: str, data_path: str) -> dict[str, Any]:
    if not os.path.exists(data_path):
        return {}
    try:
        with open(meta_path, encoding="utf-8") as f:
            meta = json.load(f)
        return meta if isinstance(meta, dict) else {}
    except (OSError, ValueError):
        return {}  # no usable validators: the next request is unconditional, which is safe


def _write_json_atomic(path: str, obj: dict[str, Any]) -> None:
    atomic_write(path, json.dumps(obj, indent=2, sort_keys=True) + "\n", perms=0o644)


class _Progress:
    """One self-overwriting stderr line; no dependency, no output unless enabled."""

    def __init__(self, label: str, total: int | None, enabled: bool) -> None:
        self.label, self.total, self.enabled = label, total, enabled
        self.done = 0
        self._last = 0.0

    def add(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if self.enabled and now - self._last >= 0.1:
            self._last = now
            self._draw()

    def _draw(self) -> None:
        mib = self.done / (1 << 20)
        if self.total:
            pct = min(100, self.done * 100 // self.total)
            text = f"{self.label}: {mib:7.1f} / {self.total / (1 << 20):.1f} MiB {pct:3d}%"
        else:
            text = f"{self.label}: {mib:7.1f} MiB"
        sys.stderr.write("\r" + text)
        sys.stderr.flush()

    def close(self) -> None:
        if self.enabled and self.done:
            self._draw()
            sys.stderr.write("\n")
            sys.stderr.flush()


class _Sink:
    """Writes the body to ``f``: gunzips when it starts with the gzip magic, caps the size, hashes."""

    def __init__(self, f: IO[bytes], limit: int, allow_gunzip: bool) -> None:
        self.f = f
        self.limit = limit
        self.allow_gunzip = allow_gunzip
        self.sha = hashlib.sha256()
        self.size = 0  # bytes written (after gunzip)
        self.head = b""  # the first bytes written, for a sanity check
        self._pending: bytes | None = b""  # buffered until the 2-byte magic is visible
        self._z: zlib._Decompress | None = None
        self._fed = False  # the current gzip member has consumed input

    def write(self, chunk: bytes) -> None:
        if self._pending is not None:
            self._pending += chunk
            if len(self._pending) < 2:
                return
            chunk, self._pending = self._pending, None
            if self.allow_gunzip and chunk[:2] == b"\x1f\x8b":
                self._z = zlib.decompressobj(16 + zlib.MAX_WBITS)
        if self._z is None:
            self._out(chunk)
            return
        data = chunk
        try:
            while data:
                if not self._fed:
                    data = data.lstrip(b"\0")  # zero padding after a member, as gzip(1) allows
                    if not data:
                        break
                    self._fed = True
                # max_length bounds memory against a gzip bomb: one _CHUNK of output at a time.
                self._out(self._z.decompress(data, _CHUNK))
                if self._z.eof:  # end of a member; concatenated members may follow
                    data = self._z.unused_data
                    self._z = zlib.decompressobj(16 + zlib.MAX_WBITS)
                    self._fed = False
                else:
                    data = self._z.unconsumed_tail
        except zlib.error as exc:
            raise _Failed(f"corrupt gzip data: {exc}") from None

    def _out(self, data: bytes) -> None:
        if not data:
            return
        self.size += len(data)
        if self.size > self.limit:
            raise _Failed(f"larger than max_bytes ({self.limit} bytes)")
        if len(self.head) < 512:
            self.head += data[: 512 - len(self.head)]
        self.sha.update(data)
        self.f.write(data)

    def close(self) -> None:
        if self._pending:  # a one-byte body
            self._out(self._pending)
        self._pending = None
        if self._fed:
            raise _Failed("gzip stream truncated")


def fetch(
    source: Source,
    cache_dir: str,
    *,
    session: requests.Session | None = None,
    timeout: tuple[float, float] = (5, 30),
    retries: int = 3,
    backoff: float = 1.0,
    progress: bool | None = None,
    validate: Callable[[str], None] | None = None,
    deadline: float | None = None,
) -> FetchResult:
    """Bring ``source`` into ``cache_dir``; never raises for download problems (status "failed").

    ``timeout`` is (connect, read) seconds; ``retries`` extra attempts follow a retryable failure
    after ``backoff``, ``2*backoff``, ``4*backoff``... seconds.  ``progress`` None means "when
    stderr is a terminal".  ``validate(path)`` may raise to refuse a downloaded file before it
    replaces the cached one.  ``deadline`` (a :func:`time.monotonic` time) ends the fetch, failed,
    when it passes: no retry starts after it and a body still arriving is dropped.
    """
    os.makedirs(cache_dir, exist_ok=True)
    data_path, meta_path = cache_paths(source, cache_dir)
    meta = _read_meta(meta_path, data_path)
    if progress is None:
        progress = sys.stderr.isatty()

    def result(status: str, error: str | None = None, m: dict[str, Any] | None = None) -> FetchResult:
        m = meta if m is None else m
        exists = os.path.exists(data_path)
        return FetchResult(
            source_id=source.id,
            path=data_path if exists else None,
            status=status,
            bytes=os.path.getsize(data_path) if exists else 0,
            error=error,
            etag=m.get("etag") if exists else None,
            last_modified=m.get("last_modified") if exists else None,
            sha256=m.get("sha256") if exists else None,
        )

    if source.format in FOLDER_FORMATS:
        return _folder_result(source)
    own_session = session is None
    sess = requests.Session() if session is None else session
    try:
        attempts = 1 if source.path else retries + 1
        last_error = "no attempt made"
        tried = 0
        for attempt in range(attempts):
            if attempt and not _pause_before_retry(backoff * 2 ** (attempt - 1), deadline):
                last_error += " (no time left to retry)"
                break
            tried += 1
            try:
                if source.path:
                    status, new_meta = _copy_local(source, data_path, meta, validate)
                else:
                    status, new_meta = _download(source, sess, data_path, meta, timeout, progress, validate, deadline)
            except _Retry as exc:
                last_error = str(exc)
                continue
            except _Failed as exc:
                return result("failed", str(exc))
            except OSError as exc:  # cache directory problems: disk full, permissions
                if exc.errno == errno.ENOSPC:
                    return result("failed", f"no space left on {os.path.dirname(data_path) or '.'}")
                return result("failed", f"{type(exc).__name__}: {exc}")
            try:
                _write_json_atomic(meta_path, new_meta)
            except OSError as exc:  # the list itself is in place; the next request is unconditional
                log.warning("%s: could not write %s: %s", source.id, meta_path, exc)
            return result(status, None, new_meta)
        suffix = f" (after {tried} attempts)" if tried > 1 else ""
        return result("failed", last_error + suffix)
    finally:
        if own_session:
            sess.close()


def _pause_before_retry(pause: float, deadline: float | None) -> bool:
    """Sleep ``pause`` seconds before a retry; False (and no sleep) when the deadline comes first."""
    if deadline is not None and time.monotonic() + pause >= deadline:
        return False
    time.sleep(pause)
    return True


def _folder_result(source: Source) -> FetchResult:
    """A UT1 category folder on disk is read in place by the parser: nothing to download."""
    size = _folder_size(source.path or "")
    if not size:
        error = f"{source.path}: not a UT1 category folder with list files"
        return FetchResult(source.id, None, "failed", 0, error, None, None)
    return FetchResult(source.id, source.path, "not-modified", size, None, None, None)


def _folder_size(path: str) -> int:
    try:
        names = os.listdir(path)
    except OSError:
        return 0
    return sum(os.path.getsize(p) for n in names if os.path.isfile(p := os.path.join(path, n)))


def _conditional_headers(source: Source, meta: dict[str, Any]) -> dict[str, str]:
    """Validators from the last success, unless they describe something else than wanted now."""
    if meta.get("url") != source.url or (source.sha256 and meta.get("sha256") != source.sha256):
        return {}
    headers = {}
    if meta.get("etag"):
        headers["If-None-Match"] = meta["etag"]
    if meta.get("last_modified"):
        headers["If-Modified-Since"] = meta["last_modified"]
    return headers


def _download(
    source: Source,
    session: requests.Session,
    data_path: str,
    meta: dict[str, Any],
    timeout: tuple[float, float],
    progress: bool,
    validate: Callable[[str], None] | None,
    deadline: float | None = None,
) -> tuple[str, dict[str, Any]]:
    url = source.url
    assert url is not None
    conditional = _conditional_headers(source, meta)
    headers = {"User-Agent": USER_AGENT, **conditional}
    try:
        with session.get(url, headers=headers, stream=True, timeout=timeout) as resp:
            status = resp.status_code
            if status == 304:
                if not conditional:
                    raise _Failed("HTTP 304 to an unconditional request")
                new_meta = dict(meta, checked_at=_now())
                new_meta["etag"] = resp.headers.get("ETag", meta.get("etag"))
                new_meta["last_modified"] = resp.headers.get("Last-Modified", meta.get("last_modified"))
                return "not-modified", new_meta
            if status >= 500:
                raise _Retry(f"HTTP {status} {resp.reason or ''}".strip())
            if status != 200:
                raise _Failed(f"HTTP {status} {resp.reason or ''}".strip())
            if urlsplit(url).scheme == "https" and urlsplit(resp.url).scheme != "https":
                raise _Failed(f"redirected from https to {resp.url}")
            length = _content_length(resp)
            if length is not None and length > source.max_bytes:
                raise _Failed(f"Content-Length {length} exceeds max_bytes ({source.max_bytes})")
            encoded = resp.headers.get("Content-Encoding", "identity").lower() not in ("", "identity")
            bar = _Progress(source.id, length, progress)
            try:
                body = _body(resp, bar, source.max_bytes, None if encoded else length, deadline)
                status_, new_meta = _store(source, body, data_path, meta, validate)
            finally:
                bar.close()
            new_meta.update(
                url=url,
                etag=resp.headers.get("ETag"),
                last_modified=resp.headers.get("Last-Modified"),
            )
            return status_, new_meta
    except requests.exceptions.SSLError as exc:
        raise _Failed(f"TLS error: {exc}") from None
    except (
        requests.exceptions.InvalidURL,
        requests.exceptions.MissingSchema,
        requests.exceptions.InvalidSchema,
    ) as exc:
        raise _Failed(str(exc)) from None
    except requests.exceptions.Timeout as exc:
        raise _Retry(f"timed out: {exc}") from None
    except (
        requests.exceptions.ChunkedEncodingError,
        requests.exceptions.ContentDecodingError,
    ) as exc:
        raise _Retry(f"truncated or corrupt body: {exc}") from None
    except requests.exceptions.ConnectionError as exc:
        raise _Retry(f"connection failed: {exc}") from None
    except requests.exceptions.RequestException as exc:
        raise _Failed(str(exc)) from None


def _content_length(resp: requests.Response) -> int | None:
    value = resp.headers.get("Content-Length")
    if value is None:
        return None
    try:
        n = int(value)
    except ValueError:
        raise _Failed(f"bad Content-Length {value!r}") from None
    if n < 0:
        raise _Failed(f"bad Content-Length {value!r}")
    return n


def _body(
    resp: requests.Response, bar: _Progress, limit: int, length: int | None, deadline: float | None = None
) -> Iterator[bytes]:
    """The response body in chunks; raises at the end if it was shorter than ``length``."""
    for chunk in resp.iter_content(_CHUNK):
        bar.add(len(chunk))
        if bar.done > limit:
            raise _Failed(f"larger than max_bytes ({limit} bytes)")
        if deadline is not None and time.monotonic() > deadline:
            raise _Failed(f"too slow: {bar.done} bytes received when the time allowed ran out")
        yield chunk
    # urllib3 already refuses a short body; this also covers a stream that ends early without
    # an error.  Only comparable when the body is not content-encoded (length counts wire bytes).
    if length is not None and bar.done != length:
        raise _Retry(f"truncated: received {bar.done} of {length} bytes")


def _file_chunks(path: str) -> Iterator[bytes]:
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            yield chunk


def _copy_local(
    source: Source, data_path: str, meta: dict[str, Any], validate: Callable[[str], None] | None
) -> tuple[str, dict[str, Any]]:
    assert source.path is not None
    try:
        size = os.path.getsize(source.path)
    except OSError as exc:
        raise _Failed(f"{source.path}: {exc.strerror or exc}") from None
    if size > source.max_bytes:
        raise _Failed(f"{source.path} is {size} bytes, above max_bytes ({source.max_bytes})")
    status, new_meta = _store(source, _file_chunks(source.path), data_path, meta, validate)
    new_meta["url"] = None
    return status, new_meta


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _store(
    source: Source,
    chunks: Iterable[bytes],
    data_path: str,
    meta: dict[str, Any],
    validate: Callable[[str], None] | None,
) -> tuple[str, dict[str, Any]]:
    """Stream ``chunks`` into a temp file, check it, then atomically replace ``data_path``.

    Not :func:`filterproxy.fsutil.atomic_writer`: the temp file must be validated by path, and left
    unrenamed when it equals the cached one."""
    tmp: str | None
    fd, tmp = tempfile.mkstemp(prefix=f".{source.id}-", suffix=".tmp", dir=os.path.dirname(data_path))
    try:
        with os.fdopen(fd, "wb") as f:
            sink = _Sink(f, source.max_bytes, allow_gunzip=True)
            for chunk in chunks:
                sink.write(chunk)
            sink.close()
            f.flush()
            os.fsync(f.fileno())
        if sink.size == 0:
            raise _Failed("empty body")
        if sink.head.lstrip().lower().startswith((b"<!doctype html", b"<html")):
            raise _Failed("got an HTML page instead of a list (captive portal or error page?)")
        digest = sink.sha.hexdigest()
        if source.sha256 and digest != source.sha256:
            raise _Failed(f"sha256 mismatch: pinned {source.sha256}, got {digest}")
        if validate is not None:
            try:
                validate(tmp)
            except Exception as exc:  # the caller's check: any refusal keeps the old file
                raise _Failed(f"rejected by validation: {exc}") from None
        new_meta = {"sha256": digest, "bytes": sink.size, "fetched_at": _now(), "checked_at": _now()}
        if meta.get("sha256") == digest and os.path.exists(data_path):
            new_meta["fetched_at"] = meta.get("fetched_at", new_meta["fetched_at"])
            return "not-modified", new_meta
        os.chmod(tmp, 0o644)
        os.replace(tmp, data_path)
        tmp = None
        fsync_dir(os.path.dirname(data_path))
        return "updated", new_meta
    finally:
        if tmp is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
