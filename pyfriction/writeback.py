"""Paced write-back of a ``file://`` store's files (the store and its facts file).

A shared store is a memory-mapped file: what the processes write is in the page cache, and
the kernel writes it to the disk when it decides to (on Linux, pages dirty for 30 s,
``vm.dirty_expire_centisecs``). ``msync(MS_ASYNC)``, which the periodic write-back called
before, does nothing on Linux since 2.6.19, so that was the only write-back there was: every
30 s, whatever of the store was dirty at once. In the sidecar's benchmark (a million users)
that was some 280 MB handed to the disk in one go; a journal's ``fsync`` queued behind it waited tens of milliseconds, and the writers of
the store stalled on the pages being cleaned, for as long as a third of a second.

Here a pass walks each file in steps of :data:`STEP` bytes: each step writes that range's
dirty pages and waits for them (``sync_file_range``, without the GIL, see
``pyfriction._core.write_back``), then rests as long as the step took (``duty``: the pass
keeps the disk busy at most half of the time), and ends with an ``fdatasync`` of the file:
what was dirtied meanwhile, the file's allocation, and the device's cache flushed. So the disk
gets at most one step at a time, and a pass every ``interval`` seconds keeps the amount left
for the kernel's own write-back (and for a checkpoint's) small. Clean ranges cost a look-up of
the page cache each, not a write.

:func:`copy_file` paces a copy the same way: the sidecar's workers keep their store in memory
(``live_dir``) and copy it to the disk at each checkpoint (``pyfriction_server.live``).
"""

from __future__ import annotations

import errno
import fcntl
import logging
import mmap
import os
import struct
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from typing import Any

from .directio import BLOCK, set_direct, write_all

__all__ = ["STEP", "WriteBack", "copy_file", "write_back_files"]

log = logging.getLogger("pyfriction")

#: Bytes written back per step: small enough that a journal's fsync waits for at most one
#: step of ours, large enough that a pass over a million users' files is a few hundred calls.
STEP = 1 << 20


def _ranged() -> tuple[Callable[[int, int, int], None] | None, bool]:
    try:
        from . import _core
    except ImportError:  # the pure-Python engine: no ranged call, fdatasync per file
        return None, False
    return _core.write_back, bool(_core.WRITE_BACK_RANGED)


def write_back_files(
    paths: Sequence[str],
    *,
    step: int = STEP,
    duty: float = 0.5,
    stop: threading.Event | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> int:
    """Write the dirty pages of ``paths`` back to the disk one ``step`` at a time, resting
    after each step so that the disk is busy with them at most ``duty`` of the time, then
    ``fdatasync`` each file. A missing file is skipped; ``stop`` set ends the pass early
    (without the final sync of the file in hand). Returns the bytes walked. Raises
    ``OSError`` (the pages stay dirty: the next pass or the kernel retries them)."""
    if step <= 0:
        raise ValueError("step must be positive")
    if not 0.0 < duty <= 1.0:
        raise ValueError("duty must be in (0, 1]")
    rest = (1.0 - duty) / duty
    if stop is None:  # an explicit pass (Tracker.sync()) rests too: nobody ends it early
        stop = threading.Event()
    step_back, ranged = _ranged()
    walked = 0
    for path in paths:
        try:
            fd = os.open(path, os.O_RDWR | getattr(os, "O_CLOEXEC", 0))
        except FileNotFoundError:
            continue
        try:
            size = os.fstat(fd).st_size
            if ranged and step_back is not None:
                for offset in range(0, size, step):
                    started = clock()
                    step_back(fd, offset, step)
                    spent = clock() - started
                    walked += min(step, size - offset)
                    if _rested(spent, rest, stop):
                        return walked
            else:
                walked += size
            os.fdatasync(fd)
        finally:
            os.close(fd)
    return walked


def _rested(spent: float, rest: float, stop: threading.Event) -> bool:
    """Rest after a step that took ``spent`` seconds; True when ``stop`` was set meanwhile.
    A clean range takes microseconds: no rest. A step that wrote rests as long (times
    ``rest``), so that the journal's fsyncs find the disk free that share of the time."""
    return stop.wait(spent * rest if spent > 1e-4 else 0.0)


def copy_file(
    src: str,
    dst: str,
    *,
    step: int = STEP,
    duty: float = 0.5,
    stop: threading.Event | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> bool:
    """Copy ``src`` over ``dst`` (created, or resized to ``src``'s size) one ``step`` at a
    time, resting as :func:`write_back_files` does, then ``fdatasync`` ``dst``. Returns False
    when ``stop`` ended the copy early (``dst`` is then part old, part new). Raises ``OSError``.

    ``dst`` is written past the page cache where its file system allows
    (:mod:`pyfriction.directio`): a copy of a million users' store then takes no memory and
    leaves the kernel nothing to write back later. Each step is read straight into one
    page-aligned buffer and written from it, both without the GIL. ``src`` may change
    meanwhile (the sidecar's workers keep writing to their live store): each step copies its
    range as it is at that moment."""
    if step <= 0 or step % BLOCK:
        raise ValueError(f"step must be a positive multiple of {BLOCK}")
    if not 0.0 < duty <= 1.0:
        raise ValueError("duty must be in (0, 1]")
    rest = (1.0 - duty) / duty
    if stop is None:
        stop = threading.Event()
    sfd = os.open(src, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    try:
        info = os.fstat(sfd)
        size = info.st_size
        dfd = os.open(dst, os.O_WRONLY | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), info.st_mode & 0o777)
        try:
            if os.fstat(dfd).st_size != size:
                os.ftruncate(dfd, size)
            direct = set_direct(dfd, True)
            buf = mmap.mmap(-1, step)  # page-aligned, as direct I/O wants the memory too
            try:
                for offset in range(0, size, step):
                    started = clock()
                    n = os.preadv(sfd, [buf], offset)
                    if n <= 0:  # src shrank meanwhile: the rest of dst stays as it was
                        break
                    if direct and n % BLOCK:  # the file's last, partial block: buffered
                        direct = _buffered(dfd)
                    os.lseek(dfd, offset, os.SEEK_SET)
                    with memoryview(buf) as view:
                        try:
                            write_all(dfd, view[:n])
                        except OSError as exc:
                            # A device with larger blocks, or a file system that took the flag
                            # but not the write: the failed call wrote nothing, go on buffered.
                            if not direct or exc.errno != errno.EINVAL:
                                raise
                            direct = _buffered(dfd)
                            write_all(dfd, view[:n])
                    if _rested(clock() - started, rest, stop):
                        return False
            finally:
                buf.close()
            os.fdatasync(dfd)
        finally:
            os.close(dfd)
    finally:
        os.close(sfd)
    return True


def _buffered(fd: int) -> bool:
    """Leave direct I/O for ``fd``; returns False (``direct`` from then on)."""
    if not set_direct(fd, False):
        raise OSError(errno.EINVAL, "cannot leave direct I/O for the file's last block")
    return False


#: Next to a store: the start of the last periodic pass over it, by any process.
TURN_SUFFIX = ".writeback"
_STAMP = struct.Struct("<d")


def _my_turn(path: str, interval: float, clock: Callable[[], float] = time.monotonic) -> bool:
    """Whether this process should make the periodic pass now: not when another process
    sharing the store started one less than ``interval`` ago (``path`` holds that start,
    ``CLOCK_MONOTONIC``, the same clock in every process of the machine; a start from before
    a reboot, later than now, does not count). Every pass write-protects the pages it cleans,
    and every process writing to one of them then takes a fault (and the machine a TLB
    shootdown): with N processes each passing every ``interval``, the store's hot pages
    would be cleaned N times as often for no more durability. Where the file cannot be
    opened, the pass is made. The lock is held while the stamp is read and written, not
    during the pass (a pass over a large store takes seconds)."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o600)
    except OSError:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        now = clock()
        stamp = os.pread(fd, _STAMP.size, 0)
        if len(stamp) == _STAMP.size:
            last = _STAMP.unpack(stamp)[0]
            if last <= now and now - last < interval:
                return False
        os.pwrite(fd, _STAMP.pack(now), 0)
        return True
    finally:
        os.close(fd)  # and the lock with it


class WriteBack:
    """A thread that passes over ``paths`` (:func:`write_back_files`) every ``interval``
    seconds while ``owner`` lives, so that an OS crash loses about that much of what was
    written to them; a pass that takes longer delays the next. Of the processes sharing the
    files, one passes per ``interval`` (:func:`_my_turn`). Restarted in a forked child
    (a thread does not survive the fork); :meth:`stop` ends it."""

    def __init__(self, owner: Any, paths: Sequence[str], interval: float) -> None:
        if not interval > 0:
            raise ValueError("sync_interval must be positive")
        self._owner = weakref.ref(owner)
        self.paths = tuple(paths)
        self.interval = interval
        self._stop = threading.Event()
        self._failed = False
        self._start()
        _running.add(self)

    def _start(self) -> None:
        self._stop = threading.Event()
        threading.Thread(target=self._run, name="pyfriction-writeback", daemon=True).start()

    def _run(self) -> None:
        stop = self._stop
        while not stop.wait(self.interval):
            if self._owner() is None:
                return
            try:
                if _my_turn(self.paths[0] + TURN_SUFFIX, self.interval):
                    write_back_files(self.paths, stop=stop)
            except OSError as exc:  # a disk error: said once, retried every interval
                if not self._failed:
                    log.error("write-back of the store failed (retried every %gs): %s", self.interval, exc)
                self._failed = True
            else:
                self._failed = False

    def stop(self) -> None:
        """End the thread (a pass under way stops at its next step)."""
        self._stop.set()


_running: weakref.WeakSet[WriteBack] = weakref.WeakSet()


def _restart_in_child() -> None:
    for writer in list(_running):
        if not writer._stop.is_set():
            writer._start()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_restart_in_child)
