"""What every web integration shares: failure mapping, user resolution, guidance access, and
the rule that a pyfriction failure never becomes the host's failure."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

import msgspec

from .. import sdk

log = logging.getLogger("pyfriction")

#: Statuses that mean "the input was rejected": the user is fighting a form.
FORM_STATUSES = frozenset({400, 422})
#: Default seconds after which a response counts as slow (event type ``slow_response``).
SLOW_AFTER = 3.0
#: Event types a browser may send through the guidance endpoint (the rest are server-side).
BROWSER_TYPES = frozenset({"page", "click", "dead_click", "error", "search", "help", "contact"})
#: Guidance outcomes a browser may acknowledge.
OUTCOMES = frozenset({"shown", "clicked", "dismissed", "completed", "anchor_missing"})
#: Header carrying a user's pending guidance (JSON) for SPA clients, when asked for.
GUIDANCE_HEADER = "x-pyfriction-guidance"

_warned = 0


def failed(what: str) -> None:
    """Count and log a swallowed pyfriction failure (with traceback for the first few)."""
    global _warned
    sdk.count_integration_error()
    if _warned < 10:
        _warned += 1
        log.warning("pyfriction: %s failed; the request goes on unaffected", what, exc_info=True)
    else:
        log.debug("pyfriction: %s failed", what, exc_info=True)


def safe_observe(event: dict[str, Any]) -> None:
    """:func:`pyfriction.observe`, never raising."""
    try:
        sdk.observe(event)
    except Exception:
        failed("observe")


def status_type(status: int) -> str | None:
    """The event type of a response status: ``form_error``, ``api_error`` or None (success)."""
    if status < 400:
        return None
    return "form_error" if status in FORM_STATUSES else "api_error"


def response_events(
    user_id: str,
    account_id: str | None,
    step: str | None,
    method: str,
    status: int,
    duration: float,
    exc: BaseException | None,
    slow_after: float | None,
    page: bool,
) -> None:
    """Observe what one finished request says about the user's friction."""
    target = f"{method} {step}" if step else method
    if exc is not None:
        safe_observe({"user_id": user_id, "account_id": account_id, "type": "error", "step": step,
                      "target": target, "properties": {"status": 500, "exception": type(exc).__name__}})  # fmt: skip
    else:
        kind = status_type(status)
        if kind is not None:
            safe_observe({"user_id": user_id, "account_id": account_id, "type": kind, "step": step,
                          "target": target, "properties": {"status": status}})  # fmt: skip
        elif page:
            safe_observe({"user_id": user_id, "account_id": account_id, "type": "page", "step": step})
    if slow_after is not None and duration >= slow_after:
        safe_observe({"user_id": user_id, "account_id": account_id, "type": "slow_response", "step": step,
                      "target": target, "properties": {"duration_ms": round(duration * 1000.0)}})  # fmt: skip


def user_of(user: Any) -> str | None:
    """The id of a framework's user object (Starlette ``BaseUser``, Flask-Login, Django), or
    None for an anonymous one. A plain string is an id."""
    if user is None:
        return None
    if isinstance(user, str):
        return user or None
    authenticated = getattr(user, "is_authenticated", True)
    if callable(authenticated):  # very old Flask-Login / Django
        authenticated = authenticated()
    if not authenticated:
        return None
    for attr in ("identity", "get_id", "pk", "id", "username"):
        try:
            value = getattr(user, attr)
        except (AttributeError, NotImplementedError):
            continue
        if callable(value):
            try:
                value = value()
            except NotImplementedError:
                continue
        if value is not None and value != "":
            return str(value)
    return None


def normalize(found: Any) -> Any:
    """``get_user``'s answer as ``(user_id, account_id)`` or None."""
    if found is None:
        return None
    if isinstance(found, tuple):
        uid, account = (tuple(found) + (None, None))[:2]
        uid = user_of(uid)
        return None if uid is None else (uid, None if account is None else str(account))
    uid = user_of(found)
    return None if uid is None else (uid, None)


def pending(user_id: str | None) -> list[Any]:
    """The user's pending guidance (marked delivered), or [] (no user, no guidance engine)."""
    if not user_id or not sdk.options.enabled:
        return []
    fn = getattr(sdk.get_tracker(), "pending", None)
    if fn is None:
        return []
    try:
        return list(fn(user_id))
    except Exception:
        failed("pending guidance")
        return []


def ack(user_id: str | None, guidance_id: str, outcome: str) -> bool:
    """Acknowledge a guidance item; False when unknown (or no guidance engine)."""
    if not user_id:
        return False
    fn = getattr(sdk.get_tracker(), "ack", None)
    if fn is None:
        return False
    return bool(fn(user_id, guidance_id, outcome))


def guidance_builtins(items: list[Any]) -> list[Any]:
    return [msgspec.to_builtins(item) for item in items]


def header_value(items: list[Any]) -> bytes:
    """Guidance as an HTTP header value: compact ASCII JSON."""
    return json.dumps(guidance_builtins(items), separators=(",", ":"), ensure_ascii=True).encode("ascii")


def browser_events(payload: Any, user_id: str, account_id: str | None) -> int:
    """Observe the events a browser sent for ``user_id`` (whose id comes from the server's
    session, never from the payload); returns how many were taken."""
    events = payload.get("events", [payload]) if isinstance(payload, dict) else payload
    if not isinstance(events, list):
        return 0
    taken = 0
    for raw in events[:100]:
        if not isinstance(raw, dict) or raw.get("type") not in BROWSER_TYPES:
            continue
        event = {"user_id": user_id, "account_id": account_id, "type": raw["type"]}
        for key in ("step", "target"):
            value = raw.get(key)
            if isinstance(value, str) and value:
                event[key] = value[:200]
        props = raw.get("properties")
        if isinstance(props, dict):
            event["properties"] = {k: v for k, v in props.items() if k in ("results", "status")}
        safe_observe(event)
        taken += 1
    return taken


Resolver = Callable[[], Any]


def _no_step() -> None:
    return None


class RequestFriction(sdk.UserContext):
    """A request's user context: who (resolved lazily), where (the route template), and their
    guidance. The integrations expose it to handlers (``request.state.pyfriction`` in ASGI,
    ``flask.g.pyfriction``, ``request.pyfriction`` in Django). ``pending()`` marks what it
    returns delivered, so call it where you show it."""

    __slots__ = ("_step_of", "error_seen")

    def __init__(self, resolve: Resolver, step_of: Callable[[], str | None]) -> None:
        self._user_id = None
        self._account_id = None
        self.traits = None
        self._step = None
        self._resolve = resolve
        self._step_of = step_of
        #: The integration observed this request's unhandled exception (the logging
        #: integration then skips the framework's own log record of it).
        self.error_seen = False

    def release(self) -> None:
        """Drop the references to the request (called when it ends): the request refers to
        this context too, and a reference cycle per request would be garbage for the GC."""
        if self._resolve is not None:
            self._resolve = None
        self._step_of = _no_step

    @property
    def step(self) -> str | None:
        try:
            return self._step_of()
        except Exception:
            failed("finding the route")
            return None

    def pending(self) -> list[Any]:
        """The user's pending :class:`pyfriction.Guidance` (empty without a user)."""
        return pending(self.user_id)

    def ack(self, guidance_id: str, outcome: str) -> bool:
        """Acknowledge guidance shown to this user (see ``Tracker.ack``)."""
        return ack(self.user_id, guidance_id, outcome)

    def observe(self, event: Any) -> None:
        """Observe an event of this user at this step; never raises."""
        uid = self.user_id
        if uid is None:
            return
        ev = dict(event)
        ev.setdefault("user_id", uid)
        if self._account_id is not None:
            ev.setdefault("account_id", self._account_id)
        if ev.get("step") is None:
            ev["step"] = self.step
        safe_observe(ev)
