"""Evidence accumulates (issue 15): every further failure, u-turn, empty search and minute past
a step's limit adds pressure; the peers' signals (slow rage, text selection, error click, a
single dead click or quick back); robust stall baselines; reasons that say what accumulated.

Every test runs on both engines (the ``engine`` fixture). Expected values come from the
specification (``pyfriction/_reference.py``, the docstrings of ``pyfriction/config.py``):
pressures are float32 (``f32``), decayed by ``exp(-dt * ln 2 / half_life)`` from one event to
the next, the score is ``1 - exp(-sum of pressures)``; an episode fires at 0.6 (a sum of
pressures of at least 0.916).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import pyfriction
from pyfriction._episodes import duration
from pyfriction._hashing import key32
from pyfriction._layout import GAMMA, N_BUCKETS, bucket_of, bucket_upper, f32, quantile

from helpers import T0, accumulate, active, approx32, ev, feed, score_of

THRESHOLD_SUM = -math.log(1.0 - 0.6)  # 0.916: the sum of pressures that fires


# -- repeat_failure: every further rejection adds ---------------------------------------------------
def test_every_further_rejection_of_a_field_adds(make_tracker):
    # The repro: 8 rejections of #email 35 s apart (no page events, as in the issue).
    t = make_tracker()
    scores = feed(t, *[ev("u", "form_error", T0 + 35.0 * i, "s", "#email") for i in range(8)])
    assert scores[0] == 0.0
    for i in range(1, 8):
        p = accumulate(*[(35.0 * k, 0.6) for k in range(1, i + 1)])
        assert scores[i] == pytest.approx(score_of(p), rel=1e-6)
    assert all(b > a for a, b in zip(scores, scores[1:]))  # never falls between rejections
    [episode] = t.episodes_seen
    assert episode.ts <= T0 + 35.0 * 3  # by the 4th rejection
    assert episode.ts == T0 + 70.0  # in fact the 3rd: 0.6 * (1 + 2^(-35/180)) = 1.12
    assert episode.target == "#email"
    assert episode.reasons == [
        pyfriction.Reason(
            "repeat_failure", round(accumulate((35.0, 0.6), (70.0, 0.6)), 6), "#email rejected 3 times in 70 s"
        )
    ]
    assert t.stats().episodes == 1


def test_slow_retries_minutes_apart_still_accumulate(make_tracker):
    # A retry every 2 minutes (within the 300 s window), status 500 on the same endpoint.
    t = make_tracker()
    events = [ev("u", "api_error", T0 + 120.0 * i, "import.upload", "POST /upload", status=500) for i in range(4)]
    feed(t, *events)
    p = accumulate(*[(120.0 * k, 0.6) for k in range(1, 4)])
    assert active(t, "u") == {"repeat_failure": approx32(p)}
    assert f32(0.6) < THRESHOLD_SUM < accumulate((120.0, 0.6), (240.0, 0.6))  # 0.6 * (1 + 2^(-2/3)) = 0.98
    [episode] = t.episodes_seen
    assert episode.ts == T0 + 240.0


def test_a_gap_beyond_the_window_starts_a_new_run(make_tracker):
    t = make_tracker()
    feed(t, *[ev("u", "form_error", T0 + 301.0 * i, "s", "#email") for i in range(4)])
    assert "repeat_failure" not in active(t, "u")
    assert t.episodes_seen == []


def test_permission_wall_across_endpoints_fires(make_tracker):
    # 403 on three endpoints of one step visit, 60 s apart: area_weight 0.45 times the
    # refusal_factor 1.5 from the second on.
    t = make_tracker()
    t.observe(ev("u", "page", T0, "admin"))
    scores = feed(
        t,
        *[
            ev("u", "api_error", T0 + 60.0 * (i + 1), "admin", endpoint, status=403)
            for i, endpoint in enumerate(["/api/users", "/api/roles", "/api/audit"])
        ],
    )
    w = 0.45 * 1.5
    p = accumulate((120.0, w), (180.0, w))
    assert scores == [0.0, pytest.approx(score_of(f32(w)), rel=1e-6), pytest.approx(score_of(p), rel=1e-6)]
    assert active(t, "u") == {"repeat_failure": approx32(p)}
    [episode] = t.episodes_seen
    assert episode.ts == T0 + 180.0
    assert episode.target == "/api/audit"
    assert episode.reasons == [
        pyfriction.Reason("repeat_failure", round(p, 6), "3 failures on admin in 2 min, last /api/audit")
    ]


def test_the_same_wall_with_ordinary_errors_stays_under(make_tracker):
    # The same three endpoints failing with 500: 0.45 each, under the threshold.
    t = make_tracker()
    t.observe(ev("u", "page", T0, "admin"))
    for i, endpoint in enumerate(["/api/users", "/api/roles", "/api/audit"]):
        t.observe(ev("u", "api_error", T0 + 60.0 * (i + 1), "admin", endpoint, status=500))
    assert active(t, "u") == {"repeat_failure": approx32(accumulate((120.0, 0.45), (180.0, 0.45)))}
    assert t.episodes_seen == []


def test_payment_declines_on_one_target_weigh_refusal(make_tracker):
    t = make_tracker(scoring={"threshold": 0.5})
    feed(t, *[ev("u", "api_error", T0 + 30.0 * i, "checkout", "POST /pay", status=402) for i in range(2)])
    assert active(t, "u") == {"repeat_failure": f32(0.6 * 1.5)}
    assert t.episodes_seen[0].reasons[0].detail == "POST /pay rejected twice in 30 s"


def test_two_different_fields_wrong_once_each_is_no_episode(make_tracker):
    t = make_tracker()
    feed(
        t,
        ev("u", "page", T0, "settings"),
        ev("u", "form_error", T0 + 10.0, "settings", "#email"),
        ev("u", "form_error", T0 + 25.0, "settings", "#phone"),
        ev("u", "success", T0 + 40.0, "settings", "#save"),
    )
    assert t.episodes_seen == []
    assert active(t, "u") == {}  # the success relieved the 0.45


def test_failures_on_a_new_visit_with_another_target_start_a_new_run(make_tracker):
    t = make_tracker()
    feed(
        t,
        ev("u", "page", T0, "a"),
        ev("u", "form_error", T0 + 1.0, "a", "#x"),
        ev("u", "page", T0 + 10.0, "b"),
        ev("u", "form_error", T0 + 12.0, "b", "#y"),
    )
    assert "repeat_failure" not in active(t, "u")
    # ... while the same target on the new visit goes on with the run (weight 0.6).
    t2 = make_tracker()
    feed(
        t2,
        ev("v", "page", T0, "a"),
        ev("v", "form_error", T0 + 1.0, "a", "#x"),
        ev("v", "page", T0 + 10.0, "b"),
        ev("v", "form_error", T0 + 12.0, "b", "#x"),
    )
    assert active(t2, "v") == {"repeat_failure": f32(0.6)}


def test_same_target_and_area_failures_mix_in_one_run(make_tracker):
    t = make_tracker()
    t.observe(ev("u", "page", T0, "s"))
    feed(
        t,
        ev("u", "form_error", T0 + 10.0, "s", "#a"),
        ev("u", "form_error", T0 + 20.0, "s", "#b"),  # another target: area 0.45
        ev("u", "form_error", T0 + 30.0, "s", "#b"),  # the same as the previous: 0.6
    )
    assert active(t, "u")["repeat_failure"] == approx32(accumulate((20.0, 0.45), (30.0, 0.6)))


def test_repeat_failure_reason_for_a_long_same_target_run(make_tracker):
    # "#vat-number rejected 5 times in 6 min": threshold 0.75 (sum 1.386) is reached at the 5th.
    t = make_tracker(scoring={"threshold": 0.75})
    feed(t, *[ev("u", "form_error", T0 + 90.0 * i, "billing.vat", "#vat-number") for i in range(5)])
    [episode] = t.episodes_seen
    assert episode.ts == T0 + 360.0
    p = accumulate(*[(90.0 * k, 0.6) for k in range(1, 5)])
    assert episode.reasons == [
        pyfriction.Reason("repeat_failure", round(p, 6), "#vat-number rejected 5 times in 6 min")
    ]


# -- rage_click: slow rage, text selection ------------------------------------------------------
def test_slow_rage_on_an_unresponsive_element(make_tracker):
    # Sentry's slow rage: 3 clicks on one target over 5 s, and it gave a dead click.
    t = make_tracker()
    feed(
        t,
        ev("u", "page", T0, "s"),
        ev("u", "click", T0 + 1.0, "s", "#b"),
        ev("u", "dead_click", T0 + 2.0, "s", "#b"),  # not a click more
        ev("u", "click", T0 + 3.5, "s", "#b"),
    )
    assert "rage_click" not in active(t, "u")
    t.observe(ev("u", "click", T0 + 6.0, "s", "#b"))
    assert active(t, "u") == {"rage_click": f32(0.6), "dead_click": approx32(accumulate((2.0, 0.3), at=6.0))}
    # The slow rage with one dead click stays just under: 0.6 + 0.295 = 0.895 < 0.916 (it fired
    # with the single weight 0.4). The browser script's dead click for the click at 6.0 is the
    # run's second (0.5): the episode fires then.
    assert t.episodes_seen == []
    t.observe(ev("u", "dead_click", T0 + 7.0, "s", "#b"))
    dead = accumulate((2.0, 0.3), (7.0, 0.5))
    assert active(t, "u") == {"rage_click": approx32(accumulate((6.0, 0.6), at=7.0)), "dead_click": approx32(dead)}
    # Once per run: further clicks within the slow window add nothing.
    feed(t, ev("u", "click", T0 + 8.0, "s", "#b"), ev("u", "click", T0 + 10.0, "s", "#b"))
    assert active(t, "u")["rage_click"] == approx32(accumulate((6.0, 0.6), at=10.0))
    [episode] = t.episodes_seen
    assert episode.ts == T0 + 7.0
    assert episode.reasons == [
        pyfriction.Reason("dead_click", round(dead, 6), "2 dead clicks in a row on #b"),
        pyfriction.Reason("rage_click", round(accumulate((6.0, 0.6), at=7.0), 6), "3 clicks on #b within 5.0 s"),
    ]


def test_slow_rage_is_judged_at_the_dead_click_too(make_tracker):
    t = make_tracker()
    feed(
        t,
        ev("u", "click", T0 + 1.0, "s", "#b"),
        ev("u", "click", T0 + 3.5, "s", "#b"),
        ev("u", "click", T0 + 5.0, "s", "#b"),
    )
    assert "rage_click" not in active(t, "u")
    t.observe(ev("u", "dead_click", T0 + 6.0, "s", "#b"))
    assert active(t, "u") == {"rage_click": f32(0.6), "dead_click": f32(0.3)}


def test_slow_clicks_on_a_responsive_element_are_not_rage(make_tracker):
    # The same slow clicks without a dead click: the element responded.
    t = make_tracker()
    feed(t, *[ev("u", "click", T0 + 1.0 + 2.5 * i, "s", "#b") for i in range(3)])
    assert active(t, "u") == {}


def test_fast_rage_in_a_slow_run_adds_only_its_own_weight(make_tracker):
    t = make_tracker()
    feed(
        t,
        ev("u", "click", T0 + 1.0, "s", "#b"),
        ev("u", "dead_click", T0 + 2.0, "s", "#b"),
        ev("u", "click", T0 + 3.5, "s", "#b"),
        ev("u", "click", T0 + 6.0, "s", "#b"),  # slow: 0.6
        ev("u", "click", T0 + 6.2, "s", "#b"),
        ev("u", "click", T0 + 6.4, "s", "#b"),  # fast: 1.2
    )
    assert active(t, "u")["rage_click"] == approx32(accumulate((6.0, 0.6), (6.4, 1.2)))


def test_fast_rage_first_leaves_no_slow_rage_in_the_run(make_tracker):
    t = make_tracker()
    feed(
        t,
        *[ev("u", "click", T0 + 0.2 * i, "s", "#b") for i in range(3)],  # fast: 1.2
        ev("u", "dead_click", T0 + 1.4, "s", "#b"),
        ev("u", "click", T0 + 3.0, "s", "#b"),
    )
    assert active(t, "u")["rage_click"] == approx32(accumulate((0.4, 1.2), at=3.0))


def test_dead_clicks_are_not_clicks_for_rage(make_tracker):
    # The browser script sends a click, then a dead_click when nothing responded.
    t = make_tracker()
    feed(t, *[ev("u", "dead_click", T0 + 0.1 * i, "s", "#b") for i in range(3)])
    assert set(active(t, "u")) == {"dead_click"}


def test_a_click_that_selects_text_is_not_rage(make_tracker):
    # A triple click selecting a paragraph (Datadog ignores it).
    t = make_tracker()
    feed(
        t,
        ev("u", "click", T0, "s", "p.intro"),
        ev("u", "click", T0 + 0.1, "s", "p.intro", selection="text"),
        ev("u", "click", T0 + 0.2, "s", "p.intro"),
        ev("u", "click", T0 + 0.3, "s", "p.intro"),  # the veto holds until the run ends
    )
    assert active(t, "u") == {}
    assert t.episodes_seen == []
    # After a pause longer than the window, a new run can rage.
    feed(t, *[ev("u", "click", T0 + 2.0 + 0.1 * i, "s", "p.intro") for i in range(3)])
    assert active(t, "u") == {"rage_click": f32(1.2)}


def test_a_click_that_scrolled_vetoes_slow_rage_too(make_tracker):
    t = make_tracker()
    feed(
        t,
        ev("u", "click", T0 + 1.0, "s", "#b"),
        ev("u", "dead_click", T0 + 2.0, "s", "#b"),
        ev("u", "click", T0 + 3.5, "s", "#b", selection="scroll"),
        ev("u", "click", T0 + 6.0, "s", "#b"),
    )
    assert "rage_click" not in active(t, "u")


# -- error_click -----------------------------------------------------------------------------------
def test_error_click(make_tracker):
    t = make_tracker(scoring={"threshold": 0.3, "rearm": 0.1})
    feed(
        t,
        ev("u", "page", T0, "s"),
        ev("u", "click", T0 + 1.0, "s", "#save"),
        ev("u", "api_error", T0 + 2.0, "s", "/api/save", status=500),
    )
    assert active(t, "u") == {"error_click": f32(0.4)}
    [episode] = t.episodes_seen
    assert episode.reasons == [pyfriction.Reason("error_click", 0.4, "an error right after a click")]


def test_error_click_once_per_click(make_tracker):
    t = make_tracker()
    feed(
        t,
        ev("u", "page", T0, "s"),
        ev("u", "click", T0 + 1.0, "s", "#save"),
        ev("u", "error", T0 + 1.5, "s"),
        ev("u", "error", T0 + 2.0, "s"),
    )
    assert active(t, "u")["error_click"] == approx32(accumulate((1.5, 0.4), at=2.0))
    # ... a new click, a new error click
    feed(t, ev("u", "click", T0 + 2.5, "s", "#save"), ev("u", "error", T0 + 3.0, "s"))
    assert active(t, "u")["error_click"] == approx32(accumulate((1.5, 0.4), (3.0, 0.4)))


def test_error_click_needs_the_same_step(make_tracker):
    t = make_tracker()
    feed(
        t,
        ev("u", "page", T0, "s"),
        ev("u", "click", T0 + 1.0, "s", "#next"),
        ev("u", "page", T0 + 1.5, "t"),
        ev("u", "error", T0 + 2.0, "t"),
    )
    assert active(t, "u") == {}


def test_error_click_window(make_tracker):
    t = make_tracker()
    feed(t, ev("u", "page", T0, "s"), ev("u", "click", T0 + 1.0, "s", "#a"), ev("u", "error", T0 + 4.5, "s"))
    assert active(t, "u") == {}  # 3.5 s > 3 s
    feed(t, ev("v", "page", T0, "s"), ev("v", "click", T0 + 1.0, "s", "#a"), ev("v", "error", T0 + 4.0, "s"))
    assert active(t, "v") == {"error_click": f32(0.4)}  # 3 s: within


def test_error_click_status_factors(make_tracker):
    t = make_tracker()
    for user, status in (("refused", 403), ("ordinary", 404)):
        feed(
            t,
            ev(user, "page", T0, "s"),
            ev(user, "click", T0 + 1.0, "s", "#a"),
            ev(user, "api_error", T0 + 2.0, "s", "/api/a", status=status),
        )
    assert active(t, "refused") == {"error_click": f32(0.4 * 1.5)}
    assert active(t, "ordinary") == {"error_click": f32(0.4 * 0.3)}


def test_error_click_is_the_click_not_its_dead_click(make_tracker):
    # The browser script sends the click at once and a dead click a second later for the same
    # click: the error click is judged from the click, and the dead click is not a second one.
    t = make_tracker()
    feed(
        t,
        ev("u", "page", T0, "s"),
        ev("u", "click", T0 + 1.0, "s", "#save"),
        ev("u", "dead_click", T0 + 2.0, "s", "#save"),
        ev("u", "api_error", T0 + 3.0, "s", "/api/save", status=500),
    )
    assert active(t, "u")["error_click"] == f32(0.4)
    u = make_tracker()
    feed(
        u,
        ev("u", "page", T0, "s"),
        ev("u", "dead_click", T0 + 1.0, "s", "#save"),
        ev("u", "api_error", T0 + 2.0, "s", "/api/save", status=500),
    )
    assert "error_click" not in active(u, "u")


# -- uturn and empty_search: single signals weak, runs accumulate -------------------------------------
def test_uturn_single_then_run(make_tracker):
    t = make_tracker()
    feed(t, *[ev("u", "page", T0 + 5.0 * i, s) for i, s in enumerate(["a", "b", "a"])])
    assert active(t, "u") == {"uturn": f32(0.25)}  # a single quick back: weak
    assert t.episodes_seen == []
    t.observe(ev("u", "page", T0 + 15.0, "b"))
    assert active(t, "u") == {"uturn": approx32(accumulate((10.0, 0.25), (15.0, 0.6)))}
    t.observe(ev("u", "page", T0 + 20.0, "a"))  # every further one in the window: 0.6
    p = accumulate((10.0, 0.25), (15.0, 0.6), (20.0, 0.6))
    assert active(t, "u") == {"uturn": approx32(p)}
    assert len(t.episodes_seen) == 1


def test_uturn_beyond_the_window_is_single_again(make_tracker):
    t = make_tracker()
    steps = [(0.0, "a"), (5.0, "b"), (10.0, "a"), (40.0, "c"), (135.0, "d"), (140.0, "c")]
    feed(t, *[ev("u", "page", T0 + ts, s) for ts, s in steps])
    # u-turns at 10 s and at 140 s (130 s apart > window 120 s): two single ones
    assert active(t, "u") == {"uturn": approx32(accumulate((10.0, 0.25), (140.0, 0.25)))}


def test_min_uturns_one(make_tracker):
    t = make_tracker(detectors={"uturn": {"min_uturns": 1}})
    feed(t, *[ev("u", "page", T0 + 5.0 * i, s) for i, s in enumerate(["a", "b", "a"])])
    assert active(t, "u") == {"uturn": f32(0.6)}


def test_empty_searches_accumulate(make_tracker):
    t = make_tracker()
    feed(t, ev("u", "search", T0, "s", results=0))
    assert active(t, "u") == {}  # single_weight 0.0
    feed(t, *[ev("u", "search", T0 + 20.0 * i, "s", results=0) for i in range(1, 4)])
    p = accumulate((20.0, 0.6), (40.0, 0.6), (60.0, 0.6))
    assert active(t, "u") == {"empty_search": approx32(p)}
    [episode] = t.episodes_seen
    assert episode.ts == T0 + 40.0  # 0.6 * (1 + 2^(-20/180)) = 1.15
    assert episode.reasons[0].detail == "3 searches with no results"


def test_an_empty_search_refined_and_found_is_silent(make_tracker):
    t = make_tracker()
    feed(t, ev("u", "search", T0, "s", results=0), ev("u", "search", T0 + 8.0, "s", results=12))
    assert active(t, "u") == {}


# -- stall: grows with time ------------------------------------------------------------------
def train(tracker: pyfriction.Tracker, step: str, seconds: list[float], t0: float = T0) -> float:
    """One finished visit of each duration on ``step`` (then moving on); returns the time after."""
    for i, d in enumerate(seconds):
        start = t0 + i * 0.5
        tracker.observe(ev(f"train-{step}-{i}", "page", start, step))
        tracker.observe(ev(f"train-{step}-{i}", "page", start + d, "next"))
    return t0 + len(seconds) * 0.5 + max(seconds)


def need_of(tracker: pyfriction.Tracker, step: str) -> float:
    return tracker._core.stall_need(key32(step))


#: 25 visits of 30 s: median GAMMA^8.5 = 31.3 s (bucket 9, interpolated), limit 3 x 31.3 = 94 s.
NEED_30 = GAMMA**8.5
LIMIT_30 = 3.0 * NEED_30


def test_stall_baseline_and_limit(make_tracker):
    t = make_tracker()
    train(t, "s", [30.0] * 25)
    assert bucket_of(30.0) == 9
    assert need_of(t, "s") == pytest.approx(NEED_30, rel=1e-12)
    assert t._core.stall_limit(key32("s")) == pytest.approx(LIMIT_30, rel=1e-12)
    t2 = make_tracker()
    train(t2, "s", [30.0] * 19)  # min_samples 20
    assert need_of(t2, "s") == -1.0


def test_stall_grows_at_each_tick(make_tracker):
    # Past the limit, each judgement sets the stall pressure to at least
    # weight 1.0 * (te - step start - limit) / limit: it grows with the time, whatever the decay.
    t = make_tracker()
    now = train(t, "s", [30.0] * 25)
    t.observe(ev("u", "page", now, "s"))
    assert t.tick(now + LIMIT_30 - 1.0) == 0
    assert "stall" not in active(t, "u")
    for over in (10.0, 50.0, 51.0, 300.0):
        t.tick(now + LIMIT_30 + over)
        assert active(t, "u") == {"stall": f32(1.0 * over / LIMIT_30)}
    # A tick at the same time again, or an earlier one, adds nothing (only decays).
    t.tick(now + LIMIT_30 + 300.0)
    assert active(t, "u") == {"stall": f32(1.0 * 300.0 / LIMIT_30)}
    t.tick(now + LIMIT_30 + 200.0)
    assert active(t, "u") == {"stall": f32(1.0 * 300.0 / LIMIT_30)}
    # An event is judged the same way.
    t.observe(ev("u", "click", now + LIMIT_30 + 320.0, "s", "#x"))
    assert active(t, "u") == {"stall": f32(1.0 * 320.0 / LIMIT_30)}
    # How often it is judged does not matter: one tick at the end gives the same.
    t2 = make_tracker()
    now = train(t2, "s", [30.0] * 25)
    t2.observe(ev("u", "page", now, "s"))
    t2.tick(now + LIMIT_30 + 300.0)
    assert active(t2, "u") == {"stall": f32(1.0 * 300.0 / LIMIT_30)}


def test_a_silent_user_is_caught_by_tick_alone(make_tracker):
    t = make_tracker()
    now = train(t, "s", [10.0] * 25)  # limit max(60, 3 x 9.3) = 60 s
    t.observe(ev("u", "page", now, "s"))
    fired_at = None
    for k in range(1, 20):
        if t.tick(now + 30.0 * k):
            fired_at = 30.0 * k
            break
    # ticks at 90 s (0.5) and 120 s (1.0 >= 0.916): the second fires
    assert fired_at == 120.0
    [episode] = t.episodes_seen
    assert episode.user_id == "u"
    assert episode.account_id is None
    assert episode.reasons == [pyfriction.Reason("stall", 1.0, "2 min on s, others need 9 s")]


def test_success_ends_stall_for_the_visit(make_tracker):
    t = make_tracker()
    now = train(t, "s", [10.0] * 25)
    t.observe(ev("u", "page", now, "s"))
    t.tick(now + 90.0)
    assert active(t, "u") == {"stall": f32(0.5)}
    t.observe(ev("u", "success", now + 95.0, "s", "#save"))
    assert active(t, "u") == {}
    t.tick(now + 300.0)
    t.observe(ev("u", "click", now + 400.0, "s", "#x"))
    assert active(t, "u") == {}
    # A new visit starts over: its own limit from its own start (back after 40 s: no u-turn).
    t.observe(ev("u", "page", now + 410.0, "next"))
    t.observe(ev("u", "page", now + 450.0, "s"))
    t.tick(now + 500.0)
    assert active(t, "u") == {}
    t.tick(now + 540.0)
    assert active(t, "u") == {"stall": f32(1.0 * 30.0 / 60.0)}


def test_stall_reason_says_what_others_need(make_tracker):
    # "12 min on settings.sso, others need 1.5 min": 10 visits of 70 s and 15 of 100 s give a
    # median of 92.5 s (interpolated in bucket 12), a limit of 277.6 s.
    t = make_tracker()
    now = train(t, "settings.sso", [70.0] * 10 + [100.0] * 15)
    need = GAMMA ** (11 + (12.5 - 10) / 15)
    assert need_of(t, "settings.sso") == pytest.approx(need, rel=1e-12)
    assert duration(need) == "1.5 min"
    t.observe(ev("u", "page", now, "settings.sso"))
    assert t.tick(now + 720.0) == 1
    [episode] = t.episodes_seen
    p = f32(1.0 * (720.0 - 3.0 * need) / (3.0 * need))
    assert episode.reasons == [pyfriction.Reason("stall", round(p, 6), "12 min on settings.sso, others need 1.5 min")]


@pytest.mark.parametrize(
    "stuck",
    [
        pytest.param([ev("u", "help", T0 + 2000.0, "s")], id="help"),
        pytest.param([ev("u", "contact", T0 + 2000.0, "s")], id="contact"),
        pytest.param([ev("u", "click", T0 + 2000.0 + 0.1 * i, "s", "#b") for i in range(3)], id="episode"),
    ],
)
def test_stuck_visits_do_not_feed_the_baseline(make_tracker, stuck):
    t = make_tracker(detectors={"stall": {"enabled": False}})  # only the baseline matters here
    train(t, "s", [10.0] * 20)
    before = need_of(t, "s")
    assert before == pytest.approx(GAMMA**5.5, rel=1e-12)
    feed(t, ev("u", "page", T0 + 1900.0, "s"), *stuck, ev("u", "page", T0 + 2200.0, "next"))
    assert need_of(t, "s") == before
    # ... while a normal visit of the same length does.
    feed(
        t,
        ev("v", "page", T0 + 1900.0, "s"),
        ev("v", "click", T0 + 2000.0, "s", "#b"),
        ev("v", "page", T0 + 2200.0, "next"),
    )
    assert need_of(t, "s") == pytest.approx(GAMMA ** (5 + 10.5 / 20), rel=1e-12)  # 20 of 21 in bucket 6
    # ... and the user's next visit counts again.
    feed(t, ev("u", "page", T0 + 2300.0, "s"), ev("u", "page", T0 + 2310.0, "next"))
    assert need_of(t, "s") == pytest.approx(GAMMA ** (5 + 11.0 / 21), rel=1e-12)  # 21 of 22 in bucket 6


# -- the interpolated quantile ---------------------------------------------------------------
def _histogram(durations: np.ndarray) -> list[int]:
    counts = [0] * N_BUCKETS
    for d in durations:
        counts[bucket_of(float(d))] += 1
    return counts


@pytest.mark.parametrize(
    "name",
    ["log-uniform", "lognormal", "gamma", "outliers"],
)
@pytest.mark.parametrize("q", [0.5, 0.75, 0.9])
def test_interpolated_quantile_against_numpy(name, q):
    rng = np.random.default_rng(7)
    n = 20_000
    samples = {
        "log-uniform": lambda: np.exp(rng.uniform(math.log(2.0), math.log(2000.0), n)),
        "lognormal": lambda: rng.lognormal(math.log(30.0), 0.8, n),
        "gamma": lambda: rng.gamma(3.0, 15.0, n),
        # 30% idle tabs: the median holds up
        "outliers": lambda: np.concatenate(
            [rng.lognormal(math.log(20.0), 0.3, 7 * n // 10), rng.uniform(2000.0, 3600.0, 3 * n // 10)]
        ),
    }[name]()
    estimate = quantile(_histogram(samples), len(samples), q)
    assert estimate == pytest.approx(float(np.quantile(samples, q)), rel=0.03)


def test_interpolated_quantile_exact_cases():
    counts = [0] * N_BUCKETS
    counts[6] = 10
    assert quantile(counts, 10, 0.5) == pytest.approx(GAMMA**5.5, rel=1e-15)  # mid bucket, geometrically
    assert quantile(counts, 10, 0.1) == pytest.approx(GAMMA**5.1, rel=1e-15)
    counts = [0] * N_BUCKETS
    counts[0] = 4  # bucket 0 (under 1 s): linear
    assert quantile(counts, 4, 0.25) == 0.25
    counts = [0] * N_BUCKETS
    counts[3], counts[8] = 5, 5
    assert quantile(counts, 10, 0.5) == pytest.approx(GAMMA**3, rel=1e-15)  # the top of bucket 3
    assert quantile(counts, 10, 0.6) == pytest.approx(GAMMA**7.2, rel=1e-15)
    # The upper bound of the bucket (what a quantile used to report) is up to GAMMA off.
    assert bucket_upper(8) / quantile(counts, 10, 0.6) == pytest.approx(GAMMA**0.8, rel=1e-15)
