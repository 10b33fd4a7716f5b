"""Writing a large file past the page cache (``O_DIRECT``) where the file system allows it.

A snapshot is written once and read only at the next start. Through the page cache its
hundreds of MiB would first take as much fresh memory, evicting pages the host uses, and
fresh memory is the slow part: on the 2-core CI machine (a VM, where a new page can cost a
fault in the hypervisor too) 214 MiB took 860 ms to reach a cold page cache, and 150 ms
written directly. Direct I/O wants block-aligned memory, offsets and lengths, so the bytes
go through one page-aligned staging buffer; the last partial block is written buffered.
Where ``O_DIRECT`` does not exist or the file system refuses it, every write is buffered.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import mmap
import os
import tempfile
from collections.abc import Iterator
from typing import Any

__all__ = ["BLOCK", "DirectWriter", "replace_atomically", "set_direct", "write_all"]

#: Alignment for offsets and lengths: the largest logical block size in common use.
BLOCK = 4096
#: The staging buffer: big enough that each write is one large request.
STAGE = 4 << 20
_O_DIRECT: int = getattr(os, "O_DIRECT", 0)


class DirectWriter:
    """Appends to an open file descriptor, past the page cache when it can.

    ``write()`` everything, then ``flush()``: the file is whole after it (syncing and closing
    the descriptor are the caller's). ``direct`` tells whether direct I/O is in use, and
    ``direct_bytes`` how many bytes were written past the page cache.
    """

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.direct = set_direct(fd, True)
        # mmap memory is page-aligned, as direct I/O requires of the buffer too.
        self._stage: Any = mmap.mmap(-1, STAGE) if self.direct else None
        self._fill = 0
        self.direct_bytes = 0

    def write(self, data: Any) -> None:
        """Append ``data`` (any bytes-like object)."""
        view = memoryview(data).cast("B")
        if self._stage is None:
            write_all(self.fd, view)
            return
        while len(view):
            n = min(len(view), STAGE - self._fill)
            self._stage[self._fill : self._fill + n] = view[:n]
            self._fill += n
            view = view[n:]
            if self._fill == STAGE:
                self._drain(STAGE)

    def flush(self) -> None:
        """Write what is staged; the writer takes no more data after it."""
        if self._stage is not None:
            whole = self._fill // BLOCK * BLOCK
            if whole:
                self._drain(whole)
            if self._fill:  # the partial last block: buffered
                if self.direct and not set_direct(self.fd, False):
                    raise OSError(errno.EINVAL, "cannot leave direct I/O for the file's last block")
                self.direct = False
                with memoryview(self._stage) as stage:
                    write_all(self.fd, stage[: self._fill])
                self._fill = 0
            self._stage.close()
            self._stage = None

    def _drain(self, n: int) -> None:
        """Write the first ``n`` staged bytes (a multiple of BLOCK) and keep the rest."""
        with memoryview(self._stage) as stage:
            done = 0
            while done < n:
                try:
                    wrote = os.write(self.fd, stage[done:n])
                    done += wrote
                    if self.direct:
                        self.direct_bytes += wrote
                except OSError as exc:
                    # A device with larger blocks, or a file system that took the flag but
                    # not the write: the failed call wrote nothing, so go on buffered.
                    if not self.direct or exc.errno != errno.EINVAL or not set_direct(self.fd, False):
                        raise
                    self.direct = False
        rest = self._fill - n
        if rest:
            self._stage.move(0, n, rest)
        self._fill = rest


@contextlib.contextmanager
def replace_atomically(path: str | os.PathLike[str], prefix: str = ".pyfriction-") -> Iterator[DirectWriter]:
    """Write a file that replaces ``path`` whole or not at all: the block writes to a
    :class:`DirectWriter` on a temporary file beside ``path``, which is then flushed,
    fsynced and renamed over it. An exception leaves the old file and no temporary one.
    (Syncing the directory, where the rename must be durable at once, is the caller's.)"""
    target = os.fspath(path)
    fd, tmp = tempfile.mkstemp(prefix=prefix, dir=os.path.dirname(os.path.abspath(target)))
    try:
        try:
            out = DirectWriter(fd)
            yield out
            out.flush()
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def set_direct(fd: int, on: bool) -> bool:
    """Turn ``O_DIRECT`` on or off for ``fd``; False where that cannot be done (no such flag,
    or a file system that refuses it, as tmpfs does)."""
    if not _O_DIRECT:
        return False
    try:
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        fcntl.fcntl(fd, fcntl.F_SETFL, flags | _O_DIRECT if on else flags & ~_O_DIRECT)
    except OSError:
        return False
    return True


def write_all(fd: int, view: memoryview) -> None:
    """Write all of ``view`` at ``fd``'s position (a write may take only part of it)."""
    while len(view):
        n = os.write(fd, view)
        view = view[n:]
