"""What the Redis store's host side computes per user and per event, outside the engine.

A chunk of a batch on a Redis store needs, before and after the engine scores it:

* per user, the key of their record (``P:{H}:e``, ``H`` their ``key64`` in hex: the hash tag
  all of a user's keys share) and its cluster slot (CRC16 of the tag, as Redis computes it);
* per event, its fingerprint (an event sent again counts once: see
  :mod:`pyfriction.redis_engine`) and the second of event time the rate cap counts it in;
  then which events to score (:func:`py_admit`: replays and events past the rate cap are
  dropped) and each user's new field ``f``.

These are a few Python operations per user and per event, and at tens of thousands of events
a second they were most of a host's time, so the compiled core has them too
(``_core/marks.pxi``: ``user_keys``, ``event_marks`` and ``admit`` there). This module is their
specification and the twin used where the core is not built; both give the same results
(``tests/test_marks.py``).

**An event's fingerprint** is 0 (none: the event is never dropped as a replay) when its user id
is not a string or it has no time of its own. Otherwise it starts as the ``key64`` of the user
id, and each part in turn is XORed in and mixed by the splitmix64 finaliser: the ``key64`` of
the type, the IEEE-754 bits of the time, the ``key64`` of the step, of the target and (when
there are any) of the ``repr`` of the properties. A part that is None counts as 0; one that
is not a string is hashed by its ``repr``. A fingerprint of 0 becomes 1.
"""

from __future__ import annotations

import binascii
import math
import struct
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ._hashing import _mix, key64
from ._switch import extensions_disabled

__all__ = ["RATE", "admit", "event_marks", "py_admit", "py_event_marks", "py_user_keys", "user_keys"]

_fnv = key64.__wrapped__  # uncached: most users and events of a stream are seen once
_BITS = struct.Struct("<d")
_U64 = struct.Struct("<Q")
_NUMBERS = (int, float, np.integer, np.floating)


def py_user_keys(ids: Sequence[str], prefix: str) -> tuple[np.ndarray, list[str], np.ndarray]:
    """Each user's ``key64`` (uint64), record key ``prefix:{H}:e`` and cluster slot (int64)."""
    k64 = np.zeros(len(ids), dtype=np.uint64)
    slots = np.zeros(len(ids), dtype=np.int64)
    keys: list[str] = []
    for n, uid in enumerate(ids):
        if not isinstance(uid, str):
            raise TypeError(f"a user id must be a str, not {type(uid).__name__}")
        h = _fnv(uid)
        tag = f"{h:016x}"
        k64[n] = h
        slots[n] = binascii.crc_hqx(tag.encode("ascii"), 0) & 0x3FFF
        keys.append(f"{prefix}:{{{tag}}}:e")
    return k64, keys, slots


def _time(ts: Any) -> float | None:
    """An event's own time, or None (not a number, a bool, too large, not finite)."""
    if isinstance(ts, bool) or not isinstance(ts, _NUMBERS):
        return None
    try:
        t = float(ts)
    except OverflowError:  # an int past the doubles: an invalid event, which the engine says
        return None
    return t if math.isfinite(t) else None


def _part(x: Any) -> int:
    if x is None:
        return 0
    return int(_fnv(x if isinstance(x, str) else repr(x)))


def _fingerprint(uid: Any, kind: Any, t: float, step: Any, target: Any, props: Any) -> int:
    h = _fnv(uid)
    h = _mix(h ^ _part(kind))
    h = _mix(h ^ _U64.unpack(_BITS.pack(t))[0])
    h = _mix(h ^ _part(step))
    h = _mix(h ^ _part(target))
    if props:
        h = _mix(h ^ _fnv(repr(props)))
    return h or 1


def py_event_marks(uids: Sequence[Any], kinds: Sequence[Any] | None, ts: Sequence[Any] | None,
                   steps: Sequence[Any] | None, targets: Sequence[Any] | None, props: Sequence[Any] | None,
                   now: float, fingerprints: bool = True) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Each event's fingerprint (uint64; all 0 without ``fingerprints``) and second (float64:
    ``floor`` of its time, or of ``now`` when it has none). The columns are as long as
    ``uids``; None stands for a column of Nones."""
    n = len(uids)
    for column in (kinds, ts, steps, targets, props):
        if column is not None and len(column) != n:
            raise ValueError("every column must be as long as the user ids")
    fps = np.zeros(n, dtype=np.uint64)
    seconds = np.empty(n, dtype=np.float64)
    clock = math.floor(now)
    for i in range(n):
        t = _time(ts[i]) if ts is not None else None
        seconds[i] = clock if t is None else math.floor(t)
        uid = uids[i]
        if fingerprints and t is not None and isinstance(uid, str):
            fps[i] = _fingerprint(uid, kinds[i] if kinds is not None else None, t,
                                  steps[i] if steps is not None else None,
                                  targets[i] if targets is not None else None,
                                  props[i] if props is not None else None)  # fmt: skip
    return fps, seconds


#: The rate cap's state at the end of a user's field ``f``: the second it counts, events in it.
RATE = struct.Struct("<dI")


def py_admit(uids: Sequence[Any], fps: Sequence[int], seconds: Sequence[float], metas: Mapping[str, bytes],
             dedupe: int, cap: int) -> tuple[list[int], dict[str, bytes], int]:  # fmt: skip
    """Which events of a chunk to score, by each user's field ``f`` (``metas``: their last
    ``dedupe`` fingerprints, oldest first, then the rate cap's ``RATE``; missing or empty: all
    zeros). In order, an event of a user (a str id; the others are kept):

    * whose fingerprint (nonzero) is one of the user's last ``dedupe`` is a replay: dropped;
    * past ``cap`` events of the user in its second (0: no cap), by event time, is capped:
      dropped and counted (a later second starts a new count; an earlier one counts in the
      current);
    * else kept, and its fingerprint becomes the user's newest.

    Returns the kept indices, each user's new field ``f`` (every user with an event here) and
    how many were capped. A window of the last ``dedupe``, not of a chunk, so that how a
    stream is cut into batches never changes what is dropped."""
    ring_size = 8 * dedupe
    size = ring_size + RATE.size
    ring_format = f"<{dedupe}Q"
    state: dict[str, list[Any]] = {}  # user -> [fingerprints, second, count]
    keep: list[int] = []
    capped = 0
    for n, uid in enumerate(uids):
        if not isinstance(uid, str):
            keep.append(n)
            continue
        st = state.get(uid)
        if st is None:
            old = metas.get(uid) or bytes(size)
            if len(old) != size:
                raise ValueError(f"a user's field f must be {size} bytes, not {len(old)}")
            st = state[uid] = [list(struct.unpack(ring_format, old[:ring_size])), *RATE.unpack(old[ring_size:])]
        fp = int(fps[n])
        if fp and fp in st[0]:
            continue
        if cap:
            if seconds[n] > st[1]:
                st[1], st[2] = float(seconds[n]), 0
            if st[2] >= cap:
                capped += 1
                continue
            st[2] += 1
        if fp and dedupe:
            del st[0][0]
            st[0].append(fp)
        keep.append(n)
    out = {uid: struct.pack(ring_format, *ring) + RATE.pack(sec, count) for uid, (ring, sec, count) in state.items()}
    return keep, out, capped


def _compiled() -> tuple[Any, Any, Any] | None:
    if extensions_disabled():
        return None
    try:
        from ._core import admit as compiled_admit
        from ._core import event_marks as compiled_marks
        from ._core import user_keys as compiled_keys
    except ImportError:
        return None
    return compiled_keys, compiled_marks, compiled_admit


_twins = _compiled()
#: The compiled functions where the core is built, else the ones above.
user_keys: Any = _twins[0] if _twins else py_user_keys
event_marks: Any = _twins[1] if _twins else py_event_marks
admit: Any = _twins[2] if _twins else py_admit
