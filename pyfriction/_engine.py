"""The engine interface: what a :class:`~pyfriction.Tracker` needs of an engine.

Two classes implement it with identical semantics: ``pyfriction._core.CompiledCore`` (C, see
``_core/``) and :class:`pyfriction._reference.ReferenceCore` (Python, the specification). The
tracker holds its engine as an :class:`Engine` and uses nothing else of it; a test checks that
both classes provide every member with the same parameters.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from typing import Any, Protocol, runtime_checkable

import numpy as np

__all__ = ["Engine", "EpisodeSink", "OutcomeSink"]

#: Called after an outcome event (ticket, guidance feedback) is applied:
#: ``(type, user_id, account_id, step, target, ts)``.
OutcomeSink = Callable[[str, str, str | None, str | None, str | None, float], None]
#: Called when an episode fires: ``(fields, user_id, account_id, step, target, ts, score,
#: stall_need)``; ``fields`` is a dict of the slot fields ``_episodes.make_episode`` reads
#: (the same from both engines), ``stall_need`` what users need on the step at that moment
#: (``stall_need``).
EpisodeSink = Callable[[Any, str, str | None, str | None, str | None, float, float, float], None]


@runtime_checkable
class Engine(Protocol):
    """An engine: per-user state, the detectors, the scoring; no callbacks of its own."""

    #: ``"compiled"`` or ``"reference"``.
    engine: str
    #: May a batch queue its episodes until it ends? Off while a callback runs inline.
    batch_queue: bool
    #: None, or a context manager factory a queue of several episodes and outcomes is
    #: delivered inside (the tracker's ``store.session``: one facts transaction for them all).
    deliver_session: Callable[[], AbstractContextManager[None]] | None

    def observe(self, event: Any) -> float:
        """Score one event (a mapping or ``Event``); raises ``InvalidEvent``."""
        ...

    def observe_many(self, events: Any) -> np.ndarray:
        """Score a batch (an iterable of events, or columns); NaN for an invalid row."""
        ...

    def score(self, user_id: str, at: float | None = None) -> float:
        """A user's score now (or decayed to ``at``); 0.0 for an unknown user."""
        ...

    def record(self, user_id: str) -> Any:
        """A user's state as a ``SLOT_DTYPE`` record, or None."""
        ...

    def stall_limit(self, step: int) -> float:
        """Seconds on ``step`` beyond which a user has stalled, or -1.0."""
        ...

    def stall_need(self, step: int) -> float:
        """What users need on ``step``: the stall quantile of its visits in seconds, or -1.0."""
        ...

    @property
    def counters(self) -> Mapping[str, int]:
        """The counters, by ``_constants.COUNTER_NAMES``."""
        ...

    def set_counters(self, counters: Mapping[str, int]) -> None:
        """Set counters (those named; restoring a snapshot)."""
        ...

    def __len__(self) -> int:
        """Users tracked."""
        ...

    def tick(self, now: float) -> int:
        """Idle eviction, decay, stall and rearm at ``now``; returns the episodes fired."""
        ...

    def track_evictions(self, on: bool = True) -> None:
        """Remember the users evicted from now on (for :meth:`drain_evicted`)."""
        ...

    def drain_evicted(self, unless_present: bool = False) -> list[str] | None:
        """The ids of the users evicted since the last call, oldest first; None when more
        were than ``EVICTED_MAX`` (the caller then checks whom the engine still holds).
        ``unless_present``: leave out those back in the table."""
        ...

    def has(self, user_id: str) -> bool:
        """True when ``user_id`` is in the table."""
        ...

    def export(self) -> tuple[np.ndarray, np.ndarray, dict[int, str]]:
        """``(slots least recently active first, step histograms, long ids)``."""
        ...

    def export_meta(self) -> tuple[np.ndarray, dict[int, str], int]:
        """``(step histograms, long ids, users)``: :meth:`export` but the slots."""
        ...

    def export_chunk(self, out: np.ndarray, start: int) -> tuple[int, int]:
        """The slots of :meth:`export` a chunk at a time: ``(count, next cursor)``."""
        ...

    def load(self, slots: np.ndarray, steps: np.ndarray, long_ids: Mapping[int, str]) -> None:
        """Replace the state with an export (of either engine); raises ValueError for a
        damaged one (a zero key, a user twice)."""
        ...
