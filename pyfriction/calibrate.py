"""``pyfriction calibrate``: learn detector weights and the threshold from a team's own tickets.

Tickets are labels that come for free: a user who filed one (a ``ticket`` event) or opened the
contact page (a ``contact`` event, or a page view of the ``contact`` step) was struggling. This
module replays recorded logs and fits the ``[detectors]`` weights and the ``[scoring]``
threshold to catch as many of those users as possible, before their ticket, at a target
false-positive rate among the users who never filed one.

How, in three passes over the logs (streamed; memory grows with users, not events):

1. **Evidence.** The logs are replayed through the engine with every detector's main weight set
   to 1 (its other weights keep their ratio to it) and no episode able to fire, so a detector's
   pressure is its *evidence*: decayed activation counts, which times the main weight are the
   engine's pressure. After every event of a user (and at every ``tick()``, every 30 s of
   stream time, for stalls) their evidence vector is read. A user is flagged by weights ``w`` as
   soon as ``w . e(t) >= P`` for some ``t`` before their ticket, where
   ``P = -ln(1 - threshold)``; with non-negative weights that maximum is reached on the Pareto
   front of the user's evidence vectors, so only that front is kept per user.
2. **Fit.** On the users outside the validation share: coordinate ascent on the logarithms of
   the weights, each candidate at its operating point on the ROC (``P``: the most recall within
   a false-positive budget, in the middle of the gap between the scores flagged and not), with
   a quadratic penalty pulling every parameter back to the base config's value (the prior)
   whose strength shrinks as positives grow: a small log cannot drag the defaults far. The
   budget is the lower of the target (a count whose 95% upper bound is ``target_fpr``) and the
   base config's own false positives on the fit users: a base already under the target is not
   given more, and the tuned config must flag no more of those users than the base with 95%
   confidence (none the base did not flag, or fewer by a one-sided sign test on the users only
   one of them flags). It then adds recall at no cost in false positives (it dominates the base)
   rather than trading one for the other. ``spend_target=True`` (``--spend-target``) lets the
   fit spend the whole target instead.
3. **Validation.** The validation users are replayed for real, through the engine, with the base
   and with the tuned config: recall (an episode before the ticket), false positives, median
   lead, per step and per detector. A tuned config that is worse than the base on them (the
   base dominates it: no more recall and more false positives, or less recall and no fewer; or
   more false positives than both the base and the target allow) is refused.

The fit is an approximation of the engine (the help boost is judged on the evidence, not on the
weighted pressures, and the episode hysteresis is left out); the validation is not: it is the
engine itself.
"""

from __future__ import annotations

import hashlib
import math
import os
import statistics
import sys
import tempfile
import time
from collections import OrderedDict, defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import IO, Any

import msgspec
import numpy as np

from .config import WEIGHT_FIELDS, Config, ConfigError, EventMapping, detector_weights, load_config
from .report import Progress
from .segment import is_segment, to_event, to_identify
from .tracker import Tracker

__all__ = [
    "CalibrationError",
    "CalibrationResult",
    "Quality",
    "calibrate",
    "tuned_config",
    "write_config",
]

#: Seconds of stream time between ``tick()`` calls in every replay (stalls are judged there).
TICK_EVERY = 30.0
#: Fewest positives (users with a ticket) in the fit share to fit anything.
MIN_POSITIVES = 10
#: Fewest users without a ticket in the fit share to measure a false-positive rate.
MIN_NEGATIVES = 20
#: Most Pareto points kept per user (the front of a real user is a handful of points).
MAX_POINTS = 32
#: Prior strength: moving one parameter by a factor e costs as much recall as this many positives.
PRIOR_POSITIVES = 2.0
#: Bounds of a learned weight or threshold, as a factor of the base value.
MAX_FACTOR = 8.0
#: A false positive costs this share of a caught user's worth in the fit (as rates: a false
#: positive among the users without a ticket against a catch among those with one).
FP_COST = 0.25


class CalibrationError(ValueError):
    """Calibration cannot go on: the message says why and what to do."""


class Quality(msgspec.Struct, kw_only=True):
    """Detection quality of one config on a set of users."""

    positives: int
    negatives: int
    caught: int
    false_positives: int
    median_lead: float | None
    #: step -> [positives, caught]: the step each positive was on before their ticket.
    per_step: dict[str, list[int]]
    #: detector -> [positives caught, negatives flagged]: the top reason of the first episode.
    per_detector: dict[str, list[int]]

    @property
    def recall(self) -> float:
        return self.caught / self.positives if self.positives else 0.0

    @property
    def fpr(self) -> float:
        return self.false_positives / self.negatives if self.negatives else 0.0


class CalibrationResult(msgspec.Struct, kw_only=True):
    """What :func:`calibrate` learned and how it validated."""

    #: detector -> learned weight (for ``help_seeking``: the factor applied to both weights).
    weights: dict[str, float]
    base_weights: dict[str, float]
    threshold: float
    base_threshold: float
    target_fpr: float
    fit_users: int
    fit_positives: int
    validation_users: int
    before: Quality
    after: Quality
    events: int
    skipped: int
    errors: list[str]
    seconds: float
    #: Users without a ticket in the fit share.
    fit_negatives: int = 0
    #: Of those, how many the base config flags (in the fit's approximation of the engine).
    base_fit_false_positives: int = 0
    #: The fit's false-positive budget among them: the lower of the target's count and, unless
    #: ``spend_target``, the base config's.
    allowed_false_positives: int = 0
    spend_target: bool = False

    def worse_than_base(self) -> str | None:
        """Why the tuned config is worse than the base on the validation users, or None.

        Worse: the base dominates it (no more recall and more false positives, or less recall
        and no fewer false positives), or it has more false positives than both the base and
        the target allow. Less recall for fewer false positives is what was asked for when the
        base misses the target, and is written."""
        b, a = self.before, self.after
        if a.recall < b.recall and a.fpr >= b.fpr:
            return f"recall {a.recall:.3f} < the base config's {b.recall:.3f}, with no fewer false positives"
        if a.recall <= b.recall and a.fpr > b.fpr:
            return (
                f"false positives {a.fpr:.2%} > the base config's {b.fpr:.2%}, "
                f"with no more recall ({a.recall:.3f}, the base {b.recall:.3f})"
            )
        if a.fpr > max(b.fpr, self.target_fpr):
            return (
                f"false positives {a.fpr:.2%} > both the base config's {b.fpr:.2%} and the target {self.target_fpr:.2%}"
            )
        return None


# -- reading logs -----------------------------------------------------------------------------------
class _Log:
    """Canonical events of JSON Lines logs, in file order, with counts of what was skipped."""

    def __init__(self, paths: Sequence[str], cfg: Config, progress: IO[str] | None, label: str) -> None:
        self.paths, self.cfg, self.progress, self.label = list(paths), cfg, progress, label
        self.skipped = 0
        self.errors: list[str] = []
        self.events = 0

    def skip(self, why: str) -> None:
        self.skipped += 1
        if len(self.errors) < 5:
            self.errors.append(why)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        decode = msgspec.json.Decoder().decode
        for path in self.paths:
            total = os.path.getsize(path)
            bar = Progress(self.progress, total, f"{self.label} {os.path.basename(path)}") if self.progress else None
            done = line_no = 0
            with open(path, "rb") as fh:
                for line in fh:
                    done += len(line)
                    line_no += 1
                    if bar is not None and line_no % 4096 == 0:
                        bar.update(done, self.events)
                    if not line.strip():
                        continue
                    try:
                        record = decode(line)
                    except msgspec.DecodeError:
                        self.skip(f"{os.path.basename(path)} line {line_no}: not valid JSON")
                        continue
                    if not isinstance(record, dict):
                        self.skip(f"{os.path.basename(path)} line {line_no}: not an event object")
                        continue
                    if is_segment(record):
                        if to_identify(record) is not None:
                            continue
                        event = to_event(record, self.cfg.segment)
                        if event is None:
                            self.skip(f"{os.path.basename(path)} line {line_no}: a Segment call without a user")
                            continue
                    elif record.get("type") == "identify":
                        continue
                    else:
                        event = record
                    ts, uid = event.get("ts"), event.get("user_id")
                    if not isinstance(uid, str) or not uid or not isinstance(ts, (int, float)) or isinstance(ts, bool):
                        self.skip(f"{os.path.basename(path)} line {line_no}: no user_id or numeric ts")
                        continue
                    self.events += 1
                    yield event
            if bar is not None:
                bar.close(done, self.events)


def _label_types(cfg: Config) -> tuple[frozenset[str], frozenset[str]]:
    """The event names meaning a ticket and a contact view: the canonical ones and their aliases."""
    tickets, contacts = {"ticket"}, {"contact"}
    for name, mapped in cfg.event_map.items():
        kind = mapped if isinstance(mapped, str) else mapped.type if isinstance(mapped, EventMapping) else None
        if kind == "ticket":
            tickets.add(name)
        elif kind == "contact":
            contacts.add(name)
    return frozenset(tickets), frozenset(contacts)


def _is_label(event: dict[str, Any], tickets: frozenset[str], contacts: frozenset[str]) -> bool:
    kind = event.get("type")
    return kind in tickets or kind in contacts or (kind == "page" and event.get("step") == "contact")


def _in_validation(user_id: str, share: float, salt: str) -> bool:
    digest = hashlib.blake2b(f"{salt}\0{user_id}".encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big") < share * 2**64


# -- pass 1: evidence -------------------------------------------------------------------------------
def _evidence_config(base: Config) -> Config:
    """The base config with unit main weights and no episode: pressures are evidence.

    A detector's other weight fields keep their ratio to its main weight (a single u-turn counts
    0.25 / 0.6 of a repeated one), since a tuned config scales them together: evidence times the
    main weight is then the engine's pressure, for any main weight."""
    data = msgspec.to_builtins(base)
    for name, fields in WEIGHT_FIELDS.items():
        main = float(getattr(getattr(base.detectors, name), fields[0]))
        for f in fields:
            value = float(getattr(getattr(base.detectors, name), f))
            data["detectors"][name][f] = min(100.0, value / main) if main > 0 else 1.0
    data["scoring"]["threshold"] = 0.999999
    data["scoring"]["rearm"] = min(data["scoring"]["rearm"], 0.999999)
    data["guidance"]["enabled"] = False
    return load_config(data)


#: ``(segment start, evidence vector)``: time is kept only as the start of a segment of
#: ``horizon / SEGMENTS`` seconds, so that a front can be cut at a horizon before a ticket.
Point = tuple[float, tuple[float, ...]]
#: Segments per horizon: evidence at most horizon / SEGMENTS older than the horizon may be cut.
SEGMENTS = 8


def _add_point(front: list[Point], point: Point) -> None:
    """Keep ``front`` the Pareto front (componentwise maxima) of each segment's points.

    Points arrive in time order, so the current segment's points are the front's tail; only
    they can dominate or be dominated by a new point (an older segment must survive the cut of
    a newer one). When the front grows past :data:`MAX_POINTS`, the oldest segment's smallest
    point goes.
    """
    seg, vec = point
    tail = len(front)
    while tail > 0 and front[tail - 1][0] == seg:
        tail -= 1
    for p in front[tail:]:
        if all(a >= b for a, b in zip(p[1], vec)):
            return
    front[tail:] = [p for p in front[tail:] if not all(b >= a for a, b in zip(p[1], vec))]
    front.append(point)
    if len(front) > MAX_POINTS:
        oldest = front[0][0]
        front.remove(min((p for p in front if p[0] == oldest), key=lambda p: sum(p[1])))


class _Evidence:
    """Per-user Pareto fronts of evidence vectors, and each user's label time."""

    def __init__(self, detectors: list[str], segment: float) -> None:
        self.detectors = detectors
        self.segment = segment
        self.index = {d: i for i, d in enumerate(detectors)}
        self.fronts: dict[str, list[Point]] = {}
        self.label_ts: dict[str, float] = {}
        self.first_ts: dict[str, float] = {}

    def note(self, user_id: str, ts: float, pressures: dict[str, float]) -> None:
        point = [0.0] * len(self.detectors)
        any_ = False
        for name, value in pressures.items():
            i = self.index.get(name)
            if i is not None and value > 0.0:
                point[i] = value
                any_ = True
        front = self.fronts.setdefault(user_id, [])
        if any_:
            _add_point(front, (ts - ts % self.segment, tuple(point)))


def _replay_evidence(
    log: _Log, base: Config, horizon: float, engine: str, held_out: Callable[[str], bool], spill: IO[bytes]
) -> _Evidence:
    """Pass 1. The events of the users ``held_out`` selects are also written to ``spill`` (JSON
    Lines), so the validation passes read a fifth of the log, not all of it again."""
    encode = msgspec.json.Encoder().encode
    held: dict[str, bool] = {}
    cfg = _evidence_config(base)
    detectors = [d for d in WEIGHT_FIELDS if getattr(base.detectors, d).enabled]
    detectors.append("custom")
    ev = _Evidence(detectors, horizon / SEGMENTS)
    tickets, contacts = _label_types(base)
    now = [0.0]
    tracker = Tracker(cfg, engine=engine, clock=lambda: now[0])
    active: OrderedDict[str, float] = OrderedDict()  # user -> last event ts, oldest first
    ticks = 0
    idle = base.detectors.stall.max_duration
    next_tick: float | None = None
    try:
        for event in log:
            ts = float(event["ts"])
            uid = event["user_id"]
            if next_tick is None:
                next_tick = ts + TICK_EVERY
            while ts >= next_tick:
                _tick_probe(tracker, ev, active, next_tick, idle, ticks)
                next_tick += TICK_EVERY
                ticks += 1
            now[0] = max(now[0], ts)
            if uid in ev.label_ts:
                continue  # after their ticket: nothing more to learn from this user
            ev.first_ts.setdefault(uid, ts)
            is_held = held.get(uid)
            if is_held is None:
                is_held = held[uid] = held_out(uid)
            if is_held:
                spill.write(encode(event) + b"\n")
            if _is_label(event, tickets, contacts):
                ev.label_ts[uid] = ts
                active.pop(uid, None)
                continue
            before = tracker.score(uid, ts)
            try:
                after = tracker.observe(event)
            except ValueError as exc:
                log.skip(f"{uid}: {exc}")
                continue
            active[uid] = ts
            active.move_to_end(uid)
            # Evidence only grows when a detector activates (the score jumps); otherwise it
            # decays, and a decayed point adds nothing to the front.
            if after > before + 1e-12:
                pressures = tracker.pressures(uid)
                if pressures:
                    ev.note(uid, ts, pressures)
        if next_tick is not None:
            _tick_probe(tracker, ev, active, next_tick, idle, ticks)
    finally:
        tracker.close(1.0)
    # A positive's evidence only counts within the horizon before the ticket (whole segments:
    # up to horizon / SEGMENTS of the oldest evidence may be cut with them).
    for uid, lts in ev.label_ts.items():
        ev.fronts[uid] = [p for p in ev.fronts.get(uid, ()) if p[0] >= lts - horizon]
    return ev


def _tick_probe(tracker: Tracker, ev: _Evidence, active: OrderedDict[str, float], at: float, idle: float,
                tick: int) -> None:  # fmt: skip
    """Tick, and read the evidence of the users the tick activated a detector for (a stall).

    Reading every user's pressures at every tick would dominate the replay: a user's score at
    ``at``, read before and after the tick (a fraction of the cost), tells which ones grew.
    ``active`` is ordered by last event, oldest first. Users quiet for over 10 minutes are
    looked at every 2nd tick, over 30 minutes every 4th (their stall evidence is read up to a
    tick or three late, slightly decayed); users gone longer than ``idle`` are dropped."""
    while active:
        uid, last = next(iter(active.items()))
        if at - last <= idle:
            break
        del active[uid]
    before: list[tuple[str, float]] = []
    for uid, last in active.items():
        quiet = at - last
        if quiet < TICK_EVERY:
            break  # the rest were active since the last tick: read at their next event
        if (quiet > 1800.0 and tick % 4) or (quiet > 600.0 and tick % 2):
            continue
        before.append((uid, tracker.score(uid, at)))
    tracker.tick(at)
    for uid, score in before:
        if tracker.score(uid, at) > score + 1e-12:
            pressures = tracker.pressures(uid)
            if pressures:
                ev.note(uid, at, pressures)


# -- pass 2: the fit --------------------------------------------------------------------------------
def wilson_upper(k: int, n: int, z: float = 1.6449) -> float:
    """One-sided 95% Wilson upper bound of a rate of ``k`` in ``n``."""
    if n <= 0:
        return 1.0
    p = k / n
    centre = p + z * z / (2 * n)
    spread = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return min(1.0, (centre + spread) / (1 + z * z / n))


def allowed_false_positives(negatives: int, target_fpr: float) -> int:
    """Most false positives the fit may keep among ``negatives`` users so that the true rate is
    still under ``target_fpr`` with 95% confidence (a fit that uses the whole budget on the users
    it saw exceeds it on new ones about half the time). At least 0."""
    k = 0
    while k < negatives and wilson_upper(k + 1, negatives) <= target_fpr:
        k += 1
    return k


def _fit(
    points: np.ndarray, owner: np.ndarray, users: int, positive: np.ndarray, w0: np.ndarray, p0: float,
    fixed: np.ndarray, target_fpr: float, spend_target: bool = False,
) -> tuple[np.ndarray, float, int, int]:  # fmt: skip
    """Coordinate ascent on the log-weights, each candidate at its own operating point on the
    ROC (see the module docstring and :func:`_operating_point`).

    Returns the weights, ``P``, the false-positive budget among the negatives and the base's
    false positives among them (the budget is the lower of the target's count and, unless
    ``spend_target``, the base's)."""
    tunable = np.flatnonzero((w0 > 0) & ~fixed)
    n_pos = max(1, int(positive.sum()))
    negative = ~positive
    n_neg = max(1, int(negative.sum()))
    lam = PRIOR_POSITIVES / n_pos
    order = np.argsort(owner, kind="stable")
    points, owner = points[order], owner[order]
    starts = np.flatnonzero(np.r_[True, owner[1:] != owner[:-1]]) if len(owner) else np.zeros(0, dtype=np.int64)
    holders = owner[starts] if len(owner) else np.zeros(0, dtype=np.int64)
    log_w0 = np.log(np.where(w0 > 0, w0, 1.0))
    log_p0 = math.log(p0)
    bound = math.log(MAX_FACTOR)
    p_range = (p0 / MAX_FACTOR, min(p0 * MAX_FACTOR, -math.log(1e-6)))

    def scores(log_w: np.ndarray) -> np.ndarray:
        """Each user's highest ``w . e`` before their ticket."""
        w = np.where(w0 > 0, np.exp(log_w), 0.0)
        w[fixed] = 1.0
        best = np.zeros(users)
        if len(points):
            best[holders] = np.maximum.reduceat(points @ w, starts)
        return best

    base_flags = (scores(log_w0) >= p0 * (1 - 1e-9))[negative]
    base_false_pos = int(base_flags.sum())
    allowed = allowed_false_positives(n_neg, target_fpr)
    # Dominance: a base already under the target keeps its false positives as the budget, and the
    # tuned config must not exceed them with 95% confidence (paired, on the same users).
    paired = not spend_target and base_false_pos <= allowed
    if paired:
        allowed = base_false_pos

    def objective(log_w: np.ndarray) -> tuple[float, float]:
        s = scores(log_w)
        p = _operating_point(s[positive], s[negative], allowed, p_range, base_flags if paired else None)
        f = s >= p
        recall = f[positive].sum() / n_pos
        false_pos = int(f[negative].sum())
        prior = float(((log_w - log_w0)[tunable] ** 2).sum() + (math.log(p) - log_p0) ** 2)
        over = float(max(0, false_pos - allowed))
        if paired:
            new = int((f[negative] & ~base_flags).sum())
            over = max(over, _excess(new, base_false_pos - (false_pos - new)))
        return float(recall - FP_COST * false_pos / n_neg - 100.0 * over / n_neg - lam * prior), p

    log_w = log_w0.copy()
    best, p_best = objective(log_w)
    for step in (1.0, 0.5, 0.25, 0.1, 0.05, 0.02):
        improved = True
        rounds = 0
        while improved and rounds < 50:
            improved = False
            rounds += 1
            for k in tunable.tolist():
                for delta in (step, -step):
                    cand_w = log_w.copy()
                    cand_w[k] += delta
                    if abs(cand_w[k] - log_w0[k]) > bound or math.exp(cand_w[k]) > 100.0:
                        continue
                    value, p = objective(cand_w)
                    if value > best + 1e-12:
                        best, log_w, p_best, improved = value, cand_w, p, True
    weights = np.where(w0 > 0, np.exp(log_w), 0.0)
    return weights, p_best, allowed, base_false_pos


#: One-sided 95% normal quantile: the confidence of the budgets (as in :func:`wilson_upper`).
Z95 = 1.6449


def _excess(new: int, gone: int) -> float:
    """How far flagging ``new`` users the base did not flag, and not ``gone`` ones it did, is from
    "no more false positives than the base, with 95% confidence" (a one-sided sign test on
    those discordant users, normal approximation): 0 when within. Flagging none new is within."""
    if new == 0:
        return 0.0
    return max(0.0, new - gone + Z95 * math.sqrt(new + gone))


def _operating_point(pos: np.ndarray, neg: np.ndarray, allowed: int, p_range: tuple[float, float],
                     base: np.ndarray | None = None) -> float:  # fmt: skip
    """The threshold ``P`` on the ROC of scores ``pos`` (users with a ticket) and ``neg``
    (without): flagging at most ``allowed`` of ``neg`` (and, given ``base``, the flags of the
    base config on ``neg``: no more false positives than the base with 95% confidence, see
    :func:`_excess`), the most of ``pos`` (each false positive costs :data:`FP_COST` of a caught
    user's share, so none is spent for nothing), and in the middle (geometric) of the gap between
    the scores it flags and those it does not, so that the engine, which the scores only
    approximate, draws the same line. Within ``p_range``.
    """
    lo_p, hi_p = p_range
    scored = np.flatnonzero(neg > 0)
    ranked_neg = scored[np.argsort(-neg[scored], kind="stable")][: allowed + 1]
    top = neg[ranked_neg]  # the highest negative scores, descending
    # Flagging the k highest negatives: the line runs just above top[k] (the (k+1)-th).
    cuts = np.append(top, 0.0)[: min(allowed, len(top)) + 1]
    ks = np.arange(len(cuts))
    ranked = np.sort(pos[pos > cuts[-1]])
    caught = len(ranked) - np.searchsorted(ranked, cuts, side="right")
    n_pos, n_neg = max(1, len(pos)), max(1, len(neg))
    value = caught / n_pos - FP_COST * ks / n_neg
    if base is not None:
        was = np.r_[0, np.cumsum(base[ranked_neg])][: len(cuts)]  # of the k flagged, base flags too
        total = int(base.sum())
        ok = [_excess(int(k - w), int(total - w)) == 0.0 for k, w in zip(ks, was)]
        value = np.where(ok, value, -np.inf)
    k = int(np.argmax(value))  # the first best: the fewest false positives
    lo = float(cuts[k])
    above = ranked[ranked > lo]
    hi = min(float(above[0]) if len(above) else math.inf, float(top[k - 1]) if k > 0 else math.inf)
    if hi <= lo * (1 + 1e-9):  # a negative tied with the line: flag strictly above it
        p = lo * (1 + 1e-6)
    elif lo > 0 and hi < math.inf:
        p = math.sqrt(lo * hi)
    elif hi < math.inf:
        p = hi * math.exp(-0.5)
    elif lo > 0:
        p = lo * math.exp(0.5)
    else:
        p = lo_p
    return min(hi_p, max(lo_p, p))


def tuned_config(base: Config, weights: dict[str, float], threshold: float) -> dict[str, Any]:
    """The base config as a mapping, with the learned weights and threshold (``rearm`` scaled
    with the threshold, so the hysteresis keeps its proportion)."""
    data: dict[str, Any] = msgspec.to_builtins(base)
    base_w = detector_weights(base)
    for name, fields in WEIGHT_FIELDS.items():
        factor = weights[name] / base_w[name] if base_w[name] > 0 else 1.0
        for f in fields:
            value = float(getattr(getattr(base.detectors, name), f)) * factor
            data["detectors"][name][f] = min(100.0, round(value, 4))
    scoring = data["scoring"]
    ratio = base.scoring.rearm / base.scoring.threshold
    scoring["threshold"] = round(threshold, 4)
    scoring["rearm"] = round(min(threshold, threshold * ratio), 4)
    return data


# -- pass 3: validation -----------------------------------------------------------------------------
def _spilled(path: str) -> Iterator[dict[str, Any]]:
    decode = msgspec.json.Decoder().decode
    with open(path, "rb") as fh:
        for line in fh:
            yield decode(line)


def _replay_quality(
    log: Iterable[dict[str, Any]], cfg: Config, users: set[str], label_ts: dict[str, float], engine: str
) -> Quality:
    now = [0.0]
    tracker = Tracker(cfg, engine=engine, clock=lambda: now[0])
    first: dict[str, tuple[float, str]] = {}

    def record(episode: Any) -> None:
        if episode.user_id not in first:
            top = episode.reasons[0].detector if episode.reasons else "none"
            first[episode.user_id] = (episode.ts, top)

    tracker.on_friction(record, sync=True)
    last_step: dict[str, str] = {}
    next_tick: float | None = None
    try:
        for event in log:
            uid = event["user_id"]
            if uid not in users:
                continue
            ts = float(event["ts"])
            if next_tick is None:
                next_tick = ts + TICK_EVERY
            while ts >= next_tick:
                tracker.tick(next_tick)
                next_tick += TICK_EVERY
            now[0] = max(now[0], ts)
            lts = label_ts.get(uid)
            if lts is not None and ts >= lts:
                continue
            try:
                tracker.observe(event)
            except ValueError:
                continue
            step = event.get("step")
            if isinstance(step, str):
                last_step[uid] = step
        if next_tick is not None:
            tracker.tick(next_tick)
    finally:
        tracker.close(1.0)
    positives = [u for u in users if u in label_ts]
    leads: list[float] = []
    per_step: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    per_detector: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    caught = false_pos = 0
    for uid in positives:
        step = last_step.get(uid, "(none)")
        per_step[step][0] += 1
        hit = first.get(uid)
        if hit is not None and hit[0] < label_ts[uid]:
            caught += 1
            per_step[step][1] += 1
            per_detector[hit[1]][0] += 1
            leads.append(label_ts[uid] - hit[0])
    for uid in users:
        if uid not in label_ts and uid in first:
            false_pos += 1
            per_detector[first[uid][1]][1] += 1
    return Quality(
        positives=len(positives),
        negatives=len(users) - len(positives),
        caught=caught,
        false_positives=false_pos,
        median_lead=statistics.median(leads) if leads else None,
        per_step=dict(per_step),
        per_detector=dict(per_detector),
    )


# -- the whole job ------------------------------------------------------------------------------------
def calibrate(
    logs: Sequence[str],
    base: Any = None,
    *,
    target_fpr: float = 0.01,
    horizon: float = 86400.0,
    validation_share: float = 0.2,
    engine: str = "auto",
    progress: IO[str] | None = None,
    salt: str = "pyfriction-calibrate",
    spend_target: bool = False,
) -> CalibrationResult:
    """Fit detector weights and the threshold on ``logs`` (JSON Lines paths) against their tickets.

    ``base`` is the config to start from and to compare with (path, mapping, :class:`Config` or
    None for the defaults). The fit allows the tuned config no more false positives on the fit
    users than the base config has there, nor more than ``target_fpr`` allows; with
    ``spend_target`` it may spend the whole ``target_fpr`` even where the base has fewer.
    Raises :class:`CalibrationError` for logs without tickets or with too
    few users to fit, :class:`pyfriction.ConfigError` for a base config that does not load, and
    OSError for an unreadable log.
    """
    if not 0.0 < target_fpr < 1.0:
        raise CalibrationError(f"--target-fpr must be in (0, 1), not {target_fpr}")
    if not 0.0 < validation_share < 1.0:
        raise CalibrationError(f"--validation-share must be in (0, 1), not {validation_share}")
    if not horizon > 0:
        raise CalibrationError(f"--horizon must be positive, not {horizon}")
    if not logs:
        raise CalibrationError("no log given")
    for path in logs:
        if not os.path.isfile(path):
            raise CalibrationError(f"cannot read {path!r}: no such file")
    started = time.monotonic()
    cfg = load_config(base)

    log = _Log(logs, cfg, progress, "evidence")
    spill_fd, spill_path = tempfile.mkstemp(prefix="pyfriction-calibrate-", suffix=".jsonl")
    try:
        with os.fdopen(spill_fd, "wb") as spill:
            ev = _replay_evidence(log, cfg, horizon, engine, lambda u: _in_validation(u, validation_share, salt), spill)
        return _fit_and_validate(
            log, ev, cfg, spill_path, target_fpr, validation_share, salt, engine, started, spend_target
        )
    finally:
        os.unlink(spill_path)


def _fit_and_validate(
    log: _Log, ev: _Evidence, cfg: Config, spill_path: str, target_fpr: float, validation_share: float,
    salt: str, engine: str, started: float, spend_target: bool = False,
) -> CalibrationResult:  # fmt: skip
    """Passes 2 and 3 of :func:`calibrate`, on the evidence of pass 1."""
    users = sorted(ev.first_ts)
    if not ev.label_ts:
        raise CalibrationError(
            f"the logs have no tickets ({log.events:,} events from {len(users):,} users): calibration learns from "
            "users who filed one (a `ticket` event, or a `contact` event or page view of the `contact` step)"
        )
    validation = {u for u in users if _in_validation(u, validation_share, salt)}
    fit_users = [u for u in users if u not in validation]
    fit_pos = sum(1 for u in fit_users if u in ev.label_ts)
    fit_neg = len(fit_users) - fit_pos
    if fit_pos < MIN_POSITIVES or fit_neg < MIN_NEGATIVES:
        raise CalibrationError(
            f"too few users to fit: {fit_pos} with a ticket and {fit_neg} without in the fit share "
            f"(at least {MIN_POSITIVES} and {MIN_NEGATIVES} needed); record a longer log"
        )
    if not any(u in ev.label_ts for u in validation):
        raise CalibrationError("no user with a ticket fell in the validation share; raise --validation-share")

    names = ev.detectors
    index = {u: i for i, u in enumerate(fit_users)}
    rows: list[tuple[float, ...]] = []
    owner: list[int] = []
    for u in fit_users:
        for _, vec in ev.fronts.get(u, ()):
            rows.append(vec)
            owner.append(index[u])
    points = np.array(rows, dtype=np.float64).reshape(len(rows), len(names))
    base_w = detector_weights(cfg)
    w0 = np.array([base_w.get(d, 1.0) for d in names])
    fixed = np.array([d not in WEIGHT_FIELDS for d in names])
    positive = np.array([u in ev.label_ts for u in fit_users])
    p0 = -math.log(1.0 - cfg.scoring.threshold)
    w, p, allowed, base_false_pos = _fit(
        points, np.array(owner, dtype=np.int64), len(fit_users), positive, w0, p0, fixed, target_fpr, spend_target
    )
    learned = {d: float(w[i]) for i, d in enumerate(names) if d in WEIGHT_FIELDS}
    for d in WEIGHT_FIELDS:
        learned.setdefault(d, base_w[d])
    threshold = 1.0 - math.exp(-p)
    tuned = load_config(tuned_config(cfg, learned, threshold))

    before = _replay_quality(_spilled(spill_path), cfg, validation, ev.label_ts, engine)
    after = _replay_quality(_spilled(spill_path), tuned, validation, ev.label_ts, engine)
    return CalibrationResult(
        weights={d: round(v, 4) for d, v in learned.items()},
        base_weights=base_w,
        threshold=round(threshold, 4),
        base_threshold=cfg.scoring.threshold,
        target_fpr=target_fpr,
        fit_users=len(fit_users),
        fit_positives=fit_pos,
        validation_users=len(validation),
        before=before,
        after=after,
        events=log.events,
        skipped=log.skipped,
        errors=log.errors,
        seconds=time.monotonic() - started,
        fit_negatives=fit_neg,
        base_fit_false_positives=base_false_pos,
        allowed_false_positives=allowed,
        spend_target=spend_target,
    )


def _strip_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_strip_none(v) for v in value]
    return value


def _budget_source(result: CalibrationResult) -> str:
    """Which budget the fit kept to (as :func:`_fit` chose it)."""
    base = result.base_fit_false_positives
    if not result.spend_target and base <= allowed_false_positives(result.fit_negatives, result.target_fpr):
        return f"the base config's {base:,}: more recall at no more false positives"
    return f"the target {result.target_fpr:.2%} with 95% confidence; the base config has {base:,}"


def format_result(result: CalibrationResult) -> str:
    """Before and after, on the validation users: the figures the CLI prints and the file keeps."""
    b, a = result.before, result.after

    def lead(q: Quality) -> str:
        return "-" if q.median_lead is None else f"{q.median_lead:.0f} s"

    lines = [
        f"{result.events:,} events; fit on {result.fit_users:,} users ({result.fit_positives:,} with a ticket), "
        f"validated on {result.validation_users:,} others ({b.positives:,} with a ticket)",
        f"operating point: at most {result.allowed_false_positives:,} false positives among the "
        f"{result.fit_negatives:,} fit users without a ticket ({_budget_source(result)})",
        f"{'':<24}{'base':>12}{'tuned':>12}",
        f"{'recall':<24}{b.recall:>12.3f}{a.recall:>12.3f}",
        f"{'false positives':<24}{b.fpr:>12.2%}{a.fpr:>12.2%}",
        f"{'median lead':<24}{lead(b):>12}{lead(a):>12}",
        f"{'threshold':<24}{result.base_threshold:>12.4g}{result.threshold:>12.4g}",
    ]
    for d, w in result.weights.items():
        lines.append(f"{'weight ' + d:<24}{result.base_weights[d]:>12.4g}{w:>12.4g}")
    lines.append("per step (caught / with a ticket):")
    for step in sorted(set(b.per_step) | set(a.per_step)):
        nb = b.per_step.get(step, [0, 0])
        na = a.per_step.get(step, [0, 0])
        lines.append(f"  {step:<22}{f'{nb[1]}/{nb[0]}':>12}{f'{na[1]}/{na[0]}':>12}")
    lines.append("per detector (first episode's top reason: caught, false positives):")
    for d in sorted(set(b.per_detector) | set(a.per_detector)):
        nb = b.per_detector.get(d, [0, 0])
        na = a.per_detector.get(d, [0, 0])
        lines.append(f"  {d:<22}{f'{nb[0]}, {nb[1]}':>12}{f'{na[0]}, {na[1]}':>12}")
    return "\n".join(lines)


def write_config(path: str, base: Config, result: CalibrationResult) -> None:
    """Write the complete tuned config (TOML) to ``path``, the validation figures on top."""
    import tomli_w

    data = _strip_none(tuned_config(base, result.weights, result.threshold))
    header = ["# Written by `pyfriction calibrate`: the [scoring] threshold and the [detectors] weights were",
              "# learned from tickets; everything else is the base config. Validation (users not fitted on):"]  # fmt: skip
    header += ["#   " + line for line in format_result(result).splitlines()]
    text = "\n".join(header) + "\n\n" + tomli_w.dumps(data)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.replace(tmp, path)


def parse_duration(text: str) -> float:
    """Seconds from ``90``, ``90s``, ``15m``, ``24h`` or ``7d``."""
    units = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
    raw = text.strip().lower()
    factor = units.get(raw[-1:], None)
    number = raw[:-1] if factor is not None else raw
    try:
        value = float(number) * (factor or 1.0)
    except ValueError:
        raise CalibrationError(f"not a duration: {text!r} (say 90s, 15m, 24h or 7d)") from None
    if not math.isfinite(value) or value <= 0:
        raise CalibrationError(f"not a positive duration: {text!r}")
    return value


def run_cli(args: Any, out: Callable[[str], None] = print) -> int:
    """``pyfriction calibrate``: the exit code (0 written, 1 refused, 2 bad input)."""
    try:
        horizon = parse_duration(args.horizon)
        base = load_config(args.config)
        result = calibrate(
            args.logs,
            base,
            target_fpr=args.target_fpr,
            horizon=horizon,
            validation_share=args.validation_share,
            engine=args.engine,
            progress=sys.stderr if sys.stderr.isatty() else None,
            spend_target=args.spend_target,
        )
    except (CalibrationError, ConfigError, OSError) as exc:
        print(f"pyfriction calibrate: {exc}", file=sys.stderr)
        return 2
    out(format_result(result))
    if result.skipped:
        out(f"{result.skipped:,} lines skipped; first: " + "; ".join(result.errors))
    why = result.worse_than_base()
    if why is not None:
        print(f"pyfriction calibrate: not written: the tuned config is worse than the base: {why}", file=sys.stderr)
        return 1
    write_config(args.output, base, result)
    out(f"wrote {args.output}")
    return 0


def add_parser(sub: Any) -> None:
    """The ``calibrate`` subcommand's arguments."""
    p = sub.add_parser(
        "calibrate",
        help="learn detector weights and the threshold from a log with tickets",
        description="Replay recorded logs, take the users who filed a ticket (a `ticket` event, or a view of the "
        "`contact` step) as the ones who struggled, fit the detector weights and the threshold to catch them "
        "before their ticket at the target false-positive rate, validate on users not fitted on, and write a "
        "complete config. Where the base config already has fewer false positives than the target allows, the fit "
        "keeps to the base's count, so the tuned config adds recall at no more false positives (--spend-target to "
        "use the whole target instead). A config worse than the base on the validation users is not written "
        "(exit 1).",
    )
    p.add_argument("logs", nargs="+", metavar="LOG", help="JSON Lines logs: canonical events or Segment payloads")
    p.add_argument("-o", "--output", required=True, metavar="FILE", help="where to write the tuned config (TOML)")
    p.add_argument(
        "--config", default=None, metavar="BASE", help="the config to start from and compare with (default: built-in)"
    )
    p.add_argument(
        "--target-fpr",
        type=float,
        default=0.01,
        metavar="RATE",
        help="false-positive rate allowed among users without a ticket (default: 0.01)",
    )
    p.add_argument(
        "--spend-target",
        action="store_true",
        help="let the fit spend the whole --target-fpr even where the base config has fewer false positives, "
        "trading them for recall (default: off: no more false positives than the base)",
    )
    p.add_argument(
        "--horizon",
        default="24h",
        metavar="DURATION",
        help="how long before a ticket struggle counts, e.g. 90m, 24h, 7d (default: 24h)",
    )
    p.add_argument(
        "--validation-share",
        type=float,
        default=0.2,
        metavar="SHARE",
        help="share of users held out to validate on (default: 0.2)",
    )
    p.add_argument(
        "--engine",
        default="auto",
        choices=["auto", "compiled", "reference"],
        help="engine to replay with (default: auto)",
    )
    p.set_defaults(func=run_cli)
