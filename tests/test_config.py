"""Configuration: shipped defaults load; every mistake is reported with file:line and what was expected."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import REPO, write_config

from filterproxy.config import ConfigError, load_config, load_yaml
from filterproxy.config.policy import parse_policy
from filterproxy.http.blockpage import LANGUAGES

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


@pytest.mark.parametrize("path", sorted((REPO / "policies").glob("*.yaml")), ids=lambda p: p.stem)
def test_shipped_policies_have_vietnamese_names(path):
    """The block page's main audience reads Vietnamese: every shipped policy names itself in vi (and en)."""
    pol = parse_policy(load_yaml(str(path)), path.stem, str(path))
    assert set(pol.names) == set(LANGUAGES)
    assert pol.names["en"] == pol.name
    assert pol.names["vi"] != pol.name and any(ord(c) > 127 for c in pol.names["vi"])  # really Vietnamese


def test_shipped_policies_folder_is_the_default_groups():
    assert {p.stem for p in (REPO / "policies").glob("*.yaml")} == DEFAULT_GROUPS


def test_policy_names_per_language(tmp_path):
    cfg = write_config(
        tmp_path,
        "",
        {
            "both": "name: Primary\nnames:\n  vi: '  Tiểu học (6–10 tuổi) '\n  en: Primary school\n",
            "vi-only": "name: Staff\nnames: {vi: Giáo viên}\n",
            "plain": "name: Teen (home)\n",
            "empty": "name: Adult\nnames: {}\n",
        },
    )
    groups = load_config(str(cfg)).groups
    assert groups["both"].names == {"vi": "Tiểu học (6–10 tuổi)", "en": "Primary school"}
    assert groups["both"].name == "Primary"  # the default stays as written
    assert groups["vi-only"].names == {"vi": "Giáo viên"}
    assert groups["plain"].names == {} and groups["plain"].name == "Teen (home)"
    assert groups["empty"].names == {}


def test_policy_example_in_readme_loads(tmp_path):
    """The README's policy example (``policies/<group>.yaml``) is a loadable policy."""
    import re

    text = (REPO / "README.md").read_text(encoding="utf-8")
    m = re.search(r"A policy \(`policies/<group>\.yaml`\):\n\n```yaml\n(.*?)```", text, re.S)
    assert m, "README must show an example policy"
    pol = load_config(str(write_config(tmp_path, "", {"example": m.group(1)}))).groups["example"]
    assert pol.names == {"vi": "Trung học cơ sở (11–14 tuổi)", "en": "Lower secondary (11–14)"}
    assert pol.schedules and pol.allow


P_OK = {"g": "name: G\nblock_categories: [adult]\n"}


@pytest.mark.parametrize(
    "body,policies,line,needle",
    [
        ("server:\n  dns_listen: [1, 2\n", P_OK, 3, "flow sequence started at line 2"),
        ("server:\n  dns_lissten: 127.0.0.1:53\n", P_OK, 2, "unknown key 'server.dns_lissten'"),
        ("server:\n  dns_listen: 127.0.0.1:99999\n", P_OK, 2, "HOST:PORT"),
        ("cache:\n  size: lots\n", P_OK, 2, "'cache.size' must be int"),
        ("upstreams:\n  strategy: random\n", P_OK, 2, "must be one of failover, parallel"),
        (
            "lists:\n  - id: a\n    category: adult\n    format: hostz\n    path: x\n",
            P_OK,
            4,
            "'format' must be one of",
        ),
        (
            "lists:\n  - id: a\n    category: adult\n    format: hosts\n    path: missing.txt\n",
            P_OK,
            5,
            "file not found",
        ),
        ("default_group: nobody\n", P_OK, 1, "not a defined group"),
        ("clients:\n  - {cidr: 10.0.0.0/33, group: g}\n", P_OK, 2, "invalid cidr"),
        ("clients:\n  - {cidr: 10.0.0.0/8, group: nope}\n", P_OK, 2, "unknown group"),
        ("timezone: Mars/Olympus\n", P_OK, 1, "unknown time zone"),
        ("cache:\n  size: 100\n  sweep_interval: 0\n", P_OK, 3, "'cache.sweep_interval' must be at least 1"),
        ("http:\n  header_timeout: -1\n", P_OK, 2, "'http.header_timeout' must be a non-negative number"),
        ("http:\n  header_timeout: .nan\n", P_OK, 2, "'http.header_timeout' must be a non-negative number"),
        ("http:\n  header_timeout: soon\n", P_OK, 2, "'http.header_timeout' must be int or float"),
        ("", {"g": "name: G\nblock_categories: [adlt]\n"}, None, "unknown category 'adlt'"),
        (
            "",
            {"g": "name: G\nschedules:\n  - {name: s, days: [funday], block_categories: [games]}\n"},
            3,
            "unknown day",
        ),
        (
            "",
            {"g": "name: G\nschedules:\n  - name: s\n    from: '25:00'\n    block_categories: [games]\n"},
            4,
            "expected a time",
        ),
        ("", {"g": "name: G\nsafesearch: maybe\n"}, 2, "must be one of off, moderate, strict"),
        ("", {"g": "name: G\nallow: ['bad..name']\n"}, 2, "empty label"),
        (
            "",
            {"g": "name: G\nnames:\n  vi: Gờ\n  fr: Gé\n"},
            4,
            "'policy g.names' has unknown language 'fr' (expected keys: vi, en)",
        ),
        ("", {"g": "name: G\nnames: {vi: 3}\n"}, 2, "'policy g.names.vi' must be a non-empty string, got 3"),
        ("", {"g": "name: G\nnames:\n  en: G\n  vi: '  '\n"}, 4, "'policy g.names.vi' must be a non-empty string"),
        ("", {"g": "name: G\nnames: Gờ\n"}, 2, "'policy g.names' must be dict"),
    ],
)
def test_errors_name_file_line_and_expectation(tmp_path, body, policies, line, needle):
    cfg = write_config(tmp_path, body, policies)
    with pytest.raises(ConfigError) as exc:
        load_config(str(cfg))
    msg = str(exc.value)
    assert needle in msg
    if line is not None:
        assert f":{line}:" in msg, msg
    assert str(tmp_path) in msg


@pytest.mark.parametrize(
    "body,line,key",
    [
        ("metrics:\n  push_url: http://pgw.example:9091\n", 2, "push_url"),
        ("metrics:\n  basic_auth_user: prometheus\n  push_interval: 30\n", 3, "push_interval"),
        ("metrics:\n  push_grouping: {school: thcs-1}\n", 2, "push_grouping"),
        ("metrics:\n  push_basic_auth_user: gw\n", 2, "push_basic_auth_user"),
        ("metrics:\n  push_password_file: push.pw\n", 2, "push_password_file"),
        ("metrics:\n  push_password: s3cret\n", 2, "push_password"),
    ],
)
def test_removed_pushgateway_keys_say_what_replaced_them(tmp_path, body, line, key):
    """The Pushgateway push is gone: an old config fails at its push key, naming the Prometheus agent instead."""
    cfg = write_config(tmp_path, body, P_OK)
    with pytest.raises(ConfigError) as exc:
        load_config(str(cfg))
    msg = str(exc.value)
    assert msg.startswith(f"{cfg}:{line}: 'metrics.{key}': the Pushgateway push was removed; "), msg
    assert "run a Prometheus agent that scrapes this gateway and remote-writes (deploy/ministry.md §5)" in msg
    assert "unknown key" not in msg


def test_check_command_exit_codes(tmp_path):
    ok = subprocess.run([sys.executable, "-m", "filterproxy", "check"], capture_output=True, text=True, cwd=REPO)
    assert ok.returncode == 0, ok.stderr
    assert "OK" in ok.stdout and "default-illegal" in ok.stdout
    cfg = write_config(tmp_path, "cache:\n  size: -x\n", P_OK)
    bad = subprocess.run(
        [sys.executable, "-m", "filterproxy", "check", "--config", str(cfg)], capture_output=True, text=True
    )
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
