"""Image hashes: exact (MD5/SHA-1/SHA-256 of the bytes) and perceptual (PDQ), lists of them, and an index.

* :mod:`.kinds` — hash kinds, hex forms, PDQ distance (shared vocabulary);
* :mod:`.hashing` — decode and hash one image, PDQ as the reference computes it (:func:`hash_image_bytes`);
* :mod:`.listfile` — parse ``md5:``/``sha1:``/``sha256:``/``pdq:`` list files (:func:`parse_imagehash_list`);
* :mod:`.index` — :class:`ImageHashIndex`, exact sets plus the PDQ near-match search, saved as files and
  read with ``pread``, changed by delta + tombstones (``with_changes``) and compacted (:mod:`.compact`, in a child);
* :mod:`.mih` — the PDQ multi-index tables; :mod:`.exact` — the MD5/SHA-1/SHA-256 tables;
  :mod:`.items` — item ids of records as arrays in files;
* :mod:`.cli` — ``python -m filterproxy.match.imagehash FILE...`` / ``filterproxy imagehash FILE...``.

The names below are re-exported so callers keep importing from ``filterproxy.match.imagehash``.
"""

from __future__ import annotations

# Besides __all__, callers import DEFAULT_MAX_SIDE, MAX_DECODE_PIXELS, EXACT_KINDS, HEX_LENGTHS, PDQ_BYTES
# and, in tests, _EXPECTED and _popcount_table from here. The command line (.cli) is not
# re-exported: it compiles lists through filterproxy.lists, which imports this package.
from filterproxy.match.imagehash.hashing import (  # noqa: F401
    DEFAULT_MAX_SIDE,
    MAX_DECODE_PIXELS,
    ImageHashes,
    hash_image_bytes,
    hash_image_bytes_async,
)
from filterproxy.match.imagehash.index import ImageHashIndex, ImageMatch, _popcount_table  # noqa: F401
from filterproxy.match.imagehash.kinds import (  # noqa: F401
    DEFAULT_MAX_DISTANCE,
    DEFAULT_MIN_QUALITY,
    DIHEDRAL_NAMES,
    EXACT_KINDS,
    HEX_LENGTHS,
    KINDS,
    PDQ_BYTES,
    pdq_distance,
)
from filterproxy.match.imagehash.listfile import (  # noqa: F401
    _EXPECTED,
    ImageHashEntry,
    ImageHashListError,
    parse_imagehash_entries,
    parse_imagehash_list,
)

__all__ = [
    "DEFAULT_MAX_DISTANCE",
    "DEFAULT_MIN_QUALITY",
    "DIHEDRAL_NAMES",
    "KINDS",
    "ImageHashEntry",
    "ImageHashIndex",
    "ImageHashListError",
    "ImageHashes",
    "ImageMatch",
    "hash_image_bytes",
    "hash_image_bytes_async",
    "parse_imagehash_entries",
    "parse_imagehash_list",
    "pdq_distance",
]
