"""Delivery (issue 19): an item counts as delivered when shown, not when read.

``pyfriction.guidance.unshown`` (what the sidecar's streams read) keeps an item until a page
reports it shown, bounded by ``guidance.expire_after``; ``Tracker.pending`` (what in-process
hosts read) still hands each item out once. On both engines.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pyfriction
from pyfriction.guidance import unshown

T0 = 1_700_000_000.0
CONFIG = {
    "guidance": {
        "items": [{"id": "tip", "kind": "tooltip", "anchor": "#pay", "title": "A tip"}],
        "rules": [{"guidance": "tip"}],
        "holdout": {"share": 0.0},
        "expire_after": 600.0,
    }
}


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


def _offer(t: pyfriction.Tracker, clock: Clock, user: str = "u1") -> None:
    for i in range(4):  # rage clicks: an episode, which offers the tip
        t.observe({"user_id": user, "type": "click", "target": "#pay", "ts": clock.now + i * 0.1})
    clock.now += 1.0


def _ids(items: list[Any]) -> list[str]:
    return [g.id for g in items]


def _stats(t: pyfriction.Tracker) -> Any:
    return next(i for i in t.insights().items if i.id == "tip")


def test_reading_does_not_consume_until_a_page_reports_it_shown(make_tracker: Callable[..., Any]) -> None:
    clock = Clock()
    t = make_tracker(CONFIG, clock=clock)
    _offer(t, clock)
    assert _ids(unshown(t, "u1")) == ["tip"]
    # a tab read it and closed before showing it: the next read (a reconnect, another tab) gets it
    assert _ids(unshown(t, "u1")) == ["tip"]
    assert _stats(t).delivered == 1  # delivered is counted at the first read only
    assert t.pending("u1") == []  # the once-only read does not hand it out a second time
    assert t.ack("u1", "tip", "shown")
    assert unshown(t, "u1") == []
    assert (_stats(t).delivered, _stats(t).shown) == (1, 1)


def test_a_guidance_shown_event_counts_like_the_ack(make_tracker: Callable[..., Any]) -> None:
    clock = Clock()
    t = make_tracker(CONFIG, clock=clock)
    _offer(t, clock)
    assert _ids(unshown(t, "u1")) == ["tip"]
    t.observe({"user_id": "u1", "type": "guidance_shown", "target": "tip", "ts": clock.now})
    assert unshown(t, "u1") == []


def test_expiry_still_bounds_an_unshown_item(make_tracker: Callable[..., Any]) -> None:
    clock = Clock()
    t = make_tracker(CONFIG, clock=clock)
    _offer(t, clock, "read")
    _offer(t, clock, "unread")
    assert _ids(unshown(t, "read")) == ["tip"]
    clock.now += 600.0
    assert unshown(t, "read") == [] and unshown(t, "unread") == []
    assert t.pending("unread") == []
    stats = _stats(t)
    assert (stats.offered, stats.delivered, stats.expired) == (2, 1, 1)  # the unread one expired


def test_pending_still_hands_each_item_out_once(make_tracker: Callable[..., Any]) -> None:
    clock = Clock()
    t = make_tracker(CONFIG, clock=clock)
    _offer(t, clock)
    assert _ids(t.pending("u1")) == ["tip"]
    assert t.pending("u1") == []
    # what a host read and did not report shown is still unshown for a page that reports it
    assert _ids(unshown(t, "u1")) == ["tip"]
    assert t.ack("u1", "tip", "dismissed")  # implies shown
    assert unshown(t, "u1") == [] and t.pending("u1") == []
    assert unshown(t, "nobody") == []
