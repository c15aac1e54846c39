"""The last-good rule on every path that swaps lists, snapshots reused by content, and clear errors for a
corrupt cache or a full disk."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import pytest
from conftest import REPO, write_config

from filterproxy.config import load_config
from filterproxy.lists import commands, guard, snapshot_cache
from filterproxy.lists.snapshot import load_snapshot


def _names(n: int, prefix: str = "n") -> str:
    return "".join(f"{prefix}{i}.example\n" for i in range(n))


def _config(tmp_path, state=None):
    (tmp_path / "big.txt").write_text(_names(2000))
    (tmp_path / "small.txt").write_text(_names(10, "s"))
    path = write_config(
        tmp_path,
        f"""
        server: {{state_dir: {state or tmp_path / "state"}}}
        default_group: g
        lists:
          - {{id: big, category: adult, format: domains, path: {tmp_path / "big.txt"}}}
          - {{id: small, category: adult, format: domains, path: {tmp_path / "small.txt"}}}
    """,
        {"g": "name: G\nblock_categories: [adult]\n"},
    )
    return load_config(str(path))


def _collapse(tmp_path) -> None:
    """What the probe did: a big list file replaced by random bytes (parses to a handful of entries)."""
    (tmp_path / "big.txt").write_bytes(os.urandom(20000) + b"\nx1.example\nx2.example\n")


def _entries(snap, list_id: str) -> int:
    li = snap.by_id(list_id)
    assert li is not None
    return li.entries


def test_shrink_problem_names_the_list_and_spares_small_lists(tmp_path):
    cfg = _config(tmp_path)
    good = snapshot_cache.load_or_build(cfg)
    (tmp_path / "small.txt").write_text("s1.example\n")  # 10 → 1: small lists may shrink
    assert guard.shrink_problem(good.lists, snapshot_cache.load_or_build(cfg).lists) is None
    _collapse(tmp_path)
    cur = snapshot_cache.current_snapshot(cfg.server.state_dir)
    assert cur is not None
    bad = load_snapshot(snapshot_cache.compile_snapshot(snapshot_cache.available_sources(cfg), os.path.dirname(cur)))
    why = guard.shrink_problem(good.lists, bad.lists)
    assert why is not None and "list big shrank from 2,000 to" in why
    assert guard.shrink_problem(good.lists, bad.lists, min_ratio=0) is None


def test_start_up_serves_the_last_good_snapshot_and_says_why(tmp_path, caplog):
    cfg = _config(tmp_path)
    good = snapshot_cache.load_or_build(cfg)
    good_folder = snapshot_cache.current_snapshot(cfg.server.state_dir)
    _collapse(tmp_path)
    with caplog.at_level(logging.ERROR, logger="filterproxy.lists"):
        snap = snapshot_cache.load_or_build(cfg)
    assert _entries(snap, "big") == _entries(good, "big") == 2000
    assert snap.domain_matches("n1999.example")
    assert "list big shrank from 2,000" in caplog.text and "serving the last good snapshot" in caplog.text
    assert snapshot_cache.current_snapshot(cfg.server.state_dir) == good_folder  # still the last good


def test_reload_path_refuses_a_collapsed_list(tmp_path):
    cfg = _config(tmp_path)
    snapshot_cache.load_or_build(cfg)
    _collapse(tmp_path)
    with pytest.raises(guard.SnapshotRefused, match="list big shrank"):
        snapshot_cache.load_or_build(cfg, refuse=True)


def test_lists_update_refuses_a_collapsed_list_unless_min_ratio_0(tmp_path, capsys):
    cfg = _config(tmp_path)
    assert commands.update(cfg) == 0
    good = snapshot_cache.current_snapshot(cfg.server.state_dir)
    _collapse(tmp_path)
    assert commands.update(cfg) == 1
    assert "list big shrank from 2,000" in capsys.readouterr().err
    assert snapshot_cache.current_snapshot(cfg.server.state_dir) == good
    assert commands.update(cfg, min_ratio=0) == 0  # an intended shrink
    assert _entries(load_snapshot(snapshot_cache.current_snapshot(cfg.server.state_dir) or ""), "big") < 100


def test_switching_back_to_a_compiled_version_reuses_it(tmp_path, monkeypatch):
    """Snapshots are cached by content: a list restored to an earlier version (new mtime, same bytes)
    maps the folder compiled before, with no compile."""
    cfg = _config(tmp_path)
    a = snapshot_cache.load_or_build(cfg).folder
    (tmp_path / "big.txt").write_text(_names(2100))
    b = snapshot_cache.load_or_build(cfg).folder
    assert a and b and a != b

    def no_compile(*args, **kw):
        raise AssertionError("compiled again")

    monkeypatch.setattr(snapshot_cache, "_compile_in_child", no_compile)
    (tmp_path / "big.txt").write_text(_names(2000))  # version A again, written anew
    os.utime(tmp_path / "big.txt", (1, 1))
    assert snapshot_cache.load_or_build(cfg).folder == a
    (tmp_path / "big.txt").write_text(_names(2100))
    assert snapshot_cache.load_or_build(cfg).folder == b


def test_a_corrupt_cached_snapshot_is_logged_and_compiled_again(tmp_path, caplog):
    cfg = _config(tmp_path)
    folder = snapshot_cache.load_or_build(cfg).folder
    assert folder
    with open(os.path.join(folder, "domains.records"), "ab") as f:
        f.write(b"junk")
    with caplog.at_level(logging.WARNING, logger="filterproxy.lists"):
        snap = snapshot_cache.load_or_build(cfg)
    assert "cached snapshot is corrupt, compiling it again" in caplog.text
    assert "domains.records" in caplog.text
    assert _entries(snap, "big") == 2000 and snap.domain_matches("n5.example")


def test_an_incomplete_snapshot_folder_is_logged_and_compiled_again(tmp_path, caplog):
    cfg = _config(tmp_path)
    folder = snapshot_cache.load_or_build(cfg).folder
    assert folder
    os.unlink(os.path.join(folder, "meta.json"))  # a compile killed before its last write
    with caplog.at_level(logging.WARNING, logger="filterproxy.lists"):
        snap = snapshot_cache.load_or_build(cfg)
    assert "is incomplete (no meta.json): compiling it again" in caplog.text
    assert _entries(snap, "big") == 2000


@pytest.fixture()
def small_disk(tmp_path):
    """A 256 KiB tmpfs for the state folder (the tests run as root, as CI does)."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_full_disk_during_lists_update_says_no_space_left(tmp_path, small_disk):
    cfg = _config(tmp_path, state=small_disk / "state")
    (tmp_path / "big.txt").write_text(_names(60000, "a-rather-long-name-so-the-index-is-big-"))
    r = subprocess.run(
        [sys.executable, "-m", "filterproxy", "lists", "update", "--config", cfg.path],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert r.returncode == 1
    assert f"no space left on {small_disk / 'state' / 'snapshots'}" in r.stderr, r.stderr
    assert "MARISA" not in r.stderr
