"""``POST /api/v1/lists/update`` on a real ``filterproxy run``: it runs ``filterproxy lists update`` in the
background, then the reload; ``GET /api/v1/lists/update`` shows the progress; a source that fails to
download is named with its error in the job and in ``GET /status``; teachers are refused."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest
import yaml

from filterproxy.dns.testing import FakeUpstream

sys.path.insert(0, str(Path(__file__).parent))
from test_admin_e2e import Api, _start  # noqa: E402
from test_http_e2e import free_port  # noqa: E402


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    up = FakeUpstream().start()
    tmp = tmp_path_factory.mktemp("lists")
    proc, cfg, tokens = _start(tmp, up, "--proxy-listen", "off", "--metrics-listen", "off")
    a = Api(proc, cfg, tokens)
    yield a
    proc.stop()
    up.stop()


def _add_broken_source(cfg: Path) -> None:
    """A downloaded list whose server is not there (its download fails; the others still compile)."""
    doc = yaml.safe_load(cfg.read_text())
    url = f"http://127.0.0.1:{free_port()}/ads.txt"
    doc["lists"].append({"id": "ads", "category": "ads", "format": "domains", "url": url})
    cfg.write_text(yaml.safe_dump(doc))


def _wait(s, api) -> dict:
    deadline = time.monotonic() + 120
    while True:
        job = s.get(f"{api.base}/lists/update", timeout=10).json()
        if job["state"] in ("done", "failed"):
            return job
        assert time.monotonic() < deadline, job
        time.sleep(0.2)


def test_update_runs_the_command_then_the_reload(api):
    boss = api.session(api.tokens["boss"])
    assert boss.get(f"{api.base}/lists/update", timeout=10).json() == {"state": "idle"}
    gen = boss.get(f"{api.base}/status", timeout=10).json()["config"]["generation"]
    r = boss.post(f"{api.base}/lists/update", timeout=10)
    assert r.status_code == 202 and r.json()["state"] == "running" and r.json()["by"] == "boss", r.text
    job = _wait(boss, api)
    assert job["state"] == "done" and job["exit_code"] == 0 and job["reloaded"] is True, job
    assert any(line.startswith("snapshot ") for line in job["output"]), job["output"]
    assert boss.get(f"{api.base}/status", timeout=10).json()["config"]["generation"] == gen + 1


def test_a_failed_download_is_reported(api):
    _add_broken_source(api.cfg)
    boss = api.session(api.tokens["boss"])
    assert boss.post(f"{api.base}/lists/update", timeout=10).status_code == 202
    job = _wait(boss, api)
    assert job["state"] == "failed" and job["exit_code"] == 1, job
    assert "ads" in job["errors"] and job["errors"]["ads"], job
    lists = {li["id"]: li for li in boss.get(f"{api.base}/status", timeout=10).json()["lists"]}
    assert lists["adult"]["error"] is None and lists["adult"]["signature"] is None
    assert lists["adult"]["entries"] == 1


def test_teachers_cannot_update(api):
    ms = api.session(api.tokens["ms"])
    assert ms.post(f"{api.base}/lists/update", timeout=10).status_code == 403
    assert ms.get(f"{api.base}/lists/update", timeout=10).status_code == 403


def test_the_openapi_document_names_it(api):
    paths = api.session().get(f"{api.base}/openapi.json", timeout=10).json()["paths"]
    assert set(paths["/api/v1/lists/update"]) == {"get", "post"}
    assert paths["/api/v1/lists/update"]["post"]["description"] == "admins only"
