"""``Tracker.insights()``: hotspots, lead time, deflection with its interval, guidance items,
accounts; the statistics against published values; bounds; equality across engines.

Every test that touches an engine runs on both (the ``engine`` fixture of conftest.py).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pyfriction
import pyfriction.report
from pyfriction import userstate
from pyfriction.guidance import in_holdout
from pyfriction.insights import newcombe_interval, wilson_interval

from helpers import T0, ev

MIN = 60.0
HOUR = 3600.0


def need(engine: str) -> None:
    """Skip (locally) or fail (under CI) when ``engine`` is the compiled one and it is not built:
    the rule of conftest's ``require_engine``, for tests that use both engines at once."""
    if engine != "compiled":
        return
    try:
        from pyfriction import _core

        _core.CompiledCore  # noqa: B018
    except (ImportError, AttributeError) as exc:
        if os.environ.get("CI"):
            pytest.fail(f"compiled core not built ({exc}); CI must build it", pytrace=False)
        pytest.skip("compiled core not built")


CATALOG = {
    "items": [
        {"id": "pay", "title": "Pay help", "kind": "banner"},
        {"id": "dates", "title": "Dates", "kind": "tooltip"},
    ],
    "rules": [{"step": "billing.*", "guidance": "pay"}, {"step": "import.*", "guidance": "dates"}],
}


def config(share: float = 0.0, salt: str = "s", **extra: Any) -> dict[str, Any]:
    return {"guidance": {**CATALOG, "holdout": {"share": share, "salt": salt}, **extra}, "scoring": {"cooldown": 0.0}}


def rage(t: pyfriction.Tracker, user: str, ts: float, step: str = "billing.card", target: str = "#pay-now",
         account: str | None = None) -> None:  # fmt: skip
    extra = {"account_id": account} if account else {}
    for i in range(3):
        t.observe(ev(user, "click", ts + 0.1 * i, step, target, **extra))
    t.observe(ev(user, "success", ts + 0.5))


def ticket(t: pyfriction.Tracker, user: str, ts: float, account: str | None = None) -> None:
    t.observe(ev(user, "ticket", ts, **({"account_id": account} if account else {})))


# --- statistics against published values ------------------------------------------------------


@pytest.mark.parametrize(
    ("k", "n", "low", "high"),
    [(81, 263, 0.2553, 0.3662), (15, 148, 0.0624, 0.1605), (0, 20, 0.0, 0.1611), (1, 29, 0.0061, 0.1718)],
)
def test_wilson_interval_matches_newcombe_1998(k: int, n: int, low: float, high: float) -> None:
    lo, hi = wilson_interval(k, n)
    assert (round(lo, 4), round(hi, 4)) == (low, high)


@pytest.mark.parametrize(
    ("args", "expected"),
    [((56, 70, 48, 80), (0.0524, 0.3339)), ((9, 10, 3, 10), (0.1705, 0.8090)), ((6, 7, 2, 7), (0.0582, 0.8062)),
     ((5, 56, 0, 29), (-0.0381, 0.1926)), ((0, 10, 0, 20), (-0.1611, 0.2775)), ((0, 10, 0, 10), (-0.2775, 0.2775)),
     ((10, 10, 0, 20), (0.6791, 1.0)), ((10, 10, 0, 10), (0.6075, 1.0))],
)  # fmt: skip
def test_newcombe_interval_matches_the_published_method_10(args: tuple[int, int, int, int],
                                                         expected: tuple[float, float]) -> None:  # fmt: skip
    """Newcombe (1998), Statistics in Medicine 17:873-890, Table II, method 10."""
    d, lo, hi = newcombe_interval(*args)
    assert d == pytest.approx(args[0] / args[1] - args[2] / args[3])
    assert (round(lo, 4), round(hi, 4)) == expected


@given(st.integers(0, 500), st.integers(1, 500), st.integers(0, 500), st.integers(1, 500))
def test_interval_contains_the_estimate(k1: int, n1: int, k2: int, n2: int) -> None:
    k1, k2 = min(k1, n1), min(k2, n2)
    d, lo, hi = newcombe_interval(k1, n1, k2, n2)
    assert -1.0 <= lo <= d + 1e-12 and d - 1e-12 <= hi <= 1.0
    wl, wh = wilson_interval(k1, n1)
    assert 0.0 <= wl <= k1 / n1 + 1e-12 and k1 / n1 - 1e-12 <= wh <= 1.0


# --- the figures from a tracker -----------------------------------------------------------------


def test_hotspots_rank_by_users_then_episodes(make_tracker: Callable[..., pyfriction.Tracker]) -> None:
    t = make_tracker(config())
    for i, u in enumerate(["a", "b", "c"]):  # 3 users, one episode each, on billing.card #pay-now
        rage(t, u, T0 + i)
    for k in range(4):  # 1 user, 4 episodes on import.mapping #date-format
        for j in range(3):
            t.observe(ev("d", "form_error", T0 + k * HOUR + j, "import.mapping", "#date-format"))
        t.observe(ev("d", "success", T0 + k * HOUR + 5))
    rage(t, "e", T0, "reports", "#export")  # 1 user, 1 episode
    ticket(t, "a", T0 + 10 * MIN)
    ticket(t, "d", T0 + 4 * HOUR)
    spots = t.insights().hotspots
    assert [(h.step, h.target, h.users, h.episodes) for h in spots] == [
        ("billing.card", "#pay-now", 3, 3),
        ("import.mapping", "#date-format", 1, 4),
        ("reports", "#export", 1, 1),
    ]
    assert spots[0].detectors == {"rage_click": 3}
    assert spots[1].detectors == {"repeat_failure": 4}  # the largest reason of each episode
    assert [h.tickets for h in spots] == [1, 1, 0]
    assert len(t.insights(limit=2).hotspots) == 2


def test_lead_time(make_tracker: Callable[..., pyfriction.Tracker]) -> None:
    t = make_tracker(config())
    rage(t, "a", T0)  # first episode at T0 + 0.2
    rage(t, "a", T0 + 20 * MIN)  # a second one: lead time counts from the first
    ticket(t, "a", T0 + 0.2 + 30 * MIN)
    rage(t, "b", T0)
    ticket(t, "b", T0 + 0.2 + 2 * MIN)
    rage(t, "c", T0)
    ticket(t, "c", T0 + 0.2 + 2 * HOUR)
    ticket(t, "nobody", T0 + HOUR)  # no episode before it
    rage(t, "late", T0)
    ticket(t, "late", T0 + 0.2 + 25 * HOUR)  # beyond the attribution window (24 h)
    ticket(t, "a", T0 + 40 * MIN)  # a second ticket: its struggle already counted
    lt = t.insights().lead_time
    assert (lt.tickets, lt.preceded) == (6, 3)
    assert lt.share == pytest.approx(0.5)
    counts = {b.label: b.count for b in lt.buckets}
    assert counts == {"< 1 min": 0, "1-5 min": 1, "5-15 min": 0, "15-30 min": 0, "30-60 min": 1, "1-4 h": 1,
                      "4-24 h": 0, ">= 24 h": 0}  # fmt: skip
    assert lt.median == pytest.approx(30 * MIN)
    assert lt.p90 == pytest.approx(30 * MIN + 0.8 * 90 * MIN)
    assert sum(b.count for b in lt.buckets) == lt.preceded


def test_deflection_groups_and_interval(make_tracker: Callable[..., pyfriction.Tracker]) -> None:
    users = [f"user-{i}" for i in range(200)]
    held = [u for u in users if in_holdout(u, 0.5, "s")][:20]
    guided = [u for u in users if not in_holdout(u, 0.5, "s")][:40]
    t = make_tracker(config(share=0.5))
    for u in held + guided:
        rage(t, u, T0)
    for u in held[:12]:  # 12 of 20 holdout users file a ticket
        ticket(t, u, T0 + HOUR)
    for u in guided[:8]:  # 8 of 40 guided users do
        ticket(t, u, T0 + HOUR)
    ticket(t, guided[8], T0 + 25 * HOUR)  # outside the window: not counted
    ticket(t, guided[0], T0 + 2 * HOUR)  # a second ticket: counted once
    rage(t, "user-no-rule", T0, "reports", "#x")  # no rule matches: never exposed
    ticket(t, "user-no-rule", T0 + HOUR)
    d = t.insights().deflection
    assert (d.holdout.users, d.holdout.tickets, d.guided.users, d.guided.tickets) == (20, 12, 40, 8)
    assert d.holdout.rate == 0.6 and d.guided.rate == 0.2
    expected = newcombe_interval(12, 20, 8, 40)
    assert (d.difference, d.low, d.high) == pytest.approx(expected)
    assert d.relative == pytest.approx(0.4 / 0.6)
    assert d.significant and d.low > 0  # type: ignore[operator]
    assert (d.holdout.low, d.holdout.high) == pytest.approx(wilson_interval(12, 20))
    ins = t.insights()
    assert ins.holdout_episodes == 20 and ins.guided_episodes == 40


def test_deflection_exposure_is_the_first_episode_with_guidance_to_offer(
    make_tracker: Callable[..., pyfriction.Tracker],
) -> None:
    t = make_tracker(config())
    rage(t, "u", T0, "reports", "#x")  # no rule: not an exposure
    ticket(t, "u", T0 + 10 * MIN)  # before exposure: not counted against guidance
    rage(t, "u", T0 + HOUR)  # billing: exposure
    d = t.insights().deflection
    assert (d.guided.users, d.guided.tickets) == (1, 0)
    ticket(t, "u", T0 + 2 * HOUR)
    assert t.insights().deflection.guided.tickets == 1
    # without a holdout group there is no comparison
    assert d.difference is None and d.low is None and not d.significant


def test_items_and_accounts(make_tracker: Callable[..., pyfriction.Tracker]) -> None:
    clock = [T0]
    t = make_tracker(config(), clock=lambda: clock[0])
    rage(t, "a1", T0, account="acct-1")
    rage(t, "a1", T0 + 30 * MIN, account="acct-1")  # same user, same item within its cooldown: no guidance
    rage(t, "a2", T0, account="acct-1")
    rage(t, "b1", T0, account="acct-2")
    for j in range(3):
        t.observe(ev("b2", "form_error", T0 + j, "import.mapping", "#f", account_id="acct-2"))
    ticket(t, "a1", T0 + 2 * HOUR, account="acct-1")
    ticket(t, "zz", T0, account="acct-3")  # a ticket without friction still counts for the account
    clock[0] = T0 + 10
    for u in ("a1", "a2", "b1"):
        t.pending(u)
    t.ack("a1", "pay", "clicked")
    t.ack("a2", "pay", "dismissed")
    t.ack("b1", "pay", "shown")
    ins = t.insights()
    items = {i.id: i for i in ins.items}
    pay = items["pay"]
    # a1's offer expired unfetched (its next episode, 30 min later, found it past expire_after);
    # acks still count for an offer on record
    assert (pay.offered, pay.delivered, pay.expired, pay.shown, pay.clicked, pay.dismissed) == (3, 2, 1, 3, 1, 1)
    assert pay.click_rate == pytest.approx(1 / 3) and pay.dismiss_rate == pytest.approx(1 / 3)
    assert (items["dates"].offered, items["dates"].shown, items["dates"].click_rate) == (1, 0, None)
    accounts = {a.account_id: a for a in ins.accounts}
    assert [a.account_id for a in ins.accounts] == ["acct-1", "acct-2", "acct-3"]
    a1 = accounts["acct-1"]
    assert (a1.users, a1.episodes, a1.tickets, a1.guided) == (2, 3, 1, 2)
    assert a1.last_episode == pytest.approx(T0 + 30 * MIN + 0.2)
    assert (accounts["acct-2"].users, accounts["acct-2"].episodes, accounts["acct-2"].guided) == (2, 2, 2)
    assert (accounts["acct-3"].users, accounts["acct-3"].tickets) == (0, 1)


def test_account_from_identify(make_tracker: Callable[..., pyfriction.Tracker]) -> None:
    t = make_tracker(config())
    t.identify("u", {"account_id": "acct-9", "plan": "pro"})
    rage(t, "u", T0)  # the events carry no account
    assert [(a.account_id, a.users, a.episodes) for a in t.insights().accounts] == [("acct-9", 1, 1)]


def test_tables_are_bounded(make_tracker: Callable[..., pyfriction.Tracker], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(userstate, "MAX_KEYS", 5)  # the tables' bound lives with the stores
    t = make_tracker(config(), capacity=20)
    for i in range(40):
        rage(t, f"u{i}", T0 + i, f"step-{i}", "#t", account=f"acct-{i}")
    ins = t.insights(limit=None)
    assert len(ins.hotspots) == 6 and len(ins.accounts) == 6  # 5 rows and "(other)"
    other = next(h for h in ins.hotspots if h.step == "(other)")
    assert other.episodes == 35
    assert sum(h.episodes for h in ins.hotspots) == 40
    assert len(t._insights._users) <= 20


def test_same_figures_on_both_engines_and_after_a_snapshot(tmp_path: Any) -> None:
    need("compiled")
    from pyfriction import _sample

    events = _sample.generate(400, seed=3, guided=True)
    got = []
    for engine in ("compiled", "reference"):
        clock = [0.0]
        t = pyfriction.Tracker(pyfriction.report.default_config_path(), engine=engine, clock=lambda: clock[0])
        try:
            for e in events:
                clock[0] = e["ts"]
                if e["type"] == "identify":
                    t.identify(e["user_id"], e["traits"])
                else:
                    t.observe(e)
            ins = t.insights(limit=None)
            t.snapshot(tmp_path / f"{engine}.snap")
        finally:
            t.close()
        got.append(msgspec_builtins(ins))
        other = "reference" if engine == "compiled" else "compiled"
        r = pyfriction.Tracker.restore(tmp_path / f"{engine}.snap", engine=other)
        try:
            restored = msgspec_builtins(r.insights(limit=None))
        finally:
            r.close()
        restored["engine"] = engine
        assert restored == got[-1]
    got[0]["engine"] = got[1]["engine"]
    assert got[0] == got[1]
    assert got[0]["episodes"] > 20 and got[0]["deflection"]["guided"]["users"] > 10


def msgspec_builtins(obj: Any) -> Any:
    return msgspec.to_builtins(obj)


# --- invariants on random streams -----------------------------------------------------------------

STREAM = st.lists(
    st.tuples(
        st.sampled_from(["rage-billing", "rage-import", "rage-other", "ticket", "shown", "dismissed", "page"]),
        st.integers(0, 5),  # user
        st.floats(0.5, 2 * HOUR),  # gap
    ),
    max_size=60,
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(stream=STREAM, share=st.sampled_from([0.0, 0.3, 1.0]))
def test_invariants(engine: str, stream: list[tuple[str, int, float]], share: float) -> None:
    t = pyfriction.Tracker(config(share=share), engine=engine)
    now = T0
    try:
        for kind, user, gap in stream:
            now += gap
            u = f"user-{user}"
            if kind.startswith("rage"):
                step = {"rage-billing": "billing.card", "rage-import": "import.x", "rage-other": "reports"}[kind]
                rage(t, u, now, step, account=f"acct-{user % 2}")
            elif kind == "ticket":
                ticket(t, u, now)
            elif kind in ("shown", "dismissed"):
                t.observe(ev(u, "guidance_" + kind, now, None, "pay"))
            else:
                t.observe(ev(u, "page", now, "dashboard"))
        ins = t.insights(limit=None)
        assert ins.episodes == sum(h.episodes for h in ins.hotspots) == t.stats().episodes
        assert ins.tickets == t.stats().tickets == ins.lead_time.tickets
        assert 0 <= ins.lead_time.preceded <= ins.lead_time.tickets
        assert sum(b.count for b in ins.lead_time.buckets) == ins.lead_time.preceded
        assert all(0 < h.users <= h.episodes for h in ins.hotspots)
        assert ins.guided_episodes + ins.holdout_episodes <= ins.episodes
        d = ins.deflection
        for g in (d.guided, d.holdout):
            assert 0 <= g.tickets <= g.users
        if share == 0.0:
            assert d.holdout.users == 0 and ins.holdout_episodes == 0
        if share == 1.0:
            assert d.guided.users == 0 and ins.guided_episodes == 0
        if d.difference is not None:
            assert d.low <= d.difference <= d.high  # type: ignore[operator]
        for item in ins.items:
            assert item.clicked <= item.shown and item.dismissed <= item.shown
            assert item.shown <= item.offered and item.delivered <= item.offered
            assert all(r is None or 0.0 <= r <= 1.0 for r in (item.click_rate, item.dismiss_rate))
        assert all(a.users <= a.episodes and a.guided <= a.users for a in ins.accounts)
        assert all(math.isfinite(x) for x in (ins.since or 0.0, ins.until or 0.0))
    finally:
        t.close()


_texts = st.one_of(st.none(), st.text(max_size=12))
_keys = st.tuples(_texts, _texts)


@given(
    account=_texts,
    first=st.one_of(st.none(), st.floats(allow_nan=False)),
    since=st.lists(_keys, max_size=4),
    spots=st.lists(_keys, max_size=4),
    accounts=st.lists(st.text(max_size=8), max_size=3),
    group=st.sampled_from([None, "guided", "holdout"]),
    exposed=st.floats(allow_nan=False),
    flags=st.tuples(st.booleans(), st.booleans()),
)
def test_a_user_insight_record_round_trips_through_the_file_form(
    account: Any, first: Any, since: Any, spots: Any, accounts: Any, group: Any, exposed: float, flags: Any
) -> None:
    """The file store's codec of a user's insight record: the bytes it stores are those of
    the plain lists (tuples are encoded as they are), and decoding them gives the record back."""
    from pyfriction.insights import _InsightCodec, _UserInsight

    u = _UserInsight()
    u.account, u.first_episode, u.group, u.exposed = account, first, group, exposed
    u.since_ticket, u.hotspots, u.accounts = tuple(since), tuple(spots), tuple(accounts)
    u.ticketed, u.guided = flags
    codec = _InsightCodec()
    raw = msgspec.msgpack.encode(codec.encode(u))
    plain = [account, first, [list(k) for k in since], [list(k) for k in spots], list(accounts), group, exposed,
             *flags]  # fmt: skip
    assert raw == msgspec.msgpack.encode(plain)
    back = codec.decode(msgspec.msgpack.decode(raw))
    assert {s: getattr(back, s) for s in _UserInsight.__slots__} == {s: getattr(u, s) for s in _UserInsight.__slots__}
