"""``pyfriction calibrate``: learning weights and the threshold from a log's tickets."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import pyfriction
from pyfriction import calibrate as cal
from pyfriction import cli
from pyfriction.config import WEIGHT_FIELDS, detector_weights

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import journeys

USERS = 500
#: A base a team has not tuned: the shipped defaults already catch nearly all of these journeys,
#: so the tests that need calibration to improve on its base start from this one.
UNTUNED = {"scoring": {"threshold": 0.85}}


@pytest.fixture(scope="module")
def journey_log(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("logs") / "journeys.jsonl"
    events, _ = journeys.generate(USERS, seed=11)
    journeys.write_log(str(path), events)
    return str(path)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_calibrated_config_catches_more_and_loads_everywhere(
    journey_log: str, tmp_path: Path, engine: str, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "tuned.toml"
    # The shipped defaults already catch nearly every one of these journeys; a base a team
    # has not tuned (too high a threshold) is what calibration must improve.
    base_file = tmp_path / "untuned.toml"
    base_file.write_text("[scoring]\nthreshold = 0.85\n")
    code, text, err = run(capsys, "calibrate", journey_log, "-o", str(out), "--engine", engine,
                          "--config", str(base_file))  # fmt: skip
    assert code == 0, err
    assert "recall" in text and f"wrote {out}" in text
    written = out.read_text()
    assert written.startswith("# Written by `pyfriction calibrate`")
    assert "#   recall" in written  # the validation figures travel with the file

    # The tracker, init() and the sidecar load it as it is.
    cfg = pyfriction.load_config(str(out))
    base = pyfriction.load_config(str(base_file))
    assert cfg.detectors != base.detectors or cfg.scoring != base.scoring
    tracker = pyfriction.Tracker(str(out), engine=engine)
    tracker.close()
    pyfriction.init(str(out), engine=engine)
    try:
        assert pyfriction.get_tracker().config.scoring.threshold == cfg.scoring.threshold
    finally:
        pyfriction.close()
    settings_mod = pytest.importorskip("pyfriction_server.settings")
    server_settings = settings_mod.load_settings(["--config", str(out)], environ={})
    assert server_settings.tracker_config().detectors == cfg.detectors


def test_calibration_is_validated_on_users_it_did_not_fit(journey_log: str) -> None:
    result = cal.calibrate(
        [journey_log], UNTUNED, engine="compiled" if pyfriction.compiled_available() else "reference"
    )
    assert result.fit_users + result.validation_users == USERS
    assert 0.1 * USERS < result.validation_users < 0.3 * USERS
    assert result.before.positives == result.after.positives > 0
    assert result.worse_than_base() is None
    # The weights moved, but the prior keeps each within the bound around the defaults.
    for name, weight in result.weights.items():
        base = result.base_weights[name]
        assert base / cal.MAX_FACTOR - 1e-9 <= weight <= base * cal.MAX_FACTOR + 1e-9
    assert result.after.recall >= result.before.recall


def test_a_worse_config_is_not_written(journey_log: str, tmp_path: Path, monkeypatch: Any,
                                       capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    real = cal.calibrate

    def worse(*args: Any, **kwargs: Any) -> cal.CalibrationResult:
        result = real(*args, **kwargs)
        result.after.caught = max(0, result.before.caught - 1)
        return result

    monkeypatch.setattr(cal, "calibrate", worse)
    out = tmp_path / "tuned.toml"
    code, _, err = run(capsys, "calibrate", journey_log, "-o", str(out))
    assert code == 1
    assert "not written" in err and "recall" in err
    assert not out.exists()


def test_worse_than_base_rules() -> None:
    def quality(caught: int, false_pos: int) -> cal.Quality:
        return cal.Quality(positives=100, negatives=1000, caught=caught, false_positives=false_pos,
                           median_lead=None, per_step={}, per_detector={})  # fmt: skip

    def result(before: cal.Quality, after: cal.Quality) -> cal.CalibrationResult:
        return cal.CalibrationResult(weights={}, base_weights={}, threshold=0.6, base_threshold=0.6, target_fpr=0.01,
                                     fit_users=1, fit_positives=1, validation_users=1, before=before, after=after,
                                     events=0, skipped=0, errors=[], seconds=0.0)  # fmt: skip

    assert result(quality(50, 0), quality(60, 5)).worse_than_base() is None  # more recall, FP within the target
    assert "recall" in (result(quality(50, 0), quality(49, 0)).worse_than_base() or "")
    assert "false positives" in (result(quality(50, 0), quality(90, 20)).worse_than_base() or "")
    assert result(quality(50, 20), quality(60, 20)).worse_than_base() is None  # no more FP than the base
    # Dominated by the base: the same recall for more false positives, even within the target.
    assert "false positives" in (result(quality(50, 2), quality(50, 3)).worse_than_base() or "")
    assert result(quality(50, 2), quality(50, 2)).worse_than_base() is None  # the same figures: not worse
    # The base misses the target: trading recall for fewer false positives is what was asked for.
    assert result(quality(80, 90), quality(40, 12)).worse_than_base() is None


# -- bad input ----------------------------------------------------------------------------------------
def _write(path: Path, lines: list[Any]) -> str:
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return str(path)


def test_a_log_without_tickets(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    events, _ = journeys.generate(200, seed=3, friction_share=0.0)
    log = _write(tmp_path / "quiet.jsonl", events)
    code, _, err = run(capsys, "calibrate", log, "-o", str(tmp_path / "t.toml"))
    assert code == 2
    assert "no tickets" in err and "200 users" in err
    assert not (tmp_path / "t.toml").exists()


def test_too_few_positives_to_fit(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    events, _ = journeys.generate(300, seed=4, friction_share=0.01)
    log = _write(tmp_path / "few.jsonl", events)
    code, _, err = run(capsys, "calibrate", log, "-o", str(tmp_path / "t.toml"))
    assert code == 2
    assert "too few users to fit" in err


def test_unreadable_lines_are_counted_skipped_and_reported(
    journey_log: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = Path(journey_log).read_text().splitlines()
    damaged = [*lines[:100], "{not json", "[1, 2]", json.dumps({"type": "click"}), *lines[100:]]
    log = _write(tmp_path / "damaged.jsonl", damaged)
    base_file = tmp_path / "untuned.toml"
    base_file.write_text("[scoring]\nthreshold = 0.85\n")
    code, text, err = run(capsys, "calibrate", log, "-o", str(tmp_path / "t.toml"), "--config", str(base_file))
    assert code == 0, err
    assert "3 lines skipped" in text
    assert "line 101: not valid JSON" in text


def test_a_base_config_that_does_not_load(journey_log: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[detectors.rage_click]\nmin_clicks = 1\n")
    code, _, err = run(capsys, "calibrate", journey_log, "-o", str(tmp_path / "t.toml"), "--config", str(bad))
    assert code == 2
    assert "min_clicks" in err
    code, _, err = run(
        capsys, "calibrate", journey_log, "-o", str(tmp_path / "t.toml"), "--config", "/nonexistent.toml"
    )
    assert code == 2 and "cannot read config file" in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--target-fpr", "0"], "--target-fpr"),
        (["--validation-share", "1.5"], "--validation-share"),
        (["--horizon", "soon"], "not a duration"),
    ],
)
def test_bad_options(journey_log: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                     args: list[str], message: str) -> None:  # fmt: skip
    code, _, err = run(capsys, "calibrate", journey_log, "-o", str(tmp_path / "t.toml"), *args)
    assert code == 2 and message in err


def test_missing_log(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "calibrate", str(tmp_path / "none.jsonl"), "-o", str(tmp_path / "t.toml"))
    assert code == 2 and "no such file" in err


def test_parse_duration() -> None:
    assert cal.parse_duration("24h") == 86400.0
    assert cal.parse_duration("90m") == 5400.0
    assert cal.parse_duration("45") == 45.0
    assert cal.parse_duration("7d") == 7 * 86400.0
    with pytest.raises(cal.CalibrationError):
        cal.parse_duration("-1h")


# -- invariants of the fit -----------------------------------------------------------------------------
points_st = st.lists(
    st.tuples(
        st.sampled_from([0.0, 100.0, 200.0, 300.0]),  # segment starts
        st.tuples(*[st.floats(0, 10, allow_nan=False) for _ in range(3)]),
    ),
    min_size=1,
    max_size=40,
)


@settings(max_examples=300, deadline=None)
@given(points_st, st.tuples(*[st.floats(0, 5, allow_nan=False) for _ in range(3)]), st.sampled_from([0, 100, 200, 300]))
def test_the_front_keeps_every_maximum_after_any_segment_cut(
    points: list[tuple[float, tuple[float, ...]]], w: tuple[float, ...], since: float
) -> None:
    """For every non-negative w and every cut at a segment start, the best w.e over the front's
    points at or after the cut equals the best over all the points seen there."""
    front: list[cal.Point] = []
    ordered = sorted(points, key=lambda p: p[0])
    for p in ordered:
        cal._add_point(front, p)
    assert len(front) <= cal.MAX_POINTS
    assert front == sorted(front, key=lambda p: p[0])

    def best(ps: list[cal.Point]) -> float:
        return max((sum(a * b for a, b in zip(w, p[1])) for p in ps if p[0] >= since), default=0.0)

    if len(points) <= cal.MAX_POINTS:  # the cap only drops points once the front is larger
        assert math.isclose(best(front), best(ordered), rel_tol=1e-9, abs_tol=1e-9)


@given(st.integers(0, 100_000), st.floats(0.0005, 0.2))
def test_allowed_false_positives_stays_under_the_target_with_confidence(n: int, target: float) -> None:
    k = cal.allowed_false_positives(n, target)
    assert 0 <= k <= n
    if k > 0:
        assert cal.wilson_upper(k, n) <= target
    if k < n:
        assert cal.wilson_upper(k + 1, n) > target


def test_calibrate_help_shows_every_default(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["calibrate", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    for default in ("(default: 0.01)", "(default: 24h)", "(default: 0.2)", "(default: built-in)", "(default: auto)"):
        assert default in out
    assert "--spend-target" in out and "(default: off: no more false positives than the base)" in out


# -- the operating point: dominate the base, or spend the target -------------------------------------
scores_st = st.lists(st.floats(0.0, 10.0, allow_nan=False), min_size=1, max_size=60)


@settings(max_examples=300, deadline=None)
@given(scores_st, scores_st, st.floats(0.05, 8.0), st.integers(0, 20), st.randoms(use_true_random=False))
def test_the_operating_point_never_does_worse_than_the_base_on_the_same_users(
    pos: list[float], neg: list[float], base_p: float, extra: int, rng: Any
) -> None:
    """Given the base's flags on the users without a ticket, the chosen line flags no more of them
    than the base (none it did not flag, or fewer with 95% confidence), whichever they are (the
    base's weights rank users otherwise); and when the base is this ranking at threshold
    ``base_p``, the line catches at least as many users with a ticket or flags fewer without."""
    p_pos, p_neg = np.array(pos), np.array(neg)
    wide = (1e-9, 1e9)
    for base in (p_neg >= base_p, np.array([rng.random() < 0.3 for _ in neg])):
        p = cal._operating_point(p_pos, p_neg, int(base.sum()), wide, base)
        flags = p_neg >= p
        new, gone = int((flags & ~base).sum()), int((base & ~flags).sum())
        assert cal._excess(new, gone) == 0.0, (new, gone)
        assert flags.sum() <= base.sum()
    base = p_neg >= base_p
    p = cal._operating_point(p_pos, p_neg, int(base.sum()), wide, base)
    assert (p_pos >= p).sum() >= (p_pos >= base_p).sum() or (p_neg >= p).sum() < base.sum()
    # Without the base, any budget: never more false positives than it allows.
    budget = int(base.sum()) + extra
    p = cal._operating_point(p_pos, p_neg, budget, wide)
    assert (p_neg >= p).sum() <= budget
    assert (p_pos >= p).sum() >= (p_pos >= base_p).sum() or (p_neg >= p).sum() < base.sum()


def test_excess_is_a_one_sided_sign_test() -> None:
    assert cal._excess(0, 0) == 0.0 and cal._excess(0, 5) == 0.0  # nothing new: never more
    assert cal._excess(1, 1) > 0  # a swap: not confidently no more
    assert cal._excess(2, 9) == 0.0  # 9 gone for 2 new: confidently fewer
    assert cal._excess(5, 5) > cal._excess(1, 1) > 0


@pytest.mark.parametrize("spend_target", [False, True])
def test_the_budget_is_the_base_unless_told_to_spend_the_target(journey_log: str, spend_target: bool) -> None:
    engine = "compiled" if pyfriction.compiled_available() else "reference"
    result = cal.calibrate([journey_log], engine=engine, target_fpr=0.05, spend_target=spend_target)
    target = cal.allowed_false_positives(result.fit_negatives, 0.05)
    assert result.fit_negatives > 0 and result.base_fit_false_positives < target  # the defaults are under 5%
    assert result.spend_target is spend_target
    if spend_target:
        assert result.allowed_false_positives == target
        assert "the target 5.00%" in cal.format_result(result)
    else:
        assert result.allowed_false_positives == result.base_fit_false_positives
        assert "more recall at no more false positives" in cal.format_result(result)
        assert result.after.fpr <= result.before.fpr and result.worse_than_base() is None


def test_spend_target_on_the_command_line(journey_log: str, tmp_path: Path, monkeypatch: Any,
                                          capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    seen: list[bool] = []
    real = cal.calibrate

    def spy(*args: Any, **kwargs: Any) -> cal.CalibrationResult:
        seen.append(kwargs["spend_target"])
        return real(*args, **kwargs)

    monkeypatch.setattr(cal, "calibrate", spy)
    argv = ["calibrate", journey_log, "-o", str(tmp_path / "t.toml"), "--target-fpr", "0.05"]
    code, text, err = run(capsys, *argv)
    assert code == 0, err
    assert "operating point: at most" in text and "(the base config's" in text
    # Spending the target may buy nothing on the validation users: then it is refused as worse.
    code, text, err = run(capsys, *argv, "--spend-target")
    assert code in (0, 1), err
    assert "operating point: at most" in text and "(the target 5.00% with 95% confidence" in text
    assert seen == [False, True]


@pytest.fixture(scope="module")
def few_journeys() -> list[dict[str, Any]]:
    events, _ = journeys.generate(40, seed=5)
    return events


@settings(max_examples=15, deadline=None)
@given(st.lists(st.floats(0.1, 3.0), min_size=16, max_size=16))
def test_evidence_times_the_main_weight_is_the_engines_pressure(
    few_journeys: list[dict[str, Any]], factors: list[float]
) -> None:
    """Whatever the base's weights (a detector's secondary weights in any ratio to its main one),
    the evidence replay's pressure times the main weight is the base engine's pressure (episodes
    and guidance off in both, which change no pressure), so the fit's false positives are the
    engine's. help_seeking is left out: its boost depends on the other detectors' pressure."""
    fields = [(d, f) for d, fs in WEIGHT_FIELDS.items() for f in fs]
    data: dict[str, Any] = {"detectors": {}, "scoring": {"threshold": 0.999999}, "guidance": {"enabled": False}}
    defaults = pyfriction.load_config(None).detectors
    for (d, f), factor in zip(fields, factors):
        value = min(100.0, getattr(getattr(defaults, d), f) * factor)
        data["detectors"].setdefault(d, {})[f] = round(value, 4)
    base = pyfriction.load_config(data)
    main = detector_weights(base)
    engine = "compiled" if pyfriction.compiled_available() else "reference"
    plain = pyfriction.Tracker(base, engine=engine)
    evidence = pyfriction.Tracker(cal._evidence_config(base), engine=engine)
    try:
        for event in few_journeys:
            plain.observe(event)
            evidence.observe(event)
            uid = event["user_id"]
            want, got = plain.pressures(uid) or {}, evidence.pressures(uid) or {}
            for d in main:
                if d != "help_seeking":
                    assert math.isclose(want.get(d, 0.0), got.get(d, 0.0) * main[d], rel_tol=1e-4, abs_tol=1e-5), d
    finally:
        plain.close()
        evidence.close()


# -- the online counterpart: detection quality in the insights, report and Tracker.calibration() ----
def _struggles(tracker: pyfriction.Tracker, users: int, ticket_every: int, kind: str, t0: float) -> None:
    for u in range(users):
        base = t0 + u * 2000.0
        uid = f"{kind}-{u}"
        for i in range(4):
            if kind == "rage":
                tracker.observe({"user_id": uid, "type": "click", "target": "#pay", "ts": base + i * 0.1})
            else:
                tracker.observe({"user_id": uid, "type": "error", "target": f"#f{i}", "ts": base + i * 5.0})
        if u % ticket_every == 0:
            tracker.observe({"user_id": uid, "type": "ticket", "ts": base + 120.0})


def test_tracker_calibration_suggests_from_tickets_and_changes_nothing(make_tracker: Any) -> None:
    tracker = make_tracker()
    before = pyfriction.load_config(None).detectors
    _struggles(tracker, 40, 1, "rage", 1.7e9)  # every rage struggle ends in a ticket
    _struggles(tracker, 40, 4, "errors", 1.75e9)  # one error burst in four does
    tracker.flush()
    quality = tracker.insights().detection
    rows = {r.detector: r for r in quality.detectors}
    assert (rows["rage_click"].struggles, rows["rage_click"].ticketed) == (40, 40)
    assert (rows["error_burst"].struggles, rows["error_burst"].ticketed) == (40, 10)
    assert quality.tickets == quality.preceded == 50 and quality.unticketed == 30
    suggestion = tracker.calibration()
    assert suggestion.enough_data
    assert suggestion.suggested["rage_click"] > suggestion.weights["rage_click"]
    assert suggestion.suggested["error_burst"] < suggestion.weights["error_burst"]
    assert suggestion.suggested["stall"] == suggestion.weights["stall"]  # no struggles: no opinion
    assert tracker.config.detectors == before  # a suggestion only


def test_detection_counts_survive_a_snapshot(make_tracker: Any, engine: str, tmp_path: Path) -> None:
    tracker = make_tracker()
    _struggles(tracker, 5, 1, "rage", 1.7e9)
    _struggles(tracker, 3, 10, "errors", 1.75e9)  # an open struggle: its ticket comes after the restore
    tracker.flush()
    path = tmp_path / "snap.msgpack"
    tracker.snapshot(path)
    restored = pyfriction.Tracker.restore(path, engine=engine)
    assert restored.insights().detection == tracker.insights().detection
    restored.observe({"user_id": "errors-1", "type": "ticket", "ts": 1.75e9 + 2000.0 + 130.0})
    restored.flush()
    rows = {r.detector: r for r in restored.insights().detection.detectors}
    restored.close()
    assert rows["error_burst"].ticketed == 2


def test_report_has_a_detection_quality_section_only_with_tickets(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    with_tickets = tmp_path / "tickets.jsonl"
    assert cli.main(["sample", "--users", "300", "-o", str(with_tickets)]) == 0
    code, text, _ = run(capsys, "report", str(with_tickets))
    assert code == 0
    section = text.split("DETECTION QUALITY", 1)[1].split("\n\n", 1)[0]
    assert "tickets preceded by an episode" in section and "struggles" in section
    assert any(line.split()[0] in ("rage_click", "error_burst", "stall") for line in section.splitlines()[3:])
    lines = [json.loads(x) for x in with_tickets.read_text().splitlines()]
    no_tickets = _write(tmp_path / "none.jsonl", [e for e in lines if e.get("type") != "ticket"])
    code, text, _ = run(capsys, "report", no_tickets)
    assert code == 0 and "DETECTION QUALITY" not in text
