"""Response checks fail closed without forwarding the upstream body: a real ``mitmdump`` with the addon, a raw
client, a local backend whose every body carries a marker string.

* a response check that raises in ``responseheaders`` (plain and chunked bodies, a buffered image): the client
  gets a closed connection and not one byte of the upstream body (a block page set there would carry it);
* a check that raises in ``response`` on a buffered image: the block page (reason ``error``), no body byte;
  on a streamed body: the connection is closed before the end of the message (its bytes already left);
* a listed picture whose length fits the cap (a block decided on a buffered body): the block page only.

The failing check is a second script (``boom.py``) that registers itself with the filter's addon.
"""

from __future__ import annotations

import socket

import numpy as np
import pytest
from conftest import write_config
from http_peers import routed_proxy
from test_http_e2e import stop
from test_http_stream_e2e import BlobServer
from test_imagehash import jpeg, natural

from filterproxy.match.imagehash import hash_image_bytes

MARKER = b"UPSTREAM-BODY-MARKER-7f3a"
CAP = 256 * 1024
BOOM = """
from mitmproxy import ctx


class _Check:
    def responseheaders(self, flow, info):
        if "boom-headers" in flow.request.path:
            raise RuntimeError("test: a response check fails in responseheaders")

    def response(self, flow, info):
        if "boom-response" in flow.request.path:
            raise RuntimeError("test: a response check fails in response")
        return None


class Boom:
    def running(self):
        ctx.master.addons.get("filteraddon").add_response_check(_Check())


addons = [Boom()]
"""


def _marked_jpeg(seed: int) -> bytes:
    """A JPEG under the cap with MARKER in a comment segment (still a valid picture to hash)."""
    pic = jpeg(natural(np.random.default_rng(seed), 160, 120), 85)
    com = b"\xff\xfe" + (len(MARKER) + 2).to_bytes(2, "big") + MARKER
    return pic[:2] + com + pic[2:]


@pytest.fixture(scope="module")
def proxy(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("http-failclosed")
    text = MARKER * 4000  # 100 kB
    listed, unlisted = _marked_jpeg(1), _marked_jpeg(2)
    assert len(listed) < CAP and len(unlisted) < CAP
    files = {
        "/page": text,
        "/boom-headers": text,
        "/boom-headers.jpg": unlisted,
        "/boom-response": text,
        "/boom-response.jpg": unlisted,
        "/listed.jpg": listed,
    }
    backend = BlobServer(files)
    (tmp / "images.txt").write_text(f"sha256:{hash_image_bytes(listed).sha256},item-1\n")
    cfg = write_config(
        tmp,
        f"""
        timezone: Asia/Ho_Chi_Minh
        http:
          max_image_bytes: {CAP}
        lists:
          - {{id: csam, category: illegal, format: imagehash, legal: true, path: images.txt}}
    """,
        {"pupil": "name: Pupil\ntone: child\nblock_categories: []\n"},
    )
    (tmp / "boom.py").write_text(BOOM)
    port, p = routed_proxy(tmp, cfg, backend.port, tmp / "boom.py")
    yield port
    stop(p)
    backend.close()


def fetch(port: int, target: str) -> bytes:
    """Every byte the client receives for one request, until the proxy closes the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as c:
        c.sendall(
            b"GET http://files.test%s HTTP/1.1\r\nHost: files.test\r\nConnection: close\r\n\r\n" % target.encode()
        )
        out = b""
        while chunk := c.recv(65536):
            out += chunk
    return out


@pytest.mark.parametrize("chunked", ["0", "1"])
def test_the_marker_reaches_the_client_when_nothing_fails(proxy, chunked):
    out = fetch(proxy, f"/page?type=text/plain&chunked={chunked}")
    assert out.startswith(b"HTTP/1.1 200") and MARKER in out  # the marker is seen when it is there


@pytest.mark.parametrize(
    "target",
    [
        "/boom-headers?type=text/plain",
        "/boom-headers?type=text/plain&chunked=1",
        "/boom-headers.jpg?type=image/jpeg",  # buffered for the image check, then a later check fails
        "/boom-headers.jpg?type=image/jpeg&chunked=1",
    ],
)
def test_check_failing_in_responseheaders_forwards_no_body_byte(proxy, target):
    out = fetch(proxy, target)
    assert MARKER not in out, out[:400]
    assert out == b"", out[:400]  # closed: not even headers that the upstream body could follow


@pytest.mark.parametrize("chunked", ["0", "1"])
def test_check_failing_in_response_on_a_buffered_image_shows_the_block_page(proxy, chunked):
    out = fetch(proxy, f"/boom-response.jpg?type=image/jpeg&chunked={chunked}")
    assert out.startswith(b"HTTP/1.1 403") and b"X-Filterproxy-Reason: error" in out, out[:400]
    assert MARKER not in out


def test_check_failing_in_response_on_a_streamed_body_cuts_it_short(proxy):
    out = fetch(proxy, "/boom-response?type=text/plain&chunked=1")
    assert out.startswith(b"HTTP/1.1 200")  # streamed: headers and body left before the check ran
    assert not out.endswith(b"0\r\n\r\n"), out[-40:]  # but the message never completes


@pytest.mark.parametrize("chunked", ["0", "1"])
def test_listed_picture_that_fits_is_replaced_without_a_byte_of_it(proxy, chunked):
    out = fetch(proxy, f"/listed.jpg?type=image/jpeg&chunked={chunked}")
    assert out.startswith(b"HTTP/1.1 451"), out[:400]
    assert MARKER not in out
