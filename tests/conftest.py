"""Shared fixtures: every engine test runs against both engines.

``engine`` is parametrized over ``"compiled"`` and ``"reference"`` (ids the same), in the
aio-libs (yarl/multidict) style. When the compiled core ``pyfriction._core`` is not built the
compiled variant is skipped locally with the reason ``"compiled core not built"``, and FAILS
when the environment variable ``CI`` is set (CI must build the extension).

``make_tracker(**kwargs)`` builds a :class:`pyfriction.Tracker` on that engine, with a sync
callback collecting every fired episode into ``tracker.episodes_seen``; trackers are closed
at teardown.

``@pytest.mark.compiled`` marks a test of the compiled core alone (``RecentIds``, the file
store): skipped locally when it is not built, failed under CI, as the compiled variant above.
``sdk_reset`` gives a test the SDK as a fresh import leaves it, and leaves it so.

``ev(user, type, ts, step=None, target=None, **props)`` builds an event mapping concisely
(see ``tests/helpers.py``); ``T0`` is a round epoch time to start streams at.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import Phase, settings

import pyfriction

from helpers import ENGINES, T0, compiled_core_error, ev, require_engine, reset_sdk  # noqa: F401

# `pytest --hypothesis-profile=no-shrink`: report the first failing example at once (for
# mutation runs and quick checks; shrinking the big stream examples can take minutes).
settings.register_profile("no-shrink", phases=[Phase.explicit, Phase.reuse, Phase.generate])


@pytest.fixture(params=ENGINES, ids=ENGINES)
def engine(request: pytest.FixtureRequest) -> str:
    """The engine name, ``"compiled"`` or ``"reference"``; every test using it runs on both."""
    name: str = request.param
    require_engine(name)
    return name


@pytest.fixture
def make_tracker(engine: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., pyfriction.Tracker]]:
    """A factory ``make_tracker(**kwargs) -> Tracker`` on the current ``engine``.

    Each tracker gets ``episodes_seen``: a list that a sync ``on_friction`` callback appends
    every fired :class:`pyfriction.Episode` to. All trackers made are closed at teardown.
    With ``PYFRICTION_TEST_STORE=file`` in the environment, compiled trackers get a fresh
    ``file://`` store each (guidance and insights then live in its facts file): e.g.
    ``PYFRICTION_TEST_STORE=file pytest tests/test_guidance.py tests/test_insights.py -k compiled``.
    """
    made: list[pyfriction.Tracker] = []
    on_file = os.environ.get("PYFRICTION_TEST_STORE") == "file"

    def factory(config: Any = None, **kwargs: Any) -> pyfriction.Tracker:
        kwargs.setdefault("engine", engine)
        if on_file and kwargs["engine"] == "compiled" and "store" not in kwargs:
            kwargs["store"] = f"file://{tmp_path_factory.mktemp('store')}/friction.state"
        tracker = pyfriction.Tracker(config, **kwargs)
        seen: list[pyfriction.Episode] = []
        tracker.episodes_seen = seen  # type: ignore[attr-defined]
        tracker.on_friction(seen.append, sync=True)
        made.append(tracker)
        return tracker

    yield factory
    for tracker in made:
        tracker.close(timeout=5.0)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "compiled: a test of the compiled core alone (skipped when not built)")


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("compiled") is not None:
        require_engine("compiled")


@pytest.fixture
def sdk_reset() -> Iterator[None]:
    """The SDK (``pyfriction.init`` and the module-level API) reset before and after the test."""
    reset_sdk()
    yield
    reset_sdk()
