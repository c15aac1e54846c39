"""The gateway side: update lists from the TUF repository with ``tuf.ngclient.Updater`` and install them.

``update`` refreshes the trusted metadata (root chain, timestamp, snapshot, targets: signatures,
thresholds, versions and expiry all checked by the updater, the trusted copies kept in
``<state_dir>/distribution/metadata`` across restarts), then installs each list the gateway follows:
every target of the ministry's ``targets`` role and of its own province's delegated role. A province
target outside the province's paths, or in a category its delegation does not grant, is refused. A
delta list downloads only the segments after the installed version and is rebuilt by
:mod:`filterproxy.distribution.delta`. Every failure keeps the last good file, is logged with a clear
reason (a bounded label: :data:`REASONS`), counted in ``filterproxy_distribution_failures_total`` and kept
in ``state.json`` for ``filterproxy lists show`` and the admin API. Installed lists become list sources
(:func:`sources`), so the next snapshot serves them.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from filterproxy.fsutil import atomic_write
from filterproxy.lists.parsers import FOLDER_FORMATS, FORMATS, HASHED_FORMATS
from filterproxy.lists.source import ListSource
from filterproxy.vocabulary import SOURCE_ID_RE

if TYPE_CHECKING:
    from tuf.api.metadata import DelegatedRole, TargetFile
    from tuf.ngclient import Updater

    from filterproxy.config import DistributionConfig

log = logging.getLogger("filterproxy.distribution")

STATE = "state.json"
_FORMATS = frozenset(FORMATS) - FOLDER_FORMATS
CATEGORIES_FIELD = "x-filterproxy-categories"
RESERVED_CATEGORIES = frozenset({"illegal"})  # the same set as publish.RESERVED_CATEGORIES
#: Failure reasons (the metric's ``reason`` label).
REASONS = ("signature", "rollback", "expired", "delegation", "category", "hash", "download", "metadata", "install")
_MESSAGES = {
    "signature": "bad or missing signatures (not the threshold of trusted keys)",
    "rollback": "older metadata than the trusted copy (rollback refused)",
    "expired": "expired metadata (freeze attack or a publisher that stopped signing)",
    "hash": "a downloaded file does not match its signed length or hash (tampered or corrupt)",
    "download": "the repository could not be reached",
    "metadata": "invalid repository metadata",
}


class Refused(Exception):
    """One list, role or update refused; ``reason`` is one of :data:`REASONS`."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def reason_of(exc: BaseException) -> str:
    """The :data:`REASONS` value of an exception raised by the TUF updater or the installer."""
    from tuf.api import exceptions as tx

    for cls, reason in (
        (Refused, ""),
        (tx.UnsignedMetadataError, "signature"),
        (tx.BadVersionNumberError, "rollback"),
        (tx.ExpiredMetadataError, "expired"),
        (tx.LengthOrHashMismatchError, "hash"),
        (tx.DownloadLengthMismatchError, "hash"),
        (tx.DownloadError, "download"),
        (tx.RepositoryError, "metadata"),
        (OSError, "install"),
    ):
        if isinstance(exc, cls):
            return getattr(exc, "reason", reason) or reason
    return "metadata"


def _message(exc: BaseException) -> str:
    reason = reason_of(exc)
    if isinstance(exc, Refused) or reason not in _MESSAGES:
        return str(exc)
    return f"{_MESSAGES[reason]}: {exc}"


@dataclass
class Result:
    """One update: lists installed (id → version), refusals ``(what, reason, message)``, bytes downloaded."""

    installed: dict[str, int] = field(default_factory=dict)
    refused: list[tuple[str, str, str]] = field(default_factory=list)
    downloaded: int = 0
    error: tuple[str, str] | None = None  # the whole update failed: (reason, message)
    url: str = ""

    @property
    def ok(self) -> bool:
        return self.error is None and not self.refused


def folder(state_dir: str) -> str:
    return os.path.join(state_dir, "distribution")


def read_state(state_dir: str) -> dict[str, Any]:
    try:
        with open(os.path.join(folder(state_dir), STATE), encoding="utf-8") as f:
            state = json.load(f)
        return state if isinstance(state, dict) else {}
    except (OSError, ValueError):
        return {}


def _write_state(state_dir: str, state: dict[str, Any]) -> None:
    atomic_write(
        os.path.join(folder(state_dir), STATE), json.dumps(state, indent=2, sort_keys=True) + "\n", perms=0o644
    )


@contextlib.contextmanager
def _locked(state_dir: str) -> Iterator[None]:
    """One updater at a time per state folder (the server's timer vs. an admin running the CLI)."""
    os.makedirs(folder(state_dir), exist_ok=True)
    fd = os.open(os.path.join(folder(state_dir), ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


# --- update ------------------------------------------------------------------------------------


def update(cfg: DistributionConfig, state_dir: str) -> Result:
    """Update from the repository, then its mirrors in order until one works; the last good lists stay
    installed on any failure. Records the outcome in ``state.json`` and the failure metric."""
    from filterproxy import metrics

    with _locked(state_dir):
        state = read_state(state_dir)
        result = Result()
        for url in [u for u in (cfg.url, *cfg.mirrors) if u]:
            result = Result(url=url)
            try:
                _update_from(cfg, url.rstrip("/"), state_dir, state, result)
                break
            except Exception as exc:  # any failure of this mirror: the last good lists stay; next mirror
                result.error = (reason_of(exc), _message(exc))
                log.warning("distribution: %s: update refused (%s): %s", url, *result.error)
        now = time.time()
        state["checked_at"] = now
        state["error"] = {"reason": result.error[0], "message": result.error[1]} if result.error else None
        state["refused"] = [{"what": w, "reason": r, "message": m} for w, r, m in result.refused]
        if result.error is None:
            state["last_success"] = now
            state["url"] = result.url
        _write_state(state_dir, state)
    if result.error is None:  # also without a reload (nothing new): the gauges say the gateway is in touch
        metrics.DISTRIBUTION_LAST_SUCCESS.set(value=now)
        refused_ids = {w.removeprefix("list ") for w, _, _ in result.refused}
        for list_id in state.get("lists", {}):
            if list_id not in refused_ids:
                metrics.LISTS_LAST_SUCCESS.set(list_id, value=now)
    for what, reason, msg in result.refused:
        metrics.DISTRIBUTION_FAILURES.inc(reason)
        log.warning("distribution: %s refused (%s): %s; keeping the last good copy", what, reason, msg)
    if result.error:
        metrics.DISTRIBUTION_FAILURES.inc(result.error[0])
    return result


def _updater(cfg: DistributionConfig, url: str, state_dir: str) -> Updater:
    from tuf.ngclient import Updater

    meta = os.path.join(folder(state_dir), "metadata")
    os.makedirs(meta, exist_ok=True)
    bootstrap = None
    if not os.path.exists(os.path.join(meta, "root.json")):
        if not cfg.root:
            raise Refused("metadata", "distribution.root (the trusted root file) is not configured")
        try:
            with open(cfg.root, "rb") as f:  # first run: the root shipped with the installation
                bootstrap = f.read()
        except OSError as exc:
            raise Refused("metadata", f"distribution.root: cannot read the trusted root: {exc}") from None
    cache = os.path.join(folder(state_dir), "downloads")
    os.makedirs(cache, exist_ok=True)
    return Updater(meta, f"{url}/metadata/", cache, f"{url}/targets/", bootstrap=bootstrap)


def _trusted(state_dir: str, role: str) -> Any:
    """A role's metadata as the updater verified and stored it (ngclient keeps no public accessor)."""
    from tuf.api.metadata import Metadata

    return Metadata.from_file(os.path.join(folder(state_dir), "metadata", f"{role}.json"))


def _update_from(cfg: DistributionConfig, url: str, state_dir: str, state: dict[str, Any], result: Result) -> None:
    updater = _updater(cfg, url, state_dir)
    updater.refresh()
    top = _trusted(state_dir, "targets")
    wanted: dict[str, list[TargetFile]] = {}
    roles: dict[str, str] = {}
    for path, tf in top.signed.targets.items():
        _group(wanted, roles, "national", path, tf, result)
    keep_role = None  # a province whose metadata was refused keeps its installed lists
    if cfg.province and not _province_targets(cfg.province, updater, top, state_dir, wanted, roles, result):
        keep_role = cfg.province
    installed: dict[str, Any] = state.setdefault("lists", {})
    for list_id, tfs in sorted(wanted.items()):
        try:
            entry = _install(updater, list_id, tfs, installed.get(list_id), state_dir, result)
        except Exception as exc:  # this list only: its last good copy stays, the others install
            result.refused.append((f"list {list_id}", reason_of(exc), _message(exc)))
            continue
        if entry is not None:
            entry["role"] = roles[list_id]
            installed[list_id] = entry
            result.installed[list_id] = int(entry["version"])
    refused_ids = {w.removeprefix("list ") for w, _, _ in result.refused}
    for list_id in wanted:  # verified current just now (fresh timestamp, snapshot, targets): its age starts again
        if list_id in installed and list_id not in refused_ids and list_id not in result.installed:
            with contextlib.suppress(OSError):
                os.utime(list_file(state_dir, list_id))
    gone = [i for i in installed if i not in wanted and i not in refused_ids and installed[i].get("role") != keep_role]
    for list_id in gone:
        _uninstall(state_dir, installed.pop(list_id))
        log.info("distribution: list %s removed by its publisher", list_id)
    if result.installed or gone:
        state["changed_at"] = time.time()  # a running server reloads when this moves (refresh.py)
    state["root_version"] = _trusted(state_dir, "root").signed.version
    state["snapshot_version"] = _trusted(state_dir, "snapshot").signed.version


def _group(
    wanted: dict[str, list[TargetFile]], roles: dict[str, str], role: str, path: str, tf: TargetFile, result: Result
) -> None:
    custom = tf.custom
    lid = custom.get("list")
    ok = isinstance(lid, str) and SOURCE_ID_RE.match(lid) and isinstance(custom.get("version"), int)
    if not ok or custom.get("format") not in _FORMATS or not isinstance(custom.get("category"), str):
        # the id names a file in the state folder: never a path (a province must not write elsewhere)
        result.refused.append((f"target {path}", "metadata", "no valid list id, version, format or category"))
        return
    list_id = lid if role == "national" else f"{role}-{lid}"
    wanted.setdefault(list_id, []).append(tf)
    roles[list_id] = role


def _province_targets(
    province: str,
    updater: Updater,
    top: Any,
    state_dir: str,
    wanted: dict[str, list[TargetFile]],
    roles: dict[str, str],
    result: Result,
) -> bool:
    """Collect the province role's targets, refusing any outside its delegated paths or categories;
    False when the role itself was refused."""
    dele = top.signed.delegations
    role: DelegatedRole | None = dele.roles.get(province) if dele is not None and dele.roles else None
    if role is None:
        result.refused.append((f"province {province}", "delegation", "the ministry's targets delegate no such role"))
        return False
    try:
        updater.get_targetinfo(f"provinces/{province}/.probe/.probe")  # loads and verifies the role's metadata
        md = _trusted(state_dir, province)
    except Exception as exc:  # the province's metadata only: the national lists still install
        result.refused.append((f"province {province}", reason_of(exc), _message(exc)))
        return False
    allowed = frozenset(role.unrecognized_fields.get(CATEGORIES_FIELD, [])) - RESERVED_CATEGORIES
    for path, tf in md.signed.targets.items():
        what = f"province {province} target {path}"
        if not role.is_delegated_path(path):
            result.refused.append((what, "delegation", f"outside the province's delegated paths {role.paths}"))
            continue
        category = tf.custom.get("category")
        if category not in allowed:
            result.refused.append((what, "category", f"category {category!r} not granted to {province}"))
            continue
        found = updater.get_targetinfo(path)  # resolved through the delegation, as the spec walks it
        if found is None or found.hashes != tf.hashes:
            result.refused.append((what, "delegation", "not resolvable through the province's delegation"))
            continue
        _group(wanted, roles, province, path, found, result)
    return True


# --- install -----------------------------------------------------------------------------------


def list_file(state_dir: str, list_id: str) -> str:
    return os.path.join(folder(state_dir), "lists", f"{list_id}.txt")


def _install(
    updater: Updater, list_id: str, tfs: list[TargetFile], old: dict[str, Any] | None, state_dir: str, result: Result
) -> dict[str, Any] | None:
    """Install the newest version of one list; its state entry (None: already installed)."""
    top = max(tfs, key=lambda tf: (int(tf.custom["version"]), tf.custom.get("kind") == "base"))
    custom = top.custom
    version = int(custom["version"])
    dest = list_file(state_dir, list_id)
    if old and int(old.get("version", -1)) == version and os.path.exists(dest):
        return None
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    work = tempfile.mkdtemp(prefix=".get-", dir=os.path.dirname(dest))
    try:
        tmp = os.path.join(work, "list.txt")
        kind = str(custom.get("kind", "full"))
        if kind == "full":
            _download(updater, top, tmp, result)
            base = version
        else:
            base = _rebuild(updater, tfs, old, dest, work, tmp, result)
        os.chmod(tmp, 0o644)
        os.replace(tmp, dest)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    log.info("distribution: list %s version %d installed", list_id, version)
    return {
        "version": version,
        "base": base,
        "format": custom["format"],
        "category": custom.get("category", "none"),
        "file": dest,
        "delta": kind != "full",
    }


def _download(updater: Updater, tf: TargetFile, path: str, result: Result) -> None:
    updater.download_target(tf, path)  # length and hashes checked against the signed metadata
    result.downloaded += tf.length


def _rebuild(
    updater: Updater,
    tfs: list[TargetFile],
    old: dict[str, Any] | None,
    dest: str,
    work: str,
    out: str,
    result: Result,
) -> int:
    """Rebuild a delta list into ``out``: the installed file plus the newer segments when it is at or
    after the current base, else the base plus every segment. Returns the base version."""
    from filterproxy.distribution import delta

    base_tf = next((tf for tf in tfs if tf.custom.get("kind") == "base"), None)
    if base_tf is None:
        raise Refused("metadata", "a delta list without a base")
    base = int(base_tf.custom["version"])
    have = int(old["version"]) if old and old.get("delta") and os.path.exists(dest) else -1
    if have >= base:
        start, current = have, dest
    else:
        start, current = base, os.path.join(work, "base.gz")
        _download(updater, base_tf, current, result)
    segs = sorted(
        (tf for tf in tfs if tf.custom.get("kind") in ("add", "remove") and int(tf.custom["version"]) > start),
        key=lambda tf: (int(tf.custom["version"]), tf.custom["kind"] == "add"),
    )
    paths = []
    for i, tf in enumerate(segs):
        p = os.path.join(work, f"seg-{i}.gz")
        _download(updater, tf, p, result)
        paths.append((str(tf.custom["kind"]), p))
    adds, removes = delta.fold(paths)
    digest = delta.apply(current, adds, removes, out)
    want = max(tfs, key=lambda tf: int(tf.custom["version"])).custom.get("sha256_full")
    if digest != want:
        raise Refused("hash", f"rebuilt list does not match its signed sha256 ({digest[:16]} != {str(want)[:16]})")
    return base


def _uninstall(state_dir: str, entry: dict[str, Any]) -> None:
    with contextlib.suppress(OSError):
        os.unlink(entry["file"])


# --- serving -----------------------------------------------------------------------------------

WHERE = "distribution"


def sources(state_dir: str) -> list[ListSource]:
    """The installed lists as list sources (their files are the last good copies)."""
    out = []
    for list_id, e in sorted(read_state(state_dir).get("lists", {}).items()):
        if not os.path.exists(e.get("file", "")):
            continue
        role = e.get("role", "national")
        out.append(
            ListSource(
                id=list_id,
                category=e["category"],
                format=e["format"],
                path=e["file"],
                hashed=e["format"] in HASHED_FORMATS,
                where=f"{WHERE} {role} v{e['version']}",
                version=str(e["version"]),
            )
        )
    return out


def is_distributed(source: ListSource) -> bool:
    """A list installed from the repository (verified by the TUF updater)."""
    return source.where.startswith(WHERE + " ")


def role_of(source: ListSource) -> str:
    """``national`` or ``province`` (a bounded label) of a distributed list."""
    return "national" if source.where.split(" ")[1:2] == ["national"] else "province"


def publish_metrics(lists: list[Any]) -> None:
    """Version gauges of the distributed lists being served, plus root/snapshot versions and last success."""
    from filterproxy import metrics

    state_dir = None
    for li in lists:
        if is_distributed(li.source) and li.version.isdigit():
            metrics.DISTRIBUTION_LIST_VERSION.set(li.id, role_of(li.source), value=int(li.version))
            state_dir = os.path.dirname(os.path.dirname(os.path.dirname(li.source.path or "")))
    if state_dir:
        state = read_state(state_dir)
        for gauge, key in (
            (metrics.DISTRIBUTION_ROOT_VERSION, "root_version"),
            (metrics.DISTRIBUTION_SNAPSHOT_VERSION, "snapshot_version"),
            (metrics.DISTRIBUTION_LAST_SUCCESS, "last_success"),
        ):
            if isinstance(state.get(key), int | float):
                gauge.set(value=state[key])


def list_errors(state_dir: str) -> dict[str, str]:
    """The last update's refusals by list id, and ``*`` for a whole-update failure (for the admin API)."""
    state = read_state(state_dir)
    out = {}
    for r in state.get("refused") or []:
        what = r.get("what", "")
        if what.startswith("list "):
            out[what.removeprefix("list ")] = f"{r['reason']}: {r['message']}"
    if state.get("error"):
        out["*"] = f"{state['error']['reason']}: {state['error']['message']}"
    return out
