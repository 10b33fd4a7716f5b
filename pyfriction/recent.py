"""A bounded memory of recently seen ids: which deliveries are retries.

SDKs retry a batch whose answer they did not get, with the same message ids; the sidecar
must not count such a batch twice. :class:`RecentIds` remembers the last ``capacity``
distinct ids, exactly (the oldest is forgotten as a new one comes), at O(1) per id.

It keeps 64-bit fingerprints of the ids (``key64``: FNV-1a and a finaliser, the users'
own hash), not the ids: 8 bytes in a ring plus a slot of an open-addressing index per id
(16 MiB for a million, where sets of Python strings took ~100 MiB), nothing for the
garbage collector to walk, and nothing to free in bulk (freeing a generation of half a
million strings took ~30 ms, and growing a set that big ~14 ms, pauses every connection
saw). Two different ids share a fingerprint with probability ~2^-64; with a million
remembered a new id is taken for a retry about once in 10^13 ids.

The compiled core provides the class; this module's pure-Python one has the same
behaviour and the same fingerprints (so either restores the other's :meth:`export`) and
is used where the core is not built or ``PYFRICTION_NO_EXTENSIONS`` is set.
"""

from __future__ import annotations

import collections
from collections.abc import Sequence
from typing import Any

import numpy as np

from ._hashing import key64
from ._switch import extensions_disabled

__all__ = ["PyRecentIds", "RecentIds", "TaggedIds", "fingerprint"]

_fingerprint = key64.__wrapped__  # uncached: ids are seen once or twice, never hot


def fingerprint(key: str) -> int:
    """The 64-bit fingerprint of an id or a user id, as :class:`RecentIds` and the store keep it."""
    return int(_fingerprint(key))


class PyRecentIds:
    """The last ``capacity`` distinct ids seen (pure Python)."""

    def __init__(self, capacity: int) -> None:
        capacity = int(capacity)
        if not 1 <= capacity <= 1 << 31:
            raise ValueError(f"capacity must be between 1 and 2**31, not {capacity}")
        self.capacity = capacity
        self._set: set[int] = set()
        self._ring: collections.deque[int] = collections.deque()

    def __len__(self) -> int:
        return len(self._ring)

    def _add(self, fp: int) -> bool:
        if fp in self._set:
            return True
        if len(self._ring) == self.capacity:
            self._set.discard(self._ring.popleft())
        self._ring.append(fp)
        self._set.add(fp)
        return False

    def seen(self, key: str) -> bool:
        """True if ``key`` is among the remembered ids; else remember it and return False."""
        if not isinstance(key, str):
            raise TypeError(f"ids are str, not {type(key).__name__}")
        return self._add(_fingerprint(key))

    def filter(self, ids: Sequence[str | None]) -> list[int] | None:
        """Remember every id of a batch, in order. None when none was seen before (None ids
        are always kept); else the indexes of the rows to keep (a retried id is dropped,
        and so is an id repeated within the batch, after its first row)."""
        keep = []
        dropped = False
        for index, key in enumerate(ids):
            if key is None or not self.seen(key):
                keep.append(index)
            else:
                dropped = True
        return keep if dropped else None

    def export(self) -> np.ndarray:
        """The fingerprints, oldest first (for snapshots)."""
        return np.fromiter(self._ring, dtype=np.uint64, count=len(self._ring))

    def load(self, fingerprints: Any) -> None:
        """Replace the memory with :meth:`export`'s output (of either class); the newest
        ``capacity`` are kept."""
        fps = np.asarray(fingerprints, dtype=np.uint64).reshape(-1)
        self._set.clear()
        self._ring.clear()
        for fp in fps[max(0, len(fps) - self.capacity) :].tolist():
            self._add(fp)


def _compiled() -> Any:
    if extensions_disabled():
        return None
    try:
        from ._core import RecentIds as compiled
    except ImportError:
        return None
    return compiled


#: The compiled class where the core is built, else :class:`PyRecentIds`.
RecentIds: Any = _compiled() or PyRecentIds


def _tagged() -> Any:
    if _compiled() is None:
        return None
    from ._core import TaggedIds as compiled

    return compiled


#: The compiled kernel of a table of (fingerprint, tag) pairs in a buffer that processes share
#: (the sidecar's workers: ``pyfriction_server.shared.SharedIds``), or None where the core is
#: not built; that class has the pure-Python twin.
TaggedIds: Any = _tagged()
