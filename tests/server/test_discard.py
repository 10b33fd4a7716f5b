"""Old journal segments and snapshots are deleted a step at a time (``journal.discard``).

Unlinking a 256 MiB segment at once held the file system's journal for 0.1 s, and every
worker's group commit waited behind it. So a file is now cut from its end ``step`` bytes at a
time, with a rest after each cut, and then unlinked. A segment is renamed before it is cut,
so replay never reads a half-cut one. A cut that a crash left half done is finished at the
next checkpoint.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from pyfriction_server import journal
from pyfriction_server.journal import discard, drop_segments, segment_path, segments


def test_a_file_is_cut_from_its_end_a_step_at_a_time_then_unlinked(tmp_path: Path, monkeypatch: Any) -> None:
    path = tmp_path / "big"
    path.write_bytes(b"x" * 10_000)
    cuts: list[int] = []
    rests: list[float] = []
    real = os.ftruncate
    monkeypatch.setattr(journal.os, "ftruncate", lambda fd, size: (cuts.append(size), real(fd, size))[1])
    monkeypatch.setattr(journal.time, "sleep", rests.append)
    discard(str(path), step=3_000, pause=0.25)
    assert cuts == [7_000, 4_000, 1_000]
    assert rests == [0.25] * 3
    assert not path.exists()


def test_a_small_or_missing_file_is_unlinked_at_once(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setattr(journal.time, "sleep", lambda s: pytest.fail("no rest for a small file"))
    small = tmp_path / "small"
    small.write_bytes(b"x" * 100)
    discard(str(small), step=4096)
    assert not small.exists()
    discard(str(tmp_path / "never-there"))  # no error


def test_segments_below_a_number_are_dropped_and_never_listed_half_cut(tmp_path: Path, monkeypatch: Any) -> None:
    for seq in range(5):
        Path(segment_path(str(tmp_path), seq)).write_bytes(b"r" * 5_000)
    seen: list[list[int]] = []
    real = discard

    def watching(path: str, **kwargs: Any) -> None:
        seen.append([seq for seq, _ in segments(str(tmp_path))])  # what replay would read meanwhile
        real(path, step=1_000, pause=0.0)

    monkeypatch.setattr(journal, "discard", watching)
    drop_segments(str(tmp_path), 3)
    assert [seq for seq, _ in segments(str(tmp_path))] == [3, 4]
    assert seen == [[3, 4]] * 3  # renamed out of the segments first
    assert sorted(os.listdir(tmp_path)) == [os.path.basename(segment_path(str(tmp_path), s)) for s in (3, 4)]
    assert all(os.path.getsize(segment_path(str(tmp_path), s)) == 5_000 for s in (3, 4))


def test_a_cut_a_crash_left_half_done_is_finished_at_the_next_drop(tmp_path: Path) -> None:
    left = tmp_path / (os.path.basename(segment_path(str(tmp_path), 1)) + ".discarded")
    left.write_bytes(b"r" * 3_000)  # renamed and partly cut when the process died
    Path(segment_path(str(tmp_path), 2)).write_bytes(b"r")
    assert [seq for seq, _ in segments(str(tmp_path))] == [2]
    drop_segments(str(tmp_path), 0)  # nothing below 0: only the leftover goes
    assert not left.exists()
    assert [seq for seq, _ in segments(str(tmp_path))] == [2]
