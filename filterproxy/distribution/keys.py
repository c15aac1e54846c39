"""Ed25519 key files of the distribution roles: ``NAME.key`` (PKCS#8 PEM, private, 0600) and ``NAME.pub``
(the TUF key as JSON, with its key id), loaded as securesystemslib signers and keys."""

from __future__ import annotations

import json
import os

from securesystemslib.signer import CryptoSigner, SSlibKey

from filterproxy.fsutil import atomic_write


class PublishError(Exception):
    """A publishing step that cannot be done; the message says why and what to do."""


def keygen(out: str) -> tuple[str, str]:
    """Write ``out.key`` and ``out.pub``; their paths. Refuses to overwrite a private key."""
    priv, pub = out + ".key", out + ".pub"
    if os.path.exists(priv):
        raise PublishError(f"{priv} exists: refusing to overwrite a private key")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    signer = CryptoSigner.generate_ed25519()
    atomic_write(priv, signer.private_bytes, perms=0o600)
    atomic_write(pub, public_json(signer.public_key), perms=0o644)
    return priv, pub


def public_json(key: SSlibKey) -> str:
    return json.dumps({"keyid": key.keyid, **key.to_dict()}, indent=2, sort_keys=True) + "\n"


def load_public(path: str) -> SSlibKey:
    """A public key file written by :func:`keygen`."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        keyid = data.pop("keyid")
        return SSlibKey.from_dict(keyid, data)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise PublishError(f"{path}: not a public key file written by 'filterproxy publish keygen' ({exc})") from None


def load_signer(path: str) -> CryptoSigner:
    """A private key file written by :func:`keygen`."""
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    try:
        with open(path, "rb") as f:
            return CryptoSigner(load_pem_private_key(f.read(), password=None))
    except (OSError, ValueError, TypeError) as exc:
        raise PublishError(f"{path}: not a private key file written by 'filterproxy publish keygen' ({exc})") from None
