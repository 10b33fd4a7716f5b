"""A deterministic, realistic event stream for the demo, the docs and the tests.

:func:`generate` simulates one session per user in a small SaaS app (an import wizard, billing,
settings and reports) and returns canonical events, time-ordered across interleaved users.
Most users are smooth: they move forward through the steps, click a few things, sometimes make
one form mistake and fix it, double-click, hit one transient 503, look back once. The others
struggle in one of the ways the default detectors look for: rage clicks on ``#pay-now``, the
same date-format field rejected again and again, navigation loops, searches that find nothing,
dead clicks on plain text, API error bursts, or a long stall; many then open help or the
contact page, and some file a ``ticket`` later.

The bundled ``pyfriction/data/sample_events.jsonl`` is ``write_sample(path)`` with the defaults.

``generate(..., guided=True)`` (``pyfriction sample --guided``) also simulates in-app guidance,
for ``pyfriction report`` to measure: see :func:`simulate_guidance`. The reactions to guidance
and its effect on tickets there are ASSUMPTIONS of the simulation (:data:`REACTIONS`,
:data:`TICKETS_KEPT`), not measurements; the report measures them back from the stream.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Callable
from typing import Any

__all__ = ["PERSONAS", "generate", "simulate_guidance", "write_events", "write_sample"]

Event = dict[str, Any]

ACCOUNTS = (
    "acct-acme",
    "acct-globex",
    "acct-initech",
    "acct-umbrella",
    "acct-hooli",
    "acct-stark",
    "acct-wayne",
    "acct-wonka",
)
# Larger customers have more users.
ACCOUNT_WEIGHTS = (30, 22, 15, 10, 8, 6, 5, 4)

SEARCH_HITS = ("invoice", "march report", "team members", "api key", "export csv")
SEARCH_MISSES = ("undo import", "date format", "dd/mm/yyyy", "revert mapping", "cancel import")


class _Session:
    """One user's session: a clock that only moves forward and the events emitted so far."""

    def __init__(self, rng: random.Random, user_id: str, account_id: str, ts: float) -> None:
        self.rng = rng
        self.user_id = user_id
        self.account_id = account_id
        self.ts = ts
        self.step: str | None = None
        self.previous: str | None = None
        self.arrived = ts
        self.events: list[Event] = []

    def emit(
        self,
        kind: str,
        target: str | None = None,
        *,
        gap: tuple[float, float] = (2.0, 8.0),
        **properties: Any,
    ) -> None:
        """Advance the clock by a random gap and record one event on the current step."""
        self.ts += self.rng.uniform(*gap)
        self.events.append(
            {
                "user_id": self.user_id,
                "type": kind,
                "ts": round(self.ts, 3),
                "step": self.step,
                "target": target,
                "account_id": self.account_id,
                "properties": properties or None,
            }
        )

    def page(self, step: str, gap: tuple[float, float] = (2.0, 8.0)) -> None:
        if step != self.step:
            self.previous, self.step = self.step, step
        self.emit("page", gap=gap)
        self.arrived = self.ts

    def click(self, target: str, gap: tuple[float, float] = (2.0, 8.0)) -> None:
        self.emit("click", target, gap=gap)

    def double_click(self, target: str) -> None:
        self.click(target)
        self.click(target, gap=(0.12, 0.3))

    def success(self, target: str) -> None:
        self.emit("success", target, gap=(0.3, 1.5))

    def read(self, low: float = 5.0, high: float = 25.0) -> None:
        """Time spent reading the page without any event."""
        self.ts += self.rng.uniform(low, high)

    def chance(self, probability: float) -> bool:
        return self.rng.random() < probability


# --- smooth flows -------------------------------------------------------------------------


def _import_flow(s: _Session, *, mistake: bool, transient: bool) -> None:
    s.page("import.upload")
    s.click("#choose-file")
    s.click("#upload", gap=(4.0, 12.0))
    if transient:
        s.emit("api_error", "POST /api/imports", gap=(0.5, 2.0), status=503)
        s.click("#upload", gap=(3.0, 8.0))
    s.success("#upload")
    s.page("import.mapping", gap=(1.0, 3.0))
    s.read()
    s.click("#map-columns")
    if mistake:
        s.click("#next")
        s.emit("form_error", "#date-format", gap=(0.2, 0.8))
        s.click("#date-format", gap=(3.0, 10.0))
    s.click("#next")
    s.success("#map-columns")
    s.page("import.review", gap=(1.0, 3.0))
    s.read(3.0, 15.0)
    s.click("#confirm-import")
    s.success("#confirm-import")


def _billing_flow(s: _Session, *, mistake: bool, transient: bool) -> None:
    s.page("billing.plan")
    s.read(4.0, 20.0)
    s.click("#plan-pro")
    s.click("#continue")
    s.page("billing.card", gap=(1.0, 3.0))
    s.click("#card-number")
    s.click("#card-expiry", gap=(4.0, 10.0))
    if mistake:
        s.click("#pay-now")
        s.emit("form_error", "#card-expiry", gap=(0.3, 1.0))
        s.click("#card-expiry", gap=(3.0, 8.0))
    s.click("#pay-now", gap=(2.0, 6.0))
    if transient:
        s.emit("api_error", "POST /api/payments", gap=(0.5, 2.0), status=503)
        s.click("#pay-now", gap=(3.0, 8.0))
    s.success("#pay-now")


def _settings_flow(s: _Session, *, mistake: bool, transient: bool) -> None:
    s.page("settings.profile")
    s.click("#avatar")
    if mistake:
        s.click("#save-profile")
        s.emit("form_error", "#email", gap=(0.2, 0.8))
        s.click("#email", gap=(3.0, 8.0))
    s.click("#save-profile")
    s.success("#save-profile")
    s.page("settings.team", gap=(1.0, 4.0))
    s.click("#invite")
    if transient:
        s.emit("api_error", "POST /api/invites", gap=(0.5, 2.0), status=503)
        s.click("#invite", gap=(3.0, 8.0))
    s.success("#invite")


def _reports_flow(s: _Session, *, mistake: bool, transient: bool) -> None:
    s.page("reports")
    if mistake:  # one search that finds nothing, rephrased at once
        s.emit("search", "#search", results=0, query=s.rng.choice(SEARCH_MISSES))
    query = s.rng.choice(SEARCH_HITS)
    s.emit("search", "#search", gap=(3.0, 10.0), results=s.rng.randint(1, 40), query=query)
    s.read()
    s.click("#export")
    if transient:
        s.emit("api_error", "GET /api/reports/export", gap=(0.5, 2.0), status=503)
        s.click("#export", gap=(3.0, 8.0))
    s.success("#export")


#: Entry step -> the flow that starts there.
FLOWS: dict[str, Callable[..., None]] = {
    "import.upload": _import_flow,
    "billing.plan": _billing_flow,
    "settings.profile": _settings_flow,
    "reports": _reports_flow,
}


def _smooth(s: _Session) -> None:
    """Forward through two or three flows with at most a couple of ordinary hiccups."""
    s.page("dashboard", gap=(0.0, 1.0))
    s.read(2.0, 10.0)
    entries = s.rng.sample(list(FLOWS), s.rng.randint(2, 3))
    if s.chance(0.3):  # fast navigation forward: passing through other steps on the way
        for step in s.rng.sample([e for e in FLOWS if e != entries[0]], 2):
            s.page(step, gap=(0.8, 2.5))
    # At most one mistake, one transient error and one look back per session.
    mistake, transient = s.rng.randrange(len(entries) * 4), s.rng.randrange(len(entries) * 6)
    look_back = s.rng.randrange(len(entries) * 4)
    for i, entry in enumerate(entries):
        if s.chance(0.15):
            s.double_click("#nav-" + entry.split(".")[0])
        FLOWS[entry](s, mistake=(i == mistake), transient=(i == transient and i != mistake))
        if s.chance(0.08):
            s.emit("dead_click", ".page-title")
        if i == look_back and s.step and s.previous:
            # One look back after a while on the step: a single u-turn, not a loop.
            here, back = s.step, s.previous
            s.ts = max(s.ts, s.arrived + s.rng.uniform(35.0, 50.0))
            s.page(back, gap=(1.0, 3.0))
            s.page(here, gap=(2.0, 6.0))
            s.read()
    if s.chance(0.05):
        s.emit("help", "article:getting-started")
    s.page("dashboard", gap=(1.0, 4.0))


# --- struggling personas ------------------------------------------------------------------


def _rage_clicker(s: _Session) -> None:
    """``#pay-now`` does nothing visible, so it gets hammered 4-8 times within about a second."""
    s.page("dashboard", gap=(0.0, 1.0))
    s.page("billing.plan")
    s.click("#plan-pro")
    s.click("#continue")
    s.page("billing.card", gap=(1.0, 3.0))
    s.click("#card-number")
    s.click("#card-expiry")
    s.click("#pay-now")
    if s.chance(0.5):
        s.emit("api_error", "POST /api/payments", gap=(0.5, 2.0), status=504)
    s.read(1.0, 3.0)
    for _ in range(s.rng.randint(4, 8)):
        s.click("#pay-now", gap=(0.08, 0.22))
    if s.chance(0.5):
        s.emit("contact", "page:contact", gap=(10.0, 40.0))
    elif s.chance(0.6):
        s.click("#pay-now", gap=(15.0, 40.0))
        s.success("#pay-now")


def _form_fighter(s: _Session) -> None:
    """The import mapping rejects ``#date-format`` 3-4 times within a minute."""
    s.page("dashboard", gap=(0.0, 1.0))
    s.page("import.upload")
    s.click("#choose-file")
    s.click("#upload")
    s.success("#upload")
    s.page("import.mapping", gap=(1.0, 3.0))
    s.click("#map-columns")
    for _ in range(s.rng.randint(3, 4)):
        s.click("#next", gap=(3.0, 8.0))
        s.emit("form_error", "#date-format", gap=(0.2, 0.6))
        s.click("#date-format", gap=(2.0, 5.0))
    if s.chance(0.7):
        s.emit("help", "article:date-formats", gap=(3.0, 10.0))
        s.read(10.0, 40.0)
    if s.chance(0.5):
        s.emit("contact", "page:contact", gap=(5.0, 20.0))
    elif s.chance(0.5):
        s.click("#next")
        s.success("#map-columns")


def _lost_navigator(s: _Session) -> None:
    """Bounces between two steps (A -> B -> A -> B ...) looking for a setting."""
    a, b = s.rng.choice((("settings.profile", "settings.team"), ("billing.plan", "billing.card")))
    s.page("dashboard", gap=(0.0, 1.0))
    s.page(a)
    for _ in range(s.rng.randint(2, 3)):
        s.page(b, gap=(1.5, 5.0))
        s.page(a, gap=(1.5, 5.0))
    if s.chance(0.7):
        s.emit("help", "article:where-is-" + b.split(".")[1], gap=(2.0, 8.0))
    if s.chance(0.3):
        s.emit("contact", "page:contact", gap=(5.0, 20.0))


def _empty_searcher(s: _Session) -> None:
    """Three or four searches in a row that find nothing."""
    s.page("dashboard", gap=(0.0, 1.0))
    s.page("reports")
    for query in s.rng.sample(SEARCH_MISSES, s.rng.randint(3, 4)):
        s.emit("search", "#search", gap=(4.0, 15.0), results=0, query=query)
    s.emit("help", "article:search-tips", gap=(3.0, 10.0))
    if s.chance(0.75):
        s.emit("contact", "page:contact", gap=(5.0, 20.0))
    else:  # the tips did not help either
        for query in s.rng.sample(SEARCH_MISSES, 2):
            s.emit("search", "#search", gap=(10.0, 30.0), results=0, query=query)


def _dead_clicker(s: _Session) -> None:
    """Plain text that looks like a link: the same dead target clicked again and again."""
    step, target, article = s.rng.choice(
        (
            ("billing.plan", ".plan-price", "article:billing"),
            ("billing.card", "#invoice-total", "article:billing"),
            ("import.review", ".import-status", "article:imports"),
        )
    )
    s.page("dashboard", gap=(0.0, 1.0))
    s.page(step)
    s.read()
    for _ in range(s.rng.randint(2, 3)):
        s.emit("dead_click", target, gap=(1.5, 6.0))
    s.emit("help", article)
    if s.chance(0.4):
        s.emit("contact", "page:contact", gap=(5.0, 20.0))


def _api_storm(s: _Session) -> None:
    """Uploads keep failing on the server: three or more 5xx within a minute."""
    s.page("dashboard", gap=(0.0, 1.0))
    s.page("import.upload")
    s.click("#choose-file")
    for _ in range(s.rng.randint(3, 4)):
        s.click("#upload", gap=(3.0, 10.0))
        s.emit("api_error", "POST /api/imports", gap=(0.5, 3.0), status=s.rng.choice((500, 502)))
    s.emit("error", "window.onerror", gap=(0.5, 2.0), message="Cannot read properties of undefined")
    s.emit("contact", "page:contact", gap=(5.0, 20.0))


def _staller(s: _Session) -> None:
    """Stuck on the card form for many minutes, then goes looking for help."""
    s.page("dashboard", gap=(0.0, 1.0))
    s.page("billing.plan")
    s.click("#plan-pro")
    s.click("#continue")
    s.page("billing.card", gap=(1.0, 3.0))
    s.click("#card-number")
    s.read(480.0, 900.0)
    s.emit("help", "article:payment-methods")
    if s.chance(0.5):
        s.emit("contact", "page:contact", gap=(5.0, 20.0))


#: Persona name -> (share of users, session generator).
PERSONAS: dict[str, tuple[float, Callable[[_Session], None]]] = {
    "smooth": (0.70, _smooth),
    "rage_clicker": (0.06, _rage_clicker),
    "form_fighter": (0.06, _form_fighter),
    "lost_navigator": (0.05, _lost_navigator),
    "empty_searcher": (0.04, _empty_searcher),
    "dead_clicker": (0.03, _dead_clicker),
    "api_storm": (0.03, _api_storm),
    "staller": (0.03, _staller),
}

TICKET_SUBJECTS = {
    "smooth": "Feature request: dark mode",
    "rage_clicker": "Payment button does nothing",
    "form_fighter": "Import rejects my date format",
    "lost_navigator": "Cannot find the setting",
    "empty_searcher": "Search finds nothing",
    "dead_clicker": "Cannot open the details",
    "api_storm": "Upload fails with a server error",
    "staller": "Which cards do you accept?",
}


def generate(n_users: int = 200, seed: int = 7, start: float = 1_700_000_000.0, *, guided: bool = False,
             config: Any = None) -> list[Event]:  # fmt: skip
    """Simulate ``n_users`` sessions starting over three hours from ``start`` (epoch seconds).

    Returns canonical event dicts (``user_id``, ``type``, ``ts``, ``step``, ``target``,
    ``account_id``, ``properties``; absent values are ``None``) ordered by ``ts``. The same
    arguments always give the same events. ``guided=True`` adds simulated guidance
    (:func:`simulate_guidance`, with the guidance ``config``, default the bundled
    ``data/guidance.toml``): identify records, guidance feedback events, and fewer tickets.
    """
    rng = random.Random(seed)
    names = list(PERSONAS)
    shares = [PERSONAS[name][0] for name in names]
    events: list[tuple[float, int, int, Event]] = []
    for index in range(n_users):
        persona = rng.choices(names, shares)[0]
        session = _Session(
            rng,
            user_id=f"u{index + 1:04d}",
            account_id=rng.choices(ACCOUNTS, ACCOUNT_WEIGHTS)[0],
            ts=start + rng.uniform(0.0, 3 * 3600.0),
        )
        PERSONAS[persona][1](session)
        if rng.random() < (0.01 if persona == "smooth" else 0.45):
            session.emit("ticket", gap=(300.0, 2400.0), subject=TICKET_SUBJECTS[persona])
        events.extend((e["ts"], index, seq, e) for seq, e in enumerate(session.events))
    events.sort(key=lambda item: item[:3])
    stream = [event for *_, event in events]
    return simulate_guidance(stream, seed, config) if guided else stream


#: Plans of the sample accounts (a trait of every user in a guided sample).
ACCOUNT_PLANS = {
    "acct-acme": "enterprise",
    "acct-globex": "pro",
    "acct-initech": "pro",
    "acct-umbrella": "free",
    "acct-hooli": "enterprise",
    "acct-stark": "free",
    "acct-wayne": "pro",
    "acct-wonka": "free",
}
#: Share of users with a German locale in a guided sample (the others are en-US).
GERMAN_SHARE = 0.2
#: SIMULATION ASSUMPTIONS: chance that an offered item reaches the screen, then that the user
#: clicks it (else dismisses it, else ignores it), and that a click leads to finishing the task.
REACTIONS = {"shown": 0.9, "clicked": 0.5, "dismissed": 0.3, "completed": 0.7}
#: SIMULATION ASSUMPTIONS: share of the tickets a user would have filed without guidance that
#: they still file, by how far they got with it ("offered": never saw it).
TICKETS_KEPT = {"offered": 1.0, "shown": 0.9, "dismissed": 0.9, "clicked": 0.7, "completed": 0.25}


def simulate_guidance(stream: list[Event], seed: int = 7, config: Any = None) -> list[Event]:
    """Add simulated guidance to a generated ``stream`` (a simulation, clearly not data).

    1. Every user gets traits, sent as an ``{"type": "identify", "user_id", "ts", "traits"}``
       record before their first event: ``plan`` from their account (:data:`ACCOUNT_PLANS`),
       ``locale`` ``de-DE`` for :data:`GERMAN_SHARE` of them, else ``en-US``.
    2. The stream without its tickets is replayed through a :class:`pyfriction.Tracker` with
       the guidance ``config``: the guidance each episode gets (holdout users get none) is what
       the real engine picks.
    3. Each offered item is shown, clicked, dismissed or ignored, and clicks lead to finishing
       the task (a ``success``), with the chances in :data:`REACTIONS`: ``guidance_shown``,
       ``guidance_clicked`` and ``guidance_dismissed`` events (target: the item id) follow.
    4. A ticket the user would have filed anyway (the unguided stream's) is kept with the
       chance in :data:`TICKETS_KEPT` for the furthest they got with guidance offered before
       it. Holdout users and users never offered guidance keep their tickets exactly.

    Per-user random draws (seeded by ``seed`` and the user id) keep it deterministic.
    """
    from importlib import resources

    from .tracker import Tracker

    if config is None:
        config = str(resources.files("pyfriction") / "data" / "guidance.toml")
    rngs: dict[str, random.Random] = {}
    traits: dict[str, dict[str, Any]] = {}
    tickets: dict[str, Event] = {}
    base: list[Event] = []
    records: list[Event] = []
    for event in stream:
        user = event["user_id"]
        if user not in rngs:
            rng = rngs[user] = random.Random(f"{seed}:{user}")
            traits[user] = {
                "plan": ACCOUNT_PLANS.get(event.get("account_id") or "", "free"),
                "locale": "de-DE" if rng.random() < GERMAN_SHARE else "en-US",
            }
            records.append({"type": "identify", "user_id": user, "ts": event["ts"], "traits": traits[user]})
        if event["type"] == "ticket":
            tickets[user] = event
        else:
            base.append(event)
        records.append(event)

    now = [0.0]
    tracker = Tracker(config, clock=lambda: now[0])
    offered: list[Any] = []
    tracker.on_friction(lambda ep: offered.append(ep) if ep.guidance is not None else None, sync=True)
    seen: set[str] = set()
    try:
        for event in base:
            now[0] = event["ts"]
            if event["user_id"] not in seen:
                seen.add(event["user_id"])
                tracker.identify(event["user_id"], traits[event["user_id"]])
            tracker.observe(event)
    finally:
        tracker.close()

    added: list[Event] = []
    furthest: dict[str, list[tuple[float, str]]] = {}
    order = ("offered", "shown", "dismissed", "clicked", "completed")
    for ep in offered:
        rng, g = rngs[ep.user_id], ep.guidance
        steps = furthest.setdefault(ep.user_id, [])

        def emit(kind: str, ts: float, target: str | None, ep: Any = ep) -> None:  # ep bound now, not late
            added.append({"user_id": ep.user_id, "type": kind, "ts": round(ts, 3), "step": ep.step,
                          "target": target, "account_id": ep.account_id, "properties": None})  # fmt: skip

        reached, ts = "offered", ep.ts + rng.uniform(1.0, 3.0)
        if rng.random() < REACTIONS["shown"]:
            emit("guidance_shown", ts, g.id)
            reached = "shown"
            r = rng.random()
            if r < REACTIONS["clicked"]:
                ts += rng.uniform(3.0, 15.0)
                emit("guidance_clicked", ts, g.id)
                reached = "clicked"
                if rng.random() < REACTIONS["completed"]:
                    ts += rng.uniform(20.0, 90.0)
                    emit("success", ts, g.anchor)
                    reached = "completed"
            elif r < REACTIONS["clicked"] + REACTIONS["dismissed"]:
                ts += rng.uniform(2.0, 10.0)
                emit("guidance_dismissed", ts, g.id)
                reached = "dismissed"
        steps.append((ep.ts, reached))

    out = []
    for event in records:
        if event["type"] == "ticket":
            user = event["user_id"]
            before = [reached for ts, reached in furthest.get(user, ()) if ts < event["ts"]]
            if before:
                best = max(before, key=order.index)
                if rngs[user].random() >= TICKETS_KEPT[best]:
                    continue  # the simulated effect of guidance: this ticket is not filed
        out.append(event)
    out.extend(added)
    out.sort(key=lambda e: e["ts"])  # stable: equal times keep their order
    return out


def write_events(path: str | os.PathLike[str], events: list[Event], *, segment: bool = False) -> int:
    """Write ``events`` to ``path`` as JSON Lines (Segment-style payloads with ``segment``);
    returns the count."""
    if segment:
        from .segment import from_event

        events = [
            {"type": "identify", "userId": e["user_id"], "timestamp": from_event(e)["timestamp"], "traits": e["traits"]}
            if e["type"] == "identify" else from_event(e)
            for e in events
        ]  # fmt: skip
    with open(path, "w", encoding="utf-8", newline="\n") as fh:
        for event in events:
            fh.write(json.dumps(event, separators=(",", ":"), ensure_ascii=False) + "\n")
    return len(events)


def write_sample(path: str | os.PathLike[str]) -> int:
    """Write :func:`generate`'s default stream to ``path`` as JSON Lines; return the event count."""
    events = generate()
    with open(path, "w", encoding="utf-8", newline="\n") as fh:
        for event in events:
            fh.write(json.dumps(event, separators=(",", ":")) + "\n")
    return len(events)
