"""``server.proxy_modes``, ``http.inspect_https`` and ``http.listener_groups`` reach the proxy workers of
``filterproxy run``: the extra listeners listen, a listener's group decides its requests, and with
``inspect_https: false`` an allowed HTTPS tunnel passes unopened while a blocked host still gets the page."""

from __future__ import annotations

import sys

import pytest
import requests
from conftest import start_logged, write_config
from test_http_e2e import Upstream, free_port, make_cert, stop
from test_http_server import listening_sockets

POLICIES = {
    "pupil": "name: Pupil\ntone: child\nblock_categories: [adult, social]\n",
    "staff": "name: Staff\ntone: adult\nblock_categories: [adult]\n",
}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("proxy-modes")
    cert, key = make_cert(tmp)
    up = Upstream(cert, key)
    (tmp / "adult.txt").write_text("blocked.example\n")
    (tmp / "social.txt").write_text("social.example\n")
    main, pupil_port, transparent = free_port(), free_port(), free_port()
    cfg = write_config(
        tmp,
        f"""
        timezone: Asia/Ho_Chi_Minh
        server:
          proxy_listen: 127.0.0.1:{main}
          proxy_modes: [regular, "regular@{pupil_port}", "transparent@{transparent}"]
        http:
          inspect_https: false
          listener_groups: {{{pupil_port}: pupil}}
        clients:
          - {{cidr: 127.0.0.0/8, group: staff}}
        lists:
          - {{id: adult, category: adult, format: domains, match: subdomains, path: adult.txt}}
          - {{id: social, category: social, format: domains, match: subdomains, path: social.txt}}
        """,
        POLICIES,
    )
    state = tmp / "state"
    cmd = [sys.executable, "-m", "filterproxy", "run", "--config", str(cfg), "--state-dir", str(state)]
    cmd += ["--dns-listen", "off", "--metrics-listen", "off", "--proxy-workers", "2"]
    p, out, ready = start_logged(cmd, ["proxy listening on"], cwd=str(tmp))
    try:
        assert ready.wait(90), "".join(out)
        yield {
            "main": main,
            "pupil": pupil_port,
            "transparent": transparent,
            "ca": str(state / "mitmproxy" / "mitmproxy-ca-cert.pem"),
            "upstream_cert": cert,
            "https_port": up.https.server_address[1],
            "out": out,
        }
    finally:
        stop(p)
        up.close()


def get(port: int, url: str, verify) -> requests.Response:
    s = requests.Session()
    s.trust_env = False
    proxy = f"http://127.0.0.1:{port}"
    return s.get(url, proxies={"http": proxy, "https": proxy}, verify=verify, timeout=15)


def test_every_configured_listener_listens_in_every_worker(run):
    assert listening_sockets(run["main"]) == 2
    assert listening_sockets(run["pupil"]) == 2
    assert listening_sockets(run["transparent"]) == 2
    assert f"transparent@{run['transparent']}" in "".join(run["out"])


def test_listener_group_decides_its_requests(run):
    r = get(run["main"], "http://social.example/", None)  # 127.0.0.1 → staff: social allowed (no route: 502)
    assert r.status_code != 403 and "X-Filterproxy-Reason" not in r.headers
    r = get(run["pupil"], "http://social.example/", None)  # the pupil listener: blocked
    assert r.status_code == 403 and r.headers["X-Filterproxy-Reason"] == "category/social/social"


def test_inspect_https_off_passes_allowed_tunnels_unopened(run):
    # the client verifies the upstream's own certificate: only an unopened tunnel can pass this
    r = get(run["main"], f"https://127.0.0.1:{run['https_port']}/tunnel", run["upstream_cert"])
    assert r.status_code == 200 and r.text == "upstream ok /tunnel"


def test_inspect_https_off_still_decides_the_host(run):
    r = get(run["main"], "https://blocked.example/", run["ca"])
    assert r.status_code == 403 and r.headers["X-Filterproxy-Reason"] == "category/adult/adult"
