"""PostHog capture: ``POST /batch/``, ``/capture/``, ``/e/`` (key in the body as ``api_key``) and
the v1 protocol ``POST /i/v1/analytics/events`` (``Authorization: Bearer`` key).

PostHog's own events map onto canonical types:

==================  ==========================================================================
``$pageview``       ``page``; the step is ``$pathname`` (or the path of ``$current_url``).
``$rageclick``      a rage click: as many ``click`` events on its element as the engine's
                    ``rage_click.min_clicks``, so the rage-click detector sees what PostHog saw.
``$dead_click``     ``dead_click`` on its element.
``$exception``      ``error``; the target is the exception type.
``$autocapture``    a ``click`` when ``$event_type`` is ``click``.
``$identify``,      the ``$set`` traits go to ``Tracker.identify``.
``$set``
other ``$`` events  accepted, not scored.
anything else       by name, like a Segment ``track`` (see :class:`~pyfriction_server.ingest.Mapper`).
==================  ==========================================================================

The element of a click is ``properties.target``, else the first of ``$elements`` /
``$elements_chain``: ``#id``, else ``tag.class``, else the tag and its text. ``uuid``
deduplicates retried deliveries; the time is ``timestamp`` corrected by ``sent_at`` (v1: the
``PostHog-Request-Timestamp`` header, unless ``options.disable_skew_correction``), or
``receivedAt - offset`` (ms) when only an offset is given.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

import msgspec

from ..errors import HTTPError
from . import Batch, Mapper, View, decode_error, epoch, text

__all__ = ["Envelope", "Event", "V1Envelope", "decode_v0", "decode_v1"]

Id = str | int | None


class Event(msgspec.Struct, gc=False):
    """One PostHog event (v0 shape; unused fields are ignored)."""

    event: str | None = None
    distinct_id: Id = None
    properties: dict[str, Any] | None = None
    timestamp: datetime | None = None
    uuid: str | None = None
    offset: int | None = None


class Envelope(Event):
    """A v0 body: ``{"batch": [...], "api_key", "sent_at"}``, or a single event with ``api_key``."""

    batch: list[Event] | None = None
    api_key: str | None = None
    sent_at: datetime | None = None


class V1Options(msgspec.Struct, gc=False):
    disable_skew_correction: bool | None = None


class V1Event(Event):
    options: V1Options | None = None


class V1Envelope(msgspec.Struct, gc=False):
    """A v1 body: ``{"created_at", "batch": [...]}``."""

    batch: list[V1Event] = msgspec.field(default_factory=list)
    created_at: datetime | None = None


_v0 = msgspec.json.Decoder(Envelope | list[Event])
_v1 = msgspec.json.Decoder(V1Envelope)

_CHAIN_ID = re.compile(r'attr_id="([^"]*)"')
_CHAIN_TAG = re.compile(r"^([A-Za-z][A-Za-z0-9-]*)((?:\.[A-Za-z0-9_-]+)*)")
_CHAIN_TEXT = re.compile(r'(?:^|[:"])text="([^"]*)"')


def element_target(props: dict[str, Any]) -> str | None:
    """A stable name for the element an autocaptured event happened on."""
    target = text(props.get("target"))
    if target:
        return target
    elements = props.get("$elements")
    if isinstance(elements, list) and elements and isinstance(elements[0], dict):
        el = elements[0]
        if text(el.get("attr__id")):
            return "#" + str(el["attr__id"])
        tag = text(el.get("tag_name")) or "element"
        classes = el.get("attr_class") or el.get("classes")
        if isinstance(classes, list) and classes and text(classes[0]):
            return f"{tag}.{classes[0]}"
        label = text(el.get("$el_text"))
        return f'{tag} "{label[:40]}"' if label else tag
    chain = props.get("$elements_chain")
    if isinstance(chain, str) and chain:
        first = chain.split(";", 1)[0]
        found = _CHAIN_ID.search(first)
        if found and found.group(1):
            return "#" + found.group(1)
        tag_match = _CHAIN_TAG.match(first)
        if tag_match:
            name, classes = tag_match.group(1), tag_match.group(2)
            if classes:
                return name + "." + classes[1:].split(".", 1)[0]
            text_match = _CHAIN_TEXT.search(first)
            return f'{name} "{text_match.group(1)[:40]}"' if text_match and text_match.group(1) else name
    return None


def page_step(props: dict[str, Any] | None) -> str | None:
    """The step of a PostHog event: ``properties.step``, ``$pathname``, or ``$current_url``'s path."""
    if not props:
        return None
    step = text(props.get("step")) or text(props.get("$pathname"))
    if step is None:
        url = props.get("$current_url")
        if isinstance(url, str) and url:
            try:
                step = urlsplit(url).path or "/"
            except ValueError:
                step = None
    return step


def _add(out: Batch, e: Event, uid: str, ts: float, mapper: Mapper, rage_clicks: int) -> None:
    name = e.event
    props = e.properties or {}
    mid = e.uuid
    if not name:
        out.reject("missing_event")
        return
    if name[0] != "$":
        etype, step, target, account, status, results = mapper.track(name, View(e, props))
        out.add(uid, etype, ts, step or page_step(props), target, account, status, results, mid)
        return
    account = text(props.get("account_id"))
    if name == "$pageview":
        out.add(uid, "page", ts, page_step(props), None, account, -1, -1, mid)
    elif name == "$rageclick":
        target, step = element_target(props), page_step(props)
        out.extras.extend(range(len(out.rows) + 1, len(out.rows) + rage_clicks))
        for i in range(rage_clicks):
            out.add(uid, "click", ts + i * 0.001, step, target, account, -1, -1,
                    None if mid is None else (mid if i == 0 else f"{mid}#{i}"))  # fmt: skip
    elif name == "$dead_click":
        out.add(uid, "dead_click", ts, page_step(props), element_target(props), account, -1, -1, mid)
    elif name == "$exception":
        kind = None
        exc_list = props.get("$exception_list")
        if isinstance(exc_list, list) and exc_list and isinstance(exc_list[0], dict):
            kind = text(exc_list[0].get("type"))
        kind = kind or text(props.get("$exception_type")) or text(props.get("target"))
        out.add(uid, "error", ts, page_step(props), kind, account, -1, -1, mid)
    elif name == "$autocapture":
        if props.get("$event_type") == "click":
            out.add(uid, "click", ts, page_step(props), element_target(props), account, -1, -1, mid)
        else:
            out.call("other")
    elif name in ("$identify", "$set"):
        traits = props.get("$set")
        out.identities.append((uid, traits if isinstance(traits, dict) else {}))
    elif name in mapper.rules:
        etype, step, target, account, status, results = mapper.track(name, View(e, props))
        out.add(uid, etype, ts, step or page_step(props), target, account, status, results, mid)
    else:  # other $ events ($pageleave, $groupidentify, feature flag calls...): nothing to score
        out.call("other")


def _uid(e: Event) -> str | None:
    uid = e.distinct_id if type(e.distinct_id) is str else text(e.distinct_id)
    if not uid and e.properties:
        uid = text(e.properties.get("distinct_id"))
    return uid


def _time(e: Event, received: float, sent: float | None, skew: bool) -> float:
    ts = epoch(e.timestamp)
    if ts is None:
        if e.offset is not None and 0 <= e.offset < 10**10:
            return received - e.offset / 1000.0
        return received
    if skew and sent is not None:
        return received - (sent - ts)
    return ts


def decode_v0(body: bytes, received: float, mapper: Mapper, *, skew: bool, max_event: int,
              max_events: int, rage_clicks: int) -> tuple[Batch, str | None]:  # fmt: skip
    """Decode a ``/batch/``, ``/capture/`` or ``/e/`` body; returns it and the body's ``api_key``."""
    try:
        doc = _v0.decode(body)
    except msgspec.DecodeError as exc:
        raise decode_error(exc) from None
    key: str | None = None
    sent: float | None = None
    if isinstance(doc, list):
        events: list[Event] = doc
    else:
        key, sent = doc.api_key, epoch(doc.sent_at)
        events = doc.batch if doc.batch is not None else [doc]
        if key is None and events and events[0].properties:
            key = text(events[0].properties.get("token"))  # posthog-js puts it there
    return _decode(events, body, received, sent, mapper, skew, max_event, max_events, rage_clicks), key


def decode_v1(body: bytes, received: float, request_ts: str | None, mapper: Mapper, *, skew: bool,
              max_event: int, max_events: int, rage_clicks: int) -> Batch:  # fmt: skip
    """Decode a v1 ``/i/v1/analytics/events`` body (``request_ts``: ``PostHog-Request-Timestamp``)."""
    try:
        doc = _v1.decode(body)
    except msgspec.DecodeError as exc:
        raise decode_error(exc) from None
    sent: float | None = None
    if request_ts:
        try:
            sent = epoch(datetime.fromisoformat(request_ts.replace("Z", "+00:00")))
        except ValueError:
            raise HTTPError(400, "bad_request", "invalid PostHog-Request-Timestamp header") from None
    if sent is None:
        sent = epoch(doc.created_at)
    return _decode(doc.batch, body, received, sent, mapper, skew, max_event, max_events, rage_clicks)


def _decode(events: list[Any], body: bytes, received: float, sent: float | None, mapper: Mapper,
            skew: bool, max_event: int, max_events: int, rage_clicks: int) -> Batch:  # fmt: skip
    if len(events) > max_events:
        raise HTTPError(413, "payload_too_large", f"more than {max_events} events in one batch")
    if len(body) > max_event and len(events) == 1:
        raise HTTPError(413, "payload_too_large", f"event exceeds {max_event} bytes")
    if len(body) > max_event:
        for i, e in enumerate(events):  # only large bodies pay for the per-event check
            if len(msgspec.json.encode(e)) > max_event:
                raise HTTPError(413, "payload_too_large", f"event {i} exceeds {max_event} bytes")
    out = Batch("posthog", mapper.known)
    out.received = len(events)
    for e in events:
        uid = _uid(e)
        if not uid:
            out.reject("missing_user")
            continue
        opts = getattr(e, "options", None)
        event_skew = skew and not (opts is not None and opts.disable_skew_correction)
        _add(out, e, uid, _time(e, received, sent, event_skew), mapper, rage_clicks)
    return out
