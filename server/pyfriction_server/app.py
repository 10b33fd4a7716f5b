"""The Starlette application: routes, middleware, lifespan.

:func:`create_app` builds the ASGI app from :class:`~pyfriction_server.settings.Settings`;
:class:`Server` is uvicorn's server with the sidecar's graceful shutdown (end the guidance
streams first, so uvicorn's own drain of in-flight requests can finish).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import msgspec
import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from . import admin, guidance, openapi
from .errors import HTTPError, error_response
from .guidance import Hub
from .ingest import Mapper, routes
from .keys import KeyRing
from .logs import LIMITER
from .metrics import CONTENT_TYPE, STORE_STATS, Metrics
from .script import Script
from .settings import Settings
from .shared import Worker
from .state import State, StateError

__all__ = ["Server", "Sidecar", "create_app", "server_config"]

log = logging.getLogger("pyfriction.server")


class Sidecar:
    """Everything the endpoints share, reachable as ``request.app.state.sidecar``."""

    def __init__(self, settings: Settings, worker: Worker | None = None) -> None:
        self.settings = settings
        self.worker = worker
        self.keys = KeyRing(
            settings.write_keys,
            settings.admin_keys,
            settings.rate_limit,
            settings.rate_burst,
            client_rate=settings.client_rate_limit,
            client_burst=settings.client_rate_burst,
        )
        self.hub = Hub()
        self.metrics = Metrics(self._gauges())
        self.state = State(settings, self.metrics, worker)
        self.state.guidance_listeners.append(self.hub.notify)
        config = settings.tracker_config()
        self.mapper = Mapper(settings.events, getattr(config, "segment", None), config.event_map)
        #: Clicks a PostHog $rageclick stands for (the engine's rage threshold).
        self.rage_clicks = config.detectors.rage_click.min_clicks
        self.script = Script.load()
        self._rejections: dict[str, list[float]] = {}
        self.count_suppressed: Callable[[str], None] = lambda level: self.metrics.log_suppressed.inc((level,))

    def _gauges(self) -> dict[str, Callable[[], float]]:
        def tracker_stat(name: str) -> Callable[[], float]:
            def read() -> float:
                t = self.state.tracker
                return float(getattr(t.stats(), name)) if t is not None else 0.0

            return read

        def store_stat(name: str) -> Callable[[], float]:
            def read() -> float:
                t = self.state.tracker
                return float(t.store_stats().get(name, 0)) if t is not None else 0.0

            return read

        return {
            "pyfriction_users_tracked": tracker_stat("users"),
            "pyfriction_dispatcher_queue_depth": tracker_stat("queue_depth"),
            "pyfriction_ingest_queue_depth": lambda: float(self.state.pending),
            "pyfriction_guidance_streams": lambda: float(self.hub.count),
            "pyfriction_dedupe_ids": lambda: float(self.state.dedupe_count),
            "pyfriction_ready": lambda: 1.0 if self.state.ready and not self.hub.closed else 0.0,
            **{f"pyfriction_store_{name}": store_stat(name) for name in STORE_STATS},
        }

    def rejected(self, request: Request, exc: HTTPError) -> None:
        """Count a refused request and log it (at most once a second per code, with a count).

        The line names the route template (``/v1/users/{user_id}``), never the path: paths
        carry user ids, and the logs promise none."""
        self.metrics.requests_rejected.inc((exc.code,))
        now = time.monotonic()
        slot = self._rejections.get(exc.code)
        if slot is None:
            slot = self._rejections[exc.code] = [0.0, 0.0]
        slot[1] += 1
        if now - slot[0] >= 1.0:
            level = logging.WARNING if exc.status >= 500 else logging.INFO
            log.log(level, "request refused", extra={"status": exc.status, "code": exc.code, "reason": exc.message,
                                                      "route": route_label(request.scope), "count": int(slot[1])})  # fmt: skip
            slot[0], slot[1] = now, 0.0


def route_label(scope: Scope) -> str:
    """The route template of a request (``/v1/guidance/{user_id}``), "unmatched" without one."""
    label = scope.get("route_path") or getattr(scope.get("route"), "path", None)
    return label.replace(":path}", "}") if label else "unmatched"


# -- small endpoints ------------------------------------------------------------------------
def _json(doc: Any, status: int = 200) -> Response:
    return Response(msgspec.json.encode(doc), status_code=status, media_type="application/json")


async def livez(request: Request) -> Response:
    """Alive: the process answers."""
    return _json({"status": "alive"})


async def readyz(request: Request) -> Response:
    """Ready: state restored, engine loaded, config valid, not shutting down, and the journal
    writable (after a failed write, a probe record must go through first: while the disk is
    full, every ingest would get 503, and so does this; as when the state directory's file
    system has less room than the largest request). Journal damage found at replay is
    reported in the body (``journal_damage``), and in the metrics and the logs."""
    sc: Sidecar = request.app.state.sidecar
    if not sc.state.ready or sc.hub.closed:
        return _json({"status": "not ready", "reason": "starting or stopping"}, 503)
    journal = sc.state.journal
    if journal is not None:
        if journal.failure is not None and not await sc.state.probe():
            return _json({"status": "not ready", "reason": "journal_unavailable", **sc.state.health()}, 503)
        free = sc.state.free_bytes()
        if free is not None and free < sc.settings.max_batch_bytes:  # the largest request would not fit
            return _json({"status": "not ready", "reason": "disk_full", "free_bytes": free, **sc.state.health()}, 503)
    tracker = sc.state.tracker
    doc = {"status": "ready", "engine": tracker.engine if tracker is not None else None, **sc.state.health()}
    if sc.worker is not None:  # which process answered (one of several on the same port)
        doc.update(worker=sc.worker.index, workers=sc.worker.count, pid=os.getpid())
    return _json(doc)


async def metrics(request: Request) -> Response:
    """Prometheus metrics."""
    sc: Sidecar = request.app.state.sidecar
    return Response(sc.metrics.render(), media_type=CONTENT_TYPE)


async def openapi_json(request: Request) -> Response:
    """The OpenAPI document of this server."""
    return Response(openapi.document_bytes(), media_type="application/json")


async def script(request: Request) -> Response:
    """``pyfriction.js``: the browser script (see :mod:`pyfriction_server.script`)."""
    sc: Sidecar = request.app.state.sidecar
    return await sc.script.current(request)


async def script_versioned(request: Request) -> Response:
    """``pyfriction.{version}.js``: the browser script under its versioned, long-cached URL."""
    sc: Sidecar = request.app.state.sidecar
    return await sc.script.versioned(request)


# -- errors ---------------------------------------------------------------------------------
async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPError)
    request.app.state.sidecar.rejected(request, exc)
    return error_response(exc)


async def _starlette_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    codes = {404: "not_found", 405: "method_not_allowed"}
    response = error_response(HTTPError(exc.status_code, codes.get(exc.status_code, "error"), str(exc.detail)))
    if exc.headers:
        response.headers.update(exc.headers)
    return response


# -- middleware -----------------------------------------------------------------------------
CORS_HEADERS = "authorization, content-type, content-encoding, x-write-key, x-pyfriction-user-token"


class SidecarMiddleware:
    """Outermost layer: CORS (an allowlist), request latency metrics, the optional access log,
    and a last-resort JSON 500 (a bug; client input never gets here).

    The ingest endpoints (``hot``: path -> ASGI endpoint, POST only) are called from here
    directly, without Starlette's error and routing layers in between: they handle their own
    errors (:class:`~pyfriction_server.ingest.routes.Endpoint`)."""

    def __init__(self, app: ASGIApp, sidecar: Sidecar, hot: dict[str, ASGIApp] | None = None) -> None:
        self.app = app
        self.hot = hot or {}
        self.sc = sidecar
        origins = sidecar.settings.cors_origins
        self.any_origin = "*" in origins
        self.origins = {o.encode() for o in origins}
        self.histogram = sidecar.metrics.request_seconds
        self.access_log = sidecar.settings.access_log
        #: Worker mode: every response names the worker that served it (which process of
        #: several on one port handled a request, for operators and tests).
        worker = sidecar.worker
        self.worker_header = None if worker is None else (b"x-pyfriction-worker", str(worker.index).encode())

    def _origin(self, scope: Scope) -> bytes | None:
        for name, value in scope["headers"]:
            if name == b"origin":
                return value if (self.any_origin or value in self.origins) else None
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        origin = self._origin(scope) if self.origins else None
        if origin is not None and scope["method"] == "OPTIONS":
            await self._preflight(origin, send)
            return
        status = [500]
        sent = [False]

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                sent[0] = True
                if origin is not None:
                    message.setdefault("headers", [])
                    message["headers"] = [*message["headers"], (b"access-control-allow-origin", origin),
                                          (b"vary", b"Origin")]  # fmt: skip
                if self.worker_header is not None:
                    message["headers"] = [*message.get("headers", ()), self.worker_header]
            await send(message)

        # The plain path (no header to add, no access log) hands uvicorn's send through.
        plain = origin is None and not self.access_log and self.worker_header is None
        wrapped = send if plain else send_wrapper
        hot = self.hot.get(scope["path"]) if scope["method"] == "POST" else None
        try:
            if hot is not None:
                scope["route_path"] = scope["path"]
                await hot(scope, receive, wrapped)
            else:
                await self.app(scope, receive, wrapped)
        except Exception:
            log.exception("unhandled error", extra={"route": route_label(scope)})
            try:
                await error_response(HTTPError(500, "internal_error", "internal error"))(scope, receive, wrapped)
            except Exception:
                pass
        finally:
            label = route_label(scope)
            elapsed = time.perf_counter() - started
            self.histogram.observe(elapsed, (label, scope["method"]))
            if self.access_log:
                log.info("request", extra={"method": scope["method"], "route": label, "status": status[0],
                                           "seconds": round(elapsed, 6)})  # fmt: skip

    async def _preflight(self, origin: bytes, send: Send) -> None:
        await send({"type": "http.response.start", "status": 204, "headers": [
            (b"access-control-allow-origin", origin),
            (b"access-control-allow-methods", b"GET, POST, OPTIONS"),
            (b"access-control-allow-headers", CORS_HEADERS.encode()),
            (b"access-control-max-age", b"600"),
            (b"vary", b"Origin"),
        ]})  # fmt: skip
        await send({"type": "http.response.body", "body": b""})


# -- lifespan -------------------------------------------------------------------------------
async def _every(seconds: float, job: Callable[[], Awaitable[Any]]) -> None:
    while True:
        await asyncio.sleep(seconds)
        try:
            await job()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("background job failed")


def _lifespan(sc: Sidecar) -> Callable[[Starlette], Any]:
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        loop = asyncio.get_running_loop()
        LIMITER.install(sc.count_suppressed)
        sc.hub.bind(loop)
        if sc.keys.open:
            log.warning("no write key configured: ingest and guidance accept any caller")
        try:
            await asyncio.to_thread(sc.state.start, loop)
        except StateError as exc:
            log.error("cannot start: %s", exc)  # the one line to read (uvicorn adds its traceback)
            raise
        sc.state.open_journal()
        tracker = sc.state.tracker
        log.info("ready", extra={"engine": tracker.engine if tracker else None, "state_dir": sc.state.directory,
                                 "pid": os.getpid()})  # fmt: skip
        last_snapshot = [time.monotonic()]

        async def tick() -> None:
            await sc.state.submit({"k": "t", "now": time.time()})

        async def maybe_snapshot() -> None:
            due = time.monotonic() - last_snapshot[0] >= sc.settings.snapshot_interval
            if due or sc.state.needs_snapshot():
                if await sc.state.snapshot():
                    last_snapshot[0] = time.monotonic()

        # One worker runs the time-driven checks for everyone: they walk the shared store. On a
        # Redis store each process checks the users it scored lately, so every worker does.
        tasks = []
        if sc.worker is None or sc.worker.index == 0 or sc.settings.store:
            tasks.append(asyncio.create_task(_every(sc.settings.tick_interval, tick)))
        bell = sc.state.bell
        if bell is not None:
            heard = [bell.count]

            async def listen() -> None:
                heard[0], keys = bell.heard(heard[0])
                if keys is None or keys:
                    sc.hub.heard(keys)

            tasks.append(asyncio.create_task(_every(BELL_INTERVAL, listen)))
        push = sc.state.push
        if push is not None:
            push.start(lambda keys: loop.call_soon_threadsafe(sc.hub.heard, keys))
        if sc.state.directory is not None:
            tasks.append(asyncio.create_task(_every(1.0, maybe_snapshot)))
        try:
            yield
        finally:
            if push is not None:
                push.stop()
            sc.hub.close()
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await sc.state.close()
            log.info("stopped: state saved", extra={"state_dir": sc.state.directory})
            LIMITER.remove(sc.count_suppressed)

    return lifespan


#: Seconds between a worker's looks at the guidance bell: a stream held by one worker hears of
#: guidance queued by another within this (a read of one shared counter when nothing rang).
BELL_INTERVAL = 0.05


# -- the app --------------------------------------------------------------------------------
def create_app(settings: Settings | None = None, worker: Worker | None = None) -> Starlette:
    """The sidecar's ASGI application (``settings`` default: the embedded defaults); as
    ``worker`` of several processes when given (see :mod:`pyfriction_server.workers`)."""
    sc = Sidecar(settings or Settings(), worker)
    post, get = ["POST"], ["GET"]
    route_list = [
        Route("/v1/batch", routes.segment_batch, methods=post),
        Route("/v1/import", routes.segment_batch, methods=post),
        *[Route(f"/v1/{kind}", routes.segment_single, methods=post)
          for kind in ("track", "identify", "page", "screen", "group", "alias")],
        Route("/v1/events", routes.native_events, methods=post),
        *[Route(path, routes.posthog_v0, methods=post)
          for path in ("/batch/", "/capture/", "/e/")],
        Route("/i/v1/analytics/events", routes.posthog_v1, methods=post),
        # ``:path``: a user id may hold "/" (sent as is or as %2F); the stream and ack routes
        # come first, so ".../stream" and ".../ack" are those operations.
        Route("/v1/guidance/{user_id:path}/stream", guidance.stream, methods=get),
        Route("/v1/guidance/{user_id:path}/ack", guidance.ack, methods=post),
        Route("/v1/guidance/{user_id:path}", guidance.poll, methods=get),
        Route("/v1/users/{user_id:path}", admin.user_state, methods=get),
        Route("/v1/hotspots", admin.hotspots, methods=get),
        Route("/v1/pyfriction.js", script, methods=get),
        Route("/v1/pyfriction.{version}.js", script_versioned, methods=get),
        Route("/livez", livez, methods=get),
        Route("/readyz", readyz, methods=get),
        Route("/metrics", metrics, methods=get),
        Route("/openapi.json", openapi_json, methods=get),
    ]  # fmt: skip
    app = SidecarApp(
        routes=route_list,
        lifespan=_lifespan(sc),
        exception_handlers={HTTPError: _http_error, StarletteHTTPException: _starlette_error},
    )
    app.state.sidecar = sc
    return app


class SidecarApp(Starlette):
    """Starlette with :class:`SidecarMiddleware` outside everything (Starlette's own error
    middleware included), so the ingest endpoints skip those layers."""

    def build_middleware_stack(self) -> ASGIApp:
        hot = {r.path: r.app for r in self.routes
               if isinstance(r, Route) and isinstance(r.endpoint, routes.Endpoint)}  # fmt: skip
        return SidecarMiddleware(super().build_middleware_stack(), self.state.sidecar, hot)


_TIMEOUT_BODY = b'{"success":false,"code":"request_timeout","message":"the headers did not arrive in time"}'
_TIMEOUT_RESPONSE = (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nconnection: close\r\n"
                     b"content-length: " + str(len(_TIMEOUT_BODY)).encode() + b"\r\n\r\n" + _TIMEOUT_BODY)  # fmt: skip


def header_timeout_protocol(base: type[asyncio.Protocol], timeout: float) -> type[asyncio.Protocol]:
    """uvicorn's httptools protocol with a header timeout. uvicorn times out idle kept-alive
    connections only: a connection that never sends a byte, or sends its headers one byte at
    a time, would stay open for ever (slowloris). Here the headers of every request must be
    complete within ``timeout`` seconds of the connection (or of the request's first byte);
    else 408 and the connection is closed. The body has its own limit (``body_timeout``)."""

    class HeaderTimeoutProtocol(base):  # type: ignore[valid-type,misc]
        _header_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._arm_header_timer()

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._arm_header_timer()

        def on_headers_complete(self) -> None:
            self._disarm_header_timer()
            super().on_headers_complete()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm_header_timer()
            super().connection_lost(exc)

        def _arm_header_timer(self) -> None:
            if self._header_timer is None:
                self._header_timer = self.loop.call_later(timeout, self._headers_late)

        def _disarm_header_timer(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _headers_late(self) -> None:
            self._header_timer = None
            transport = self.transport
            if transport.is_closing():
                return
            cycle = self.cycle
            if cycle is not None and not cycle.response_complete:
                # A pipelined request waits behind one still being answered (reading may be
                # paused meanwhile): its clock starts once that one is done.
                self._arm_header_timer()
                return
            transport.write(_TIMEOUT_RESPONSE)
            transport.close()

    HeaderTimeoutProtocol.__name__ = HeaderTimeoutProtocol.__qualname__ = "HeaderTimeout" + base.__name__
    return HeaderTimeoutProtocol


def server_config(app: Starlette, settings: Settings, **overrides: Any) -> uvicorn.Config:
    """uvicorn's config for the sidecar: httptools (with a header timeout) + uvloop when
    installed, our JSON logs."""
    options: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "log_config": None,
        "access_log": False,
        "server_header": False,
        "timeout_graceful_shutdown": settings.shutdown_timeout,
        "timeout_keep_alive": 30,
        "backlog": 8192,
        "lifespan": "on",
        "proxy_headers": False,  # no X-Forwarded-* rewriting: one ASGI layer less per request
    }
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

        options["http"] = header_timeout_protocol(HttpToolsProtocol, settings.header_timeout)
    except ImportError:  # httptools is a dependency: only a broken install gets here
        log.warning("httptools is not installed: h11, without a header timeout")
        options["http"] = "h11"
    try:
        import uvloop  # noqa: F401

        options["loop"] = "uvloop"
    except ImportError:
        options["loop"] = "asyncio"
    options.update(overrides)
    return uvicorn.Config(app, **options)


class Server(uvicorn.Server):
    """uvicorn's server; at shutdown it first ends the guidance streams (they never end by
    themselves), then lets uvicorn stop accepting and finish in-flight requests, then the
    lifespan drains the journal and snapshots."""

    async def shutdown(self, sockets: list[Any] | None = None) -> None:
        app = self.config.app
        sc = getattr(getattr(app, "state", None), "sidecar", None)
        if sc is not None:
            sc.hub.close()
        await super().shutdown(sockets)
