"""Shared test fixtures: where the real lists live, small config builders."""

from __future__ import annotations

import textwrap
from pathlib import Path

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
