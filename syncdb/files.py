"""Durable file writes: a file is either all there or not there at all.

Write to a temporary name in the same folder, fsync, rename over the final
name, fsync the folder. A crash or a full disk leaves the old file (or none),
never half of a new one.
"""

from __future__ import annotations

import errno
import os
import shutil
import sqlite3
from pathlib import Path

from .errors import DiskFull, SyncdbError
from .i18n import _


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
        return DiskFull(_("the disk is full while writing {path}; free some space and run again "
                          "(nothing was lost: the previous state is untouched)").format(path=path))
    if e.errno in (errno.EACCES, errno.EPERM):
        return SyncdbError(_("no permission to write {path}; run as the user that owns the folder").format(path=path))
    return SyncdbError(_("cannot write {path}: {problem}").format(path=path, problem=e.strerror or e))


# Below this much free space, an I/O error from SQLite is taken for a full disk:
# SQLite reports one when it cannot even grow its -shm or -wal file.
NEARLY_FULL = 1 << 20


def is_disk_full(e: Exception, path=None) -> bool:
    """Did ``e`` (an OSError or an sqlite3 error) come from a full disk at ``path``?"""
    if isinstance(e, OSError):
        return e.errno == errno.ENOSPC
    code = getattr(e, "sqlite_errorcode", None)
    if code == sqlite3.SQLITE_FULL:
        return True
    if code is not None and code & 0xFF == sqlite3.SQLITE_IOERR and path is not None:
        try:
            return shutil.disk_usage(path).free < NEARLY_FULL
        except OSError:
            return False
    return False


def storage_error(e: Exception, path, then: str | None = None) -> SyncdbError:
    """A message for an OSError or sqlite3 error met while using the files at ``path``.

    ``then`` is what to do once the cause is fixed (default: run the same command again).
    """
    then = _("run the same command again") if then is None else then
    if is_disk_full(e, path):
        return DiskFull(_("the disk holding {path} is full; free some space there, then {then}. "
                          "Nothing was lost: every step is kept whole or not at all").format(path=path, then=then))
    if isinstance(e, OSError):
        return disk_error(e, path)
    return SyncdbError(_("SQLite could not use the database in {path} ({problem}); check that the disk is "
                         "present and healthy and that this user may write there, then {then}. "
                         "Nothing was lost: every step is kept whole or not at all").format(
        path=path, problem=e, then=then))
