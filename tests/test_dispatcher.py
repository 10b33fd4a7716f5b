"""The background dispatcher on its own, and fork safety of a tracker's async callbacks."""

from __future__ import annotations

import logging
import multiprocessing
import os
import threading
from typing import Any

import pytest

import pyfriction
from pyfriction.dispatcher import Dispatcher, run_callbacks

from helpers import T0, ev

WAIT = 10.0  # upper bound on waits for another thread; never reached when things work


class Gate:
    """A callback that blocks until released, recording what it ran on."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self.items: list[Any] = []
        self.threads: list[str] = []

    def __call__(self, item: Any) -> None:
        self.entered.set()
        self.release.wait(WAIT)
        self.items.append(item)
        self.threads.append(threading.current_thread().name)


@pytest.fixture
def dispatcher() -> Any:
    made: list[Dispatcher] = []

    def factory(queue_size: int = 100) -> Dispatcher:
        d = Dispatcher(queue_size)
        made.append(d)
        return d

    yield factory
    for d in made:
        d.close(timeout=1.0)


def test_runs_callbacks_in_order_on_its_thread(dispatcher: Any) -> None:
    d = dispatcher()
    got: list[tuple[str, Any]] = []
    a = lambda item: got.append(("a", item))  # noqa: E731
    b = lambda item: got.append(("b", item, threading.current_thread().name))  # noqa: E731
    for i in range(5):
        d.submit([a, b], i)
    assert d.flush(timeout=WAIT) is True
    assert [g[:2] for g in got] == [(k, i) for i in range(5) for k in "ab"]
    assert {g[2] for g in got if g[0] == "b"} == {"pyfriction-dispatcher"}
    assert d.depth == 0
    assert d.dropped == d.failed == 0


def test_flush_timeout_false_while_callback_blocks(dispatcher: Any) -> None:
    d = dispatcher()
    gate = Gate()
    d.submit([gate], "x")
    assert gate.entered.wait(WAIT)
    assert d.flush(timeout=0.05) is False
    assert d.flush(timeout=0) is False
    gate.release.set()
    assert d.flush(timeout=WAIT) is True
    assert gate.items == ["x"]
    assert gate.threads == ["pyfriction-dispatcher"]


def test_flush_on_idle_dispatcher(dispatcher: Any) -> None:
    d = dispatcher()
    assert d.flush() is True
    assert d.flush(timeout=0) is True


def test_queue_full_drops_and_counts(dispatcher: Any) -> None:
    d = dispatcher(queue_size=2)
    gate = Gate()
    other: list[Any] = []
    d.submit([gate, other.append], 0)
    assert gate.entered.wait(WAIT)  # 0 is running (off the queue)
    d.submit([gate, other.append], 1)
    d.submit([gate, other.append], 2)
    assert d.depth == 2
    d.submit([gate, other.append], 3)  # full: dropped, for both callbacks
    d.submit([gate, other.append], 4)
    assert d.dropped == 4
    gate.release.set()
    assert d.flush(timeout=WAIT)
    assert gate.items == other == [0, 1, 2]
    assert d.depth == 0


def test_failed_callbacks_counted_and_logged(dispatcher: Any, caplog: pytest.LogCaptureFixture) -> None:
    d = dispatcher()
    got: list[Any] = []

    def boom(item: Any) -> None:
        raise KeyError("bad callback")

    with caplog.at_level(logging.ERROR, logger="pyfriction"):
        for i in range(3):
            d.submit([boom, got.append], i)
        assert d.flush(timeout=WAIT)
    assert d.failed == 3
    assert got == [0, 1, 2]
    assert "bad callback" in caplog.text
    assert any(r.name == "pyfriction" for r in caplog.records)


def test_run_callbacks_counts_failures() -> None:
    got: list[Any] = []

    def boom(item: Any) -> None:
        raise ValueError(item)

    assert run_callbacks([boom, got.append, boom], "e") == 2
    assert got == ["e"]
    assert run_callbacks([], "e") == 0


def test_close_stops_the_thread(dispatcher: Any) -> None:
    d = dispatcher()
    got: list[Any] = []
    d.submit([got.append], 1)
    thread = d._thread
    assert thread is not None and thread.is_alive()
    assert d.close(timeout=WAIT) is True
    assert got == [1]
    assert not thread.is_alive()
    assert thread not in threading.enumerate()
    d.submit([got.append, got.append], 2)  # after close: dropped and counted
    assert d.dropped == 2
    assert d.flush(timeout=WAIT) is True
    assert got == [1]


def test_close_twice_then_flush(dispatcher: Any) -> None:
    d = dispatcher()
    got: list[Any] = []
    d.submit([got.append], 1)
    assert d.close(timeout=WAIT) is True
    assert d.close(timeout=WAIT) is True  # closing twice is harmless...
    assert d.flush(timeout=1.0) is True  # ...and leaves nothing behind to wait for
    assert d.depth == 0
    assert d.close(timeout=1.0) is True


def test_close_before_any_submit(dispatcher: Any) -> None:
    d = dispatcher()
    assert d._thread is None  # started lazily
    assert d.close(timeout=WAIT) is True
    got: list[Any] = []
    d.submit([got.append], 1)
    assert d.dropped == 1 and got == []
    assert d._thread is None  # no thread was started for nothing
    assert d.flush(timeout=1.0) is True


def test_close_timeout_while_callback_blocks(dispatcher: Any) -> None:
    d = dispatcher()
    gate = Gate()
    d.submit([gate], 1)
    assert gate.entered.wait(WAIT)
    assert d.close(timeout=0.05) is False
    thread = d._thread
    gate.release.set()
    thread.join(WAIT)
    assert not thread.is_alive()  # the stop request queued behind the callback still ends it
    assert gate.items == [1]


def test_close_twice_while_callback_blocks(dispatcher: Any) -> None:
    d = dispatcher()
    gate = Gate()
    d.submit([gate], 1)
    assert gate.entered.wait(WAIT)
    thread = d._thread
    assert d.close(timeout=0.05) is False
    assert d.close(timeout=0.05) is False  # e.g. an explicit close, then the one at exit
    gate.release.set()
    thread.join(WAIT)
    assert not thread.is_alive()
    assert d.flush(timeout=1.0) is True  # no stop request left behind to wait for
    assert d.depth == 0


def test_flush_from_inside_a_callback_does_not_deadlock(dispatcher: Any) -> None:
    d = dispatcher()
    results: list[bool] = []
    d.submit([lambda item: results.append(d.flush())], 1)
    assert d.flush(timeout=WAIT) is True
    assert results == [False]


def test_submit_from_many_threads(dispatcher: Any) -> None:
    d = dispatcher(queue_size=10_000)
    got: list[Any] = []
    lock = threading.Lock()

    def record(item: Any) -> None:
        with lock:
            got.append(item)

    def producer(k: int) -> None:
        for i in range(200):
            d.submit([record], (k, i))

    threads = [threading.Thread(target=producer, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT)
    assert d.flush(timeout=WAIT)
    assert sorted(got) == [(k, i) for k in range(4) for i in range(200)]
    assert d.dropped == 0


# --- fork safety ----------------------------------------------------------------------------


def rage(user: str, ts: float) -> list[dict[str, Any]]:
    return [ev(user, "click", ts + 0.1 * i, target="#pay") for i in range(3)]


def _child(tracker: pyfriction.Tracker, got: list[Any], conn: Any) -> None:
    try:
        for e in rage("child-user", T0 + 100):
            tracker.observe(e)
        flushed = tracker.flush(timeout=WAIT)
        conn.send(
            {
                "flushed": flushed,
                "got": [(name, ep.user_id) for name, ep in got],
                "failed": tracker.stats().callbacks_failed,
                "dropped": tracker.stats().callbacks_dropped,
                "closed": tracker.close(timeout=WAIT),
            }
        )
    except BaseException as exc:  # report, never hang the parent
        conn.send({"error": repr(exc)})
    finally:
        conn.close()


def _run_forked(tracker: pyfriction.Tracker, got: list[Any]) -> dict[str, Any]:
    ctx = multiprocessing.get_context("fork")
    parent_conn, child_conn = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(tracker, got, child_conn))
    proc.start()
    child_conn.close()
    try:
        assert parent_conn.poll(30), "the child reported nothing"
        report: dict[str, Any] = parent_conn.recv()
    finally:
        proc.join(30)
        if proc.is_alive():
            proc.kill()
            proc.join()
    assert proc.exitcode == 0
    assert "error" not in report, report["error"]
    return report


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_async_callbacks_work_in_forked_child(make_tracker: Any) -> None:
    tracker = make_tracker()
    got: list[Any] = []
    tracker.on_friction(lambda ep: got.append((threading.current_thread().name, ep)))
    for e in rage("parent-user", T0):
        tracker.observe(e)  # the dispatcher thread is running when we fork
    assert tracker.flush(timeout=WAIT)
    assert [ep.user_id for _, ep in got] == ["parent-user"]

    report = _run_forked(tracker, got)
    assert report["flushed"] is True
    # the child's list started as a copy of the parent's, then got its own episode, delivered
    # by a dispatcher thread of its own
    assert report["got"] == [("pyfriction-dispatcher", "parent-user"), ("pyfriction-dispatcher", "child-user")]
    assert report["failed"] == report["dropped"] == 0
    assert report["closed"] is True

    # the parent is unaffected and still delivers
    for e in rage("parent-user-2", T0 + 200):
        tracker.observe(e)
    assert tracker.flush(timeout=WAIT)
    assert [ep.user_id for _, ep in got] == ["parent-user", "parent-user-2"]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_fork_while_callback_is_busy(make_tracker: Any) -> None:
    """Forking while the parent's dispatcher is inside a callback with episodes queued: the
    child must not inherit a stuck queue (its flush would wait forever)."""
    tracker = make_tracker()
    gate = Gate()
    got: list[Any] = []
    parent = os.getpid()

    def callback(ep: Any) -> None:
        if os.getpid() == parent:  # only the parent's dispatcher blocks
            gate(ep)
        got.append((threading.current_thread().name, ep))

    tracker.on_friction(callback)
    for i in range(3):
        for e in rage(f"parent-{i}", T0 + i):
            tracker.observe(e)
    assert gate.entered.wait(WAIT)
    assert tracker.stats().queue_depth == 2
    try:
        report = _run_forked(tracker, got)
    finally:
        gate.release.set()
    assert report["flushed"] is True
    assert report["got"] == [("pyfriction-dispatcher", "child-user")]
    assert report["dropped"] == 0
    assert tracker.flush(timeout=WAIT)
    assert [ep.user_id for _, ep in got] == ["parent-0", "parent-1", "parent-2"]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_closed_tracker_stays_closed_after_fork(make_tracker: Any) -> None:
    tracker = make_tracker()
    got: list[Any] = []
    tracker.on_friction(lambda ep: got.append((threading.current_thread().name, ep)))
    tracker.close(timeout=WAIT)
    report = _run_forked(tracker, got)
    assert report["got"] == []
    assert report["dropped"] == 1
