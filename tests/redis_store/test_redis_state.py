"""RedisState against real servers: one redis-server, and a cluster of 3 primaries + 3 replicas.

* the protocol: every member of ``StateStore`` / ``StateTxn``;
* every store equals the memory store: random transactions (users' parts created, mutated in
  place, discarded, evicted at a small capacity; aggregate rows pooled past a small
  ``MAX_KEYS``; scalars; the reservoir) applied to a ``MemoryState`` and a ``RedisState`` leave
  the same users (in the same recency order), rows, scalars and reservoir; the insights
  collector on either exports the same figures;
* concurrent writers (2 processes x 2 threads, a client each) hammering the same user, rows
  and scalars lose no update;
* a failed body writes nothing and frees its locks; a commit whose lock was lost is refused;
* bad URIs are refused with a clear ``StoreError``.
"""

from __future__ import annotations

import multiprocessing
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytest.importorskip("redis", reason="redis-py is not installed (pip install redis)")

from pyfriction import userstate
from pyfriction._episodes import Episode, Reason
from pyfriction.insights import InsightsCollector
from pyfriction.redis_state import RedisState, redis_client
from pyfriction.store import StoreError
from pyfriction.userstate import GUIDANCE, INSIGHT, N_PARTS, STRUGGLE, TABLES, MemoryState, StateStore


class _Plain:
    """Test parts are plain lists: their own plain data."""

    def encode(self, value: Any) -> Any:
        return value

    def decode(self, plain: Any) -> Any:
        return list(plain)


def _store(uri: str, capacity: int = 1000, **kw: Any) -> RedisState:
    s = RedisState.from_uri(uri, capacity, prefix="t" + uuid.uuid4().hex[:10], **kw)
    for p in range(N_PARTS):
        s.codec(p, _Plain())
    return s


@pytest.fixture
def store(redis_target: tuple[str, str]) -> Iterator[RedisState]:
    s = _store(redis_target[1])
    yield s
    s.close()


def _scalars(s: StateStore) -> dict[str, Any]:
    with s.transaction() as tx:
        return dict(tx.scalars)


# --- the protocol ---------------------------------------------------------------------------------------


def test_protocol_members(store: RedisState) -> None:
    import inspect

    for name in ("shared", "transaction", "codec", "count", "users", "rows", "reservoir", "set_reservoir", "clear"):
        assert hasattr(store, name), name
    assert store.shared is True
    with store.transaction() as tx:
        for name, _ in inspect.getmembers(userstate.StateTxn):
            if not name.startswith("_"):
                assert hasattr(tx, name), name
        assert tx.user(GUIDANCE, "nobody") is None
        assert tx.peek(INSIGHT, "nobody") is None
        assert tx.discard(STRUGGLE, "nobody") is None
        assert tx.get_row("items", "none") is None
        assert tx.scalars == {}
    assert store.count(GUIDANCE) == 0 and store.users(GUIDANCE) == [] and store.reservoir() == []


# --- every store equals the memory store -------------------------------------------------------------------

UIDS = ["ann", "bob", "cy", "dee", "ed", "fé"]
HOT_KEYS = [("s1", "t1"), ("s1", None), ("s2", "t2"), ("s3", "t3")]
NAMES = ["a1", "a2", "a3", "a4"]

part_st = st.sampled_from([GUIDANCE, INSIGHT, STRUGGLE])
action_st = st.one_of(
    st.tuples(st.just("user"), part_st, st.booleans(), st.integers(0, 2)),
    st.tuples(st.just("peek"), part_st, st.integers(0, 2)),
    st.tuples(st.just("hot"), st.sampled_from(HOT_KEYS), st.integers(0, 2), st.sampled_from(["d1", "d2"])),
    st.tuples(st.just("acct"), st.sampled_from(NAMES), st.integers(0, 3), st.floats(0, 1000, allow_nan=False)),
    st.tuples(st.just("get"), st.sampled_from(["items", "detectors"]), st.sampled_from(NAMES)),
    st.tuples(st.just("row"), st.sampled_from(["items", "detectors"]), st.sampled_from(NAMES), st.integers(0, 1)),
    st.tuples(
        st.just("scalar"),
        st.sampled_from(["n", "since", "until", "lst", "sum", "label", "flag", "drop"]),
        st.integers(0, 5),
    ),
    st.tuples(st.just("sample"), st.floats(0, 100, allow_nan=False)),
)
# (user, parts discarded first, parts made (or touched) next, then any actions)
txn_st = st.tuples(st.sampled_from(UIDS), st.lists(part_st, max_size=1), st.lists(part_st, max_size=2),
                   st.lists(action_st, max_size=5))  # fmt: skip


def _apply(s: StateStore, txn: tuple[str, list[int], list[int], list[tuple[Any, ...]]], seen: list[int]) -> None:
    uid, discards, makes, actions = txn
    with s.transaction() as tx:
        for p in discards:  # first: a part created then discarded would evict differently in memory
            tx.discard(p, uid)
        for p in makes:
            tx.user(p, uid, lambda: [0, 0, 0])[2] += 1
        for a in actions:
            kind = a[0]
            if kind == "user":
                v = tx.user(a[1], uid, (lambda: [0, 0, 0]) if a[2] else None)
                if v is not None:
                    v[a[3]] += 1
            elif kind == "peek":
                v = tx.peek(a[1], uid)
                if v is not None:
                    v[a[2]] += 1
            elif kind == "hot":
                r = tx.row("hotspots", a[1], lambda: [0, 0, 0, {}])
                r[a[2]] += 1
                r[3][a[3]] = r[3].get(a[3], 0) + 1
            elif kind == "acct":
                r = tx.row("accounts", a[1], lambda: [0, 0, 0, 0, None])
                r[a[2]] += 1
                r[4] = a[3] if r[4] is None else max(r[4], a[3])
            elif kind == "get":
                got = tx.get_row(a[1], a[2])
                if got is not None:
                    got[0] += 1
            elif kind == "row":
                tx.row(a[1], a[2], lambda: [0, 0])[a[3]] += 1
            elif kind == "scalar":
                sc, name, k = tx.scalars, a[1], a[2]
                if name == "n":
                    sc["n"] = sc.get("n", 0) + k
                elif name in ("since", "until"):
                    old = sc.get(name)
                    ts = 100.0 + k
                    sc[name] = ts if old is None else (min(old, ts) if name == "since" else max(old, ts))
                elif name == "lst":
                    sc.setdefault("lst", [0, 0, 0])[k % 3] += 1
                elif name == "sum":
                    sc["sum"] = sc.get("sum", 0.0) + 0.1 * k
                elif name == "label":
                    sc["label"] = f"L{k}"
                elif name == "flag":
                    sc["flag"] = bool(k % 2)
                else:
                    sc.pop("label", None)
            else:
                seen[0] += 1
                tx.sample(a[1], seen[0], None)  # type: ignore[arg-type]


def _assert_same(mem: MemoryState, red: RedisState) -> None:
    for p in range(N_PARTS):
        assert red.users(p) == mem.users(p), p
        assert red.count(p) == mem.count(p), p
    for t in TABLES:
        assert dict(red.rows(t)) == dict(mem.rows(t)), t
    assert _scalars(red) == _scalars(mem)
    assert red.reservoir() == mem.reservoir()


def _equal_run(uri: str, txns: list[Any]) -> None:
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(userstate, "MAX_KEYS", 3)  # both stores read it when a row is made
        mem = MemoryState(3)
        red = _store(uri, capacity=3, stripes=1)  # one sorted set per part: exact LRU
        try:
            seen_m, seen_r = [0], [0]
            for txn in txns:
                _apply(mem, txn, seen_m)
                _apply(red, txn, seen_r)
            _assert_same(mem, red)
        finally:
            red.close()


_EQ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@_EQ
@given(txns=st.lists(txn_st, min_size=6, max_size=24))
def test_equals_memory_server(redis_server: Any, txns: list[Any]) -> None:
    _equal_run(redis_server.uri, txns)


@settings(_EQ, max_examples=40)
@given(txns=st.lists(txn_st, min_size=6, max_size=24))
def test_equals_memory_cluster(redis_cluster: Any, txns: list[Any]) -> None:
    _equal_run(redis_cluster.uri, txns)


def test_striped_capacity_evicts_least_recent(redis_target: tuple[str, str]) -> None:
    s = _store(redis_target[1], capacity=8, stripes=4)  # 2 users per stripe
    try:
        for i in range(40):
            with s.transaction() as tx:
                tx.user(GUIDANCE, f"u{i}", lambda i=i: [i])
        kept = s.users(GUIDANCE)
        assert s.count(GUIDANCE) == len(kept) <= 8
        assert [v for _u, v in kept] == sorted(v for _u, v in kept)  # least recently active first
        assert kept[-1] == ("u39", [39])  # the newest is never the one evicted
    finally:
        s.close()


# --- the insights on Redis export what they export from memory ---------------------------------------------

ins_st = st.lists(
    st.one_of(
        st.tuples(
            st.just("episode"),
            st.sampled_from(UIDS),
            st.sampled_from([None, "acme", "init"]),
            st.sampled_from(HOT_KEYS),
            st.sampled_from(["dwell", "rage", "loop"]),
            st.booleans(),
        ),
        st.tuples(st.just("ticket"), st.sampled_from(UIDS), st.sampled_from([None, "acme"])),
        st.tuples(st.just("hint"), st.sampled_from(UIDS), st.sampled_from(["acme", "init"])),
        st.tuples(st.just("item"), st.sampled_from(["tip1", "tip2"]), st.sampled_from(["offered", "shown"])),
    ),
    max_size=25,
)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=ins_st)
def test_insights_equal_on_redis(redis_target: tuple[str, str], ops: list[Any]) -> None:
    red_state = RedisState.from_uri(redis_target[1], 100, prefix="i" + uuid.uuid4().hex[:10])
    items = {"tip1": ("tooltip", "Tip 1"), "tip2": ("banner", "Tip 2")}
    mem, red = InsightsCollector(600.0, 100, items), InsightsCollector(600.0, 100, items, state=red_state)
    try:
        ts = 1_700_000_000.0
        for n, op in enumerate(ops):
            ts += 7.0
            for c in (mem, red):
                if op[0] == "episode":
                    ep = Episode(episode_id=f"e{n}", user_id=op[1], account_id=op[2], ts=ts, score=1.0, step=op[3][0],
                                 target=op[3][1], reasons=[Reason(op[4], 1.0, "")], holdout=op[5])  # fmt: skip
                    c.episode(ep, "tip1" if n % 2 else None)
                elif op[0] == "ticket":
                    c.ticket(op[1], op[2], ts)
                elif op[0] == "hint":
                    c.hint_account(op[1], op[2])
                else:
                    c.item(op[1], op[2])
        a, b = mem.export(), red.export()
        for key in ("accounts", "items", "detectors"):
            assert a.pop(key) == b.pop(key), key
        assert sorted(map(str, a.pop("hotspots"))) == sorted(map(str, b.pop("hotspots")))
        assert a == b
    finally:
        red_state.close()


# --- failures --------------------------------------------------------------------------------------------------


def test_failed_body_writes_nothing_and_frees_the_user(store: RedisState) -> None:
    with store.transaction() as tx:
        tx.user(GUIDANCE, "ann", lambda: [1])
    with pytest.raises(KeyError), store.transaction() as tx:
        tx.user(GUIDANCE, "ann")[0] = 99
        tx.row("items", "x", lambda: [0, 0])[0] += 5
        tx.scalars["n"] = 7
        raise KeyError("boom")
    store.lock_wait = 1.0  # a lock left behind would make the next transaction fail
    with store.transaction() as tx:
        assert tx.user(GUIDANCE, "ann") == [1]
        assert tx.get_row("items", "x") is None
        assert tx.scalars == {}


def test_lost_lock_is_refused(store: RedisState) -> None:
    with store.transaction() as tx:
        tx.user(GUIDANCE, "bob", lambda: [0])
    with pytest.raises(StoreError, match="lost the lock"), store.transaction() as tx:
        tx.user(GUIDANCE, "bob")[0] += 1
        tx.row("items", "y", lambda: [0])[0] += 1
        store.client.delete(store.user_keys("bob")[1])  # as if it had expired...
        with store.transaction() as other:  # ...and another host took the user meanwhile
            other.user(GUIDANCE, "bob")[0] += 10
    assert store.users(GUIDANCE) == [("bob", [10])]
    assert store.rows("items") == []


def test_lock_wait_is_bounded(store: RedisState) -> None:
    store.lock_wait = 0.2
    errors: list[BaseException] = []
    with store.transaction() as tx:
        tx.user(GUIDANCE, "cy", lambda: [0])

        def other() -> None:
            try:
                with store.transaction() as tx2:
                    tx2.user(GUIDANCE, "cy")
            except BaseException as exc:
                errors.append(exc)

        t = threading.Thread(target=other)
        t.start()
        t.join()
    assert len(errors) == 1 and isinstance(errors[0], StoreError) and "held by another" in str(errors[0])


# --- concurrent writers --------------------------------------------------------------------------------------------

ROUNDS = 60


def _writer(uri: str, prefix: str, name: str) -> None:
    s = RedisState.from_uri(uri, 1000, prefix=prefix, lock_wait=60.0)
    for p in range(N_PARTS):
        s.codec(p, _Plain())
    for i in range(ROUNDS):
        with s.transaction() as tx:
            tx.user(GUIDANCE, "hot", lambda: [0, []])[0] += 1
            tx.user(INSIGHT, name, lambda: [0])[0] += 1
            tx.row("detectors", "d", lambda: [0, 0])[0] += 1
            spot = tx.row("hotspots", ("s", "t"), lambda: [0, 0, 0, {}])
            spot[3][name[:1]] = spot[3].get(name[:1], 0) + 1
            acct = tx.row("accounts", "acme", lambda: [0, 0, 0, 0, None])
            acct[4] = float(i) if acct[4] is None else max(acct[4], float(i))
            sc = tx.scalars
            sc["n"] = sc.get("n", 0) + 1
            sc.setdefault("lst", [0, 0])[1] += 2
    s.close()


def _process(uri: str, prefix: str, name: str) -> None:
    threads = [threading.Thread(target=_writer, args=(uri, prefix, f"{name}{k}")) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def test_concurrent_writers_lose_no_update(redis_target: tuple[str, str]) -> None:
    uri = redis_target[1]
    prefix = "c" + uuid.uuid4().hex[:10]
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_process, args=(uri, prefix, name)) for name in ("p", "q")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    s = _store(uri)
    s.prefix = prefix
    s.scalars_key, s.reservoir_key = f"{prefix}:scalars", f"{prefix}:reservoir"
    writers = 4
    assert s.users(GUIDANCE) == [("hot", [writers * ROUNDS, []])]
    assert sorted(s.users(INSIGHT)) == [(n, [ROUNDS]) for n in ("p0", "p1", "q0", "q1")]
    assert dict(s.rows("detectors")) == {"d": [writers * ROUNDS, 0]}
    assert dict(s.rows("hotspots")) == {("s", "t"): [0, 0, 0, {"p": 2 * ROUNDS, "q": 2 * ROUNDS}]}
    assert dict(s.rows("accounts")) == {"acme": [0, 0, 0, 0, float(ROUNDS - 1)]}
    assert _scalars(s) == {"n": writers * ROUNDS, "lst": [0, 2 * writers * ROUNDS]}
    s.close()


# --- URIs ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("localhost:6379", "not a Redis URI"),
        ("mysql://localhost/1", "unknown scheme"),
        ("redis://", "no host"),
        ("redis://localhost:notaport/0", "not a number"),
        ("redis://localhost:99999/0", "out of range"),
        ("redis://localhost:6379/abc", "database 'abc' is not a number"),
        ("redis://localhost:6379/0?socket_timeout=soon", "invalid value 'soon'"),
        ("redis+cluster://localhost:7000,,localhost:7001", "empty host"),
        ("redis+cluster://localhost:7000/3", "no database number"),
        ("redis+sentinel://localhost:26379", "service name"),
        ("redis+sentinel://localhost:26379/mymaster/x", "database 'x' is not a number"),
    ],
)
def test_bad_uris(uri: str, message: str) -> None:
    with pytest.raises(StoreError, match=message):
        redis_client(uri)


def test_a_decoding_client_is_refused() -> None:
    import redis

    with pytest.raises(ValueError, match="decode_responses"):
        RedisState(redis.Redis(decode_responses=True), 10)


def test_good_uris(redis_server: Any, redis_cluster: Any) -> None:
    import redis
    import redis.cluster

    c = redis_client(redis_server.uri)
    assert isinstance(c, redis.Redis) and c.ping()
    c = redis_client("rediss://:s%40cret@example.invalid:6380/2?ssl_cert_reqs=none&socket_timeout=1.5")
    kw = c.connection_pool.connection_kwargs
    assert (kw["password"], kw["db"], kw["socket_timeout"], kw["ssl_cert_reqs"]) == ("s@cret", 2, 1.5, "none")
    c = redis_client(redis_cluster.uri)
    assert isinstance(c, redis.cluster.RedisCluster) and len(c.get_primaries()) == 3
    c.close()
    c = redis_client("redis+sentinel://:pw@127.0.0.1:1,127.0.0.1:2/mymaster/3")
    kw = c.connection_pool.connection_kwargs
    assert (kw["password"], kw["db"]) == ("pw", 3)
    assert c.connection_pool.service_name == "mymaster"


# --- guidance from any host --------------------------------------------------------------------------------------


def test_guidance_offered_on_one_host_is_fetched_once_on_another(redis_target: tuple[str, str]) -> None:
    """Two guidance engines (two hosts: a client each) on one prefix: an offer made on A is
    fetched by B, once; an outcome acked on B is counted where A sees it."""
    from pyfriction.config import GuidanceConfig, GuidanceItem, GuidanceRule, Holdout
    from pyfriction.guidance import GuidanceEngine

    config = GuidanceConfig(
        items=[GuidanceItem(id="pay-help", title="Paying")],
        rules=[GuidanceRule(guidance="pay-help", step="checkout")],
        holdout=Holdout(share=0.0),
    )
    prefix = "g" + uuid.uuid4().hex[:10]
    states = [RedisState.from_uri(redis_target[1], 100, prefix=prefix) for _ in range(2)]
    a, b = (GuidanceEngine(config, 100, state=s) for s in states)
    try:
        a.identify("ann", {"plan": "pro"})
        assert b.traits("ann") == {"plan": "pro"}
        ts = 1_700_000_000.0
        ep = Episode(episode_id="e1", user_id="ann", account_id=None, ts=ts, score=1.0, step="checkout",
                     target="#pay", reasons=[Reason("dwell", 1.0, "")])  # fmt: skip
        chosen = a.select(ep).guidance
        assert chosen is not None and chosen.id == "pay-help"
        got = b.pending("ann", ts + 1)
        assert [g.id for g in got] == ["pay-help"]
        assert a.pending("ann", ts + 2) == [] and b.pending("ann", ts + 2) == []  # delivered once
        assert b.outcome("ann", "pay-help", "clicked", ts + 3)
        assert a.export() == b.export()
    finally:
        for s in states:
            s.close()
