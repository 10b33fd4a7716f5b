"""The event model: canonical event types, the :class:`Event` Struct and validation.

Both engines accept an event as a mapping or an :class:`Event`. The rules here are the
specification; the compiled core implements the same checks in C and raises the same
:class:`InvalidEvent` for the same input.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping
from typing import Any

import msgspec

__all__ = [
    "CANONICAL_TYPES",
    "MAX_TEXT",
    "TYPE_CODES",
    "Event",
    "InvalidEvent",
    "parse_event",
]

#: Longest user id, type, step, target or account id accepted, in characters.
MAX_TEXT = 1024

# Type codes shared by both engines. Codes >= CUSTOM_BASE are config-mapped event names that
# carry a weight of their own (detector "custom").
UNKNOWN = 0
PAGE = 1
CLICK = 2
DEAD_CLICK = 3
ERROR = 4
API_ERROR = 5
FORM_ERROR = 6
SEARCH = 7
HELP = 8
CONTACT = 9
SUCCESS = 10
TICKET = 11
GUIDANCE_SHOWN = 12
GUIDANCE_CLICKED = 13
GUIDANCE_DISMISSED = 14
CUSTOM_BASE = 32

TYPE_CODES: dict[str, int] = {
    "page": PAGE,
    "click": CLICK,
    "dead_click": DEAD_CLICK,
    "error": ERROR,
    "api_error": API_ERROR,
    "form_error": FORM_ERROR,
    "search": SEARCH,
    "help": HELP,
    "contact": CONTACT,
    "success": SUCCESS,
    "ticket": TICKET,
    "guidance_shown": GUIDANCE_SHOWN,
    "guidance_clicked": GUIDANCE_CLICKED,
    "guidance_dismissed": GUIDANCE_DISMISSED,
}
CANONICAL_TYPES = frozenset(TYPE_CODES)
TYPE_NAMES: dict[int, str] = {code: name for name, code in TYPE_CODES.items()}


class InvalidEvent(ValueError):
    """An event was rejected; ``field`` names the offending field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"invalid event: `{field}` {message}")
        self.field = field


class Event(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One user event, as the host backend or an analytics SDK reports it.

    ``type`` is a canonical type (``page``, ``click``, ``dead_click``, ``error``, ``api_error``,
    ``form_error``, ``search``, ``help``, ``contact``, ``success``, ``ticket``,
    ``guidance_shown``, ``guidance_clicked``, ``guidance_dismissed``) or a name the config's
    ``event_map`` maps onto one. ``ts`` is seconds since the epoch (default: the tracker's
    clock). ``properties`` carries ``status`` (HTTP status of an ``api_error``) and ``results``
    (result count of a ``search``).
    """

    user_id: str
    type: str
    ts: float | None = None
    step: str | None = None
    target: str | None = None
    account_id: str | None = None
    properties: dict[str, Any] | None = None


ParsedEvent = tuple[str, str, float, str | None, str | None, str | None, int, int]


def _text(value: Any, field: str, required: bool) -> str | None:
    if value is None:
        if required:
            raise InvalidEvent(field, "is required")
        return None
    if not isinstance(value, str):
        raise InvalidEvent(field, f"must be a string, not {type(value).__name__}")
    if type(value) is not str:
        value = str.__str__(value)  # numpy.str_ and other subclasses: the plain text
    if not value:
        if required:
            raise InvalidEvent(field, "must not be empty")
        return None
    if len(value) > MAX_TEXT:
        raise InvalidEvent(field, f"is longer than {MAX_TEXT} characters")
    return value


def int_value(value: Any) -> int:
    """A count or status: an integer (or integral float) in [0, 2**31), else -1 ("none").

    Properties are free-form, so anything else is no value rather than an error.
    """
    if isinstance(value, bool):
        return -1
    if isinstance(value, numbers.Integral):
        v = int(value)
    elif isinstance(value, float) and value.is_integer():
        v = int(value)
    else:
        return -1
    return v if 0 <= v < (1 << 31) else -1


def _int_property(props: Mapping[str, Any] | None, key: str) -> int:
    """An integer property (see :func:`int_value`), or -1 when absent."""
    if props is None:
        return -1
    return int_value(props.get(key))


def parse_event(event: Mapping[str, Any] | Event, clock: Callable[[], float]) -> ParsedEvent:
    """Validate ``event`` and return its fields as
    ``(user_id, type, ts, step, target, account_id, status, results)``.

    ``status`` and ``results`` are -1 when absent. Raises :class:`InvalidEvent`.
    """
    if isinstance(event, Event):
        get: Callable[[str], Any] = lambda k: getattr(event, k)  # noqa: E731
    elif isinstance(event, Mapping):
        get = event.get
    else:
        raise InvalidEvent("event", f"must be a mapping or pyfriction.Event, not {type(event).__name__}")
    user_id = _text(get("user_id"), "user_id", True)
    kind = _text(get("type"), "type", True)
    raw_ts = get("ts")
    if raw_ts is None:
        ts = float(clock())
    elif isinstance(raw_ts, numbers.Real) and not isinstance(raw_ts, bool):
        try:
            ts = float(raw_ts)
        except (OverflowError, ValueError):
            raise InvalidEvent("ts", "must be a finite, non-negative number of seconds since the epoch") from None
    else:
        raise InvalidEvent("ts", f"must be a number of seconds, not {type(raw_ts).__name__}")
    if not (math.isfinite(ts) and ts >= 0.0):
        raise InvalidEvent("ts", "must be a finite, non-negative number of seconds since the epoch")
    step = _text(get("step"), "step", False)
    target = _text(get("target"), "target", False)
    account = _text(get("account_id"), "account_id", False)
    props = get("properties")
    if props is not None and not isinstance(props, Mapping):
        raise InvalidEvent("properties", f"must be a mapping, not {type(props).__name__}")
    return (
        user_id,  # type: ignore[return-value]
        kind,  # type: ignore[return-value]
        ts,
        step,
        target,
        account,
        _int_property(props, "status"),
        _int_property(props, "results"),
    )
