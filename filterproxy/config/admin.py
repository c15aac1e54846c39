"""The ``admin:`` section: the control API's own certificate, session length and teachers' longest allow.

Where the API listens is ``server.admin_listen`` (with the other listeners); this section holds the rest.
"""

from __future__ import annotations

import os

from filterproxy.config.loader import Section
from filterproxy.config.model import AdminConfig
from filterproxy.config.sections import resolve_path
from filterproxy.vocabulary import ConfigError


def parse_admin(a: Section, path: str) -> AdminConfig:
    """``admin:`` → :class:`AdminConfig`; the certificate and key go together and must exist."""
    d = AdminConfig()
    admin = AdminConfig(
        tls_cert_file=a.get("tls_cert_file", None, types=(str,)),
        tls_key_file=a.get("tls_key_file", None, types=(str,)),
        session_hours=float(a.get("session_hours", d.session_hours, types=(int, float))),
        teacher_max_minutes=a.get("teacher_max_minutes", d.teacher_max_minutes, types=(int,)),
        stats_retention_days=a.get("stats_retention_days", d.stats_retention_days, types=(int,)),
        stats_flush_seconds=float(a.get("stats_flush_seconds", d.stats_flush_seconds, types=(int, float))),
        devices_seen_seconds=float(a.get("devices_seen_seconds", d.devices_seen_seconds, types=(int, float))),
    )
    if (admin.tls_cert_file is None) != (admin.tls_key_file is None):
        have, need = ("tls_cert_file", "tls_key_file") if admin.tls_cert_file else ("tls_key_file", "tls_cert_file")
        raise ConfigError(f"{a.where(have)}: 'admin.{have}' needs 'admin.{need}' as well")
    for key in ("tls_cert_file", "tls_key_file"):
        value = getattr(admin, key)
        if value:
            setattr(admin, key, resolve_path(path, value))
            if not os.path.isfile(getattr(admin, key)):
                raise ConfigError(f"{a.where(key)}: 'admin.{key}': file not found: {getattr(admin, key)}")
    if not 0 < admin.session_hours <= 24 * 30:
        raise ConfigError(f"{a.where('session_hours')}: 'admin.session_hours' must be between 0 and 720 hours")
    if admin.teacher_max_minutes < 1:
        raise ConfigError(f"{a.where('teacher_max_minutes')}: 'admin.teacher_max_minutes' must be at least 1")
    if not 8 <= admin.stats_retention_days <= 3660:  # the roll-up keeps the last 7 days per minute
        raise ConfigError(f"{a.where('stats_retention_days')}: 'admin.stats_retention_days' must be 8 to 3660 days")
    if not 0 < admin.stats_flush_seconds <= 300:
        raise ConfigError(f"{a.where('stats_flush_seconds')}: 'admin.stats_flush_seconds' must be over 0, at most 300")
    if not 0 < admin.devices_seen_seconds <= 300:
        raise ConfigError(
            f"{a.where('devices_seen_seconds')}: 'admin.devices_seen_seconds' must be over 0, at most 300"
        )
    a.done()
    return admin
