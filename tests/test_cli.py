"""`filterproxy explain` end to end (a real process), with every list format via --extra-list."""

from __future__ import annotations

import gzip
import json
import random
import subprocess
import sys

import pytest
from conftest import LISTS, REPO, write_config


def explain(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "filterproxy", "explain", *args],
        capture_output=True,
        text=True,
        input=stdin,
        cwd=REPO,
        timeout=120,
    )


def sample_names(path, fmt, k=25, seed=1):
    """Names a list blocks, picked at random from the raw file (independently of our parser)."""
    opener = gzip.open if str(path).endswith(".gz") else open
    names = []
    with opener(path, "rt", encoding="utf-8") as f:
        for line in f:
            s = line.strip()
            if not s or s[0] in "#!;[$@":
                continue
            if fmt == "hosts":
                parts = s.split()
                names += [p for p in parts[1:] if "." in p and p != "0.0.0.0"]
            elif fmt == "adblock" and s.startswith("||") and s.endswith("^") and "*" not in s:
                names.append(s[2:-1])
            elif fmt == "wildcard" and s.startswith("*."):
                names.append(s[2:])
            elif fmt == "rpz" and s.endswith("CNAME .") and not s.startswith("*"):
                names.append(s.split()[0])
            elif fmt in ("domains", "ut1") and s[0].isalnum() and not s.replace(".", "").isdigit():
                names.append(s.split()[0])
    rnd = random.Random(seed)
    return rnd.sample(names, min(k, len(names)))


CASES = [
    ("hosts", "violence", LISTS / "sinfonietta/snuff-hosts.txt", LISTS / "sinfonietta/snuff-hosts.txt"),
    ("hosts", "gambling", LISTS / "sinfonietta/gambling-hosts.txt", LISTS / "sinfonietta/gambling-hosts.txt"),
    (
        "domains",
        "bypass",
        LISTS / "dibdot_doh/doh-domains_abandoned.txt",
        LISTS / "dibdot_doh/doh-domains_abandoned.txt",
    ),
    ("adblock", "social", LISTS / "hagezi/adblock/social.txt", LISTS / "hagezi/adblock/social.txt"),
    ("wildcard", "adult", LISTS / "hagezi/wildcard/nsfw.txt.gz", LISTS / "hagezi/wildcard/nsfw.txt.gz"),
    ("rpz", "bypass", LISTS / "hagezi/rpz/doh.txt", LISTS / "hagezi/rpz/doh.txt"),
    ("ut1", "dating", LISTS / "ut1/dating", LISTS / "ut1/dating/domains"),
]


@pytest.mark.parametrize("fmt,category,path,raw", CASES, ids=[f"{c[0]}-{c[2].name}" for c in CASES])
def test_extra_list_blocks_listed_names(data_dir, fmt, category, path, raw):
    names = sample_names(raw, fmt if fmt != "ut1" else "domains")
    assert names
    # subdomains too where the format's semantics say so
    probe = list(names)
    if fmt in ("adblock", "wildcard", "ut1"):
        probe += [f"deep.sub.{n}" for n in names[:5]]
    r = explain("--group", "primary", "--json", "--extra-list", f"{fmt}:{category}:{path}", *probe)
    assert r.returncode == 0, r.stderr
    out = [json.loads(line) for line in r.stdout.splitlines()]
    assert [o["input"] for o in out] == probe
    for o in out:
        assert o["action"] == "block", o
        assert o["category"] in (category, "illegal"), o
        if o["category"] == category:
            assert o["list"].startswith(("extra-", "default-")) and o["source"] and ":" in o["source"]
            assert o["rule"]


def test_explain_json_fields_and_allow(data_dir):
    r = explain("--client", "127.0.0.1", "--json", "example.org", "https://www.google.com/search?q=x")
    assert r.returncode == 0, r.stderr
    a, g = (json.loads(x) for x in r.stdout.splitlines())
    for key in ("input", "action", "group", "reason", "category", "list", "rule", "source"):
        assert key in a
    assert a["action"] == "allow" and a["reason"] == "default" and a["group"] == "teen"
    assert g["action"] == "rewrite" and g["reason"] == "safesearch"


def test_group_without_category_does_not_block(data_dir):
    r = explain(
        "--group",
        "adult",
        "--json",
        "--extra-list",
        f"adblock:social:{LISTS / 'hagezi/adblock/social.txt'}",
        "facebook.com",
    )
    assert json.loads(r.stdout)["action"] == "allow"


def test_legal_list_applies_to_every_group(tmp_path):
    p = tmp_path / "national.txt"
    p.write_text("forbidden.example\n")
    for group in ("primary", "staff", "adult"):
        r = explain("--group", group, "--json", "--extra-list", f"domains:illegal:{p}", "forbidden.example")
        o = json.loads(r.stdout)
        assert (o["action"], o["reason"], o["legal"]) == ("block", "legal", True)


def test_schedule_with_at(data_dir):
    args = ("--group", "lower-secondary", "--json", "facebook.com")
    school = json.loads(explain(*args, "--at", "2026-11-23T10:00").stdout)
    evening = json.loads(explain(*args, "--at", "2026-11-23T19:00").stdout)
    assert (school["action"], school["reason"], school["schedule"]) == ("block", "schedule", "school-hours")
    assert evening["action"] == "allow"


def test_url_input_and_stdin(data_dir):
    r = explain("--group", "primary", "--json", stdin="http://www.pornhub.com/view?x=1\nexample.org\n")
    out = [json.loads(x) for x in r.stdout.splitlines()]
    assert [o["action"] for o in out] == ["block", "allow"]


@pytest.mark.parametrize(
    "args,needle",
    [
        (("--group", "nobody", "x.com"), "unknown group"),
        (("--group", "primary", "--extra-list", "hosts:adult", "x.com"), "FORMAT:CATEGORY:PATH"),
        (("--group", "primary", "--extra-list", "hostz:adult:/etc/hosts", "x.com"), "unknown format"),
        (("--group", "primary", "--extra-list", "hosts:adult:/nonexistent", "x.com"), "not found"),
        (("--group", "primary", "--at", "yesterday", "x.com"), "ISO time"),
    ],
)
def test_explain_errors(args, needle):
    r = explain(*args)
    assert r.returncode == 2 and needle in r.stderr, r.stderr


def test_human_output_names_the_evidence():
    r = explain("--group", "primary", "pornhub.com")
    assert "BLOCK for group primary" in r.stdout and "adult.txt:" in r.stdout


def test_explain_shows_the_policy_description(tmp_path):
    desc = "Weekday rules agreed with the parents' association (2026)"
    (tmp_path / "adult.txt").write_text("adult.test\n")
    cfg = write_config(
        tmp_path,
        """
        policies_dir: policies
        groups: [home]
        lists:
          - {id: a, category: adult, format: domains, path: adult.txt}
        """,
        {"home": f'name: Home\ndescription: "{desc}"\nblock_categories: [adult]\n'},
    )
    r = explain("--config", str(cfg), "--group", "home", "adult.test")
    assert r.returncode == 0, r.stderr
    assert f"policy     Home — {desc}" in r.stdout
    r = explain("--config", str(cfg), "--group", "home", "--json", "ok.test")
    assert json.loads(r.stdout)["policy_description"] == desc
