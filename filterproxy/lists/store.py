"""Old import path of the in-memory snapshot (:mod:`filterproxy.lists.snapshot`), kept for callers."""

from filterproxy.lists.snapshot import (
    SNAPSHOT_FORMAT,
    ListInfo,
    ListSource,
    Snapshot,
    build_snapshot,
    describe,
    load_snapshot,
    parse_extra_list,
    record,
    save_snapshot,
    unpack,
)

__all__ = [
    "SNAPSHOT_FORMAT",
    "ListInfo",
    "ListSource",
    "Snapshot",
    "build_snapshot",
    "describe",
    "load_snapshot",
    "parse_extra_list",
    "record",
    "save_snapshot",
    "unpack",
]
