"""``server.proxy_modes``, ``http.inspect_https``, ``http.listener_groups``: what loads, and errors that name
file:line and what was expected."""

from __future__ import annotations

import pytest
from conftest import write_config

from filterproxy.config import load_config
from filterproxy.config.proxy import mode_kind, mode_port
from filterproxy.vocabulary import ConfigError

P = {"kid": "name: Kid\ntone: child\n", "teen": "name: Teen\ntone: teen\n"}


@pytest.mark.parametrize(
    "spec, kind, port",
    [
        ("regular", "regular", None),
        ("transparent@8081", "transparent", 8081),
        ("transparent@127.0.0.1:8081", "transparent", 8081),
        ("wireguard:/var/lib/filterproxy/wg.json@51821", "wireguard", 51821),
        ("reverse:http://intranet.school@8443", "reverse", 8443),
        ("upstream:http://proxy.school:3128@8082", "upstream", 8082),
        ("socks5@1080", "socks5", 1080),
    ],
)
def test_mode_spec(spec, kind, port):
    assert mode_kind(spec) == kind
    assert mode_port(spec) == port


@pytest.mark.parametrize(
    "body, modes, inspect, groups",
    [
        ("", ["regular"], True, {}),
        (
            "server:\n  proxy_modes: [regular, transparent@8081]\nhttp:\n  inspect_https: false\n"
            "  listener_groups: {8081: kid}\n",
            ["regular", "transparent@8081"],
            False,
            {8081: "kid"},
        ),
        (
            "server:\n  proxy_modes:\n    - regular\n    - wireguard:wg1.json@51821\n    - wireguard:wg2.json@51822\n"
            "http:\n  listener_groups:\n    51821: kid\n    '51822': teen\n",
            ["regular", "wireguard:wg1.json@51821", "wireguard:wg2.json@51822"],
            True,
            {51821: "kid", 51822: "teen"},
        ),
    ],
)
def test_loads(tmp_path, body, modes, inspect, groups):
    cfg = load_config(str(write_config(tmp_path, body, P)))
    assert cfg.server.proxy_modes == modes
    assert cfg.http.inspect_https is inspect
    assert cfg.http.listener_groups == groups


@pytest.mark.parametrize(
    "body, line, needle",
    [
        ("server:\n  proxy_modes: []\n", 2, "'server.proxy_modes' is empty (expected e.g. [regular])"),
        ("server:\n  proxy_modes: regular\n", 2, "'server.proxy_modes' must be list"),
        ("server:\n  proxy_modes:\n    - regular\n    - transparnt@8081\n", 4, "unknown mode 'transparnt@8081'"),
        ("server:\n  proxy_modes:\n    - regular\n    - transparent\n", 4, "needs its own port (MODE@PORT"),
        ("server:\n  proxy_modes: [regular, transparent@99999]\n", 2, "invalid port in 'transparent@99999'"),
        (
            "server:\n  proxy_listen: 127.0.0.1:8080\n  proxy_modes:\n    - regular\n    - transparent@8080\n",
            5,
            "port 8080 is already used by server.proxy_listen",
        ),
        (
            "server:\n  proxy_modes:\n    - regular\n    - transparent@8081\n    - regular@8081\n",
            5,
            "port 8081 is already used by transparent@8081",
        ),
        (
            "server:\n  proxy_workers: 2\n  proxy_modes: [wireguard]\n",
            3,
            "wireguard as the first mode runs in one proxy worker",
        ),
        ("http:\n  inspect_https: maybe\n", 2, "'http.inspect_https' must be bool"),
        ("http:\n  listener_groups: [8081]\n", 2, "'http.listener_groups' must be dict"),
        ("http:\n  listener_groups:\n    lab: kid\n", 3, "'lab' is not a port (expected PORT: GROUP)"),
        ("http:\n  listener_groups:\n    8081: [kid]\n", 3, "'http.listener_groups.8081' must be a group name"),
        (
            "server:\n  proxy_modes: [regular, transparent@8081]\nhttp:\n  listener_groups:\n    8082: kid\n",
            5,
            "port 8082 is not the port of a listener in server.proxy_modes (MODE@PORT; listeners with a port: "
            "8081 (transparent@8081))",
        ),
        (
            "server:\n  proxy_modes: [regular, transparent@8081]\nhttp:\n  listener_groups:\n    8081: nobody\n",
            5,
            "'http.listener_groups.8081': unknown group 'nobody' (groups: kid, teen)",
        ),
    ],
)
def test_errors_name_file_line_and_expectation(tmp_path, body, line, needle):
    cfg = write_config(tmp_path, body, P)
    with pytest.raises(ConfigError) as exc:
        load_config(str(cfg))
    msg = str(exc.value)
    assert needle in msg
    assert f"{cfg}:{line}:" in msg, msg
