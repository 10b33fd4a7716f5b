"""Support endpoints, behind a secret admin key (never a publishable write key).

* ``GET /v1/users/{user_id}``: the user's current friction state (``Tracker.state``), for a
  support agent looking at a ticket; 404 when the user is not tracked.
* ``GET /v1/hotspots``: where friction concentrates (``Tracker.insights().hotspots``, the
  figures of ``pyfriction report``).
"""

from __future__ import annotations

from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from .errors import HTTPError
from .keys import client_address, header_key

__all__ = ["hotspots", "user_state"]


def _admin(request: Request) -> Any:
    sc = request.app.state.sidecar
    sc.keys.check_admin(request.headers.get("x-admin-key") or header_key(request.headers), client_address(request))
    return sc


async def user_state(request: Request) -> Response:
    """``GET /v1/users/{user_id}``."""
    sc = _admin(request)
    state = sc.state.tracker.state(request.path_params["user_id"])
    if state is None:
        raise HTTPError(404, "unknown_user", "this user is not tracked (never seen, or evicted)")
    return Response(msgspec.json.encode(state), media_type="application/json")


async def hotspots(request: Request) -> Response:
    """``GET /v1/hotspots``."""
    sc = _admin(request)
    insights = getattr(sc.state.tracker, "insights", None)
    if insights is None:
        raise HTTPError(503, "not_available", "this pyfriction has no insights (guidance not installed)")
    doc = msgspec.to_builtins(insights())
    return Response(msgspec.json.encode({"hotspots": doc.get("hotspots", []) if isinstance(doc, dict) else []}),
                    media_type="application/json")  # fmt: skip
