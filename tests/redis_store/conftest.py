"""Fixtures starting real Redis servers (see ``servers.py``): skipped with a reason when
``redis-server``, ``redis-cli`` or redis-py is missing (``.ci`` installs them).

``redis_server``: one server (module scope); ``redis_cluster``: 3 primaries + 3 replicas
(module scope); ``redis_target``: parametrized over both, giving ``(kind, uri)``;
``own_cluster``: a cluster of one test's own (function scope), which it may break.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .servers import Servers, missing, prepare_for_failures, start_cluster, start_server


def _require() -> None:
    why = missing()
    if why is not None:
        pytest.skip(why)


@pytest.fixture(scope="module")
def redis_server() -> Iterator[Servers]:
    """One redis-server on loopback, torn down after the module."""
    _require()
    servers = start_server()
    try:
        yield servers
    finally:
        servers.stop()


@pytest.fixture(scope="module")
def redis_cluster() -> Iterator[Servers]:
    """A Redis Cluster (3 primaries, 3 replicas) on loopback, torn down after the module."""
    _require()
    servers = start_cluster()
    try:
        yield servers
    finally:
        servers.stop()


@pytest.fixture(params=["server", "cluster"])
def redis_target(request: pytest.FixtureRequest) -> tuple[str, str]:
    """``(kind, uri)`` of the single server, then of the cluster."""
    kind: str = request.param
    servers: Servers = request.getfixturevalue("redis_server" if kind == "server" else "redis_cluster")
    return kind, servers.uri


@pytest.fixture
def own_cluster() -> Iterator[Servers]:
    """A Redis Cluster (3 primaries, 3 replicas) of this test alone: for tests that kill nodes,
    add nodes or move slots; every replica synchronized. Torn down after the test."""
    _require()
    servers = start_cluster()
    try:
        prepare_for_failures(servers)
        yield servers
    finally:
        servers.stop()
