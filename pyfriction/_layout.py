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

from .config import RING_SIZE

# Detector indices: the order of ``pressure`` in a slot and of ties among reasons.
RAGE_CLICK = 0
DEAD_CLICK = 1
ERROR_BURST = 2
REPEAT_FAILURE = 3
UTURN = 4
EMPTY_SEARCH = 5
HELP_SEEKING = 6
STALL = 7
CUSTOM = 8
N_DETECTORS = 9
DETECTOR_NAMES = (
    "rage_click",
    "dead_click",
    "error_burst",
    "repeat_failure",
    "uturn",
    "empty_search",
    "help_seeking",
    "stall",
    "custom",
)

# Bits of ``flags``. The latch bits make one burst one activation.
F_IN_EPISODE = 1 << 0  # score crossed the threshold and has not fallen below rearm since
F_HAS_EPISODE = 1 << 1  # episode_ts is valid
F_RAGE = 1 << 2
F_DEAD = 1 << 3
F_ERR = 1 << 4
F_FAIL = 1 << 5
F_UTURN = 1 << 6
F_SEARCH = 1 << 7
F_STALL = 1 << 8  # stall already activated during the current step visit

#: Bytes of a user id stored inline; longer ids keep their first UID_BYTES bytes and
#: ``uid_len == UID_LONG``, the full id lives in a side table bounded by capacity.
UID_BYTES = 40
UID_LONG = 255
#: Window timestamps are float32 offsets from ``base``; ``base`` moves to the event time once
#: it is this many seconds old, keeping offsets within about 2 ms of exact.
REBASE_AFTER = 16384.0
#: An empty window entry: infinitely long ago.
NEVER = -math.inf

SLOT_DTYPE = np.dtype(
    [
        ("key", "<u8"),  # 64-bit hash of the user id
        ("last_ts", "<f8"),  # newest effective event time
        ("episode_ts", "<f8"),  # time of the last episode (valid with F_HAS_EPISODE)
        ("step_ts", "<f8"),  # when the current step was entered
        ("base", "<f8"),  # origin of the float32 window offsets below
        ("click_r", "<f4", (RING_SIZE,)),  # recent clicks on click_target, newest first
        ("dead_r", "<f4", (RING_SIZE,)),  # recent dead clicks on dead_target
        ("err_r", "<f4", (RING_SIZE,)),  # recent errors
        ("uturn_t", "<f4"),  # first u-turn of the current run
        ("fail_t", "<f4"),  # last failure on fail_target
        ("search_t", "<f4"),  # last empty search
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
        ("fail_target", "<u4"),
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
        ("uid", "S%d" % UID_BYTES),
    ]
)
assert SLOT_DTYPE.itemsize == 224, SLOT_DTYPE.itemsize

#: Buckets of a step's duration histogram: bucket 0 holds visits under 1 s, bucket b >= 1
#: holds [GAMMA**(b-1), GAMMA**b) seconds; the last also takes everything longer.
N_BUCKETS = 24
GAMMA = 1.5
LOG_GAMMA = math.log(GAMMA)

STEP_DTYPE = np.dtype([("key", "<u4"), ("count", "<u4"), ("buckets", "<u4", (N_BUCKETS,))])
assert STEP_DTYPE.itemsize == 104

_F32 = struct.Struct("<f")


def f32(value: float) -> float:
    """Round a double to the nearest float32, as the C core's ``(float)`` cast does."""
    try:
        return _F32.unpack(_F32.pack(value))[0]
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
    """The ``q`` quantile of a step's durations, from its histogram."""
    need = q * count
    seen = 0
    for b in range(N_BUCKETS):
        seen += int(buckets[b])
        if seen >= need:
            return bucket_upper(b)
    return bucket_upper(N_BUCKETS - 1)
