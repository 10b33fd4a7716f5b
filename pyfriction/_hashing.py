"""Stable hashes shared by both engines and every process.

FNV-1a (64-bit) over the UTF-8 bytes, then the splitmix64 finaliser so that the low bits used
to index the table are well mixed. Unlike ``hash(str)`` these do not depend on
``PYTHONHASHSEED``: the same id hashes the same in every process and every run.
"""

from __future__ import annotations

from functools import lru_cache

MASK64 = 0xFFFFFFFFFFFFFFFF
FNV_OFFSET = 0xCBF29CE484222325
FNV_PRIME = 0x100000001B3


def _mix(h: int) -> int:
    h ^= h >> 30
    h = (h * 0xBF58476D1CE4E5B9) & MASK64
    h ^= h >> 27
    h = (h * 0x94D049BB133111EB) & MASK64
    h ^= h >> 31
    return h


@lru_cache(maxsize=1 << 16)
def key64(text: str) -> int:
    """The 64-bit key of a user id; never 0 (0 marks a free slot)."""
    h = FNV_OFFSET
    for byte in text.encode("utf-8", "surrogatepass"):
        h = ((h ^ byte) * FNV_PRIME) & MASK64
    return _mix(h) or 1


def key32(text: str) -> int:
    """The 32-bit key of a step or target; never 0 (0 means "none")."""
    h = key64(text)  # key64's 0 -> 1 folds the same: fold(0) is 0 -> 1, fold(1) is 1
    return ((h ^ (h >> 32)) & 0xFFFFFFFF) or 1
