"""Paced write-back of a ``file://`` store's files (:mod:`pyfriction.writeback`).

* A pass writes a file's dirty pages to the disk (``/proc/meminfo``'s ``Dirty`` falls by
  them; skipped where the file system keeps no dirty pages, tmpfs), and so do
  ``Tracker.sync()`` and, by itself every ``sync_interval``, a file-store tracker: the
  periodic ``msync(MS_ASYNC)`` this replaces wrote nothing on Linux.
* The pacing: steps cover the file, each step that wrote is followed by a rest in proportion
  to its time (``duty``), clean steps are not; ``stop`` ends a pass; bad arguments, a missing
  file and a failing disk (logged once, retried) are handled.
* ``copy_file`` (the sidecar's checkpoint copy of its live files): the copy equals the source
  whatever the sizes (a last partial block, a longer or shorter old copy), written past the
  page cache on a disk, with the source's permissions; paced and
  stoppable as a pass is.
"""

from __future__ import annotations

import fcntl
import logging
import mmap
import os
import struct
import threading
import time
import types
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

import pyfriction
from pyfriction import writeback
from pyfriction.writeback import STEP, WriteBack, copy_file, write_back_files

pytestmark = pytest.mark.skipif(not os.path.exists("/proc/meminfo"), reason="needs /proc/meminfo")
core = pytest.importorskip("pyfriction._core")

MB = 1 << 20
SIZE = 64 * MB


def dirty_mb() -> float:
    with open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("Dirty:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no Dirty line")


@pytest.fixture
def dirty_file(tmp_path: Any) -> Iterator[str]:
    """A 64 MB file whose every page was just written through a shared mapping."""
    path = str(tmp_path / "mapped.bin")
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    os.ftruncate(fd, SIZE)
    mm = mmap.mmap(fd, SIZE)
    before = dirty_mb()
    for offset in range(0, SIZE, mmap.PAGESIZE):
        mm[offset] = 1
    if dirty_mb() - before < SIZE / MB / 2:
        mm.close()
        os.close(fd)
        pytest.skip("this file system keeps no dirty pages to write back (tmpfs?)")
    try:
        yield path
    finally:
        mm.close()
        os.close(fd)


def test_a_pass_writes_the_dirty_pages_back(dirty_file: str) -> None:
    before = dirty_mb()
    assert write_back_files([dirty_file], duty=1.0) == SIZE
    assert before - dirty_mb() >= SIZE / MB / 2


def test_a_file_store_is_written_back_every_sync_interval_and_on_sync(tmp_path: Any) -> None:
    users = 200_000

    def fill(tracker: pyfriction.Tracker, tag: str) -> float:
        before = dirty_mb()
        tracker.observe_many([{"user_id": f"{tag}{i}", "type": "click", "target": "#pay"} for i in range(users)])
        return dirty_mb() - before

    # Explicitly: Tracker.sync()
    tracker = pyfriction.Tracker(engine="compiled", store=f"file://{tmp_path / 'a.state'}", capacity=users,
                                 sync_interval=3600)  # fmt: skip
    try:
        grown = fill(tracker, "a")
        if grown < 8:
            pytest.skip("this file system keeps no dirty pages to write back (tmpfs?)")
        before = dirty_mb()
        tracker.sync()
        assert before - dirty_mb() >= grown / 2
    finally:
        tracker.close()
    # By itself, every sync_interval
    tracker = pyfriction.Tracker(engine="compiled", store=f"file://{tmp_path / 'b.state'}", capacity=users,
                                 sync_interval=0.2)  # fmt: skip
    try:
        before = dirty_mb()
        grown = fill(tracker, "b") + before
        deadline = time.monotonic() + 20
        while dirty_mb() > before + (grown - before) / 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert dirty_mb() <= before + (grown - before) / 2
    finally:
        tracker.close()


class Recorder(threading.Event):
    """A stop event that records the rests asked of it instead of taking them."""

    def __init__(self, stop_after: int | None = None) -> None:
        super().__init__()
        self.rests: list[float] = []
        self.stop_after = stop_after

    def wait(self, timeout: float | None = None) -> bool:
        self.rests.append(timeout or 0.0)
        if self.stop_after is not None and len(self.rests) >= self.stop_after:
            self.set()
        return self.is_set()


def fake_steps(monkeypatch: Any, spent: dict[int, float]) -> tuple[list[tuple[int, int]], list[float]]:
    """write_back steps recorded; the clock advances by spent[offset] (default 0) per step."""
    calls: list[tuple[int, int]] = []
    now = [0.0]

    def step(fd: int, offset: int, nbytes: int) -> None:
        calls.append((offset, nbytes))
        now[0] += spent.get(offset, 0.0)

    monkeypatch.setattr(writeback, "_ranged", lambda: (step, True))
    return calls, now


def test_steps_cover_the_file_and_rest_in_proportion(tmp_path: Any, monkeypatch: Any) -> None:
    path = tmp_path / "f.bin"
    path.write_bytes(b"\0" * (3 * STEP + 10))
    calls, now = fake_steps(monkeypatch, {STEP: 0.004, 2 * STEP: 0.00001})
    stop = Recorder()
    walked = write_back_files([str(path), str(tmp_path / "missing")], stop=stop, duty=0.25,
                              clock=lambda: now[0])  # fmt: skip
    assert walked == 3 * STEP + 10
    assert calls == [(0, STEP), (STEP, STEP), (2 * STEP, STEP), (3 * STEP, STEP)]
    # duty 0.25: a step that wrote for 4 ms rests 12 ms; clean steps (< 0.1 ms) do not rest
    assert stop.rests == pytest.approx([0.0, 0.012, 0.0, 0.0])


def test_stop_ends_a_pass(tmp_path: Any, monkeypatch: Any) -> None:
    path = tmp_path / "f.bin"
    path.write_bytes(b"\0" * (5 * STEP))
    calls, now = fake_steps(monkeypatch, {})
    assert write_back_files([str(path)], stop=Recorder(stop_after=2), clock=lambda: now[0]) == 2 * STEP
    assert len(calls) == 2


@pytest.mark.parametrize("kwargs", [{"step": 0}, {"duty": 0.0}, {"duty": 1.5}])
def test_bad_arguments_are_refused(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        write_back_files([], **kwargs)


def test_a_failing_disk_is_logged_once_and_retried(tmp_path: Any, monkeypatch: Any, caplog: Any) -> None:
    path = tmp_path / "f.bin"
    path.write_bytes(b"\0" * STEP)
    tries: list[int] = []

    def broken(fd: int, offset: int, nbytes: int) -> None:
        tries.append(offset)
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(writeback, "_ranged", lambda: (broken, True))

    class Owner:
        pass

    owner = Owner()
    with caplog.at_level(logging.ERROR, logger="pyfriction"):
        writer = WriteBack(owner, [str(path)], 0.01)
        try:
            deadline = time.monotonic() + 10
            while len(tries) < 3 and time.monotonic() < deadline:
                time.sleep(0.01)
        finally:
            writer.stop()
    assert len(tries) >= 3
    failures = [r for r in caplog.records if "write-back of the store failed" in r.getMessage()]
    assert len(failures) == 1 and "Input/output error" in failures[0].getMessage()


def test_the_thread_ends_with_its_owner(tmp_path: Any) -> None:
    class Owner:
        pass

    owner = Owner()
    before = set(threading.enumerate())
    writer = WriteBack(owner, [str(tmp_path / "missing")], 0.01)
    (thread,) = set(threading.enumerate()) - before
    assert thread.name == "pyfriction-writeback"
    del owner
    thread.join(10)
    assert not thread.is_alive()
    writer.stop()


def test_a_pass_without_a_stop_event_rests_too(tmp_path: Any, monkeypatch: Any) -> None:
    """Tracker.sync() (a checkpoint) passes no stop event: its steps that wrote rest all the same."""
    path = tmp_path / "f.bin"
    path.write_bytes(b"\0" * (2 * STEP))
    calls, now = fake_steps(monkeypatch, {0: 0.05, STEP: 0.05})
    made: list[Recorder] = []

    def event() -> Recorder:
        made.append(Recorder())
        return made[-1]

    monkeypatch.setattr(writeback, "threading", types.SimpleNamespace(Event=event))
    assert write_back_files([str(path)], duty=0.5, clock=lambda: now[0]) == 2 * STEP
    assert len(calls) == 2
    (stop,) = made
    assert stop.rests == pytest.approx([0.05, 0.05])


@pytest.mark.parametrize("interval", [1.0, None])
def test_sync_interval_none_starts_no_periodic_write_back(tmp_path: Any, interval: float | None) -> None:
    """For a host that journals what it scores (the sidecar's workers): no thread, but
    ``sync()`` and ``close()`` still write the store back."""
    before = {t for t in threading.enumerate() if t.name == "pyfriction-writeback"}
    tracker = pyfriction.Tracker(engine="compiled", store=f"file://{tmp_path / 'n.state'}", capacity=1_000,
                                 sync_interval=interval)  # fmt: skip
    try:
        new_threads = {t for t in threading.enumerate() if t.name == "pyfriction-writeback"} - before
        assert len(new_threads) == (0 if interval is None else 1)
        tracker.observe({"user_id": "u", "type": "click", "target": "#pay"})
        tracker.sync()
    finally:
        tracker.close()
    reopened = pyfriction.Tracker(engine="compiled", store=f"file://{tmp_path / 'n.state'}", capacity=1_000)
    try:
        assert reopened.stats().users == 1
    finally:
        reopened.close()


BLOCK = 4096


@settings(max_examples=60, deadline=None)
@given(size=st.integers(0, 5 * BLOCK + 3), old=st.integers(0, 7 * BLOCK), steps=st.integers(1, 3))
@example(size=2 * BLOCK, old=0, steps=1)  # whole blocks only: every write direct
@example(size=BLOCK + 1, old=9 * BLOCK, steps=2)  # a partial last block, a longer old copy
def test_a_copy_equals_its_source(tmp_path_factory: Any, size: int, old: int, steps: int) -> None:
    where = tmp_path_factory.mktemp("copy")
    src, dst = where / "src", where / "dst"
    data = os.urandom(size)
    src.write_bytes(data)
    dst.write_bytes(b"\xee" * old)
    assert copy_file(str(src), str(dst), step=steps * BLOCK, duty=1.0)
    assert dst.read_bytes() == data


def test_a_copy_goes_past_the_page_cache_on_a_disk(tmp_path: Any, monkeypatch: Any) -> None:
    """On a disk file system the whole blocks are written with O_DIRECT: a million users' store
    copied at every checkpoint does not grow the page cache (nor leave it dirty)."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    data = os.urandom(3 * MB + 100)
    src.write_bytes(data)
    directs: list[bool] = []
    real_write = writeback.write_all

    def spy(fd: int, view: memoryview) -> None:
        directs.append(bool(fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT))
        real_write(fd, view)

    monkeypatch.setattr(writeback, "write_all", spy)
    assert copy_file(str(src), str(dst), step=MB, duty=1.0)
    assert dst.read_bytes() == data
    assert len(directs) == 4
    if not directs[0]:
        pytest.skip("this file system refuses O_DIRECT")
    assert directs == [True, True, True, False]  # the last, partial block buffered


def test_a_new_copy_takes_the_sources_permissions(tmp_path: Any) -> None:
    src = tmp_path / "src"
    src.write_bytes(b"x" * 10)
    src.chmod(0o600)
    copy_file(str(src), str(tmp_path / "dst"))
    assert (tmp_path / "dst").stat().st_mode & 0o777 == 0o600


def test_a_copy_rests_in_proportion_and_stops_when_asked(tmp_path: Any, monkeypatch: Any) -> None:
    src = tmp_path / "src"
    src.write_bytes(os.urandom(4 * BLOCK))
    ticks = iter(float(i) for i in range(100))  # every step "takes" one second
    waits: list[float] = []
    stop = threading.Event()

    def wait(timeout: float) -> bool:
        waits.append(timeout)
        return len(waits) == 2  # stop asked during the second rest

    monkeypatch.setattr(stop, "wait", wait)
    done = copy_file(str(src), str(tmp_path / "dst"), step=BLOCK, duty=0.25, stop=stop, clock=lambda: next(ticks))
    assert done is False
    assert waits == [3.0, 3.0]  # busy a quarter of the time
    assert (tmp_path / "dst").read_bytes()[: 2 * BLOCK] == src.read_bytes()[: 2 * BLOCK]


@pytest.mark.parametrize("kwargs", [{"step": 0}, {"step": BLOCK + 1}, {"duty": 0.0}, {"duty": 1.5}])
def test_a_copy_refuses_bad_arguments(tmp_path: Any, kwargs: dict[str, Any]) -> None:
    (tmp_path / "src").write_bytes(b"x")
    with pytest.raises(ValueError):
        copy_file(str(tmp_path / "src"), str(tmp_path / "dst"), **kwargs)


def test_a_copy_of_a_missing_file_is_an_error(tmp_path: Any) -> None:
    with pytest.raises(FileNotFoundError):
        copy_file(str(tmp_path / "none"), str(tmp_path / "dst"))
    assert not (tmp_path / "dst").exists()


# -- one periodic pass per interval for every process sharing the store -------------------------


@settings(max_examples=200, deadline=None)
@given(
    interval=st.floats(0.05, 10.0),
    gaps=st.lists(st.floats(0.0, 20.0), min_size=1, max_size=30),
)
def test_a_pass_is_made_only_when_none_started_within_the_interval(
    tmp_path_factory: Any, interval: float, gaps: list[float]
) -> None:
    """Whoever asks (any process, any order): a pass is its turn exactly when the last pass
    started ``interval`` or more ago, so passes are never closer than ``interval``."""
    path = str(tmp_path_factory.mktemp("turn") / ("store.state" + writeback.TURN_SUFFIX))
    now, last = 1000.0, None
    for gap in gaps:
        now += gap
        expected = last is None or now - last >= interval
        assert writeback._my_turn(path, interval, clock=lambda: now) is expected
        if expected:
            last = now


def test_a_start_from_before_a_reboot_does_not_hold_the_pass_back(tmp_path: Any) -> None:
    path = str(tmp_path / ("s.state" + writeback.TURN_SUFFIX))
    assert writeback._my_turn(path, 1.0, clock=lambda: 5000.0)
    # after a reboot CLOCK_MONOTONIC starts again near 0: the old stamp is in its future
    assert writeback._my_turn(path, 1.0, clock=lambda: 12.0)
    assert not writeback._my_turn(path, 1.0, clock=lambda: 12.5)


def test_without_a_turn_file_the_pass_is_made(tmp_path: Any) -> None:
    assert writeback._my_turn(str(tmp_path / "no-such-dir" / "s.state.writeback"), 1.0)


def test_two_writers_of_one_store_pass_once_per_interval_between_them(tmp_path: Any, monkeypatch: Any) -> None:
    """Two write-back threads on one store (as two processes would have; each opens the turn
    file itself): the passes they make start at least ``interval`` apart, as one writer's
    would. Each pass records the start it wrote to the turn file."""
    path = tmp_path / "s.state"
    path.write_bytes(b"\0" * STEP)
    turn = str(path) + writeback.TURN_SUFFIX
    starts: list[float] = []

    def a_pass(paths: Any, stop: Any = None) -> None:
        with open(turn, "rb") as fh:
            starts.append(struct.unpack("<d", fh.read(8))[0])

    monkeypatch.setattr(writeback, "write_back_files", a_pass)

    class Owner:
        pass

    owners = [Owner(), Owner()]
    interval = 0.1
    writers = [WriteBack(owner, [str(path)], interval) for owner in owners]
    wait = threading.Event()
    for _ in range(100):  # until a few passes were made (a loaded machine is slower)
        if len(set(starts)) >= 5:
            break
        wait.wait(0.05)
    for writer in writers:
        writer.stop()
    distinct = sorted(set(starts))
    assert len(distinct) >= 2, "no two passes"
    assert all(b - a >= interval for a, b in zip(distinct, distinct[1:]))
