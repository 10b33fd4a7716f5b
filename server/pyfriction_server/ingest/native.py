"""The native API: ``POST /v1/events`` with canonical pyfriction events, batched.

The body is JSON (``application/json``, or ``text/plain`` as ``navigator.sendBeacon`` sends
it) or MessagePack (``application/msgpack``, ``application/x-msgpack``,
``application/vnd.msgpack``), either a list of events or an envelope::

    {"writeKey": "...", "sent_at": 1700000000.5, "lib": "pyfriction.js",
     "events": [{"id": "e1", "user_id": "u42", "type": "click", "ts": 1700000000.1,
                 "step": "billing", "target": "#pay", "properties": {"status": 503}}]}

An event is a :class:`pyfriction.Event` plus an optional delivery ``id`` that deduplicates
retried deliveries. ``sent_at`` (seconds) enables skew correction of ``ts``; an event
without ``ts`` gets the receive time. Events without ``user_id`` or ``type`` are dropped and
counted; the rest go through. A ``click`` with a truthy ``properties.selection`` (pyfriction.js:
the click selected text or ended a scroll) is accepted but not scored.
"""

from __future__ import annotations

from typing import Any

import msgspec

from ..errors import HTTPError
from . import Batch, Mapper, View, decode_error, text

__all__ = ["MSGPACK_TYPES", "Envelope", "NativeEvent", "decode"]

MSGPACK_TYPES = frozenset({"application/msgpack", "application/x-msgpack", "application/vnd.msgpack"})
Id = str | int | None


class NativeEvent(msgspec.Struct, gc=False):
    """A canonical event with an optional delivery id."""

    user_id: Id = None
    type: str | None = None
    ts: float | None = None
    step: str | None = None
    target: str | None = None
    account_id: str | None = None
    properties: dict[str, Any] | None = None
    id: Id = None


class Envelope(msgspec.Struct, gc=False):
    """A batch with its key, send time and sending library."""

    events: list[NativeEvent] = msgspec.field(default_factory=list)
    writeKey: str | None = None
    sent_at: float | None = None
    lib: str | None = None


Body = Envelope | list[NativeEvent]
_json = msgspec.json.Decoder(Body)
_msgpack = msgspec.msgpack.Decoder(Body)


def decode(body: bytes, content_type: str, received: float, mapper: Mapper, *, skew: bool,
           max_event: int, max_events: int) -> tuple[Batch, str | None]:  # fmt: skip
    """Decode a native body; returns the batch and the body's ``writeKey``."""
    media = content_type.split(";", 1)[0].strip().lower()
    try:
        doc = _msgpack.decode(body) if media in MSGPACK_TYPES else _json.decode(body)
    except msgspec.DecodeError as exc:
        raise decode_error(exc) from None
    if isinstance(doc, list):
        events, key, sent, lib = doc, None, None, None
    else:
        events, key, sent, lib = doc.events, doc.writeKey, doc.sent_at, doc.lib
    if len(events) > max_events:
        raise HTTPError(413, "payload_too_large", f"more than {max_events} events in one batch")
    if len(body) > max_event:
        enc = msgspec.json.encode
        for i, e in enumerate(events):
            if len(enc(e)) > max_event:
                raise HTTPError(413, "payload_too_large", f"event {i} exceeds {max_event} bytes")
    out = Batch("browser" if lib == "pyfriction.js" else "native", mapper.known)
    out.received = len(events)
    rules = mapper.rules
    for e in events:
        uid = e.user_id if type(e.user_id) is str else text(e.user_id)
        kind = e.type
        if not uid or not kind:
            out.reject("missing_user" if not uid else "missing_event")
            continue
        ts = e.ts
        if ts is None:
            ts = received
        elif skew and sent is not None:
            ts = received - (sent - ts)
        props = e.properties
        mid = e.id if type(e.id) is str else text(e.id)
        if kind in rules:
            etype, step, target, account, status, results = mapper.track(kind, View(e, props))
            out.add(uid, etype, ts, e.step or step, e.target or target, e.account_id or account, status, results, mid)
        elif props:
            if kind == "click" and props.get("selection"):
                # pyfriction.js: a click that selected text or ended a scroll. Accepted, not scored:
                # reading and scrolling must not look like rage clicks.
                out.call("other")
                continue
            out.add(uid, kind, ts, e.step, e.target, e.account_id, props.get("status"), props.get("results"), mid)
        else:
            out.add(uid, kind, ts, e.step, e.target, e.account_id, -1, -1, mid)
    return out, key
