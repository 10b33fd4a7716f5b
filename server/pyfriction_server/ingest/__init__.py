"""Ingestion: the wire formats the sidecar speaks, all decoded into one columnar :class:`Batch`.

* :mod:`.segment`: Segment's HTTP Tracking API (RudderStack speaks the same).
* :mod:`.posthog`: PostHog capture, the legacy ``/batch/`` and the v1 protocol.
* :mod:`.native`: canonical pyfriction events, JSON or MessagePack.

Each decoder validates the payload shape with msgspec (a malformed payload is a 400 naming
the offending path), maps every message onto a canonical event with :class:`Mapper`, and
corrects its time for client clock skew the way Segment does:
``ts = receivedAt - (sentAt - timestamp)``. A message that still cannot be an event (no user)
is dropped and counted; the rest of the batch goes through.

Every message received is accounted for, so that ``received = accepted + rejected`` in the
metrics: an event the engine scores, an identify call (traits), or a call accepted without
scoring (``group``, ``alias``, PostHog's other ``$`` events) is *accepted*; a message without a
user or a name, or whose type neither the engine nor its ``event_map`` knows
(``unknown_type``), is *rejected* with that reason.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import msgspec

from pyfriction.config import SegmentMapping
from pyfriction.events import CANONICAL_TYPES, SELECTION

from ..errors import HTTPError
from ..settings import EventRule

__all__ = ["REJECT_REASONS", "Batch", "Identity", "Mapper", "View", "decode_error", "epoch", "text"]

UTC = UTC
Identity = tuple[str, dict[str, Any]]


def epoch(value: datetime | float | int | None) -> float | None:
    """Seconds since the epoch of a datetime (naive means UTC) or a number; None stays None."""
    if value is None:
        return None
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value.timestamp()
    return float(value)


def text(value: Any) -> str | None:
    """A step/target/id value as text: strings as they are, numbers in decimal, else None."""
    if type(value) is str:
        return value or None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    return None


def decode_error(exc: Exception) -> HTTPError:
    """The 400 for a body msgspec could not decode (``exc`` names the path)."""
    return HTTPError(400, "bad_request", f"malformed payload: {exc}")


COLUMNS = ("user_id", "type", "ts", "step", "target", "account_id", "status", "results")
#: Why a message is rejected: no user, no event name, a type the engine does not know, a call
#: type the protocol does not have; then, once applied: refused by the engine (``invalid``),
#: a retried delivery (``duplicate``), identify traits the engine refused (``invalid_traits``).
REJECT_REASONS = ("missing_user", "missing_event", "unknown_type", "unknown_call", "invalid", "duplicate",
                  "invalid_traits")  # fmt: skip


def _column(index: int) -> Any:
    return property(lambda self: [row[index] for row in self.rows], doc=f"The ``{(*COLUMNS, 'ids')[index]}`` column.")


class Batch:
    """Canonical events, one row tuple each, turned into the columns ``Tracker.observe_many``
    takes by :meth:`record`; plus delivery ids, identify calls and what was not scored.

    A row is ``(user_id, type, ts, step, target, account_id, status, results, id)`` with
    ``status``/``results`` already integers (-1: none) and ``id`` the delivery id (None: never
    deduplicated). ``identities`` holds the ``(user_id, traits)`` of identify calls. ``known``
    is the set of event types the engine scores (others are rejected as ``unknown_type``).
    """

    __slots__ = ("source", "rows", "identities", "rejected", "calls", "received", "known", "screens", "extras")

    def __init__(self, source: str, known: frozenset[str] | None = None) -> None:
        self.source = source
        self.rows: list[tuple[Any, ...]] = []
        self.identities: list[Identity] = []
        #: Messages rejected while mapping, by reason (see :data:`REJECT_REASONS`).
        self.rejected: dict[str, int] = {}
        #: Messages accepted without an event to score, by call (``group``, ``alias``, ``other``).
        self.calls: dict[str, int] = {}
        #: Messages in the request (events, identifies and ignored calls alike).
        self.received = 0
        self.known = CANONICAL_TYPES if known is None else known
        #: Rows that came from a ``screen`` call (counted under their own label).
        self.screens: list[int] = []
        #: Rows added for a message that already has one (a PostHog ``$rageclick``'s clicks):
        #: they are scored but not counted as messages.
        self.extras: list[int] = []

    @property
    def invalid(self) -> int:
        """Messages rejected while mapping, whatever the reason."""
        return sum(self.rejected.values())

    def reject(self, reason: str) -> None:
        """Count one message rejected for ``reason``."""
        self.rejected[reason] = self.rejected.get(reason, 0) + 1

    def call(self, kind: str) -> None:
        """Count one message accepted without an event (``group``, ``alias``, ``other``)."""
        self.calls[kind] = self.calls.get(kind, 0) + 1

    def add(self, user_id: str, kind: str, ts: float, step: str | None, target: str | None,
            account_id: str | None, status: Any, results: Any, msg_id: str | None) -> bool:  # fmt: skip
        """Append one canonical event (False: its type is unknown, it is rejected instead)."""
        if kind not in self.known:
            self.reject("unknown_type")
            return False
        results = results if results == SELECTION and type(results) is int else as_int(results)
        self.rows.append((user_id, kind, ts, step, target, account_id, as_int(status), results, msg_id))
        return True

    user_id = _column(0)
    type = _column(1)
    ts = _column(2)
    step = _column(3)
    target = _column(4)
    account_id = _column(5)
    status = _column(6)
    results = _column(7)
    ids = _column(8)

    def __len__(self) -> int:
        return len(self.rows)

    def record(self) -> dict[str, Any]:
        """The journal record of this batch (MessagePack-encodable)."""
        if self.rows:
            cols = list(zip(*self.rows))
        else:
            cols = [()] * (len(COLUMNS) + 1)
        record = {
            "k": "e",
            "src": self.source,
            "cols": dict(zip(COLUMNS, cols)),
            "ids": cols[-1],
            "idn": self.identities,
            "n": self.received,
            "rej": self.rejected,
            "calls": self.calls,
        }
        if self.screens:
            record["scr"] = self.screens
        if self.extras:
            record["ext"] = self.extras
        return record


def as_int(value: Any) -> int:
    """A status/results value as an integer in [0, 2**31), else -1 (see :func:`_int`)."""
    if type(value) is int:
        return value if 0 <= value < 2147483648 else -1
    return -1 if value is None else _int(value)


def _int(value: Any) -> int:
    if isinstance(value, bool) or value is None:
        return -1
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, str) and value.isdigit() and len(value) < 10:
        value = int(value)
    if type(value) is int and 0 <= value < (1 << 31):
        return value
    return -1


class View:
    """What a mapping path can reach in one incoming message: ``properties``, ``context``
    (decoded only when a path needs it and the key is there), and top-level fields."""

    __slots__ = ("msg", "props", "raw_context", "_context")

    def __init__(self, msg: Any, props: dict[str, Any] | None, raw_context: Any = None) -> None:
        self.msg = msg
        self.props = props
        self.raw_context = raw_context
        self._context: Any = _UNSET

    def context(self, key: str) -> Any:
        raw = self.raw_context
        if not raw:
            return None
        if self._context is _UNSET:
            if b'"' + key.encode() + b'"' not in bytes(raw):
                return None  # cheap test before decoding the whole context
            self._context = _context_decoder(raw)
        return self._context

    def get(self, path: tuple[str, ...]) -> Any:
        """The value at a dotted ``path`` (as a tuple), or None."""
        head = path[0]
        if head == "properties":
            obj: Any = self.props
        elif head == "context":
            if len(path) < 2:
                return None
            obj = self.context(path[1])
        else:
            obj = getattr(self.msg, head, None)
        for part in path[1:]:
            if not isinstance(obj, dict):
                return None
            obj = obj.get(part)
        return obj

    def first(self, paths: tuple[tuple[str, ...], ...]) -> str | None:
        """The first of ``paths`` holding text (see :func:`text`)."""
        for path in paths:
            value = text(self.get(path))
            if value is not None:
                return value
        return None


_UNSET = object()


def _paths(paths: Any) -> tuple[tuple[str, ...], ...]:
    return tuple(tuple(p.split(".")) for p in paths)


class Mapper:
    """Turns a named event (a Segment ``track``, a PostHog event) into a canonical one.

    The type is the name (a canonical type, or a name the engine's ``event_map`` maps);
    ``step``, ``target`` and ``account_id`` come from the first present of the engine config's
    ``[segment]`` paths (:class:`pyfriction.config.SegmentMapping`, the mapping
    ``pyfriction.segment`` uses: by default ``properties.step``/``name``/``context.page.path``,
    ``properties.target``, ``context.groupId``/``properties.account_id``); ``status`` and
    ``results`` from ``properties``. A configured :class:`EventRule` for the name overrides
    the type, and sets fixed values or paths for the fields.
    """

    def __init__(self, rules: dict[str, EventRule], segment: Any = None, event_map: Any = ()) -> None:
        self.rules = {name: _Compiled(rule) for name, rule in rules.items()}
        #: The event types the engine scores: its canonical ones and the config's ``event_map`` names.
        self.known: frozenset[str] = CANONICAL_TYPES | frozenset(event_map)
        seg = segment if segment is not None else SegmentMapping()
        #: No rules and the default [segment] paths: decoders may take their fast path, which
        #: implements exactly these paths with typed structs instead of dicts.
        self.default = not rules and msgspec.to_builtins(seg) == msgspec.to_builtins(SegmentMapping())
        self.step_paths = _paths(seg.step)
        self.target_paths = _paths(seg.target)
        self.account_paths = _paths(seg.account_id)

    def fields(self, m: View) -> tuple[str | None, str | None, str | None]:
        """``(step, target, account_id)`` by the ``[segment]`` paths."""
        return m.first(self.step_paths), m.first(self.target_paths), m.first(self.account_paths)

    def track(self, name: str, m: View) -> tuple[str, str | None, str | None, str | None, Any, Any]:
        """``(type, step, target, account_id, status, results)`` for an event called ``name``."""
        props = m.props
        status = props.get("status") if props else None
        # A click that selected text or scrolled (``properties.selection``): the engine's
        # SELECTION result, which rage ignores (``pyfriction.events.results_of``).
        results = (SELECTION if props.get("selection") else props.get("results")) if props else None
        rule = self.rules.get(name)
        if rule is None:
            step, target, account = self.fields(m)
            return name, step, target, account, status, results
        return rule.apply(name, m, self, status, results)


class _Compiled:
    __slots__ = ("type", "step", "target", "paths")

    def __init__(self, rule: EventRule) -> None:
        self.type = rule.type
        self.step = rule.step
        self.target = rule.target
        self.paths = {
            field: tuple(getattr(rule, field + "_from").split("."))
            for field in ("step", "target", "status", "results", "account")
            if getattr(rule, field + "_from") is not None
        }

    def apply(self, name: str, m: View, mapper: Mapper, status: Any, results: Any) -> tuple[
            str, str | None, str | None, str | None, Any, Any]:  # fmt: skip
        p = self.paths
        step, target, account = mapper.fields(m)
        step = (text(m.get(p["step"])) if "step" in p else None) or self.step or step
        target = (text(m.get(p["target"])) if "target" in p else None) or self.target or target
        account = (text(m.get(p["account"])) if "account" in p else None) or account
        if "status" in p:
            status = m.get(p["status"])
        if "results" in p:
            results = m.get(p["results"])
        return self.type or name, step, target, account, status, results


def raw_decoder(kind: Any) -> Callable[[Any], Any]:
    """A cached msgspec JSON decoder for ``kind`` (a Raw part decoded on demand)."""
    dec = msgspec.json.Decoder(kind)

    def decode(raw: Any) -> Any:
        if raw is None:
            return None
        try:
            return dec.decode(raw)
        except msgspec.DecodeError:
            return None

    return decode


_context_decoder = raw_decoder(dict[str, Any])
