"""``redis+sentinel://``: the engine's records through a real Sentinel failover.

A primary, two replicas and a Sentinel (``servers.start_sentinel_group``); a host scores a
stream in small batches with ``replicas=1`` while another thread kills the primary
(``kill -9``) and waits for the Sentinel to promote a replica (and point the other at it). The host's client asks the
Sentinel for the primary again and its commands are retried, so every batch's scores, the
episodes and every user's final record equal one memory tracker's.
"""

from __future__ import annotations

import random
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from pyfriction import Tracker
from pyfriction.tracker import compiled_available

from .servers import Servers, described, missing, sentinel_failover, start_sentinel_group
from .test_redis_engine import _episodes, _record_bytes, _stream

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
    options = {"baseline_interval": 0, "prefix": "s" + uuid.uuid4().hex[:8], "replicas": 1,
               "wait_timeout": 0.2, "retry_timeout": 60.0}  # fmt: skip
    host = Tracker(store=sentinel_group.uri, store_options=options)
    mem = Tracker()
    seen_host: list[tuple[str, float, str]] = []
    seen_mem: list[tuple[str, float, str]] = []
    _episodes(host, seen_host)
    _episodes(mem, seen_mem)
    events = _stream(random.Random(13), 20_000, 80)
    errors: list[BaseException] = []
    promoted: list[int] = []
    switched = threading.Event()

    def disturb() -> None:
        try:
            promoted.append(sentinel_failover(sentinel_group).port)
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)
        switched.set()

    thread = threading.Thread(target=disturb, daemon=True)
    scored: list[dict[str, Any]] = []
    after = 0
    try:
        for k, start in enumerate(range(0, len(events), 20)):
            if k == 10:
                thread.start()
            batch = events[start : start + 20]
            assert host.observe_many(batch).tolist() == mem.observe_many(batch).tolist(), f"batch {k}"
            scored += batch
            after += switched.is_set()
            if after > 10:
                break
        assert switched.wait(120), "the Sentinel did not promote the replica"
        assert not errors, described(errors)
        assert after > 10, "the stream ended before the failover did"
        assert seen_host == seen_mem
        for user in {e["user_id"] for e in scored}:
            assert _record_bytes(host, user) == _record_bytes(mem, user), user
        host.sync()
        assert dict(host._core.counters) == dict(mem._core.counters)
        # The records were read from a promoted replica (the killed primary is gone).
        assert len(promoted) == 1 and promoted[0] in [n.port for n in sentinel_group.nodes[1:-1]]
        assert host.store_stats()["retried"] > 0  # the host met the failover
    finally:
        thread.join(timeout=120)
        host.close()
