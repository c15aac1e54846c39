"""The in-memory list snapshot: every list of a configuration compiled into one immutable object.

A :class:`Snapshot` is built off the serving path (:func:`build_snapshot`), checked, and swapped in as one
reference. Matchers inside are compiled at build time; nothing is parsed or compiled per request.
``save_snapshot``/``load_snapshot`` write and memory-map one snapshot folder; which folder to use (the
on-disk cache keyed by a fingerprint of the inputs) is :mod:`filterproxy.lists.snapshot_cache`.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from filterproxy.fsutil import atomic_write
from filterproxy.lists.parsers import ALLOW, FORMATS, ListError, ParseStats, iter_entries

# re-exported: callers and tests import them from here
from filterproxy.lists.source import LEGAL_CATEGORIES as LEGAL_CATEGORIES
from filterproxy.lists.source import ListSource as ListSource
from filterproxy.lists.source import parse_extra_list as parse_extra_list
from filterproxy.match.domain import DomainMatch, DomainMatcher

if TYPE_CHECKING:
    from filterproxy.match.imagehash import ImageHashIndex
    from filterproxy.match.imagehash.items import ImageItems
    from filterproxy.match.imagehash.listfile import ImageHashBlock
    from filterproxy.match.url import UrlPrefixMatcher
    from filterproxy.match.urlhash import UrlHashSet

log = logging.getLogger("filterproxy.lists")


@dataclass
class ListInfo:
    """A loaded list: its source, counts and parse report."""

    source: ListSource
    index: int
    entries: int = 0
    skipped: int = 0
    ips: int = 0
    errors: list[str] = field(default_factory=list)
    header_counts: dict[str, int] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)
    version: str = ""

    @property
    def id(self) -> str:
        return self.source.id

    @property
    def category(self) -> str:
        return self.source.category


@dataclass
class Snapshot:
    """All compiled matchers of one configuration; immutable once built."""

    lists: list[ListInfo]
    domains: DomainMatcher
    regexes: dict[int, list[tuple[re.Pattern[str], int, int]]]  # list index → (pattern, line, flags)
    ips: dict[str, tuple[tuple[int, int], ...]]  # address → (list index, line) of every list naming it
    urls: UrlPrefixMatcher | None = None
    urlhashes: UrlHashSet | None = None
    images: ImageHashIndex | None = None
    built_at: float = field(default_factory=time.time)
    raw: dict[str, list[Any]] = field(default_factory=dict)  # raw URL / hash entries, kept to save the snapshot
    # image record → item id from the hash list (ImageItems: mapped arrays; a dict for hand-built snapshots)
    image_items: ImageItems | dict[int, str] = field(default_factory=dict)
    folder: str | None = None  # the cached folder it was mapped from (its name is the inputs' fingerprint)
    image_update: dict[str, Any] = field(default_factory=dict)  # how the image index was built (lineage.json)

    def by_id(self, list_id: str) -> ListInfo | None:
        return next((li for li in self.lists if li.id == list_id), None)

    @property
    def total_entries(self) -> int:
        return sum(li.entries for li in self.lists)

    def domain_matches(self, name: str) -> list[DomainMatch]:
        return self.domains.lookup(name)


def record(list_idx: int, line: int) -> int:
    """Pack (list index, line) into one int for the URL/hash matchers."""
    return (list_idx << 32) | line


def unpack(rec: int) -> tuple[int, int]:
    return rec >> 32, rec & 0xFFFFFFFF


class _Collected:
    """What the sources of one snapshot yielded so far, by kind of entry."""

    def __init__(self) -> None:
        self.domains: list[tuple[str, int, int, int]] = []
        self.regexes: dict[int, list[tuple[re.Pattern[str], int, int]]] = {}
        self.ips: dict[str, tuple[tuple[int, int], ...]] = {}
        self.urls: list[tuple[str, int]] = []
        self.urlhashes: list[tuple[str, int]] = []
        self.images: list[tuple[int, ImageHashBlock]] = []  # (list index, hashes of many lines)

    def merge(self, other: _Collected) -> None:
        """Add what one list yielded (an address keeps every list that named it: a legal one is never hidden)."""
        self.domains.extend(other.domains)
        for ip, val in other.ips.items():
            self.ips[ip] = self.ips.get(ip, ()) + val
        for idx, rxs in other.regexes.items():
            self.regexes.setdefault(idx, []).extend(rxs)
        self.urls.extend(other.urls)
        self.urlhashes.extend(other.urlhashes)
        self.images.extend(other.images)


# entry kind → how one entry of list ``idx`` is recorded (flags already include ALLOW for an allow source)
_COLLECT = {
    "domain": lambda c, idx, e, flags: c.domains.append((e.value, idx, e.line, flags)),
    "ip": lambda c, idx, e, flags: c.ips.setdefault(e.value, ((idx, e.line),)),  # a list's first line
    "regex": lambda c, idx, e, flags: c.regexes.setdefault(idx, []).append((re.compile(e.value), e.line, flags)),
    "url": lambda c, idx, e, flags: c.urls.append((e.value, record(idx, e.line))),
    "urlhash": lambda c, idx, e, flags: c.urlhashes.append((e.value, record(idx, e.line))),
    "imageblock": lambda c, idx, e, flags: c.images.append((idx, e.block)),
}


def _check_source(src: ListSource, seen_ids: set[str]) -> None:
    if src.id in seen_ids:
        raise ListError(f"{src.where or src.id}: duplicate list id {src.id!r}")
    seen_ids.add(src.id)
    if src.format not in FORMATS:
        raise ListError(f"{src.where or src.id}: unknown format {src.format!r} (expected one of {', '.join(FORMATS)})")
    if not src.path:
        raise ListError(
            f"{src.where or src.id}: list {src.id!r} has no local file yet (run 'filterproxy lists update')"
        )


def _load_one(src: ListSource, idx: int) -> tuple[ListInfo, _Collected]:
    """Parse one source: its ListInfo and what it yielded; ListError when it yields nothing, or when a
    URL-hash prefix entry has no endpoint to confirm it."""
    assert src.path is not None  # _check_source refused a source without a local file
    info = ListInfo(src, idx, version=src.version)
    stats: dict[str, ParseStats] = {}
    batch = _Collected()
    allow = ALLOW if src.allow else 0
    n = 0
    for file, e in iter_entries(src.format, src.path, lambda p: stats.setdefault(p, ParseStats(p)), src.match):
        if e.kind == "urlhash" and len(e.value) == 8 and not src.fullhash_url:
            raise ListError(  # a 32-bit match alone would block one URL in a few thousand (docs/fullhash.md)
                f"{file}:{e.line}: list {src.id!r}: a 4-byte prefix entry needs a 'fullhash_url' on the list "
                f"({src.where or 'its config entry'}) to confirm it, or give the 64-hex SHA-256 instead"
            )
        _COLLECT[e.kind](batch, idx, e, e.flags | allow)
        n += len(e.block.lines) if e.block is not None else 1
    if not n:
        detail = "; ".join(e for st in stats.values() for e in st.errors[:3])
        raise ListError(
            f"{src.path}: list {src.id!r} ({src.format}) yielded zero entries"
            + (f" — first problems: {detail}" if detail else "")
        )
    info.entries = n
    info.files = sorted(stats)
    for st in stats.values():
        info.skipped += st.skipped
        info.ips += st.ips
        info.errors.extend(st.errors)
        if st.header_count is not None:
            info.header_counts[st.path] = st.header_count
    return info, batch


def build_snapshot(
    sources: Sequence[ListSource], *, strict: bool = True, previous: str | None = None, images_dir: str | None = None
) -> Snapshot:
    """Parse and compile every source. A source that cannot be read or yields zero entries raises
    ListError when ``strict``; otherwise it is logged and left out (the rest still load). ``previous``, a
    saved snapshot folder, lets a few changed image hashes reuse its index (:mod:`.snapshot_images`);
    ``images_dir`` (the ``images/`` folder of the snapshot being written) receives a fully built image
    index as it is built, table by table, instead of holding it in memory until saved."""
    lists: list[ListInfo] = []
    got = _Collected()
    seen_ids: set[str] = set()
    for src in sources:
        _check_source(src, seen_ids)
        idx = len(lists)
        try:
            info, batch = _load_one(src, idx)
        except ListError as exc:
            if strict:
                raise
            log.error("list %s left out: %s", src.id, exc)
            continue
        got.merge(batch)
        del batch
        if info.skipped:
            log.warning("list %s: %d line(s) skipped; first: %s", src.id, info.skipped, "; ".join(info.errors[:3]))
        log.info("list %s (%s, %s): %d entries", src.id, src.category, src.format, info.entries)
        lists.append(info)
    matcher = DomainMatcher.build(got.domains)
    got.domains = []
    snap = Snapshot(lists, matcher, got.regexes, got.ips)
    _attach_url_and_image_matchers(snap, got.urls, got.urlhashes, got.images, previous, images_dir)
    return snap


def _attach_url_and_image_matchers(
    snap: Snapshot,
    url_entries: list[tuple[str, int]],
    urlhash_entries: list[tuple[str, int]],
    image_entries: list[tuple[int, ImageHashBlock]],
    previous: str | None = None,
    images_dir: str | None = None,
) -> None:
    """Compile the (small) URL, URL-hash and image-hash matchers; raw entries are kept for saving."""
    snap.raw = {"urls": url_entries, "urlhashes": urlhash_entries, "images": image_entries}
    if url_entries:
        from filterproxy.match.url import UrlPrefixMatcher

        um = UrlPrefixMatcher()
        for entry, rec in url_entries:
            um.add(entry, rec)
        um.freeze()
        snap.urls = um
    if urlhash_entries:
        from filterproxy.match.urlhash import UrlHashSet

        uh = UrlHashSet()
        for entry, rec in urlhash_entries:
            uh.add(entry, rec)
        uh.freeze()
        snap.urlhashes = uh
    if image_entries:
        from filterproxy.lists.snapshot_images import build_images

        build_images(snap, image_entries, previous, images_dir)


def describe(lists: Iterable[ListInfo]) -> str:
    return ", ".join(f"{li.id}={li.entries}" for li in lists)


# ---------------------------------------------------------------- persistence

# 2: one packed 7-byte record per domain name (domains.records.npy);
# 3: the same records as a raw file (domains.records), memory-mapped without numpy;
# 4: an IP address keeps every list that names it (extra.pickle "ips": address → ((list, line), ...));
# 5: image hashes as arrays (extra.pickle "images": (list index, ImageHashBlock) pairs);
# 6: the compiled image index and item ids as memory-mapped .npy files (images/), not re-built per process
# 7: images/lineage.json; an image index may be the previous base plus a delta (index format 2: shifted lines)
# 8: the PDQ tables' companion halves and hash numbers side by side (images/pdq.entries.npy), read with pread
SNAPSHOT_FORMAT = 8


def save_snapshot(snap: Snapshot, directory: str, url_entries: object = None) -> None:
    """Write a snapshot into ``directory``: the domain index (memory-mappable) + meta.json + extra.pickle.

    ``meta.json`` is written last: a folder without it is incomplete and never loaded.
    """
    import json
    import os
    import pickle

    os.makedirs(directory, exist_ok=True)
    snap.domains.save(directory)
    if snap.images is not None:
        _save_images(snap, os.path.join(directory, "images"))
    extra = {
        "regexes": {i: [(rx.pattern, line, flags) for rx, line, flags in v] for i, v in snap.regexes.items()},
        "ips": snap.ips,
        "urls": snap.raw.get("urls", []),
        "urlhashes": snap.raw.get("urlhashes", []),
        "images": [],  # the compiled index is in images/ (mapped by load_snapshot)
    }
    with open(os.path.join(directory, "extra.pickle"), "wb") as f:
        pickle.dump(extra, f, protocol=pickle.HIGHEST_PROTOCOL)
    meta = {
        "format": SNAPSHOT_FORMAT,
        "built_at": snap.built_at,
        "lists": [
            {
                "source": {
                    k: getattr(li.source, k)
                    for k in (
                        "id",
                        "category",
                        "format",
                        "path",
                        "url",
                        "match",
                        "allow",
                        "legal",
                        "hashed",
                        "where",
                        "version",
                        "fullhash_url",
                        "fullhash_failure",
                    )
                },
                "entries": li.entries,
                "skipped": li.skipped,
                "ips": li.ips,
                "errors": li.errors,
                "header_counts": li.header_counts,
                "files": li.files,
                "version": li.version,
            }
            for li in snap.lists
        ],
    }
    atomic_write(os.path.join(directory, "meta.json"), json.dumps(meta))


def _save_images(snap: Snapshot, directory: str) -> None:
    """The image index and item ids as .npy files that every process maps (``images/``)."""
    from filterproxy.lists.snapshot_images import save_lineage
    from filterproxy.match.imagehash.items import ImageItems

    assert snap.images is not None
    snap.images.save(directory)
    items = snap.image_items
    (items if isinstance(items, ImageItems) else ImageItems.build(items.items())).save(directory)
    if snap.image_update:
        save_lineage(snap.image_update, directory)


def _map_images(snap: Snapshot, directory: str) -> None:
    """Map the image index of a saved snapshot, when it has one (an unreadable one raises ListError)."""
    import os

    if not os.path.isdir(directory):
        return
    from filterproxy.lists.snapshot_images import load_lineage
    from filterproxy.match.imagehash import ImageHashIndex
    from filterproxy.match.imagehash.items import ImageItems

    try:
        snap.images = ImageHashIndex.load(directory)
        snap.image_items = ImageItems.load(directory)
        snap.image_update = load_lineage(directory)
    except (OSError, ValueError, KeyError) as exc:
        raise ListError(f"{directory}: unreadable image index: {exc}") from None


def _read_meta(directory: str) -> dict[str, Any]:
    import json
    import os

    meta_path = os.path.join(directory, "meta.json")
    with open(meta_path) as f:
        meta: dict[str, Any] = json.load(f)
    if meta.get("format") != SNAPSHOT_FORMAT:
        raise ListError(f"{meta_path}: snapshot format {meta.get('format')} (expected {SNAPSHOT_FORMAT})")
    return meta


def _list_infos(meta: dict[str, Any]) -> list[ListInfo]:
    return [
        ListInfo(
            ListSource(**d["source"]),
            i,
            d["entries"],
            d["skipped"],
            d["ips"],
            d["errors"],
            d["header_counts"],
            d["files"],
            d.get("version", ""),
        )
        for i, d in enumerate(meta["lists"])
    ]


def load_list_infos(directory: str) -> list[ListInfo]:
    """The lists of a saved snapshot and their entry counts, from its ``meta.json`` alone (no index is
    mapped): what the last-good comparison needs."""
    try:
        return _list_infos(_read_meta(directory))
    except (OSError, ValueError) as exc:
        raise ListError(f"{directory}: unreadable snapshot: {exc}") from None


def load_snapshot(directory: str) -> Snapshot:
    """Load a saved snapshot; the domain index is memory-mapped (milliseconds for 1M names)."""
    import os
    import pickle

    try:
        meta = _read_meta(directory)
        with open(os.path.join(directory, "extra.pickle"), "rb") as f:
            extra = pickle.load(f)  # noqa: S301 - our own file in our state directory
        domains = DomainMatcher.load(directory)
    except (OSError, ValueError, EOFError, pickle.UnpicklingError) as exc:
        raise ListError(f"{directory}: unreadable snapshot: {exc}") from None
    lists = _list_infos(meta)
    regexes = {int(i): [(re.compile(p), line, flags) for p, line, flags in v] for i, v in extra["regexes"].items()}
    snap = Snapshot(
        lists, domains, regexes, extra["ips"], built_at=meta["built_at"], folder=os.path.realpath(directory)
    )
    _attach_url_and_image_matchers(snap, extra["urls"], extra["urlhashes"], [])
    _map_images(snap, os.path.join(directory, "images"))
    return snap
