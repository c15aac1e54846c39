"""Encrypted DNS without servers: the server.doh_listen / dot_listen / tls_* keys, DoH client ids, and the
``filterproxy mobileconfig`` profile (parsed back with plistlib)."""

from __future__ import annotations

import plistlib
import re

import pytest
from conftest import write_config

from filterproxy.cli import main
from filterproxy.config import ConfigError, load_config

POLICIES = {"home": "name: Home\n"}


def _load(tmp_path, server: str, clients: str = "[]"):
    (tmp_path / "cert.pem").write_text("not checked at load\n")
    (tmp_path / "key.pem").write_text("not checked at load\n")
    rest = f"policies_dir: policies\ngroups: [home]\ndefault_group: home\nclients: {clients}\nlists: []\n"
    body = f"server:\n{server}\n{rest}"
    return load_config(str(write_config(tmp_path, body, POLICIES)))


def test_encrypted_listeners_are_off_by_default_and_take_a_certificate(tmp_path):
    cfg = _load(tmp_path, "  state_dir: st")
    assert cfg.server.doh_listen is None and cfg.server.dot_listen is None
    cfg = _load(
        tmp_path,
        "  doh_listen: 0.0.0.0\n  dot_listen: '[::]:8853'\n  tls_cert_file: cert.pem\n  tls_key_file: key.pem",
    )
    assert cfg.server.doh_listen == ("0.0.0.0", 443) and cfg.server.dot_listen == ("::", 8853)
    assert cfg.server.tls_cert_file == str(tmp_path / "cert.pem")  # relative to the config file


@pytest.mark.parametrize(
    ("server", "expected"),
    [
        (
            "  state_dir: st\n  doh_listen: 127.0.0.1:8443",
            r"filterproxy\.yaml:3: 'server\.doh_listen' needs 'server\.tls_cert_file'",
        ),
        (
            "  dot_listen: 127.0.0.1:853\n  tls_cert_file: cert.pem",
            r"filterproxy\.yaml:2: 'server\.dot_listen' needs 'server\.tls_key_file'",
        ),
        (
            "  tls_cert_file: nowhere.pem\n  tls_key_file: key.pem",
            r"filterproxy\.yaml:2: 'server\.tls_cert_file': file not found: .*nowhere\.pem",
        ),
        ("  doh_listen: 127.0.0.1:http", r"filterproxy\.yaml:2: .*"),
    ],
)
def test_encrypted_listener_errors_name_the_file_line_and_key(tmp_path, server, expected):
    with pytest.raises(ConfigError) as exc:
        _load(tmp_path, server)
    assert re.search(expected, str(exc.value)), str(exc.value)


def test_doh_client_ids_must_be_url_safe(tmp_path):
    cfg = _load(tmp_path, "  state_dir: st", "[{doh: Phone-1.kid_2, group: home}]")
    assert [(r.kind, r.value) for r in cfg.clients] == [("doh", "Phone-1.kid_2")]
    with pytest.raises(ConfigError, match=r"filterproxy\.yaml:\d+: clients\[0\]: invalid doh 'a/b'"):
        _load(tmp_path, "  state_dir: st", "[{doh: a/b, group: home}]")


def _profile(capsys, *args: str) -> dict:
    assert main(["mobileconfig", *args]) == 0
    return plistlib.loads(capsys.readouterr().out.encode())


def test_mobileconfig_is_an_apple_dns_settings_profile(capsys):
    p = _profile(capsys, "--id", "phone-1", "--url", "https://gw.example/dns-query/", "--name", "Lan's phone")
    assert p["PayloadType"] == "Configuration" and p["PayloadVersion"] == 1
    assert p["PayloadDisplayName"] == "Lan's phone"
    (payload,) = p["PayloadContent"]
    assert payload["PayloadType"] == "com.apple.dnsSettings.managed"
    assert payload["DNSSettings"] == {"DNSProtocol": "HTTPS", "ServerURL": "https://gw.example/dns-query/phone-1"}
    assert p["PayloadIdentifier"] != payload["PayloadIdentifier"]
    uuids = {p["PayloadUUID"], payload["PayloadUUID"]}
    assert all(re.fullmatch(r"[0-9A-F]{8}(-[0-9A-F]{4}){3}-[0-9A-F]{12}", u) for u in uuids) and len(uuids) == 2
    again = _profile(capsys, "--id", "phone-1", "--url", "https://gw.example/dns-query")
    assert again["PayloadUUID"] == p["PayloadUUID"]  # the same id: the same profile, which replaces the old one
    other = _profile(capsys, "--id", "phone-2", "--url", "https://gw.example/dns-query", "--address", "192.0.2.7")
    assert other["PayloadUUID"] != p["PayloadUUID"]
    assert other["PayloadContent"][0]["DNSSettings"]["ServerAddresses"] == ["192.0.2.7"]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (
            ["--id", "x", "--url", "http://gw.example/dns-query"],
            "--url 'http://gw.example/dns-query': expected https://",
        ),
        (["--id", "a b", "--url", "https://gw.example/dns-query"], "--id 'a b': expected"),
        (["--id", "x", "--url", "https://gw/dns-query", "--address", "gw"], "--address 'gw': expected an IP"),
    ],
)
def test_mobileconfig_refuses_bad_input(capsys, args, expected):
    assert main(["mobileconfig", *args]) == 2
    assert expected in capsys.readouterr().err
