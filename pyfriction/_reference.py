"""The reference engine: the friction specification in plain Python.

The compiled core (``_core/core.pyx``) implements exactly these steps on C structs; a
difference between the two is a bug (the hypothesis tests drive both with random streams).
Per-user state mirrors :data:`~pyfriction._layout.SLOT_DTYPE` field by field, float32 fields
rounded with :func:`~pyfriction._layout.f32` where the C core stores a ``float``.

Per event, for user ``u`` (see :meth:`ReferenceCore._apply`):

1. validate; unknown types and excluded steps/targets are counted and change nothing;
2. find or insert the user (inserting first evicts idle users, then the least recently
   active one when full); ``te = max(ts, u.last_ts)``: a late event counts as happening now;
3. decay pressures to ``te``; a page event to another step ends the visit (u-turns, the
   step's duration baseline), any other event checks the stall detector on the current step;
4. run the event's detectors (each activation adds its weight to its pressure);
5. ``score = 1 - exp(-sum(pressure))``; fire an episode when it reaches the threshold.
"""

from __future__ import annotations

import itertools
import math
import os
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np

from . import events as ev
from ._hashing import key32, key64
from ._layout import (
    CUSTOM,
    DEAD_CLICK,
    EMPTY_SEARCH,
    ERROR_BURST,
    F_DEAD,
    F_ERR,
    F_FAIL,
    F_HAS_EPISODE,
    F_IN_EPISODE,
    F_RAGE,
    F_SEARCH,
    F_STALL,
    F_UTURN,
    HELP_SEEKING,
    N_BUCKETS,
    N_DETECTORS,
    NEVER,
    RAGE_CLICK,
    REBASE_AFTER,
    REPEAT_FAILURE,
    SLOT_DTYPE,
    STALL,
    STEP_DTYPE,
    UID_BYTES,
    UID_LONG,
    UTURN,
    bucket_of,
    f32,
)
from ._rules import Names, Rules
from .config import RING_SIZE

#: Called after an outcome event (ticket, guidance feedback) is applied:
#: ``(type, user_id, account_id, step, target, ts)``.
OutcomeSink = Callable[[str, str, str | None, str | None, str | None, float], None]
#: Called when an episode fires: ``(record, user_id, account_id, step, target, ts, score,
#: stall_limit)``; the record is the slot (a ``SLOT_DTYPE`` record here, a dict of the fields
#: ``_episodes`` reads from the compiled core), ``stall_limit`` the step's limit at that moment.
EpisodeSink = Callable[[Any, str, str | None, str | None, str | None, float, float, float], None]

_LATCHES = F_RAGE | F_DEAD | F_ERR | F_FAIL | F_UTURN | F_SEARCH
_U32 = 0xFFFFFFFF
_U16 = 0xFFFF


class _User:
    """One tracked user: the fields of a slot (see ``_layout.SLOT_DTYPE``)."""

    __slots__ = (
        "key", "uid", "last_ts", "episode_ts", "step_ts", "base",
        "click_r", "dead_r", "err_r", "uturn_t", "fail_t", "search_t", "p_off",
        "pressure", "episode_score", "events", "episodes", "step", "prev_step",
        "click_target", "dead_target", "fail_target", "flags",
        "click_n", "dead_n", "err_n", "fail_n", "uturn_n", "search_n", "custom",
    )  # fmt: skip

    def __init__(self, key: int, uid: str, ts: float) -> None:
        self.key = key
        self.uid = uid
        self.last_ts = self.step_ts = self.base = ts
        self.p_off = 0.0  # the pressures are valued at last_ts + p_off
        self.episode_ts = 0.0
        self.click_r = [NEVER] * RING_SIZE
        self.dead_r = [NEVER] * RING_SIZE
        self.err_r = [NEVER] * RING_SIZE
        self.uturn_t = self.fail_t = self.search_t = NEVER
        self.pressure = [0.0] * N_DETECTORS
        self.episode_score = 0.0
        self.events = self.episodes = 0
        self.step = self.prev_step = 0
        self.click_target = self.dead_target = self.fail_target = 0
        self.flags = 0
        self.click_n = self.dead_n = self.err_n = self.fail_n = self.uturn_n = self.search_n = 0
        self.custom = 0

    def to_record(self, rec: Any) -> None:
        """Write this user into a ``SLOT_DTYPE`` record."""
        for name in self.__slots__:
            if name != "uid":
                rec[name] = getattr(self, name)
        raw = self.uid.encode("utf-8", "surrogatepass")
        rec["uid"] = raw[:UID_BYTES]
        rec["uid_len"] = len(raw) if len(raw) <= UID_BYTES else UID_LONG

    @classmethod
    def from_record(cls, rec: Any, uid: str) -> _User:
        u = cls.__new__(cls)
        u.uid = uid
        for name in cls.__slots__:
            if name == "uid":
                continue
            value = rec[name]
            if isinstance(value, np.ndarray):
                value = [float(x) for x in value]
            elif isinstance(value, (np.floating,)):
                value = float(value)
            else:
                value = int(value)
            setattr(u, name, value)
        return u


_UID_AT = SLOT_DTYPE.fields["uid"][1]


def _uid_of(rec: Any, long_ids: Mapping[int, str]) -> str:
    n = int(rec["uid_len"])
    if n == UID_LONG:
        return long_ids[int(rec["key"])]
    # Not rec["uid"]: numpy strips trailing NUL bytes from an "S" field, and an id may end in one.
    return rec.tobytes()[_UID_AT : _UID_AT + n].decode("utf-8", "surrogatepass")


_live: weakref.WeakSet[ReferenceCore] = weakref.WeakSet()


def _fresh_locks_after_fork() -> None:
    # A thread of the parent may have held the lock at fork(); it does not exist in the child.
    for core in list(_live):
        core._lock = threading.RLock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_fresh_locks_after_fork)


class ReferenceCore:
    """The pure-Python engine (``Tracker(engine="reference")``)."""

    engine = "reference"
    #: The compiled core's switch for queueing a batch's episodes (``begin_batch``); the
    #: reference reports each one as it fires, which no caller can tell apart from a queue
    #: while no callback runs inline (the only time the switch is on).
    batch_queue = True

    def __init__(self, rules: Rules, capacity: int, idle_ttl: float | None,
                 clock: Callable[[], float], names: Names, on_episode: EpisodeSink,
                 on_outcome: OutcomeSink) -> None:  # fmt: skip
        self._rules = rules
        self._cfg = rules.config
        self._capacity = capacity
        self._idle_ttl = idle_ttl
        self._clock = clock
        self._names = names
        self._on_episode = on_episode
        self._on_outcome = on_outcome
        self._users: OrderedDict[int, _User] = OrderedDict()  # least recently active first
        self._steps: dict[int, list[int]] = {}  # step key -> [count, bucket0, ...]
        self._export_cursor: tuple[int, Any] | None = None  # export_chunk's place
        # The compiled core relies on the GIL (no Python code runs while it holds a slot);
        # plain Python can switch threads anywhere, so the reference takes a lock.
        self._lock = threading.RLock()
        _live.add(self)
        self.counters = dict.fromkeys(
            ("events", "invalid", "unknown", "excluded", "episodes", "evictions", "tickets"), 0
        )

    # -- public surface (same as the compiled core) ---------------------------------------
    def observe(self, event: Any) -> float:
        with self._lock:
            try:
                parsed = ev.parse_event(event, self._clock)
            except ev.InvalidEvent:
                self.counters["invalid"] += 1
                raise
            return self._apply(*parsed)

    def observe_many(self, events: Any) -> np.ndarray:
        if isinstance(events, Mapping):
            n, cols = columns_of(events)
            rows: Iterable[Any] = columns_to_rows(cols, 0, n)
        else:
            rows = events
        out = []
        with self._lock:
            for event in rows:
                try:
                    parsed = ev.parse_event(event, self._clock)
                except ev.InvalidEvent:
                    self.counters["invalid"] += 1
                    out.append(math.nan)
                    continue
                out.append(self._apply(*parsed))
        return np.array(out, dtype=np.float64)

    def score(self, user_id: str, at: float | None = None) -> float:
        u = self._users.get(key64(user_id))
        if u is None:
            return 0.0
        total = 0.0
        for p in u.pressure:
            total += p
        p_ts = u.last_ts + u.p_off
        if at is not None and at > p_ts:
            total *= math.exp(-(at - p_ts) * self._rules.decay_rate)
        return 1.0 - math.exp(-total)

    def record(self, user_id: str) -> np.void | None:
        u = self._users.get(key64(user_id))
        return None if u is None else self._record(u)

    def stall_limit(self, step: int) -> float:
        counts = self._steps.get(step)
        return -1.0 if counts is None else self._rules.stall_limit(counts[0], counts[1:])

    def set_counters(self, counters: Mapping[str, int]) -> None:
        self.counters.update(counters)

    def __len__(self) -> int:
        return len(self._users)

    def tick(self, now: float) -> int:
        with self._lock:
            before = self.counters["episodes"]
            if self._idle_ttl is not None:
                self._evict_idle(now)
            for key in list(self._users):
                u = self._users.get(key)
                if u is None:  # evicted by a callback's observe
                    continue
                self._decay(u, u.last_ts + u.p_off, now)
                te = now if now > u.last_ts else u.last_ts
                self._check_stall(u, te)
                self._check_episode(u, te, 0, None, None, None)
            return self.counters["episodes"] - before

    # -- snapshots -------------------------------------------------------------------------
    def export(self) -> tuple[np.ndarray, np.ndarray, dict[int, str]]:
        """Slots least recently active first, step histograms, and ids too long to inline."""
        slots = np.zeros(len(self._users), dtype=SLOT_DTYPE)
        for i, u in enumerate(self._users.values()):
            u.to_record(slots[i])
        steps, long_ids, _ = self.export_meta()
        return slots, steps, long_ids

    def export_meta(self) -> tuple[np.ndarray, dict[int, str], int]:
        """What :meth:`export` gives besides the slots: ``(steps, long_ids, n_users)``."""
        long_ids = {
            u.key: u.uid for u in self._users.values() if len(u.uid.encode("utf-8", "surrogatepass")) > UID_BYTES
        }
        steps = np.zeros(len(self._steps), dtype=STEP_DTYPE)
        for i, (key, counts) in enumerate(self._steps.items()):
            steps[i]["key"] = key
            steps[i]["count"] = counts[0]
            steps[i]["buckets"] = counts[1:]
        return steps, long_ids, len(self._users)

    def export_chunk(self, out: np.ndarray, start: int) -> tuple[int, int]:
        """The slots of :meth:`export`, in its order, a chunk at a time: fills ``out`` from
        cursor ``start`` (0 at first) and returns ``(count, next cursor)``; count 0 once all
        are out. The tracker must not change between calls."""
        if not isinstance(out, np.ndarray) or out.dtype != SLOT_DTYPE or not out.flags.c_contiguous \
                or not out.flags.writeable or out.ndim != 1:  # fmt: skip
            raise TypeError("export_chunk needs a writeable, contiguous 1-d SLOT_DTYPE array")
        if len(out) == 0:
            raise ValueError("export_chunk needs room for at least one slot")
        # The cursor is the index in recency order; the iterator of the previous call goes on
        # from there (slicing from the start each time would make a whole export quadratic).
        pos, rest = self._export_cursor if self._export_cursor is not None else (-1, iter(()))
        if pos != start:
            rest = itertools.islice(iter(self._users.values()), start, None)
        out.view(np.uint8).fill(0)  # as export()'s zeroed array: no byte left from before
        n = 0
        for u in itertools.islice(rest, len(out)):
            u.to_record(out[n])
            n += 1
        self._export_cursor = (start + n, rest) if n else None
        return n, start + n

    def load(self, slots: np.ndarray, steps: np.ndarray, long_ids: Mapping[int, str]) -> None:
        """Replace the state with an export (of either engine); keeps the newest when full."""
        self._users.clear()
        self._steps.clear()
        skip = max(0, len(slots) - self._capacity)
        self.counters["evictions"] += skip
        for rec in slots[skip:]:
            u = _User.from_record(rec, _uid_of(rec, long_ids))
            self._users[u.key] = u
        for rec in steps[: self._cfg.max_steps]:
            self._steps[int(rec["key"])] = [int(rec["count"])] + [int(x) for x in rec["buckets"]]

    # -- the specification -----------------------------------------------------------------
    def _apply(self, uid: str, kind: str, ts: float, step: str | None, target: str | None,
               account: str | None, status: int, results: int) -> float:  # fmt: skip
        rules = self._rules
        counters = self.counters
        counters["events"] += 1
        code = rules.type_codes.get(kind, ev.UNKNOWN)
        key = key64(uid)
        u = self._users.get(key)
        if code == ev.UNKNOWN or rules.excluded_step(step) or rules.excluded_target(target):
            counters["unknown" if code == ev.UNKNOWN else "excluded"] += 1
            return 0.0 if u is None else self._current(u)
        if u is None:
            u = self._insert(key, uid, ts)
        else:
            self._users.move_to_end(key)
        p = u.last_ts + u.p_off  # when the pressures are valued
        te = ts if ts > u.last_ts else u.last_ts
        u.last_ts = te
        if u.events < _U32:
            u.events += 1
        if te - u.base > REBASE_AFTER:
            self._rebase(u, te)
        if not self._decay(u, p, te):
            u.p_off = f32(p - te)  # still valued later than the event (a tick ran ahead)
        # Stall is judged while the user is still on the step: an event that moves them on
        # ends the visit instead (its duration feeds the step's baseline).
        s = key32(step) if code == ev.PAGE and step is not None else 0
        if s != 0 and s != u.step:
            self._navigate(u, s, step, te)  # type: ignore[arg-type]
        else:
            self._check_stall(u, te)

        cfg = self._cfg.detectors
        if code == ev.PAGE:
            pass
        elif code == ev.CLICK:
            rc = cfg.rage_click
            if (
                rc.enabled
                and target is not None
                and self._target_burst(u, "click", F_RAGE, target, te, rc.window, rc.min_clicks)
            ):
                self._activate(u, RAGE_CLICK, rc.weight)
        elif code == ev.DEAD_CLICK:
            dc = cfg.dead_click
            if (
                dc.enabled
                and target is not None
                and self._target_burst(u, "dead", F_DEAD, target, te, dc.window, dc.min_clicks)
            ):
                self._activate(u, DEAD_CLICK, dc.weight)
        elif code == ev.ERROR or code == ev.API_ERROR or code == ev.FORM_ERROR:
            eb = cfg.error_burst
            factor = 1.0
            if code == ev.API_ERROR and status in rules.ordinary_statuses:
                factor = eb.ordinary_factor
            if eb.enabled and self._burst(u, "err_r", "err_n", F_ERR, te, eb.window, eb.min_errors):
                self._activate(u, ERROR_BURST, eb.weight * factor)
            rf = cfg.repeat_failure
            if rf.enabled and target is not None:
                t = key32(target)
                if t == u.fail_target and te - (u.base + u.fail_t) <= rf.window:
                    if u.fail_n < 255:
                        u.fail_n += 1
                else:
                    u.fail_target = t
                    u.fail_n = 1
                    u.flags &= ~F_FAIL
                u.fail_t = f32(te - u.base)
                if u.fail_n >= rf.min_failures and not u.flags & F_FAIL:
                    u.flags |= F_FAIL
                    self._names.remember(t, target)
                    self._activate(u, REPEAT_FAILURE, rf.weight * factor)
        elif code == ev.SEARCH:
            es = cfg.empty_search
            if es.enabled and results == 0:
                if te - (u.base + u.search_t) <= es.window:
                    if u.search_n < 255:
                        u.search_n += 1
                else:
                    u.search_n = 1
                    u.flags &= ~F_SEARCH
                u.search_t = f32(te - u.base)
                if u.search_n >= es.min_searches and not u.flags & F_SEARCH:
                    u.flags |= F_SEARCH
                    self._activate(u, EMPTY_SEARCH, es.weight)
        elif code == ev.HELP or code == ev.CONTACT:
            hs = cfg.help_seeking
            if hs.enabled:
                w = hs.help_weight if code == ev.HELP else hs.contact_weight
                other = 0.0
                for i in range(N_DETECTORS):
                    if i != HELP_SEEKING:
                        other += u.pressure[i]
                if other >= hs.after_friction:
                    w *= hs.boost
                self._activate(u, HELP_SEEKING, w)
        elif code == ev.SUCCESS:
            keep = 1.0 - self._cfg.scoring.success_relief
            for i in range(N_DETECTORS):
                u.pressure[i] = f32(u.pressure[i] * keep)
            u.click_r = [NEVER] * RING_SIZE
            u.dead_r = [NEVER] * RING_SIZE
            u.err_r = [NEVER] * RING_SIZE
            u.uturn_t = u.fail_t = u.search_t = NEVER
            u.click_n = u.dead_n = u.err_n = u.fail_n = u.uturn_n = u.search_n = 0
            u.flags &= ~_LATCHES
        elif code == ev.TICKET:
            counters["tickets"] += 1
        elif code >= ev.CUSTOM_BASE:
            u.custom = code - ev.CUSTOM_BASE
            self._activate(u, CUSTOM, rules.custom_weights[u.custom])
        score = self._check_episode(u, te, code, account, step, target)
        if ev.TICKET <= code <= ev.GUIDANCE_DISMISSED:
            self._on_outcome(ev.TYPE_NAMES[code], uid, account, step, target, te)
        return score

    def _current(self, u: _User) -> float:
        total = 0.0
        for p in u.pressure:
            total += p
        return 1.0 - math.exp(-total)

    def _insert(self, key: int, uid: str, ts: float) -> _User:
        if self._idle_ttl is not None:
            self._evict_idle(ts)
        if len(self._users) >= self._capacity:
            self._users.popitem(last=False)
            self.counters["evictions"] += 1
        u = self._users[key] = _User(key, uid, ts)
        return u

    def _evict_idle(self, now: float) -> None:
        assert self._idle_ttl is not None
        horizon = now - self._idle_ttl
        users = self._users
        while users:
            oldest = next(iter(users.values()))
            if oldest.last_ts >= horizon:
                break
            users.popitem(last=False)
            self.counters["evictions"] += 1

    @staticmethod
    def _rebase(u: _User, te: float) -> None:
        # Re-express every window offset from the new base. Entries older than any window
        # lose precision, which cannot matter: they are outside every window either way.
        shift = u.base
        for ring in (u.click_r, u.dead_r, u.err_r):
            for i in range(RING_SIZE):
                ring[i] = f32((shift + ring[i]) - te)
        u.uturn_t = f32((shift + u.uturn_t) - te)
        u.fail_t = f32((shift + u.fail_t) - te)
        u.search_t = f32((shift + u.search_t) - te)
        u.base = te

    def _decay(self, u: _User, p_ts: float, t: float) -> bool:
        """Value the pressures (valued at ``p_ts``) at ``t`` if later; False if not."""
        dt = t - p_ts
        if dt > 0.0:
            f = math.exp(-dt * self._rules.decay_rate)
            p = u.pressure
            for i in range(N_DETECTORS):
                p[i] = f32(p[i] * f)
            u.p_off = f32(t - u.last_ts)
            return True
        return False

    @staticmethod
    def _activate(u: _User, detector: int, weight: float) -> None:
        u.pressure[detector] = f32(u.pressure[detector] + weight)

    @staticmethod
    def _burst(u: _User, ring_name: str, n_name: str, flag: int, te: float, window: float,
               need: int) -> bool:  # fmt: skip
        """Push ``te`` into a ring; True when this event makes ``need`` within ``window`` and
        the run has not activated yet. A gap longer than ``window`` starts a new run."""
        ring = getattr(u, ring_name)
        n = getattr(u, n_name)
        if te - (u.base + ring[0]) > window:
            n = 0
            u.flags &= ~flag
        within = 1
        for x in ring:
            if te - (u.base + x) <= window:
                within += 1
            else:
                break
        ring.insert(0, f32(te - u.base))
        ring.pop()
        setattr(u, n_name, n + 1 if n < 255 else 255)
        if within >= need and not u.flags & flag:
            u.flags |= flag
            return True
        return False

    def _target_burst(self, u: _User, kind: str, flag: int, target: str, te: float, window: float,
                      need: int) -> bool:  # fmt: skip
        """A burst on one target (``kind`` "click" or "dead": the fields ``{kind}_target``,
        ``{kind}_r``, ``{kind}_n``); an event on another target starts the run over."""
        t = key32(target)
        if t != getattr(u, kind + "_target"):
            setattr(u, kind + "_target", t)
            setattr(u, kind + "_r", [NEVER] * RING_SIZE)
            setattr(u, kind + "_n", 0)
            u.flags &= ~flag
        if self._burst(u, kind + "_r", kind + "_n", flag, te, window, need):
            self._names.remember(t, target)
            return True
        return False

    def _navigate(self, u: _User, s: int, step: str, te: float) -> None:
        self._names.remember(s, step)
        if u.step != 0:
            dur = te - u.step_ts
            if dur <= self._cfg.detectors.stall.max_duration:
                self._record_duration(u.step, dur)
            ut = self._cfg.detectors.uturn
            if ut.enabled and s == u.prev_step and dur <= ut.bounce:
                if te - (u.base + u.uturn_t) > ut.window:
                    u.uturn_n = 1
                    u.uturn_t = f32(te - u.base)
                    u.flags &= ~F_UTURN
                elif u.uturn_n < 255:
                    u.uturn_n += 1
                if u.uturn_n >= ut.min_uturns and not u.flags & F_UTURN:
                    u.flags |= F_UTURN
                    self._activate(u, UTURN, ut.weight)
        u.prev_step = u.step
        u.step = s
        u.step_ts = te
        u.flags &= ~F_STALL

    def _record_duration(self, step: int, duration: float) -> None:
        counts = self._steps.get(step)
        if counts is None:
            if len(self._steps) >= self._cfg.max_steps:
                return
            counts = self._steps[step] = [0] * (N_BUCKETS + 1)
        if counts[0] < _U32:
            counts[0] += 1
            counts[1 + bucket_of(duration)] += 1

    def _check_stall(self, u: _User, te: float) -> None:
        st = self._cfg.detectors.stall
        if not st.enabled or u.step == 0 or u.flags & F_STALL:
            return
        limit = self.stall_limit(u.step)
        if limit >= 0.0 and te - u.step_ts > limit:
            u.flags |= F_STALL
            self._activate(u, STALL, st.weight)

    def _check_episode(self, u: _User, te: float, code: int, account: str | None,
                       step: str | None, target: str | None) -> float:  # fmt: skip
        sc = self._cfg.scoring
        score = self._current(u)
        if u.flags & F_IN_EPISODE:
            if score < sc.rearm:
                u.flags &= ~F_IN_EPISODE
        elif (
            score >= sc.threshold
            and code != ev.TICKET
            and (not u.flags & F_HAS_EPISODE or te - u.episode_ts >= sc.cooldown)
        ):
            u.flags |= F_IN_EPISODE | F_HAS_EPISODE
            u.episode_ts = te
            if u.episodes < _U16:
                u.episodes += 1
            u.episode_score = f32(score)
            self.counters["episodes"] += 1
            self._on_episode(self._record(u), u.uid, account, step, target, te, score, self.stall_limit(u.step))
        return score

    @staticmethod
    def _record(u: _User) -> np.void:
        rec = np.zeros(1, dtype=SLOT_DTYPE)[0]
        u.to_record(rec)
        return rec


_COLUMNS = ("user_id", "type", "ts", "step", "target", "account_id")
_INT_COLUMNS = ("status", "results")
_ALLOWED = frozenset(_COLUMNS + _INT_COLUMNS + ("properties",))


def columns_of(batch: Mapping[str, Any], keep_ts_array: bool = False) -> tuple[int, dict[str, Any]]:
    """Validate a columnar batch and normalise its columns; returns ``(rows, columns)``.

    A batch is parallel sequences keyed by event field (``user_id`` and ``type`` required),
    plus optional integer ``status`` and ``results`` columns (-1 or None for none) standing for
    those properties. other columns become lists of Python values (``ts`` may stay a float64
    array for the compiled core); integer columns become int64 arrays. Raises ``InvalidEvent``
    naming the column.
    """
    for name in batch:
        if name not in _ALLOWED:
            raise ev.InvalidEvent(name, f"is not a column; expected one of {', '.join(sorted(_ALLOWED))}")
    for name in ("user_id", "type"):
        if batch.get(name) is None:
            raise ev.InvalidEvent(name, "column is required")
    try:
        n = len(batch["user_id"])
    except TypeError:
        raise ev.InvalidEvent("user_id", "column must be a sequence") from None
    cols: dict[str, Any] = {}
    for name, col in batch.items():
        if col is None:
            continue
        try:
            size = len(col)
        except TypeError:
            raise ev.InvalidEvent(name, f"column must be a sequence, not {type(col).__name__}") from None
        if size != n:
            raise ev.InvalidEvent(name, f"column has {size} rows, user_id has {n}")
        if name in _INT_COLUMNS:
            col = _int_column(col)
        elif isinstance(col, np.ndarray):
            if name == "ts" and keep_ts_array and col.dtype.kind in "fiu":
                col = np.ascontiguousarray(col, dtype=np.float64)
            else:
                col = col.tolist()
        elif type(col) is not list:
            col = list(col)
        cols[name] = col
    return n, cols


def _int_column(col: Any) -> np.ndarray:
    """A status/results column as int64, -1 where an entry is no value (see ``int_value``)."""
    if isinstance(col, np.ndarray) and col.dtype.kind in "iu":
        a = col.astype(np.int64)
        return np.where((a >= 0) & (a < (1 << 31)), a, -1)
    if isinstance(col, np.ndarray) and col.dtype.kind == "f":
        a = col.astype(np.float64)
        ok = np.isfinite(a) & (np.floor(a) == a) & (a >= 0) & (a < (1 << 31))
        return np.where(ok, np.where(ok, a, 0).astype(np.int64), -1)
    return np.array([ev.int_value(x) for x in col], dtype=np.int64)


def columns_to_rows(cols: Mapping[str, Any], start: int, stop: int) -> Iterable[dict[str, Any]]:
    """Event dicts of rows ``start:stop`` of normalised columns (see :func:`columns_of`)."""
    present = [c for c in _COLUMNS if c in cols]
    props = cols.get("properties")
    ints = [c for c in _INT_COLUMNS if c in cols]
    for i in range(start, stop):
        row = {}
        for c in present:
            value = cols[c][i]
            row[c] = value.item() if isinstance(value, np.generic) else value
        if props is not None or ints:
            p = props[i] if props is not None else None
            if ints and (p is None or isinstance(p, Mapping)):
                p = dict(p or {})
                for c in ints:
                    if cols[c][i] >= 0:
                        p[c] = int(cols[c][i])
            row["properties"] = p
        yield row
