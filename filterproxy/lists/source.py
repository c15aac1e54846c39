"""Where a list comes from (:class:`ListSource`), and the ``--extra-list`` spelling of one.

A downloaded list (``url:``) has no fixed path: its local copy lives in the state folder in use *at
the time of use* (``local_path(state_dir)``), so a ``--state-dir`` given to any command is honoured
without re-pointing anything after the configuration was loaded.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

from filterproxy.lists.parsers import FORMATS, HASHED_FORMATS, ListError

LEGAL_CATEGORIES = frozenset({"illegal"})
DEFAULT_MAX_BYTES = 64 << 20  # a download's size cap when its source gives no max_bytes
DEFAULT_REFRESH = 86_400  # seconds between looks for a new version when its source gives no refresh


def download_path(state_dir: str, list_id: str) -> str:
    """The local copy of a downloaded list: ``<state_dir>/lists/<id>.txt`` (written by ``lists update``)."""
    return os.path.join(state_dir, "lists", f"{list_id}.txt")


@dataclass(frozen=True)
class ListSource:
    """Where a list comes from and how to read it."""

    id: str
    category: str
    format: str
    path: str | None = None  # a local file or folder; None for a downloaded list (see local_path)
    url: str | None = None
    match: str | None = None  # exact | subdomains | None (format default)
    allow: bool = False  # an allowlist source (applies to every group, never to the legal list)
    legal: bool = False  # national/legal list: blocks for every group, no allowlist overrides it
    hashed: bool = False  # never show its rule text to users (URL-hash / image-hash lists)
    where: str = ""  # config file:line that defined it
    version: str = ""  # e.g. the published version of a list from the distribution repository
    # downloaded lists only (the sources catalogue's fields): pinned content, size cap, refresh interval (s)
    sha256: str | None = None
    max_bytes: int = DEFAULT_MAX_BYTES
    refresh: int = DEFAULT_REFRESH
    fullhash_url: str | None = None  # urlhash: the endpoint that confirms 4-byte prefix entries (docs/fullhash.md)
    fullhash_failure: str | None = None  # closed | open when that endpoint fails; None: closed for legal lists

    @property
    def is_legal(self) -> bool:
        return self.legal or self.category in LEGAL_CATEGORIES

    @property
    def fullhash_fails_closed(self) -> bool:
        """Endpoint unreachable → block on the prefix? Closed for legal lists unless the list says open."""
        if self.fullhash_failure is None:
            return self.is_legal
        return self.fullhash_failure == "closed"

    def local_path(self, state_dir: str) -> str | None:
        """The file to read: the configured ``path``, or the downloaded copy in ``state_dir``."""
        if self.path:
            return self.path
        return download_path(state_dir, self.id) if self.url else None

    def resolved(self, state_dir: str) -> ListSource:
        """This source with ``path`` set to its local file in ``state_dir`` (what the snapshot builder reads)."""
        return self if self.path else dataclasses.replace(self, path=self.local_path(state_dir))


def parse_extra_list(spec: str, *, where: str = "--extra-list") -> ListSource:
    """``FORMAT:CATEGORY:PATH`` (the CLI's ``--extra-list``) → a ListSource."""
    parts = spec.split(":", 2)
    if len(parts) != 3 or not all(parts):
        raise ListError(f"{where}: expected FORMAT:CATEGORY:PATH, got {spec!r}")
    fmt, category, path = parts
    if fmt not in FORMATS:
        raise ListError(f"{where}: unknown format {fmt!r} in {spec!r} (expected one of {', '.join(FORMATS)})")
    list_id = f"extra-{category}-{os.path.basename(path.rstrip('/'))}"
    return ListSource(id=list_id, category=category, format=fmt, path=path, where=where, hashed=fmt in HASHED_FORMATS)
