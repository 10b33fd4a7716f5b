"""DirectWriter: the file holds exactly what was written, direct I/O or not."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyfriction import directio
from pyfriction.directio import BLOCK, STAGE, DirectWriter

SIZES = st.lists(
    st.one_of(st.integers(0, 3 * BLOCK), st.sampled_from([BLOCK, STAGE - 1, STAGE, STAGE + 1])), max_size=8
)


def _write(path: Path, sizes: list[int]) -> tuple[bytes, DirectWriter]:
    data = os.urandom(sum(sizes))
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        out = DirectWriter(fd)
        at = 0
        for n in sizes:
            out.write(memoryview(data)[at : at + n])
            at += n
        out.flush()
    finally:
        os.close(fd)
    return data, out


@settings(max_examples=25, deadline=None)
@given(sizes=SIZES, direct=st.booleans())
def test_file_holds_what_was_written(tmp_path_factory: Any, sizes: list[int], direct: bool) -> None:
    path = tmp_path_factory.mktemp("dio") / "f"
    old = directio._O_DIRECT
    if not direct:
        directio._O_DIRECT = 0
    try:
        data, out = _write(path, sizes)
    finally:
        directio._O_DIRECT = old
    assert path.read_bytes() == data
    if not direct:
        assert not out.direct


def test_direct_io_is_used_where_the_file_system_allows_it(tmp_path: Path) -> None:
    if not directio._O_DIRECT:
        pytest.skip("no O_DIRECT on this platform")
    probe = os.open(tmp_path / "probe", os.O_WRONLY | os.O_CREAT | os.O_DIRECT, 0o644)  # does the fs take it?
    os.close(probe)
    data, out = _write(tmp_path / "f", [STAGE + 5000])
    assert (tmp_path / "f").read_bytes() == data
    assert out.direct_bytes == STAGE + BLOCK  # the whole blocks; the last partial one buffered
    assert not out.direct


def test_a_refused_direct_write_goes_on_buffered(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A file system that takes the flag but refuses the write (EINVAL): nothing is lost."""
    if not directio._O_DIRECT:
        pytest.skip("no O_DIRECT on this platform")
    real = os.write
    refused = []

    def write(fd: int, buf: Any) -> int:
        if not refused:
            refused.append(len(buf))
            raise OSError(errno.EINVAL, "Invalid argument")
        return real(fd, buf)

    monkeypatch.setattr(os, "write", write)
    data, out = _write(tmp_path / "f", [BLOCK * 3, STAGE, 17])
    monkeypatch.undo()
    assert refused and not out.direct and out.direct_bytes == 0
    assert (tmp_path / "f").read_bytes() == data


def test_other_write_errors_are_raised(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def full(fd: int, buf: Any) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", full)
    with pytest.raises(OSError) as info:
        _write(tmp_path / "f", [STAGE + 1])
    assert info.value.errno == errno.ENOSPC
