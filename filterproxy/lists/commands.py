"""``filterproxy lists update | reload | show``: fetch, compile, swap, signal, report.

``lists update`` installs what the ``distribution:`` repository publishes (TUF, verified by
:mod:`filterproxy.distribution.gateway`; a refusal says why and keeps the last good lists), fetches
every configured list that has a ``url`` (conditional GET, size caps, retries; see
:mod:`filterproxy.lists.fetch`) into ``<state_dir>/lists``, refuses a file that parses
to nothing, keeps the previous file when a download fails, and refuses a snapshot whose entry count
fell below ``--min-ratio`` (default 0.5) of the current one: the last known good snapshot keeps
serving. Every command works on the state folder given by ``--state-dir`` (else the configured one).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import time
from typing import TYPE_CHECKING

from filterproxy.lists.guard import DEFAULT_MIN_RATIO, SnapshotRefused
from filterproxy.lists.parsers import ListError
from filterproxy.lists.snapshot import load_snapshot
from filterproxy.lists.snapshot_cache import (
    current_snapshot,
    load_or_build,
)

if TYPE_CHECKING:
    from filterproxy.config import Config

log = logging.getLogger("filterproxy.lists")


def _update_distribution(cfg: Config) -> int:
    """Update from the distribution repository; 1 when anything was refused (the last good lists stay)."""
    from filterproxy.distribution import gateway

    res = gateway.update(cfg.distribution, cfg.server.state_dir)
    for list_id, version in sorted(res.installed.items()):
        print(f"{list_id}: version {version} installed from {res.url}")
    for what, reason, msg in res.refused:
        print(f"{what}: refused ({reason}): {msg}; keeping the last good copy", file=sys.stderr)
    if res.error:
        print(
            f"distribution: update refused ({res.error[0]}): {res.error[1]}; keeping the last good lists",
            file=sys.stderr,
        )
    elif not res.installed:
        print(f"distribution: up to date ({res.url}, {res.downloaded:,} bytes of lists downloaded)")
    else:
        print(f"distribution: {res.downloaded:,} bytes of lists downloaded")
    return 0 if res.ok else 1


def _update_lists(cfg: Config, cache: str) -> int:
    """Fetch every downloaded list into ``cache``; the number of failures."""
    from filterproxy import metrics
    from filterproxy.lists.refresh import failure_reason, fetch_list

    failures = 0
    for src in (s for s in cfg.lists if s.url):
        res = fetch_list(src, cfg.server.state_dir)
        if res.status == "failed":
            failures += 1
            metrics.LISTS_UPDATE_FAILURES.inc(src.id, failure_reason(res.error))
            print(f"{src.id}: update failed, keeping the previous copy: {res.error}", file=sys.stderr)
            continue
        print(f"{src.id}: {res.status} ({res.bytes:,} bytes)")
    return failures


def _swap_snapshot(cfg: Config, min_ratio: float) -> bool:
    """Compile the lists now on disk and make them ``current`` unless they look broken (the same rule
    as every other path that swaps lists, :func:`load_or_build`); True when swapped."""
    try:
        snap = load_or_build(cfg, refuse=True, min_ratio=min_ratio)
    except SnapshotRefused as exc:
        print(
            f"filterproxy lists update: {exc}: refused, keeping the last good one "
            f"(--min-ratio 0 accepts it if the change is intended)",
            file=sys.stderr,
        )
        return False
    except ListError as exc:
        print(f"filterproxy lists update: new snapshot refused, keeping the last good one: {exc}", file=sys.stderr)
        return False
    if snap.folder is None:  # built in memory: the state folder is not writable
        print(f"filterproxy lists update: cannot write snapshots under {cfg.server.state_dir}", file=sys.stderr)
        return False
    print(f"snapshot {os.path.basename(snap.folder)}: {len(snap.lists)} lists, {snap.total_entries:,} entries")
    return True


def update(cfg: Config, *, min_ratio: float = DEFAULT_MIN_RATIO) -> int:
    """Fetch, validate, compile; swap ``current`` only when the new snapshot is sane. Exit status."""
    cache = os.path.join(cfg.server.state_dir, "lists")
    os.makedirs(cache, exist_ok=True)
    failures = _update_distribution(cfg) if cfg.distribution.url else 0
    failures += _update_lists(cfg, cache)
    if not _swap_snapshot(cfg, min_ratio):
        return 1
    return 1 if failures else 0


def reload(cfg: Config) -> int:
    """SIGHUP the running filterproxy (pid file in the state folder)."""
    pidfile = os.path.join(cfg.server.state_dir, "filterproxy.pid")
    try:
        with open(pidfile) as f:
            pid = int(f.read().strip())
        os.kill(pid, signal.SIGHUP)
    except (OSError, ValueError) as exc:
        print(f"filterproxy lists reload: no running filterproxy found ({pidfile}: {exc})", file=sys.stderr)
        return 1
    print(f"reload requested (pid {pid})")
    return 0


def show(cfg: Config) -> int:
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
    print(
        f"snapshot {os.path.basename(folder) if folder else '(in memory)'} built "
        f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(snap.built_at))}"
    )
    for li in snap.lists:
        print(
            f"  {li.id:<30} {li.category:<10} {li.source.format:<9} {li.entries:>9,} entries"
            + (f"  ({li.skipped} skipped)" if li.skipped else "")
            + (f"  [{li.source.where}]" if li.source.where.startswith("distribution ") else "")
        )
    if cfg.distribution.url:
        _show_distribution(cfg)
    return 0


def _show_distribution(cfg: Config) -> None:
    """The distribution state: versions verified, last success, and what the last update refused."""
    from filterproxy.distribution import gateway

    st = gateway.read_state(cfg.server.state_dir)
    ok = st.get("last_success")
    print(
        f"distribution {cfg.distribution.url}: root v{st.get('root_version', '?')}, snapshot "
        f"v{st.get('snapshot_version', '?')}, last success "
        + (time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ok)) if ok else "never")
    )
    if st.get("error"):
        print(f"  last update refused ({st['error']['reason']}): {st['error']['message']}")
    for r in st.get("refused") or []:
        print(f"  refused {r['what']} ({r['reason']}): {r['message']}")


def cli(args: argparse.Namespace) -> int:
    """``filterproxy lists ...``: the configuration with ``--state-dir`` applied, then the sub-command."""
    from filterproxy import metrics
    from filterproxy.app import load_config_with

    cfg = load_config_with(args.config, state_dir=getattr(args, "state_dir", None))
    # failures counted here reach the running filterproxy's /metrics through the shared folder
    metrics.enable_multiprocess(os.path.join(cfg.server.state_dir, "metrics"))
    if args.lists_command == "update":
        return update(cfg, min_ratio=args.min_ratio if args.min_ratio is not None else DEFAULT_MIN_RATIO)
    if args.lists_command == "reload":
        return reload(cfg)
    return show(cfg)
