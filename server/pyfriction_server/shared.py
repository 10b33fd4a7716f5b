"""What the workers of one sidecar share besides the store: files in the state directory.

``pyfriction-server --workers N`` runs N processes on one ``file://`` store (see
:mod:`pyfriction_server.workers`). Each has its own journal; three small memory-mapped files
tie them together:

* :class:`SharedIds` (``dedupe.ids``): the delivery ids seen by any worker, so that a batch
  retried through another worker is still a duplicate. Each id carries the *tag* of the
  journal record that brought it: replaying that record after a crash is not a duplicate of
  itself (its ids may have been remembered just before the crash, before it was scored).
* :class:`Watermark` (``journal-K/applied``): the tag of the last record worker K applied to
  the store; replay after a crash starts after it.
* :class:`Checkpoint` (``journal-K/checkpoint``, not mapped: written whole and fsynced at each
  checkpoint): the watermark whose records the store on disk holds, and the boot of the
  machine that wrote it. After a power loss or an OS crash the mapped files on disk are
  whatever the kernel had written back (the watermark may be ahead of the store), so replay
  starts from this one instead (at least once, as after a worker's crash).
* :class:`Bell` (``guidance.bell``): a ring of the users for whom guidance was just queued,
  read by every worker a few times a second, so that a guidance stream held by one worker
  wakes when another worker's episode queues an item for its user.

Every change is made under a lock word in the file's header holding its holder's pid
(``pyfriction._core.PidLock``: one compare-and-swap, where ``flock``'s two system calls and
the Python around them were a cost of every request that only two workers pay; a waiter takes
it over from a holder that died), or an ``flock`` where the compiled core is not built;
a holder that died mid-change left its pid in the header's ``busy`` word, and the next holder
repairs what it may have left half done. The dedupe table's probing runs in the compiled
core (``pyfriction.recent.TaggedIds``: about 10 µs for a batch of 100 ids, where this module's
pure-Python twin takes about 500 µs); the rest is Python.
"""

from __future__ import annotations

import fcntl
import json
import logging
import mmap
import os
import struct
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from pyfriction._filelock import BusyLock
from pyfriction.directio import replace_atomically
from pyfriction.diskspace import reserve
from pyfriction.recent import TaggedIds, fingerprint

from .journal import _fsync_dir

__all__ = ["IDS_FILE", "STORE_FILE", "Bell", "Checkpoint", "SharedIds", "Watermark", "Worker", "boot_id"]

log = logging.getLogger("pyfriction.server")

#: The workers' shared store (its facts file beside it) and dedupe memory, in the state
#: directory or in memory (:mod:`pyfriction_server.live`).
STORE_FILE = "friction.state"
IDS_FILE = "dedupe.ids"


@dataclass(frozen=True)
class Worker:
    """A worker's place: number ``index`` of ``count`` processes serving one state directory."""

    index: int
    count: int


def _map(path: str, size: int, magic: bytes, params: tuple[int, ...]) -> tuple[int, mmap.mmap]:
    """Open (or create, zero-filled) ``path`` of ``size`` bytes whose header starts with
    ``magic`` and ``params`` (u64 each); a file made with other parameters is started afresh
    (it holds nothing that outlives the journals: ids of past deliveries, a wake-up ring)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        head = struct.pack("<8s" + "Q" * len(params), magic, *params)
        current = os.pread(fd, len(head), 0)
        if current != head or os.fstat(fd).st_size != size:
            os.ftruncate(fd, 0)
            reserve(fd, size, path)  # all blocks now: a full disk is an error here, not a SIGBUS later
            os.pwrite(fd, head, 0)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return fd, mmap.mmap(fd, size)
    except BaseException:
        os.close(fd)
        raise


_U64 = struct.Struct("<Q")


def _pid_lock(mm: mmap.mmap, offset: int) -> Any:
    """The compiled lock on the header's word at ``offset``; None where the core is not built
    (every worker of a sidecar runs the same build: they all take the ``flock`` then)."""
    if TaggedIds is None:  # the core is not built, or turned off (PYFRICTION_NO_EXTENSIONS)
        return None
    from pyfriction._core import PidLock

    return PidLock(mm, offset)


class _Locked:
    """A mapped file whose changes happen under a lock (a pid word, else ``flock``) with a
    ``busy`` word (:class:`pyfriction._filelock.BusyLock`)."""

    fd: int
    mm: mmap.mmap
    busy_at: int
    _lock: BusyLock | None = None
    # The pid word (and flock, per open file) cannot tell this process's threads apart.
    _threads = threading.Lock()

    def _lock_with(self, word_at: int, busy_at: int) -> None:
        """The lock: the header's pid word at ``word_at`` (flock where the core is not built),
        its busy word at ``busy_at``."""
        self.busy_at = busy_at
        self._threads = threading.Lock()
        self._lock = BusyLock(self.mm, self.fd, _pid_lock(self.mm, word_at), _U64, busy_at)

    def _hold(self) -> bool:
        """Take the lock; True when the last holder died mid-change (repair first)."""
        assert self._lock is not None, "closed"
        return self._lock.hold(self._threads) != 0

    def _let_go(self, clean: bool) -> None:
        """Release the lock; ``clean``: the change is complete (else ``busy`` stays set)."""
        assert self._lock is not None, "closed"
        self._lock.let_go(self._threads, clean)

    @contextmanager
    def _locked(self) -> Iterator[bool]:
        """Hold the lock; yields True when the last holder died mid-change (repair first)."""
        died = self._hold()
        clean = False
        try:
            yield died
            clean = True
        finally:
            self._let_go(clean)

    def close(self) -> None:
        if self.fd >= 0:
            self._lock = None  # its pid word's view of the mapping first: a mapping with views cannot close
            self.mm.close()
            os.close(self.fd)
            self.fd = -1


class SharedIds(_Locked):
    """The delivery ids seen by any worker: between ``capacity`` and twice as many of the most
    recent, as 64-bit fingerprints with the tag of the record that brought each.

    Two generations of an open-addressing table (linear probing, at most half full): ids go
    into the current one; when it holds ``capacity``, the other is emptied and becomes
    current. No deletion, so nothing to shift, and a crash mid-insert leaves at worst one
    entry that no index points wrongly at.
    """

    MAGIC = b"PFIDS002"
    # header: magic, capacity, slots | generation (its low bit: the current table), count, busy,
    # lock word (and 4 bytes of padding)
    _HEAD = 8 + 8 * 6

    def __init__(self, path: str, capacity: int, *, compiled: bool | None = None) -> None:
        """``compiled``: probe with the compiled kernel (None: when the core is built)."""
        if compiled and TaggedIds is None:
            raise ImportError("the compiled core is not built")
        if capacity < 1:
            raise ValueError("capacity must be positive")
        slots = 16
        while slots < 2 * capacity:
            slots <<= 1
        self.capacity, self.slots, self.mask = capacity, slots, slots - 1
        size = self._HEAD + 2 * slots * 16
        self.fd, self.mm = _map(path, size, self.MAGIC, (capacity, slots))
        self._lock_with(word_at=8 + 8 * 5, busy_at=8 + 8 * 4)
        view = memoryview(self.mm)
        self._gen_off = [self._HEAD + g * slots * 16 for g in (0, 1)]
        self._fps = [view[self._HEAD + g * slots * 16 : self._HEAD + g * slots * 16 + slots * 8].cast("Q")
                     for g in (0, 1)]  # fmt: skip
        self._tags = [view[self._HEAD + g * slots * 16 + slots * 8 : self._HEAD + (g + 1) * slots * 16].cast("Q")
                      for g in (0, 1)]  # fmt: skip
        self._meta = view[8 + 8 * 2 : 8 + 8 * 4].cast("Q")  # current generation, count
        use = TaggedIds is not None if compiled is None else compiled
        self._kernel = TaggedIds(self.mm, 8 + 8 * 2, self._HEAD, slots, capacity) if use else None

    def close(self) -> None:
        if self._kernel is not None:
            self._kernel.release()
        for view in (*self._fps, *self._tags, self._meta):
            view.release()
        self._fps, self._tags = [], []
        super().close()

    def _find(self, g: int, fp: int) -> int:
        """The slot of ``fp`` in generation ``g``, or the empty slot where it would go."""
        fps, mask = self._fps[g], self.mask
        i = fp & mask
        while True:
            f = fps[i]
            if f == 0 or f == fp:
                return i
            i = (i + 1) & mask

    def _clear(self, g: int) -> None:
        off = self._gen_off[g]
        self.mm[off : off + self.slots * 8] = bytes(self.slots * 8)

    def _repair(self) -> None:
        # A holder died mid-change: an insert leaves a complete entry or none (the fingerprint
        # is written last); a switch of generations may not have emptied the new one.
        meta = self._meta
        g = meta[0] & 1
        fps = self._fps[g]
        meta[1] = sum(1 for f in fps if f)  # fmt: skip
        if meta[1] > self.capacity:
            self._switch()

    def _switch(self) -> None:
        meta = self._meta
        generation = meta[0] + 1  # its low bit: which table is current
        self._clear(generation & 1)
        meta[1] = 0
        meta[0] = generation

    def __len__(self) -> int:
        """Ids remembered: the current table's, and the previous one's (full) once there is one."""
        meta = self._meta
        return int(meta[1]) + (self.capacity if meta[0] else 0)

    def filter(self, ids: Sequence[str | None], tag: int) -> list[int] | None:
        """Remember every id of a batch brought by the record ``tag``, in order. None when none
        was seen before (None ids are always kept); else the indexes of the rows to keep. An id
        remembered with this same ``tag`` is kept: the record is being replayed."""
        keep: list[int] = []
        dropped = False
        here: set[int] = set()  # an id repeated within the batch is a duplicate after its first row
        kernel = self._kernel
        if kernel is not None:  # the hot path (every request): without a generator around it
            died = self._hold()
            clean = False
            try:
                if died:
                    kernel.repair()
                kept: list[int] | None = kernel.filter(ids, tag)
                clean = True
            finally:
                self._let_go(clean)
            return kept
        with self._locked() as died:
            if died:
                self._repair()
            meta = self._meta
            for index, key in enumerate(ids):
                if key is None:
                    keep.append(index)
                    continue
                if not isinstance(key, str):
                    raise TypeError(f"ids are str, not {type(key).__name__}")
                fp = fingerprint(key) or 1  # 0 marks an empty slot
                if fp in here:
                    dropped = True
                    continue
                here.add(fp)
                g = meta[0] & 1
                i = self._find(g, fp)
                found = self._fps[g][i] == fp
                if not found:
                    j = self._find(1 - g, fp)
                    if self._fps[1 - g][j] == fp:
                        found, seen_tag = True, self._tags[1 - g][j]
                else:
                    seen_tag = self._tags[g][i]
                if found and seen_tag != tag:
                    dropped = True
                    continue
                keep.append(index)
                if found:
                    continue
                if meta[1] >= self.capacity:
                    self._switch()
                    g = meta[0] & 1
                    i = self._find(g, fp)
                self._tags[g][i] = tag
                self._fps[g][i] = fp
                meta[1] += 1
        return keep if dropped else None


class Watermark:
    """The tag of the last journal record a worker applied (a u64 in a file of its own)."""

    def __init__(self, path: str) -> None:
        self.fd, self.mm = _map(path, 16, b"PFMARK01", ())
        self._value = memoryview(self.mm)[8:16].cast("Q")

    @property
    def value(self) -> int:
        return int(self._value[0])

    def set(self, tag: int) -> None:
        self._value[0] = tag

    def sync(self) -> None:
        self.mm.flush()

    def close(self) -> None:
        if self.fd >= 0:
            self._value.release()
            self.mm.close()
            os.close(self.fd)
            self.fd = -1


#: Where Linux says which boot this is (a new random id at every start of the kernel).
BOOT_ID_PATH = "/proc/sys/kernel/random/boot_id"


def boot_id(path: str = BOOT_ID_PATH) -> str | None:
    """This boot of the machine's id, or None where the system does not say (not Linux)."""
    try:
        with open(path) as fh:
            return fh.read().strip() or None
    except OSError:
        return None


class Checkpoint:
    """``journal-K/checkpoint``: the watermark ``mark`` such that the store on disk holds every
    record of journal K tagged up to it, written (whole, fsynced, renamed into place) by the
    boot ``boot`` of the machine.

    The mapped files (the store, the watermark) are written back by the kernel on its own
    schedule, in no particular order: after the machine went down, the watermark on disk may
    be ahead of the store on disk, and replaying after it would skip records the store lost.
    :meth:`recovery_mark` gives where replay starts: the live watermark while the machine is
    the same boot (a process crash loses nothing of the page cache), this file's mark after
    a restart of the machine."""

    NAME = "checkpoint"

    def __init__(self, directory: str) -> None:
        self.path = os.path.join(directory, self.NAME)

    def read(self) -> tuple[str, int] | None:
        """``(boot, mark)``; None when there is no checkpoint file. A file that cannot be read
        is ``("", 0)``: of no boot, so the whole journal is replayed (it was written whole and
        renamed into place, so only a damaged disk does that)."""
        try:
            with open(self.path, "rb") as fh:
                data = fh.read()
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.error("journal checkpoint unreadable: replaying the whole journal", extra={"error": str(exc)})
            return "", 0
        try:
            doc = json.loads(data)
            return str(doc["boot"]), int(doc["mark"])
        except (ValueError, KeyError, TypeError):
            log.error("journal checkpoint damaged: replaying the whole journal", extra={"path": self.path})
            return "", 0

    def write(self, boot: str, mark: int) -> None:
        """Replace the file, durably (its directory synced too)."""
        with replace_atomically(self.path) as out:
            out.write(json.dumps({"boot": boot, "mark": mark}).encode())
        _fsync_dir(os.path.dirname(self.path) or ".")  # the rename, as the journal's segments

    def recovery_mark(self, live: int, boot: str) -> int:
        """Where replay of this journal starts, given the live watermark ``live`` and this
        boot ``boot``; the file then belongs to this boot (with the same mark).

        * No file: the journal was never cut at a checkpoint, so it holds every record; the
          live watermark is right (the same boot, or a sidecar of an earlier version), and the
          file is started at mark 0: a restart of the machine replays the whole journal.
        * The same boot: the live watermark.
        * Another boot: the file's mark, at most the live one."""
        found = self.read()
        if found is None:
            self.write(boot, 0)
            return live
        was, mark = found
        if was == boot:
            return live
        self.write(boot, mark)
        return min(live, mark)


class Bell(_Locked):
    """A ring of the user keys (:func:`pyfriction.recent.fingerprint`) for whom guidance was queued, with a running count.

    :meth:`ring` appends (any worker); :meth:`heard` returns the keys appended since a reader's
    last position, or None when the reader fell a whole ring behind (wake everyone then).
    """

    MAGIC = b"PFBELL02"
    SIZE = 4096
    _HEAD = 8 + 8 * 4  # magic, size | count, busy, lock word (and padding)

    def __init__(self, path: str) -> None:
        self.fd, self.mm = _map(path, self._HEAD + 8 * self.SIZE, self.MAGIC, (self.SIZE,))
        self._lock_with(word_at=8 + 8 * 3, busy_at=8 + 8 * 2)
        view = memoryview(self.mm)
        self._count = view[16:24].cast("Q")
        self._ring = view[self._HEAD :].cast("Q")

    def close(self) -> None:
        self._count.release()
        self._ring.release()
        super().close()

    @property
    def count(self) -> int:
        """Keys appended so far (a reader starts from here)."""
        return int(self._count[0])

    def ring(self, user_id: str) -> None:
        with self._locked():
            n = self._count[0]
            self._ring[n % self.SIZE] = fingerprint(user_id)
            self._count[0] = n + 1

    def heard(self, since: int) -> tuple[int, list[int] | None]:
        """``(count, keys appended after position since)``; keys None past a ring's lag."""
        n = int(self._count[0])
        if n - since > self.SIZE // 2:  # the writers may be overwriting what we would read
            return n, None
        return n, [self._ring[k % self.SIZE] for k in range(since, n)]
