"""pyfriction: detect user friction while the user is struggling, and help before the ticket.

Three lines::

    import pyfriction
    pyfriction.on_friction(lambda episode: print(episode.user_id, episode.reasons))
    pyfriction.observe({"user_id": "u42", "type": "form_error", "step": "import.mapping"})

The module-level functions use a default :class:`Tracker`, created by :func:`init` (or
lazily with the defaults on first use), like ``logging`` or ``sentry_sdk``.
"""

from __future__ import annotations

import atexit
import threading
from typing import Any, Callable, Iterable, Mapping, Optional, Union

import numpy as np

from ._episodes import Episode, Reason, Stats, UserState
from .config import Config, ConfigError, load_config
from .events import Event, InvalidEvent
from .tracker import SnapshotError, Tracker, compiled_available

__version__ = "0.1.0"
__all__ = [
    "Tracker",
    "Event",
    "Episode",
    "Reason",
    "UserState",
    "Stats",
    "Config",
    "ConfigError",
    "InvalidEvent",
    "SnapshotError",
    "load_config",
    "compiled_available",
    "init",
    "get_tracker",
    "observe",
    "observe_many",
    "on_friction",
    "flush",
    "close",
]

_default: Optional[Tracker] = None
_lock = threading.Lock()


def init(config: Union[None, Config, Mapping[str, Any], str] = None, **options: Any) -> Tracker:
    """Create the default tracker (closing any previous one) and return it.

    Arguments are those of :class:`Tracker`. Callbacks registered on a previous default
    tracker carry over. The tracker is flushed and closed at interpreter exit.
    """
    global _default
    tracker = Tracker(config, **options)
    with _lock:
        old, _default = _default, tracker
    if old is not None:
        tracker._sync.extend(old._sync)
        tracker._async.extend(old._async)
        old.close()
    return tracker


def get_tracker() -> Tracker:
    """The default tracker, created with the defaults if :func:`init` was not called."""
    global _default
    tracker = _default
    if tracker is None:
        with _lock:
            if _default is None:
                _default = Tracker()
            tracker = _default
    return tracker


def observe(event: Union[Mapping[str, Any], Event]) -> float:
    """:meth:`Tracker.observe` on the default tracker."""
    return get_tracker().observe(event)


def observe_many(events: Union[Iterable[Any], Mapping[str, Any]]) -> np.ndarray:
    """:meth:`Tracker.observe_many` on the default tracker."""
    return get_tracker().observe_many(events)


def on_friction(callback: Optional[Callable[[Episode], Any]] = None, *, sync: bool = False) -> Any:
    """:meth:`Tracker.on_friction` on the default tracker (also a decorator)."""
    return get_tracker().on_friction(callback, sync=sync)


def flush(timeout: Optional[float] = None) -> bool:
    """Wait for the default tracker's queued callbacks."""
    return _default.flush(timeout) if _default is not None else True


def close(timeout: Optional[float] = None) -> bool:
    """Flush and close the default tracker."""
    return _default.close(timeout) if _default is not None else True


@atexit.register
def _flush_at_exit() -> None:
    if _default is not None:
        _default.close(timeout=2.0)
