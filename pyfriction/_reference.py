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

The steps are module-level functions at the end of this file, one per scoring step and per
detector (``decay``, ``rage_click``, ..., ``crossing``), each reading the parameters ``P``
(``Rules.p``) and one user's state; ``ReferenceCore.update`` calls them in order. The compiled
core's ``_core/spec.pxi`` has the same functions with the same names, in the same order.
"""

from __future__ import annotations

import itertools
import math
import os
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from contextlib import AbstractContextManager
from typing import Any

import numpy as np

from . import _constants as K
from . import events as ev
from ._constants import COUNTER_NAMES, LATCHES, U8_MAX, U16_MAX, U32_MAX
from ._engine import EpisodeSink, OutcomeSink
from ._hashing import key32, key64
from ._layout import (
    CUSTOM,
    DEAD_CLICK,
    EMPTY_SEARCH,
    ERROR_BURST,
    ERROR_CLICK,
    F_CLICK_USED,
    F_DONE,
    F_ERR,
    F_FAIL_MIXED,
    F_HAS_EPISODE,
    F_IN_EPISODE,
    F_RAGE,
    F_SLOW,
    F_STUCK,
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


class _User:
    """One tracked user: the fields of a slot (see ``_layout.SLOT_DTYPE``)."""

    __slots__ = (
        "key", "uid", "last_ts", "episode_ts", "step_ts", "base",
        "click_r", "err_r", "dead_t", "uturn_t", "fail_t", "fail_t0", "search_t", "stall_t", "p_off",
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
        self.err_r = [NEVER] * RING_SIZE
        self.dead_t = self.uturn_t = self.fail_t = self.fail_t0 = self.search_t = self.stall_t = NEVER
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


_UID_AT: int = SLOT_DTYPE.fields["uid"][1]  # type: ignore[index]  # a structured dtype: fields is set


def _uid_of(rec: Any, long_ids: Mapping[int, str]) -> str:
    n = int(rec["uid_len"])
    if n == UID_LONG:
        return long_ids[int(rec["key"])]
    # Not rec["uid"]: numpy strips trailing NUL bytes from an "S" field, and an id may end in one.
    raw: bytes = rec.tobytes()
    return raw[_UID_AT : _UID_AT + n].decode("utf-8", "surrogatepass")


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
    #: Never used: the reference delivers as it goes, and a ``file://`` store (the one store
    #: whose sessions matter) needs the compiled core.
    deliver_session: Callable[[], AbstractContextManager[None]] | None = None

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
        self._note = 0  # NOTE_* bits the last update left (names to remember)
        self._fired: tuple[dict[str, Any], float, float, float] | None = None  # its episode
        _live.add(self)
        self.counters = dict.fromkeys(COUNTER_NAMES, 0)
        # Users evicted since the last drain_evicted (None: tracking off), and whether more
        # than EVICTED_MAX were (the compiled core's ev_* buffer).
        self._evicted: list[str] | None = None
        self._ev_over = False

    # -- public surface (same as the compiled core) ---------------------------------------
    def observe(self, event: Any) -> float:
        with self._lock:
            try:
                parsed = ev.parse_event(event, self._clock, self._rules.ts_range)
            except ev.InvalidEvent:
                self.counters["invalid"] += 1
                raise
            return self._apply(*parsed)

    def observe_many(self, events: Any) -> np.ndarray:
        if isinstance(events, Mapping):
            n, cols = ev.columns_of(events)
            rows: Iterable[Any] = ev.columns_to_rows(cols, 0, n)
        else:
            rows = events
        out = []
        with self._lock:
            for event in rows:
                try:
                    parsed = ev.parse_event(event, self._clock, self._rules.ts_range)
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

    def stall_need(self, step: int) -> float:
        """What users need on ``step`` (``Rules.stall_need``), -1.0 without a baseline."""
        counts = self._steps.get(step)
        return -1.0 if counts is None else self._rules.stall_need(counts[0], counts[1:])

    def stall_limit(self, step: int) -> float:
        return self._rules.limit_of(self.stall_need(step))

    def set_counters(self, counters: Mapping[str, int]) -> None:
        self.counters.update(counters)

    def __len__(self) -> int:
        return len(self._users)

    def track_evictions(self, on: bool = True) -> None:
        """Remember the users evicted from now on (see :meth:`drain_evicted`)."""
        self._evicted = [] if on else None
        self._ev_over = False

    def drain_evicted(self, unless_present: bool = False) -> list[str] | None:
        """The ids of the users evicted since the last call (oldest first), or None when more
        were than EVICTED_MAX: the caller then checks whom it still knows (``unless_present``:
        leave out those back in the table)."""
        with self._lock:
            if unless_present and self._evicted:
                self._evicted = [uid for uid in self._evicted if key64(uid) not in self._users]
            if self._evicted is None:
                return []
            out = None if self._ev_over else self._evicted
            self._evicted = []
            self._ev_over = False
            return out

    def has(self, user_id: str) -> bool:
        """True when ``user_id`` is in the table."""
        return key64(user_id) in self._users

    def _evict_oldest(self) -> None:
        u = self._users.popitem(last=False)[1]
        self.counters["evictions"] += 1
        if self._evicted is not None:
            if len(self._evicted) < K.EVICTED_MAX:
                self._evicted.append(u.uid)
            else:
                self._ev_over = True

    def tick(self, now: float) -> int:
        with self._lock:
            before = self.counters["episodes"]
            if self._idle_ttl is not None:
                self._evict_idle(now)
            for key in list(self._users):
                u = self._users.get(key)
                if u is None:  # evicted by a callback's observe
                    continue
                decay(self._rules.p, u, u.last_ts + u.p_off, now)
                te = now if now > u.last_ts else u.last_ts
                self._fired = None
                self.check_stall(u, te)
                self.check_episode(u, te, 0)
                if self._fired is not None:
                    self._emit(u, None, None, None)
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
        users: OrderedDict[int, _User] = OrderedDict()
        for rec in slots[skip:]:
            # The same checks as the compiled core's load: a damaged export is refused whole.
            key = int(rec["key"])
            if key == 0:
                raise ValueError("snapshot holds a user with key 0")
            if key in users:
                raise ValueError("snapshot holds a user twice")
            u = _User.from_record(rec, _uid_of(rec, long_ids))
            users[key] = u
        self._users = users
        self.counters["evictions"] += skip
        for rec in steps[: self._cfg.max_steps]:
            self._steps[int(rec["key"])] = [int(rec["count"])] + [int(x) for x in rec["buckets"]]

    # -- the specification: the steps that need the tables (core: spec.pxi, same names) -----
    def _apply(self, uid: str, kind: str, ts: float, step: str | None, target: str | None,
               account: str | None, status: int, results: int) -> float:  # fmt: skip
        """One valid event (core: ``apply`` in intake.pxi)."""
        rules = self._rules
        counters = self.counters
        counters["events"] += 1
        code = rules.type_codes.get(kind, K.UNKNOWN)
        key = key64(uid)
        u = self._users.get(key)
        if code == K.UNKNOWN or rules.excluded_step(step) or rules.excluded_target(target):
            counters["unknown" if code == K.UNKNOWN else "excluded"] += 1
            return 0.0 if u is None else current(u)
        step_k = key32(step) if code == K.PAGE and step is not None else 0
        target_k = key32(target) if K.TARGET_FIRST <= code <= K.TARGET_LAST and target is not None else 0
        if u is None:
            u = self._insert(key, uid, ts)
        else:
            self._users.move_to_end(key)
        self._fired = None
        score = self.update(u, code, ts, step_k, target_k, status, results)
        self._settle(step_k, step, target_k, target)
        if self._fired is not None:
            self._emit(u, account, step, target)
        if K.OUTCOME_FIRST <= code <= K.OUTCOME_LAST:
            self._on_outcome(ev.TYPE_NAMES[code], uid, account, step, target, u.last_ts)
        return score

    def _settle(self, step_k: int, step: str | None, target_k: int, target: str | None) -> None:
        """Remember the names the update noted (core: ``settle``)."""
        note, self._note = self._note, 0
        if note & NOTE_STEP and step is not None:  # the note implies the name
            self._names.remember(step_k, step)
        if note & NOTE_TARGET and target is not None:
            self._names.remember(target_k, target)

    def _emit(self, u: _User, account: str | None, step: str | None, target: str | None) -> None:
        """Report the episode the last update fired (core: ``emit``)."""
        fired, self._fired = self._fired, None
        assert fired is not None
        rec, te, score, stall_need = fired
        self._on_episode(rec, u.uid, account, step, target, te, score, stall_need)

    def update(self, u: _User, code: int, ts: float, step_k: int, target_k: int, status: int,
               results: int) -> float:  # fmt: skip
        """The event's effect on one user (core: ``update``)."""
        P = self._rules.p
        p = u.last_ts + u.p_off  # when the pressures are valued
        te = ts if ts > u.last_ts else u.last_ts  # a late event counts as happening now
        u.last_ts = te
        if u.events < U32_MAX:
            u.events += 1
        if te - u.base > REBASE_AFTER:
            rebase(u, te)
        if not decay(P, u, p, te):
            u.p_off = f32(p - te)  # still valued later than the event (a tick ran ahead)
        # Stall is judged while the user is still on the step: an event that moves them on
        # ends the visit instead (its duration feeds the step's baseline).
        if code == K.PAGE and step_k != 0 and step_k != u.step:
            self.navigate(u, step_k, te)
        else:
            self.check_stall(u, te)

        if code == K.CLICK:
            # A click that selected text or scrolled (``events.results_of``) is not rage.
            if rage_click(P, u, target_k, te, results == K.SELECTION):
                self._note |= NOTE_TARGET
        elif code == K.DEAD_CLICK:
            if dead_click(P, u, target_k, te):
                self._note |= NOTE_TARGET
        elif code == K.ERROR or code == K.API_ERROR or code == K.FORM_ERROR:
            factor = self.error_factor(code, status)
            error_burst(P, u, te, factor)
            error_click(P, u, te, factor)
            if repeat_failure(P, u, target_k, te, factor):
                self._note |= NOTE_TARGET
        elif code == K.SEARCH:
            empty_search(P, u, results, te)
        elif code == K.HELP or code == K.CONTACT:
            help_seeking(P, u, code)
        elif code == K.SUCCESS:
            success(P, u)
        elif code == K.TICKET:
            self.counters["tickets"] += 1
        elif code >= K.CUSTOM_BASE:
            custom(P, u, code)
        return self.check_episode(u, te, code)

    def error_factor(self, code: int, status: int) -> float:
        """An api_error's status scales the error detectors: ``ordinary_factor`` for an
        ordinary status, ``refusal_factor`` for a refusal, 1 otherwise."""
        if code == K.API_ERROR:
            if status in self._rules.ordinary_statuses:
                return float(self._rules.p.ordinary_factor)
            if status in self._rules.refusal_statuses:
                return float(self._rules.p.refusal_factor)
        return 1.0

    def check_stall(self, u: _User, te: float) -> None:
        P = self._rules.p
        # The limit is at least stall_min_s: within it there is nothing to judge (the core
        # skips the baseline's lookup there).
        if not P.stall_on or u.step == 0 or u.flags & F_DONE or te - u.step_ts <= P.stall_min_s:
            return
        stall(self._rules.p, u, self.stall_limit(u.step), te)

    def navigate(self, u: _User, s: int, te: float) -> None:
        """A page event to another step ends the visit: its duration joins the step's
        histogram, a quick return is a u-turn, and the new step is entered (its name noted)."""
        P = self._rules.p
        self._note |= NOTE_STEP
        if u.step != 0:
            dur = te - u.step_ts
            # A visit that saw an episode, help or contact was a stuck user: it would teach
            # the step that being stuck is normal.
            if dur <= P.stall_max_dur and not u.flags & F_STUCK:
                self._record_duration(u.step, dur)
            uturn(P, u, s, dur, te)
        u.prev_step = u.step
        u.step = s
        u.step_ts = te
        u.stall_t = NEVER
        u.flags &= ~(F_STUCK | F_DONE)

    def _record_duration(self, step: int, duration: float) -> None:
        counts = self._steps.get(step)
        if counts is None:
            if len(self._steps) >= self._cfg.max_steps:
                return
            counts = self._steps[step] = [0] * (N_BUCKETS + 1)
        if counts[0] < U32_MAX:
            counts[0] += 1
            counts[1 + bucket_of(duration)] += 1

    def check_episode(self, u: _User, te: float, code: int) -> float:
        """The score, and an episode when it crosses (reported by ``_emit``)."""
        score = current(u)
        if crossing(self._rules.p, u, score, te, code):
            self.counters["episodes"] += 1
            self._fired = (slot_fields(u), te, score, self.stall_need(u.step))
        return score

    # -- the table ---------------------------------------------------------------------------
    def _insert(self, key: int, uid: str, ts: float) -> _User:
        if self._idle_ttl is not None:
            self._evict_idle(ts)
        if len(self._users) >= self._capacity:
            self._evict_oldest()
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
            self._evict_oldest()

    @staticmethod
    def _record(u: _User) -> np.void:
        rec: np.void = np.zeros(1, dtype=SLOT_DTYPE)[0]
        u.to_record(rec)
        return rec


# --- the specification: one function per scoring step and per detector ------------------------
# Named and ordered as the compiled core's kernels (_core/spec.pxi). ``P`` is ``Rules.p``, the
# same parameter values the core copies into its C struct; ``u`` one user's state.

NOTE_STEP = 1  # the update entered a step: remember its name
NOTE_TARGET = 2  # ... a detector fired on a target: remember its name


def rebase(u: _User, te: float) -> None:
    """Re-express every time offset from the new base ``te``. Entries older than any
    window lose precision, which cannot matter: they are outside every window either way."""
    shift = u.base
    for ring in (u.click_r, u.err_r):
        for i in range(RING_SIZE):
            ring[i] = f32((shift + ring[i]) - te)
    u.dead_t = f32((shift + u.dead_t) - te)
    u.uturn_t = f32((shift + u.uturn_t) - te)
    u.fail_t = f32((shift + u.fail_t) - te)
    u.fail_t0 = f32((shift + u.fail_t0) - te)
    u.search_t = f32((shift + u.search_t) - te)
    u.stall_t = f32((shift + u.stall_t) - te)
    u.base = te


def decay(P: Any, u: _User, p_ts: float, t: float) -> bool:
    """Value the pressures (valued at ``p_ts``) at ``t`` if later; False if not."""
    dt = t - p_ts
    if dt > 0.0:
        f = math.exp(-dt * P.decay_rate)
        p = u.pressure
        for i in range(N_DETECTORS):
            p[i] = f32(p[i] * f)
        u.p_off = f32(t - u.last_ts)
        return True
    return False


def activate(u: _User, detector: int, weight: float) -> None:
    """A detector fired: its weight joins its pressure."""
    u.pressure[detector] = f32(u.pressure[detector] + weight)


def current(u: _User) -> float:
    """The score: ``1 - exp(-sum of the pressures)``."""
    total = 0.0
    for p in u.pressure:
        total += p
    return 1.0 - math.exp(-total)


def crossing(P: Any, u: _User, score: float, te: float, code: int) -> bool:
    """Rearm below ``rearm``; True when ``score`` starts an episode (threshold reached, not
    on a ticket, cooldown over); the state then records it."""
    if u.flags & F_IN_EPISODE:
        if score < P.rearm:
            u.flags &= ~F_IN_EPISODE
        return False
    if score >= P.threshold and code != K.TICKET and (not u.flags & F_HAS_EPISODE or te - u.episode_ts >= P.cooldown):
        u.flags |= F_IN_EPISODE | F_HAS_EPISODE | F_STUCK
        u.episode_ts = te
        if u.episodes < U16_MAX:
            u.episodes += 1
        u.episode_score = f32(score)
        return True
    return False


# --- run helpers -------------------------------------------------------------------------------
def burst(u: _User, ring_name: str, n_name: str, flag: int, te: float, window: float, need: int) -> bool:
    """Push ``te`` into a ring; True when this event makes ``need`` within ``window`` and the
    run has not activated yet. A gap longer than ``window`` starts a new run."""
    ring = getattr(u, ring_name)
    n = getattr(u, n_name)
    if te - (u.base + ring[0]) > window:
        n = 0
        u.flags &= ~flag
    within = within_window(u, ring, te, window)
    ring.insert(0, f32(te - u.base))
    ring.pop()
    setattr(u, n_name, n + 1 if n < U8_MAX else U8_MAX)
    if within >= need and not u.flags & flag:
        u.flags |= flag
        return True
    return False


def within_window(u: _User, ring: list[float], te: float, window: float) -> int:
    """Events a new one at ``te`` makes within ``window``: itself and the ring's recent ones."""
    within = 1
    for x in ring:
        if te - (u.base + x) <= window:
            within += 1
        else:
            break
    return within


def run_length(u: _User, last_name: str, n_name: str, te: float, window: float) -> int:
    """A run of events each within ``window`` of the one before: the run's length with this
    one (1 when it starts a new run); ``last_name`` becomes ``te``."""
    n = getattr(u, n_name)
    if te - (u.base + getattr(u, last_name)) <= window:
        if n < U8_MAX:
            n += 1
    else:
        n = 1
    setattr(u, n_name, n)
    setattr(u, last_name, f32(te - u.base))
    return int(n)


# --- detectors, in the order of their indices ----------------------------------------------------
def rage_click(P: Any, u: _User, t: int, te: float, selection: bool) -> bool:
    """rage_click on a click: ``rage_need`` clicks on one target within ``rage_win`` (fast),
    or ``slow_need`` within ``slow_win`` on a target that gave a dead click meanwhile (slow:
    an element that does not respond), once per run each. A click that selected text or
    scrolled vetoes the run, as Datadog's does. Also keeps the last click for
    ``error_click``. True: it fired (the caller remembers the target's name)."""
    if t == 0:
        return False
    if t != u.click_target:
        u.click_target = t
        u.click_r = [NEVER] * RING_SIZE
        u.click_n = 0
        u.flags &= ~(F_RAGE | F_SLOW)
    gap = te - (u.base + u.click_r[0])
    if gap > P.rage_win:
        u.flags &= ~F_RAGE
    if gap > P.slow_win:
        u.flags &= ~F_SLOW
        u.click_n = 0
    fast = within_window(u, u.click_r, te, P.rage_win)
    slow = within_window(u, u.click_r, te, P.slow_win)
    u.click_r.insert(0, f32(te - u.base))
    u.click_r.pop()
    if u.click_n < U8_MAX:
        u.click_n += 1
    u.flags &= ~F_CLICK_USED
    if selection:
        u.flags |= F_RAGE | F_SLOW
        return False
    if not P.rage_on:
        return False
    if fast >= P.rage_need and not u.flags & F_RAGE:
        u.flags |= F_RAGE | F_SLOW  # the fast run includes the slow one
        activate(u, RAGE_CLICK, P.rage_w)
        return True
    return slow_rage(P, u, t, te, slow)


def slow_rage(P: Any, u: _User, t: int, te: float, clicks: int) -> bool:
    """The slow rage of ``rage_click``: ``clicks`` on ``t`` within ``slow_win`` of ``te``,
    and a dead click on it within ``slow_win`` (the browser script sends a click, and a
    second later a dead click when nothing responded: the dead click is not a click more)."""
    if (clicks >= P.slow_need and not u.flags & F_SLOW and u.dead_target == t
            and te - (u.base + u.dead_t) <= P.slow_win):  # fmt: skip
        u.flags |= F_SLOW
        activate(u, RAGE_CLICK, P.slow_w)
        return True
    return False


def dead_click(P: Any, u: _User, t: int, te: float) -> bool:
    """dead_click: every dead click adds ``dead_w`` once a run on one target (each within
    ``dead_win`` of the last) reaches ``dead_need``, ``dead_single_w`` before; it may
    complete a slow rage on the clicks before it."""
    if not P.dead_on:
        return False
    if t == 0:
        activate(u, DEAD_CLICK, P.dead_single_w if P.dead_need > 1 else P.dead_w)
        return False
    if t != u.dead_target:
        u.dead_target = t
        u.dead_n = 0
        u.dead_t = NEVER  # a new target starts a new run
    n = run_length(u, "dead_t", "dead_n", te, P.dead_win)
    activate(u, DEAD_CLICK, P.dead_w if n >= P.dead_need else P.dead_single_w)
    if P.rage_on and t == u.click_target:
        slow_rage(P, u, t, te, within_window(u, u.click_r, te, P.slow_win) - 1)
    return True


def error_burst(P: Any, u: _User, te: float, factor: float) -> None:
    """error_burst: ``err_need`` errors of any kind within ``err_win`` (weight times ``factor``)."""
    if P.err_on and burst(u, "err_r", "err_n", F_ERR, te, P.err_win, P.err_need):
        activate(u, ERROR_BURST, P.err_w * factor)


def repeat_failure(P: Any, u: _User, t: int, te: float, factor: float) -> bool:
    """repeat_failure: failures on a target (a field, an endpoint), each within ``fail_win`` of
    the last, on the same target or the same step visit; from the ``fail_need``-th on each adds
    ``fail_w`` (same target as the last) or ``area_w`` (another target), times ``factor``. A
    failure that names no target (a page's stray script error) is no attempt of the user's."""
    if not P.fail_on or t == 0:
        return False
    last = u.base + u.fail_t
    same = t == u.fail_target
    if te - last <= P.fail_win and (same or last >= u.step_ts):
        if u.fail_n < U8_MAX:
            u.fail_n += 1
        if not same:
            u.flags |= F_FAIL_MIXED
    else:
        u.fail_n = 1
        u.fail_t0 = f32(te - u.base)
        u.flags &= ~F_FAIL_MIXED
    u.fail_t = f32(te - u.base)
    u.fail_target = t
    if u.fail_n >= P.fail_need:
        activate(u, REPEAT_FAILURE, (P.fail_w if same else P.area_w) * factor)
        return True
    return False


def uturn(P: Any, u: _User, s: int, dur: float, te: float) -> None:
    """uturn: back to the step before within ``uturn_bounce`` seconds; from the
    ``uturn_need``-th of a run on (each within ``uturn_win`` of the last) each adds
    ``uturn_w``, before that ``uturn_single_w``."""
    if not (P.uturn_on and s == u.prev_step and dur <= P.uturn_bounce):
        return
    n = run_length(u, "uturn_t", "uturn_n", te, P.uturn_win)
    activate(u, UTURN, P.uturn_w if n >= P.uturn_need else P.uturn_single_w)


def empty_search(P: Any, u: _User, results: int, te: float) -> None:
    """empty_search: searches with no result; from the ``search_need``-th of a run on (each
    within ``search_win`` of the last) each adds ``search_w``, before that ``search_single_w``."""
    if P.search_on and results == 0:
        n = run_length(u, "search_t", "search_n", te, P.search_win)
        activate(u, EMPTY_SEARCH, P.search_w if n >= P.search_need else P.search_single_w)


def help_seeking(P: Any, u: _User, code: int) -> None:
    """help_seeking: every help or contact event; boosted when other friction is already high.
    The visit is then a stuck one (out of the step's baseline)."""
    u.flags |= F_STUCK
    if not P.help_on:
        return
    w = P.help_w if code == K.HELP else P.contact_w
    other = 0.0
    for i in range(N_DETECTORS):
        if i != HELP_SEEKING:
            other += u.pressure[i]
    if other >= P.after_friction:
        w *= P.boost
    activate(u, HELP_SEEKING, w)


def stall(P: Any, u: _User, limit: float, te: float) -> None:
    """stall: past the step's ``limit``, the stall pressure is at least ``stall_w`` per
    ``limit`` seconds beyond it: a level set from the time on the step (not added), so it
    grows while the user stays, whatever the decay, and does not depend on how often it is
    judged."""
    if limit <= 0.0:
        return
    over = te - (u.step_ts + limit)
    if over > 0.0:
        level = f32(P.stall_w * over / limit)
        if level > u.pressure[STALL]:
            u.pressure[STALL] = level
        u.stall_t = f32(te - u.base)


def custom(P: Any, u: _User, code: int) -> None:
    """custom: a config-mapped event with a weight of its own."""
    u.custom = code - K.CUSTOM_BASE
    activate(u, CUSTOM, P.custom_w[u.custom])


def error_click(P: Any, u: _User, te: float, factor: float) -> None:
    """error_click: an error within ``eclick_win`` of a click on this step visit, once per click."""
    if not P.eclick_on or u.flags & F_CLICK_USED:
        return
    clicked = u.base + u.click_r[0]
    if te - clicked <= P.eclick_win and clicked >= u.step_ts:
        u.flags |= F_CLICK_USED
        activate(u, ERROR_CLICK, P.eclick_w * factor)


def success(P: Any, u: _User) -> None:
    """A success relieves the pressures, ends every run and the visit's stall."""
    keep = P.keep_after_success
    for i in range(N_DETECTORS):
        u.pressure[i] = f32(u.pressure[i] * keep)
    u.click_r = [NEVER] * RING_SIZE
    u.err_r = [NEVER] * RING_SIZE
    u.dead_t = u.uturn_t = u.fail_t = u.fail_t0 = u.search_t = NEVER
    u.click_n = u.dead_n = u.err_n = u.fail_n = u.uturn_n = u.search_n = 0
    u.flags &= ~(LATCHES | F_FAIL_MIXED)
    u.flags |= F_DONE


def slot_fields(u: _User) -> dict[str, Any]:
    """The fields of a user's state that ``_episodes.make_episode`` reads (core: ``slot_fields``)."""
    return {
        "key": u.key, "step": u.step, "prev_step": u.prev_step, "step_ts": u.step_ts, "base": u.base,
        "pressure": list(u.pressure), "click_r": list(u.click_r), "err_r": list(u.err_r),
        "click_n": u.click_n, "click_target": u.click_target, "dead_n": u.dead_n,
        "dead_target": u.dead_target, "err_n": u.err_n, "fail_target": u.fail_target,
        "fail_n": u.fail_n, "fail_t": u.fail_t, "fail_t0": u.fail_t0, "flags": u.flags,
        "uturn_n": u.uturn_n, "search_n": u.search_n, "custom": u.custom,
    }  # fmt: skip
