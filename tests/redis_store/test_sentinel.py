"""``redis+sentinel://``: the engine's records through a real Sentinel failover.

A primary, two replicas and a Sentinel (``servers.start_sentinel_group``); a host scores a
stream in small batches with ``replicas=1`` while another thread kills the primary
(``kill -9``) and waits for the Sentinel to promote a replica (and point the other at it). The host's client asks the
Sentinel for the primary again and its commands are retried, so every batch's scores, the
episodes and every user's final record equal one memory tracker's.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from pyfriction.tracker import compiled_available

from .servers import Servers, missing, sentinel_failover, start_sentinel_group
from .test_engine_failover import _run_with

pytestmark = pytest.mark.skipif(not compiled_available(), reason="the compiled core is not built")


@pytest.fixture
def sentinel_group() -> Iterator[Servers]:
    why = missing()
    if why is not None:
        pytest.skip(why)
    servers = start_sentinel_group()
    try:
        yield servers
    finally:
        servers.stop()


def test_a_sentinel_failover_mid_stream_loses_nothing(sentinel_group: Servers) -> None:
    promoted: list[int] = []
    host = _run_with(sentinel_group, lambda: promoted.append(sentinel_failover(sentinel_group).port),
                     "s" + uuid.uuid4().hex[:8])  # fmt: skip
    try:
        # The records were read from a promoted replica (the killed primary is gone).
        assert len(promoted) == 1 and promoted[0] in [n.port for n in sentinel_group.nodes[1:-1]]
        assert host.store_stats()["retried"] > 0  # the host met the failover
    finally:
        host.close()
