"""The :class:`Tracker`: the public face of both engines."""

from __future__ import annotations

import atexit
import logging
import os
import time
import weakref
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar, cast, overload

import msgspec
import numpy as np

from . import _snapfile
from ._constants import DETECTOR_NAMES
from ._engine import Engine as EngineProtocol
from ._episodes import Guidance, Stats, UserState, make_episode, make_state
from ._layout import SLOT_DTYPE, STEP_DTYPE
from ._legacy import layout_hash
from ._reference import ReferenceCore
from ._rules import Names, Rules
from ._snapfile import SnapshotError
from ._switch import extensions_disabled
from .config import Config, detector_weights, load_config
from .dispatcher import Callback, Dispatcher, run_callbacks
from .events import Event
from .guidance import EVENT_OUTCOMES, OUTCOMES, GuidanceEngine
from .insights import CalibrationSuggestion, Insights, InsightsCollector, suggest_calibration
from .sinks import SinkStats, WebhookSink
from .store import StoreError, attach_config, is_redis_store, parse_store
from .userstate import FileState, MemoryState, StateStore, facts_path
from .writeback import WriteBack, write_back_files

__all__ = ["LAYOUT_HASH", "Engine", "Tracker", "compiled_available"]

Engine = str  # "auto" | "compiled" | "reference"
C = TypeVar("C", bound=Callback)

#: Identifies the state layout; snapshots (and shared stores) of another layout are refused.
LAYOUT_HASH = layout_hash(SLOT_DTYPE, STEP_DTYPE)
SNAPSHOT_FORMAT = _snapfile.FORMAT
#: The snapshot file's version (``pyfriction._snapfile``); older ones are still read.
SNAPSHOT_VERSION = _snapfile.VERSION
#: User records per chunk when a snapshot streams them from the tables (3.5 MiB).
_SNAPSHOT_CHUNK = 16384
log = logging.getLogger("pyfriction")
GuidanceCallback = Callable[[str, Guidance], Any]
G = TypeVar("G", bound=GuidanceCallback)


_shared_cores: weakref.WeakSet[Any] = weakref.WeakSet()


def _reattach_after_fork() -> None:
    # A tracker made before fork() (gunicorn --preload) keeps its mapping in the child, which
    # needs a counter block of its own in the store.
    for core in list(_shared_cores):
        core.after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reattach_after_fork)

#: Every tracker not yet closed, for the flush at interpreter exit.
_live_trackers: weakref.WeakSet[Tracker] = weakref.WeakSet()
#: Seconds the exit flush may take in all, unless ``$PYFRICTION_SHUTDOWN_TIMEOUT`` says otherwise.
SHUTDOWN_TIMEOUT = 2.0


def _shutdown_timeout() -> float:
    try:
        value = float(os.environ.get("PYFRICTION_SHUTDOWN_TIMEOUT", SHUTDOWN_TIMEOUT))
    except ValueError:
        return SHUTDOWN_TIMEOUT
    return value if value >= 0 else SHUTDOWN_TIMEOUT


def _flush_at_exit() -> None:
    """Deliver what the trackers still hold when the interpreter exits.

    Callbacks run on a daemon thread, which would otherwise die with episodes still queued: a
    script's last episodes would be lost without a word. As sentry-python's atexit integration
    does, the exit waits for them, but never longer than ``$PYFRICTION_SHUTDOWN_TIMEOUT``
    seconds (default 2) for all trackers together, so a stuck callback or webhook cannot hang
    the exit; whatever is still queued then is dropped.
    """
    deadline = time.monotonic() + _shutdown_timeout()
    for tracker in list(_live_trackers):
        try:
            tracker.flush(max(0.0, deadline - time.monotonic()))
        except Exception:  # at exit, never a traceback from us
            pass


atexit.register(_flush_at_exit)


def _load_compiled() -> Any:
    from . import _core

    return _core


def compiled_available() -> bool:
    """True when the compiled core is importable (and not disabled by the environment)."""
    if extensions_disabled():
        return False
    try:
        _load_compiled()
    except ImportError:
        return False
    return True


class Tracker:
    """Scores friction per user from their events and fires episodes.

    ``engine`` is ``"auto"`` (the compiled core when importable, unless the environment
    variable ``PYFRICTION_NO_EXTENSIONS=1`` is set), ``"compiled"`` or ``"reference"``.
    ``capacity`` (default 1,000,000) bounds the users tracked at once and ``idle_ttl``
    evicts users silent for longer (seconds); both default to the config's values.
    ``clock`` gives the time of events that carry no ``ts`` (default ``time.time``).
    ``store`` is ``"memory://"`` (state private to this process) or
    ``"file:///path/friction.state"``: one memory-mapped file shared by every process that
    opens it (compiled engine only; see :mod:`pyfriction.store`), written back every
    ``sync_interval`` seconds (default 5, ext4's own commit interval: an OS crash or a power
    loss loses up to about that much of the store, a crash of the process nothing; each pass
    write-protects the pages it cleans and every writer then faults once on each, which at
    1 s took 13% of the time of ``observe()`` with guidance, at 5 s 6%) and on :meth:`sync` and :meth:`close` (``None``: no periodic
    write-back, for a host that journals what it scores and calls :meth:`sync` at its own
    checkpoints, as the sidecar's workers do; the kernel still writes the store back on its
    own schedule); or a Redis URI (``redis://host:6379``,
    ``redis+cluster://host:7000``, ``redis+sentinel://host:26379/service``) shared by every
    host: see :mod:`pyfriction.redis_engine`, whose options (``prefix``, ``chunk``,
    ``baseline_interval``, ``retry_timeout``, ``replicas``, ``dedupe``, ``rate_cap``...; and
    :class:`~pyfriction.redis_state.RedisState`'s; ``client`` for redis-py's) ``store_options`` or
    the URI's query (``?prefix=shop&replicas=1``) set.
    Further keyword ``options`` override config keys (see :func:`pyfriction.load_config`).
    """

    def __init__(
        self,
        config: None | Config | Mapping[str, Any] | str | os.PathLike[str] = None,
        *,
        engine: Engine = "auto",
        capacity: int | None = None,
        idle_ttl: float | None = None,
        clock: Callable[[], float] | None = None,
        store: str | None = "memory://",
        sync_interval: float | None = 5.0,
        store_options: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> None:
        if capacity is not None:
            options["capacity"] = capacity
        if idle_ttl is not None:
            options["idle_ttl"] = idle_ttl
        self.config: Config = load_config(config, **options)
        self._rules = Rules(self.config)
        self._names = Names()
        self._clock = clock or time.time
        self._dispatcher = Dispatcher(self.config.queue_size)
        _live_trackers.add(self)
        self._async: list[Callback] = []
        self._sync: list[Callback] = []
        gcfg = self.config.guidance
        self._on_guidance: list[GuidanceCallback] = []
        hook = self.config.sinks.webhook
        self._webhook: WebhookSink | None = WebhookSink(hook) if hook is not None else None
        self._redis: Any = None  # the RedisState of a Redis store
        self._store_path = None if is_redis_store(store) else parse_store(store)
        if is_redis_store(store):
            self._core: EngineProtocol = self._redis_core(engine, str(store), dict(store_options or {}))
        else:
            self._core = self._make_core(engine)
        if store_options and self._redis is None:
            raise StoreError("store_options are for Redis stores (redis://, redis+cluster://, redis+sentinel://)")
        # Guidance bookkeeping and insights: in this process's memory, or in the store's facts
        # file next to it, shared with every process of the store (pyfriction.userstate), or
        # on Redis with the records.
        self._facts = FileState(facts_path(self._store_path), self.config.capacity) if self._store_path else None
        # One store for both, so that a user the engine evicts loses every fact at once.
        self._state: StateStore = (
            self._facts
            if self._facts is not None
            else (self._redis if self._redis is not None else MemoryState(self.config.capacity))
        )
        self._insights = InsightsCollector(gcfg.attribution_window, self.config.capacity,
                                           {i.id: (i.kind, i.title) for i in gcfg.items}, self._state)  # fmt: skip
        self._guidance = GuidanceEngine(gcfg, self.config.capacity, self._insights.item, self._state)
        self._core.track_evictions(True)
        if self._facts is not None:
            # A batch's queued episodes and outcomes: one facts transaction for them all (one
            # lock, each user and row read and written once), not one each. Safe because the
            # queue is on only while no callback runs inline (batch_queue): nothing but the
            # tracker's own bookkeeping runs inside it.
            self._core.deliver_session = self._facts.session
        # A store file keeps the facts of an evicted user who is back in the table by the
        # time they are dropped: another process may have brought them back, with new facts.
        self._keep_returned = self._facts is not None or self._redis is not None
        if self._store_path is not None:
            shared: Any = self._core  # a CompiledCore on a store file
            self._names = shared.names_view  # the store's name table, shared
            _shared_cores.add(self._core)
            self._syncer = (
                WriteBack(self._core, (self._store_path, facts_path(self._store_path)), sync_interval)
                if sync_interval is not None
                else None
            )
        # The hot path: observe is the engine's own method, with no Python frame in between.
        self.observe = self._core.observe  # type: ignore[method-assign]
        self.observe_many = self._core.observe_many  # type: ignore[method-assign]

    @staticmethod
    def _use_compiled(engine: Engine) -> bool:
        if engine not in ("auto", "compiled", "reference"):
            raise ValueError(f"engine must be 'auto', 'compiled' or 'reference', not {engine!r}")
        return engine == "compiled" or (engine == "auto" and compiled_available())

    def _make_core(self, engine: Engine) -> EngineProtocol:
        use_compiled = self._use_compiled(engine)
        if self._store_path is not None and not use_compiled:
            raise StoreError(
                "the reference engine keeps its state in process memory only: a file:// store "
                "needs the compiled core (engine='compiled', without PYFRICTION_NO_EXTENSIONS)"
            )
        args = (self._rules, self.config.capacity, self.config.idle_ttl, self._clock, self._names,
                self._emit, self._outcome)  # fmt: skip
        if use_compiled:
            try:
                core = _load_compiled()
            except ImportError as exc:
                raise ImportError(
                    "the compiled engine pyfriction._core is not built; reinstall with a C "
                    "compiler available, or use engine='reference'"
                ) from exc
            compiled: EngineProtocol
            if self._store_path is not None:
                compiled = core.CompiledCore(*args, store=self._store_path,
                                             config_json=attach_config(self._store_path, self.config))  # fmt: skip
            else:
                compiled = core.CompiledCore(*args)
            return compiled
        return ReferenceCore(*args)

    def _redis_core(self, engine: Engine, uri: str, options: dict[str, Any]) -> EngineProtocol:
        """The engine on the Redis store of ``uri``: the records by :class:`RedisCore` over a
        working table of this tracker's engine, the facts by :class:`RedisState`."""
        try:
            from .redis_engine import CORE_OPTIONS, STATE_OPTIONS, RedisCore, split_options
            from .redis_state import SOCKET_DEFAULTS, RedisState, redis_client
        except ImportError as exc:
            raise StoreError(f"a Redis store needs redis-py: pip install 'pyfriction[redis]' ({exc})") from None
        uri, in_uri = split_options(uri)
        options = {**in_uri, **options}
        unknown = sorted(set(options) - CORE_OPTIONS - STATE_OPTIONS - {"client"})
        if unknown:
            raise StoreError(f"store_options: unknown {', '.join(map(repr, unknown))} (known: "
                             f"{', '.join(sorted(CORE_OPTIONS | STATE_OPTIONS | {'client'}))})")  # fmt: skip
        client_options = dict(options.pop("client", None) or {})
        for name, value in SOCKET_DEFAULTS.items():  # a silent peer is an error retried, not a hang
            if name not in client_options and name + "=" not in uri:
                client_options[name] = value
        timeout = client_options.get("socket_timeout")
        if options.get("replicas") and timeout is not None and options.get("wait_timeout", 1.0) >= float(timeout):
            raise StoreError("store_options: wait_timeout must be below the client's socket_timeout "
                             f"({timeout} s), or the WAIT would be cut off as a dead connection")  # fmt: skip
        client = redis_client(uri, **client_options)
        core_options = {k: v for k, v in options.items() if k in CORE_OPTIONS}
        state_options = {k: v for k, v in options.items() if k in STATE_OPTIONS}
        use_compiled = self._use_compiled(engine)
        compiled = _load_compiled() if use_compiled else None

        def make_local(capacity: int, emit: Callable[..., None], outcome: Callable[..., None]) -> Any:
            args = (self._rules, capacity, self.config.idle_ttl, self._clock, self._names, emit, outcome)
            return compiled.CompiledCore(*args) if compiled is not None else ReferenceCore(*args)

        try:
            core = RedisCore(make_local, client, self._emit, self._outcome, idle_ttl=self.config.idle_ttl,
                             clock=self._clock, names=self._names, **core_options)  # fmt: skip
            self._redis = RedisState(client, self.config.capacity, owns_client=True, **state_options)
        except (TypeError, ValueError) as exc:
            raise StoreError(f"store_options: {exc}") from None
        return cast(EngineProtocol, core)

    # -- events ------------------------------------------------------------------------------
    @property
    def engine(self) -> str:
        """``"compiled"`` or ``"reference"``: the engine this tracker runs on."""
        return str(self._core.engine)

    def observe(self, event: Mapping[str, Any] | Event) -> float:  # replaced per instance
        """Score one event; returns the user's friction score in [0, 1) after it.

        ``event`` is a mapping or a :class:`pyfriction.Event` with ``user_id`` and ``type``
        (required), ``ts``, ``step``, ``target``, ``account_id`` and ``properties``.
        Raises :class:`pyfriction.InvalidEvent` naming the field of a malformed event.
        Unknown types and excluded steps/targets are counted and change nothing.
        """
        return float(self._core.observe(event))

    def observe_many(self, events: Iterable[Any] | Mapping[str, Any]) -> np.ndarray:
        """Score a batch in one call into the engine; returns the scores (float64 array).

        ``events`` is an iterable of events, or a columnar batch: a mapping of parallel
        sequences ``user_id``, ``type`` and optionally ``ts``, ``step``, ``target``,
        ``account_id``, ``properties``, ``status`` and ``results`` (integers, -1 for none).
        A malformed event is skipped and counted (its score is NaN); the rest go through.
        """
        return self._core.observe_many(events)

    # -- callbacks ---------------------------------------------------------------------------
    @overload
    def on_friction(self, callback: C, *, sync: bool = False) -> C: ...

    @overload
    def on_friction(self, callback: None = None, *, sync: bool = False) -> Callable[[C], C]: ...

    def on_friction(self, callback: C | None = None, *, sync: bool = False) -> Any:
        """Register ``callback(episode)``; also usable as ``@tracker.on_friction``.

        Callbacks run on a background thread with a bounded queue (``queue_size``), so
        ``observe`` never waits for them; ``sync=True`` runs the callback inline instead.
        A callback that raises is logged and counted, never breaks ``observe``.
        """

        def register(cb: C) -> C:
            if not callable(cb):
                raise TypeError(f"on_friction needs a callable, not {type(cb).__name__}")
            (self._sync if sync else self._async).append(cb)
            self._inline_changed()
            return cb

        return register if callback is None else register(callback)

    def adopt_callbacks(self, other: Tracker) -> None:
        """Register every ``on_friction`` callback of ``other`` here too (sync ones sync),
        after this tracker's own: what :func:`pyfriction.init` does when it replaces the
        default tracker."""
        self._sync.extend(other._sync)
        self._async.extend(other._async)
        self._inline_changed()

    def copy_state_to(self, target: Tracker) -> None:
        """Replace ``target``'s users, step histograms and counters with this tracker's, and
        add this tracker's step and target names to its names (``pyfriction store repair
        --snapshot``: a snapshot restored here is copied into a new store file)."""
        slots, steps, long_ids = self._core.export()
        target._core.load(slots, steps, long_ids)
        target._names.update(self._names.items())
        target._core.set_counters(self._core.counters)

    def _inline_changed(self) -> None:
        # A batch may queue its episodes and deliver them in order a little later (see
        # CompiledCore.begin_batch) unless a callback runs inline: that one may observe and
        # must see the state of the moment its episode fired.
        self._core.batch_queue = not (self._sync or self._on_guidance)

    def _forget_evicted(self) -> None:
        """Drop the facts (guidance, insights, open struggle) of the users the engine evicted
        since the last call: every fact of a user goes with the user. Called before each use
        of the facts, so they never outlive their user (observe itself stays as it was)."""
        core = self._core
        gone = core.drain_evicted(self._keep_returned)
        if gone is None:  # more evictions than the engine keeps: whom does it still hold?
            gone = [uid for uid in self._state.user_ids() if not core.has(uid)]
        if gone:
            self._state.forget(gone)

    def _emit(self, rec: Any, user_id: str, account_id: str | None, step: str | None,
              target: str | None, ts: float, score: float, stall_need: float) -> None:  # fmt: skip
        episode = make_episode(rec, user_id, account_id, step, target, ts, score, self._names,
                               self._rules, stall_need)  # fmt: skip
        try:  # guidance and measurement never break observe
            self._forget_evicted()
            # One transaction for the episode's facts (a file store: one lock, the user's
            # record read and written once; see StateStore.session).
            with self._state.session():
                picked = self._guidance.select(episode)
                episode.guidance, episode.holdout = picked.guidance, picked.holdout
                self._insights.episode(episode, picked.eligible)
        except Exception:
            log.exception("pyfriction: guidance selection failed for episode %s", episode.episode_id)
        if episode.guidance is not None and self._on_guidance:
            for cb in self._on_guidance:
                try:
                    cb(user_id, episode.guidance)
                except Exception:
                    self._dispatcher.failed += 1
                    log.exception("pyfriction: on_guidance callback %r failed", cb)
        if self._sync:
            self._dispatcher.failed += run_callbacks(self._sync, episode)
        if self._async:
            self._dispatcher.submit(self._async, episode)
        if self._webhook is not None:
            self._webhook.submit(episode)

    def _outcome(self, kind: str, user_id: str, account_id: str | None, step: str | None,
                 target: str | None, ts: float) -> None:  # fmt: skip
        """An outcome event (ticket, guidance feedback) was applied: measurement and caps.

        A ``guidance_shown``/``_clicked``/``_dismissed`` event's ``target`` is the item id."""
        try:
            self._forget_evicted()
            if kind == "ticket":
                self._insights.ticket(user_id, account_id, ts)
            elif kind in EVENT_OUTCOMES and target is not None:
                self._guidance.outcome(user_id, target, EVENT_OUTCOMES[kind], ts)
        except Exception:
            log.exception("pyfriction: recording a %s event failed", kind)

    # -- guidance ----------------------------------------------------------------------------
    def identify(self, user_id: str, traits: Mapping[str, Any]) -> None:
        """Merge ``traits`` (``plan``, ``locale``, any attribute) into what guidance rules match
        for ``user_id``; a None value removes a trait. Values are str, int, float or bool
        (others are ignored). An ``account_id`` trait also files the user under that account
        in the insights. Bounded like the rest of the per-user state (LRU at capacity)."""
        if not isinstance(user_id, str) or not user_id:
            raise TypeError("user_id must be a non-empty string")
        self._forget_evicted()
        self._guidance.identify(user_id, traits)
        account = traits.get("account_id")
        if isinstance(account, str):
            self._insights.hint_account(user_id, account)

    def traits(self, user_id: str) -> dict[str, Any]:
        """A copy of the traits known for ``user_id`` (see :meth:`identify`)."""
        self._forget_evicted()
        return self._guidance.traits(user_id)

    def pending(self, user_id: str) -> list[Guidance]:
        """Guidance waiting to be shown to ``user_id`` (oldest first), marked delivered: the next
        call does not return it again. Items older than ``guidance.expire_after`` are dropped."""
        self._forget_evicted()
        return self._guidance.pending(user_id, float(self._clock()))

    def unshown(self, user_id: str) -> list[Guidance]:
        """Guidance offered to ``user_id`` that no page has shown yet (oldest first). Unlike
        :meth:`pending`, reading does not consume: an item comes back until
        ``ack(user_id, id, "shown")`` (or clicked, dismissed, completed) or its expiry, so a page
        that closed between reading and showing it does not lose it (what the sidecar's streams
        read). The first read counts as delivered."""
        self._forget_evicted()
        return self._guidance.unshown(user_id, float(self._clock()))

    def ack(self, user_id: str, guidance_id: str, outcome: str, *, ts: float | None = None) -> bool:
        """Record what ``user_id`` did with guidance ``guidance_id``: ``"shown"``, ``"clicked"``,
        ``"dismissed"`` (not offered again for ``caps.dismiss_for`` seconds), ``"completed"``
        (relieves the user's friction like a ``success`` event, observed at ``ts``) or
        ``"anchor_missing"`` (a tooltip's anchor was not on the page: shown as a banner instead).

        ``ts`` defaults to the clock. Raises ValueError for another outcome; returns False when
        that guidance was never offered to that user (or is forgotten)."""
        if outcome not in OUTCOMES:
            raise ValueError(f"outcome must be one of {', '.join(OUTCOMES)}, not {outcome!r}")
        when = float(self._clock() if ts is None else ts)
        self._forget_evicted()
        known = self._guidance.outcome(user_id, guidance_id, outcome, when)
        if known and outcome == "completed":
            self.observe({"user_id": user_id, "type": "success", "ts": when})
        return known

    @overload
    def on_guidance(self, callback: G) -> G: ...

    @overload
    def on_guidance(self, callback: None = None) -> Callable[[G], G]: ...

    def on_guidance(self, callback: G | None = None) -> Any:
        """Register ``callback(user_id, guidance)``, run inline the moment an episode picks
        guidance (before ``on_friction`` callbacks), e.g. to push it to the user's browser.
        Keep it quick; exceptions are logged and counted (``stats().callbacks_failed``).
        Also usable as ``@tracker.on_guidance``."""

        def register(cb: G) -> G:
            if not callable(cb):
                raise TypeError(f"on_guidance needs a callable, not {type(cb).__name__}")
            self._on_guidance.append(cb)
            self._inline_changed()
            return cb

        return register if callback is None else register(callback)

    def insights(self, *, limit: int | None = 50) -> Insights:
        """Hotspots, lead time before tickets, deflection by guidance (with its 95% interval),
        guidance item rates and accounts, as measured since the tracker started (or since the
        snapshot it restored); ``limit`` cuts the hotspot and account lists (None: all)."""
        self._forget_evicted()
        c = self._core.counters
        return self._insights.build(engine=self.engine, events=int(c["events"]), users=len(self._core),
                                    episodes=int(c["episodes"]), tickets=int(c["tickets"]), limit=limit)  # fmt: skip

    def calibration(self) -> CalibrationSuggestion:
        """What the tickets seen so far suggest about the detector weights: per detector, how
        often its struggles were followed by a ticket, and weights moved toward that share. A
        suggestion only: the tracker's weights never change by themselves (``pyfriction
        calibrate`` fits and validates weights and the threshold on recorded logs)."""
        return suggest_calibration(self.insights(limit=0).detection, detector_weights(self.config))

    def store_stats(self) -> dict[str, int]:
        """What a Redis store did for this tracker (see :meth:`pyfriction.redis_engine.RedisCore.stats`:
        commits, conflicts replayed, events dropped as replays or by the rate cap...); empty for
        the other stores."""
        return cast(Any, self._core).stats() if self._redis is not None else {}

    def sink_stats(self) -> dict[str, SinkStats]:
        """Counters of each configured sink by name (``"webhook"``); empty without sinks."""
        return {} if self._webhook is None else {"webhook": self._webhook.stats()}

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every queued callback has run and every queued webhook delivery is done
        (sent or given up); False if ``timeout`` (s) ran out."""
        deadline = None if timeout is None else time.monotonic() + timeout
        done = self._dispatcher.flush(timeout)
        if self._webhook is not None:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            done = self._webhook.flush(left) and done
        return done

    def sync(self) -> None:
        """Write a ``file://`` store and its facts back to disk now, and wait; nothing to do
        for ``memory://``. Call it before dropping what could rebuild the state (a journal's
        segments, say): the periodic write-back runs every ``sync_interval``. Paced as that
        one is (:mod:`pyfriction.writeback`), so that other processes' writes to the disk and
        to the store do not stall behind it; it runs without the GIL."""
        if self._redis is not None:
            cast(Any, self._core).sync(True)  # this host's baselines and counters
            return
        if self._store_path is None:
            return
        write_back_files((self._store_path, facts_path(self._store_path)))

    def close(self, timeout: float | None = None) -> bool:
        """Flush and stop the dispatcher and the sinks. Scoring keeps working; async callbacks
        stop. A sink gets at most ``timeout`` (default: its request timeout) to deliver what it
        holds; the rest is dropped and counted."""
        _live_trackers.discard(self)
        done = self._dispatcher.close(timeout)
        if self._webhook is not None:
            done = self._webhook.close(timeout) and done
        if self._redis is not None:
            cast(Any, self._core).close()  # the background mode's queue scored, baselines added
            self._redis.close()
        if self._store_path is not None:
            if self._syncer is not None:
                self._syncer.stop()
            shared: Any = self._core  # a CompiledCore on a store file
            shared.close()  # msync, and detach from the shared store
        return done

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- state -------------------------------------------------------------------------------
    def score(self, user_id: str, at: float | None = None) -> float:
        """The user's score after their last event, or decayed to time ``at``; 0.0 if unknown."""
        return float(self._core.score(user_id, at))

    def state(self, user_id: str) -> UserState | None:
        """The user's friction state as of their last event, or None if not tracked."""
        rec = self._core.record(user_id)
        return None if rec is None else make_state(rec, user_id, self._names)

    def pressures(self, user_id: str) -> dict[str, float] | None:
        """The user's pressure per active detector as of their last event (``state().detectors``
        alone, at a tenth of its cost: for replays that read it after every event), or None if
        the user is not tracked."""
        rec = self._core.record(user_id)
        if rec is None:
            return None
        values = rec["pressure"].tolist()
        return {DETECTOR_NAMES[d]: v for d, v in enumerate(values) if v > 0.0}

    def tick(self, now: float | None = None) -> int:
        """Run the time-driven checks (stall, rearm, idle eviction) at ``now`` (default: the
        clock) for every user; returns the number of episodes fired."""
        fired = int(self._core.tick(float(self._clock() if now is None else now)))
        self._forget_evicted()  # the idle users it evicted
        return fired

    def stats(self) -> Stats:
        """Counters: events, users tracked, episodes, evictions, callbacks dropped/failed..."""
        c = self._core.counters
        return Stats(
            engine=self.engine,
            users=len(self._core),
            capacity=self.config.capacity,
            callbacks_dropped=self._dispatcher.dropped,
            callbacks_failed=self._dispatcher.failed,
            queue_depth=self._dispatcher.depth,
            **c,
        )

    # -- snapshots ---------------------------------------------------------------------------
    def snapshot(self, path: str | os.PathLike[str], *,
                 captured: Callable[[], Any] | None = None, release: bool = False) -> None:  # fmt: skip
        """Write the full state (users, step baselines, names, counters, config) to ``path``.

        The file is replaced atomically; restoring it into either engine loses nothing.
        ``captured`` is called once the state is copied, before the file is written (the
        longer part): from then on the tracker may change again without changing the file.
        ``release=True`` is for a forked child whose only job is this file, and leaves the
        tracker unusable: the user records go from the engine's tables to the file in chunks
        (no copy of them is made, and ``captured`` is called before they are written; nothing
        else may use the tracker meanwhile), and the tables are freed once written, before
        the file is synced (the parent's writes stop copying the pages the two still share).
        """
        core: Any = self._core  # the compiled one also frees its tables (release_tables)
        self._forget_evicted()
        # Streaming (the tables straight to the file, no copy) suits a tracker nobody else
        # uses meanwhile: the forked child that release=True is for. A store's tables are
        # shared with other processes, so they are copied first (export) in any case.
        stream = release and self._store_path is None
        if stream:
            steps, long_ids, n_slots = core.export_meta()
        else:
            slots, steps, long_ids = core.export()
            n_slots = len(slots)
        steps = steps[np.argsort(steps["key"], kind="stable")]  # the same file from either engine
        state = {
            "config": msgspec.to_builtins(self.config),
            "counters": dict(core.counters),
            "names": list(self._names.items()),
            "long_ids": sorted(long_ids.items()),  # the same file from either engine
            "guidance": {"state": self._guidance.export(), "insights": self._insights.export()},
        }
        if captured is not None:
            captured()
        release = release and hasattr(core, "release_tables")  # the reference has no tables to free
        if release and not stream:
            core.release_tables()  # they are copied
        _snapfile.write(path, layout=LAYOUT_HASH, state=state, n_slots=n_slots, steps=steps,
                        slots=self._slot_chunks() if stream else (slots,),
                        written=core.release_tables if release and stream else None)  # fmt: skip

    def _slot_chunks(self) -> Iterable[np.ndarray]:
        """The user records of ``export()``, a chunk at a time, in one reused buffer."""
        buf = np.empty(_SNAPSHOT_CHUNK, dtype=SLOT_DTYPE)
        cursor = 0
        while True:
            n, cursor = self._core.export_chunk(buf, cursor)
            if not n:
                return
            yield buf[:n]

    @classmethod
    def restore(
        cls,
        path: str | os.PathLike[str],
        config: None | Config | Mapping[str, Any] | str | os.PathLike[str] = None,
        **kwargs: Any,
    ) -> Tracker:
        """A new tracker holding the state of a snapshot (from either engine).

        ``config`` defaults to the snapshot's own; other arguments are those of
        :class:`Tracker`. Raises :class:`SnapshotError` for a damaged or foreign file.
        """
        snap = _snapfile.read(path, LAYOUT_HASH)
        doc = snap.state
        try:
            tracker = cls(doc["config"] if config is None else config, **kwargs)
            tracker._names.update((int(k), str(v)) for k, v in doc["names"])
            tracker._core.load(snap.slots, snap.steps, {int(k): str(v) for k, v in doc["long_ids"]})
            counters = dict(tracker._core.counters)  # evictions while loading, if smaller
            for key, value in doc["counters"].items():
                if key in counters:
                    counters[key] += int(value) if key == "evictions" else int(value) - counters[key]
            tracker._core.set_counters(counters)
            if snap.version >= 2:  # guidance bookkeeping and insights (absent from version 1)
                extra = doc["guidance"]
                tracker._guidance.load(extra["state"], lambda g: msgspec.convert(g, Guidance))
                tracker._insights.load(extra["insights"])
        except (KeyError, TypeError, ValueError, AttributeError, msgspec.DecodeError) as exc:
            raise SnapshotError(f"{os.fspath(path)}: damaged snapshot ({exc})") from None
        return tracker
