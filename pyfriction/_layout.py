"""The state layout both engines share: one fixed-size record per tracked user and per step.

This module is the single description of the layout. The compiled core's C structs must
match these numpy dtypes byte for byte (checked at import and in the tests); snapshots store
records in this form, which is why a snapshot from one engine restores into the other, and a
later memory-mapped store shares exactly these bytes between processes. Nothing inside is a
pointer. The recency order (for evicting the least recently active user) is kept by each
engine beside the records, not in them.
"""

from __future__ import annotations

import math
import struct

import numpy as np

from . import _constants
from ._constants import (
    CUSTOM,
    DETECTOR_NAMES,
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
    GAMMA,
    HELP_SEEKING,
    LATCHES,
    MAX_CUSTOM,
    N_BUCKETS,
    N_DETECTORS,
    RAGE_CLICK,
    REBASE_AFTER,
    REPEAT_FAILURE,
    RING_SIZE,
    STALL,
    UID_BYTES,
    UID_LONG,
    UTURN,
)

__all__ = [
    "CUSTOM",
    "DEAD_CLICK",
    "DETECTOR_NAMES",
    "EMPTY_SEARCH",
    "ERROR_BURST",
    "ERROR_CLICK",
    "F_CLICK_USED",
    "F_DONE",
    "F_ERR",
    "F_FAIL_MIXED",
    "F_HAS_EPISODE",
    "F_IN_EPISODE",
    "F_RAGE",
    "F_SLOW",
    "F_STUCK",
    "GAMMA",
    "HELP_SEEKING",
    "LATCHES",
    "LOG_GAMMA",
    "MAX_CUSTOM",
    "NEVER",
    "N_BUCKETS",
    "N_DETECTORS",
    "PARAMS_DTYPE",
    "RAGE_CLICK",
    "REBASE_AFTER",
    "REPEAT_FAILURE",
    "RING_SIZE",
    "SLOT_DTYPE",
    "STALL",
    "STEP_DTYPE",
    "UID_BYTES",
    "UID_LONG",
    "UTURN",
    "bucket_of",
    "bucket_upper",
    "f32",
    "quantile",
]

#: The dead_click detector's index (``events.DEAD_CLICK`` is the event type's code).
DEAD_CLICK = _constants.DEAD_CLICK_DET
#: An empty window entry: infinitely long ago.
NEVER = -math.inf

SLOT_DTYPE = np.dtype(
    [
        ("key", "<u8"),  # 64-bit hash of the user id
        ("last_ts", "<f8"),  # newest effective event time
        ("episode_ts", "<f8"),  # time of the last episode (valid with F_HAS_EPISODE)
        ("step_ts", "<f8"),  # when the current step was entered
        ("base", "<f8"),  # origin of the float32 time offsets below
        ("click_r", "<f4", (RING_SIZE,)),  # recent clicks and dead clicks on click_target, newest first
        ("err_r", "<f4", (RING_SIZE,)),  # recent errors
        ("dead_t", "<f4"),  # last dead click on dead_target
        ("uturn_t", "<f4"),  # last u-turn
        ("fail_t", "<f4"),  # last failure
        ("fail_t0", "<f4"),  # first failure of the current run
        ("search_t", "<f4"),  # last empty search
        ("stall_t", "<f4"),  # stall last judged past the limit in this visit (NEVER: not yet)
        # The pressures are valued at last_ts + p_off: 0 after every event (exact), positive
        # after tick() decayed them past the user's last event.
        ("p_off", "<f4"),
        ("pressure", "<f4", (N_DETECTORS,)),
        ("episode_score", "<f4"),
        ("events", "<u4"),
        ("step", "<u4"),  # 32-bit key of the current step (0: none yet)
        ("prev_step", "<u4"),
        ("click_target", "<u4"),
        ("dead_target", "<u4"),
        ("fail_target", "<u4"),  # target of the last failure
        ("lock", "<u4"),  # shared: pid of the process updating it (0: free); private: recency log position
        ("flags", "<u2"),
        ("episodes", "<u2"),  # saturating at 65535
        ("click_n", "u1"),  # events in the current run (saturating at 255)
        ("dead_n", "u1"),
        ("err_n", "u1"),
        ("fail_n", "u1"),
        ("uturn_n", "u1"),
        ("search_n", "u1"),
        ("custom", "u1"),  # last custom event (code - CUSTOM_BASE)
        ("uid_len", "u1"),
        ("uid", f"S{UID_BYTES}"),
    ]
)
assert SLOT_DTYPE.itemsize == 224, SLOT_DTYPE.itemsize

# Buckets of a step's duration histogram: see ``_constants.N_BUCKETS`` and ``GAMMA``.
LOG_GAMMA = math.log(GAMMA)

STEP_DTYPE = np.dtype([("key", "<u4"), ("count", "<u4"), ("buckets", "<u4", (N_BUCKETS,))])
assert STEP_DTYPE.itemsize == 104

_F32 = struct.Struct("<f")


def f32(value: float) -> float:
    """Round a double to the nearest float32, as the C core's ``(float)`` cast does."""
    try:
        return float(_F32.unpack(_F32.pack(value))[0])
    except OverflowError:
        return math.copysign(math.inf, value)


def bucket_of(duration: float) -> int:
    """Histogram bucket of a step duration in seconds."""
    if duration < 1.0:
        return 0
    b = 1 + int(math.floor(math.log(duration) / LOG_GAMMA))
    return b if b < N_BUCKETS else N_BUCKETS - 1


def bucket_upper(b: int) -> float:
    """Upper bound of bucket ``b`` in seconds: the value a quantile in it reports."""
    return 1.0 if b == 0 else math.pow(GAMMA, b)


def quantile(buckets: list[int] | np.ndarray, count: int, q: float) -> float:
    """The ``q`` quantile of a step's durations, from its histogram, interpolated inside its
    bucket (linearly in bucket 0, geometrically in the others, whose bounds grow by GAMMA):
    an estimate within a few percent where the bucket's upper bound was up to 50% off."""
    need = q * count
    seen = 0
    for b in range(N_BUCKETS):
        c = int(buckets[b])
        if c > 0 and seen + c >= need:
            frac = (need - seen) / c
            if b == 0:
                return frac
            return math.pow(GAMMA, (b - 1) + frac)
        seen += c
    return bucket_upper(N_BUCKETS - 1)


#: The detector and scoring parameters of a config, as one record: :class:`~pyfriction._rules.Rules`
#: builds it (``Rules.params``), the compiled core copies it into its ``Params`` struct (same
#: fields, same offsets: checked at import) and the reference reads the same values
#: (``Rules.p``). Doubles are the config's Python floats exactly, so both engines compute with
#: the same numbers.
PARAMS_DTYPE = np.dtype(
    [
        # scoring
        ("decay_rate", "<f8"),  # ln 2 / half_life
        ("threshold", "<f8"),
        ("rearm", "<f8"),
        ("cooldown", "<f8"),
        ("keep_after_success", "<f8"),  # 1 - success_relief
        # detectors, in the order of their indices
        ("rage_w", "<f8"),
        ("rage_win", "<f8"),
        ("slow_w", "<f8"),
        ("slow_win", "<f8"),
        ("dead_w", "<f8"),
        ("dead_single_w", "<f8"),
        ("dead_win", "<f8"),
        ("err_w", "<f8"),
        ("err_win", "<f8"),
        ("ordinary_factor", "<f8"),
        ("refusal_factor", "<f8"),
        ("fail_w", "<f8"),
        ("area_w", "<f8"),
        ("fail_win", "<f8"),
        ("uturn_w", "<f8"),
        ("uturn_single_w", "<f8"),
        ("uturn_win", "<f8"),
        ("uturn_bounce", "<f8"),
        ("search_w", "<f8"),
        ("search_single_w", "<f8"),
        ("search_win", "<f8"),
        ("help_w", "<f8"),
        ("contact_w", "<f8"),
        ("after_friction", "<f8"),
        ("boost", "<f8"),
        ("stall_w", "<f8"),
        ("stall_q", "<f8"),
        ("stall_factor", "<f8"),
        ("stall_min_s", "<f8"),
        ("stall_max_dur", "<f8"),
        ("eclick_w", "<f8"),
        ("eclick_win", "<f8"),
        ("custom_w", "<f8", (MAX_CUSTOM,)),
        ("rage_need", "<i4"),
        ("slow_need", "<i4"),
        ("dead_need", "<i4"),
        ("err_need", "<i4"),
        ("fail_need", "<i4"),
        ("uturn_need", "<i4"),
        ("search_need", "<i4"),
        ("stall_min_n", "<i4"),
        ("n_custom", "<i4"),
        ("rage_on", "u1"),
        ("dead_on", "u1"),
        ("err_on", "u1"),
        ("fail_on", "u1"),
        ("uturn_on", "u1"),
        ("search_on", "u1"),
        ("help_on", "u1"),
        ("stall_on", "u1"),
        ("eclick_on", "u1"),
        ("pad", "u1", (3,)),  # to a multiple of 8 bytes, as the C struct
    ]
)
assert PARAMS_DTYPE.itemsize == 37 * 8 + MAX_CUSTOM * 8 + 9 * 4 + 12, PARAMS_DTYPE.itemsize
