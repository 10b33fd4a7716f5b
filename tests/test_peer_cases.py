"""Peer products' published rage, dead, error-click and quick-back cases, run on pyfriction.

Each case is one published test (or a documented definition, or a constant of the peer's
code when it publishes no test) of PostHog, Datadog, Sentry, OpenReplay or Microsoft Clarity,
named by repository, file, test name and a URL at the commit read. Its event stream
reproduces the peer's timing and targets; the expectation is pyfriction's, written from the
detection specification of issue 15 (weights, windows and half-life below), as the pressure
each active detector must hold after the last event and the times of the episodes fired.

Every case runs on both engines (the ``make_tracker`` fixture). A case where pyfriction
differs from the peer on purpose carries ``differs`` (its id ends in ``-differs``), one
where the specification would disagree with the peer for no reason given would carry
``concern`` (id ``-concern``; none left: the review of the first draft moved the
specification to the peers on slow rage, dead clicks counted twice and selection): both
assert pyfriction's specified behaviour, and the reason is in the failure message and
printed with ``pytest -rA``.

What pyfriction cannot see, and the mapping used:

- Pixel distance (PostHog 30 px, Datadog 100 px, Clarity's "clustered area"): clicks near
  each other are clicks on one ``target``; clicks far apart, on another target.
- DOM mutation, scroll and navigation after a click (Datadog page activity, Sentry's
  mutation/scroll timeout, OpenReplay's 1234 ms): pyfriction's browser script watches the
  page for ``deadClickMs`` (1000 ms) after a click and, when nothing changed, sends a
  ``dead_click`` for the same target *in addition to* the ``click`` it sent at once. So an
  unresponsive click is ``click`` at t plus ``dead_click`` at t + ``DEAD_AFTER`` (1.05 s:
  the timer's 1 s plus the event's own delay; it keeps streams off the 1 s rage boundary).
  A click that got a response is a ``click`` alone.
- Text selection and scroll (Datadog's ``userActivity.selection`` / ``.scroll``): the click
  carries ``properties.selection`` ("text" or "scroll"), and the script sends no
  ``dead_click`` for it.
- Errors during a click action (Datadog ``hasError``, Sentry's button that throws): an
  ``error`` event (target: the error's name, as the browser script sends it) right after
  the click, on the same step visit (a ``page`` event opens the visit).
- Pages (Clarity): a ``page`` event per page view; its ``step`` is the page.

Readings of the specification these expectations take (where it leaves room):

- Slow rage counts clicks (a ``dead_click`` is the same physical click reported later, not
  one more) on a target that gave a dead click within ``slow_window``: an element that does
  not respond, as Sentry's; it is judged at each click and at each dead click. A slow run
  ends after a pause longer than ``slow_window``; when the fast and the slow condition are
  met by the same click the fast one fires (slow is "unless the fast one already fired in
  that run"). A click with a selection vetoes its run, as Datadog's does.
- ``error_click`` credits the last click before the error.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

import pyfriction

from helpers import T0, ev

# -- the specification's defaults (issue 15) ----------------------------------------------------
HALF_LIFE = 180.0
RATE = math.log(2.0) / HALF_LIFE
RAGE_FAST, RAGE_SLOW = 1.2, 0.6
DEAD, DEAD_SINGLE = 0.5, 0.3
ERROR_CLICK = 0.4
UTURN, UTURN_SINGLE = 0.6, 0.25
THRESHOLD_SUM = -math.log(1.0 - 0.6)  # 0.916: an episode when the pressures add up to this

#: When the browser script's dead_click arrives after the click it reports (1 s timer + delay).
DEAD_AFTER = 1.05
USER = "u1"
STEP = "checkout"


# -- sources ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Source:
    peer: str
    repo: str | None  # None: documentation outside a repository
    path: str
    test: str  # the test's name, or the section of a document / the code's constant
    url: str

    def __str__(self) -> str:
        where = f"{self.repo}:{self.path}" if self.repo else self.path
        return f"{self.peer}: {where} :: {self.test} <{self.url}>"


POSTHOG_SHA = "9b2a1b18db64f9f6b331cbded543c5ead3ccf0cb"
DATADOG_SHA = "b2344e747e09411a5fd95b9752f427f81a9e1a88"
SENTRY_SHA = "f7a6cc0c221c324026287a7218ed07e929eb69d4"
SENTRY_DOCS_SHA = "04ae77eacf0930badeabfc99c8466b5e05923b19"
OPENREPLAY_SHA = "dbb68105e865052d6ec0d49c9d2d13cf5d5f4aef"


def github(repo: str, sha: str, path: str) -> str:
    return f"https://github.com/{repo}/blob/{sha}/{path}"


def posthog(test: str, path: str = "packages/browser/src/__tests__/extensions/rageclick.test.ts") -> Source:
    return Source("PostHog", "PostHog/posthog-js", path, test, github("PostHog/posthog-js", POSTHOG_SHA, path))


DD_ACTION = "packages/browser-rum-core/src/domain/action/"


def datadog(test: str, file: str = "computeFrustration.spec.ts") -> Source:
    path = DD_ACTION + file
    return Source("Datadog", "DataDog/browser-sdk", path, test, github("DataDog/browser-sdk", DATADOG_SHA, path))


SENTRY_UNIT = "packages/replay-internal/test/unit/coreHandlers/handleClick.test.ts"
SENTRY_SLOW = "dev-packages/browser-integration-tests/suites/replay/slowClick/"


def sentry(test: str, path: str = SENTRY_UNIT) -> Source:
    repo = "getsentry/sentry-javascript"
    return Source("Sentry", repo, path, test, github(repo, SENTRY_SHA, path))


SENTRY_RAGE_DOC = Source(
    "Sentry",
    "getsentry/sentry-docs",
    "docs/product/issues/issue-details/replay-issues/rage-clicks.mdx",
    "Detection Criteria: 3 or more clicks within the 7 s timeout on an unresponsive <button>, <input>, <a>",
    github("getsentry/sentry-docs", SENTRY_DOCS_SHA, "docs/product/issues/issue-details/replay-issues/rage-clicks.mdx"),
)

OPENREPLAY_RAGE = Source(
    "OpenReplay",
    "openreplay/openreplay",
    "backend/pkg/handlers/web/clickRage.go",
    "ClickRageDetector (no published test): MinClicksInARow = 3, each < MaxTimeDiff = 300 ms after the last",
    github("openreplay/openreplay", OPENREPLAY_SHA, "backend/pkg/handlers/web/clickRage.go"),
)

CLARITY_QUICK_BACK = Source(
    "Clarity",
    None,
    "learn.microsoft.com/en-us/clarity/insights/semantic-metrics",
    "Quick backs: a user goes to a new page, then returns to the previous page in less than a threshold",
    "https://learn.microsoft.com/en-us/clarity/insights/semantic-metrics",
)


# -- event builders (times in seconds after T0) ---------------------------------------------------
def click(t: float, target: str = "#buy", selection: str | None = None) -> dict[str, Any]:
    if selection is None:
        return ev(USER, "click", T0 + t, STEP, target)
    return ev(USER, "click", T0 + t, STEP, target, selection=selection)


def clicks(target: str, *times: float) -> list[dict[str, Any]]:
    return [click(t, target) for t in times]


def dead(t: float, target: str = "#buy") -> dict[str, Any]:
    return ev(USER, "dead_click", T0 + t, STEP, target)


def unresponsive(target: str, *times: float) -> list[dict[str, Any]]:
    """Clicks that got no response: each a ``click`` and, DEAD_AFTER later, a ``dead_click``."""
    return stream([click(t, target) for t in times], [dead(t + DEAD_AFTER, target) for t in times])


def error(t: float, target: str = "TypeError") -> dict[str, Any]:
    return ev(USER, "error", T0 + t, STEP, target)


def page(t: float, step: str = STEP) -> dict[str, Any]:
    return ev(USER, "page", T0 + t, step)


def pages(*visits: tuple[float, str]) -> list[dict[str, Any]]:
    return [page(t, s) for t, s in visits]


def stream(*parts: dict[str, Any] | list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The events in time order (a stable sort: events at one time keep the order given)."""
    events: list[dict[str, Any]] = []
    for part in parts:
        events.extend(part if isinstance(part, list) else [part])
    return sorted(events, key=lambda e: e["ts"])


# -- cases --------------------------------------------------------------------------------------
#: detector -> the activations expected: (weight, seconds after T0 when it was added)
Activations = dict[str, list[tuple[float, float]]]


@dataclass(frozen=True)
class Case:
    name: str
    source: Source
    peer: str  # what the peer's test expects
    events: Callable[[], list[dict[str, Any]]]
    active: Activations  # pyfriction's active detectors after the last event (empty: none)
    episodes: tuple[float, ...] = ()  # when episodes fire (seconds after T0)
    config: dict[str, Any] = field(default_factory=dict)
    mapping: str = ""  # how the peer's case became events, when not obvious
    differs: str | None = None  # pyfriction differs from the peer on purpose: why
    concern: str | None = None  # the specification disagrees with the peer for no reason given

    @property
    def id(self) -> str:
        suffix = "-differs" if self.differs else "-concern" if self.concern else ""
        return f"{self.source.peer.lower()}-{self.name}{suffix}"

    def describe(self) -> str:
        lines = [f"source: {self.source}", f"peer expects: {self.peer}"]
        if self.mapping:
            lines.append(f"mapping: {self.mapping}")
        if self.differs:
            lines.append(f"DIFFERS on purpose: {self.differs}")
        if self.concern:
            lines.append(f"CONCERN (spec vs peer): {self.concern}")
        return "\n".join(lines)


CASES: list[Case] = [
    # -- PostHog: RageClick.isRageClick, 3 clicks, each < 1000 ms and < 30 px from the previous ---------
    Case(
        "identifies-rage",
        posthog("RageClick() when enabled (default config) identifies some rage clicking"),
        "[false, false, true, false]: rage on the 3rd click, not again on the 4th",
        lambda: clicks("#buy", 0.010, 0.020, 0.040, 0.050),
        {"rage_click": [(RAGE_FAST, 0.040)]},
        episodes=(0.040,),
        mapping="(0,0) (10,10) (5,5) (5,5) px: within 30 px, one target",
    ),
    Case(
        "time-delta-starts-a-new-run",
        posthog("RageClick() when enabled (default config) identifies some rage clicking when time delta has passed"),
        "rage at 40 ms, silent at 80-110 ms, silent after the 1010 ms pause until the 3rd click (1122 ms)",
        lambda: clicks("#buy", 0.010, 0.020, 0.040, 0.080, 0.100, 0.110, 1.120, 1.121, 1.122),
        {"rage_click": [(RAGE_FAST, 0.040), (RAGE_FAST, 1.122)]},
        episodes=(0.040,),  # the second run adds pressure; the user is still in the episode
    ),
    Case(
        "pixel-delta-starts-a-new-run",
        posthog("RageClick() when enabled (default config) identifies some rage clicking when pixel delta has passed"),
        "rage at 40 ms; moving to x=36 (past 30 px) starts over: rage again on its 3rd click (140 ms)",
        lambda: stream(clicks("#buy", 0.010, 0.020, 0.040, 0.080, 0.100, 0.110), clicks("#buy-next", 0.12, 0.13, 0.14)),
        {"rage_click": [(RAGE_FAST, 0.040), (RAGE_FAST, 0.140)]},
        episodes=(0.040,),
        mapping="the clicks 31 px away are on another element: another target",
    ),
    Case(
        "too-far-apart-in-time",
        posthog("RageClick() when enabled (default config) does not capture clicks too far apart (time)"),
        "no rage (10 ms, 20 ms, 4000 ms)",
        lambda: clicks("#buy", 0.010, 0.020, 4.0),
        {},  # not fast; not slow either: the element never gave a dead click
    ),
    Case(
        "too-far-apart-in-space",
        posthog("RageClick() when enabled (default config) does not capture clicks too far apart (space)"),
        "no rage: the 3rd click is 40 px away",
        lambda: stream(clicks("#buy", 0.010, 0.020), click(0.040, "#cancel")),
        {},
        mapping="the click 40 px away is on another element",
    ),
    Case(
        "custom-click-count",
        posthog("RageClick() when enabled (custom configuration) respects custom click count"),
        "{click_count: 2}: rage on the 2nd click",
        lambda: clicks("#buy", 0.0, 0.1),
        {"rage_click": [(RAGE_FAST, 0.1)]},
        episodes=(0.1,),
        config={"detectors": {"rage_click": {"min_clicks": 2}}},
    ),
    Case(
        "custom-timeout",
        posthog("RageClick() when enabled (custom configuration) respects custom timeout"),
        "{timeout_ms: 100}: no rage (0, 50, 500 ms)",
        lambda: clicks("#buy", 0.0, 0.05, 0.5),
        {},  # fast (window 0.1 s) silent; slow needs a dead click
        config={"detectors": {"rage_click": {"window": 0.1}}},
    ),
    Case(
        "gaps-under-a-second",
        posthog(
            "isRageClick: `timestamp - lastClick.timestamp < timeoutMs` (code)",
            "packages/browser/src/extensions/rageclick.ts",
        ),
        "rage: clicks at 0, 900, 1800 ms (each within 1000 ms of the previous one)",
        lambda: clicks("#next", 0.0, 0.9, 1.8),
        {},
        differs=(
            "fast rage needs min_clicks within one window from first to last, as Datadog's isRage and PostHog's own "
            "docs for timeout_ms ('between the first and last click'); PostHog's code only bounds each gap. The "
            "slow rule needs an element that gave a dead click: a responsive 'Next' clicked three times is not rage"
        ),
    ),
    # -- Datadog: computeFrustration / isRage / isDead, trackClickActions ------------------------------
    Case(
        "israge-three-clicks-at-once",
        datadog("isRage considers as rage three clicks happening at the same time"),
        "rage",
        lambda: clicks("#buy", 0.0, 0.0, 0.0),
        {"rage_click": [(RAGE_FAST, 0.0)]},
        episodes=(0.0,),
    ),
    Case(
        "israge-two-clicks-at-once",
        datadog("isRage does not consider as rage two clicks happening at the same time"),
        "no rage",
        lambda: clicks("#buy", 0.0, 0.0),
        {},
    ),
    Case(
        "israge-triple-click-selects-paragraph",
        datadog("isRage does not consider as rage when triple clicking to select a paragraph"),
        "no rage: the 2nd click changed the selection",
        lambda: [click(0.0, "p.intro"), click(0.0, "p.intro", selection="text"), click(0.0, "p.intro")],
        {},
        mapping="userActivity.selection -> properties.selection='text' (ignored by rage: 2 clicks count)",
    ),
    Case(
        "israge-scroll",
        datadog('isRage does not consider rage when at least one click is related to a "scroll" event'),
        "no rage",
        lambda: [click(0.0), click(0.0, selection="scroll"), click(0.0)],
        {},
        mapping="userActivity.scroll -> properties.selection='scroll' (ignored by rage: 2 clicks count)",
    ),
    Case(
        "israge-first-click-long-before-two-fast",
        datadog("isRage does not consider as rage a first click long before two fast clicks"),
        "no rage (0 s, 2 s, 2 s)",
        lambda: clicks("#buy", 0.0, 2.0, 2.0),
        {},
    ),
    Case(
        "israge-first-click-long-before-three-fast",
        datadog("isRage considers as rage a first click long before three fast clicks"),
        "rage (0 s, 2 s, 2 s, 2 s)",
        lambda: clicks("#buy", 0.0, 2.0, 2.0, 2.0),
        {"rage_click": [(RAGE_FAST, 2.0)]},  # the 4th click makes 3 within 1 s
        episodes=(2.0,),
    ),
    Case(
        "israge-three-fast-long-before-a-last",
        datadog("isRage considers as rage three fast clicks long before a last click"),
        "rage (0 s, 0 s, 0 s, 2 s)",
        lambda: clicks("#buy", 0.0, 0.0, 0.0, 2.0),
        {"rage_click": [(RAGE_FAST, 0.0)]},  # the 4th click is in the same slow run: nothing more
        episodes=(0.0,),
    ),
    Case(
        "no-dead-when-double-click-selects-a-word",
        datadog("computeFrustration ... does not add a dead frustration when double clicking to select a word"),
        "no dead click, no frustration",
        lambda: [click(0.0, "td.name"), click(0.15, "td.name", selection="text")],
        {},
        mapping="the browser script sends no dead_click when the click selected text",
    ),
    Case(
        "dead-click",
        datadog(
            'trackClickActions dead clicks considers a "click without activity" as a dead click',
            "trackClickActions.spec.ts",
        ),
        "one dead-click frustration",
        lambda: unresponsive("#buy", 0.0),
        {"dead_click": [(DEAD_SINGLE, DEAD_AFTER)]},  # a single dead click is weak: no episode
    ),
    Case(
        "dead-frustration-on-one-of-two-clicks",
        datadog(
            "computeFrustration if clicks are not considered as rage adds a dead frustration to clicks that do not have activity"
        ),
        "one dead click, no rage (2 clicks; the 2nd got no response)",
        lambda: stream(click(0.0), unresponsive("#buy", 0.1)),
        # click 0, click 0.1, dead_click 1.15: the dead click is not a click more, two clicks are no rage
        {"dead_click": [(DEAD_SINGLE, 0.1 + DEAD_AFTER)]},
    ),
    Case(
        "rage-chain-is-one-action",
        datadog(
            'trackClickActions rage clicks considers a chain of three clicks or more as a single action with "rage" frustration type',
            "trackClickActions.spec.ts",
        ),
        "one action, frustration [rage] (clicks 80 ms long, activity 5 ms after each)",
        lambda: clicks("#buy", 0.080, 0.165, 0.250),
        {"rage_click": [(RAGE_FAST, 0.250)]},
        episodes=(0.250,),
    ),
    Case(
        "error-click",
        datadog(
            'trackClickActions error clicks considers a "click with activity" followed by an error as a click action with "error" frustration type',
            "trackClickActions.spec.ts",
        ),
        "frustration [error]",
        lambda: [page(0.0), click(5.0, "#save"), error(5.05)],
        {"error_click": [(ERROR_CLICK, 5.05)]},  # weak alone: no episode
    ),
    Case(
        "error-and-dead-click",
        datadog(
            'trackClickActions error clicks considers a "click without activity" followed by an error as a click action with "error" (and "dead") frustration type',
            "trackClickActions.spec.ts",
        ),
        "frustrations [error, dead]",
        lambda: stream(page(0.0), unresponsive("#save", 5.0), error(5.05)),
        {"error_click": [(ERROR_CLICK, 5.05)], "dead_click": [(DEAD_SINGLE, 5.0 + DEAD_AFTER)]},
        differs="two weak signals (0.4 + 0.3) stay under the episode threshold: active, no episode",
    ),
    Case(
        "aggregates-frustrations-of-a-rage-chain",
        datadog(
            "trackClickActions rage clicks aggregates frustration Types from all clicks", "trackClickActions.spec.ts"
        ),
        "one action, frustrations [dead, error, rage]",
        lambda: stream(page(0.0), unresponsive("#buy", 0.08), click(0.26), error(0.34), click(0.52)),
        {
            "rage_click": [(RAGE_FAST, 0.52)],
            "error_click": [(ERROR_CLICK, 0.34)],  # credited to the click just before (0.26)
            "dead_click": [(DEAD_SINGLE, 0.08 + DEAD_AFTER)],
        },
        episodes=(0.52,),
        mapping=(
            "emulateClick: click 80 ms after pointerdown, then 100 ms (the 2nd: 80 ms to its activity and the "
            "error, then 100 ms): clicks at 0.08, 0.26, 0.52 s, the error at 0.34 s; the 1st click got no response"
        ),
    ),
    Case(
        "selection-in-the-chain-vetoes-rage",
        datadog(
            "isRage: `clicks.some(click => click.getUserActivity().selection ...) -> false` (code)",
            "computeFrustration.ts",
        ),
        "no rage: one click of the chain changed the selection (plain, selection, plain, plain within 1 s)",
        lambda: [click(0.0), click(0.1, selection="text"), click(0.2), click(0.3)],
        {},  # the selecting click vetoes the run, as Datadog's does
    ),
    # -- Sentry: ClickDetector (slow click: no mutation/scroll within the timeout; 1 s merges clicks) ----
    Case(
        "docs-rage-three-clicks-in-7s",
        SENTRY_RAGE_DOC,
        "rage click issue: 3 clicks within 7 s on a button that does not respond",
        lambda: unresponsive("#submit", 0.0, 2.5, 5.0),
        {
            # clicks 0, 2.5, 5.0 within 7 s on a target that gave dead clicks: the slow rage at the 3rd
            "rage_click": [(RAGE_SLOW, 5.0)],
            "dead_click": [(DEAD_SINGLE, 1.05), (DEAD, 3.55), (DEAD, 6.05)],
        },
        # The pair of dead clicks before it (0.3 + 0.5) stays a weak signal: the episode fires with
        # the slow rage at the 3rd click, as Sentry's rage click (it fired at the 2nd dead click
        # when the weights were 0.4 + 0.7, and differed from Sentry).
        episodes=(5.0,),
    ),
    Case(
        "single-slow-click",
        sentry("Unit | coreHandlers | handleClick ClickDetector it captures a single click"),
        "one ui.slowClickDetected breadcrumb (clickCount 1, endReason timeout): a dead click, no rage",
        lambda: unresponsive("#submit", 0.0),
        {"dead_click": [(DEAD_SINGLE, DEAD_AFTER)]},
    ),
    Case(
        "clicks-within-1s-merge",
        sentry("Unit | coreHandlers | handleClick ClickDetector it captures multiple clicks"),
        "two slow clicks (0 ms with the 200 ms click merged into it; 1200 ms), clickCount 1 each: no rage",
        lambda: unresponsive("#submit", 0.0, 0.2, 1.2),
        {
            # clicks 0, 0.2, 1.2 within 7 s on a target that gave a dead click (1.05): the slow rage
            "rage_click": [(RAGE_SLOW, 1.2)],
            "dead_click": [(DEAD_SINGLE, 1.05), (DEAD, 1.25), (DEAD, 2.25)],
        },
        # the slow rage with one dead click (0.6 + 0.3) stays just under the threshold; the 2nd dead
        # click (0.5) makes the episode
        episodes=(1.25,),
        differs=(
            "Sentry merges clicks within 1 s into one slow click; pyfriction counts each click, so three clicks on "
            "an element that does not respond are a slow rage"
        ),
    ),
    Case(
        "clicks-on-different-elements",
        sentry("Unit | coreHandlers | handleClick ClickDetector it captures clicks on different elements"),
        "three slow clicks, one per button: no rage",
        lambda: stream(
            [click(0.0, b) for b in ("#b1", "#b2", "#b3")], [dead(DEAD_AFTER, b) for b in ("#b1", "#b2", "#b3")]
        ),
        # three single dead clicks (0.3 each: 0.9) stay under the threshold: no rage and no episode, as
        # Sentry's (with 0.4 each they passed it, and differed from Sentry)
        {"dead_click": [(DEAD_SINGLE, DEAD_AFTER)] * 3},
    ),
    Case(
        "mutation-before-threshold",
        sentry(
            "Unit | coreHandlers | handleClick ClickDetector mutations it does not consider clicks with mutation before threshold as slow click"
        ),
        "nothing: the page changed 500 ms after the click",
        lambda: [click(0.0, "#submit")],
        {},
        mapping="a DOM change within the browser script's 1 s: no dead_click",
    ),
    Case(
        "multi-click-on-responsive-button",
        sentry("captures multi click when not detecting slow click", SENTRY_SLOW + "multiClick/test.ts"),
        "ui.multiClick (clickCount 4), then another (clickCount 3) after the timeout: no slow click, no rage",
        lambda: clicks("#mutationButtonImmediately", 0.0, 0.05, 0.10, 0.15, 5.0, 5.05, 5.10),
        {"rage_click": [(RAGE_FAST, 0.10), (RAGE_FAST, 5.10)]},
        episodes=(0.10,),
        differs=(
            "rage is repetition, responsive or not, as PostHog, Datadog and OpenReplay count it: 3 clicks within "
            "1 s on one target are rage even on a button that reacts"
        ),
    ),
    Case(
        "multiple-clicks-counted-on-slow-button",
        sentry("multiple clicks are counted", SENTRY_SLOW + "mutation/test.ts"),
        "one ui.slowClickDetected with clickCount 4 (the button reacts after 3 s): rage on a slow element",
        lambda: unresponsive("#mutationButton", 0.0, 0.05, 0.10, 0.15),
        {
            "rage_click": [(RAGE_FAST, 0.10)],
            "dead_click": [(DEAD_SINGLE, 1.05), (DEAD, 1.10), (DEAD, 1.15), (DEAD, 1.20)],
        },
        episodes=(0.10,),
        mapping="the reaction after 3 s comes after the browser script's 1 s: a dead_click per click",
    ),
    Case(
        "slow-click-that-triggers-error",
        sentry("slow click that triggers error is captured", SENTRY_SLOW + "error/test.ts"),
        "ui.slowClickDetected (clickCount 1) and the error: no rage",
        lambda: stream(page(0.0), unresponsive("#buttonError", 5.0), error(5.01, "Error")),
        {"error_click": [(ERROR_CLICK, 5.01)], "dead_click": [(DEAD_SINGLE, 5.0 + DEAD_AFTER)]},
    ),
    # -- OpenReplay: ClickRageDetector (backend), 3 clicks in a row on one label, each < 300 ms apart -----
    Case(
        "click-rage",
        OPENREPLAY_RAGE,
        "click_rage issue (gaps of 250 ms)",
        lambda: clicks("#buy", 0.0, 0.25, 0.5),
        {"rage_click": [(RAGE_FAST, 0.5)]},
        episodes=(0.5,),
        mapping="one label: one target",
    ),
    Case(
        "gaps-over-300ms",
        OPENREPLAY_RAGE,
        "no click_rage (gaps of 400 ms)",
        lambda: clicks("#buy", 0.0, 0.4, 0.8),
        {"rage_click": [(RAGE_FAST, 0.8)]},
        episodes=(0.8,),
        differs="3 clicks within 1 s are rage, as PostHog and Datadog count it; OpenReplay's 300 ms gap is stricter",
    ),
    # -- Microsoft Clarity: quick backs (documented definition; the threshold adapts, pyfriction: 30 s) --
    Case(
        "quick-back",
        CLARITY_QUICK_BACK,
        "a quick back: to page B, back to A after 5 s",
        lambda: pages((0.0, "a"), (5.0, "b"), (10.0, "a")),
        {"uturn": [(UTURN_SINGLE, 10.0)]},
        differs="Clarity flags the session; for pyfriction one quick back is a weak signal: active, no episode",
    ),
    Case(
        "long-dwell-is-not-quick-back",
        CLARITY_QUICK_BACK,
        "no quick back: 45 s on page B is longer than the dwell-time threshold",
        lambda: pages((0.0, "a"), (10.0, "b"), (55.0, "a")),
        {},
        mapping="Clarity's threshold is the page's dwell time; pyfriction's bounce is 30 s",
    ),
    Case(
        "two-quick-backs",
        CLARITY_QUICK_BACK,
        "quick backs (A -> B -> A -> B, 5 s each)",
        lambda: pages((0.0, "a"), (5.0, "b"), (10.0, "a"), (15.0, "b")),
        {"uturn": [(UTURN_SINGLE, 10.0), (UTURN, 15.0)]},  # 0.85: still under the threshold
    ),
    Case(
        "three-quick-backs",
        CLARITY_QUICK_BACK,
        "quick backs (A -> B -> A -> B -> A, 5 s each)",
        lambda: pages((0.0, "a"), (5.0, "b"), (10.0, "a"), (15.0, "b"), (20.0, "a")),
        {"uturn": [(UTURN_SINGLE, 10.0), (UTURN, 15.0), (UTURN, 20.0)]},
        episodes=(20.0,),
    ),
    Case(
        "back-to-an-older-page-is-not-quick-back",
        CLARITY_QUICK_BACK,
        "no quick back: A -> B -> C -> A does not return to the previous page",
        lambda: pages((0.0, "a"), (5.0, "b"), (10.0, "c"), (15.0, "a")),
        {},
    ),
]


def expected_pressures(active: Activations, t_end: float) -> dict[str, float]:
    """Each detector's pressure at ``t_end``: its activations, each decayed since it was added."""
    return {name: sum(w * math.exp(-(t_end - at) * RATE) for w, at in acts) for name, acts in active.items()}


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_peer_case(make_tracker, case: Case) -> None:
    """One peer's published case on pyfriction; the case's ``describe()`` says why it differs."""
    print(case.describe())
    events = case.events()
    assert [e["ts"] for e in events] == sorted(e["ts"] for e in events), "the case's events are out of order"
    tracker: pyfriction.Tracker = make_tracker(**case.config)
    for event in events:
        tracker.observe(event)
    t_end = max(e["ts"] for e in events) - T0
    why = "\n" + case.describe()

    state = tracker.state(USER)
    assert state is not None, f"{USER} is not tracked{why}"
    got = dict(state.detectors)
    want = expected_pressures(case.active, t_end)
    assert set(got) == set(want), f"active detectors {sorted(got)} != {sorted(want)} ({got}){why}"
    for name, pressure in want.items():
        assert got[name] == pytest.approx(pressure, rel=1e-3), f"{name} pressure {got[name]} != {pressure}{why}"

    fired = [round(e.ts - T0, 6) for e in tracker.episodes_seen]
    assert fired == pytest.approx(list(case.episodes), abs=1e-6), f"episodes at {fired}{why}"


def test_cases_are_many_and_named():
    """At least 20 cases; every id unique; every case names its source."""
    assert len(CASES) >= 20
    ids = [c.id for c in CASES]
    assert len(set(ids)) == len(ids)
    for case in CASES:
        assert case.source.url.startswith("https://")
        assert case.source.test and case.peer


def total_at(active: Activations, t: float) -> float:
    """The sum of the pressures at ``t``, counting the activations made by then."""
    return sum(w * math.exp(-(t - at) * RATE) for acts in active.values() for w, at in acts if at <= t)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_expectations_follow_the_scoring_rule(case: Case) -> None:
    """The expected activations and episodes agree with the scoring rule itself: the first
    episode where the pressures first add up to the threshold, none where they never do
    (the sum peaks at activations). Engine-independent: checks the cases, not pyfriction."""
    times = sorted({at for acts in case.active.values() for _, at in acts})
    crossing = next((t for t in times if total_at(case.active, t) >= THRESHOLD_SUM), None)
    first = case.episodes[0] if case.episodes else None
    message = f"threshold crossed at {crossing}, episode expected at {first}"
    if first is None:
        assert crossing is None, message
    else:
        assert crossing == pytest.approx(first), message
