"""Command line for image hashes: one JSON line per file, and which hash lists it is on.

``filterproxy imagehash [--list FORMAT:PATH]... [--max-distance N] FILE...`` (also ``python -m
filterproxy.match.imagehash``). Each ``--list`` is compiled by the proxy's own path — the list parser,
a snapshot compiled in a child process and cached by content in the state folder's ``snapshots/``, its
:class:`~filterproxy.match.imagehash.ImageHashIndex` — and asked with ``match``, as the proxy asks it for
an image it fetched: what this prints is what the proxy would do. A second run with the same list maps
the cached snapshot instead of parsing the list again.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
from collections.abc import Sequence

from filterproxy.lists.parsers import IMAGE_FORMATS, ListError
from filterproxy.lists.snapshot import ListSource, Snapshot, build_snapshot, load_snapshot, unpack
from filterproxy.match.imagehash.hashing import ImageHashes, hash_image_bytes
from filterproxy.match.imagehash.kinds import DEFAULT_MAX_DISTANCE
from filterproxy.match.imagehash.listfile import listed_hex


def _hashes_json(path: str, h: ImageHashes) -> dict[str, object]:
    out: dict[str, object] = {
        "file": path,
        "md5": h.md5,
        "sha1": h.sha1,
        "sha256": h.sha256,
        "pdq": h.pdq,
        "quality": h.quality,
    }
    if h.pdq_error:
        out["pdq_error"] = h.pdq_error
    return out


def _hash_file(path: str) -> ImageHashes:
    with open(path, "rb") as f:
        return hash_image_bytes(f.read())


def imagehash_file_json(path: str) -> dict[str, object]:
    """CLI helper: ``{"file", "md5", "sha1", "sha256", "pdq", "quality"}`` for one file (OSError if unreadable).

    ``pdq_error`` is added when the file is not a decodable picture.
    """
    return _hashes_json(path, _hash_file(path))


class HashList:
    """One ``--list FORMAT:PATH``: its compiled snapshot (one list in it), named as given."""

    def __init__(self, spec: str, snap: Snapshot) -> None:
        self.spec = spec
        self.name = spec.partition(":")[2]
        self.snap = snap

    def matches(self, h: ImageHashes, max_distance: int) -> list[dict[str, object]]:
        """What the proxy's index answers for this image: at most one match (exact first, then the
        nearest PDQ hash of any of the 8 rotations/flips)."""
        ix = self.snap.images
        m = ix.match(h, max_distance=max_distance) if ix is not None else None
        if m is None:
            return []
        _list, line = unpack(m.record)
        item = self.snap.image_items.get(m.record) or _listed_hash(self.snap, m.record, m.kind, h)
        out: dict[str, object] = {"list": self.name, "item": item, "kind": m.kind, "distance": m.distance}
        if m.variant is not None:
            out["variant"] = m.variant
        out["line"] = line
        return [out]


def _listed_hash(snap: Snapshot, record: int, kind: str, h: ImageHashes) -> str | None:
    """The hash a list entry holds (what names an entry without an item id): the image's own for an
    exact match, the PDQ hash on the matching line of the list file for a near one."""
    if kind != "pdq":
        return str(getattr(h, kind))
    idx, line = unpack(record)
    src = snap.lists[idx].source
    try:
        return listed_hex(src.format, src.path or "", line)
    except OSError:
        return None


def _source(spec: str) -> ListSource:
    fmt, sep, path = spec.partition(":")
    if not sep or not path:
        raise ListError(f"--list {spec!r}: expected FORMAT:PATH (formats: {', '.join(IMAGE_FORMATS)})")
    if fmt not in IMAGE_FORMATS:
        raise ListError(
            f"--list {spec!r}: unknown image list format {fmt!r} (expected one of {', '.join(IMAGE_FORMATS)})"
        )
    if not os.path.isfile(path):
        raise ListError(f"--list {spec!r}: file not found: {path}")
    digest = hashlib.sha256(os.path.abspath(path).encode()).hexdigest()[:12]
    list_id = f"cli-{fmt}-{digest}"  # stable for a path, so a second run finds its cached snapshot
    return ListSource(id=list_id, category="imagehash", format=fmt, path=path, hashed=True, where=f"--list {spec}")


def load_list(spec: str, state_dir: str) -> HashList:
    """Compile one ``--list`` as the proxy compiles its lists (in a child process, cached by content in
    ``state_dir/snapshots``); built in memory when that folder is not writable."""
    from filterproxy.lists.snapshot_cache import compile_snapshot, writable_snapshots_dir

    sources = [_source(spec)]
    root = writable_snapshots_dir(state_dir)
    if root is None:
        return HashList(spec, build_snapshot(sources, strict=True))
    folder = compile_snapshot(sources, root)
    try:
        return HashList(spec, load_snapshot(folder))
    except ListError:  # a cached folder that no longer reads: compile it again
        shutil.rmtree(folder, ignore_errors=True)
        return HashList(spec, load_snapshot(compile_snapshot(sources, root)))


def run(files: Sequence[str], lists: Sequence[str] = (), max_distance: int | None = None) -> int:
    """One JSON line per file; with ``lists``, each line also has ``matches`` (a list, empty when none).

    Exit status: 0, or 1 when a file could not be read (its line has ``error``). A list that cannot be
    used raises :class:`ListError` before any file is read (the command exits 2)."""
    from filterproxy.config.sections import default_state_dir

    distance = DEFAULT_MAX_DISTANCE if max_distance is None else max_distance
    if not 0 <= distance <= 256:
        raise ListError(f"--max-distance {distance}: expected 0 to 256 bits")
    loaded = [load_list(spec, default_state_dir()) for spec in lists]
    for hl in loaded:
        for li in hl.snap.lists:
            if li.skipped:  # as `filterproxy check` reports them: the list is used without those lines
                first = li.errors[0] if li.errors else ""
                print(
                    f"filterproxy imagehash: {hl.name}: {li.skipped} line(s) skipped (first: {first})", file=sys.stderr
                )
    status = 0
    for path in files:
        try:
            h = _hash_file(path)
        except OSError as exc:
            print(json.dumps({"file": path, "error": exc.strerror or str(exc)}), flush=True)
            status = 1
            continue
        out = _hashes_json(path, h)
        if loaded:
            out["matches"] = [m for hl in loaded for m in hl.matches(h, distance)]
        print(json.dumps(out), flush=True)
    return status


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The command's options (shared by ``filterproxy imagehash`` and ``python -m``)."""
    p.add_argument(
        "--list",
        action="append",
        default=[],
        metavar="FORMAT:PATH",
        help=f"a hash list to match against (repeatable); FORMAT one of {', '.join(IMAGE_FORMATS)}",
    )
    p.add_argument(
        "--max-distance",
        type=int,
        metavar="N",
        help=f"PDQ match distance in bits (default {DEFAULT_MAX_DISTANCE}, the proxy's)",
    )
    p.add_argument("files", nargs="+", metavar="FILE")


def main(argv: list[str] | None = None) -> int:
    """``python -m filterproxy.match.imagehash [--list FORMAT:PATH]... [--max-distance N] FILE...``."""
    p = argparse.ArgumentParser(prog="python -m filterproxy.match.imagehash")
    add_arguments(p)
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        return run(args.files, args.list, args.max_distance)
    except ListError as exc:
        print(f"{p.prog}: error: {exc}", file=sys.stderr)
        return 2
