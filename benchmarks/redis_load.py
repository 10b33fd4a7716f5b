"""Events/s per host process on a Redis Cluster on loopback, and Redis's CPU per event.

    python benchmarks/redis_load.py [--primaries 1 3] [--users 100000] [--events 200000]
                                    [--batch 1000] [--engine compiled] [--json out.json]

For each primary count, starts a Redis Cluster of that many primaries (no replicas: the
figure is the commit path, not replication) with ``tests/redis_store/servers.py``, one host
process (this one) with ``Tracker(store="redis+cluster://...")``, and feeds it a stream of
``--events`` clicks, pages and errors over ``--users`` users in ``observe_many`` batches of
``--batch``. Prints:

* events/s (whole run, after a warm-up batch);
* the Redis servers' CPU per event (``INFO cpu`` before and after, summed over the primaries);
* the host process's CPU per event (its inverse is what one host core could sustain with
  Redis on other machines);
* the commits and the share that met a newer version;
* Redis's memory per user (``INFO memory``'s ``used_memory`` growth over the users recorded;
  the engine's records only, no guidance);
* the mean time of ``observe()`` of one event (``--single`` calls over 500 users, on a prefix
  of their own).

Everything runs on one machine: Redis and the host share its cores.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import uuid
from typing import Any

import numpy as np
import redis

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

from pyfriction import Tracker  # noqa: E402
from tests.redis_store import servers as test_servers  # noqa: E402

T0 = 1_700_000_000.0


def stream(users: int, events: int, seed: int = 1) -> dict[str, Any]:
    """Columns: ``events`` events over ``users`` users, time-ordered."""
    rng = np.random.default_rng(seed)
    kinds = np.array(["click", "click", "click", "page", "form_error", "dead_click"])
    kind = kinds[rng.integers(0, len(kinds), events)]
    return {
        "user_id": [f"user-{u}" for u in rng.integers(0, users, events)],
        "type": kind.tolist(),
        "ts": (T0 + np.cumsum(rng.random(events) * 0.01)).tolist(),
        "step": [f"step-{s}" for s in rng.integers(0, 20, events)],
        "target": [f"#t{t}" for t in rng.integers(0, 50, events)],
    }


def memory(nodes: list[Any]) -> int:
    return sum(int(redis.Redis(port=node.port).info("memory")["used_memory"]) for node in nodes)


def cpu(nodes: list[Any]) -> float:
    total = 0.0
    for node in nodes:
        info = redis.Redis(port=node.port).info("cpu")
        total += float(info["used_cpu_sys"]) + float(info["used_cpu_user"])
    return total


def one_node_cluster() -> test_servers.Servers:
    """A cluster of one primary holding every slot (``redis-cli --cluster create`` needs 3)."""
    root = test_servers.Path(test_servers.tempfile.mkdtemp(prefix="pf-redis-cluster-"))
    servers = test_servers.Servers([], root, "")
    node = test_servers._start_node(root, set(), cluster=True)
    servers.nodes.append(node)
    node.cli("cluster", "addslotsrange", "0", "16383")
    test_servers._wait("cluster_state:ok", lambda: "cluster_state:ok" in node.cli("cluster", "info"), [node])
    servers.uri = f"redis+cluster://127.0.0.1:{node.port}"
    return servers


def single_observe(tracker: Tracker, calls: int) -> float:
    """Mean milliseconds of ``observe()`` of one event (``calls`` events over 500 users): each
    is a batch of one, a read and a commit round trip."""
    cols = stream(500, calls, seed=2)
    start = time.perf_counter()
    for i in range(calls):
        tracker.observe({k: v[i] for k, v in cols.items()})
    return 1e3 * (time.perf_counter() - start) / max(1, calls)


def run(primaries: int, args: argparse.Namespace) -> dict[str, Any]:
    servers = one_node_cluster() if primaries == 1 else test_servers.start_cluster(primaries=primaries, replicas=0)
    try:
        mem0 = memory(servers.nodes)
        tracker = Tracker(engine=args.engine, store=servers.uri,
                          store_options={"prefix": "b" + uuid.uuid4().hex[:8]})  # fmt: skip
        cols = stream(args.users, args.events)
        n = args.events
        b = args.batch
        warm = {k: v[:b] for k, v in cols.items()}
        tracker.observe_many(warm)
        core: Any = tracker._core
        commits0, conflicts0 = core.commits, core.conflicts
        cpu0 = cpu(servers.nodes)
        host0 = time.process_time()
        start = time.perf_counter()
        for i in range(b, n, b):
            tracker.observe_many({k: v[i : i + b] for k, v in cols.items()})
        elapsed = time.perf_counter() - start
        host_cpu = time.process_time() - host0
        redis_cpu = cpu(servers.nodes) - cpu0
        done = n - b
        tracker.close()
        users = len(set(cols["user_id"]))
        per_user = (memory(servers.nodes) - mem0) / users
        other = Tracker(engine=args.engine, store=servers.uri, store_options={"prefix": "s" + uuid.uuid4().hex[:8]})
        single = single_observe(other, args.single)
        other.close()
        return {
            "primaries": primaries,
            "events": done,
            "events_per_s": done / elapsed,
            "redis_cpu_us_per_event": 1e6 * redis_cpu / done,
            "host_cpu_us_per_event": 1e6 * host_cpu / done,
            "commits": core.commits - commits0,
            "conflicts": core.conflicts - conflicts0,
            "users": users,
            "redis_bytes_per_user": per_user,
            "observe_ms": single,
        }
    finally:
        servers.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--primaries", type=int, nargs="+", default=[1, 3])
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--single", type=int, default=2000, help="observe() calls of one event to time")
    parser.add_argument("--engine", default="compiled", choices=["compiled", "reference"])
    parser.add_argument("--json", help="write the figures here too")
    args = parser.parse_args()
    results = []
    for p in args.primaries:
        r = run(p, args)
        results.append(r)
        print(f"{p} primaries: {r['events_per_s']:,.0f} events/s per host process, Redis CPU "
              f"{r['redis_cpu_us_per_event']:.1f} µs/event, host CPU {r['host_cpu_us_per_event']:.1f} µs/event, "
              f"{r['commits']:,} commits, "
              f"{r['conflicts']} conflicts ({r['events']:,} events, batches of {args.batch}); Redis memory "
              f"{r['redis_bytes_per_user']:.0f} B per user ({r['users']:,} users); observe() of one event "
              f"{r['observe_ms']:.2f} ms")  # fmt: skip
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
