"""Secrets the configuration names: always a file (``*_file`` keys), never the secret inline.

A :class:`SecretFile` keeps the path and the ``file:line`` of the key that named it; the secret is read
when a process needs it (``run``, ``check``: :func:`load_secrets`), so commands that never use it
(``explain``, ``lists``) need no right to read it. An unreadable or empty file is a
:class:`ConfigError` naming both; a file that group or others may read is logged as a warning.
"""

from __future__ import annotations

import logging
import os
import ssl
import stat
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from filterproxy.config.loader import Section
from filterproxy.vocabulary import ConfigError

if TYPE_CHECKING:
    from filterproxy.config.model import Config

log = logging.getLogger("filterproxy.config")


@dataclass(frozen=True)
class SecretFile:
    """A secret kept in a file: ``key`` (e.g. ``reports.token_file``) named ``path`` at ``where``."""

    path: str
    where: str
    key: str

    def read(self) -> str:
        """The secret (surrounding white space and the final newline stripped); ConfigError if unusable."""
        try:
            with open(self.path, encoding="utf-8") as f:
                value = f.read().strip()
            mode = os.stat(self.path).st_mode
        except OSError as exc:
            raise ConfigError(
                f"{self.where}: '{self.key}': cannot read the secret file {self.path}: {exc.strerror}"
            ) from None
        except UnicodeDecodeError:
            raise ConfigError(f"{self.where}: '{self.key}': the secret file {self.path} is not UTF-8 text") from None
        if not value:
            raise ConfigError(f"{self.where}: '{self.key}': the secret file {self.path} is empty")
        if mode & (stat.S_IRGRP | stat.S_IROTH):
            log.warning(
                "%s: '%s': the secret file %s can be read by %s (mode %03o); chmod 600 it",
                self.where,
                self.key,
                self.path,
                "anyone" if mode & stat.S_IROTH else "its group",
                stat.S_IMODE(mode),
            )
        return value


def secret_file(sec: Section, key: str, resolve: Callable[[str], str]) -> SecretFile | None:
    """The ``key`` (``…_file``) of ``sec`` as a SecretFile, its path through ``resolve``; the inline form
    (``key`` without ``_file``) is an error that says to use the file."""
    inline = key.removesuffix("_file")
    if inline in sec.data:
        raise ConfigError(
            f"{sec.where(inline)}: '{sec.name}.{inline}' would put a secret in the configuration; write it to a "
            f"file only filterproxy can read (chmod 600) and name that file with '{sec.name}.{key}'"
        )
    path = sec.get(key, None, types=(str,))
    if not path:
        return None
    return SecretFile(resolve(path), sec.where(key), f"{sec.name}.{key}")


@dataclass(frozen=True)
class Secrets:
    """The secrets ``filterproxy run`` uses, read once at start-up."""

    reports_token: str | None = None


def load_secrets(cfg: Config) -> Secrets:
    """Read every secret the configuration names and load the ``/metrics`` TLS pair (ConfigError if unusable)."""
    m = cfg.metrics
    if m.tls_key_file is not None:
        m.tls_key_file.read()  # readable, not empty, mode warning
        assert m.tls_cert_file is not None  # parse_metrics requires both
        try:
            ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(m.tls_cert_file, m.tls_key_file.path)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                f"{m.tls_key_file.where}: cannot load the /metrics TLS certificate {m.tls_cert_file} with the key "
                f"{m.tls_key_file.path}: {exc} (expected PEM files: a certificate chain and its private key)"
            ) from None
    return Secrets(
        reports_token=cfg.reports.token_file.read() if cfg.reports.token_file else None,
    )
