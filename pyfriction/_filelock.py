"""Taking a file lock that other processes hold for microseconds at a time.

A process that waits for an ``fcntl``/``flock`` lock is put to sleep by the kernel and woken
long after the holder let go: two processes sharing a ``file://`` store's facts file, each
holding its lock for one episode's facts at a time, ran at 0.99x the events/s of one (the
benchmark in ``benchmarks/test_store.py``). Trying first without waiting, yielding the core
between tries, they run at 1.52-1.65x. So :func:`lock_exclusive` tries :data:`SPINS` times, then
waits; a holder that died is still released by the kernel, as before.

The facts file has since moved to a pid word in its header (``_core/pidlock.pxi``: one
compare-and-swap), as have the sidecar's shared files where the core is built; this remains
their lock where it is not. :class:`BusyLock` is the one way both take their lock: this
process's threads in turn, then the processes, then a ``busy`` word that a holder dying in
the middle of a change leaves set.
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct
import threading
from typing import Any

__all__ = ["SPINS", "BusyLock", "lock_exclusive"]

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


class BusyLock:
    """The lock of a mapped file shared by processes (the facts file, the sidecar's shared
    files): a thread lock of the caller's (the pid word, like ``flock`` on one open file,
    cannot tell this process's threads apart), then ``word`` (a ``_core.PidLock``: a waiter
    takes it over from a holder that died) or, where the core is not built, ``flock`` on
    ``fd``; then the ``busy`` word at ``at`` in ``mm`` is set to this pid until a change is
    complete. A holder that dies mid-change leaves it set: the next holder is told to repair."""

    __slots__ = ("at", "busy", "fd", "mm", "word")

    def __init__(self, mm: Any, fd: int, word: Any, busy: struct.Struct, at: int) -> None:
        self.mm, self.fd, self.word, self.busy, self.at = mm, fd, word, busy, at

    def hold(self, threads: threading.Lock) -> int:
        """Take the lock; returns what ``busy`` held: not 0 when the last holder died in the
        middle of a change (repair, then :meth:`let_go` with ``clean``)."""
        threads.acquire()
        try:
            if self.word is not None:
                self.word.acquire(os.getpid())
            else:
                lock_exclusive(self.fd, whole=True)
        except BaseException:
            threads.release()
            raise
        try:
            before: int = self.busy.unpack_from(self.mm, self.at)[0]
            self.busy.pack_into(self.mm, self.at, os.getpid())
        except BaseException:
            self.let_go(threads, clean=False)
            raise
        return before

    def let_go(self, threads: threading.Lock, clean: bool) -> None:
        """Release the lock; ``clean``: the change is complete (else ``busy`` keeps this pid,
        and the next holder repairs first, as after a crash)."""
        try:
            if clean:
                self.busy.pack_into(self.mm, self.at, 0)
        finally:
            try:
                if self.word is not None:
                    self.word.release()
                else:
                    fcntl.flock(self.fd, fcntl.LOCK_UN)
            finally:
                threads.release()
