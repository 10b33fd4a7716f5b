"""Each default detector on its own pattern, and the normal-use near-miss that must stay silent.

Every test runs on both engines (the ``engine`` fixture). Expected values come from the
specification (``pyfriction/_reference.py`` and the docstrings of ``pyfriction/config.py``):
pressures are float32 (``f32``), the score is ``1 - exp(-sum of pressures)``, pressures decay
with ``exp(-dt * ln 2 / half_life)``.
"""

from __future__ import annotations

import math
from typing import Any

import pytest

import pyfriction
from pyfriction._layout import f32

from helpers import HALF_LIFE, T0, accumulate, active, approx32, ev, feed, score_of

RATE = math.log(2.0) / HALF_LIFE


def exactly(x: float) -> Any:
    """Equal up to the last bits of a double (the spec fixes the value)."""
    return pytest.approx(x, rel=1e-12, abs=1e-15)


def decayed(weight: float, dt: float, half_life: float = HALF_LIFE) -> Any:
    """A float32 pressure ``weight`` decayed over ``dt`` seconds (float32 rounding: rel 1e-6)."""
    return pytest.approx(f32(weight) * math.exp(-dt * math.log(2.0) / half_life), rel=1e-6)


def silent(tracker: pyfriction.Tracker, user: str, detector: str | None = None) -> None:
    """No episode for anyone, and ``detector`` (or every detector) not active for ``user``."""
    assert tracker.episodes_seen == []
    assert tracker.stats().episodes == 0
    detectors = active(tracker, user)
    if detector is None:
        assert detectors == {}
        assert tracker.score(user) == 0.0
    else:
        assert detector not in detectors


def clicks(user: str, target: str, times: list[float], step: str = "billing") -> list[dict[str, Any]]:
    return [ev(user, "click", t, step, target) for t in times]


def pages(user: str, steps: list[str], t0: float, gap: float) -> list[dict[str, Any]]:
    return [ev(user, "page", t0 + i * gap, s) for i, s in enumerate(steps)]


# -- rage_click ---------------------------------------------------------------------------------
def test_rage_click_fires(make_tracker):
    t = make_tracker()
    scores = feed(t, *clicks("u1", "#pay-now", [T0, T0 + 0.3, T0 + 0.6]))
    w = f32(1.2)
    assert scores[:2] == [0.0, 0.0]
    assert scores[2] == exactly(score_of(w))
    assert active(t, "u1") == {"rage_click": w}
    [episode] = t.episodes_seen
    assert episode.user_id == "u1"
    assert episode.ts == T0 + 0.6
    assert episode.score == exactly(score_of(w))
    assert episode.step == "billing"
    assert episode.target == "#pay-now"
    assert episode.account_id is None
    assert episode.reasons == [pyfriction.Reason("rage_click", round(w, 6), "3 clicks on #pay-now within 0.6 s")]
    assert t.stats().episodes == 1
    state = t.state("u1")
    assert state.in_episode and state.episodes == 1
    assert state.last_episode_ts == T0 + 0.6
    assert state.last_episode_score == pytest.approx(score_of(w), rel=1e-6)


def test_rage_click_episode_carries_account(make_tracker):
    t = make_tracker()
    for i in range(3):
        t.observe(ev("u1", "click", T0 + i * 0.2, "billing", "#pay-now", account_id="acct-acme"))
    [episode] = t.episodes_seen
    assert episode.account_id == "acct-acme"


def test_double_click_is_not_rage(make_tracker):
    t = make_tracker()
    feed(t, *clicks("u1", "#open", [T0, T0 + 0.15]))
    silent(t, "u1")


def test_clicks_on_different_targets_are_not_rage(make_tracker):
    t = make_tracker()
    feed(t, *[ev("u1", "click", T0 + i * 0.2, "billing", f"#item-{i}") for i in range(6)])
    silent(t, "u1")


def test_slow_clicks_are_not_rage(make_tracker):
    # Every click has the previous one within the 1 s window, never two: no run of 3.
    t = make_tracker()
    feed(t, *clicks("u1", "#next", [T0 + i * 0.9 for i in range(10)]))
    silent(t, "u1")


def test_one_burst_is_one_activation(make_tracker):
    t = make_tracker()
    times = [T0 + i * 0.1 for i in range(8)]
    scores = feed(t, *clicks("u1", "#pay-now", times))
    # Activated once, on the third click; later clicks in the run add nothing.
    assert active(t, "u1") == {"rage_click": decayed(1.2, times[-1] - times[2])}
    assert scores[3:] == sorted(scores[3:], reverse=True)  # only decaying after the activation
    assert len(t.episodes_seen) == 1
    assert t.episodes_seen[0].ts == times[2]
    assert t.state("u1").detectors["rage_click"] < 1.2


def test_gap_longer_than_window_starts_a_new_run(make_tracker):
    t = make_tracker()
    first = [T0, T0 + 0.2, T0 + 0.4]
    second = [T0 + 2.0, T0 + 2.2, T0 + 2.4]  # pause of 1.6 s > window 1 s
    feed(t, *clicks("u1", "#pay-now", first))
    feed(t, *clicks("u1", "#pay-now", second[:2]))
    assert active(t, "u1") == {"rage_click": decayed(1.2, 2.2 - 0.4)}
    t.observe(clicks("u1", "#pay-now", second[2:])[0])
    expected = f32(1.2) * math.exp(-2.0 * RATE) + f32(1.2)
    assert active(t, "u1")["rage_click"] == pytest.approx(expected, rel=1e-6)
    # Still one episode: the user never fell below rearm.
    assert len(t.episodes_seen) == 1


def test_pause_within_window_keeps_the_run(make_tracker):
    t = make_tracker()
    feed(t, *clicks("u1", "#pay-now", [T0, T0 + 0.2, T0 + 0.4, T0 + 1.3, T0 + 2.2, T0 + 3.1]))
    assert active(t, "u1") == {"rage_click": decayed(1.2, 3.1 - 0.4)}


def test_switching_target_restarts_the_run(make_tracker):
    t = make_tracker()
    feed(t, *clicks("u1", "#a", [T0, T0 + 0.1]), *clicks("u1", "#b", [T0 + 0.2]), *clicks("u1", "#a", [T0 + 0.3]))
    silent(t, "u1")


def test_rage_min_clicks_and_window_are_configurable(make_tracker):
    t = make_tracker(detectors={"rage_click": {"min_clicks": 5, "window": 3.0}})
    feed(t, *clicks("u1", "#go", [T0 + i * 0.7 for i in range(4)]))
    silent(t, "u1")
    t.observe(clicks("u1", "#go", [T0 + 2.8])[0])
    assert active(t, "u1") == {"rage_click": f32(1.2)}
    assert t.episodes_seen[0].reasons[0].detail == "5 clicks on #go"  # 5 > ring size: no span


# -- dead_click ---------------------------------------------------------------------------------
def test_dead_clicks_activate(make_tracker):
    # The first dead click is a single one (0.3); the second on the same target within the
    # window makes a run of min_clicks 2 and adds the full weight (0.5).
    t = make_tracker(scoring={"threshold": 0.5})
    scores = feed(
        t,
        ev("u1", "dead_click", T0, "reports", "p.help-text"),
        ev("u1", "dead_click", T0 + 4.0, "reports", "p.help-text"),
    )
    p = accumulate((0.0, 0.3), (4.0, 0.5))
    assert scores[0] == exactly(score_of(f32(0.3)))
    assert active(t, "u1") == {"dead_click": approx32(p)}
    [episode] = t.episodes_seen  # 1 - exp(-0.795) = 0.55 >= 0.5
    assert episode.score == pytest.approx(score_of(p), rel=1e-6)
    assert episode.reasons == [pyfriction.Reason("dead_click", round(p, 6), "2 dead clicks in a row on p.help-text")]


def test_two_dead_clicks_on_one_target_stay_below_the_default_threshold_a_third_fires(make_tracker):
    # Was (weights 0.4 and 0.7): two dead clicks fire, 1 - exp(-1.09) = 0.66 >= 0.6. Now a pair
    # is a weak signal: the single one adds 0.3 and the run's second 0.5, 0.795 < 0.916
    # (score 0.55 < 0.6). A third in the run adds 0.5 more and fires.
    t = make_tracker()
    feed(
        t,
        ev("u1", "dead_click", T0, "reports", "p.help-text"),
        ev("u1", "dead_click", T0 + 4.0, "reports", "p.help-text"),
    )
    assert active(t, "u1") == {"dead_click": approx32(accumulate((0.0, 0.3), (4.0, 0.5)))}
    assert t.episodes_seen == []
    t.observe(ev("u1", "dead_click", T0 + 8.0, "reports", "p.help-text"))
    p = accumulate((0.0, 0.3), (4.0, 0.5), (8.0, 0.5))
    assert active(t, "u1") == {"dead_click": approx32(p)}
    [episode] = t.episodes_seen
    assert episode.ts == T0 + 8.0
    assert episode.target == "p.help-text"
    assert episode.reasons == [pyfriction.Reason("dead_click", round(p, 6), "3 dead clicks in a row on p.help-text")]


def test_single_dead_click_is_weak(make_tracker):
    # One click on a label that does nothing: active with single_weight, no episode.
    t = make_tracker()
    assert t.observe(ev("u1", "dead_click", T0, "reports", "p.help-text")) == exactly(score_of(f32(0.3)))
    assert active(t, "u1") == {"dead_click": f32(0.3)}
    # ... another target is no run: a second single one.
    t.observe(ev("u1", "dead_click", T0 + 5.0, "reports", "h1.title"))
    assert active(t, "u1") == {"dead_click": approx32(accumulate((0.0, 0.3), (5.0, 0.3)))}
    assert t.episodes_seen == []
    # ... and the same target again beyond the 60 s window is a single one too.
    t2 = make_tracker()
    feed(
        t2,
        ev("u2", "dead_click", T0, "reports", "p.help-text"),
        ev("u2", "dead_click", T0 + 61.0, "reports", "p.help-text"),
    )
    assert active(t2, "u2") == {"dead_click": approx32(accumulate((0.0, 0.3), (61.0, 0.3)))}
    assert t2.episodes_seen == []


def test_dead_click_min_clicks_one_makes_every_dead_click_full_weight(make_tracker):
    # The full weight 0.5 alone scores 1 - exp(-0.5) = 0.39: a threshold of 0.35 (was 0.5 with
    # the weight 0.7) lets the single dead click fire.
    t = make_tracker(detectors={"dead_click": {"min_clicks": 1}}, scoring={"threshold": 0.35})
    t.observe(ev("u1", "dead_click", T0, "reports", "p.help-text"))
    assert active(t, "u1") == {"dead_click": f32(0.5)}
    [episode] = t.episodes_seen
    assert episode.reasons == [pyfriction.Reason("dead_click", round(f32(0.5), 6), "a dead click on p.help-text")]


# -- error_burst and repeat_failure ---------------------------------------------------------------
def test_error_burst_fires(make_tracker):
    t = make_tracker()
    scores = feed(t, *[ev("u1", "api_error", T0 + 5.0 * i, "import.upload", status=500) for i in range(3)])
    w = f32(1.0)
    assert scores == [0.0, 0.0, exactly(score_of(w))]
    assert active(t, "u1") == {"error_burst": w}
    [episode] = t.episodes_seen
    assert episode.reasons == [pyfriction.Reason("error_burst", 1.0, "3 errors within 10.0 s")]
    assert episode.step == "import.upload"
    assert episode.target is None


def test_error_burst_alone(make_tracker):
    t = make_tracker(detectors={"repeat_failure": {"enabled": False}})
    scores = feed(t, *[ev("u1", "api_error", T0 + 5.0 * i, "import.upload", status=500) for i in range(3)])
    assert scores == [0.0, 0.0, exactly(score_of(f32(1.0)))]
    assert active(t, "u1") == {"error_burst": f32(1.0)}
    [episode] = t.episodes_seen
    assert episode.reasons == [pyfriction.Reason("error_burst", 1.0, "3 errors within 10.0 s")]


def test_error_burst_mixes_error_kinds(make_tracker):
    t = make_tracker()
    feed(t, ev("u1", "error", T0), ev("u1", "api_error", T0 + 1, status=502), ev("u1", "form_error", T0 + 2))
    assert active(t, "u1") == {"error_burst": f32(1.0)}
    assert len(t.episodes_seen) == 1


def test_errors_spread_beyond_window_are_silent(make_tracker):
    # No burst (window 60 s), and errors that name no target (a page's stray script errors)
    # are no attempts of the user's: no failure run either.
    t = make_tracker()
    feed(t, *[ev("u1", "error", T0 + 61.0 * i) for i in range(5)])
    silent(t, "u1")


def test_failures_without_a_target_are_no_run(make_tracker):
    # Three api_errors naming no endpoint within 10 s: an error burst, and nothing else.
    t = make_tracker()
    feed(t, *[ev("u1", "api_error", T0 + 5.0 * i, "import.upload", status=500) for i in range(3)])
    assert active(t, "u1") == {"error_burst": f32(1.0)}
    [episode] = t.episodes_seen
    assert [r.detector for r in episode.reasons] == ["error_burst"]
    # ... the same on a target is a run that adds at every further failure.
    t2 = make_tracker()
    feed(t2, *[ev("u2", "api_error", T0 + 5.0 * i, "import.upload", "POST /api/imports", status=500) for i in range(3)])
    assert set(active(t2, "u2")) == {"error_burst", "repeat_failure"}


def test_error_burst_with_repeat_failure(make_tracker):
    t = make_tracker()
    events = [ev("u1", "form_error", T0 + 5.0 * i, "import.mapping", "#date-format") for i in range(3)]
    scores = feed(t, *events)
    eb = f32(1.0)
    rf = accumulate((5.0, 0.6), (10.0, 0.6))  # every further rejection of the field adds 0.6
    assert scores[0] == 0.0
    assert scores[1] == exactly(score_of(f32(0.6)))  # the same field rejected twice
    assert t.episodes_seen and len(t.episodes_seen) == 1
    state = active(t, "u1")
    assert state == {"repeat_failure": approx32(rf), "error_burst": eb}
    [episode] = t.episodes_seen
    assert episode.ts == T0 + 10.0
    assert episode.target == "#date-format"
    assert episode.step == "import.mapping"
    assert [r.detector for r in episode.reasons] == ["repeat_failure", "error_burst"]
    assert episode.reasons[0].detail == "#date-format rejected 3 times in 10 s"
    assert episode.reasons[1].detail == "3 errors within 10.0 s"
    assert episode.score == pytest.approx(score_of(eb + rf), rel=1e-6)


def test_repeat_failure_activates(make_tracker):
    t = make_tracker(scoring={"threshold": 0.4})
    feed(t, ev("u1", "form_error", T0, "settings", "#email"), ev("u1", "form_error", T0 + 20.0, "settings", "#email"))
    assert active(t, "u1") == {"repeat_failure": f32(0.6)}
    [episode] = t.episodes_seen
    assert episode.reasons == [pyfriction.Reason("repeat_failure", round(f32(0.6), 6), "#email rejected twice in 20 s")]


def test_repeat_failure_needs_the_same_target_or_visit_within_window(make_tracker):
    # Was: needs the same target within 120 s. Now a run goes on on the same target or the
    # same step visit, each failure within 300 s of the one before.
    t = make_tracker()
    feed(
        t,
        ev("u1", "page", T0, "settings"),
        ev("u1", "form_error", T0 + 1.0, "settings", "#email"),
        ev("u1", "page", T0 + 65.0, "profile"),
        ev("u1", "form_error", T0 + 70.0, "profile", "#phone"),  # another target, another visit
        ev("u1", "page", T0 + 130.0, "billing"),
        ev("u1", "form_error", T0 + 140.0, "billing", "#email"),  # not the previous target
        ev("u1", "form_error", T0 + 441.0, "billing", "#email"),  # 301 s later: outside 300 s
    )
    assert "repeat_failure" not in active(t, "u1")
    assert t.episodes_seen == []


def test_two_different_fields_wrong_once_each_stay_under_threshold(make_tracker):
    t = make_tracker()
    feed(
        t,
        ev("u1", "page", T0, "settings"),
        ev("u1", "form_error", T0 + 10.0, "settings", "#email"),
        ev("u1", "form_error", T0 + 20.0, "settings", "#phone"),
    )
    assert active(t, "u1") == {"repeat_failure": f32(0.45)}  # area_weight, once
    assert t.episodes_seen == []


def test_one_validation_error_fixed_at_once_is_silent(make_tracker):
    t = make_tracker()
    feed(
        t,
        ev("u1", "page", T0, "settings"),
        ev("u1", "form_error", T0 + 8.0, "settings", "#email"),
        ev("u1", "success", T0 + 15.0, "settings", "#save"),
    )
    silent(t, "u1")


def test_single_transient_503_is_silent(make_tracker):
    t = make_tracker()
    feed(
        t,
        ev("u1", "page", T0, "reports"),
        ev("u1", "api_error", T0 + 2.0, "reports", "/api/reports", status=503),
        ev("u1", "click", T0 + 5.0, "reports", "#refresh"),
    )
    silent(t, "u1")


@pytest.mark.parametrize("status", [401, 404])
def test_ordinary_status_weighs_less(make_tracker, status):
    t = make_tracker()
    feed(t, *[ev("u1", "api_error", T0 + i, "records", status=status) for i in range(3)])
    assert active(t, "u1") == {"error_burst": f32(0.3)}  # weight 1.0 * ordinary_factor 0.3
    assert t.episodes_seen == []


def test_ordinary_factor_applies_to_the_triggering_event(make_tracker):
    t = make_tracker()
    feed(t, *[ev("u1", "api_error", T0 + i, status=s) for i, s in enumerate([404, 404, 500])])
    assert active(t, "u1") == {"error_burst": f32(1.0)}
    t2 = make_tracker()
    feed(t2, *[ev("u2", "api_error", T0 + i, status=s) for i, s in enumerate([500, 500, 401])])
    assert active(t2, "u2") == {"error_burst": f32(0.3)}


def test_ordinary_statuses_are_configurable(make_tracker):
    t = make_tracker(detectors={"error_burst": {"ordinary_statuses": [409], "ordinary_factor": 0.5}})
    feed(t, *[ev("u1", "api_error", T0 + i, status=409) for i in range(3)])
    feed(t, *[ev("u2", "api_error", T0 + i, status=404) for i in range(3)])
    assert active(t, "u1") == {"error_burst": f32(0.5)}
    assert active(t, "u2") == {"error_burst": f32(1.0)}


# -- uturn --------------------------------------------------------------------------------------
def test_uturns_activate(make_tracker):
    t = make_tracker()
    feed(t, *pages("u1", ["import.upload", "import.mapping", "import.upload", "import.mapping"], T0, 5.0))
    # The first quick back is a single one (0.25), the second in the window the run's (0.6).
    p = accumulate((10.0, 0.25), (15.0, 0.6))
    assert active(t, "u1") == {"uturn": approx32(p)}
    assert t.episodes_seen == []  # 1 - exp(-0.85) = 0.57 < 0.6: weak alone
    # ... and the user going for help right after is an episode.
    t.observe(ev("u1", "help", T0 + 17.0, "import.mapping"))
    [episode] = t.episodes_seen
    assert [r.detector for r in episode.reasons] == ["uturn", "help_seeking"]
    assert episode.reasons[0].detail == "2 u-turns between import.upload and import.mapping"
    assert episode.reasons[1].detail == "looked for help or support"
    assert active(t, "u1")["help_seeking"] == f32(0.4)  # boosted: 0.1 * 4
    assert episode.step == "import.mapping"


def test_uturn_detail_in_episode(make_tracker):
    t = make_tracker(scoring={"threshold": 0.5})
    feed(t, *pages("u1", ["a", "b", "a", "b", "a"], T0, 3.0))
    [episode] = t.episodes_seen
    assert episode.ts == T0 + 9.0
    p = accumulate((6.0, 0.25), (9.0, 0.6))
    assert episode.reasons == [pyfriction.Reason("uturn", round(p, 6), "2 u-turns between a and b")]
    assert episode.step == "b"


def test_fast_forward_navigation_is_silent(make_tracker):
    t = make_tracker()
    feed(t, *pages("u1", ["a", "b", "c", "d", "e"], T0, 1.0))
    silent(t, "u1")


def test_single_look_back_is_weak(make_tracker):
    # Was: silent. A single quick back (Clarity's signal) is weak: single_weight 0.25, no episode.
    t = make_tracker()
    feed(t, *pages("u1", ["a", "b", "a", "c", "d"], T0, 2.0))
    assert active(t, "u1") == {"uturn": decayed(0.25, 4.0)}
    assert t.episodes_seen == []


def test_single_look_back_detail(make_tracker):
    t = make_tracker(scoring={"threshold": 0.2, "rearm": 0.1})
    feed(t, *pages("u1", ["a", "b", "a"], T0, 2.0))
    [episode] = t.episodes_seen
    assert episode.reasons == [pyfriction.Reason("uturn", 0.25, "went straight back from b to a")]


def test_slow_back_and_forth_is_not_a_uturn(make_tracker):
    # Going back after more than `bounce` (30 s) on a step is not a bounce.
    t = make_tracker()
    feed(t, *pages("u1", ["a", "b", "a", "b", "a"], T0, 45.0))
    silent(t, "u1")


# -- empty_search -------------------------------------------------------------------------------
def test_empty_searches_activate(make_tracker):
    t = make_tracker(scoring={"threshold": 0.4})
    feed(t, ev("u1", "search", T0, "reports", results=0), ev("u1", "search", T0 + 10.0, "reports", results=0))
    assert active(t, "u1") == {"empty_search": f32(0.6)}  # single_weight 0 for the first
    [episode] = t.episodes_seen
    assert episode.reasons == [pyfriction.Reason("empty_search", 0.6, "2 searches with no results")]


def test_single_empty_search_is_silent(make_tracker):
    t = make_tracker()
    feed(
        t,
        ev("u1", "search", T0, "reports", results=0),
        ev("u1", "search", T0 + 5.0, "reports", results=7),
        ev("u1", "search", T0 + 8.0, "reports"),  # no result count
        ev("u1", "search", T0 + 200.0, "reports", results=0),  # next empty one, outside 120 s
    )
    silent(t, "u1")


# -- help_seeking -------------------------------------------------------------------------------
def test_help_alone_is_weak(make_tracker):
    t = make_tracker()
    scores = feed(t, ev("u1", "help", T0, "billing"))
    # A help view alone adds only help_weight (0.1), unboosted, and fires nothing.
    assert scores == [exactly(score_of(f32(0.1)))]
    assert active(t, "u1") == {"help_seeking": f32(0.1)}
    assert t.episodes_seen == []


def test_help_views_alone_never_fire(make_tracker):
    t = make_tracker()
    feed(t, *[ev("u1", "help", T0 + 60.0 * i, "billing") for i in range(5)])
    assert t.episodes_seen == []
    assert set(active(t, "u1")) == {"help_seeking"}


def test_contact_activates(make_tracker):
    t = make_tracker(scoring={"threshold": 0.2, "rearm": 0.1})
    t.observe(ev("u1", "contact", T0, "billing"))
    assert active(t, "u1") == {"help_seeking": f32(0.25)}
    [episode] = t.episodes_seen
    assert episode.reasons == [pyfriction.Reason("help_seeking", 0.25, "looked for help or support")]


def test_help_after_friction_is_boosted(make_tracker):
    t = make_tracker()
    feed(t, *[ev("u1", "form_error", T0 + i, "settings", "#email") for i in range(2)])  # 0.6 >= 0.3
    assert t.episodes_seen == []
    t.observe(ev("u1", "contact", T0 + 3.0, "settings"))
    assert active(t, "u1")["help_seeking"] == f32(0.25 * 4.0)
    [episode] = t.episodes_seen
    assert episode.reasons[0].detector == "help_seeking"
    assert episode.target == "#email"  # the contact names no target: the failing field's


# -- stall --------------------------------------------------------------------------------------
def train(tracker: pyfriction.Tracker, step: str, seconds: float, users: int = 25, t0: float = T0) -> float:
    """``users`` visits of ``seconds`` on ``step`` (then moving on); returns the time after."""
    for i in range(users):
        start = t0 + i * 0.5
        tracker.observe(ev(f"train-{i}", "page", start, step))
        tracker.observe(ev(f"train-{i}", "page", start + seconds, "next"))
    return t0 + users * 0.5 + seconds


def test_stall_grows_on_each_event(make_tracker):
    # Was: stall fires once per visit, 0.7. Now, past the limit, each event sets the stall
    # pressure to at least weight 1.0 per limit seconds beyond the limit: it grows with the time.
    t = make_tracker()
    now = train(t, "import.mapping", 10.0)
    t.observe(ev("u1", "page", now, "import.mapping"))
    t.observe(ev("u1", "click", now + 59.0, "import.mapping", "#x"))
    assert "stall" not in active(t, "u1")  # limit max(60, 3 * median 9.3 s) = 60 s
    t.observe(ev("u1", "click", now + 61.0, "import.mapping", "#x"))
    assert active(t, "u1") == {"stall": f32(1.0 * 1.0 / 60.0)}
    assert t.episodes_seen == []
    t.observe(ev("u1", "click", now + 200.0, "import.mapping", "#x"))
    p = f32(1.0 * 140.0 / 60.0)  # the level at 140 s beyond the limit (above the decayed 0.017)
    assert active(t, "u1") == {"stall": p}
    [episode] = t.episodes_seen
    assert episode.ts == now + 200.0
    assert episode.reasons == [pyfriction.Reason("stall", round(p, 6), "3.3 min on import.mapping, others need 9 s")]


def test_stall_grows_via_tick(make_tracker):
    t = make_tracker(detectors={"stall": {"weight": 1.5}})
    now = train(t, "import.mapping", 10.0)
    t.observe(ev("u1", "page", now, "import.mapping", account_id="acct"))
    assert t.tick(now + 30.0) == 0
    assert "stall" not in active(t, "u1")
    assert t.tick(now + 90.0) == 0  # 1.5 * 30 / 60 = 0.75: score 0.53 < 0.6
    assert active(t, "u1") == {"stall": f32(0.75)}
    assert t.tick(now + 150.0) == 1
    p = f32(1.5 * 90.0 / 60.0)
    assert active(t, "u1") == {"stall": p}
    [episode] = t.episodes_seen
    assert episode.ts == now + 150.0
    assert episode.account_id is None  # fired by tick
    assert episode.step == "import.mapping"
    assert episode.score == pytest.approx(score_of(p), rel=1e-6)
    [reason] = episode.reasons
    assert reason.detector == "stall"
    assert reason.detail == "2.5 min on import.mapping, others need 9 s"  # at the tick, not the last event
    # Further ticks and events during the same visit keep it growing (one episode: in it).
    assert t.tick(now + 180.0) == 0
    assert active(t, "u1") == {"stall": f32(1.5 * 120.0 / 60.0)}
    t.observe(ev("u1", "click", now + 210.0, "import.mapping", "#x"))
    assert active(t, "u1") == {"stall": f32(1.5 * 150.0 / 60.0)}
    assert len(t.episodes_seen) == 1


def test_stall_new_visit_can_stall_again(make_tracker):
    t = make_tracker()
    now = train(t, "a", 10.0)
    now = train(t, "b", 10.0, t0=now)
    t.observe(ev("u1", "page", now, "a"))
    t.tick(now + 100.0)
    t.observe(ev("u1", "page", now + 100.0, "b"))
    assert active(t, "u1") == {"stall": f32(1.0 * 40.0 / 60.0)}
    t.observe(ev("u1", "click", now + 300.0, "b", "#x"))
    # b's visit counts from its own start: 300 - 100 - 60 = 140 s past its limit
    assert active(t, "u1") == {"stall": f32(1.0 * 140.0 / 60.0)}


def test_leaving_a_step_ends_the_visit_without_stall(make_tracker):
    # Stall is judged while the user is on the step: the page event that moves them on ends
    # the visit (feeding the baseline) instead of activating.
    t = make_tracker()
    now = train(t, "import.mapping", 10.0)
    t.observe(ev("u1", "page", now, "import.mapping"))
    t.observe(ev("u1", "page", now + 500.0, "import.review"))
    silent(t, "u1")
    # ... but a page event for the step the user is on is just another event on it.
    t.observe(ev("u2", "page", now, "import.mapping"))
    t.observe(ev("u2", "page", now + 500.0, "import.mapping"))
    assert active(t, "u2") == {"stall": f32(1.0 * 440.0 / 60.0)}


def test_long_read_on_a_long_step_is_silent(make_tracker):
    t = make_tracker()
    now = train(t, "docs.article", 300.0)  # people read this page for 5 minutes
    t.observe(ev("u1", "page", now, "docs.article"))
    assert t.tick(now + 600.0) == 0
    t.observe(ev("u1", "click", now + 600.0, "docs.article", "#next"))
    t.observe(ev("u1", "page", now + 601.0, "docs.next"))
    silent(t, "u1")


def test_no_stall_without_baseline(make_tracker):
    t = make_tracker()
    train(t, "import.mapping", 10.0, users=19)  # min_samples is 20
    t.observe(ev("u1", "page", T0 + 100, "import.mapping"))
    t.tick(T0 + 5000.0)
    t.observe(ev("u1", "click", T0 + 5000.0, "import.mapping", "#x"))
    silent(t, "u1")


# -- custom event-map weights ---------------------------------------------------------------------
def test_custom_weight_event(make_tracker):
    t = make_tracker(event_map={"Payment Failed": {"weight": 0.5}, "Export Timed Out": {"weight": 1.0}})
    t.observe(ev("u1", "Payment Failed", T0, "billing"))
    assert active(t, "u1") == {"custom": f32(0.5)}
    assert t.episodes_seen == []
    t.observe(ev("u2", "Export Timed Out", T0, "reports"))
    assert active(t, "u2") == {"custom": f32(1.0)}
    [episode] = t.episodes_seen
    assert episode.user_id == "u2"
    assert episode.reasons == [pyfriction.Reason("custom", 1.0, "Export Timed Out")]
    assert t.stats().unknown == 0


def test_custom_weight_adds_up(make_tracker):
    t = make_tracker(event_map={"Payment Failed": {"weight": 0.5}})
    feed(t, *[ev("u1", "Payment Failed", T0) for _ in range(3)])  # same time: no decay
    assert active(t, "u1") == {"custom": f32(f32(f32(0.5) + 0.5) + 0.5)}
    assert len(t.episodes_seen) == 1
    assert t.episodes_seen[0].reasons[0].detail == "Payment Failed"


def test_event_map_onto_canonical_type(make_tracker):
    t = make_tracker(event_map={"Checkout Error": "error", "Tapped": {"type": "click"}})
    feed(t, *[ev("u1", "Checkout Error", T0 + i) for i in range(3)])
    assert active(t, "u1") == {"error_burst": f32(1.0)}
    feed(t, *[ev("u2", "Tapped", T0 + i * 0.1, target="#go") for i in range(3)])
    assert active(t, "u2") == {"rage_click": f32(1.2)}
    assert t.stats().unknown == 0


# -- exclusions, disabling ----------------------------------------------------------------------
def test_exclude_targets(make_tracker):
    t = make_tracker(exclude_targets=["*date-picker*"])
    feed(t, *clicks("u1", "#date-picker-next", [T0 + i * 0.1 for i in range(10)]))
    assert t.state("u1") is None  # excluded events do not even track the user
    feed(t, *clicks("u1", "#pay-now", [T0 + 2.0]))
    feed(t, *clicks("u1", "input.date-picker", [T0 + 3 + i * 0.1 for i in range(5)]))
    silent(t, "u1")
    assert t.state("u1").events == 1
    stats = t.stats()
    assert stats.excluded == 15
    assert stats.events == 16
    assert stats.unknown == 0


def test_exclude_steps(make_tracker):
    t = make_tracker(exclude_steps=["admin.*"])
    feed(t, *clicks("u1", "#save", [T0 + i * 0.1 for i in range(6)], step="admin.users"))
    feed(t, *[ev("u1", "error", T0 + 1 + i, "admin.logs") for i in range(4)])
    assert t.state("u1") is None
    assert t.stats().excluded == 10
    feed(t, *clicks("u1", "#save", [T0 + 10 + i * 0.1 for i in range(3)], step="settings"))
    assert active(t, "u1") == {"rage_click": f32(1.2)}


def test_disabled_detector(make_tracker):
    t = make_tracker(detectors={"rage_click": {"enabled": False}})
    scores = feed(t, *clicks("u1", "#pay-now", [T0 + i * 0.1 for i in range(20)]))
    assert scores == [0.0] * 20
    silent(t, "u1")
    # Other detectors still work.
    feed(t, *[ev("u1", "error", T0 + 3 + i) for i in range(3)])
    # (the first error comes 1.1 s after the last click: an error click, which rage does not own)
    assert active(t, "u1") == {"error_burst": f32(1.0), "error_click": decayed(0.4, 2.0)}


@pytest.mark.parametrize(
    ("detector", "events"),
    [
        ("dead_click", [ev("u1", "dead_click", T0 + i, "s", "p") for i in range(4)]),
        ("error_burst", [ev("u1", "error", T0 + i) for i in range(4)]),
        ("repeat_failure", [ev("u1", "error", T0 + i, "s", "#f") for i in range(4)]),
        ("uturn", pages("u1", ["a", "b", "a", "b", "a"], T0, 1.0)),
        ("empty_search", [ev("u1", "search", T0 + i, results=0) for i in range(4)]),
        ("help_seeking", [ev("u1", "help", T0), ev("u1", "contact", T0 + 1)]),
    ],
)
def test_each_detector_can_be_disabled(make_tracker, detector, events):
    t = make_tracker(detectors={detector: {"enabled": False}})
    feed(t, *events)
    assert detector not in active(t, "u1")


# -- scoring: success relief, hysteresis, cooldown, decay ------------------------------------------
def test_success_relieves_pressure(make_tracker):
    t = make_tracker()
    feed(t, *clicks("u1", "#pay-now", [T0, T0 + 0.1, T0 + 0.2]))
    assert t.observe(ev("u1", "success", T0 + 1.0, "billing", "#pay-now")) == 0.0
    state = t.state("u1")
    assert state.detectors == {}
    assert state.score == 0.0
    assert not state.in_episode  # fell below rearm
    assert state.episodes == 1


def test_partial_success_relief(make_tracker):
    t = make_tracker(scoring={"success_relief": 0.5, "half_life": 1e9})
    feed(t, *clicks("u1", "#pay-now", [T0, T0 + 0.1, T0 + 0.2]))
    t.observe(ev("u1", "success", T0 + 1.0))
    assert active(t, "u1") == {"rage_click": pytest.approx(0.6, rel=1e-6)}


def test_success_resets_runs(make_tracker):
    # Two clicks, success, one click: the success ends the run, no rage click.
    t = make_tracker()
    feed(t, *clicks("u1", "#go", [T0, T0 + 0.1]), ev("u1", "success", T0 + 0.2), *clicks("u1", "#go", [T0 + 0.3]))
    silent(t, "u1")


def test_long_rage_session_fires_once(make_tracker):
    t = make_tracker()
    # Two minutes of bursts of rage clicks, each burst a new run (pauses of 2 s).
    now = T0
    for _ in range(30):
        feed(t, *clicks("u1", "#pay-now", [now, now + 0.2, now + 0.4]))
        now += 4.0
    assert len(t.episodes_seen) == 1
    assert t.stats().episodes == 1
    assert t.state("u1").episodes == 1
    assert t.state("u1").in_episode


def test_new_struggle_after_cooldown_and_recovery_fires_again(make_tracker):
    t = make_tracker()
    feed(t, *clicks("u1", "#pay-now", [T0, T0 + 0.2, T0 + 0.4]))
    # 20 minutes later the pressure has decayed below rearm and the cooldown is over.
    feed(t, *clicks("u1", "#export", [T0 + 1200.0, T0 + 1200.2, T0 + 1200.4]))
    assert [e.ts for e in t.episodes_seen] == [T0 + 0.4, T0 + 1200.4]
    assert t.episodes_seen[1].target == "#export"
    assert t.episodes_seen[0].episode_id != t.episodes_seen[1].episode_id
    assert t.state("u1").episodes == 2


def test_hysteresis_without_recovery(make_tracker):
    # No cooldown: while the score stays above rearm, new bursts fire nothing.
    t = make_tracker(scoring={"cooldown": 0.0, "half_life": 1e9})
    feed(t, *clicks("u1", "#a", [T0, T0 + 0.1, T0 + 0.2]))
    feed(t, *clicks("u1", "#b", [T0 + 10, T0 + 10.1, T0 + 10.2]))
    assert len(t.episodes_seen) == 1
    # Recovery (success drops the score below rearm) re-arms: the next burst fires.
    t.observe(ev("u1", "success", T0 + 20))
    feed(t, *clicks("u1", "#c", [T0 + 30, T0 + 30.1, T0 + 30.2]))
    assert [e.ts for e in t.episodes_seen] == [T0 + 0.2, T0 + 30.2]


def test_cooldown_blocks_a_rearmed_user(make_tracker):
    t = make_tracker(scoring={"cooldown": 600.0, "half_life": 1e9})
    feed(t, *clicks("u1", "#a", [T0, T0 + 0.1, T0 + 0.2]))
    t.observe(ev("u1", "success", T0 + 20))
    feed(t, *clicks("u1", "#b", [T0 + 30, T0 + 30.1, T0 + 30.2]))
    assert len(t.episodes_seen) == 1  # re-armed, but within the cooldown
    assert not t.state("u1").in_episode
    # After the cooldown the next event (still above threshold) fires.
    t.observe(ev("u1", "page", T0 + 0.2 + 600.0, "billing"))
    assert [e.ts for e in t.episodes_seen] == [T0 + 0.2, T0 + 600.2]


def test_decay_with_half_life(make_tracker):
    t = make_tracker()
    feed(t, *clicks("u1", "#pay-now", [T0, T0 + 0.1, T0 + 0.2]))
    w = f32(1.2)
    assert t.score("u1") == exactly(score_of(w))
    assert t.score("u1", at=T0 + 0.2 + 180.0) == exactly(score_of(w * math.exp(-180.0 * RATE)))
    assert t.score("u1", at=T0 + 0.2 + 360.0) == pytest.approx(score_of(w / 4), rel=1e-12)
    assert t.score("u1", at=T0) == exactly(score_of(w))  # never "un-decays"
    assert t.score("nobody") == 0.0
    t.observe(ev("u1", "page", T0 + 0.2 + 180.0, "billing"))
    assert active(t, "u1") == {"rage_click": pytest.approx(w / 2, rel=1e-6)}


def test_decay_with_configured_half_life(make_tracker):
    t = make_tracker(scoring={"half_life": 10.0})
    feed(t, *[ev("u1", "error", T0 + i * 0.0) for i in range(3)])
    t.observe(ev("u1", "page", T0 + 30.0, "x"))
    assert active(t, "u1") == {"error_burst": pytest.approx(1.0 / 8, rel=1e-6)}


# -- event handling -----------------------------------------------------------------------------
def test_unknown_types_are_counted_and_change_nothing(make_tracker):
    t = make_tracker()
    assert t.observe(ev("ghost", "hover", T0)) == 0.0
    assert t.state("ghost") is None
    feed(t, *clicks("u1", "#a", [T0, T0 + 0.1, T0 + 0.2]))
    before = t.state("u1")
    score = t.observe(ev("u1", "mouse_wiggle", T0 + 50.0, "elsewhere", "#b"))
    assert score == exactly(score_of(f32(1.2)))  # the current score, undecayed
    assert t.state("u1") == before
    stats = t.stats()
    assert stats.unknown == 2
    assert stats.events == 5
    assert stats.invalid == 0
    assert stats.users == 1


def test_out_of_order_event_counts_as_now(make_tracker):
    t = make_tracker()
    t.observe(ev("u1", "click", T0 + 10.0, "billing", "#pay-now"))
    # Late events: treated as happening at T0 + 10, so these make three clicks at once.
    t.observe(ev("u1", "click", T0 + 5.0, "billing", "#pay-now"))
    t.observe(ev("u1", "click", T0 + 6.0, "billing", "#pay-now"))
    assert active(t, "u1") == {"rage_click": f32(1.2)}
    [episode] = t.episodes_seen
    assert episode.ts == T0 + 10.0
    assert t.state("u1").last_ts == T0 + 10.0
    assert t.state("u1").events == 3


def test_out_of_order_page_does_not_go_back_in_time(make_tracker):
    t = make_tracker()
    t.observe(ev("u1", "page", T0 + 100.0, "a"))
    t.observe(ev("u1", "page", T0 + 50.0, "b"))
    state = t.state("u1")
    assert state.step == "b"
    assert state.step_seconds == 0.0
    assert state.last_ts == T0 + 100.0


def test_ticket_is_counted_and_never_creates_an_episode(make_tracker):
    t = make_tracker(scoring={"cooldown": 60.0, "half_life": 1e9})
    assert t.observe(ev("u1", "ticket", T0, "billing")) == 0.0
    assert t.state("u1").events == 1
    feed(t, *clicks("u1", "#a", [T0 + 1, T0 + 1.1, T0 + 1.2]))
    t.observe(ev("u1", "success", T0 + 2))
    feed(t, *clicks("u1", "#b", [T0 + 3, T0 + 3.1, T0 + 3.2]))  # above threshold, in cooldown
    assert len(t.episodes_seen) == 1
    # Cooldown over, score above threshold: a ticket is still no episode ...
    t.observe(ev("u1", "ticket", T0 + 100.0, "billing"))
    assert len(t.episodes_seen) == 1
    assert t.stats().tickets == 2
    # ... while any other event would be.
    t.observe(ev("u1", "page", T0 + 101.0, "billing"))
    assert len(t.episodes_seen) == 2


def test_engine_and_stats(make_tracker, engine):
    t = make_tracker()
    assert t.engine == engine
    stats = t.stats()
    assert stats.engine == engine
    assert (stats.events, stats.users, stats.episodes, stats.tickets) == (0, 0, 0, 0)
