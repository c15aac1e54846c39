"""Reports of image-hash matches to the hotline: privacy-preserving, durable, delivered at least once.

Life of a report::

    submit()  →  pending/<id>.json   (written to a temp file, fsynced, renamed, directory fsynced:
                                      on disk before submit() returns)
    deliver_pending()  →  POST endpoint  →  2xx  →  os.replace to sent/<id>.json (+ directory fsyncs)
                                         →  else →  attempts+1, next attempt after an exponential
                                                    backoff with jitter, stored in the same file

What the endpoint sees (its contract):

* ``POST <endpoint>`` with the :class:`Report` as a JSON object, ``Content-Type: application/json``,
  ``Idempotency-Key: <report id>`` and, if configured, ``Authorization: Bearer <token>``.
  Redirects are not followed (a report never goes to a host nobody configured).
* Any 2xx means "accepted". A report is moved to ``sent/`` only after a 2xx, so a gateway that crashes
  (or loses power) between the endpoint's 2xx and the move sends the **same report with the same id**
  again after restart — once, because that second 2xx is followed by the move. **The endpoint must
  deduplicate by id** (and answer 2xx to a duplicate); then every report arrives exactly once.
* Anything else (non-2xx, timeout, refused connection) is retried later. Per-report backoff lives in the
  report's file, so a restart does not hammer a struggling endpoint; after a connection failure, 5xx
  or 429 the rest of that pass is skipped and the whole endpoint backs off too. Reports are never
  dropped: a pending file that cannot be read is moved to ``bad/`` for a person to look at.

Privacy: a report holds the list and item ids of the matched hash, how it matched, the gateway id,
the time, and the URL reduced per ``url_mode`` — ``host`` (default: host name only), ``hashed``
(SHA-256 hex of the canonical URL), ``full`` (without user info or fragment), or ``none``. It never
holds the picture (:meth:`ReportSpool.submit` accepts no bytes at all) and holds the child's address
only when ``include_client`` is explicitly enabled. Spool files are readable by their owner only.
"""

from __future__ import annotations

import builtins
import errno
import fcntl
import hashlib
import json
import logging
import os
import random
import threading
import time
import uuid
from dataclasses import asdict, dataclass, fields
from datetime import UTC, datetime
from urllib.parse import urlsplit, urlunsplit

import requests

log = logging.getLogger("filterproxy.reports")

URL_MODES = ("full", "host", "hashed", "none")
PENDING, SENT, BAD = "pending", "sent", "bad"
MAX_ID_LENGTH = 256  # list and item ids are short opaque strings; anything longer is a caller bug
BASE_BACKOFF = 2.0  # seconds before the first retry; doubles per failed attempt up to max_backoff
STALE_TMP_SECONDS = 3600  # a temp file this old belongs to a writer that crashed before submit() returned


@dataclass
class Report:
    """One image-hash match, as sent to the hotline endpoint (no picture, no child unless enabled)."""

    id: str  # uuid4 hex; also the Idempotency-Key
    time: str  # ISO 8601 UTC, e.g. 2024-05-01T08:30:00.123Z
    gateway_id: str
    list_id: str
    item_id: str | None
    match_kind: str  # md5 | sha1 | sha256 | pdq
    distance: int  # PDQ Hamming distance; 0 for exact hashes
    url: str | None  # per url_mode
    client: str | None = None  # only with include_client

    @classmethod
    def from_dict(cls, doc: dict) -> Report:
        """Build from a decoded JSON object, ignoring unknown keys (newer spool files)."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in doc.items() if k in names})


def reduce_url(url: str | None, mode: str) -> str | None:
    """The part of ``url`` a report may carry under ``mode`` (see the module docstring)."""
    if mode not in URL_MODES:
        raise ValueError(f"url_mode must be one of {', '.join(URL_MODES)}, got {mode!r}")
    if not url or mode == "none":
        return None
    try:
        parts = urlsplit(url if "://" in url else f"http://{url}")
        host = parts.hostname
    except ValueError:
        return None
    if not host:
        return None
    if mode == "host":
        return host
    if mode == "full":
        netloc = f"[{host}]" if ":" in host else host
        if parts.port is not None:
            netloc += f":{parts.port}"
        return urlunsplit((parts.scheme.lower(), netloc, parts.path or "/", parts.query, ""))
    return hashlib.sha256(_canonical_url(url).encode()).hexdigest()


def _canonical_url(url: str) -> str:
    """The project's canonical URL form (match.urlhash), so hashed URLs compare with URL-hash lists."""
    try:
        from filterproxy.match.urlhash import canonicalize

        return canonicalize(url)
    except Exception:  # an unparsable URL still gets a stable hash: of its userinfo/fragment-free form
        return reduce_url(url, "full") or url


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_durably(path: str, doc: dict) -> None:
    """Write ``doc`` as JSON to ``path`` atomically: temp file, fsync, rename, fsync the directory."""
    directory, name = os.path.split(path)
    tmp = os.path.join(directory, f".{name}.{os.getpid()}.{threading.get_ident()}.tmp")
    data = json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:  # disk full, I/O error: leave no half-written temp file behind
        _unlink_quietly(tmp)
        raise
    _fsync_dir(directory)


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


class ReportSpool:
    """Durable queue of :class:`Report` files under ``directory``, delivered to ``endpoint`` by POST.

    ``endpoint=None`` keeps reports on disk only (``filterproxy reports`` lists them). ``queue_depth``,
    ``delivered`` and ``delivery_failures`` are plain ints for the metrics module. Safe to use from
    several threads; two processes on one spool never deliver at the same time (a lock file).
    """

    def __init__(
        self,
        directory: str,
        endpoint: str | None,
        *,
        gateway_id: str,
        url_mode: str = "host",
        include_client: bool = False,
        timeout: float = 10,
        max_backoff: float = 300,
        token: str | None = None,
        verify: bool | str = True,
        base_backoff: float = BASE_BACKOFF,
    ) -> None:
        if url_mode not in URL_MODES:
            raise ValueError(f"url_mode must be one of {', '.join(URL_MODES)}, got {url_mode!r}")
        if endpoint is not None and urlsplit(endpoint).scheme not in ("http", "https"):
            raise ValueError(f"report endpoint must be an http(s) URL, got {endpoint!r}")
        if not gateway_id:
            raise ValueError("gateway_id must not be empty")
        self.directory = os.path.abspath(directory)
        self.endpoint = endpoint
        self.gateway_id = gateway_id
        self.url_mode = url_mode
        self.include_client = include_client
        self.timeout = timeout
        self.max_backoff = max(0.0, float(max_backoff))
        self.base_backoff = max(0.0, min(float(base_backoff), self.max_backoff))
        self.token = token
        self.verify = verify
        self._pending_dir = os.path.join(self.directory, PENDING)
        self._sent_dir = os.path.join(self.directory, SENT)
        self._bad_dir = os.path.join(self.directory, BAD)
        for d in (self.directory, self._pending_dir, self._sent_dir, self._bad_dir):
            os.makedirs(d, mode=0o700, exist_ok=True)
        for d in (self._pending_dir, self._sent_dir, self._bad_dir):
            try:  # reports name what was blocked and where: owner only, even in a pre-existing spool
                os.chmod(d, 0o700)
            except OSError:
                pass
        self._lock = threading.Lock()  # counters
        self._deliver_lock = threading.Lock()  # one delivery pass at a time in this process
        self._session: requests.Session | None = None
        self._endpoint_failures = 0
        self._endpoint_retry_at = 0.0
        self._remove_stale_temp_files()
        self.queue_depth = len(self._ids(self._pending_dir))
        self.delivered = 0
        self.delivery_failures = 0

    @classmethod
    def from_config(
        cls, cfg, endpoint: str | None, directory: str | None = None, *, token: str | None = None
    ) -> ReportSpool:
        """The spool of a configuration: ``directory``, else ``reports.spool``, else ``<state_dir>/reports``;
        gateway id, URL mode and client reporting from the configuration; deliveries to ``endpoint`` with
        ``token`` as the bearer token (the runner reads it from ``reports.token_file``)."""
        return cls(
            os.path.abspath(directory or cfg.reports.spool or cfg.state_path("reports")),
            endpoint,
            gateway_id=cfg.server.gateway_id,
            url_mode=cfg.reports.url_mode,
            include_client=cfg.reports.include_client,
            token=token,
        )

    # ---- submitting

    def submit(
        self,
        *,
        list_id: str,
        item_id: str | None,
        match_kind: str,
        distance: int = 0,
        url: str | None = None,
        client: str | None = None,
    ) -> Report:
        """Record a match durably and return the report (delivery happens later, in deliver_pending).

        ``url`` is reduced per ``url_mode``; ``client`` is dropped unless ``include_client``. Raises
        OSError if the spool cannot be written (the caller blocks the picture anyway).
        """
        for name, value in (("list_id", list_id), ("item_id", item_id), ("match_kind", match_kind)):
            if value is not None and (not isinstance(value, str) or len(value) > MAX_ID_LENGTH):
                raise TypeError(f"{name} must be a short string (reports never carry picture data)")
        if not list_id or not match_kind:
            raise ValueError("list_id and match_kind are required")
        report = Report(
            id=uuid.uuid4().hex,
            time=_now_iso(),
            gateway_id=self.gateway_id,
            list_id=list_id,
            item_id=item_id,
            match_kind=match_kind,
            distance=int(distance),
            url=reduce_url(url, self.url_mode),
            client=str(client) if self.include_client and client is not None else None,
        )
        _write_durably(
            self._path(PENDING, report.id),
            {"report": asdict(report), "attempts": 0, "next_attempt": 0.0, "last_error": None},
        )
        with self._lock:
            self.queue_depth += 1
        log.info("reports: %s queued (list=%s kind=%s)", report.id, list_id, match_kind)
        return report

    # ---- delivering

    def deliver_pending(self) -> tuple[int, int]:
        """Try every due pending report once: returns (sent, failed) for this pass.

        Reports whose backoff has not expired are skipped (counted in neither). Without an endpoint,
        or while another thread or process is delivering from this spool, does nothing.
        """
        if self.endpoint is None or time.time() < self._endpoint_retry_at:
            return 0, 0
        if not self._deliver_lock.acquire(blocking=False):
            return 0, 0
        try:
            lock_fd = os.open(os.path.join(self.directory, ".deliver.lock"), os.O_RDWR | os.O_CREAT, 0o600)
            try:
                try:
                    fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError as exc:
                    if exc.errno in (errno.EWOULDBLOCK, errno.EACCES):
                        return 0, 0
                    raise
                return self._deliver_pass()
            finally:
                os.close(lock_fd)  # releases the flock
        finally:
            self._deliver_lock.release()

    def _deliver_pass(self) -> tuple[int, int]:
        sent = failed = 0
        now = time.time()
        due = []
        for rid in self._ids(self._pending_dir):
            doc = self._load(rid)
            if doc is not None and float(doc.get("next_attempt") or 0) <= now:
                due.append((str(doc["report"].get("time", "")), rid, doc))
        due.sort(key=lambda t: (t[0], t[1]))  # oldest first
        for _, rid, doc in due:
            outcome = self._post(doc["report"])
            if outcome is None:
                self._mark_sent(rid)
                sent += 1
                self._endpoint_failures = 0
                continue
            error, endpoint_down = outcome
            failed += 1
            self._mark_failed(rid, doc, error)
            if endpoint_down:  # don't try the rest against an endpoint that is down or overloaded
                self._endpoint_failures += 1
                self._endpoint_retry_at = time.time() + self._backoff(self._endpoint_failures)
                break
        return sent, failed

    def _post(self, report: dict) -> tuple[str, bool] | None:
        """POST one report: None on 2xx, else (error text, whether the whole endpoint looks down)."""
        headers = {
            "Content-Type": "application/json",
            "Idempotency-Key": str(report["id"]),
            "User-Agent": "filterproxy-reports/1",
        }
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        body = json.dumps(report, ensure_ascii=False, separators=(",", ":")).encode()
        assert self.endpoint is not None
        if self._session is None:
            self._session = requests.Session()
        try:
            resp = self._session.post(
                self.endpoint,
                data=body,
                headers=headers,
                timeout=self.timeout,
                verify=self.verify,
                allow_redirects=False,
            )
        except requests.RequestException as exc:
            return f"{type(exc).__name__}", True
        try:
            if 200 <= resp.status_code < 300:
                return None
            return f"HTTP {resp.status_code}", resp.status_code >= 500 or resp.status_code == 429
        finally:
            resp.close()

    def _mark_sent(self, rid: str) -> None:
        os.replace(self._path(PENDING, rid), self._path(SENT, rid))
        _fsync_dir(self._sent_dir)
        _fsync_dir(self._pending_dir)
        with self._lock:
            self.queue_depth = max(0, self.queue_depth - 1)
            self.delivered += 1
        log.info("reports: %s delivered", rid)

    def _mark_failed(self, rid: str, doc: dict, error: str) -> None:
        attempts = int(doc.get("attempts") or 0) + 1
        delay = self._backoff(attempts)
        doc.update(attempts=attempts, next_attempt=time.time() + delay, last_error=error)
        try:
            _write_durably(self._path(PENDING, rid), doc)
        except OSError as exc:  # the report itself is still on disk; only its backoff is not
            log.error("reports: cannot record the failed attempt of %s: %s", rid, exc)
        with self._lock:
            self.delivery_failures += 1
        log.warning("reports: %s not delivered (%s, attempt %d); next try in %.1fs", rid, error, attempts, delay)

    def _backoff(self, attempts: int) -> float:
        """Exponential backoff with "equal jitter": half fixed, half random, capped at max_backoff."""
        ceiling = min(self.max_backoff, self.base_backoff * 2 ** min(attempts - 1, 30))
        return ceiling / 2 + random.uniform(0, ceiling / 2)

    def run_forever(self, stop_event: threading.Event, interval: float = 5) -> None:
        """Deliver every ``interval`` seconds until ``stop_event`` is set (run it in a thread)."""
        log.info("reports: delivering to %s every %gs from %s", self.endpoint or "(nowhere)", interval, self.directory)
        from filterproxy import metrics

        while not stop_event.is_set():
            sent = failed = 0
            try:
                sent, failed = self.deliver_pending()
            except Exception:  # keep the loop alive; the reports stay pending
                failed = 1
                with self._lock:
                    self.delivery_failures += 1
                log.exception("reports: delivery pass failed")
            try:  # other processes (proxy workers) add to the spool: count what is on disk
                self.queue_depth = len(self._ids(self._pending_dir))
                metrics.REPORTS_QUEUE_DEPTH.set(value=self.queue_depth)
                if sent:
                    metrics.REPORTS_DELIVERED.inc(amount=sent)
                if failed:
                    metrics.REPORTS_DELIVERY_FAILURES.inc(amount=failed)
            except Exception:  # metrics never stop delivery
                log.debug("reports: metrics not updated", exc_info=True)
            stop_event.wait(interval)

    def start(self, stop_event: threading.Event, interval: float = 5) -> threading.Thread:
        """:meth:`run_forever` in a daemon thread named ``reports``."""
        t = threading.Thread(target=self.run_forever, args=(stop_event, interval), name="reports", daemon=True)
        t.start()
        return t

    # ---- reading

    def list(self) -> dict[str, list[Report]]:
        """``{"pending": [...], "sent": [...]}``, each oldest first."""
        out: dict[str, list[Report]] = {}
        for state, directory in ((PENDING, self._pending_dir), (SENT, self._sent_dir)):
            reports: builtins.list[Report] = []
            for rid in self._ids(directory):
                doc = self._read(os.path.join(directory, f"{rid}.json"))
                if doc is not None:
                    reports.append(Report.from_dict(doc["report"]))
            reports.sort(key=lambda r: (r.time, r.id))
            out[state] = reports
        return out

    def _path(self, state: str, rid: str) -> str:
        return os.path.join(self.directory, state, f"{rid}.json")

    @staticmethod
    def _ids(directory: str) -> builtins.list[str]:
        try:
            names = os.listdir(directory)
        except FileNotFoundError:
            return []
        return [n[:-5] for n in names if n.endswith(".json") and not n.startswith(".")]

    @staticmethod
    def _read(path: str) -> dict | None:
        try:
            with open(path, "rb") as f:
                doc = json.loads(f.read())
        except (OSError, ValueError):
            return None
        if not isinstance(doc, dict) or not isinstance(doc.get("report"), dict) or "id" not in doc["report"]:
            return None
        return doc

    def _load(self, rid: str) -> dict | None:
        """A pending report's file; an unreadable one is moved to bad/ (kept for a person, never deleted)."""
        path = self._path(PENDING, rid)
        doc = self._read(path)
        if doc is None and os.path.exists(path):
            log.error("reports: pending/%s.json is unreadable; moved to bad/", rid)
            try:
                os.replace(path, self._path(BAD, rid))
                _fsync_dir(self._bad_dir)
            except OSError:
                pass
            with self._lock:
                self.queue_depth = max(0, self.queue_depth - 1)
        return doc

    def _remove_stale_temp_files(self) -> None:
        cutoff = time.time() - STALE_TMP_SECONDS
        for name in os.listdir(self._pending_dir):
            if name.startswith(".") and name.endswith(".tmp"):
                path = os.path.join(self._pending_dir, name)
                try:
                    if os.stat(path).st_mtime < cutoff:
                        os.unlink(path)
                except OSError:
                    pass
