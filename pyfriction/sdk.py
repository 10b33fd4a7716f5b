"""The SDK: :func:`init` and the module-level API, in the style of ``sentry_sdk``.

One :func:`init` call configures the default :class:`~pyfriction.Tracker` (config, store,
sampling, a ``before_observe`` hook, integrations, flush at exit); the module-level
:func:`observe` and friends use it from anywhere in the host. :func:`set_user` and
:func:`user_context` attach a user to the current context (``contextvars``: a thread, or an
asyncio task), so code deep inside a request can observe an event without passing the user
around::

    import pyfriction

    pyfriction.init(sample_rate=1.0, before_observe=lambda event: event)
    with pyfriction.user_context("u42", account_id="acme"):
        pyfriction.observe({"type": "form_error", "target": "#date-format"})

Everything here is re-exported by the ``pyfriction`` package. The default tracker itself is
kept on the package (``pyfriction._default``), where older code and tests look for it.
"""

from __future__ import annotations

import atexit
import contextlib
import contextvars
import logging
import math
import os
import sys
import threading
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, Literal

import numpy as np

from ._episodes import Episode
from ._hashing import _mix
from .config import Config, ConfigError
from .events import Event, columns_of, columns_to_rows
from .tracker import Tracker

__all__ = [
    "BeforeObserve",
    "UserContext",
    "close",
    "counters",
    "current_user",
    "flush",
    "get_tracker",
    "init",
    "is_enabled",
    "observe",
    "observe_many",
    "on_friction",
    "set_user",
    "user_context",
]

log = logging.getLogger("pyfriction")

#: ``before_observe(event) -> event | None``: redact (return a changed event) or drop (None).
BeforeObserve = Callable[[Any], Any]

MEMORY_STORE = "memory://"
_FALSE = frozenset({"0", "false", "no", "off", ""})
_TRUE = frozenset({"1", "true", "yes", "on"})


class _Options:
    """What :func:`init` set: read on every module-level call, so kept flat."""

    __slots__ = ("enabled", "sample_rate", "threshold", "before_observe", "debug",
                 "shutdown_timeout", "store", "integrations", "fast")  # fmt: skip

    def __init__(self) -> None:
        self.enabled = True
        self.sample_rate = 1.0
        self.threshold = 1 << 64  # users whose sampling hash is below it are kept
        self.before_observe: BeforeObserve | None = None
        self.debug = False
        self.shutdown_timeout = 2.0
        self.store = MEMORY_STORE
        self.integrations: dict[str, Any] = {}
        #: Nothing to do but hand the event to the tracker (enabled, no hook, no sampling).
        self.fast = True


#: The options :func:`init` set (the integrations read them on every request).
options = _Options()
_lock = threading.Lock()
#: How many events the SDK dropped, and why (see :func:`counters`).
_counters = {"sampled_out": 0, "dropped_by_hook": 0, "hook_errors": 0, "integration_errors": 0}


def _pkg() -> Any:
    return sys.modules[__name__.rpartition(".")[0]]


# -- the user context ------------------------------------------------------------------------


class UserContext:
    """Who the current code runs for: set by :func:`set_user`, :func:`user_context` or an
    integration (for the duration of a request).

    ``user_id`` may be resolved lazily: integrations pass a ``resolve()`` callable returning
    ``(user_id, account_id)`` (or None), called the first time the id is needed, so an
    unauthenticated request or one that never observes anything costs nothing.
    """

    __slots__ = ("_user_id", "_account_id", "traits", "_step", "_resolve")

    def __init__(
        self,
        user_id: str | None = None,
        account_id: str | None = None,
        traits: Mapping[str, Any] | None = None,
        step: str | None = None,
        resolve: Callable[[], Any] | None = None,
    ) -> None:
        self._user_id = user_id
        self._account_id = account_id
        self.traits = traits
        self._step = step
        # True: a subclass resolves the user in an overridden _find().
        self._resolve: Callable[[], Any] | Literal[True] | None = resolve

    @property
    def step(self) -> str | None:
        """Where the user is (a request's route template), or None."""
        return self._step

    def _find(self) -> Any:
        """The resolver's answer: ``(user_id, account_id)``, a user id, or None."""
        resolve = self._resolve
        return None if resolve is None or resolve is True else resolve()

    def _resolved(self) -> None:
        if self._resolve is None:
            return
        try:
            found = self._find()
        except Exception:
            _counters["integration_errors"] += 1
            log.debug("pyfriction: resolving the user failed", exc_info=True)
            found = None
        self._resolve = None
        if isinstance(found, tuple):
            uid, account = (found + (None, None))[:2]
        else:
            uid, account = found, None
        if uid is not None and uid != "":
            self._user_id = str(uid)
            if account is not None and self._account_id is None:
                self._account_id = str(account)

    def assign(self, user_id: str) -> None:
        """Set the user once they are known (an integration that resolves them late)."""
        self._user_id = user_id

    @property
    def user_id(self) -> str | None:
        if self._user_id is None and self._resolve is not None:
            self._resolved()
        return self._user_id

    @property
    def account_id(self) -> str | None:
        if self._user_id is None and self._resolve is not None:
            self._resolved()
        return self._account_id

    def __repr__(self) -> str:
        return f"UserContext(user_id={self._user_id!r}, account_id={self._account_id!r}, step={self.step!r})"


#: The current code's user (a request's, set by the integrations; see :func:`current_user`).
user_var: contextvars.ContextVar[UserContext | None] = contextvars.ContextVar("pyfriction_user", default=None)


def current_user() -> UserContext | None:
    """The :class:`UserContext` of the current context, or None."""
    return user_var.get()


def _identify(user_id: str, traits: Mapping[str, Any] | None) -> None:
    if not traits:
        return
    identify = getattr(get_tracker(), "identify", None)
    if identify is None:  # a tracker without the guidance engine: traits stay in the context
        return
    try:
        identify(user_id, dict(traits))
    except Exception:
        _counters["integration_errors"] += 1
        log.warning("pyfriction: identify(%r) failed", user_id, exc_info=True)


def set_user(
    user_id: str | None,
    account_id: str | None = None,
    traits: Mapping[str, Any] | None = None,
) -> None:
    """Attach ``user_id`` (and optionally ``account_id`` and ``traits``, e.g. ``{"plan":
    "pro"}``) to the current context; ``None`` clears it.

    Events observed through :func:`observe` without a ``user_id`` are then this user's. Like
    any ``contextvars`` value it is seen by this thread or asyncio task and the tasks it
    starts; integrations set and clear it around each request on their own. ``traits`` go to
    the tracker's ``identify()`` when it has one (the guidance rules use them).
    """
    if user_id is None:
        user_var.set(None)
        return
    user_id = str(user_id)
    step = None
    current = user_var.get()
    if current is not None:
        step = current.step  # the request's step carries over to the user it identified
    user_var.set(UserContext(user_id, account_id, traits, step))
    _identify(user_id, traits)


@contextlib.contextmanager
def user_context(
    user_id: str | None,
    account_id: str | None = None,
    traits: Mapping[str, Any] | None = None,
    *,
    step: str | None = None,
) -> Iterator[UserContext | None]:
    """``with pyfriction.user_context("u42"):`` the user (and ``step``) of the events observed
    inside the block; the previous context is back afterwards."""
    ctx = None if user_id is None else UserContext(str(user_id), account_id, traits, step)
    token = user_var.set(ctx)
    try:
        if ctx is not None:
            _identify(ctx._user_id, traits)  # type: ignore[arg-type]
        yield ctx
    finally:
        user_var.reset(token)


# -- init --------------------------------------------------------------------------------------


def _env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ConfigError(f"environment variable {name}={raw!r}: expected 1/0, true/false, yes/no or on/off")


def _env_float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None or not raw.strip():
        return default
    try:
        return float(raw)
    except ValueError:
        raise ConfigError(f"environment variable {name}={raw!r}: expected a number") from None


def _check_rate(rate: Any) -> float:
    try:
        value = float(rate)
    except (TypeError, ValueError):
        raise ConfigError(f"sample_rate must be a number in [0, 1], not {rate!r}") from None
    if not (0.0 <= value <= 1.0) or math.isnan(value):
        raise ConfigError(f"sample_rate must be in [0, 1], not {rate!r}")
    return value


def init(
    config: None | Config | Mapping[str, Any] | str | os.PathLike[str] = None,
    *,
    store: str | None = None,
    integrations: Sequence[Any] | None = None,
    default_integrations: bool = True,
    before_observe: BeforeObserve | None = None,
    sample_rate: float | None = None,
    enabled: bool | None = None,
    debug: bool | None = None,
    shutdown_timeout: float | None = None,
    **tracker_options: Any,
) -> Tracker:
    """Configure pyfriction for this process and return the default tracker.

    - ``config``: a :class:`~pyfriction.Config`, a mapping or a TOML path; default
      ``$PYFRICTION_CONFIG``, else the built-in defaults.
    - ``store``: where user state lives, ``"memory://"`` (default, ``$PYFRICTION_STORE``) or a
      shared ``"file:///path/friction.state"`` when the tracker supports it.
    - ``integrations``: integration instances to set up (e.g. ``FlaskIntegration()``), on top
      of the defaults unless ``default_integrations=False``. A default integration whose
      framework is not installed is skipped quietly; an explicit one raises.
    - ``before_observe(event) -> event | None``: called with every event observed through the
      module-level API and the integrations, to redact it (return a changed event) or drop it
      (return None). If it raises, the event is dropped and the error logged.
    - ``sample_rate`` (default 1.0, ``$PYFRICTION_SAMPLE_RATE``): the share of *users*
      tracked, chosen by a stable hash of the user id, so a user is either fully in or out,
      in every process.
    - ``enabled`` (default True, ``$PYFRICTION_ENABLED``): False makes the module-level API
      and the integrations no-ops (the config is still validated), e.g. in tests.
    - ``debug`` (default False, ``$PYFRICTION_DEBUG``): log pyfriction's own activity to stderr.
    - ``shutdown_timeout`` (default 2.0 s, ``$PYFRICTION_SHUTDOWN_TIMEOUT``): how long the exit
      hook waits for queued ``on_friction`` callbacks.
    - Further keywords are :class:`~pyfriction.Tracker`'s (``engine``, ``capacity``...) or
      config overrides.

    An explicit argument wins over its environment variable. Callbacks registered on a
    previous default tracker carry over; the previous tracker is closed.
    """
    if config is None:
        config = os.environ.get("PYFRICTION_CONFIG") or None
    if store is None:
        store = os.environ.get("PYFRICTION_STORE") or MEMORY_STORE
    enabled = _env_bool("PYFRICTION_ENABLED", True) if enabled is None else bool(enabled)
    debug = _env_bool("PYFRICTION_DEBUG", False) if debug is None else bool(debug)
    rate = _check_rate(_env_float("PYFRICTION_SAMPLE_RATE", 1.0) if sample_rate is None else sample_rate)
    timeout = _env_float("PYFRICTION_SHUTDOWN_TIMEOUT", 2.0) if shutdown_timeout is None else float(shutdown_timeout)
    if before_observe is not None and not callable(before_observe):
        raise TypeError(f"before_observe must be callable, not {type(before_observe).__name__}")
    if not isinstance(store, str):
        raise ConfigError(f"store must be a URL string such as 'memory://', not {type(store).__name__}")
    tracker_options["store"] = store
    if debug:
        _enable_debug_logging()

    tracker = Tracker(config, **tracker_options)
    pkg = _pkg()
    with _lock:
        old, pkg._default = pkg._default, tracker
        opts = options
        opts.enabled = enabled
        opts.sample_rate = rate
        opts.threshold = int(rate * (1 << 64))
        opts.before_observe = before_observe
        opts.debug = debug
        opts.shutdown_timeout = timeout
        opts.store = store
        opts.fast = enabled and rate >= 1.0 and before_observe is None
    if old is not None and old is not tracker:
        tracker.adopt_callbacks(old)
        old.close()

    from .integrations import setup_integrations

    options.integrations = setup_integrations(integrations or (), default_integrations)
    log.debug(
        "pyfriction: init engine=%s store=%s enabled=%s sample_rate=%s integrations=%s",
        tracker.engine, store, enabled, rate, sorted(options.integrations),
    )  # fmt: skip
    return tracker


def _enable_debug_logging() -> None:
    logger = logging.getLogger("pyfriction")
    logger.setLevel(logging.DEBUG)
    if not any(getattr(h, "_pyfriction_debug", False) for h in logger.handlers):
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("[pyfriction] %(levelname)s %(message)s"))
        handler._pyfriction_debug = True  # type: ignore[attr-defined]
        logger.addHandler(handler)


def is_enabled() -> bool:
    """False after ``init(enabled=False)`` (or ``PYFRICTION_ENABLED=0``)."""
    return options.enabled


def count_integration_error() -> None:
    """Count a failure inside an integration (see :func:`counters`); integrations never raise."""
    _counters["integration_errors"] += 1


def counters() -> dict[str, int]:
    """Events the SDK kept from the tracker: ``sampled_out``, ``dropped_by_hook``,
    ``hook_errors``; and ``integration_errors``, failures an integration swallowed to keep
    a request alive."""
    return dict(_counters)


def get_tracker() -> Tracker:
    """The default tracker, created with the defaults if :func:`init` was not called."""
    pkg = _pkg()
    tracker = pkg._default
    if tracker is None:
        with _lock:
            if pkg._default is None:
                pkg._default = Tracker(os.environ.get("PYFRICTION_CONFIG") or None)
            tracker = pkg._default
    return tracker  # type: ignore[no-any-return]


# -- the event path ------------------------------------------------------------------------------


def sampled(user_id: str) -> bool:
    """True when ``user_id`` is in the sample (always at ``sample_rate=1``)."""
    if options.sample_rate >= 1.0:
        return True
    return (
        _mix(zlib.crc32(user_id.encode("utf-8", "surrogatepass")) * 0x9E3779B97F4A7C15 & ((1 << 64) - 1))
        < options.threshold
    )


def _prepare(event: Any) -> Any:
    """The event to hand to the tracker after the context, sampling and the hook; None to drop."""
    opts = options
    if not opts.enabled:
        return None
    if isinstance(event, Mapping) and event.get("user_id") is None:
        ctx = user_var.get()
        if ctx is not None:
            uid = ctx.user_id
            if uid is not None:
                event = dict(event)
                event["user_id"] = uid
                if event.get("account_id") is None and ctx._account_id is not None:
                    event["account_id"] = ctx._account_id
                if event.get("step") is None and ctx.step is not None:
                    event["step"] = ctx.step
    if opts.sample_rate < 1.0:
        uid = event.get("user_id") if isinstance(event, Mapping) else getattr(event, "user_id", None)
        if isinstance(uid, str) and not sampled(uid):
            _counters["sampled_out"] += 1
            return None
    hook = opts.before_observe
    if hook is not None:
        try:
            event = hook(event)
        except Exception:
            _counters["hook_errors"] += 1
            log.exception("pyfriction: before_observe failed; the event is dropped")
            return None
        if event is None:
            _counters["dropped_by_hook"] += 1
            return None
    return event


def observe(event: Mapping[str, Any] | Event) -> float:
    """:meth:`Tracker.observe` on the default tracker, after the SDK's options.

    A mapping without ``user_id`` is the current context's user's (see :func:`set_user`);
    it also takes the context's ``account_id`` and ``step`` when it has none. Returns 0.0
    for an event that is dropped (disabled, sampled out, dropped by ``before_observe``).
    """
    tracker = _pkg()._default or get_tracker()
    if options.fast and type(event) is dict and event.get("user_id") is not None:
        return tracker.observe(event)
    prepared = _prepare(event)
    if prepared is None:
        return 0.0
    return tracker.observe(prepared)


def observe_many(events: Iterable[Any] | Mapping[str, Any]) -> np.ndarray:
    """:meth:`Tracker.observe_many` on the default tracker, after the SDK's options.

    Dropped events (see :func:`observe`) score 0.0; the result has one score per input event.
    """
    tracker = _pkg()._default or get_tracker()
    if options.fast and not user_var.get():
        return tracker.observe_many(events)
    if isinstance(events, Mapping):
        # The tracker's own column parser: the same InvalidEvent for the same bad batch.
        n, cols = columns_of(events)
        items: list[Any] = list(columns_to_rows(cols, 0, n))
    else:
        items = list(events)
    if not options.enabled:
        return np.zeros(len(items))
    kept: list[Any] = []
    where: list[int] = []
    for i, item in enumerate(items):
        prepared = _prepare(item)
        if prepared is not None:
            kept.append(prepared)
            where.append(i)
    out = np.zeros(len(items))
    if kept:
        out[where] = tracker.observe_many(kept)
    return out


def on_friction(callback: Callable[[Episode], Any] | None = None, *, sync: bool = False) -> Any:
    """:meth:`Tracker.on_friction` on the default tracker (also a decorator)."""
    return get_tracker().on_friction(callback, sync=sync)


def flush(timeout: float | None = None) -> bool:
    """Wait for the default tracker's queued callbacks."""
    tracker = _pkg()._default
    return tracker.flush(timeout) if tracker is not None else True


def close(timeout: float | None = None) -> bool:
    """Flush and close the default tracker."""
    tracker = _pkg()._default
    return tracker.close(timeout) if tracker is not None else True


def _flush_at_exit() -> None:
    tracker = getattr(_pkg(), "_default", None)
    if tracker is not None:
        try:
            tracker.close(timeout=options.shutdown_timeout)
        except Exception:  # at exit, never a traceback from us
            pass


def _after_fork_in_child() -> None:
    # The lock may have been held by another thread at fork time: a fresh one. The tracker's
    # dispatcher restarts its own thread in the child; queued episodes stay the parent's.
    global _lock
    _lock = threading.Lock()


atexit.register(_flush_at_exit)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
