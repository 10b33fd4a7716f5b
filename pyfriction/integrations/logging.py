"""logging: error log records that carry a user become ``error`` events.

The user is the record's own (``log.error("...", extra={"user_id": "u42"})``, optionally
with ``account_id`` and ``step``) or the current context's (:func:`pyfriction.set_user`, or
the request's user under a framework integration). Records without a user, and pyfriction's
own, are ignored. The ``target`` is the logger name, so the same failing component
repeating is a ``repeat_failure``.

By default :func:`pyfriction.init` installs a :class:`FrictionHandler` on the root logger for
records at ``ERROR`` and above (``LoggingIntegration(level=logging.WARNING)`` to change it).
It can also be attached by hand::

    import logging
    from pyfriction.integrations.logging import FrictionHandler

    logging.getLogger("myapp").addHandler(FrictionHandler())
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from .. import sdk
from . import Integration
from ._common import RequestFriction

__all__ = ["FrictionHandler", "LoggingIntegration"]

_guard = threading.local()
#: Loggers through which frameworks report a request's failure that their integration observes.
FRAMEWORK_LOGGERS = frozenset({"django.request", "django.server"})


class FrictionHandler(logging.Handler):
    """A :class:`logging.Handler` observing error records of a known user as ``error`` events."""

    def __init__(self, level: int = logging.ERROR) -> None:
        super().__init__(level)

    def emit(self, record: logging.LogRecord) -> None:
        name = record.name
        if name == "pyfriction" or name.startswith("pyfriction.") or getattr(_guard, "busy", False):
            return
        uid: str | None = getattr(record, "user_id", None)
        account = getattr(record, "account_id", None)
        step = getattr(record, "step", None)
        ctx = sdk.user_var.get()
        if isinstance(ctx, RequestFriction) and ((ctx.error_seen and record.exc_info) or name in FRAMEWORK_LOGGERS):
            return  # the web integration observes this failure itself
        if uid is None:
            if ctx is None:
                return
            uid = ctx.user_id
            if uid is None:
                return
            account = account if account is not None else ctx.account_id
            step = step if step is not None else ctx.step
        props: dict[str, Any] = {"logger": name, "level": record.levelname}
        if record.exc_info and record.exc_info[0] is not None:
            props["exception"] = record.exc_info[0].__name__
        _guard.busy = True
        try:
            sdk.observe({"user_id": str(uid), "account_id": account, "type": "error", "step": step,
                         "target": name, "properties": props})  # fmt: skip
        except Exception:
            sdk.count_integration_error()
        finally:
            _guard.busy = False


class _IntegrationHandler(FrictionHandler):
    """The root-logger handler of :class:`LoggingIntegration`: follows the active options."""

    def emit(self, record: logging.LogRecord) -> None:
        active = LoggingIntegration.active
        if active is None or record.levelno < active.level:
            return
        super().emit(record)


class LoggingIntegration(Integration):
    """Installs a :class:`FrictionHandler` on the root logger (records at ``level`` and up)."""

    identifier = "logging"
    requires = ()

    def __init__(self, level: int = logging.ERROR) -> None:
        self.level = level

    def setup_once(self) -> None:
        logging.getLogger().addHandler(_IntegrationHandler(logging.NOTSET))
