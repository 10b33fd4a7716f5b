"""What the engines report: episodes, reasons, per-user state and counters.

Both engines hand the same slot record (``_layout.SLOT_DTYPE``) to these builders, so an
episode or a state reads the same whichever engine produced it.
"""

from __future__ import annotations

import math
import operator
from typing import Any

import msgspec

from ._layout import (
    CUSTOM,
    DEAD_CLICK,
    DETECTOR_NAMES,
    EMPTY_SEARCH,
    ERROR_BURST,
    ERROR_CLICK,
    F_FAIL_MIXED,
    F_HAS_EPISODE,
    F_IN_EPISODE,
    HELP_SEEKING,
    RAGE_CLICK,
    REPEAT_FAILURE,
    STALL,
    UTURN,
)
from ._rules import Names, Rules
from .config import RING_SIZE

__all__ = ["Episode", "Guidance", "Reason", "Stats", "UserState"]


class Reason(msgspec.Struct, frozen=True):
    """Why an episode fired: one detector, its share of the pressure, and what it saw."""

    detector: str
    contribution: float
    detail: str


class Guidance(msgspec.Struct, frozen=True, kw_only=True):
    """A guidance item offered to one user for one episode (``Tracker.pending``, ``on_guidance``).

    ``id``, ``kind`` (``tooltip | banner | modal | link``), ``title``, ``body``, ``url``,
    ``anchor`` and ``locale`` come from the catalog item; ``episode_id``, ``step`` and
    ``target`` from the episode; the item waits to be shown from ``created_at`` (the
    episode's time) until ``expires_at``. ``body`` is plain text or a small safe Markdown
    subset: render it with :func:`pyfriction.guidance.render_body`.
    """

    id: str
    kind: str
    title: str
    body: str = ""
    url: str | None = None
    anchor: str | None = None
    locale: str | None = None
    episode_id: str = ""
    step: str | None = None
    target: str | None = None
    created_at: float = 0.0
    expires_at: float = 0.0


class Episode(msgspec.Struct, kw_only=True):
    """A user crossed the friction threshold: fired to ``on_friction`` callbacks.

    ``reasons`` are ordered by contribution, largest first. ``account_id`` is the one of the
    event that crossed the threshold (None for episodes fired by ``tick()``). ``guidance`` is
    the item the guidance rules picked for it (None when none matched, the caps held it back
    or the user is in the holdout); ``holdout`` is True for users in the guidance holdout.
    """

    episode_id: str
    user_id: str
    account_id: str | None
    ts: float
    score: float
    step: str | None
    target: str | None
    reasons: list[Reason]
    guidance: Guidance | None = None
    holdout: bool = False


class UserState(msgspec.Struct, kw_only=True):
    """One user's friction state, as of their last event (``Tracker.state``)."""

    user_id: str
    score: float
    step: str | None
    #: Seconds on the current step as of the last event.
    step_seconds: float
    #: Pressure of each active detector.
    detectors: dict[str, float]
    events: int
    last_ts: float
    in_episode: bool
    episodes: int
    last_episode_ts: float | None
    last_episode_score: float | None


class Stats(msgspec.Struct, kw_only=True):
    """Counters of a tracker since it started (or since the snapshot it restored)."""

    engine: str
    events: int
    users: int
    capacity: int
    episodes: int
    evictions: int
    invalid: int
    unknown: int
    excluded: int
    tickets: int
    callbacks_dropped: int
    callbacks_failed: int
    queue_depth: int


def _name(names: Names, key: int, fallback: str = "?") -> str:
    if key == 0:
        return fallback
    return names.get(key) or f"#{key:08x}"


def _span(rec: Any, ring: str, count: int) -> float | None:
    """Seconds between the first and last of ``count`` events still in a ring, if they are."""
    if count > RING_SIZE or count < 2:
        return None
    r = rec[ring]
    return float(r[0]) - float(r[count - 1])


def _burst_detail(rec: Any, ring: str, n_field: str, what: str) -> str:
    n = int(rec[n_field])
    span = _span(rec, ring, n)
    if span is None:
        return f"{n} {what}"
    return f"{n} {what} within {span:.1f} s"


def duration(seconds: float) -> str:
    """``45 s``, ``1.5 min``, ``12 min``, ``2.5 h``: the unit a person would use."""
    if seconds < 90.0:
        return f"{seconds:.0f} s"
    minutes = seconds / 60.0
    if minutes < 90.0:
        return f"{minutes:.1f} min".replace(".0 min", " min") if minutes < 10.0 else f"{minutes:.0f} min"
    return f"{minutes / 60.0:.1f} h".replace(".0 h", " h")


def _times(n: int) -> str:
    return "once" if n == 1 else "twice" if n == 2 else f"{n} times"


def detail(d: int, rec: Any, names: Names, rules: Rules, stall_need: float, now: float) -> str:
    """Human-readable account of what detector ``d`` saw, from the slot record, at ``now``:
    what accumulated (``#vat-number rejected 5 times in 6 min``)."""
    if d == RAGE_CLICK:
        return _burst_detail(rec, "click_r", "click_n", "clicks on " + _name(names, int(rec["click_target"])))
    if d == DEAD_CLICK:
        n = int(rec["dead_n"])
        target = _name(names, int(rec["dead_target"]))
        return f"{n} dead clicks in a row on {target}" if n > 1 else f"a dead click on {target}"
    if d == ERROR_BURST:
        return _burst_detail(rec, "err_r", "err_n", "errors")
    if d == REPEAT_FAILURE:
        n = int(rec["fail_n"])
        span = float(rec["fail_t"]) - float(rec["fail_t0"])
        within = f" in {duration(span)}" if math.isfinite(span) and n > 1 else ""
        failed = _name(names, int(rec["fail_target"]))
        if int(rec["flags"]) & F_FAIL_MIXED:
            return f"{n} failures on {_name(names, int(rec['step']), 'this step')}{within}, last {failed}"
        return f"{failed} rejected {_times(n)}{within}"
    if d == UTURN:
        a, b = _name(names, int(rec["step"])), _name(names, int(rec["prev_step"]))
        n = int(rec["uturn_n"])
        return f"{n} u-turns between {b} and {a}" if n > 1 else f"went straight back from {b} to {a}"
    if d == EMPTY_SEARCH:
        return f"{int(rec['search_n'])} searches with no results"
    if d == HELP_SEEKING:
        return "looked for help or support"
    if d == STALL:
        spent = now - float(rec["step_ts"])
        usual = f", others need {duration(stall_need)}" if stall_need >= 0 else ""
        return f"{duration(spent)} on {_name(names, int(rec['step']))}{usual}"
    if d == CUSTOM:
        i = int(rec["custom"])
        return rules.custom_names[i] if i < len(rules.custom_names) else "custom event"
    if d == ERROR_CLICK:
        # Not the clicked target's name: it is only remembered when rage fired on it.
        return "an error right after a click"
    raise ValueError(d)


def reasons(rec: Any, names: Names, rules: Rules, stall_need: float, now: float) -> list[Reason]:
    # Largest pressure first, ties in detector order: the list is built in detector order,
    # and a reversed sort is stable too, so the pressure alone is the key.
    active = [(float(p), d) for d, p in enumerate(rec["pressure"]) if p > 0.0]
    if len(active) > 1:
        active.sort(key=_pressure, reverse=True)
    return [Reason(DETECTOR_NAMES[d], round(p, 6), detail(d, rec, names, rules, stall_need, now)) for p, d in active]


_pressure = operator.itemgetter(0)

_TARGETED = {
    RAGE_CLICK: "click_target",
    DEAD_CLICK: "dead_target",
    REPEAT_FAILURE: "fail_target",
}


def make_episode(rec: Any, user_id: str, account_id: str | None, step: str | None,
                 target: str | None, ts: float, score: float, names: Names, rules: Rules,
                 stall_need: float) -> Episode:  # fmt: skip
    """The episode an engine fired for slot ``rec`` on an event (or a tick) at ``ts``."""
    why = reasons(rec, names, rules, stall_need, ts)
    if step is None and int(rec["step"]):
        step = _name(names, int(rec["step"]))
    if target is None:
        # The event that crossed (a help view, a tick) names no target: take the one the
        # strongest targeted detector was looking at.
        for r in why:
            d = DETECTOR_NAMES.index(r.detector)
            if d in _TARGETED and int(rec[_TARGETED[d]]):
                target = names.get(int(rec[_TARGETED[d]]))
                break
    return Episode(
        episode_id=f"{int(rec['key']):016x}-{int(ts * 1000.0):x}",
        user_id=user_id,
        account_id=account_id,
        ts=ts,
        score=score,
        step=step,
        target=target,
        reasons=why,
    )


def make_state(rec: Any, user_id: str, names: Names) -> UserState:
    pressure = rec["pressure"]
    total = 0.0
    for p in pressure:
        total += float(p)
    flags = int(rec["flags"])
    has = bool(flags & F_HAS_EPISODE)
    return UserState(
        user_id=user_id,
        score=1.0 - math.exp(-total),
        step=_name(names, int(rec["step"])) if int(rec["step"]) else None,
        step_seconds=float(rec["last_ts"]) - float(rec["step_ts"]),
        detectors={DETECTOR_NAMES[d]: float(pressure[d]) for d in range(len(pressure)) if pressure[d] > 0},
        events=int(rec["events"]),
        last_ts=float(rec["last_ts"]),
        in_episode=bool(flags & F_IN_EPISODE),
        episodes=int(rec["episodes"]),
        last_episode_ts=float(rec["episode_ts"]) if has else None,
        last_episode_score=float(rec["episode_score"]) if has else None,
    )
