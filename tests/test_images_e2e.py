"""Image-hash matching end to end: `filterproxy run` (runner + proxy workers), a real HTTP client through
the proxy to a local image server, an `imagehash` extra list, and a local hotline endpoint.

* a listed picture and a rotated, re-encoded copy of it are replaced by the (451, legal) block page;
  an unrelated picture and a listed picture's *page* pass untouched;
* each match becomes one report, spooled by a worker and delivered once by the main process: list id,
  item id, match kind and host-only URL — no picture bytes, no client address;
* `filterproxy reports` lists them as sent; the metrics count the matches and the images hashed.
"""

from __future__ import annotations

import http.server
import json
import re
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

from filterproxy.match.imagehash import hash_image_bytes

sys.path.insert(0, str(Path(__file__).parent))
from test_http_e2e import free_port, stop  # noqa: E402
from test_imagehash import jpeg, natural, png  # noqa: E402  (the same generated real-looking pictures)
from test_reports import Endpoint  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


class Pictures:
    """A plain HTTP server for a few pictures (the 'web site' the child visits)."""

    def __init__(self, files: dict[str, tuple[str, bytes]]):
        self.files = files
        pics = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):
                ctype, body = pics.files.get(self.path, ("text/plain", b"not found"))
                self.send_response(200 if self.path in pics.files else 404)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *a):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("images-e2e")
    rng = np.random.default_rng(830)
    planted = natural(rng, 640, 480)
    other = natural(rng, 640, 480)
    exact_only = natural(rng, 320, 240)
    files = {
        "/planted.jpg": ("image/jpeg", jpeg(planted, 92)),
        # rotated 90°, re-encoded at low quality: different bytes, caught by the PDQ dihedral hashes
        "/rotated.jpg": ("image/jpeg", jpeg(planted.transpose(Image.Transpose.ROTATE_90), 40)),
        "/other.jpg": ("image/jpeg", jpeg(other, 92)),
        "/exact.png": ("image/png; charset=binary", png(exact_only)),
        "/page.html": ("text/html", b"<html><body><img src='/planted.jpg'></body></html>"),
    }
    pics = Pictures(files)
    h = hash_image_bytes(files["/planted.jpg"][1])
    assert h.quality >= 50
    listed = tmp / "csam.txt"
    listed.write_text(
        f"# national hash list (test)\npdq:{h.pdq},item-0042\n"
        f"sha256:{hash_image_bytes(files['/exact.png'][1]).sha256},item-0043\n"
    )
    endpoint = Endpoint().start()
    yield {"tmp": tmp, "pics": pics, "list": listed, "endpoint": endpoint, "files": files}
    endpoint.stop()
    pics.close()


@pytest.fixture(scope="module")
def running(setup):
    tmp = setup["tmp"]
    port, mport = free_port(), free_port()
    spool = tmp / "spool"
    log_path = tmp / "run.log"
    log = open(log_path, "wb")
    cmd = [
        sys.executable,
        "-m",
        "filterproxy",
        "run",
        "--dns-listen",
        "off",
        "--proxy-listen",
        f"127.0.0.1:{port}",
        "--proxy-workers",
        "2",
        "--metrics-listen",
        f"127.0.0.1:{mport}",
        "--state-dir",
        str(tmp / "state"),
        "--client-group",
        "127.0.0.0/8=primary",
        "--extra-list",
        f"imagehash:illegal:{setup['list']}",
        "--report-endpoint",
        setup["endpoint"].url,
        "--spool",
        str(spool),
    ]
    p = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=str(tmp), start_new_session=True)
    deadline = time.monotonic() + 120
    while "proxy listening on" not in log_path.read_text(errors="replace"):
        assert p.poll() is None and time.monotonic() < deadline, log_path.read_text(errors="replace")[-3000:]
        time.sleep(0.1)
    yield {"port": port, "mport": mport, "spool": spool, "proc": p, "log": log_path}
    stop(p)
    log.close()


def _get(running, url: str) -> requests.Response:
    s = requests.Session()
    s.trust_env = False
    s.proxies = {"http": f"http://127.0.0.1:{running['port']}"}
    return s.get(url, headers={"Accept-Language": "en"}, timeout=30)


def test_listed_picture_and_rotated_copy_are_blocked_and_reported_once(setup, running):
    pics, endpoint = setup["pics"], setup["endpoint"]
    for path in ("/planted.jpg", "/rotated.jpg", "/exact.png"):
        r = _get(running, pics.url(path))
        assert r.status_code == 451, (path, r.status_code, r.headers)
        assert r.headers["content-type"].startswith("text/html")
        assert "111" in r.text and path not in r.text  # hotline shown; never the picture's URL
    for path in ("/other.jpg", "/page.html"):
        r = _get(running, pics.url(path))
        assert r.status_code == 200 and r.content == setup["files"][path][1], path

    deadline = time.monotonic() + 60
    while len(endpoint.accepted) < 3 and time.monotonic() < deadline:
        time.sleep(0.2)
    reports = sorted(endpoint.accepted.values(), key=lambda b: b["item_id"])
    assert [(b["item_id"], b["match_kind"]) for b in reports] == [
        ("item-0042", "pdq"),
        ("item-0042", "pdq"),
        ("item-0043", "sha256"),
    ], reports
    for b in reports:
        assert b["list_id"] == "extra-illegal-csam.txt", b
        assert b["url"] == "127.0.0.1"  # url_mode "host" by default: no path, no query
        assert b.get("client") is None  # never the child's identity unless an operator enables it
        assert set(b) <= {"id", "time", "gateway_id", "list_id", "item_id", "match_kind", "distance", "url", "client"}
    assert reports[1]["distance"] <= 31 and reports[2]["distance"] == 0
    time.sleep(3)  # another delivery pass or two: nothing is sent twice
    assert all(n == 1 for n in endpoint.posts_per_id().values()), endpoint.posts_per_id()

    out = subprocess.run(
        [sys.executable, "-m", "filterproxy", "reports", "--spool", str(running["spool"]), "--json"],
        capture_output=True,
        text=True,
        cwd=str(setup["tmp"]),
    )
    assert out.returncode == 0, out.stderr
    listing = json.loads(out.stdout)
    assert listing["pending"] == []
    assert sorted(r["item_id"] for r in listing["sent"]) == ["item-0042", "item-0042", "item-0043"]

    # metrics: aggregated from the worker processes by the main one
    deadline = time.monotonic() + 30
    text = ""
    while time.monotonic() < deadline:
        text = urllib.request.urlopen(f"http://127.0.0.1:{running['mport']}/metrics", timeout=5).read().decode()
        m = re.search(r"^filterproxy_reports_delivered_total (\S+)", text, re.M)
        pdq = re.search(r'^filterproxy_imagehash_matches_total\{[^}]*kind="pdq"[^}]*\} (\S+)', text, re.M)
        if m and float(m.group(1)) >= 3 and pdq and float(pdq.group(1)) >= 2:
            break
        time.sleep(1)
    assert re.search(r'^filterproxy_imagehash_matches_total\{[^}]*kind="pdq"[^}]*\} 2\.0$', text, re.M), text
    assert re.search(r'^filterproxy_imagehash_matches_total\{[^}]*kind="sha256"[^}]*\} 1\.0$', text, re.M), text
    assert re.search(r"^filterproxy_reports_delivered_total 3\.0$", text, re.M), text
    assert re.search(r"^filterproxy_reports_queue_depth 0\.0$", text, re.M), text
    images = re.search(r"^filterproxy_imagehash_images_total (\S+)", text, re.M)
    assert images and float(images.group(1)) >= 4  # planted, rotated, exact, other


def test_same_picture_again_is_not_hashed_twice_but_still_blocked(setup, running):
    def hashed() -> float:
        text = urllib.request.urlopen(f"http://127.0.0.1:{running['mport']}/metrics", timeout=5).read().decode()
        m = re.search(r"^filterproxy_imagehash_images_total (\S+)", text, re.M)
        return float(m.group(1)) if m else 0.0

    url = setup["pics"].url("/other.jpg")
    for _ in range(6):  # both workers see it (SO_REUSEPORT spreads connections)
        assert _get(running, url).status_code == 200
    time.sleep(6)  # the workers' metrics reach the main process within a few seconds
    before = hashed()
    for _ in range(6):
        assert _get(running, url).status_code == 200
    time.sleep(6)
    assert hashed() == before
    assert _get(running, setup["pics"].url("/planted.jpg")).status_code == 451
