"""Image-hash list files: parse ``kind:hex[,item id]``, bare hex, or CSV ``hash,kind,list_id,item_id`` lines.

The list loader (lists/parsers.py) reads entries through :func:`parse_imagehash_list`; bad lines are
reported as ``file:line: why`` so an operator can fix the list, and 64-digit bare hex is SHA-256
unless the file declares itself PDQ (the two are the same length).
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from typing import NamedTuple

from filterproxy.match.imagehash.kinds import HEXDIGITS, KINDS, check_hex


class ImageHashListError(ValueError):
    """A line of an image-hash list that cannot be used; the message starts with ``file:line:``."""

    def __init__(self, path: str, line: int, why: str) -> None:
        super().__init__(f"{path}:{line}: {why}")
        self.path = path
        self.line = line
        self.why = why


class ImageHashEntry(NamedTuple):
    """One parsed list entry; ``list_id`` is only set by the CSV form."""

    kind: str
    hex: str
    item_id: str | None
    line: int
    list_id: str | None = None


_EXPECTED = (
    "expected 'kind:hex[,item id]' (kind md5, sha1, sha256 or pdq), bare hex of 32/40/64 digits, "
    "or CSV 'hash,kind,list_id,item_id'"
)
_DECLARE_PREFIXES = ("kind:", "format:")


def _parse_line(text: str, declared: str | None, header_ok: bool) -> ImageHashEntry | str | None:
    """One stripped, non-comment line → an entry, an error text, or None for a CSV header."""
    try:
        fields = [f.strip() for f in next(csv.reader([text], skipinitialspace=True))]
    except (csv.Error, StopIteration) as exc:
        return f"bad CSV quoting ({exc})"
    first = fields[0]
    lowered = [f.lower() for f in fields]
    if len(fields) >= 2 and lowered[1] in ("kind", "type") and lowered[0] in ("hash", "hex", "value"):
        return None if header_ok else "CSV header row after the first entry"
    if len(fields) >= 2 and lowered[1] in KINDS and ":" not in first:  # CSV: hash,kind,list_id,item_id
        if len(fields) > 4:
            return f"CSV row has {len(fields)} fields; expected hash,kind,list_id,item_id"
        kind = lowered[1]
        list_id = fields[2] if len(fields) > 2 and fields[2] else None
        item_id = fields[3] if len(fields) > 3 and fields[3] else None
        problem = check_hex(kind, first)
        return problem or ImageHashEntry(kind, first.lower(), item_id, 0, list_id)
    if len(fields) > 2:
        return f"{len(fields)} comma-separated fields; {_EXPECTED}"
    item_id = fields[1] if len(fields) == 2 and fields[1] else None
    if ":" in first:
        kind, _, value = first.partition(":")
        kind = kind.strip().lower()
        value = value.strip()
        if kind not in KINDS:
            return f"unknown hash kind {kind[:20]!r}; {_EXPECTED}"
    else:
        value = first
        kind = {32: "md5", 40: "sha1", 64: "sha256"}.get(len(value), "")
        if declared is not None:
            kind = declared  # a declared file says what its bare hashes are (the only way to get bare PDQ)
        elif not kind:
            if HEXDIGITS.issuperset(value):
                return f"bare hash of {len(value)} hex digits; expected 32 (md5), 40 (sha1) or 64 (sha256)"
            return f"not a hash: {value[:40]!r}; {_EXPECTED}"
    problem = check_hex(kind, value)
    return problem or ImageHashEntry(kind, value.lower(), item_id, 0)


def parse_imagehash_entries(
    path: str, *, kind: str | None = None, skip_errors: bool = False
) -> Iterator[ImageHashEntry | str]:
    """Parse an image-hash list, yielding :class:`ImageHashEntry` (with ``list_id`` for CSV rows).

    Accepted, one per line (``#`` lines and blank lines ignored, UTF-8, optional BOM):

    * ``md5:<hex>``, ``sha1:<hex>``, ``sha256:<hex>``, ``pdq:<hex>``, optionally followed by ``,<item id>``;
    * bare hex, optionally ``,<item id>``: 32 digits md5, 40 sha1, 64 **sha256** — 64 digits are PDQ only
      when the file is declared so, by ``kind="pdq"`` or by a ``# kind: pdq`` line before the first entry;
    * CSV ``hash,kind,list_id,item_id`` (list_id and item_id may be empty or missing), with or without a
      ``hash,kind,...`` header row.

    A bad line raises :class:`ImageHashListError` (``file:line: what was expected``). With
    ``skip_errors`` it is yielded instead as that message (a ``str``), and parsing goes on; the caller
    counts them and keeps the first few. An unreadable file raises OSError; a file with no entries
    simply yields none (the list loader treats that as an error).
    """
    declared = kind.lower() if kind else None
    if declared is not None and declared not in KINDS:
        raise ValueError(f"unknown declared hash kind {kind!r} (expected one of {', '.join(KINDS)})")
    seen_entry = False
    header_ok = True
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                parsed: ImageHashEntry | str | None = "line is not UTF-8 text"
            else:
                if lineno == 1:
                    text = text.lstrip("\ufeff")
                text = text.strip()
                if not text:
                    continue
                if text[0] == "#":
                    body = text[1:].strip().lower()
                    if not seen_entry and body.startswith(_DECLARE_PREFIXES):
                        value = body.partition(":")[2].strip()
                        if value in KINDS:
                            declared = declared or value
                    continue
                parsed = _parse_line(text, declared, header_ok)
                header_ok = False
                if parsed is None:  # the CSV header
                    continue
            if isinstance(parsed, ImageHashEntry):
                seen_entry = True
                yield parsed._replace(line=lineno)
                continue
            exc = ImageHashListError(path, lineno, str(parsed))
            if not skip_errors:
                raise exc
            yield str(exc)


def parse_imagehash_list(
    path: str, *, kind: str | None = None, skip_errors: bool = False
) -> Iterator[tuple[str, str, str | None, int] | str]:
    """``(kind, hex, item_id, line)`` for each entry of an image-hash list (see :func:`parse_imagehash_entries`).

    Hex is lower case. With ``skip_errors`` bad lines come through as ``"file:line: why"`` strings
    instead of raising :class:`ImageHashListError`.
    """
    for e in parse_imagehash_entries(path, kind=kind, skip_errors=skip_errors):
        yield e if isinstance(e, str) else (e.kind, e.hex, e.item_id, e.line)
