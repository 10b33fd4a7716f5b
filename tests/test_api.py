"""The public API: engine selection, observe/observe_many, validation, score/state/stats,
callbacks (sync and async), and the module-level default tracker.

Every test that touches an engine runs on both (the ``engine`` fixture of conftest.py).
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

import pyfriction

from helpers import T0, ev

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WAIT = 10.0  # upper bound on any wait for another thread; never reached when things work


def rage(user: str, ts: float, target: str = "#pay", n: int = 3, **extra: Any) -> list[dict[str, Any]]:
    """``n`` clicks on ``target`` 0.1 s apart: 3 of them make a rage click, which alone
    (weight 1.2, score 0.699) crosses the default threshold of 0.6."""
    return [ev(user, "click", ts + 0.1 * i, target=target, **extra) for i in range(n)]


def mixed_stream() -> list[dict[str, Any]]:
    """Several users and detectors, with api_error statuses and search results mattering."""
    out: list[dict[str, Any]] = []
    out.append(ev("a", "page", T0, "billing.card"))
    out += rage("a", T0 + 1)
    out.append(ev("b", "page", T0 + 2, "reports"))
    out += [ev("b", "search", T0 + 3 + i, "reports", "#search", results=0) for i in range(2)]
    out += [ev("c", "api_error", T0 + 4 + i, "import", "POST /x", status=401) for i in range(3)]
    out += [ev("d", "api_error", T0 + 4 + i, "import", "POST /x", status=500) for i in range(3)]
    out.append(ev("b", "search", T0 + 9, "reports", "#search", results=7))
    out.append(ev("a", "help", T0 + 10, "billing.card", "article:pay"))
    out.append(ev("e", "page", T0 + 11, "dashboard", account_id="acct-1"))
    return out


# --- engine selection -----------------------------------------------------------------------


def test_engine_attribute(engine: str) -> None:
    tracker = pyfriction.Tracker(engine=engine)
    try:
        assert tracker.engine == engine
        assert tracker.stats().engine == engine
    finally:
        tracker.close()


@pytest.mark.parametrize("bad", ["fast", "", "Reference", "COMPILED", "c", None, 1])
def test_invalid_engine_raises_value_error(bad: Any) -> None:
    with pytest.raises(ValueError, match="engine"):
        pyfriction.Tracker(engine=bad)


def _engine_in_subprocess(env_value: Any) -> tuple[str, str]:
    env = dict(os.environ)
    env.pop("PYFRICTION_NO_EXTENSIONS", None)
    if env_value is not None:
        env["PYFRICTION_NO_EXTENSIONS"] = env_value
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    code = (
        "import pyfriction\n"
        "t = pyfriction.Tracker(engine='auto')\n"
        "print(t.engine, pyfriction.compiled_available())\n"
        "t.close()\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    chosen, available = proc.stdout.split()
    return chosen, available


def test_auto_engine_with_no_extensions_env_is_reference(engine: str) -> None:
    # Meaningful on both parametrizations: with the compiled core built, the env must still win.
    assert _engine_in_subprocess("1") == ("reference", "False")


def test_auto_engine_without_env(engine: str) -> None:
    chosen, available = _engine_in_subprocess(None)
    if engine == "compiled":  # the compiled core is built (else the fixture skipped/failed)
        assert (chosen, available) == ("compiled", "True")
        assert _engine_in_subprocess("0") == ("compiled", "True")
    else:
        assert chosen == ("compiled" if available == "True" else "reference")


def test_auto_falls_back_to_reference_when_compiled_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing() -> Any:
        raise ImportError("no _core")

    monkeypatch.delenv("PYFRICTION_NO_EXTENSIONS", raising=False)
    monkeypatch.setattr(pyfriction.tracker, "_load_compiled", missing)
    assert pyfriction.compiled_available() is False
    tracker = pyfriction.Tracker(engine="auto")
    assert tracker.engine == "reference"
    tracker.close()
    with pytest.raises(ImportError, match="reference"):
        pyfriction.Tracker(engine="compiled")


# --- observe ----------------------------------------------------------------------------------


def test_observe_dicts_and_events_score_the_same(make_tracker: Any) -> None:
    stream = mixed_stream()
    by_dict = make_tracker()
    by_struct = make_tracker()
    a = [by_dict.observe(e) for e in stream]
    b = [by_struct.observe(pyfriction.Event(**e)) for e in stream]
    assert a == b
    for score in a:
        assert type(score) is float
        assert 0.0 <= score < 1.0
    assert max(a) > 0.6  # the stream does build friction
    assert len(by_dict.episodes_seen) == len(by_struct.episodes_seen) >= 2
    for u in "abcde":
        assert by_dict.state(u) == by_struct.state(u)


def test_observe_rage_click_score_and_episode(make_tracker: Any) -> None:
    t = make_tracker()
    scores = [t.observe(e) for e in rage("u1", T0, account_id="acct-9")]
    assert scores[0] == scores[1] == 0.0
    assert scores[2] == pytest.approx(1.0 - math.exp(-1.2), rel=1e-6)
    assert len(t.episodes_seen) == 1
    episode = t.episodes_seen[0]
    assert episode.user_id == "u1"
    assert episode.account_id == "acct-9"
    assert episode.target == "#pay"
    assert episode.ts == pytest.approx(T0 + 0.2)
    assert episode.score == pytest.approx(scores[2])
    assert episode.reasons[0].detector == "rage_click"
    assert "#pay" in episode.reasons[0].detail


def test_status_and_results_properties_matter(make_tracker: Any) -> None:
    t = make_tracker()
    for e in mixed_stream():
        t.observe(e)
    # three 401s are ordinary: 0.3 of the error-burst weight; three 500s are the full 1.0
    assert t.state("c").detectors["error_burst"] == pytest.approx(0.3, rel=1e-6)
    assert t.state("d").detectors["error_burst"] == pytest.approx(1.0, rel=1e-6)
    # ... and so do the repeated failures of "POST /x": 0.6 * 0.3 and 0.6 from the 2nd on
    decay = 2 ** (-1 / 180)
    assert t.state("c").detectors["repeat_failure"] == pytest.approx(0.18 * decay + 0.18, rel=1e-6)
    assert t.state("d").detectors["repeat_failure"] == pytest.approx(0.6 * decay + 0.6, rel=1e-6)
    # the first empty search adds single_weight 0, the second (T0+4) 0.6; the state is as of
    # b's last event, T0+9
    assert t.state("b").detectors["empty_search"] == pytest.approx(0.6 * 2 ** (-5 / 180), rel=1e-6)


INVALID: list[tuple[str, Any, str]] = [
    ("missing user_id", {"type": "click", "ts": T0}, "user_id"),
    ("None user_id", {"user_id": None, "type": "click", "ts": T0}, "user_id"),
    ("empty user_id", {"user_id": "", "type": "click", "ts": T0}, "user_id"),
    ("int user_id", {"user_id": 42, "type": "click", "ts": T0}, "user_id"),
    ("bytes user_id", {"user_id": b"u1", "type": "click", "ts": T0}, "user_id"),
    ("long user_id", {"user_id": "u" * 1025, "type": "click", "ts": T0}, "user_id"),
    ("missing type", {"user_id": "u1", "ts": T0}, "type"),
    ("empty type", {"user_id": "u1", "type": "", "ts": T0}, "type"),
    ("int type", {"user_id": "u1", "type": 3, "ts": T0}, "type"),
    ("long type", {"user_id": "u1", "type": "t" * 1025, "ts": T0}, "type"),
    ("bool ts", {"user_id": "u1", "type": "click", "ts": True}, "ts"),
    ("str ts", {"user_id": "u1", "type": "click", "ts": "1700000000"}, "ts"),
    ("nan ts", {"user_id": "u1", "type": "click", "ts": math.nan}, "ts"),
    ("inf ts", {"user_id": "u1", "type": "click", "ts": math.inf}, "ts"),
    ("-inf ts", {"user_id": "u1", "type": "click", "ts": -math.inf}, "ts"),
    ("negative ts", {"user_id": "u1", "type": "click", "ts": -1.0}, "ts"),
    ("negative int ts", {"user_id": "u1", "type": "click", "ts": -5}, "ts"),
    ("int step", {"user_id": "u1", "type": "page", "ts": T0, "step": 7}, "step"),
    ("long step", {"user_id": "u1", "type": "page", "ts": T0, "step": "s" * 1025}, "step"),
    ("long target", {"user_id": "u1", "type": "click", "ts": T0, "target": "#" * 1025}, "target"),
    ("list target", {"user_id": "u1", "type": "click", "ts": T0, "target": ["#a"]}, "target"),
    ("long account", {"user_id": "u1", "type": "click", "ts": T0, "account_id": "a" * 1025}, "account_id"),
    ("int account", {"user_id": "u1", "type": "click", "ts": T0, "account_id": 12}, "account_id"),
    ("list properties", {"user_id": "u1", "type": "click", "ts": T0, "properties": [1, 2]}, "properties"),
    ("str properties", {"user_id": "u1", "type": "click", "ts": T0, "properties": "x"}, "properties"),
    ("None event", None, "event"),
    ("list event", [("user_id", "u1"), ("type", "click")], "event"),
    ("str event", "u1 click", "event"),
    ("int event", 5, "event"),
    ("Event empty user", pyfriction.Event(user_id="", type="click", ts=T0), "user_id"),
    ("Event nan ts", pyfriction.Event(user_id="u1", type="click", ts=math.nan), "ts"),
    ("Event bad props", pyfriction.Event(user_id="u1", type="click", properties=[1]), "properties"),  # type: ignore[arg-type]
]


@pytest.mark.parametrize("event,field", [c[1:] for c in INVALID], ids=[c[0] for c in INVALID])
def test_invalid_event_names_field_and_is_counted(make_tracker: Any, event: Any, field: str) -> None:
    t = make_tracker()
    with pytest.raises(pyfriction.InvalidEvent) as info:
        t.observe(event)
    assert info.value.field == field
    assert isinstance(info.value, ValueError)
    assert f"`{field}`" in str(info.value)
    stats = t.stats()
    assert stats.invalid == 1
    assert stats.events == 0
    assert stats.users == 0
    # the tracker keeps working after a rejected event
    assert t.observe(ev("u1", "click", T0, target="#a")) == 0.0
    assert t.stats().invalid == 1
    assert t.stats().events == 1


def test_longest_accepted_strings(make_tracker: Any) -> None:
    t = make_tracker()
    long = "é" * 1024  # 1024 characters (2048 bytes): the limit counts characters
    t.observe({"user_id": long, "type": "page", "ts": T0, "step": long, "target": long, "account_id": long})
    state = t.state(long)
    assert state is not None and state.user_id == long and state.step == long
    assert t.stats().invalid == 0


def test_ts_missing_uses_tracker_clock(make_tracker: Any) -> None:
    now = [T0 + 123.5]
    t = make_tracker(clock=lambda: now[0])
    t.observe({"user_id": "u1", "type": "page", "step": "a"})
    assert t.state("u1").last_ts == T0 + 123.5
    now[0] = T0 + 200.0
    t.observe(pyfriction.Event(user_id="u1", type="click", target="#x"))
    state = t.state("u1")
    assert state.last_ts == T0 + 200.0
    assert state.step_seconds == pytest.approx(76.5)
    # explicit None also means "now"
    now[0] = T0 + 300.0
    t.observe({"user_id": "u2", "type": "click", "ts": None, "target": "#x"})
    assert t.state("u2").last_ts == T0 + 300.0


def test_ts_missing_uses_clock_for_rage_window(make_tracker: Any) -> None:
    now = [T0]
    t = make_tracker(clock=lambda: now[0])
    for i in range(3):  # 3 clicks 10 s apart: no rage click
        now[0] = T0 + 10 * i
        t.observe({"user_id": "u1", "type": "click", "target": "#a"})
    assert t.state("u1").detectors == {}
    for i in range(3):  # 3 clicks within 0.2 s: rage
        now[0] = T0 + 100 + 0.1 * i
        t.observe({"user_id": "u1", "type": "click", "target": "#a"})
    assert "rage_click" in t.state("u1").detectors


def test_unknown_and_excluded_events_change_nothing(make_tracker: Any) -> None:
    t = make_tracker(exclude_targets=["#ignored*"], exclude_steps=["admin.*"])
    assert t.observe(ev("u1", "scroll", T0, target="#a")) == 0.0
    assert t.state("u1") is None
    for e in rage("u1", T0 + 1, target="#ignored-button"):
        assert t.observe(e) == 0.0
    assert t.observe(ev("u1", "page", T0 + 2, "admin.users")) == 0.0
    assert t.state("u1") is None
    stats = t.stats()
    assert (stats.events, stats.unknown, stats.excluded, stats.users) == (5, 1, 4, 0)
    # a tracked user's unknown event returns the current score and changes nothing
    for e in rage("u1", T0 + 10):
        score = t.observe(e)
    before = t.state("u1")
    assert t.observe(ev("u1", "scroll", T0 + 11)) == score
    assert t.state("u1") == before


# --- observe_many -----------------------------------------------------------------------------


def _twin_scores(make_tracker: Any, rows: list[Any], **kwargs: Any) -> tuple[list[float], Any]:
    twin = make_tracker(**kwargs)
    return [twin.observe(e) for e in rows], twin


def _columns(rows: list[dict[str, Any]]) -> dict[str, list[Any]]:
    cols: dict[str, list[Any]] = {c: [] for c in ("user_id", "type", "ts", "step", "target", "account_id")}
    cols["status"] = []
    cols["results"] = []
    for e in rows:
        for c in ("user_id", "type", "ts", "step", "target", "account_id"):
            cols[c].append(e.get(c))
        props = e.get("properties") or {}
        cols["status"].append(props.get("status", -1))
        cols["results"].append(props.get("results", -1))
    return cols


def _assert_same_state(a: Any, b: Any, users: Any) -> None:
    for u in users:
        assert a.state(u) == b.state(u), u
    sa, sb = a.stats(), b.stats()
    assert (sa.events, sa.users, sa.episodes, sa.invalid) == (sb.events, sb.users, sb.episodes, sb.invalid)


def test_observe_many_list_matches_observe(make_tracker: Any) -> None:
    rows = mixed_stream()
    expected, twin = _twin_scores(make_tracker, rows)
    t = make_tracker()
    out = t.observe_many(rows)
    assert isinstance(out, np.ndarray)
    assert out.dtype == np.float64
    assert out.shape == (len(rows),)
    np.testing.assert_array_equal(out, np.array(expected))
    assert t.episodes_seen == twin.episodes_seen
    _assert_same_state(t, twin, "abcde")


def test_observe_many_generator_and_events(make_tracker: Any) -> None:
    rows = mixed_stream()
    expected, twin = _twin_scores(make_tracker, rows)
    t = make_tracker()
    out = t.observe_many(pyfriction.Event(**e) for e in rows)
    assert out.dtype == np.float64 and out.shape == (len(rows),)
    np.testing.assert_array_equal(out, np.array(expected))
    _assert_same_state(t, twin, "abcde")


def test_observe_many_empty(make_tracker: Any) -> None:
    t = make_tracker()
    for empty in ([], iter(()), {"user_id": [], "type": []}):
        out = t.observe_many(empty)
        assert isinstance(out, np.ndarray) and out.dtype == np.float64 and out.shape == (0,)
    assert t.stats().events == 0


def test_observe_many_columnar_lists_with_status_results(make_tracker: Any) -> None:
    rows = mixed_stream()
    expected, twin = _twin_scores(make_tracker, rows)
    t = make_tracker()
    out = t.observe_many(_columns(rows))
    assert out.dtype == np.float64 and out.shape == (len(rows),)
    np.testing.assert_array_equal(out, np.array(expected))
    assert t.episodes_seen == twin.episodes_seen
    _assert_same_state(t, twin, "abcde")
    # the status column did matter (401s are ordinary) and so did results (empty searches)
    assert t.state("c").detectors["error_burst"] == pytest.approx(0.3, rel=1e-6)
    assert "empty_search" in t.state("b").detectors


def test_observe_many_columnar_numpy_arrays(make_tracker: Any) -> None:
    rows = mixed_stream()
    expected, twin = _twin_scores(make_tracker, rows)
    cols = _columns(rows)
    batch = {
        "user_id": np.array(cols["user_id"], dtype=object),
        "type": np.array(cols["type"], dtype=object),
        "ts": np.array(cols["ts"], dtype=np.float64),
        "step": np.array(cols["step"], dtype=object),
        "target": cols["target"],
        "account_id": cols["account_id"],
        "status": np.array(cols["status"], dtype=np.int64),
        "results": np.array(cols["results"], dtype=np.int32),
    }
    t = make_tracker()
    out = t.observe_many(batch)
    assert out.dtype == np.float64 and out.shape == (len(rows),)
    assert t.stats().invalid == 0
    np.testing.assert_array_equal(out, np.array(expected))
    assert t.episodes_seen == twin.episodes_seen
    _assert_same_state(t, twin, "abcde")


def test_observe_many_columnar_numpy_string_arrays(make_tracker: Any) -> None:
    # the most natural numpy batch: unicode arrays for the text columns, float64 ts
    n = 6
    batch = {
        "user_id": np.array(["u1"] * 3 + ["u2"] * 3),
        "type": np.array(["click"] * n),
        "target": np.array(["#pay"] * n),
        "ts": T0 + np.arange(n, dtype=np.float64) * 0.1,
    }
    rows = [ev(str(batch["user_id"][i]), "click", float(batch["ts"][i]), target="#pay") for i in range(n)]
    expected, _ = _twin_scores(make_tracker, rows)
    t = make_tracker()
    out = t.observe_many(batch)
    assert t.stats().invalid == 0
    np.testing.assert_array_equal(out, np.array(expected))
    assert len(t.episodes_seen) == 2


def test_observe_many_columnar_properties_column(make_tracker: Any) -> None:
    rows = mixed_stream()
    expected, twin = _twin_scores(make_tracker, rows)
    cols = _columns(rows)
    del cols["status"], cols["results"]
    cols["properties"] = [e.get("properties") for e in rows]
    assert any(p is None for p in cols["properties"]) and any(cols["properties"])
    t = make_tracker()
    out = t.observe_many(cols)
    np.testing.assert_array_equal(out, np.array(expected))
    _assert_same_state(t, twin, "abcde")


def test_observe_many_skips_bad_rows(make_tracker: Any) -> None:
    good = mixed_stream()
    bad_rows = {
        1: {"user_id": "", "type": "click", "ts": T0},
        4: {"user_id": "a", "type": "click", "ts": math.nan, "target": "#pay"},
        5: "not an event",
        9: {"user_id": "a", "type": 5},
    }
    rows: list[Any] = list(good)
    for i in sorted(bad_rows):
        rows.insert(i, bad_rows[i])
    expected, twin = _twin_scores(make_tracker, good)
    t = make_tracker()
    out = t.observe_many(rows)
    assert out.shape == (len(rows),)
    assert [i for i in range(len(rows)) if math.isnan(out[i])] == sorted(bad_rows)
    np.testing.assert_array_equal(out[~np.isnan(out)], np.array(expected))
    assert t.stats().invalid == len(bad_rows)
    assert t.stats().events == len(good)
    assert t.episodes_seen == twin.episodes_seen
    for u in "abcde":
        assert t.state(u) == twin.state(u)


def test_observe_many_columnar_bad_rows(make_tracker: Any) -> None:
    good = mixed_stream()
    cols = _columns(good)
    # row 2 gets an empty user id, row 5 a NaN ts; the rest must score as observe() would
    cols["user_id"][2] = ""
    cols["ts"][5] = math.nan
    kept = [e for i, e in enumerate(good) if i not in (2, 5)]
    expected, twin = _twin_scores(make_tracker, kept)
    t = make_tracker()
    out = t.observe_many(cols)
    assert [i for i in range(len(good)) if math.isnan(out[i])] == [2, 5]
    np.testing.assert_array_equal(out[~np.isnan(out)], np.array(expected))
    assert t.stats().invalid == 2
    for u in "abcde":
        assert t.state(u) == twin.state(u)


def test_observe_many_columnar_numpy_bad_ts_rows(make_tracker: Any) -> None:
    ts = T0 + np.arange(6, dtype=np.float64) * 0.1
    ts[1] = np.nan
    ts[4] = -1.0
    out = make_tracker().observe_many({"user_id": ["u1"] * 6, "type": ["click"] * 6, "target": ["#pay"] * 6, "ts": ts})
    assert list(np.isnan(out)) == [False, True, False, False, True, False]


@pytest.mark.parametrize(
    "batch,field",
    [
        ({"user_id": ["a", "b"], "type": ["click"]}, "type"),
        ({"user_id": ["a", "b"], "type": ["click", "click"], "ts": [T0, T0, T0]}, "ts"),
        ({"user_id": ["a", "b"], "type": ["click", "click"], "status": [1]}, "status"),
        ({"user_id": ["a"], "type": ["click"], "usr_id": ["a"]}, "usr_id"),
        ({"user_id": ["a"], "type": ["click"], "timestamp": [T0]}, "timestamp"),
        ({"type": ["click"]}, "user_id"),
        ({"user_id": ["a"]}, "type"),
    ],
    ids=[
        "short type",
        "long ts",
        "short status",
        "unknown usr_id",
        "unknown timestamp",
        "no user_id",
        "no type",
    ],  # fmt: skip
)
def test_observe_many_bad_columns(make_tracker: Any, batch: dict[str, Any], field: str) -> None:
    t = make_tracker()
    with pytest.raises(pyfriction.InvalidEvent) as info:
        t.observe_many(batch)
    assert info.value.field == field
    assert field in str(info.value)
    assert t.stats().events == 0
    assert t.stats().users == 0


# --- score, state, stats ----------------------------------------------------------------------


def test_score_and_decay(make_tracker: Any) -> None:
    t = make_tracker()
    assert t.score("nobody") == 0.0
    assert t.score("nobody", at=T0) == 0.0
    for e in rage("u1", T0):
        last = t.observe(e)
    end = T0 + 0.2
    assert t.score("u1") == pytest.approx(last, rel=1e-12)
    assert t.score("u1", at=end) == pytest.approx(last, rel=1e-12)
    assert t.score("u1", at=end - 100) == pytest.approx(last, rel=1e-12)  # the past: no decay
    pressure = -math.log(1.0 - last)
    half = t.score("u1", at=end + 180.0)  # one default half-life later
    assert half == pytest.approx(1.0 - math.exp(-pressure / 2), rel=1e-6)
    assert 0.0 < t.score("u1", at=end + 1800.0) < half < last
    assert t.score("u1", at=end + 1e6) == pytest.approx(0.0, abs=1e-9)
    # asking about the future does not change the state
    assert t.score("u1") == pytest.approx(last, rel=1e-12)
    assert type(t.score("u1")) is float


def test_score_half_life_from_config(make_tracker: Any) -> None:
    t = make_tracker(scoring={"half_life": 10.0})
    for e in rage("u1", T0):
        last = t.observe(e)
    pressure = -math.log(1.0 - last)
    assert t.score("u1", at=T0 + 0.2 + 20.0) == pytest.approx(1.0 - math.exp(-pressure / 4), rel=1e-6)
    # and the next event sees the decayed pressure
    assert t.observe(ev("u1", "page", T0 + 0.2 + 20.0, "x")) == pytest.approx(1.0 - math.exp(-pressure / 4), rel=1e-5)


def test_state(make_tracker: Any) -> None:
    t = make_tracker()
    assert t.state("nobody") is None
    t.observe(ev("u1", "page", T0, "billing.card"))
    state = t.state("u1")
    assert state.user_id == "u1"
    assert state.step == "billing.card"
    assert state.detectors == {}
    assert state.events == 1
    assert state.score == 0.0
    assert state.in_episode is False
    assert state.episodes == 0
    assert state.last_episode_ts is None and state.last_episode_score is None

    for e in rage("u1", T0 + 10):
        last = t.observe(e)
    state = t.state("u1")
    assert state.events == 4
    assert state.last_ts == T0 + 10.2
    assert state.step_seconds == pytest.approx(10.2)
    assert state.detectors == {"rage_click": pytest.approx(1.2, rel=1e-6)}
    assert state.score == pytest.approx(last, rel=1e-9)
    assert state.in_episode is True
    assert state.episodes == 1
    assert state.last_episode_ts == T0 + 10.2
    assert state.last_episode_score == pytest.approx(last, rel=1e-6)

    t.observe(ev("u1", "success", T0 + 11, target="#pay"))  # relief: pressure gone, rearmed
    state = t.state("u1")
    assert state.detectors == {}
    assert state.score == 0.0
    assert state.in_episode is False
    assert state.episodes == 1
    assert state.last_episode_ts == T0 + 10.2


def test_late_event_counts_as_now(make_tracker: Any) -> None:
    t = make_tracker()
    t.observe(ev("u1", "page", T0 + 100, "a"))
    t.observe(ev("u1", "click", T0 + 50, target="#x"))  # late
    assert t.state("u1").last_ts == T0 + 100
    assert t.state("u1").events == 2


def test_stats_counters_add_up(make_tracker: Any) -> None:
    t = make_tracker(exclude_targets=["#skip"], capacity=1234)
    valid = mixed_stream()
    for e in valid:
        t.observe(e)
    for e in (ev("a", "scroll", T0 + 20), ev("z", "hover", T0 + 20)):
        t.observe(e)
    t.observe(ev("a", "click", T0 + 21, target="#skip"))
    for e in (ev("a", "ticket", T0 + 30), ev("f", "ticket", T0 + 30)):
        t.observe(e)
    for bad in ({"user_id": "a"}, {"user_id": "a", "type": "click", "ts": -1}, 17):
        with pytest.raises(pyfriction.InvalidEvent):
            t.observe(bad)
    t.observe_many([{"user_id": ""}, ev("g", "page", T0 + 40, "x")])
    stats = t.stats()
    assert stats.engine == t.engine
    assert stats.capacity == 1234
    assert stats.events == len(valid) + 2 + 1 + 2 + 1
    assert stats.unknown == 2
    assert stats.excluded == 1
    assert stats.tickets == 2
    assert stats.invalid == 4
    assert stats.users == 7  # a..e, f (ticket), g
    assert stats.episodes == len(t.episodes_seen) >= 2
    assert stats.evictions == 0
    assert stats.callbacks_dropped == stats.callbacks_failed == stats.queue_depth == 0
    assert sum(t.state(u).events for u in "abcdefg") == stats.events - stats.unknown - stats.excluded


# --- callbacks ------------------------------------------------------------------------------


def test_on_friction_decorator_and_call(make_tracker: Any) -> None:
    t = make_tracker()
    got: dict[str, list[Any]] = {"plain": [], "sync": [], "call": []}

    @t.on_friction
    def plain(episode: Any) -> None:
        got["plain"].append(episode)

    @t.on_friction(sync=True)
    def inline(episode: Any) -> None:
        got["sync"].append(episode)

    def called(episode: Any) -> None:
        got["call"].append(episode)

    assert t.on_friction(called) is called
    assert callable(plain) and callable(inline)  # decorators return the function itself
    plain(None)
    got["plain"].clear()
    for e in rage("u1", T0) + rage("u2", T0):
        t.observe(e)
    assert t.flush(timeout=WAIT)
    assert [e.user_id for e in got["plain"]] == ["u1", "u2"]
    assert [e.user_id for e in got["sync"]] == ["u1", "u2"]
    assert got["call"] == got["plain"] == got["sync"] == t.episodes_seen


def test_on_friction_rejects_non_callable(make_tracker: Any) -> None:
    with pytest.raises(TypeError):
        make_tracker().on_friction(42)


def test_sync_callback_runs_inline_before_observe_returns(make_tracker: Any) -> None:
    t = make_tracker()
    seen: list[tuple[str, str]] = []
    t.on_friction(lambda ep: seen.append((threading.current_thread().name, ep.user_id)), sync=True)
    events = rage("u1", T0)
    t.observe(events[0])
    t.observe(events[1])
    assert seen == []
    t.observe(events[2])
    assert seen == [(threading.current_thread().name, "u1")]  # already there, no flush needed
    assert t.stats().queue_depth == 0


def test_async_callback_runs_on_dispatcher_thread(make_tracker: Any) -> None:
    t = make_tracker()
    release = threading.Event()
    seen: list[tuple[str, str]] = []

    def slow(ep: Any) -> None:
        release.wait(WAIT)
        seen.append((threading.current_thread().name, ep.user_id))

    t.on_friction(slow)
    for e in rage("u1", T0):
        t.observe(e)  # returns although the callback is blocked
    assert seen == []
    assert t.flush(timeout=0.05) is False
    release.set()
    assert t.flush(timeout=WAIT) is True
    assert seen == [("pyfriction-dispatcher", "u1")]
    assert seen[0][0] != threading.current_thread().name
    assert t.stats().queue_depth == 0


def test_flush_without_async_callbacks(make_tracker: Any) -> None:
    t = make_tracker()
    for e in rage("u1", T0):
        t.observe(e)
    assert t.flush() is True
    assert t.flush(timeout=0) is True


@pytest.mark.parametrize("sync", [True, False], ids=["sync", "async"])
def test_raising_callback_is_counted_never_breaks_observe(
    make_tracker: Any, sync: bool, caplog: pytest.LogCaptureFixture
) -> None:
    t = make_tracker()
    good: list[Any] = []

    def boom(ep: Any) -> None:
        raise RuntimeError("callback bug")

    t.on_friction(boom, sync=sync)
    t.on_friction(good.append, sync=sync)
    scores = []
    for e in rage("u1", T0) + rage("u2", T0 + 1):
        scores.append(t.observe(e))
    assert scores[2] > 0.6 and scores[5] > 0.6
    assert t.flush(timeout=WAIT)
    stats = t.stats()
    assert stats.callbacks_failed == 2
    assert stats.episodes == 2
    assert [e.user_id for e in good] == ["u1", "u2"]  # the next callback still ran
    assert "callback bug" in caplog.text or "boom" in caplog.text
    # and the tracker carries on
    t.observe(ev("u3", "page", T0 + 2, "x"))
    assert t.state("u3") is not None


def test_slow_async_callback_with_tiny_queue_drops(make_tracker: Any) -> None:
    t = make_tracker(queue_size=1)
    release = threading.Event()
    entered = threading.Event()
    delivered: list[str] = []

    def slow(ep: Any) -> None:
        entered.set()
        release.wait(WAIT)
        delivered.append(ep.user_id)

    t.on_friction(slow)
    n_users = 40
    try:
        for i in range(n_users):
            for e in rage(f"u{i}", T0 + i):
                t.observe(e)  # never blocks although the callback does
        stats = t.stats()
        assert stats.episodes == n_users
        assert stats.callbacks_dropped >= n_users - 2
        assert stats.queue_depth <= 1
    finally:
        release.set()
    assert t.flush(timeout=WAIT)
    stats = t.stats()
    assert 1 <= len(delivered) <= 2
    assert len(delivered) + stats.callbacks_dropped == n_users
    assert delivered[0] == "u0"
    assert len(t.episodes_seen) == n_users  # the sync callback got every one


def test_close_then_episodes_are_dropped(make_tracker: Any) -> None:
    t = make_tracker()
    got: list[Any] = []
    t.on_friction(got.append)
    for e in rage("u1", T0):
        t.observe(e)
    assert t.close(timeout=WAIT) is True
    assert [e.user_id for e in got] == ["u1"]
    for e in rage("u2", T0 + 1):
        last = t.observe(e)  # scoring keeps working
    assert last > 0.6
    assert t.flush(timeout=WAIT)
    assert [e.user_id for e in got] == ["u1"]
    stats = t.stats()
    assert stats.episodes == 2
    assert stats.callbacks_dropped == 1
    assert t.state("u2").episodes == 1


def test_close_twice_then_flush(engine: str) -> None:
    t = pyfriction.Tracker(engine=engine)  # not make_tracker: its teardown close would wait
    got: list[Any] = []
    t.on_friction(got.append)
    for e in rage("u1", T0):
        t.observe(e)
    assert t.close(timeout=WAIT) is True
    assert t.close(timeout=WAIT) is True
    assert t.flush(timeout=1.0) is True  # with no timeout, this would wait forever
    assert t.stats().queue_depth == 0
    assert [e.user_id for e in got] == ["u1"]


def test_context_manager_closes(engine: str) -> None:
    got: list[Any] = []
    with pyfriction.Tracker(engine=engine) as t:
        t.on_friction(got.append)
        for e in rage("u1", T0):
            t.observe(e)
    assert [e.user_id for e in got] == ["u1"]  # flushed on exit
    for e in rage("u2", T0):
        t.observe(e)
    assert t.stats().callbacks_dropped == 1


# --- the module-level default tracker ---------------------------------------------------------


@pytest.fixture
def default_tracker(monkeypatch: pytest.MonkeyPatch, engine: str) -> Iterator[str]:
    """A clean slot for the module's default tracker; ``engine="auto"`` resolves to ``engine``."""
    if engine == "reference":
        monkeypatch.setenv("PYFRICTION_NO_EXTENSIONS", "1")
    else:
        monkeypatch.delenv("PYFRICTION_NO_EXTENSIONS", raising=False)
    monkeypatch.setattr(pyfriction, "_default", None)
    yield engine
    current = pyfriction._default
    if current is not None:
        current.close(timeout=WAIT)


def test_module_flush_close_without_default(default_tracker: str) -> None:
    assert pyfriction.flush() is True
    assert pyfriction.close() is True
    assert pyfriction._default is None  # neither created a tracker


def test_module_init_observe_on_friction(default_tracker: str) -> None:
    engine = default_tracker
    tracker = pyfriction.init(engine=engine, scoring={"threshold": 0.5})
    assert isinstance(tracker, pyfriction.Tracker)
    assert tracker.engine == engine
    assert pyfriction.get_tracker() is tracker
    assert tracker.config.scoring.threshold == 0.5
    sync_got: list[Any] = []
    async_got: list[Any] = []

    @pyfriction.on_friction(sync=True)
    def on_sync(ep: Any) -> None:
        sync_got.append(ep.user_id)

    pyfriction.on_friction(lambda ep: async_got.append((threading.current_thread().name, ep.user_id)))
    scores = [pyfriction.observe(e) for e in rage("u1", T0)]
    assert scores[2] > 0.5
    assert sync_got == ["u1"]
    out = pyfriction.observe_many(rage("u2", T0))
    assert isinstance(out, np.ndarray) and out.shape == (3,)
    assert sync_got == ["u1", "u2"]
    assert pyfriction.flush(timeout=WAIT) is True
    assert async_got == [("pyfriction-dispatcher", "u1"), ("pyfriction-dispatcher", "u2")]
    assert tracker.state("u1").episodes == 1
    assert pyfriction.close(timeout=WAIT) is True
    pyfriction.observe_many(rage("u3", T0))
    assert tracker.stats().callbacks_dropped == 1


def test_module_get_tracker_is_lazy_and_stable(default_tracker: str) -> None:
    tracker = pyfriction.get_tracker()
    assert pyfriction.get_tracker() is tracker
    assert tracker.engine == default_tracker  # "auto" honours the environment
    pyfriction.observe(ev("u1", "page", T0, "x"))
    assert tracker.state("u1") is not None


def test_module_callbacks_registered_before_init_carry_over(default_tracker: str) -> None:
    engine = default_tracker
    sync_got: list[str] = []
    async_got: list[str] = []
    pyfriction.on_friction(lambda ep: sync_got.append(ep.user_id), sync=True)
    pyfriction.on_friction(lambda ep: async_got.append(ep.user_id))
    first = pyfriction.get_tracker()
    tracker = pyfriction.init(engine=engine)
    assert tracker is not first
    assert pyfriction.get_tracker() is tracker
    for e in rage("u1", T0):
        pyfriction.observe(e)
    assert sync_got == ["u1"]
    assert pyfriction.flush(timeout=WAIT)
    assert async_got == ["u1"]
    # a second init carries them over again, and closes the previous tracker
    third = pyfriction.init(engine=engine)
    for e in rage("u2", T0):
        pyfriction.observe(e)
    assert pyfriction.flush(timeout=WAIT)
    assert sync_got == ["u1", "u2"] and async_got == ["u1", "u2"]
    for e in rage("u3", T0):
        tracker.observe(e)  # the replaced tracker was closed: its async delivery is dropped
    assert tracker.stats().callbacks_dropped == 1
    assert third.stats().callbacks_dropped == 0
    assert async_got == ["u1", "u2"]


# --- tick -------------------------------------------------------------------------------------


def _stall_baseline(t: Any) -> None:
    """20 users spend 10 s on "form": the stall limit becomes max(60 s, 3 x 10-ish s) = 60 s."""
    for i in range(20):
        t.observe(ev(f"w{i}", "page", T0 + i, "form"))
        t.observe(ev(f"w{i}", "page", T0 + i + 10, "next"))


def test_tick_fires_stall(make_tracker: Any) -> None:
    now = [T0 + 1100]
    t = make_tracker(scoring={"threshold": 0.45, "rearm": 0.2}, clock=lambda: now[0])
    _stall_baseline(t)
    t.observe(ev("x", "page", T0 + 100, "form"))
    assert t.tick(T0 + 130) == 0  # 30 s on the step: not stalled yet
    assert t.episodes_seen == []
    assert t.tick() == 1  # the clock: T0 + 1100, 1000 s on the step
    assert t.tick() == 0  # the same time again: nothing more to add
    episode = t.episodes_seen[0]
    assert episode.user_id == "x"
    assert episode.ts == T0 + 1100
    assert episode.step == "form"
    assert episode.account_id is None
    assert [r.detector for r in episode.reasons] == ["stall"]
    # at least weight 1.0 per limit (60 s) beyond the limit: 940 / 60
    assert t.state("x").detectors == {"stall": pytest.approx(940 / 60, rel=1e-6)}
    assert t.stats().episodes == 1


def test_tick_decays_once_and_a_late_event_does_not_decay_again(make_tracker: Any) -> None:
    """tick() values the pressures at its time; an event timed before it (but after the
    user's last) neither decays them a second time nor moves them back."""
    half = 180.0
    t = make_tracker(scoring={"half_life": half, "threshold": 0.99, "rearm": 0.5})
    for i in range(3):
        t.observe(ev("u", "click", T0 + 0.1 * i, "s", "#pay"))
    before = t.state("u").detectors["rage_click"]
    t.tick(T0 + 0.2 + half)  # one half-life later
    after_tick = t.state("u").detectors["rage_click"]
    assert after_tick == pytest.approx(before / 2, rel=1e-6)
    t.observe(ev("u", "page", T0 + 0.2 + half / 2, "s"))  # late: before the tick's time
    assert t.state("u").detectors["rage_click"] == after_tick
    t.observe(ev("u", "page", T0 + 0.2 + 2 * half, "s"))  # one more half-life after the tick
    assert t.state("u").detectors["rage_click"] == pytest.approx(before / 4, rel=1e-6)


def test_tick_stall_episode_detail_reports_time_on_step(make_tracker: Any) -> None:
    # The same stall, noticed by tick() or by the user's next event, reads the same.
    t = make_tracker(scoring={"threshold": 0.45, "rearm": 0.2})
    _stall_baseline(t)
    t.observe(ev("by-event", "page", T0 + 100, "form"))
    t.observe(ev("by-tick", "page", T0 + 100, "form"))
    t.observe(ev("by-event", "click", T0 + 1100, target="#a"))
    assert t.tick(T0 + 1100) == 1
    by_event, by_tick = t.episodes_seen
    assert by_event.reasons[0].detail == "17 min on form, others need 9 s"
    assert by_tick.user_id == "by-tick"
    assert by_tick.reasons[0].detail == by_event.reasons[0].detail
