"""The PDQ index at scale: recall against brute force on clustered hashes, changes (delta + tombstones),
compaction, table files shared by processes through the page cache, and the snapshot cache of the compiled index."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from filterproxy.match.imagehash import ImageHashes, ImageHashIndex, ImageMatch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
import pdq_corpus  # noqa: E402  (the bench's generator: uniform + near-duplicate families + similar groups)

pytestmark = pytest.mark.unit
D = 31


def picture(first: np.ndarray, seed: int) -> ImageHashes:
    """A picture whose first dihedral variant is ``first`` and the other 7 unrelated."""
    rng = np.random.default_rng(seed)
    variants = (first.tobytes().hex(),) + tuple(
        rng.integers(0, 256, 32, dtype=np.uint8).tobytes().hex() for _ in range(7)
    )
    return ImageHashes("0" * 32, "0" * 40, "0" * 64, variants[0], 100, variants)


def brute(hashes: np.ndarray, records: np.ndarray, h: ImageHashes) -> tuple[int, int] | None:
    """(distance, record) of the nearest hash to any variant within D: lowest position wins ties."""
    words = hashes.view(np.uint64)
    best: tuple[int, int] | None = None
    for v in h.pdq_dihedral:
        q = np.frombuffer(bytes.fromhex(v), dtype=np.uint64)
        d = np.bitwise_count(words ^ q).sum(axis=1)
        k = int(np.argmin(d))
        if d[k] <= D and (best is None or (int(d[k]), k) < best):
            best = (int(d[k]), k)
    return None if best is None else (best[0], int(records[best[1]]))


def answer(ix: ImageHashIndex, h: ImageHashes) -> tuple[int, int] | None:
    m = ix.match(h, max_distance=D)
    return None if m is None else (m.distance, m.record)


@pytest.fixture(scope="module")
def corpus() -> np.ndarray:
    return pdq_corpus.make_corpus(200_000, seed=7)


@pytest.fixture(scope="module")
def mapped(corpus: np.ndarray, tmp_path_factory: pytest.TempPathFactory) -> tuple[ImageHashIndex, str]:
    folder = str(tmp_path_factory.mktemp("pdqidx"))
    ix = ImageHashIndex()
    ix.add_many("pdq", corpus, np.arange(len(corpus)) + 100)
    ix.freeze(folder)
    ix.save(folder)
    return ImageHashIndex.load(folder), folder


def test_recall_is_total_against_brute_force_on_clustered_hashes(corpus: np.ndarray, mapped: tuple) -> None:
    ix, _ = mapped
    queries, planted = pdq_corpus.make_queries(corpus, 160, seed=3)
    records = np.arange(len(corpus)) + 100
    within = 0
    for i, q in enumerate(queries):
        want = brute(corpus, records, picture(q, i))
        assert answer(ix, picture(q, i)) == want, f"query {i} (planted distance {planted[i]})"
        within += want is not None
    assert within >= 80  # the sample really exercises near matches, families and similar groups


def test_changes_add_and_remove_without_a_rebuild(corpus: np.ndarray, mapped: tuple) -> None:
    ix, _ = mapped
    rng = np.random.default_rng(11)
    gone = rng.choice(len(corpus), 300, replace=False)
    new = pdq_corpus.flip(rng, corpus[rng.integers(0, len(corpus), 300)], rng.integers(0, 20, 300))
    changed = ix.with_changes(
        added=[("pdq", h.tobytes().hex(), 10**9 + i) for i, h in enumerate(new)],
        removed=[("pdq", corpus[i].tobytes().hex()) for i in gone],
    )
    dead = np.isin(corpus.view("V32").ravel(), corpus[gone].view("V32").ravel())
    live = np.concatenate([corpus[~dead], new])
    live_rec = np.concatenate([np.flatnonzero(~dead) + 100, 10**9 + np.arange(300)])
    assert len(changed) == len(live) and len(ix) == len(corpus)  # the original index is unchanged
    for i, q in enumerate(np.concatenate([corpus[gone[:40]], new[:40]])):
        assert answer(changed, picture(q, i)) == brute(live, live_rec, picture(q, i))
    assert changed.nearest(new[0].tobytes())[0] == 0
    assert changed.pending_changes >= 600  # 300 added + 300 removed (and any other copy of a removed hash)


def test_tombstones_hide_every_copy_and_the_next_nearest_answers() -> None:
    rng = np.random.default_rng(5)
    base = rng.integers(0, 256, (5000, 32), dtype=np.uint8)
    target = base[10].copy()
    near = pdq_corpus.flip(rng, target[None], np.array([5]))[0]
    base[20] = target  # a second copy of the same hash
    base[30] = near
    ix = ImageHashIndex()
    ix.add_many("pdq", base, np.arange(5000))
    ix.add("sha256", "ab" * 32, 7)
    ix.add("sha256", "ab" * 32, 8)  # the same picture in another list
    ix.add("sha256", "cd" * 32, 9)
    ix.freeze()
    assert ix.nearest(target.tobytes()) == (0, 10)
    changed = ix.with_changes(removed=[("pdq", target.tobytes().hex()), ("sha256", "AB" * 32)])
    assert changed.nearest(target.tobytes()) == (5, 30)  # both copies gone, the near one remains
    assert changed.match(ImageHashes("0" * 32, "0" * 40, "ab" * 32, None, None, ())) is None
    assert ix.match(ImageHashes("0" * 32, "0" * 40, "ab" * 32, None, None, ())) is not None
    again = changed.with_changes(added=[("pdq", target.tobytes().hex(), 99)])  # listed again: new record
    assert again.nearest(target.tobytes()) == (0, 99)
    assert len(again) == 5000 + 3 - 2 - 2 + 1  # 2 PDQ copies and 2 SHA-256 records removed, 1 added
    compact = again.compacted()
    assert len(compact) == len(again) and compact.stats()["sha256"] == 1
    assert compact.match(ImageHashes("0" * 32, "0" * 40, "ab" * 32, None, None, ())) is None
    assert compact.match(ImageHashes("0" * 32, "0" * 40, "cd" * 32, None, None, ())) == ImageMatch("sha256", 0, 9)
    assert compact.nearest(target.tobytes()) == (0, 99)


def test_compaction_gives_the_same_answers(corpus: np.ndarray, mapped: tuple, tmp_path: Path) -> None:
    ix, _ = mapped
    rng = np.random.default_rng(2)
    gone = rng.choice(len(corpus), 200, replace=False)
    new = pdq_corpus.flip(rng, corpus[rng.integers(0, len(corpus), 200)], rng.integers(0, 35, 200))
    changed = ix.with_changes(
        added=[("pdq", h.tobytes().hex(), -i - 1) for i, h in enumerate(new)],
        removed=[("pdq", corpus[i].tobytes().hex()) for i in gone],
    )
    compact = changed.compacted(str(tmp_path))
    assert compact.pending_changes == 0 and changed.pending_changes > 0
    assert len(compact) == len(changed)
    queries, _ = pdq_corpus.make_queries(corpus, 60, seed=9)
    for i, q in enumerate(np.concatenate([queries, corpus[gone[:30]], new[:30]])):
        assert answer(compact, picture(q, i)) == answer(changed, picture(q, i))
    reloaded = ImageHashIndex.load(str(tmp_path))
    assert reloaded.nearest(new[0].tobytes()) == compact.nearest(new[0].tobytes())


def test_changed_index_saves_its_delta_and_links_the_base(corpus: np.ndarray, mapped: tuple, tmp_path: Path) -> None:
    ix, folder = mapped
    gone = corpus[5]
    changed = ix.with_changes(added=[("pdq", "0f" * 32, 1)], removed=[("pdq", gone.tobytes().hex())])
    changed.save(str(tmp_path))
    assert os.stat(tmp_path / "pdq.entries.npy").st_ino == os.stat(Path(folder) / "pdq.entries.npy").st_ino
    back = ImageHashIndex.load(str(tmp_path))
    assert back.nearest("0f" * 32) == (0, 1)
    assert back.nearest(gone.tobytes(), 0) is None
    assert len(back) == len(changed)


_CHILD = textwrap.dedent(
    """
    import sys, numpy as np
    from filterproxy.match.imagehash import ImageHashIndex
    ix = ImageHashIndex.load(sys.argv[1])
    try:
        ix._pdq.entries.array[0, 0] = 1
    except ValueError:
        pass
    else:
        raise SystemExit("the tables are writable")
    rng = np.random.default_rng(5)
    for _ in range(200):  # 200 queries touch buckets all over the tables
        ix.nearest(rng.integers(0, 256, 32, dtype=np.uint8).tobytes())
    print(ix.nearest(sys.argv[2]), flush=True)
    sys.stdin.read()  # hold the files open until the parent has looked
    """
)


def _resident_kb(pid: int, path: str) -> int:
    """kB of ``path`` mapped into the process and resident (/proc/PID/smaps)."""
    total, current = 0, None
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        fields = line.split()
        if fields and fields[0].endswith(":"):  # "Key: value kB" of the current mapping
            if fields[0] == "Rss:" and current == path:
                total += int(fields[1])
        else:  # a mapping: address perms offset device inode [path]
            current = fields[5] if len(fields) >= 6 else None
    return total


def test_processes_share_the_tables_through_the_page_cache_without_mapping_them(
    corpus: np.ndarray, mapped: tuple
) -> None:
    """Queries read the bucket entries and hashes with pread from files opened read-only: two processes
    answer from the same files (the same page-cache pages), and neither maps them in. Mapping them
    would cost each process the whole index (the kernel maps page cache in large folios)."""
    _, folder = mapped
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _CHILD, folder, corpus[3].tobytes().hex()],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=REPO,
        )
        for _ in range(2)
    ]
    try:
        for p in procs:
            assert p.stdout is not None
            assert p.stdout.readline().strip() == "(0, 103)"
        for name in ("pdq.entries.npy", "pdq.hashes.npy"):
            path = os.path.realpath(os.path.join(folder, name))
            inode = os.stat(path).st_ino
            for p in procs:
                fds = [f for f in Path(f"/proc/{p.pid}/fd").iterdir() if os.path.realpath(f) == path]
                assert fds, f"{name} is not open in process {p.pid}"
                assert all(os.stat(f).st_ino == inode for f in fds)
                flags = int(Path(f"/proc/{p.pid}/fdinfo/{fds[0].name}").read_text().split("flags:")[1].split()[0], 8)
                assert flags & os.O_ACCMODE == os.O_RDONLY
                assert _resident_kb(p.pid, path) == 0, f"{name} is mapped into process {p.pid}"
    finally:
        for p in procs:
            p.communicate("")
    assert all(p.returncode == 0 for p in procs)


def test_tables_built_from_parsed_chunks_equal_the_tables_of_the_joined_hashes(tmp_path: Path) -> None:
    """A list compile hands the PDQ build its parsed chunks, never joined (a 10M build would hold the
    hashes twice): the files are byte for byte those of one joined array, and answer the same."""
    from filterproxy.match.imagehash.mih import PdqTables

    hashes = pdq_corpus.make_corpus(30_000, seed=12)
    records = np.arange(30_000, dtype=np.int64) * 7
    cuts = [0, 5_000, 5_001, 17_000, 30_000]  # uneven chunks, one of a single hash
    chunked = PdqTables.build(
        [hashes[a:b] for a, b in zip(cuts, cuts[1:])],
        [records[a:b] for a, b in zip(cuts, cuts[1:])],
        str(tmp_path / "a"),
    )
    joined = PdqTables.build(hashes, records, str(tmp_path / "b"))
    for name in ("hashes", "records", "entries", "offsets"):
        assert (tmp_path / "a" / f"pdq.{name}.npy").read_bytes() == (tmp_path / "b" / f"pdq.{name}.npy").read_bytes()
    in_memory = PdqTables.build([hashes[:100], hashes[100:]], [records[:100], records[100:]])
    queries, _ = pdq_corpus.make_queries(hashes, 40, seed=13)
    for q in queries:
        assert chunked.search(q[None], D) == in_memory.search(q[None], D) == joined.search(q[None], D)


def test_a_table_file_cut_short_is_an_error_naming_it_not_a_wrong_answer(tmp_path: Path) -> None:
    hashes = pdq_corpus.make_corpus(20_000, seed=14)
    ix = ImageHashIndex()
    ix.add_many("pdq", hashes, np.arange(20_000))
    ix.freeze(str(tmp_path))
    loaded = ImageHashIndex.load(str(tmp_path))
    assert loaded.nearest(hashes[7].tobytes()) == (0, 7)
    path = tmp_path / "pdq.entries.npy"
    os.truncate(path, path.stat().st_size // 2)  # the disk lost the second half under a running process
    with pytest.raises(OSError, match="pdq.entries.npy: file shorter than its header says"):
        for h in hashes[::500]:
            loaded.nearest(h.tobytes())


def test_exact_digest_and_item_id_lookups_read_the_files_without_mapping_them(tmp_path: Path) -> None:
    """A 10M-line MD5 list is 320 MB of sorted keys, digests and records, and 10M item ids some 260 MB: a
    lookup reads its binary search and a hit's digest, record or id with pread, so none of it is mapped
    into the process."""
    rng = np.random.default_rng(11)
    digests = rng.integers(0, 256, (100_000, 16), dtype=np.uint8)
    digests[500] = digests[400]  # listed twice: the first record wins
    ix = ImageHashIndex()
    ix.add_many("md5", digests, np.arange(100_000) + 10)
    ix.freeze()
    ix.save(str(tmp_path))
    loaded = ImageHashIndex.load(str(tmp_path))
    for i in rng.choice(100_000, 200, replace=False).tolist() + [400, 500]:
        m = loaded.match(ImageHashes(digests[i].tobytes().hex(), "0" * 40, "0" * 64, None, None, ()))
        assert m == ImageMatch("md5", 0, 10 + (400 if i == 500 else i))
    for d in rng.integers(0, 256, (50, 16), dtype=np.uint8):
        assert loaded.match(ImageHashes(d.tobytes().hex(), "0" * 40, "0" * 64, None, None, ())) is None
    from filterproxy.match.imagehash.items import ImageItems

    ImageItems.build((10 + i, f"hotline-{i}") for i in range(100_000)).save(str(tmp_path))
    items = ImageItems.load(str(tmp_path))
    assert [items.get(10 + i) for i in (0, 4_095, 99_999)] == ["hotline-0", "hotline-4095", "hotline-99999"]
    assert items.get(9) is None and items.get(100_010) is None
    parts = [f"md5.{p}.npy" for p in ("keys", "digests", "records")] + [
        f"items.{p}.npy" for p in ("records", "ends", "blob")
    ]
    for name in parts:
        assert _resident_kb(os.getpid(), os.path.realpath(tmp_path / name)) == 0, f"{name} is mapped into the process"


def test_snapshot_maps_the_compiled_index_and_a_second_compile_is_a_cache_hit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from filterproxy.lists import snapshot_cache
    from filterproxy.lists.snapshot import ListSource, load_snapshot

    hashes = pdq_corpus.make_corpus(20_000, seed=4)
    lst = tmp_path / "pdq.txt"
    pdq_corpus.write_list(lst, hashes)
    src = ListSource(id="hotline", category="illegal", format="imagehash", path=str(lst), hashed=True)
    root = str(tmp_path / "snapshots")
    folder = snapshot_cache.compile_snapshot([src], root)  # in a child process
    assert os.path.exists(os.path.join(folder, "images", "pdq.entries.npy"))

    def no_compile(*args: object) -> None:
        raise AssertionError("compiled again although the inputs are unchanged")

    monkeypatch.setattr(snapshot_cache, "_compile_in_child", no_compile)
    assert snapshot_cache.compile_snapshot([src], root) == folder
    snap = load_snapshot(folder)
    assert snap.images is not None and snap.images._pdq is not None
    assert isinstance(snap.images._pdq.entries.array, np.memmap)  # opened from the snapshot folder
    m = snap.images.match(picture(hashes[123], 0))
    assert m is not None and m.distance == 0
    assert snap.image_items.get(m.record) == "i000000123"  # line 125 of the file, item id kept
    assert m.record & 0xFFFFFFFF == 125


def test_compaction_in_a_child_process_swaps_in_an_equal_index(tmp_path: Path) -> None:
    from filterproxy.match.imagehash.compact import compact_in_child

    hashes = pdq_corpus.make_corpus(20_000, seed=8)
    ix = ImageHashIndex()
    ix.add_many("pdq", hashes, np.arange(20_000))
    ix.freeze(str(tmp_path / "base"))
    changed = ix.with_changes(added=[("pdq", "3c" * 32, -1)], removed=[("pdq", hashes[0].tobytes().hex())])
    changed.save(str(tmp_path / "changed"))
    compact = compact_in_child(str(tmp_path / "changed"), str(tmp_path / "compact"))
    assert compact.pending_changes == 0 and len(compact) == len(changed) == 20_000
    assert compact.nearest("3c" * 32) == (0, -1)
    assert compact.nearest(hashes[0].tobytes(), 0) is None
    assert compact.nearest(hashes[1].tobytes()) == changed.nearest(hashes[1].tobytes()) == (0, 1)
