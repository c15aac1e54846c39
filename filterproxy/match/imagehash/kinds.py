"""Image-hash vocabulary shared by hashing, list files and the index: kinds, hex forms, PDQ distance.

Kept apart so the list parser and the index need neither Pillow nor the ``pdqhash`` extension.
The PDQ hex form is ThreatExchange's (first bit of the hash = most significant bit of the first hex
digit), so hashes from NCMEC/IWF/ThreatExchange-style lists compare directly.
"""

from __future__ import annotations

DEFAULT_MAX_DISTANCE = 31  # ThreatExchange's "confident match" threshold for PDQ
DEFAULT_MIN_QUALITY = 50  # below this PDQ hashes of flat/blank pictures collide (ThreatExchange's advice)
PDQ_BYTES = 32
KINDS = ("md5", "sha1", "sha256", "pdq")
EXACT_KINDS = ("sha256", "sha1", "md5")  # match() tries them in this order
HEX_LENGTHS = {"md5": 32, "sha1": 40, "sha256": 64, "pdq": 64}
# Order of pdqhash.compute_dihedral's hashes (index = ImageHashes.pdq_dihedral position).
DIHEDRAL_NAMES = (
    "original",
    "rotate90",
    "rotate180",
    "rotate270",
    "flip_vertical",
    "flip_horizontal",
    "flip_plus1",
    "flip_minus1",
)
HEXDIGITS = frozenset("0123456789abcdefABCDEF")


def check_hex(kind: str, value: str) -> str | None:
    """The problem with ``value`` as a ``kind`` hash, or None if it is fine."""
    want = HEX_LENGTHS[kind]
    if len(value) != want:
        return f"expected {want} hex digits for {kind}, got {len(value)}"
    if not HEXDIGITS.issuperset(value):
        bad = next(c for c in value if c not in HEXDIGITS)
        return f"{kind} hash has a non-hex character {bad!r}"
    return None


def pdq_bytes(h: str | bytes) -> bytes:
    """One PDQ hash as 32 bytes, from 64 hex digits or 32 bytes (ValueError otherwise)."""
    if isinstance(h, str):
        if len(h) != 64 or not HEXDIGITS.issuperset(h):
            raise ValueError(f"expected a PDQ hash of 64 hex digits, got {h[:70]!r}")
        return bytes.fromhex(h)
    b = bytes(h)
    if len(b) != PDQ_BYTES:
        raise ValueError(f"expected a PDQ hash of 32 bytes, got {len(b)}")
    return b


def pdq_distance(a: str | bytes, b: str | bytes) -> int:
    """Hamming distance between two PDQ hashes (64 hex digits or 32 bytes each)."""
    x = int.from_bytes(pdq_bytes(a), "big") ^ int.from_bytes(pdq_bytes(b), "big")
    return x.bit_count()
