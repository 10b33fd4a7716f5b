"""Runs ``on_friction`` callbacks off the hot path.

A single daemon thread drains a bounded queue. ``observe`` only enqueues; when the queue is
full the episode is dropped for the asynchronous callbacks and counted, so a slow callback
can never stall the host. A callback that raises is logged and counted. The thread is
started lazily and restarted in a child after ``fork()``.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from typing import Any

log = logging.getLogger("pyfriction")

Callback = Callable[[Any], Any]

_STOP = object()
_live: weakref.WeakSet[RestartsAfterFork] = weakref.WeakSet()


class RestartsAfterFork:
    """A background worker that starts afresh in a forked child: its thread did not survive
    the fork, and the queue's locks may have been held by it. Subclasses define ``_reset()``
    and a ``_closed`` flag, and call ``_track()`` once; a closed worker stays closed.
    (Queued items belong to the parent, which still delivers them.)"""

    _closed: bool

    def _reset(self) -> None:
        raise NotImplementedError

    def _track(self) -> None:
        _live.add(self)

    def _after_fork_in_child(self) -> None:
        closed = self._closed
        self._reset()
        self._closed = closed


def run_callbacks(callbacks: Sequence[Callback], item: Any) -> int:
    """Call each callback with ``item``; returns how many raised (each is logged)."""
    failed = 0
    for cb in callbacks:
        try:
            cb(item)
        except Exception:
            failed += 1
            log.exception("pyfriction: on_friction callback %r failed", cb)
    return failed


class Dispatcher(RestartsAfterFork):
    """A bounded queue of ``(callbacks, episode)`` and the thread that runs them."""

    def __init__(self, queue_size: int) -> None:
        self._queue_size = queue_size
        self.dropped = 0
        self.failed = 0
        self._reset()
        self._track()

    def _reset(self) -> None:
        self._queue: queue.Queue[Any] = queue.Queue(self._queue_size)
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._stopping = False

    @property
    def depth(self) -> int:
        """Episodes waiting for the thread."""
        return self._queue.qsize()

    def submit(self, callbacks: Sequence[Callback], item: Any) -> None:
        if self._closed:
            self.dropped += len(callbacks)
            return
        if self._thread is None:
            self._start()
        try:
            self._queue.put_nowait((callbacks, item))
        except queue.Full:
            self.dropped += len(callbacks)

    def _start(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="pyfriction-dispatcher", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        q = self._queue
        while True:
            item = q.get()
            try:
                if item is _STOP:
                    return
                callbacks, episode = item
                self.failed += run_callbacks(callbacks, episode)
            finally:
                q.task_done()

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every queued callback has run; False if ``timeout`` ran out first."""
        if threading.current_thread() is self._thread:
            return False  # called from a callback: waiting for ourselves would deadlock
        q = self._queue
        deadline = None if timeout is None else time.monotonic() + timeout
        with q.all_tasks_done:
            while q.unfinished_tasks:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                q.all_tasks_done.wait(remaining)
        return True

    def close(self, timeout: float | None = None) -> bool:
        """Flush, then stop the thread. Later episodes are dropped (and counted)."""
        done = self.flush(timeout)
        with self._lock:
            self._closed = True
            thread = self._thread
            if thread is None or thread is threading.current_thread() or not thread.is_alive():
                return done
            if not self._stopping:  # one stop marker, however often close() times out
                try:
                    self._queue.put(_STOP, timeout=timeout)
                except queue.Full:
                    return False
                self._stopping = True
        thread.join(timeout)
        return done and not thread.is_alive()


def _after_fork() -> None:
    for worker in list(_live):
        worker._after_fork_in_child()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)
