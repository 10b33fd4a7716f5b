"""A ``file://`` store on a full disk: an error at open, never a SIGBUS later.

The store, its facts file and the sidecar's shared files are written through shared maps. A
sparse file needs a block the first time each page is written; on a full disk the kernel
kills the writing process (the host application) with SIGBUS. Each file now gets every block
when it is created (:mod:`pyfriction.diskspace`)."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import pyfriction
from pyfriction.store import StoreError
from pyfriction.userstate import facts_path

from helpers import require_engine, tmpfs


def allocated(path: str) -> int:
    return os.stat(path).st_blocks * 512


def test_a_new_store_and_its_facts_file_have_every_block_on_disk(tmp_path: Path) -> None:
    require_engine("compiled")
    store = str(tmp_path / "f.state")
    t = pyfriction.Tracker(store=f"file://{store}", capacity=5_000)
    try:
        for path in (store, facts_path(store)):
            size = os.path.getsize(path)
            assert size > 1 << 20
            assert allocated(path) >= size, path
    finally:
        t.close()


def test_the_sidecars_shared_files_have_every_block_on_disk(tmp_path: Path) -> None:
    pytest.importorskip("pyfriction_server")
    from pyfriction_server.shared import _map

    path = str(tmp_path / "ids")
    fd, mm = _map(path, 3 << 20, b"PFTEST01", (7,))
    try:
        assert os.path.getsize(path) == 3 << 20
        assert allocated(path) >= 3 << 20
        assert mm[:8] == b"PFTEST01"
    finally:
        mm.close()
        os.close(fd)


def test_a_store_too_big_for_the_disk_is_a_store_error_and_nothing_is_left_half_made(tmp_path: Path) -> None:
    require_engine("compiled")
    with tmpfs(tmp_path / "disk", "24m") as disk:
        store = os.path.join(disk, "f.state")
        with pytest.raises(StoreError, match="needs .* bytes: the disk is full; the file system has"):
            pyfriction.Tracker(store=f"file://{store}", capacity=200_000)
        assert os.path.getsize(store) == 0  # the next open creates it afresh
        # A store that fits is created in the same place.
        t = pyfriction.Tracker(store=f"file://{store}", capacity=2_000)
        try:
            t.observe({"user_id": "u1", "type": "error", "step": "billing"})
            assert t.stats().users == 1
        finally:
            t.close()


def test_the_facts_file_too_big_for_the_disk_is_a_store_error(tmp_path: Path) -> None:
    require_engine("compiled")
    with tmpfs(tmp_path / "disk", "24m") as disk:
        # At 20,000 users the store (6 MB) fits; its facts file (21 MB) does not.
        store = os.path.join(disk, "f.state")
        with pytest.raises(StoreError, match="facts file: .* needs .* bytes: the disk is full"):
            pyfriction.Tracker(store=f"file://{store}", capacity=20_000)
        assert os.path.getsize(facts_path(store)) == 0


#: Fill a store to capacity, with traits (facts) for every user, after the rest of the disk
#: was taken: every page written for the first time. Before the blocks were reserved at
#: creation, this process died of SIGBUS (exit status -7) within the first few thousand users.
FILL = textwrap.dedent(
    """
    import sys, time
    import pyfriction
    from helpers import fill_disk
    store, filler, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    t = pyfriction.Tracker(store="file://" + store, capacity=n)
    taken = fill_disk(filler)
    now = time.time()
    for i in range(n):
        user = "user-%d" % i
        t.observe({"user_id": user, "type": "error", "step": "billing", "ts": now})
        t.identify(user, {"locale": "de-AT", "plan": "pro"})
    assert t.stats().users == n, t.stats()
    t.close()
    print("filled", n, "users after taking", taken, "bytes")
    """
)


def test_a_disk_filled_after_the_store_was_made_does_not_kill_the_process(tmp_path: Path) -> None:
    require_engine("compiled")
    with tmpfs(tmp_path / "disk", "40m") as disk:  # the store and facts of 20,000 users: 28 MB
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([os.path.dirname(__file__), os.environ.get("PYTHONPATH", "")]),
        }
        run = subprocess.run(
            [sys.executable, "-c", FILL, os.path.join(disk, "f.state"), os.path.join(disk, "filler"), "20000"],
            capture_output=True, text=True, timeout=300, env=env,
        )  # fmt: skip
        assert run.returncode == 0, (run.returncode, run.stderr[-2000:])
        assert "filled 20000 users" in run.stdout


def test_a_file_system_without_fallocate_gets_a_sparse_file_and_a_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from pyfriction import diskspace

    def unsupported(fd: int, offset: int, length: int) -> None:
        raise OSError(errno.EOPNOTSUPP, "Operation not supported")

    monkeypatch.setattr(diskspace.os, "posix_fallocate", unsupported)
    path = str(tmp_path / "sparse")
    with open(path, "wb") as fh:
        diskspace.reserve(fh.fileno(), 4 << 20, path)
    assert os.path.getsize(path) == 4 << 20
    assert allocated(path) < 4 << 20
    assert "cannot allocate blocks ahead" in caplog.text


def test_a_full_disk_is_an_error_whatever_the_file_system(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pyfriction import diskspace

    def full(fd: int, offset: int, length: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(diskspace.os, "posix_fallocate", full)
    path = str(tmp_path / "full")
    with open(path, "wb") as fh:
        os.ftruncate(fh.fileno(), 100)
        with pytest.raises(OSError, match=r"full needs 1,048,576 bytes: the disk is full; the file system has"):
            diskspace.reserve(fh.fileno(), 1 << 20, path)
    assert os.path.getsize(path) == 0
