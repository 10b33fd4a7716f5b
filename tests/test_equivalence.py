"""The compiled core and the reference engine are the same engine: property tests.

Random event streams (all canonical types, unknown and config-mapped names, 1-6 interleaved
users, small step/target alphabets so that patterns occur, timestamps that mostly creep
forward but jump hours ahead, go backwards, repeat or are missing, malformed events mixed in)
drive a compiled and a reference tracker through ``observe``, ``observe_many`` (rows and
columnar batches) and ``tick``. Both must return the same scores (within 1e-9), raise the
same ``InvalidEvent`` for the same events, fire the same episodes, count the same stats and
end with the same state for every user. Small capacities and ``idle_ttl`` exercise eviction;
random configs exercise thresholds, windows, min counts, custom weights and exclusions.

``PYFRICTION_EQUIV_AGAINST=reference`` compares the reference engine with itself (a check
of the harness, and of the reference's determinism) while the compiled core is not built.

The fuzz tests feed arbitrary garbage to each engine: nothing but ``InvalidEvent`` may come
out, and a bystander user's state never changes.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Callable
from fractions import Fraction
from typing import Any

import msgspec
import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, note, settings
from hypothesis import strategies as st

import pyfriction
from pyfriction import _snapfile
from pyfriction.events import CANONICAL_TYPES
from pyfriction.tracker import LAYOUT_HASH

from helpers import ENGINES, T0, ev, require_engine

AGAINST = os.environ.get("PYFRICTION_EQUIV_AGAINST", "compiled")
TOL = 1e-9

SETTINGS = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture],
)

# -- alphabets ----------------------------------------------------------------------------------
LONG_A = "L" * 50 + "-a"  # longer than the 46 inline bytes of a slot, same inline prefix
LONG_B = "L" * 50 + "-b"
USER_POOL = ["u0", "u1", "u2", "u3", "ü-ñ-😀", LONG_A, LONG_B, "acct/user:7"]
STEPS = ["a", "b", "c", "d", "admin.users", "import.mapping"]
TARGETS = ["#x", "#y", "#date-picker", "p.text", "#pay-now", "tip-1"]
MAPPED = ["Payment Failed", "Tap", "Oops", "Looked", "Export Timed Out"]
TYPES = (
    ["click"] * 6
    + ["page"] * 5
    + ["dead_click"] * 2
    + ["error", "api_error", "form_error"] * 2
    + ["search"] * 2
    + sorted(CANONICAL_TYPES)
    + MAPPED
    + ["hover", "Mouse Wiggle"]
)
STATUSES = [500, 503, 401, 404, 409, 200, -1, 2**31, "500", True, 404.0, 402, 403, 422]
RESULTS = [0, 0, 0, 3, -1, "0", 0.0, False, 2**40]
HUGE = "x" * 1025


REENTRANT = "_reentrant"
CB_USER = "cb-user"


class Clock:
    """A shared, settable clock: events without ``ts`` and ``tick()`` read it."""

    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


# -- strategies ---------------------------------------------------------------------------------
@st.composite
def configs(draw: Any) -> dict[str, Any]:
    """Tracker keyword arguments: the defaults, or a random valid non-default config."""
    kw: dict[str, Any] = {}
    if draw(st.integers(0, 3)) == 0:
        kw["capacity"] = draw(st.integers(1, 3))
    if draw(st.integers(0, 3)) == 0:
        kw["idle_ttl"] = draw(st.sampled_from([1.0, 5.0, 60.0, 3600.0]))
    if draw(st.integers(0, 3)) == 0:
        # A sync callback that observes an event on the same tracker, from inside the episode.
        kw[REENTRANT] = draw(st.sampled_from(["same:success", "same:guidance_shown", "other:help", "other:page"]))
    if draw(st.integers(0, 3)) == 0:
        kw["guidance"] = {
            "items": [{"id": "tip-1", "title": "Tip"}, {"id": "tip-2", "title": "Other tip"}],
            "rules": [
                {"guidance": ["tip-1", "tip-2"], "detectors": ["rage_click", "error_burst"]},
                {"guidance": "tip-2"},
            ],
            "holdout": {"share": draw(st.sampled_from([0.0, 0.5]))},
        }
    if draw(st.booleans()):
        return kw  # default detectors and scoring
    counts = st.integers(2, 5)
    windows = st.sampled_from([0.5, 1.0, 5.0, 30.0, 120.0, 3600.0])
    weights = st.sampled_from([0.3, 0.7, 1.2, 3.0, 0.3, 0.7, 1.2, 3.0, 0.0])
    maybe_off = st.sampled_from([True] * 5 + [False])
    threshold = draw(st.sampled_from([0.2, 0.4, 0.6, 0.9]))
    kw["scoring"] = {
        "half_life": draw(st.sampled_from([1.0, 10.0, 60.0, 180.0, 1e6, 1e6])),
        "threshold": threshold,
        "rearm": draw(st.sampled_from([0.0, threshold / 2, threshold])),
        "cooldown": draw(st.sampled_from([0.0, 5.0, 60.0, 600.0])),
        "success_relief": draw(st.sampled_from([0.0, 0.5, 1.0])),
    }
    kw["detectors"] = {
        "rage_click": {
            "enabled": draw(maybe_off),
            "weight": draw(weights),
            "min_clicks": draw(counts),
            "window": draw(windows),
            "slow_weight": draw(weights),
            "slow_min_clicks": draw(counts),
            "slow_window": draw(windows),
        },
        "dead_click": {
            "enabled": draw(maybe_off),
            "weight": draw(weights),
            "single_weight": draw(weights),
            "min_clicks": draw(st.integers(1, 5)),
            "window": draw(windows),
        },
        "error_click": {
            "enabled": draw(maybe_off),
            "weight": draw(weights),
            "window": draw(windows),
        },
        "error_burst": {
            "enabled": draw(maybe_off),
            "weight": draw(weights),
            "min_errors": draw(counts),
            "window": draw(windows),
            "ordinary_statuses": draw(st.sampled_from([[401, 404], [], [500], [409, 503, 2**31]])),
            "ordinary_factor": draw(st.sampled_from([0.0, 0.3, 1.0])),
            "refusal_statuses": draw(st.sampled_from([[402, 403], [], [2**32, 422]])),
            "refusal_factor": draw(st.sampled_from([1.0, 1.5, 10.0])),
        },
        "repeat_failure": {
            "enabled": draw(maybe_off),
            "weight": draw(weights),
            "area_weight": draw(weights),
            "min_failures": draw(counts),
            "window": draw(windows),
        },
        "uturn": {
            "enabled": draw(maybe_off),
            "weight": draw(weights),
            "single_weight": draw(weights),
            "min_uturns": draw(st.integers(1, 5)),
            "window": draw(windows),
            "bounce": draw(st.sampled_from([0.5, 5.0, 30.0])),
        },
        "empty_search": {
            "enabled": draw(maybe_off),
            "weight": draw(weights),
            "single_weight": draw(weights),
            "min_searches": draw(st.integers(1, 5)),
            "window": draw(windows),
        },
        "help_seeking": {
            "enabled": draw(maybe_off),
            "help_weight": draw(weights),
            "contact_weight": draw(weights),
            "after_friction": draw(st.sampled_from([0.0, 0.3, 2.0])),
            "boost": draw(st.sampled_from([4.0, 4.0, 1.0])),
        },
        "stall": {
            "enabled": draw(maybe_off),
            "weight": draw(weights),
            "quantile": draw(st.sampled_from([0.1, 0.5, 0.9])),
            "factor": draw(st.sampled_from([1.0, 3.0])),
            "min_seconds": draw(st.sampled_from([0.0, 2.0, 60.0])),
            "min_samples": draw(st.integers(1, 5)),
            "max_duration": draw(st.sampled_from([3.0, 60.0, 3600.0])),
        },
    }
    if draw(st.booleans()):
        kw["event_map"] = {
            "Payment Failed": {"weight": draw(weights)},
            "Export Timed Out": {"weight": draw(weights)},
            "Tap": "click",
            "Oops": {"type": "error"},
            "Looked": "help",
        }
    if draw(st.booleans()):
        kw["exclude_targets"] = ["*date-picker*"]
    if draw(st.booleans()):
        kw["exclude_steps"] = ["admin.*"]
    if draw(st.integers(0, 3)) == 0:
        kw["max_steps"] = draw(st.integers(1, 2))
    return kw


@st.composite
def time_step(draw: Any) -> float:
    """How far the stream's clock moves: mostly 0-5 s, sometimes hours, sometimes back."""
    kind = draw(st.integers(0, 19))
    if kind < 12:
        return draw(st.floats(0.0, 5.0))
    if kind < 14:
        return 0.0  # duplicate timestamps
    if kind < 15:
        return draw(st.floats(16385.0, 100_000.0))  # beyond REBASE_AFTER
    if kind < 17:
        return draw(st.floats(-60.0, -0.001))  # out of order
    # Pauses, some exactly on a window, bounce, cooldown or stall limit.
    return draw(
        st.sampled_from(
            [
                0.3,
                0.5,
                0.9,
                1.0,
                1.1,
                5.0,
                30.0,
                31.0,
                60.0,
                61.0,
                120.0,
                121.0,
                200.0,
                600.0,
                601.0,
                3600.0,
                3700.0,
                16384.0,
            ]
        )
    )


WHERE = [(step, target) for step in STEPS + [None, None] for target in TARGETS + [None, None]]
STATUS_PROPS = (
    [None] + [{"status": x} for x in STATUSES] + [{"status": 500}, {"status": 503}] * 3 + [{"status": 404, "note": "x"}]
)
RESULT_PROPS = [None, {}] + [{"results": x} for x in RESULTS] + [{"results": 0}] * 6 + [{"results": 0, "status": 500}]
OTHER_PROPS = [None] * 12 + [{}, {"status": 500}, {"results": 0}, {"note": "free-form"}]
# A click that selected text or scrolled: rage vetoes its run (``events.results_of``).
CLICK_PROPS = OTHER_PROPS + [{"selection": "text"}, {"selection": "scroll"}, {"selection": ""}, {"selection": True}]
# (ts mode, account_id, as a pyfriction.Event): mostly a float ts and nothing else.
EXTRAS = (
    [("float", None, False)] * 24
    + [("float", "acct-1", False), ("float", "acct-2", False), ("float", "", False), ("float", None, True)] * 2
    + [("clock", None, False), ("int", None, False), ("int", "acct-1", True), ("clock", None, True)]
    + [(x, None, False) for x in (0.0, 1.0, 1e12, 2.0**53, 1e300)]
    + [("odd", None, False), ("npstr", None, False)]
)


@st.composite
def valid_event(draw: Any, users: list[str], ts: float) -> Any:
    kind = draw(st.sampled_from(TYPES))
    event: dict[str, Any] = {"user_id": draw(st.sampled_from(users)), "type": kind}
    ts_mode, account, as_struct = draw(st.sampled_from(EXTRAS))
    if ts_mode == "float":
        event["ts"] = ts
    elif ts_mode == "int":
        event["ts"] = int(ts)
    elif ts_mode == "odd":  # numbers.Real that are not float
        event["ts"] = draw(st.sampled_from(ODD_TS))
    elif ts_mode == "npstr":  # str subclasses are their plain text
        event["ts"] = ts
        event["user_id"] = np.str_(event["user_id"])
        event["type"] = np.str_(kind)
    elif ts_mode != "clock":
        event["ts"] = ts_mode  # absurd but valid
    step, target = draw(st.sampled_from(WHERE))
    if step is not None:
        event["step"] = step
    if target is not None:
        event["target"] = target
    if account is not None:
        event["account_id"] = account
    if kind in ("api_error", "error", "Oops"):
        props = draw(st.sampled_from(STATUS_PROPS))
    elif kind == "search":
        props = draw(st.sampled_from(RESULT_PROPS))
    elif kind in ("click", "Tap"):
        props = draw(st.sampled_from(CLICK_PROPS))
    else:
        props = draw(st.sampled_from(OTHER_PROPS))
    if props is not None:
        event["properties"] = dict(props)
    if as_struct:
        return pyfriction.Event(**event)
    return event


BAD_TEXT = [None, "", 5, 5.0, b"bytes", HUGE, ["u1"]]
BAD_TS = [math.nan, math.inf, -math.inf, -1.0, -1e-9, "1700000000", True, [1], 10**400, -(10**400), np.nan, b"1"]
ODD_TS = [np.float64(T0), np.int64(1_700_000_000), np.float32(1_700_000_000.0), Fraction(3_400_000_001, 2)]
BAD_PROPS = [[1, 2], "status=500", 5, (("status", 500),)]
NOT_EVENTS = [None, 42, "click", ["u1", "click"], ("u1", "click"), {1, 2}, b"{}"]


MISSING = object()
CORRUPTIONS = (
    [(f, v) for f in ("user_id", "type") for v in [MISSING] + BAD_TEXT]
    + [(f, v) for f in ("step", "target", "account_id") for v in BAD_TEXT]
    + [("ts", v) for v in BAD_TS]
    + [("properties", v) for v in BAD_PROPS]
)


@st.composite
def maybe_bad_event(draw: Any, users: list[str], ts: float) -> Any:
    """Mostly a valid event; sometimes one field broken, sometimes not an event at all."""
    kind = draw(st.integers(0, 14))
    if kind == 14:
        return draw(st.sampled_from(NOT_EVENTS))
    event = draw(valid_event(users, ts))
    if kind < 12:
        return event
    if isinstance(event, pyfriction.Event):
        event = msgspec.structs.asdict(event)
    field, value = draw(st.sampled_from(CORRUPTIONS))
    if value is MISSING:
        event.pop(field, None)
    else:
        event[field] = value
    if kind == 13:  # a Struct (which does not validate on creation): the same checks apply
        try:
            return pyfriction.Event(**event)
        except TypeError:
            pass
    return event


@st.composite
def columnar(draw: Any, users: list[str], times: list[float]) -> dict[str, Any]:
    n = len(times)
    cols: dict[str, Any] = {
        "user_id": [
            draw(st.sampled_from(users + ([None, 7] if draw(st.integers(0, 5)) == 0 else []))) for _ in range(n)
        ],
        "type": [draw(st.sampled_from(TYPES)) for _ in range(n)],
    }
    ts_kind = draw(st.integers(0, 3))
    if ts_kind == 1:
        cols["ts"] = list(times)
    elif ts_kind == 2:
        cols["ts"] = np.array(times, dtype=np.float64)
    elif ts_kind == 3:
        cols["ts"] = [t if draw(st.integers(0, 3)) else None for t in times]
    if draw(st.booleans()):
        cols["step"] = [draw(st.sampled_from(STEPS + [None])) for _ in range(n)]
    if draw(st.booleans()):
        cols["target"] = [draw(st.sampled_from(TARGETS + [None])) for _ in range(n)]
    if draw(st.integers(0, 3)) == 0:
        cols["account_id"] = [draw(st.sampled_from(["acct-1", None])) for _ in range(n)]
    if draw(st.booleans()):
        col = [draw(st.sampled_from([500, 503, 401, 404, -1, None])) for _ in range(n)]
        form = draw(st.integers(0, 3))
        if form == 1:
            cols["status"] = np.array([-1 if x is None else x for x in col])
        elif form == 2:
            cols["status"] = np.array(
                [math.nan if x is None else x + draw(st.sampled_from([0.0, 0.0, 0.5])) for x in col]
            )
        elif form == 3:
            cols["status"] = tuple(col)
        else:
            cols["status"] = col
    if draw(st.booleans()):
        cols["results"] = [draw(st.sampled_from([0, 0, 2, -1, None])) for _ in range(n)]
    if draw(st.integers(0, 4)) == 0:
        cols["properties"] = [draw(st.sampled_from([None, {}, {"status": 404}, {"results": 0}, [1]])) for _ in range(n)]
    form = draw(st.integers(0, 5))
    if form == 1:
        cols["user_id"] = tuple(cols["user_id"])
    elif form == 2 and all(type(u) is str for u in cols["user_id"]):
        cols["user_id"] = np.array(cols["user_id"])
        cols["type"] = np.array(cols["type"])
    broken = draw(st.integers(0, 14))
    if broken == 0:
        cols["colour"] = ["red"] * n  # not a column: the whole batch is refused
    elif broken == 1 and n > 1:
        cols["type"] = cols["type"][:-1]  # ragged
    elif broken == 2:
        del cols["type"]
    elif broken == 3:
        cols["step"] = 5  # not a sequence
    elif broken == 4:
        cols["target"] = None  # an absent column
    return cols


@st.composite
def streams(draw: Any) -> tuple[dict[str, Any], list[tuple[Any, ...]]]:
    """A config and a list of operations with the clock time each happens at."""
    config = draw(configs())
    users = draw(st.lists(st.sampled_from(USER_POOL), min_size=1, max_size=6, unique=True))
    ops: list[tuple[Any, ...]] = []
    t = T0
    for _ in range(draw(st.integers(1, 60))):
        t = max(0.0, t + draw(time_step()))
        kind = draw(st.integers(0, 19))
        if kind < 14:
            ops.append(("observe", t, draw(maybe_bad_event(users, t))))
        elif kind < 16:
            times = [t]
            for _ in range(draw(st.integers(0, 7))):
                times.append(max(0.0, times[-1] + draw(time_step())))
            t = times[-1]
            ops.append(("many", t, [draw(maybe_bad_event(users, x)) for x in times]))
        elif kind < 18:
            times = [t]
            for _ in range(draw(st.integers(0, 7))):
                times.append(max(0.0, times[-1] + draw(time_step())))
            t = times[-1]
            ops.append(("columns", t, draw(columnar(users, times))))
        elif kind < 19 or draw(st.integers(0, 3)):
            at = draw(st.sampled_from([None, 0.0, -10.0, 1.0, 30.0, 100.0, 1000.0, 20_000.0]))
            ops.append(("tick", t, None if at is None else max(0.0, t + at)))
        else:  # snapshots restored into the other engine: the streams go on from there
            ops.append(("swap", t, None))
    return config, ops


# -- comparison ---------------------------------------------------------------------------------
def assert_same(a: Any, b: Any, path: str = "$") -> None:
    """Structural equality; floats within TOL (NaN equals NaN)."""
    if isinstance(a, float) or isinstance(b, float):
        assert isinstance(a, (int, float)) and isinstance(b, (int, float)), f"{path}: {a!r} != {b!r}"
        if math.isnan(a) or math.isnan(b):
            assert math.isnan(a) and math.isnan(b), f"{path}: {a!r} != {b!r}"
        elif math.isinf(a) or math.isinf(b):
            assert a == b, f"{path}: {a!r} != {b!r}"
        else:
            assert abs(a - b) <= TOL, f"{path}: {a!r} != {b!r} (diff {a - b:.3g})"
    elif isinstance(a, dict) and isinstance(b, dict):
        assert sorted(a) == sorted(b), f"{path}: keys {sorted(a)} != {sorted(b)}"
        for k in a:
            assert_same(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        assert len(a) == len(b), f"{path}: {len(a)} items != {len(b)}: {a!r} != {b!r}"
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{path}[{i}]")
    else:
        assert type(a) is type(b) and a == b, f"{path}: {a!r} != {b!r}"


def outcome(fn: Callable[[], Any]) -> tuple[str, Any]:
    try:
        return "ok", fn()
    except pyfriction.InvalidEvent as exc:
        return "invalid", (exc.field, str(exc))
    except Exception as exc:
        return "raised", (type(exc).__name__, str(exc))


def same_outcome(a: tuple[str, Any], b: tuple[str, Any], what: str) -> None:
    assert a[0] == b[0], f"{what}: {AGAINST} {a} but reference {b}"
    if a[0] == "ok":
        x, y = a[1], b[1]
        if isinstance(x, np.ndarray) or isinstance(y, np.ndarray):
            assert isinstance(x, np.ndarray) and isinstance(y, np.ndarray), f"{what}: {x!r} vs {y!r}"
            assert x.dtype == y.dtype == np.float64 and x.shape == y.shape, f"{what}: {x!r} vs {y!r}"
            x, y = x.tolist(), y.tolist()
        else:
            assert isinstance(x, float) and isinstance(y, float), f"{what}: {x!r} vs {y!r}"
        assert_same(x, y, what)
    else:
        assert a[1] == b[1], f"{what}: {AGAINST} raised {a[1]} but reference {b[1]}"


def stats_of(tracker: pyfriction.Tracker) -> dict[str, Any]:
    stats = msgspec.to_builtins(tracker.stats())
    del stats["engine"]
    return stats


def raw_record(tracker: pyfriction.Tracker, user: str) -> dict[str, Any] | None:
    """Every field of the user's slot record (the layout both engines share), as Python values;
    ``lock`` (a shared store's writer pid) aside."""
    rec = tracker._core.record(user)
    if rec is None:
        return None
    return {name: rec[name].tolist() for name in rec.dtype.names if name != "lock"}


def compare(a: pyfriction.Tracker, b: pyfriction.Tracker, users: list[str], what: str) -> None:
    assert_same(stats_of(a), stats_of(b), f"{what}: stats")
    for user in users:
        sa, sb = a.state(user), b.state(user)
        assert (sa is None) == (sb is None), f"{what}: state({user!r}) {sa} vs {sb}"
        if sa is not None:
            assert_same(msgspec.to_builtins(sa), msgspec.to_builtins(sb), f"{what}: state({user!r})")
            ra, rb = raw_record(a, user), raw_record(b, user)
            diff = {k: (ra[k], rb[k]) for k in ra if ra[k] != rb[k]}
            assert not diff, f"{what}: slot record of {user!r} differs ({AGAINST}, reference): {diff}"


def snapshot_of(tracker: pyfriction.Tracker) -> dict[str, Any]:
    """The decoded content of a snapshot: what either engine must restore from."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "state.snap")
        tracker.snapshot(path)
        with open(path, "rb") as fh:
            outer = msgspec.msgpack.decode(fh.read())
        snap = _snapfile.read(path, LAYOUT_HASH)
    doc = dict(snap.state)
    assert not snap.slots["lock"].any()  # a log position, not state
    doc["slots"] = snap.slots.tobytes()  # least recently active first: the order is specified
    doc["steps"] = snap.steps.tobytes()  # sorted by key: the file is the same from either engine
    doc["names"] = dict(map(tuple, doc["names"]))
    doc["long_ids"] = dict(map(tuple, doc["long_ids"]))
    outer = {k: outer[k] for k in ("format", "version", "layout")}
    return {"outer": outer, **doc}


def reentrant_callback(tracker: pyfriction.Tracker, mode: str) -> Callable[[pyfriction.Episode], None]:
    who, kind = mode.split(":")

    def callback(episode: pyfriction.Episode) -> None:
        user = episode.user_id if who == "same" else CB_USER
        tracker.observe(
            {"user_id": user, "type": kind, "ts": episode.ts, "step": episode.step or "cb", "target": "tip-1"}
        )

    return callback


def attach(tracker: pyfriction.Tracker, seen: list[pyfriction.Episode], mode: str | None) -> pyfriction.Tracker:
    tracker.episodes_seen = seen  # type: ignore[attr-defined]
    if tracker.engine == "compiled":
        # Columnar batches in chunks of 3 rows from the first row on: chunk edges, rows for
        # the general path between chunks and (with no inline callback) each chunk applied on
        # a thread of its own while the one before is delivered, all on every stream.
        tracker._core.pipe_rows, tracker._core.pipe_min = 3, 0  # type: ignore[attr-defined]
    if mode is None:
        # On the dispatcher, so that no callback runs inline: the compiled core then queues
        # a batch's episodes and outcomes (CompiledCore.begin_batch), which must change nothing.
        tracker.on_friction(seen.append)
    else:
        tracker.on_friction(seen.append, sync=True)
        tracker.on_friction(reentrant_callback(tracker, mode), sync=True)
    return tracker


def new_pair(config: dict[str, Any], clock: Clock) -> tuple[pyfriction.Tracker, pyfriction.Tracker]:
    config = dict(config)
    mode = config.pop(REENTRANT, None)
    a, b = (attach(pyfriction.Tracker(engine=e, clock=clock, **config), [], mode) for e in (AGAINST, "reference"))
    return a, b


def swapped(
    a: pyfriction.Tracker, b: pyfriction.Tracker, config: dict[str, Any], clock: Clock
) -> tuple[pyfriction.Tracker, pyfriction.Tracker]:
    """Each tracker's snapshot restored into the other engine (which must lose nothing)."""
    mode = config.get(REENTRANT)
    with tempfile.TemporaryDirectory() as tmp:
        pa, pb = os.path.join(tmp, "a.snap"), os.path.join(tmp, "b.snap")
        a.snapshot(pa)
        b.snapshot(pb)
        a2 = attach(pyfriction.Tracker.restore(pb, engine=AGAINST, clock=clock), a.episodes_seen, mode)
        b2 = attach(pyfriction.Tracker.restore(pa, engine="reference", clock=clock), b.episodes_seen, mode)
    a.close()
    b.close()
    return a2, b2


def users_of(ops: list[tuple[Any, ...]]) -> list[str]:
    found = set(USER_POOL) | {CB_USER}
    for op in ops:
        if op[0] == "observe":
            items = [op[2]]
        elif op[0] == "many":
            items = op[2]
        elif op[0] == "columns":
            items = [{"user_id": u} for u in op[2].get("user_id", [])]
        else:
            continue
        for item in items:
            uid = item.get("user_id") if isinstance(item, dict) else getattr(item, "user_id", None)
            if type(uid) is str:
                found.add(uid)
    return sorted(found)


@pytest.fixture
def against() -> str:
    require_engine(AGAINST)
    return AGAINST


# -- the equivalence property -------------------------------------------------------------------
def run_stream(config: dict[str, Any], ops: list[tuple[Any, ...]]) -> None:
    clock = Clock()
    a, b = new_pair(config, clock)
    users = users_of(ops)
    note(f"config={config!r}")
    for i, op in enumerate(ops):
        kind, now, arg = op
        clock.now = now
        what = f"op {i} {kind}"
        if kind == "observe":
            same_outcome(outcome(lambda: a.observe(arg)), outcome(lambda: b.observe(arg)), what)
        elif kind in ("many", "columns"):
            same_outcome(outcome(lambda: a.observe_many(arg)), outcome(lambda: b.observe_many(arg)), what)
        elif kind == "swap":
            a, b = swapped(a, b, config, clock)
        else:
            same_outcome(outcome(lambda: float(a.tick(arg))), outcome(lambda: float(b.tick(arg))), what)
        assert a.flush(10.0) and b.flush(10.0)
        ea, eb = a.episodes_seen, b.episodes_seen
        assert_same([msgspec.to_builtins(e) for e in ea], [msgspec.to_builtins(e) for e in eb], f"{what}: episodes")
        compare(a, b, users, what)
    for user in users:
        at = clock.now + 100.0
        assert_same(a.score(user), b.score(user), f"score({user!r})")
        assert_same(a.score(user, at), b.score(user, at), f"score({user!r}, {at})")
    sa, sb = snapshot_of(a), snapshot_of(b)
    assert sa.keys() == sb.keys()
    for key in sa:
        assert sa[key] == sb[key], f"snapshot {key}: {AGAINST} {sa[key]!r} != reference {sb[key]!r}"
    insights = [msgspec.to_builtins(t.insights(limit=None)) for t in (a, b)]
    for x in insights:
        del x["engine"]
    assert_same(insights[0], insights[1], "insights")
    assert a.engine == AGAINST and b.engine == "reference"
    a.close()
    b.close()


@SETTINGS
@given(streams())
def test_engines_agree(against: str, stream: tuple[dict[str, Any], list[tuple[Any, ...]]]) -> None:
    config, ops = stream
    run_stream(config, ops)


SNIPPETS = ["flood", "again", "idle", "stallprobe", "swap"] + 2 * ["rage", "rage", "dead", "errors", "errors", "uturn", "uturn", "search", "visits", "visits",
                          "help", "success", "outcome", "custom", "pause", "tick", "jump"]  # fmt: skip


def exact_durations(config: dict[str, Any]) -> list[float]:
    """The config's windows, bounce, cooldown, idle_ttl and stall limits: pauses of exactly these
    lengths land on the boundaries where `<` and `<=` differ."""
    cfg = pyfriction.load_config({k: v for k, v in config.items() if k != REENTRANT})
    d = cfg.detectors
    out = [d.rage_click.window, d.dead_click.window, d.error_burst.window, d.repeat_failure.window,
           d.uturn.window, d.uturn.bounce, d.empty_search.window, d.stall.min_seconds, d.stall.max_duration,
           cfg.scoring.cooldown]  # fmt: skip
    out += [d.stall.factor * 1.5**b for b in range(1, 8)]  # stall limits of short visits
    if cfg.idle_ttl is not None:
        out.append(cfg.idle_ttl)
    return [cfg.scoring.cooldown] + sorted(set(out))  # the cooldown first: see "again"


@st.composite
def snippet(draw: Any, users: list[str], t: float, exact: list[float]) -> tuple[float, list[tuple[Any, ...]]]:
    """A few operations that make (or nearly make) one pattern for one user."""
    kind = draw(st.sampled_from(SNIPPETS))
    user = draw(st.sampled_from(users))
    step, target = draw(st.sampled_from(WHERE[: len(TARGETS) * len(STEPS)]))  # both set
    n = draw(st.integers(1, 6))
    ops: list[tuple[Any, ...]] = []

    def at(dt: float) -> float:
        nonlocal t
        t = max(0.0, t + dt)
        return t

    small = st.sampled_from([0.0, 0.05, 0.1, 0.3, 0.5, 0.6, 1.0, 1.5])
    medium = st.sampled_from([0.5, 1.0, 5.0, 10.0, 29.0, 31.0, 59.0, 61.0, 119.0, 121.0] + exact * 2)
    if kind == "flood":  # long runs: per-run counters saturate at 255
        what = draw(st.sampled_from(["click", "dead_click", "form_error", "search", "page"]))
        batch = []
        for i in range(draw(st.integers(250, 300))):
            if what == "page":
                e = ev(user, "page", at(0.001), step if i % 2 else "flood-other")
            else:
                e = ev(user, what, at(0.001), step, target, **({"results": 0} if what == "search" else {}))
            batch.append(e)
        ops.append(("many", t, batch))
    elif kind == "again":  # struggle, recover, struggle again exactly a cooldown (or so) later
        outcome_after = draw(st.booleans())
        for i in range(2):
            for _ in range(5):
                ops.append(("observe", at(0.0), ev(user, "click", t, step, target)))
            if i == 0:
                ops.append(("observe", at(0.0), ev(user, "success", t, step, target)))
                at(0.0 if outcome_after else draw(st.sampled_from(exact)))
        if outcome_after:  # an outcome (never an episode) just as the cooldown runs out
            kind2 = draw(st.sampled_from(["ticket", "ticket", "guidance_shown", "guidance_dismissed"]))
            ops.append(
                ("observe", at(draw(st.sampled_from(exact + [exact[0]] * 8))), ev(user, kind2, t, step, "tip-1"))
            )
    elif kind == "idle":  # someone new arrives (or a tick runs) exactly idle_ttl after the last event
        ops.append(("observe", at(0.0), ev(user, "page", t, step)))
        pause = draw(st.sampled_from(exact))
        if draw(st.booleans()):
            ops.append(("tick", t, t + pause))
        else:
            ops.append(("observe", at(pause), ev(f"new-{len(exact)}-{pause}", "click", t, step, target)))
    elif kind == "stallprobe":  # equal visits make a known baseline; then stay exactly a limit
        visit = draw(st.sampled_from([1.0, 2.0, 5.0]))
        for _ in range(draw(st.integers(1, 5))):
            ops.append(("observe", at(1.0), ev(user, "page", t, step)))
            ops.append(("observe", at(visit), ev(user, "page", t, "probe-next")))
        ops.append(("observe", at(1.0), ev(user, "page", t, step)))
        ops.append(("observe", at(draw(st.sampled_from(exact))), ev(user, "click", t, step, target)))
    elif kind == "rage":
        for _ in range(n):
            ops.append(("observe", at(draw(small)), ev(user, "click", t, step, target)))
    elif kind == "dead":
        for _ in range(n):
            ops.append(("observe", at(draw(medium)), ev(user, "dead_click", t, step, target)))
    elif kind == "errors":
        for _ in range(n):
            e = ev(user, draw(st.sampled_from(["error", "api_error", "form_error", "Oops"])), at(draw(medium)), step,
                   draw(st.sampled_from([target, target, None])))  # fmt: skip
            props = draw(st.sampled_from(STATUS_PROPS))
            if props is not None:
                e["properties"] = dict(props)
            ops.append(("observe", t, e))
    elif kind == "uturn":
        other = draw(st.sampled_from(STEPS))
        for i in range(n + 1):
            ops.append(("observe", at(draw(medium)), ev(user, "page", t, other if i % 2 else step)))
    elif kind == "search":
        for _ in range(n):
            ops.append(
                ("observe", at(draw(medium)), ev(user, "search", t, step, results=draw(st.sampled_from([0, 0, 0, 4]))))
            )
    elif kind == "visits":  # feeds step baselines, and stalls
        for _ in range(n):
            ops.append(("observe", at(draw(medium)), ev(user, "page", t, draw(st.sampled_from(STEPS)))))
            if draw(st.booleans()):
                ops.append(("observe", at(draw(medium)), ev(user, "click", t, step, target)))
    elif kind == "help":
        ops.append(
            ("observe", at(draw(medium)), ev(user, draw(st.sampled_from(["help", "contact", "Looked"])), t, step))
        )
    elif kind == "success":
        ops.append(("observe", at(draw(small)), ev(user, "success", t, step, target)))
    elif kind == "outcome":
        kind2 = draw(st.sampled_from(["ticket", "guidance_shown", "guidance_clicked", "guidance_dismissed"]))
        ops.append(("observe", at(draw(medium)), ev(user, kind2, t, step, target)))
    elif kind == "custom":
        ops.append(
            (
                "observe",
                at(draw(small)),
                ev(user, draw(st.sampled_from(["Payment Failed", "Export Timed Out"])), t, step),
            )
        )
    elif kind == "pause":
        at(draw(st.sampled_from([60.0, 180.0, 600.0, 601.0, 1200.0, 3600.0, 3601.0] + exact)))
    elif kind == "tick":
        ops.append(("tick", at(draw(medium)), t + draw(st.sampled_from([0.0, 30.0, 61.0, 600.0, 5000.0] + exact))))
    elif kind == "swap":
        ops.append(("swap", t, None))
    else:
        at(draw(st.sampled_from([16384.0, 16385.0, 50_000.0])))
    if draw(st.integers(0, 9)) == 0 and ops:  # late delivery: the last event's ts in the past
        kind3, when, e = ops[-1]
        if kind3 == "observe":
            e["ts"] = max(0.0, when - draw(medium))
    return t, ops


@settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.data())
def test_engines_agree_on_pattern_rich_sessions(against: str, data: st.DataObject) -> None:
    """Streams built from pattern snippets (bursts, loops, visits, pauses, ticks): the
    activations, latches, episodes, stalls and rebasing that random streams rarely reach."""
    config = data.draw(configs())
    users = data.draw(st.sampled_from([["u1"], ["u1", LONG_A], ["u1", "u2", "u3"]]))
    exact = exact_durations(config)
    t = T0
    ops: list[tuple[Any, ...]] = []
    for _ in range(data.draw(st.integers(5, 40))):
        t, more = data.draw(snippet(users, t, exact))
        ops.extend(more)
    run_stream(config, ops)


def test_engines_agree_on_the_sample_stream(against: str) -> None:
    """The bundled realistic stream (smooth and struggling personas) through both engines."""
    from pyfriction import _sample

    events = _sample.generate()
    users = sorted({e["user_id"] for e in events})
    a, b = new_pair({}, Clock())
    same_outcome(outcome(lambda: a.observe_many(events[:500])), outcome(lambda: b.observe_many(events[:500])), "batch")
    for i, e in enumerate(events[500:]):
        same_outcome(outcome(lambda: a.observe(e)), outcome(lambda: b.observe(e)), f"event {500 + i}")
    assert b.stats().episodes > 0
    assert a.flush(10.0) and b.flush(10.0)  # the callbacks run on the dispatcher
    assert_same(
        [msgspec.to_builtins(e) for e in a.episodes_seen], [msgspec.to_builtins(e) for e in b.episodes_seen], "episodes"
    )
    compare(a, b, users, "end")


# -- fuzzing: garbage never crashes and never touches anyone else ---------------------------------
FIELDS = ["user_id", "type", "ts", "step", "target", "account_id", "properties", "status", "results"]
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
    st.sampled_from(["click", "page", "error", "api_error", "search", "success", "ticket", HUGE, "", "u1"]),
    st.binary(max_size=4),
)


def containers(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(
        st.lists(inner, max_size=3),
        st.tuples(inner, inner),
        st.dictionaries(st.one_of(st.sampled_from(FIELDS), st.text(max_size=5)), inner, max_size=4),
    )


values = st.recursive(scalars, containers, max_leaves=10)
garbage_events = st.one_of(
    values,
    st.dictionaries(st.sampled_from(FIELDS), values, max_size=7),
    st.fixed_dictionaries(
        {"user_id": st.one_of(st.text(max_size=6), values), "type": st.one_of(st.sampled_from(TYPES), values)},
        optional={
            "ts": st.one_of(st.floats(), st.integers(min_value=-(2**62), max_value=2**62), values),
            "step": st.one_of(st.sampled_from(STEPS), values),
            "target": st.one_of(st.sampled_from(TARGETS), values),
            "properties": values,
        },
    ),
)
BYSTANDER = "bystander"


def bystander_tracker(engine: str) -> pyfriction.Tracker:
    tracker = pyfriction.Tracker(engine=engine, clock=lambda: T0 + 100.0)
    for e in [ev(BYSTANDER, "page", T0, "billing"), *[ev(BYSTANDER, "click", T0 + 1 + i * 0.1, "billing", "#pay") for i in range(3)],
              ev(BYSTANDER, "form_error", T0 + 2, "billing", "#card"), ev(BYSTANDER, "search", T0 + 3, results=0)]:  # fmt: skip
        tracker.observe(e)
    return tracker


def not_bystander(event: Any) -> bool:
    uid = event.get("user_id") if isinstance(event, dict) else None
    return uid != BYSTANDER


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(garbage_events.filter(not_bystander), min_size=1, max_size=6))
def test_garbage_never_crashes_nor_touches_others(engine: str, events: list[Any]) -> None:
    tracker = bystander_tracker(engine)
    tracker.tick(T0 + 50.0)
    before = msgspec.to_builtins(tracker.state(BYSTANDER))
    for event in events:
        try:
            score = tracker.observe(event)
        except pyfriction.InvalidEvent as exc:
            assert exc.field in ("event", "user_id", "type", "ts", "step", "target", "account_id", "properties")
        else:
            assert isinstance(score, float) and 0.0 <= score < 1.0
    scores = tracker.observe_many(events)
    assert scores.shape == (len(events),) and scores.dtype == np.float64
    assert all(math.isnan(s) or 0.0 <= s < 1.0 for s in scores.tolist())
    tracker.tick(T0 + 50.0)
    assert msgspec.to_builtins(tracker.state(BYSTANDER)) == before
    stats = tracker.stats()
    assert stats.events + stats.invalid == 6 + 2 * len(events)
    tracker.close()


@settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    st.dictionaries(st.sampled_from(FIELDS + ["colour"]), st.one_of(values, st.lists(values, max_size=4)), max_size=8)
)
@example(batch={"user_id": True, "type": ["click"]})  # found by this test: TypeError from len()
def test_garbage_columns_never_crash(engine: str, batch: dict[str, Any]) -> None:
    tracker = bystander_tracker(engine)
    before = msgspec.to_builtins(tracker.state(BYSTANDER))
    try:
        scores = tracker.observe_many(batch)
    except pyfriction.InvalidEvent:
        pass
    else:
        assert scores.dtype == np.float64
        assert all(math.isnan(s) or 0.0 <= s < 1.0 for s in scores.tolist())
    assert msgspec.to_builtins(tracker.state(BYSTANDER)) == before


@pytest.mark.parametrize("ts", [10**400, -(10**400)])
def test_huge_integer_ts_is_an_invalid_event(engine: str, ts: int) -> None:
    tracker = pyfriction.Tracker(engine=engine)
    with pytest.raises(pyfriction.InvalidEvent) as info:
        tracker.observe({"user_id": "u1", "type": "click", "ts": ts})
    assert info.value.field == "ts"
    # ... and in a batch it is skipped and counted, the rest go through.
    scores = tracker.observe_many(
        [ev("u1", "page", T0, "a"), {"user_id": "u1", "type": "click", "ts": ts}, ev("u2", "page", T0, "a")]
    )
    assert math.isnan(scores[1]) and tracker.state("u2") is not None


@pytest.mark.parametrize(
    "batch",
    [
        {"user_id": 7, "type": ["click"]},
        {"user_id": True, "type": ["click"]},
        {"user_id": ["u1"], "type": 5},
        {"user_id": ["u1"], "type": ["click"], "ts": 1.5},
    ],
    ids=["user_id-int", "user_id-bool", "type-int", "ts-float"],
)
def test_non_sequence_column_is_an_invalid_event(engine: str, batch: dict[str, Any]) -> None:
    """observe_many: "Raises InvalidEvent naming the column" for a malformed columnar batch."""
    tracker = pyfriction.Tracker(engine=engine)
    with pytest.raises(pyfriction.InvalidEvent) as info:
        tracker.observe_many(batch)
    assert info.value.field == next(k for k, v in batch.items() if not isinstance(v, list))
    assert tracker.stats().events == 0


# -- a damaged export is refused alike -------------------------------------------------------------
def _exported(engine: str) -> tuple[np.ndarray, np.ndarray, dict[int, str]]:
    tracker = pyfriction.Tracker(engine=engine)
    for user in ("alice", "bob", "carol", "x" * 60):  # the last one's id is too long to inline
        tracker.observe_many([ev(user, "page", T0, "home"), ev(user, "click", T0 + 1, "home", "#go")])
    slots, steps, long_ids = tracker._core.export()
    tracker.close()
    return slots, steps, long_ids


DAMAGE = {
    "a user twice": lambda slots: slots.__setitem__(2, slots[0]),
    "a zero key": lambda slots: slots["key"].__setitem__(1, 0),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
@pytest.mark.parametrize("source", ENGINES)
def test_engines_refuse_a_damaged_export_alike(against: str, source: str, damage: str) -> None:
    """load(): both engines raise the same ValueError for a damaged export (from either
    engine), and both load the undamaged one."""
    require_engine(source)
    slots, steps, long_ids = _exported(source)
    results = []
    for engine in (against, "reference"):
        fresh = pyfriction.Tracker(engine=engine)
        fresh._core.load(slots.copy(), steps, long_ids)  # undamaged: loads
        results.append(len(fresh._core))
        broken = slots.copy()
        DAMAGE[damage](broken)
        with pytest.raises(ValueError) as info:
            fresh._core.load(broken, steps, long_ids)
        results.append(str(info.value))
        fresh.close()
    assert results[:2] == results[2:], results
    assert results[0] == 4
