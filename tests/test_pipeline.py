"""Large columnar batches in the compiled core: rows are read in chunks, and each chunk is
applied without the GIL on a thread of its own while the chunk before is delivered (see
``_core/core.pyx``, ``Row``). The equivalence tests run every stream through small chunks;
these check what only threads can break: other callers wait, nothing is lost or mixed up."""

from __future__ import annotations

import random
import threading
import time
from typing import Any

import numpy as np
import pytest

import pyfriction

from helpers import T0

pytestmark = pytest.mark.skipif(not pyfriction.compiled_available(), reason="needs the compiled core")

KINDS = ["click", "click", "click", "page", "page", "error", "api_error", "dead_click", "search", "help", "success"]


def events(prefix: str, users: int, n: int, seed: int) -> list[dict[str, Any]]:
    """A struggling stream over ``users`` users of its own, on steps and targets of its own
    (step baselines are shared by all users: disjoint streams stay independent)."""
    rnd = random.Random(seed)
    out = []
    ts = T0
    for _ in range(n):
        ts += rnd.random() * 0.05
        kind = rnd.choice(KINDS)
        e: dict[str, Any] = {"user_id": f"{prefix}-{rnd.randrange(users)}", "type": kind, "ts": ts,
                             "step": f"{prefix}.step{rnd.randrange(4)}", "target": f"#{prefix}-{rnd.randrange(3)}"}  # fmt: skip
        if kind == "api_error":
            e["properties"] = {"status": rnd.choice([401, 500, 503])}
        out.append(e)
    return out


def columns(evs: list[dict[str, Any]]) -> dict[str, Any]:
    cols: dict[str, Any] = {k: [e[k] for e in evs] for k in ("user_id", "type", "step", "target")}
    cols["ts"] = np.array([e.get("ts", np.nan) for e in evs])
    cols["status"] = [e.get("properties", {}).get("status", -1) for e in evs]
    return cols


def tracker(chunk: int, pipelined: bool) -> pyfriction.Tracker:
    t = pyfriction.Tracker(engine="compiled", capacity=100_000, clock=lambda: T0 + 300.0)
    t.on_friction(lambda episode: None)  # on the dispatcher: no inline callback
    core: Any = t._core
    core.pipe_rows = chunk
    core.pipe_min = 0 if pipelined else 10**12
    return t


def records(t: pyfriction.Tracker, users: set[str]) -> dict[str, bytes]:
    out = {}
    for user in users:
        rec = t._core.record(user).copy()  # type: ignore[attr-defined]
        rec["lock"] = 0  # the recency bookkeeping: the interleaving of callers decides it
        out[user] = rec.tobytes()
    return out


def test_other_callers_wait_for_a_chunk_and_nothing_is_mixed_up() -> None:
    # Many new users on every side: inserts into the shared index race if anything is wrong.
    batch = sorted(events("x", 200, 75_000, seed=1) + events("xn", 60_000, 75_000, seed=4), key=lambda e: e["ts"])
    singles = [events("y1", 4_000, 4_000, seed=2), events("y2", 4_000, 4_000, seed=3)]
    users = {e["user_id"] for e in batch} | {e["user_id"] for s in singles for e in s}

    alone = tracker(512, pipelined=False)
    alone.observe_many(columns(batch))
    for stream in singles:
        for e in stream:
            alone.observe(e)

    t = tracker(512, pipelined=True)
    count = t._insights.episode

    def slow_count(*args: Any) -> None:
        time.sleep(0.0005)  # lets the other threads in while a chunk runs without the GIL
        count(*args)

    t._insights.episode = slow_count  # type: ignore[method-assign]
    errors: list[BaseException] = []
    started = threading.Barrier(3)

    def run(fn: Any) -> None:
        try:
            started.wait()
            fn()
        except BaseException as exc:
            errors.append(exc)

    def single(stream: list[dict[str, Any]]) -> None:
        for i, e in enumerate(stream):
            if i % 20 == 0:
                time.sleep(0.002)  # spread over the whole batch
            t.observe(e)
            if i % 7 == 0:  # reads of users the batch is changing meanwhile
                t.score(batch[i]["user_id"])
                t.state(batch[i]["user_id"])

    cols = columns(batch)
    threads = [threading.Thread(target=run, args=(lambda: t.observe_many(cols),))]
    threads += [threading.Thread(target=run, args=(lambda s=s: single(s),)) for s in singles]
    for th in threads:
        th.start()
    for th in threads:
        th.join(120)
    assert not errors, errors
    assert t._core.pipe_waits > 0  # type: ignore[attr-defined]  # they did meet a running chunk
    assert len(t._core) == len(users)  # type: ignore[attr-defined]
    assert t.stats().events == alone.stats().events == len(batch) + sum(map(len, singles))
    assert t.stats().episodes == alone.stats().episodes > 0
    assert records(t, users) == records(alone, users)
    t.close()
    alone.close()


@pytest.mark.parametrize("chunk", [1, 7, 4096])
def test_chunked_batches_score_as_single_events(chunk: int) -> None:
    """Scores, episodes and names of a batch (with rows the general path takes between the
    chunks) match the same events observed one by one."""
    evs = events("z", 40, 5_000, seed=chunk)
    for i in range(0, len(evs), 97):
        evs[i] = dict(evs[i], ts=float("nan"))  # invalid: skipped, counted
    for i in range(5, len(evs), 89):
        evs[i] = {k: v for k, v in evs[i].items() if k != "ts"}  # no time: the tracker's clock
    one = tracker(chunk, pipelined=True)
    got: list[pyfriction.Episode] = []
    one.on_friction(got.append)
    cols = columns(evs)
    cols["ts"] = [e.get("ts") for e in evs]
    scores = one.observe_many(cols)
    ref = tracker(chunk, pipelined=False)
    want: list[pyfriction.Episode] = []
    ref.on_friction(want.append)
    expected = []
    for e in evs:
        try:
            expected.append(ref.observe(e))
        except pyfriction.InvalidEvent:
            expected.append(float("nan"))
    assert one.flush(10) and ref.flush(10)
    np.testing.assert_array_equal(scores[~np.isnan(scores)], np.array(expected)[~np.isnan(expected)])
    assert np.array_equal(np.isnan(scores), np.isnan(expected)) and np.isnan(scores).sum() > 40
    assert [(e.user_id, e.ts, e.step, e.target, [r.detail for r in e.reasons]) for e in got] == [
        (e.user_id, e.ts, e.step, e.target, [r.detail for r in e.reasons]) for e in want
    ]
    assert len(got) > 0
    assert one.stats().invalid == ref.stats().invalid
