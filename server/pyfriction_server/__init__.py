"""pyfriction-server: the pyfriction sidecar.

Point an existing Segment, RudderStack or PostHog SDK (or ``pyfriction.js`` in the browser)
at it; it scores friction with :mod:`pyfriction` and delivers guidance back to the browser.

* :func:`create_app` builds the ASGI app; :func:`load_settings` reads config, environment
  and flags; ``pyfriction-server`` / ``python -m pyfriction_server`` runs it under uvicorn.
* :func:`user_token` computes a user's identity-verification token in the host backend.
"""

from __future__ import annotations

from .app import Server, create_app, server_config
from .guidance import user_token, verify_token
from .settings import EventRule, Settings, SettingsError, load_settings

__version__ = "0.1.0"
__all__ = [
    "EventRule",
    "Server",
    "Settings",
    "SettingsError",
    "create_app",
    "load_settings",
    "server_config",
    "user_token",
    "verify_token",
]
