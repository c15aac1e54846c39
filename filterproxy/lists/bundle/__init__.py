"""Signed list bundles: how a publisher (e.g. a ministry) ships lists to thousands of gateways.

:mod:`.format` is the format and its verification, :mod:`.publish` builds and signs bundles,
:mod:`.install` installs them on a gateway; the format is described in ``docs/bundle-format.md``.
This package re-exports their public names, so ``from filterproxy.lists import bundle`` is the API.
"""

from __future__ import annotations

from filterproxy.lists.bundle.format import (
    BUNDLE_FORMAT,
    FOLDER_FORMATS,
    LIST_FORMATS,
    MANIFEST,
    SIGNATURE,
    SIGNATURE_FORMAT,
    SIGNING_CONTEXT,
    BadSignature,
    BundleError,
    Expired,
    Malformed,
    Rollback,
    Tampered,
    UnknownKey,
    VerifiedBundle,
    key_id,
    load_public_keys,
    tarinfo,
    verify,
)
from filterproxy.lists.bundle.install import STATE_FILE, install, installed, installed_serial
from filterproxy.lists.bundle.publish import (
    DEFAULT_LIFETIME,
    PRIVATE_KEY_FILE,
    PUBLIC_KEY_FILE,
    UT1_FILES,
    build,
    keygen,
    sign,
)

__all__ = [
    "BUNDLE_FORMAT",
    "DEFAULT_LIFETIME",
    "FOLDER_FORMATS",
    "LIST_FORMATS",
    "MANIFEST",
    "PRIVATE_KEY_FILE",
    "PUBLIC_KEY_FILE",
    "SIGNATURE",
    "SIGNATURE_FORMAT",
    "SIGNING_CONTEXT",
    "STATE_FILE",
    "UT1_FILES",
    "BadSignature",
    "BundleError",
    "Expired",
    "Malformed",
    "Rollback",
    "Tampered",
    "UnknownKey",
    "VerifiedBundle",
    "build",
    "install",
    "installed",
    "installed_serial",
    "key_id",
    "keygen",
    "load_public_keys",
    "sign",
    "tarinfo",
    "verify",
]
