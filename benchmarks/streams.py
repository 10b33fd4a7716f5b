"""A deterministic, realistic event stream over many distinct users, generated fast.

Every user has one session that starts at a random time within ``span`` seconds and is a
sequence of *motifs*: short event templates a real front end produces (a page view, a
click, a rage burst on one button, a pair of dead clicks, a form field rejected again and
again, an API error burst, searches with and without results, help and contact views,
success, a ticket, a navigation loop, a long stall on a step). Every session opens with a
page view, so every event carries the step its user is on. All canonical event types and
every default detector are in play; most motifs are ordinary use, some are struggles.

Generation is numpy-vectorised (motifs are expanded with ``np.repeat`` and a segmented
cumulative sum gives each user's clock), then sorted by time across users; only the final
conversion to Python ``str`` lists touches every event in Python, and it goes through object
arrays of prebuilt strings (``user-0000042``, small pools of steps and targets).

    stream = generate(1_000_000)          # ~2.6 M events, every user at least once
    batch = stream.columns()              # columnar batch for ``observe_many``
    events = stream.dicts(0, 100_000)     # the same events as dicts for ``observe``

The :class:`Stream` itself only holds compact numpy arrays (about 30 bytes per event), so
the dict form is built for the slice that is needed rather than for millions of events.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import numpy as np

__all__ = ["MOTIFS", "STEPS", "T0", "TARGETS", "TYPES", "Stream", "generate", "user_pool"]

#: Epoch of the first session start (2023-11-14T22:13:20Z).
T0 = 1_700_000_000.0

TYPES = (
    "page", "click", "dead_click", "error", "api_error", "form_error", "search",
    "help", "contact", "success", "ticket",
)  # fmt: skip
_T = {name: i for i, name in enumerate(TYPES)}

STEPS = (
    "dashboard", "import.upload", "import.mapping", "import.review", "billing.plan",
    "billing.card", "settings.profile", "settings.team", "reports", "integrations",
)  # fmt: skip
#: Relative popularity of the steps (the dashboard and the import wizard are busiest).
STEP_WEIGHTS = (18, 12, 10, 8, 8, 6, 7, 6, 15, 10)

# Target pools, by kind: (name, targets). A motif draws one target of its kind and all its
# targeted events use it (a rage burst hammers one button, a repeat failure is one field).
_POOLS = {
    "button": ("#save", "#next", "#continue", "#pay-now", "#upload", "#export", "#invite",
               "#confirm-import", "#plan-pro", "#map-columns", "#choose-file", "#nav-reports"),
    "text": (".page-title", ".pricing-note", ".help-text", "td.amount", ".breadcrumb", "img.logo"),
    "field": ("#date-format", "#email", "#card-expiry", "#card-number", "#column-map", "#team-name"),
    "api": ("POST /api/imports", "POST /api/payments", "GET /api/reports/export",
            "POST /api/invites", "GET /api/integrations", "js:TypeError"),
    "search": ("#search",),
    "help": ("#help", "#docs-link", "#contact-us"),
}  # fmt: skip
TARGETS: tuple[str, ...] = tuple(t for pool in _POOLS.values() for t in pool)
_POOL_RANGE: dict[str, tuple[int, int]] = {}
_at = 0
for _kind, _pool in _POOLS.items():
    _POOL_RANGE[_kind] = (_at, len(_pool))
    _at += len(_pool)

# Step modes of a template event: inherit the user's current step, or enter the motif's
# first (A) or second (B) step.
INHERIT, STEP_A, STEP_B = 0, 1, 2
# Integer properties: none, an HTTP status drawn for the motif, a result count > 0, zero.
P_NONE, P_STATUS, P_HITS, P_ZERO = 0, 1, 2, 3

# name -> (weight, target kind or None, [(type, gap_lo, gap_hi, step mode, targeted, prop)])
# ``gap`` is the time since the user's previous event (the first one is think time).
# The weights of the struggles are tuned so that episodes stay occasional (about 8 per 1,000
# events): a session here is only a few events long, so struggles must not be dense in it.
# Retuned for the accumulating detectors (issue 15): three empty searches and a stall now fire
# alone, and the weak signals of a heavy user (dead clicks, u-turns, help) add up, so those
# motifs (and help) are rarer than before (it was about 6 per 1,000 with the old detectors).
MOTIFS: dict[str, tuple[float, str | None, list[tuple[str, float, float, int, bool, int]]]] = {
    "page": (12, None, [("page", 2.0, 40.0, STEP_A, False, P_NONE)]),
    "click": (24, "button", [("click", 1.0, 12.0, INHERIT, True, P_NONE)]),
    "double_click": (
        4,
        "button",
        [("click", 1.0, 10.0, INHERIT, True, P_NONE), ("click", 0.12, 0.3, INHERIT, True, P_NONE)],
    ),
    "rage_click": (
        0.3,
        "button",
        [("click", 1.0, 8.0, INHERIT, True, P_NONE)] + [("click", 0.08, 0.3, INHERIT, True, P_NONE)] * 4,
    ),
    "dead_click": (1.2, "text", [("dead_click", 1.0, 15.0, INHERIT, True, P_NONE)]),
    "dead_click_pair": (
        0.4,
        "text",
        [("dead_click", 1.0, 10.0, INHERIT, True, P_NONE), ("dead_click", 0.5, 6.0, INHERIT, True, P_NONE)],
    ),
    "form_error": (
        2,
        "field",
        [("form_error", 2.0, 20.0, INHERIT, True, P_NONE), ("click", 2.0, 8.0, INHERIT, False, P_NONE)],
    ),
    "repeat_failure": (
        0.5,
        "field",
        [
            ("form_error", 2.0, 15.0, INHERIT, True, P_NONE),
            ("click", 2.0, 10.0, INHERIT, False, P_NONE),
            ("form_error", 0.3, 2.0, INHERIT, True, P_NONE),
        ],
    ),
    "api_error": (1.5, "api", [("api_error", 0.5, 10.0, INHERIT, True, P_STATUS)]),
    "error": (0.8, "api", [("error", 1.0, 20.0, INHERIT, True, P_NONE)]),
    "error_burst": (
        0.25,
        "api",
        [
            ("api_error", 1.0, 5.0, INHERIT, True, P_STATUS),
            ("error", 0.5, 5.0, INHERIT, True, P_NONE),
            ("api_error", 1.0, 8.0, INHERIT, True, P_STATUS),
        ],
    ),
    "search": (5, "search", [("search", 2.0, 15.0, INHERIT, True, P_HITS)]),
    "empty_search": (
        2,
        "search",
        [("search", 2.0, 15.0, INHERIT, True, P_ZERO), ("search", 3.0, 20.0, INHERIT, True, P_HITS)],
    ),
    "empty_searches": (
        0.05,
        "search",
        [
            ("search", 2.0, 15.0, INHERIT, True, P_ZERO),
            ("search", 3.0, 20.0, INHERIT, True, P_ZERO),
            ("search", 3.0, 20.0, INHERIT, True, P_ZERO),
        ],
    ),
    "help": (1.2, "help", [("help", 2.0, 30.0, INHERIT, True, P_NONE)]),
    "contact": (0.4, "help", [("contact", 2.0, 30.0, INHERIT, True, P_NONE)]),
    "success": (8, "button", [("success", 0.3, 3.0, INHERIT, True, P_NONE)]),
    "ticket": (0.2, None, [("ticket", 30.0, 300.0, INHERIT, False, P_NONE)]),
    "uturn": (
        0.25,
        None,
        [
            ("page", 2.0, 20.0, STEP_A, False, P_NONE),
            ("page", 2.0, 10.0, STEP_B, False, P_NONE),
            ("page", 2.0, 10.0, STEP_A, False, P_NONE),
            ("page", 2.0, 10.0, STEP_B, False, P_NONE),
        ],
    ),
    "stall": (
        0.04,
        "button",
        [("page", 2.0, 20.0, STEP_A, False, P_NONE), ("click", 400.0, 1500.0, INHERIT, True, P_NONE)],
    ),
}

STATUSES = np.array([500, 502, 503, 401, 404, 422], dtype=np.int32)
STATUS_WEIGHTS = np.array([30, 10, 25, 15, 15, 5], dtype=np.float64)


def _tables() -> dict[str, np.ndarray]:
    """The motif templates as padded 2-D arrays, indexed [motif, position]."""
    k = len(MOTIFS)
    width = max(len(t[2]) for t in MOTIFS.values())
    tab = {
        "length": np.zeros(k, np.int64),
        "weight": np.zeros(k, np.float64),
        "pool_lo": np.zeros(k, np.int64),
        "pool_n": np.ones(k, np.int64),
        "has_pool": np.zeros(k, bool),
        "type": np.zeros((k, width), np.int8),
        "gap_lo": np.zeros((k, width), np.float64),
        "gap_hi": np.zeros((k, width), np.float64),
        "step_mode": np.zeros((k, width), np.int8),
        "targeted": np.zeros((k, width), bool),
        "prop": np.zeros((k, width), np.int8),
    }
    for m, (weight, kind, events) in enumerate(MOTIFS.values()):
        tab["length"][m] = len(events)
        tab["weight"][m] = weight
        if kind is not None:
            tab["pool_lo"][m], tab["pool_n"][m] = _POOL_RANGE[kind]
            tab["has_pool"][m] = True
        for p, (kind_name, lo, hi, mode, targeted, prop) in enumerate(events):
            tab["type"][m, p] = _T[kind_name]
            tab["gap_lo"][m, p], tab["gap_hi"][m, p] = lo, hi
            tab["step_mode"][m, p] = mode
            tab["targeted"][m, p] = targeted and kind is not None
            tab["prop"][m, p] = prop
    return tab


_POOL_CACHE: dict[int, np.ndarray] = {}


def user_pool(n: int) -> np.ndarray:
    """``user-0000000``, ``user-0000001``...: n distinct user id strings, as an object array
    (built once per n and kept; the batches share these ``str`` objects)."""
    pool = _POOL_CACHE.get(n)
    if pool is None:
        _POOL_CACHE.clear()
        pool = _POOL_CACHE[n] = _object_array([f"user-{i:07d}" for i in range(n)])
    return pool


@dataclasses.dataclass(eq=False)
class Stream:
    """A time-ordered event stream in compact form (one row per event)."""

    users: int  #: number of distinct users (each appears at least once)
    user: np.ndarray  #: int32 index into ``user_pool(users)``
    type: np.ndarray  #: int8 index into TYPES
    ts: np.ndarray  #: float64 seconds since the epoch, non-decreasing
    step: np.ndarray  #: int8 index into STEPS (every event has one)
    target: np.ndarray  #: int8 index into TARGETS, -1 for none
    status: np.ndarray  #: int32 HTTP status of an api_error, -1 for none
    results: np.ndarray  #: int32 result count of a search, -1 for none
    seconds: float = 0.0  #: time taken to generate the arrays

    def __len__(self) -> int:
        return len(self.ts)

    def __repr__(self) -> str:
        return f"<Stream: {len(self):,} events, {self.users:,} users>"

    @property
    def span(self) -> float:
        """Seconds from the first to the last event."""
        return float(self.ts[-1] - self.ts[0]) if len(self.ts) else 0.0

    def take(self, index: np.ndarray) -> Stream:
        """The events at ``index`` (sorted positions keep the time order), same user pool."""
        return dataclasses.replace(
            self, user=self.user[index], type=self.type[index], ts=self.ts[index], step=self.step[index],
            target=self.target[index], status=self.status[index], results=self.results[index],
        )  # fmt: skip

    def first_events(self) -> np.ndarray:
        """Positions of each user's first event (every user's opening page view)."""
        return np.sort(np.unique(self.user, return_index=True)[1])

    def type_counts(self) -> dict[str, int]:
        counts = np.bincount(self.type, minlength=len(TYPES))
        return {name: int(c) for name, c in zip(TYPES, counts)}

    def columns(self, start: int = 0, stop: int | None = None, *,
                fresh_ids: bool = False, ts_shift: float = 0.0) -> dict[str, Any]:  # fmt: skip
        """The events ``[start:stop]`` as a columnar batch: lists of ``str`` for user_id,
        type, step and target (None for no target), float64 ``ts`` and int32 ``status`` /
        ``results`` (-1 for none). ``fresh_ids`` builds new user id strings instead of
        sharing the pool's (for memory measurements); ``ts_shift`` is added to ``ts``."""
        sl = slice(start, stop)
        user = self.user[sl]
        if fresh_ids:
            user_ids = [f"user-{i:07d}" for i in user.tolist()]
        else:
            user_ids = user_pool(self.users)[user].tolist()
        ts = self.ts[sl]
        return {
            "user_id": user_ids,
            "type": _TYPE_OBJ[self.type[sl]].tolist(),
            "ts": ts + ts_shift if ts_shift else ts.copy(),
            "step": _STEP_OBJ[self.step[sl]].tolist(),
            "target": _TARGET_OBJ[self.target[sl]].tolist(),
            "status": self.status[sl].copy(),
            "results": self.results[sl].copy(),
        }

    def dicts(self, start: int = 0, stop: int | None = None, *, ts_shift: float = 0.0) -> list[dict[str, Any]]:
        """The events ``[start:stop]`` as event mappings, the way an SDK sends them: ``ts``
        a Python float, ``target`` left out when none, ``properties`` only with a
        ``status`` or ``results``."""
        cols = self.columns(start, stop, ts_shift=ts_shift)
        out: list[dict[str, Any]] = []
        append = out.append
        for uid, kind, ts, step, target, status, results in zip(
            cols["user_id"], cols["type"], cols["ts"].tolist(), cols["step"], cols["target"],
            cols["status"].tolist(), cols["results"].tolist(),
        ):  # fmt: skip
            event: dict[str, Any] = {"user_id": uid, "type": kind, "ts": ts, "step": step}
            if target is not None:
                event["target"] = target
            if status >= 0:
                event["properties"] = {"status": status}
            elif results >= 0:
                event["properties"] = {"results": results}
            append(event)
        return out


def _object_array(items: Any) -> np.ndarray:
    arr = np.empty(len(items), dtype=object)
    arr[:] = list(items)
    return arr


_TYPE_OBJ = _object_array(TYPES)
_STEP_OBJ = _object_array(STEPS)
_TARGET_OBJ = _object_array(TARGETS + (None,))  # index -1 picks the trailing None


def generate(users: int = 1_000_000, *, seed: int = 20231114, span: float = 6 * 3600.0,
             motifs_per_user: float = 1.3) -> Stream:  # fmt: skip
    """A stream over ``users`` distinct users, deterministic for a given seed.

    Each session opens with a page view and then runs ``Poisson(lam)`` further motifs, where
    most users are light (``lam`` = 0.4 x ``motifs_per_user``) and one in six is a heavy
    user (4 x), ``motifs_per_user`` on average. Sessions start uniformly within ``span``
    seconds of :data:`T0`. With the defaults: about 2.6 events per user, and about 8 friction
    episodes per 1,000 events (2% of the users have one), every detector among the reasons.
    """
    if users < 1:
        raise ValueError("users must be >= 1")
    started = time.perf_counter()
    rng = np.random.default_rng(seed)
    tab = _tables()
    k = len(tab["length"])
    page = list(MOTIFS).index("page")

    # Motif instances: one opening page view per user, then the user's further motifs.
    heavy = rng.random(users) < 1 / 6
    lam = np.where(heavy, 4.0 * motifs_per_user, 0.4 * motifs_per_user)
    n_motifs = 1 + rng.poisson(lam)
    m_user = np.repeat(np.arange(users, dtype=np.int32), n_motifs)
    m_first = np.zeros(len(m_user), bool)
    m_first[np.cumsum(n_motifs) - n_motifs] = True
    p = tab["weight"] / tab["weight"].sum()
    motif = rng.choice(k, size=len(m_user), p=p).astype(np.int16)
    motif[m_first] = page
    n_inst = len(motif)

    # Per motif instance: its target, its two steps, its HTTP status.
    step_p = np.array(STEP_WEIGHTS, np.float64) / sum(STEP_WEIGHTS)
    step_a = rng.choice(len(STEPS), size=n_inst, p=step_p).astype(np.int8)
    step_b = ((step_a + rng.integers(1, len(STEPS), size=n_inst)) % len(STEPS)).astype(np.int8)
    m_target = tab["pool_lo"][motif] + rng.integers(0, 1 << 30, size=n_inst) % tab["pool_n"][motif]
    m_target = np.where(tab["has_pool"][motif], m_target, -1).astype(np.int8)
    m_status = STATUSES[rng.choice(len(STATUSES), size=n_inst, p=STATUS_WEIGHTS / STATUS_WEIGHTS.sum())]

    # Expand motifs into events (user-major order, each user's events in session order).
    length = tab["length"][motif]
    inst = np.repeat(np.arange(n_inst, dtype=np.int64), length)
    n = len(inst)
    pos = np.arange(n, dtype=np.int64) - np.repeat(np.cumsum(length) - length, length)
    m = motif[inst]
    e_type = tab["type"][m, pos]
    lo, hi = tab["gap_lo"][m, pos], tab["gap_hi"][m, pos]
    gap = lo + (hi - lo) * rng.random(n)
    mode = tab["step_mode"][m, pos]
    e_user = m_user[inst]

    # Steps: a page view enters step A or B; every other event inherits the user's current
    # step (forward fill; each user's first event is a page view, so no bleed across users).
    entered = np.where(mode == STEP_A, step_a[inst], np.where(mode == STEP_B, step_b[inst], -1))
    idx = np.where(entered >= 0, np.arange(n), 0)
    np.maximum.accumulate(idx, out=idx)
    e_step = entered[idx].astype(np.int8)

    e_target = np.where(tab["targeted"][m, pos], m_target[inst], -1).astype(np.int8)
    prop = tab["prop"][m, pos]
    e_status = np.where(prop == P_STATUS, m_status[inst], -1).astype(np.int32)
    hits = rng.integers(1, 60, size=n, dtype=np.int32)
    e_results = np.where(prop == P_HITS, hits, np.where(prop == P_ZERO, 0, -1)).astype(np.int32)

    # Each user's clock: session start + cumulative gaps (a segmented cumulative sum).
    start = rng.random(users) * span
    first_event = np.zeros(n, bool)
    first_event[np.cumsum(np.bincount(e_user, minlength=users)) - np.bincount(e_user, minlength=users)] = True
    gap[first_event] = 0.0
    csum = np.cumsum(gap)
    seg_base = np.maximum.accumulate(np.where(first_event, csum, 0.0))
    local = csum - seg_base
    ts = T0 + start[e_user] + local

    order = np.argsort(ts, kind="stable")
    ts = ts[order]
    np.maximum.accumulate(ts, out=ts)  # non-decreasing, whatever rounding did
    return Stream(
        users=users,
        user=e_user[order].astype(np.int32),
        type=e_type[order],
        ts=ts,
        step=e_step[order],
        target=e_target[order],
        status=e_status[order],
        results=e_results[order],
        seconds=time.perf_counter() - started,
    )


if __name__ == "__main__":  # a quick look: python benchmarks/streams.py [users]
    import sys

    n_users = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    t = time.perf_counter()
    s = generate(n_users)
    t1 = time.perf_counter()
    cols = s.columns()
    t2 = time.perf_counter()
    d = s.dicts(0, 100_000)
    t3 = time.perf_counter()
    print(f"{len(s):,} events over {s.users:,} users ({len(s) / s.users:.2f}/user), "
          f"span {s.span / 3600:.1f} h; arrays {t1 - t:.2f} s, columns {t2 - t1:.2f} s, "
          f"100k dicts {t3 - t2:.2f} s; distinct users {len(np.unique(s.user)):,}")  # fmt: skip
    print("  " + ", ".join(f"{name} {c:,}" for name, c in s.type_counts().items()))
    print(" ", d[:2])
