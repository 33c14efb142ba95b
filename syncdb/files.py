"""Durable file writes: a file is either all there or not there at all.

Write to a temporary name in the same folder, fsync, rename over the final
name, fsync the folder. A crash or a full disk leaves the old file (or none),
never half of a new one.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from .errors import SyncdbError


def write_atomic(path, data: bytes, mode: int = 0o644) -> Path:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except OSError as e:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise disk_error(e, path) from None
    return path


def fsync_dir(folder) -> None:
    # Windows cannot open a folder for fsync; there the rename is already durable enough.
    if os.name == "nt":
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def disk_error(e: OSError, path) -> SyncdbError:
    """Turn an OSError into a message that says what to do."""
    if e.errno == errno.ENOSPC:
        return SyncdbError(f"the disk is full while writing {path}; free some space and run again "
                           "(nothing was lost: the previous state is untouched)")
    if e.errno in (errno.EACCES, errno.EPERM):
        return SyncdbError(f"no permission to write {path}; run as the user that owns the folder")
    return SyncdbError(f"cannot write {path}: {e.strerror or e}")
