"""Command line for image hashes: one JSON line per file, for operators checking what a list should hold.

Reached as ``python -m filterproxy.match.imagehash FILE...`` and ``filterproxy imagehash FILE...``.
"""

from __future__ import annotations

import json
import sys

from filterproxy.match.imagehash.hashing import hash_image_bytes


def imagehash_file_json(path: str) -> dict[str, object]:
    """CLI helper: ``{"file", "md5", "sha1", "sha256", "pdq", "quality"}`` for one file (OSError if unreadable).

    ``pdq_error`` is added when the file is not a decodable picture.
    """
    with open(path, "rb") as f:
        data = f.read()
    h = hash_image_bytes(data)
    out: dict[str, object] = {
        "file": path,
        "md5": h.md5,
        "sha1": h.sha1,
        "sha256": h.sha256,
        "pdq": h.pdq,
        "quality": h.quality,
    }
    if h.pdq_error:
        out["pdq_error"] = h.pdq_error
    return out


def main(argv: list[str] | None = None) -> int:
    """``python -m filterproxy.match.imagehash FILE...``: one JSON line per file."""
    status = 0
    for path in sys.argv[1:] if argv is None else argv:
        try:
            print(json.dumps(imagehash_file_json(path)))
        except OSError as exc:
            print(json.dumps({"file": path, "error": exc.strerror or str(exc)}))
            status = 1
    return status
