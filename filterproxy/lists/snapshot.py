"""Compiled snapshots on disk, last-known-good handling and the ``lists`` CLI (issue: list distribution).

For now: build the snapshot from the configured lists. (Persisted snapshots land with the distribution work.)
"""

from __future__ import annotations

import os

from filterproxy.lists.store import Snapshot, build_snapshot


def load_or_build(cfg, *, extra: bool = False, strict: bool = False) -> Snapshot:
    """The snapshot to serve: configured lists that exist locally (missing downloads are logged)."""
    import logging

    log = logging.getLogger("filterproxy.lists")
    present = []
    for s in cfg.lists:
        if s.path and os.path.exists(s.path):
            present.append(s)
        else:
            log.warning("list %s: no local copy yet (run 'filterproxy lists update')", s.id)
    return build_snapshot(present, strict=True)


def cli(args) -> int:
    raise SystemExit("filterproxy lists: not implemented yet")
