"""Tables both engines derive from one :class:`~pyfriction.config.Config`.

Everything an engine needs per event that is not per-user state: the type-name table, the
custom weights, the exclusion globs and the constants of the decay. Computing them once, in
Python, for both engines is what keeps their arithmetic identical.
"""

from __future__ import annotations

import fnmatch
import math
import re

from ._layout import quantile
from .config import Config, EventMapping
from .events import CUSTOM_BASE, TYPE_CODES

#: Bound on the exclusion caches and the name table; they are cleared when full, which costs
#: a re-match, never correctness.
CACHE_MAX = 1 << 16


class _Globs:
    """fnmatch globs compiled into one regex, with a bounded memo of answers."""

    __slots__ = ("_match", "_memo")

    def __init__(self, patterns: list[str]) -> None:
        self._match = re.compile("|".join(fnmatch.translate(p) for p in patterns)).match if patterns else None
        self._memo: dict[str, bool] = {}

    def __bool__(self) -> bool:
        return self._match is not None

    def __call__(self, text: str | None) -> bool:
        if text is None or self._match is None:
            return False
        hit = self._memo.get(text)
        if hit is None:
            if len(self._memo) >= CACHE_MAX:
                self._memo.clear()
            hit = self._memo[text] = self._match(text) is not None
        return hit


class Rules:
    """Derived, read-only tables of a config (shared by both engines)."""

    def __init__(self, config: Config) -> None:
        self.config = config
        d = config.detectors
        self.type_codes: dict[str, int] = dict(TYPE_CODES)
        self.custom_weights: list[float] = []
        self.custom_names: list[str] = []
        for name, mapped in config.event_map.items():
            if isinstance(mapped, str):
                self.type_codes[name] = TYPE_CODES[mapped]
            elif isinstance(mapped, EventMapping) and mapped.type is not None:
                self.type_codes[name] = TYPE_CODES[mapped.type]
            else:
                assert isinstance(mapped, EventMapping) and mapped.weight is not None
                self.type_codes[name] = CUSTOM_BASE + len(self.custom_weights)
                self.custom_weights.append(float(mapped.weight))
                self.custom_names.append(name)
        self.decay_rate = math.log(2.0) / config.scoring.half_life
        self.ordinary_statuses = frozenset(d.error_burst.ordinary_statuses)
        self.excluded_target = _Globs(config.exclude_targets)
        self.excluded_step = _Globs(config.exclude_steps)

    def stall_limit(self, count: int, buckets: list[int]) -> float:
        """Seconds on a step beyond which a user has stalled, or -1.0 without a baseline."""
        st = self.config.detectors.stall
        if count < st.min_samples:
            return -1.0
        return max(st.min_seconds, st.factor * quantile(buckets, count, st.quantile))


class Names(dict):  # type: ignore[type-arg]
    """32-bit key -> text of the steps and targets that episodes and states name.

    Both engines remember a name at the same moments (entering a step, a detector activating
    on a target) so that their episodes read the same; bounded by clearing.
    """

    def remember(self, key: int, text: str) -> None:
        if key not in self:
            if len(self) >= CACHE_MAX:
                self.clear()
            self[key] = text
