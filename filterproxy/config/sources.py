"""The sources catalogue (``blocklists/sources.yaml``): where each list comes from, checked at load.

``load_sources`` reads the file and reports every problem (not just the first) as ``file:line:``;
each entry becomes a :class:`Source`, which checks its own fields and their combinations, so a
Source that exists is one :func:`filterproxy.lists.fetch.fetch` can download.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, fields
from urllib.parse import urlsplit

import yaml

from filterproxy.lists.parsers import DOMAIN_FORMATS, FOLDER_FORMATS, FORMATS
from filterproxy.lists.source import DEFAULT_MAX_BYTES as DEFAULT_MAX_BYTES
from filterproxy.lists.source import DEFAULT_REFRESH as DEFAULT_REFRESH
from filterproxy.vocabulary import KNOWN_CATEGORIES, SOURCE_ID_RE

#: Formats a source may have: every list format the parsers read.
SOURCE_FORMATS = frozenset(FORMATS)
MATCH_MODES = ("exact", "subdomains")
MIN_REFRESH = 300  # list hosts are shared infrastructure; none of them publishes more often

_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_SIZE_RE = re.compile(r"^\s*(\d+)\s*(b|kb|kib|mb|mib|gb|gib)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {
    None: 1, "b": 1, "kb": 10**3, "kib": 1 << 10, "mb": 10**6, "mib": 1 << 20, "gb": 10**9, "gib": 1 << 30,
}  # fmt: skip
_DURATION_RE = re.compile(r"^\s*(\d+)\s*(s|m|h|d|w)?\s*$")
_DURATION_UNITS = {None: 1, "s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}


class SourcesError(ValueError):
    """A sources file that cannot be used; the message lists every problem as ``file:line: ...``."""


@dataclass(frozen=True, kw_only=True)
class Source:
    """Where one list comes from and how to treat it.

    Exactly one of ``url`` / ``path``.  ``match`` None means the format's default (decided by the
    parser).  ``sha256`` pins the stored, decompressed content.  Signed lists from a ministry come
    through the ``distribution:`` section instead (docs/distribution.md).
    """

    id: str
    url: str | None = None
    path: str | None = None
    format: str
    category: str | None = None
    match: str | None = None
    licence: str | None = None
    max_bytes: int = DEFAULT_MAX_BYTES
    refresh: int = DEFAULT_REFRESH
    sha256: str | None = None

    def __post_init__(self) -> None:
        for f in fields(self):
            _FIELD_CHECKS[f.name](getattr(self, f.name))
        _check_source(self)


# --- validation ---------------------------------------------------------------------------------


def _opt_str(name: str) -> Callable[[object], None]:
    def check(v: object) -> None:
        if v is not None and (not isinstance(v, str) or not v.strip()):
            raise ValueError(f"{name} must be a non-empty string")

    return check


def _check_id(v: object) -> None:
    if not isinstance(v, str) or not SOURCE_ID_RE.match(v):
        raise ValueError(f"id must match {SOURCE_ID_RE.pattern} (it names the cache file), got {v!r}")


def _check_url(v: object) -> None:
    if v is None:
        return
    parts = urlsplit(v) if isinstance(v, str) else None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"url must be an http(s) URL, got {v!r}")


def _check_format(v: object) -> None:
    if v not in SOURCE_FORMATS:
        raise ValueError(f"unknown format {v!r}; one of {', '.join(sorted(SOURCE_FORMATS))}")


def _check_category(v: object) -> None:
    # A source with a category no policy knows would never block anything: a typo must not load.
    if v is not None and v not in KNOWN_CATEGORIES:
        close = difflib.get_close_matches(str(v), KNOWN_CATEGORIES, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"unknown category {v!r}{hint}; one of {', '.join(sorted(KNOWN_CATEGORIES))}")


def _check_match(v: object) -> None:
    if v is not None and v not in MATCH_MODES:
        raise ValueError(f"match must be one of {', '.join(MATCH_MODES)} (or omitted), got {v!r}")


def _check_positive(name: str) -> Callable[[object], None]:
    def check(v: object) -> None:
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")

    return check


def _check_refresh(v: object) -> None:
    _check_positive("refresh")(v)
    if v < MIN_REFRESH:  # type: ignore[operator]
        raise ValueError(f"refresh must be at least {MIN_REFRESH} s, got {v}")


def _check_sha256(v: object) -> None:
    if v is not None and (not isinstance(v, str) or not _SHA256_RE.match(v)):
        raise ValueError("sha256 must be 64 lower-case hex digits (quote it in YAML)")


_FIELD_CHECKS: dict[str, Callable[[object], None]] = {
    "id": _check_id,
    "url": _check_url,
    "path": _opt_str("path"),
    "format": _check_format,
    "category": _check_category,
    "match": _check_match,
    "licence": _opt_str("licence"),
    "max_bytes": _check_positive("max_bytes"),
    "refresh": _check_refresh,
    "sha256": _check_sha256,
}


def _check_source(s: Source) -> None:
    """Rules that involve more than one field."""
    if (s.url is None) == (s.path is None):
        raise ValueError("give exactly one of url / path")
    if s.category is None:
        raise ValueError("category is required")
    if s.format in FOLDER_FORMATS and s.url is not None:
        raise ValueError(
            f"format {s.format} is a local category folder (path); a downloaded UT1 'domains' "
            "file is format: domains with match: subdomains, its 'urls' file format: urls"
        )
    if s.match is not None and s.format not in DOMAIN_FORMATS:
        raise ValueError(f"match does not apply to format {s.format!r} (only to host-name lists)")


def parse_size(value: object) -> int:
    """``1048576``, ``"64MiB"``, ``"500 kB"`` -> bytes."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    m = _SIZE_RE.match(value) if isinstance(value, str) else None
    if not m:
        raise ValueError(f"expected a size such as 1048576 or '64MiB', got {value!r}")
    return int(m.group(1)) * _SIZE_UNITS[m.group(2).lower() if m.group(2) else None]


def parse_duration(value: object) -> int:
    """``3600``, ``"30m"``, ``"6h"``, ``"1d"``, ``"1w"`` -> seconds."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    m = _DURATION_RE.match(value) if isinstance(value, str) else None
    if not m:
        raise ValueError(f"expected seconds or a duration such as '6h' or '1d', got {value!r}")
    return int(m.group(1)) * _DURATION_UNITS[m.group(2)]


# --- loading ------------------------------------------------------------------------------------

_CONVERT: dict[str, Callable[[object], object]] = {"max_bytes": parse_size, "refresh": parse_duration}


def download_setting(key: str, value: object) -> object:
    """A ``sha256`` / ``max_bytes`` / ``refresh`` value as written in YAML → checked, in its stored form
    (bytes, seconds, lower-case hex); ValueError says what was expected."""
    if key in _CONVERT:
        value = _CONVERT[key](value)
    if key == "sha256" and isinstance(value, str):
        value = value.lower()
    _FIELD_CHECKS[key](value)
    return value


_FIELDS = tuple(f.name for f in fields(Source))


def load_sources(path: str) -> list[Source]:
    """Read a sources YAML file: ``sources:`` followed by a list of mappings with Source fields.

    Relative ``path`` values are resolved against the file's directory.  Every
    problem is reported (not just the first) in one :class:`SourcesError`, each as ``file:line:``.
    """
    with open(path, encoding="utf-8") as f:
        text = f.read()
    base = os.path.dirname(os.path.abspath(path))
    loader = yaml.SafeLoader(text)
    errors: list[str] = []

    def err(node: yaml.Node | None, msg: str) -> None:
        line = node.start_mark.line + 1 if node is not None else 1
        errors.append(f"{path}:{line}: {msg}")

    try:
        try:
            root = loader.get_single_node()
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            raise SourcesError(f"{path}:{mark.line + 1 if mark else 1}: {exc.problem or exc}") from None
        except yaml.YAMLError as exc:
            raise SourcesError(f"{path}: {exc}") from None
        if not isinstance(root, yaml.MappingNode):
            raise SourcesError(f"{path}:1: expected a mapping with a 'sources:' list")
        seq = None
        for k, v in root.value:
            if k.value == "sources":
                seq = v
            else:
                err(k, f"unknown top-level key {k.value!r} (expected 'sources')")
        if not isinstance(seq, yaml.SequenceNode) or not seq.value:
            err(seq or root, "'sources' must be a non-empty list")
            raise SourcesError("\n".join(errors))
        sources: list[Source] = []
        seen_ids: dict[str, int] = {}
        for item in seq.value:
            src = _load_item(loader, item, base, err)
            if src is None:
                continue
            line = item.start_mark.line + 1
            if src.id in seen_ids:
                err(item, f"duplicate id {src.id!r} (first at line {seen_ids[src.id]})")
                continue
            seen_ids[src.id] = line
            sources.append(src)
    finally:
        loader.dispose()
    if errors:
        raise SourcesError("\n".join(errors))
    return sources


def _load_item(
    loader: yaml.SafeLoader, item: yaml.Node, base: str, err: Callable[[yaml.Node | None, str], None]
) -> Source | None:
    if not isinstance(item, yaml.MappingNode):
        err(item, "each source must be a mapping")
        return None
    values: dict[str, object] = {}
    ok = True
    for k, v in item.value:
        key = k.value if isinstance(k, yaml.ScalarNode) else None
        if key not in _FIELDS:
            close = difflib.get_close_matches(str(key), _FIELDS, n=1)
            err(k, f"unknown key {key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
            ok = False
            continue
        if key in values:
            err(k, f"duplicate key {key!r}")
            ok = False
            continue
        try:
            value = loader.construct_object(v, deep=True)
            if key in _CONVERT and value is not None:
                value = _CONVERT[key](value)
            if key == "path" and isinstance(value, str):
                value = os.path.normpath(os.path.join(base, value))
            if key == "sha256" and isinstance(value, str):
                value = value.lower()
            _FIELD_CHECKS[key](value)
        except (ValueError, yaml.YAMLError) as exc:
            err(v, f"{key}: {exc}")
            ok = False
            continue
        values[key] = value
    if not ok:
        return None
    for required in ("id", "format"):
        if required not in values:
            err(item, f"missing {required!r}")
            ok = False
    if not ok:
        return None
    try:
        return Source(**values)  # type: ignore[arg-type]
    except ValueError as exc:
        err(item, f"source {values['id']!r}: {exc}")
        return None
