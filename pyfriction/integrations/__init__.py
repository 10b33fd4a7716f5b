"""Framework integrations, set up by :func:`pyfriction.init` in the style of sentry-python.

Each :class:`Integration` names the modules it needs; a *default* integration whose framework
is not installed is skipped quietly, one passed explicitly in ``init(integrations=[...])``
raises :class:`DidNotEnable`. ``setup_once()`` runs at most once per process.

Default integrations:

- ``logging`` (:class:`~pyfriction.integrations.logging.LoggingIntegration`): error log
  records carrying a user become ``error`` events.
- ``starlette`` (:class:`~pyfriction.integrations.asgi.StarletteIntegration`): every
  Starlette/FastAPI app gets :class:`~pyfriction.integrations.asgi.FrictionMiddleware`
  unless it added it itself.
- ``flask`` (:class:`~pyfriction.integrations.flask.FlaskIntegration`): every Flask app is
  observed through Flask's signals.

Django has no auto-instrumentation: add
``"pyfriction.integrations.django.FrictionMiddleware"`` to ``MIDDLEWARE`` after
``AuthenticationMiddleware``.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Iterable
from typing import Any, ClassVar

__all__ = ["DidNotEnable", "Integration", "default_integrations", "setup_integrations"]

log = logging.getLogger("pyfriction")


class DidNotEnable(ImportError):
    """An integration cannot be set up (its framework is not installed, or too old)."""


class Integration:
    """Base class. Subclasses set ``identifier`` and ``requires`` (importable module names)
    and implement :meth:`setup_once`; options live on the instance."""

    identifier: ClassVar[str] = ""
    requires: ClassVar[tuple[str, ...]] = ()
    #: The instance whose options are in force (the last one set up).
    active: ClassVar[Any] = None
    _installed: ClassVar[bool] = False

    @classmethod
    def available(cls) -> bool:
        for name in cls.requires:
            try:
                importlib.import_module(name)
            except ImportError:
                return False
        return True

    def setup_once(self) -> None:  # pragma: no cover - interface
        """Install hooks (once per process); read options from ``type(self).active``."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def default_integrations() -> list[Integration]:
    """Fresh instances of the integrations :func:`pyfriction.init` sets up by default, those
    whose framework can be imported."""
    found: list[Integration] = []
    for module, name in _DEFAULTS:
        try:
            cls = getattr(importlib.import_module(module, __name__), name)
        except ImportError as exc:
            log.debug("pyfriction: integration %s skipped: %s", name, exc)
            continue
        found.append(cls())
    return found


_DEFAULTS = (
    (".logging", "LoggingIntegration"),
    (".asgi", "StarletteIntegration"),
    (".flask", "FlaskIntegration"),
)


def setup_integrations(explicit: Iterable[Integration], with_defaults: bool) -> dict[str, Integration]:
    """Set up ``explicit`` integrations plus (unless ``with_defaults`` is false) the defaults
    not overridden by an explicit one of the same identifier; returns those set up."""
    chosen: dict[str, tuple[Integration, bool]] = {}
    if with_defaults:
        for integration in default_integrations():
            chosen[integration.identifier] = (integration, True)
    for integration in explicit:
        if not isinstance(integration, Integration):
            raise TypeError(f"integrations: expected Integration instances, not {integration!r}")
        chosen[integration.identifier] = (integration, False)
    done: dict[str, Integration] = {}
    for identifier, (integration, is_default) in chosen.items():
        cls = type(integration)
        if not cls.available():
            if is_default:
                log.debug("pyfriction: integration %s skipped: %s not installed", identifier, ", ".join(cls.requires))
                continue
            raise DidNotEnable(f"integration {identifier!r} needs {', '.join(cls.requires)}, which is not installed")
        cls.active = integration
        if not cls._installed:
            integration.setup_once()
            cls._installed = True
        done[identifier] = integration
    # Integrations set up before and not chosen now stop acting (their hooks stay installed).
    for cls in _all_classes():
        if cls.identifier not in done:
            cls.active = None
    return done


def _all_classes() -> list[type[Integration]]:
    seen: list[type[Integration]] = []
    stack = list(Integration.__subclasses__())
    while stack:
        cls = stack.pop()
        seen.append(cls)
        stack.extend(cls.__subclasses__())
    return seen
