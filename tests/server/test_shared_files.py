"""The files the workers of one sidecar share (pyfriction_server.shared): the dedupe memory,
the watermark and the guidance bell, checked against a model and across real processes."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import threading
from pathlib import Path
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from pyfriction.recent import RecentIds, TaggedIds, fingerprint
from pyfriction_server.shared import BOOT_ID_PATH, Bell, Checkpoint, SharedIds, Watermark, boot_id

#: Every table test runs on the compiled kernel and on its pure-Python twin.
kernels = pytest.mark.parametrize(
    "compiled",
    [pytest.param(True, marks=pytest.mark.skipif(TaggedIds is None, reason="core not built")), False],
    ids=["compiled", "python"],
)
ids = st.lists(st.lists(st.sampled_from([f"id{i}" for i in range(12)] + [None]), max_size=6), max_size=25)


@kernels
@settings(max_examples=200, deadline=None)
@given(batches=ids, capacity=st.integers(1, 6))
def test_shared_ids_remember_at_least_the_last_capacity(tmp_path_factory: object, compiled: bool,
                                                         batches: list[list[str | None]], capacity: int) -> None:  # fmt: skip
    """An id among the last ``capacity`` distinct ones is always a duplicate, a new one never
    is; in between (older ids) either answer is allowed. With enough room, the answers are
    exactly those of the single-process RecentIds."""
    path = str(tmp_path_factory.mktemp("ids") / "dedupe.ids")  # type: ignore[attr-defined]
    shared = SharedIds(path, capacity, compiled=compiled)
    exact, roomy = RecentIds(100), SharedIds(path + ".roomy", 100, compiled=compiled)
    recent: list[str] = []  # distinct ids in the order they were remembered, most recent last
    try:
        for tag, batch in enumerate(batches, start=1):
            keep = shared.filter(batch, tag)
            kept = set(range(len(batch)) if keep is None else keep)
            seen_here: set[str] = set()
            for index, key in enumerate(batch):
                if key is None:
                    assert index in kept
                    continue
                if key in seen_here or key in recent[-capacity:]:
                    assert index not in kept, (key, recent)
                elif key not in recent:
                    assert index in kept
                seen_here.add(key)
                if index in kept:  # remembered (anew): the most recent now; a retry moves nothing
                    if key in recent:
                        recent.remove(key)
                    recent.append(key)
            assert roomy.filter(batch, tag) == exact.filter(batch)
    finally:
        shared.close()
        roomy.close()


@kernels
def test_a_replayed_record_is_not_a_duplicate_of_itself(tmp_path: Path, compiled: bool) -> None:
    shared = SharedIds(str(tmp_path / "ids"), 10, compiled=compiled)
    assert shared.filter(["a", "b"], tag=7) is None
    assert shared.filter(["a", "b", "c"], tag=7) is None  # the same record, replayed: all kept
    assert shared.filter(["a", "c", "d"], tag=8) == [2]  # another record: a and c are retries
    assert shared.filter(["e", "e", None, "e"], tag=9) == [0, 2]  # repeated in the batch: once
    assert len(shared) == 5
    shared.close()


def _remember(path: str, start: int, compiled: bool) -> None:
    shared = SharedIds(path, 1000, compiled=compiled)
    for n in range(start, start + 200):
        shared.filter([f"id{n}"], tag=start + 1)


@kernels
def test_processes_share_the_memory_and_survive_a_holder_killed_mid_change(tmp_path: Path, compiled: bool) -> None:
    path = str(tmp_path / "ids")
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_remember, args=(path, start, compiled)) for start in (0, 200)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    shared = SharedIds(path, 1000, compiled=compiled)
    assert shared.filter([f"id{n}" for n in range(400)], tag=99) == []  # all seen, by one or the other
    # a holder that died mid-change left its pid in the busy word: the next one repairs
    dead = ctx.Process(target=int)
    dead.start()
    dead.join(60)
    shared.mm[shared.busy_at : shared.busy_at + 8] = (dead.pid or 1).to_bytes(8, "little")
    assert shared.filter(["id5", "new"], tag=100) == [1]
    assert len(shared) == 401
    shared.close()


def _die_holding(path: str, bell: bool) -> None:
    shared: Any = Bell(path) if bell else SharedIds(path, 1000)
    shared._hold()  # the lock taken, busy set: killed in the middle of a change
    os.kill(os.getpid(), signal.SIGKILL)


@pytest.mark.parametrize("bell", [False, True], ids=["ids", "bell"])
def test_a_holder_killed_with_the_lock_wedges_nobody(tmp_path: Path, bell: bool) -> None:
    """The lock of the shared files (the header's pid word where the core is built) is taken
    over from a process killed while holding it, and the file repaired first."""
    path = str(tmp_path / "shared")
    shared: Any = Bell(path) if bell else SharedIds(path, 1000)
    victim = mp.get_context("fork").Process(target=_die_holding, args=(path, bell))
    victim.start()
    victim.join(60)
    assert victim.exitcode == -signal.SIGKILL
    assert int.from_bytes(shared.mm[shared.busy_at : shared.busy_at + 8], "little") == victim.pid
    done: list[Any] = []
    if bell:
        work = threading.Thread(target=lambda: done.append(shared.ring("alice")), daemon=True)
    else:
        work = threading.Thread(target=lambda: done.append(shared.filter(["x", "x"], tag=1)), daemon=True)
    work.start()
    work.join(60)  # a wedged lock would never return
    assert done == [None] if bell else done == [[0]]
    assert int.from_bytes(shared.mm[shared.busy_at : shared.busy_at + 8], "little") == 0
    shared.close()


def test_the_watermark_persists(tmp_path: Path) -> None:
    mark = Watermark(str(tmp_path / "applied"))
    assert mark.value == 0
    mark.set(42 << 48 | 7)
    mark.sync()
    mark.close()
    assert Watermark(str(tmp_path / "applied")).value == 42 << 48 | 7


def _ring(path: str, users: list[str]) -> None:
    bell = Bell(path)
    for user in users:
        bell.ring(user)


def test_the_bell_carries_users_across_processes(tmp_path: Path) -> None:
    path = str(tmp_path / "bell")
    bell = Bell(path)
    start = bell.count
    p = mp.get_context("spawn").Process(target=_ring, args=(path, ["alice", "bob"]))
    p.start()
    p.join(60)
    assert p.exitcode == 0
    count, keys = bell.heard(start)
    assert count == start + 2 and keys == [fingerprint("alice"), fingerprint("bob")]
    assert bell.heard(count) == (count, [])
    for n in range(Bell.SIZE):  # a reader a whole ring behind is told to wake everyone
        bell.ring(f"u{n}")
    assert bell.heard(count)[1] is None
    bell.close()


def test_a_file_of_other_parameters_starts_afresh(tmp_path: Path) -> None:
    path = str(tmp_path / "ids")
    small = SharedIds(path, 10)
    small.filter(["a"], tag=1)
    small.close()
    big = SharedIds(path, 20)  # another capacity: ids of past deliveries are not worth a refusal
    assert big.filter(["a"], tag=2) is None
    big.close()


# -- where replay starts after the machine went down --------------------------------------------
def test_the_boot_id_is_read_from_the_kernel_or_none(tmp_path: Path) -> None:
    fake = tmp_path / "boot_id"
    fake.write_text("8c0f2e3a-0000-4000-8000-000000000001\n")
    assert boot_id(str(fake)) == "8c0f2e3a-0000-4000-8000-000000000001"
    assert boot_id(str(tmp_path / "missing")) is None
    if os.path.exists(BOOT_ID_PATH):
        assert boot_id() == boot_id()  # the same boot reads the same id
        assert len(boot_id() or "") == 36


@given(steps=st.lists(st.tuples(st.sampled_from(["checkpoint", "start", "reboot"]), st.integers(0, 50)), max_size=25))
@settings(max_examples=150, deadline=None)
def test_replay_starts_from_the_live_watermark_in_the_same_boot_and_from_the_checkpoint_after_a_reboot(
    tmp_path_factory: Any, steps: list[tuple[str, int]]
) -> None:
    """A model of a worker's life: records applied (the live watermark grows), checkpoints
    (the store on disk then holds everything up to the mark), starts (a process crash and
    a restart: replay after the returned mark), reboots (the page cache is lost: the live
    watermark on disk may be anywhere, the store on disk holds at least the last checkpoint).
    Replay never starts after a record the store on disk may lack, and in the same boot it
    starts exactly at the live watermark (nothing counted twice)."""
    directory = str(tmp_path_factory.mktemp("ckpt"))
    ckpt = Checkpoint(directory)
    boot, boots = "boot-0", 0
    live = durable = 0  # the live watermark; what the store on disk holds for sure
    assert ckpt.recovery_mark(live, boot) == 0  # the worker's first start
    for kind, n in steps:
        live += n  # records applied since the last step
        if kind == "checkpoint":
            ckpt.write(boot, live)
            durable = live
        elif kind == "start":  # a process crash in this boot: the page cache is intact
            assert ckpt.recovery_mark(live, boot) == live
        else:  # the machine restarts: the watermark on disk is anything the kernel wrote
            boots += 1
            boot = f"boot-{boots}"
            live = durable + n if n % 2 else max(0, durable - n)  # ahead of the store, or behind
            start = ckpt.recovery_mark(live, boot)
            assert start <= durable
            assert start <= live
            live = start  # replay applies what follows; the store on disk keeps what it held
        assert ckpt.read() is not None and ckpt.read()[0] == boot  # type: ignore[index]


def test_a_first_start_and_a_damaged_checkpoint(tmp_path: Path) -> None:
    ckpt = Checkpoint(str(tmp_path))
    assert ckpt.read() is None
    assert ckpt.recovery_mark(40, "boot-a") == 40  # never cut: the live watermark is right...
    assert ckpt.read() == ("boot-a", 0)  # ...and a reboot from here replays the whole journal
    assert ckpt.recovery_mark(55, "boot-b") == 0
    assert ckpt.read() == ("boot-b", 0)
    ckpt.write("boot-b", 70)
    assert ckpt.recovery_mark(90, "boot-b") == 90
    assert ckpt.recovery_mark(90, "boot-c") == 70
    (tmp_path / Checkpoint.NAME).write_bytes(b"{not json")
    assert ckpt.read() == ("", 0)  # damaged: of no boot, so replay from the start
    assert ckpt.recovery_mark(90, "boot-c") == 0


@pytest.mark.skipif(TaggedIds is None, reason="core not built")
@settings(max_examples=60, deadline=None)
@example(  # past the inline size, with repeats, a replay (tag 1 again) and switches
    batches=[([f"id{i % 290}" for i in range(580)] + [None, "id1"], 1), ([f"id{i}" for i in range(300)], 2),
             ([f"id{i}" for i in range(300)], 1)],
    capacity=100,
)  # fmt: skip
@given(
    batches=st.lists(st.tuples(st.lists(st.sampled_from([f"id{i}" for i in range(300)] + [None]), max_size=600),
                               st.integers(1, 4)), max_size=6),
    capacity=st.integers(1, 400),
)  # fmt: skip
def test_the_compiled_table_answers_as_its_python_twin_for_batches_of_any_size(
    tmp_path_factory: Any, batches: list[tuple[list[str | None], int]], capacity: int
) -> None:
    """Batches past the compiled kernel's inline size (256 ids: its repeats then found with a
    set), repeats within a batch, replays (a tag seen again), generations switching mid-batch."""
    where = tmp_path_factory.mktemp("twins")
    compiled, python = (SharedIds(str(where / name), capacity, compiled=c) for name, c in (("c", True), ("p", False)))
    try:
        for batch, tag in batches:
            assert compiled.filter(batch, tag) == python.filter(batch, tag)
            assert len(compiled) == len(python)
    finally:
        compiled.close()
        python.close()
