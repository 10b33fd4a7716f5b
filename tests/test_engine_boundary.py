"""What the engines accept at their boundary (issue 17, items 4, 5, 9 and 10), on both engines.

* text that is not well-formed Unicode (a lone surrogate) is an ``InvalidEvent`` at
  ``observe``/``observe_many``, never a later snapshot failure;
* a column whose ``len()`` disagrees with what iterating it yields is an ``InvalidEvent``,
  never a crash and never a silently shorter batch;
* event times outside the plausible range (default 2000-01-01 to now + 1 day) are refused, a
  time in milliseconds with a hint saying so;
* a 2-D ``ts`` array is the same ``InvalidEvent`` on both engines;
* the SDK's columnar path validates exactly as ``Tracker.observe_many`` does.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import pyfriction
from pyfriction import InvalidEvent

from helpers import T0, ev

SURROGATE = "u\udcff"


def _rage(user: str, target: str = "#pay") -> list[dict[str, Any]]:
    return [ev(user, "click", T0 + i * 0.2, "billing", target) for i in range(4)]


@pytest.mark.parametrize("field", ["user_id", "type", "step", "target", "account_id"])
def test_a_lone_surrogate_is_refused_at_observe(make_tracker: Callable[..., Any], field: str) -> None:
    t = make_tracker()
    event = {"user_id": "u1", "type": "click", "ts": T0, "step": "s", "target": "#t", "account_id": "a"}
    event[field] = SURROGATE
    with pytest.raises(InvalidEvent) as info:
        t.observe(event)
    assert info.value.field == field
    assert "well-formed Unicode" in str(info.value)
    assert t.stats().invalid == 1
    assert t.stats().users == 0  # nothing was applied


def test_a_lone_surrogate_row_is_nan_in_a_batch(make_tracker: Callable[..., Any]) -> None:
    t = make_tracker()
    users = ["a", SURROGATE, "b"]
    out = t.observe_many({"user_id": users, "type": ["click"] * 3, "ts": [T0, T0, T0], "target": ["#x"] * 3})
    assert [math.isnan(x) for x in out] == [False, True, False]
    rows = t.observe_many([ev("a", "click", T0 + 1), ev("b", "page", T0 + 1, SURROGATE)])
    assert [math.isnan(x) for x in rows] == [False, True]


def test_a_surrogate_user_never_blocks_a_snapshot(make_tracker: Callable[..., Any], tmp_path: Path) -> None:
    # The repro of issue 17 item 4: a surrogate user with an episode made every snapshot fail.
    t = make_tracker()
    for e in _rage(SURROGATE):
        with pytest.raises(InvalidEvent):
            t.observe(e)
    for e in _rage("fine"):
        t.observe(e)
    assert len(t.episodes_seen) == 1
    t.snapshot(tmp_path / "s.snap")
    restored = pyfriction.Tracker.restore(tmp_path / "s.snap", engine=t.engine)
    assert restored.state("fine") is not None


class LyingList:
    """A sequence whose ``len()`` says more rows than iterating yields (issue 17 item 5)."""

    def __init__(self, items: list[Any], claimed: int) -> None:
        self.items = items
        self.claimed = claimed

    def __len__(self) -> int:
        return self.claimed

    def __iter__(self) -> Iterator[Any]:
        return iter(self.items)

    def __getitem__(self, i: int) -> Any:
        return self.items[i]


@pytest.mark.parametrize("column", ["user_id", "type", "ts", "step", "target", "account_id"])
def test_a_column_whose_len_lies_is_refused(make_tracker: Callable[..., Any], column: str) -> None:
    t = make_tracker()
    batch: dict[str, Any] = {
        "user_id": [f"u{i}" for i in range(5)],
        "type": ["click"] * 5,
        "ts": [T0] * 5,
        "step": ["s"] * 5,
        "target": ["#t"] * 5,
        "account_id": ["a"] * 5,
    }
    batch[column] = LyingList(batch[column][:1], 5)
    with pytest.raises(InvalidEvent) as info:
        t.observe_many(batch)
    assert info.value.field == column
    assert "yields 1 rows" in str(info.value)
    assert t.stats().users == 0


def test_a_column_that_says_fewer_rows_is_refused(make_tracker: Callable[..., Any]) -> None:
    t = make_tracker()
    batch = {"user_id": LyingList(["a", "b", "c"], 2), "type": LyingList(["click"] * 3, 2)}
    with pytest.raises(InvalidEvent, match="yields 3 rows"):
        t.observe_many(batch)


@pytest.mark.parametrize(
    "ts",
    [np.full((2, 1), T0), np.full((1, 2), T0), np.array(T0), [[T0], [T0]]],
    ids=["2x1", "1x2", "0-d", "nested-list"],
)
def test_a_ts_column_of_another_shape_is_the_same_error_on_both(make_tracker: Callable[..., Any], ts: Any) -> None:
    t = make_tracker()
    batch = {"user_id": ["a", "b"], "type": ["click", "click"], "ts": ts}
    if isinstance(ts, list):
        # Rows of a nested list are lists, not times: each row is invalid (NaN), on both.
        assert np.isnan(t.observe_many(batch)).all()
        return
    with pytest.raises(InvalidEvent) as info:
        t.observe_many(batch)
    assert info.value.field == "ts"


@pytest.mark.parametrize("bad", [1.7e12, 1.7e15, 1e300, 100.0, 0.0, 946_684_799.0, time.time() + 2 * 86400])
def test_implausible_times_are_refused(make_tracker: Callable[..., Any], bad: float) -> None:
    t = make_tracker()
    with pytest.raises(InvalidEvent) as info:
        t.observe(ev("u1", "click", bad, target="#t"))
    assert info.value.field == "ts"
    assert "plausible range" in str(info.value)
    out = t.observe_many({"user_id": ["u1", "u2"], "type": ["click"] * 2, "ts": np.array([T0, bad])})
    assert not math.isnan(out[0]) and math.isnan(out[1])
    out = t.observe_many({"user_id": ["u1", "u2"], "type": ["click"] * 2, "ts": [T0, bad]})
    assert not math.isnan(out[0]) and math.isnan(out[1])
    assert t.stats().invalid == 3


def test_milliseconds_get_a_hint(make_tracker: Callable[..., Any]) -> None:
    t = make_tracker()
    with pytest.raises(InvalidEvent, match="looks like milliseconds"):
        t.observe(ev("u1", "click", T0 * 1000.0))
    with pytest.raises(InvalidEvent) as info:
        t.observe(ev("u1", "click", 1e300))
    assert "milliseconds" not in str(info.value)


def test_one_millisecond_event_no_longer_makes_a_rage_episode(make_tracker: Callable[..., Any]) -> None:
    # Issue 17 item 9: a ts in ms froze the user's clock, so clicks 600 s apart became a burst.
    t = make_tracker()
    with pytest.raises(InvalidEvent):
        t.observe(ev("u1", "click", T0 * 1000.0, "billing", "#pay"))
    for i in range(4):
        t.observe(ev("u1", "click", T0 + 600.0 * i, "billing", "#pay"))
    assert t.episodes_seen == []


def test_the_range_is_configurable(make_tracker: Callable[..., Any]) -> None:
    t = make_tracker(events={"ts_min": 0.0, "ts_max_ahead": 1e12})
    assert t.observe(ev("u1", "click", 100.0)) == 0.0
    assert t.observe(ev("u1", "click", T0 * 100.0)) == 0.0
    with pytest.raises(InvalidEvent):
        t.observe(ev("u1", "click", 1e300))
    strict = make_tracker(events={"ts_min": T0})
    with pytest.raises(InvalidEvent, match="2023-11-14"):
        strict.observe(ev("u1", "click", T0 - 1.0))


def test_the_clock_is_not_judged(make_tracker: Callable[..., Any]) -> None:
    # A time taken from the tracker's clock is the host's own, not input: a test clock at
    # 100 s still works.
    t = make_tracker(clock=lambda: 100.0)
    assert t.observe(ev("u1", "click")) == 0.0
    assert t.observe_many({"user_id": ["u1"], "type": ["click"]})[0] == 0.0


def test_config_rejects_a_negative_range() -> None:
    with pytest.raises(pyfriction.ConfigError, match="ts_min"):
        pyfriction.Tracker(events={"ts_min": -1.0})
    with pytest.raises(pyfriction.ConfigError, match="ts_max_ahead"):
        pyfriction.Tracker(events={"ts_max_ahead": -1.0})


@settings(max_examples=60, deadline=None)
@given(ts=st.floats(allow_nan=True, allow_infinity=True))
def test_both_engines_judge_every_time_alike(ts: float) -> None:
    answers = []
    for engine in ("compiled", "reference"):
        if engine == "compiled" and not pyfriction.compiled_available():
            continue
        t = pyfriction.Tracker(engine=engine)
        try:
            answers.append(("ok", t.observe(ev("u1", "click", ts))))
        except InvalidEvent as exc:
            answers.append(("invalid", str(exc).split(" is outside")[0].split(" must")[0]))
        t.close()
    assert len(set(answers)) == 1, answers


# --- the SDK validates columns as the tracker does ------------------------------------------------
BAD_BATCHES: list[tuple[str, dict[str, Any]]] = [
    ("unknown column", {"user_id": ["a"], "type": ["click"], "colour": ["red"]}),
    ("unequal lengths", {"user_id": ["a", "b"], "type": ["click"]}),
    ("a column whose len lies", {"user_id": LyingList(["a"], 3), "type": ["click"] * 3}),
    ("a 2-D ts", {"user_id": ["a"], "type": ["click"], "ts": np.full((1, 1), T0)}),
    ("no type column", {"user_id": ["a"]}),
]


@pytest.mark.parametrize("name,batch", BAD_BATCHES, ids=[b[0] for b in BAD_BATCHES])
@pytest.mark.parametrize("sdk_mode", ["fast", "with options"])
def test_sdk_columns_raise_what_the_tracker_raises(
    sdk_reset: None, engine: str, name: str, batch: dict[str, Any], sdk_mode: str
) -> None:
    tracker = pyfriction.Tracker(engine=engine)
    with pytest.raises(InvalidEvent) as direct:
        tracker.observe_many(batch)
    tracker.close()
    options: dict[str, Any] = {"before_observe": lambda e: e} if sdk_mode == "with options" else {}
    pyfriction.init(engine=engine, default_integrations=False, **options)
    with pytest.raises(InvalidEvent) as via_sdk:
        pyfriction.observe_many(batch)
    assert (via_sdk.value.field, str(via_sdk.value)) == (direct.value.field, str(direct.value))


@pytest.mark.parametrize("sdk_mode", ["fast", "with options"])
def test_sdk_columns_score_what_the_tracker_scores(sdk_reset: None, engine: str, sdk_mode: str) -> None:
    batch = {
        "user_id": ["a", "a", "a", "b"],
        "type": ["click", "click", "api_error", "search"],
        "ts": [T0, T0 + 0.1, T0 + 0.2, T0],
        "target": ["#x", "#x", "#x", None],
        "status": [None, None, 503, None],
        "results": [None, None, None, 0],
    }
    tracker = pyfriction.Tracker(engine=engine)
    expected = tracker.observe_many(batch)
    tracker.close()
    options: dict[str, Any] = {"before_observe": lambda e: e} if sdk_mode == "with options" else {}
    pyfriction.init(engine=engine, default_integrations=False, **options)
    got = pyfriction.observe_many(batch)
    np.testing.assert_array_equal(got, expected)
    assert not np.isnan(got).any()


@pytest.mark.parametrize("dtype", [np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint32])
@pytest.mark.parametrize("name", ["status", "results"])
def test_an_integer_column_reads_as_the_general_rule_says(dtype: Any, name: str) -> None:
    """``events._int_column``: an integer array is -1 where a value is not in [0, 2**31),
    and a results column keeps SELECTION; narrow signed arrays take a shortcut to it."""
    from pyfriction import events

    info = np.iinfo(dtype)
    edges = [info.min, info.min + 1, -3, -2, -1, 0, 1, 2**31 - 2, 2**31 - 1, 2**31, info.max - 1, info.max]
    rng = np.random.default_rng(7)
    values = [v for v in edges if info.min <= v <= info.max]
    col = np.concatenate([np.array(values, dtype=dtype), rng.integers(info.min, info.max, 1000, dtype=dtype)])
    wide = col.astype(object)
    expected = np.array([v if 0 <= v < 2**31 else -1 for v in wide], dtype=np.int64)
    if name == "results":
        expected[wide == events.SELECTION] = events.SELECTION
    got = events._int_column(col, name)
    assert got.dtype == np.int64
    assert got.tolist() == expected.tolist()
