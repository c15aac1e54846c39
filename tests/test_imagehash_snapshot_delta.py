"""A changed image-hash list compiles as the previous snapshot's base plus a delta (filterproxy.lists.snapshot_images):
the path taken, answers and file:line equal to a full build's, the fallbacks, and compaction after N generations."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

from filterproxy.lists import snapshot_cache, snapshot_images
from filterproxy.lists.snapshot import ListSource, Snapshot, build_snapshot, load_snapshot, unpack
from filterproxy.match.imagehash import ImageHashes, ImageHashIndex

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
import pdq_corpus  # noqa: E402  (the bench's generator: clustered hashes, a few listed twice)

pytestmark = pytest.mark.unit
N = 20_000


def pdq_query(hexhash: str, flips: int = 0, seed: int = 0) -> ImageHashes:
    """A picture whose first dihedral PDQ variant is ``hexhash`` with ``flips`` bits flipped."""
    rng = np.random.default_rng(seed)
    b = bytearray(bytes.fromhex(hexhash))
    for bit in rng.choice(256, flips, replace=False):
        b[bit // 8] ^= 1 << (bit % 8)
    others = tuple(rng.integers(0, 256, 32, dtype=np.uint8).tobytes().hex() for _ in range(7))
    return ImageHashes("0" * 32, "0" * 40, "0" * 64, b.hex(), 100, (b.hex(), *others))


def md5_query(hexhash: str) -> ImageHashes:
    return ImageHashes(hexhash, "0" * 40, "0" * 64, None, None, ())


class Lists:
    """A legal PDQ hotline list (``pdq:hex,item`` lines, clustered hashes with a few repeated) and an md5
    category list, written from editable line lists."""

    def __init__(self, tmp: Path, seed: int = 1) -> None:
        rng = np.random.default_rng(seed)
        corpus = pdq_corpus.make_corpus(N + 4_000, seed=seed)
        listed = {h.tobytes() for h in corpus[:N]}
        self.spare = list(dict.fromkeys(h.tobytes().hex() for h in corpus[N:] if h.tobytes() not in listed))
        self.pdq = ["# hotline list"] + [f"pdq:{h.tobytes().hex()},i{n}" for n, h in enumerate(corpus[:N])]
        self.md5 = ["# md5 list"] + [rng.integers(0, 256, 16, dtype=np.uint8).tobytes().hex() for _ in range(2_000)]
        self.pdq_path, self.md5_path = tmp / "hotline.txt", tmp / "md5.txt"
        self.root = str(tmp / "snapshots")
        self.write()

    def write(self) -> None:
        self.pdq_path.write_text("\n".join(self.pdq) + "\n")
        self.md5_path.write_text("\n".join(self.md5) + "\n")

    def sources(self) -> list[ListSource]:
        return [
            ListSource(id="md5s", category="adult", format="md5", path=str(self.md5_path), hashed=True),
            ListSource(
                id="hotline", category="illegal", format="imagehash", path=str(self.pdq_path), hashed=True, legal=True
            ),
        ]

    def compile(self) -> Snapshot:
        """Compile as a reload does (the cache's ``current`` is the previous snapshot), then serve it."""
        self.write()
        folder = snapshot_cache.compile_snapshot(self.sources(), self.root, in_process=True)
        snapshot_cache.mark_current(self.root, folder)
        return load_snapshot(folder)

    def unique_rows(self, lines: list[str]) -> list[int]:
        """Line positions whose hash is listed once (removing one removes the hash)."""
        keys = [ln.split(",")[0] for ln in lines]
        count: dict[str, int] = {}
        for k in keys:
            count[k] = count.get(k, 0) + 1
        return [i for i, k in enumerate(keys) if i and count[k] == 1]

    def edit(self, rng: np.random.Generator, remove: int, add: int, md5_remove: int = 0, md5_add: int = 0) -> dict:
        """Remove and insert lines at random places (a comment line too); returns what changed."""
        gone = sorted(rng.choice(self.unique_rows(self.pdq), remove, replace=False).tolist(), reverse=True)
        removed = [self.pdq.pop(i).split(",")[0].removeprefix("pdq:") for i in gone]
        added = [self.spare.pop() for _ in range(add)]
        for n, h in enumerate(added):
            self.pdq.insert(int(rng.integers(1, len(self.pdq) + 1)), f"pdq:{h},new{n}")
        self.pdq.insert(1, "# updated")
        md5_gone = sorted(rng.choice(range(1, len(self.md5)), md5_remove, replace=False).tolist(), reverse=True)
        md5_removed = [self.md5.pop(i) for i in md5_gone]
        md5_added = [rng.integers(0, 256, 16, dtype=np.uint8).tobytes().hex() for _ in range(md5_add)]
        for h in md5_added:
            self.md5.insert(int(rng.integers(1, len(self.md5) + 1)), h)
        return {"removed": removed, "added": added, "md5_removed": md5_removed, "md5_added": md5_added}


Answer = tuple[str, str, int, int, "str | None"]


def answers(snap: Snapshot, queries: list[ImageHashes]) -> list[Answer | None]:
    """What a verdict cites for each query: list, kind, distance, line and item id."""
    out: list[Answer | None] = []
    assert snap.images is not None
    for q in queries:
        m = snap.images.match(q)
        if m is None:
            out.append(None)
            continue
        li, line = unpack(m.record)
        out.append((snap.lists[li].id, m.kind, m.distance, line, snap.image_items.get(m.record)))
    return out


def line_of(path: Path, line: int) -> str:
    return path.read_text().splitlines()[line - 1]


def queries_for(lists: Lists, changes: dict, rng: np.random.Generator) -> list[ImageHashes]:
    kept = [ln.split(",")[0].removeprefix("pdq:") for ln in lists.pdq[1:] if ln.startswith("pdq:")]
    sample = [kept[i] for i in rng.choice(len(kept), 300, replace=False)]
    qs = [pdq_query(h) for h in sample + changes["removed"] + changes["added"]]
    qs += [pdq_query(h, flips=6, seed=i) for i, h in enumerate(sample[:100] + changes["added"][:100])]
    md5s = [ln for ln in lists.md5[1:]]
    qs += [md5_query(h) for h in md5s[:200] + changes["md5_removed"] + changes["md5_added"]]
    return qs


def test_a_small_change_is_a_delta_over_the_base_and_answers_like_a_full_build(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    lists = Lists(tmp_path)
    first = lists.compile()
    assert first.image_update["path"] == "full" and first.image_update["why"] == "no previous snapshot"
    changes = lists.edit(rng, remove=300, add=500, md5_remove=20, md5_add=30)
    # a hash listed twice loses its first line; a kept hash gets a second, earlier line: both re-listed
    keys = [ln.split(",")[0] for ln in lists.pdq]
    twice = next(i for i, k in enumerate(keys) if i and k in keys[i + 1 :])
    lists.pdq.pop(twice)
    lists.pdq.insert(2, lists.pdq[9000].split(",")[0] + ",again")
    snap = lists.compile()

    assert snap.image_update["path"] == "delta", snap.image_update
    assert snap.image_update["generation"] == 1 and snap.image_update["changes"] == 300 + 500 + 20 + 30 + 2
    assert snap.images is not None and snap.images.pending_changes >= 852  # + the lines of re-listed hashes
    qs = queries_for(lists, changes, rng) + [pdq_query(keys[twice].removeprefix("pdq:"))]
    qs.append(pdq_query(lists.pdq[2].split(",")[0].removeprefix("pdq:")))
    full = build_snapshot(lists.sources())
    assert answers(snap, qs) == answers(full, qs)
    assert full.images is not None and len(snap.images) == len(full.images)

    # file:line is the line in the file as it is now: a kept (base) hash, an added one, an md5 one
    for h in [ln.split(",")[0].removeprefix("pdq:") for ln in lists.pdq[5000:5010]] + changes["added"][:10]:
        got = answers(snap, [pdq_query(h)])[0]
        assert got is not None and got[2] == 0 and line_of(lists.pdq_path, int(got[3])).startswith(f"pdq:{h},")
    for h in lists.md5[1500:1505] + changes["md5_added"][:5]:
        got = answers(snap, [md5_query(h)])[0]
        assert got is not None and line_of(lists.md5_path, int(got[3])) == h
    # a withdrawn hash no longer matches as itself; an added one matches with its own item id
    for h in changes["removed"]:
        got = answers(snap, [pdq_query(h)])[0]
        assert got is None or got[2] > 0
    for h in changes["md5_removed"]:
        assert answers(snap, [md5_query(h)]) == [None]
    added = answers(snap, [pdq_query(changes["added"][0])])[0]
    assert added is not None and added[0] == "hotline" and added[4] == "new0"


def test_the_delta_holds_the_net_changes_since_the_full_build_and_compacts_after_n_generations(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(snapshot_images, "DELTA_MAX_GENERATIONS", 2)
    rng = np.random.default_rng(11)
    lists = Lists(tmp_path, seed=2)
    lists.compile()
    paths = []
    for _ in range(3):
        changes = lists.edit(rng, remove=50, add=60)
        snap = lists.compile()
        paths.append((snap.image_update["path"], snap.image_update["generation"], snap.image_update["changes"]))
        qs = queries_for(lists, changes, rng)
        assert answers(snap, qs) == answers(build_snapshot(lists.sources()), qs)
    # net changes against the base, not stacked deltas: 110, then 220; the third compile is a full build
    assert paths == [("delta", 1, 110), ("delta", 2, 220), ("full", 0, 0)]
    assert "generations" in snap.image_update["why"]
    assert snap.images is not None and snap.images.pending_changes == 0


def test_a_big_change_or_a_list_added_takes_the_full_build(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    lists = Lists(tmp_path, seed=3)
    lists.compile()
    changes = lists.edit(rng, remove=600, add=600)  # 1,200 net changes > 5 % of 22,000 hashes
    snap = lists.compile()
    assert snap.image_update["path"] == "full" and "since the full build" in snap.image_update["why"]
    qs = queries_for(lists, changes, rng)
    assert answers(snap, qs) == answers(build_snapshot(lists.sources()), qs)

    extra = tmp_path / "extra.txt"
    extra.write_text("d41d8cd98f00b204e9800998ecf8427e\n")
    sources = [*lists.sources(), ListSource(id="extra", category="adult", format="md5", path=str(extra))]
    folder = snapshot_cache.compile_snapshot(sources, lists.root, in_process=True)
    assert load_snapshot(folder).image_update["why"] == "image lists added, removed, moved or of another format"


def test_a_removed_hash_another_list_also_holds_takes_the_full_build(tmp_path: Path) -> None:
    lists = Lists(tmp_path, seed=4)
    shared = lists.md5[10]
    lists.md5.append(shared)  # listed twice in the md5 list: still one hash
    other = tmp_path / "other.txt"
    other.write_text(f"{shared}\n")
    sources = [*lists.sources(), ListSource(id="other", category="adult", format="md5", path=str(other))]
    lists.write()
    snapshot_cache.mark_current(lists.root, snapshot_cache.compile_snapshot(sources, lists.root, in_process=True))
    lists.md5 = [h for h in lists.md5 if h != shared]  # withdrawn from md5s; "other" still lists it
    lists.write()
    snap = load_snapshot(snapshot_cache.compile_snapshot(sources, lists.root, in_process=True))
    assert snap.image_update["path"] == "full" and "in another list" in snap.image_update["why"]
    got = answers(snap, [md5_query(shared)])[0]
    assert got is not None and got[0] == "other"


def test_shifted_base_records_answer_with_their_new_lines_and_survive_save_load_and_compaction(
    tmp_path: Path,
) -> None:
    hashes = pdq_corpus.make_corpus(5_000, seed=9)
    ix = ImageHashIndex()
    ix.add_many("pdq", hashes, (1 << 32) | np.arange(10, 5_010))  # list 1, lines 10..5009
    ix.add("md5", "ab" * 16, (1 << 32) | 6_000)
    ix.freeze(str(tmp_path / "base"))
    # lines from 2,000 on moved down by 3; list 2 starts unshifted
    shift = (np.array([1 << 32, (1 << 32) + 2_000, 2 << 32]), np.array([0, 3, 0]))
    changed = ix.with_array_changes({"pdq": (hashes[:0], np.empty(0, np.int64))}, {}, shift=shift)
    changed.save(str(tmp_path / "changed"))
    for got in (changed, ImageHashIndex.load(str(tmp_path / "changed")), changed.compacted(str(tmp_path / "compact"))):
        assert got.nearest(hashes[0].tobytes(), 0) == (0, (1 << 32) | 10)
        assert got.nearest(hashes[1_990].tobytes(), 0) == (0, (1 << 32) | 2_003)
        assert got._exact_get("md5", bytes.fromhex("ab" * 16)) == (1 << 32) | 6_003
    assert ix.nearest(hashes[1_990].tobytes(), 0) == (0, (1 << 32) | 2_000)  # the base itself is untouched


def test_without_a_current_snapshot_the_newest_cached_index_is_the_base(tmp_path: Path) -> None:
    """Runs with --extra-list never mark a snapshot current; their reloads still compile a delta."""
    lists = Lists(tmp_path, seed=5)
    snapshot_cache.compile_snapshot(lists.sources(), lists.root, in_process=True)
    changes = lists.edit(np.random.default_rng(5), remove=10, add=10)
    lists.write()
    snap = load_snapshot(snapshot_cache.compile_snapshot(lists.sources(), lists.root, in_process=True))
    assert snap.image_update["path"] == "delta" and snap.image_update["changes"] == 20
    qs = queries_for(lists, changes, np.random.default_rng(6))
    assert answers(snap, qs) == answers(build_snapshot(lists.sources()), qs)


def test_a_previous_index_in_an_older_table_format_is_not_reused_as_a_base(tmp_path: Path) -> None:
    """After an upgrade the cached snapshot's tables (format 2: pdq.perm + pdq.companion) cannot be read
    by the new query path; a delta over them would serve with a brute-force scan, so the changed list
    is built in full."""
    lists = Lists(tmp_path, seed=7)
    first = lists.compile()
    images = Path(os.path.realpath(os.path.join(lists.root, "current"))) / "images"
    assert first.images is not None and (images / "pdq.entries.npy").exists()
    meta = json.loads((images / "index.json").read_text())
    (images / "index.json").write_text(json.dumps({**meta, "format": 2}))  # as the older version wrote it
    (images / "pdq.entries.npy").rename(images / "pdq.perm.npy")
    changes = lists.edit(np.random.default_rng(7), remove=10, add=10)
    snap = lists.compile()
    assert snap.image_update["path"] == "full" and "image index format 2" in snap.image_update["why"]
    assert snap.images is not None and snap.images._pdq is not None and snap.images._pdq.entries is not None
    qs = queries_for(lists, changes, np.random.default_rng(8))
    assert answers(snap, qs) == answers(build_snapshot(lists.sources()), qs)


@pytest.mark.parametrize("seed", range(6))
def test_alignment_keeps_every_unedited_line_through_scattered_and_block_edits(seed: int) -> None:
    """Lines removed and inserted one by one, in blocks and side by side (replaced): the alignment keeps
    exactly the lines not edited, so the delta holds the edits and nothing more."""
    rng = np.random.default_rng(seed)
    old = rng.integers(0, 2**63, 5_000, dtype=np.int64).astype(np.uint64)
    gone = np.zeros(len(old), bool)
    gone[rng.choice(len(old), 60, replace=False)] = True
    start = int(rng.integers(0, 4_000))
    gone[start : start + 300] = True  # a block withdrawn
    kept = old[~gone]
    fresh = rng.integers(0, 2**63, 500, dtype=np.int64).astype(np.uint64)
    at = np.sort(np.concatenate([rng.integers(0, len(kept), 200), np.full(300, int(rng.integers(0, len(kept))))]))
    new = np.insert(kept, at, fresh)  # 200 scattered lines and a block of 300 inserted
    keep_a, keep_b = snapshot_images._align(old, new, 10_000)
    assert np.array_equal(keep_a, ~gone)
    assert np.array_equal(new[keep_b], kept) and int((~keep_b).sum()) == 500
