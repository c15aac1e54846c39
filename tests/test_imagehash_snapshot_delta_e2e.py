"""A hotline list update through a real `filterproxy run`: the list file changes, SIGHUP reloads it, the image
index is compiled as a delta over the previous one, and an added hash's picture is blocked while a withdrawn
one's is let through (tests/test_imagehash_snapshot_delta.py has the unit layer)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from filterproxy.match.imagehash import hash_image_bytes

sys.path.insert(0, str(Path(__file__).parent))
from test_http_e2e import free_port, stop  # noqa: E402
from test_imagehash import jpeg, natural, png  # noqa: E402
from test_images_e2e import Pictures, _get  # noqa: E402

pytestmark = pytest.mark.e2e


def _until(check, what: str, log: Path, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"{what}: " + log.read_text(errors="replace")[-3000:]
        time.sleep(0.3)


def test_an_added_hash_is_blocked_and_a_withdrawn_one_let_through_after_a_delta_reload(tmp_path: Path) -> None:
    rng = np.random.default_rng(19)
    kept, added, withdrawn = natural(rng, 640, 480), natural(rng, 640, 480), natural(rng, 320, 240)
    files = {
        "/kept.jpg": ("image/jpeg", jpeg(kept, 92)),
        "/added.png": ("image/png", png(added)),
        "/withdrawn.png": ("image/png", png(withdrawn)),
    }
    pics = Pictures(files)
    sha = {p: hash_image_bytes(body).sha256 for p, (_, body) in files.items()}
    filler = [f"sha256:{rng.bytes(32).hex()},filler-{n}" for n in range(200)]  # the 5 % limit needs a list
    listed = tmp_path / "hotline.txt"
    listed.write_text("\n".join([f"sha256:{sha['/kept.jpg']},kept", *filler, f"sha256:{sha['/withdrawn.png']},gone"]))
    port = free_port()
    log_path = tmp_path / "run.log"
    cmd = [sys.executable, "-m", "filterproxy", "run", "--dns-listen", "off", "--proxy-listen", f"127.0.0.1:{port}"]
    cmd += ["--proxy-workers", "1", "--metrics-listen", "off", "--state-dir", str(tmp_path / "state")]
    cmd += ["--client-group", "127.0.0.0/8=primary", "--extra-list", f"imagehash:illegal:{listed}"]
    with open(log_path, "wb") as log:
        p = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=str(tmp_path), start_new_session=True)
        try:
            _until(lambda: "proxy listening on" in log_path.read_text(errors="replace"), "start", log_path)
            running = {"port": port}
            assert _get(running, pics.url("/kept.jpg")).status_code == 451
            assert _get(running, pics.url("/withdrawn.png")).status_code == 451
            assert _get(running, pics.url("/added.png")).status_code == 200

            # the hotline withdraws one hash and adds one; a comment moves every line down
            listed.write_text(
                "\n".join(["# updated", f"sha256:{sha['/kept.jpg']},kept", f"sha256:{sha['/added.png']},new", *filler])
            )
            os.kill(p.pid, signal.SIGHUP)
            _until(lambda: "image index delta build" in log_path.read_text(errors="replace"), "delta", log_path)
            # the same URLs: pictures the proxy has answered before are matched against the new lists
            _until(lambda: _get(running, pics.url("/added.png")).status_code == 451, "added blocked", log_path)
            assert _get(running, pics.url("/withdrawn.png")).status_code == 200
            assert _get(running, pics.url("/kept.jpg")).status_code == 451
        finally:
            stop(p)
            pics.close()
