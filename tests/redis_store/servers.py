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
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

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
