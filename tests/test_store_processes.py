"""The shared ``file://`` store across real processes (issue 5, acceptance 1 and 2).

* Serialised round-robin: 3 processes take turns (a shared counter and a condition) over one
  stream; per-event scores, episodes and counters equal a single in-memory tracker's, exactly
  (with the ``fork`` and the ``spawn`` start methods).
* Truly concurrent feeding: users split over 2 processes running at once; the same episodes,
  the same per-event scores (a user's state depends on that user's events only once the
  stall detector, which learns step durations across users, is off) and no lost events.
* Two processes hammering the same users at once: one episode per user in total, every event
  counted in the user's slot.
* Stress (marked ``stress``, part of the default run): 2 processes x 1,000,000 events on
  10,000 users and a third killed with SIGKILL in the middle; the survivors finish, no slot
  stays locked, the counters add up.
* Fork safety (gunicorn ``--preload``): a tracker made before ``fork()`` works in the
  children, whose events the parent sees; async callbacks run in the child.
* Offline tools refuse a store other processes use.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import struct
import subprocess
import sys
import textwrap
import threading
import time
from typing import Any

import msgspec
import numpy as np
import pytest

import pyfriction
from pyfriction import cli
from pyfriction._layout import SLOT_DTYPE
from pyfriction._sample import generate

from helpers import T0, ev, require_engine

JOIN_TIMEOUT = 120.0
META = 128  # the header's Meta block: table_lock, steps_lock, names_lock, ..., dirty at +36
DIRTY = 36


@pytest.fixture(autouse=True)
def _compiled() -> None:
    require_engine("compiled")


def store_uri(path: Any) -> str:
    return f"file://{os.fspath(path)}"


def sections(capacity: int) -> dict[str, int]:
    from pyfriction import _core

    return _core.store_sections(capacity, 10_000)[0]  # type: ignore[no-any-return]


def slots_of(path: Any, capacity: int) -> np.memmap:
    return np.memmap(path, dtype=SLOT_DTYPE, mode="r", offset=sections(capacity)["slots"], shape=(capacity,))


def meta_words(path: Any) -> tuple[int, ...]:
    with open(path, "rb") as fh:
        fh.seek(META)
        return struct.unpack("<10I", fh.read(40))


def run_all(procs: list[Any], timeout: float = JOIN_TIMEOUT) -> None:
    """Start, join, and fail (killing the rest) when one fails or hangs."""
    for p in procs:
        p.start()
    deadline = time.monotonic() + timeout
    try:
        for p in procs:
            p.join(max(0.1, deadline - time.monotonic()))
        hung = [p.name for p in procs if p.is_alive()]
        assert not hung, f"processes {hung} still running after {timeout:.0f} s"
        failed = {p.name: p.exitcode for p in procs if p.exitcode != 0}
        assert not failed, f"processes failed: {failed}"
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join(5)


def load(path: Any) -> Any:
    with open(path, "rb") as fh:
        return msgspec.msgpack.decode(fh.read())


def dump(path: Any, value: Any) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "wb") as fh:
        fh.write(msgspec.msgpack.encode(value))
    os.replace(tmp, path)


def stats_of(tracker: pyfriction.Tracker) -> dict[str, Any]:
    stats = msgspec.to_builtins(tracker.stats())
    for key in ("engine", "queue_depth", "callbacks_dropped", "callbacks_failed"):
        del stats[key]
    return stats


def memory_run(
    events: list[dict[str, Any]], capacity: int, config: Any = None
) -> tuple[list[float], list[Any], dict[str, Any]]:
    """A single in-memory tracker fed the whole stream in order: scores, episodes, stats."""
    tracker = pyfriction.Tracker(config, engine="compiled", capacity=capacity)
    seen: list[pyfriction.Episode] = []
    tracker.on_friction(seen.append, sync=True)
    scores = [tracker.observe(e) for e in events]
    stats = stats_of(tracker)
    tracker.close()
    return scores, [msgspec.to_builtins(e) for e in seen], stats


# -- (a) serialised round-robin ----------------------------------------------------------------------
SERIAL_USERS = 200
SERIAL_CAPACITY = 256


def serial_worker(path: str, out: str, i: int, n: int, turn: Any, cond: Any) -> None:
    events = generate(SERIAL_USERS)
    tracker = pyfriction.Tracker(engine="compiled", store=store_uri(path), capacity=SERIAL_CAPACITY)
    current = [-1]
    seen: list[Any] = []
    tracker.on_friction(lambda e: seen.append([current[0], os.getpid(), msgspec.to_builtins(e)]), sync=True)
    scores = []
    for k in range(i, len(events), n):
        with cond:
            if not cond.wait_for(lambda: turn.value == k, timeout=60):
                raise RuntimeError(f"worker {i}: event {k}'s turn never came (at {turn.value})")
        current[0] = k
        scores.append([k, tracker.observe(events[k])])
        with cond:
            turn.value = k + 1
            cond.notify_all()
    tracker.close()
    dump(out, {"pid": os.getpid(), "scores": scores, "episodes": seen})


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_round_robin_serialised_equals_single_tracker(tmp_path: Any, method: str) -> None:
    ctx = mp.get_context(method)
    events = generate(SERIAL_USERS)
    path = tmp_path / "serial.state"
    turn, cond = ctx.Value("l", 0), ctx.Condition()
    n = 3
    outs = [tmp_path / f"out-{i}.bin" for i in range(n)]
    procs = [ctx.Process(target=serial_worker, args=(str(path), str(outs[i]), i, n, turn, cond), name=f"w{i}")
             for i in range(n)]  # fmt: skip
    run_all(procs)
    results = [load(o) for o in outs]
    scores: list[float | None] = [None] * len(events)
    shared_episodes = []
    for i, res in enumerate(results):
        for k, score in res["scores"]:
            assert k % n == i
            scores[k] = score
        for k, pid, episode in res["episodes"]:
            assert k % n == i and pid == res["pid"]  # run in the process that saw the crossing
            shared_episodes.append((k, episode))
    shared_episodes.sort(key=lambda item: item[0])
    want_scores, want_episodes, want_stats = memory_run(events, SERIAL_CAPACITY)
    assert scores == want_scores  # exactly, event by event
    assert len(want_episodes) > 10
    assert [e for _, e in shared_episodes] == want_episodes
    assert len({pid for r in results for _, pid, _ in r["episodes"]}) == n  # all fired some
    after = pyfriction.Tracker(engine="compiled", store=store_uri(path), capacity=SERIAL_CAPACITY)
    try:
        assert stats_of(after) == want_stats
    finally:
        after.close()


# -- (b) truly concurrent feeding ------------------------------------------------------------------
CONCURRENT_USERS = 400
CONCURRENT_CAPACITY = 512
NO_STALL = {"detectors": {"stall": {"enabled": False}}}


def concurrent_worker(path: str, out: str, i: int, n: int, barrier: Any) -> None:
    events = generate(CONCURRENT_USERS)
    users = sorted({e["user_id"] for e in events})
    mine = set(users[i::n])
    index = [k for k, e in enumerate(events) if e["user_id"] in mine]
    tracker = pyfriction.Tracker(NO_STALL, engine="compiled", store=store_uri(path), capacity=CONCURRENT_CAPACITY)
    seen: list[Any] = []
    tracker.on_friction(lambda e: seen.append(msgspec.to_builtins(e)), sync=True)
    barrier.wait(timeout=60)
    scores: list[list[Any]] = []
    if i % 2 == 0:  # one event at a time
        for k in index:
            scores.append([k, tracker.observe(events[k])])
    else:  # batches of rows
        for lo in range(0, len(index), 37):
            part = index[lo : lo + 37]
            scores.extend([k, s] for k, s in zip(part, tracker.observe_many([events[k] for k in part]).tolist()))
    tracker.close()
    dump(out, {"scores": scores, "episodes": seen})


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_concurrent_feeding_same_episodes_no_lost_events(tmp_path: Any, method: str) -> None:
    ctx = mp.get_context(method)
    events = generate(CONCURRENT_USERS)
    path = tmp_path / "concurrent.state"
    n = 2
    barrier = ctx.Barrier(n)
    outs = [tmp_path / f"out-{i}.bin" for i in range(n)]
    procs = [ctx.Process(target=concurrent_worker, args=(str(path), str(outs[i]), i, n, barrier), name=f"w{i}")
             for i in range(n)]  # fmt: skip
    run_all(procs)
    results = [load(o) for o in outs]
    want_scores, want_episodes, want_stats = memory_run(events, CONCURRENT_CAPACITY, NO_STALL)
    scores: list[float | None] = [None] * len(events)
    for res in results:
        for k, score in res["scores"]:
            scores[k] = score
    assert scores == want_scores

    def key(e: dict[str, Any]) -> tuple[str, float]:
        return (e["user_id"], e["ts"])

    got = sorted((e for res in results for e in res["episodes"]), key=key)
    assert len(want_episodes) > 10
    assert got == sorted(want_episodes, key=key)
    after = pyfriction.Tracker(NO_STALL, engine="compiled", store=store_uri(path), capacity=CONCURRENT_CAPACITY)
    try:
        assert stats_of(after) == want_stats
        assert after.stats().events == len(events)
        users = sorted({e["user_id"] for e in events})
        assert sum(after.state(u).events for u in users) == len(events)
    finally:
        after.close()


# -- (c) two processes, the same user ------------------------------------------------------------------
HAMMER_CLICKS = 20_000
ROUND_USERS = 200
ROUND_CLICKS = 30
HAMMER_CAPACITY = 256


def hammer_worker(path: str, out: str, i: int, barrier: Any) -> None:
    tracker = pyfriction.Tracker(engine="compiled", store=store_uri(path), capacity=HAMMER_CAPACITY)
    fired: list[str] = []
    tracker.on_friction(lambda e: fired.append(e.user_id), sync=True)
    observe = tracker.observe
    barrier.wait(timeout=60)
    for j in range(HAMMER_CLICKS):  # one user, both processes at full speed
        observe({"user_id": "hammered", "type": "click", "ts": T0 + j * 1e-4, "step": "checkout", "target": "#pay"})
    for r in range(ROUND_USERS):  # many crossings, each raced by both processes
        user = f"raced-{r}"
        clicks = [{"user_id": user, "type": "click", "ts": T0 + 100 + r + j * 1e-3, "step": "checkout", "target": "#pay"}
                  for j in range(ROUND_CLICKS)]  # fmt: skip
        barrier.wait(timeout=60)
        for e in clicks:
            observe(e)
    tracker.close()
    dump(out, {"fired": fired})


def test_same_user_from_two_processes_fires_once(tmp_path: Any) -> None:
    ctx = mp.get_context("fork")
    path = tmp_path / "hammer.state"
    barrier = ctx.Barrier(2)
    outs = [tmp_path / f"out-{i}.bin" for i in range(2)]
    run_all(
        [ctx.Process(target=hammer_worker, args=(str(path), str(outs[i]), i, barrier), name=f"w{i}") for i in range(2)]
    )
    fired = [u for o in outs for u in load(o)["fired"]]
    assert fired.count("hammered") == 1
    raced = [f"raced-{r}" for r in range(ROUND_USERS)]
    duplicates = {u: fired.count(u) for u in raced if fired.count(u) != 1}
    assert not duplicates, f"users whose crossing fired more or less than once: {duplicates}"
    after = pyfriction.Tracker(engine="compiled", store=store_uri(path), capacity=HAMMER_CAPACITY)
    try:
        assert after.state("hammered").events == 2 * HAMMER_CLICKS and after.state("hammered").episodes == 1
        assert all(after.state(u).events == 2 * ROUND_CLICKS and after.state(u).episodes == 1 for u in raced)
        stats = after.stats()
        assert stats.events == 2 * (HAMMER_CLICKS + ROUND_USERS * ROUND_CLICKS)
        assert stats.episodes == 1 + ROUND_USERS and stats.users == 1 + ROUND_USERS
    finally:
        after.close()


# -- eviction under contention ------------------------------------------------------------------------
EVICT_CAPACITY = 1000


def churn_worker(path: str, i: int, barrier: Any) -> None:
    tracker = pyfriction.Tracker(engine="compiled", store=store_uri(path), capacity=EVICT_CAPACITY)
    barrier.wait(timeout=60)
    for lo in range(0, 30_000, 1000):  # overlapping users: half shared with the other process
        users = [f"u-{(k if k % 2 else k + i)}" for k in range(lo, lo + 1000)]
        tracker.observe_many({"user_id": users, "type": ["click"] * 1000, "step": ["s"] * 1000,
                              "target": ["#x"] * 1000, "ts": np.full(1000, T0 + lo)})  # fmt: skip
    tracker.close()


def test_eviction_under_contention_keeps_the_table_consistent(tmp_path: Any) -> None:
    """Two processes inserting and evicting at once: users bounded by capacity, no user twice,
    every stored user found again, no lock left."""
    ctx = mp.get_context("fork")
    path = tmp_path / "churn.state"
    barrier = ctx.Barrier(2)
    run_all([ctx.Process(target=churn_worker, args=(str(path), i, barrier), name=f"w{i}") for i in range(2)])
    slots = slots_of(path, EVICT_CAPACITY)
    live = slots[slots["key"] != 0]
    assert len(live) == EVICT_CAPACITY and len(set(live["key"].tolist())) == EVICT_CAPACITY
    assert not slots["lock"].any() and meta_words(path)[:3] == (0, 0, 0)
    tracker = pyfriction.Tracker(engine="compiled", store=store_uri(path), capacity=EVICT_CAPACITY)
    try:
        stats = tracker.stats()
        assert stats.users == EVICT_CAPACITY and stats.events == 60_000
        assert stats.evictions >= 30_000 - EVICT_CAPACITY
        for uid in live["uid"].tolist():
            assert tracker.state(uid.decode()) is not None, uid
    finally:
        tracker.close()


# -- (d) stress with kill -9 ------------------------------------------------------------------------------
STRESS_USERS = 10_000
STRESS_CAPACITY = 16_384
STRESS_EVENTS = int(os.environ.get("PYFRICTION_STRESS_EVENTS", "1000000"))  # per survivor
CHUNK = 10_000
STRESS_TYPES = ["page", "click", "click", "click", "api_error", "search", "dead_click", "success", "form_error", "help"]
STRESS_STEPS = ["dashboard", "billing", "import", "reports"]
STRESS_TARGETS = ["#pay", "#save", "#next", None]


def stress_chunk(seed: int) -> dict[str, Any]:
    """10,000 events: every user once, in a shuffled order, varied types, steps and targets."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(STRESS_USERS)
    kinds = rng.integers(0, len(STRESS_TYPES), CHUNK)
    return {
        "user_id": [f"user-{u:05d}" for u in order.tolist()],
        "type": [STRESS_TYPES[k] for k in kinds.tolist()],
        "step": [STRESS_STEPS[s] for s in rng.integers(0, len(STRESS_STEPS), CHUNK).tolist()],
        "target": [STRESS_TARGETS[t] for t in rng.integers(0, len(STRESS_TARGETS), CHUNK).tolist()],
        "status": np.where(kinds == 4, 503, -1),
        "results": np.where(kinds == 5, 0, -1),
        "ts": np.linspace(0.0, 0.9, CHUNK),
    }


#: Index in ``progress`` of the flag the test sets once the victim is dead; survivors wait for it
#: at ``STRESS_GATE`` of their chunks, so the kill lands mid-run however fast or slow the machine is.
KILLED = 3
STRESS_GATE = 0.8


def stress_worker(path: str, slot: int, chunks: int, progress: Any, gate: int | None = None) -> None:
    tracker = pyfriction.Tracker(engine="compiled", store=store_uri(path), capacity=STRESS_CAPACITY, sync_interval=0.5)
    batches = [stress_chunk(slot * 10 + b) for b in range(3)]
    offsets = [b["ts"].copy() for b in batches]
    for c in range(chunks):
        if c == gate:
            while not progress[KILLED]:
                time.sleep(0.005)
        b = c % 3
        batches[b]["ts"] = offsets[b] + (T0 + c)
        scores = tracker.observe_many(batches[b])
        if np.isnan(scores).any():
            raise RuntimeError("invalid events in a stress chunk")
        progress[slot] = c + 1
    tracker.close()


def stopped(pid: int) -> bool:
    with open(f"/proc/{pid}/stat") as fh:
        return fh.read().rsplit(")", 1)[1].split()[0] in ("T", "t")


def kill_holding_a_lock(pid: int, path: Any, more: Any, tries: int = 300) -> tuple[int, int]:
    """SIGKILL ``pid`` at a moment it holds a slot lock, if one is found within ``tries``
    stops (SIGSTOP, look at the lock words, SIGCONT) while ``more()``: the worst moment to
    die. Returns the slots it held and the tries it took."""
    slots = slots_of(path, STRESS_CAPACITY)
    rng = np.random.default_rng()
    held = 0
    for attempt in range(1, tries + 1):
        os.kill(pid, signal.SIGSTOP)
        deadline = time.monotonic() + 2.0
        while not stopped(pid) and time.monotonic() < deadline:
            time.sleep(0.0005)
        held = int((slots["lock"] == pid).sum())
        if held or attempt == tries or not more():
            break
        os.kill(pid, signal.SIGCONT)
        time.sleep(float(rng.uniform(0.0005, 0.003)))
    os.kill(pid, signal.SIGKILL)
    os.kill(pid, signal.SIGCONT)
    return held, attempt


@pytest.mark.stress
def test_stress_two_survivors_and_a_killed_worker(tmp_path: Any) -> None:
    ctx = mp.get_context("spawn")
    path = tmp_path / "stress.state"
    chunks = STRESS_EVENTS // CHUNK
    progress = ctx.Array("l", 4, lock=False)
    gate = int(STRESS_GATE * chunks)
    survivors = [
        ctx.Process(target=stress_worker, args=(str(path), i, chunks, progress, gate), name=f"survivor{i}")
        for i in range(2)
    ]
    victim = ctx.Process(target=stress_worker, args=(str(path), 2, 10 * chunks, progress), name="victim")
    started = time.monotonic()
    for p in survivors + [victim]:
        p.start()
    try:
        # Kill the victim in the middle: the survivors well under way, the victim too.
        deadline = time.monotonic() + JOIN_TIMEOUT
        while (progress[0] + progress[1] < chunks or progress[2] < 2) and time.monotonic() < deadline:
            assert all(p.exitcode in (None, 0) for p in survivors + [victim]), "a worker failed early"
            time.sleep(0.01)
        assert victim.is_alive(), "the victim finished before it could be killed"
        # The survivors cannot pass the gate before the kill: the lock hunt may take all its tries.
        held, attempts = kill_holding_a_lock(victim.pid, path, victim.is_alive)
        killed_at = (progress[0] + progress[1]) / (2 * chunks)
        victim.join(10)
        progress[KILLED] = 1
        assert victim.exitcode == -signal.SIGKILL
        victim_done = progress[2] * CHUNK
        for p in survivors:
            p.join(max(0.1, deadline - time.monotonic()))
        assert not any(p.is_alive() for p in survivors), "the survivors did not finish (a lock left by the victim?)"
        assert [p.exitcode for p in survivors] == [0, 0]
    finally:
        for p in survivors + [victim]:
            if p.is_alive():
                p.kill()
                p.join(5)
    elapsed = time.monotonic() - started
    assert progress[0] == progress[1] == chunks
    assert 0.2 < killed_at < 0.9  # really in the middle
    assert held == 1, f"the victim was never caught holding a slot lock ({attempts} tries)"

    slots = slots_of(path, STRESS_CAPACITY)
    locked = np.flatnonzero(slots["lock"])
    assert locked.size == 0, (
        f"slots still locked after the survivors finished: {locked[:10]} pids {slots['lock'][locked[:10]]}"
    )
    tracker = pyfriction.Tracker(engine="compiled", store=store_uri(path), capacity=STRESS_CAPACITY)
    try:
        stats = tracker.stats()
        survived = 2 * chunks * CHUNK
        assert stats.users == STRESS_USERS and stats.invalid == 0 and stats.evictions == 0
        assert survived + victim_done <= stats.events <= survived + victim_done + CHUNK, (stats.events, victim_done)
        # No lost update: every counted event is in a user's slot (but the one the victim
        # may have been killed in the middle of).
        in_slots = int(slots["events"].astype(np.int64).sum())
        assert stats.events - 1 <= in_slots <= stats.events
        table_lock, steps_lock, names_lock = meta_words(path)[:3]
        assert (table_lock, steps_lock, names_lock) == (0, 0, 0)
    finally:
        tracker.close()
    print(f"stress: {stats.events:,} events in {elapsed:.1f} s, victim killed at {killed_at:.0%} "
          f"after {victim_done:,} events, holding {held} slot lock(s) (try {attempts})")  # fmt: skip


# -- (e) fork safety (gunicorn --preload) -------------------------------------------------------------
def test_tracker_created_before_fork_works_in_children(tmp_path: Any) -> None:
    ctx = mp.get_context("fork")
    path = tmp_path / "preload.state"
    cb_dir = tmp_path / "callbacks"
    cb_dir.mkdir()
    tracker = pyfriction.Tracker(engine="compiled", store=store_uri(path), capacity=1024, sync_interval=0.05)

    def on_friction(episode: pyfriction.Episode) -> None:  # async: on the dispatcher thread
        threads = sorted(t.name for t in threading.enumerate())
        with open(cb_dir / f"{os.getpid()}.txt", "a") as fh:
            fh.write(f"{episode.user_id} {threading.current_thread().name} {','.join(threads)}\n")

    tracker.on_friction(on_friction)

    def rage(user: str, t: float) -> list[dict[str, Any]]:
        return [ev(user, "page", t, "checkout")] + [
            ev(user, "click", t + 1 + 0.1 * i, "checkout", "#pay") for i in range(3)
        ]

    for e in rage("parent-0", T0):  # the dispatcher thread is running when the children fork
        tracker.observe(e)
    assert tracker.flush(timeout=10)

    def child(i: int, close: bool) -> None:
        for j in range(5):
            for e in rage(f"child{i}-{j}", T0 + 10 * j):
                tracker.observe(e)
        tracker.observe_many([ev(f"child{i}-batch", "page", T0 + k, f"step-{k % 3}") for k in range(50)])
        if not tracker.flush(timeout=10):
            os._exit(3)
        if close:
            tracker.close()

    procs = [ctx.Process(target=child, args=(i, i == 0), name=f"child{i}") for i in range(2)]
    run_all(procs, timeout=60)
    child_pids = {p.pid for p in procs}

    # The parent sees the children's users and events (and keeps working itself).
    for i in range(2):
        for j in range(5):
            state = tracker.state(f"child{i}-{j}")
            assert state is not None and state.events == 4 and state.episodes == 1
        assert tracker.state(f"child{i}-batch").events == 50
    assert tracker.stats().events == 4 + 2 * (5 * 4 + 50)
    assert tracker.stats().episodes == 1 + 2 * 5
    for e in rage("parent-1", T0 + 100):
        tracker.observe(e)
    assert tracker.flush(timeout=10)

    # Callbacks ran in the process that observed the crossing, on a live dispatcher thread,
    # next to a restarted write-back thread.
    by_pid = {int(f.stem): f.read_text().splitlines() for f in cb_dir.iterdir()}
    assert set(by_pid) == child_pids | {os.getpid()}
    assert sorted(line.split()[0] for line in by_pid[os.getpid()]) == ["parent-0", "parent-1"]
    for p in procs:
        lines = by_pid[p.pid]
        assert sorted(line.split()[0] for line in lines) == [f"{p.name}-{j}" for j in range(5)]
        for line in lines:
            _user, thread, threads = line.split()
            assert thread == "pyfriction-dispatcher" and "pyfriction-writeback" in threads.split(","), line
    tracker.close()
    after = pyfriction.Tracker(engine="compiled", store=store_uri(path), capacity=1024)
    try:
        assert after.stats().events == 4 + 2 * (5 * 4 + 50) + 4
    finally:
        after.close()


def test_closed_tracker_stays_detached_in_fork_children(tmp_path: Any) -> None:
    """A tracker closed before fork() must not re-attach in the child: the store stays clean
    (and no counter block is claimed in it)."""
    path = tmp_path / "closed.state"
    tracker = pyfriction.Tracker(engine="compiled", store=store_uri(path), capacity=16)
    tracker.observe(ev("u1", "page", T0, "a"))
    tracker.close()
    assert meta_words(path)[9] == 0  # dirty: clean after the last close
    child = mp.get_context("fork").Process(target=time.sleep, args=(0,))
    run_all([child], timeout=30)
    assert meta_words(path)[9] == 0, "the fork child re-attached a closed tracker (store marked dirty)"


# -- offline tools and attached processes ------------------------------------------------------------------
HOLDER = textwrap.dedent(
    """
    import sys, time
    import pyfriction
    tracker = pyfriction.Tracker(engine="compiled", store="file://" + sys.argv[1], capacity=64)
    tracker.observe({"user_id": "held", "type": "page", "ts": 1.7e9, "step": "home"})
    print("ready", flush=True)
    sys.stdin.read()  # until the test closes our stdin
    tracker.close()
    print("closed", flush=True)
    """
)


def test_offline_tools_refuse_a_store_in_use(tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "busy.state"
    root = os.path.dirname(os.path.dirname(pyfriction.__file__))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)}
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True, env=env)  # fmt: skip
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        assert cli.main(["store", "inspect", str(path), "--json"]) == 0
        info = msgspec.json.decode(capsys.readouterr().out)
        assert info["processes"] == [proc.pid] and info["users"] == 1
        assert cli.main(["store", "resize", str(path), "--capacity", "128"]) == 2
        assert f"processes [{proc.pid}] still use the store" in capsys.readouterr().err
        assert cli.main(["store", "repair", str(path)]) == 2
        assert "still use the store" in capsys.readouterr().err
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "closed"
        proc.stdout.close()
        proc.wait(timeout=30)
    assert cli.main(["store", "resize", str(path), "--capacity", "128", "--json"]) == 0
    info = msgspec.json.decode(capsys.readouterr().out)
    assert info["capacity"] == 128 and info["users"] == 1 and info["processes"] == []
