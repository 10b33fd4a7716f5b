"""Which settings a shared ``file://`` store checks, and the offline tools on damaged files
(issue 13 point 6, issue 17 item 10).

* A store records only the settings that give its state a meaning (detectors, scoring,
  ``idle_ttl``, custom-weight events; capacity and layout in the header): editing guidance
  texts, rules, caps, holdout, sinks, exclusions or event aliases never stops a store from
  opening, also a store written by an older pyfriction that fingerprinted the whole config.
* A refusal names each differing setting and the command that resolves it, and that command
  (``pyfriction store reconfigure``) does resolve it, keeping every user's state.
* ``pyfriction store inspect|repair`` on a truncated or garbage file: one line on stderr, exit
  status 2, no traceback.

The compiled engine only: the reference engine has no file store.
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import pyfriction
from pyfriction import cli
from pyfriction.store import StoreError
from pyfriction.tracker import compiled_available

pytestmark = pytest.mark.skipif(not compiled_available(), reason="the file store needs the compiled core")

T0 = 1_700_000_000.0
BASE: dict[str, Any] = {
    "guidance": {
        "items": [{"id": "tip", "title": "Dates look like 2024-03-31", "kind": "tooltip"}],
        "rules": [{"step": "import.*", "guidance": "tip"}],
        "caps": {"per_day": 3},
    },
    "event_map": {"Import Error": "error", "Upgrade Wall": {"weight": 0.4}},
}


def edited(**changes: Any) -> dict[str, Any]:
    """BASE with ``changes`` applied at dotted paths (``guidance.caps.per_day=5``)."""
    config = copy.deepcopy(BASE)
    for dotted, value in changes.items():
        *parents, leaf = dotted.split("__")
        node = config
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return config


def open_tracker(path: Any, config: Any) -> pyfriction.Tracker:
    return pyfriction.Tracker(config, engine="compiled", store=f"file://{path}", capacity=64)


def make_store(path: Any, config: Any = None) -> None:
    tracker = open_tracker(path, BASE if config is None else config)
    for i in range(3):
        tracker.observe({"user_id": "u1", "type": "form_error", "step": "import.mapping", "target": "#d",
                         "ts": T0 + 10 * i})  # fmt: skip
    tracker.close()


# Edits that change what a worker shows or sends, never what the stored state means.
HARMLESS = {
    "guidance title": edited(guidance__items=[{"id": "tip", "title": "Use YYYY-MM-DD", "kind": "banner"}]),
    "guidance rules": edited(guidance__rules=[{"detectors": ["error_burst"], "guidance": "tip"}]),
    "guidance caps": edited(guidance__caps={"per_day": 9, "item_cooldown": 60.0}),
    "holdout": edited(guidance__holdout={"share": 0.5, "salt": "other"}),
    "guidance off": edited(guidance__enabled=False),
    "sinks": edited(sinks={"webhook": {"url": "https://hooks.example.com/f", "secret": "whsec_12345678"}}),
    "event alias": edited(event_map={"Import Error": "api_error", "Upgrade Wall": {"weight": 0.4}}),
    "exclusions": edited(exclude_targets=["#ignored-*"], exclude_steps=["admin.*"]),
    "segment paths": edited(segment={"step": ["properties.page"]}),
    "queue": edited(queue_size=5),
}


@pytest.mark.parametrize("name", list(HARMLESS))
def test_edits_that_do_not_change_the_state_open_the_store(tmp_path: Any, name: str) -> None:
    path = tmp_path / "f.state"
    make_store(path)
    tracker = open_tracker(path, HARMLESS[name])
    try:
        state = tracker.state("u1")
        assert state is not None and state.score > 0.6  # the same user, as the first worker left it
    finally:
        tracker.close()
    make_store(path)  # and the first config still opens it afterwards


@given(title=st.text(min_size=1, max_size=40).filter(str.strip), per_day=st.integers(0, 1000))
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_any_guidance_text_or_cap_edit_opens_the_store(tmp_path: Any, title: str, per_day: int) -> None:
    path = tmp_path / "h.state"
    if not path.exists():
        make_store(path)
    config = edited(guidance__items=[{"id": "tip", "title": title}], guidance__caps={"per_day": per_day})
    open_tracker(path, config).close()


@pytest.mark.parametrize(
    ("changes", "setting"),
    [
        ({"scoring": {"threshold": 0.7}}, "scoring.threshold"),
        ({"detectors": {"rage_click": {"min_clicks": 4}}}, "detectors.rage_click.min_clicks"),
        ({"idle_ttl": 3600.0}, "idle_ttl"),
        ({"event_map": {"Import Error": "error", "Upgrade Wall": {"weight": 0.9}}}, "event_map.Upgrade Wall.weight"),
    ],
)
def test_a_refusal_names_the_setting_and_the_command(tmp_path: Any, changes: dict[str, Any], setting: str) -> None:
    path = tmp_path / "r.state"
    make_store(path)
    before = path.read_bytes()
    config = {**copy.deepcopy(BASE), **changes}
    with pytest.raises(StoreError) as info:
        open_tracker(path, config)
    message = str(info.value)
    assert setting in message, message
    assert f"pyfriction store reconfigure {path} --config FILE" in message
    assert path.read_bytes() == before
    assert sum(message.count(key) for key in ("scoring.", "detectors.", "idle_ttl", "event_map.")) == 1, message


def test_the_order_of_custom_events_counts(tmp_path: Any) -> None:
    """A user record names its last custom event by position in event_map."""
    path = tmp_path / "o.state"
    two = {"event_map": {"Upgrade Wall": {"weight": 0.4}, "Paywall": {"weight": 0.4}}}
    make_store(path, two)
    swapped = {"event_map": {"Paywall": {"weight": 0.4}, "Upgrade Wall": {"weight": 0.4}}}
    with pytest.raises(StoreError, match="the order of the custom-weight events"):
        open_tracker(path, swapped)
    open_tracker(path, {**two, "event_map": {**two["event_map"], "Import Error": "error"}}).close()  # an alias


def test_reconfigure_resolves_a_refusal_and_keeps_the_users(tmp_path: Any) -> None:
    path = tmp_path / "c.state"
    make_store(path)
    new = tmp_path / "new.toml"
    new.write_text('idle_ttl = 7200.0\n[scoring]\nthreshold = 0.7\n[event_map]\n"Upgrade Wall" = { weight = 0.4 }\n')
    with pytest.raises(StoreError):
        open_tracker(path, str(new)).close()
    assert cli.main(["store", "reconfigure", str(path), "--config", str(new)]) == 0
    tracker = open_tracker(path, str(new))
    try:
        state = tracker.state("u1")
        assert state is not None and state.score > 0.6
        assert tracker.stats().events == 3
    finally:
        tracker.close()
    with pytest.raises(StoreError, match="scoring.threshold"):
        make_store(path)  # now the old settings are the other ones


def test_a_store_from_an_older_version_opens_after_a_guidance_edit(tmp_path: Any, monkeypatch: Any) -> None:
    """Before, the header fingerprinted the whole config (minus capacity, max_steps, queue)."""

    def whole_config(path: str, config: pyfriction.Config) -> bytes:
        data = msgspec.to_builtins(config)
        for key in ("capacity", "max_steps", "queue_size"):
            data.pop(key, None)
        return msgspec.json.encode(data, order="sorted")

    path = tmp_path / "old.state"
    with monkeypatch.context() as m:
        m.setattr("pyfriction.tracker.attach_config", whole_config)
        make_store(path)
    tracker = open_tracker(path, HARMLESS["guidance title"])
    assert tracker.state("u1") is not None
    tracker.close()
    assert cli.main(["store", "inspect", str(path)]) == 0
    with pytest.raises(StoreError, match="scoring.half_life"):
        open_tracker(path, {**BASE, "scoring": {"half_life": 60.0}})


# -- store inspect / repair on damaged files ------------------------------------------------
@pytest.fixture(scope="module")
def store_bytes(tmp_path_factory: Any) -> bytes:
    path = tmp_path_factory.mktemp("store") / "real.state"
    make_store(path)
    return path.read_bytes()


@given(data=st.data())
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_inspect_and_repair_on_a_cut_or_overwritten_file(tmp_path: Any, store_bytes: bytes, capsys: Any,
                                                         data: Any) -> None:  # fmt: skip
    size = len(store_bytes)
    cut = data.draw(st.one_of(st.integers(0, 8192), st.integers(0, size - 1)), label="cut")
    junk = data.draw(st.sampled_from([b"", b"\0" * 512, os.urandom(512), b"{" * 512]), label="junk")
    data = store_bytes[:cut] + junk
    assume(len(data) < size)  # a whole-length file with junk in its tables is another question
    path = tmp_path / "bad.state"
    path.write_bytes(data)
    new = tmp_path / "new.toml"
    new.write_text("[scoring]\nthreshold = 0.7\n")
    for action in (["inspect"], ["repair"], ["resize", "--capacity", "8"], ["reconfigure", "--config", str(new)]):
        status = cli.main(["store", *action, str(path)])
        out, err = capsys.readouterr()
        if status == 0:  # a cut after the last used byte may leave a usable, shorter file: never
            pytest.fail(f"{action} accepted a {cut + len(junk)}-byte file of {size}: {out}")
        assert status == 2
        assert err.startswith("pyfriction store: ") and err.count("\n") == 1, err
        assert "Traceback" not in err and str(path) in err


@pytest.mark.parametrize("cut", [0, 50, 4200, 100_000])
def test_inspect_and_repair_on_a_truncated_file_in_a_fresh_process(tmp_path: Any, store_bytes: bytes,
                                                                   cut: int) -> None:  # fmt: skip
    path = tmp_path / "cut.state"
    path.write_bytes(store_bytes[:cut])
    for action in ("inspect", "repair"):
        r = subprocess.run([sys.executable, "-m", "pyfriction", "store", action, str(path)], capture_output=True,
                           text=True, timeout=120)  # fmt: skip
        assert r.returncode == 2, r.stderr
        assert r.stdout == "" and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, r.stderr
        assert r.stderr.startswith(f"pyfriction store: {path}: ")
