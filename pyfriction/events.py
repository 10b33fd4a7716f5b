"""The event model: canonical event types, the :class:`Event` Struct and validation.

Both engines accept an event as a mapping or an :class:`Event`. The rules here are the
specification; the compiled core implements the same checks in C and raises the same
:class:`InvalidEvent` for the same input.
"""

from __future__ import annotations

import math
import numbers
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import msgspec
import numpy as np

from ._constants import (  # noqa: F401  (re-exported: the event model's names)
    API_ERROR,
    CLICK,
    CONTACT,
    CUSTOM_BASE,
    DEAD_CLICK,
    ERROR,
    FORM_ERROR,
    GUIDANCE_CLICKED,
    GUIDANCE_DISMISSED,
    GUIDANCE_SHOWN,
    HELP,
    MAX_TEXT,
    OUTCOME_FIRST,
    OUTCOME_LAST,
    PAGE,
    SEARCH,
    SELECTION,
    SUCCESS,
    TARGET_FIRST,
    TARGET_LAST,
    TICKET,
    TYPE_CODES,
    UNKNOWN,
)

__all__ = [
    "CANONICAL_TYPES",
    "DEFAULT_TS_RANGE",
    "MAX_TEXT",
    "SELECTION",
    "TYPE_CODES",
    "Event",
    "InvalidEvent",
    "TsRange",
    "columns_of",
    "columns_to_rows",
    "parse_event",
    "results_of",
]

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
    clock). ``properties`` carries ``status`` (HTTP status of an ``api_error``), ``results``
    (result count of a ``search``) and ``selection`` (set on a click that selected text or
    scrolled the page: not rage).
    """

    user_id: str
    type: str
    ts: float | None = None
    step: str | None = None
    target: str | None = None
    account_id: str | None = None
    properties: dict[str, Any] | None = None


#: 2000-01-01T00:00:00Z: the default earliest plausible event time.
TS_MIN = 946_684_800.0
#: Seconds past now (the wall clock) that an event time may lie: clocks drift, not by days.
TS_MAX_AHEAD = 86_400.0


class TsRange:
    """The plausible event times: from ``ts_min`` to the wall clock plus ``max_ahead``.

    A time outside is refused with :class:`InvalidEvent` (a time in milliseconds is named as
    such): one such event would otherwise freeze its user's clock (an event never moves a
    user's time back) and turn minutes into a burst. ``[events] ts_min`` and
    ``ts_max_ahead`` in the config set the bounds.
    """

    __slots__ = ("max_ahead", "ts_min", "_hi")

    def __init__(self, ts_min: float = TS_MIN, max_ahead: float = TS_MAX_AHEAD) -> None:
        self.ts_min = float(ts_min)
        self.max_ahead = float(max_ahead)
        self._hi = -math.inf  # the upper bound, moved on when a time passes it (see check)

    def upper(self) -> float:
        """The latest plausible time now."""
        self._hi = time.time() + self.max_ahead
        return self._hi

    def ok(self, ts: float) -> bool:
        """True if ``ts`` is plausible. The upper bound is remembered and only recomputed when
        a time exceeds it: it can only grow, so a stale bound never accepts a time too late."""
        return self.ts_min <= ts and (ts <= self._hi or ts <= self.upper())

    def check(self, ts: float) -> None:
        """Raise :class:`InvalidEvent` unless ``ts`` is plausible."""
        if self.ok(ts):
            return
        low = time.strftime("%Y-%m-%d", time.gmtime(self.ts_min)) if self.ts_min >= 0 else repr(self.ts_min)
        hint = ""
        if self.ts_min <= ts / 1000.0 <= self._hi:
            hint = " (it looks like milliseconds since the epoch: send seconds, ts / 1000)"
        elif self.ts_min <= ts / 1e6 <= self._hi:
            hint = " (it looks like microseconds since the epoch: send seconds)"
        raise InvalidEvent(
            "ts",
            f"{ts!r} is outside the plausible range of event times, {low} to now + "
            f"{self.max_ahead:g} s{hint}; the config's [events] ts_min and ts_max_ahead set the range",
        )


#: The range of a default config.
DEFAULT_TS_RANGE = TsRange()


ParsedEvent = tuple[str, str, float, str | None, str | None, str | None, int, int]


def _text(value: Any, field: str, required: bool) -> str | None:
    if value is None:
        if required:
            raise InvalidEvent(field, "is required")
        return None
    if not isinstance(value, str):
        raise InvalidEvent(field, f"must be a string, not {type(value).__name__}")
    text: str = value if type(value) is str else str.__str__(value)  # numpy.str_ and other subclasses: plain text
    if not text:
        if required:
            raise InvalidEvent(field, "must not be empty")
        return None
    if len(text) > MAX_TEXT:
        raise InvalidEvent(field, f"is longer than {MAX_TEXT} characters")
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            # A lone surrogate cannot be written to a snapshot, a log line or a response:
            # refused here rather than failing later for the whole tracker.
            raise InvalidEvent(field, "is not well-formed Unicode (it holds a lone surrogate)") from None
    return text


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


def results_of(props: Mapping[str, Any] | None) -> int:
    """The ``results`` field of an event: :data:`SELECTION` when ``properties.selection`` is
    set (any true value: the browser script sends ``"text"`` or ``"scroll"``), else the
    ``results`` property (see :func:`int_value`; -1 when absent)."""
    if props is None:
        return -1
    if props.get("selection"):
        return SELECTION
    return int_value(props.get("results"))


def parse_event(
    event: Mapping[str, Any] | Event, clock: Callable[[], float], ts_range: TsRange | None = None
) -> ParsedEvent:
    """Validate ``event`` and return its fields as
    ``(user_id, type, ts, step, target, account_id, status, results)``.

    ``status`` and ``results`` are -1 when absent. A ``ts`` given must lie in ``ts_range``
    (default: :data:`DEFAULT_TS_RANGE`); one taken from ``clock`` is trusted. Raises
    :class:`InvalidEvent`.
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
    if raw_ts is not None:
        (ts_range or DEFAULT_TS_RANGE).check(ts)
    step = _text(get("step"), "step", False)
    target = _text(get("target"), "target", False)
    account = _text(get("account_id"), "account_id", False)
    props = get("properties")
    if props is not None and not isinstance(props, Mapping):
        raise InvalidEvent("properties", f"must be a mapping, not {type(props).__name__}")
    return (
        user_id,  # type: ignore[return-value]
        kind,
        ts,
        step,
        target,
        account,
        _int_property(props, "status"),
        results_of(props),
    )


_COLUMNS = ("user_id", "type", "ts", "step", "target", "account_id")
_INT_COLUMNS = ("status", "results")
_ALLOWED = frozenset(_COLUMNS + _INT_COLUMNS + ("properties",))


def columns_of(batch: Mapping[str, Any], keep_ts_array: bool = False) -> tuple[int, dict[str, Any]]:
    """Validate a columnar batch and normalise its columns; returns ``(rows, columns)``.

    The one column parser: both engines' ``observe_many`` and the SDK use it. A batch is
    parallel sequences keyed by event field (``user_id`` and ``type`` required), plus optional
    integer ``status`` and ``results`` columns (-1 or None for none) standing for those
    properties (a ``results`` of ``SELECTION``, -2, for ``properties.selection``). Other columns become lists of Python values (``ts`` may stay a float64 array
    for the compiled core); integer columns become int64 arrays. Raises :class:`InvalidEvent`
    naming the column: an unknown column, a column that is not a one-dimensional sequence, or
    one whose length (what ``len()`` says and what iterating it yields) differs from
    ``user_id``'s. Row values are judged later, row by row.
    """
    for name in batch:
        if name not in _ALLOWED:
            raise InvalidEvent(name, f"is not a column; expected one of {', '.join(sorted(_ALLOWED))}")
    for name in ("user_id", "type"):
        if batch.get(name) is None:
            raise InvalidEvent(name, "column is required")
    try:
        n = len(batch["user_id"])
    except TypeError:
        raise InvalidEvent("user_id", "column must be a sequence") from None
    cols: dict[str, Any] = {}
    for name, col in batch.items():
        if col is None:
            continue
        if isinstance(col, (str, bytes, Mapping)):
            raise InvalidEvent(name, f"column must be a sequence of values, not {type(col).__name__}")
        if isinstance(col, np.ndarray) and col.ndim != 1:
            raise InvalidEvent(name, f"column must be one-dimensional, not an array of shape {col.shape}")
        try:
            size = len(col)
        except TypeError:
            raise InvalidEvent(name, f"column must be a sequence, not {type(col).__name__}") from None
        if size != n:
            raise InvalidEvent(name, f"column has {size} rows, user_id has {n}")
        if name in _INT_COLUMNS:
            col = _int_column(col, name)
        elif isinstance(col, np.ndarray):
            if name == "ts" and keep_ts_array and col.dtype.kind in "fiu":
                col = np.ascontiguousarray(col, dtype=np.float64)
            else:
                col = col.tolist()
        elif type(col) is not list:
            try:
                col = list(col)
            except TypeError:
                raise InvalidEvent(name, f"column must be a sequence, not {type(col).__name__}") from None
        # What iterating gave is what the engines read by index: it must be as long as
        # len() said (a sequence whose len() lies would be read past its end).
        if len(col) != n:
            raise InvalidEvent(name, f"column yields {len(col)} rows, but its len() says {size}")
        cols[name] = col
    return n, cols


def _int_column(col: Any, name: str) -> np.ndarray:
    """A status/results column as int64, -1 where an entry is no value (see ``int_value``);
    a ``results`` column keeps :data:`SELECTION` (it stands for ``properties.selection``)."""
    if isinstance(col, np.ndarray) and col.dtype.kind == "i" and col.dtype.itemsize <= 4:
        # Nothing this narrow is past 2**31 - 1: a negative is the one "no value" (one pass
        # where the general case takes five; every columnar batch has these two columns).
        out = np.maximum(col, -1, dtype=np.int64)
        if name == "results":
            np.putmask(out, col == SELECTION, SELECTION)
        return out
    if isinstance(col, np.ndarray) and col.dtype.kind in "iu":
        a = col.astype(np.int64)
        out = np.where((a >= 0) & (a < (1 << 31)), a, -1)
    elif isinstance(col, np.ndarray) and col.dtype.kind == "f":
        a = col.astype(np.float64)
        ok = np.isfinite(a) & (np.floor(a) == a) & (a >= 0) & (a < (1 << 31))
        out = np.where(ok, np.where(ok, a, 0).astype(np.int64), -1)
    else:
        values = list(col)
        out = np.array([int_value(x) for x in values], dtype=np.int64)
        if name == "results":
            for i, x in enumerate(values):
                if x == SELECTION and not isinstance(x, bool):
                    out[i] = SELECTION
        return out
    if name == "results":
        out = np.where(a == SELECTION, SELECTION, out)
    return out


def columns_to_rows(cols: Mapping[str, Any], start: int, stop: int) -> Iterable[dict[str, Any]]:
    """Event dicts of rows ``start:stop`` of normalised columns (see :func:`columns_of`)."""
    present = [c for c in _COLUMNS if c in cols]
    props = cols.get("properties")
    ints = [c for c in _INT_COLUMNS if c in cols]
    for i in range(start, stop):
        row = {}
        for c in present:
            value = cols[c][i]
            row[c] = value.item() if isinstance(value, np.generic) else value
        if props is not None or ints:
            p = props[i] if props is not None else None
            if ints and (p is None or isinstance(p, Mapping)):
                p = dict(p or {})
                for c in ints:
                    if cols[c][i] >= 0:
                        p[c] = int(cols[c][i])
                    elif c == "results" and cols[c][i] == SELECTION:
                        p["selection"] = True
            row["properties"] = p
        yield row
