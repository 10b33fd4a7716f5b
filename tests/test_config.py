"""Configuration: loading from every source, overrides, validation messages, and the tracker
using what it was given."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import msgspec
import pytest

import pyfriction
from pyfriction import Config, ConfigError, load_config
from pyfriction.config import EventMapping

from helpers import T0, ev

TOML = """
capacity = 5000
idle_ttl = 900.0
exclude_targets = ["#debug-*"]

[scoring]
threshold = 0.7
half_life = 120.0

[detectors.rage_click]
window = 2.0

[detectors.stall]
enabled = false

[event_map]
"Payment Failed" = "error"
"Checkout Abandoned" = { weight = 0.5 }
"""


def write(tmp_path: Path, text: str, name: str = "pyfriction.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# --- loading ---------------------------------------------------------------------------------


def test_defaults_from_none() -> None:
    config = load_config()
    assert config == load_config(None) == Config()
    assert config.capacity == 1_000_000
    assert config.idle_ttl is None
    assert config.queue_size == 10_000
    assert config.scoring.threshold == 0.6
    assert config.scoring.rearm == 0.3
    assert config.scoring.half_life == 180.0
    assert config.detectors.rage_click.min_clicks == 3
    assert config.detectors.rage_click.window == 1.0
    assert config.detectors.error_burst.ordinary_statuses == [401, 404]
    assert config.event_map == {} and config.exclude_targets == [] and config.exclude_steps == []


def test_accumulating_detector_defaults() -> None:
    # issue 15: the defaults of the accumulating detectors and the peers' signals
    d = load_config().detectors
    rage = d.rage_click
    assert (rage.weight, rage.min_clicks, rage.window) == (1.2, 3, 1.0)
    assert (rage.slow_weight, rage.slow_min_clicks, rage.slow_window) == (0.6, 3, 7.0)
    dead = d.dead_click
    assert (dead.weight, dead.single_weight, dead.min_clicks, dead.window) == (0.5, 0.3, 2, 60.0)
    assert (d.error_click.enabled, d.error_click.weight, d.error_click.window) == (True, 0.4, 3.0)
    eb = d.error_burst
    assert (eb.weight, eb.min_errors, eb.window) == (1.0, 3, 60.0)
    assert (eb.refusal_statuses, eb.refusal_factor, eb.ordinary_factor) == ([402, 403], 1.5, 0.3)
    rf = d.repeat_failure
    assert (rf.weight, rf.area_weight, rf.min_failures, rf.window) == (0.6, 0.45, 2, 300.0)
    ut = d.uturn
    assert (ut.weight, ut.single_weight, ut.min_uturns, ut.window, ut.bounce) == (0.6, 0.25, 2, 120.0, 30.0)
    es = d.empty_search
    assert (es.weight, es.single_weight, es.min_searches, es.window) == (0.6, 0.0, 2, 120.0)
    st = d.stall
    assert (st.weight, st.quantile, st.factor, st.min_seconds, st.min_samples) == (1.0, 0.5, 3.0, 60.0, 20)
    assert st.max_duration == 3600.0


def test_single_event_runs_accepted() -> None:
    # min 1: every dead click, u-turn or empty search adds the full weight (rage needs 2)
    config = load_config(
        detectors={"dead_click": {"min_clicks": 1}, "uturn": {"min_uturns": 1}, "empty_search": {"min_searches": 1}}
    )
    assert config.detectors.dead_click.min_clicks == 1
    assert config.detectors.uturn.min_uturns == 1
    assert config.detectors.empty_search.min_searches == 1


def test_from_dict_keeps_other_defaults() -> None:
    config = load_config({"scoring": {"threshold": 0.8}, "detectors": {"uturn": {"bounce": 10}}})
    assert config.scoring.threshold == 0.8
    assert config.scoring.half_life == 180.0
    assert config.scoring.rearm == 0.3
    assert config.detectors.uturn.bounce == 10.0
    assert config.detectors.uturn.min_uturns == 2
    assert config.detectors.rage_click == Config().detectors.rage_click


def test_from_dict_does_not_mutate_input() -> None:
    data = {"scoring": {"threshold": 0.8}}
    load_config(data, scoring={"rearm": 0.1})
    assert data == {"scoring": {"threshold": 0.8}}


def test_from_config_instance() -> None:
    base = load_config({"capacity": 10})
    assert load_config(base) is base
    derived = load_config(base, scoring={"threshold": 0.9})
    assert derived is not base
    assert derived.capacity == 10
    assert derived.scoring.threshold == 0.9
    assert base.scoring.threshold == 0.6  # the original is untouched


@pytest.mark.parametrize("as_type", [str, Path], ids=["str", "Path"])
def test_from_toml_file(tmp_path: Path, as_type: Any) -> None:
    config = load_config(as_type(write(tmp_path, TOML)))
    assert config.capacity == 5000
    assert config.idle_ttl == 900.0
    assert config.exclude_targets == ["#debug-*"]
    assert config.scoring.threshold == 0.7
    assert config.scoring.half_life == 120.0
    assert config.scoring.rearm == 0.3
    assert config.detectors.rage_click.window == 2.0
    assert config.detectors.rage_click.min_clicks == 3
    assert config.detectors.stall.enabled is False
    assert config.event_map["Payment Failed"] == "error"
    assert config.event_map["Checkout Abandoned"] == EventMapping(weight=0.5)


def test_kwargs_override_with_nested_merge(tmp_path: Path) -> None:
    path = write(tmp_path, TOML)
    config = load_config(
        path,
        capacity=42,
        scoring={"threshold": 0.9},
        detectors={"rage_click": {"min_clicks": 4}, "uturn": {"enabled": False}},
    )
    assert config.capacity == 42
    assert config.idle_ttl == 900.0  # from the file
    assert config.scoring.threshold == 0.9
    assert config.scoring.half_life == 120.0  # merged, not replaced
    assert config.detectors.rage_click.min_clicks == 4
    assert config.detectors.rage_click.window == 2.0  # merged two levels down
    assert config.detectors.stall.enabled is False
    assert config.detectors.uturn.enabled is False
    assert config.detectors.uturn.bounce == 30.0
    # lists and scalars replace
    config = load_config(path, exclude_targets=["#x"])
    assert config.exclude_targets == ["#x"]


def test_kwargs_override_dict_and_config() -> None:
    assert load_config({"capacity": 5}, capacity=6).capacity == 6
    config = load_config(load_config({"detectors": {"rage_click": {"window": 3.0}}}),
                         detectors={"rage_click": {"min_clicks": 5}})  # fmt: skip
    assert (config.detectors.rage_click.window, config.detectors.rage_click.min_clicks) == (3.0, 5)


def test_event_map_forms() -> None:
    config = load_config(
        event_map={"A": "error", "B": {"type": "click"}, "C": {"weight": 2}, "D": EventMapping(weight=1.0)}
    )
    assert config.event_map["A"] == "error"
    assert config.event_map["B"] == EventMapping(type="click")
    assert config.event_map["C"] == EventMapping(weight=2.0)


def test_config_is_a_value_error() -> None:
    assert issubclass(ConfigError, ValueError)
    assert pyfriction.ConfigError is ConfigError


# --- validation messages name the key -------------------------------------------------------

BAD: list[tuple[str, dict[str, Any], list[str]]] = [
    ("capacity str", {"capacity": "big"}, ["$.capacity", "int"]),
    ("capacity float", {"capacity": 10.5}, ["$.capacity"]),
    ("capacity zero", {"capacity": 0}, ["$.capacity"]),
    ("queue_size zero", {"queue_size": 0}, ["$.queue_size"]),
    ("idle_ttl zero", {"idle_ttl": 0}, ["$.idle_ttl"]),
    ("enabled str", {"detectors": {"rage_click": {"enabled": "yes"}}}, ["$.detectors.rage_click.enabled"]),
    ("detectors int", {"detectors": 5}, ["$.detectors"]),
    (
        "statuses str",
        {"detectors": {"error_burst": {"ordinary_statuses": ["401"]}}},
        ["$.detectors.error_burst.ordinary_statuses[0]"],
    ),
    ("min_clicks 1", {"detectors": {"rage_click": {"min_clicks": 1}}}, ["$.detectors.rage_click.min_clicks"]),
    ("min_clicks 99", {"detectors": {"rage_click": {"min_clicks": 99}}}, ["$.detectors.rage_click.min_clicks"]),
    ("dead min_clicks 0", {"detectors": {"dead_click": {"min_clicks": 0}}}, ["$.detectors.dead_click.min_clicks"]),
    ("min_uturns 0", {"detectors": {"uturn": {"min_uturns": 0}}}, ["$.detectors.uturn.min_uturns"]),
    (
        "slow_min_clicks 1",
        {"detectors": {"rage_click": {"slow_min_clicks": 1}}},
        ["$.detectors.rage_click.slow_min_clicks"],
    ),
    ("slow_window 0", {"detectors": {"rage_click": {"slow_window": 0}}}, ["$.detectors.rage_click.slow_window"]),
    (
        "area_weight 101",
        {"detectors": {"repeat_failure": {"area_weight": 101}}},
        ["$.detectors.repeat_failure.area_weight"],
    ),
    ("error_click window 0", {"detectors": {"error_click": {"window": 0}}}, ["$.detectors.error_click.window"]),
    (
        "refusal_factor 0.5",
        {"detectors": {"error_burst": {"refusal_factor": 0.5}}},
        ["$.detectors.error_burst.refusal_factor"],
    ),
    (
        "status ordinary and refusal",
        {"detectors": {"error_burst": {"refusal_statuses": [403, 404]}}},
        ["404", "$.detectors.error_burst"],
    ),
    ("min_errors 6", {"detectors": {"error_burst": {"min_errors": 6}}}, ["$.detectors.error_burst.min_errors"]),
    ("window too long", {"detectors": {"dead_click": {"window": 3601}}}, ["$.detectors.dead_click.window"]),
    ("window zero", {"detectors": {"empty_search": {"window": 0}}}, ["$.detectors.empty_search.window"]),
    ("weight 101", {"detectors": {"uturn": {"weight": 101}}}, ["$.detectors.uturn.weight"]),
    ("weight negative", {"detectors": {"stall": {"weight": -0.1}}}, ["$.detectors.stall.weight"]),
    ("quantile 1", {"detectors": {"stall": {"quantile": 1.0}}}, ["$.detectors.stall.quantile"]),
    ("boost 0.5", {"detectors": {"help_seeking": {"boost": 0.5}}}, ["$.detectors.help_seeking.boost"]),
    (
        "ordinary_factor 2",
        {"detectors": {"error_burst": {"ordinary_factor": 2}}},
        ["$.detectors.error_burst.ordinary_factor"],
    ),
    ("threshold 1.5", {"scoring": {"threshold": 1.5}}, ["$.scoring.threshold"]),
    ("threshold 0", {"scoring": {"threshold": 0}}, ["$.scoring.threshold"]),
    ("half_life negative", {"scoring": {"half_life": -5}}, ["$.scoring.half_life"]),
    ("half_life zero", {"scoring": {"half_life": 0}}, ["$.scoring.half_life"]),
    ("cooldown negative", {"scoring": {"cooldown": -1}}, ["$.scoring.cooldown"]),
    ("relief 1.5", {"scoring": {"success_relief": 1.5}}, ["$.scoring.success_relief"]),
    ("unknown top key", {"capacty": 3}, ["capacty"]),
    ("unknown nested key", {"detectors": {"rage_click": {"windw": 1}}}, ["windw", "$.detectors.rage_click"]),
    ("unknown detector", {"detectors": {"rage_clicks": {}}}, ["rage_clicks", "$.detectors"]),
    ("unknown scoring key", {"scoring": {"treshold": 0.5}}, ["treshold", "$.scoring"]),
    ("rearm > threshold", {"scoring": {"threshold": 0.5, "rearm": 0.6}}, ["rearm", "threshold", "$.scoring"]),
    ("event_map unknown type", {"event_map": {"Payment Failed": "errorr"}}, ["Payment Failed", "errorr"]),
    (
        "event_map unknown type in mapping",
        {"event_map": {"Payment Failed": {"type": "oops"}}},
        ["Payment Failed", "oops"],
    ),
    (
        "event_map both",
        {"event_map": {"Payment Failed": {"type": "error", "weight": 1.0}}},
        ["Payment Failed", "type", "weight"],
    ),
    ("event_map neither", {"event_map": {"Payment Failed": {}}}, ["Payment Failed", "type", "weight"]),
    ("event_map weight 500", {"event_map": {"Payment Failed": {"weight": 500}}}, ["Payment Failed", "weight"]),
    ("event_map int", {"event_map": {"Payment Failed": 3}}, ["event_map"]),
    ("empty exclude target", {"exclude_targets": ["#ok", ""]}, ["exclude_targets", "empty"]),
    ("empty exclude step", {"exclude_steps": [""]}, ["exclude_steps", "empty"]),
    ("inf cooldown", {"scoring": {"cooldown": math.inf}}, ["scoring.cooldown", "finite"]),
    ("inf idle_ttl", {"idle_ttl": math.inf}, ["idle_ttl", "finite"]),
    (
        "inf max_duration",
        {"detectors": {"stall": {"max_duration": math.inf}}},
        ["detectors.stall.max_duration", "finite"],
    ),
    ("inf min_seconds", {"detectors": {"stall": {"min_seconds": math.inf}}}, ["detectors.stall.min_seconds", "finite"]),
    ("inf bounce", {"detectors": {"uturn": {"bounce": math.inf}}}, ["detectors.uturn.bounce", "finite"]),
    ("nan threshold", {"scoring": {"threshold": math.nan}}, ["scoring.threshold"]),
    ("nan half_life", {"scoring": {"half_life": math.nan}}, ["scoring.half_life"]),
    ("nan cooldown", {"scoring": {"cooldown": math.nan}}, ["scoring.cooldown"]),
    (
        "nan after_friction",
        {"detectors": {"help_seeking": {"after_friction": math.nan}}},
        ["detectors.help_seeking.after_friction"],
    ),
    ("nan event weight", {"event_map": {"Payment Failed": {"weight": math.nan}}}, ["Payment Failed", "weight"]),
]


@pytest.mark.parametrize("data,needles", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_config_error_names_the_key(data: dict[str, Any], needles: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(data)
    message = str(info.value)
    for needle in needles:
        assert needle in message, f"{needle!r} not in {message!r}"


@pytest.mark.parametrize("data,needles", [b[1:] for b in BAD[:6]], ids=[b[0] for b in BAD[:6]])
def test_config_error_from_kwargs(data: dict[str, Any], needles: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, **data)
    for needle in needles:
        assert needle in str(info.value)


def test_config_error_from_toml_names_key(tmp_path: Path) -> None:
    path = write(tmp_path, "[scoring]\nthreshold = 1.5\n")
    with pytest.raises(ConfigError, match=r"\$\.scoring\.threshold"):
        load_config(path)
    path = write(tmp_path, "[detectors.rage_click]\nmin_clicks = 99\n", "b.toml")
    with pytest.raises(ConfigError, match=r"\$\.detectors\.rage_click\.min_clicks"):
        load_config(path)


def test_too_many_custom_events() -> None:
    load_config(event_map={f"e{i}": {"weight": 0.1} for i in range(250)})
    with pytest.raises(ConfigError, match="event_map"):
        load_config(event_map={f"e{i}": {"weight": 0.1} for i in range(251)})


def test_boundaries_accepted() -> None:
    config = load_config(
        detectors={"rage_click": {"min_clicks": 2}, "dead_click": {"min_clicks": 5, "window": 3600}},
        scoring={"threshold": 0.5, "rearm": 0.5, "cooldown": 0},
    )
    assert config.detectors.rage_click.min_clicks == 2
    assert config.detectors.dead_click.min_clicks == 5
    assert config.scoring.rearm == config.scoring.threshold == 0.5


def test_invalid_toml(tmp_path: Path) -> None:
    path = write(tmp_path, "[scoring\nthreshold = = 0.7\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert "invalid TOML" in str(info.value)
    assert str(path) in str(info.value)


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert "nope.toml" in str(info.value)
    assert "cannot read" in str(info.value)


@pytest.mark.parametrize("bad", [42, 1.5, ["capacity", 1], b"x.toml"], ids=["int", "float", "list", "bytes"])
def test_config_of_wrong_type(bad: Any) -> None:
    with pytest.raises(ConfigError, match="config must be"):
        load_config(bad)


# --- the tracker uses its config ------------------------------------------------------------


def rage(user: str, ts: float, target: str = "#pay", n: int = 3) -> list[dict[str, Any]]:
    return [ev(user, "click", ts + 0.1 * i, target=target) for i in range(n)]


def test_tracker_capacity_and_idle_ttl_arguments(make_tracker: Any) -> None:
    t = make_tracker({"capacity": 100, "scoring": {"threshold": 0.9}}, capacity=3, idle_ttl=50.0)
    assert t.config.capacity == 3
    assert t.config.idle_ttl == 50.0
    assert t.config.scoring.threshold == 0.9
    assert t.stats().capacity == 3
    for i in range(5):
        t.observe(ev(f"u{i}", "page", T0 + i, "x"))
    assert t.stats().users == 3
    assert t.stats().evictions == 2
    t.observe(ev("late", "page", T0 + 100, "x"))  # everyone else silent for > 50 s
    assert t.stats().users == 1
    assert t.state("late") is not None


def test_tracker_config_from_toml_with_overrides(make_tracker: Any, tmp_path: Path) -> None:
    t = make_tracker(str(write(tmp_path, TOML)), capacity=7, scoring={"threshold": 0.65})
    assert t.config.capacity == 7
    assert t.config.scoring.threshold == 0.65
    assert t.config.scoring.half_life == 120.0
    assert t.config.idle_ttl == 900.0


def test_tracker_config_object(make_tracker: Any) -> None:
    config = load_config(capacity=11)
    t = make_tracker(config)
    assert t.config == config
    assert t.stats().capacity == 11


def test_tracker_invalid_config(engine: str) -> None:
    with pytest.raises(ConfigError, match=r"\$\.capacity"):
        pyfriction.Tracker(engine=engine, capacity=0)
    with pytest.raises(ConfigError, match=r"\$\.idle_ttl"):
        pyfriction.Tracker(engine=engine, idle_ttl=-1)
    with pytest.raises(ConfigError, match="capacty"):
        pyfriction.Tracker({"capacty": 1}, engine=engine)
    with pytest.raises(ConfigError, match=r"\$\.scoring\.threshold"):
        pyfriction.Tracker(engine=engine, scoring={"threshold": 2})


def test_threshold_decides_episodes(make_tracker: Any) -> None:
    default = make_tracker()
    strict = make_tracker(scoring={"threshold": 0.9})
    for e in rage("u1", T0):
        default.observe(e)
        strict.observe(e)
    assert len(default.episodes_seen) == 1
    assert strict.episodes_seen == []
    assert strict.state("u1").score == default.state("u1").score


def test_min_clicks_and_window_config(make_tracker: Any) -> None:
    four = make_tracker(detectors={"rage_click": {"min_clicks": 4}})
    for e in rage("u1", T0):
        four.observe(e)
    assert four.state("u1").detectors == {}
    four.observe(ev("u1", "click", T0 + 0.3, target="#pay"))
    assert "rage_click" in four.state("u1").detectors

    wide = make_tracker(detectors={"rage_click": {"window": 5.0}})
    for i in range(3):  # 2 s apart: a rage click only with the wider window
        wide.observe(ev("u1", "click", T0 + 2 * i, target="#pay"))
    assert "rage_click" in wide.state("u1").detectors


def test_disabled_detector(make_tracker: Any) -> None:
    t = make_tracker(detectors={"rage_click": {"enabled": False}})
    for e in rage("u1", T0):
        t.observe(e)
    assert t.state("u1").detectors == {}
    assert t.episodes_seen == []


def test_weight_config(make_tracker: Any) -> None:
    t = make_tracker(detectors={"rage_click": {"weight": 0.25}})
    for e in rage("u1", T0):
        t.observe(e)
    assert t.state("u1").detectors == {"rage_click": pytest.approx(0.25, rel=1e-6)}


def test_event_map_to_type_and_weight(make_tracker: Any) -> None:
    t = make_tracker(event_map={"Payment Failed": "error", "Checkout Abandoned": {"weight": 1.0}})
    for i in range(3):
        t.observe(ev("u1", "Payment Failed", T0 + i))
    # an error (naming no target: an error burst, no failure run)
    assert t.state("u1").detectors == {"error_burst": pytest.approx(1.0, rel=1e-6)}
    assert t.stats().unknown == 0
    t.observe(ev("u2", "Checkout Abandoned", T0))
    state = t.state("u2")
    assert state.detectors == {"custom": pytest.approx(1.0, rel=1e-6)}
    assert len(t.episodes_seen) == 2
    episode = t.episodes_seen[1]
    assert episode.user_id == "u2"
    assert episode.reasons[0].detector == "custom"
    assert episode.reasons[0].detail == "Checkout Abandoned"
    # an unmapped host name is unknown
    t.observe(ev("u3", "Payment Succeeded", T0))
    assert t.stats().unknown == 1 and t.state("u3") is None


def test_exclusions(make_tracker: Any) -> None:
    t = make_tracker(exclude_targets=["#debug-*"], exclude_steps=["admin.*"])
    for e in rage("u1", T0, target="#debug-panel"):
        t.observe(e)
    for i in range(3):
        t.observe(ev("u1", "error", T0 + i, "admin.users"))
    assert t.state("u1") is None
    assert t.stats().excluded == 6
    for e in rage("u1", T0 + 10, target="#debugger"):  # not matched by "#debug-*"
        t.observe(e)
    assert "rage_click" in t.state("u1").detectors


def test_ordinary_statuses_config(make_tracker: Any) -> None:
    t = make_tracker(detectors={"error_burst": {"ordinary_statuses": [409], "ordinary_factor": 0.5}})
    for i in range(3):
        t.observe(ev("u1", "api_error", T0 + i, status=409))
        t.observe(ev("u2", "api_error", T0 + i, status=401))
    assert t.state("u1").detectors["error_burst"] == pytest.approx(0.5, rel=1e-5)
    assert t.state("u2").detectors["error_burst"] == pytest.approx(1.0, rel=1e-5)


def test_config_round_trips_through_builtins() -> None:
    config = load_config(event_map={"A": "error", "B": {"weight": 0.5}}, exclude_steps=["x*"], idle_ttl=10.0)
    assert load_config(msgspec.to_builtins(config)) == config
