"""``pyfriction._filelock.lock_exclusive``: tries without waiting, then waits; the lock it
takes is the same exclusive lock as before (the facts file's record lock, the sidecar's shared
files' ``flock``): held by another process, it is taken only once that process lets go, or
dies."""

from __future__ import annotations

import errno
import fcntl
import multiprocessing as mp
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from pyfriction._filelock import lock_exclusive

TIMEOUT = 60.0


def holder(path: str, whole: bool, held: Any, release: Any, flag: Any, die: bool) -> None:
    fd = os.open(path, os.O_RDWR)
    if whole:
        fcntl.flock(fd, fcntl.LOCK_EX)
    else:
        fcntl.lockf(fd, fcntl.LOCK_EX, 1, 0)
    held.set()
    release.wait(TIMEOUT)
    time.sleep(0.2)  # a lock that did not wait would be taken meanwhile, and see flag 0
    if die:
        os.kill(os.getpid(), signal.SIGKILL)
    flag.value = 1  # written while the lock is still held
    os._exit(0)  # the lock goes with the process


@pytest.mark.parametrize("whole", [False, True], ids=["lockf", "flock"])
@pytest.mark.parametrize("die", [False, True], ids=["released", "holder-killed"])
def test_the_lock_waits_for_its_holder(tmp_path: Path, whole: bool, die: bool) -> None:
    path = str(tmp_path / "f")
    Path(path).write_bytes(b"\0" * 8)
    ctx = mp.get_context("fork")
    held, release, flag = ctx.Event(), ctx.Event(), ctx.Value("i", 0)
    p = ctx.Process(target=holder, args=(path, whole, held, release, flag, die))
    p.start()
    assert held.wait(TIMEOUT)
    fd = os.open(path, os.O_RDWR)
    try:
        # Held elsewhere: a try that does not wait fails, as lock_exclusive's first tries do.
        with pytest.raises(OSError):
            if whole:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            else:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, 0)
        release.set()
        lock_exclusive(fd, whole=whole)  # returns once the holder let go (or died)
        assert flag.value == (0 if die else 1)
        p.join(TIMEOUT)
        assert p.exitcode == (-signal.SIGKILL if die else 0)
    finally:
        os.close(fd)


def test_an_error_other_than_busy_is_raised() -> None:
    r, w = os.pipe()
    os.close(r)
    os.close(w)
    for whole in (False, True):
        with pytest.raises(OSError) as err:
            lock_exclusive(r, whole=whole)  # closed: EBADF at once, not after the tries
        assert err.value.errno == errno.EBADF
