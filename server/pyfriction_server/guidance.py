"""Guidance for the browser: poll, Server-Sent Events, feedback, and identity verification.

* ``GET /v1/guidance/{user_id}/stream``: Server-Sent Events. The guidance that no page has
  shown yet is sent at once, then each new item the moment an episode picks it
  (``Tracker.on_guidance`` wakes the stream), as ``event: guidance`` with the item as
  ``data``; a comment every ``sse_keepalive`` seconds keeps proxies from closing an idle
  stream. An item counts as delivered when shown, not when read: a stream sends each item
  once, and every stream (another tab, a reconnect) gets it again until a page reports it
  ``shown`` (an ack, or a ``guidance_shown`` event) or it expires (``guidance.expire_after``).
  So a tab that read an item and closed, or a stream that dropped, before showing it, loses
  nothing (:meth:`pyfriction.Tracker.unshown`).
* ``GET /v1/guidance/{user_id}``: the user's pending guidance as JSON. Handed out once
  (``Tracker.pending``: for a client that shows what it reads); with ``keep=1`` it is what a
  stream would send, kept until shown (pyfriction.js polls so when it has no EventSource).
* ``POST /v1/guidance/{user_id}/ack``: ``{"guidance_id", "outcome"}`` with outcome ``shown``,
  ``clicked``, ``dismissed``, ``completed`` or ``anchor_missing`` (``Tracker.ack``; journaled
  like events; counted per item in ``pyfriction_guidance_item_feedback_total``).

Identity verification (Intercom's scheme): when ``identity_secret`` is set, each of these
needs the user's token, ``X-Pyfriction-User-Token`` header or ``token`` query parameter,
computed by the host backend with :func:`user_token`, so nobody can read another user's
guidance by guessing ids. A token is ``hex(HMAC-SHA256(secret, user_id))``, or with an expiry
``"<exp>.<hex(HMAC-SHA256(secret, '<exp>:<user_id>'))>"`` (``exp``: epoch seconds). An open
stream ends (``event: expired``) when its token expires.

The first read of an item marks it delivered (a poll without ``keep=1`` does not return it
again), so a browser request from an origin outside ``cors_origins`` (one that could not read
the answer) is refused with 403 before that.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
from collections.abc import AsyncIterator
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

import pyfriction
from pyfriction.guidance import render_body
from pyfriction.recent import fingerprint

from .errors import HTTPError
from .keys import client_address, header_key
from .limits import check_depth, read_body
from .state import OUTCOMES

__all__ = ["AckBody", "Hub", "ack", "poll", "stream", "user_token", "verify_token"]

_json = msgspec.json.encode


def user_token(secret: str, user_id: str, expires_at: int | None = None) -> str:
    """The token a host backend gives its page for ``user_id`` (see the module docstring)."""
    if expires_at is None:
        return hmac.new(secret.encode(), user_id.encode(), hashlib.sha256).hexdigest()
    exp = int(expires_at)
    mac = hmac.new(secret.encode(), f"{exp}:{user_id}".encode(), hashlib.sha256).hexdigest()
    return f"{exp}.{mac}"


def verify_token(secret: str, user_id: str, token: str | None, now: float | None = None) -> int | None:
    """Raise 401 unless ``token`` is a valid, unexpired token for ``user_id``; returns its
    expiry (epoch seconds), None for a token without one."""
    if not token:
        raise HTTPError(401, "user_token_required", "this user's token is required (identity verification is on)")
    exp_text, dot, mac = token.rpartition(".")
    if dot:
        if not exp_text.isdigit() or len(exp_text) > 12:
            raise HTTPError(401, "invalid_user_token", "malformed user token")
        expected = user_token(secret, user_id, int(exp_text))
        if not hmac.compare_digest(expected.encode(), token.encode("utf-8", "surrogateescape")):
            raise HTTPError(401, "invalid_user_token", "the user token does not match this user")
        if int(exp_text) <= (time.time() if now is None else now):
            raise HTTPError(401, "user_token_expired", "the user token has expired")
        return int(exp_text)
    expected = user_token(secret, user_id)
    if not hmac.compare_digest(expected.encode(), token.encode("utf-8", "surrogateescape")):
        raise HTTPError(401, "invalid_user_token", "the user token does not match this user")
    return None


class Hub:
    """Wakes the open streams of a user when guidance is picked for them."""

    def __init__(self) -> None:
        self.streams: dict[str, set[asyncio.Event]] = {}
        #: The fingerprint of each user with a stream here (the workers' bell names users by key).
        self.keys: dict[int, str] = {}
        self.count = 0
        self.closed = False
        self._loop: asyncio.AbstractEventLoop | None = None

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def notify(self, user_id: str) -> None:
        """Wake ``user_id``'s streams (safe from any thread)."""
        loop = self._loop
        if loop is None:
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._wake(user_id)
        else:
            loop.call_soon_threadsafe(self._wake, user_id)

    def _wake(self, user_id: str) -> None:
        for event in self.streams.get(user_id, ()):
            event.set()

    def heard(self, keys: list[int] | None) -> None:
        """Wake the streams of the users another worker rang the bell for (None: everyone's)."""
        if keys is None:
            for user_id in list(self.streams):
                self._wake(user_id)
            return
        for key in keys:
            found = self.keys.get(key)
            if found is not None:
                self._wake(found)

    def open(self, user_id: str) -> asyncio.Event:
        event = asyncio.Event()
        if user_id not in self.streams:
            self.keys[fingerprint(user_id)] = user_id
        self.streams.setdefault(user_id, set()).add(event)
        self.count += 1
        return event

    def release(self, user_id: str, event: asyncio.Event) -> None:
        subs = self.streams.get(user_id)
        if subs is not None and event in subs:
            subs.discard(event)
            self.count -= 1
            if not subs:
                del self.streams[user_id]
                self.keys.pop(fingerprint(user_id), None)

    def close(self) -> None:
        """End every stream (graceful shutdown)."""
        self.closed = True
        for subs in self.streams.values():
            for event in subs:
                event.set()


class AckBody(msgspec.Struct, forbid_unknown_fields=False):
    """``POST /v1/guidance/{user_id}/ack``."""

    guidance_id: str
    outcome: str


def _authorize(request: Request, user_id: str, reads: bool = False) -> tuple[Any, int | None]:
    """Check the key, the client's rate, the origin (``reads``: the answer marks guidance
    delivered) and the user token; returns the sidecar and the token's expiry."""
    sc = request.app.state.sidecar
    key = header_key(request.headers) or request.query_params.get("key")
    sc.keys.check_write(key, client_address(request))
    if reads:
        origin = request.headers.get("origin")
        allowed = sc.settings.cors_origins
        if origin is not None and "*" not in allowed and origin not in allowed:
            raise HTTPError(403, "origin_not_allowed", "this origin is not in cors_origins: it may not read guidance")
    secret = sc.settings.identity_secret
    expires = None
    if secret:
        token = request.headers.get("x-pyfriction-user-token") or request.query_params.get("token")
        expires = verify_token(secret, user_id, token)
    return sc, expires


def _pending(sc: Any, user_id: str, keep: bool = False) -> list[Any]:
    """The user's guidance: kept until shown (``keep``: :meth:`pyfriction.Tracker.unshown`)
    or handed out once (``Tracker.pending``)."""
    tracker = sc.state.tracker
    if keep and isinstance(tracker, pyfriction.Tracker):
        return tracker.unshown(user_id)
    pending = getattr(tracker, "pending", None)
    return [] if pending is None else list(pending(user_id))


def _item(g: Any) -> Any:
    """A guidance item as JSON, plus ``body_html``: the body rendered by the engine's safe
    Markdown subset (everything escaped first), ready for ``innerHTML``."""
    doc = msgspec.to_builtins(g)
    if isinstance(doc, dict) and doc.get("body"):
        doc["body_html"] = render_body(doc["body"])
    return doc


async def poll(request: Request) -> Response:
    """``GET /v1/guidance/{user_id}``: the pending guidance, marked delivered (``keep=1``: kept
    until shown)."""
    user_id = request.path_params["user_id"]
    sc, _ = _authorize(request, user_id, reads=True)
    items = _pending(sc, user_id, request.query_params.get("keep") in ("1", "true"))
    if items:
        sc.metrics.guidance_delivered.inc(("poll",), len(items))
    return Response(_json({"guidance": [_item(g) for g in items]}), media_type="application/json")


async def stream(request: Request) -> Response:
    """``GET /v1/guidance/{user_id}/stream``: Server-Sent Events of the user's guidance."""
    user_id = request.path_params["user_id"]
    sc, expires = _authorize(request, user_id, reads=True)
    hub: Hub = sc.hub
    if hub.closed:
        raise HTTPError(503, "shutting_down", "the sidecar is shutting down", retry_after=1)
    if hub.count >= sc.settings.max_streams:
        raise HTTPError(503, "too_many_streams", "too many open guidance streams", retry_after=5)
    keepalive = sc.settings.sse_keepalive
    event = hub.open(user_id)
    worker = b"" if sc.worker is None else b" (worker %d)" % sc.worker.index
    sent: set[tuple[str, float]] = set()  # (id, created_at) of the offers this stream has sent

    async def events() -> AsyncIterator[bytes]:
        try:
            yield b"retry: 3000\n: pyfriction guidance stream" + worker + b"\n\n"
            while not hub.closed:
                event.clear()
                if expires is not None and expires <= time.time():  # checked before every delivery
                    yield b'event: expired\ndata: {"code":"user_token_expired"}\n\n'
                    return
                # Not yet shown anywhere, and not yet sent on this stream (an item stays until
                # shown: it goes to every stream once; once shown it leaves `sent` too).
                items = _pending(sc, user_id, keep=True)
                keys = [(str(getattr(g, "id", "")), float(getattr(g, "created_at", 0.0))) for g in items]
                items = [g for g, k in zip(items, keys, strict=True) if k not in sent]
                sent.intersection_update(keys)
                sent.update(keys)
                if items:
                    sc.metrics.guidance_delivered.inc(("stream",), len(items))
                    yield b"".join(
                        b"id: "
                        + str(getattr(g, "id", "")).encode()
                        + b"\nevent: guidance\ndata: "
                        + _json(_item(g))
                        + b"\n\n"
                        for g in items
                    )
                wait = keepalive if expires is None else max(0.0, min(keepalive, expires - time.time()))
                try:
                    await asyncio.wait_for(event.wait(), wait)
                except TimeoutError:
                    if expires is None or time.time() < expires:
                        yield b": keep-alive\n\n"
        finally:
            hub.release(user_id, event)

    return StreamingResponse(
        events(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


_ack_decoder = msgspec.json.Decoder(AckBody)


async def ack(request: Request) -> Response:
    """``POST /v1/guidance/{user_id}/ack``: shown / clicked / dismissed / completed."""
    user_id = request.path_params["user_id"]
    sc, _ = _authorize(request, user_id)
    s = sc.settings
    body = await read_body(request, s.max_body_bytes, s.max_event_bytes, s.body_timeout)
    check_depth(body)
    try:
        doc = _ack_decoder.decode(body)
    except (msgspec.DecodeError, RecursionError) as exc:
        raise HTTPError(400, "bad_request", f"malformed payload: {exc}") from None
    if doc.outcome not in OUTCOMES:
        raise HTTPError(400, "bad_request", f"outcome must be one of {', '.join(OUTCOMES)}")
    if not doc.guidance_id or len(doc.guidance_id) > 256:
        raise HTTPError(400, "bad_request", "guidance_id must be 1 to 256 characters")
    record = {"k": "a", "u": user_id, "g": doc.guidance_id, "o": doc.outcome, "ts": time.time()}
    known = await sc.state.submit(record)
    if not known:
        raise HTTPError(404, "unknown_guidance", "no such guidance for this user")
    sc.metrics.guidance_feedback.inc((doc.outcome,))
    sc.metrics.guidance_item_feedback.inc((doc.guidance_id, doc.outcome))
    return Response(b'{"ok":true}', media_type="application/json")
