"""Django: a middleware for sync (WSGI) and async (ASGI) stacks alike.

Add it after ``AuthenticationMiddleware``::

    MIDDLEWARE = [
        ...,
        "django.contrib.auth.middleware.AuthenticationMiddleware",
        "pyfriction.integrations.django.FrictionMiddleware",
    ]

and call ``pyfriction.init()`` (e.g. in ``AppConfig.ready`` or ``settings.py``). Options come
from ``settings.PYFRICTION``: ``get_user`` (a callable or dotted path, ``get_user(request)``
returning an id, a user object, ``(user_id, account_id)`` or None), ``slow_after`` (3.0),
``pages`` (True), ``guidance_header`` (False).

The user is ``request.user``'s, the step the resolved URL pattern (``/items/<int:pk>/``).
In an async stack the middleware never touches the lazy ``request.user``: it awaits
``request.auser()`` when (and only when) it has something to observe at the end of the
request, and during the view uses a user the view has already loaded. Failures map as in the
other integrations; ``request.pyfriction`` is the request's
:class:`~pyfriction.integrations._common.RequestFriction` (``.pending()`` guidance...).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.utils.functional import empty
from django.utils.module_loading import import_string

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

__all__ = ["DjangoIntegration", "FrictionMiddleware"]


def _settings() -> dict[str, Any]:
    from django.conf import settings

    return dict(getattr(settings, "PYFRICTION", None) or {})


def _step(request: Any) -> str | None:
    match = getattr(request, "resolver_match", None)
    route = getattr(match, "route", None) if match is not None else None
    if not route or not isinstance(route, str):
        return None
    return route if route.startswith("/") else "/" + route


def _loaded_user(request: Any) -> Any:
    """The user if it is already loaded, without evaluating anything lazy (async-safe)."""
    user = request.__dict__.get("_acached_user")
    if user is not None:
        return user
    user = request.__dict__.get("_cached_user")
    if user is not None:
        return user
    lazy = request.__dict__.get("user")
    if lazy is not None:
        wrapped = getattr(lazy, "_wrapped", None)
        if wrapped is None:  # not a lazy object: a user set by hand
            return lazy
        if wrapped is not empty:
            return wrapped
    return None


class FrictionMiddleware:
    """Observes each request's outcome for its user; sync and async capable."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[Any], Any]) -> None:
        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)
        opts = _settings()
        get_user = opts.get("get_user")
        self.get_user: Callable[[Any], Any] | None = import_string(get_user) if isinstance(get_user, str) else get_user
        self.slow_after: float | None = opts.get("slow_after", SLOW_AFTER)
        self.pages: bool = bool(opts.get("pages", True))
        self.guidance_header: bool = bool(opts.get("guidance_header", False))
        self.header_name: str = opts.get("header_name", GUIDANCE_HEADER)

    # -- user resolution ---------------------------------------------------------------------
    def _sync_user(self, request: Any) -> Any:
        if self.get_user is not None:
            return normalize(self.get_user(request))
        uid = user_of(getattr(request, "user", None))
        return None if uid is None else (uid, None)

    def _async_safe_user(self, request: Any) -> Any:
        if self.get_user is not None:
            return normalize(self.get_user(request))
        uid = user_of(_loaded_user(request))
        return None if uid is None else (uid, None)

    # -- the request -------------------------------------------------------------------------
    def _begin(self, request: Any, resolve: Callable[[], Any]) -> Any:
        ctx = RequestFriction(resolve, lambda: _step(request))
        request.pyfriction = ctx
        return ctx, sdk.user_var.set(ctx), time.perf_counter()

    def __call__(self, request: Any) -> Any:
        if self.is_async:
            return self.__acall__(request)
        if not sdk.options.enabled:
            return self.get_response(request)
        try:
            ctx, token, start = self._begin(request, lambda: self._sync_user(request))
        except Exception:
            failed("request set-up")
            return self.get_response(request)
        try:
            response = self.get_response(request)
            self._finish(request, response, ctx, start)
            return response
        finally:
            ctx.release()
            _reset(token)

    async def __acall__(self, request: Any) -> Any:
        if not sdk.options.enabled:
            return await self.get_response(request)
        try:
            ctx, token, start = self._begin(request, lambda: self._async_safe_user(request))
        except Exception:
            failed("request set-up")
            return await self.get_response(request)
        try:
            response = await self.get_response(request)
            if self.get_user is None and ctx.user_id is None and _needs_user(self, request, response, start):
                auser = getattr(request, "auser", None)
                if auser is not None:
                    try:
                        user = await auser()
                        uid = user_of(user)
                        if uid is not None:
                            ctx.assign(uid)
                    except Exception:
                        failed("resolving the user")
            self._finish(request, response, ctx, start)
            return response
        finally:
            ctx.release()
            _reset(token)

    def process_exception(self, request: Any, exception: Exception) -> None:
        """Remember the view's exception (Django turns it into a 500 response after us)."""
        request._pyfriction_exception = exception
        ctx = getattr(request, "pyfriction", None)
        if isinstance(ctx, RequestFriction):
            ctx.error_seen = True
        return None

    def _finish(self, request: Any, response: Any, ctx: RequestFriction, start: float) -> None:
        try:
            code = int(response.status_code)
            duration = time.perf_counter() - start
            exc = request.__dict__.get("_pyfriction_exception")
            page = self._is_page(request, response, code)
            current = sdk.user_var.get()
            if self.guidance_header and code < 400 and isinstance(current, RequestFriction):
                items = current.pending()
                if items:
                    response[self.header_name] = header_value(items).decode("ascii")
            slow = self.slow_after is not None and duration >= self.slow_after
            if exc is None and code < 400 and not slow and not page:
                return
            if current is None:
                return
            uid = current.user_id
            if uid is None:
                return
            response_events(uid, current.account_id, current.step or _step(request), request.method, code,
                            duration, exc, self.slow_after, page)  # fmt: skip
        except Exception:
            failed("observing the response")

    def _is_page(self, request: Any, response: Any, code: int) -> bool:
        if not self.pages or code >= 300 or request.method != "GET":
            return False
        return str(response.get("Content-Type", "")).startswith("text/html")


def _needs_user(mw: FrictionMiddleware, request: Any, response: Any, start: float) -> bool:
    code = int(getattr(response, "status_code", 200))
    if code >= 400 or request.__dict__.get("_pyfriction_exception") is not None or mw.guidance_header:
        return True
    if mw.slow_after is not None and time.perf_counter() - start >= mw.slow_after:
        return True
    return mw._is_page(request, response, code)


def _reset(token: Any) -> None:
    try:
        sdk.user_var.reset(token)
    except ValueError:
        sdk.user_var.set(None)


class DjangoIntegration(Integration):
    """Present for symmetry: Django is instrumented by the middleware in ``MIDDLEWARE``."""

    identifier = "django"
    requires = ("django",)

    def setup_once(self) -> None:
        pass
