"""Measurement: friction hotspots, lead time before tickets, deflection by guidance, accounts.

:class:`InsightsCollector` hears every episode (with the guidance decision) and every outcome
event (``ticket``, guidance feedback) from the tracker and keeps running figures;
``Tracker.insights()`` and ``pyfriction report`` turn them into an :class:`Insights`.

- **Hotspots**: episodes and distinct users per (step, target), with the detector that
  dominated each episode (its largest reason), and the tickets that followed.
- **Lead time**: for each ticket, the time since the user's first episode within
  ``guidance.attribution_window`` before it; the share of tickets preceded by an episode.
- **Deflection**: a user is *exposed* at their first episode for which the guidance rules pick
  an item (caps aside). Exposed users outside the holdout are the *guided* group (offered
  guidance: intention to treat, whether or not they looked at it), exposed holdout users the
  control. The outcome is a ticket within ``attribution_window`` after exposure. The
  difference of the two ticket rates comes with a 95% Newcombe (Wilson score) interval.
- **Items**: per guidance item, offered / delivered / shown / clicked / dismissed /
  completed / expired, and the click and dismiss rates among those shown.
- **Accounts**: per ``account_id``, users in friction, episodes, tickets, guided users.

Per-user state is bounded by the tracker's capacity (least recently active evicted first;
an evicted user who comes back counts as new); tables are bounded by :data:`MAX_KEYS` rows,
the rest pooled under ``(other)``.
"""

from __future__ import annotations

import bisect
import math
import random
from collections.abc import Mapping
from typing import Any

import msgspec

from ._episodes import Episode
from .userstate import INSIGHT, STRUGGLE, TABLES, MemoryState, StateStore, StateTxn
from .userstate import MAX_KEYS as MAX_KEYS
from .userstate import OTHER as OTHER
from .userstate import RESERVOIR as RESERVOIR

__all__ = [
    "LEAD_TIME_EDGES",
    "MAX_KEYS",
    "AccountStats",
    "CalibrationSuggestion",
    "Deflection",
    "DetectionQuality",
    "DetectorQuality",
    "GroupOutcome",
    "Hotspot",
    "Insights",
    "InsightsCollector",
    "ItemStats",
    "LeadTime",
    "LeadTimeBucket",
    "newcombe_interval",
    "suggest_calibration",
    "wilson_interval",
]

#: Upper edges (seconds) of the lead-time histogram buckets; the last bucket is open.
LEAD_TIME_EDGES = (60.0, 300.0, 900.0, 1800.0, 3600.0, 4 * 3600.0, 24 * 3600.0)
_LABELS = ("< 1 min", "1-5 min", "5-15 min", "15-30 min", "30-60 min", "1-4 h", "4-24 h", ">= 24 h")
#: Hotspots and accounts remembered per user (for distinct-user counts).
_PER_USER = 16
Z95 = 1.959963984540054


# --- the figures ------------------------------------------------------------------------------


class Hotspot(msgspec.Struct, kw_only=True):
    """Friction at one (step, target): distinct users, episodes, tickets that followed, and how
    many episodes each detector dominated (largest first)."""

    step: str | None
    target: str | None
    users: int
    episodes: int
    tickets: int
    detectors: dict[str, int]


class LeadTimeBucket(msgspec.Struct, kw_only=True):
    """Tickets whose lead time was in [``low``, ``high``) seconds (``high`` None: open)."""

    label: str
    low: float
    high: float | None
    count: int


class LeadTime(msgspec.Struct, kw_only=True):
    """How long before a ticket the user's first episode fired."""

    tickets: int
    #: Tickets with an episode of the same user within the attribution window before them.
    preceded: int
    share: float | None
    median: float | None
    p90: float | None
    buckets: list[LeadTimeBucket]


class GroupOutcome(msgspec.Struct, kw_only=True):
    """Exposed users of one group, those who filed a ticket within the window, and the rate
    with its 95% Wilson interval."""

    users: int
    tickets: int
    rate: float | None
    low: float | None
    high: float | None


class Deflection(msgspec.Struct, kw_only=True):
    """Ticket rate of users offered guidance versus the holdout.

    ``difference`` is holdout rate minus guided rate (positive: fewer tickets with guidance),
    with its 95% interval [``low``, ``high``]; ``relative`` is the difference over the holdout
    rate; ``significant`` when the interval excludes 0.
    """

    window: float
    guided: GroupOutcome
    holdout: GroupOutcome
    difference: float | None
    low: float | None
    high: float | None
    relative: float | None
    significant: bool
    confidence: float = 0.95
    method: str = "Newcombe hybrid score (Wilson)"


class ItemStats(msgspec.Struct, kw_only=True):
    """What happened to one guidance item; rates are among offers shown (None before any)."""

    id: str
    kind: str
    title: str
    offered: int
    delivered: int
    shown: int
    clicked: int
    dismissed: int
    completed: int
    expired: int
    click_rate: float | None
    dismiss_rate: float | None
    completion_rate: float | None
    #: Shown as a banner because the tooltip's anchor was not on the page.
    anchor_missing: int = 0


class AccountStats(msgspec.Struct, kw_only=True):
    """Friction rolled up per account (the customer-success view)."""

    account_id: str
    users: int
    episodes: int
    tickets: int
    guided: int
    last_episode: float | None


class DetectorQuality(msgspec.Struct, kw_only=True):
    """How often one detector's episodes were followed by a ticket (``detector`` was the top
    reason of the first episode of a struggle)."""

    detector: str
    struggles: int
    #: Of them, followed by a ticket within the attribution window.
    ticketed: int
    #: ``ticketed / struggles`` (None without struggles).
    precision: float | None


class DetectionQuality(msgspec.Struct, kw_only=True):
    """Detection against the tickets that followed: the labels that come for free.

    ``tickets`` seen, ``preceded`` by an episode within the attribution window (the recall of
    detection as far as tickets tell), ``struggles`` (first episodes of a struggle, one per
    user per window) and how many were ``ticketed``; per detector, ranked by struggles.
    """

    tickets: int = 0
    preceded: int = 0
    recall: float | None = None
    struggles: int = 0
    ticketed: int = 0
    #: Struggles with no ticket after them (so far).
    unticketed: int = 0
    detectors: list[DetectorQuality] = msgspec.field(default_factory=list)


class Insights(msgspec.Struct, kw_only=True):
    """Every figure of ``Tracker.insights()`` and ``pyfriction report``.

    ``since``/``until``: the first and last episode or ticket time seen (None before any).
    ``events``, ``users`` (tracked now), ``episodes``, ``tickets`` are the tracker's counters;
    ``guided_episodes`` got guidance, ``holdout_episodes`` were of holdout users. Lists are
    ranked (hotspots and accounts by users, then episodes) and cut at the ``limit`` asked for.
    """

    since: float | None
    until: float | None
    engine: str
    events: int
    users: int
    episodes: int
    tickets: int
    guided_episodes: int
    holdout_episodes: int
    hotspots: list[Hotspot]
    lead_time: LeadTime
    deflection: Deflection
    items: list[ItemStats]
    accounts: list[AccountStats]
    detection: DetectionQuality = msgspec.field(default_factory=DetectionQuality)


# --- statistics -------------------------------------------------------------------------------


def wilson_interval(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of ``k`` successes in ``n`` trials (``n`` > 0)."""
    if n <= 0:
        raise ValueError("n must be positive")
    p = k / n
    z2 = z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def newcombe_interval(k1: int, n1: int, k2: int, n2: int, z: float = Z95) -> tuple[float, float, float]:
    """``(p1 - p2, low, high)``: the difference of two proportions with Newcombe's hybrid score
    interval (his method 10, built from the two Wilson intervals)."""
    p1, p2 = k1 / n1, k2 / n2
    l1, u1 = wilson_interval(k1, n1, z)
    l2, u2 = wilson_interval(k2, n2, z)
    d = p1 - p2
    # Clamped: rounding can put a bound of an extreme difference a hair beyond +-1.
    low = max(-1.0, d - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2))
    high = min(1.0, d + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2))
    return d, low, high


def _quantile(sorted_values: list[float], q: float) -> float | None:
    if not sorted_values:
        return None
    pos = q * (len(sorted_values) - 1)
    lo = int(math.floor(pos))
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def _rate(num: int, den: int) -> float | None:
    return num / den if den else None


# --- the collector ----------------------------------------------------------------------------


class _UserInsight:
    # Tuples, not lists: most users have one entry or none, and () is shared. One record per
    # user who had an episode, kept for every tracked user: it has to stay small.
    __slots__ = ("account", "first_episode", "since_ticket", "hotspots", "accounts", "group", "exposed", "ticketed",
                 "guided")  # fmt: skip

    def __init__(self) -> None:
        self.account: str | None = None
        self.first_episode: float | None = None  # first episode of the current struggle
        self.since_ticket: tuple[Any, ...] = ()  # hotspot keys since the last ticket
        self.hotspots: tuple[Any, ...] = ()  # hotspot keys counted for this user (distinct users)
        self.accounts: tuple[str, ...] = ()  # accounts counted for this user
        self.group: str | None = None  # "guided" | "holdout" once exposed
        self.exposed = 0.0
        self.ticketed = False
        self.guided = False  # counted as a guided user of their account


_ITEM_FIELDS = ("offered", "delivered", "shown", "clicked", "dismissed", "completed", "expired", "anchor_missing")


class _InsightCodec:
    """A user's insight record as plain data and back (the file store)."""

    def encode(self, u: _UserInsight) -> Any:
        # The tuples as they are: msgpack writes a tuple as the array a list would be.
        return [u.account, u.first_episode, u.since_ticket, u.hotspots, u.accounts, u.group, u.exposed, u.ticketed,
                u.guided]  # fmt: skip

    def decode(self, plain: Any) -> _UserInsight:
        u = _UserInsight()
        u.account, u.first_episode, since_ticket, hotspots, accounts, u.group, u.exposed, u.ticketed, u.guided = plain
        u.since_ticket = tuple(map(tuple, since_ticket))
        u.hotspots = tuple(map(tuple, hotspots))
        u.accounts = tuple(accounts)
        return u


class _TopCodec:
    """An open struggle: the top detector of its first episode, a str (plain already; not a
    box: one object less per user with an episode, at a million users it shows)."""

    def encode(self, value: Any) -> Any:
        return value

    def decode(self, plain: Any) -> Any:
        return str(plain[0]) if isinstance(plain, list) else str(plain)


#: The global counters of the figures, with their initial values.
_SCALARS: dict[str, Any] = {
    "tickets": 0, "preceded": 0, "episodes": 0, "guided_episodes": 0, "holdout_episodes": 0,
    "since": None, "until": None, "lead_seen": 0, "guided": [0, 0], "holdout": [0, 0],
    "buckets": [0] * len(_LABELS),
}  # fmt: skip


class InsightsCollector:
    """Running figures behind :class:`Insights` (thread-safe, bounded).

    ``state``: where the per-user records, the tables and the counters live (default: this
    process's memory; a :class:`pyfriction.userstate.FileState` gives every process sharing
    it the same figures, the totals of all of them).
    """

    def __init__(self, window: float, capacity: int, items: Mapping[str, tuple[str, str]],
                 state: StateStore | None = None) -> None:  # fmt: skip
        """``window``: attribution window (s); ``capacity``: users remembered; ``items``:
        catalog id -> (kind, title)."""
        self.window = window
        self._capacity = capacity
        self._catalog = dict(items)
        self._state: StateStore = MemoryState(capacity) if state is None else state
        self._state.codec(INSIGHT, _InsightCodec())
        self._state.codec(STRUGGLE, _TopCodec())
        self._keys: dict[Any, Any] = {}  # one shared tuple per hotspot key, for the user records
        self._ones: dict[Any, tuple[Any]] = {}  # one shared 1-tuple per key or account: most users have one
        self._rng = random.Random(0x5EED)

    @property
    def _users(self) -> Any:
        """The per-user records (a live mapping in memory, a list of pairs from a file)."""
        if isinstance(self._state, MemoryState):
            return self._state.parts[INSIGHT]
        return self._state.users(INSIGHT)

    @staticmethod
    def _scalars(tx: StateTxn) -> dict[str, Any]:
        sc = tx.scalars
        if "episodes" not in sc:
            for key, value in _SCALARS.items():
                sc.setdefault(key, list(value) if isinstance(value, list) else value)
        return sc

    def _totals(self) -> dict[str, Any]:
        with self._state.transaction() as tx:  # a copy: the stores keep changing theirs in place
            return {k: list(v) if type(v) is list else v for k, v in self._scalars(tx).items()}

    @property
    def tickets(self) -> int:
        """Tickets counted."""
        return int(self._totals()["tickets"])

    @property
    def episodes(self) -> int:
        """Episodes counted."""
        return int(self._totals()["episodes"])

    # -- input ------------------------------------------------------------------------------
    @staticmethod
    def _seen(sc: dict[str, Any], ts: float) -> None:
        if sc["since"] is None or ts < sc["since"]:
            sc["since"] = ts
        if sc["until"] is None or ts > sc["until"]:
            sc["until"] = ts

    def _added(self, keys: tuple[Any, ...], key: Any) -> tuple[Any, ...]:
        """``keys`` with ``key`` appended (the last ``_PER_USER``). A user's first key is a
        shared 1-tuple: a record per user must not cost an object per user for it."""
        if keys:
            return (*keys, key)[-_PER_USER:]
        one = self._ones.get(key)
        if one is None:
            one = (key,)
            if len(self._ones) < 2 * MAX_KEYS:
                self._ones[key] = one
        return one

    def hint_account(self, user_id: str, account_id: str | None) -> None:
        """The user belongs to ``account_id`` (e.g. from ``identify`` traits)."""
        if account_id:
            with self._state.transaction() as tx:
                tx.user(INSIGHT, user_id, _UserInsight).account = account_id

    def episode(self, episode: Episode, eligible: str | None) -> None:
        """Count an episode; ``eligible`` is the item the rules picked for it, caps aside."""
        ts = episode.ts
        with self._state.transaction() as tx:
            sc = self._scalars(tx)
            self._seen(sc, ts)
            sc["episodes"] += 1
            guided = episode.guidance is not None
            sc["guided_episodes"] += guided
            sc["holdout_episodes"] += episode.holdout
            u = tx.user(INSIGHT, episode.user_id, _UserInsight)
            if episode.account_id:
                u.account = episode.account_id
            key = (episode.step, episode.target)
            key = self._keys.get(key) or (self._keys.setdefault(key, key) if len(self._keys) < MAX_KEYS else key)
            spot = tx.row("hotspots", key, lambda: [0, 0, 0, {}])
            spot[1] += 1
            if episode.reasons:
                top = episode.reasons[0].detector
                spot[3][top] = spot[3].get(top, 0) + 1
            if key not in u.hotspots:
                spot[0] += 1
                u.hotspots = self._added(u.hotspots, key)
            if u.first_episode is None or ts - u.first_episode > self.window:
                u.first_episode = ts
                u.since_ticket = ()
                top = episode.reasons[0].detector if episode.reasons else "none"
                tx.row("detectors", top, lambda: [0, 0])[0] += 1
                tx.discard(STRUGGLE, episode.user_id)  # a str: replaced, not changed in place
                tx.user(STRUGGLE, episode.user_id, lambda: top)
            if key not in u.since_ticket:
                u.since_ticket = self._added(u.since_ticket, key)
            if u.account:
                acct = tx.row("accounts", u.account, lambda: [0, 0, 0, 0, None])
                if u.account not in u.accounts:
                    acct[0] += 1
                    u.accounts = self._added(u.accounts, u.account)
                acct[1] += 1
                if guided and not u.guided:
                    u.guided = True
                    acct[3] += 1
                acct[4] = ts if acct[4] is None else max(acct[4], ts)
            if eligible is not None and u.group is None:
                u.group = "holdout" if episode.holdout else "guided"
                u.exposed = ts
                sc[u.group][0] += 1

    def ticket(self, user_id: str, account_id: str | None, ts: float) -> None:
        """Count a ticket (a ``ticket`` event the engine applied)."""
        with self._state.transaction() as tx:
            sc = self._scalars(tx)
            self._seen(sc, ts)
            sc["tickets"] += 1
            u = tx.peek(INSIGHT, user_id)
            if u is None and account_id is None:
                return
            u = tx.user(INSIGHT, user_id, _UserInsight)
            if account_id:
                u.account = account_id
            if u.account:
                tx.row("accounts", u.account, lambda: [0, 0, 0, 0, None])[2] += 1
            if u.first_episode is not None and 0.0 <= ts - u.first_episode <= self.window:
                sc["preceded"] += 1
                lead = ts - u.first_episode
                sc["buckets"][bisect.bisect_right(LEAD_TIME_EDGES, lead)] += 1
                sc["lead_seen"] += 1
                tx.sample(lead, sc["lead_seen"], self._rng)
                for key in u.since_ticket:
                    spot = tx.get_row("hotspots", key)
                    if spot is not None:
                        spot[2] += 1
                opened = tx.discard(STRUGGLE, user_id)
                if opened is not None:
                    row = tx.get_row("detectors", opened)
                    if row is not None:
                        row[1] += 1
            u.first_episode = None
            u.since_ticket = ()
            if u.group is not None and not u.ticketed and 0.0 <= ts - u.exposed <= self.window:
                u.ticketed = True
                sc[u.group][1] += 1

    def item(self, item_id: str, what: str) -> None:
        """Count an item event: offered, delivered, shown, clicked, dismissed, completed, expired."""
        with self._state.transaction() as tx:
            tx.row("items", item_id, lambda: [0] * len(_ITEM_FIELDS))[_ITEM_FIELDS.index(what)] += 1

    # -- output -----------------------------------------------------------------------------
    def build(self, *, engine: str, events: int, users: int, episodes: int, tickets: int,
              limit: int | None = 50) -> Insights:  # fmt: skip
        """The :class:`Insights`, with the tracker's counters; lists cut at ``limit`` rows."""
        sc = self._totals()
        hotspots = self._state.rows("hotspots")
        spots = [
            Hotspot(step=k[0], target=k[1], users=v[0], episodes=v[1], tickets=v[2],
                    detectors=dict(sorted(v[3].items(), key=lambda kv: (-kv[1], kv[0]))))
            for k, v in hotspots
        ]  # fmt: skip
        spots.sort(key=lambda h: (-h.users, -h.episodes, h.step or "", h.target or ""))
        accounts = [
            AccountStats(account_id=k, users=v[0], episodes=v[1], tickets=v[2], guided=v[3], last_episode=v[4])
            for k, v in self._state.rows("accounts")
        ]
        accounts.sort(key=lambda a: (-a.users, -a.episodes, -a.tickets, a.account_id))
        items = []
        counted = dict(self._state.rows("items"))
        ids = list(self._catalog) + [k for k in counted if k not in self._catalog]
        for item_id in ids:
            row = counted.get(item_id, [0] * len(_ITEM_FIELDS))
            c = dict(zip(_ITEM_FIELDS, row))
            kind, title = self._catalog.get(item_id, ("?", item_id))
            items.append(
                ItemStats(
                    id=item_id,
                    kind=kind,
                    title=title,
                    **c,
                    click_rate=_rate(c["clicked"], c["shown"]),
                    dismiss_rate=_rate(c["dismissed"], c["shown"]),
                    completion_rate=_rate(c["completed"], c["shown"]),
                )  # fmt: skip
            )
        sample = sorted(self._state.reservoir())
        edges = (0.0,) + LEAD_TIME_EDGES
        buckets = [
            LeadTimeBucket(label=_LABELS[i], low=edges[i],
                           high=LEAD_TIME_EDGES[i] if i < len(LEAD_TIME_EDGES) else None, count=n)
            for i, n in enumerate(sc["buckets"])
        ]  # fmt: skip
        lead = LeadTime(
            tickets=sc["tickets"],
            preceded=sc["preceded"],
            share=_rate(sc["preceded"], sc["tickets"]),
            median=_quantile(sample, 0.5),
            p90=_quantile(sample, 0.9),
            buckets=buckets,
        )
        deflection = self._deflection(sc)
        detection = self._detection(sc)
        if limit is not None:
            spots, accounts = spots[:limit], accounts[:limit]
        return Insights(
            since=sc["since"],
            until=sc["until"],
            engine=engine,
            events=events,
            users=users,
            episodes=episodes,
            tickets=tickets,
            guided_episodes=sc["guided_episodes"],
            holdout_episodes=sc["holdout_episodes"],
            hotspots=spots,
            lead_time=lead,
            deflection=deflection,
            items=items,
            accounts=accounts,
            detection=detection,
        )

    def _detection(self, sc: dict[str, Any]) -> DetectionQuality:
        rows = [
            DetectorQuality(detector=d, struggles=v[0], ticketed=v[1], precision=_rate(v[1], v[0]))
            for d, v in self._state.rows("detectors")
        ]
        rows.sort(key=lambda r: (-r.struggles, r.detector))
        struggles = sum(r.struggles for r in rows)
        ticketed = sum(r.ticketed for r in rows)
        return DetectionQuality(
            tickets=sc["tickets"],
            preceded=sc["preceded"],
            recall=_rate(sc["preceded"], sc["tickets"]),
            struggles=struggles,
            ticketed=ticketed,
            unticketed=struggles - ticketed,
            detectors=rows,
        )

    def _deflection(self, sc: dict[str, Any]) -> Deflection:
        def group(name: str) -> GroupOutcome:
            n, k = sc[name]
            low, high = wilson_interval(k, n) if n else (None, None)
            return GroupOutcome(users=n, tickets=k, rate=_rate(k, n), low=low, high=high)

        g, h = group("guided"), group("holdout")
        diff = low = high = relative = None
        if g.users and h.users:
            diff, low, high = newcombe_interval(h.tickets, h.users, g.tickets, g.users)
            relative = diff / h.rate if h.rate else None
        significant = low is not None and high is not None and (low > 0.0 or high < 0.0)
        return Deflection(window=self.window, guided=g, holdout=h, difference=diff, low=low, high=high,
                          relative=relative, significant=significant)  # fmt: skip

    # -- snapshots --------------------------------------------------------------------------
    def export(self) -> dict[str, Any]:
        """The running figures as plain data (msgpack-able)."""
        codec = _InsightCodec()
        sc = self._totals()
        return {
            "users": [[uid, *codec.encode(u)] for uid, u in self._state.users(INSIGHT)],
            "hotspots": [[list(k), v] for k, v in self._state.rows("hotspots")],
            "accounts": dict(self._state.rows("accounts")),
            "items": dict(self._state.rows("items")),
            "groups": {"guided": sc["guided"], "holdout": sc["holdout"]},
            "buckets": sc["buckets"],
            "reservoir": self._state.reservoir(),
            "lead_seen": sc["lead_seen"],
            "struggles": [(uid, top) for uid, top in self._state.users(STRUGGLE)],
            "detectors": dict(self._state.rows("detectors")),
            "counts": [sc["tickets"], sc["preceded"], sc["episodes"], sc["guided_episodes"], sc["holdout_episodes"]],
            "span": [sc["since"], sc["until"]],
        }

    def load(self, data: Mapping[str, Any]) -> None:
        """Replace the figures with an :meth:`export`."""
        state = self._state
        state.clear((INSIGHT, STRUGGLE), TABLES)
        codec = _InsightCodec()
        rows = list(data["users"])
        # Rows of older exports have fewer counters (anchor_missing came later): padded with 0.
        width = len(_ITEM_FIELDS)
        with state.transaction() as tx:
            for uid, *plain in rows[max(0, len(rows) - self._capacity) :]:
                u = codec.decode(plain)
                u.exposed, u.ticketed, u.guided = float(u.exposed), bool(u.ticketed), bool(u.guided)
                tx.user(INSIGHT, str(uid), lambda u=u: u)
            for k, v in data["hotspots"]:
                tx.row("hotspots", tuple(k), lambda v=v: [v[0], v[1], v[2], dict(v[3])])
            for k, v in dict(data["accounts"]).items():
                tx.row("accounts", str(k), lambda v=v: list(v))
            for k, v in dict(data["items"]).items():
                tx.row("items", str(k), lambda v=v: ([int(x) for x in v] + [0] * width)[:width])
            # Exports before detection quality have neither: counted from the restore on.
            for u_id, d in data.get("struggles", ()):
                tx.user(STRUGGLE, str(u_id), lambda d=d: str(d))
            for k, v in dict(data.get("detectors", {})).items():
                tx.row("detectors", str(k), lambda v=v: [int(x) for x in v])
            sc = tx.scalars
            sc.clear()
            groups = {str(k): [int(x) for x in v] for k, v in dict(data["groups"]).items()}
            sc.update(guided=groups.get("guided", [0, 0]), holdout=groups.get("holdout", [0, 0]),
                      buckets=[int(x) for x in data["buckets"]], lead_seen=int(data["lead_seen"]))  # fmt: skip
            sc["tickets"], sc["preceded"], sc["episodes"], sc["guided_episodes"], sc["holdout_episodes"] = (
                int(x) for x in data["counts"]
            )
            sc["since"], sc["until"] = data["span"]
        state.set_reservoir([float(x) for x in data["reservoir"]])


# --- online calibration ---------------------------------------------------------------------------

#: Struggles a detector needs before its ticket rate suggests anything.
MIN_STRUGGLES = 20


class CalibrationSuggestion(msgspec.Struct, kw_only=True):
    """What a running tracker's tickets suggest about its detector weights (``Tracker.calibration()``).

    Only a suggestion: nothing is applied. A detector whose struggles are followed by tickets
    more often than the others' is worth more (and less often, less): each suggested weight is
    the current one times ``sqrt(its precision / the overall precision)``, within [1/2, 2], for
    detectors with at least :data:`MIN_STRUGGLES` struggles (the others keep theirs).
    ``pyfriction calibrate`` fits weights and the threshold on recorded logs instead, and
    validates them: prefer it when logs are at hand.
    """

    tickets: int
    preceded: int
    recall: float | None
    struggles: int
    ticketed: int
    precision: float | None
    weights: dict[str, float]
    suggested: dict[str, float]
    #: detector -> [struggles, ticketed] behind the suggestion.
    evidence: dict[str, list[int]]
    enough_data: bool
    note: str


def suggest_calibration(quality: DetectionQuality, weights: Mapping[str, float]) -> CalibrationSuggestion:
    """A :class:`CalibrationSuggestion` from detection counts and the current weights."""
    precision = _rate(quality.ticketed, quality.struggles)
    suggested = dict(weights)
    evidence = {r.detector: [r.struggles, r.ticketed] for r in quality.detectors}
    moved = 0
    if precision:
        for row in quality.detectors:
            if row.detector in suggested and row.struggles >= MIN_STRUGGLES and row.precision is not None:
                factor = min(2.0, max(0.5, math.sqrt(row.precision / precision)))
                suggested[row.detector] = round(weights[row.detector] * factor, 4)
                moved += 1
    enough = moved > 0
    if not quality.tickets:
        note = "no tickets seen yet: nothing to learn from"
    elif not enough:
        note = f"too few struggles per detector (at least {MIN_STRUGGLES} needed) to suggest weights"
    else:
        note = (
            f"{quality.preceded} of {quality.tickets} tickets followed an episode; suggested weights move each "
            "detector toward its share of ticketed struggles. Not applied: put them in [detectors] to use them, "
            "or run `pyfriction calibrate` on recorded logs for fitted and validated weights and threshold."
        )
    return CalibrationSuggestion(
        tickets=quality.tickets,
        preceded=quality.preceded,
        recall=quality.recall,
        struggles=quality.struggles,
        ticketed=quality.ticketed,
        precision=precision,
        weights=dict(weights),
        suggested=suggested,
        evidence=evidence,
        enough_data=enough,
        note=note,
    )
