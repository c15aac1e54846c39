"""Shared test fixtures: where the real lists live, small config builders."""

from __future__ import annotations

import subprocess
import textwrap
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
from shared_data import DATA  # noqa: E402  (../shared/data, or beside the checkout this one was cloned from)

LISTS = DATA / "blocklists"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not LISTS.is_dir():
        pytest.fail(f"test data not found at {DATA} (set FILTERPROXY_TEST_DATA)")
    return DATA


def write_config(tmp_path: Path, body: str, policies: dict[str, str] | None = None) -> Path:
    """A config file in tmp_path with its own policies folder (names → YAML text)."""
    pdir = tmp_path / "policies"
    pdir.mkdir(exist_ok=True)
    for name, text in (policies or {}).items():
        (pdir / f"{name}.yaml").write_text(textwrap.dedent(text))
    cfg = tmp_path / "filterproxy.yaml"
    cfg.write_text(textwrap.dedent(body))
    return cfg


# Test layers (CONTRIBUTING.md): "e2e" tests start real processes and servers (filterproxy run, mitmdump,
# unbound, Prometheus, Chromium, nginx, sub-commands as subprocesses); everything else is "unit" and the whole
# unit layer runs in about a minute (`./test.sh -m unit`). A module is e2e as a whole, or single tests are.
E2E_MODULES = frozenset(
    {
        "test_cli",
        "test_config_reload",
        "test_deploy",
        "test_distribution_e2e",
        "test_dns_encrypted",
        "test_dns_mmsg",
        "test_dns_schedules",
        "test_dns_server",
        "test_dns_tcp",
        "test_dns_workers",
        "test_console_a11y_e2e",
        "test_console_e2e",
        "test_devices_seen_e2e",
        "test_fleet_metrics_e2e",
        "test_fullhash",
        "test_http_e2e",
        "test_http_header_timeout_e2e",
        "test_http_server",
        "test_http_stream_e2e",
        "test_http_failclosed_e2e",
        "test_images_e2e",
        "test_imagehash_cli",
        "test_imagehash_snapshot_delta_e2e",
        "test_ip_literals_e2e",
        "test_integration",
        "test_lists_refresh",
        "test_live_e2e",
        "test_querylog_e2e",
        "test_reviews_e2e",
        "test_metrics",
        "test_neighbours_e2e",
        "test_proxy_modes_e2e",
        "test_reports",
        "test_rpz",
        "test_rpz_ixfr_e2e",
        "test_state_cli",
        "test_secrets_e2e",
        "test_state_stats_e2e",
        "test_stats_api_e2e",
        "test_state_postgres_e2e",
        "test_http_host_e2e",
        "test_admin_e2e",
        "test_users_api_e2e",
        "test_lists_api_e2e",
        "test_console_reviews_e2e",
        "test_console_admin_e2e",
        "test_console_querylog_e2e",
        "test_console_pages_e2e",
    }
)
E2E_TESTS = frozenset(
    {
        "test_dns_fuzz.py::test_server_survives_fuzzing",
        "test_config.py::test_check_command_exit_codes",
        "test_state_store.py::test_a_returned_change_survives_kill_9",
    }
)


def start_logged(
    cmd: Sequence[str], ready_on: Sequence[str], **popen: Any
) -> tuple[subprocess.Popen[str], list[str], threading.Event]:
    """Start ``cmd`` with its output (stdout and stderr) collected line by line in a thread: the process,
    the lines so far, and an event set once each text of ``ready_on`` has appeared in some line."""
    p = subprocess.Popen(list(cmd), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen)
    out: list[str] = []
    ready = threading.Event()

    def pump() -> None:
        assert p.stdout is not None
        for line in p.stdout:
            out.append(line)
            if all(any(m in seen for seen in out) for m in ready_on):
                ready.set()

    threading.Thread(target=pump, daemon=True).start()
    return p, out, ready


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "unit: fast in-process tests (no servers, no subprocesses)")
    config.addinivalue_line("markers", "e2e: real processes and servers on 127.0.0.1, driven by real clients")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    seen: set[str] = set()
    for item in items:
        key = f"{item.path.name}::{getattr(item, 'originalname', item.name)}"
        seen.add(key)
        if item.get_closest_marker("e2e") or item.get_closest_marker("unit"):
            continue
        e2e = item.path.stem in E2E_MODULES or key in E2E_TESTS
        item.add_marker(pytest.mark.e2e if e2e else pytest.mark.unit)
    files = {k.partition("::")[0] for k in seen}
    stale = sorted(k for k in E2E_TESTS if k.partition("::")[0] in files and k not in seen)
    if stale:  # a renamed test would silently move to the unit layer
        raise pytest.UsageError(f"tests/conftest.py E2E_TESTS names tests that do not exist: {stale}")
