"""Structured logs: one JSON object per line on stderr.

Every record carries ``ts`` (epoch seconds), ``level``, ``logger`` and ``msg``, plus any
``extra={...}`` fields the caller gave (``route``, ``status``, ``code``, ``events``...). User
ids are never logged by the sidecar itself.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import msgspec

__all__ = ["JSONFormatter", "log", "setup_logging"]

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
