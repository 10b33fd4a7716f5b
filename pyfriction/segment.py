"""Segment-style payloads (``track``, ``page``, ``identify``) as pyfriction events.

Analytics pipelines (Segment, RudderStack, Jitsu, June...) already carry the events pyfriction
needs, in the Segment spec's shape. :func:`to_event` maps one ``track`` or ``page`` payload onto
a canonical event mapping for ``Tracker.observe``; :func:`to_identify` gives the
``(user_id, traits)`` of an ``identify`` payload for ``Tracker.identify``. :func:`replay`
feeds a mixed stream of canonical events and Segment payloads into a tracker (used by
``pyfriction report``; the sidecar and integrations can reuse it or the two functions).

The mapping (``[segment]`` in the config, :class:`pyfriction.config.SegmentMapping`):

- ``user_id``: ``userId``, else ``anonymousId``;
- ``type``: ``"page"`` for a page call; for a track call the event name (``"click"``,
  ``"form_error"``... or your own names, mapped with the config's ``event_map``);
- ``ts``: ``timestamp`` (ISO 8601 or epoch seconds), else ``originalTimestamp``, ``sentAt``;
- ``step``, ``target``, ``account_id``: the first present of the mapping's dotted paths
  (defaults: ``properties.step`` / ``name`` / ``context.page.path``; ``properties.target``;
  ``context.groupId`` / ``properties.account_id``);
- ``properties``: the payload's ``properties`` (``status``, ``results``).

Example::

    >>> to_event({"type": "track", "event": "form_error", "userId": "u1",
    ...           "timestamp": "2023-11-14T22:13:20Z",
    ...           "properties": {"step": "import.mapping", "target": "#date-format"}})
    {'user_id': 'u1', 'type': 'form_error', 'ts': 1700000000.0, 'step': 'import.mapping', \
'target': '#date-format', 'properties': {'step': 'import.mapping', 'target': '#date-format'}}
"""

from __future__ import annotations

import datetime as _dt
import numbers
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from .config import SegmentMapping

__all__ = ["SEGMENT_TYPES", "ReplayCounts", "from_event", "is_segment", "replay", "to_event", "to_identify"]

#: Segment call types; ``track`` and ``page`` (and ``screen``) become events, ``identify`` traits.
SEGMENT_TYPES = frozenset({"track", "page", "screen", "identify", "group", "alias"})
_DEFAULT = SegmentMapping()


def is_segment(payload: Mapping[str, Any]) -> bool:
    """True when ``payload`` looks like a Segment call rather than a canonical event: a Segment
    ``type`` and ``userId``/``anonymousId`` instead of ``user_id``."""
    return (
        payload.get("type") in SEGMENT_TYPES
        and "user_id" not in payload
        and ("userId" in payload or "anonymousId" in payload)
    )


def _path(payload: Mapping[str, Any], dotted: str) -> Any:
    value: Any = payload
    for part in dotted.split("."):
        if not isinstance(value, Mapping):
            return None
        value = value.get(part)
    return value


def _first(payload: Mapping[str, Any], paths: Sequence[str]) -> str | None:
    for dotted in paths:
        value = _path(payload, dotted)
        if isinstance(value, str) and value:
            return value
    return None


def _timestamp(payload: Mapping[str, Any]) -> float | None:
    for key in ("timestamp", "originalTimestamp", "sentAt"):
        value = payload.get(key)
        if isinstance(value, numbers.Real) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str) and value:
            try:
                parsed = _dt.datetime.fromisoformat(value.replace("z", "Z"))
            except ValueError:
                continue
            if parsed.tzinfo is None:
                parsed = parsed.replace(tzinfo=_dt.UTC)
            return parsed.timestamp()
    return None


def _user(payload: Mapping[str, Any]) -> str | None:
    for key in ("userId", "anonymousId"):
        value = payload.get(key)
        if isinstance(value, str) and value:
            return value
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
    return None


def to_event(payload: Mapping[str, Any], mapping: SegmentMapping | None = None) -> dict[str, Any] | None:
    """The canonical event of a ``track``/``page``/``screen`` payload, or None for other calls
    (``identify``, ``group``...) and payloads without a user or event name.

    Fields that cannot be found are left out (``ts``: the tracker's clock). The result is a
    plain dict for ``Tracker.observe``, which validates it.
    """
    m = mapping or _DEFAULT
    kind = payload.get("type")
    if kind == "track":
        name = payload.get("event")
        if not isinstance(name, str) or not name:
            return None
    elif kind in ("page", "screen"):
        name = "page"
    else:
        return None
    user = _user(payload)
    if user is None:
        return None
    event: dict[str, Any] = {"user_id": user, "type": name}
    ts = _timestamp(payload)
    if ts is not None:
        event["ts"] = ts
    for field, paths in (("step", m.step), ("target", m.target), ("account_id", m.account_id)):
        value = _first(payload, paths)
        if value is not None:
            event[field] = value
    props = payload.get("properties")
    if isinstance(props, Mapping) and props:
        event["properties"] = dict(props)
    return event


def to_identify(payload: Mapping[str, Any]) -> tuple[str, dict[str, Any]] | None:
    """``(user_id, traits)`` of an ``identify`` payload (``context.locale`` fills a missing
    ``locale`` trait; ``context.groupId`` an ``account_id``), else None."""
    if payload.get("type") != "identify":
        return None
    user = _user(payload)
    if user is None:
        return None
    traits = payload.get("traits")
    out = dict(traits) if isinstance(traits, Mapping) else {}
    locale = _path(payload, "context.locale")
    if isinstance(locale, str) and "locale" not in out:
        out["locale"] = locale
    group = _path(payload, "context.groupId")
    if isinstance(group, str) and "account_id" not in out:
        out["account_id"] = group
    return user, out


def from_event(event: Mapping[str, Any]) -> dict[str, Any]:
    """The Segment payload of a canonical event (the inverse of :func:`to_event` with the
    default mapping): ``page`` events become page calls, everything else track calls."""
    ts = event.get("ts")
    out: dict[str, Any] = {"userId": event["user_id"]}
    props = dict(event.get("properties") or {})
    if event.get("type") == "page":
        out["type"] = "page"
        if event.get("step"):
            out["name"] = event["step"]
    else:
        out["type"] = "track"
        out["event"] = event["type"]
        if event.get("step"):
            props["step"] = event["step"]
    if event.get("target"):
        props["target"] = event["target"]
    if props:
        out["properties"] = props
    if event.get("account_id"):
        out["context"] = {"groupId": event["account_id"]}
    if ts is not None:
        moment = _dt.datetime.fromtimestamp(float(ts), _dt.UTC)
        out["timestamp"] = moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return out


class ReplayCounts:
    """What :func:`replay` did: events observed, identify calls, lines skipped (and the first
    few reasons why)."""

    __slots__ = ("events", "identified", "skipped", "errors")

    def __init__(self) -> None:
        self.events = 0
        self.identified = 0
        self.skipped = 0
        self.errors: list[str] = []


def replay(records: Iterable[Any], observe: Callable[[Any], Any],
           identify: Callable[[str, Mapping[str, Any]], None] | None = None,
           mapping: SegmentMapping | None = None, on_error: Callable[[Any, Exception], None] | None = None,
           ) -> ReplayCounts:  # fmt: skip
    """Feed decoded records to a tracker: canonical events to ``observe``; Segment ``track``/
    ``page`` payloads mapped by :func:`to_event`; Segment ``identify`` payloads and canonical
    ``{"type": "identify", "user_id": ..., "traits": {...}}`` records to ``identify``. Records
    that are neither, and events ``observe`` rejects (``ValueError``), are skipped and counted
    (``on_error(record, exc)`` hears why)."""
    counts = ReplayCounts()
    for record in records:
        try:
            if not isinstance(record, Mapping):
                raise ValueError(f"not an event object: {type(record).__name__}")
            if is_segment(record):
                ident = to_identify(record)
                if ident is not None:
                    if identify is not None:
                        identify(*ident)
                    counts.identified += 1
                    continue
                event = to_event(record, mapping)
                if event is None:
                    raise ValueError(f"Segment {record.get('type')!r} call without a user or event name")
            elif record.get("type") == "identify" and isinstance(record.get("traits"), Mapping):
                if identify is not None:
                    identify(record["user_id"], record["traits"])
                counts.identified += 1
                continue
            else:
                event = dict(record) if not isinstance(record, dict) else record
            observe(event)
            counts.events += 1
        except (ValueError, TypeError, KeyError) as exc:
            counts.skipped += 1
            if len(counts.errors) < 5:
                counts.errors.append(str(exc))
            if on_error is not None:
                on_error(record, exc)
    return counts
