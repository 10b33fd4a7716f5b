"""pyfriction: detect user friction while the user is struggling, and help before the ticket.

Three lines::

    import pyfriction
    pyfriction.on_friction(lambda episode: print(episode.user_id, episode.reasons))
    pyfriction.observe({"user_id": "u42", "type": "form_error", "step": "import.mapping"})

The module-level functions use a default :class:`Tracker`, created by :func:`init` (or
lazily with the defaults on first use), like ``logging`` or ``sentry_sdk``.
"""

from __future__ import annotations

from ._episodes import Episode, Guidance, Reason, Stats, UserState
from ._snapfile import SnapshotError
from .config import Config, ConfigError, load_config
from .events import Event, InvalidEvent
from .insights import Insights
from .sinks import SinkStats
from .tracker import Tracker, compiled_available

__version__ = "0.1.0"
__all__ = [
    "BeforeObserve",
    "Config",
    "ConfigError",
    "Episode",
    "Event",
    "Guidance",
    "Insights",
    "InvalidEvent",
    "Reason",
    "SinkStats",
    "SnapshotError",
    "Stats",
    "Tracker",
    "UserContext",
    "UserState",
    "close",
    "compiled_available",
    "counters",
    "current_user",
    "flush",
    "get_tracker",
    "init",
    "is_enabled",
    "load_config",
    "observe",
    "observe_many",
    "on_friction",
    "set_user",
    "user_context",
]

#: The default tracker, made by :func:`init` or on first use; kept here by ``pyfriction.sdk``.
_default: Tracker | None = None

from .sdk import (  # noqa: E402  (the module-level API; it reads _default above)
    BeforeObserve,
    UserContext,
    close,
    counters,
    current_user,
    flush,
    get_tracker,
    init,
    is_enabled,
    observe,
    observe_many,
    on_friction,
    set_user,
    user_context,
)
