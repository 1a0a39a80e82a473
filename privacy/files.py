"""Files written whole or not at all, and exclusive locks: the one copy of each.

The lowest layer that writes files (keys, ledgers, certificates, run folders and
reports all do); it imports nothing of fedsim.
"""

from __future__ import annotations

import fcntl
import json
import os
import tempfile
from pathlib import Path
from typing import Any


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: Path, data: bytes, *, mode: int | None = None) -> None:
    """Write `data` to `path` so a reader sees the old file or the new one, never half.

    The data is fsynced before the rename. Without `mode` the file gets 0666 less
    the umask, like any new file (mkstemp's own 0600 is for temporary files); a
    given `mode` is set exactly, whatever the umask (0600 for secrets).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask() if mode is None else mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, data: Any) -> None:
    """Atomically write pretty JSON."""
    atomic_write_bytes(path, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode())


class LockHeld(OSError):
    """A non-blocking `lock_file` found the lock taken; `holder` is what its holder wrote."""

    def __init__(self, path: Path, holder: str) -> None:
        super().__init__(f"{path} is locked by {holder or 'another process'}")
        self.holder = holder


def lock_file(path: Path, *, wait: bool = True, holder: str | None = None) -> int:
    """Open `path` (created 0644 if missing) and take an exclusive flock on it.

    Returns the open descriptor: closing it releases the lock, as does the end of
    the process however it ends (no stale lock is left behind). With `wait=False` a
    lock already held raises `LockHeld` at once, carrying the text its holder wrote;
    `holder`, when given, is written into the file once the lock is taken. Opening
    the file can raise any other OSError.
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError as err:
            text = os.pread(fd, 64, 0).decode(errors="replace").strip()
            raise LockHeld(path, text) from err
        if holder is not None:
            os.ftruncate(fd, 0)
            os.pwrite(fd, holder.encode(), 0)
    except BaseException:
        os.close(fd)
        raise
    return fd
