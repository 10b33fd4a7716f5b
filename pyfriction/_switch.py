"""Whether the environment turns the compiled core off (``PYFRICTION_NO_EXTENSIONS=1``).

Its own module, importing nothing of pyfriction at import time, so that the modules choosing
between a compiled function and its pure twin (``_marks``, ``recent``, ``userstate``,
``guidance``) ask it without importing the tracker, which imports them.
"""

from __future__ import annotations

import os
from typing import Any

__all__ = ["compiled_twin", "extensions_disabled"]


def extensions_disabled() -> bool:
    """True when ``PYFRICTION_NO_EXTENSIONS`` is set to anything but ``""`` or ``"0"``."""
    return os.environ.get("PYFRICTION_NO_EXTENSIONS", "") not in ("", "0")


def compiled_twin(layout: str, expected: tuple[Any, ...]) -> bool:
    """Whether to bind the compiled core's twin whose layout constants ``_core.<layout>`` must
    equal ``expected`` (the pure module's): False where the core is not built or turned off;
    a core built for another layout raises (a build error, not a reason to fall back)."""
    if extensions_disabled():
        return False
    try:
        from . import _core
    except ImportError:
        return False
    if getattr(_core, layout) != expected:
        raise RuntimeError(f"pyfriction._core was built for another {layout}: rebuild it")
    return True
