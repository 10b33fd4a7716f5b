"""Pipelines grouped by Redis Cluster node, with redirections and failovers retried.

redis-py's cluster pipeline finds each command's keys by asking a node (``COMMAND GETKEYS``:
one more round trip per ``EVALSHA``, which made it 90% of a batch's time), so
:class:`NodePipelines` routes by itself: the caller names each command's key, the slot
(CRC16 of the hash tag, ``RedisCluster.keyslot``) gives the primary from redis-py's slot map,
and each node gets one plain pipeline per call. On a plain ``redis.Redis`` (one server or a
Sentinel-managed primary) everything goes in one pipeline.

What a reply or a connection may say during a failover or a slot move, and what is done:

* ``MOVED``: the slot map is stale (a slot moved, a replica was promoted): refresh it from the
  cluster and send the command again to the new owner;
* ``ASK``: the key is being migrated and is already on the target: ``ASKING`` and the command
  on the target node, as the protocol asks;
* ``TRYAGAIN`` (a multi-key command during a migration), ``CLUSTERDOWN``, ``MASTERDOWN``,
  ``LOADING``, ``READONLY`` (a demoted primary), a connection refused, reset or timed out:
  wait (doubling from 5 ms, at most 250 ms), refresh the slot map, send again;

With ``replicas`` set, each node's pipeline ends with ``WAIT replicas wait_timeout`` on the same
connection, so its writes are on that many replicas when it returns (an asynchronous replica
that a failover promotes then holds them); a pipeline that got fewer acknowledgements in time
is counted in ``unreplicated``, not failed (its writes are on the primary).

Redirections and transient errors are retried
until ``deadline`` seconds have passed since the call began; then the last error is raised as
:class:`~pyfriction.store.StoreError`. Commands are sent again only when their reply was not
read, or said one of the above: a command whose reply was lost with its connection may have
run, so callers send only commands that are safe to repeat (reads, and writes that recognise
their own earlier success: see :mod:`pyfriction.redis_engine`'s commit).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import redis
import redis.cluster
from redis.exceptions import (
    AskError,
    BusyLoadingError,
    ClusterDownError,
    ConnectionError,
    MasterDownError,
    MovedError,
    ReadOnlyError,
    TimeoutError,
    TryAgainError,
)

from .store import StoreError

__all__ = ["NodePipelines"]

#: A command: the key it touches (routes it) and its arguments for ``execute_command``.
Command = tuple[str, tuple[Any, ...]]

_TRANSIENT_REPLIES = (TryAgainError, ClusterDownError, MasterDownError, BusyLoadingError, ReadOnlyError)
_CONNECTION = (ConnectionError, TimeoutError, OSError)


class NodePipelines:
    """Send commands in one pipeline per node; see the module docstring."""

    def __init__(self, client: Any, deadline: float = 10.0, replicas: int = 0, wait_timeout: float = 1.0) -> None:
        if not deadline > 0:
            raise ValueError("deadline must be positive")
        if replicas < 0 or not wait_timeout > 0:
            raise ValueError("replicas must be 0 or more and wait_timeout positive")
        self.client = client
        self.cluster = isinstance(client, redis.cluster.RedisCluster)
        self.deadline = deadline
        self.replicas = replicas
        self.wait_ms = max(1, int(wait_timeout * 1000))
        #: Commands sent again after a redirection or a transient error (for metrics and tests).
        self.retried = 0
        #: Pipelines whose writes fewer than ``replicas`` replicas acknowledged in time.
        self.unreplicated = 0

    def wait_for_replicas(self, pipe: Any) -> None:
        """End ``pipe`` with ``WAIT replicas timeout`` (on its connection, so it covers its
        writes) when ``replicas`` is set; :meth:`replicated` reads the answer."""
        if self.replicas:
            pipe.execute_command("WAIT", self.replicas, self.wait_ms)

    def replicated(self, replies: list[Any]) -> list[Any]:
        """``replies`` without the ``WAIT`` answer :meth:`wait_for_replicas` added (counted in
        ``unreplicated`` when short)."""
        if not self.replicas:
            return replies
        acked = replies[-1]
        if not isinstance(acked, int) or acked < self.replicas:
            self.unreplicated += 1
        return replies[:-1]

    def _node(self, key: str) -> Any:
        slot = self.client.keyslot(key)
        return self.client.nodes_manager.get_node_from_slot(slot)

    def refresh(self) -> None:
        """Read the cluster's slot map again (nothing on one server)."""
        if self.cluster:
            try:
                self.client.nodes_manager.initialize()
            except Exception:  # every startup node down for a moment: the next round tries again
                pass

    def _send(self, target: Any, items: Sequence[tuple[int, tuple[Any, ...], bool]], out: list[Any]) -> None:
        """One pipeline on ``target`` (a redis.Redis); ``items``: (index, args, asking)."""
        pipe = target.pipeline(transaction=False)
        for _i, args, asking in items:
            if asking:
                pipe.execute_command("ASKING")
            pipe.execute_command(*args)
        self.wait_for_replicas(pipe)
        replies = self.replicated(pipe.execute(raise_on_error=False))
        k = 0
        for i, _args, asking in items:
            if asking:
                k += 1  # ASKING's own OK
            out[i] = replies[k]
            k += 1

    def run(self, commands: Sequence[Command]) -> list[Any]:
        """The replies of ``commands`` in order (error replies as exception instances, as
        redis-py's ``raise_on_error=False`` gives them), redirections and transient errors
        retried until the deadline."""
        out: list[Any] = [None] * len(commands)
        todo = [(i, commands[i][1], None) for i in range(len(commands))]  # (index, args, ask node)
        start = time.monotonic()
        pause = 0.005
        last: BaseException | None = None
        while todo:
            groups: dict[str, tuple[Any, list[tuple[int, tuple[Any, ...], bool]]]] = {}
            unsent: list[tuple[int, tuple[Any, ...], Any]] = []
            for i, args, ask in todo:
                if not self.cluster:
                    node_client, name = self.client, "-"
                else:
                    try:
                        node = ask if ask is not None else self._node(commands[i][0])
                    except Exception as exc:  # no owner known now (a slot map being rebuilt)
                        last = exc
                        unsent.append((i, args, None))
                        continue
                    node_client, name = self._connection(node), node.name
                groups.setdefault(name, (node_client, []))[1].append((i, args, ask is not None))
            retry: list[tuple[int, tuple[Any, ...], Any]] = list(unsent)
            for node_client, items in groups.values():
                try:
                    self._send(node_client, items, out)
                except _CONNECTION as exc:
                    last = exc
                    retry += [(i, args, None) for i, args, _a in items]
                    continue
                for i, args, _asking in items:
                    reply = out[i]
                    if isinstance(reply, AskError):
                        retry.append((i, args, self._ask_node(reply)))
                    elif isinstance(reply, (MovedError, *_TRANSIENT_REPLIES)):
                        last = reply
                        retry.append((i, args, None))
            if not retry:
                break
            self.retried += len(retry)
            if time.monotonic() - start > self.deadline:
                raise StoreError(f"Redis did not take {len(retry)} commands within {self.deadline} s: {last!r}")
            if any(ask is None for _i, _a, ask in retry):
                if any(not isinstance(out[i], MovedError) for i, _a, ask in retry if ask is None):
                    time.sleep(pause)
                    pause = min(pause * 2, 0.25)
                self.refresh()
            todo = retry
        return out

    def _connection(self, node: Any) -> Any:
        if node.redis_connection is None:
            self.client.nodes_manager.create_redis_connections([node])
        return node.redis_connection

    def _ask_node(self, reply: AskError) -> Any:
        host, port = reply.host, int(reply.port)
        manager = self.client.nodes_manager
        node = manager.get_node(host=host, port=port)
        if node is None:
            node = redis.cluster.ClusterNode(host, port)  # type: ignore[no-untyped-call]
            manager.create_redis_connections([node])
        return node
