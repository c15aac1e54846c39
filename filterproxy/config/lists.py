"""The ``lists:`` section: every list a configuration loads, local or downloaded, as ListSources.

``- source: ID`` entries take id, url, format, category and match from the sources catalogue
(``sources:``, see :mod:`filterproxy.config.sources`); keys given in the entry override them. A
downloaded list gets no path here: its local copy is found in the state folder when it is used.
"""

from __future__ import annotations

import os
import re
from typing import Any

from filterproxy.config.loader import Section, where_item
from filterproxy.config.sections import resolve_path
from filterproxy.config.sources import Source, SourcesError, download_setting, load_sources
from filterproxy.lists.parsers import FORMATS, HASHED_FORMATS
from filterproxy.lists.source import ListSource
from filterproxy.vocabulary import ID_RE, ConfigError

_CATEGORY_RE = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
_IGNORED_KEYS = ("licence", "license", "description", "source")
_DOWNLOAD_KEYS = ("sha256", "max_bytes", "refresh")  # how a downloaded list is fetched (lists/refresh)


def _catalogue(sources_file: str | None, where: str) -> dict[str, Source]:
    """The list catalogue (``sources:``, e.g. blocklists/sources.yaml) by id."""
    if not sources_file:
        raise ConfigError(f"{where}: 'source:' needs the top-level 'sources:' catalogue file")
    try:
        return {s.id: s for s in load_sources(sources_file)}
    except (SourcesError, OSError) as exc:
        raise ConfigError(f"{sources_file}: {exc}") from None


def _fill_from_catalogue(sec: Section, catalogue: dict[str, Source], sources_file: str | None) -> None:
    ref = sec.get("source", None, types=(str,))
    if ref not in catalogue:
        raise ConfigError(
            f"{sec.where('source')}: unknown source {ref!r} in {sources_file} "
            f"(known: {', '.join(sorted(catalogue)[:12])}, ...)"
        )
    c = catalogue[ref]
    for key in ("id", "url", "format", "category", "match", *_DOWNLOAD_KEYS):
        val = getattr(c, key)
        if val is not None and sec.data.get(key) is None:
            sec.data[key] = val


def _download_settings(sec: Section, lid: str) -> dict[str, Any]:
    """``sha256`` / ``max_bytes`` / ``refresh`` of a list entry (or its catalogue source), checked."""
    out: dict[str, Any] = {}
    for key in _DOWNLOAD_KEYS:
        raw = sec.get(key)
        if raw is None:
            continue
        try:
            out[key] = download_setting(key, raw)
        except ValueError as exc:
            raise ConfigError(f"{sec.where(key)}: list {lid!r}: {key}: {exc}") from None
    return out


def _fullhash_settings(sec: Section, lid: str, fmt: str) -> dict[str, Any]:
    """``fullhash_url`` / ``fullhash_failure`` of a ``urlhash`` list (docs/fullhash.md), checked."""
    url = sec.get("fullhash_url", None, types=(str,))
    failure = sec.get("fullhash_failure", None, choices=("closed", "open"))
    if url is None and failure is None:
        return {}
    key = "fullhash_url" if url is not None else "fullhash_failure"
    if fmt != "urlhash":
        raise ConfigError(f"{sec.where(key)}: list {lid!r}: '{key}' applies to format urlhash only, not {fmt}")
    if url is None:
        raise ConfigError(f"{sec.where(key)}: list {lid!r}: 'fullhash_failure' needs 'fullhash_url'")
    if not url.startswith(("https://", "http://")) or len(url.split("/", 3)[2]) == 0:
        raise ConfigError(f"{sec.where(key)}: list {lid!r}: 'fullhash_url' must be an http(s) URL, got {url!r}")
    return {"fullhash_url": url, "fullhash_failure": failure}


def _list_source(sec: Section, path: str, where: str) -> ListSource:
    lid = sec.get("id", None, types=(str,))
    if not lid or not ID_RE.match(lid):
        raise ConfigError(f"{sec.where('id')}: list needs an 'id' (letters, digits, '-', '_', '.'), got {lid!r}")
    fmt = sec.get("format", None, types=(str,))
    if fmt not in FORMATS:
        raise ConfigError(
            f"{sec.where('format')}: list {lid!r}: 'format' must be one of {', '.join(FORMATS)}, got {fmt!r}"
        )
    cat = sec.get("category", None, types=(str,))
    if not cat or not _CATEGORY_RE.match(cat):
        raise ConfigError(
            f"{sec.where('category')}: list {lid!r}: 'category' must be a lower-case id like 'adult', got {cat!r}"
        )
    p = sec.get("path", None, types=(str,))
    url = sec.get("url", None, types=(str,))
    if not p and not url:
        raise ConfigError(f"{sec.where()}: list {lid!r} needs 'path' or 'url'")
    if p:
        p = resolve_path(path, p)
        if not os.path.exists(p):
            raise ConfigError(f"{sec.where('path')}: list {lid!r}: file not found: {p}")
    src = ListSource(
        id=lid,
        category=cat,
        format=fmt,
        path=p or None,
        url=url,
        match=sec.get("match", None, choices=("exact", "subdomains")),
        allow=sec.get("allow", False, types=(bool,)),
        legal=sec.get("legal", False, types=(bool,)),
        hashed=sec.get("hashed", fmt in HASHED_FORMATS, types=(bool,)),
        where=where,
        **_download_settings(sec, lid),
        **_fullhash_settings(sec, lid, fmt),
    )
    for k in _IGNORED_KEYS:
        sec.get(k)
    sec.done()
    return src


def parse_lists(raw: Any, path: str, sources_file: str | None = None) -> list[ListSource]:
    """The ``lists:`` sequence → ListSources (the catalogue is read only when an entry names a source)."""
    out: list[ListSource] = []
    catalogue: dict[str, Source] | None = None
    for i, item in enumerate(raw):
        where = where_item(raw, i, path)
        sec = Section(item, f"lists[{i}]", where)
        if sec.get("source", None, types=(str,)) is not None:
            catalogue = catalogue if catalogue is not None else _catalogue(sources_file, sec.where("source"))
            _fill_from_catalogue(sec, catalogue, sources_file)
        out.append(_list_source(sec, path, where))
    return out
