"""The ingest journal: append-only segment files, fsynced before a request is answered.

Every accepted request becomes one *record* (a MessagePack document). At the end of each
event-loop iteration the records of all requests decoded in it are appended to the current
segment in one ``write``; a small syncer process ``fdatasync``\\ s the file (group commit: one
sync serves every request written since the last one) and tells the loop, which then scores
the records and answers their requests. After a crash, the records of the segments newer
than the last snapshot are replayed in order, so an answered request is never lost.

A segment starts with a 12-byte preamble, ``b"PFJ1"`` and a random u32 *salt* written twice
(one damaged copy is recognised: the other one checks against the records); then records
``u32 length | u32 crc32(payload, salt) | payload`` (little-endian). Segments written before
the preamble existed (no ``PFJ1``) are read with salt 0.

Failures, and what they cost:

* A write that fails part-way (``ENOSPC``, ``EIO``) is cut off: the file is truncated back to
  the end of the last whole record and synced before the failed requests are answered (503),
  so the records appended once the disk has room again follow a clean record boundary.
* A record that is damaged (a flipped bit, a length that points nowhere) is skipped on replay
  and only it: the reader resynchronises on the next valid header (a plausible length, a
  MessagePack map, a matching CRC). The salt makes that CRC unguessable from outside, so the
  bytes of an event cannot pass for a record of their own. Every skip is reported
  (:class:`Damage`), and the segment is kept aside for inspection.
* A torn tail (the crash hit mid-write, before any answer) is dropped and reported as such.

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
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

__all__ = ["MAGIC", "Damage", "Journal", "discard", "drop_segments", "read_segment", "segment_path", "segments"]

log = logging.getLogger("pyfriction.server")

_HEADER = struct.Struct("<II")
_PREAMBLE = struct.Struct("<4sII")
#: The first bytes of a segment with a salt (older segments start with a record header).
MAGIC = b"PFJ1"
#: No record is larger (a request body is at most a few MB): longer lengths are damage.
MAX_RECORD = 64 << 20
_SEGMENT = re.compile(r"^journal-(\d{12})\.log$")
#: A record's payload is a MessagePack map of at most 15 keys: its first byte is a fixmap.
_FIXMAP = re.compile(rb"[\x80-\x8f]")
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


#: A segment on its way out (renamed, then truncated bit by bit): no longer a segment.
_DISCARDED = ".discarded"
#: Bytes a discarded file loses per step, and the pause after each step (see :func:`discard`).
DISCARD_STEP = 8 << 20
DISCARD_PAUSE = 0.005


def discard(path: str, *, step: int = DISCARD_STEP, pause: float = DISCARD_PAUSE) -> None:
    """Delete ``path`` without stalling other processes' fsyncs on the same file system: cut
    from its end ``step`` bytes at a time, resting ``pause`` seconds after each, then
    unlinked. A missing file is no error.

    Why: ext4 frees a file's blocks and page-cache pages inside one journal transaction, and
    every fsync on the file system waits for that transaction. Unlinking a 256 MiB segment at
    once took 0.1 s, and both workers' group commits stopped for 40 to 50 ms of it, which was
    the largest share of their p99. RocksDB's ``DeleteScheduler`` truncates files in chunks
    for the same reason."""
    try:
        fd = os.open(path, os.O_WRONLY | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        return
    try:
        size = os.fstat(fd).st_size
        while size > step:
            size -= step
            os.ftruncate(fd, size)
            time.sleep(pause)
    finally:
        os.close(fd)
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def drop_segments(directory: str, below: int) -> None:
    """Delete the segments of ``directory`` numbered below ``below`` (:func:`discard`), each
    renamed first so that none is ever read half cut, and what an earlier call left half done."""
    for seq, path in segments(directory):
        if seq < below:
            os.rename(path, path + _DISCARDED)
    for name in os.listdir(directory):
        if name.endswith(_DISCARDED):
            discard(os.path.join(directory, name))


@dataclass(frozen=True)
class Damage:
    """Bytes of a segment that replay skipped: ``length`` bytes at ``offset`` of ``path``.

    ``torn`` means nothing valid follows them: the tail of a write the process died in (those
    requests were never answered), or damage to the segment's last records. Otherwise valid
    records follow (a damaged record in the middle: what was accepted in it is lost)."""

    path: str
    offset: int
    length: int
    torn: bool


def _salt(data: bytes | memoryview) -> tuple[int, int]:
    """``(salt, offset of the first record)`` of a segment's bytes."""
    n = len(data)
    if n < _PREAMBLE.size:
        if bytes(data[: min(n, 4)]) == MAGIC[: min(n, 4)]:
            return 0, n  # a torn preamble: an empty segment
        return 0, 0
    magic, first, second = _PREAMBLE.unpack_from(data, 0)
    if magic != MAGIC and first != second:
        return 0, 0  # a segment of the unsalted format
    if first != second:  # one copy is damaged: the one the first valid record agrees with
        view = memoryview(data)
        for candidate in (first, second):
            for m in _FIXMAP.finditer(view, _PREAMBLE.size + _HEADER.size):
                if _record_end(view, m.start() - _HEADER.size, n, candidate) > 0:
                    return candidate, _PREAMBLE.size
    return first, _PREAMBLE.size


def _record_end(data: memoryview, pos: int, end: int, salt: int) -> int:
    """The end of the valid record at ``pos``, or -1."""
    if pos + _HEADER.size > end:
        return -1
    length: int
    crc: int
    length, crc = _HEADER.unpack_from(data, pos)
    start = pos + _HEADER.size
    if not 0 < length <= MAX_RECORD or start + length > end or not 0x80 <= data[start] <= 0x8F:
        return -1
    if zlib.crc32(data[start : start + length], salt) != crc:
        return -1
    return start + length


def _resync(data: memoryview, pos: int, end: int, salt: int) -> int:
    """The offset of the next valid record after the damaged one at ``pos``, or -1.

    Every byte that could start a payload (a fixmap) is a candidate, its header 8 bytes before
    it: the first one whose length and CRC check is the next record. (Not the damaged
    record's own length: that may be what is damaged, and point past a good record.)"""
    for m in _FIXMAP.finditer(data, pos + 1 + _HEADER.size):
        candidate = m.start() - _HEADER.size
        if _record_end(data, candidate, end, salt) > 0:
            return candidate
    return -1


def _torn(data: bytes, pos: int) -> bool:
    """Whether the invalid tail at ``pos`` looks like a write cut short (a header or a
    record running past the end, or only zeros: blocks the data never reached) rather than a whole
    record damaged afterwards."""
    end = len(data)
    if pos + _HEADER.size > end:
        return True
    length = _HEADER.unpack_from(data, pos)[0]
    return pos + _HEADER.size + length > end or not data[pos:].strip(b"\0")


def read_segment(path: str, damage: list[Damage] | None = None) -> Iterator[bytes]:
    """The payloads of a segment's valid records. A damaged record is skipped (replay goes
    on at the next valid one) and a torn tail dropped; each is appended to ``damage``."""
    with open(path, "rb") as fh:
        raw = fh.read()
    data = memoryview(raw)
    salt, pos = _salt(data)
    end = len(data)
    while pos < end:
        nxt = _record_end(data, pos, end, salt)
        if nxt > 0:
            yield raw[pos + _HEADER.size : nxt]
            pos = nxt
            continue
        resume = _resync(data, pos, end, salt)
        skipped = Damage(path, pos, (resume if resume > 0 else end) - pos, torn=resume < 0 and _torn(raw, pos))
        if damage is not None:
            damage.append(skipped)
        if skipped.torn:
            log.warning("journal: torn tail dropped", extra={"segment": os.path.basename(path), "offset": pos,
                                                             "bytes": skipped.length})  # fmt: skip
            return
        if resume < 0:
            log.error("journal: the last record of a segment is damaged", extra={
                "segment": os.path.basename(path), "offset": pos, "bytes": skipped.length})  # fmt: skip
            return
        log.error("journal: damaged record skipped", extra={"segment": os.path.basename(path), "offset": pos,
                                                            "bytes": skipped.length})  # fmt: skip
        pos = resume


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
        if fd >= 0:  # -1: the segment was gone when opened (a snapshot superseded it, empty)
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
            try:
                fd = os.open(line[2:].decode(), os.O_WRONLY | os.O_APPEND)
            except FileNotFoundError:
                fd = -1
        elif line[:2] == b"S ":
            last = line[2:]

def main():
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

try:
    main()
except BaseException:  # the sidecar is gone (a closed pipe): nothing left to tell, no traceback
    os._exit(0)
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
        #: Bytes in the current segment: where its last whole record ends.
        self.size = 0
        self.salt = 0
        #: The last write or sync error, None once a write has succeeded again.
        self.failure: BaseException | None = None
        #: A failed write could not be cut off: the next commit starts a new segment.
        self._cut_failed = False
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
        """Open segment ``seq`` (created with its preamble); sets ``size`` and ``salt``."""
        path = segment_path(self.directory, seq)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        created = False
        try:
            size = os.fstat(fd).st_size
            if size == 0:
                created = True
                salt = int.from_bytes(os.urandom(4), "little")
                _write_all(fd, _PREAMBLE.pack(MAGIC, salt, salt))
                size = _PREAMBLE.size
            else:  # an existing segment (not done by the sidecar itself): append after its records
                with open(path, "rb") as fh:
                    salt = _salt(fh.read(_PREAMBLE.size))[0]
            _fsync_dir(self.directory)
        except OSError:
            os.close(fd)
            if created:
                try:
                    os.unlink(path)  # no half-written preamble left behind
                except OSError:
                    pass
            raise
        self.size, self.salt = size, salt
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
        done = [(record, fut) for _, record, fut in group]
        try:
            if self._fd is None:
                raise OSError("the journal is closed")
            if self._cut_failed:
                self._next_segment()
            salt = self.salt
            data = b"".join(_HEADER.pack(len(p), zlib.crc32(p, salt)) + p for p, _, _ in group)
            _write_all(self._fd, data)
            if self.fsync and self._syncer is None:
                os.fdatasync(self._fd)  # no syncer (it died): sync here, the loop waits
        except OSError as exc:
            self._write_failed(exc)
            self.on_commit(done, exc)
            return
        self.size += len(data)
        if self._syncer is None:
            self.failure = None
        if self._syncer is None:
            self.on_bytes(len(data), 1 if self.fsync else 0)
            self.on_commit(done, None)
            return
        self._token += 1
        self._in_flight += len(done)
        self._waiting.append((self._token, done))
        self.on_bytes(len(data), 0)
        self._tell(b"S %d" % self._token)

    def _write_failed(self, exc: OSError) -> None:
        """Cut a failed write off: truncate the segment back to its last whole record and
        sync that, before the requests of the failed write are answered (503). Records
        appended later then follow a clean boundary, and replay reads every one of them."""
        self.failure = exc
        log.error("journal: write failed; the partial write is cut off", extra={"error": str(exc)})
        if self._fd is None or self._cut_failed:
            return
        try:
            os.ftruncate(self._fd, self.size)
            if self.fsync:
                os.fdatasync(self._fd)
        except OSError as cut:
            # Cannot cut (the file system refuses even that): the next commit starts a new
            # segment, and replay drops this one's damaged tail (reported as torn).
            log.error("journal: cannot truncate a failed write; starting a new segment", extra={"error": str(cut)})
            self._cut_failed = True

    def _next_segment(self) -> None:
        """Continue in segment ``seq + 1`` (after a failed write that could not be cut off)."""
        assert self._fd is not None
        new_fd = self._open(self.seq + 1)
        old_fd, self._fd = self._fd, new_fd
        self.seq += 1
        self._cut_failed = False
        if self._syncer is not None:
            self._tell(b"O " + segment_path(self.directory, self.seq).encode())
        os.close(old_fd)

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
            self.failure = error
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
        self._cut_failed = False
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


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


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
