"""Compiled snapshots on disk, last-known-good, and the ``filterproxy lists`` commands.

A snapshot folder is named by a fingerprint of its inputs (every source's settings and every list
file's size and mtime), so an unchanged set of lists is never parsed twice: ``run`` and ``explain``
memory-map it in milliseconds. A new snapshot is compiled in a **child process** (the serving process
never pays the parsing peak in RSS nor holds the GIL while parsing), written to a temporary folder,
then renamed into place; ``current`` points at the last snapshot that was served successfully.

``lists update`` fetches every configured list that has a ``url`` (conditional GET, size caps,
retries; see :mod:`filterproxy.lists.fetch`), refuses a file that parses to nothing, keeps the
previous file when a download fails, and refuses a snapshot whose entry count fell below
``--min-ratio`` (default 0.5) of the current one: the last known good snapshot keeps serving.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from filterproxy.lists.parsers import ListError
from filterproxy.lists.store import (SNAPSHOT_FORMAT, ListSource, Snapshot, build_snapshot, load_snapshot,
                                     save_snapshot)

log = logging.getLogger("filterproxy.lists")

KEEP_SNAPSHOTS = 3
DEFAULT_MIN_RATIO = 0.5


def _file_stamps(path: str) -> list:
    if os.path.isdir(path):
        return [(n, *_stat(os.path.join(path, n))) for n in sorted(os.listdir(path))
                if os.path.isfile(os.path.join(path, n))]
    return [_stat(path)]


def _stat(path: str) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_size, st.st_mtime_ns


def fingerprint(sources: list[ListSource]) -> str:
    """Stable id of a set of sources and the exact files behind them, in this snapshot format (so a
    format change compiles a new folder instead of failing on the old one)."""
    h = hashlib.sha256(f"format {SNAPSHOT_FORMAT}".encode())
    for s in sources:
        h.update(json.dumps([s.id, s.category, s.format, os.path.abspath(s.path or ""), s.match, s.allow, s.legal,
                             s.hashed, _file_stamps(s.path)], sort_keys=True).encode())
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
            r = subprocess.run([sys.executable, "-m", "filterproxy.lists.snapshot", tmp], input=spec, text=True,
                               capture_output=True)
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
    dirs = sorted((e for e in os.scandir(root) if e.is_dir(follow_symlinks=False) and not e.name.startswith(".")),
                  key=lambda e: e.stat().st_mtime, reverse=True)
    for e in dirs[limit:]:
        if os.path.realpath(e.path) not in (cur, os.path.realpath(keep_also)):
            shutil.rmtree(e.path, ignore_errors=True)


def list_version(info) -> tuple[str, float]:
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
    keep = {os.path.basename(folder)}
    entries = sorted((e for e in os.scandir(root) if e.is_dir(follow_symlinks=False) and not e.name.startswith(".")),
                     key=lambda e: e.stat().st_mtime, reverse=True)
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


def available_sources(cfg) -> list[ListSource]:
    """Configured lists with a local copy, plus the installed signed bundle's lists."""
    present: list[ListSource] = []
    if cfg.bundle.keys:  # the bundle machinery (and cryptography, ~8 MB of RSS) only when a bundle is pinned
        from filterproxy.lists.bundle_cli import bundle_sources

        present.extend(bundle_sources(cfg))
    for s in cfg.lists:
        if s.path and os.path.exists(s.path):
            present.append(s)
        else:
            log.info("list %s: no local copy yet (run 'filterproxy lists update')", s.id)
    return present


def load_or_build(cfg, *, extra: bool = False, strict: bool = False, in_process: bool = False) -> Snapshot:
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


# ---------------------------------------------------------------- lists update / reload / show

def _fetch_sources(cfg):
    from filterproxy.lists import fetch as fetchmod

    out = []
    for s in cfg.lists:
        if not s.url:
            continue
        out.append((s, fetchmod.Source(id=s.id, url=s.url, format=s.format if s.format != "ut1" else "domains",
                                       category=s.category, match=s.match)))
    return out


def update(cfg, *, min_ratio: float = DEFAULT_MIN_RATIO) -> int:
    """Fetch, validate, compile; swap ``current`` only when the new snapshot is sane. Exit status."""
    from filterproxy import metrics
    from filterproxy.lists import fetch as fetchmod
    from filterproxy.lists.parsers import ParseStats, iter_entries

    cache = os.path.join(cfg.server.state_dir, "lists")
    os.makedirs(cache, exist_ok=True)
    failures = 0
    if cfg.bundle.url:
        bsrc = fetchmod.Source(id="bundle", url=cfg.bundle.url, format="bundle", signing_key=cfg.bundle.keys[0]
                               if cfg.bundle.keys else None)
        res = fetchmod.fetch(bsrc, cache)
        if res.status == "failed":
            failures += 1
            metrics.LISTS_UPDATE_FAILURES.inc("bundle", "download")
            print(f"bundle: download failed, keeping the installed bundle: {res.error}", file=sys.stderr)
        elif res.status == "updated" and res.path:
            from filterproxy.lists.bundle_cli import install_bundle

            failures += install_bundle(cfg, res.path, cfg.bundle.keys) != 0
    for src, fsrc in _fetch_sources(cfg):
        def validate(path: str, _src: ListSource = src) -> None:
            n = 0
            for _ in iter_entries(_src.format, path, lambda p: ParseStats(p), _src.match):
                n += 1
                if n >= 1:
                    return
            raise ListError(f"{_src.id}: downloaded file parses to zero entries")

        res = fetchmod.fetch(fsrc, cache, validate=validate)
        if res.status == "failed":
            failures += 1
            reason = "timeout" if "timed out" in (res.error or "") else "download"
            metrics.LISTS_UPDATE_FAILURES.inc(src.id, reason)
            print(f"{src.id}: update failed, keeping the previous copy: {res.error}", file=sys.stderr)
        else:
            print(f"{src.id}: {res.status} ({res.bytes:,} bytes)")
            if res.path and os.path.abspath(res.path) != os.path.abspath(src.path):
                os.makedirs(os.path.dirname(src.path), exist_ok=True)
                shutil.copyfile(res.path, src.path)
    root = snapshots_dir(cfg.server.state_dir)
    prev = current_snapshot(cfg.server.state_dir)
    try:
        prev_entries = load_snapshot(prev).total_entries if prev else 0
    except ListError as exc:  # e.g. an older snapshot format: nothing to compare the new one with
        print(f"filterproxy lists update: current snapshot unreadable, not comparing sizes: {exc}", file=sys.stderr)
        prev_entries = 0
    try:
        folder = compile_snapshot(available_sources(cfg), root)
    except ListError as exc:
        print(f"filterproxy lists update: new snapshot refused, keeping the last good one: {exc}", file=sys.stderr)
        return 1
    snap = load_snapshot(folder)
    if prev and prev_entries and snap.total_entries < min_ratio * prev_entries:
        print(f"filterproxy lists update: new snapshot has {snap.total_entries:,} entries, fewer than "
              f"{min_ratio:.0%} of the current {prev_entries:,}: refused, keeping the last good one", file=sys.stderr)
        shutil.rmtree(folder, ignore_errors=True)
        return 1
    mark_current(root, folder)
    print(f"snapshot {os.path.basename(folder)}: {len(snap.lists)} lists, {snap.total_entries:,} entries")
    return 1 if failures else 0


def reload(cfg) -> int:
    """SIGHUP the running filterproxy (pid file in the state folder)."""
    pidfile = os.path.join(cfg.server.state_dir, "filterproxy.pid")
    try:
        pid = int(open(pidfile).read().strip())
        os.kill(pid, signal.SIGHUP)
    except (OSError, ValueError) as exc:
        print(f"filterproxy lists reload: no running filterproxy found ({pidfile}: {exc})", file=sys.stderr)
        return 1
    print(f"reload requested (pid {pid})")
    return 0


def show(cfg) -> int:
    folder = current_snapshot(cfg.server.state_dir)
    snap = None
    if folder:
        try:
            snap = load_snapshot(folder)
        except ListError as exc:  # e.g. an older snapshot format after an upgrade: compile this one's
            log.warning("current snapshot unreadable, compiling the lists again: %s", exc)
    if snap is None:
        snap = load_or_build(cfg)
        folder = current_snapshot(cfg.server.state_dir)
    print(f"snapshot {os.path.basename(folder) if folder else '(in memory)'} built "
          f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(snap.built_at))}")
    for li in snap.lists:
        print(f"  {li.id:<30} {li.category:<10} {li.source.format:<9} {li.entries:>9,} entries"
              + (f"  ({li.skipped} skipped)" if li.skipped else ""))
    return 0


def cli(args) -> int:
    from filterproxy import metrics
    from filterproxy.config import load_config

    cfg = load_config(args.config)
    if getattr(args, "state_dir", None):
        cfg.server.state_dir = os.path.abspath(args.state_dir)
    # failures counted here reach the running filterproxy's /metrics through the shared folder
    metrics.enable_multiprocess(os.path.join(cfg.server.state_dir, "metrics"))
    if args.lists_command == "update":
        if getattr(args, "bundle", None):
            from filterproxy.lists.bundle_cli import install_bundle

            return install_bundle(cfg, args.bundle, args.key)
        return update(cfg, min_ratio=args.min_ratio if args.min_ratio is not None else DEFAULT_MIN_RATIO)
    if args.lists_command == "reload":
        return reload(cfg)
    return show(cfg)


def _child_main() -> None:
    """``python -m filterproxy.lists.snapshot OUT`` with the sources as JSON on stdin."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    sources = [ListSource(**d) for d in json.load(sys.stdin)]
    try:
        save_snapshot(build_snapshot(sources, strict=True), sys.argv[1])
    except ListError as exc:
        print(f"{exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    _child_main()
