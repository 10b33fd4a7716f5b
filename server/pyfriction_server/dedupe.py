"""Bounded memory of delivery ids (Segment ``messageId``, PostHog ``uuid``, native ``id``).

SDKs retry a batch whose answer they did not get; the retry carries the same ids. Two
generations of sets: ids go into the current one; when it holds ``capacity // 2`` ids it
becomes the previous one and the oldest generation is dropped. So at least the last
``capacity // 2`` ids (and at most ``capacity``) are remembered, at O(1) per id and with no
per-id bookkeeping beyond the set entry.

The dropped generation is not freed at once: half a million strings take ~30 ms to free,
a pause every couple of seconds under load that every connection would see. It is emptied
a few ids per call instead (``_retire``), at most twice as many as the call remembers, so it
is gone well before the next generation is dropped.
"""

from __future__ import annotations

from typing import Iterable, Optional

__all__ = ["Dedupe"]


class Dedupe:
    """``seen(id)`` answers whether ``id`` was seen before, and remembers it."""

    def __init__(self, capacity: int) -> None:
        self.half = max(1, capacity // 2)
        self.current: set[str] = set()
        self.previous: set[str] = set()
        self._dying: set[str] = set()  # the dropped generation, freed a little per call

    def seen(self, key: str) -> bool:
        """True if ``key`` was seen recently (a duplicate); else remember it and return False."""
        if key in self.current or key in self.previous:
            return True
        cur = self.current
        cur.add(key)
        if len(cur) >= self.half:
            self._rotate()
        elif self._dying:
            self._retire(2)
        return False

    def _rotate(self) -> None:
        """The current generation becomes the previous one; the previous one is dropped."""
        if self._dying:  # a tiny capacity can drop generations faster than they are freed
            self._dying.clear()
        self._dying = self.previous
        self.previous = self.current
        self.current = set()

    def _retire(self, n: int) -> None:
        """Free up to ``n`` ids of the dropped generation."""
        pop = self._dying.pop
        for _ in range(min(n, len(self._dying))):
            pop()

    def filter(self, ids: "list[Optional[str]] | tuple[Optional[str], ...]") -> Optional[list[int]]:
        """Remember every id of a batch; returns None when none was a duplicate (the common
        case, done with set operations in C), else the indexes of the rows to keep."""
        present = ids if None not in ids else [i for i in ids if i is not None]
        cur = self.current
        if cur.isdisjoint(present) and self.previous.isdisjoint(present) and len(cur) + len(present) < self.half:
            if self._dying:
                self._retire(2 * len(present))
            before = len(cur)
            cur.update(present)
            if len(cur) - before == len(present):
                return None
            # duplicates within the batch: all are remembered now; keep each id's first row
            first: set[str] = set()
            keep = []
            for index, key in enumerate(ids):
                if key is None or key not in first:
                    keep.append(index)
                    if key is not None:
                        first.add(key)
            return keep
        keep = []
        for index, key in enumerate(ids):
            if key is None or not self.seen(key):
                keep.append(index)
        return keep if len(keep) != len(ids) else None

    def __len__(self) -> int:
        return len(self.current) + len(self.previous)

    def export(self) -> list[list[str]]:
        """Both generations, oldest first (for snapshots)."""
        return [list(self.previous), list(self.current)]

    def load(self, generations: Iterable[Iterable[str]]) -> None:
        """Restore :meth:`export`'s output."""
        gens = [set(g) for g in generations]
        self.previous = gens[0] if len(gens) > 0 else set()
        self.current = gens[1] if len(gens) > 1 else set()
