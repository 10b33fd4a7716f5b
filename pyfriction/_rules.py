"""Tables both engines derive from one :class:`~pyfriction.config.Config`.

Everything an engine needs per event that is not per-user state: the type-name table, the
custom weights, the exclusion globs and the constants of the decay. Computing them once, in
Python, for both engines is what keeps their arithmetic identical.
"""

from __future__ import annotations

import fnmatch
import math
import re
from types import SimpleNamespace

import numpy as np

from ._constants import CACHE_MAX, CUSTOM_BASE, MAX_CUSTOM, TYPE_CODES
from ._layout import PARAMS_DTYPE, quantile
from .config import Config, EventMapping
from .events import TsRange


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
        self.refusal_statuses = frozenset(d.error_burst.refusal_statuses)
        self.excluded_target = _Globs(config.exclude_targets)
        self.excluded_step = _Globs(config.exclude_steps)
        ev_cfg = config.events
        #: The plausible event times (``[events] ts_min``, ``ts_max_ahead``).
        self.ts_range = TsRange(ev_cfg.ts_min, ev_cfg.ts_max_ahead)
        self.params = make_params(config, self.decay_rate, self.custom_weights)
        #: The same values as plain Python numbers, for the reference engine: ``p.rage_w``...
        self.p = params_namespace(self.params)

    def stall_need(self, count: int, buckets: list[int]) -> float:
        """What the users need on a step: the stall quantile of its visits' durations in
        seconds, or -1.0 without a baseline (fewer than ``min_samples`` visits)."""
        st = self.config.detectors.stall
        if count < st.min_samples:
            return -1.0
        return quantile(buckets, count, st.quantile)

    def limit_of(self, need: float) -> float:
        """The stall limit for a step whose users need ``need`` seconds (-1.0: none)."""
        if need < 0.0:
            return -1.0
        st = self.config.detectors.stall
        return max(st.min_seconds, st.factor * need)


def make_params(config: Config, decay_rate: float, custom_weights: list[float]) -> np.ndarray:
    """The detector and scoring parameters of ``config`` as one ``PARAMS_DTYPE`` record (an
    array of one), the form the compiled core copies into its C struct."""
    if len(custom_weights) > MAX_CUSTOM:
        raise ValueError(f"too many custom-weight events ({len(custom_weights)}; at most {MAX_CUSTOM})")
    d = config.detectors
    sc = config.scoring
    rec = np.zeros(1, dtype=PARAMS_DTYPE)
    values = {
        "decay_rate": decay_rate,
        "threshold": sc.threshold,
        "rearm": sc.rearm,
        "cooldown": sc.cooldown,
        "keep_after_success": 1.0 - sc.success_relief,
        "rage_on": d.rage_click.enabled,
        "rage_w": d.rage_click.weight,
        "rage_win": d.rage_click.window,
        "rage_need": d.rage_click.min_clicks,
        "slow_w": d.rage_click.slow_weight,
        "slow_win": d.rage_click.slow_window,
        "slow_need": d.rage_click.slow_min_clicks,
        "dead_on": d.dead_click.enabled,
        "dead_w": d.dead_click.weight,
        "dead_single_w": d.dead_click.single_weight,
        "dead_win": d.dead_click.window,
        "dead_need": d.dead_click.min_clicks,
        "err_on": d.error_burst.enabled,
        "err_w": d.error_burst.weight,
        "err_win": d.error_burst.window,
        "err_need": d.error_burst.min_errors,
        "ordinary_factor": d.error_burst.ordinary_factor,
        "refusal_factor": d.error_burst.refusal_factor,
        "fail_on": d.repeat_failure.enabled,
        "fail_w": d.repeat_failure.weight,
        "area_w": d.repeat_failure.area_weight,
        "fail_win": d.repeat_failure.window,
        "fail_need": d.repeat_failure.min_failures,
        "uturn_on": d.uturn.enabled,
        "uturn_w": d.uturn.weight,
        "uturn_single_w": d.uturn.single_weight,
        "uturn_win": d.uturn.window,
        "uturn_need": d.uturn.min_uturns,
        "uturn_bounce": d.uturn.bounce,
        "search_on": d.empty_search.enabled,
        "search_w": d.empty_search.weight,
        "search_single_w": d.empty_search.single_weight,
        "search_win": d.empty_search.window,
        "search_need": d.empty_search.min_searches,
        "help_on": d.help_seeking.enabled,
        "help_w": d.help_seeking.help_weight,
        "contact_w": d.help_seeking.contact_weight,
        "after_friction": d.help_seeking.after_friction,
        "boost": d.help_seeking.boost,
        "stall_on": d.stall.enabled,
        "stall_w": d.stall.weight,
        "stall_q": d.stall.quantile,
        "stall_factor": d.stall.factor,
        "stall_min_s": d.stall.min_seconds,
        "stall_min_n": d.stall.min_samples,
        "stall_max_dur": d.stall.max_duration,
        "eclick_on": d.error_click.enabled,
        "eclick_w": d.error_click.weight,
        "eclick_win": d.error_click.window,
        "n_custom": len(custom_weights),
    }
    missing = set(PARAMS_DTYPE.names or ()) - set(values) - {"custom_w", "pad"}
    assert not missing, missing  # a field added to PARAMS_DTYPE must be filled here
    for name, value in values.items():
        rec[0][name] = value
    rec[0]["custom_w"][: len(custom_weights)] = custom_weights
    return rec


def params_namespace(params: np.ndarray) -> SimpleNamespace:
    """A ``PARAMS_DTYPE`` record's fields as Python numbers (bool, int, float; ``custom_w`` a
    list): exactly the values the compiled core reads from its copy."""
    rec = params[0]
    out: dict[str, object] = {}
    for name in PARAMS_DTYPE.names or ():
        value = rec[name]
        if isinstance(value, np.ndarray):
            out[name] = [float(x) for x in value]
        elif PARAMS_DTYPE.fields[name][0].kind == "u":  # type: ignore[index]
            out[name] = bool(value)
        else:
            out[name] = value.item()
    return SimpleNamespace(**out)


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
