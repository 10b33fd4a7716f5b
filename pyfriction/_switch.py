"""Whether the environment turns the compiled core off (``PYFRICTION_NO_EXTENSIONS=1``).

Its own module, importing nothing of pyfriction, so that the modules choosing between a
compiled function and its pure twin (``_marks``, ``recent``) ask it without importing the
tracker, which imports them.
"""

from __future__ import annotations

import os

__all__ = ["extensions_disabled"]


def extensions_disabled() -> bool:
    """True when ``PYFRICTION_NO_EXTENSIONS`` is set to anything but ``""`` or ``"0"``."""
    return os.environ.get("PYFRICTION_NO_EXTENSIONS", "") not in ("", "0")
