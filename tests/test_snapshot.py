"""Compiled snapshots: cached by fingerprint, memory-mapped, last-known-good on bad updates."""

from __future__ import annotations

import http.server
import json
import os
import subprocess
import sys
import threading
import time

import pytest
from conftest import REPO, write_config

from filterproxy.config import load_config
from filterproxy.lists import commands, snapshot_cache
from filterproxy.lists.parsers import ListError
from filterproxy.lists.snapshot import SNAPSHOT_FORMAT, ListSource, build_snapshot, load_snapshot, save_snapshot


@pytest.fixture()
def served(tmp_path):
    """A local HTTP server whose files the test can change: {name: bytes}."""
    files: dict[str, bytes] = {}

    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            body = files.get(self.path.lstrip("/"))
            if body is None:
                self.send_response(404)
                self.end_headers()
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield files, f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()


def test_save_load_roundtrip_with_every_kind(tmp_path, data_dir):
    from conftest import LISTS

    (tmp_path / "h.txt").write_text("0.0.0.0 a.example\n1.2.3.4\n")
    (tmp_path / "rx.txt").write_text("/^ads[0-9]+\\./\n")
    sources = [
        ListSource("h", "adult", "hosts", str(tmp_path / "h.txt")),
        ListSource("rx", "adult", "adblock", str(tmp_path / "rx.txt")),
        ListSource("ut1", "dating", "ut1", str(LISTS / "ut1/dating")),
        ListSource("ips", "bypass", "domains", str(LISTS / "hagezi/ips/doh.txt")),
    ]
    snap = build_snapshot(sources)
    save_snapshot(snap, str(tmp_path / "s"))
    loaded = load_snapshot(str(tmp_path / "s"))
    assert [li.entries for li in loaded.lists] == [li.entries for li in snap.lists]
    assert loaded.domains.lookup("www.a.example") == snap.domains.lookup("www.a.example")
    assert loaded.regexes[1][0][0].search("ads12.x.com")
    assert loaded.ips == snap.ips and len(loaded.ips) > 1000
    assert loaded.urls is not None and len(loaded.urls) == len(snap.urls)


def test_compile_is_cached_by_fingerprint(tmp_path):
    p = tmp_path / "a.txt"
    p.write_text("one.example\n")
    src = [ListSource("a", "adult", "domains", str(p))]
    root = str(tmp_path / "snaps")
    first = snapshot_cache.compile_snapshot(src, root)
    assert snapshot_cache.compile_snapshot(src, root) == first  # unchanged inputs: not compiled again
    time.sleep(0.01)
    p.write_text("one.example\ntwo.example\n")
    second = snapshot_cache.compile_snapshot(src, root)
    assert second != first
    assert len(load_snapshot(second).domains) == 2


def test_compile_error_names_the_list(tmp_path):
    p = tmp_path / "empty.txt"
    p.write_text("# nothing\n")
    with pytest.raises(Exception, match="zero entries"):
        snapshot_cache.compile_snapshot([ListSource("e", "adult", "domains", str(p))], str(tmp_path / "s"))
    assert not [d for d in (tmp_path / "s").iterdir() if d.name != "current"]  # no half-written snapshot left


def _config(tmp_path, url):
    return load_config(
        str(
            write_config(
                tmp_path,
                f"""
        server: {{state_dir: {tmp_path / "state"}}}
        lists:
          - {{id: remote, category: adult, format: domains, url: {url}/list.txt}}
    """,
                {"g": "name: G\nblock_categories: [adult]\n"},
            )
        )
    )


def test_update_keeps_last_good_on_bad_download_and_shrink(tmp_path, served, capsys):
    files, base = served
    cfg = _config(tmp_path, base)
    files["list.txt"] = "".join(f"n{i}.example\n" for i in range(100)).encode()
    assert commands.update(cfg) == 0
    good = snapshot_cache.current_snapshot(cfg.server.state_dir)
    assert load_snapshot(good).total_entries == 100
    # a body that parses to nothing is refused before it replaces the cached file
    files["list.txt"] = b"<html>captive portal</html>\n"
    assert commands.update(cfg) == 1
    assert snapshot_cache.current_snapshot(cfg.server.state_dir) == good
    # a suspiciously small list (< 50% of the current entries) is refused too
    files["list.txt"] = b"only.example\n"
    assert commands.update(cfg) == 1
    assert "below 50%" in capsys.readouterr().err
    assert snapshot_cache.current_snapshot(cfg.server.state_dir) == good
    assert load_snapshot(snapshot_cache.current_snapshot(cfg.server.state_dir)).total_entries == 100
    # a sane update is taken
    files["list.txt"] = "".join(f"m{i}.example\n" for i in range(120)).encode()
    assert commands.update(cfg) == 0
    assert load_snapshot(snapshot_cache.current_snapshot(cfg.server.state_dir)).total_entries == 120


def test_update_with_server_down_keeps_serving(tmp_path, served):
    files, base = served
    cfg = _config(tmp_path, base)
    files["list.txt"] = b"a.example\nb.example\n"
    assert commands.update(cfg) == 0
    files.clear()  # 404 from now on
    assert commands.update(cfg) == 1
    snap = snapshot_cache.load_or_build(cfg)
    assert snap.total_entries == 2


def _local_config(tmp_path):
    """A config with one local domain list and no distribution repository."""
    (tmp_path / "blocked.txt").write_text("".join(f"n{i}.example\n" for i in range(50)))
    return load_config(
        str(
            write_config(
                tmp_path,
                f"""
        server: {{state_dir: {tmp_path / "state"}}}
        default_group: g
        lists:
          - {{id: local, category: adult, format: domains, match: subdomains, path: {tmp_path / "blocked.txt"}}}
    """,
                {"g": "name: G\nblock_categories: [adult]\n"},
            )
        )
    )


def test_records_of_the_wrong_size_make_an_unreadable_snapshot_naming_the_file(tmp_path):
    cfg = _local_config(tmp_path)
    folder = snapshot_cache.compile_snapshot(
        snapshot_cache.available_sources(cfg), snapshot_cache.snapshots_dir(cfg.server.state_dir)
    )
    records = os.path.join(folder, "domains.records")
    assert os.path.getsize(records) == 7 * 50
    with open(records, "ab") as f:
        f.write(b"\0" * 3)
    with pytest.raises(ListError, match=f"unreadable snapshot: {records}: 353 bytes of domain records, expected 350"):
        load_snapshot(folder)


def test_snapshot_of_an_older_format_is_compiled_again(tmp_path, capsys):
    """After an upgrade, ``current`` may point at a folder in an older format: it is never misread."""
    cfg = _local_config(tmp_path)
    root = snapshot_cache.snapshots_dir(cfg.server.state_dir)
    new = snapshot_cache.compile_snapshot(snapshot_cache.available_sources(cfg), root)
    old = os.path.join(root, "older")  # what an older version left: another fingerprint, format 2, .npy records
    os.rename(new, old)
    os.rename(os.path.join(old, "domains.records"), os.path.join(old, "domains.records.npy"))
    meta = json.load(open(os.path.join(old, "meta.json")))
    meta["format"] = SNAPSHOT_FORMAT - 1
    json.dump(meta, open(os.path.join(old, "meta.json"), "w"))
    snapshot_cache.mark_current(root, old)
    with pytest.raises(ListError, match=f"snapshot format {SNAPSHOT_FORMAT - 1} \\(expected {SNAPSHOT_FORMAT}\\)"):
        load_snapshot(old)
    assert commands.show(cfg) == 0  # 'lists show' compiles this version's snapshot instead of failing
    assert os.path.basename(new) in capsys.readouterr().out
    snap = snapshot_cache.load_or_build(cfg)
    assert snap.total_entries == 50 and snap.domain_matches("www.n7.example")
    assert snapshot_cache.current_snapshot(cfg.server.state_dir) == new
    assert os.path.exists(os.path.join(new, "domains.records"))


_SERVE_IMPORTS = """
import sys
import filterproxy.runner
from filterproxy.cli import load_engine

cfg, engine = load_engine(sys.argv[1], [], [])  # first start: compiled in a child process
cfg, engine = load_engine(sys.argv[1], [], [])  # then: memory-mapped from the state folder
import filterproxy.dns.server  # the DNS serving path too
heavy = sorted({m.split(".")[0] for m in sys.modules} & {"numpy", "cryptography"})
print(heavy, bool(engine.snapshot.domain_matches("www.n7.example")))
"""


def test_serving_domain_lists_imports_neither_numpy_nor_cryptography(tmp_path):
    """Without a distribution repository the serving process needs neither (~15 MB + ~8 MB of RSS):
    compiling the snapshot (numpy) happens in a child process, TUF (cryptography) only with distribution.url."""
    _local_config(tmp_path)
    r = subprocess.run(
        [sys.executable, "-c", _SERVE_IMPORTS, str(tmp_path / "filterproxy.yaml")],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.split("\n")[0] == "[] True", r.stdout + r.stderr


def test_lists_update_with_state_dir_writes_under_that_folder(tmp_path, served):
    """``filterproxy lists update --state-dir X`` downloads into X and compiles there, not into the
    configured state folder (downloaded lists' paths follow the state folder in use)."""
    files, base = served
    files["list.txt"] = "".join(f"n{i}.example\n" for i in range(10)).encode()
    cfg_path = write_config(
        tmp_path,
        f"""
        server: {{state_dir: {tmp_path / "configured"}}}
        lists:
          - {{id: remote, category: adult, format: domains, url: {base}/list.txt}}
    """,
        {"g": "name: G\nblock_categories: [adult]\n"},
    )
    other = tmp_path / "other"
    r = subprocess.run(
        [sys.executable, "-m", "filterproxy", "lists", "update", "--config", str(cfg_path), "--state-dir", str(other)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert (other / "lists" / "remote.txt").read_bytes() == files["list.txt"]
    assert not (tmp_path / "configured" / "lists").exists()
    current = other / "snapshots" / "current"
    assert load_snapshot(str(current)).total_entries == 10
    r = subprocess.run(
        [sys.executable, "-m", "filterproxy", "lists", "show", "--config", str(cfg_path), "--state-dir", str(other)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert r.returncode == 0 and "remote" in r.stdout, r.stdout + r.stderr
    assert not (tmp_path / "configured").exists()
