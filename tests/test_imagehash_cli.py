"""``filterproxy imagehash --list FORMAT:PATH ... FILE...`` end to end, and hotline formats in `filterproxy run`.

* the command, run as a subprocess on real JPEG files, reports for each file the matches the proxy's own
  index finds in a ThreatExchange export (PDQ with an item id, also for a rotated, re-encoded copy) and
  in a plain MD5 list (exact), with list, item, kind and distance; an unrelated picture matches nothing;
  a second run with the same lists uses the cached snapshots;
* the same two lists configured as ``lists:`` sources make `filterproxy run` block the pictures they
  list (a real HTTP client through the proxy), and let an unrelated one through.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from filterproxy.match.imagehash import hash_image_bytes

sys.path.insert(0, str(Path(__file__).parent))
from test_http_e2e import free_port, stop  # noqa: E402
from test_imagehash import jpeg, natural  # noqa: E402  (generated real-looking pictures)
from test_images_e2e import Pictures, _get  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PDQ_OTHER = "f8f8f0cee0f4a84f06370a32038f67f0b36e2ed596623e1d33e6339c4e9c9b22"


@pytest.fixture(scope="module")
def pictures(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("imagehash-cli")
    rng = np.random.default_rng(1919)
    planted, exact_only, other = natural(rng, 640, 480), natural(rng, 480, 360), natural(rng, 640, 480)
    files = {
        "planted.jpg": jpeg(planted, 92),
        "rotated.jpg": jpeg(planted.transpose(Image.Transpose.ROTATE_90), 40),
        "exact.jpg": jpeg(exact_only, 90),
        "other.jpg": jpeg(other, 92),
    }
    for name, data in files.items():
        (tmp / name).write_bytes(data)
    h = hash_image_bytes(files["planted.jpg"])
    assert h.pdq is not None and (h.quality or 0) >= 50
    te = tmp / "te-export.csv"  # as `threatexchange dataset -P --csv` / an HMA bank export write it, with an id
    te.write_text(
        "signal_type,signal_str,collab,category,tags,id\r\n"
        f"video_md5,{'0' * 32},Sample,POSITIVE_CLASS,,v-1\r\n"
        f"pdq,{h.pdq},Sample,POSITIVE_CLASS,csam,te-4711\r\n"
        "raw_text,hello,Sample,INVESTIGATION_SEED,,t-1\r\n"
    )
    md5_list = tmp / "iwf-md5.txt"  # IWF style: upper case, BOM, CRLF
    exact_md5 = hash_image_bytes(files["exact.jpg"]).md5
    md5_list.write_bytes(b"\xef\xbb\xbf" + f"{'a' * 32}\r\n{exact_md5.upper()}\r\n{h.md5}\r\n".encode())
    (tmp / "pdq.txt").write_text(f"# no item ids\npdq:{PDQ_OTHER}\npdq:{h.pdq}\n")
    return {"tmp": tmp, "files": files, "te": te, "md5": md5_list, "planted": h, "exact_md5": exact_md5}


def imagehash_cli(tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, XDG_STATE_HOME=str(tmp / "state"))  # the CLI caches snapshots in the state folder
    return subprocess.run(
        [sys.executable, "-m", "filterproxy", "imagehash", *args],
        capture_output=True,
        text=True,
        cwd=str(tmp),
        env=env,
        timeout=300,
    )


def test_matches_name_list_item_kind_and_distance(pictures) -> None:
    tmp, te, md5_list = pictures["tmp"], str(pictures["te"]), str(pictures["md5"])
    names = ("planted.jpg", "rotated.jpg", "exact.jpg", "other.jpg")
    r = imagehash_cli(tmp, "--list", f"threatexchange:{te}", "--list", f"md5:{md5_list}", *names)
    assert r.returncode == 0, r.stderr
    out = {d["file"]: d for d in map(json.loads, r.stdout.splitlines())}
    assert list(out) == list(names)
    planted = out["planted.jpg"]
    assert planted["pdq"] == pictures["planted"].pdq and planted["md5"] == pictures["planted"].md5
    assert planted["matches"] == [
        {"list": te, "item": "te-4711", "kind": "pdq", "distance": 0, "variant": "original", "line": 3},
        {"list": md5_list, "item": pictures["planted"].md5, "kind": "md5", "distance": 0, "line": 3},
    ]
    (rotated,) = out["rotated.jpg"]["matches"]
    assert (rotated["list"], rotated["item"], rotated["kind"]) == (te, "te-4711", "pdq")
    assert 0 < rotated["distance"] <= 31 and rotated["variant"] in ("rotate90", "rotate270")
    assert out["exact.jpg"]["matches"] == [
        {"list": md5_list, "item": pictures["exact_md5"], "kind": "md5", "distance": 0, "line": 2}
    ]
    assert out["other.jpg"]["matches"] == []

    # the same lists again: the cached snapshots are mapped, no new one is compiled
    snapshots = tmp / "state" / "filterproxy" / "snapshots"
    before = sorted(p.name for p in snapshots.iterdir())
    assert len(before) == 2, before
    r2 = imagehash_cli(tmp, "--list", f"threatexchange:{te}", "--list", f"md5:{md5_list}", *names)
    assert r2.returncode == 0 and r2.stdout == r.stdout, r2.stderr
    assert sorted(p.name for p in snapshots.iterdir()) == before
    assert all((snapshots / n / "meta.json").stat().st_mtime < time.time() for n in before)


def test_max_distance_and_output_without_lists(pictures) -> None:
    tmp, te = pictures["tmp"], str(pictures["te"])
    r = imagehash_cli(tmp, "--max-distance", "0", "--list", f"threatexchange:{te}", "rotated.jpg", "planted.jpg")
    assert r.returncode == 0, r.stderr
    docs = [json.loads(x) for x in r.stdout.splitlines()]
    assert docs[0]["matches"] == [] and docs[1]["matches"][0]["distance"] == 0
    r = imagehash_cli(tmp, "planted.jpg")
    assert r.returncode == 0 and "matches" not in json.loads(r.stdout)  # today's output, unchanged
    r = imagehash_cli(tmp, "--list", "imagehash:pdq.txt", "rotated.jpg")  # no item id: the listed hash names it
    (match,) = json.loads(r.stdout)["matches"]
    assert (match["list"], match["item"], match["kind"], match["line"]) == (
        "pdq.txt",
        pictures["planted"].pdq,
        "pdq",
        3,
    )
    assert 0 < match["distance"] <= 31


def test_bad_list_and_missing_file_exit_status(pictures) -> None:
    tmp, md5_list = pictures["tmp"], str(pictures["md5"])
    r = imagehash_cli(tmp, "--list", f"crc32:{md5_list}", "planted.jpg")
    assert r.returncode == 2 and "unknown image list format 'crc32'" in r.stderr and r.stdout == ""
    r = imagehash_cli(tmp, "--list", f"threatexchange:{md5_list}", "planted.jpg")  # no header: zero entries
    assert r.returncode == 2 and "iwf-md5.txt:1: expected a header row" in r.stderr, r.stderr
    r = imagehash_cli(tmp, "--list", f"md5:{md5_list}", "missing.jpg", "exact.jpg")
    lines = [json.loads(x) for x in r.stdout.splitlines()]
    assert r.returncode == 1 and "error" in lines[0] and lines[1]["matches"][0]["kind"] == "md5"


# ------------------------------------------------------------------------------- the proxy, lists: sources


@pytest.fixture(scope="module")
def running(pictures):
    tmp = pictures["tmp"]
    (tmp / "policies").mkdir()
    (tmp / "policies" / "primary.yaml").write_text("name: Primary\nblock_categories: [adult]\n")
    cfg = tmp / "filterproxy.yaml"
    cfg.write_text(
        f"server: {{state_dir: {tmp / 'run-state'}}}\n"
        "policies_dir: policies\ngroups: [primary]\ndefault_group: primary\n"
        "lists:\n"
        f"  - {{id: te-export, category: illegal, format: threatexchange, path: {pictures['te']}}}\n"
        f"  - {{id: iwf-md5, category: illegal, format: md5, path: {pictures['md5']}}}\n"
    )
    pics = Pictures({f"/{n}": ("image/jpeg", data) for n, data in pictures["files"].items()})
    port = free_port()
    log_path = tmp / "run.log"
    log = open(log_path, "wb")
    cmd = [sys.executable, "-m", "filterproxy", "run", "--config", str(cfg), "--dns-listen", "off"]
    cmd += ["--proxy-listen", f"127.0.0.1:{port}", "--proxy-workers", "1", "--metrics-listen", "off"]
    cmd += ["--admin-listen", "off", "--client-group", "127.0.0.0/8=primary", "--spool", str(tmp / "spool")]
    p = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=str(tmp), start_new_session=True)
    deadline = time.monotonic() + 120
    while "proxy listening on" not in log_path.read_text(errors="replace"):
        assert p.poll() is None and time.monotonic() < deadline, log_path.read_text(errors="replace")[-3000:]
        time.sleep(0.1)
    yield {"port": port, "pics": pics, "log": log_path}
    stop(p)
    log.close()
    pics.close()


def test_run_blocks_pictures_on_threatexchange_and_md5_lists(pictures, running) -> None:
    pics = running["pics"]
    for name in ("planted.jpg", "rotated.jpg", "exact.jpg"):
        r = _get(running, pics.url(f"/{name}"))
        assert r.status_code == 451, (name, r.status_code)  # category illegal: the legal block page
    r = _get(running, pics.url("/other.jpg"))
    assert r.status_code == 200 and r.content == pictures["files"]["other.jpg"]
    text = running["log"].read_text(errors="replace")
    assert "image on hash list te-export blocked (pdq" in text and "image on hash list iwf-md5 blocked (md5" in text
