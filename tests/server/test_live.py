"""The workers' shared files in memory (``pyfriction_server.live``), in one process.

* A first start makes the live files (the store, its facts, the dedupe memory) in a directory
  of ``live_dir`` named for the state directory, and notes it there; their copies in the state
  directory are whole stores from the start (a restart of the machine before the first
  checkpoint finds a store, not zeros).
* Live files of this boot are used as they are (a crash of every process loses nothing); a
  checkpoint copies them to the state directory, and workers that checkpoint together share
  one copy.
* Lost live files (a container restarted with a fresh /dev/shm, a restart of the machine) are
  restored from the copies and each journal goes back to its last checkpoint.
* Turned off (or moved), the live files are brought back to the state directory first.
* No room, or no such directory: the files stay in the state directory, with a warning.
* At a stop, the live files are freed only when every journal's checkpoint holds all its
  worker applied.
* A model (hypothesis): records applied, checkpoints, and every way a run ends (all processes
  killed, live files lost, a restart of the machine, a clean stop), each followed by a start
  and replay: every user counts exactly their journalled records after each start.

The same with real worker processes: ``tests/server/test_workers.py``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

import pyfriction
from pyfriction_server import live
from pyfriction_server.errors import StateError
from pyfriction_server.settings import Settings
from pyfriction_server.shared import Checkpoint, Watermark

from helpers import tmpfs

pytest.importorskip("pyfriction._core")


def _settings(tmp_path: Path, live_dir: Any = None, **kwargs: Any) -> Settings:
    live_dir = str(tmp_path / "mem") if live_dir is None else str(live_dir)
    os.makedirs(tmp_path / "mem", exist_ok=True)
    return Settings(state_dir=str(tmp_path / "state"), live_dir=live_dir, workers=2, dedupe_size=1_000,
                    engine_config={"capacity": 1_000}, **kwargs)  # fmt: skip


def _score(store: str, user: str, clicks: int = 1) -> None:
    tracker = pyfriction.Tracker(engine="compiled", capacity=1_000, store="file://" + store, sync_interval=None)
    try:
        for i in range(clicks):
            tracker.observe({"user_id": user, "type": "click", "target": "#pay", "ts": time.time() + i * 0.01})
    finally:
        tracker.close()


def _events(store: str, user: str) -> int:
    tracker = pyfriction.Tracker(engine="compiled", capacity=1_000, store="file://" + store, sync_interval=None)
    try:
        state = tracker.state(user)
        return 0 if state is None else int(state.events)
    finally:
        tracker.close()


def _journal(root: Path, index: int, applied: int, checkpoint: int | None) -> Path:
    directory = root / f"journal-{index}"
    directory.mkdir(parents=True, exist_ok=True)
    mark = Watermark(str(directory / "applied"))
    mark.set(applied)
    mark.close()
    if checkpoint is not None:
        Checkpoint(str(directory)).write("a-boot", checkpoint)
    return directory


def _applied(directory: Path) -> int:
    mark = Watermark(str(directory / "applied"))
    try:
        return mark.value
    finally:
        mark.close()


def test_a_first_start_makes_the_live_files_and_notes_them(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    assert live.prepare(settings) == settings
    where = live.directory(settings)
    assert where is not None and os.path.dirname(where) == str(tmp_path / "mem")
    assert {n for n in os.listdir(where) if not n.startswith(".")} == {*live.FILES, live.ORIGIN}
    for name in live.FILES:  # copies in the state directory from the start: stores, not zeros
        assert Path(tmp_path, "state", name).read_bytes() == Path(where, name).read_bytes()
    assert _events(str(tmp_path / "state" / live.FILES[0]), "nobody") == 0
    assert (tmp_path / "state" / live.NOTE).read_text().strip() == where
    assert json.loads(Path(where, live.ORIGIN).read_text())["root"] == str(tmp_path / "state")
    assert live.directory(msgspec.structs.replace(settings, state_dir=str(tmp_path / "other"))) != where


def test_the_live_files_of_this_boot_are_used_as_they_are(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    live.prepare(settings)
    where = live.directory(settings)
    assert where is not None
    _score(os.path.join(where, live.FILES[0]), "u", clicks=3)  # then every process died
    live.prepare(settings)  # the next start
    assert _events(os.path.join(where, live.FILES[0]), "u") == 3


def test_a_checkpoint_copy_holds_what_was_applied_and_is_shared(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    live.prepare(settings)
    where, root = live.directory(settings), str(tmp_path / "state")
    assert where is not None
    _score(os.path.join(where, live.FILES[0]), "u", clicks=2)
    rotated = time.monotonic()
    assert live.save(where, root, rotated) is True
    assert _events(os.path.join(root, live.FILES[0]), "u") == 2
    for name in live.FILES:  # whole copies
        assert Path(root, name).read_bytes() == Path(where, name).read_bytes()
    assert live.save(where, root, rotated) is False  # the other worker rotated before that copy began
    _score(os.path.join(where, live.FILES[0]), "u")
    assert live.save(where, root, time.monotonic()) is True  # a rotation after it: copied again
    assert _events(os.path.join(root, live.FILES[0]), "u") == 3


@pytest.mark.parametrize("how", ["fresh /dev/shm", "another boot"])
def test_lost_live_files_come_back_from_the_copies_and_the_journals_from_their_checkpoints(
    tmp_path: Path, how: str
) -> None:
    settings = _settings(tmp_path)
    live.prepare(settings)
    where, root = live.directory(settings), tmp_path / "state"
    assert where is not None
    _score(os.path.join(where, live.FILES[0]), "before")
    live.save(where, str(root), time.monotonic())
    _score(os.path.join(where, live.FILES[0]), "after")  # applied after the last checkpoint
    journals = [_journal(root, 0, applied=100, checkpoint=40), _journal(root, 1, applied=7, checkpoint=None)]
    if how == "fresh /dev/shm":  # a container restarted on the same kernel: the same boot id
        shutil.rmtree(where)
    else:
        origin = Path(where, live.ORIGIN)
        origin.write_text(json.dumps({**json.loads(origin.read_text()), "boot": "an-earlier-boot"}))
    assert live.prepare(settings) == settings
    assert _events(os.path.join(where, live.FILES[0]), "before") == 1  # from the copy
    assert _events(os.path.join(where, live.FILES[0]), "after") == 0  # its journal replays it
    assert [_applied(j) for j in journals] == [40, 0]  # never checkpointed: replayed whole


def test_a_stop_frees_the_live_files_only_when_every_checkpoint_is_current(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    live.prepare(settings)
    where, root = live.directory(settings), tmp_path / "state"
    assert where is not None
    _journal(root, 0, applied=50, checkpoint=50)
    behind = _journal(root, 1, applied=9, checkpoint=8)  # its last checkpoint failed
    assert live.release(settings) is False
    assert os.path.isdir(where) and (root / live.NOTE).exists()
    Checkpoint(str(behind)).write("a-boot", 9)
    assert live.release(settings) is True
    assert not os.path.exists(where) and not (root / live.NOTE).exists()
    assert live.prepare(settings) == settings  # the next start copies them in again, rewinding nothing
    assert _applied(behind) == 9


@pytest.mark.parametrize("moved_to", ["", "elsewhere"])
def test_live_files_turned_off_or_moved_come_back_to_the_state_directory_first(tmp_path: Path, moved_to: str) -> None:
    settings = _settings(tmp_path)
    live.prepare(settings)
    old = live.directory(settings)
    assert old is not None
    _score(os.path.join(old, live.FILES[0]), "u", clicks=2)  # newer than any copy (no checkpoint since)
    journal = _journal(tmp_path / "state", 0, applied=30, checkpoint=10)
    target = "" if not moved_to else str(tmp_path / moved_to)
    if target:
        os.makedirs(target)
    changed = live.prepare(msgspec.structs.replace(settings, live_dir=target))
    assert changed.live_dir == target
    assert not os.path.exists(old)
    assert _events(str(tmp_path / "state" / live.FILES[0]), "u") == 2
    assert _applied(journal) == 30  # nothing was lost: nothing to replay again
    if target:
        new = live.directory(changed)
        assert new is not None and _events(os.path.join(new, live.FILES[0]), "u") == 2
    else:
        assert not (tmp_path / "state" / live.NOTE).exists()


def test_without_the_directory_the_files_stay_in_the_state_directory(tmp_path: Path, caplog: Any) -> None:
    settings = _settings(tmp_path, live_dir=tmp_path / "no-such-dir")
    with caplog.at_level(logging.WARNING, logger="pyfriction.server"):
        assert live.prepare(settings).live_dir == ""
    assert "stay in the state directory" in caplog.text
    assert live.directory(msgspec.structs.replace(settings, live_dir="")) is None


def test_without_room_the_files_stay_in_the_state_directory(tmp_path: Path, caplog: Any) -> None:
    with tmpfs(tmp_path / "small", "2m") as small:
        settings = msgspec.structs.replace(_settings(tmp_path, live_dir=small), engine_config={"capacity": 50_000})
        with caplog.at_level(logging.WARNING, logger="pyfriction.server"):
            assert live.prepare(settings).live_dir == ""
        assert "stay in the state directory" in caplog.text and "bytes" in caplog.text
        assert os.listdir(small) == []  # nothing half made left to take the memory


def test_a_redis_store_keeps_nothing_in_memory(tmp_path: Path) -> None:
    settings = _settings(tmp_path, store="redis://127.0.0.1:1/0")
    assert live.directory(settings) is None


def test_a_second_sidecar_on_the_directory_waits_then_refuses(tmp_path: Path) -> None:
    """The parent and its workers hold the state directory (the lock goes with the descriptor
    into every worker), so a second sidecar neither starts nor frees the first one's live files."""
    root = str(tmp_path / "state")
    fd = live.claim(root)
    worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(1.0)"], pass_fds=[fd])
    os.close(fd)  # the first parent died; its worker lives on, holding the lock
    try:
        with pytest.raises(StateError, match="in use by another pyfriction-server"):
            live.claim(root, wait=0.2)
        assert live.claim(root, wait=30.0) >= 0  # once the worker is gone
    finally:
        assert worker.wait(30) == 0


# -- a model: every accepted record counted once, whatever happens between starts -------------
OPS = st.sampled_from(["apply", "apply", "apply", "checkpoint", "crash", "lose", "reboot", "stop"])


@settings(max_examples=25, deadline=None)
@given(ops=st.lists(st.tuples(OPS, st.integers(0, 3)), min_size=1, max_size=14))
@example(ops=[("apply", 0), ("checkpoint", 0), ("apply", 1), ("lose", 0)])  # after a checkpoint: replayed
@example(ops=[("apply", 0), ("stop", 0), ("apply", 0), ("reboot", 0), ("apply", 2), ("crash", 0)])
def test_no_record_is_lost_or_counted_twice_across_starts(tmp_path_factory: Any, ops: Any) -> None:
    """One worker, sequential: records are journalled, applied to the live store and the
    watermark moved; checkpoints copy the store and record the watermark; then every way a
    run can end (every process killed, the live files lost with their container, a restart
    of the machine, a clean stop) and the next start (``prepare``, the journal's recovery mark,
    replay after the watermark). A copy made while nothing writes holds exactly the records up
    to its mark, so each user must count exactly their journalled records after every start."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        boot = ["boot-1"]
        monkeypatch.setattr(live, "boot_id", lambda: boot[0])
        _run_model(tmp_path_factory.mktemp("model"), boot, ops)


def _run_model(tmp: Path, boot: list[str], ops: Any) -> None:
    settings_ = _settings(tmp)
    root = tmp / "state"
    journal: list[str] = []  # record k (tag k + 1) brought one event of this user
    state = {"rotated": 0}

    def start() -> str:
        live.prepare(settings_)
        where = live.directory(settings_)
        assert where is not None
        directory = _journal(root, 0, applied=_applied(root / "journal-0"), checkpoint=None)
        mark = Watermark(str(directory / "applied"))
        try:
            mark.set(Checkpoint(str(directory)).recovery_mark(mark.value, boot[0]))
            store = os.path.join(where, live.FILES[0])
            for tag, user in enumerate(journal, 1):  # replay after the watermark
                if tag > mark.value:
                    _score(store, user)
                    mark.set(tag)
        finally:
            mark.close()
        for user in {*journal}:
            assert _events(store, user) == journal.count(user), (ops, user)
        return where

    _journal(root, 0, applied=0, checkpoint=None)
    where = start()
    for op, user_no in ops:
        if op == "apply":
            journal.append(f"u{user_no}")
            _score(os.path.join(where, live.FILES[0]), f"u{user_no}")
            _journal(root, 0, applied=len(journal), checkpoint=None)
        elif op in ("checkpoint", "stop"):
            state["rotated"] = _applied(root / "journal-0")
            live.save(where, str(root), time.monotonic())
            Checkpoint(str(root / "journal-0")).write(boot[0], state["rotated"])
            if op == "stop":
                assert live.release(settings_)
                where = start()
        elif op == "crash":
            where = start()
        elif op == "lose":
            shutil.rmtree(where)
            where = start()
        else:  # reboot: memory gone, a new boot id
            shutil.rmtree(where)
            boot[0] = f"boot-{int(boot[0][5:]) + 1}"
            where = start()
