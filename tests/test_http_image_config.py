"""The ``http`` keys the response path reads, each through the addon on a mitmproxy flow (taddons/tflow):
``image_hashing``, ``max_image_bytes``, ``pdq_max_distance`` and ``default_language``.

Each test loads two configurations that differ only in that key and shows that the flow's outcome
differs (blocked image vs delivered, English vs Vietnamese page), so a key that stopped being read fails.
The end-to-end twin (a real mitmdump, chunked and 200 MB bodies) is tests/test_http_stream_e2e.py.
"""

from __future__ import annotations

import asyncio
import inspect
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from conftest import write_config
from mitmproxy import http
from mitmproxy.test import taddons, tflow, tutils
from PIL import Image
from test_imagehash import jpeg, natural

from filterproxy.http.addon import FilterAddon
from filterproxy.http.protocol import BODY_CAP
from filterproxy.match.imagehash import hash_image_bytes

PUPIL = {"pupil": "name: Pupil\ntone: child\nblock_categories: [adult]\n"}


@pytest.fixture(scope="module")
def pictures() -> dict[str, bytes]:
    rng = np.random.default_rng(4417)
    planted = natural(rng, 640, 480)
    return {
        "planted": jpeg(planted, 92),
        # rotated 90° and re-encoded: other bytes, a PDQ distance above 0 (dihedral hashes)
        "copy": jpeg(planted.transpose(Image.Transpose.ROTATE_90), 40),
    }


def _config(tmp: Path, pictures: dict[str, bytes], http_keys: str) -> str:
    tmp.mkdir(parents=True, exist_ok=True)
    h = hash_image_bytes(pictures["planted"])
    (tmp / "adult.txt").write_text("blocked.test\n")
    (tmp / "images.txt").write_text(f"pdq:{h.pdq},item-1\nsha256:{h.sha256},item-2\n")
    return str(
        write_config(
            tmp,
            f"""
timezone: Asia/Ho_Chi_Minh
clients:
  - {{cidr: 10.0.0.0/8, group: pupil}}
http:
{http_keys}
lists:
  - {{id: adult, category: adult, format: domains, match: subdomains, path: adult.txt}}
  - {{id: csam, category: illegal, format: imagehash, legal: true, path: images.txt}}
""",
            PUPIL,
        )
    )


def _flow(url: str, headers: dict[str, str] | None = None) -> http.HTTPFlow:
    req = http.Request.make("GET", url, b"")
    for k, v in (headers or {}).items():
        req.headers[k] = v
    f = tflow.tflow(req=req)
    f.client_conn.peername = ("10.0.0.5", 40000)
    f.client_conn.sockname = ("127.0.0.1", 8080)
    return f


def _fetch_image(cfg: str, body: bytes, *, chunked: bool = False) -> http.HTTPFlow:
    """A GET of an allowed URL whose answer is ``body`` (image/jpeg), through every addon hook."""
    a = FilterAddon()
    a.images._executor = ThreadPoolExecutor(1)  # (not a process pool: the picture is hashed the same way)
    with taddons.context(a) as tctx:
        tctx.configure(a, filterproxy_config=cfg, filterproxy_reload_signal=False)
        f = _flow("http://pictures.test/a.jpg")
        assert a.requestheaders(f) is None and a.request(f) is None and f.response is None
        f.response = tutils.tresp(content=body, headers=http.Headers(content_type="image/jpeg"))
        if chunked:
            f.response.headers.pop("content-length", None)
            f.response.headers["transfer-encoding"] = "chunked"
        else:
            f.response.headers["content-length"] = str(len(body))
        a.responseheaders(f)
        if not f.response.stream:  # mitmproxy buffers the body, then calls `response`
            res = a.response(f)
            if inspect.isawaitable(res):
                asyncio.run(res)
        a.done()
        return f


def _delivered(f: http.HTTPFlow, body: bytes) -> bool:
    return f.response is not None and f.response.status_code == 200 and f.response.content == body


def _blocked(f: http.HTTPFlow) -> bool:
    return f.response is not None and f.response.status_code == 451 and f.response.content != b""


def test_image_hashing_off_lets_a_listed_picture_through(tmp_path, pictures):
    on = _fetch_image(_config(tmp_path / "on", pictures, "  image_hashing: true"), pictures["planted"])
    off = _fetch_image(_config(tmp_path / "off", pictures, "  image_hashing: false"), pictures["planted"])
    assert _blocked(on)
    assert _delivered(off, pictures["planted"]) and off.response.stream is True  # not even buffered


@pytest.mark.parametrize("chunked", [False, True])
def test_max_image_bytes_is_the_hashing_cap(tmp_path, pictures, chunked):
    body = pictures["planted"]
    fits = _config(tmp_path / "fits", pictures, f"  max_image_bytes: {len(body)}")
    over = _config(tmp_path / "over", pictures, f"  max_image_bytes: {len(body) - 1}")
    f = _fetch_image(fits, body, chunked=chunked)
    assert _blocked(f)
    g = _fetch_image(over, body, chunked=chunked)
    assert _delivered(g, body)
    if chunked:  # no length to decide on: buffered up to the cap (mitmproxy streams the rest, see protocol.py)
        assert g.metadata[BODY_CAP] == len(body) - 1 and f.metadata[BODY_CAP] == len(body)
    else:  # decided from Content-Length: never buffered, never hashed
        assert g.response.stream is True


def test_pdq_max_distance_is_the_match_threshold(tmp_path, pictures):
    base = _config(tmp_path / "probe", pictures, "  pdq_max_distance: 255")
    assert _blocked(_fetch_image(base, pictures["copy"]))
    from filterproxy.match.imagehash.kinds import pdq_distance

    planted = hash_image_bytes(pictures["planted"])
    copy = hash_image_bytes(pictures["copy"])
    d = min(pdq_distance(planted.pdq, v) for v in copy.pdq_dihedral)
    assert 0 < d <= 31
    near = _config(tmp_path / "near", pictures, f"  pdq_max_distance: {d}")
    strict = _config(tmp_path / "strict", pictures, f"  pdq_max_distance: {d - 1}")
    assert _blocked(_fetch_image(near, pictures["copy"]))
    assert _delivered(_fetch_image(strict, pictures["copy"]), pictures["copy"])


@pytest.mark.parametrize("lang,expect", [("en", "This page is blocked"), ("vi", "Trang này đã bị chặn")])
def test_default_language_is_the_block_page_language(tmp_path, pictures, lang, expect):
    cfg = _config(tmp_path / lang, pictures, f"  default_language: {lang}")
    a = FilterAddon()
    with taddons.context(a) as tctx:
        tctx.configure(a, filterproxy_config=cfg, filterproxy_reload_signal=False)
        for headers in ({}, {"Accept-Language": "fr-FR, de;q=0.8"}):  # none, or none we speak
            f = _flow("http://blocked.test/", headers)
            assert a.requestheaders(f) is None
            assert f.response is not None and f.response.status_code == 403
            assert f'<html lang="{lang}"' in f.response.text and expect in f.response.text, f.response.text[:400]
        a.done()
