"""Guidance bookkeeping and insights shared through a ``file://`` store, across real processes
(issue 18, points 1, 2, 3 and 6 for the library).

Every step below runs in a process of its own (``fork`` and ``spawn``), each with its own
tracker on the same store:

* guidance queued by an episode in one process is returned by ``pending()`` in the next
  process on its very first call, once; ``unshown()`` keeps it in every process until one
  reports it shown; traits (the locale) set in one process steer the rules in another; a
  dismissal in one process holds the item back in another;
* four processes racing ``pending()`` for the same users: each item delivered exactly once;
* caps (``per_day``, item cooldown) hold across processes;
* insights of a stream fed round-robin by three processes, read from any process, equal a
  single in-memory tracker's on the same stream;
* a process killed (SIGKILL) while it holds the facts file's lock, in the middle of a change,
  wedges nobody: the next process takes the lock, checks the file and drops the torn record.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import msgspec
import pytest

import pyfriction
from pyfriction import guidance as guidance_mod
from pyfriction._hashing import key64
from pyfriction._sample import generate
from pyfriction.userstate import _ENTRY, ENTRY, FileState, facts_path

from helpers import require_engine

JOIN_TIMEOUT = 120.0
CAPACITY = 256
GUIDANCE_TOML = Path(pyfriction.__file__).parent / "data" / "guidance.toml"

CONFIG: dict[str, Any] = {
    "guidance": {
        "items": [
            {"id": "pay", "title": "Payment help", "kind": "banner"},
            {"id": "card", "title": "Card help", "kind": "banner"},
            {"id": "pay-de", "title": "Zahlungshilfe", "locale": "de"},
        ],
        "rules": [{"step": "billing", "guidance": ["pay-de", "pay", "card"]}],
        "holdout": {"share": 0.0},
        "caps": {"per_day": 3, "item_cooldown": 3600.0},
    },
    "scoring": {"cooldown": 0.0},
}


@pytest.fixture(autouse=True)
def _compiled() -> None:
    require_engine("compiled")


def tracker_on(path: str, config: Any = None) -> pyfriction.Tracker:
    return pyfriction.Tracker(CONFIG if config is None else config, engine="compiled", store=f"file://{path}",
                              capacity=CAPACITY)  # fmt: skip


def burst(tracker: pyfriction.Tracker, user: str, ts: float) -> str | None:
    """A rage burst on the billing step, then a success that rearms: the guidance id offered."""
    seen: list[pyfriction.Episode] = []
    tracker.on_friction(seen.append, sync=True)
    for i in range(3):
        tracker.observe({"user_id": user, "type": "click", "ts": ts + 0.1 * i, "step": "billing", "target": "#pay"})
    tracker.observe({"user_id": user, "type": "success", "ts": ts + 0.5, "step": "billing"})
    tracker._sync.remove(seen.append)
    assert len(seen) == 1, f"no episode for {user} at {ts}"
    return seen[0].guidance.id if seen[0].guidance is not None else None


# -- one step per process ------------------------------------------------------------------------------
def step(path: str, out: str, name: str, args: list[Any]) -> None:
    """Run scenario step ``name`` in this (new) process; its result goes to ``out``."""
    tracker = tracker_on(path)
    result: Any = None
    if name == "burst":
        result = burst(tracker, args[0], args[1])
    elif name == "pending":
        result = [[g.id for g in tracker.pending(u)] for u in args]
    elif name == "unshown":
        result = [g.id for g in guidance_mod.unshown(tracker, args[0])]
    elif name == "identify":
        tracker.identify(args[0], args[1])
    elif name == "traits":
        result = tracker.traits(args[0])
    elif name == "ack":
        result = tracker.ack(args[0], args[1], args[2])
    tracker.close()
    with open(out, "wb") as fh:
        fh.write(msgspec.msgpack.encode(result))


class Steps:
    """Runs each step in a fresh process of ``method`` and returns its result."""

    def __init__(self, tmp: Path, method: str) -> None:
        self.ctx = mp.get_context(method)
        self.path = str(tmp / "friction.state")
        self.tmp = tmp
        self.n = 0

    def __call__(self, name: str, *args: Any) -> Any:
        self.n += 1
        out = str(self.tmp / f"step-{self.n}.bin")
        p = self.ctx.Process(target=step, args=(self.path, out, name, list(args)))
        p.start()
        p.join(JOIN_TIMEOUT)
        if p.is_alive():
            p.kill()
        assert p.exitcode == 0, f"step {name} failed ({p.exitcode})"
        with open(out, "rb") as fh:
            return msgspec.msgpack.decode(fh.read())


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_guidance_reaches_the_user_from_any_process(tmp_path: Path, method: str) -> None:
    run = Steps(tmp_path, method)
    now = time.time()
    assert run("burst", "u1", now) == "pay"  # process 1 queues it
    assert run("pending", "u1") == [["pay"]]  # process 2: on its very first call
    assert run("pending", "u1") == [[]]  # process 3: delivered once
    # unshown: every process reads it again until one reports it shown.
    assert run("burst", "u2", now) == "pay"
    assert run("unshown", "u2") == ["pay"]
    assert run("unshown", "u2") == ["pay"]
    assert run("ack", "u2", "pay", "shown") is True
    assert run("unshown", "u2") == []
    assert run("pending", "u2") == [[]]
    # Traits set in one process steer the rules in another; a dismissal holds an item back.
    run("identify", "u3", {"locale": "de-AT", "plan": "pro"})
    assert run("traits", "u3") == {"locale": "de-AT", "plan": "pro"}
    assert run("burst", "u3", now) == "pay-de"
    assert run("ack", "u3", "pay-de", "dismissed") is True
    assert run("burst", "u3", now + 10) == "pay"  # pay-de dismissed (and cooling down)
    assert run("pending", "u3") == [["pay"]]  # pay-de was dismissed, so shown: not pending
    # A fresh tracker sees the insights of all of them: offered, delivered, shown, dismissed.
    tracker = tracker_on(run.path)
    try:
        items = {i.id: i for i in tracker.insights().items}
        assert (items["pay"].offered, items["pay"].delivered, items["pay"].shown) == (3, 3, 1)
        assert (items["pay-de"].offered, items["pay-de"].dismissed) == (1, 1)
        assert tracker.insights().guided_episodes == 4
    finally:
        tracker.close()


# -- racing readers -----------------------------------------------------------------------------------------
RACE_USERS = 40


def race_reader(path: str, out: str, barrier: Any) -> None:
    tracker = tracker_on(path)
    barrier.wait(timeout=60)
    got: list[list[str]] = [[] for _ in range(RACE_USERS)]
    for _ in range(3):  # every user, three times over, while the others do the same
        for u in range(RACE_USERS):
            got[u].extend(g.id for g in tracker.pending(f"r{u}"))
    tracker.close()
    with open(out, "wb") as fh:
        fh.write(msgspec.msgpack.encode(got))


def test_racing_processes_deliver_each_item_once(tmp_path: Path) -> None:
    ctx = mp.get_context("fork")
    path = str(tmp_path / "friction.state")
    tracker = tracker_on(path)
    now = time.time()
    for u in range(RACE_USERS):
        assert burst(tracker, f"r{u}", now) == "pay"
    barrier = ctx.Barrier(4)
    outs = [str(tmp_path / f"race-{i}.bin") for i in range(4)]
    procs = [ctx.Process(target=race_reader, args=(path, outs[i], barrier)) for i in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(JOIN_TIMEOUT)
    assert [p.exitcode for p in procs] == [0] * 4
    results = []
    for out in outs:
        with open(out, "rb") as fh:
            results.append(msgspec.msgpack.decode(fh.read()))
    for u in range(RACE_USERS):
        assert sum((r[u] for r in results), []) == ["pay"], f"user r{u}"
    assert tracker.pending("r0") == []
    assert tracker.insights().items[0].delivered == RACE_USERS
    tracker.close()


# -- caps --------------------------------------------------------------------------------------------------------
def caps_step(path: str, out: str, ts: float, config: Any) -> None:
    tracker = tracker_on(path, config)
    offered = burst(tracker, "capped", ts)
    delivered = [g.id for g in tracker.pending("capped")]
    tracker.close()
    with open(out, "wb") as fh:
        fh.write(msgspec.msgpack.encode([offered, delivered]))


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_caps_hold_across_processes(tmp_path: Path, method: str) -> None:
    """per_day = 3 in a rolling day over 6 episodes in 6 processes; then the item cooldown."""
    ctx = mp.get_context(method)
    path = str(tmp_path / "friction.state")
    no_cooldown = {**CONFIG, "guidance": {**CONFIG["guidance"], "caps": {"per_day": 3, "item_cooldown": 0.0}}}
    now = time.time()

    def one(ts: float, config: Any, n: int) -> list[Any]:
        out = str(tmp_path / f"caps-{n}.bin")
        p = ctx.Process(target=caps_step, args=(path, out, ts, config))
        p.start()
        p.join(JOIN_TIMEOUT)
        assert p.exitcode == 0
        with open(out, "rb") as fh:
            return msgspec.msgpack.decode(fh.read())  # type: ignore[no-any-return]

    got = [one(now + 60 * k, no_cooldown, k) for k in range(6)]
    assert [o for o, _ in got] == ["pay", "pay", "pay", None, None, None]  # 3 a day, whichever process
    assert [d for _, d in got] == [["pay"], ["pay"], ["pay"], [], [], []]
    # The cooldown of an item (3600 s) holds in another process: the next item is offered.
    path = str(tmp_path / "cooldown.state")
    got = [one(now + 60 * k, CONFIG, 10 + k) for k in range(3)]
    assert [o for o, _ in got] == ["pay", "card", None]


# -- insights totals ----------------------------------------------------------------------------------------
SERIAL_USERS = 150


def insights_worker(path: str, i: int, n: int, turn: Any, cond: Any) -> None:
    events = generate(SERIAL_USERS)
    tracker = pyfriction.Tracker(str(GUIDANCE_TOML), engine="compiled", store=f"file://{path}", capacity=CAPACITY)
    for k in range(i, len(events), n):
        with cond:
            if not cond.wait_for(lambda: turn.value == k, timeout=60):
                raise RuntimeError(f"worker {i}: event {k}'s turn never came")
        tracker.observe(events[k])
        with cond:
            turn.value = k + 1
            cond.notify_all()
    tracker.close()


def figures(tracker: pyfriction.Tracker) -> dict[str, Any]:
    return msgspec.to_builtins(tracker.insights(limit=None))  # type: ignore[no-any-return]


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_insights_totals_equal_a_single_tracker(tmp_path: Path, method: str) -> None:
    ctx = mp.get_context(method)
    path = str(tmp_path / "friction.state")
    turn, cond = ctx.Value("l", 0), ctx.Condition()
    procs = [ctx.Process(target=insights_worker, args=(path, i, 3, turn, cond)) for i in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(JOIN_TIMEOUT)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    single = pyfriction.Tracker(str(GUIDANCE_TOML), engine="compiled", capacity=CAPACITY)
    for e in generate(SERIAL_USERS):
        single.observe(e)
    want = figures(single)
    single.close()
    assert want["episodes"] > 20 and want["tickets"] > 5 and want["lead_time"]["preceded"] > 0
    assert want["guided_episodes"] > 0 and want["hotspots"] and want["accounts"]
    shared = tracker_on(path, str(GUIDANCE_TOML))
    try:
        assert figures(shared) == want
    finally:
        shared.close()
    # `pyfriction report --store FILE` prints the same totals.
    from pyfriction import cli

    out = tmp_path / "report.json"
    with open(out, "w") as fh:
        import contextlib

        with contextlib.redirect_stdout(fh):
            assert cli.main(["report", "--store", path, "--config", str(GUIDANCE_TOML), "--json"]) == 0
    report = msgspec.json.decode(out.read_bytes())
    assert report["insights"]["episodes"] == want["episodes"]
    assert report["insights"]["hotspots"][:10] == want["hotspots"][:10]


# -- kill -9 with the lock held ---------------------------------------------------------------------------------
def lock_holder(path: str, ready: Any) -> None:
    """Take the facts lock, tear one user's record as a crash mid-write would, and hang."""
    tracker = tracker_on(path)
    facts = tracker._facts
    assert facts is not None
    with facts.locked():
        t = facts.users_table
        e = t.find(key64("torn"))
        key, tick, ext, length, kind, crc = t.head(e)
        facts.mm[t.entry_off + ENTRY * e : t.entry_off + ENTRY * e + _ENTRY.size] = _ENTRY.pack(
            key, tick, ext, length, kind, crc ^ 1
        )
        ready.set()
        time.sleep(600)


def busy_worker(path: str) -> None:
    tracker = tracker_on(path)
    n = 0
    while True:  # until killed: the lock taken and released all the time
        tracker.identify(f"busy-{n % 50}", {"n": n, "plan": "x" * (n % 300)})
        tracker.pending(f"busy-{n % 50}")
        n += 1


def test_a_process_killed_holding_the_lock_wedges_nobody(tmp_path: Path) -> None:
    ctx = mp.get_context("fork")
    path = str(tmp_path / "friction.state")
    tracker = tracker_on(path)
    now = time.time()
    assert burst(tracker, "torn", now) == "pay"
    assert burst(tracker, "whole", now) == "pay"
    ready = ctx.Event()
    holder = ctx.Process(target=lock_holder, args=(path, ready))
    holder.start()
    assert ready.wait(60)
    os.kill(holder.pid, signal.SIGKILL)  # type: ignore[arg-type]
    holder.join(10)
    # Not wedged: the lock is free again (a wedged call would never return; the thread would
    # still be alive after the join).
    got: list[list[str]] = []
    reader = threading.Thread(target=lambda: got.append([g.id for g in tracker.pending("whole")]))
    reader.start()
    reader.join(120)
    assert not reader.is_alive() and got == [["pay"]]
    assert tracker.pending("torn") == []  # its torn record was dropped by the check
    assert tracker._facts is not None and tracker._facts.users_table.state()[2] == 1
    # Killed at random moments of a busy loop: the others carry on, the file stays consistent.
    for round_ in range(5):
        victim = ctx.Process(target=busy_worker, args=(path,))
        victim.start()
        time.sleep(0.2 + 0.05 * round_)
        os.kill(victim.pid, signal.SIGKILL)  # type: ignore[arg-type]
        victim.join(10)
        assert victim.exitcode == -signal.SIGKILL
        tracker.identify("after", {"round": round_})
        assert tracker.traits("after") == {"round": round_}
    facts = FileState(facts_path(path), CAPACITY)
    ids = [uid for uid, _u in tracker._guidance._state.users(0)]
    assert "after" in ids and len(ids) == len(set(ids))
    assert facts.count(0) == len(ids)
    tracker.close()


def test_a_session_is_one_transaction(tmp_path: Path) -> None:
    """``FileState.session``: the transactions a thread opens inside it see each other's changes
    and are written together when it exits; nothing of it when it raises; another thread's
    transaction waits for the session's end."""
    from pyfriction.userstate import STRUGGLE

    class Plain:
        def encode(self, value: Any) -> Any:
            return value

        def decode(self, plain: Any) -> Any:
            return plain

    state = FileState(str(tmp_path / "s.facts"), 64)
    state.codec(STRUGGLE, Plain())
    other = FileState(str(tmp_path / "s.facts"), 64)  # the same file: the same lock
    other.codec(STRUGGLE, Plain())

    def read(s: FileState, uid: str) -> Any:
        with s.transaction() as tx:
            return tx.peek(STRUGGLE, uid)

    seen: list[Any] = []
    with state.session():
        with state.transaction() as tx:
            tx.user(STRUGGLE, "u", lambda: "first")
            tx.row("items", "x", lambda: [0])[0] += 1
        with state.transaction() as tx:
            assert tx.peek(STRUGGLE, "u") == "first"  # the earlier block's change
            assert tx.get_row("items", "x") == [1]
            tx.discard(STRUGGLE, "u")
            tx.user(STRUGGLE, "u", lambda: "second")
        waiter = threading.Thread(target=lambda: seen.append(read(other, "u")))
        waiter.start()
        time.sleep(0.2)
        assert seen == []  # the session holds the lock
    waiter.join(10)
    assert seen == ["second"]  # written once the session ended
    assert read(state, "u") == "second" and dict(state.rows("items")) == {"x": [1]}
    with pytest.raises(RuntimeError):
        with state.session():
            with state.transaction() as tx:
                tx.discard(STRUGGLE, "u")
                tx.user(STRUGGLE, "u", lambda: "third")
            raise RuntimeError("boom")
    assert read(other, "u") == "second"  # a session that raised wrote nothing
    with state.session(), state.session(), state.transaction() as tx:  # nested: the outer commits
        tx.discard(STRUGGLE, "u")
        tx.user(STRUGGLE, "u", lambda: "fourth")
    assert read(other, "u") == "fourth"


def test_scalars_kept_decoded_follow_every_writer(tmp_path: Path) -> None:
    """A store reuses the scalars it last wrote only while the file holds exactly those bytes:
    a change by another store (or process), and a transaction that raised after changing them,
    are seen."""
    path = str(tmp_path / "s.facts")
    a, b = FileState(path, 64), FileState(path, 64)

    def add(s: FileState, n: int, fail: bool = False) -> None:
        with s.transaction() as tx:
            tx.scalars["n"] = tx.scalars.get("n", 0) + n
            if fail:
                raise RuntimeError("boom")

    def n(s: FileState) -> int:
        with s.transaction() as tx:
            return int(tx.scalars.get("n", 0))

    add(a, 1)
    assert n(a) == 1
    add(b, 2)  # another store on the file
    assert n(a) == 3
    with pytest.raises(RuntimeError):
        add(a, 100, fail=True)  # changed a's dict, then raised: nothing written
    assert n(a) == 3 and n(b) == 3
    ctx = mp.get_context("fork")  # a child starts with a copy of a's dict
    p = ctx.Process(target=add, args=(a, 10))
    p.start()
    p.join(JOIN_TIMEOUT)
    assert p.exitcode == 0
    assert n(a) == 13 and n(b) == 13
