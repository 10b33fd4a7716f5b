"""The sidecar's state: the tracker, the dedupe memory, the journal and the snapshots.

The life of an ingest request, once decoded into a record:

1. :meth:`State.submit` queues the record for the journal (503 past ``max_pending``);
2. at the end of the event-loop iteration the journal appends the records of every request
   of that iteration, and its syncer process fsyncs them (group commit);
3. :meth:`State.apply` drops duplicate delivery ids, scores the
   events (``Tracker.observe_many``) and hands identify traits to the tracker;
4. the request is answered. *Accepted* means exactly this: persisted, then scored.

Replay after a restart calls the same :meth:`State.apply` on the same records in the same
order, so the tracker and the dedupe memory come back as they were, and a batch retried by
an SDK whose answer was lost in the crash is still recognised as a duplicate.

Snapshots (every ``snapshot_interval`` seconds, when the journal grows past
``snapshot_journal_bytes``, and at shutdown): the journal starts a new segment; records
committed after that point wait while the tracker is written (``Tracker.snapshot``) and
``state.msgpack`` is replaced atomically with the new segment number and the dedupe memory;
then the older segments are deleted. ``state_dir = ""`` keeps everything in memory.

As worker K of ``--workers N`` (:mod:`pyfriction_server.workers`) the state is the shared
``file://`` store ``STATE_DIR/friction.state``, not a snapshot: the worker journals into
``STATE_DIR/journal-K/``, every record tagged with a number of its own (:func:`tag`), and after
applying a record it sets its watermark (:class:`~pyfriction_server.shared.Watermark`) to that
tag; replay applies only the records after it. A *checkpoint* (instead of a snapshot) starts a
new segment, writes the store back to disk, records the watermark of the rotation with this
boot of the machine (:class:`~pyfriction_server.shared.Checkpoint`) and deletes the older
segments; after a restart of the machine (a power loss), replay starts from that recorded
watermark, since the mapped store and watermark on disk are then only what the kernel had
written back. So the store needs no periodic write-back of its own. Worker 0 also
replays the journals of workers that no longer exist (a restart with fewer workers). A crash
between scoring a record and setting the watermark scores that record again on replay (at
least once); one between remembering its ids and scoring it does not lose it (an id carries
the tag of the record that brought it, see :class:`~pyfriction_server.shared.SharedIds`).
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import shutil
import time
from collections.abc import Callable
from typing import Any

import msgspec
import numpy as np

import pyfriction
from pyfriction.directio import replace_atomically
from pyfriction.recent import RecentIds
from pyfriction.store import StoreError

from . import live as live_files
from .errors import HTTPError, StateError
from .journal import Damage, Journal, _fsync_dir, discard, drop_segments, read_segment, segments
from .metrics import Metrics
from .push import RedisPush
from .settings import SINGLE_PROCESS_STATE, Settings
from .shared import IDS_FILE, STORE_FILE, Bell, Checkpoint, SharedIds, Watermark, Worker, boot_id

__all__ = ["OUTCOMES", "State", "StateError"]

log = logging.getLogger("pyfriction.server")

STATE_FILE = SINGLE_PROCESS_STATE
#: Worker mode: the guidance bell (the shared store and dedupe memory: shared.STORE_FILE, IDS_FILE).
BELL_FILE = "guidance.bell"
#: A record's tag: the worker's number above this many bits, its own count below.
_TAG_BITS = 48
#: 2: the dedupe memory as the fingerprints of ``RecentIds`` (bytes, little-endian u64);
#: 1 (two lists of the ids themselves) is still read.
STATE_VERSION = 2
_READABLE_STATES = (1, 2)
OUTCOMES = ("shown", "clicked", "dismissed", "completed", "anchor_missing")

_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder().decode


class State:
    """Owns the tracker; every change to it goes through :meth:`apply` (live or replayed)."""

    def __init__(self, settings: Settings, metrics: Metrics, worker: Worker | None = None) -> None:
        self.settings = settings
        self.metrics = metrics
        #: This process's place among the sidecar's workers (None: the only process).
        self.worker = worker
        self.tracker: pyfriction.Tracker | None = None
        self.dedupe = RecentIds(settings.dedupe_size) if worker is None else None
        #: Worker mode: the shared dedupe memory, the guidance bell, this journal's watermark.
        self.shared_ids: SharedIds | None = None
        self.bell: Bell | None = None
        self.push: RedisPush | None = None
        self._mark: Watermark | None = None
        #: Worker mode: this boot of the machine (None where unknown), and the watermark when
        #: the journal last rotated for a checkpoint (every record before the rotation applied).
        self._boot: str | None = None
        self._rotation_mark = 0
        self._rotation_time = 0.0
        #: Worker mode: the directory in memory holding the store and the dedupe memory
        #: (pyfriction_server.live), or None when they are mapped in the state directory.
        self._live: str | None = None
        self._tag = 0
        self.journal: Journal | None = None
        self.ready = False
        self.replaying = False
        #: Called with a user id when guidance is picked for them (the SSE hub listens).
        self.guidance_listeners: list[Callable[[str], None]] = []
        self._snapshotting = False
        self._deferred: list[tuple[Any, asyncio.Future[Any]]] = []
        self._snapshot_lock = asyncio.Lock()
        self._lock_fd: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._snapshot_file: str | None = None
        self._next_seq = 0
        #: What replay skipped: damaged records (valid ones after them) and torn tails.
        self.damage: list[Damage] = []

    # -- start -------------------------------------------------------------------------------
    @property
    def root(self) -> str | None:
        """The state directory (None: in memory)."""
        return os.path.abspath(self.settings.state_dir) if self.settings.state_dir else None

    @property
    def directory(self) -> str | None:
        """Where this process journals: the state directory, or a worker's own part of it."""
        root = self.root
        if root is None or self.worker is None:
            return root
        return os.path.join(root, f"journal-{self.worker.index}")

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Restore the last snapshot and replay the journal after it (any thread); then
        :meth:`open_journal` opens a new segment."""
        self._loop = loop
        config = self.settings.tracker_config()
        directory = self.directory
        start_seq = 0
        if self.worker is not None:
            self._start_worker(config)
        elif directory is None:
            self.tracker = self._new_tracker(config, None)
        else:
            os.makedirs(directory, exist_ok=True)
            self._lock(directory)
            if os.path.exists(os.path.join(directory, STORE_FILE)):
                raise StateError(f"{directory} holds the shared store of a sidecar run with several workers: "
                                 "start it with --workers other than 1 (0: one per core)")  # fmt: skip
            meta = self._read_meta(directory)
            if meta is not None:
                path = os.path.join(directory, meta["tracker"])
                self.tracker = self._new_tracker(config, path)
                self._load_dedupe(meta)
                start_seq = int(meta["seq"])
                self._snapshot_file = meta["tracker"]
            else:
                self.tracker = self._new_tracker(config, None)
            last = start_seq - 1
            replayed = 0
            started = time.perf_counter()
            self.replaying = True
            try:
                for seq, path in segments(directory):
                    last = max(last, seq)
                    if seq < start_seq:
                        continue
                    found: list[Damage] = []
                    for payload in read_segment(path, found):
                        try:
                            record = _decode(payload)
                        except msgspec.DecodeError:
                            log.warning(
                                "journal: undecodable record skipped", extra={"segment": os.path.basename(path)}
                            )
                            continue
                        self.apply(record)
                        replayed += 1
                    if found:
                        self._damaged(directory, path, found)
            finally:
                self.replaying = False
            log.info("state restored", extra={"snapshot": meta is not None, "replayed_records": replayed,
                                              "damaged_records": sum(not d.torn for d in self.damage),
                                              "seconds": round(time.perf_counter() - started, 3)})  # fmt: skip
            self._next_seq = last + 1

    def _start_worker(self, config: pyfriction.Config) -> None:
        """Worker mode: open the shared files and the store, then replay this worker's journal
        after its watermark (worker 0: and the journals of workers beyond the count)."""
        root, directory, worker = self.root, self.directory, self.worker
        if root is None or directory is None or worker is None:
            raise StateError("several workers need a state directory (state_dir is empty)")
        if os.path.exists(os.path.join(root, STATE_FILE)):
            raise StateError(f"{root} holds the snapshot of a single-process sidecar: start it with --workers 1, "
                             "or give the workers a new state directory")  # fmt: skip
        os.makedirs(directory, exist_ok=True)
        self._lock(directory)
        # The store and the dedupe memory: in memory, copied here at checkpoints (live_files),
        # or mapped here.
        self._live = live_files.directory(self.settings)
        home = self._live or root
        store = self.settings.store or "file://" + os.path.join(home, STORE_FILE)
        # Where the machine says which boot this is, the journals cover a power loss too
        # (Checkpoint): a store on disk is written back at checkpoints and by the kernel, not
        # every second (a pass that took 6-8% of two workers' events/s). Elsewhere: every second.
        self._boot = boot_id()
        quiet = self._boot is not None or self._live is not None
        self.tracker = self._new_tracker(config, None, store=store, sync_interval=None if quiet else 1.0)
        if self.settings.store:  # several hosts: a stream held on one hears of guidance from all
            from pyfriction.redis_engine import split_options  # redis-py: only with a Redis store
            from pyfriction.redis_state import redis_client

            uri, options = split_options(self.settings.store)
            self.push = RedisPush(redis_client(uri), str(options.get("prefix", "pf")))
        try:
            self.shared_ids = SharedIds(os.path.join(home, IDS_FILE), self.settings.dedupe_size)
            self.bell = Bell(os.path.join(root, BELL_FILE))
            self._mark = Watermark(os.path.join(directory, "applied"))
        except OSError as exc:  # a full disk (their blocks are all taken at creation), permissions
            raise StateError(f"cannot open the workers' shared files in {root}: {exc.strerror or exc}") from None
        self._recover_mark(directory, self._mark)
        started = time.perf_counter()
        replayed, last = self._replay_after_mark(directory, self._mark)
        self._tag = max(self._mark.value, last, worker.index + 1 << _TAG_BITS)
        self._next_seq = max((seq for seq, _ in segments(directory)), default=-1) + 1
        if worker.index == 0:
            replayed += self._adopt_orphans(root, worker.count)
        log.info("state restored", extra={"worker": worker.index, "replayed_records": replayed,
                                          "damaged_records": sum(not d.torn for d in self.damage),
                                          "seconds": round(time.perf_counter() - started, 3)})  # fmt: skip

    def _recover_mark(self, directory: str, mark: Watermark) -> None:
        """Start replay of ``directory`` from its checkpoint's mark if the machine restarted
        since (see :class:`~pyfriction_server.shared.Checkpoint`)."""
        if self._boot is None:
            return
        live = mark.value
        start = Checkpoint(directory).recovery_mark(live, self._boot)
        if start < live:
            log.warning("the machine restarted since this journal's last checkpoint: its records after the checkpoint "
                        "are replayed (at least once: some may count twice)",
                        extra={"journal": os.path.basename(directory), "from_tag": start, "watermark": live})  # fmt: skip
            mark.set(start)

    def _replay_after_mark(self, directory: str, mark: Watermark) -> tuple[int, int]:
        """Apply the records of ``directory``'s segments tagged after ``mark``; returns the
        number applied and the largest tag seen."""
        replayed = last = 0
        own = mark is self._mark
        self.replaying = True
        try:
            for _, path in segments(directory):
                found: list[Damage] = []
                for payload in read_segment(path, found):
                    try:
                        record = _decode(payload)
                    except msgspec.DecodeError:
                        log.warning("journal: undecodable record skipped", extra={"segment": os.path.basename(path)})
                        continue
                    tag = int(record.get("n", 0)) if isinstance(record, dict) else 0
                    last = max(last, tag)
                    if tag and tag <= mark.value:
                        continue
                    if not own:
                        self._mark, saved = mark, self._mark
                    try:
                        self.apply(record)
                    finally:
                        if not own:
                            self._mark = saved
                    replayed += 1
                if found:
                    self._damaged(directory, path, found)
        finally:
            self.replaying = False
        return replayed, last

    def _adopt_orphans(self, root: str, count: int) -> int:
        """Replay, then remove, the journals of workers numbered ``count`` and above (the
        sidecar ran with more workers before): nothing they accepted is left behind."""
        replayed = 0
        for entry in sorted(os.listdir(root)):
            if not entry.startswith("journal-") or not entry[8:].isdigit() or int(entry[8:]) < count:
                continue
            directory = os.path.join(root, entry)
            fd = os.open(os.path.join(directory, ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    log.warning("journal of another live worker left alone", extra={"journal": entry})
                    continue
                mark = Watermark(os.path.join(directory, "applied"))
                try:
                    self._recover_mark(directory, mark)
                    n, _ = self._replay_after_mark(directory, mark)
                finally:
                    mark.close()
                replayed += n
                self._store_to_disk(time.monotonic())  # what they held is in the store, on disk: drop them
                shutil.rmtree(directory, ignore_errors=True)
                log.info("journal of a former worker replayed and removed", extra={"journal": entry, "records": n})
            finally:
                os.close(fd)
        return replayed

    def _damaged(self, directory: str, path: str, found: list[Damage]) -> None:
        """Report what replay skipped in ``path``; keep a damaged segment (not a mere torn
        tail) aside in ``damaged/``, since the next snapshot deletes the original."""
        self.damage.extend(found)
        m = self.metrics
        for d in found:
            (m.journal_torn if d.torn else m.journal_damaged).inc()
            m.journal_skipped_bytes.inc((), d.length)
        if all(d.torn for d in found):
            return
        keep = os.path.join(directory, "damaged")
        try:
            os.makedirs(keep, exist_ok=True)
            target = os.path.join(keep, os.path.basename(path))
            if not os.path.exists(target):
                os.link(path, target)  # a second name: no copy, no space
        except OSError as exc:
            log.error("journal: cannot keep the damaged segment aside", extra={"error": str(exc)})
        log.error("journal: damaged records skipped at replay; what they held is lost",
                  extra={"segment": os.path.basename(path), "damaged_records": sum(not d.torn for d in found),
                         "bytes": sum(d.length for d in found), "kept_in": keep})  # fmt: skip

    def health(self) -> dict[str, Any]:
        """What ``/readyz`` reports about the journal: write failures and replay damage."""
        doc: dict[str, Any] = {}
        journal = self.journal
        if journal is not None and journal.failure is not None:
            doc["journal_error"] = str(journal.failure)
        damaged = [d for d in self.damage if not d.torn]
        if damaged:
            doc["journal_damage"] = {"damaged_records": len(damaged), "skipped_bytes": sum(d.length for d in damaged),
                                     "segments": sorted({os.path.basename(d.path) for d in damaged}),
                                     "kept_in": "damaged/"}  # fmt: skip
        torn = [d for d in self.damage if d.torn]
        if torn:
            doc["journal_torn_tails"] = len(torn)
        return doc

    def free_bytes(self) -> int | None:
        """Bytes the state directory's file system has left for the journal (None: unknown)."""
        directory = self.directory
        if directory is None:
            return None
        try:
            st = os.statvfs(directory)
        except OSError:
            return None
        return st.f_bavail * st.f_frsize

    async def probe(self) -> bool:
        """After a journal failure: can it take a record again? (A no-op record, synced.)"""
        if self.journal is None:
            return True
        try:
            await self.submit({"k": "p"})
        except HTTPError:
            return False
        return self.journal.failure is None

    def open_journal(self) -> None:
        """Start the journal after :meth:`start` (on the event loop's thread); ready then."""
        directory = self.directory
        if directory is not None:
            assert self._loop is not None
            self.journal = Journal(directory, self._next_seq, fsync=self.settings.fsync, loop=self._loop,
                                   on_commit=self._committed, on_rotate=self._rotated,
                                   on_bytes=self._journal_bytes, sync_interval=self.settings.sync_interval)  # fmt: skip
        self.ready = True

    def _new_tracker(
        self,
        config: pyfriction.Config,
        snapshot: str | None,
        store: str | None = None,
        sync_interval: float | None = 1.0,
    ) -> pyfriction.Tracker:
        engine = self.settings.engine
        if store is not None:
            try:
                if not self.settings.store and engine == "auto":
                    engine = "compiled"  # a file store: the compiled engine only
                tracker = pyfriction.Tracker(config, engine=engine, store=store, sync_interval=sync_interval)
            except (StoreError, ImportError) as exc:
                raise StateError(f"cannot open the shared store {store}: {exc}") from None
        elif snapshot is not None:
            try:
                tracker = pyfriction.Tracker.restore(snapshot, config, engine=engine)
            except pyfriction.SnapshotError as exc:
                raise StateError(f"cannot restore the snapshot: {exc}") from None
        else:
            tracker = pyfriction.Tracker(config, engine=engine)
        tracker.on_friction(self._episode, sync=True)
        on_guidance = getattr(tracker, "on_guidance", None)
        if on_guidance is not None:
            on_guidance(self._guidance)
        return tracker

    def _lock(self, directory: str) -> None:
        fd = os.open(os.path.join(directory, ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise StateError(f"{directory} is in use by another pyfriction-server") from None
        self._lock_fd = fd

    @staticmethod
    def _read_meta(directory: str) -> dict[str, Any] | None:
        path = os.path.join(directory, STATE_FILE)
        try:
            with open(path, "rb") as fh:
                meta = _decode(fh.read())
        except FileNotFoundError:
            return None
        except (OSError, msgspec.DecodeError) as exc:
            raise StateError(f"cannot read {path}: {exc}") from None
        if not isinstance(meta, dict) or meta.get("version") not in _READABLE_STATES or "seq" not in meta:
            raise StateError(f"{path}: not a pyfriction-server state file of version {STATE_VERSION}")
        return meta

    def _load_dedupe(self, meta: dict[str, Any]) -> None:
        saved = meta.get("dedupe")
        assert self.dedupe is not None
        try:
            if meta["version"] == 1:  # the ids themselves, two generations, oldest first
                for generation in saved or ():
                    for key in generation:
                        self.dedupe.seen(str(key))
            elif saved:
                self.dedupe.load(np.frombuffer(saved, dtype="<u8"))
        except (TypeError, ValueError) as exc:
            raise StateError(f"{STATE_FILE}: damaged dedupe memory ({exc})") from None

    @property
    def dedupe_count(self) -> int:
        """Delivery ids remembered (this process's, or the workers' shared memory)."""
        ids = self.shared_ids if self.shared_ids is not None else self.dedupe
        return len(ids) if ids is not None else 0

    # -- callbacks from the tracker ---------------------------------------------------------
    def _episode(self, episode: pyfriction.Episode) -> None:
        self.metrics.episodes.inc()

    def _guidance(self, user_id: str, guidance: Any) -> None:
        if self.replaying:
            return
        if self.bell is not None:  # the user's stream may be held by another worker
            self.bell.ring(user_id)
        if self.push is not None:  # ...or on another host
            self.push.publish(user_id)
        for listener in self.guidance_listeners:
            listener(user_id)

    # -- ingest ------------------------------------------------------------------------------
    @property
    def pending(self) -> int:
        """Records waiting for the journal or the engine."""
        return (self.journal.pending if self.journal is not None else 0) + len(self._deferred)

    async def submit(self, record: dict[str, Any]) -> Any:
        """Persist then apply ``record``; returns :meth:`apply`'s result."""
        journal = self.journal
        if journal is None:
            return self.apply(record)
        if self.pending >= self.settings.max_pending:
            raise HTTPError(503, "overloaded", "the ingest queue is full; retry shortly", retry_after=1)
        if self._mark is not None:
            self._tag += 1
            record["n"] = self._tag
        try:
            payload = _encode(record)
        except (UnicodeEncodeError, OverflowError, RecursionError):  # unreachable from JSON bodies: decoders refuse
            raise HTTPError(400, "bad_request", "the payload holds text or numbers that cannot be stored") from None
        fut: asyncio.Future[Any] = self._loop.create_future()  # type: ignore[union-attr]
        journal.submit(payload, record, fut)
        return await fut

    def _committed(self, done: list[tuple[Any, asyncio.Future[Any]]], error: BaseException | None) -> None:
        if error is not None:
            self.metrics.journal_write_errors.inc()
            for _, fut in done:
                if not fut.done():
                    fut.set_exception(
                        HTTPError(503, "journal_unavailable", "the ingest journal cannot be written", retry_after=5)
                    )
            return
        if self._snapshotting:
            self._deferred.extend(done)
            return
        self._apply_all(done)

    def _apply_all(self, done: list[tuple[Any, asyncio.Future[Any]]]) -> None:
        for record, fut in done:
            try:
                result = self.apply(record)
            except Exception as exc:  # a bug, not client input: logged, answered 500
                log.exception("applying an ingest record failed")
                if not fut.done():
                    fut.set_exception(exc)
                continue
            if not fut.done():
                fut.set_result(result)

    def apply(self, record: dict[str, Any]) -> Any:
        """Apply one journal record to the tracker (the same code live and in replay)."""
        result = self._apply(record)
        mark = self._mark
        if mark is not None and "n" in record:
            mark.set(record["n"])
        return result

    def _apply(self, record: dict[str, Any]) -> Any:
        kind = record.get("k")
        if kind == "e":
            return self._apply_events(record)
        tracker = self.tracker
        assert tracker is not None
        if kind == "a":
            ack = getattr(tracker, "ack", None)
            if ack is None:
                return False
            try:
                return bool(ack(record["u"], record["g"], record["o"], ts=record.get("ts")))
            except (ValueError, KeyError):
                return False
        if kind == "t":
            return tracker.tick(float(record["now"]))
        if kind == "p":  # a readiness probe: the journal takes records again
            return None
        log.warning("journal: unknown record kind %r skipped", kind)
        return None

    def _apply_events(self, record: dict[str, Any]) -> dict[str, int]:
        """Score a batch record. Every message of it ends up accepted (as an event, a screen,
        an identify or another call) or rejected with a reason; the metrics count each."""
        tracker = self.tracker
        assert tracker is not None
        cols: dict[str, list[Any]] = record["cols"]
        ids: list[str | None] = record["ids"]
        n = len(ids)
        rejected: dict[str, int] = dict(record.get("rej") or {})
        if "bad" in record:  # a record of an older sidecar: one count for every reason
            rejected["invalid"] = rejected.get("invalid", 0) + int(record["bad"])
        if self.shared_ids is not None:
            keep = self.shared_ids.filter(ids, int(record.get("n", 0)))
        else:
            assert self.dedupe is not None
            keep = self.dedupe.filter(ids)
        kept = n if keep is None else len(keep)
        if keep is not None:
            cols = {name: [col[i] for i in keep] for name, col in cols.items()}
        nan: np.ndarray | None = None
        if kept:
            try:
                # Numbers as arrays: the engine takes them without a Python call per value.
                columns: dict[str, Any] = dict(cols, ts=np.asarray(cols["ts"], dtype=np.float64),
                                               status=np.asarray(cols["status"], dtype=np.int64),
                                               results=np.asarray(cols["results"], dtype=np.int64))  # fmt: skip
                nan = np.isnan(tracker.observe_many(columns))
            except (pyfriction.InvalidEvent, TypeError, ValueError, OverflowError) as exc:
                log.warning("a batch was refused by the engine", extra={"error": type(exc).__name__,
                                                                        "events": kept})  # fmt: skip
                nan = np.ones(kept, dtype=bool)
        kinds: dict[str, int] = {}
        extras, screens = record.get("ext"), record.get("scr")
        if not extras and not screens:  # one message per row, all of them events
            bad = 0 if nan is None else int(np.count_nonzero(nan))
            duplicates, invalid, events = n - kept, bad, kept - bad
        else:
            weight = np.ones(n, dtype=np.int64)  # 0: a row added for a message that has one already
            weight[extras or []] = 0
            screen = np.zeros(n, dtype=bool)
            screen[screens or []] = True
            taken = np.zeros(n, dtype=bool)
            taken[slice(None) if keep is None else keep] = True
            ok = taken.copy()
            if nan is not None:
                ok[taken] = ~nan
            duplicates = int(weight[~taken].sum())
            invalid = int(weight[taken & ~ok].sum())
            events = int(weight[ok & ~screen].sum())
            kinds["screen"] = int(weight[ok & screen].sum())
        kinds["event"] = events
        identify = getattr(tracker, "identify", None)
        identified = refused = 0
        reason = ""
        for user_id, traits in record.get("idn", ()):
            try:
                if identify is None:
                    raise TypeError("this engine has no identify")
                identify(user_id, traits)
                identified += 1
            except (TypeError, ValueError) as exc:
                refused += 1
                reason = type(exc).__name__
        if refused:
            # One line per batch, not per message (and the log limiter caps repeats): the
            # message could carry the user id, so only its type is logged.
            log.warning("identify calls refused by the engine", extra={"refused": refused, "error": reason})
        if not self.replaying:
            m = self.metrics
            source: str = record["src"]
            kinds["identify"] = identified
            for call, count in (record.get("calls") or {}).items():
                kinds[call] = kinds.get(call, 0) + int(count)
            for reason_name, count in (("duplicate", duplicates), ("invalid", invalid), ("invalid_traits", refused)):
                if count:
                    rejected[reason_name] = rejected.get(reason_name, 0) + count
            m.events_received.inc((source,), record.get("n", n))
            m.events_accepted.inc((source,), sum(kinds.values()))
            for kind, count in kinds.items():
                if count:
                    m.events_accepted_kinds.inc((kind,), count)
            for reason_name, count in rejected.items():
                if count:
                    m.events_rejected.inc((reason_name,), count)
        decode_rejects = sum(v for k, v in rejected.items() if k not in ("duplicate", "invalid", "invalid_traits"))
        return {"accepted": events + kinds.get("screen", 0), "duplicates": duplicates,
                "invalid": invalid + decode_rejects}  # fmt: skip

    # -- snapshots ---------------------------------------------------------------------------
    def _journal_bytes(self, nbytes: int, syncs: int) -> None:
        self.metrics.journal_bytes.inc((), nbytes)
        if syncs:
            self.metrics.journal_syncs.inc((), syncs)

    def _rotated(self, seq: int) -> None:
        if self.worker is not None:  # a checkpoint copies nothing: records go on
            assert self._mark is not None
            self._rotation_mark = self._mark.value  # every record of the old segments applied
            self._rotation_time = time.monotonic()  # a copy of the live files started after it holds them
            return
        # Runs after every record of the old segments was applied and before any of the new
        # one: from here until the state is copied for the snapshot, commits wait (requests
        # too); the copy is written to disk while they go on.
        self._snapshotting = True

    def _resume(self) -> None:
        """Commits go on after a snapshot's copy of the state (event loop thread)."""
        if self._snapshotting:
            self._snapshotting = False
            deferred, self._deferred = self._deferred, []
            self._apply_all(deferred)

    async def snapshot(self) -> bool:
        """Snapshot now (no-op without a state directory); False if one is already running."""
        if self.journal is None or self._snapshot_lock.locked():
            return False
        if self.worker is not None:
            return await self._checkpoint()
        async with self._snapshot_lock:
            started = time.perf_counter()
            try:
                seq = await self.journal.rotate()
            except OSError as exc:
                log.error("snapshot: cannot start a new journal segment: %s", exc)
                return False
            try:
                if self.settings.snapshot_fork and hasattr(os, "fork"):
                    await self._fork_snapshot(seq)
                else:
                    await asyncio.to_thread(self._write_snapshot, seq)
            except Exception:
                log.exception("snapshot failed; the journal keeps everything")
                return False
            finally:
                self._resume()
            self.metrics.snapshots.inc()
            self.metrics.snapshot_seconds.observe(time.perf_counter() - started)
            log.info("snapshot written", extra={"seq": seq, "seconds": round(time.perf_counter() - started, 3)})
            try:
                await asyncio.to_thread(self._drop_obsolete, seq)
            except OSError as exc:  # the next snapshot drops them
                log.warning("snapshot written; its older files stay until the next one: %s", exc)
            return True

    async def _checkpoint(self) -> bool:
        """Worker mode: a new segment; once every record before it is applied, the store is
        written back to disk and the older segments are deleted."""
        assert self.journal is not None
        async with self._snapshot_lock:
            started = time.perf_counter()
            try:
                seq = await self.journal.rotate()
                copy = asyncio.ensure_future(asyncio.to_thread(self._drop_segments, seq))
                try:
                    await asyncio.shield(copy)
                except asyncio.CancelledError:
                    # Cancelled (the sidecar stopping): the thread goes on all the same, so the
                    # lock is kept until it is done. Released earlier, the stop's own checkpoint
                    # ran beside it, and this older one's mark could land after the newer one's:
                    # the checkpoint then lagged the watermark and the live files were kept.
                    await copy
                    raise
            except OSError as exc:
                log.error("checkpoint failed; the journal keeps everything: %s", exc)
                return False
            self.metrics.snapshots.inc()
            self.metrics.snapshot_seconds.observe(time.perf_counter() - started)
            return True

    def _drop_segments(self, below: int) -> None:
        directory = self.directory
        assert directory is not None and self.tracker is not None and self._mark is not None
        mark = self._rotation_mark
        self._store_to_disk(self._rotation_time)
        self._mark.sync()
        if self._boot is not None:  # the store on disk holds every record up to the rotation
            Checkpoint(directory).write(self._boot, mark)
        drop_segments(directory, below)
        _fsync_dir(directory)

    def _store_to_disk(self, since: float) -> None:
        """Worker mode: the store on disk holds every record applied before ``since``
        (``time.monotonic()``): the live files copied (a copy another worker started after
        ``since`` will do), or the mapped store written back."""
        assert self.root is not None and self.tracker is not None
        if self._live is not None:
            live_files.save(self._live, self.root, since)
        else:
            self.tracker.sync()

    async def _fork_snapshot(self, seq: int) -> None:
        """Write the snapshot from a forked child, as Redis does: the child sees the state as
        of the fork (copy-on-write) and writes it at a low priority, while commits go on here
        at once. The pause is the fork itself, not the seconds a million users take to write."""
        pid = os.fork()
        if pid == 0:  # the child: this thread only; write, then leave without any cleanup
            code = 1
            try:
                os.nice(10)
                self._write_snapshot(seq, resume=False)
                code = 0
            except BaseException:
                try:
                    log.exception("snapshot child failed")
                except BaseException:
                    pass
            finally:
                os._exit(code)
        self._resume()
        log.debug("snapshot child forked", extra={"pid": pid})
        _, status = await asyncio.to_thread(os.waitpid, pid, 0)
        if not os.WIFEXITED(status) or os.WEXITSTATUS(status) != 0:
            raise RuntimeError(f"the snapshot child exited with status {status}")
        self._snapshot_file = f"snapshot-{seq:012d}.pf"

    def _write_snapshot(self, seq: int, resume: bool = True) -> None:
        directory = self.directory
        assert directory is not None and self.tracker is not None
        name = f"snapshot-{seq:012d}.pf"
        loop = self._loop
        dedupe: list[bytes] = []

        def captured() -> None:  # the tracker's state is copied: the dedupe memory's too, then go on
            assert self.dedupe is not None
            dedupe.append(self.dedupe.export().astype("<u8", copy=False).tobytes())
            if resume and loop is not None:
                loop.call_soon_threadsafe(self._resume)

        # A forked child (resume False) streams the tables and frees them once written.
        self.tracker.snapshot(os.path.join(directory, name), captured=captured, release=not resume)
        meta = {"version": STATE_VERSION, "seq": seq, "tracker": name, "dedupe": dedupe[0], "created": time.time()}
        # 8 MB for a million ids: past the page cache, as the snapshot
        with replace_atomically(os.path.join(directory, STATE_FILE), prefix=".state-") as out:
            out.write(_encode(meta))
        _fsync_dir(directory)
        self._snapshot_file = name

    def _drop_obsolete(self, seq: int) -> None:
        """After snapshot ``seq`` is committed: its older segments and snapshots go, a few MB
        at a time (:func:`~pyfriction_server.journal.discard`). Done here, not in the forked
        child, so that the child lives only as long as the writing: while it lives, every
        page the sidecar writes that the child still shares costs the sidecar a copy."""
        directory = self.directory
        assert directory is not None
        drop_segments(directory, seq)
        name = f"snapshot-{seq:012d}.pf"
        for entry in os.listdir(directory):
            if entry.startswith("snapshot-") and entry != name:
                try:
                    discard(os.path.join(directory, entry))
                except OSError:
                    pass

    def needs_snapshot(self) -> bool:
        """True when the current journal segment has grown past ``snapshot_journal_bytes``."""
        return self.journal is not None and self.journal.size >= self.settings.snapshot_journal_bytes

    # -- stop --------------------------------------------------------------------------------
    async def close(self) -> None:
        """Drain the journal, snapshot, stop the writer, release the directory."""
        if self.journal is not None:
            while self._snapshot_lock.locked():
                await asyncio.sleep(0.01)
            await self.snapshot()
            await self.journal.close()
            self.journal = None
        if self.tracker is not None:
            self.tracker.close(timeout=5.0)
        for shared in (self.shared_ids, self.bell, self._mark):
            if shared is not None:
                shared.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
        self.ready = False
