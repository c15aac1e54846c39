"""Image-hash list files: hotline and ThreatExchange formats read into arrays of digests, and line by line.

Formats (the ``format`` of a list source; docs/configuration.md#list-formats):

* ``imagehash`` — ``kind:hex[,item id]`` lines, bare hex, or CSV ``hash,kind,list_id,item_id``;
* ``threatexchange`` — a ThreatExchange / HMA export, CSV or TSV with a header row naming the
  ``signal_type`` and ``signal_str`` columns (and an item ``id``); PDQ and photo MD5 rows are read, rows of
  other signal types (video, text, URL) are counted and left out;
* ``md5`` / ``sha1`` — one bare hex digest per line (IWF style); the kind follows from the length.

:func:`read_image_blocks` is what the list loader uses: ``kind:hex`` and bare-digest lines are decoded
with numpy a chunk of the file at a time (10M PDQ lines in seconds, no Python object per hash), every
other line goes through the line grammar; bad lines are reported as ``file:line: why``.
:func:`parse_imagehash_entries` reads an ``imagehash`` file line by line (with the CSV form's list ids).
"""

from __future__ import annotations

import csv
import gzip
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, NamedTuple, Protocol

from filterproxy.match.imagehash.kinds import HEX_LENGTHS, HEXDIGITS, KINDS, check_hex

if TYPE_CHECKING:
    import numpy as np

    from filterproxy.match.imagehash.items import ItemTexts


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


class ImageHashBlock(NamedTuple):
    """Hashes of one kind from one stretch of a list file, in line order: ``digests`` (n, bytes) uint8,
    ``lines`` (n,) int64 line numbers, ``items`` the item ids by row (None when no row has one)."""

    kind: str
    digests: np.ndarray
    lines: np.ndarray
    items: ItemTexts | None = None


class OtherSignal(NamedTuple):
    """A row the format carries that is not an image hash (a ThreatExchange video or text signal)."""

    signal_type: str


Parsed = ImageHashEntry | OtherSignal | str | None  # an entry, a row left out, an error text, nothing


class _LineGrammar(Protocol):
    def line(self, text: str, entry_before: bool = False) -> Parsed: ...


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


class _ImageHashLines:
    """The ``imagehash`` format's line grammar and its state: a ``# kind: pdq`` declaration counts only
    before the first entry, a CSV header only as the first line with content."""

    def __init__(self, declared: str | None = None) -> None:
        self.declared = declared
        self.seen_entry = False
        self.header_ok = True

    def line(self, text: str, entry_before: bool = False) -> Parsed:
        if entry_before:  # an entry read by the fast path came first
            self.seen_entry, self.header_ok = True, False
        if text[0] == "#":
            body = text[1:].strip().lower()
            if not self.seen_entry and body.startswith(_DECLARE_PREFIXES):
                value = body.partition(":")[2].strip()
                if value in KINDS:
                    self.declared = self.declared or value
            return None
        parsed = _parse_line(text, self.declared, self.header_ok)
        self.header_ok = False
        if isinstance(parsed, ImageHashEntry):
            self.seen_entry = True
        return parsed


_DIGEST_KINDS = {32: "md5", 40: "sha1"}


class _DigestLines:
    """``md5`` / ``sha1`` lists: one bare hex digest per line (optionally ``,item id``); ``#`` comments."""

    def line(self, text: str, entry_before: bool = False) -> Parsed:
        if text[0] == "#":
            return None
        value, _, item = text.partition(",")
        value, item = value.strip(), item.strip()
        kind = _DIGEST_KINDS.get(len(value))
        if kind is None:
            return f"expected a hex digest of 32 (md5) or 40 (sha1) digits, got {value[:70]!r}"
        return check_hex(kind, value) or ImageHashEntry(kind, value.lower(), item or None, 0)


# ThreatExchange / HMA exports: header names (lower case) of the columns read, and the signal types kept.
_TE_TYPE = ("signal_type", "indicator_type", "hash_type", "type")
_TE_VALUE = ("signal_str", "signal_value", "signal", "indicator", "hash", "value")
_TE_ID = ("id", "item_id", "content_id", "bank_content_id", "indicator_id", "signal_id")
_TE_KINDS = {"pdq": "pdq", "hash_pdq": "pdq", "photo_md5": "md5", "md5": "md5", "hash_md5": "md5"}


class _ThreatExchangeLines:
    """A CSV or TSV export with a header row (``threatexchange dataset -P --csv``, an HMA bank export):
    TSV when the file name ends in ``.tsv``/``.tab`` or the header has a tab, CSV otherwise."""

    def __init__(self, path: str) -> None:
        name = path.lower().removesuffix(".gz")
        self.delimiter = "\t" if name.endswith((".tsv", ".tab")) else None
        self.columns: tuple[int, int, int | None] | None = None
        self.failed = False

    def line(self, text: str, entry_before: bool = False) -> Parsed:
        if self.failed or text[0] == "#":
            return None
        if self.delimiter is None:
            self.delimiter = "\t" if "\t" in text else ","
        try:
            fields = [f.strip() for f in next(csv.reader([text], delimiter=self.delimiter))]
        except (csv.Error, StopIteration) as exc:
            return f"bad CSV quoting ({exc})"
        if self.columns is None:
            return self._header(fields)
        t, v, i = self.columns
        if len(fields) <= max(t, v):
            return f"{len(fields)} fields; the header names {max(t, v) + 1} or more"
        signal_type = fields[t].lower()
        kind = _TE_KINDS.get(signal_type)
        if kind is None:
            return OtherSignal(signal_type or "(empty)")
        value = fields[v].replace(",", " ").split()[0] if fields[v] else ""  # "hex quality" → hex
        item = fields[i] if i is not None and i < len(fields) and fields[i] else None
        return check_hex(kind, value) or ImageHashEntry(kind, value.lower(), item, 0)

    def _header(self, fields: list[str]) -> str | None:
        names = [f.lower().lstrip("\ufeff") for f in fields]

        def find(options: tuple[str, ...]) -> int | None:
            return next((names.index(o) for o in options if o in names), None)

        t, v, i = find(_TE_TYPE), find(_TE_VALUE), find(_TE_ID)
        if t is None or v is None:
            self.failed = True
            return f"expected a header row naming the signal_type and signal_str columns, got {fields[:6]!r}"
        self.columns = (t, v, i)
        return None


# format → (its line grammar for a file, the fast-path line forms: (prefix, kind) with hex after the prefix)
_FORMATS: dict[str, tuple[Callable[[str], _LineGrammar], tuple[tuple[bytes, str], ...]]] = {
    "imagehash": (lambda path: _ImageHashLines(), tuple((f"{k}:".encode(), k) for k in KINDS)),
    "threatexchange": (_ThreatExchangeLines, ()),
    "md5": (lambda path: _DigestLines(), ((b"", "md5"), (b"", "sha1"))),
    "sha1": (lambda path: _DigestLines(), ((b"", "md5"), (b"", "sha1"))),
}
IMAGE_LIST_FORMATS = tuple(_FORMATS)
_CHUNK = 32 << 20  # bytes of the file decoded at a time: bounds the temporary arrays
# kind → (row numbers in the chunk, digests, item ids by row or None)
_FastRows = dict[str, tuple["np.ndarray", "np.ndarray", "ItemTexts | None"]]
_SlowRows = dict[str, tuple[list[int], list[bytes], list[str | None]]]  # kind → (rows, digests, item ids)


def _chunks(path: str) -> Iterator[tuple[int, bytes]]:
    """(number of the first line, whole lines) of a file, about ``_CHUNK`` bytes at a time; gzip is read
    transparently. An unreadable file raises OSError."""
    with open(path, "rb") as raw:
        stream = gzip.GzipFile(fileobj=raw) if raw.read(2) == b"\x1f\x8b" else raw
        raw.seek(0)
        first, rest = 1, b""
        while data := stream.read(_CHUNK):
            data = rest + data
            cut = data.rfind(b"\n") + 1
            rest, data = data[cut:], data[:cut]
            if data:
                yield first, data
                first += data.count(b"\n")
        if rest:
            yield first, rest + b"\n"


def _nibbles() -> np.ndarray:
    import numpy as np

    table = np.full(256, 255, dtype=np.uint8)
    for i, c in enumerate(b"0123456789abcdef"):
        table[c] = i
        table[ord(chr(c).upper())] = i
    return table


class _Chunk:
    """One chunk's lines as offsets into its bytes (a trailing CR is not part of a line)."""

    def __init__(self, data: bytes) -> None:
        import numpy as np

        self.data = data
        self.buf = np.frombuffer(data, dtype=np.uint8)
        ends = np.flatnonzero(self.buf == 10)
        self.starts = np.concatenate(([0], ends[:-1] + 1))
        has_cr = (ends > self.starts) & (self.buf[ends - 1] == 13)
        self.ends = ends - has_cr
        self.lengths = self.ends - self.starts

    def fast_rows(self, forms: tuple[tuple[bytes, str], ...], nibbles: np.ndarray) -> _FastRows:
        """kind → (row numbers, (n, bytes) digests, item ids) of the lines that are exactly ``prefix`` + hex,
        or that plus ``,item id`` without quotes or further commas (the grammar would read them alike)."""
        import numpy as np
        from numpy.lib.stride_tricks import sliding_window_view

        out: _FastRows = {}
        for prefix, kind in forms:
            width = len(prefix) + HEX_LENGTHS[kind]
            rows = np.flatnonzero(self.lengths == width)
            with_item = self._with_item(width)
            rows = np.concatenate((rows, with_item))
            if prefix and len(rows):
                heads = sliding_window_view(self.buf, len(prefix))[self.starts[rows]]
                rows = rows[(heads == np.frombuffer(prefix, dtype=np.uint8)).all(axis=1)]
            if not len(rows):
                continue
            nib = nibbles[sliding_window_view(self.buf, HEX_LENGTHS[kind])[self.starts[rows] + len(prefix)]]
            ok = (nib < 16).all(axis=1)
            rows, nib = rows[ok], nib[ok]
            items: ItemTexts | None = None
            if len(with_item):  # rows whose item is not UTF-8 are left to the line grammar (it says so)
                items, utf8 = self._items(rows, width)
                keep = np.flatnonzero(utf8)
                rows, nib, items = rows[keep], nib[keep], items.take(keep)
            if len(rows):
                out[kind] = (rows, (nib[:, 0::2] << 4) | nib[:, 1::2], items)
        return out

    def _with_item(self, width: int) -> np.ndarray:
        """Rows that are ``width`` bytes, a comma and an item with neither quote nor comma."""
        import numpy as np

        rows: np.ndarray = np.flatnonzero(self.lengths > width + 1)
        rows = rows[self.buf[self.starts[rows] + width] == ord(",")]
        if not len(rows):
            return rows
        special = (self.buf == ord(",")) | (self.buf == ord('"'))
        bounds = np.empty(2 * len(rows), dtype=np.int64)
        bounds[0::2] = self.starts[rows] + width + 1
        bounds[1::2] = self.ends[rows]
        counts = np.add.reduceat(special, bounds, dtype=np.int64)[0::2]
        clean: np.ndarray = rows[counts == 0]
        return clean

    def _items(self, rows: np.ndarray, width: int) -> tuple[ItemTexts, np.ndarray]:
        """The item id after ``width`` bytes and the comma of each row (empty without one), and which rows
        are UTF-8."""
        from filterproxy.match.imagehash.items import ItemTexts

        starts = self.starts[rows] + width + 1
        return ItemTexts.spans(self.buf, starts, self.ends[rows])

    def text(self, row: int) -> str | None:
        """The stripped text of a line, None when it is not UTF-8."""
        try:
            return self.data[self.starts[row] : self.ends[row]].decode("utf-8").strip()
        except UnicodeDecodeError:
            return None


def read_image_blocks(
    fmt: str,
    path: str,
    skip: Callable[[int, str], None],
    other: Callable[[str], None] = lambda signal_type: None,
) -> Iterator[ImageHashBlock]:
    """The hashes of a list file of format ``fmt`` (:data:`IMAGE_LIST_FORMATS`) as blocks in line order.

    A bad line calls ``skip(line, why)`` (nothing is kept of it); a row of another signal type calls
    ``other(signal_type)``. An unreadable file raises OSError.
    """
    import numpy as np

    grammar_for, forms = _FORMATS[fmt]
    grammar = grammar_for(path)
    nibbles = _nibbles()
    fast_seen = False
    for first, data in _chunks(path):
        chunk = _Chunk(data)
        fast = chunk.fast_rows(forms, nibbles)
        first_fast = min((int(rows.min()) for rows, _, _ in fast.values()), default=len(chunk.starts))
        is_fast = np.zeros(len(chunk.starts), dtype=bool)
        for rows, _, _ in fast.values():
            is_fast[rows] = True
        slow: _SlowRows = {}
        for row in np.flatnonzero(~is_fast & (chunk.lengths > 0)).tolist():
            line = first + row
            text = chunk.text(row)
            if text is None:
                skip(line, "line is not UTF-8 text")
                continue
            if line == 1:
                text = text.lstrip("\ufeff").strip()
            if not text:
                continue
            parsed = grammar.line(text, fast_seen or first_fast < row)
            if isinstance(parsed, ImageHashEntry):
                rows_, digests, items = slow.setdefault(parsed.kind, ([], [], []))
                rows_.append(row)
                digests.append(bytes.fromhex(parsed.hex))
                items.append(parsed.item_id)
            elif isinstance(parsed, OtherSignal):
                other(parsed.signal_type)
            elif parsed is not None:
                skip(line, parsed)
        fast_seen = fast_seen or bool(fast)
        yield from _blocks(first, fast, slow)


def _blocks(first: int, fast: _FastRows, slow: _SlowRows) -> Iterator[ImageHashBlock]:
    """One chunk's fast and line-by-line rows merged into one block per kind, in line order."""
    import numpy as np

    from filterproxy.match.imagehash.items import ItemTexts

    for kind in KINDS:
        parts: list[tuple[np.ndarray, np.ndarray, ItemTexts | None]] = []
        if kind in fast:
            parts.append(fast[kind])
        if kind in slow:
            rows, digests, slow_items = slow[kind]
            width = HEX_LENGTHS[kind] // 2
            slow_digests = np.frombuffer(b"".join(digests), dtype=np.uint8).reshape(-1, width)
            texts = ItemTexts.of(slow_items) if any(slow_items) else None
            parts.append((np.array(rows, dtype=np.int64), slow_digests, texts))
        if not parts:
            continue
        rows_all = np.concatenate([p[0] for p in parts])
        order = np.argsort(rows_all, kind="stable")
        digests_all = np.concatenate([p[1] for p in parts])[order]
        items: ItemTexts | None = None
        if any(p[2] is not None and len(p[2].blob) for p in parts):
            merged = ItemTexts.concat([p[2] if p[2] is not None else ItemTexts.none(len(p[0])) for p in parts])
            items = merged.take(order)
        yield ImageHashBlock(kind, digests_all, rows_all[order].astype(np.int64) + first, items)


def listed_hex(fmt: str, path: str, line: int) -> str | None:
    """The hash on line ``line`` of a list file of format ``fmt``, lower-case hex (None if that line holds
    none): what names a listed hash that has no item id. Reads the file up to that line."""
    grammar = _FORMATS[fmt][0](path)
    with open(path, "rb") as raw:
        stream = gzip.GzipFile(fileobj=raw) if raw.read(2) == b"\x1f\x8b" else raw
        raw.seek(0)
        for n, data in enumerate(stream, 1):
            header = isinstance(grammar, _ThreatExchangeLines) and grammar.columns is None
            if n < line and not header:
                continue
            text = data.decode("utf-8", "replace").lstrip("\ufeff").strip()
            parsed = grammar.line(text) if text else None
            if n >= line:
                return parsed.hex if isinstance(parsed, ImageHashEntry) else None
    return None


def parse_imagehash_entries(
    path: str, *, kind: str | None = None, skip_errors: bool = False
) -> Iterator[ImageHashEntry | str]:
    """Parse an ``imagehash`` list line by line, yielding :class:`ImageHashEntry` (with ``list_id`` for
    CSV rows).

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
    grammar = _ImageHashLines(declared)
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                parsed: Parsed = "line is not UTF-8 text"
            else:
                text = (text.lstrip("\ufeff") if lineno == 1 else text).strip()
                if not text:
                    continue
                parsed = grammar.line(text)
            if parsed is None or isinstance(parsed, OtherSignal):
                continue
            if isinstance(parsed, ImageHashEntry):
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
