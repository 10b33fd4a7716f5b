"""Typed configuration: detector thresholds and weights, scoring, event mapping, capacity.

One :class:`Config` (a tree of msgspec Structs) is loaded from a TOML file, a dict or keyword
arguments and validated on load; every error names the offending key
(``pyfriction.ConfigError: Expected `int` >= 2 - at `$.detectors.rage_click.min_clicks```).

The defaults are tuned to fire on real struggles and stay silent on normal use: see the
per-detector docstrings for the pattern each one looks for.
"""

from __future__ import annotations

import math
import os
import tomllib
from collections.abc import Mapping
from typing import Annotated, Any, Literal

import msgspec

from . import _constants
from ._constants import DETECTOR_NAMES, TYPE_CODES

__all__ = [
    "MAX_WINDOW",
    "RING_SIZE",
    "WEIGHT_FIELDS",
    "Config",
    "ConfigError",
    "DeadClick",
    "Detectors",
    "EmptySearch",
    "ErrorBurst",
    "ErrorClick",
    "EventMapping",
    "Events",
    "GuidanceCaps",
    "GuidanceConfig",
    "GuidanceItem",
    "GuidanceRule",
    "HelpSeeking",
    "Holdout",
    "RageClick",
    "RepeatFailure",
    "Scoring",
    "SegmentMapping",
    "Sinks",
    "Stall",
    "UTurn",
    "Webhook",
    "detector_weights",
    "load_config",
]

#: Timestamps kept per windowed detector; a threshold of N events needs N - 1 of them.
RING_SIZE = _constants.RING_SIZE
#: Longest window any detector may use (seconds). Window timestamps are stored as float32
#: offsets from a per-user base that is moved every REBASE_AFTER seconds, so they stay exact
#: to about a millisecond inside any window.
MAX_WINDOW = 3600.0
#: Most event names the config may map onto their own custom detector weight.
MAX_CUSTOM_EVENTS = 250


class ConfigError(ValueError):
    """The configuration is invalid; the message names the offending key."""


Positive = Annotated[float, msgspec.Meta(gt=0)]
NonNegative = Annotated[float, msgspec.Meta(ge=0)]
Window = Annotated[float, msgspec.Meta(gt=0, le=MAX_WINDOW)]
Weight = Annotated[float, msgspec.Meta(ge=0, le=100)]
Count = Annotated[int, msgspec.Meta(ge=2, le=RING_SIZE + 1)]


class _Base(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    pass


class RageClick(_Base):
    """Clicks on one target in quick succession.

    Fast: ``min_clicks`` within ``window`` seconds (default 3 in 1 s, as PostHog and Datadog)
    adds ``weight``. Slow: ``slow_min_clicks`` within ``slow_window`` seconds on a target that
    also gave a ``dead_click`` within ``slow_window`` (default 3 in 7 s: Sentry's rage on an
    element that does not respond) adds ``slow_weight``, unless the fast one fired in the same
    run. A ``dead_click`` is not a click more: the browser script sends the click at once and
    the dead click a second later. Either fires once per run, however long it lasts; a pause
    longer than the window ends the run, a click on another target starts over. A double click
    (2) is not rage. A click whose ``properties.selection`` is set (the browser script sends
    ``"text"`` when the click selected text, ``"scroll"`` when the page scrolled) vetoes the
    run, as Datadog's does: a triple click that selects a paragraph is not rage.
    """

    enabled: bool = True
    weight: Weight = 1.2
    min_clicks: Count = 3
    window: Window = 1.0
    slow_weight: Weight = 0.6
    slow_min_clicks: Count = 3
    slow_window: Window = 7.0


class DeadClick(_Base):
    """``dead_click`` events: clicks that got no response (the browser script reports them).

    Every dead click adds pressure: ``weight`` when it makes a run of at least ``min_clicks``
    on the same target, each within ``window`` seconds of the one before; ``single_weight``
    otherwise. A single dead click (clicking on a label) is a weak signal, and so is a pair
    (0.3 + 0.5 stays under the threshold); a third, or dead clicks with any other sign of
    trouble, fire.
    """

    enabled: bool = True
    weight: Weight = 0.5
    single_weight: Weight = 0.3
    min_clicks: Annotated[int, msgspec.Meta(ge=1, le=255)] = 2
    window: Window = 60.0


class ErrorClick(_Base):
    """A click followed within ``window`` seconds by an ``error``,
    ``api_error`` or ``form_error``, with no page change between (Datadog's "error click"):
    ``weight`` once per click, times the status factors of ``error_burst``."""

    enabled: bool = True
    weight: Weight = 0.4
    window: Window = 3.0


class ErrorBurst(_Base):
    """``min_errors`` ``error``/``api_error``/``form_error`` events within ``window`` seconds.

    The status of an ``api_error`` (``properties.status``) scales the weight of every error
    detector (this one, ``repeat_failure`` and ``error_click``): one in ``ordinary_statuses``
    (a 401 asking to sign in, a 404 for a missing record: the user's ordinary business) by
    ``ordinary_factor``; one in ``refusal_statuses`` (402 payment declined, 403 forbidden: the
    product saying no) by ``refusal_factor``.
    """

    enabled: bool = True
    weight: Weight = 1.0
    min_errors: Count = 3
    window: Window = 60.0
    ordinary_statuses: list[int] = msgspec.field(default_factory=lambda: [401, 404])
    ordinary_factor: Annotated[float, msgspec.Meta(ge=0, le=1)] = 0.3
    refusal_statuses: list[int] = msgspec.field(default_factory=lambda: [402, 403])
    refusal_factor: Annotated[float, msgspec.Meta(ge=1, le=10)] = 1.5

    def __post_init__(self) -> None:
        both = set(self.ordinary_statuses) & set(self.refusal_statuses)
        if both:
            raise ValueError(f"statuses {sorted(both)} are both ordinary and refusals")


class RepeatFailure(_Base):
    """Failures that keep coming: evidence that accumulates with every further attempt.

    Failures on a target (``error``, ``api_error``, ``form_error`` naming a field or an
    endpoint; a stray script error with no target is no attempt of the user's) form a run while
    each comes within
    ``window`` seconds of the one before (a person rereads, edits and tries again: minutes,
    not seconds) and is on the same target, or on the same step visit. From the
    ``min_failures``-th failure of a run on, every failure adds ``weight`` when it is on the
    same target as the one before, ``area_weight`` when another target of the step refused
    (a permission wall: one endpoint after another). One validation error fixed at once is
    not a run; two different fields wrong once each stay under the threshold.
    """

    enabled: bool = True
    weight: Weight = 0.6
    area_weight: Weight = 0.45
    min_failures: Count = 2
    window: Window = 300.0


class UTurn(_Base):
    """Navigation loops: going back to the previous step after less than ``bounce`` seconds
    (A -> B -> A) is a u-turn.

    Every u-turn adds pressure: ``weight`` from the ``min_uturns``-th u-turn of a run on (each
    within ``window`` seconds of the one before), ``single_weight`` otherwise. A single quick
    back (Clarity's signal) is weak; fast navigation forward (A -> B -> C -> D) is nothing.
    """

    enabled: bool = True
    weight: Weight = 0.6
    single_weight: Weight = 0.25
    min_uturns: Annotated[int, msgspec.Meta(ge=1, le=255)] = 2
    window: Window = 120.0
    bounce: Positive = 30.0


class EmptySearch(_Base):
    """Searches with zero results (``properties.results == 0``): from the ``min_searches``-th
    of a run on (each within ``window`` seconds of the one before) every one adds ``weight``;
    the others ``single_weight``. One empty search, refined and found, is normal."""

    enabled: bool = True
    weight: Weight = 0.6
    single_weight: Weight = 0.0
    min_searches: Annotated[int, msgspec.Meta(ge=1, le=255)] = 2
    window: Window = 120.0


class HelpSeeking(_Base):
    """``help`` and ``contact`` views: weak alone, ``boost`` times stronger when the other
    detectors' pressure is at least ``after_friction`` (the user went looking for help because
    something went wrong). ``contact`` is the last moment to help before a ticket.
    """

    enabled: bool = True
    help_weight: Weight = 0.1
    contact_weight: Weight = 0.25
    after_friction: NonNegative = 0.3
    boost: Annotated[float, msgspec.Meta(ge=1, le=100)] = 4.0


class Stall(_Base):
    """Time on the current step beyond what the other users need there.

    Durations of finished step visits (up to ``max_duration`` seconds; longer ones are idle
    tabs, not reading) feed a per-step log-bucket histogram; visits during which the user had
    an episode, opened help or contact stay out of it, so stuck users do not teach the step
    that being stuck is normal. Once a step has ``min_samples`` visits, its *limit* is
    ``max(min_seconds, factor * q)``, ``q`` being the ``quantile`` of those durations (the
    median by default: it holds up when up to half the visits are outliers). Past the limit,
    the stall pressure grows with the time: it is at least ``weight`` per ``limit`` seconds
    beyond the limit (with the defaults it fires alone at 1.92 limits, 5.7 times what users
    need), judged at each event of the user and at ``Tracker.tick()`` (so a silent user is
    caught by the host's periodic tick). A success on the step ends it for the visit.
    """

    enabled: bool = True
    weight: Weight = 1.0
    quantile: Annotated[float, msgspec.Meta(gt=0, lt=1)] = 0.5
    factor: Annotated[float, msgspec.Meta(ge=1)] = 3.0
    min_seconds: NonNegative = 60.0
    min_samples: Annotated[int, msgspec.Meta(ge=1)] = 20
    max_duration: Positive = 3600.0


class Detectors(_Base):
    """Every default detector; switch one off with ``enabled = false``."""

    rage_click: RageClick = msgspec.field(default_factory=RageClick)
    dead_click: DeadClick = msgspec.field(default_factory=DeadClick)
    error_burst: ErrorBurst = msgspec.field(default_factory=ErrorBurst)
    repeat_failure: RepeatFailure = msgspec.field(default_factory=RepeatFailure)
    uturn: UTurn = msgspec.field(default_factory=UTurn)
    empty_search: EmptySearch = msgspec.field(default_factory=EmptySearch)
    help_seeking: HelpSeeking = msgspec.field(default_factory=HelpSeeking)
    stall: Stall = msgspec.field(default_factory=Stall)
    error_click: ErrorClick = msgspec.field(default_factory=ErrorClick)


class Scoring(_Base):
    """How activations become a score and an episode.

    Each activation adds its weight to the detector's *pressure*; pressures decay
    exponentially with ``half_life`` seconds. The score is ``1 - exp(-sum of pressures)``, in
    [0, 1). An episode fires when the score reaches ``threshold``; the user must then fall
    below ``rearm`` (hysteresis) and ``cooldown`` seconds must pass before the next one.
    ``success_relief`` is the share of pressure a ``success`` event removes.
    """

    half_life: Positive = 180.0
    threshold: Annotated[float, msgspec.Meta(gt=0, lt=1)] = 0.6
    rearm: Annotated[float, msgspec.Meta(ge=0, lt=1)] = 0.3
    cooldown: NonNegative = 600.0
    success_relief: Annotated[float, msgspec.Meta(ge=0, le=1)] = 1.0

    def __post_init__(self) -> None:
        if self.rearm > self.threshold:
            raise ValueError("`rearm` must not exceed `threshold`")


class EventMapping(_Base):
    """Maps a host's own event name onto a canonical type, or onto a custom detector weight.

    ``{"type": "error"}`` makes "Payment Failed" an ``error``; ``{"weight": 0.5}`` makes it a
    signal of its own (detector ``custom``) that adds 0.5 pressure each time it is seen.
    """

    type: str | None = None
    weight: Weight | None = None

    def __post_init__(self) -> None:
        if (self.type is None) == (self.weight is None):
            raise ValueError("give exactly one of `type` or `weight`")


#: Guidance item ids, also used as event targets: letters, digits and ``_ . : -``.
GUIDANCE_ID = r"^[A-Za-z0-9][A-Za-z0-9_.:-]*$"
TraitValue = str | int | float | bool | list[str | int | float | bool]


class GuidanceItem(_Base, kw_only=True):
    """One piece of help the host can put on the user's screen.

    ``kind`` is how to show it: ``tooltip`` (attached to the element ``anchor``, a CSS
    selector), ``banner``, ``modal`` or ``link``. ``body`` is plain text or a small safe
    Markdown subset (``**bold**``, ``*emphasis*``, ``` `code` ```, ``[text](https://...)``,
    ``- `` lists, blank-line paragraphs; see :func:`pyfriction.guidance.render_body`).
    ``locale`` (e.g. ``"de"``): the item is only offered to users whose locale matches.
    """

    id: Annotated[str, msgspec.Meta(min_length=1, max_length=128, pattern=GUIDANCE_ID)]
    kind: Literal["tooltip", "banner", "modal", "link"] = "tooltip"
    title: Annotated[str, msgspec.Meta(min_length=1, max_length=300)]
    body: Annotated[str, msgspec.Meta(max_length=10_000)] = ""
    url: Annotated[str, msgspec.Meta(pattern=r"^(https?://[^\s]+|/[^\s]*)$")] | None = None
    anchor: Annotated[str, msgspec.Meta(min_length=1, max_length=1024)] | None = None
    locale: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z]{2,8}([-_][A-Za-z0-9]{1,8})*$")] | None = None


class GuidanceRule(_Base, kw_only=True):
    """When to offer which item: every condition given must hold.

    ``step`` and ``target`` are exact names or glob patterns (``billing.*``, ``#card-*``);
    ``detectors``: at least one of them is among the episode's reasons; ``traits``: each
    user trait (from ``Tracker.identify``) equals the value, or is one of a list of values;
    ``locale``: the user's ``locale`` trait is this language (``"de"`` matches ``de-AT``) or
    exactly this locale. ``guidance`` is an item id or a list of them: the first one the
    caps and the user's locale allow is offered.

    The most specific matching rule wins: the one with the most conditions (each trait
    counts), then the most exact (non-glob) step/target; ties go to the rule declared first.
    When a rule's items are all capped for the user, the next matching rule is tried.
    """

    guidance: Annotated[str, msgspec.Meta(min_length=1)] | Annotated[list[str], msgspec.Meta(min_length=1)]
    step: Annotated[str, msgspec.Meta(min_length=1)] | None = None
    target: Annotated[str, msgspec.Meta(min_length=1)] | None = None
    detectors: list[str] = msgspec.field(default_factory=list)
    traits: dict[str, TraitValue] = msgspec.field(default_factory=dict)
    locale: Annotated[str, msgspec.Meta(min_length=1)] | None = None

    @property
    def items(self) -> list[str]:
        """The candidate item ids, in order."""
        return [self.guidance] if isinstance(self.guidance, str) else list(self.guidance)


class GuidanceCaps(_Base):
    """Not annoying anyone: limits on the guidance one user is offered.

    At most ``per_day`` items in any rolling 24 hours; the same item not again within
    ``item_cooldown`` seconds; an item the user dismissed not again for ``dismiss_for``
    seconds; and nothing new while an earlier item is still pending display.
    """

    per_day: Annotated[int, msgspec.Meta(ge=0, le=1000)] = 3
    item_cooldown: NonNegative = 3600.0
    dismiss_for: NonNegative = 30 * 86400.0


class Holdout(_Base):
    """The users who never get guidance, so its effect can be measured.

    A user is in the holdout when a hash of ``salt`` and their user id falls below ``share``:
    the same users on every process and after every restart; change ``salt`` to draw anew.
    """

    share: Annotated[float, msgspec.Meta(ge=0, le=1)] = 0.10
    salt: Annotated[str, msgspec.Meta(max_length=256)] = "pyfriction-holdout"


class GuidanceConfig(_Base):
    """The guidance catalog (``items``), the ``rules`` choosing from it, ``caps`` and ``holdout``.

    A pending item expires ``expire_after`` seconds after its episode. ``default_locale`` is
    the locale of users with no ``locale`` trait. Insights count a ticket against guidance
    (deflection) and against an episode (lead time) when it comes within
    ``attribution_window`` seconds of it.
    """

    enabled: bool = True
    items: list[GuidanceItem] = msgspec.field(default_factory=list)
    rules: list[GuidanceRule] = msgspec.field(default_factory=list)
    caps: GuidanceCaps = msgspec.field(default_factory=GuidanceCaps)
    holdout: Holdout = msgspec.field(default_factory=Holdout)
    expire_after: Positive = 900.0
    default_locale: str | None = None
    attribution_window: Positive = 86400.0

    def __post_init__(self) -> None:
        seen: set[str] = set()
        for i, item in enumerate(self.items):
            if item.id in seen:
                raise ValueError(f"items[{i}].id: duplicate guidance item {item.id!r}")
            seen.add(item.id)
        for i, rule in enumerate(self.rules):
            for item_id in rule.items:
                if item_id not in seen:
                    raise ValueError(f"rules[{i}].guidance: unknown guidance item {item_id!r}")
            for name in rule.detectors:
                if name not in DETECTOR_NAMES:
                    raise ValueError(
                        f"rules[{i}].detectors: unknown detector {name!r}; expected one of {', '.join(DETECTOR_NAMES)}"
                    )


class Webhook(_Base, kw_only=True):
    """``[sinks.webhook]``: post episodes as signed JSON to ``url``.

    Each request carries ``Pyfriction-Signature: t=<unix time>,v1=<hex HMAC-SHA256 of
    "<t>.<body>" keyed with secret>`` (see :func:`pyfriction.sinks.verify`). Only episodes
    with a score of at least ``min_score``, one of ``detectors`` among their reasons (any
    when empty) and a step matching one of ``steps`` (globs; any when empty) are sent. A
    failed delivery (network error, timeout, HTTP 408/429/5xx) is retried ``retries`` times,
    waiting ``backoff`` seconds, then twice as long each time up to ``max_backoff``.
    """

    url: Annotated[str, msgspec.Meta(pattern=r"^https?://[^\s]+$")]
    secret: Annotated[str, msgspec.Meta(min_length=8)]
    min_score: Annotated[float, msgspec.Meta(ge=0, lt=1)] = 0.0
    detectors: list[str] = msgspec.field(default_factory=list)
    steps: list[str] = msgspec.field(default_factory=list)
    timeout: Positive = 5.0
    retries: Annotated[int, msgspec.Meta(ge=0, le=20)] = 3
    backoff: Positive = 1.0
    max_backoff: Positive = 60.0
    queue_size: Annotated[int, msgspec.Meta(ge=1)] = 1000

    def __post_init__(self) -> None:
        for name in self.detectors:
            if name not in DETECTOR_NAMES:
                raise ValueError(f"detectors: unknown detector {name!r}; expected one of {', '.join(DETECTOR_NAMES)}")


class Sinks(_Base):
    """Where episodes are sent besides the callbacks."""

    webhook: Webhook | None = None


class SegmentMapping(_Base):
    """How Segment-style ``track``/``page`` payloads map onto events (``pyfriction.segment``).

    Each field is a list of dotted paths into the payload; the first one present wins.
    The event type is ``page`` for a page call, the event name for a track call (map your own
    names with ``event_map``).
    """

    step: list[str] = msgspec.field(default_factory=lambda: ["properties.step", "name", "context.page.path"])
    target: list[str] = msgspec.field(default_factory=lambda: ["properties.target"])
    account_id: list[str] = msgspec.field(default_factory=lambda: ["context.groupId", "properties.account_id"])


class Events(_Base):
    """What an event may be. ``ts`` outside [``ts_min``, now + ``ts_max_ahead``] (seconds since
    the epoch; now is the wall clock) is refused with ``InvalidEvent``: one event in
    milliseconds would otherwise freeze its user's clock (the message names milliseconds
    when that is what it looks like). Replaying old data: lower ``ts_min``."""

    #: Earliest plausible event time (default 2000-01-01T00:00:00Z).
    ts_min: Annotated[float, msgspec.Meta(ge=0)] = 946_684_800.0
    #: How far past the wall clock an event time may lie, in seconds (default one day).
    ts_max_ahead: Annotated[float, msgspec.Meta(ge=0, le=1e12)] = 86_400.0


class Config(_Base):
    """The whole configuration. Every field has a default that works for a typical SaaS app."""

    detectors: Detectors = msgspec.field(default_factory=Detectors)
    scoring: Scoring = msgspec.field(default_factory=Scoring)
    #: What an event may be: the plausible range of its time (see :class:`Events`).
    events: Events = msgspec.field(default_factory=Events)
    #: Event name -> canonical type name, or an :class:`EventMapping`.
    event_map: dict[str, str | EventMapping] = msgspec.field(default_factory=dict)
    #: Glob patterns (fnmatch) of targets whose events are counted and otherwise ignored.
    exclude_targets: list[str] = msgspec.field(default_factory=list)
    #: Glob patterns of steps whose events are counted and otherwise ignored.
    exclude_steps: list[str] = msgspec.field(default_factory=list)
    #: Users tracked at once; the least recently active is evicted beyond it.
    capacity: Annotated[int, msgspec.Meta(ge=1, le=1 << 30)] = 1_000_000
    #: Users silent for longer than this many seconds are evicted (None: only when full).
    idle_ttl: Positive | None = None
    #: Steps with a learned duration baseline (stall detector); later steps get none.
    max_steps: Annotated[int, msgspec.Meta(ge=1, le=1 << 20)] = 4096
    #: Episodes waiting for the background dispatcher before new ones are dropped (and counted).
    queue_size: Annotated[int, msgspec.Meta(ge=1)] = 10_000
    #: The guidance catalog, rules, caps and holdout (see :class:`GuidanceConfig`).
    guidance: GuidanceConfig = msgspec.field(default_factory=GuidanceConfig)
    #: Episode sinks: ``[sinks.webhook]``.
    sinks: Sinks = msgspec.field(default_factory=Sinks)
    #: Mapping of Segment-style payloads (``pyfriction report``, the sidecar).
    segment: SegmentMapping = msgspec.field(default_factory=SegmentMapping)

    def __post_init__(self) -> None:
        customs = 0
        for name, target in self.event_map.items():
            kind = target if isinstance(target, str) else target.type
            if kind is not None and kind not in TYPE_CODES:
                raise ValueError(
                    f"event_map[{name!r}]: unknown type {kind!r}; expected one of {', '.join(sorted(TYPE_CODES))}"
                )
            if kind is None:
                customs += 1
        if customs > MAX_CUSTOM_EVENTS:
            raise ValueError(f"event_map: at most {MAX_CUSTOM_EVENTS} custom-weight events")
        for field in ("exclude_targets", "exclude_steps"):
            for pattern in getattr(self, field):
                if not pattern:
                    raise ValueError(f"{field}: empty pattern")
        for name, value in _floats(self):
            if not math.isfinite(value):
                raise ValueError(f"{name}: must be finite")


def _floats(obj: Any, prefix: str = "") -> list[tuple[str, float]]:
    out: list[tuple[str, float]] = []
    for field in getattr(obj, "__struct_fields__", ()):
        value = getattr(obj, field)
        if isinstance(value, float):
            out.append((prefix + field, value))
        elif isinstance(value, msgspec.Struct):
            out.extend(_floats(value, prefix + field + "."))
    return out


def _merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """Deep-merge keyword overrides (``detectors={"rage_click": {...}}``) into a dict."""
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def load_config(config: None | Config | Mapping[str, Any] | str | os.PathLike[str] = None, **options: Any) -> Config:
    """Build a validated :class:`Config`.

    ``config`` is ``None`` (defaults), a :class:`Config`, a mapping, or the path of a TOML file.
    Keyword ``options`` override top-level keys (nested mappings are merged), e.g.
    ``load_config("app.toml", capacity=10_000, scoring={"threshold": 0.7})``.
    Raises :class:`ConfigError` naming the offending key.
    """
    if isinstance(config, Config):
        if not options:
            return config
        data: dict[str, Any] = msgspec.to_builtins(config)
    elif config is None:
        data = {}
    elif isinstance(config, Mapping):
        data = dict(config)
    elif isinstance(config, (str, os.PathLike)):
        try:
            with open(config, "rb") as fh:
                data = tomllib.load(fh)
        except OSError as exc:
            raise ConfigError(f"cannot read config file {os.fspath(config)!r}: {exc}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{os.fspath(config)}: invalid TOML: {exc}") from None
    else:
        raise ConfigError(f"config must be None, a Config, a mapping or a TOML path, not {type(config).__name__}")
    if options:
        data = _merge(data, options)
    _check_event_map(data.get("event_map"))
    try:
        return msgspec.convert(data, Config)
    except msgspec.ValidationError as exc:
        raise ConfigError(str(exc)) from None


def _check_event_map(event_map: Any) -> None:
    """Validate event_map entries one by one: msgspec's own paths elide mapping keys
    (``$.event_map[...]``), and the user needs to know which event name is wrong."""
    if not isinstance(event_map, Mapping):
        return
    for name, mapped in event_map.items():
        where = f"$.event_map[{name!r}]"
        try:
            msgspec.convert(mapped, str | EventMapping)
        except msgspec.ValidationError as exc:
            msg = str(exc)
            if "- at `$" in msg:
                msg = msg.replace("- at `$", f"- at `{where}", 1)
            else:
                msg = f"{msg} - at `{where}`"
            raise ConfigError(msg) from None


#: The weight fields of each built-in detector, scaled together by calibration (the first is
#: the detector's main weight).
WEIGHT_FIELDS: dict[str, tuple[str, ...]] = {
    "rage_click": ("weight", "slow_weight"),
    "dead_click": ("weight", "single_weight"),
    "error_burst": ("weight",),
    "repeat_failure": ("weight", "area_weight"),
    "uturn": ("weight", "single_weight"),
    "empty_search": ("weight", "single_weight"),
    "help_seeking": ("help_weight", "contact_weight"),
    "stall": ("weight",),
    "error_click": ("weight",),
}


def detector_weights(config: Config) -> dict[str, float]:
    """Each built-in detector's main weight (the first of its :data:`WEIGHT_FIELDS`)."""
    return {d: float(getattr(getattr(config.detectors, d), fields[0])) for d, fields in WEIGHT_FIELDS.items()}
