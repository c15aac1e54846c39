"""The reload's pieces, in process: ``Engine.swap`` with a new configuration, the settings that need a
restart, and the configuration digest."""

from __future__ import annotations

import dataclasses

import pytest
from conftest import write_config

from filterproxy.app import client_map
from filterproxy.config import load_config
from filterproxy.config.secrets import SecretFile
from filterproxy.lists.snapshot import build_snapshot
from filterproxy.policy.engine import Engine
from filterproxy.reload import restart_needed
from filterproxy.verdict import Action, Reason

BODY = """
    policies_dir: policies
    groups: [home]
    default_group: home
    clients: [{cidr: 10.0.0.0/8, group: home}]
    lists:
      - {id: a, category: adult, format: domains, path: adult.txt}
"""


def _config(tmp_path, policy: str, body: str = BODY, others: dict[str, str] | None = None):
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "adult.txt").write_text("adult.test\n")
    return load_config(str(write_config(tmp_path, body, {"home": policy, **(others or {})})))


def test_swap_with_a_config_replaces_groups_clients_and_tables_together(tmp_path):
    old = _config(tmp_path / "a", "name: Home\nblock_categories: [adult]\n")
    engine = Engine(old, build_snapshot(old.lists))
    assert engine.decide("10.1.2.3", "x.test").action is Action.ALLOW
    new = _config(tmp_path / "b", "name: Home\ndescription: stricter\nblock_categories: []\nblock: [x.test]\n")
    engine.swap(engine.snapshot, new, client_map(new, ["192.0.2.0/24=home"]))
    v = engine.decide("10.1.2.3", "x.test")
    assert (v.action, v.reason, v.source) == (Action.BLOCK, Reason.BLOCKLIST, f"{new.groups['home'].file}:4")
    assert engine.decide("10.1.2.3", "adult.test").action is Action.ALLOW  # the category is no longer blocked
    assert engine.config is new and engine.policy("home").description == "stricter"
    assert engine.group_for("192.0.2.9") == "home"  # the --client-group flags came with the new client map
    engine.swap(build_snapshot(new.lists))  # a lists-only swap keeps the configuration
    assert engine.config is new


def test_digest_follows_the_policy_files(tmp_path):
    a = _config(tmp_path, "name: Home\n")
    assert len(a.digest) == 12 and a.digest == _config(tmp_path, "name: Home\n").digest
    assert _config(tmp_path, "name: Home\nblock: [x.test]\n").digest != a.digest


def _change(cfg, section: str, **values):
    return dataclasses.replace(cfg, **{section: dataclasses.replace(getattr(cfg, section), **values)})


@pytest.mark.parametrize(
    "section,values,named",
    [
        ("upstreams", {"servers": ["192.0.2.1:53"]}, ["upstreams.servers"]),
        (
            "server",
            {"dns_listen": ("127.0.0.1", 5454), "proxy_workers": 4},
            ["server.dns_listen", "server.proxy_workers"],
        ),
        ("cache", {"size": 10}, ["cache.size"]),
        ("dns", {"strip_ech": False}, ["dns.strip_ech"]),
        ("dns", {"allowed_networks": ["10.0.0.0/8"], "rate_limit": 5}, []),  # applied live
        ("http", {"hotline": "112"}, []),  # the proxy workers read it again
        ("metrics", {"tls_key_file": SecretFile("/k.pem", "a.yaml:9", "metrics.tls_key_file")}, []),  # moved line
        (
            "metrics",
            {"tls_key_file": SecretFile("/other.pem", "a.yaml:3", "metrics.tls_key_file")},
            ["metrics.tls_key_file"],
        ),
    ],
)
def test_restart_needed(tmp_path, section, values, named):
    cfg = _config(tmp_path, "name: Home\n")
    cfg = _change(cfg, "metrics", tls_key_file=SecretFile("/k.pem", "a.yaml:3", "metrics.tls_key_file"))
    assert restart_needed(cfg, _change(cfg, section, **values)) == named


def test_dns_chain_takes_a_new_configuration(tmp_path):
    """A group and a client rule added by a reload reach the resolver's client states and packed caches;
    the ACL and rate limit are applied live."""
    from filterproxy.dns.chain import build_chain

    old = _config(tmp_path / "a", "name: Home\n")
    engine = Engine(old, build_snapshot(old.lists))
    chain = build_chain(old, engine, upstreams=["127.0.0.1:9"])
    assert chain.clients.state("10.1.1.1").group == "home"
    assert not chain.clients.state("192.0.2.1").allowed  # outside the default allowed networks

    body = BODY.replace("groups: [home]", "groups: [home, kids]").replace(
        "clients: [{cidr: 10.0.0.0/8, group: home}]",
        "clients: [{cidr: 10.0.0.0/8, group: home}, {ip: 10.1.1.1, group: kids}]\n"
        "    dns: {allowed_networks: [10.0.0.0/8, 192.0.2.0/24], rate_limit: 7}",
    )
    new = _config(tmp_path / "b", "name: Home\n", body, {"kids": "name: Kids\n"})
    engine.swap(engine.snapshot, new)
    chain.on_config(new)
    st = chain.clients.state("10.1.1.1")
    assert st.group == "kids" and st.packed is chain.packed.for_group("kids") is not None
    assert chain.clients.state("192.0.2.1").allowed and chain.clients.limit == 7
