"""The snapshot file: one MessagePack map, written in one pass, never whole in memory.

Version 3, the one written::

    {"format": "pyfriction-snapshot", "version": 3, "layout": <LAYOUT_HASH>,
     "state": bin    MessagePack of the config, counters, names, long ids and guidance,
     "slots": [bin]  the user records (SLOT_DTYPE), least recently active first, in parts
                     of at most PART_BYTES (a MessagePack bin holds under 4 GiB),
     "steps": bin    the step histograms (STEP_DTYPE),
     "crc32": int    CRC-32 of the bins' bytes, in the order above}

Why this shape: the user records are nearly all of the file (224 bytes a user, 214 MiB
for a million). Their length is known before they are written and the checksum comes last,
so they can go to the file straight from the engine's tables in chunks: a forked sidecar
child allocates no copy of them, which matters twice, because fresh memory is costly
(page faults; on a VM, the host's too) and because each millisecond the child lives its
parent copies the pages it writes to. CRC-32 (as the journal's records) catches damage at
~6 GB/s where the BLAKE2b of version 2 ran at ~1.2 GB/s; nobody forges a snapshot that can
write the state directory anyway. The file is still one MessagePack document, readable by
any MessagePack tool.

Versions 1 and 2, ``{"format", "version", "layout", "digest": BLAKE2b hex, "payload": bin
MessagePack of state and tables}``, are still read (1 has no guidance state).
"""

from __future__ import annotations

import hashlib
import os
import zlib
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

import msgspec
import numpy as np

from ._layout import SLOT_DTYPE, STEP_DTYPE
from ._legacy import UPGRADES
from .directio import replace_atomically

__all__ = ["FORMAT", "PART_BYTES", "VERSION", "Snapshot", "SnapshotError", "read", "write"]

FORMAT = "pyfriction-snapshot"
#: 3: the tables as raw bins after the rest, CRC-32 last; 2: guidance state in the payload.
VERSION = 3
READABLE_VERSIONS = (1, 2, 3)
#: Bytes per part of "slots" at most: whole records, well under MessagePack's 4 GiB per bin.
PART_BYTES = (1 << 30) // SLOT_DTYPE.itemsize * SLOT_DTYPE.itemsize

Buffer = bytes | bytearray | memoryview | np.ndarray


class SnapshotError(ValueError):
    """A snapshot file is unreadable, damaged, or of another version or layout."""


class Snapshot(NamedTuple):
    """A snapshot file's contents."""

    version: int
    #: config, counters, names, long_ids and (version 2 on) guidance
    state: dict[str, Any]
    slots: np.ndarray
    steps: np.ndarray


class _Document(msgspec.Struct):
    """The keys read of any version; the tables as views of the file's bytes (no copy)."""

    format: Any = None
    version: Any = None
    layout: Any = None
    state: memoryview | None = None
    slots: list[memoryview] | None = None
    steps: memoryview | None = None
    crc32: int | None = None
    payload: memoryview | None = None
    digest: str | None = None


def _bin_header(n: int) -> bytes:
    if n < 1 << 8:
        return b"\xc4" + n.to_bytes(1, "big")
    if n < 1 << 16:
        return b"\xc5" + n.to_bytes(2, "big")
    return b"\xc6" + n.to_bytes(4, "big")


def _array_header(n: int) -> bytes:
    return bytes([0x90 + n]) if n < 16 else b"\xdc" + n.to_bytes(2, "big")


def _bytes(buf: Buffer) -> memoryview:
    view = memoryview(buf)  # type: ignore[arg-type]  # numpy arrays export the buffer protocol
    return view if view.format == "B" and view.ndim == 1 else view.cast("B")


def write(
    path: str | os.PathLike[str],
    *,
    layout: str,
    state: Any,
    slots: Iterable[Buffer],
    n_slots: int,
    steps: Buffer,
    written: Callable[[], Any] | None = None,
) -> None:
    """Write a snapshot to ``path``, replacing it atomically (a failed write leaves the old file).

    ``slots`` yields the user records in chunks (each chunk is written before the next is
    asked for, so a chunk may reuse one buffer), ``n_slots`` of them in all: a different
    count raises :class:`RuntimeError` (the tables changed while they were written) and
    leaves no file. ``written`` is called once the tables are written, before the file is
    synced: the caller may drop them then.
    """
    size = SLOT_DTYPE.itemsize
    total = n_slots * size
    parts = [min(PART_BYTES, total - at) for at in range(0, total, PART_BYTES)]
    if len(parts) >= 1 << 16:
        raise ValueError(f"{n_slots} users are more than a snapshot holds")
    state_raw = msgspec.msgpack.encode(state)
    step_raw = _bytes(steps)
    head = msgspec.msgpack.encode({"format": FORMAT, "version": VERSION, "layout": layout, "state": state_raw})
    head = bytes([head[0] + 3]) + head[1:]  # a map of 4 entries, then 3 more: slots, steps, crc32
    with replace_atomically(path) as out:
        out.write(head)
        crc = zlib.crc32(state_raw)
        out.write(msgspec.msgpack.encode("slots") + _array_header(len(parts)))
        left = 0  # bytes left in the current part
        done = 0
        for chunk in slots:
            view = _bytes(chunk)
            while len(view):
                if done + len(view) > total:
                    raise RuntimeError("the tracker changed while its snapshot was written")
                if left == 0:
                    left = parts[done // PART_BYTES]
                    out.write(_bin_header(left))
                piece = view[:left]
                out.write(piece)
                crc = zlib.crc32(piece, crc)
                done += len(piece)
                left -= len(piece)
                view = view[len(piece) :]
        if done != total:
            raise RuntimeError("the tracker changed while its snapshot was written")
        out.write(msgspec.msgpack.encode("steps") + _bin_header(len(step_raw)))
        out.write(step_raw)
        crc = zlib.crc32(step_raw, crc)
        out.write(msgspec.msgpack.encode("crc32") + msgspec.msgpack.encode(crc))
        out.flush()
        if written is not None:
            written()


def _lenient(data: bytes) -> _Document | None:
    """The identifying keys of a document whose other keys do not fit :class:`_Document`."""
    try:
        doc = msgspec.msgpack.decode(data)
    except msgspec.DecodeError:
        return None
    if not isinstance(doc, dict):
        return None
    return _Document(format=doc.get("format"), version=doc.get("version"), layout=doc.get("layout"))


def read(path: str | os.PathLike[str], layout: str) -> Snapshot:
    """The contents of a snapshot of any readable version; :class:`SnapshotError` if the
    file cannot be read, is not a snapshot, is of another version or layout, or is damaged."""
    name = os.fspath(path)
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        raise SnapshotError(f"cannot read snapshot {name!r}: {exc}") from None
    problem = None
    doc: _Document | None
    try:
        doc = msgspec.msgpack.decode(data, type=_Document)
    except msgspec.ValidationError as exc:  # a map, with a key of the wrong type somewhere
        problem = exc
        doc = _lenient(data)
    except msgspec.DecodeError as exc:
        raise SnapshotError(f"{name}: not a pyfriction snapshot ({exc})") from None
    if doc is None or doc.format != FORMAT:
        raise SnapshotError(f"{name}: not a pyfriction snapshot" + (f" ({problem})" if problem else ""))
    upgrade = UPGRADES.get(doc.layout) if isinstance(doc.layout, str) else None
    if type(doc.version) is not int or doc.version not in READABLE_VERSIONS or (doc.layout != layout and not upgrade):
        raise SnapshotError(
            f"{name}: snapshot version {doc.version} layout {doc.layout}"
            f" does not match this pyfriction (version {VERSION} layout {layout})"
        )
    if problem is not None:
        raise SnapshotError(f"{name}: damaged snapshot ({problem})")
    try:
        if doc.version >= 3:
            if doc.state is None or doc.slots is None or doc.steps is None or doc.crc32 is None:
                raise SnapshotError(f"{name}: damaged snapshot (a section is missing)")
            crc = zlib.crc32(doc.state)
            for part in doc.slots:
                crc = zlib.crc32(part, crc)
            if zlib.crc32(doc.steps, crc) != doc.crc32:
                raise SnapshotError(f"{name}: damaged snapshot (checksum mismatch)")
            state = msgspec.msgpack.decode(doc.state)
            raw: Any = doc.slots[0] if len(doc.slots) == 1 else b"".join(doc.slots)
            step_raw: Any = doc.steps
        else:
            if doc.payload is None or hashlib.blake2b(doc.payload, digest_size=16).hexdigest() != doc.digest:
                raise SnapshotError(f"{name}: damaged snapshot (checksum mismatch)")
            state = msgspec.msgpack.decode(doc.payload)
            raw, step_raw = state.pop("slots"), state.pop("steps")
        if not isinstance(state, dict):
            raise TypeError("the state is not a map")
        # A snapshot of an earlier state layout is upgraded (``_legacy``): restoring after an
        # upgrade of pyfriction keeps every tracked user.
        slots = upgrade(raw) if upgrade is not None else np.frombuffer(raw, dtype=SLOT_DTYPE)
        return Snapshot(doc.version, state, slots, np.frombuffer(step_raw, dtype=STEP_DTYPE))
    except (KeyError, TypeError, ValueError, AttributeError, msgspec.DecodeError) as exc:
        if isinstance(exc, SnapshotError):
            raise
        raise SnapshotError(f"{name}: damaged snapshot ({exc})") from None
