"""Flask: an extension with ``init_app``, observing every request through Flask's signals.

::

    import pyfriction
    from pyfriction.integrations.flask import PyFriction

    pyfriction.init()
    PyFriction(app)            # or: friction = PyFriction(); friction.init_app(app)

(:func:`pyfriction.init` alone already observes every Flask app through the default
:class:`FlaskIntegration`; the extension is for per-app options.)

The user is ``get_user()``'s (called in the request context; returns an id, a user object,
``(user_id, account_id)`` or None), else ``flask_login.current_user`` when Flask-Login is
installed and the app has a login manager. The step is the URL rule (``/items/<int:id>``).
Failures map as in the ASGI middleware: 400/422 → ``form_error``, other 4xx/5xx →
``api_error``, an unhandled exception → ``error``; slow responses → ``slow_response``;
successful HTML GETs → ``page``. ``flask.g.pyfriction`` is the request's
:class:`~pyfriction.integrations._common.RequestFriction` (``.pending()`` guidance...);
``guidance_header=True`` adds pending guidance to responses in ``X-Pyfriction-Guidance``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import flask
from flask import signals

from .. import sdk
from . import Integration
from ._common import (
    GUIDANCE_HEADER,
    SLOW_AFTER,
    RequestFriction,
    failed,
    header_value,
    normalize,
    response_events,
    user_of,
)

__all__ = ["FlaskIntegration", "PyFriction"]

EXTENSION = "pyfriction"


class _Options:
    def __init__(
        self,
        get_user: Callable[[], Any] | None = None,
        slow_after: float | None = SLOW_AFTER,
        pages: bool = True,
        guidance_header: bool = False,
        header_name: str = GUIDANCE_HEADER,
    ) -> None:
        self.get_user = get_user
        self.slow_after = slow_after
        self.pages = pages
        self.guidance_header = guidance_header
        self.header_name = header_name


class PyFriction:
    """The Flask extension: ``PyFriction(app, get_user=None, slow_after=3.0, pages=True,
    guidance_header=False)`` or ``PyFriction(...).init_app(app)``."""

    def __init__(self, app: flask.Flask | None = None, **options: Any) -> None:
        self.options = _Options(**options)
        if app is not None:
            self.init_app(app)

    def init_app(self, app: flask.Flask) -> None:
        app.extensions[EXTENSION] = self.options
        _connect()


class FlaskIntegration(Integration):
    """Observes every Flask app (those without the extension get these options)."""

    identifier = "flask"
    requires = ("flask",)

    def __init__(self, **options: Any) -> None:
        self.options = _Options(**options)

    def setup_once(self) -> None:
        _connect()


_connected = False


def _connect() -> None:
    global _connected
    if _connected:
        return
    signals.request_started.connect(_started, weak=False)
    signals.got_request_exception.connect(_exception, weak=False)
    signals.request_finished.connect(_finished, weak=False)
    signals.request_tearing_down.connect(_teardown, weak=False)
    _connected = True


def _options_of(app: flask.Flask) -> _Options | None:
    opts = app.extensions.get(EXTENSION)
    if opts is not None:
        return opts  # type: ignore[no-any-return]
    active = FlaskIntegration.active
    return None if active is None else active.options


def _resolve_user(opts: _Options) -> Any:
    if opts.get_user is not None:
        return normalize(opts.get_user())
    app = flask.current_app
    if getattr(app, "login_manager", None) is not None:
        try:
            from flask_login import current_user
        except ImportError:
            return None
        uid = user_of(current_user._get_current_object())
        return None if uid is None else (uid, None)
    return None


def _step() -> str | None:
    rule = flask.request.url_rule
    return None if rule is None else rule.rule


def _started(sender: flask.Flask, **_: Any) -> None:
    if not sdk.options.enabled:
        return
    try:
        opts = _options_of(sender)
        if opts is None:
            return
        ctx = RequestFriction(lambda: _resolve_user(opts), _step)
        flask.g.pyfriction = ctx
        flask.g._pyfriction = [opts, sdk.user_var.set(ctx), time.perf_counter(), None]
    except Exception:
        failed("request set-up")


def _exception(sender: flask.Flask, exception: BaseException, **_: Any) -> None:
    state = flask.g.get("_pyfriction")
    if state is not None:
        state[3] = exception
        ctx = flask.g.get("pyfriction")
        if isinstance(ctx, RequestFriction):
            ctx.error_seen = True


def _finished(sender: flask.Flask, response: flask.Response, **_: Any) -> None:
    state = flask.g.get("_pyfriction")
    if state is None:
        return
    try:
        opts, _token, start, exc = state
        duration = time.perf_counter() - start
        code = response.status_code
        page = opts.pages and code < 300 and flask.request.method == "GET" and response.mimetype == "text/html"
        slow = opts.slow_after is not None and duration >= opts.slow_after
        ctx = sdk.user_var.get()
        if opts.guidance_header and code < 400 and isinstance(ctx, sdk.UserContext):
            items = ctx.pending() if isinstance(ctx, RequestFriction) else []
            if items:
                response.headers[opts.header_name] = header_value(items).decode("ascii")
        if exc is None and code < 400 and not slow and not page:
            return
        if ctx is None:
            return
        uid = ctx.user_id
        if uid is None:
            return
        response_events(uid, ctx.account_id, ctx.step or _step(), flask.request.method, code, duration,
                        exc, opts.slow_after, page)  # fmt: skip
        state[3] = None
    except Exception:
        failed("observing the response")


def _teardown(sender: flask.Flask, exc: BaseException | None = None, **_: Any) -> None:
    state = flask.g.get("_pyfriction")
    if state is None:
        return
    try:
        if state[3] is not None and exc is not None:
            # an exception that never produced a response (propagated, e.g. in testing mode)
            opts, _token, start, error = state
            ctx = sdk.user_var.get()
            uid = ctx.user_id if ctx is not None else None
            if uid is not None:
                response_events(uid, ctx.account_id, ctx.step or _step(), flask.request.method, 500,  # type: ignore[union-attr]
                                time.perf_counter() - start, error, None, False)  # fmt: skip
    except Exception:
        failed("observing the exception")
    finally:
        flask.g._pyfriction = None
        try:
            sdk.user_var.reset(state[1])
        except ValueError:
            sdk.user_var.set(None)
