"""The ingest journal: append-only segment files, fsynced before a request is answered.

Every accepted request becomes one *record* (a MessagePack document). At the end of each
event-loop iteration the records of all requests decoded in it are appended to the current
segment in one ``write``; a small syncer process ``fdatasync``\\ s the file (group commit: one
sync serves every request written since the last one) and tells the loop, which then scores
the records and answers their requests. After a crash, the records of the segments newer
than the last snapshot are replayed in order, so an answered request is never lost.

A record on disk is ``u32 length | u32 crc32 | payload`` (little-endian). A torn or damaged
tail (the crash hit mid-write, before any answer) ends the replay of that segment.
Segments are ``journal-<seq>.log``; a snapshot taken at sequence ``n`` makes every segment
below ``n`` obsolete.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import re
import struct
import subprocess
import sys
import zlib
from collections.abc import Callable, Iterator
from typing import Any

__all__ = ["Journal", "read_segment", "segment_path", "segments"]

log = logging.getLogger("pyfriction.server")

_HEADER = struct.Struct("<II")
_SEGMENT = re.compile(r"^journal-(\d{12})\.log$")
Item = tuple[bytes, Any, "asyncio.Future[Any]"]
OnCommit = Callable[[list[tuple[Any, "asyncio.Future[Any]"]], BaseException | None], None]


def segment_path(directory: str, seq: int) -> str:
    return os.path.join(directory, f"journal-{seq:012d}.log")


def segments(directory: str) -> list[tuple[int, str]]:
    """``(seq, path)`` of every segment in ``directory``, oldest first."""
    out = []
    for name in os.listdir(directory):
        m = _SEGMENT.match(name)
        if m:
            out.append((int(m.group(1)), os.path.join(directory, name)))
    return sorted(out)


def read_segment(path: str) -> Iterator[bytes]:
    """The payloads of a segment, up to its first torn or damaged record."""
    with open(path, "rb") as fh:
        data = fh.read()
    pos, end = 0, len(data)
    while pos + _HEADER.size <= end:
        length, crc = _HEADER.unpack_from(data, pos)
        start = pos + _HEADER.size
        if start + length > end:
            log.warning("journal: torn record at the end of %s (%d bytes dropped)", path, end - pos)
            return
        payload = data[start : start + length]
        if zlib.crc32(payload) != crc:
            log.warning("journal: damaged record in %s at offset %d; the rest is dropped", path, pos)
            return
        yield payload
        pos = start + length


#: The syncer: a tiny separate process that fdatasyncs the journal for the event loop, so
#: that neither the loop waits for the disk nor a thread of ours has to win the GIL back from
#: a busy loop after every sync. Protocol on its stdin: ``O <path>`` (sync what is pending on
#: the current file, then switch to this one), ``S <n>`` (sync request n); on its stdout:
#: ``D <n>`` (requests up to n are durable) or ``E <n> <error>``. Requests that arrive while it
#: syncs, or within ``sync_interval`` of its previous sync, are served by its next sync.
SYNCER = r"""
import os, select, sys, time
gap = float(sys.argv[1])  # at most one sync per `gap` seconds: the requests meanwhile join it
fd, last, buf, prev = -1, None, b"", 0.0

def sync():
    global last, prev
    if last is None:
        return
    try:
        os.fdatasync(fd)
        os.write(1, b"D " + last + b"\n")
    except OSError as exc:
        os.write(1, b"E " + last + b" " + str(exc).encode(errors="replace") + b"\n")
    last, prev = None, time.monotonic()

def handle(data):
    global buf, fd, last
    *lines, buf = (buf + data).split(b"\n")
    for line in lines:
        if line[:2] == b"O ":
            sync()
            if fd >= 0:
                os.close(fd)
            fd = os.open(line[2:].decode(), os.O_WRONLY | os.O_APPEND)
        elif line[:2] == b"S ":
            last = line[2:]

while True:
    data = os.read(0, 65536)
    if not data:
        break
    handle(data)
    wait = prev + gap - time.monotonic()
    while wait > 0 and select.select([0], [], [], wait)[0]:
        data = os.read(0, 65536)
        if not data:
            break
        handle(data)
        wait = prev + gap - time.monotonic()
    sync()
    if not data:
        break
sync()
"""


class Journal:
    """Appends records to the current segment at the end of each event-loop iteration (one
    ``write`` for all of them), and has the syncer process make them durable; ``on_commit``
    runs on the loop, in commit order, once they are."""

    def __init__(self, directory: str, seq: int, *, fsync: bool, loop: asyncio.AbstractEventLoop,
                 on_commit: OnCommit, on_rotate: Callable[[int], None],
                 on_bytes: Callable[[int, int], None] = lambda n, syncs: None,
                 sync_interval: float = 0.002) -> None:  # fmt: skip
        self.directory = directory
        self.seq = seq
        self.fsync = fsync
        self.sync_interval = sync_interval
        self.loop = loop
        self.on_commit = on_commit
        self.on_rotate = on_rotate
        self.on_bytes = on_bytes
        #: Bytes in the current segment.
        self.size = 0
        self._batch: list[Item] = []
        #: Committed groups waiting for the syncer, in order: (token, group or rotation future).
        self._waiting: collections.deque[tuple[int, Any]] = collections.deque()
        self._in_flight = 0
        self._token = 0
        self._buf = b""
        self._fd: int | None = self._open(seq)
        self._syncer: subprocess.Popen[bytes] | None = None
        if fsync:
            self._start_syncer()

    def _open(self, seq: int) -> int:
        fd = os.open(segment_path(self.directory, seq), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        _fsync_dir(self.directory)
        return fd

    def _start_syncer(self) -> None:
        self._syncer = subprocess.Popen([sys.executable, "-I", "-c", SYNCER, repr(self.sync_interval)], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, bufsize=0)  # fmt: skip
        assert self._syncer.stdout is not None
        os.set_blocking(self._syncer.stdout.fileno(), False)
        self.loop.add_reader(self._syncer.stdout.fileno(), self._on_synced)
        self._tell(b"O " + segment_path(self.directory, self.seq).encode())

    def _tell(self, line: bytes) -> None:
        assert self._syncer is not None and self._syncer.stdin is not None
        try:
            self._syncer.stdin.write(line + b"\n")
        except OSError:
            self._syncer_died()

    @property
    def pending(self) -> int:
        """Records not yet durable (this iteration's and those the syncer is working on)."""
        return len(self._batch) + self._in_flight

    def submit(self, payload: bytes, record: Any, future: asyncio.Future[Any]) -> None:
        """Queue ``payload``; ``on_commit`` gets ``(record, future)`` once it is durable."""
        if not self._batch:
            self.loop.call_soon(self.commit)
        self._batch.append((payload, record, future))

    def commit(self) -> None:
        """Write this loop iteration's records; they are handed on once synced."""
        group, self._batch = self._batch, []
        if not group:
            return
        data = b"".join(_HEADER.pack(len(p), zlib.crc32(p)) + p for p, _, _ in group)
        done = [(record, fut) for _, record, fut in group]
        try:
            if self._fd is None:
                raise OSError("the journal is closed")
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view) :]
            if self.fsync and self._syncer is None:
                os.fdatasync(self._fd)  # no syncer (it died): sync here, the loop waits
        except OSError as exc:
            log.error("journal: write failed: %s", exc)
            self.on_commit(done, exc)
            return
        self.size += len(data)
        if self._syncer is None:
            self.on_bytes(len(data), 1 if self.fsync else 0)
            self.on_commit(done, None)
            return
        self._token += 1
        self._in_flight += len(done)
        self._waiting.append((self._token, done))
        self.on_bytes(len(data), 0)
        self._tell(b"S %d" % self._token)

    def _on_synced(self) -> None:
        assert self._syncer is not None and self._syncer.stdout is not None
        try:
            data = os.read(self._syncer.stdout.fileno(), 65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._syncer_died()
            return
        *lines, self._buf = (self._buf + data).split(b"\n")
        for line in lines:
            kind, _, rest = line.partition(b" ")
            token_text, _, message = rest.partition(b" ")
            error = OSError(message.decode(errors="replace")) if kind == b"E" else None
            self.on_bytes(0, 1)
            self._release(int(token_text), error)

    def _release(self, token: int, error: BaseException | None) -> None:
        """Hand on every waiting group up to ``token`` (and run rotations queued after them)."""
        waiting = self._waiting
        while waiting and waiting[0][0] <= token:
            _, item = waiting.popleft()
            if isinstance(item, asyncio.Future):
                self._finish_rotation(item)
            else:
                self._in_flight -= len(item)
                self.on_commit(item, error)

    def _syncer_died(self) -> None:
        if self._syncer is None:
            return
        log.error("journal: the syncer process exited; syncing on the event loop from now on")
        try:
            assert self._syncer.stdout is not None
            self.loop.remove_reader(self._syncer.stdout.fileno())
        except (OSError, ValueError):
            pass
        self._syncer = None
        error: BaseException | None = None
        try:
            if self._fd is not None:
                os.fdatasync(self._fd)
        except OSError as exc:
            error = exc
        self._release(self._token, error)

    def rotate(self) -> asyncio.Future[int]:
        """Start a new segment after everything submitted so far; resolves to its number.

        ``on_rotate(seq)`` runs after the ``on_commit`` of every earlier record and before
        that of any later one."""
        self.commit()
        fut: asyncio.Future[int] = self.loop.create_future()
        try:
            new_fd = self._open(self.seq + 1)
        except OSError as exc:
            fut.set_exception(exc)
            return fut
        assert self._fd is not None
        old_fd, self._fd = self._fd, new_fd
        self.seq += 1
        self.size = 0
        if self._syncer is not None:
            self._tell(b"O " + segment_path(self.directory, self.seq).encode())  # syncs the old one first
        elif self.fsync:
            os.fsync(old_fd)
        os.close(old_fd)  # the syncer has its own descriptor
        if self._waiting:
            self._waiting.append((self._token, fut))
        else:
            self._finish_rotation(fut)
        return fut

    def _finish_rotation(self, fut: asyncio.Future[int]) -> None:
        self.on_rotate(self.seq)
        if not fut.done():
            fut.set_result(self.seq)

    async def close(self) -> None:
        """Commit what is pending, wait until it is durable, stop the syncer, close the file."""
        self.commit()
        while self._waiting and self._syncer is not None:
            await asyncio.sleep(0.001)
        if self._syncer is not None:
            syncer, self._syncer = self._syncer, None
            assert syncer.stdin is not None and syncer.stdout is not None
            self.loop.remove_reader(syncer.stdout.fileno())
            syncer.stdin.close()
            await asyncio.to_thread(syncer.wait, 10)
            syncer.stdout.close()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _fsync_dir(directory: str) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
