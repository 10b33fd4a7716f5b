"""Taking a file lock that other processes hold for microseconds at a time.

A process that waits for an ``fcntl``/``flock`` lock is put to sleep by the kernel and woken
long after the holder let go: two processes sharing a ``file://`` store's facts file, each
holding its lock for one episode's facts at a time, ran at 0.99x the events/s of one (the
benchmark in ``benchmarks/test_store.py``). Trying first without waiting, yielding the core
between tries, they run at 1.52-1.65x. So :func:`lock_exclusive` tries :data:`SPINS` times, then
waits; a holder that died is still released by the kernel, as before.

The facts file has since moved to a pid word in its header (``_core/pidlock.pxi``: one
compare-and-swap), as have the sidecar's shared files where the core is built; this remains
their lock where it is not.
"""

from __future__ import annotations

import errno
import fcntl
import os

__all__ = ["SPINS", "lock_exclusive"]

#: Tries without waiting before one that waits.
SPINS = 64
_BUSY = (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK)


def lock_exclusive(fd: int, whole: bool = False) -> None:
    """Lock ``fd`` exclusively: its first byte (``lockf``, a record lock) or, ``whole``, the
    file (``flock``)."""
    for _ in range(SPINS):
        try:
            if whole:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            else:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, 0)
            return
        except OSError as exc:
            if exc.errno not in _BUSY:
                raise
        os.sched_yield()
    if whole:
        fcntl.flock(fd, fcntl.LOCK_EX)
    else:
        fcntl.lockf(fd, fcntl.LOCK_EX, 1, 0)
