"""Giving a memory-mapped file its disk blocks when it is created.

A store file, its facts file and the sidecar's shared files are written through a shared
mapping. Made with ``ftruncate`` alone, such a file is sparse: a page written for the first
time needs a block from the file system at that moment, and when the disk is full the kernel
cannot report that to a write through memory; it kills the process with ``SIGBUS``. That
process is the host application, not only pyfriction. So each file gets all of its blocks
(``posix_fallocate``) while it is created, before anyone maps it, and a file system too full
to hold it is an error at open, where the caller can act on it.

Where the file system has no ``fallocate``, glibc writes a zero into each block instead. That
is still safe here, because the file is new and nobody has mapped it yet. A C library that
reports the missing support instead (musl) gets the sparse file of before, with a warning.
Copy-on-write file systems (btrfs, ZFS) need new blocks even to overwrite, so there this is a
check at creation and not a guarantee.
"""

from __future__ import annotations

import errno
import logging
import os

__all__ = ["reserve"]

log = logging.getLogger("pyfriction")

#: What a file system without ``fallocate`` answers (where the C library does not emulate it).
_UNSUPPORTED = (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)


def reserve(fd: int, size: int, path: str) -> None:
    """Allocate the blocks of the new file ``fd`` (``path``) up to ``size`` bytes; the file is
    ``size`` bytes long afterwards. Raises :class:`OSError` with a message that names the file,
    the size and what the file system has left. The file is then truncated back to empty, so
    the next open creates it afresh."""
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as exc:
        if exc.errno in _UNSUPPORTED:
            log.warning("%s: the file system cannot allocate blocks ahead (%s); the file is sparse, and a disk "
                        "that fills up can stop this process (SIGBUS)", path, exc.strerror)  # fmt: skip
            os.ftruncate(fd, size)
            return
        os.ftruncate(fd, 0)
        left = _free_bytes(path)
        room = f"; the file system has {left:,} bytes left" if left is not None else ""
        reason = "the disk is full" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else exc.strerror
        raise OSError(exc.errno, f"{path} needs {size:,} bytes: {reason}{room}") from None


def _free_bytes(path: str) -> int | None:
    try:
        st = os.statvfs(os.path.dirname(os.path.abspath(path)))
    except OSError:
        return None
    return st.f_bavail * st.f_frsize
