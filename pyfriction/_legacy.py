"""Snapshots written by earlier layouts of the state, upgraded on restore.

A layout change (new detector state) must not cost a deployment the users it was tracking: a
snapshot from the previous layout is read with that layout's dtype and converted field by
field. Each entry of :data:`UPGRADES` is keyed by the old layout's hash (as ``LAYOUT_HASH``
computes it) and turns the old slot bytes into ``SLOT_DTYPE`` records.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import numpy as np

from ._constants import F_ERR, F_HAS_EPISODE, F_IN_EPISODE, F_RAGE, N_DETECTORS, RING_SIZE, UID_BYTES
from ._layout import NEVER, SLOT_DTYPE, STEP_DTYPE

__all__ = ["UPGRADES", "layout_hash"]


def layout_hash(slot_dtype: np.dtype, step_dtype: np.dtype = STEP_DTYPE) -> str:
    """The hash snapshots name their layout by (``tracker.LAYOUT_HASH`` for the current one)."""
    return hashlib.sha256(repr((slot_dtype.descr, step_dtype.descr)).encode()).hexdigest()[:16]


#: The slot layout before accumulating detectors (nine detectors, a ring of dead clicks).
SLOT_V1 = np.dtype(
    [
        ("key", "<u8"), ("last_ts", "<f8"), ("episode_ts", "<f8"), ("step_ts", "<f8"), ("base", "<f8"),
        ("click_r", "<f4", (RING_SIZE,)), ("dead_r", "<f4", (RING_SIZE,)), ("err_r", "<f4", (RING_SIZE,)),
        ("uturn_t", "<f4"), ("fail_t", "<f4"), ("search_t", "<f4"), ("p_off", "<f4"),
        ("pressure", "<f4", (9,)), ("episode_score", "<f4"), ("events", "<u4"), ("step", "<u4"),
        ("prev_step", "<u4"), ("click_target", "<u4"), ("dead_target", "<u4"), ("fail_target", "<u4"),
        ("lock", "<u4"), ("flags", "<u2"), ("episodes", "<u2"), ("click_n", "u1"), ("dead_n", "u1"),
        ("err_n", "u1"), ("fail_n", "u1"), ("uturn_n", "u1"), ("search_n", "u1"), ("custom", "u1"),
        ("uid_len", "u1"), ("uid", f"S{UID_BYTES}"),
    ]
)  # fmt: skip
_V1_STALL = 1 << 8  # "stall activated in this visit" in that layout


def upgrade_v1(raw: bytes | memoryview) -> np.ndarray:
    """Slots of the layout before accumulating detectors, as ``SLOT_DTYPE`` records.

    Every field that still exists is copied; the new ones start as a fresh run would (the
    error-click pressure 0, the failure run's start at its last failure), the last dead click
    is the newest of the old ring, and a visit whose stall had fired counts its stall time up
    to the user's last event (no second activation for the time already judged)."""
    old = np.frombuffer(raw, dtype=SLOT_V1)
    new = np.zeros(len(old), dtype=SLOT_DTYPE)
    for name in SLOT_V1.names or ():
        if name in ("dead_r", "pressure", "flags", "lock"):
            continue
        new[name] = old[name]
    new["pressure"][:, :9] = old["pressure"]
    new["pressure"][:, 9:N_DETECTORS] = 0.0
    new["dead_t"] = old["dead_r"][:, 0]
    new["fail_t0"] = old["fail_t"]
    stalled = (old["flags"] & _V1_STALL) != 0
    new["stall_t"] = np.where(stalled, (old["last_ts"] - old["base"]).astype(np.float32), np.float32(NEVER))
    new["flags"] = old["flags"] & (F_IN_EPISODE | F_HAS_EPISODE | F_RAGE | F_ERR)
    return new


UPGRADES: dict[str, Callable[[bytes | memoryview], np.ndarray]] = {layout_hash(SLOT_V1): upgrade_v1}
