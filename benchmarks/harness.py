"""Measurement helpers shared by ``test_engine.py`` and ``compare.py``.

* :class:`Warm`: a tracker that has seen the whole stream, and the newest time it has seen.
* :class:`DictChunk` / :class:`ColumnChunk`: a fixed chunk of the stream that is replayed
  round after round, each round moved later in time so that it continues where the tracker
  left off (events are never "late"; pressures decay and windows slide as in production).
* :func:`time_rounds`: timeit-style rounds of a chunk, returns the seconds of each round.
* :func:`memory_probe`: resident memory per tracked user, run in a clean subprocess by
  :func:`memory_per_user` (``python benchmarks/harness.py memory --users N --engine E``).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import time
from typing import Any

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
for _p in (ROOT, HERE):
    if _p not in sys.path:
        sys.path.insert(0, _p)

import streams  # noqa: E402

import pyfriction  # noqa: E402

#: Users tracked at once in every benchmark tracker (the issue's acceptance setting).
CAPACITY = 1_000_000
#: Events per columnar batch when warming a tracker or probing memory.
SLICE = 100_000


def users_from_env(default: int = 1_000_000) -> int:
    """``BENCH_USERS`` (distinct users in the stream; default one million)."""
    raw = os.environ.get("BENCH_USERS", "").replace("_", "").strip()
    return int(raw) if raw else default


def compiled_error() -> str | None:
    """None when the compiled core imports with a ``CompiledCore``, else why not."""
    if os.environ.get("PYFRICTION_NO_EXTENSIONS", "") not in ("", "0"):
        return "PYFRICTION_NO_EXTENSIONS is set"
    try:
        from pyfriction import _core

        _core.CompiledCore  # noqa: B018
    except (ImportError, AttributeError) as exc:
        return f"compiled core not built ({type(exc).__name__}: {exc})"
    return None


def make_tracker(engine: str) -> pyfriction.Tracker:
    """A tracker with every default detector and capacity one million (no callbacks: the
    episodes are still built, as they are for a host that registered one)."""
    return pyfriction.Tracker(engine=engine, capacity=CAPACITY)


class Warm:
    """A tracker that has observed a whole stream; ``horizon`` is the newest event time
    it has seen, so that replayed chunks can be moved after it."""

    def __init__(self, engine: str, stream: streams.Stream, *, columnar: bool = True) -> None:
        self.engine = engine
        self.tracker = make_tracker(engine)
        self.horizon = float(stream.ts[-1]) if len(stream) else 0.0
        started = time.perf_counter()
        self.fill_seconds = 0.0  # engine time only, batch building excluded
        for lo in range(0, len(stream), SLICE):
            hi = min(lo + SLICE, len(stream))
            events: Any = stream.columns(lo, hi) if columnar else stream.dicts(lo, hi)
            t = time.perf_counter()
            if columnar:
                self.tracker.observe_many(events)
            else:
                observe = self.tracker.observe
                for event in events:
                    observe(event)
            self.fill_seconds += time.perf_counter() - t
        self.wall_seconds = time.perf_counter() - started
        self.events = len(stream)
        stats = self.tracker.stats()
        self.episodes = stats.episodes
        if stats.users != min(stream.users, CAPACITY) or stats.invalid:
            raise RuntimeError(f"warming the {engine} tracker went wrong: {stats}")


def reference_warmup(stream: streams.Stream, chunk_start: int, context: int = 100_000) -> streams.Stream:
    """What the reference tracker observes before a chunk at ``chunk_start`` is replayed:
    every user's first event (so it tracks all the users, like the compiled tracker) and
    the ``context`` events just before the chunk (so the chunk's users have their recent
    history). Observing the whole stream in pure Python would take over a minute at one
    million users; its per-event cost does not depend on the rest of the history."""
    index = np.union1d(stream.first_events(), np.arange(max(0, chunk_start - context), chunk_start))
    return stream.take(index)


class DictChunk:
    """``stream[start:start + size]`` as pre-built dicts, replayed by :meth:`advance` at a
    later time each round (only the ``ts`` of each dict is rewritten, outside the timing)."""

    def __init__(self, stream: streams.Stream, start: int, size: int) -> None:
        start = max(0, min(start, len(stream) - size))
        self.events = stream.dicts(start, start + size)
        self.ts = stream.ts[start : start + size].copy()
        self.first = float(self.ts[0])
        self.length = float(self.ts[-1] - self.ts[0]) + 1.0

    def __len__(self) -> int:
        return len(self.events)

    def advance(self, warm: Warm) -> None:
        """Move the chunk to just after ``warm.horizon`` and advance the horizon past it."""
        shift = warm.horizon + 1.0 - self.first
        for event, ts in zip(self.events, (self.ts + shift).tolist()):
            event["ts"] = ts
        warm.horizon = self.first + shift + self.length

    def replay(self, warm: Warm) -> None:
        """The measured work: observe each event, one call per event."""
        observe = warm.tracker.observe
        for event in self.events:
            observe(event)


class ColumnChunk:
    """A columnar batch of ``stream[start:stop]``, replayed like :class:`DictChunk` (each
    round gets a new float64 ``ts`` column, built outside the timing)."""

    def __init__(self, stream: streams.Stream, start: int = 0, stop: int | None = None) -> None:
        self.batch = stream.columns(start, stop)
        self.ts = self.batch["ts"].copy()
        self.first = float(self.ts[0])
        self.length = float(self.ts[-1] - self.ts[0]) + 1.0

    def __len__(self) -> int:
        return len(self.ts)

    def advance(self, warm: Warm) -> None:
        shift = warm.horizon + 1.0 - self.first
        self.batch["ts"] = self.ts + shift
        warm.horizon = self.first + shift + self.length

    def replay(self, warm: Warm) -> None:
        scores = warm.tracker.observe_many(self.batch)
        if len(scores) != len(self.ts):
            raise RuntimeError("observe_many returned the wrong number of scores")


def time_rounds(chunk: Any, warm: Warm, rounds: int, warmup: int = 1) -> list[float]:
    """Seconds of each of ``rounds`` replays of ``chunk`` (after ``warmup`` untimed ones),
    with the garbage collector off while timing, as ``timeit`` does."""
    times = []
    for r in range(warmup + rounds):
        chunk.advance(warm)
        gc_was = gc.isenabled()
        gc.disable()
        try:
            t = time.perf_counter()
            chunk.replay(warm)
            dt = time.perf_counter() - t
        finally:
            if gc_was:
                gc.enable()
        if r >= warmup:
            times.append(dt)
    return times


# -- memory -------------------------------------------------------------------------------


def rss() -> int:
    """Resident set size of this process in bytes."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        import psutil

        return int(psutil.Process().memory_info().rss)


def _settle() -> None:
    """Collect garbage and hand freed heap back to the OS, so RSS shows what is held."""
    gc.collect()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def memory_probe(users: int, engine: str) -> dict[str, Any]:
    """Resident bytes per tracked user: RSS before creating the tracker and after it has
    observed the whole stream (every user), divided by the users tracked.

    The stream is generated (compact numpy arrays) before the first measurement. User id
    strings are built fresh for each batch and dropped after it, so ids the engine keeps
    alive are counted while the caller's own copies are not; scores are dropped too.
    """
    stream = streams.generate(users)
    _settle()
    before = rss()
    blocks = sys.getallocatedblocks()
    tracker = make_tracker(engine)
    _settle()
    empty = rss()
    for lo in range(0, len(stream), SLICE):
        batch = stream.columns(lo, min(lo + SLICE, len(stream)), fresh_ids=True)
        tracker.observe_many(batch)
        del batch
    _settle()
    after = rss()
    blocks = sys.getallocatedblocks() - blocks
    stats = tracker.stats()
    tracked = stats.users
    return {
        "engine": engine,
        "users": users,
        "events": len(stream),
        "tracked": tracked,
        "invalid": stats.invalid,
        "rss_before": before,
        "rss_empty_tracker": empty,
        "rss_after": after,
        "bytes_per_user": (after - before) / max(tracked, 1),
        "empty_tracker_bytes": empty - before,
        # Python objects the tracker keeps (beyond the engine's own arrays), per user:
        "python_objects_per_user": blocks / max(tracked, 1),
    }


def memory_per_user(users: int, engine: str = "compiled", timeout: float = 600.0) -> dict[str, Any]:
    """:func:`memory_probe` in a clean interpreter (this process's heap does not interfere)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, env.get("PYTHONPATH", "")) if p)
    proc = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "memory", "--users", str(users), "--engine", engine],
        capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT,
    )  # fmt: skip
    if proc.returncode != 0:
        raise RuntimeError(f"memory probe failed ({proc.returncode}):\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def median(values: list[float]) -> float:
    return float(np.median(values))


def _main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)
    mem = sub.add_parser("memory", help="print memory_probe() as JSON (run in a fresh process)")
    mem.add_argument("--users", type=int, default=1_000_000)
    mem.add_argument("--engine", default="compiled", choices=("compiled", "reference"))
    args = parser.parse_args(argv)
    print(json.dumps(memory_probe(args.users, args.engine)))


if __name__ == "__main__":
    _main()
