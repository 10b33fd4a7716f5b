"""Fixtures of the engine benchmarks (run with ``python -m pytest benchmarks/ --benchmark-only``).

``BENCH_USERS`` scales the stream down for a quick run (default 1,000,000 distinct users;
the acceptance figures are only meaningful at the default). Everything expensive is built
once per session: the stream, and a compiled tracker that has observed all of it.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from typing import Any

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
for _p in (os.path.dirname(HERE), HERE):
    if _p not in sys.path:
        sys.path.insert(0, _p)

import harness  # noqa: E402
import streams  # noqa: E402

#: Per-event figures measured in this session, for the speed-up that the reference test
#: reports against the compiled observe benchmark when both run.
RESULTS: dict[str, float] = {}
#: Lines printed at the end of the run: the per-event figures the benchmark table lacks.
SUMMARY: list[str] = []


def require_compiled() -> None:
    error = harness.compiled_error()
    if error is not None:
        pytest.skip(error)


@pytest.fixture(scope="session")
def n_users() -> int:
    return harness.users_from_env()


@pytest.fixture(scope="session")
def stream(n_users: int) -> streams.Stream:
    """The realistic stream over ``n_users`` distinct users (about 2.6 events each)."""
    return streams.generate(n_users)


@pytest.fixture(scope="session")
def compiled_warm(stream: streams.Stream) -> Iterator[harness.Warm]:
    """A compiled tracker (capacity 1,000,000) that has observed the whole stream."""
    require_compiled()
    warm = harness.Warm("compiled", stream)
    SUMMARY.insert(
        0,
        f"stream: {len(stream):,} events over {stream.users:,} users;"
        f" {warm.episodes / len(stream) * 1000:.1f} friction episodes per 1,000 events",
    )
    yield warm
    warm.tracker.close(timeout=5.0)


@pytest.fixture(scope="session")
def results() -> dict[str, Any]:
    return RESULTS


def pytest_report_header(config: pytest.Config) -> list[str]:
    error = harness.compiled_error()
    return [
        f"pyfriction benchmarks: BENCH_USERS={harness.users_from_env():,}, capacity {harness.CAPACITY:,}, "
        f"compiled core: {'built' if error is None else error}"
    ]


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if SUMMARY:
        terminalreporter.section(f"pyfriction per-event figures ({harness.users_from_env():,} users)")
        for line in SUMMARY:
            terminalreporter.line(line)
