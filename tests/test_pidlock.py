"""``_core.PidLock``, the facts file's lock: a pid word in the shared mapping. Held by a live
process, it waits (and wakes for signals); held by a process killed with SIGKILL, reaped or
not (a zombie), it is taken over and says so; whoever holds it, processes never both do."""

from __future__ import annotations

import mmap
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from helpers import require_engine

TIMEOUT = 60.0
OFFSET = 8


@pytest.fixture(autouse=True)
def _compiled() -> None:
    require_engine("compiled")


def mapping(path: Path) -> tuple[int, mmap.mmap]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    os.ftruncate(fd, 4096)
    return fd, mmap.mmap(fd, 4096)


def lock_on(path: Path) -> Any:
    from pyfriction._core import PidLock

    _fd, mm = mapping(path)
    return PidLock(mm, OFFSET)


def hold(path: str, held: Any, release: Any, flag: Any, die: bool) -> None:
    lock = lock_on(Path(path))
    assert lock.acquire(os.getpid()) is False
    held.set()
    release.wait(TIMEOUT)
    time.sleep(0.2)  # a waiter that did not wait would take it meanwhile and see flag 0
    if die:
        os.kill(os.getpid(), signal.SIGKILL)
    flag.value = 1  # written while the lock is still held
    lock.release()
    os._exit(0)


@pytest.mark.parametrize("end", ["released", "killed", "killed-unreaped"])
def test_the_lock_waits_for_its_holder_or_takes_it_from_a_dead_one(tmp_path: Path, end: str) -> None:
    path = tmp_path / "f"
    lock = lock_on(path)
    ctx = mp.get_context("fork")
    held, release, flag = ctx.Event(), ctx.Event(), ctx.Value("i", 0)
    p = ctx.Process(target=hold, args=(str(path), held, release, flag, end != "released"))
    p.start()
    try:
        assert held.wait(TIMEOUT)
        assert lock.holder() == p.pid
        release.set()
        if end == "killed-unreaped":
            # The holder dies while nobody waits; not reaped (no join), it is a zombie, which
            # kill(pid, 0) still finds: the wait must still end.
            deadline = time.monotonic() + TIMEOUT
            while Path(f"/proc/{p.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
                assert time.monotonic() < deadline
                time.sleep(0.01)
        got: list[bool] = []  # in a thread: a wait that never ends fails the test, not the run
        waiter = threading.Thread(target=lambda: got.append(lock.acquire(os.getpid())), daemon=True)
        waiter.start()
        waiter.join(TIMEOUT)
        assert got == [end != "released"]  # taken over (True) from a dead holder
        assert flag.value == (0 if end != "released" else 1)
        assert lock.holder() == os.getpid()
        lock.release()
        assert lock.holder() == 0
    finally:
        release.set()
        p.join(TIMEOUT)
    assert p.exitcode == (0 if end == "released" else -signal.SIGKILL)


def count(path: str, rounds: int, start: Any) -> None:
    """Increment a plain (not atomic) counter under the lock, reading and writing it apart."""
    _fd, mm = mapping(Path(path))
    from pyfriction._core import PidLock

    lock, me = PidLock(mm, OFFSET), os.getpid()
    start.wait(TIMEOUT)
    for i in range(rounds):
        lock.acquire(me)
        n = int.from_bytes(mm[64:72], "little")
        if i % 64 == 0:
            time.sleep(0)  # let the other in while held: it must wait
        mm[64:72] = (n + 1).to_bytes(8, "little")
        lock.release()


def test_processes_never_hold_it_together(tmp_path: Path) -> None:
    path = tmp_path / "f"
    _fd, mm = mapping(path)
    ctx = mp.get_context("fork")
    start = ctx.Event()
    rounds = 20_000
    procs = [ctx.Process(target=count, args=(str(path), rounds, start)) for _ in range(3)]
    for p in procs:
        p.start()
    start.set()
    for p in procs:
        p.join(TIMEOUT * 4)
        assert p.exitcode == 0
    assert int.from_bytes(mm[64:72], "little") == 3 * rounds  # no increment lost


def test_a_waiter_is_woken_by_a_signal_without_the_lock(tmp_path: Path) -> None:
    """Waiting without the GIL, the waiter still looks at signals: a handler that raises ends
    the wait (as Ctrl-C would), and the lock is not taken."""
    path = tmp_path / "f"
    lock = lock_on(path)
    assert lock.acquire(os.getpid()) is False  # held here, by a live process
    script = textwrap.dedent(
        f"""
        import mmap, os, signal, sys, time
        from pyfriction._core import PidLock
        fd = os.open({str(path)!r}, os.O_RDWR)
        lock = PidLock(mmap.mmap(fd, 4096), {OFFSET})
        class Woken(Exception):
            pass
        def wake(*_):
            raise Woken()
        signal.signal(signal.SIGALRM, wake)
        signal.setitimer(signal.ITIMER_REAL, 0.3)
        t = time.monotonic()
        try:
            lock.acquire(os.getpid())
        except Woken:
            print("woken", lock.holder() == {os.getpid()}, time.monotonic() - t < 30)
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=TIMEOUT)
    lock.release()
    assert out.stdout.split() == ["woken", "True", "True"], out.stderr


def test_bad_arguments_are_refused(tmp_path: Path) -> None:
    from pyfriction._core import PidLock

    _fd, mm = mapping(tmp_path / "f")
    for offset in (-4, 2, 4096, 4094):
        with pytest.raises(ValueError, match="does not fit"):
            PidLock(mm, offset)
    with pytest.raises(ValueError, match="never 0"):
        PidLock(mm, 0).acquire(0)
