"""The on-disk cache of compiled snapshots, keyed by a fingerprint of their inputs; last-known-good.

A snapshot folder is named by a fingerprint of its inputs (every source's settings and every list
file's size and mtime), so an unchanged set of lists is never parsed twice: ``run`` and ``explain``
memory-map it in milliseconds. A new snapshot is compiled in a **child process** (the serving process
never pays the parsing peak in RSS nor holds the GIL while parsing), written to a temporary folder,
then renamed into place; ``current`` points at the last snapshot that was served successfully.
"""

from __future__ import annotations

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

from filterproxy.fsutil import fsync_dir
from filterproxy.lists.parsers import ListError
from filterproxy.lists.snapshot import (
    SNAPSHOT_FORMAT,
    ListInfo,
    ListSource,
    Snapshot,
    build_snapshot,
    load_snapshot,
    save_snapshot,
)

if TYPE_CHECKING:
    from filterproxy.config import Config

log = logging.getLogger("filterproxy.lists")

KEEP_SNAPSHOTS = 3


def _file_stamps(path: str) -> list[tuple[str | int, ...]]:
    if os.path.isdir(path):
        return [
            (n, *_stat(os.path.join(path, n)))
            for n in sorted(os.listdir(path))
            if os.path.isfile(os.path.join(path, n))
        ]
    return [_stat(path)]


def _stat(path: str) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_size, st.st_mtime_ns


def fingerprint(sources: list[ListSource]) -> str:
    """Stable id of a set of sources and the exact files behind them, in this snapshot format (so a
    format change compiles a new folder instead of failing on the old one)."""
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
                    _file_stamps(s.path),
                ],
                sort_keys=True,
            ).encode()
        )
    return h.hexdigest()[:24]


def snapshots_dir(state_dir: str) -> str:
    return os.path.join(state_dir, "snapshots")


def compile_snapshot(sources: list[ListSource], root: str, *, in_process: bool = False) -> str:
    """Compile ``sources`` into ``root/<fingerprint>`` (if not there yet); returns the folder."""
    fp = fingerprint(sources)
    final = os.path.join(root, fp)
    if os.path.exists(os.path.join(final, "meta.json")):
        return final
    os.makedirs(root, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{fp}-", dir=root)
    try:
        if in_process:
            save_snapshot(build_snapshot(sources, strict=True), tmp)
        else:
            spec = json.dumps([s.__dict__ for s in sources])
            r = subprocess.run(
                [sys.executable, "-m", "filterproxy.lists.snapshot_cache", tmp],
                input=spec,
                text=True,
                capture_output=True,
            )
            if r.returncode != 0:
                msg = r.stderr.strip().splitlines()[-1] if r.stderr.strip() else f"exit {r.returncode}"
                raise ListError(msg.removeprefix("filterproxy.lists.parsers.ListError: "))
        try:
            os.rename(tmp, final)
        except OSError:  # another process compiled the same inputs first: use theirs
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _prune(root, keep_also=final)
    return final


def _prune(root: str, keep_also: str, limit: int = 8) -> None:
    """Keep ``current``, ``keep_also`` and the newest few snapshots (``--extra-list`` runs make more)."""
    cur = os.path.realpath(os.path.join(root, "current"))
    dirs = sorted(
        (e for e in os.scandir(root) if e.is_dir(follow_symlinks=False) and not e.name.startswith(".")),
        key=lambda e: e.stat().st_mtime,
        reverse=True,
    )
    for e in dirs[limit:]:
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
    for li in snap.lists:
        if li.id.startswith("bundle-") and li.version.startswith("serial-"):
            serial = int(li.version.removeprefix("serial-"))
            publisher = li.source.where.split("(", 1)[-1].rstrip(")")
            metrics.BUNDLE_INFO.set(publisher, str(serial))
            metrics.BUNDLE_SERIAL.set(value=serial)
            break
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
    entries = sorted(
        (e for e in os.scandir(root) if e.is_dir(follow_symlinks=False) and not e.name.startswith(".")),
        key=lambda e: e.stat().st_mtime,
        reverse=True,
    )
    for e in entries:
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
    installed signed bundle's lists."""
    present: list[ListSource] = []
    if cfg.bundle.keys:  # the bundle machinery (and cryptography, ~8 MB of RSS) only when a bundle is pinned
        from filterproxy.lists.bundle_cli import bundle_sources

        present.extend(bundle_sources(cfg))
    for s in cfg.lists:
        s = s.resolved(cfg.server.state_dir)
        if s.path and os.path.exists(s.path):
            present.append(s)
        else:
            log.info("list %s: no local copy yet (run 'filterproxy lists update')", s.id)
    return present


def load_or_build(cfg: Config, *, extra: bool = False, strict: bool = False, in_process: bool = False) -> Snapshot:
    """The snapshot to serve for ``cfg``: memory-mapped from the state folder when its inputs are
    unchanged, otherwise compiled (in a child process) and cached. When the state folder is not
    writable, the snapshot is built in memory."""
    sources = available_sources(cfg)
    root = snapshots_dir(cfg.server.state_dir)
    try:
        os.makedirs(root, exist_ok=True)
        writable = os.access(root, os.W_OK)
    except OSError:
        writable = False
    if not writable:
        log.warning("state folder %s not writable: building lists in memory", root)
        return build_snapshot(sources, strict=True)
    t = time.perf_counter()
    folder = compile_snapshot(sources, root, in_process=in_process)
    snap = load_snapshot(folder)
    if not extra:
        mark_current(root, folder)
    log.info("lists ready: %d lists, %d entries (%.2f s)", len(snap.lists), snap.total_entries, time.perf_counter() - t)
    return snap


def _child_main() -> None:
    """``python -m filterproxy.lists.snapshot_cache OUT`` with the sources as JSON on stdin."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    sources = [ListSource(**d) for d in json.load(sys.stdin)]
    try:
        save_snapshot(build_snapshot(sources, strict=True), sys.argv[1])
    except ListError as exc:
        print(f"{exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    _child_main()
