"""The one password scheme (argon2id) and the secrets the configuration names (``*_file`` keys).

Unit layer: hashes, the verified-credentials cache, config parsing of the metrics/reports secret keys
(inline secrets refused, pairs, file:line errors) and reading secret files (unreadable, empty, mode).
"""

from __future__ import annotations

import hashlib
import logging
import os

import pytest
from conftest import write_config

from filterproxy.config import ConfigError, load_config
from filterproxy.config.secrets import load_secrets
from filterproxy.passwords import VerifiedCache, check_hash, hash_password, verify_password

P_OK = {"g": "name: G\nblock_categories: [adult]\n"}


def test_hash_is_standard_argon2id_and_verifies():
    h = hash_password("correct horse")
    assert h.startswith("$argon2id$v=19$m=65536,t=3,p=4$")
    check_hash(h)
    assert verify_password(h, "correct horse")
    assert not verify_password(h, "correct horsE")
    assert not verify_password("not a hash", "x")


@pytest.mark.parametrize(
    "hashed, why",
    [
        ("sha256:" + hashlib.sha256(b"pw").hexdigest(), "unsalted SHA-256"),
        (hashlib.sha256(b"pw").hexdigest().upper(), "unsalted SHA-256"),
        ("$2b$12$" + "a" * 53, "bcrypt"),
        ("00112233445566778899aabbccddeeff$" + "ab" * 32, "old scrypt"),
        ("pbkdf2_sha256$600000$" + "aa" * 16 + "$" + "bb" * 32, "pbkdf2_sha256"),
        ("$argon2d$v=19$m=65536,t=3,p=4$c2FsdHNhbHQ$" + "A" * 43, "only argon2id"),
        ("$argon2id$v=19$m=8,t=1,p=1$c2FsdHNhbHQ$" + "A" * 43, "too weak"),
        ("$argon2id$v=19$x", "malformed"),
        ("hunter2", "expected an argon2id hash"),
    ],
)
def test_other_schemes_are_refused_with_how_to_make_one(hashed, why):
    with pytest.raises(ValueError) as err:
        check_hash(hashed)
    assert why in str(err.value) and "filterproxy passwd" in str(err.value)


def test_verified_cache_is_bounded_keyed_and_holds_no_password():
    cache = VerifiedCache(limit=3)
    tags = [cache.tag("prometheus", f"pw{i}") for i in range(4)]
    assert tags[0] not in cache
    for t in tags[:3]:
        cache.add(t)
    assert tags[0] in cache  # used: now the most recent
    cache.add(tags[3])
    assert len(cache) == 3 and tags[1] not in cache and tags[0] in cache and tags[3] in cache
    # an HMAC with a per-process random key: not the plain SHA-256 an attacker could brute-force offline
    assert cache.tag("prometheus", "pw0") != hashlib.sha256(b"prometheus\0pw0").digest()
    assert VerifiedCache().tag("prometheus", "pw0") != cache.tag("prometheus", "pw0")


# ------------------------------------------------------------------- configuration


def _load(tmp_path, body: str):
    return load_config(str(write_config(tmp_path, body, P_OK)))


@pytest.mark.parametrize(
    "body, line, needles",
    [
        ("reports:\n  endpoint: https://h.example/r\n  token: abc\n", 3, ("'reports.token'", "'reports.token_file'")),
        ("metrics:\n  tls_key: x\n", 2, ("'metrics.tls_key'", "'metrics.tls_key_file'")),
        ("metrics:\n  basic_auth_password: x\n", 2, ("no password in the configuration", "filterproxy passwd")),
        (
            "metrics:\n  basic_auth_user: prometheus\n  basic_auth_hash: sha256:" + "ab" * 32 + "\n",
            3,
            ("'metrics.basic_auth_hash'", "unsalted SHA-256", "filterproxy passwd"),
        ),
        ("metrics:\n  basic_auth_user: prometheus\n", 2, ("needs 'metrics.basic_auth_hash'",)),
        ("metrics:\n  tls_key_file: key.pem\n", 2, ("'metrics.tls_key_file' needs 'metrics.tls_cert_file'",)),
    ],
)
def test_metrics_and_reports_secret_keys_errors(tmp_path, body, line, needles):
    with pytest.raises(ConfigError) as err:
        _load(tmp_path, body)
    msg = str(err.value)
    assert msg.startswith(f"{tmp_path / 'filterproxy.yaml'}:{line}: "), msg
    for needle in needles:
        assert needle in msg, msg


def test_secret_files_resolved_and_read(tmp_path):
    (tmp_path / "token").write_text("  tok-123  \n")
    os.chmod(tmp_path / "token", 0o600)
    cfg = _load(tmp_path, "reports:\n  token_file: token\n")
    assert cfg.reports.token_file is not None
    assert cfg.reports.token_file.path == str(tmp_path / "token")  # relative to the config file
    assert load_secrets(cfg).reports_token == "tok-123"


def test_unreadable_or_empty_secret_file_names_config_line_and_path(tmp_path):
    cfg = _load(tmp_path, "reports:\n  endpoint: https://h.example/r\n  token_file: missing-token\n")
    with pytest.raises(ConfigError) as err:
        load_secrets(cfg)
    where = f"{tmp_path / 'filterproxy.yaml'}:3"
    assert str(err.value).startswith(f"{where}: 'reports.token_file': cannot read the secret file ")
    assert str(tmp_path / "missing-token") in str(err.value)
    (tmp_path / "missing-token").write_text("\n")
    with pytest.raises(ConfigError, match=f"^{where}: 'reports.token_file': the secret file .*missing-token is empty"):
        load_secrets(cfg)


def test_group_or_world_readable_secret_file_warns(tmp_path, caplog):
    (tmp_path / "token").write_text("tok\n")
    cfg = _load(tmp_path, "reports:\n  token_file: token\n")
    os.chmod(tmp_path / "token", 0o600)
    with caplog.at_level(logging.WARNING, logger="filterproxy.config"):
        load_secrets(cfg)
    assert not caplog.records
    os.chmod(tmp_path / "token", 0o644)
    with caplog.at_level(logging.WARNING, logger="filterproxy.config"):
        assert load_secrets(cfg).reports_token == "tok"
    [rec] = caplog.records
    assert "can be read by anyone (mode 644); chmod 600 it" in rec.getMessage()
    assert f"{tmp_path / 'filterproxy.yaml'}:2" in rec.getMessage()


def test_bad_tls_pair_is_a_config_error(tmp_path):
    (tmp_path / "cert.pem").write_text("not a certificate\n")
    (tmp_path / "key.pem").write_text("not a key\n")
    os.chmod(tmp_path / "key.pem", 0o600)
    cfg = _load(tmp_path, "metrics:\n  tls_cert_file: cert.pem\n  tls_key_file: key.pem\n")
    with pytest.raises(ConfigError, match=r"filterproxy.yaml:3: cannot load the /metrics TLS certificate .*cert.pem"):
        load_secrets(cfg)
