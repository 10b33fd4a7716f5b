"""Labelled user journeys: the ground truth of the detection benchmark and of calibration.

Every simulated user follows one *archetype*. A **friction** archetype struggles in one way (a
field rejected again and again, a failing upload, a permission wall, a silent stall...) and then
opens the ``contact`` page: the moment a support ticket would start. A **smooth** archetype is
normal use that looks like struggle to a naive detector (one validation error then fixed, a 401
after the session expired, many checkboxes ticked quickly, an administrator reading a heavy
settings page slowly) and then completes its task (``success``).

Pacing is drawn from realistic ranges: a person rereads, edits and tries again, so the gaps
between attempts run from about a second to two minutes. Every user first browses a few steps of
the app like anyone else, so each step gets the visits its duration baseline needs.

Modelling choice, stated: every session ends with the event that closes it (``success`` or
``contact``). A user who simply leaves sends nothing, which no server-side detector can tell from
a silent stall; the browser script reports page hides for that.

``generate(users, seed)`` returns ``(events, labels)``; ``write_log(path, events)`` writes JSON
Lines that ``pyfriction report`` and ``pyfriction calibrate`` read.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["FRICTION", "SMOOTH", "Label", "generate", "write_log"]

Event = dict[str, Any]

T0 = 1_767_225_600.0  # 2026-01-01 00:00 UTC
WINDOW = 3 * 3600.0  # users start over three hours

#: Median seconds a normal user spends on each step (lognormal, sigma DWELL_SIGMA).
DWELL = {
    "dashboard": 20.0,
    "projects": 30.0,
    "reports": 45.0,
    "team": 25.0,
    "billing.overview": 20.0,
    "billing.card": 40.0,
    "import.upload": 30.0,
    "import.mapping": 60.0,
    "settings.profile": 30.0,
    "settings.sso": 75.0,
    "settings.advanced": 240.0,
}
DWELL_SIGMA = 0.5
STEPS = tuple(DWELL)


@dataclass
class Label:
    """What a simulated user really was: the benchmark's ground truth."""

    user_id: str
    archetype: str
    friction: bool
    #: When the user opened the contact page (friction users only).
    contact_ts: float | None = None
    #: When the struggle began (the first friction event), for the lead-time ceiling.
    struggle_ts: float | None = None


@dataclass
class _Journey:
    rng: random.Random
    user_id: str
    account_id: str
    ts: float
    step: str | None = None
    events: list[Event] = field(default_factory=list)

    def wait(self, lo: float, hi: float) -> None:
        self.ts += self.rng.uniform(lo, hi)

    def emit(self, type_: str, target: str | None = None, **properties: Any) -> None:
        ev: Event = {"user_id": self.user_id, "type": type_, "ts": round(self.ts, 3), "account_id": self.account_id}
        if self.step is not None:
            ev["step"] = self.step
        if target is not None:
            ev["target"] = target
        if properties:
            ev["properties"] = properties
        self.events.append(ev)

    def page(self, step: str) -> None:
        self.step = step
        self.emit("page")

    def dwell(self, step: str) -> float:
        return DWELL[step] * math.exp(self.rng.gauss(0.0, DWELL_SIGMA))

    def browse(self, steps: int) -> None:
        """Visit ``steps`` steps as anyone would: a page, a few clicks on different things."""
        for _ in range(steps):
            step = self.rng.choice(STEPS)
            self.page(step)
            stay = self.dwell(step)
            clicks = self.rng.randint(0, 3)
            for k in range(clicks):
                self.ts += stay / (clicks + 1)
                self.emit("click", f"#{step.split('.')[-1]}-action-{k}")
            self.ts += stay / (clicks + 1)


# -- friction archetypes: struggle, then contact ---------------------------------------------------
def _retry(
    j: _Journey, type_: str, target: str, gap: tuple[float, float], tries: tuple[int, int], **props: Any
) -> None:
    for _ in range(j.rng.randint(*tries)):
        j.emit(type_, target, **props)
        j.wait(*gap)


def field_retry_fast(j: _Journey) -> None:
    j.page("import.mapping")
    j.wait(5, 20)
    _retry(j, "form_error", "#date-format", (3, 15), (4, 8))


def field_retry_slow(j: _Journey) -> None:
    j.page("settings.profile")
    j.wait(10, 40)
    _retry(j, "form_error", "#vat-number", (30, 120), (4, 7))


def action_retry_fast(j: _Journey) -> None:
    j.page("import.upload")
    j.wait(5, 20)
    status = j.rng.choice((500, 413, 502))
    _retry(j, "api_error", "POST /api/imports", (5, 20), (4, 8), status=status)


def action_retry_slow(j: _Journey) -> None:
    j.page(j.rng.choice(("import.upload", "billing.card")))
    j.wait(5, 30)
    target, status = j.rng.choice((("POST /api/imports", 500), ("POST /api/imports", 413), ("POST /api/charge", 500)))
    _retry(j, "api_error", target, (30, 120), (4, 7), status=status)


def payment_declines(j: _Journey) -> None:
    j.page("billing.card")
    for _ in range(j.rng.randint(3, 6)):
        j.wait(20, 100)
        j.emit("click", "#pay-now")
        j.wait(1, 3)
        j.emit("api_error", j.rng.choice(("POST /api/charge", "POST /api/payment-methods")), status=402)


def permission_wall(j: _Journey) -> None:
    endpoints = ["GET /api/team/members", "POST /api/team/invite", "GET /api/team/roles", "PUT /api/team/roles",
                 "GET /api/team/audit", "POST /api/team/sso"]  # fmt: skip
    j.rng.shuffle(endpoints)
    j.page("team")
    for endpoint in endpoints[: j.rng.randint(3, 6)]:
        j.wait(10, 90)
        j.emit("api_error", endpoint, status=403)


def stall_silent(j: _Journey) -> None:
    j.page(j.rng.choice(("settings.sso", "import.mapping", "billing.card")))
    j.wait(180, 900)


def stall_active(j: _Journey) -> None:
    step = j.rng.choice(("settings.sso", "import.mapping", "reports"))
    j.page(step)
    end = j.ts + j.rng.uniform(180, 900)
    k = 0
    while j.ts < end:
        j.wait(10, 60)
        j.emit("click", f"#{step.split('.')[-1]}-option-{k % 6}")
        k += 1


def _unanswered_click(j: _Journey, target: str) -> None:
    """A click nothing answers, as the browser script reports it: the click at once, a
    ``dead_click`` a second later (no DOM change, no navigation, no request)."""
    j.emit("click", target)
    j.wait(1.0, 1.0)
    j.emit("dead_click", target)


def broken_widget(j: _Journey) -> None:
    """An element that never responds: clicks on it spread over several seconds, again later."""
    j.page("reports")
    for _ in range(j.rng.randint(2, 4)):
        j.wait(10, 60)
        for _ in range(j.rng.randint(3, 5)):
            _unanswered_click(j, "#export-csv")
            j.wait(0.5, 4)


def dead_clicks(j: _Journey) -> None:
    j.page("billing.overview")
    for _ in range(j.rng.randint(3, 6)):
        j.wait(5, 45)
        _unanswered_click(j, j.rng.choice(("#invoice-total", "#plan-name")))


def nav_loop(j: _Journey) -> None:
    a, b = j.rng.sample(("settings.profile", "settings.sso", "team", "billing.overview"), 2)
    j.page(a)
    for _ in range(j.rng.randint(3, 6)):
        j.wait(5, 30)
        j.page(b)
        j.wait(3, 20)
        j.page(a)


def rage(j: _Journey) -> None:
    j.page("billing.card")
    for _ in range(j.rng.randint(2, 4)):
        j.wait(10, 60)
        for _ in range(j.rng.randint(3, 6)):
            j.emit("click", "#pay-now")
            j.wait(0.08, 0.25)


def empty_searches(j: _Journey) -> None:
    j.page("projects")
    for _ in range(j.rng.randint(3, 5)):
        j.wait(10, 60)
        j.emit("search", "#search", results=0)


def error_clicks(j: _Journey) -> None:
    j.page("projects")
    for _ in range(j.rng.randint(3, 5)):
        j.wait(10, 60)
        j.emit("click", "#archive")
        j.wait(0.3, 2.5)
        j.emit("error", "#archive")


FRICTION: dict[str, Callable[[_Journey], None]] = {
    f.__name__: f
    for f in (
        field_retry_fast,
        field_retry_slow,
        action_retry_fast,
        action_retry_slow,
        payment_declines,
        permission_wall,
        stall_silent,
        stall_active,
        broken_widget,
        dead_clicks,
        nav_loop,
        rage,
        empty_searches,
        error_clicks,
    )
}


# -- smooth look-alikes: normal use, then success --------------------------------------------------
def one_validation_error(j: _Journey) -> None:
    j.page("import.mapping")
    j.wait(10, 40)
    j.emit("form_error", "#date-format")
    j.wait(5, 30)


def two_fields_once(j: _Journey) -> None:
    j.page("settings.profile")
    j.wait(10, 40)
    j.emit("form_error", "#vat-number")
    j.wait(5, 20)
    j.emit("form_error", "#postcode")
    j.wait(5, 30)


def session_expired(j: _Journey) -> None:
    step = j.rng.choice(("reports", "projects", "dashboard"))
    j.page(step)
    j.wait(5, 30)
    j.emit("api_error", f"GET /api/{step}", status=401)
    j.wait(1, 3)
    j.page("login")
    j.wait(10, 30)
    j.page(step)
    j.wait(5, 20)


def checkbox_ticker(j: _Journey) -> None:
    j.page("team")
    j.wait(5, 15)
    for k in range(j.rng.randint(5, 15)):
        j.emit("click", f"#member-{k}")
        j.wait(0.2, 0.6)


def dead_label_once(j: _Journey) -> None:
    j.page("settings.profile")
    j.wait(5, 20)
    _unanswered_click(j, "#label-email")
    j.wait(5, 20)
    j.emit("click", "#save")
    j.wait(1, 3)


def search_refined(j: _Journey) -> None:
    j.page("projects")
    j.wait(5, 15)
    j.emit("search", "#search", results=0)
    j.wait(5, 20)
    j.emit("search", "#search", results=j.rng.randint(1, 20))
    j.wait(3, 10)


def slow_admin(j: _Journey) -> None:
    """Reads a heavy settings page within what others need there, clicking now and then."""
    j.page("settings.advanced")
    end = j.ts + min(j.dwell("settings.advanced"), 480.0)
    k = 0
    while j.ts < end:
        j.wait(20, 70)
        j.emit("click", f"#advanced-toggle-{k}")
        k += 1


def double_click(j: _Journey) -> None:
    j.page("projects")
    j.wait(3, 10)
    j.emit("click", "#open-project")
    j.wait(0.08, 0.2)
    j.emit("click", "#open-project")
    j.wait(2, 8)


def not_found_once(j: _Journey) -> None:
    j.page("reports")
    j.wait(3, 15)
    j.emit("api_error", "GET /api/reports/old", status=404)
    j.wait(3, 10)
    j.page("dashboard")
    j.wait(5, 20)


def plain_browsing(j: _Journey) -> None:
    j.browse(j.rng.randint(2, 5))


def transient_failure(j: _Journey) -> None:
    j.page("import.upload")
    j.wait(5, 20)
    j.emit("api_error", "POST /api/imports", status=503)
    j.wait(5, 30)


SMOOTH: dict[str, Callable[[_Journey], None]] = {
    f.__name__: f
    for f in (
        one_validation_error,
        two_fields_once,
        session_expired,
        checkbox_ticker,
        dead_label_once,
        search_refined,
        slow_admin,
        double_click,
        not_found_once,
        plain_browsing,
        transient_failure,
    )
}


def generate(users: int = 2000, seed: int = 0, friction_share: float = 0.35) -> tuple[list[Event], list[Label]]:
    """``users`` labelled journeys, their events merged in time order (deterministic per seed).

    A share ``friction_share`` of the users follow a friction archetype (round robin over
    :data:`FRICTION`), the others a smooth one (round robin over :data:`SMOOTH`).
    """
    rng = random.Random(seed)
    friction_users = round(users * friction_share)
    events: list[Event] = []
    labels: list[Label] = []
    for n in range(users):
        friction = n < friction_users
        table = FRICTION if friction else SMOOTH
        names = list(table)
        archetype = names[(n if friction else n - friction_users) % len(names)]
        user_id = f"s{seed}-u{n:05d}"
        j = _Journey(rng, user_id, f"acct-{rng.randint(0, 49):02d}", T0 + rng.uniform(0.0, WINDOW))
        j.browse(rng.randint(1, 4))
        first = len(j.events)
        table[archetype](j)
        struggle_ts = j.events[first]["ts"] if friction and len(j.events) > first else None
        if friction:
            if rng.random() < 0.4:
                j.wait(5, 40)
                j.emit("help", "article:" + archetype)
            j.wait(10, 90)
            j.step = "contact"
            j.emit("contact")
            labels.append(Label(user_id, archetype, True, j.events[-1]["ts"], struggle_ts))
        else:
            j.emit("success", "#done")
            labels.append(Label(user_id, archetype, False))
        events.extend(j.events)
    events.sort(key=lambda e: e["ts"])
    return events, labels


def write_log(path: str, events: list[Event]) -> None:
    """Write ``events`` as JSON Lines (one canonical event per line)."""
    with open(path, "w", encoding="utf-8") as fh:
        for ev in events:
            fh.write(json.dumps(ev, separators=(",", ":")) + "\n")
