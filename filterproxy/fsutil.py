"""Durable file writes: the one way filterproxy replaces a file on disk.

A write goes to a temporary file in the same folder, is flushed and fsynced, renamed over the target
(atomic on POSIX), and the folder is fsynced so the rename itself survives a power cut. A reader
therefore sees the old file or the new one, never a torn one; a failed write leaves the old file.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from typing import IO, Any


def fsync_dir(path: str) -> None:
    """fsync a folder, so renames and creations inside it are durable (no-op where unsupported)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_writer(
    path: str, mode: str = "wb", *, perms: int | None = None, durable: bool = True, **open_kw: Any
) -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path``; on a clean exit it replaces ``path`` atomically.

    ``perms`` sets the file mode (e.g. 0o600 for secrets) before any data is written. With
    ``durable`` (the default) the data and the folder are fsynced. On an exception the temporary
    file is removed and ``path`` is untouched.
    """
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=folder)
    try:
        if perms is not None:
            os.fchmod(fd, perms)
        with os.fdopen(fd, mode, **open_kw) as f:
            yield f
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if durable:
        fsync_dir(folder)


def atomic_write(path: str, data: bytes | str, *, perms: int | None = None, durable: bool = True) -> None:
    """Replace ``path`` with ``data`` (bytes, or str written as UTF-8) atomically; see :func:`atomic_writer`."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    with atomic_writer(path, "wb", perms=perms, durable=durable) as f:
        f.write(data)
