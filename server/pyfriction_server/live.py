"""The workers' shared files in memory (``live_dir``), copied to the state directory at checkpoints.

Why. The workers share the store, its facts file and the dedupe memory through shared
mappings. On a disk file system the kernel writes those pages back on its own schedule (every
30 s, and at each checkpoint's write-back), and every page written back is write-protected
again, so the next write to it faults. With a million users nearly every page is written again
within a second. Each pass therefore cost both workers 0.2 to 1 s at 65 to 90% of their
throughput, and that was most of the two-worker p99 (20 to 63 ms in the sidecar's benchmark).
A memory file system (tmpfs, such as ``/dev/shm``) never writes anything back. So the workers
map their files there, and a checkpoint copies them to ``state_dir`` past the page cache, at
its own pace (:func:`pyfriction.writeback.copy_file`), much as Redis writes its RDB file from
memory.

Layout:

* ``LIVE_DIR/pyfriction-UID-HASH/`` (HASH is taken from the state directory's path) holds the
  files of :data:`FILES` and ``origin`` (the machine's boot and the state directory they
  belong to, written once they are whole). ``.copy`` serialises the checkpoint copies.
* ``STATE_DIR/live`` names that directory. While it exists, the files of the same names in
  the state directory are checkpoint copies, older than the live ones.
* ``STATE_DIR/.lock`` is held by the parent and its workers (:func:`claim`): a second sidecar
  on the directory waits, then refuses to start, and never touches the live files.

At start (:func:`prepare`, run by the parent before any worker starts):

* the live files exist, written in this boot: they are the newest, and are used as they are;
* otherwise they are copied in from the state directory. This covers a restart of the
  machine, a container restarted with a fresh ``/dev/shm``, and the first start. Where
  ``STATE_DIR/live`` shows that live files were lost, each journal's watermark goes back to
  its last checkpoint, so what followed is replayed (at least once: nothing is lost);
* when there is no such directory, or not enough room in it (a container's ``/dev/shm`` is
  64 MB by default), the files stay in the state directory, mapped there as before, with a
  warning.

At a checkpoint (:func:`save`): a copy that started after the journal's rotation holds every
record applied before that rotation. Workers that checkpoint together therefore share one copy.

At a stop (:func:`release`, once every worker is gone): if every journal's checkpoint holds all
that its worker applied, the live directory is removed and its memory freed.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
import struct
import time
from collections.abc import Iterator

import msgspec

import pyfriction
from pyfriction.diskspace import reserve
from pyfriction.store import StoreError
from pyfriction.writeback import copy_file

from .errors import StateError
from .journal import _fsync_dir
from .settings import Settings
from .shared import IDS_FILE, STORE_FILE, Checkpoint, SharedIds, Watermark, boot_id

__all__ = ["FILES", "claim", "directory", "prepare", "release", "save"]

log = logging.getLogger("pyfriction.server")

#: The files that live in memory: the store, its facts file, the dedupe memory.
FILES = (STORE_FILE, STORE_FILE + ".facts", IDS_FILE)
#: In the state directory: the live directory in use (its copies there are checkpoints).
NOTE = "live"
ORIGIN = "origin"
_COPY_LOCK = ".copy"
_STAMP = struct.Struct("<d")


def directory(settings: Settings) -> str | None:
    """The live directory of ``settings``' state directory; None when the files are mapped in
    the state directory itself (``live_dir`` empty, or a Redis store holds the users)."""
    if not settings.live_dir or settings.store or not settings.state_dir:
        return None
    root = os.path.realpath(settings.state_dir)
    tag = hashlib.sha256(root.encode()).hexdigest()[:16]
    return os.path.join(os.path.abspath(settings.live_dir), f"pyfriction-{os.getuid()}-{tag}")


def claim(root: str, wait: float = 60.0) -> int:
    """Lock the state directory ``root`` for this sidecar: the parent and, through the fork,
    every worker hold it, so that a second sidecar on the directory neither starts nor frees
    the live files under the first. Waits up to ``wait`` seconds for the workers of a parent
    that was killed (they drain first); returns the descriptor (kept open: the lock lives as
    long as the processes do). Raises :class:`StateError`."""
    os.makedirs(root, exist_ok=True)
    fd = os.open(os.path.join(root, ".lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    os.set_inheritable(fd, True)  # the workers hold it too
    deadline = time.monotonic() + wait
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except OSError:
            if time.monotonic() >= deadline:
                os.close(fd)
                raise StateError(f"{root} is in use by another pyfriction-server") from None
            time.sleep(0.1)


def prepare(settings: Settings) -> Settings:
    """Make the live files whole before the workers start (see the module's doc); returns
    ``settings`` with ``live_dir`` emptied when the files stay in the state directory."""
    root = os.path.abspath(settings.state_dir)
    os.makedirs(root, exist_ok=True)
    target = directory(settings)
    boot = boot_id() or ""
    previous = _read_note(root)
    if previous is not None and previous != target:  # moved, or turned off: back to the state directory first
        if _whole(previous, root, boot):
            for name in FILES:
                if os.path.exists(os.path.join(previous, name)):
                    copy_file(os.path.join(previous, name), os.path.join(root, name), duty=1.0)
            _fsync_dir(root)
        else:
            _rewind(root, previous)
        _forget(root, previous)
        previous = None
    if target is None:
        return msgspec.structs.replace(settings, live_dir="")
    if previous == target and _whole(target, root, boot):
        return settings
    try:
        _fill(target, root, settings)
    except (OSError, StoreError) as exc:
        shutil.rmtree(target, ignore_errors=True)
        quiet = settings.live_dir == Settings.live_dir and not os.path.isdir(settings.live_dir)
        (log.info if quiet else log.warning)(
            "the workers' shared files stay in the state directory (live_dir %s cannot hold them: %s)",
            settings.live_dir, getattr(exc, "strerror", None) or exc)  # fmt: skip
        return msgspec.structs.replace(settings, live_dir="")
    try:
        if _reserve_copies(target, root):  # new or grown: made whole now, so that they are stores
            save(target, root, time.monotonic(), duty=1.0)
    except OSError as exc:
        shutil.rmtree(target, ignore_errors=True)
        raise StateError(f"cannot open the shared store: {exc.strerror or exc}") from None
    if previous == target:  # they were lost: the state directory holds checkpoints only
        _rewind(root, target)
    _write_note(root, target)  # durable before any worker writes to the live files
    with open(os.path.join(target, ORIGIN), "w") as fh:
        json.dump({"boot": boot, "root": root}, fh)
    log.info("the workers' shared files are in memory", extra={"live_dir": target})
    return settings


def save(live: str, root: str, since: float, duty: float = 0.5) -> bool:
    """Copy the live files to the state directory (durable; busy with the disk ``duty`` of
    the time), unless a copy that started at or after ``since`` (``time.monotonic()``, the
    same clock in every process) is done already. Returns whether this call copied. Raises
    ``OSError``."""
    fd = os.open(os.path.join(live, _COPY_LOCK), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # another worker's copy finishes first (a dead holder's lock is gone)
        stamp = os.pread(fd, _STAMP.size, 0)
        if len(stamp) == _STAMP.size and _STAMP.unpack(stamp)[0] >= since:
            return False
        started = time.monotonic()
        for name in FILES:
            if os.path.exists(os.path.join(live, name)):
                copy_file(os.path.join(live, name), os.path.join(root, name), duty=duty)
        _fsync_dir(root)  # a copy made for the first time
        os.pwrite(fd, _STAMP.pack(started), 0)
        return True
    finally:
        os.close(fd)


def release(settings: Settings) -> bool:
    """After every worker stopped: remove the live directory (its memory freed) if each
    journal's checkpoint holds all that its worker applied; else keep it for the next start,
    which uses it. Returns whether it was removed."""
    live = directory(settings)
    if live is None or not os.path.isdir(live):
        return False
    root = os.path.abspath(settings.state_dir)
    behind = [os.path.basename(d) for d in _journals(root) if _checkpoint_mark(d) < _watermark(d)]
    if behind:
        log.warning("the workers' live files are newer than their copies in the state directory: kept for the "
                    "next start", extra={"live_dir": live, "journals": behind})  # fmt: skip
        return False
    _forget(root, live)
    return True


def _fill(live: str, root: str, settings: Settings) -> None:
    """The live files afresh: copies of the state directory's, the others created (each with
    its memory reserved: a full tmpfs is an error here, not a SIGBUS later)."""
    shutil.rmtree(live, ignore_errors=True)
    os.mkdir(live, mode=0o700)  # in live_dir as it is: a directory that is not there is not made
    for name in FILES:
        src, dst = os.path.join(root, name), os.path.join(live, name)
        if not os.path.exists(src):
            continue
        fd = os.open(dst, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            reserve(fd, os.path.getsize(src), dst)
        finally:
            os.close(fd)
        copy_file(src, dst, duty=1.0)
    store = "file://" + os.path.join(live, STORE_FILE)
    tracker = pyfriction.Tracker(settings.tracker_config(), engine="compiled", store=store, sync_interval=None)
    tracker.close(timeout=0)
    SharedIds(os.path.join(live, IDS_FILE), settings.dedupe_size).close()


def _reserve_copies(live: str, root: str) -> bool:
    """Give each copy in the state directory its blocks now: a disk too small for them is an
    error at start, not a checkpoint that fails every time while the journal grows. Returns
    whether a copy was made or grown (it then holds zeros until copied)."""
    changed = False
    for name in FILES:
        size = os.path.getsize(os.path.join(live, name))
        path = os.path.join(root, name)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            have = os.fstat(fd).st_size
            if have == 0:
                reserve(fd, size, path)
            elif have < size:
                os.posix_fallocate(fd, 0, size)  # an older, smaller copy: kept if there is no room
            changed = changed or have != size
        finally:
            os.close(fd)
    _fsync_dir(root)
    return changed


def _whole(live: str, root: str, boot: str) -> bool:
    try:
        with open(os.path.join(live, ORIGIN), "rb") as fh:
            origin = json.loads(fh.read())
        return bool(origin == {"boot": boot, "root": root} and os.path.exists(os.path.join(live, STORE_FILE)))
    except (OSError, ValueError):
        return False


def _rewind(root: str, live: str) -> None:
    """The live files are gone: each journal replays from its last checkpoint (the copies)."""
    for journal in _journals(root):
        mark = Watermark(os.path.join(journal, "applied"))
        try:
            start = _checkpoint_mark(journal)
            if mark.value > start:
                log.warning("the workers' live files were lost: this journal is replayed from its last checkpoint "
                            "(at least once: some records may count twice)",
                            extra={"live_dir": live, "journal": os.path.basename(journal), "from_tag": start,
                                   "watermark": mark.value})  # fmt: skip
                mark.set(start)
                mark.sync()
        finally:
            mark.close()


def _journals(root: str) -> Iterator[str]:
    for entry in sorted(os.listdir(root)):
        path = os.path.join(root, entry)
        if entry.startswith("journal-") and entry[8:].isdigit() and os.path.exists(os.path.join(path, "applied")):
            yield path


def _checkpoint_mark(journal: str) -> int:
    found = Checkpoint(journal).read()
    return found[1] if found is not None else 0


def _watermark(journal: str) -> int:
    mark = Watermark(os.path.join(journal, "applied"))
    try:
        return mark.value
    finally:
        mark.close()


def _read_note(root: str) -> str | None:
    try:
        with open(os.path.join(root, NOTE)) as fh:
            return fh.read().strip() or None
    except FileNotFoundError:
        return None


def _write_note(root: str, live: str) -> None:
    path = os.path.join(root, NOTE)
    with open(path + ".tmp", "w") as fh:
        fh.write(live + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(path + ".tmp", path)
    _fsync_dir(root)


def _forget(root: str, live: str) -> None:
    """The note first: a crash between the two leaves the state directory's copies taken as
    the newest, which they are whenever this is called."""
    try:
        os.unlink(os.path.join(root, NOTE))
        _fsync_dir(root)
    except FileNotFoundError:
        pass
    shutil.rmtree(live, ignore_errors=True)
