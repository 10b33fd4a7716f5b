"""Client errors: one exception type, answered as ``{"code": ..., "message": ...}`` JSON.

The body shape is the one Segment's and RudderStack's SDKs read on a failure (``code`` and
``message``) and carries ``detail`` for PostHog's; ``Retry-After`` rides along for 429/503.
"""

from __future__ import annotations

import msgspec
from starlette.responses import Response

__all__ = ["HTTPError", "StateError", "error_response"]


class StateError(RuntimeError):
    """The state directory cannot be used (locked by another sidecar, damaged snapshot...)."""


class HTTPError(Exception):
    """A request the sidecar refuses: ``status`` (4xx/503), a short machine ``code``, a message."""

    def __init__(self, status: int, code: str, message: str, *, retry_after: int | None = None,
                 close: bool = False) -> None:  # fmt: skip
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.retry_after = retry_after
        #: Close the connection after answering (the body was not read to its end).
        self.close = close


_encode = msgspec.json.encode


def error_response(exc: HTTPError) -> Response:
    """The JSON response for ``exc``."""
    headers = {}
    if exc.retry_after is not None:
        headers["Retry-After"] = str(exc.retry_after)
    if exc.close:
        headers["Connection"] = "close"
    body = _encode({"success": False, "code": exc.code, "message": exc.message, "detail": exc.message})
    return Response(body, status_code=exc.status, media_type="application/json", headers=headers)
