"""Real Redis servers for tests: one server, or a cluster of 3 primaries and 3 replicas, on loopback.

Each node runs from its own temporary directory on a free port (its cluster bus on port +
10000), persistence off. :func:`start_server` and :func:`start_cluster` return a handle whose
``stop()`` kills the processes (by their own pid) and removes the directories; the fixtures in
``conftest.py`` call it at teardown. Waiting is by polling a condition against a deadline.

(This package is not named ``tests/redis``: with pytest's default import mode a test package
named ``redis`` would shadow redis-py.)
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: Seconds to wait for a node to answer, and for a cluster to agree (loaded 2-core machines).
START_TIMEOUT = 30.0


def missing() -> str | None:
    """Why real-server tests cannot run here, or None."""
    for tool in ("redis-server", "redis-cli"):
        if shutil.which(tool) is None:
            return f"{tool} is not on PATH (Debian: apt-get install redis-server redis-tools)"
    try:
        import redis  # noqa: F401
    except ImportError:
        return "redis-py is not installed (pip install redis)"
    return None


def _free_port(used: set[int]) -> int:
    """A loopback port free now, whose cluster bus port (+10000) is free too."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port: int = s.getsockname()[1]
        if port in used or port + 10000 > 65535:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        used.add(port)
        return port
    raise RuntimeError("no free loopback port pair found")


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    """Ask the kernel to kill the server if the test process dies (Linux)."""
    if sys.platform.startswith("linux"):
        import ctypes

        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


@dataclass
class Node:
    port: int
    dir: Path
    proc: subprocess.Popen[bytes]

    def cli(self, *args: str, timeout: float = 10.0) -> str:
        out = subprocess.run(["redis-cli", "-h", "127.0.0.1", "-p", str(self.port), *args],
                             capture_output=True, timeout=timeout, check=False)  # fmt: skip
        return out.stdout.decode(errors="replace")

    def log(self) -> str:
        try:
            return (self.dir / "redis.log").read_text(errors="replace")[-2000:]
        except OSError:
            return ""


@dataclass
class Servers:
    """Running nodes; ``uri`` is the store URI reaching them."""

    nodes: list[Node]
    root: Path
    uri: str
    stopped: bool = field(default=False)

    @property
    def ports(self) -> list[int]:
        return [n.port for n in self.nodes]

    def stop(self) -> None:
        """Kill every node (its own pid) and remove their directories."""
        if self.stopped:
            return
        self.stopped = True
        for n in self.nodes:
            if n.proc.poll() is None:
                n.proc.terminate()
        for n in self.nodes:
            try:
                n.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                n.proc.kill()
                n.proc.wait(timeout=5)
        shutil.rmtree(self.root, ignore_errors=True)


def _wait(what: str, ok: Callable[[], bool], nodes: list[Node], timeout: float = START_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    pause = 0.02
    while not ok():
        for n in nodes:
            if n.proc.poll() is not None:
                raise RuntimeError(f"redis-server on port {n.port} exited ({n.proc.returncode}):\n{n.log()}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout} s waiting for {what}:\n" + "\n".join(n.log() for n in nodes))
        time.sleep(pause)
        pause = min(pause * 1.5, 0.25)


def _start_node(root: Path, used: set[int], cluster: bool) -> Node:
    last: Exception | None = None
    for _attempt in range(5):  # a port taken between the probe and the bind: another port
        port = _free_port(used)
        d = root / f"node-{port}"
        d.mkdir()
        conf = [
            f"port {port}", "bind 127.0.0.1", "protected-mode no", f'dir "{d}"', 'logfile "redis.log"',
            'save ""', "appendonly no", "daemonize no", "databases 16",
        ]  # fmt: skip
        if cluster:
            conf += ["cluster-enabled yes", 'cluster-config-file "nodes.conf"', "cluster-node-timeout 2000"]
        (d / "redis.conf").write_text("\n".join(conf) + "\n")
        proc = subprocess.Popen(["redis-server", str(d / "redis.conf")], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, preexec_fn=_die_with_parent)  # fmt: skip
        node = Node(port, d, proc)
        try:
            _wait(f"redis-server on port {port}", lambda node=node: node.cli("ping").strip() == "PONG", [node])  # type: ignore[misc]
            return node
        except RuntimeError as exc:
            last = exc
            if proc.poll() is None:
                proc.kill()
            proc.wait()
    raise RuntimeError(f"could not start redis-server: {last}")


def start_server() -> Servers:
    """One redis-server on a free loopback port, its own temporary directory."""
    root = Path(tempfile.mkdtemp(prefix="pf-redis-"))
    servers = Servers([], root, "")
    try:
        node = _start_node(root, set(), cluster=False)
        servers.nodes.append(node)
        servers.uri = f"redis://127.0.0.1:{node.port}/0"
        return servers
    except BaseException:
        servers.stop()
        raise


def start_cluster(primaries: int = 3, replicas: int = 1) -> Servers:
    """A Redis Cluster of ``primaries`` primaries with ``replicas`` replicas each, on loopback,
    made by ``redis-cli --cluster create`` and waited for until every node says
    ``cluster_state:ok`` and knows every other node."""
    root = Path(tempfile.mkdtemp(prefix="pf-redis-cluster-"))
    servers = Servers([], root, "")
    try:
        used: set[int] = set()
        for _ in range(primaries * (1 + replicas)):
            servers.nodes.append(_start_node(root, used, cluster=True))
        addrs = [f"127.0.0.1:{n.port}" for n in servers.nodes]
        out = subprocess.run(
            ["redis-cli", "--cluster", "create", *addrs, "--cluster-replicas", str(replicas), "--cluster-yes"],
            capture_output=True, timeout=START_TIMEOUT * 2, check=False,
        )  # fmt: skip
        if out.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create failed:\n{out.stdout.decode()}\n{out.stderr.decode()}")
        total = len(servers.nodes)

        def agreed() -> bool:
            for n in servers.nodes:
                info = n.cli("cluster", "info")
                if "cluster_state:ok" not in info or f"cluster_known_nodes:{total}" not in info:
                    return False
            return True

        _wait("cluster_state:ok on every node", agreed, servers.nodes)
        servers.uri = "redis+cluster://" + ",".join(addrs)
        return servers
    except BaseException:
        servers.stop()
        raise


def start_sentinel_group(service: str = "pfmain", replicas: int = 2) -> Servers:
    """A primary, its ``replicas`` and one Sentinel watching them (quorum 1, the primary down
    after 1 s of silence), on loopback; ``uri`` is ``redis+sentinel://`` of that Sentinel.
    ``nodes``: primary, the replicas, the sentinel last (not a data node). Two replicas by
    default: after a failover the Sentinel points the other one at the promoted primary, so
    writes that wait for one replica can be confirmed again."""
    root = Path(tempfile.mkdtemp(prefix="pf-redis-sentinel-"))
    servers = Servers([], root, "")
    used: set[int] = set()
    try:
        primary = _start_node(root, used, cluster=False)
        servers.nodes.append(primary)
        for _ in range(replicas):
            replica = _start_node(root, used, cluster=False)
            servers.nodes.append(replica)
            replica.cli("replicaof", "127.0.0.1", str(primary.port))
            _wait("a replica to sync", lambda r=replica: "master_link_status:up" in r.cli("info", "replication"),
                  [primary, replica])  # fmt: skip
        port = _free_port(used)
        d = root / f"sentinel-{port}"
        d.mkdir()
        conf = [
            f"port {port}", "bind 127.0.0.1", "protected-mode no", f'dir "{d}"', 'logfile "redis.log"',
            f"sentinel monitor {service} 127.0.0.1 {primary.port} 1",
            f"sentinel down-after-milliseconds {service} 1000", f"sentinel failover-timeout {service} 5000",
        ]  # fmt: skip
        (d / "redis.conf").write_text("\n".join(conf) + "\n")  # Sentinel rewrites it: its own copy
        proc = subprocess.Popen(["redis-server", str(d / "redis.conf"), "--sentinel"], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, preexec_fn=_die_with_parent)  # fmt: skip
        sentinel = Node(port, d, proc)
        servers.nodes.append(sentinel)

        def watching() -> bool:
            known = sentinel.cli("sentinel", "replicas", service)
            return all(str(r.port) in known for r in servers.nodes[1:-1])

        _wait("the Sentinel to find the replicas", watching, [sentinel])
        servers.uri = f"redis+sentinel://127.0.0.1:{port}/{service}/0"
        return servers
    except BaseException:
        servers.stop()
        raise


def sentinel_failover(servers: Servers, service: str = "pfmain", timeout: float = START_TIMEOUT) -> Node:
    """``kill -9`` the primary of a :func:`start_sentinel_group`; wait until the Sentinel names
    one of the replicas as the primary and that replica says so; the new primary."""
    primary, *replicas, sentinel = servers.nodes
    primary.proc.kill()
    primary.proc.wait(timeout=10)
    promoted: list[Node] = []

    def switched() -> bool:
        addr = sentinel.cli("sentinel", "get-master-addr-by-name", service).split()
        new = [r for r in replicas if addr[-1:] == [str(r.port)]]
        if new and "role:master" in new[0].cli("info", "replication"):
            promoted[:] = new
        return bool(promoted)

    _wait("the Sentinel to promote a replica", switched, [*replicas, sentinel], timeout)
    return promoted[0]


def described(errors: list[BaseException]) -> str:
    """Errors with their messages and tracebacks (redis-py 8's ``repr`` of an error reply hides
    its message: ``server:ResponseError``)."""
    return "\n".join("".join(traceback.format_exception(e)) for e in errors)


# --- failures and topology changes (tests that mutate their own cluster) -------------------------------


def _live(servers: Servers) -> list[Node]:
    return [n for n in servers.nodes if n.proc.poll() is None]


def node_by_port(servers: Servers, port: int) -> Node:
    for n in servers.nodes:
        if n.port == port:
            return n
    raise KeyError(f"no node on port {port}")


def node_id(node: Node) -> str:
    return node.cli("cluster", "myid").strip()


def _cluster_nodes(node: Node) -> list[list[str]]:
    """``CLUSTER NODES`` of ``node``, split: id, addr, flags, primary, ..., slots."""
    return [line.split() for line in node.cli("cluster", "nodes").splitlines() if line.strip()]


def slot_owner(servers: Servers, slot: int) -> Node:
    """The primary serving ``slot``, as a live node sees it."""
    import redis

    for n in _live(servers):
        with contextlib.suppress(redis.RedisError):
            with redis.Redis(port=n.port) as r:
                for start, end, primary, *_replicas in r.execute_command("CLUSTER SLOTS"):
                    if start <= slot <= end:
                        return node_by_port(servers, int(primary[1]))
    raise RuntimeError(f"no live node knows who serves slot {slot}")


def _all_ok(servers: Servers) -> bool:
    return all("cluster_state:ok" in n.cli("cluster", "info") for n in _live(servers))


def prepare_for_failures(servers: Servers, timeout: float = START_TIMEOUT) -> None:
    """Make a replica's full synchronization start at once (``repl-diskless-sync-delay 0``, not 5 s:
    a restarted or new replica is usable sooner) and wait until every replica is synchronized
    (a replica that never was cannot take over)."""
    for n in _live(servers):
        n.cli("config", "set", "repl-diskless-sync-delay", "0")

    def synced() -> bool:
        for n in _live(servers):
            info = n.cli("info", "replication")
            if "role:slave" in info and "master_link_status:up" not in info:
                return False
        return True

    _wait("every replica to be synchronized", synced, _live(servers), timeout)


def kill_primary(servers: Servers, port: int, timeout: float = START_TIMEOUT) -> Node:
    """``kill -9`` the primary on ``port``; wait until its replica was promoted (every live node
    says ``cluster_state:ok`` and gives the dead node no slot); the promoted node."""
    dead = node_by_port(servers, port)
    dead_id = node_id(dead)
    replica_ids = {f[0] for f in _cluster_nodes(dead) if len(f) > 3 and f[3] == dead_id}
    if not replica_ids:
        raise RuntimeError(f"the node on port {port} has no replica to take over")
    dead.proc.kill()
    dead.proc.wait(timeout=10)
    live = _live(servers)

    def promoted() -> bool:
        if not _all_ok(servers):
            return False
        for n in live:
            for f in _cluster_nodes(n):
                if f[0] == dead_id and len(f) > 8:  # still serving slots
                    return False
                if f[0] in replica_ids and "master" in f[2]:
                    return True
        return False

    _wait(f"a replica of port {port} to take over", promoted, live, timeout)
    for n in live:
        if node_id(n) in replica_ids and "role:master" in n.cli("info", "replication"):
            return n
    raise RuntimeError("the promoted replica was not found")


def restart_node(servers: Servers, port: int, timeout: float = START_TIMEOUT) -> Node:
    """Start again the (killed) node of ``port`` from its directory (its ``nodes.conf``): a primary
    that was failed over rejoins as a replica of its successor; wait until it is synchronized."""
    old = node_by_port(servers, port)
    if old.proc.poll() is None:
        raise RuntimeError(f"the node on port {port} is running")
    proc = subprocess.Popen(["redis-server", str(old.dir / "redis.conf")], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, preexec_fn=_die_with_parent)  # fmt: skip
    node = Node(port, old.dir, proc)
    servers.nodes[servers.nodes.index(old)] = node

    def synced() -> bool:
        info = node.cli("info", "replication")
        return "role:slave" in info and "master_link_status:up" in info and _all_ok(servers)

    _wait(f"the node on port {port} to rejoin as a replica", synced, _live(servers), timeout)
    return node


def add_node(servers: Servers, replica_of: Node | None = None, timeout: float = START_TIMEOUT) -> Node:
    """A new empty node joined to the running cluster (``redis-cli --cluster add-node``): a primary
    with no slots, or a replica of ``replica_of``; waited for until every live node knows it."""
    used = set(servers.ports)
    node = _start_node(servers.root, used, cluster=True)
    servers.nodes.append(node)
    node.cli("config", "set", "repl-diskless-sync-delay", "0")
    seed = next(n for n in _live(servers) if n is not node)
    args = ["redis-cli", "--cluster", "add-node", f"127.0.0.1:{node.port}", f"127.0.0.1:{seed.port}"]
    if replica_of is not None:
        args += ["--cluster-slave", "--cluster-master-id", node_id(replica_of)]
    out = subprocess.run(args, capture_output=True, timeout=START_TIMEOUT * 2, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"redis-cli --cluster add-node failed:\n{out.stdout.decode()}\n{out.stderr.decode()}")
    new_id = node_id(node)

    def joined() -> bool:
        if not all(any(f[0] == new_id for f in _cluster_nodes(n)) for n in _live(servers)):
            return False
        if replica_of is not None and "master_link_status:up" not in node.cli("info", "replication"):
            return False
        return _all_ok(servers)

    _wait(f"the node on port {node.port} to join", joined, _live(servers), timeout)
    return node


def move_slots(servers: Servers, slots: list[int], to: Node, timeout: float = START_TIMEOUT) -> None:
    """Move ``slots`` to the primary ``to`` while clients keep writing, as ``redis-cli --cluster
    reshard`` does, one slot at a time: ``SETSLOT IMPORTING`` on ``to``, ``MIGRATING`` on the owner,
    ``MIGRATE`` of the keys in batches (clients meanwhile get ASK / TRYAGAIN), then ``SETSLOT
    NODE`` on both and on every other primary; wait until every live node agrees."""
    import redis

    to_id = node_id(to)
    clients: dict[int, redis.Redis] = {}

    def client(n: Node) -> redis.Redis:
        if n.port not in clients:
            clients[n.port] = redis.Redis(port=n.port, socket_timeout=30)
        return clients[n.port]

    def command(n: Node, *args: Any) -> Any:
        # MIGRATE's own link to the target may time out on a loaded machine (IOERR): its keys
        # are read again and sent again (REPLACE: a key the target got before the timeout is
        # overwritten by the source's, the one clients write while the slot is MIGRATING)
        for attempt in range(5):
            try:
                return client(n).execute_command(*args)
            except redis.ResponseError as exc:
                if not str(exc).startswith("IOERR") or attempt == 4:
                    raise RuntimeError(f"{' '.join(map(str, args[:4]))} on port {n.port}: {exc}") from exc
                time.sleep(0.2)
        return None

    owners = {slot: slot_owner(servers, slot) for slot in slots}
    # Each node's own word on its role: another node's gossip view may still list a replica
    # that just joined as a primary (SETSLOT NODE sent to it fails: "only with masters").
    primaries = [n for n in _live(servers) if n.cli("role").split("\n", 1)[0].strip() == "master"]
    ids: dict[int, str] = {}
    try:
        for slot in slots:
            src = owners[slot]
            if src.port == to.port:
                continue
            src_id = ids.setdefault(src.port, node_id(src))
            command(to, "CLUSTER SETSLOT", slot, "IMPORTING", src_id)
            command(src, "CLUSTER SETSLOT", slot, "MIGRATING", to_id)
            while True:
                keys = command(src, "CLUSTER GETKEYSINSLOT", slot, 100)
                if not keys:
                    break
                command(src, "MIGRATE", "127.0.0.1", to.port, "", 0, 10000, "REPLACE", "KEYS", *keys)
            for n in [to, src, *(p for p in primaries if p.port not in (to.port, src.port))]:
                command(n, "CLUSTER SETSLOT", slot, "NODE", to_id)
    finally:
        for c in clients.values():
            c.close()

    def agreed() -> bool:
        for n in _live(servers):
            with redis.Redis(port=n.port) as r:
                for start, end, primary, *_replicas in r.execute_command("CLUSTER SLOTS"):
                    if int(primary[1]) != to.port and any(start <= s <= end for s in slots):
                        return False
        return _all_ok(servers)

    _wait(f"every node to agree that {len(slots)} slot(s) moved", agreed, _live(servers), timeout)
