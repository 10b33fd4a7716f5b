"""RedisState through a failover and a live slot move, on a cluster of each test's own.

Writers (two threads here and one forked process, a client each, ``replicas=1``) run
transactions without pause: a shared user's guidance part, detector, hotspot and account rows,
the scalars and the reservoir (increments, maxima, appends: the same whatever the interleaving),
and users of their own (overwritten, discarded, re-created: in the writer's order). Meanwhile

* a primary serving some of the users is killed (``kill -9``), its replica takes over, and the
  killed node is started again (it rejoins as the new primary's replica); or
* a fourth primary (with a replica) joins and a slot range holding some of the users, plus the
  slots of other users and of the scalars, moves to it, key by key.

The writers retry through it. Afterwards every acknowledged transaction is there exactly once:
the store equals a ``MemoryState`` fed the acknowledged transactions; a transaction refused
with "lost the lock" (fenced: nothing written) is left out of both; any other error fails.

Without breaking anything (the shared server and cluster): every pipeline run twice (a retry
after a lost reply) still equals the memory store; a reply lost while another host writes the
same user is still "done"; a lock lost with nobody writing since still commits; an unreachable
Redis is a ``StoreError`` after ``retry_timeout``; the store's options in the URI.
"""

from __future__ import annotations

import faulthandler
import multiprocessing
import os
import random
import signal
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytest.importorskip("redis", reason="redis-py is not installed (pip install redis)")

from redis.crc import key_slot

from pyfriction.redis_state import RedisState
from pyfriction.store import StoreError
from pyfriction.userstate import GUIDANCE, INSIGHT, N_PARTS, STRUGGLE, TABLES, MemoryState, StateStore

from .servers import Servers, add_node, kill_primary, move_slots, restart_node, slot_owner
from .test_redis_state import _equal_run, txn_st

SHARED = [f"s{i}" for i in range(8)]
DETECTORS = ["dwell", "rage", "loop"]
SPOTS = [("checkout", "#pay"), ("signup", "#email"), ("search", None)]
ACCOUNTS = ["acme", "init", "umbrella"]
#: Acknowledged transactions each writer makes before, and again after, the failure.
PROGRESS = 5


class _Plain:
    """Test parts are plain lists: their own plain data."""

    def encode(self, value: Any) -> Any:
        return value

    def decode(self, plain: Any) -> Any:
        return list(plain)


def _store(uri: str, prefix: str, **kw: Any) -> RedisState:
    s = RedisState.from_uri(uri, 100_000, prefix=prefix, **kw)
    for p in range(N_PARTS):
        s.codec(p, _Plain())
    return s


def _op(writer: str, i: int) -> tuple[Any, ...]:
    """Writer ``writer``'s ``i``-th transaction (the same on every call: the oracle replays it)."""
    rng = random.Random(f"{writer}/{i}")
    if rng.random() < 0.6:
        return ("shared", rng.choice(SHARED), rng.choice(DETECTORS), rng.choice(SPOTS), rng.choice(ACCOUNTS),
                float(rng.randrange(10_000)), rng.randrange(1, 4))  # fmt: skip
    return ("own", f"{writer}.{rng.randrange(6)}", rng.randrange(3), i)


def _apply(s: StateStore, op: tuple[Any, ...]) -> None:
    with s.transaction() as tx:
        if op[0] == "shared":
            _kind, uid, det, spot, acct, ts, k = op
            g = tx.user(GUIDANCE, uid, lambda: [0, 0])
            g[0] += 1
            g[1] += k
            tx.row("detectors", det, lambda: [0, 0])[0] += k
            r = tx.row("hotspots", spot, lambda: [0, 0, 0, {}])
            r[0] += 1
            r[3][det] = r[3].get(det, 0) + 1
            a = tx.row("accounts", acct, lambda: [0, 0, 0, 0, None])
            a[1] += 1
            a[4] = ts if a[4] is None else max(a[4], ts)
            sc = tx.scalars
            sc["n"] = sc.get("n", 0) + 1
            sc.setdefault("lst", [0, 0])[1] += k
            tx.sample(ts, 1, None)  # type: ignore[arg-type]  # appended: the reservoir is short
        else:
            _kind, uid, what, i = op
            if what == 0:
                tx.user(INSIGHT, uid, lambda: [0])[0] = i
            elif what == 1:
                tx.discard(STRUGGLE, uid)
            else:
                v = tx.user(STRUGGLE, uid, lambda: [0, 0])
                v[0] += 1
                v[1] = i


class _Result:
    def __init__(self, name: str) -> None:
        self.name = name
        self.acked: list[int] = []
        self.lost: list[int] = []
        self.errors: list[str] = []
        self.retries = 0


def _write(uri: str, prefix: str, res: _Result, stop: Any, progress: Any) -> None:
    """Transactions until ``stop`` is set; ``progress.value``: how many were acknowledged."""
    s = _store(uri + "?replicas=1&retry_timeout=25", prefix)
    i = 0
    try:
        while not stop.is_set():
            try:
                _apply(s, _op(res.name, i))
            except StoreError as exc:
                if "lost the lock" in str(exc):
                    res.lost.append(i)  # fenced: nothing written
                    print(f"{res.name} #{i}: {exc}", file=sys.__stderr__, flush=True)
                else:
                    res.errors.append(f"{res.name} #{i}: {exc!r}")
                    print(res.errors[-1], file=sys.__stderr__, flush=True)  # seen at once, from any process
            else:
                res.acked.append(i)
                progress.value = len(res.acked)
            i += 1
    finally:
        res.retries = s.retries
        s.close()


def _process(uri: str, prefix: str, name: str, stop: Any, progress: Any, out: Any) -> None:
    faulthandler.register(signal.SIGUSR1, file=sys.__stderr__, all_threads=True)  # a stack when stuck
    res = _Result(name)
    try:
        _write(uri, prefix, res, stop, progress)
    except BaseException as exc:
        res.errors.append(f"{name}: {exc!r}")
    out.put((res.acked, res.lost, res.errors, res.retries))


class _Writers:
    """Two writer threads in this process and one in a forked process."""

    def __init__(self, uri: str, prefix: str) -> None:
        self.ctx = multiprocessing.get_context("fork")
        self.stop = self.ctx.Event()
        self.results = [_Result("t0"), _Result("t1"), _Result("p0")]
        self.progress = [self.ctx.Value("i", 0) for _ in self.results]
        self.out = self.ctx.Queue()
        self.threads = [
            threading.Thread(target=self._thread, args=(uri, prefix, r, v))
            for r, v in zip(self.results[:2], self.progress[:2])
        ]  # fmt: skip
        self.proc = self.ctx.Process(target=_process, args=(uri, prefix, "p0", self.stop, self.progress[2], self.out))

    def _thread(self, uri: str, prefix: str, res: _Result, progress: Any) -> None:
        try:
            _write(uri, prefix, res, self.stop, progress)
        except BaseException as exc:
            res.errors.append(f"{res.name}: {exc!r}\n{traceback.format_exc()}")

    def start(self) -> None:
        self.proc.start()
        for t in self.threads:
            t.start()

    def done(self) -> list[int]:
        return [int(v.value) for v in self.progress]

    def wait_each(self, at_least: list[int], timeout: float = 60.0) -> None:
        """Until every writer acknowledged ``at_least`` transactions (polled)."""
        try:
            _until(lambda: all(d >= n for d, n in zip(self.done(), at_least)), timeout,
                   lambda: f"writers' progress {self.done()} < {at_least}; errors {self.errors()}")  # fmt: skip
        except AssertionError:
            faulthandler.dump_traceback(file=sys.__stderr__, all_threads=True)
            if self.proc.pid is not None:
                for _ in range(2):
                    os.kill(self.proc.pid, signal.SIGUSR1)
                    time.sleep(1.0)  # its stacks on stderr
            raise

    def errors(self) -> list[str]:
        return [e for r in self.results for e in r.errors]

    def finish(self) -> list[_Result]:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=60)
            assert not t.is_alive()
        acked, lost, errors, retries = self.out.get(timeout=60)
        self.proc.join(timeout=30)
        p = self.results[2]
        p.acked, p.lost, p.errors, p.retries = acked, lost, errors, retries
        return self.results


def _until(ok: Callable[[], bool], timeout: float, why: Callable[[], str]) -> None:
    deadline = time.monotonic() + timeout
    pause = 0.01
    while not ok():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s: {why()}")
        time.sleep(pause)
        pause = min(pause * 1.5, 0.1)


def _scalars(s: StateStore) -> dict[str, Any]:
    with s.transaction() as tx:
        return dict(tx.scalars)


def _check_equals_oracle(uri: str, prefix: str, results: list[_Result]) -> None:
    assert [e for r in results for e in r.errors] == []
    oracle = MemoryState(100_000)
    for r in results:
        assert r.acked, r.name
        for i in r.acked:
            _apply(oracle, _op(r.name, i))
    red = _store(uri, prefix)
    try:
        for p in range(N_PARTS):
            assert sorted(red.users(p)) == sorted(oracle.users(p)), p
            assert red.count(p) == oracle.count(p), p
        for t in TABLES:
            assert dict(red.rows(t)) == dict(oracle.rows(t)), t
        assert _scalars(red) == _scalars(oracle)
        assert sorted(red.reservoir()) == sorted(oracle.reservoir())
    finally:
        red.close()


def _slot(s: RedisState, user_id: str) -> int:
    return int(key_slot(s.user_keys(user_id)[0].encode()))


def test_primary_killed_mid_stream(own_cluster: Servers) -> None:
    prefix = "f" + uuid.uuid4().hex[:10]
    probe = _store(own_cluster.uri, prefix)
    victim = slot_owner(own_cluster, _slot(probe, SHARED[0]))  # serves some of the users
    probe.close()
    writers = _Writers(own_cluster.uri, prefix)
    writers.start()
    try:
        writers.wait_each([PROGRESS] * 3)
        t0 = time.monotonic()
        kill_primary(own_cluster, victim.port)
        took_over = time.monotonic() - t0
        restart_node(own_cluster, victim.port)  # as systemd would: it rejoins as a replica
        writers.wait_each([n + PROGRESS for n in writers.done()])
    finally:
        results = writers.finish()
    print(f"failover in {took_over:.1f} s; acknowledged {[len(r.acked) for r in results]}, "
          f"lost locks {[len(r.lost) for r in results]}, retries {[r.retries for r in results]}")  # fmt: skip
    assert sum(r.retries for r in results) > 0  # the writers did go through the failover
    _check_equals_oracle(own_cluster.uri, prefix, results)


def test_slots_move_to_a_fourth_primary_under_traffic(own_cluster: Servers) -> None:
    new = add_node(own_cluster)
    add_node(own_cluster, replica_of=new)  # replicas=1: the new primary's writes need a replica
    prefix = "m" + uuid.uuid4().hex[:10]
    probe = _store(own_cluster.uri, prefix)
    first = _slot(probe, SHARED[0])
    source = slot_owner(own_cluster, first)
    near = [
        s for s in range(max(0, first - 30), min(16384, first + 70)) if slot_owner(own_cluster, s).port == source.port
    ]
    hot = [_slot(probe, SHARED[1]), _slot(probe, SHARED[2]), int(key_slot(probe.scalars_key.encode()))]
    slots = sorted(set(near + hot))
    probe.close()
    writers = _Writers(own_cluster.uri, prefix)
    writers.start()
    try:
        writers.wait_each([PROGRESS] * 3)
        t0 = time.monotonic()
        move_slots(own_cluster, slots, new)
        moving = time.monotonic() - t0
        writers.wait_each([n + PROGRESS for n in writers.done()])
    finally:
        results = writers.finish()
    print(f"{len(slots)} slots moved in {moving:.1f} s; acknowledged {[len(r.acked) for r in results]}, "
          f"retries {[r.retries for r in results]}")  # fmt: skip
    for slot in (first, *hot):
        assert int(new.cli("cluster", "countkeysinslot", str(slot)).strip() or 0) > 0, slot
    _check_equals_oracle(own_cluster.uri, prefix, results)


# --- idempotence, without breaking anything ----------------------------------------------------------


def test_every_write_replayed_counts_once(redis_target: tuple[str, str]) -> None:
    """Each pipeline run twice in a row, as a retry does after a reply lost (the first run
    applied): the store still equals the memory store, and no commit reports a lost lock."""
    prefix = "r" + uuid.uuid4().hex[:10]
    s = _store(redis_target[1], prefix)
    once = s._run_once

    def twice(*args: Any, **kwargs: Any) -> list[Any]:
        once(*args, **kwargs)
        return once(*args, **kwargs)

    s._run_once = twice  # type: ignore[method-assign]
    try:
        acked = list(range(120))
        for i in acked:
            _apply(s, _op("w", i))
    finally:
        s.close()
    r = _Result("w")
    r.acked = acked
    _check_equals_oracle(redis_target[1], prefix, [r])


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(txns=st.lists(txn_st, min_size=6, max_size=24))
def test_replayed_writes_equal_memory(redis_server: Servers, txns: list[Any]) -> None:
    """The equality with the memory store (eviction at a small capacity, rows pooled past
    MAX_KEYS, floats set or incremented, the reservoir) with every pipeline run twice."""
    once = RedisState._run_once

    def twice(self: RedisState, *args: Any, **kwargs: Any) -> list[Any]:
        once(self, *args, **kwargs)
        return once(self, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(RedisState, "_run_once", twice)
        _equal_run(redis_server.uri, txns)


def test_a_reply_lost_then_another_host_writing_the_user_is_still_done(redis_target: tuple[str, str]) -> None:
    """A commit applied whose reply is lost (a ConnectionError after the pipeline ran), and
    another host commits the same user before the retry: the retry answers "done" (no lost
    lock, nothing applied twice); the same for the aggregates' pipeline."""
    import redis

    prefix = "a" + uuid.uuid4().hex[:10]
    s, other = _store(redis_target[1], prefix), _store(redis_target[1], prefix)
    try:
        with s.transaction() as tx:
            tx.user(GUIDANCE, "bob", lambda: [0])
        once = s._run_once
        lost: list[str] = []

        def another_host() -> None:
            with other.transaction() as tx2:
                tx2.user(GUIDANCE, "bob")[0] += 10
                tx2.row("detectors", "d", lambda: [0])[0] += 100

        def lossy(calls: Any, plain: Any, durable: bool, loaded: bool = False) -> list[Any]:
            result = once(calls, plain, durable, loaded)
            kind = calls[0][0] if calls else "plain"
            if kind in ("commit", "merge") and kind not in lost:
                lost.append(kind)
                t = threading.Thread(target=another_host)  # another writer: its own thread
                t.start()
                t.join()
                raise redis.ConnectionError("the reply was lost")
            return result

        s._run_once = lossy  # type: ignore[method-assign]
        with s.transaction() as tx:
            tx.user(GUIDANCE, "bob")[0] += 1
            tx.row("detectors", "d", lambda: [0])[0] += 1
        assert lost == ["commit", "merge"]
        assert s.users(GUIDANCE) == [("bob", [21])]
        assert dict(s.rows("detectors")) == {"d": [201]}
    finally:
        s.close()
        other.close()


def test_a_lock_lost_with_nobody_writing_since_still_commits(redis_target: tuple[str, str]) -> None:
    """The lock vanished (expired, or not yet on the replica promoted): the version read is
    still the user's, so the commit goes through; had anyone written, it would be refused."""
    s = _store(redis_target[1], "l" + uuid.uuid4().hex[:10])
    try:
        with s.transaction() as tx:
            tx.user(GUIDANCE, "ann", lambda: [0])
        with s.transaction() as tx:
            tx.user(GUIDANCE, "ann")[0] += 1
            s.client.delete(s.user_keys("ann")[1])
        assert s.users(GUIDANCE) == [("ann", [1])]
        with pytest.raises(StoreError, match=r"lost the lock of user\(s\) \['ann'\]"), s.transaction() as tx:
            tx.user(GUIDANCE, "ann")[0] += 1
            s.client.delete(s.user_keys("ann")[1])
            with s.transaction() as other:
                other.user(GUIDANCE, "ann")[0] += 10
        assert s.users(GUIDANCE) == [("ann", [11])]
    finally:
        s.close()


def test_unreachable_redis_is_a_store_error_after_retry_timeout() -> None:
    s = _store("redis://127.0.0.1:1/0?retry_timeout=0.3", "x")
    try:
        with pytest.raises(StoreError, match=r"retry_timeout=0\.3 s: ConnectionError"):
            s.count(GUIDANCE)
        assert s.retries > 0  # retried until the timeout, then the error
    finally:
        s.close()


def test_store_options_in_the_uri() -> None:
    s = RedisState.from_uri("redis://127.0.0.1:1/0?replicas=2&retry_timeout=3&socket_timeout=1.5", 10)
    kw = s.client.connection_pool.connection_kwargs
    assert (s.replicas, s.retry_timeout, kw["socket_timeout"], kw["socket_connect_timeout"]) == (2, 3.0, 1.5, 2.0)
    s.close()
    with pytest.raises(StoreError, match="invalid value 'x' for the option 'replicas'"):
        RedisState.from_uri("redis://127.0.0.1:1/0?replicas=x", 10)
