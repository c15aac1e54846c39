"""Configuration: shipped defaults load; every mistake is reported with file:line and what was expected."""

from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import REPO, write_config
from filterproxy.config import ConfigError, load_config

DEFAULT_GROUPS = {"primary", "lower-secondary", "upper-secondary", "staff", "child", "teen", "adult"}
MINORS = DEFAULT_GROUPS - {"staff", "adult"}


def test_embedded_default_config_loads():
    cfg = load_config(None)
    assert set(cfg.groups) == DEFAULT_GROUPS
    assert cfg.server.dns_listen == ("127.0.0.1", 5353)
    assert cfg.server.proxy_listen == ("127.0.0.1", 8080)
    assert cfg.server.metrics_listen == ("127.0.0.1", 9108)
    assert any(s.is_legal for s in cfg.lists)


@pytest.mark.parametrize("group", sorted(MINORS))
def test_minors_get_strict_safesearch_and_core_categories(group):
    pol = load_config(None).groups[group]
    assert pol.safesearch == "strict"
    assert {"adult", "gambling", "drugs", "malware", "phishing", "bypass"} <= pol.block_categories
    assert pol.bypass_defences


def test_school_hours_and_bedtime_schedules_shipped():
    cfg = load_config(None)
    lower = cfg.groups["lower-secondary"]
    assert any(s.name == "school-hours" and "social" in s.block and "games" in s.block for s in lower.schedules)
    assert any(s.allow_only for s in cfg.groups["child"].schedules)


P_OK = {"g": "name: G\nblock_categories: [adult]\n"}


@pytest.mark.parametrize("body,policies,line,needle", [
    ("server:\n  dns_listen: [1, 2\n", P_OK, 3, "flow sequence started at line 2"),
    ("server:\n  dns_lissten: 127.0.0.1:53\n", P_OK, 2, "unknown key 'server.dns_lissten'"),
    ("server:\n  dns_listen: 127.0.0.1:99999\n", P_OK, 2, "HOST:PORT"),
    ("cache:\n  size: lots\n", P_OK, 2, "'cache.size' must be int"),
    ("upstreams:\n  strategy: random\n", P_OK, 2, "must be one of failover, parallel"),
    ("lists:\n  - id: a\n    category: adult\n    format: hostz\n    path: x\n", P_OK, 4, "'format' must be one of"),
    ("lists:\n  - id: a\n    category: adult\n    format: hosts\n    path: missing.txt\n", P_OK, 5, "file not found"),
    ("default_group: nobody\n", P_OK, 1, "not a defined group"),
    ("clients:\n  - {cidr: 10.0.0.0/33, group: g}\n", P_OK, 2, "invalid cidr"),
    ("clients:\n  - {cidr: 10.0.0.0/8, group: nope}\n", P_OK, 2, "unknown group"),
    ("timezone: Mars/Olympus\n", P_OK, 1, "unknown time zone"),
    ("", {"g": "name: G\nblock_categories: [adlt]\n"}, None, "unknown category 'adlt'"),
    ("", {"g": "name: G\nschedules:\n  - {name: s, days: [funday], block_categories: [games]}\n"}, 3, "unknown day"),
    ("", {"g": "name: G\nschedules:\n  - name: s\n    from: '25:00'\n    block_categories: [games]\n"}, 4, "expected a time"),
    ("", {"g": "name: G\nsafesearch: maybe\n"}, 2, "must be one of off, moderate, strict"),
    ("", {"g": "name: G\nallow: ['bad..name']\n"}, 2, "empty label"),
])
def test_errors_name_file_line_and_expectation(tmp_path, body, policies, line, needle):
    cfg = write_config(tmp_path, body, policies)
    with pytest.raises(ConfigError) as exc:
        load_config(str(cfg))
    msg = str(exc.value)
    assert needle in msg
    if line is not None:
        assert f":{line}:" in msg, msg
    assert str(tmp_path) in msg


def test_check_command_exit_codes(tmp_path):
    ok = subprocess.run([sys.executable, "-m", "filterproxy", "check"], capture_output=True, text=True, cwd=REPO)
    assert ok.returncode == 0, ok.stderr
    assert "OK" in ok.stdout and "default-illegal" in ok.stdout
    cfg = write_config(tmp_path, "cache:\n  size: -x\n", P_OK)
    bad = subprocess.run([sys.executable, "-m", "filterproxy", "check", "--config", str(cfg)],
                         capture_output=True, text=True)
    assert bad.returncode != 0
    assert f"{cfg}:2:" in bad.stderr


def test_example_configs_in_docs_load(tmp_path):
    """Every ```yaml block marked 'filterproxy.yaml' in README/deploy guides is a loadable config."""
    import re

    docs = [REPO / "README.md", *sorted((REPO / "deploy").glob("*.md"))]
    n = 0
    for doc in docs:
        if not doc.exists():
            continue
        for m in re.finditer(r"```yaml\n# filterproxy\.yaml[^\n]*\n(.*?)```", doc.read_text(), re.S):
            text = m.group(1).replace("policies_dir: /opt/filterproxy/policies", f"policies_dir: {REPO / 'policies'}")
            text = text.replace("/opt/filterproxy/", f"{REPO}/")
            p = tmp_path / f"ex{n}.yaml"
            p.write_text(text)
            load_config(str(p))
            n += 1
    assert n >= 1, "README must show at least one complete example configuration"
