"""Structured logs: one JSON object per line on stderr.

Every record carries ``ts`` (epoch seconds), ``level``, ``logger`` and ``msg``, plus any
``extra={...}`` fields the caller gave (``route``, ``status``, ``code``, ``events``...). User
ids are never logged by the sidecar itself: requests are named by their route template.

Repeated warnings and errors are rate-limited (:class:`LogLimiter`): a client can make the
sidecar warn (a bad batch, a malformed request), and must not be able to fill the disk or
the log pipeline with it. The lines held back are counted in
``pyfriction_log_lines_suppressed_total``, and the next line of the same message says how
many (``suppressed``).
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from typing import Any

import msgspec

__all__ = ["LIMITED_LOGGERS", "LIMITER", "JSONFormatter", "LogLimiter", "log", "setup_logging"]

#: The loggers a client's input can make write: the sidecar's, the engine's, uvicorn's.
LIMITED_LOGGERS = ("pyfriction.server", "pyfriction", "uvicorn.error")

log = logging.getLogger("pyfriction.server")

#: Record attributes that are not extra fields (uvicorn's ``color_message`` is its message
#: again, with terminal colour codes).
_STANDARD = frozenset(vars(logging.makeLogRecord({})).keys()) | {"message", "asctime", "taskName", "color_message"}


class JSONFormatter(logging.Formatter):
    """Formats a record as a single JSON line."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": round(record.created, 6),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                doc[key] = value
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return msgspec.json.encode(doc, enc_hook=repr).decode()


def setup_logging(level: str = "info") -> None:
    """Route the sidecar's, the engine's and uvicorn's logs through :class:`JSONFormatter`."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JSONFormatter())
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        lg = logging.getLogger(name)
        lg.handlers = []
        lg.propagate = True
    logging.getLogger("uvicorn.access").disabled = True  # the sidecar logs requests itself


class LogLimiter(logging.Filter):
    """Lets through at most ``burst`` warnings (and errors) of the same message per
    ``period`` seconds; each ``listeners(level)`` counts each one held back, and the first
    line of the next period carries ``suppressed`` (how many were held back before it).

    Messages are told apart by logger, level and format string (not the arguments), so a
    message repeated with different values is still one message."""

    #: Distinct messages tracked at most (format strings are code, so few; this bounds the
    #: memory should a caller format its message itself).
    MAX_KEYS = 1024

    def __init__(self, burst: int = 10, period: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.burst = burst
        self.period = period
        self.clock = clock
        #: Called with the level name of each line held back (each running sidecar counts).
        self.listeners: list[Callable[[str], None]] = []
        #: (logger, level, message) -> [period start, lines let through, lines held back]
        self._slots: dict[tuple[str, int, str], list[float]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        key = (record.name, record.levelno, record.msg if isinstance(record.msg, str) else type(record.msg).__name__)
        now = self.clock()
        slot = self._slots.get(key)
        if slot is None or now - slot[0] >= self.period:
            if slot is None and len(self._slots) >= self.MAX_KEYS:
                self._slots.clear()
            if slot is not None and slot[2]:
                record.suppressed = int(slot[2])
            self._slots[key] = [now, 1.0, 0.0]
            return True
        if slot[1] < self.burst:
            slot[1] += 1
            return True
        slot[2] += 1
        for listener in self.listeners:
            listener(record.levelname.lower())
        return False

    def install(self, listener: Callable[[str], None]) -> None:
        """Attach to the :data:`LIMITED_LOGGERS` (once) and count into ``listener``."""
        for name in LIMITED_LOGGERS:
            logging.getLogger(name).addFilter(self)  # no-op when attached already
        self.listeners.append(listener)

    def remove(self, listener: Callable[[str], None]) -> None:
        """Stop counting into ``listener``; detach when it was the last one."""
        if listener in self.listeners:
            self.listeners.remove(listener)
        if not self.listeners:
            for name in LIMITED_LOGGERS:
                logging.getLogger(name).removeFilter(self)


#: The process's limiter: the loggers are process-wide, so one limiter serves every sidecar
#: of the process (tests run several).
LIMITER = LogLimiter()
