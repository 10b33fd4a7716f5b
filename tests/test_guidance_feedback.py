"""Browser feedback that is not a user's reaction: ``anchor_missing`` (issue 19), on both engines."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

import pyfriction

CONFIG = {
    "guidance": {
        "items": [{"id": "tip", "kind": "tooltip", "anchor": "#gone", "title": "A tip"}],
        "rules": [{"guidance": "tip"}],
        "holdout": {"share": 0.0},
    }
}


def _offer(t: pyfriction.Tracker, user: str) -> None:
    now = time.time()
    for i in range(4):  # rage clicks: an episode, which offers the tip
        t.observe({"user_id": user, "type": "click", "target": "#pay", "ts": now + i * 0.1})
    assert [g.id for g in t.pending(user)] == ["tip"]


def test_anchor_missing_is_counted_per_item_and_changes_no_offer(make_tracker: Callable[..., Any]) -> None:
    t = make_tracker(CONFIG)
    _offer(t, "u1")
    assert t.ack("u1", "tip", "anchor_missing") is True
    item = next(i for i in t.insights().items if i.id == "tip")
    assert (item.anchor_missing, item.shown, item.dismissed) == (1, 0, 0)  # says nothing of the user
    assert t.ack("u1", "tip", "shown") and t.ack("u1", "tip", "anchor_missing")
    item = next(i for i in t.insights().items if i.id == "tip")
    assert (item.anchor_missing, item.shown) == (2, 1)
    assert t.ack("nobody", "tip", "anchor_missing") is False
    with pytest.raises(ValueError, match="anchor_missing"):
        t.ack("u1", "tip", "vanished")


def test_insights_exported_before_anchor_missing_still_load(make_tracker: Callable[..., Any]) -> None:
    t = make_tracker(CONFIG)
    _offer(t, "u1")
    data = t._insights.export()
    data["items"] = {k: v[:7] for k, v in data["items"].items()}  # the seven counters of older exports
    t._insights.load(data)
    assert t.ack("u1", "tip", "anchor_missing")
    item = next(i for i in t.insights().items if i.id == "tip")
    assert (item.offered, item.anchor_missing) == (1, 1)
