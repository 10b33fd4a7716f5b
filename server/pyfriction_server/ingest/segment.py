"""Segment's HTTP Tracking API (RudderStack speaks the same), unchanged.

``POST /v1/batch`` and ``/v1/import`` take ``{"batch": [message...], "sentAt": ...}``;
``POST /v1/{track,identify,page,screen,group,alias}`` take one message. The mapping onto
canonical events:

=============  ================================================================================
``track``      ``event`` is the type (the engine's ``event_map``, or a configured
               :class:`~pyfriction_server.settings.EventRule`, maps a team's own names).
``page``       a ``page`` event.
``screen``
``identify``   ``Tracker.identify(user, traits)`` (guidance rules match traits), as
               :func:`pyfriction.segment.to_identify` maps it.
``group``      accepted, not scored (counted under their own labels).
``alias``
=============  ================================================================================

A message of another ``type`` is rejected as ``unknown_call``; a ``track`` whose name the engine
does not know (not canonical, not in its ``event_map``, no rule) as ``unknown_type``.

This is the mapping of :mod:`pyfriction.segment`, with the same ``[segment]`` paths of the
engine config for step, target and account (by default ``properties.step`` / ``name`` /
``context.page.path``, ``properties.target``, ``context.groupId`` / ``properties.account_id``),
decoded straight from the wire with msgspec instead of through dicts. The user is
``userId``, else ``anonymousId``; ``messageId`` deduplicates retried deliveries. The event
time is ``timestamp`` (else ``originalTimestamp``) corrected by the batch's (or message's)
``sentAt``: ``receivedAt - (sentAt - timestamp)``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import msgspec

from pyfriction.segment import to_identify

from ..errors import HTTPError
from . import Batch, Mapper, View, as_int, decode_error, epoch, raw_decoder, text

__all__ = ["MESSAGE_TYPES", "Envelope", "Message", "decode"]

MESSAGE_TYPES = ("track", "identify", "page", "screen", "group", "alias")

Id = str | int | None


class Message(msgspec.Struct, gc=False):
    """One Segment message (fields the sidecar does not use are ignored)."""

    type: str | None = None
    event: str | None = None
    name: str | None = None
    userId: Id = None
    anonymousId: Id = None
    messageId: Id = None
    timestamp: datetime | None = None
    originalTimestamp: datetime | None = None
    sentAt: datetime | None = None
    properties: dict[str, Any] | None = None
    traits: dict[str, Any] | None = None
    groupId: Id = None
    writeKey: str | None = None
    context: msgspec.Raw = msgspec.Raw(b"")


class Envelope(msgspec.Struct, gc=False):
    """A ``/v1/batch`` body."""

    batch: list[Message] = msgspec.field(default_factory=list)
    sentAt: datetime | None = None
    writeKey: str | None = None


class _RawEnvelope(msgspec.Struct, gc=False):
    batch: list[msgspec.Raw] = msgspec.field(default_factory=list)
    sentAt: datetime | None = None
    writeKey: str | None = None


class _FastProps(msgspec.Struct, gc=False):
    """The properties the default mapping reads; msgspec skips the others without building them."""

    step: Any = None
    target: Any = None
    account_id: Any = None
    status: Any = None
    results: Any = None


class _FastContext(msgspec.Struct, gc=False):
    page: Any = None
    groupId: Any = None
    locale: Any = None


class _FastMessage(msgspec.Struct, gc=False):
    type: str | None = None
    event: str | None = None
    name: str | None = None
    userId: Id = None
    anonymousId: Id = None
    messageId: Id = None
    timestamp: datetime | None = None
    originalTimestamp: datetime | None = None
    sentAt: datetime | None = None
    properties: _FastProps | None = None
    traits: dict[str, Any] | None = None
    groupId: Id = None
    writeKey: str | None = None
    context: _FastContext | list[Any] | str | float | bool | None = None


class _FastEnvelope(msgspec.Struct, gc=False):
    batch: list[_FastMessage] = msgspec.field(default_factory=list)
    sentAt: datetime | None = None
    writeKey: str | None = None


_envelope = msgspec.json.Decoder(Envelope)
_fast_envelope = msgspec.json.Decoder(_FastEnvelope)
_fast_message = msgspec.json.Decoder(_FastMessage)
_raw_envelope = msgspec.json.Decoder(_RawEnvelope)
_message = msgspec.json.Decoder(Message)
_context = raw_decoder(dict[str, Any])


def _messages(
    body: bytes, max_event: int, max_events: int, fast: bool
) -> tuple[list[Any], datetime | None, str | None]:
    messages: list[Any]
    try:
        if len(body) <= max_event:  # no single event can be over the limit: one pass
            env = (_fast_envelope if fast else _envelope).decode(body)
            messages = env.batch
        else:
            raw = _raw_envelope.decode(body)
            if len(raw.batch) > max_events:
                raise HTTPError(413, "payload_too_large", f"more than {max_events} events in one batch")
            for i, item in enumerate(raw.batch):
                if len(item) > max_event:
                    raise HTTPError(413, "payload_too_large", f"event {i} exceeds {max_event} bytes")
            env = raw  # type: ignore[assignment]
            one = _fast_message if fast else _message
            messages = [one.decode(item) for item in raw.batch]
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:  # ValidationError is a DecodeError
        raise decode_error(exc) from None
    if len(messages) > max_events:
        raise HTTPError(413, "payload_too_large", f"more than {max_events} events in one batch")
    return messages, env.sentAt, env.writeKey


def decode(body: bytes, single: str | None, received: float, mapper: Mapper, *, skew: bool,
           max_event: int, max_events: int, source: str = "segment") -> tuple[Batch, str | None]:  # fmt: skip
    """Decode a Segment body into a :class:`Batch`; returns it and the body's ``writeKey``.

    ``single`` is the message type of a single-message endpoint (``"track"``...), None for
    ``/v1/batch`` and ``/v1/import``. ``received`` is the server time the body arrived.
    """
    fast = mapper.default
    if single is None:
        messages, batch_sent, key = _messages(body, max_event, max_events, fast)
    else:
        if len(body) > max_event:
            raise HTTPError(413, "payload_too_large", f"event exceeds {max_event} bytes")
        try:
            msg = (_fast_message if fast else _message).decode(body)
        except msgspec.DecodeError as exc:
            raise decode_error(exc) from None
        msg.type = single
        messages, batch_sent, key = [msg], None, msg.writeKey
    if fast:
        return _fast(messages, batch_sent, received, skew, source, mapper.known), key
    out = Batch(source, mapper.known)
    out.received = len(messages)
    b_sent = epoch(batch_sent)
    track = mapper.track
    fields = mapper.fields
    for m in messages:
        uid = m.userId if type(m.userId) is str else text(m.userId)
        if not uid:
            uid = text(m.anonymousId)
            if not uid:
                out.reject("missing_user")
                continue
        kind = m.type
        ts = epoch(m.timestamp if m.timestamp is not None else m.originalTimestamp)
        if ts is None:
            ts = received
        elif skew:
            sent = epoch(m.sentAt) if m.sentAt is not None else b_sent
            if sent is not None:
                ts = received - (sent - ts)
        mid = m.messageId if type(m.messageId) is str else text(m.messageId)
        if kind == "track":
            name = m.event
            if not name:
                out.reject("missing_event")
                continue
            etype, step, target, account, status, results = track(name, View(m, m.properties, m.context))
            out.add(uid, etype, ts, step, target, account, status, results, mid)
        elif kind == "page" or kind == "screen":
            step, target, account = fields(View(m, m.properties, m.context))
            if kind == "screen":
                out.screens.append(len(out.rows))
            out.add(uid, "page", ts, step, target, account, -1, -1, mid)
        elif kind == "identify":
            payload = {"type": "identify", "userId": uid, "traits": m.traits or {}}
            if m.context:
                payload["context"] = _context(m.context) or {}
            identity = to_identify(payload)
            if identity is not None:
                out.identities.append(identity)
        elif kind == "group" or kind == "alias":
            out.call(kind)  # understood, nothing to score
        else:
            out.reject("unknown_call")
    return out, key


def _fast(messages: list[_FastMessage], batch_sent: datetime | None, received: float, skew: bool,
          source: str, known: frozenset[str]) -> Batch:  # fmt: skip
    """The default mapping (see the module docstring), inlined for the ingest hot path: the
    same result as the general loop with the default ``[segment]`` paths, at a fraction of
    the cost per event."""
    out = Batch(source, known)
    out.received = len(messages)
    rows = out.rows
    b_sent = epoch(batch_sent)
    for m in messages:
        uid = m.userId
        if type(uid) is not str or not uid:
            uid = text(uid) or text(m.anonymousId)
            if not uid:
                out.reject("missing_user")
                continue
        kind = m.type
        t = m.timestamp if m.timestamp is not None else m.originalTimestamp
        if t is None:
            ts = received
        else:
            ts = t.timestamp() if t.tzinfo is not None else t.replace(tzinfo=UTC).timestamp()  # naive: UTC
            if skew:
                sent = b_sent if m.sentAt is None else epoch(m.sentAt)
                if sent is not None:
                    ts = received - (sent - ts)
        mid = m.messageId
        if type(mid) is not str:
            mid = text(mid)
        if kind == "track":
            etype = m.event
            if not etype:
                out.reject("missing_event")
                continue
            if etype not in known:
                out.reject("unknown_type")
                continue
        elif kind == "page" or kind == "screen":
            etype = "page"
            if kind == "screen":
                out.screens.append(len(rows))
        elif kind == "identify":
            payload: dict[str, Any] = {"type": "identify", "userId": uid, "traits": m.traits or {}}
            if type(m.context) is _FastContext:
                payload["context"] = {"locale": m.context.locale, "groupId": m.context.groupId}
            identity = to_identify(payload)
            if identity is not None:
                out.identities.append(identity)
            continue
        elif kind == "group" or kind == "alias":
            out.call(kind)
            continue
        else:
            out.reject("unknown_call")
            continue
        p = m.properties
        if p is not None:
            step, target, account, status, results = p.step, p.target, p.account_id, p.status, p.results
            if step is not None and (type(step) is not str or not step):
                step = text(step)
            if target is not None and (type(target) is not str or not target):
                target = text(target)
            if account is not None and (type(account) is not str or not account):
                account = text(account)
            if status is None:
                status = -1
            elif type(status) is not int or not 0 <= status < 2147483648:
                status = as_int(status)
            if results is None:
                results = -1
            elif type(results) is not int or not 0 <= results < 2147483648:
                results = as_int(results)
        else:
            step = target = account = None
            status = results = -1
        c = m.context
        if step is None:
            step = m.name or None
            if step is None and type(c) is _FastContext and isinstance(c.page, dict):
                step = text(c.page.get("path"))
        if type(c) is _FastContext and c.groupId is not None:  # context.groupId comes first
            account = text(c.groupId) or account
        rows.append((uid, etype, ts, step, target, account, status, results, mid))
    return out
