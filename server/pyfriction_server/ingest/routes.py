"""The ingest endpoints: decode, authorize, persist and score, answer as each protocol expects.

Segment and RudderStack SDKs treat anything but ``200 {"success": true}`` as a failure;
PostHog's legacy endpoints answer ``200 {"status": 1}`` and the v1 endpoint ``200
{"results": {}}`` (no per-event directive: every event is ``ok``).

These are the hot path, so each handler is wrapped by :class:`Endpoint` into a plain ASGI
app (Starlette routes it as such): it answers with two ASGI messages itself, and turns an
:class:`~pyfriction_server.errors.HTTPError` into its JSON answer, without Starlette's
per-request response and exception-handling layers.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.types import Receive, Scope, Send

from ..errors import HTTPError, error_response
from ..keys import client_address, header_key
from ..limits import check_depth, inflate, read_body
from . import Batch, native, posthog, segment

__all__ = ["Endpoint", "native_events", "posthog_v0", "posthog_v1", "segment_batch", "segment_single"]

SEGMENT_OK = b'{"success":true}'
POSTHOG_OK = b'{"status":1}'
POSTHOG_V1_OK = b'{"results":{}}'


async def _body(request: Request, json: bool = True) -> tuple[Any, str | None, bytes, float]:
    """The sidecar, the header key, the body and its arrival time.

    Everything that can be checked before the body is read is: the client's rate, then the
    header key and its rate (a key in the body can only be checked once it is decoded). A
    JSON body (``json``) nested deeper than ``max_json_depth`` is refused before decoding."""
    sc = request.app.state.sidecar
    sc.keys.check_client(client_address(request))
    key = header_key(request.headers)
    if key is not None:
        sc.keys.check_write(key)
    s = sc.settings
    body = await read_body(request, s.max_body_bytes, s.max_batch_bytes, s.body_timeout)
    if json:
        check_depth(body, s.max_json_depth)
    return sc, key, body, time.time()


async def _accept(sc: Any, batch: Batch, header: str | None, body_key: str | None) -> dict[str, int]:
    if header is None:
        sc.keys.check_write(body_key)  # the client's rate was checked before the body was read
    return await sc.state.submit(batch.record())  # type: ignore[no-any-return]


Handler = Callable[[Request], Awaitable[bytes]]
_JSON = b"application/json"


class Endpoint:
    """An ingest handler (``request -> JSON body bytes``) as an ASGI app answering 200 with
    that body, or the JSON error of an :class:`HTTPError`."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.__name__ = handler.__name__
        self.__doc__ = handler.__doc__

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        try:
            try:
                body = await self.handler(request)
            except RecursionError:  # a decoder's last line of defence (check_depth comes first)
                raise HTTPError(400, "too_deep", "payload nested too deeply") from None
        except HTTPError as exc:
            scope["app"].state.sidecar.rejected(request, exc)
            await error_response(exc)(scope, receive, send)
            return
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", _JSON), (b"content-length", str(len(body)).encode())]})  # fmt: skip
        await send({"type": "http.response.body", "body": body})


@Endpoint
async def segment_batch(request: Request) -> bytes:
    """``POST /v1/batch`` and ``/v1/import``."""
    sc, key, body, received = await _body(request)
    s = sc.settings
    batch, body_key = segment.decode(body, None, received, sc.mapper, skew=s.skew_correction,
                                     max_event=s.max_event_bytes, max_events=s.max_batch_events)  # fmt: skip
    await _accept(sc, batch, key, body_key)
    return SEGMENT_OK


@Endpoint
async def segment_single(request: Request) -> bytes:
    """``POST /v1/{track,identify,page,screen,group,alias}``."""
    sc, key, body, received = await _body(request)
    s = sc.settings
    kind = request.url.path.rsplit("/", 1)[-1]
    batch, body_key = segment.decode(body, kind, received, sc.mapper, skew=s.skew_correction,
                                     max_event=s.max_event_bytes, max_events=s.max_batch_events)  # fmt: skip
    await _accept(sc, batch, key, body_key)
    return SEGMENT_OK


@Endpoint
async def posthog_v0(request: Request) -> bytes:
    """``POST /batch/``, ``/capture/``, ``/e/`` (PostHog's legacy capture)."""
    gzip_js = request.query_params.get("compression") == "gzip-js"
    sc, key, body, received = await _body(request, json=not gzip_js)
    s = sc.settings
    if gzip_js and body[:2] == b"\x1f\x8b":
        body = inflate(body, "gzip", s.max_batch_bytes)  # posthog-js gzips without the header
    if gzip_js:
        check_depth(body, s.max_json_depth)
    batch, body_key = posthog.decode_v0(body, received, sc.mapper, skew=s.skew_correction,
                                        max_event=s.max_event_bytes, max_events=s.max_batch_events,
                                        rage_clicks=sc.rage_clicks)  # fmt: skip
    await _accept(sc, batch, key, body_key)
    return POSTHOG_OK


@Endpoint
async def posthog_v1(request: Request) -> bytes:
    """``POST /i/v1/analytics/events`` (PostHog capture v1: Bearer key)."""
    sc, key, body, received = await _body(request)
    s = sc.settings
    batch = posthog.decode_v1(body, received, request.headers.get("posthog-request-timestamp"), sc.mapper,
                              skew=s.skew_correction, max_event=s.max_event_bytes,
                              max_events=s.max_batch_events, rage_clicks=sc.rage_clicks)  # fmt: skip
    await _accept(sc, batch, key, None)
    return POSTHOG_V1_OK


@Endpoint
async def native_events(request: Request) -> bytes:
    """``POST /v1/events``: canonical events, JSON or MessagePack; answers the counts."""
    media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    sc, key, body, received = await _body(request, json=media not in native.MSGPACK_TYPES)
    s = sc.settings
    batch, body_key = native.decode(body, request.headers.get("content-type", ""), received, sc.mapper,
                                    skew=s.skew_correction, max_event=s.max_event_bytes,
                                    max_events=s.max_batch_events)  # fmt: skip
    result = await _accept(sc, batch, key, body_key)
    result = dict(result, received=batch.received, success=True)
    return msgspec.json.encode(result)
