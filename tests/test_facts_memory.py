"""The per-user facts' memory (issue 18, point 5).

* A user's guidance record with the default caps takes at most 64 bytes in the file store,
  read from the bytes the file holds (not from a constant), for a user who got 1, 2 or 3
  items and saw, clicked or dismissed them; what it packs reads back as it was.
* A user the engine evicts (a full table, or ``idle_ttl``) loses every fact at once: the
  guidance record (traits included), the insight record and the open struggle, in the
  memory store (both engines) and in the file store (the compiled engine).
* Hypothesis: after any stream, the users with facts are users of the engine's table, and
  the memory and file stores hold the same users, traits and offers.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pyfriction
from pyfriction._hashing import key64
from pyfriction.userstate import GUIDANCE, GUIDE, INSIGHT, STRUGGLE, FileState

from helpers import T0, require_engine

ITEMS = ["pay", "card", "tax"]
#: The default caps (per_day 3, item_cooldown 1 h, dismiss_for 30 days, expire_after 15 min).
CONFIG: dict[str, Any] = {
    "guidance": {
        "items": [{"id": i, "title": f"{i} help"} for i in ITEMS],
        "rules": [{"step": "billing", "guidance": ITEMS}],
        "holdout": {"share": 0.0},
    },
    "scoring": {"cooldown": 0.0},
}


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


def tracker(engine: str, store: str | None = None, **kwargs: Any) -> pyfriction.Tracker:
    require_engine(engine)
    return pyfriction.Tracker(CONFIG, engine=engine, store=store, **kwargs)


def burst(t: pyfriction.Tracker, user: str, ts: float) -> None:
    """A rage burst on the billing step (an episode), then a success that rearms."""
    for i in range(3):
        t.observe({"user_id": user, "type": "click", "ts": ts + 0.25 * i, "step": "billing", "target": "#pay"})
    t.observe({"user_id": user, "type": "success", "ts": ts + 1.0, "step": "billing"})


def stored_record(t: pyfriction.Tracker, user: str) -> tuple[bytes, Any]:
    """The guidance record's bytes as the file holds them, and what spilled to the body."""
    facts = t._facts
    assert facts is not None
    table = facts.users_table
    with facts.locked():
        e = table.find(key64(user))
        assert e >= 0
        room = table.guide(e)
        got = facts.read_entry(table, e)
    assert got is not None
    return room, got[1][GUIDANCE]


def parts_of(t: pyfriction.Tracker, user: str) -> list[Any]:
    return [dict(t._state.users(p)).get(user) for p in (GUIDANCE, INSIGHT, STRUGGLE)]


@pytest.mark.parametrize("outcome", ["shown", "clicked", "dismissed", "completed"])
@pytest.mark.parametrize("n_items", [1, 2, 3])
def test_the_guidance_record_fits_64_bytes(tmp_path: Path, n_items: int, outcome: str) -> None:
    clock = Clock()
    # A small capacity: the store's files take their whole size on disk (pyfriction.diskspace).
    t = tracker("compiled", f"file://{tmp_path}/f.state", capacity=1_000, clock=clock)
    mem = tracker("compiled", capacity=1_000, clock=clock)
    user = "someone.with.a.long.id@example.com"
    try:
        for tr in (t, mem):
            tr.identify(user, {"locale": "de-AT", "plan": "pro", "seats": 12})
        for k in range(n_items):
            at = T0 + 600.0 * k
            clock.now = at + 5.0
            for tr in (t, mem):
                burst(tr, user, at)
                assert [g.id for g in tr.pending(user)] == [ITEMS[k]]
                assert tr.ack(user, ITEMS[k], outcome, ts=at + 30.0)
        room, stored = stored_record(t, user)
        length = room[0]
        # The bytes the file holds: the record, then zeros; nothing of it spilled.
        assert 0 < length <= GUIDE == 64
        assert room[length:] == bytes(GUIDE - length)
        assert stored is not None and stored[0] == room[:length]
        # Read back as it was: times to the record's 2 ms, those of marks (and of a
        # dismissal, the same as its offer's mark) to the second.
        assert t.traits(user) == mem.traits(user) == {"locale": "de-AT", "plan": "pro", "seats": 12}
        got, want = t._guidance.export()["users"], mem._guidance.export()["users"]
        assert [u[:2] for u in got] == [u[:2] for u in want]
        for g, w in zip(got, want):
            assert g[2] == pytest.approx(w[2], abs=0.002) and g[3] == pytest.approx(w[3], abs=0.002)
            assert g[4] == pytest.approx(w[4], abs=0.5)
            assert [o[0] for o in g[5]] == [o[0] for o in w[5]]
            for og, ow in zip(g[5], w[5]):
                assert list(og[1:6]) == pytest.approx(list(ow[1:6]), abs=0.5) and og[6] == ow[6]
        clock.now = T0 + 600.0 * n_items + 5.0
        for tr in (t, mem):
            burst(tr, user, T0 + 600.0 * n_items)
        assert [g.id for g in t.pending(user)] == [g.id for g in mem.pending(user)]
    finally:
        t.close()
        mem.close()


def test_bytes_per_user_of_the_file(tmp_path: Path) -> None:
    """The file is sized from the capacity: a fixed number of bytes per user."""
    sizes = []
    for capacity in (20_000, 40_000):
        path = tmp_path / f"c{capacity}.state"
        FileState(f"{path}.facts", capacity).close()
        sizes.append(os.path.getsize(f"{path}.facts"))
    per_user = (sizes[1] - sizes[0]) / 20_000
    assert 390 <= per_user <= 400  # index 8, entry 128 (the guidance record 64), side block 256


def evicted_everywhere(t: pyfriction.Tracker, user: str) -> None:
    # Any use of the facts drops those of the users evicted since the last (here: traits).
    assert t.traits(user) == {} and t.pending(user) == [] and t.unshown(user) == []
    assert parts_of(t, user) == [None, None, None]
    assert user not in t._state.user_ids()


def guided_user(t: pyfriction.Tracker, user: str, ts: float) -> None:
    """A user with every part: traits, an offer, an insight record, an open struggle."""
    t.identify(user, {"locale": "fr", "account_id": "acme"})
    burst(t, user, ts)
    assert all(p is not None for p in parts_of(t, user)), parts_of(t, user)


STORES = [("compiled", False), ("reference", False), ("compiled", True)]


@pytest.mark.parametrize(("engine", "on_file"), STORES)
def test_eviction_of_a_full_table_removes_every_fact(tmp_path: Path, engine: str, on_file: bool) -> None:
    clock = Clock()
    t = tracker(engine, f"file://{tmp_path}/f.state" if on_file else None, capacity=3, clock=clock)
    try:
        for i in range(3):
            guided_user(t, f"u{i}", T0 + i)
        before = t.insights(limit=None)
        for i in range(2):  # two new users push out the two least recently active
            t.observe({"user_id": f"new{i}", "type": "click", "ts": T0 + 10 + i})
        for i in range(2):
            evicted_everywhere(t, f"u{i}")
        assert all(p is not None for p in parts_of(t, "u2"))
        assert t.traits("u2") == {"locale": "fr", "account_id": "acme"}
        # The aggregates stay: an evicted user's episodes still count.
        after = t.insights(limit=None)
        assert (after.episodes, after.hotspots) == (before.episodes, before.hotspots)
        # Back again: a new user, with no trace of the old one.
        t.observe({"user_id": "u0", "type": "click", "ts": T0 + 20})
        assert t.traits("u0") == {} and parts_of(t, "u0") == [None, None, None]
    finally:
        t.close()


@pytest.mark.parametrize(("engine", "on_file"), STORES)
def test_idle_eviction_removes_every_fact(tmp_path: Path, engine: str, on_file: bool) -> None:
    clock = Clock()
    t = tracker(engine, f"file://{tmp_path}/f.state" if on_file else None, capacity=100, idle_ttl=3600.0,
                clock=clock)  # fmt: skip
    try:
        guided_user(t, "idle", T0)
        guided_user(t, "busy", T0 + 3000.0)
        t.tick(T0 + 3700.0)  # "idle" silent for over an hour
        evicted_everywhere(t, "idle")
        assert all(p is not None for p in parts_of(t, "busy"))
        # Evicted while inserting another user (no tick): the same.
        guided_user(t, "later", T0 + 6700.0)
        evicted_everywhere(t, "busy")
    finally:
        t.close()


def test_a_long_id_is_named_when_evicted(tmp_path: Path) -> None:
    long_id = "x" * 100 + "@example.com"  # beyond the 40 bytes a slot keeps
    for engine, on_file in STORES:
        t = tracker(engine, f"file://{tmp_path}/{engine}{on_file}.state" if on_file else None, capacity=1)
        try:
            guided_user(t, long_id, T0)
            t.observe({"user_id": "other", "type": "click", "ts": T0 + 5})
            evicted_everywhere(t, long_id)
        finally:
            t.close()


# -- hypothesis ------------------------------------------------------------------------------------------------
USERS = [f"u{i}" for i in range(6)] + ["y" * 50]

op = st.one_of(
    st.tuples(st.just("burst"), st.sampled_from(USERS), st.integers(1, 400)),
    st.tuples(st.just("click"), st.sampled_from(USERS), st.integers(1, 400)),
    st.tuples(st.just("ticket"), st.sampled_from(USERS), st.integers(1, 400)),
    st.tuples(st.just("identify"), st.sampled_from(USERS), st.sampled_from(["de", "fr", "pt-BR"])),
    st.tuples(st.just("pending"), st.sampled_from(USERS), st.integers(0, 5)),
    st.tuples(st.just("ack"), st.sampled_from(USERS), st.sampled_from(["shown", "dismissed", "clicked"])),
    st.tuples(st.just("tick"), st.just(""), st.integers(0, 4000)),
)


def apply(t: pyfriction.Tracker, clock: Clock, step: tuple[str, str, Any]) -> None:
    kind, user, arg = step
    if kind in ("burst", "click", "ticket"):
        clock.now += float(arg)
        if kind == "burst":
            burst(t, user, clock.now)
        else:
            t.observe({"user_id": user, "type": kind, "ts": clock.now, "step": "billing"})
    elif kind == "identify":
        if t._core.has(user):  # identify alone makes facts for a user the engine does not hold
            t.identify(user, {"locale": arg})
    elif kind == "pending":
        clock.now += float(arg)
        t.pending(user)
    elif kind == "ack":
        t.ack(user, "pay", arg, ts=clock.now)
    else:
        clock.now += float(arg)
        t.tick(clock.now)


def facts_of(t: pyfriction.Tracker) -> dict[str, Any]:
    guidance = {uid: (u.traits, [(o.guidance.id, bool(o.delivered), bool(o.shown), o.expired) for o in u.offers.values()])
                for uid, u in t._state.users(GUIDANCE)}  # fmt: skip
    return {
        "guidance": guidance,
        "insight": sorted(uid for uid, _u in t._state.users(INSIGHT)),
        "struggle": sorted(t._state.users(STRUGGLE)),
    }


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=st.lists(op, max_size=40), capacity=st.integers(1, 4))
def test_facts_follow_the_engine_table(tmp_path_factory: pytest.TempPathFactory, ops: list[Any],
                                       capacity: int) -> None:  # fmt: skip
    """After any stream: users with facts are in the engine's table (both engines, memory and
    file, with and without ``idle_ttl``); both engines hold the same facts; the file store
    holds the memory store's facts (without ``idle_ttl``: a store file evicts idle users one
    per insert, and sweeps them on tick, so its table may differ from the memory's there;
    and keeping, as a store file does, the facts of an evicted user who is back in the table
    by the time the evictions are drained: another process may have brought them back)."""
    require_engine("compiled")
    stores = [f"file://{tmp_path_factory.mktemp('facts')}/f.state" for _ in range(2)]
    setups: list[tuple[str, str | None, float | None]] = [
        ("compiled", None, 3600.0),
        ("reference", None, 3600.0),
        ("compiled", stores[0], 3600.0),
        ("compiled", None, None),
        ("compiled", stores[1], None),
    ]
    clocks = [Clock() for _ in setups]
    trackers = [tracker(engine, store, capacity=capacity, idle_ttl=ttl, clock=clock)
                for (engine, store, ttl), clock in zip(setups, clocks)]  # fmt: skip
    trackers[3]._keep_returned = True  # as the file store's
    try:
        for step in ops:
            for t, clock in zip(trackers, clocks):
                apply(t, clock, step)
        figures = []
        for t in trackers:
            t._forget_evicted()
            held = set(t._state.user_ids())
            assert all(t._core.has(uid) for uid in held), held
            figures.append(facts_of(t))
        assert figures[0] == figures[1], (ops, capacity)
        assert figures[3] == figures[4], (ops, capacity)
    finally:
        for t in trackers:
            t.close()


@pytest.mark.parametrize(("engine", "on_file"), STORES)
def test_more_evictions_than_the_engine_notes(tmp_path: Path, engine: str, on_file: bool) -> None:
    """Past EVICTED_MAX evictions between two uses of the facts, the tracker keeps the facts
    of the users the engine still holds, and only those."""
    from pyfriction._constants import EVICTED_MAX

    t = tracker(engine, f"file://{tmp_path}/f.state" if on_file else None, capacity=3)
    try:
        guided_user(t, "old", T0)
        t.observe_many({"user_id": [f"n{i}" for i in range(EVICTED_MAX + 10)], "type": ["click"] * (EVICTED_MAX + 10),
                        "ts": [T0 + 10 + i * 1e-3 for i in range(EVICTED_MAX + 10)]})  # fmt: skip
        guided_user(t, "new", T0 + 100)
        assert t._core.drain_evicted() == []  # drained by the episode of "new"
        evicted_everywhere(t, "old")
        assert all(p is not None for p in parts_of(t, "new"))
    finally:
        t.close()


@pytest.mark.parametrize("version", [1, 2])
def test_a_facts_file_of_an_older_version_is_refused_with_what_to_do(tmp_path: Path, version: int) -> None:
    """Version 2 files are locked with fcntl by the processes that write them: a process of
    this version (the header's pid word) must never share one with them."""
    from pyfriction import userstate
    from pyfriction.store import StoreError

    path = tmp_path / "old.state.facts"
    header = bytearray(userstate.HEADER)
    userstate._FIXED.pack_into(header, 0, userstate.MAGIC, version, 64, 64, 128, 64, 16, 32, 16, 0, 0)
    path.write_bytes(bytes(header))
    with pytest.raises(
        StoreError, match=rf"version {version}, this version reads version 3: move it aside \(or delete it"
    ):
        FileState(str(path), 64)


def test_a_batch_delivers_its_episodes_in_one_facts_transaction(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``observe_many`` on a file store: the episodes a batch queues are delivered inside one
    session (one hold of the facts lock for them all, not one each), and leave the facts the
    memory store leaves, users evicted in the middle of the batch included."""
    from pyfriction import userstate

    clock = Clock()
    file_t = tracker("compiled", f"file://{tmp_path}/f.state", capacity=4, clock=clock)
    mem_t = tracker("compiled", capacity=4, clock=clock)
    cols: dict[str, list[Any]] = {"user_id": [], "type": [], "ts": [], "step": [], "target": []}

    def add(user: str, kind: str, ts: float, step: str | None = "billing", target: str | None = "#pay") -> None:
        for name, value in zip(cols, (user, kind, ts, step, target), strict=True):
            cols[name].append(value)

    ts = T0
    # a and b struggle; n0 and n1 only pass by (no episode, no facts); then d's arrival pushes
    # a, the least recently active, out of the full table, and d's episode forgets a's facts
    # inside the batch's session (the facts table has room: nothing of its own evicts them).
    for user, rage in (("a", True), ("b", True), ("n0", False), ("n1", False), ("d", True)):
        for i in range(3 if rage else 1):
            add(user, "click", ts + 0.25 * i)
        if rage:
            add(user, "success", ts + 1.0, target=None)
        ts += 10.0
    locks: list[int] = []
    real = userstate.FileState._acquire

    def counted(self: FileState) -> Any:
        locks.append(self.fd)
        return real(self)

    try:
        monkeypatch.setattr(userstate.FileState, "_acquire", counted)
        file_t.observe_many(cols)
        monkeypatch.undo()
        mem_t.observe_many(cols)
        episodes = file_t.stats().episodes
        assert episodes == mem_t.stats().episodes == 3
        assert len(locks) == 1  # one lock for the batch's 3 episodes
        for user in ("a", "b", "n0", "n1", "d"):
            assert [p is None for p in parts_of(file_t, user)] == [p is None for p in parts_of(mem_t, user)], user
            assert file_t.pending(user) == mem_t.pending(user), user
        evicted_everywhere(file_t, "a")
        assert sorted(file_t._state.user_ids()) == sorted(mem_t._state.user_ids()) == ["b", "d"]
        got, want = file_t.insights(limit=None), mem_t.insights(limit=None)
        assert (got.episodes, got.hotspots) == (want.episodes, want.hotspots)
    finally:
        file_t.close()
        mem_t.close()


def test_more_evictions_than_the_engine_notes_within_one_batch(tmp_path: Path) -> None:
    """The same, in one batch on a file store: the episodes that end it are delivered in one
    session, and the tracker asks the store which users it holds from inside it."""
    from pyfriction._constants import EVICTED_MAX

    t = tracker("compiled", f"file://{tmp_path}/f.state", capacity=3)
    try:
        guided_user(t, "old", T0)
        n = EVICTED_MAX + 10
        cols: dict[str, list[Any]] = {
            "user_id": [f"n{i}" for i in range(n)],
            "type": ["click"] * n,
            "ts": [T0 + 10 + i * 1e-3 for i in range(n)],
            "step": [None] * n,
            "target": [None] * n,
        }
        for k, user in enumerate(("new1", "new2")):  # two episodes at the end of the batch
            for i in range(3):
                for name, value in zip(cols, (user, "click", T0 + 100 + k + 0.25 * i, "billing", "#pay"), strict=True):
                    cols[name].append(value)
        t.observe_many(cols)
        assert t.stats().episodes == 3
        evicted_everywhere(t, "old")
        for user in ("new1", "new2"):
            assert parts_of(t, user)[1] is not None, user  # the insight record
    finally:
        t.close()
