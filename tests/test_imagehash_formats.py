"""Image-hash list formats (filterproxy/match/imagehash/listfile.py, lists/parsers.py): ``imagehash`` lines,
ThreatExchange / HMA CSV and TSV exports, plain MD5 and SHA-1 digest lists.

Each format parses into blocks of digests with their line numbers and item ids; malformed lines are
skipped and counted with ``file:line``; rows of other signal types are counted apart, not as errors;
the vectorised ``kind:hex`` path gives exactly what the line-by-line grammar gives.
"""

from __future__ import annotations

import gzip
import hashlib
from pathlib import Path

import numpy as np
import pytest

from filterproxy.config import load_config
from filterproxy.lists.parsers import IMAGE_FORMATS, ListError, ParseStats, iter_entries, parse_imagehash
from filterproxy.lists.snapshot import ListSource, build_snapshot, unpack
from filterproxy.match.imagehash.listfile import (
    IMAGE_LIST_FORMATS,
    ImageHashBlock,
    listed_hex,
    parse_imagehash_list,
    read_image_blocks,
)

MD5 = hashlib.md5(b"a").hexdigest()
MD5_B = hashlib.md5(b"b").hexdigest()
SHA1 = hashlib.sha1(b"a").hexdigest()
SHA256 = hashlib.sha256(b"a").hexdigest()
PDQ = "f8f8f0cee0f4a84f06370a32038f67f0b36e2ed596623e1d33e6339c4e9c9b22"
PDQ_B = "0" * 62 + "ff"


def rows(fmt: str, path: Path) -> tuple[list[tuple[str, str, str | None, int]], ParseStats, list[str]]:
    """(kind, hex, item, line) in line order, the stats, and the other signal types seen."""
    stats = ParseStats(str(path))
    others: list[str] = []
    out = []
    for b in read_image_blocks(fmt, str(path), stats.skip, others.append):
        assert isinstance(b, ImageHashBlock) and b.digests.dtype == np.uint8 and len(b.digests) == len(b.lines)
        items = b.items or [None] * len(b.lines)
        out += [(b.kind, d.tobytes().hex(), i, int(n)) for d, i, n in zip(b.digests, items, b.lines, strict=True)]
    return sorted(out, key=lambda r: r[3]), stats, others


def test_the_loader_and_the_list_module_name_the_same_formats() -> None:
    assert IMAGE_FORMATS == IMAGE_LIST_FORMATS == ("imagehash", "threatexchange", "md5", "sha1")


# ------------------------------------------------------------------------------- imagehash


def test_imagehash_lines_fast_and_slow_in_line_order(tmp_path: Path) -> None:
    p = tmp_path / "list.txt"
    p.write_bytes(
        (
            f"# national list\npdq:{PDQ}\r\nmd5:{MD5.upper()}\nsha1:{SHA1},item-7\n\n"
            f"sha256:{SHA256}\nPDQ:{PDQ_B},x\nnot-a-hash\npdq:{PDQ[:60]}\n"
        ).encode()
    )
    got, stats, others = rows("imagehash", p)
    assert got == [
        ("pdq", PDQ, None, 2),
        ("md5", MD5, None, 3),
        ("sha1", SHA1, "item-7", 4),
        ("sha256", SHA256, None, 6),
        ("pdq", PDQ_B, "x", 7),
    ]
    assert stats.skipped == 2 and others == []
    assert stats.errors[0].startswith(f"{p}:8: not a hash") and stats.errors[1] == (
        f"{p}:9: expected 64 hex digits for pdq, got 60"
    )


def test_item_ids_are_kept_as_the_line_says_stripped_and_in_utf8(tmp_path: Path) -> None:
    """Item ids are read as arrays (ten million strings would cost ~0.7 GB while compiling): stripped as
    str.strip() does (Unicode spaces of non-ASCII ids too), Vietnamese ids kept, empty ids None, and an
    id that is not UTF-8 leaves its line to the grammar, which skips it with its line number."""
    p = tmp_path / "items.txt"
    p.write_bytes(
        b"\n".join(
            [
                f"pdq:{PDQ},  spaced\t".encode(),
                f"md5:{MD5},ảnh-bị-chặn-7".encode(),
                f"sha1:{SHA1},\u00a0nbsp-ảnh\u00a0".encode(),
                f"sha256:{SHA256},".encode(),
                f"pdq:{PDQ_B}".encode(),
                f"md5:{MD5_B},".encode() + b"\xff\xfe",
                f"pdq:{PDQ},   ".encode(),
            ]
        )
        + b"\n"
    )
    got, stats, _ = rows("imagehash", p)
    assert [(r[2], r[3]) for r in got] == [
        ("spaced", 1),
        ("ảnh-bị-chặn-7", 2),
        ("nbsp-ảnh", 3),
        (None, 4),
        (None, 5),
        (None, 7),
    ]
    assert stats.skipped == 1 and stats.errors == [f"{p}:6: line is not UTF-8 text"]


def test_vectorised_reader_gives_what_the_line_grammar_gives(tmp_path: Path) -> None:
    """The numpy path for ``kind:hex`` lines and the per-line grammar agree, declarations and CSV included."""
    lines = [
        "\ufeff# kind: pdq",
        PDQ,  # bare 64 digits in a file declared pdq
        f"pdq:{PDQ_B}",
        f"md5:{MD5}",
        f"{MD5_B},md5,iwf,77",  # the CSV form
        "# kind: md5",  # too late: ignored
        PDQ_B.upper(),
        f"sha1:{SHA1}",
        f"pdq:{PDQ}",
        f"pdq:{PDQ},item 9 ",  # an item id: the fast path too
        f'pdq:{PDQ_B},"id, with comma"',  # quoted: the grammar
        f"md5:{MD5},",  # an empty item
        f"md5:{MD5},a,b",  # three fields: an error
    ]
    p = tmp_path / "declared.txt"
    p.write_bytes(("\n".join(lines) + "\n").encode() + f"md5:{MD5},caf\xe9\n".encode("latin-1"))
    reference = [e for e in parse_imagehash_list(str(p), skip_errors=True)]
    got, stats, _ = rows("imagehash", p)
    assert got == [e for e in reference if not isinstance(e, str)]
    assert stats.errors == [e for e in reference if isinstance(e, str)] and stats.skipped == 2
    assert [r[0] for r in got] == ["pdq", "pdq", "md5", "md5", "pdq", "sha1", "pdq", "pdq", "pdq", "md5"]
    assert [r[2] for r in got[-3:]] == ["item 9", "id, with comma", None]


def test_kind_hex_lines_skip_the_per_line_grammar(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """10M-line lists parse in seconds because ``kind:hex[,id]`` and bare digests never reach Python per line."""
    from filterproxy.match.imagehash import listfile

    calls: list[str] = []
    for cls in (listfile._ImageHashLines, listfile._DigestLines):
        real = cls.line
        monkeypatch.setattr(
            cls, "line", lambda self, text, before=False, real=real: calls.append(text) or real(self, text, before)
        )
    p = tmp_path / "plain.txt"
    p.write_text(f"pdq:{PDQ}\r\nmd5:{MD5},item-1\nsha256:{SHA256.upper()}\n")
    assert [r[0] for r in rows("imagehash", p)[0]] == ["pdq", "md5", "sha256"]
    p.write_text(f"{MD5}\n{SHA1.upper()},x\n")
    assert [r[0] for r in rows("md5", p)[0]] == ["md5", "sha1"]
    assert calls == []
    p.write_text(f"# comment\npdq: {PDQ}\n")
    assert [r[0] for r in rows("imagehash", p)[0]] == ["pdq"] and calls == ["# comment", f"pdq: {PDQ}"]


def test_a_csv_header_is_only_a_header_before_the_first_entry(tmp_path: Path) -> None:
    p = tmp_path / "h.csv"
    p.write_text(f"pdq:{PDQ}\nhash,kind,list_id,item_id\n")
    _, stats, _ = rows("imagehash", p)
    assert stats.errors == [f"{p}:2: CSV header row after the first entry"]


def test_big_file_is_read_in_chunks_without_losing_lines(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from filterproxy.match.imagehash import listfile

    monkeypatch.setattr(listfile, "_CHUNK", 1000)  # ~14 lines a chunk, lines cut across reads
    rng = np.random.default_rng(3)
    digests = rng.integers(0, 256, size=(500, 32), dtype=np.uint8)
    text = "".join(f"pdq:{d.tobytes().hex()}\n" for d in digests[:250]) + "bad line\n"
    text += "".join(f"pdq:{d.tobytes().hex()},id{i}\n" for i, d in enumerate(digests[250:]))
    p = tmp_path / "big.txt.gz"
    p.write_bytes(gzip.compress(text.encode()))
    got, stats, _ = rows("imagehash", p)
    assert [r[1] for r in got] == [d.tobytes().hex() for d in digests]
    assert [r[3] for r in got] == list(range(1, 251)) + list(range(252, 502))
    assert got[250][2] == "id0" and got[0][2] is None
    assert stats.errors == [f"{p}:251: not a hash: 'bad line'; " + listfile._EXPECTED]


# ------------------------------------------------------------------------------- threatexchange


def test_threatexchange_csv_as_python_threatexchange_writes_it(tmp_path: Path) -> None:
    """``threatexchange dataset -P --csv``: signal_type,signal_str,collab,category,tags (no id column)."""
    p = tmp_path / "collab.csv"
    p.write_text(
        "signal_type,signal_str,collab,category,tags\r\n"
        f"pdq,{PDQ},Sample Signals,POSITIVE_CLASS,csam\r\n"
        f"video_md5,{MD5_B},Sample Signals,POSITIVE_CLASS,\r\n"
        "raw_text,some words,Sample Signals,INVESTIGATION_SEED,\r\n"
        "url,https://example.com/a,Sample Signals,INVESTIGATION_SEED,\r\n"
        f"photo_md5,{MD5},Sample Signals,POSITIVE_CLASS,\r\n"
        "pdq,abc,Sample Signals,POSITIVE_CLASS,\r\n"
    )
    got, stats, others = rows("threatexchange", p)
    assert got == [("pdq", PDQ, None, 2), ("md5", MD5, None, 6)]
    assert sorted(others) == ["raw_text", "url", "video_md5"]  # counted apart, not errors
    assert stats.skipped == 1 and stats.errors == [f"{p}:7: expected 64 hex digits for pdq, got 3"]


def test_hma_export_with_ids_and_quality(tmp_path: Path) -> None:
    p = tmp_path / "bank.csv"
    p.write_text(
        "content_id,signal_type,signal_value,quality\n"
        f'"1001",pdq,{PDQ.upper()},100\n'
        f"1002,pdq,{PDQ_B},49\n"
        f"1003,md5,{MD5},\n"
        f"1004,pdq,{PDQ} 100,\n"  # a "hash quality" value keeps the hash
    )
    got, stats, others = rows("threatexchange", p)
    assert got == [("pdq", PDQ, "1001", 2), ("pdq", PDQ_B, "1002", 3), ("md5", MD5, "1003", 4), ("pdq", PDQ, "1004", 5)]
    assert stats.skipped == 0 and others == []


@pytest.mark.parametrize("name", ["export.tsv", "export.txt"])  # by extension, or by the tab in the header
def test_threatexchange_tsv(tmp_path: Path, name: str) -> None:
    p = tmp_path / name
    p.write_text(f"id\tsignal_type\tsignal_str\ni-1\tpdq\t{PDQ}\ni-2\ttrend_query\tx\ni-3\tpdq\t{PDQ_B}, x\n")
    got, stats, others = rows("threatexchange", p)
    assert got == [("pdq", PDQ, "i-1", 2), ("pdq", PDQ_B, "i-3", 4)] and others == ["trend_query"]


def test_threatexchange_without_a_header_names_line_one(tmp_path: Path) -> None:
    p = tmp_path / "noheader.csv"
    p.write_text(f"pdq,{PDQ}\npdq,{PDQ_B}\n")
    got, stats, _ = rows("threatexchange", p)
    assert got == [] and stats.skipped == 1
    assert stats.errors[0].startswith(f"{p}:1: expected a header row naming the signal_type and signal_str columns")
    with pytest.raises(ListError, match=r"yielded zero entries — first problems: .*noheader.csv:1: expected a header"):
        build_snapshot([ListSource("te", "illegal", "threatexchange", str(p))])


# ------------------------------------------------------------------------------- md5 / sha1


@pytest.mark.parametrize("fmt", ["md5", "sha1"])
def test_plain_digest_lists(tmp_path: Path, fmt: str) -> None:
    """IWF style: one digest per line, upper case, BOM, CRLF; the kind follows from the length."""
    p = tmp_path / "iwf.txt"
    p.write_bytes(
        b"\xef\xbb\xbf"
        + f"{MD5.upper()}\r\n{SHA1.upper()}\r\n\r\n# comment\r\n{MD5_B},case-9\r\n".encode()
        + f"{SHA256}\r\n{MD5[:-1]}x\r\n".encode()
    )
    got, stats, _ = rows(fmt, p)
    assert got == [("md5", MD5, None, 1), ("sha1", SHA1, None, 2), ("md5", MD5_B, "case-9", 5)]
    assert stats.skipped == 2
    assert stats.errors == [
        f"{p}:6: expected a hex digest of 32 (md5) or 40 (sha1) digits, got {SHA256!r}",
        f"{p}:7: md5 hash has a non-hex character 'x'",
    ]


# ------------------------------------------------------------------------------- the loader and the snapshot


def test_iter_entries_yields_blocks_and_the_per_hash_view(tmp_path: Path) -> None:
    p = tmp_path / "list.txt"
    p.write_text(f"md5:{MD5},i1\nnot-a-hash\npdq:{PDQ}\n")
    stats: dict[str, ParseStats] = {}
    entries = [e for _f, e in iter_entries("imagehash", str(p), lambda q: stats.setdefault(q, ParseStats(q)))]
    assert {e.kind for e in entries} == {"imageblock"}
    assert sum(len(e.block.lines) for e in entries if e.block is not None) == 2
    per_hash = list(parse_imagehash(str(p), ParseStats(str(p))))
    assert [(e.value, e.extra, e.line) for e in per_hash] == [(f"md5:{MD5}", "i1", 1), (f"pdq:{PDQ}", None, 3)]
    assert stats[str(p)].skipped == 1 and stats[str(p)].errors[0].startswith(f"{p}:2: ")


def test_snapshot_of_every_format_matches_with_list_line_and_item(tmp_path: Path) -> None:
    from filterproxy.match.imagehash import ImageHashes

    (tmp_path / "a.txt").write_text(f"pdq:{PDQ_B}\n")
    (tmp_path / "te.csv").write_text(f"signal_type,signal_str,id\nvideo_md5,{MD5},v\npdq,{PDQ},te-9\n")
    (tmp_path / "iwf.txt").write_text(f"{SHA1}\n{MD5}\n")
    (tmp_path / "s.txt").write_text(f"{SHA1}\n")
    snap = build_snapshot(
        [
            ListSource("a", "illegal", "imagehash", str(tmp_path / "a.txt")),
            ListSource("te", "illegal", "threatexchange", str(tmp_path / "te.csv")),
            ListSource("iwf", "illegal", "md5", str(tmp_path / "iwf.txt")),
            ListSource("s", "illegal", "sha1", str(tmp_path / "s.txt")),
        ]
    )
    assert [(li.id, li.entries, li.skipped) for li in snap.lists] == [
        ("a", 1, 0),
        ("te", 1, 0),
        ("iwf", 2, 0),
        ("s", 1, 0),
    ]
    assert snap.images is not None
    h = ImageHashes(MD5, "0" * 40, "0" * 64, PDQ, 100, (PDQ,) * 8)
    m = snap.images.match(h)
    assert m is not None and (m.kind, unpack(m.record)) == ("md5", (2, 2))  # exact first: iwf.txt line 2
    h = ImageHashes("0" * 32, "0" * 40, "0" * 64, PDQ, 100, (PDQ,) * 8)
    m = snap.images.match(h)
    assert m is not None and (m.kind, m.distance, unpack(m.record)) == ("pdq", 0, (1, 3))
    assert snap.image_items.get(m.record) == "te-9"


def test_config_lists_take_the_new_formats_and_hide_their_rules(tmp_path: Path) -> None:
    (tmp_path / "te.tsv").write_text(f"signal_type\tsignal_str\npdq\t{PDQ}\n")
    (tmp_path / "iwf.txt").write_text(f"{MD5}\n")
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "home.yaml").write_text("name: Home\nblock_categories: [adult]\n")
    cfg = tmp_path / "filterproxy.yaml"
    cfg.write_text(
        "policies_dir: policies\ngroups: [home]\nlists:\n"
        "  - {id: te, category: illegal, format: threatexchange, path: te.tsv}\n"
        "  - {id: iwf, category: illegal, format: md5, path: iwf.txt}\n"
        "  - {id: iwf1, category: illegal, format: sha1, path: iwf.txt}\n"
    )
    lists = {s.id: s for s in load_config(str(cfg)).lists}
    assert [(lists[i].format, lists[i].hashed) for i in ("te", "iwf", "iwf1")] == [
        ("threatexchange", True),
        ("md5", True),
        ("sha1", True),
    ]


def test_listed_hex_names_an_entry_without_an_item_id(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text(f"# kind: pdq\npdq:{PDQ_B}\n{PDQ.upper()}\n")
    (tmp_path / "te.csv").write_text(f"signal_type,signal_str\nraw_text,x\npdq,{PDQ}\n")
    (tmp_path / "a.txt.gz").write_bytes(gzip.compress((tmp_path / "a.txt").read_bytes()))
    assert listed_hex("imagehash", str(tmp_path / "a.txt"), 3) == PDQ
    assert listed_hex("imagehash", str(tmp_path / "a.txt.gz"), 2) == PDQ_B
    assert listed_hex("threatexchange", str(tmp_path / "te.csv"), 3) == PDQ
    assert listed_hex("threatexchange", str(tmp_path / "te.csv"), 2) is None
