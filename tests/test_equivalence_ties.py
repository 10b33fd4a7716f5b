"""Evictions and the facts that go with them, when users tie: the same engine either way.

Both engines evict the least recently *touched* user (the table's recency order: the
reference's OrderedDict, the compiled core's log), never by ``last_ts``, so users whose
events all share one ``ts`` are no tie for them. What broke the equivalence at capacity 1-3
with every event at one ``ts`` was the other half of an eviction: the tracker drops an
evicted user's facts (insights, struggles, guidance) from the engine's ``drain_evicted``,
and the compiled core answered it differently:

* a long id (its text kept apart, ``ev_long``) evicted twice between two drains made the
  whole drain None ("more than it keeps"), and the tracker's fallback then kept the facts of
  a user evicted and back since, which the reference drops;
* a pipelined batch's delivery drained nothing while the next chunk ran on its thread, so
  the facts of users evicted before a report were dropped after it: those of a user evicted
  and back were lost, or the facts' own LRU dropped someone else first.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st
from test_equivalence import AGAINST, LONG_A, LONG_B, run_stream, snapshot_of

import pyfriction

from helpers import ENGINES, T0, ev, require_engine

# Every "Payment Failed" fires an episode for a user new to the table (a fact to drop).
CONFIG: dict[str, Any] = {
    "capacity": 1,
    "scoring": {"threshold": 0.2, "rearm": 0.0, "cooldown": 0.0},
    "event_map": {"Payment Failed": {"weight": 3.0}},
}


def tracker_on(engine: str, **overrides: Any) -> pyfriction.Tracker:
    require_engine(engine)
    tracker = pyfriction.Tracker({**CONFIG, **overrides}, engine=engine)
    if engine == "compiled":
        # Columnar batches pipelined in chunks of 3 rows: a chunk's delivery runs while the
        # next chunk is applied on a thread of its own (as in test_equivalence).
        tracker._core.pipe_rows, tracker._core.pipe_min = 3, 0  # type: ignore[attr-defined]
    return tracker


def columns(rows: list[dict[str, Any]]) -> dict[str, list[Any]]:
    return {f: [r.get(f) for r in rows] for f in ("user_id", "type", "ts", "step", "target")}


def facts(tracker: pyfriction.Tracker) -> tuple[list[str], list[list[str]]]:
    """The users with an insight record, and the open struggles, as a snapshot holds them."""
    insights = snapshot_of(tracker)["guidance"]["insights"]
    return [u[0] for u in insights["users"]], [list(s) for s in insights["struggles"]]


@pytest.mark.parametrize("form", ["rows", "columns"])
@pytest.mark.parametrize("engine", ENGINES)
def test_a_long_id_evicted_twice_between_drains(engine: str, form: str) -> None:
    """u0 (with an episode's facts) is evicted and back, and a long id evicted twice, all at
    one ts with no report in between: the drain names all four evictions, and u0's facts
    go (it came back as a new user)."""
    t = tracker_on(engine)
    t.observe(ev("u0", "Payment Failed", T0, "s", "#t"))
    assert facts(t) == (["u0"], [["u0", "custom"]])
    rows = [ev(u, "page", T0) for u in (LONG_A, "u0", LONG_A, "u0")]
    t.observe_many(columns(rows) if form == "columns" else rows)
    assert facts(t) == ([], [])
    assert t.state("u0") is not None and t.state(LONG_A) is None
    # The engine's own answer, oldest first (the same batch again: u0 is in the table).
    t.observe_many(columns(rows) if form == "columns" else rows)
    assert t._core.drain_evicted() == ["u0", LONG_A, "u0", LONG_A]
    t.close()


@pytest.mark.parametrize("engine", ENGINES)
def test_a_pipelined_delivery_forgets_the_users_evicted_before_its_report(engine: str) -> None:
    """Rows in chunks of 3: [u0 u0 u0] [u1 u0 u0] [u0]. u1 evicts u0 and u0 evicts u1, each
    with an episode, delivered while the last chunk runs: u0's old facts go before its new
    episode's are added, and u1's after; u0's new ones stay."""
    t = tracker_on(engine)
    users = ["u0", "u0", "u0", "u1", "u0", "u0", "u0"]
    t.observe_many(columns([ev(u, "Payment Failed", T0, "s", "#t") for u in users]))
    assert t.stats().episodes == 3 and t.stats().evictions == 2
    assert facts(t) == (["u0"], [["u0", "custom"]])
    t.close()


# -- the property: one ts for everything, a tiny table, many users --------------------------------
TIE_USERS = ["u0", "u1", "u2", "u3", "u4", "ü-ñ-😀", LONG_A, LONG_B]
TIE_TYPES = ["Payment Failed", "Payment Failed", "page", "click", "ticket", "success", "guidance_shown", "hover"]


@pytest.fixture
def against() -> str:
    require_engine(AGAINST)
    return AGAINST


@st.composite
def tie_streams(draw: Any) -> tuple[dict[str, Any], list[tuple[Any, ...]]]:
    config: dict[str, Any] = {**CONFIG, "capacity": draw(st.integers(1, 3))}
    if draw(st.booleans()):
        config["guidance"] = {
            "items": [{"id": "tip-1", "title": "Tip"}],
            "rules": [{"guidance": "tip-1"}],
            "holdout": {"share": draw(st.sampled_from([0.0, 0.5]))},
        }
    users = draw(st.lists(st.sampled_from(TIE_USERS), min_size=2, max_size=len(TIE_USERS), unique=True))

    def event() -> dict[str, Any]:
        e = ev(draw(st.sampled_from(users)), draw(st.sampled_from(TIE_TYPES)), T0, "s", "tip-1")
        if draw(st.integers(0, 3)) == 0:
            e["account_id"] = "acct"
        return e

    ops: list[tuple[Any, ...]] = []
    for _ in range(draw(st.integers(1, 25))):
        kind = draw(st.integers(0, 9))
        if kind < 3:
            ops.append(("observe", T0, event()))
        elif kind < 5:
            ops.append(("many", T0, [event() for _ in range(draw(st.integers(1, 12)))]))
        elif kind < 8:
            rows = [event() for _ in range(draw(st.integers(1, 12)))]
            cols = {f: [r.get(f) for r in rows] for f in ("user_id", "type", "ts", "step", "target", "account_id")}
            ops.append(("columns", T0, cols))
        elif kind < 9:
            ops.append(("tick", T0, T0))
        else:
            ops.append(("swap", T0, None))
    return config, ops


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(tie_streams())
def test_engines_agree_when_users_tie(against: str, stream: tuple[dict[str, Any], list[tuple[Any, ...]]]) -> None:
    """Every event at one ts, capacity 1-3, up to 8 users (long ids among them), observe,
    row and columnar batches (pipelined in chunks of 3), ticks and snapshot swaps: the same
    scores, episodes, states and snapshot (facts included) from both engines."""
    config, ops = stream
    note(f"ops={ops!r}")
    run_stream(config, ops)
