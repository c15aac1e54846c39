"""Secrets and passwords of a running ``filterproxy run``, checked by the real peers that use them.

* a real Prometheus scrapes ``/metrics`` over TLS with Basic auth (argon2id hash in filterproxy's config,
  the password in Prometheus's): the target is up; a job with the wrong password is down (401);
* the report spool delivers with ``Authorization: Bearer <reports.token_file>`` to a local endpoint;
* ``filterproxy passwd`` and ``filterproxy check`` (old hashes, unreadable secret files refused);
* the DNS-only serving process imports no cryptography, even with TLS and Basic auth on /metrics.

Proxy users with argon2id hashes through a real proxy: tests/test_http_e2e.py::test_proxy_auth_groups.
"""

from __future__ import annotations

import http.server
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests
import yaml
from tlsutil import self_signed

from filterproxy.dns.testing import FakeUpstream, ServerProcess
from filterproxy.passwords import hash_password, verify_password
from filterproxy.reports import ReportSpool

REPO = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _secret(path: Path, text: str) -> str:
    path.write_text(text + "\n")
    os.chmod(path, 0o600)
    return str(path)


def _self_signed(tmp_path: Path) -> tuple[str, str]:
    return self_signed(tmp_path, cn="gateway-metrics", names=(), days=1, files=("metrics.crt", "metrics.key"))


def _config(tmp_path: Path, upstream: FakeUpstream, extra: dict) -> Path:
    (tmp_path / "policies").mkdir(exist_ok=True)
    (tmp_path / "policies" / "kids.yaml").write_text("name: Kids\nblock_categories: [adult]\n")
    (tmp_path / "adult.txt").write_text("blocked.example\n")
    doc = {
        "server": {"state_dir": str(tmp_path / "state"), "gateway_id": "gw-secrets"},
        "upstreams": {"servers": [upstream.address], "timeout": 1.0},
        "dns": {"allowed_networks": ["127.0.0.0/8"], "rate_limit": 0},
        "policies_dir": "policies",
        "groups": ["kids"],
        "default_group": "kids",
        "lists": [{"id": "adult", "category": "adult", "format": "domains", "path": str(tmp_path / "adult.txt")}],
        **extra,
    }
    cfg = tmp_path / "filterproxy.yaml"
    cfg.write_text(yaml.safe_dump(doc))
    return cfg


@pytest.fixture
def upstream():
    up = FakeUpstream().start()
    yield up
    up.stop()


def _run(tmp_path: Path, cfg: Path, *flags: str) -> ServerProcess:
    args = ["--config", str(cfg), "--dns-listen", "127.0.0.1:0", *flags]
    if "--proxy-listen" not in flags:
        args += ["--proxy-listen", "off"]
    if "--metrics-listen" not in flags:
        args += ["--metrics-listen", "off"]
    return ServerProcess(args, log_path=str(tmp_path / "run.log")).start()


def _wait(what: str, check, timeout: float = 60, log: ServerProcess | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(0.2)
    raise AssertionError(f"{what} never happened" + (":\n" + log.output()[-3000:] if log else ""))


# ------------------------------------------------------------------- Prometheus over TLS with Basic auth


def _prometheus(tmp_path: Path, scrape_configs: list[dict]) -> tuple[subprocess.Popen, str]:
    binary = shutil.which("prometheus")
    assert binary, "prometheus not installed (test.sh installs Debian's prometheus)"
    port = _free_port()
    conf = tmp_path / "prometheus.yml"
    conf.write_text(
        yaml.safe_dump(
            {"global": {"scrape_interval": "1s", "evaluation_interval": "1s"}, "scrape_configs": scrape_configs}
        )
    )
    log = open(tmp_path / "prometheus.log", "w")
    p = subprocess.Popen(
        [
            binary,
            f"--config.file={conf}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=log,
    )
    log.close()
    return p, f"http://127.0.0.1:{port}"


def _up(base: str, job: str) -> float | None:
    try:
        doc = requests.get(f"{base}/api/v1/query", params={"query": f'up{{job="{job}"}}'}, timeout=5).json()
    except requests.RequestException:
        return None
    res = doc.get("data", {}).get("result", [])
    return float(res[0]["value"][1]) if res else None


def test_prometheus_scrapes_metrics_over_tls_with_basic_auth(tmp_path, upstream):
    password = "scrape-" + os.urandom(8).hex()
    certfile, keyfile = _self_signed(tmp_path)
    cfg = _config(
        tmp_path,
        upstream,
        {
            "metrics": {
                "basic_auth_user": "prometheus",
                "basic_auth_hash": hash_password(password),
                "tls_cert_file": certfile,
                "tls_key_file": keyfile,
            }
        },
    )
    proc = _run(tmp_path, cfg, "--metrics-listen", "127.0.0.1:0")
    prom = None
    try:
        assert proc.metrics_url and proc.metrics_url.startswith("https://127.0.0.1:"), proc.output()[-2000:]
        url = f"{proc.metrics_url}/metrics"
        assert requests.get(url, verify=certfile, timeout=10).status_code == 401
        assert requests.get(url, verify=certfile, auth=("prometheus", "wrong"), timeout=10).status_code == 401
        ok = requests.get(url, verify=certfile, auth=("prometheus", password), timeout=10)
        assert ok.status_code == 200 and "filterproxy_build_info" in ok.text
        with pytest.raises(requests.RequestException):  # no plain HTTP on the TLS port
            requests.get(url.replace("https://", "http://"), timeout=5)

        target = url.split("/")[2]
        (tmp_path / "prom.pw").write_text(password)
        job = {
            "scheme": "https",
            "tls_config": {"ca_file": certfile},
            "static_configs": [{"targets": [target]}],
        }
        prom, base = _prometheus(
            tmp_path,
            [
                {
                    "job_name": "good",
                    **job,
                    "basic_auth": {"username": "prometheus", "password_file": str(tmp_path / "prom.pw")},
                },
                {"job_name": "bad", **job, "basic_auth": {"username": "prometheus", "password": "not-it"}},
            ],
        )
        _wait("the good job up", lambda: _up(base, "good") == 1 and _up(base, "bad") is not None)
        assert _up(base, "good") == 1
        assert _up(base, "bad") == 0
        targets = requests.get(f"{base}/api/v1/targets", timeout=5).json()["data"]["activeTargets"]
        bad = next(t for t in targets if t["labels"]["job"] == "bad")
        assert "401" in bad["lastError"], bad
    finally:
        if prom is not None:
            prom.terminate()
            prom.wait(timeout=20)
        proc.stop()


# ------------------------------------------------------------------- reports with a bearer token


class _Recorder(http.server.BaseHTTPRequestHandler):
    got: list[tuple[str | None, dict]] = []

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        type(self).got.append((self.headers.get("Authorization"), json.loads(body)))
        self.send_response(201)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args) -> None:
        pass


def test_reports_are_delivered_with_the_bearer_token_from_its_file(tmp_path, upstream):
    _Recorder.got = []
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    token = "tok-" + os.urandom(12).hex()
    spool = tmp_path / "spool"
    cfg = _config(
        tmp_path,
        upstream,
        {
            "reports": {
                "endpoint": f"http://127.0.0.1:{srv.server_address[1]}/reports",
                "spool": str(spool),
                "token_file": _secret(tmp_path / "reports.token", token),
            }
        },
    )
    # a match a proxy worker spooled (the runner delivers whatever is pending)
    report = ReportSpool(str(spool), None, gateway_id="gw-secrets").submit(
        list_id="csam", item_id="i-1", match_kind="sha256"
    )
    proc = _run(tmp_path, cfg, "--proxy-listen", "127.0.0.1:0")
    try:
        _wait("the report delivered", lambda: _Recorder.got, log=proc)
        [(authorization, body)] = _Recorder.got
        assert authorization == f"Bearer {token}"
        assert body["id"] == report.id
    finally:
        proc.stop()
        srv.shutdown()


# ------------------------------------------------------------------- passwd, check


def _cli(*args: str, stdin: str = "") -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "filterproxy", *args], input=stdin, capture_output=True, text=True, cwd=REPO, timeout=120
    )


def test_passwd_prints_an_argon2id_hash_of_stdin():
    r = _cli("passwd", stdin="pa ss:wörd\n")
    assert r.returncode == 0, r.stderr
    h = r.stdout.strip()
    assert h.startswith("$argon2id$v=19$") and verify_password(h, "pa ss:wörd")
    r = _cli("passwd", stdin="\n")
    assert r.returncode == 2 and "empty password" in r.stderr


def test_check_refuses_old_hashes_and_unusable_secret_files(tmp_path, upstream):
    old_metrics = {"metrics": {"basic_auth_user": "p", "basic_auth_hash": "sha256:" + "ab" * 32}}
    r = _cli("check", "--config", str(_config(tmp_path, upstream, old_metrics)))
    assert r.returncode == 2
    assert "filterproxy.yaml:" in r.stderr and "unsalted SHA-256" in r.stderr and "filterproxy passwd" in r.stderr

    users = tmp_path / "users.txt"
    users.write_text("lab1:kids:00112233445566778899aabbccddeeff$" + "ab" * 32 + "\n")
    r = _cli("check", "--config", str(_config(tmp_path, upstream, {"http": {"users_file": str(users)}})))
    assert r.returncode == 2
    assert f"{users}:1: user 'lab1': the old scrypt salt$hash form" in r.stderr and "filterproxy passwd" in r.stderr

    users.write_text(f"lab1:kids:{hash_password('pw')}\n")
    r = _cli("check", "--config", str(_config(tmp_path, upstream, {"http": {"users_file": str(users)}})))
    assert r.returncode == 0, r.stderr

    cfg = _config(tmp_path, upstream, {"reports": {"token_file": str(tmp_path / "nope.token")}})
    r = _cli("check", "--config", str(cfg))
    assert r.returncode == 2 and f"{tmp_path / 'nope.token'}" in r.stderr and "filterproxy.yaml:" in r.stderr
    (tmp_path / "open.token").write_text("t\n")
    os.chmod(tmp_path / "open.token", 0o644)
    r = _cli(
        "check", "--config", str(_config(tmp_path, upstream, {"reports": {"token_file": str(tmp_path / "open.token")}}))
    )
    assert r.returncode == 0 and "can be read by anyone (mode 644); chmod 600 it" in r.stderr, r.stderr
    # and run refuses to start on an unreadable secret, naming the config line and the path
    cfg = _config(tmp_path, upstream, {"reports": {"token_file": str(tmp_path / "nope.token")}})
    r = _cli(
        "run", "--config", str(cfg), "--dns-listen", "127.0.0.1:0", "--proxy-listen", "off", "--metrics-listen", "off"
    )
    assert r.returncode == 2 and "'reports.token_file': cannot read the secret file" in r.stderr, r.stderr


# ------------------------------------------------------------------- what the serving process imports

_SERVE = """
import asyncio, sys
from filterproxy.cli import build_parser, load_engine
from filterproxy.runner import Runner, apply_overrides

args = build_parser().parse_args(
    ["run", "--config", sys.argv[1], "--dns-listen", "127.0.0.1:0", "--proxy-listen", "off",
     "--metrics-listen", "127.0.0.1:0"]
)
cfg, engine = load_engine(args.config, [], [])
apply_overrides(args, cfg)


async def main():
    r = Runner(args, cfg, engine)
    await r.start()
    print(r.metrics_server.url, r.secrets.reports_token is not None)
    print(sorted({m.split(".")[0] for m in sys.modules} & {"cryptography", "mitmproxy", "numpy"}))
    await r.stop()

asyncio.run(main())
"""


def test_dns_only_serving_process_imports_no_cryptography_even_with_tls_metrics(tmp_path, upstream):
    """TLS on /metrics is the standard ssl module and argon2 its own binding: with the proxy off, the
    serving process imports neither cryptography nor mitmproxy (with the proxy on, the main process
    creates the mitmproxy CA, which does)."""
    certfile, keyfile = _self_signed(tmp_path)
    cfg = _config(
        tmp_path,
        upstream,
        {
            "metrics": {
                "basic_auth_user": "prometheus",
                "basic_auth_hash": hash_password("pw"),
                "tls_cert_file": certfile,
                "tls_key_file": keyfile,
            },
            "reports": {"token_file": _secret(tmp_path / "t", "tok")},
        },
    )
    r = subprocess.run([sys.executable, "-c", _SERVE, str(cfg)], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert r.returncode == 0, r.stderr
    first, modules = r.stdout.splitlines()[:2]
    assert first.startswith("https://127.0.0.1:") and first.endswith(" True"), r.stdout
    assert modules == "[]", r.stdout
