"""The on-disk cache of compiled snapshots, keyed by a fingerprint of their inputs; last-known-good.

A snapshot folder is named by a fingerprint of its inputs (every source's settings and every list
file's size and mtime), so an unchanged set of lists is never parsed twice: ``run`` and ``explain``
memory-map it in milliseconds. A new snapshot is compiled in a **child process** (the serving process
never pays the parsing peak in RSS nor holds the GIL while parsing), written to a temporary folder,
then renamed into place; ``current`` points at the last snapshot that was served successfully.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from typing import TYPE_CHECKING

from filterproxy.distribution import gateway
from filterproxy.fsutil import fsync_dir
from filterproxy.lists.guard import DEFAULT_MIN_RATIO, SnapshotRefused, shrink_problem
from filterproxy.lists.parsers import ListError
from filterproxy.lists.snapshot import (
    SNAPSHOT_FORMAT,
    ListInfo,
    ListSource,
    Snapshot,
    build_snapshot,
    load_list_infos,
    load_snapshot,
    save_snapshot,
)

if TYPE_CHECKING:
    from filterproxy.config import Config

log = logging.getLogger("filterproxy.lists")

KEEP_SNAPSHOTS = 3


def _file_digests(path: str) -> list[tuple[str, str]]:
    """(name, content digest) of a list file, or of each file in a list folder."""
    if os.path.isdir(path):
        return [
            (n, _digest(os.path.join(path, n)))
            for n in sorted(os.listdir(path))
            if os.path.isfile(os.path.join(path, n))
        ]
    return [("", _digest(path))]


# (path, inode, size, mtime_ns) -> sha256: a file is read once per process while it is unchanged
_DIGESTS: dict[tuple[str, int, int, int], str] = {}


def _digest(path: str) -> str:
    st = os.stat(path)
    key = (os.path.abspath(path), st.st_ino, st.st_size, st.st_mtime_ns)
    d = _DIGESTS.get(key)
    if d is None:
        with open(path, "rb") as f:
            d = hashlib.file_digest(f, "sha256").hexdigest()
        if len(_DIGESTS) > 4096:
            _DIGESTS.clear()
        _DIGESTS[key] = d
    return d


def fingerprint(sources: list[ListSource]) -> str:
    """Stable id of a set of sources and the exact content behind them, in this snapshot format (so a
    format change compiles a new folder instead of failing on the old one).

    By content, not by modification time: a reload back to a version compiled before (a list restored
    from a backup, a download that brought back yesterday's file) maps the cached folder in
    milliseconds instead of compiling again."""
    h = hashlib.sha256(f"format {SNAPSHOT_FORMAT}".encode())
    for s in sources:
        assert s.path is not None, f"list {s.id} has no local file"  # available_sources() keeps only those with one
        h.update(
            json.dumps(
                [
                    s.id,
                    s.category,
                    s.format,
                    os.path.abspath(s.path or ""),
                    s.match,
                    s.allow,
                    s.legal,
                    s.hashed,
                    s.fullhash_url,  # a prefix entry needs one (a load error without), and it is in meta.json
                    s.fullhash_failure,
                    _file_digests(s.path),
                ],
                sort_keys=True,
            ).encode()
        )
    return h.hexdigest()[:24]


def snapshots_dir(state_dir: str) -> str:
    return os.path.join(state_dir, "snapshots")


def writable_snapshots_dir(state_dir: str) -> str | None:
    """The snapshot cache folder of ``state_dir``, created; None when it cannot be written (build in memory)."""
    root = snapshots_dir(state_dir)
    try:
        os.makedirs(root, exist_ok=True)
    except OSError:
        return None
    return root if os.access(root, os.W_OK) else None


def compile_snapshot(sources: list[ListSource], root: str, *, in_process: bool = False) -> str:
    """Compile ``sources`` into ``root/<fingerprint>`` (if not there yet); returns the folder.

    A folder left without its ``meta.json`` (a compile that was killed) is compiled again, and says so."""
    fp = fingerprint(sources)
    final = os.path.join(root, fp)
    if os.path.exists(os.path.join(final, "meta.json")):
        return final
    if os.path.isdir(final):
        log.warning("snapshot %s is incomplete (no meta.json): compiling it again", final)
        shutil.rmtree(final, ignore_errors=True)
    os.makedirs(root, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{fp}-", dir=root)
    previous = _previous_images(root)
    try:
        if in_process:
            _save_built(sources, tmp, previous)
        else:
            _compile_in_child(sources, tmp, previous)
        try:
            os.rename(tmp, final)
        except OSError:  # another process compiled the same inputs first: use theirs
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _prune(root, keep_also=final)
    _log_image_update(final)
    return final


def _previous_images(root: str) -> str | None:
    """The snapshot whose image index a new compile may build on: ``current``, else the newest complete one
    that has an image index (runs with ``--extra-list`` never mark one current). Any will do for
    correctness: the delta path checks the lists and compares against that index's own base."""
    cur = os.path.join(root, "current")
    candidates = [os.path.realpath(cur)] if os.path.exists(cur) else []
    candidates += [e.path for e in _snapshot_folders(root)]
    return next(
        (
            c
            for c in candidates
            if os.path.exists(os.path.join(c, "meta.json")) and os.path.isdir(os.path.join(c, "images"))
        ),
        None,
    )


def _log_image_update(folder: str) -> None:
    """Which way the child built the image index, and how long it took (its lineage.json)."""
    images = os.path.join(folder, "images")
    if not os.path.isdir(images):  # no image lists: numpy stays unimported
        return
    from filterproxy.lists.snapshot_images import load_lineage

    try:
        lin = load_lineage(images)
    except (OSError, ValueError):
        return
    if lin:
        log.info(
            "lists: image index %s build in %.2f s (%s; %d net changes since the full build, generation %d)",
            lin.get("path"),
            lin.get("seconds", 0.0),
            lin.get("why"),
            lin.get("changes", 0),
            lin.get("generation", 0),
        )


def _compile_in_child(sources: list[ListSource], out: str, previous: str | None = None) -> None:
    spec = json.dumps([s.__dict__ for s in sources])
    r = subprocess.run(
        [sys.executable, "-m", "filterproxy.lists.snapshot_cache", out, *([previous] if previous else [])],
        input=spec,
        text=True,
        capture_output=True,
    )
    if r.returncode != 0:
        msg = r.stderr.strip().splitlines()[-1] if r.stderr.strip() else f"exit {r.returncode}"
        raise ListError(msg.removeprefix("filterproxy.lists.parsers.ListError: "))


def _save_built(sources: list[ListSource], out: str, previous: str | None = None) -> None:
    """Build and write a snapshot (its image index over ``previous``'s when few hashes changed); a full
    disk is reported as such, naming the folder (the index library's own message for it is an opaque I/O
    error)."""
    try:
        snap = build_snapshot(sources, strict=True, previous=previous, images_dir=os.path.join(out, "images"))
        save_snapshot(snap, out)
    except (OSError, RuntimeError) as exc:
        if (isinstance(exc, OSError) and exc.errno == errno.ENOSPC) or _nearly_full(out):
            free = shutil.disk_usage(out).free
            raise ListError(
                f"no space left on {os.path.dirname(out)} ({free:,} bytes free) while writing the compiled "
                f"lists: free some space, the last good lists keep serving"
            ) from None
        raise


def _nearly_full(path: str, need: int = 1 << 20) -> bool:
    try:
        return shutil.disk_usage(path).free < need
    except OSError:
        return False


def _snapshot_folders(root: str) -> list[os.DirEntry[str]]:
    """The compiled snapshot folders under ``root``, newest first (temporary ``.``-folders and the
    ``current`` link left out)."""
    return sorted(
        (e for e in os.scandir(root) if e.is_dir(follow_symlinks=False) and not e.name.startswith(".")),
        key=lambda e: e.stat().st_mtime,
        reverse=True,
    )


def _prune(root: str, keep_also: str, limit: int = 8) -> None:
    """Keep ``current``, ``keep_also`` and the newest few snapshots (``--extra-list`` runs make more)."""
    cur = os.path.realpath(os.path.join(root, "current"))
    for e in _snapshot_folders(root)[limit:]:
        if os.path.realpath(e.path) not in (cur, os.path.realpath(keep_also)):
            shutil.rmtree(e.path, ignore_errors=True)


def list_version(info: ListInfo) -> tuple[str, float]:
    """(version label, time of the last successful fetch) of a loaded list, for compliance metrics."""
    try:
        mtime = max(os.stat(f).st_mtime for f in info.files) if info.files else 0.0
    except OSError:
        mtime = 0.0
    version = info.version or time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(mtime))
    return version, mtime


def publish_metrics(snap: Snapshot) -> None:
    """Compliance figures of the snapshot being served: entries, version and age per list."""
    from filterproxy import metrics

    metrics.configure_labels(lists=[li.id for li in snap.lists])
    if any(gateway.is_distributed(li.source) for li in snap.lists):
        gateway.publish_metrics(snap.lists)
    for li in snap.lists:
        version, ts = list_version(li)
        metrics.LISTS_ENTRIES.set(li.id, li.category, value=li.entries)
        metrics.LISTS_INFO.set(li.id, version)
        if ts:
            metrics.LISTS_LAST_SUCCESS.set(li.id, value=ts)


def mark_current(root: str, folder: str) -> None:
    """Point ``root/current`` at ``folder`` (atomically) and prune old snapshots."""
    link = os.path.join(root, "current")
    tmp = link + ".tmp"
    if os.path.lexists(tmp):
        os.unlink(tmp)
    os.symlink(os.path.basename(folder), tmp)
    os.replace(tmp, link)
    fsync_dir(root)
    keep = {os.path.basename(folder)}
    for e in _snapshot_folders(root):
        if e.name in keep:
            continue
        if len(keep) < KEEP_SNAPSHOTS:
            keep.add(e.name)
        else:
            shutil.rmtree(e.path, ignore_errors=True)


def current_snapshot(state_dir: str) -> str | None:
    link = os.path.join(snapshots_dir(state_dir), "current")
    return os.path.realpath(link) if os.path.exists(os.path.join(link, "meta.json")) else None


def available_sources(cfg: Config) -> list[ListSource]:
    """Configured lists with a local copy (downloaded ones: in the state folder in use now), plus the
    lists installed from the distribution repository (their last good copies)."""
    present: list[ListSource] = []
    if cfg.distribution.url:
        taken = {s.id for s in cfg.lists}
        for s in gateway.sources(cfg.server.state_dir):
            if s.id in taken:
                log.warning("distributed list %s: a configured list has the same id; serving the configured one", s.id)
            else:
                present.append(s)
    for s in cfg.lists:
        s = s.resolved(cfg.server.state_dir)
        if s.path and os.path.exists(s.path):
            present.append(s)
        else:
            log.info("list %s: no local copy yet (run 'filterproxy lists update')", s.id)
    return present


def load_or_build(
    cfg: Config,
    *,
    extra: bool = False,
    strict: bool = False,
    in_process: bool = False,
    refuse: bool = False,
    min_ratio: float = DEFAULT_MIN_RATIO,
) -> Snapshot:
    """The snapshot to serve for ``cfg``: memory-mapped from the state folder when its inputs are
    unchanged, otherwise compiled (in a child process) and cached. When the state folder is not
    writable, the snapshot is built in memory.

    The last-good rule (:mod:`filterproxy.lists.guard`): a new snapshot in which a list collapsed is
    not served. ``refuse`` raises :class:`SnapshotRefused` (a reload keeps what it serves); otherwise
    the last good snapshot is served instead (start-up), with the reason logged."""
    sources = available_sources(cfg)
    root = writable_snapshots_dir(cfg.server.state_dir)
    if root is None:
        log.warning("state folder %s not writable: building lists in memory", snapshots_dir(cfg.server.state_dir))
        return build_snapshot(sources, strict=True)
    t = time.perf_counter()
    folder, snap = _compile_and_load(sources, root, in_process)
    last_good = _last_good(cfg.server.state_dir, folder)
    why = shrink_problem(last_good[1], snap.lists, min_ratio) if last_good else None
    if last_good and why:
        if refuse:
            raise SnapshotRefused(why)
        log.error(
            "lists: %s; serving the last good snapshot %s instead (if the change is intended, run "
            "'filterproxy lists update --min-ratio 0')",
            why,
            os.path.basename(last_good[0]),
        )
        folder = last_good[0]
        snap = load_snapshot(folder)
    elif not extra:
        mark_current(root, folder)
    log.info("lists ready: %d lists, %d entries (%.2f s)", len(snap.lists), snap.total_entries, time.perf_counter() - t)
    return snap


def _compile_and_load(sources: list[ListSource], root: str, in_process: bool) -> tuple[str, Snapshot]:
    """Compile (or find) and map a snapshot; a cached folder that no longer reads is compiled again,
    and the log says so."""
    folder = compile_snapshot(sources, root, in_process=in_process)
    try:
        return folder, load_snapshot(folder)
    except ListError as exc:
        log.warning("lists: cached snapshot is corrupt, compiling it again: %s", exc)
        shutil.rmtree(folder, ignore_errors=True)
    folder = compile_snapshot(sources, root, in_process=in_process)
    return folder, load_snapshot(folder)


def _last_good(state_dir: str, new_folder: str) -> tuple[str, list[ListInfo]] | None:
    """The ``current`` snapshot's folder and lists, when it is another folder than the new one and still
    reads (only its ``meta.json``: the comparison needs the entry counts, not the index)."""
    cur = current_snapshot(state_dir)
    if not cur or os.path.realpath(cur) == os.path.realpath(new_folder):
        return None
    try:
        return cur, load_list_infos(cur)
    except ListError as exc:
        log.warning("lists: the last good snapshot no longer reads, nothing to compare with: %s", exc)
        return None


def _child_main() -> None:
    """``python -m filterproxy.lists.snapshot_cache OUT [PREVIOUS]`` with the sources as JSON on stdin."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    with contextlib.suppress(OSError):  # the compile yields the CPU to the serving threads it runs beside
        os.nice(10)
    sources = [ListSource(**d) for d in json.load(sys.stdin)]
    try:
        _save_built(sources, sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else None)
    except ListError as exc:
        print(f"{exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    _child_main()
