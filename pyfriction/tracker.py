"""The :class:`Tracker`: the public face of both engines."""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
from typing import Any, Callable, Iterable, Mapping, Optional, TypeVar, Union, overload

import msgspec
import numpy as np

from ._episodes import Episode, Stats, UserState, make_episode, make_state
from ._layout import SLOT_DTYPE, STEP_DTYPE
from ._reference import ReferenceCore
from ._rules import Names, Rules
from .config import Config, load_config
from .dispatcher import Callback, Dispatcher, run_callbacks
from .events import Event

__all__ = ["Tracker", "Engine", "compiled_available", "LAYOUT_HASH"]

Engine = str  # "auto" | "compiled" | "reference"
C = TypeVar("C", bound=Callback)

#: Identifies the state layout; snapshots (and shared stores) of another layout are refused.
LAYOUT_HASH = hashlib.sha256(repr((SLOT_DTYPE.descr, STEP_DTYPE.descr)).encode()).hexdigest()[:16]
SNAPSHOT_FORMAT = "pyfriction-snapshot"
SNAPSHOT_VERSION = 1


class SnapshotError(ValueError):
    """A snapshot file is unreadable, damaged, or of another version or layout."""


def _load_compiled() -> Any:
    from . import _core  # noqa: PLC0415  (optional extension)

    return _core


def compiled_available() -> bool:
    """True when the compiled core is importable (and not disabled by the environment)."""
    if os.environ.get("PYFRICTION_NO_EXTENSIONS", "") not in ("", "0"):
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
    Further keyword ``options`` override config keys (see :func:`pyfriction.load_config`).
    """

    def __init__(
        self,
        config: Union[None, Config, Mapping[str, Any], str, "os.PathLike[str]"] = None,
        *,
        engine: Engine = "auto",
        capacity: Optional[int] = None,
        idle_ttl: Optional[float] = None,
        clock: Optional[Callable[[], float]] = None,
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
        self._async: list[Callback] = []
        self._sync: list[Callback] = []
        self._core = self._make_core(engine)
        # The hot path: observe is the engine's own method, with no Python frame in between.
        self.observe = self._core.observe  # type: ignore[method-assign]
        self.observe_many = self._core.observe_many  # type: ignore[method-assign]

    def _make_core(self, engine: Engine) -> Any:
        if engine not in ("auto", "compiled", "reference"):
            raise ValueError(f"engine must be 'auto', 'compiled' or 'reference', not {engine!r}")
        use_compiled = engine == "compiled" or (engine == "auto" and compiled_available())
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
            return core.CompiledCore(*args)
        return ReferenceCore(*args)

    # -- events ------------------------------------------------------------------------------
    @property
    def engine(self) -> str:
        """``"compiled"`` or ``"reference"``: the engine this tracker runs on."""
        return str(self._core.engine)

    def observe(self, event: Union[Mapping[str, Any], Event]) -> float:  # replaced per instance
        """Score one event; returns the user's friction score in [0, 1) after it.

        ``event`` is a mapping or a :class:`pyfriction.Event` with ``user_id`` and ``type``
        (required), ``ts``, ``step``, ``target``, ``account_id`` and ``properties``.
        Raises :class:`pyfriction.InvalidEvent` naming the field of a malformed event.
        Unknown types and excluded steps/targets are counted and change nothing.
        """
        return float(self._core.observe(event))

    def observe_many(self, events: Union[Iterable[Any], Mapping[str, Any]]) -> np.ndarray:
        """Score a batch in one call into the engine; returns the scores (float64 array).

        ``events`` is an iterable of events, or a columnar batch: a mapping of parallel
        sequences ``user_id``, ``type`` and optionally ``ts``, ``step``, ``target``,
        ``account_id``, ``properties``, ``status`` and ``results`` (integers, -1 for none).
        A malformed event is skipped and counted (its score is NaN); the rest go through.
        """
        return self._core.observe_many(events)  # type: ignore[no-any-return]

    # -- callbacks ---------------------------------------------------------------------------
    @overload
    def on_friction(self, callback: C, *, sync: bool = False) -> C: ...

    @overload
    def on_friction(self, callback: None = None, *, sync: bool = False) -> Callable[[C], C]: ...

    def on_friction(self, callback: Optional[C] = None, *, sync: bool = False) -> Any:
        """Register ``callback(episode)``; also usable as ``@tracker.on_friction``.

        Callbacks run on a background thread with a bounded queue (``queue_size``), so
        ``observe`` never waits for them; ``sync=True`` runs the callback inline instead.
        A callback that raises is logged and counted, never breaks ``observe``.
        """

        def register(cb: C) -> C:
            if not callable(cb):
                raise TypeError(f"on_friction needs a callable, not {type(cb).__name__}")
            (self._sync if sync else self._async).append(cb)
            return cb

        return register if callback is None else register(callback)

    def _emit(self, rec: Any, user_id: str, account_id: Optional[str], step: Optional[str],
              target: Optional[str], ts: float, score: float) -> None:  # fmt: skip
        episode = make_episode(rec, user_id, account_id, step, target, ts, score, self._names,
                               self._rules, self._core.stall_limit(int(rec["step"])))  # fmt: skip
        if self._sync:
            self._dispatcher.failed += run_callbacks(self._sync, episode)
        if self._async:
            self._dispatcher.submit(self._async, episode)

    def _outcome(self, kind: str, user_id: str, account_id: Optional[str], step: Optional[str],
                 target: Optional[str], ts: float) -> None:  # fmt: skip
        """An outcome event (ticket, guidance feedback) was applied; measurement hooks here."""

    def flush(self, timeout: Optional[float] = None) -> bool:
        """Wait until every queued callback has run; False if ``timeout`` (s) ran out."""
        return self._dispatcher.flush(timeout)

    def close(self, timeout: Optional[float] = None) -> bool:
        """Flush and stop the dispatcher. Scoring keeps working; async callbacks stop."""
        return self._dispatcher.close(timeout)

    def __enter__(self) -> "Tracker":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- state -------------------------------------------------------------------------------
    def score(self, user_id: str, at: Optional[float] = None) -> float:
        """The user's score after their last event, or decayed to time ``at``; 0.0 if unknown."""
        return float(self._core.score(user_id, at))

    def state(self, user_id: str) -> Optional[UserState]:
        """The user's friction state as of their last event, or None if not tracked."""
        rec = self._core.record(user_id)
        return None if rec is None else make_state(rec, user_id, self._names)

    def tick(self, now: Optional[float] = None) -> int:
        """Run the time-driven checks (stall, rearm, idle eviction) at ``now`` (default: the
        clock) for every user; returns the number of episodes fired."""
        return int(self._core.tick(float(self._clock() if now is None else now)))

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
    def snapshot(self, path: Union[str, "os.PathLike[str]"]) -> None:
        """Write the full state (users, step baselines, names, counters, config) to ``path``.

        The file is replaced atomically; restoring it into either engine loses nothing.
        """
        slots, steps, long_ids = self._core.export()
        payload = msgspec.msgpack.encode(
            {
                "config": msgspec.to_builtins(self.config),
                "counters": dict(self._core.counters),
                "slots": slots.tobytes(),
                "steps": steps.tobytes(),
                "names": list(self._names.items()),
                "long_ids": list(long_ids.items()),
            }
        )
        blob = msgspec.msgpack.encode(
            {
                "format": SNAPSHOT_FORMAT,
                "version": SNAPSHOT_VERSION,
                "layout": LAYOUT_HASH,
                "digest": hashlib.blake2b(payload, digest_size=16).hexdigest(),
                "payload": payload,
            }
        )
        target = os.fspath(path)
        fd, tmp = tempfile.mkstemp(prefix=".pyfriction-", dir=os.path.dirname(os.path.abspath(target)))
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(blob)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, target)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise

    @classmethod
    def restore(
        cls,
        path: Union[str, "os.PathLike[str]"],
        config: Union[None, Config, Mapping[str, Any], str, "os.PathLike[str]"] = None,
        **kwargs: Any,
    ) -> "Tracker":
        """A new tracker holding the state of a snapshot (from either engine).

        ``config`` defaults to the snapshot's own; other arguments are those of
        :class:`Tracker`. Raises :class:`SnapshotError` for a damaged or foreign file.
        """
        try:
            with open(path, "rb") as fh:
                doc = msgspec.msgpack.decode(fh.read())
        except OSError as exc:
            raise SnapshotError(f"cannot read snapshot {os.fspath(path)!r}: {exc}") from None
        except msgspec.DecodeError as exc:
            raise SnapshotError(f"{os.fspath(path)}: not a pyfriction snapshot ({exc})") from None
        if not isinstance(doc, dict) or doc.get("format") != SNAPSHOT_FORMAT:
            raise SnapshotError(f"{os.fspath(path)}: not a pyfriction snapshot")
        if doc.get("version") != SNAPSHOT_VERSION or doc.get("layout") != LAYOUT_HASH:
            raise SnapshotError(
                f"{os.fspath(path)}: snapshot version {doc.get('version')} layout {doc.get('layout')}"
                f" does not match this pyfriction (version {SNAPSHOT_VERSION} layout {LAYOUT_HASH})"
            )
        payload = doc.get("payload")
        if not isinstance(payload, bytes) or hashlib.blake2b(payload, digest_size=16).hexdigest() != doc.get("digest"):
            raise SnapshotError(f"{os.fspath(path)}: damaged snapshot (checksum mismatch)")
        try:
            doc = msgspec.msgpack.decode(payload)
            slots = np.frombuffer(doc["slots"], dtype=SLOT_DTYPE)
            steps = np.frombuffer(doc["steps"], dtype=STEP_DTYPE)
            tracker = cls(doc["config"] if config is None else config, **kwargs)
            tracker._names.update((int(k), str(v)) for k, v in doc["names"])
            tracker._core.load(slots, steps, {int(k): str(v) for k, v in doc["long_ids"]})
            counters = dict(tracker._core.counters)  # evictions while loading, if smaller
            for key, value in doc["counters"].items():
                if key in counters:
                    counters[key] += int(value) if key == "evictions" else int(value) - counters[key]
            tracker._core.set_counters(counters)
        except (KeyError, TypeError, ValueError, msgspec.DecodeError) as exc:
            raise SnapshotError(f"{os.fspath(path)}: damaged snapshot ({exc})") from None
        return tracker
