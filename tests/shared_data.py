"""Where the real lists and data for tests and benchmarks live (``../shared/data`` next to the checkout).

Looked up in order: ``$FILTERPROXY_TEST_DATA``; ``shared/data`` beside this checkout; for a clone of a
local checkout (``git clone /work/main /tmp/x``), ``shared/data`` beside the checkout it was cloned from.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _origin_dir() -> Path | None:
    try:
        url = subprocess.run(
            ["git", "-C", str(REPO), "config", "--get", "remote.origin.url"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    if url.startswith("file://"):
        url = url[7:]
    return Path(url).resolve() if url and "://" not in url and ":" not in url.split("/")[0] else None


def find_data() -> Path:
    """The data folder (the first candidate that exists, else the conventional ``../shared/data``)."""
    env = os.environ.get("FILTERPROXY_TEST_DATA")
    if env:
        return Path(env)
    candidates = [REPO.parent / "shared" / "data"]
    origin = _origin_dir()
    if origin is not None:
        candidates.append(origin.parent / "shared" / "data")
    for c in candidates:
        if (c / "blocklists").is_dir():
            return c
    return candidates[0]


DATA = find_data()
