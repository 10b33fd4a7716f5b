"""Shared fixtures: every engine test runs against both engines.

``engine`` is parametrized over ``"compiled"`` and ``"reference"`` (ids the same), in the
aio-libs (yarl/multidict) style. When the compiled core ``pyfriction._core`` is not built the
compiled variant is skipped locally with the reason ``"compiled core not built"``, and FAILS
when the environment variable ``CI`` is set (CI must build the extension).

``make_tracker(**kwargs)`` builds a :class:`pyfriction.Tracker` on that engine, with a sync
callback collecting every fired episode into ``tracker.episodes_seen``; trackers are closed
at teardown.

``ev(user, type, ts, step=None, target=None, **props)`` builds an event mapping concisely
(see ``tests/helpers.py``); ``T0`` is a round epoch time to start streams at.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Iterator, Optional

import pytest

import pyfriction

from helpers import T0, ev  # noqa: F401  (re-exported for tests: `from conftest import ev`)

ENGINES = ["compiled", "reference"]


def compiled_core_error() -> Optional[str]:
    """None when the compiled core imports with a ``CompiledCore``, else why not."""
    try:
        from pyfriction import _core  # noqa: PLC0415

        _core.CompiledCore  # noqa: B018
    except (ImportError, AttributeError) as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def require_engine(name: str) -> None:
    """Skip (locally) or fail (under CI) when ``name`` is the compiled engine and it is not built."""
    if name != "compiled":
        return
    error = compiled_core_error()
    if error is None:
        return
    if os.environ.get("CI"):
        pytest.fail(
            "compiled core not built: `from pyfriction import _core; _core.CompiledCore` failed "
            f"({error}). CI must build the extension (pip install . or "
            "python setup.py build_ext --inplace) before running the tests.",
            pytrace=False,
        )
    pytest.skip("compiled core not built")


@pytest.fixture(params=ENGINES, ids=ENGINES)
def engine(request: pytest.FixtureRequest) -> str:
    """The engine name, ``"compiled"`` or ``"reference"``; every test using it runs on both."""
    name: str = request.param
    require_engine(name)
    return name


@pytest.fixture
def make_tracker(engine: str) -> Iterator[Callable[..., pyfriction.Tracker]]:
    """A factory ``make_tracker(**kwargs) -> Tracker`` on the current ``engine``.

    Each tracker gets ``episodes_seen``: a list that a sync ``on_friction`` callback appends
    every fired :class:`pyfriction.Episode` to. All trackers made are closed at teardown.
    """
    made: list[pyfriction.Tracker] = []

    def factory(config: Any = None, **kwargs: Any) -> pyfriction.Tracker:
        kwargs.setdefault("engine", engine)
        tracker = pyfriction.Tracker(config, **kwargs)
        seen: list[pyfriction.Episode] = []
        tracker.episodes_seen = seen  # type: ignore[attr-defined]
        tracker.on_friction(seen.append, sync=True)
        made.append(tracker)
        return tracker

    yield factory
    for tracker in made:
        tracker.close(timeout=5.0)
