"""Helpers of the integration tests: a fresh default tracker per test, events recorded.

Test modules import the fixture (``from friction_helpers import friction``); there is no
conftest here, so ``import conftest`` keeps meaning ``tests/conftest.py``.

``friction`` calls :func:`pyfriction.init` (reference engine, no default integrations unless
asked) and records every event the tracker receives in ``friction.events``; afterwards the
SDK is back to its pristine state (no default tracker, default options, integrations off).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import msgspec
import pytest

import pyfriction

from helpers import reset_sdk


class FakeGuidance(msgspec.Struct, kw_only=True):
    """Stands in for ``pyfriction.Guidance`` so these tests do not depend on the catalog."""

    id: str
    kind: str = "banner"
    title: str = "Need a hand?"
    body: str = "Dates are DD/MM/YYYY."
    url: str | None = None


class Friction:
    """The current default tracker, the events it observed, and a guidance stub."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.tracker: pyfriction.Tracker | None = None
        self.guidance: dict[str, list[Any]] = {}
        self.acks: list[tuple[str, str, str]] = []

    def init(self, **options: Any) -> pyfriction.Tracker:
        options.setdefault("engine", "reference")
        options.setdefault("default_integrations", False)
        tracker = pyfriction.init(**options)
        self.attach(tracker)
        return tracker

    def attach(self, tracker: pyfriction.Tracker) -> None:
        self.tracker = tracker
        original = tracker.observe

        def spy(event: Any) -> float:
            self.events.append(dict(event) if isinstance(event, dict) else msgspec.to_builtins(event))
            return original(event)

        tracker.observe = spy  # type: ignore[method-assign]

    def stub_guidance(self, user_id: str, *items: Any) -> None:
        """``tracker.pending(user_id)`` returns ``items`` once (then they are delivered)."""
        assert self.tracker is not None
        self.guidance[user_id] = list(items)

        def pending(uid: str) -> list[Any]:
            return self.guidance.pop(uid, [])

        def ack(uid: str, gid: str, outcome: str) -> bool:
            self.acks.append((uid, gid, outcome))
            return gid.startswith("g")

        self.tracker.pending = pending  # type: ignore[attr-defined]
        self.tracker.ack = ack  # type: ignore[attr-defined]

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("type") == kind]


@pytest.fixture
def friction(monkeypatch: pytest.MonkeyPatch) -> Iterator[Friction]:
    for name in list(os.environ):
        if name.startswith("PYFRICTION_") and name != "PYFRICTION_NO_EXTENSIONS":
            monkeypatch.delenv(name)
    reset_sdk()
    f = Friction()
    yield f
    reset_sdk()
