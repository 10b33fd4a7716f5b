"""ASGI (Starlette, FastAPI, any ASGI app): a pure ASGI middleware, no ``BaseHTTPMiddleware``.

::

    import pyfriction
    from pyfriction.integrations.asgi import FrictionMiddleware

    pyfriction.init()
    app.add_middleware(FrictionMiddleware)

Per HTTP request the middleware:

- puts the user in the context (:func:`pyfriction.current_user`), resolved lazily from
  ``scope["user"]`` (Starlette's ``AuthenticationMiddleware``) or from ``get_user(scope)``,
  which returns a user id, a user object, ``(user_id, account_id)`` or None;
- uses the route template (``/items/{item_id}``, not the raw path) as the ``step``;
- observes failed responses: 400/422 → ``form_error``, other 4xx/5xx → ``api_error`` with
  ``properties.status``, an unhandled exception → ``error`` (then re-raises it); a response
  slower than ``slow_after`` seconds → ``slow_response`` (map it in the config's
  ``event_map`` to give it a weight); and, with ``pages=True`` (default), a successful HTML
  GET → ``page``;
- exposes the user's pending guidance to the handler as ``request.state.pyfriction``
  (a :class:`RequestFriction`: ``.user_id``, ``.step``, ``.pending()``, ``.ack()``,
  ``.observe()``), and with ``guidance_header=True`` in an ``X-Pyfriction-Guidance``
  response header (JSON) for SPA clients.

Where it sits does not matter for the user: it reads ``scope["user"]`` when it needs it, after
the authentication middleware has run, so ``app.add_middleware(FrictionMiddleware)`` may come
before or after ``AuthenticationMiddleware``. Anything pyfriction does that fails is logged
and counted (:func:`pyfriction.sdk.counters`), never raised into the request.

:func:`guidance_app` is a small ASGI app to mount (``app.mount("/_pyfriction",
guidance_app())``) for browsers: ``GET .../guidance``, ``POST .../ack``, ``POST .../events``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from typing import Any

from .. import sdk
from . import Integration
from ._common import (
    GUIDANCE_HEADER,
    OUTCOMES,
    SLOW_AFTER,
    RequestFriction,
    ack,
    browser_events,
    failed,
    guidance_builtins,
    header_value,
    normalize,
    pending,
    response_events,
    user_of,
)

__all__ = ["FrictionMiddleware", "RequestFriction", "StarletteIntegration", "guidance_app", "route_template"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
GetUser = Callable[[Scope], Any]

_perf = time.perf_counter
_user_var = sdk.user_var
_options = sdk.options
#: Scope key marking a request the middleware must not observe (the guidance endpoint's own).
IGNORE = "pyfriction.ignore"


def route_template(scope: Mapping[str, Any]) -> str | None:
    """The matched route's template (``/items/{item_id}``), or None before routing / for no
    match. Starlette and FastAPI put the route in ``scope["route"]``; mounted apps prefix it
    with their ``root_path``."""
    route = scope.get("route")
    if route is None:
        return None
    path = getattr(route, "path_format", None) or getattr(route, "path", None)
    if not isinstance(path, str):
        return None
    root = scope.get("root_path") or ""
    app_root = scope.get("app_root_path") or ""
    if root and root != app_root and not path.startswith(root):
        return root[len(app_root) :] + path if root.startswith(app_root) else root + path
    return path


def _scope_user(scope: Mapping[str, Any], get_user: GetUser | None) -> Any:
    if get_user is not None:
        return normalize(get_user(scope))  # type: ignore[arg-type]
    uid = user_of(scope.get("user"))
    return None if uid is None else (uid, None)


class _AsgiFriction(RequestFriction):
    """:class:`RequestFriction` of an ASGI request: the user and step come from the scope.

    One object per request, and also the ``send`` wrapper that notes the response status
    (``__call__`` returns ``send()``'s awaitable: no coroutine of its own per message).
    """

    __slots__ = ("_scope", "_mw", "_send", "code", "html", "start", "observed")
    # Fixed for a request context: class attributes, not per-request assignments (hot path).
    traits = None
    _step = None
    _step_of = None  # type: ignore[assignment]  # never called: this class overrides step

    def __init__(self, scope: Scope, mw: FrictionMiddleware, send: Send) -> None:
        self._user_id = None
        self._account_id = None
        self._resolve = True
        self.error_seen = False
        self._scope: Scope | None = scope
        self._mw = mw
        self._send = send
        self.code = 0
        self.html = False
        self.start = 0.0
        self.observed = False

    def __call__(self, message: Message) -> Awaitable[None]:
        kind = message["type"]
        if kind == "http.response.start":
            code = self.code = message["status"]
            mw = self._mw
            if mw.pages and code < 300:
                for key, value in message.get("headers", ()):
                    if key == b"content-type":
                        self.html = value.startswith(b"text/html")
                        break
            if mw.guidance_header and code < 400:
                mw._add_guidance(message, self)
        elif (
            kind == "http.response.body"
            and self.code < 500
            and not message.get("more_body", False)
            and not self.observed
        ):
            # Observed before the last byte leaves, not after: the user's next request (on
            # any worker of a shared store) must already see the episode this one caused.
            # A 5xx waits for the end: the exception behind it, if any, is what is observed.
            self.observed = True
            scope = self._scope
            if scope is not None:
                self._mw._observe_outcome(scope, self)
        return self._send(message)

    def _find(self) -> Any:
        scope = self._scope
        return None if scope is None else _scope_user(scope, self._mw.get_user)

    @property
    def step(self) -> str | None:
        scope = self._scope
        return None if scope is None else route_template(scope)

    def release(self) -> None:
        self._resolve = None
        self._scope = None


class FrictionMiddleware:
    """Pure ASGI middleware observing each HTTP request's outcome for its user.

    Options: ``get_user(scope)`` (default: ``scope["user"]``), ``slow_after`` (seconds,
    default 3.0, None for never), ``pages`` (observe successful HTML GETs as ``page``),
    ``guidance_header`` (pending guidance in a response header), ``header_name``.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        get_user: GetUser | None = None,
        slow_after: float | None = SLOW_AFTER,
        pages: bool = True,
        guidance_header: bool = False,
        header_name: str = GUIDANCE_HEADER,
        _auto: bool = False,
    ) -> None:
        self.app = app
        self.get_user = get_user
        self.slow_after = slow_after
        self.pages = pages
        self.guidance_header = guidance_header
        self.header_name = header_name.lower().encode("latin-1")
        self._auto = _auto

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not _options.enabled or (self._auto and StarletteIntegration.active is None):
            await self.app(scope, receive, send)
            return
        try:
            ctx = _AsgiFriction(scope, self, send)
            state = scope.get("state")
            if state is None:
                scope["state"] = {"pyfriction": ctx}
            else:
                state["pyfriction"] = ctx
        except Exception:
            failed("request set-up")
            await self.app(scope, receive, send)
            return
        token = _user_var.set(ctx)
        start = ctx.start = _perf()
        try:
            await self.app(scope, receive, ctx)
        except BaseException as exc:
            ctx.error_seen = True
            self._finish(scope, ctx, start, exc)
            raise
        else:
            if not ctx.observed:  # no final body message was sent (normally observed there)
                self._observe_outcome(scope, ctx)
        finally:
            ctx._scope = ctx._resolve = None  # release(): no reference cycle through scope["state"]
            try:
                _user_var.reset(token)
            except ValueError:  # reset from another context: leave it to that context
                pass

    def _add_guidance(self, message: Message, ctx: RequestFriction) -> None:
        try:
            items = ctx.pending()
            if items:
                headers = list(message.get("headers", ()))
                headers.append((self.header_name, header_value(items)))
                message["headers"] = headers
        except Exception:
            failed("guidance header")

    def _observe_outcome(self, scope: Scope, ctx: _AsgiFriction) -> None:
        """Observe the response's status, page or slowness (once its body is complete)."""
        ctx.observed = True
        start = ctx.start
        if ctx.code >= 400 or ctx.html or (self.slow_after is not None and _perf() - start >= self.slow_after):
            self._finish(scope, ctx, start, None)

    def _finish(self, scope: Scope, req: _AsgiFriction, start: float, exc: BaseException | None) -> None:
        code = req.code
        duration = _perf() - start
        if IGNORE in scope:
            return
        slow = self.slow_after is not None and duration >= self.slow_after
        page = req.html and self.pages and scope.get("method") == "GET"
        if exc is None and code < 400 and not slow and not page:
            return  # the common case: nothing to observe, not even the user to resolve
        if exc is not None and not isinstance(exc, Exception):
            return  # cancelled / interpreter exit: not the user's friction
        try:
            ctx = sdk.user_var.get()  # the handler may have called set_user()
            if ctx is None:
                return
            uid = ctx.user_id
            if uid is None:
                return
            response_events(uid, ctx.account_id, ctx.step or route_template(scope), scope.get("method", "GET"),
                            code, duration, exc, self.slow_after, page)  # fmt: skip
        except Exception:
            failed("observing the response")


# -- the guidance endpoint for browsers ------------------------------------------------------


async def _read_body(receive: Receive, limit: int = 65536) -> bytes | None:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return None
        body = message.get("body", b"")
        size += len(body)
        if size > limit:
            return None
        chunks.append(body)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def _json(send: Send, status: int, payload: Any) -> None:
    body = json.dumps(payload, separators=(",", ":")).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"cache-control", b"no-store"),
                            (b"content-length", str(len(body)).encode())]})  # fmt: skip
    await send({"type": "http.response.body", "body": body})


def guidance_app(*, get_user: GetUser | None = None) -> ASGIApp:
    """An ASGI app serving the signed-in user's guidance to their browser; mount it where the
    authentication middleware has run (``app.mount("/_pyfriction", guidance_app())``).

    - ``GET {mount}/guidance`` → ``{"user_id": ..., "guidance": [...]}`` (marks it delivered);
    - ``POST {mount}/ack`` with ``{"id": ..., "outcome": "shown"|"clicked"|"dismissed"|"completed"}``;
    - ``POST {mount}/events`` with ``{"events": [{"type": "click", "step": ..., "target": ...}]}``:
      browser-side events (page, click, dead_click, error, search, help, contact) of the user.

    The user always comes from the server side (``scope["user"]`` or ``get_user``), never
    from the request body. 401 without a user.
    """

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        scope[IGNORE] = True  # the middleware does not judge these requests
        path = scope.get("path", "")
        method = scope.get("method", "GET")
        try:
            found = _scope_user(scope, get_user) if sdk.options.enabled else None
        except Exception:
            failed("resolving the user")
            found = None
        if found is None:
            await _json(send, 401, {"error": "no user"})
            return
        uid, account = found
        try:
            if path.endswith("/guidance") and method == "GET":
                await _json(send, 200, {"user_id": uid, "guidance": guidance_builtins(pending(uid))})
                return
            if method != "POST" or not (path.endswith("/ack") or path.endswith("/events")):
                await _json(send, 404, {"error": "not found"})
                return
            body = await _read_body(receive)
            try:
                payload = json.loads(body) if body else None
            except ValueError:
                payload = None
            if payload is None:
                await _json(send, 400, {"error": "expected a JSON body (at most 64 KiB)"})
                return
            if path.endswith("/ack"):
                gid, outcome = payload.get("id"), payload.get("outcome")
                if not isinstance(gid, str) or outcome not in OUTCOMES:
                    await _json(send, 400, {"error": f"expected id and outcome in {sorted(OUTCOMES)}"})
                    return
                await _json(send, 200, {"ok": ack(uid, gid, outcome)})
                return
            await _json(send, 200, {"accepted": browser_events(payload, uid, account)})
        except Exception:
            failed("guidance endpoint")
            await _json(send, 503, {"error": "pyfriction unavailable"})

    return app


# -- auto-instrumentation -----------------------------------------------------------------------


class StarletteIntegration(Integration):
    """Wraps every Starlette/FastAPI app (including subclasses) in :class:`FrictionMiddleware`
    with these options, unless the app added the middleware itself."""

    identifier = "starlette"
    requires = ("starlette",)

    def __init__(self, **middleware_options: Any) -> None:
        self.options = middleware_options

    def setup_once(self) -> None:
        from starlette.applications import Starlette

        classes: list[type[Any]] = [Starlette]
        try:
            from fastapi import FastAPI

            if "build_middleware_stack" in vars(FastAPI):
                classes.append(FastAPI)
        except ImportError:
            pass
        for cls in classes:
            _patch_build(cls)


def _patch_build(cls: Any) -> None:
    original = cls.build_middleware_stack
    if getattr(original, "_pyfriction", False):
        return

    def build_middleware_stack(self: Any) -> Any:
        app = original(self)
        active = StarletteIntegration.active
        if active is None or any(
            getattr(m, "cls", None) is FrictionMiddleware for m in getattr(self, "user_middleware", ())
        ):
            return app
        return FrictionMiddleware(app, _auto=True, **active.options)

    build_middleware_stack._pyfriction = True  # type: ignore[attr-defined]
    cls.build_middleware_stack = build_middleware_stack
