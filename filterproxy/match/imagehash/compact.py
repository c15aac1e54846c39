"""Compaction of a changed image index off the serving path: a child process rebuilds, the caller swaps.

``compact_in_child(src, dst)`` runs ``python -m filterproxy.match.imagehash.compact SRC DST`` (nice 10):
the child maps the index saved in ``SRC`` (base + delta + tombstones), writes one new base into
``DST`` with :meth:`ImageHashIndex.compacted`, and the caller maps ``DST`` and swaps the reference in.
The serving process never pays the build's CPU nor its memory peak (CONTRIBUTING.md rules 4 and 9).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys

from filterproxy.match.imagehash.index import ImageHashIndex


def compact_in_child(src: str, dst: str) -> ImageHashIndex:
    """Compact the index saved in ``src`` into ``dst`` in a child process; the result, loaded.
    Raises RuntimeError (with the child's last error line) when the child fails."""
    r = subprocess.run(
        [sys.executable, "-m", "filterproxy.match.imagehash.compact", src, dst], capture_output=True, text=True
    )
    if r.returncode != 0:
        lines = r.stderr.strip().splitlines()
        raise RuntimeError(f"image index compaction failed: {lines[-1] if lines else f'exit {r.returncode}'}")
    return ImageHashIndex.load(dst)


def _main() -> None:
    with contextlib.suppress(OSError):  # the rebuild yields the CPU to the serving processes beside it
        os.nice(10)
    ImageHashIndex.load(sys.argv[1]).compacted(sys.argv[2])


if __name__ == "__main__":
    _main()
