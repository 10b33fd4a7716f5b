"""Guidance bookkeeping and insights on Redis or Redis Cluster: the :class:`StateStore` of many hosts.

:class:`RedisState` implements :class:`pyfriction.userstate.StateStore` on redis-py, for a plain
``redis.Redis`` (one server, or a Sentinel-managed primary) and a ``redis.cluster.RedisCluster``
alike, with stock Redis 7 commands and Lua scripts only (no modules): managed services work.
:func:`redis_client` makes the client of a ``redis://``, ``rediss://``, ``redis+unix://``,
``redis+cluster://`` or ``redis+sentinel://`` URI (the ``limits`` library's names).

**Keys** (``P`` is the prefix, ``pf`` by default; ``H`` a user's 64-bit key in hex)::

    P:{H}:u            hash: one user: "id", "p0".."p2" (a part: msgpack of its codec's plain
                       data), "t0".."t2" (when the part was last active)
    P:{H}:l            the user's lock (same slot: one owner per user)
    P:{aN.S}           sorted set: users holding part N, by last activity, stripe S of ``stripes``
    P:{rR}             hash: one aggregate row (R: the row's 64-bit key), a typed field per number
    P:rows:TABLE       hash: R -> msgpack of the row's key (HSETNX), HLEN is the table's size
    P:scalars          hash: the global counters, a typed field per number
    P:reservoir        list: the lead-time reservoir

**A user: a lock, not a compare-and-set.** A transaction hands out live objects that callers
mutate in place, and its body (guidance and insights code, callbacks around it) cannot be
re-run by the store, so an optimistic compare-and-set that fails at commit could only raise,
losing the caller's update. Instead the first touch of a user in a transaction takes the
user's lock and reads the user's hash in one script (``SET lock token NX PX ttl`` then
``HGETALL``: one round trip); the commit is one script that checks the token is still ours,
writes the changed parts and activity times, records its token as the hash's version ``v``
and deletes the lock, atomically. That is correct across hosts without clocks: a holder that
stalls beyond ``lock_ttl`` (10 s) lost its lock, and its commit is refused with
:class:`~pyfriction.store.StoreError` (a fenced write, never a lost update); a holder that dies
is replaced once the lock expires. A commit that finds its lock gone but nobody else's lock
and the version it read still there (the lock expired, or vanished in a failover: nobody wrote
the user since) writes all the same: a compare-and-set on ``v`` as a fallback. Waiters poll
with a backoff bounded by the lock's remaining time, up to ``lock_wait``, then raise.
Contention is for one user's episodes on two hosts at once: rare. Cost: two round trips per
transaction (read-with-lock, commit) plus the aggregates' pipeline; an unchanged user costs an
unlock. A transaction touching several users (only ``load`` does) takes their locks in the
order it touches them; two such at once may wait for each other until ``lock_wait``.

**Aggregates and scalars: merged, not locked.** A row is read (one ``HGETALL``) and handed
out as a live list; at commit, the difference between the row as read and as left is applied
by one script on the row's hash: integers by ``HINCRBY`` of the difference, floats by
``HINCRBYFLOAT`` (or set exactly when nobody changed the field meanwhile), fields declared
``max``/``min`` (``merge=``; by default the insights' last-episode time of an account and the
span ``since``/``until``) by compare-and-set in the script, other values (strings, booleans,
anything else) last writer wins. Nested lists and dicts become a field per number (the field
name is a type letter and the JSON path: ``i[3,"dwell"]``), so concurrent hosts never lose an
increment. A new row's key is named with ``HSETNX`` in the table's index; a table holding
``MAX_KEYS`` rows pools new keys under ``(other)`` as the other stores do (two hosts adding
the last rows at once may pass the bound by a few). The scalars are one such hash.

**The reservoir** is a list capped at ``RESERVOIR``: appended while short, else a value
replaces index ``j`` drawn by the host (``seen`` comes from the scalars as that host read
them: concurrent hosts may draw from slightly stale counts: a nearly uniform sample).

**Capacity**: per part, least recently active first, as :class:`MemoryState` does: a sorted
set per part (split into ``stripes`` keys so no slot holds every user) scores each user's last
activity (a host's wall clock, made strictly increasing per process; hosts' clocks order
their users approximately). A commit that creates a part trims its stripe to
``ceil(capacity / stripes)`` by ``ZPOPMIN``; each victim is dropped by a script on its own slot
that skips a user whose lock is held (put back) or whose hash says they were active since
(re-scored). ``count(part)`` is the sorted sets' size.

**Not atomic together**: the users of a transaction and its aggregate deltas are written in
two steps (users first; deltas only once every user's commit succeeded): a host dying in
between loses that transaction's deltas, not a user's consistency. :meth:`RedisState.clear`
(before a load) is not atomic with concurrent writers.

**Retries.** Every operation is retried after a transient error (a connection refused or
dropped, a timeout, ``CLUSTERDOWN``, ``MASTERDOWN``, ``READONLY``, ``LOADING``, ``TRYAGAIN``,
``MOVED``/``ASK`` redis-py did not follow itself, ...) with a growing, jittered pause (10 ms to
250 ms) until ``retry_timeout`` (10 s by default: a Redis Cluster fails a primary over in a few
seconds), then raises :class:`~pyfriction.store.StoreError` naming the last error. Redis
Cluster failovers, live slot moves (ASK, TRYAGAIN while a user's keys are half moved), restarts
and Sentinel switches are thus invisible to callers but as latency. A retry may run a script
whose first run was applied and only its reply lost (the primary died after applying it, or the
connection dropped; redis-py resends too): every write is idempotent, so that it counts once:

* every commit script (a user's, an aggregate row's, the scalars', the reservoir's) carries its
  writer (this process, a fresh id in a forked child, and thread) and a sequence number drawn
  when the commit starts (increasing per process, so per thread, whose commits are one after
  the other); the script keeps each writer's last number in a small hash on the key's slot
  (``P:{H}:u:w``, ``P:{rR}:w``, ``{P:scalars}:w``, ``{P:reservoir}:w``) and, finding its number
  there already, answers "done" without writing: a user's commit applied whose reply was lost
  is not reported as a lost lock, even after other hosts have committed that user since, and a
  delta counts once. Each run drops one random writer unheard of for ``remember`` (30 s by
  default, at least 3 x ``retry_timeout``) and the hash expires after it: it holds the writers
  of about the last ``remember`` seconds (a cost: a small hash per user and row written in that
  window);
* the lock script taking a lock already held with our token takes it (a lost reply);
* eviction reads its candidates (``ZRANGE``), not pops them, and removes only those whose score
  did not change; activity (``ZADD``/``ZREM``), names (``HSETNX``) and reads repeat harmlessly.

**Durability: ``replicas``.** Redis replicates asynchronously: a primary acknowledges a write
before its replicas have it, and a primary killed at that moment is failed over to a replica
without it. With ``replicas=0`` (the default) a commit returns once its primary applied it; a
failover may then lose the last writes acknowledged by the dead primary (those of about its
last replication round trip: usually well under a second; a user's part falls back to the
version before, a delta is missing from its row, a lock taken there is gone, which the
version fallback above absorbs). With ``replicas=1`` (``?replicas=1`` in the URI) each commit
step ends with ``WAIT 1 1000`` on every primary it wrote to, on the connection that wrote, and
is run again (idempotently) until each primary confirms, else :class:`StoreError` after
``retry_timeout``: an acknowledged transaction then survives the failover of its primary to
that replica (Redis Cluster favours the most up-to-date replica but does not promise it: with
two replicas per primary, ask for ``replicas=2`` to be sure). What ``WAIT`` does not cover: a
transaction's two steps (a host dying between them: its deltas); ``WAIT`` is not a consensus
(a primary cut off from the cluster keeps applying writes until ``cluster-node-timeout``, which
the other side's failover discards; with ``replicas`` its clients are not told "done" unless
its replicas are on its side); a write redirected by ``ASK`` during a slot move (it lands on
the slot's destination, ``WAIT`` goes to its source, the owner the client knows) is not waited
for; and writes block (then fail) while a primary has fewer replicas in sync than asked, e.g.
between a failover and the dead node's return as a replica.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import os
import random
import threading
import time
import weakref
from collections.abc import Callable, Hashable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any, cast
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

import msgspec
import redis
import redis.cluster
import redis.sentinel
from redis.connection import URL_QUERY_ARGUMENT_PARSERS
from redis.exceptions import (
    AskError,
    AuthenticationError,
    AuthorizationError,
    ClusterError,
    NoScriptError,
    ReadOnlyError,
    RedisClusterException,
    ResponseError,
    TryAgainError,
)

from . import userstate as _us
from ._hashing import key64
from .store import StoreError
from .userstate import N_PARTS, OTHER, RESERVOIR, Codec

__all__ = ["DEFAULT_MERGE", "RedisState", "redis_client"]

Client = redis.Redis | redis.cluster.RedisCluster

#: How fields other than counters merge, per table (and "scalars"): path -> "max" | "min".
DEFAULT_MERGE: dict[str, dict[tuple[Any, ...], str]] = {
    "scalars": {("since",): "min", ("until",): "max"},
    "accounts": {(4,): "max"},
}

# --- scripts ------------------------------------------------------------------------------------

_LOCK_READ = """
local got = redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2])
if not got and redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  got = true
end
if got then return {1, redis.call('HGETALL', KEYS[2])} end
return {0, redis.call('PTTL', KEYS[1])}
"""

_UNLOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 1
"""

_EVICT = """
if redis.call('EXISTS', KEYS[1]) == 1 then return {0, ''} end
if redis.call('HGET', KEYS[2], 'id') ~= ARGV[5] then return {2, ''} end
local t = redis.call('HGET', KEYS[2], ARGV[2])
if t and tonumber(t) > tonumber(ARGV[3]) then return {1, t} end
redis.call('HDEL', KEYS[2], ARGV[1], ARGV[2])
for p = 0, tonumber(ARGV[4]) - 1 do
  if redis.call('HEXISTS', KEYS[2], 'p' .. p) == 1 then
    redis.call('HSET', KEYS[2], 'v', ARGV[6])
    return {2, ''}
  end
end
redis.call('DEL', KEYS[2])
return {2, ''}
"""

_CLEAR_PART = """
redis.call('HDEL', KEYS[1], ARGV[1], ARGV[2])
for p = 0, tonumber(ARGV[3]) - 1 do
  if redis.call('HEXISTS', KEYS[1], 'p' .. p) == 1 then
    redis.call('HSET', KEYS[1], 'v', ARGV[4])
    return 0
  end
end
redis.call('DEL', KEYS[1])
return 1
"""

# A writer's (process and thread) last sequence number applied to a key, in a hash on the key's slot
# (ARGV[1] writer, ARGV[2] sequence, ARGV[3] ms remembered): a retried script whose
# first run was applied (its reply lost) is skipped. Each run also drops one random writer
# unheard of for longer than that, so the hash holds about the writers of that time.
_SEEN = """
local function seen(key)
  local last = redis.call('HGET', key, ARGV[1])
  if last and tonumber(string.match(last, '^%d+')) >= tonumber(ARGV[2]) then
    redis.call('PEXPIRE', key, ARGV[3])
    return true
  end
  return false
end
local function remember(key)
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  redis.call('HSET', key, ARGV[1], ARGV[2] .. ' ' .. now)
  local other = redis.call('HRANDFIELD', key, 1, 'WITHVALUES')
  if other[1] and other[1] ~= ARGV[1] then
    local at = tonumber(string.match(other[2], ' (%d+)$'))
    if at and at < now - tonumber(ARGV[3]) then redis.call('HDEL', key, other[1]) end
  end
  redis.call('PEXPIRE', key, ARGV[3])
end
"""

_COMMIT = (
    _SEEN
    + """
if seen(KEYS[3]) then return 2 end
local held = redis.call('GET', KEYS[1])
if held ~= ARGV[4] and (held or (redis.call('HGET', KEYS[2], 'v') or '') ~= ARGV[7]) then return 0 end
local n = tonumber(ARGV[6])
for i = 8, #ARGV, 3 do
  if ARGV[i] == 'S' then redis.call('HSET', KEYS[2], ARGV[i + 1], ARGV[i + 2])
  else redis.call('HDEL', KEYS[2], ARGV[i + 1]) end
end
local left = false
for p = 0, n - 1 do
  if redis.call('HEXISTS', KEYS[2], 'p' .. p) == 1 then left = true end
end
if left then redis.call('HSET', KEYS[2], 'id', ARGV[5], 'v', ARGV[4]) else redis.call('DEL', KEYS[2]) end
if held == ARGV[4] then redis.call('DEL', KEYS[1]) end
remember(KEYS[3])
return 1
"""
)

_MERGE = (
    _SEEN
    + """
if seen(KEYS[2]) then return 2 end
for i = 4, #ARGV, 4 do
  local op, f, a, b = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  if op == 'I' then redis.call('HINCRBY', KEYS[1], f, a)
  elseif op == 'F' then
    local cur = redis.call('HGET', KEYS[1], f)
    if (not cur and a == '') or cur == a then redis.call('HSET', KEYS[1], f, b)
    else redis.call('HINCRBYFLOAT', KEYS[1], f, tonumber(b) - (tonumber(a) or 0)) end
  elseif op == 'M' or op == 'm' then
    local cur = redis.call('HGET', KEYS[1], f)
    if not cur or (op == 'M' and tonumber(b) > tonumber(cur)) or (op == 'm' and tonumber(b) < tonumber(cur)) then
      redis.call('HSET', KEYS[1], f, b)
    end
  elseif op == 'S' then redis.call('HSET', KEYS[1], f, b)
  elseif op == 'N' then redis.call('HSETNX', KEYS[1], f, b)
  else redis.call('HDEL', KEYS[1], f) end
end
remember(KEYS[2])
return 1
"""
)

_SAMPLE = (
    _SEEN
    + """
if seen(KEYS[2]) then return 2 end
local cap = tonumber(ARGV[#ARGV])
local n = redis.call('LLEN', KEYS[1])
for i = 4, #ARGV - 1, 2 do
  local j = tonumber(ARGV[i])
  if n < cap then redis.call('RPUSH', KEYS[1], ARGV[i + 1]); n = n + 1
  elseif j >= 0 and j < n then redis.call('LSET', KEYS[1], j, ARGV[i + 1]) end
end
remember(KEYS[2])
return 1
"""
)

_ZREM_IF = """
for i = 1, #ARGV, 2 do
  local s = redis.call('ZSCORE', KEYS[1], ARGV[i])
  if s and tonumber(s) <= tonumber(ARGV[i + 1]) then redis.call('ZREM', KEYS[1], ARGV[i]) end
end
return 1
"""

_SET_LIST = """
redis.call('DEL', KEYS[1])
if #ARGV > 0 then redis.call('RPUSH', KEYS[1], unpack(ARGV)) end
return 1
"""

_SCRIPTS = {
    "lock_read": _LOCK_READ,
    "commit": _COMMIT,
    "unlock": _UNLOCK,
    "evict": _EVICT,
    "clear_part": _CLEAR_PART,
    "merge": _MERGE,
    "sample": _SAMPLE,
    "set_list": _SET_LIST,
    "zrem_if": _ZREM_IF,
}

# --- failures worth a retry ----------------------------------------------------------------------------


class _NotReplicated(Exception):
    """A write not confirmed by ``replicas`` replicas (or not waited for where it went): run again."""


#: Error replies of a failover, a slot move or a node starting (redis-py maps some to classes).
_TRANSIENT_REPLIES = ("READONLY", "LOADING", "MASTERDOWN", "CLUSTERDOWN", "TRYAGAIN", "MOVED", "ASK",
                      "NOREPLICAS", "UNBLOCKED")  # fmt: skip


def _transient(exc: BaseException) -> bool:
    """Whether ``exc`` is what a failover, a slot move, a restart or a dropped connection raises
    (NOSCRIPT too: a node whose scripts were flushed between loading and running them again)."""
    if isinstance(exc, (AuthenticationError, AuthorizationError)):
        return False
    if isinstance(exc, (_NotReplicated, redis.ConnectionError, redis.TimeoutError, ClusterError, TryAgainError,
                        AskError, ReadOnlyError, RedisClusterException, NoScriptError)):  # fmt: skip
        return True
    if not isinstance(exc, ResponseError):
        return False
    text = str(exc)
    # (WAIT sent where the slot map, not yet refreshed, still shows a demoted primary)
    return text.split(" ", 1)[0] in _TRANSIENT_REPLIES or text.startswith("WAIT cannot be used with replica")


def _ask_to_unknown_node(exc: BaseException) -> bool:
    """Whether ``exc`` is redis-py's AttributeError on an ASK redirect to a node it does not know."""
    if not isinstance(exc, AttributeError) or "redis_connection" not in str(exc):
        return False
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and os.sep + "redis" + os.sep in tb.tb_frame.f_code.co_filename


# Who applies a delta, for the scripts' memory of what they applied (see ``_SEEN``): this process
# (a fresh id in a forked child) and thread, and a sequence number per commit.
_process_id = os.urandom(8).hex()
_sequence = itertools.count(1)


def _writer() -> str:
    return f"{_process_id}.{threading.get_ident():x}"


# --- numbers as typed hash fields -------------------------------------------------------------------

_enc = msgspec.msgpack.Encoder()
_dec = msgspec.msgpack.Decoder()
_json = msgspec.json.Encoder()
_json_dec = msgspec.json.Decoder()


def _flatten(value: Any, path: list[Any], out: dict[str, Any]) -> None:
    """``out[field] = value`` for every leaf of ``value`` at ``path`` (containers get a marker)."""
    name = _json.encode(path).decode()
    if isinstance(value, bool):
        out["b" + name] = value
    elif isinstance(value, int):
        out["i" + name] = value
    elif isinstance(value, float):
        out["f" + name] = value
    elif isinstance(value, str):
        out["s" + name] = value
    elif value is None:
        out["n" + name] = None
    elif isinstance(value, list) and path:
        out["L" + name] = None
        for i, v in enumerate(value):
            _flatten(v, [*path, i], out)
    elif isinstance(value, dict) and path and all(isinstance(k, str) for k in value):
        out["D" + name] = None
        for k, v in value.items():
            _flatten(v, [*path, k], out)
    else:
        out["x" + name] = value


def _flat_top(value: list[Any] | dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    items = value.items() if isinstance(value, dict) else enumerate(value)
    for k, v in items:
        _flatten(v, [k], out)
    return out


def _raw_value(kind: str, raw: bytes) -> Any:
    if kind == "i":
        return int(raw)
    if kind == "f":
        return float(raw)
    if kind == "b":
        return raw == b"1"
    if kind == "s":
        return raw.decode()
    if kind == "x":
        return _dec.decode(raw)
    return None


def _field_bytes(kind: str, value: Any) -> bytes:
    if kind == "b":
        return b"1" if value else b"0"
    if kind == "s":
        return cast(str, value).encode()
    if kind == "x":
        return _enc.encode(value)
    return b""


class _Node:
    __slots__ = ("children", "has", "kind", "value")

    def __init__(self) -> None:
        self.children: dict[Any, _Node] = {}
        self.kind = ""
        self.value: Any = None
        self.has = False

    def build(self) -> Any:
        if self.has:
            return self.value
        if self.kind == "D" or any(isinstance(k, str) for k in self.children):
            return {k: c.build() for k, c in self.children.items()}
        if self.kind == "L" or self.children:
            n = max((k + 1 for k in self.children), default=0)
            return [self.children[i].build() if i in self.children else None for i in range(n)]
        return None


def _unflatten(raw: dict[bytes, bytes], top_dict: bool) -> tuple[Any, dict[str, Any], dict[str, bytes]]:
    """The value of a typed hash, its flattened fields and their raw bytes."""
    root = _Node()
    root.kind = "D" if top_dict else "L"
    flat: dict[str, Any] = {}
    raws: dict[str, bytes] = {}
    for f, v in raw.items():
        field = f.decode()
        kind = field[0]
        try:
            path = _json_dec.decode(field[1:])
            value = _raw_value(kind, v)
        except (msgspec.DecodeError, ValueError):
            continue
        if not isinstance(path, list) or not path:
            continue
        flat[field], raws[field] = value, v
        node = root
        for seg in path:
            node = node.children.setdefault(seg, _Node())
        if kind in "ifbsx":
            node.value, node.has = value, True
        elif kind in "LD":
            node.kind = kind
    return root.build(), flat, raws


def _merge_ops(before: dict[str, Any], raws: dict[str, bytes], after: dict[str, Any],
               rules: dict[tuple[Any, ...], str]) -> list[Any]:  # fmt: skip
    """The ``_MERGE`` script's arguments turning ``before`` into ``after`` as a merge."""
    ops: list[Any] = []
    for field, value in after.items():
        kind = field[0]
        known = field in before
        old = before.get(field)
        if kind == "i":
            if not known or value != old:
                ops += ("I", field, value - (old or 0), "")
        elif kind == "f":
            if known and value == old:
                continue
            rule = rules.get(tuple(_json_dec.decode(field[1:]))) if rules else None
            if rule == "max" and (not known or value > old):
                ops += ("M", field, "", repr(value))
            elif rule == "min" and (not known or value < old):
                ops += ("m", field, "", repr(value))
            elif rule in ("max", "min"):
                ops += ("S", field, "", repr(value))  # moved against its rule: a reset (a load)
            else:
                ops += ("F", field, raws.get(field, b""), repr(value))
        elif kind in "nLD":
            if not known:
                ops += ("N", field, "", "")
        else:
            data = _field_bytes(kind, value)
            if not known or raws.get(field) != data:
                ops += ("S", field, "", data)
    for field in before:
        if field not in after:
            ops += ("D", field, "", "")
    return ops


# --- the transaction -------------------------------------------------------------------------------


class _User:
    __slots__ = ("decoded", "foreign", "hkey", "lkey", "locked", "raw", "stripe", "touched", "uid", "values", "version")

    def __init__(self, uid: str, hkey: str, lkey: str, stripe: int) -> None:
        self.uid, self.hkey, self.lkey, self.stripe = uid, hkey, lkey, stripe
        self.raw: dict[bytes, bytes] = {}
        self.values: list[Any] = [None] * N_PARTS
        self.decoded = [False] * N_PARTS
        self.touched = [0] * N_PARTS  # the transaction's touch counter at the last touch, 0: none
        self.locked = False
        self.foreign: list[bytes] = []  # fields of another user with the same 64-bit key
        self.version = b""  # the hash's "v" as read: the token of the transaction that wrote it last


class _RedisTxn:
    """One transaction on a :class:`RedisState` (see the module's docstring)."""

    def __init__(self, store: RedisState) -> None:
        self.store = store
        self.token = os.urandom(12).hex()
        self.users: dict[str, _User] = {}
        self.rows_: dict[tuple[str, Any], list[Any]] = {}  # [row, flat, raws, new]
        self.sizes: dict[str, int] = {}
        self._scalars: dict[str, Any] | None = None
        self._scalars_before: tuple[dict[str, Any], dict[str, bytes]] = ({}, {})
        self.samples: list[tuple[int, float]] = []
        self.ticks = 0

    # -- users -------------------------------------------------------------------------------------
    def _record(self, user_id: str) -> _User:
        rec = self.users.get(user_id)
        if rec is None:
            st = self.store
            hkey, lkey = st.user_keys(user_id)
            rec = _User(user_id, hkey, lkey, st.stripe(user_id))
            self.users[user_id] = rec  # released at the end even if the wait fails
            raw = st.lock_read(lkey, hkey, self.token)
            rec.locked = True
            rec.version = raw.get(b"v", b"")
            if raw.get(b"id", b"").decode("utf-8", "surrogatepass") == user_id:
                rec.raw = raw
            elif raw:  # another user with the same 64-bit key: theirs is replaced
                rec.foreign = [k for k in raw if k not in (b"id", b"v")]
        return rec

    def _part(self, rec: _User, part: int) -> Any:
        if not rec.decoded[part]:
            data = rec.raw.get(b"p%d" % part)
            if data:
                rec.values[part] = self.store.codecs[part].decode(_dec.decode(data))
            rec.decoded[part] = True
        return rec.values[part]

    def user(self, part: int, user_id: str, create: Callable[[], Any] | None = None) -> Any:
        """See :meth:`StateTxn.user`."""
        rec = self._record(user_id)
        value = self._part(rec, part)
        if value is None and create is not None:
            value = rec.values[part] = create()
        if value is not None:
            self.ticks += 1
            rec.touched[part] = self.ticks
        return value

    def peek(self, part: int, user_id: str) -> Any:
        """See :meth:`StateTxn.peek`."""
        return self._part(self._record(user_id), part)

    def discard(self, part: int, user_id: str) -> Any:
        """See :meth:`StateTxn.discard`."""
        rec = self._record(user_id)
        value = self._part(rec, part)
        rec.values[part] = None
        rec.touched[part] = 0
        return value

    # -- aggregates ----------------------------------------------------------------------------------
    def get_row(self, table: str, key: Hashable) -> list[Any] | None:
        """See :meth:`StateTxn.get_row`."""
        cached = self.rows_.get((table, key))
        if cached is not None:
            return cast(list[Any], cached[0])
        rkey = self.store.row_key(table, key)
        raw = cast(dict[bytes, bytes], self.store.call(lambda: self.store.client.hgetall(rkey)))
        if not raw:
            return None
        row, flat, raws = _unflatten(raw, top_dict=False)
        self.rows_[(table, key)] = [row, flat, raws, False]
        return cast(list[Any], row)

    def row(self, table: str, key: Hashable, fresh: Callable[[], list[Any]]) -> list[Any]:
        """See :meth:`StateTxn.row`."""
        found = self.get_row(table, key)
        if found is not None:
            return found
        size = self.sizes.get(table)
        if size is None:
            ikey = self.store.index_key(table)
            size = self.sizes[table] = int(self.store.call(lambda: self.store.client.hlen(ikey)))
        if size >= _us.MAX_KEYS:
            key = (OTHER, OTHER) if isinstance(key, tuple) else OTHER
            found = self.get_row(table, key)
            if found is not None:
                return found
        row = fresh()
        self.rows_[(table, key)] = [row, {}, {}, True]
        self.sizes[table] = size + 1
        return row

    @property
    def scalars(self) -> dict[str, Any]:
        """See :meth:`StateTxn.scalars`."""
        if self._scalars is None:
            st = self.store
            raw = cast(dict[bytes, bytes], st.call(lambda: st.client.hgetall(st.scalars_key)))
            value, flat, raws = _unflatten(raw, top_dict=True)
            self._scalars, self._scalars_before = value, (flat, raws)
        return self._scalars

    def sample(self, value: float, seen: int, rng: random.Random) -> None:
        """See :meth:`StateTxn.sample` (``seen`` as this host read it)."""
        if seen <= RESERVOIR:
            self.samples.append((-1, value))
        else:
            j = rng.randrange(seen)
            if j < RESERVOIR:
                self.samples.append((j, value))

    # -- the end ---------------------------------------------------------------------------------------
    def release(self) -> None:
        """Let go of every lock still held (nothing written; best effort: a lock left expires)."""
        held = [rec for rec in self.users.values() if rec.locked]
        if held:
            for rec in held:
                rec.locked = False
            try:
                self.store.run([("unlock", [rec.lkey], [self.token]) for rec in held])
            except (StoreError, redis.RedisError, RedisClusterException):
                pass

    def commit(self) -> None:
        st = self.store
        # every script below is applied once per writer and sequence number (the commit's),
        # however many times a retry runs it
        seen = [_writer(), next(_sequence), st.remember_ms]
        # 1. the users: one fenced script each (changed parts, activity, unlock)
        touches = sorted(
            (t, rec.uid, p) for rec in self.users.values() for p, t in enumerate(rec.touched) if t
        )  # fmt: skip
        scores = {(uid, p): st.score() for _t, uid, p in touches}
        calls: list[tuple[str, list[str], list[Any]]] = []
        zadd: list[tuple[str, str, float]] = []
        zrem: list[tuple[str, str]] = []
        created: set[tuple[int, int]] = set()
        for rec in self.users.values():
            ops: list[Any] = []
            for p in range(N_PARTS):
                if not rec.decoded[p]:
                    continue
                field = b"p%d" % p
                old = rec.raw.get(field) or None
                value = rec.values[p]
                akey = st.activity_key(p, rec.stripe)
                if value is None:
                    if field in rec.raw:
                        ops += ("D", field, "", "D", b"t%d" % p, "")
                        zrem.append((akey, rec.uid))
                    continue
                data = _enc.encode(st.codecs[p].encode(value))
                if data != old:
                    ops += ("S", field, data)
                if rec.touched[p]:
                    score = scores[(rec.uid, p)]
                    ops += ("S", b"t%d" % p, repr(score))
                    zadd.append((akey, rec.uid, score))
                    if old is None:
                        created.add((p, rec.stripe))
            if ops and rec.foreign:  # replacing another user's record (same 64-bit key): theirs goes first
                ops = [x for f in rec.foreign for x in ("D", f, "")] + ops
            if ops:
                calls.append(("commit", [rec.lkey, rec.hkey, st.seen_key(rec.hkey)],
                              [*seen, self.token, rec.uid, N_PARTS, rec.version, *ops]))  # fmt: skip
            else:
                calls.append(("unlock", [rec.lkey], [self.token]))
        results = st.run(calls, durable=True) if calls else []
        for rec in self.users.values():
            rec.locked = False
        lost = [c[2][len(seen) + 1] for c, r in zip(calls, results) if c[0] == "commit" and r == 0]  # uids
        if lost:
            raise StoreError(
                f"lost the lock of user(s) {lost[:3]!r} (held beyond lock_ttl={st.lock_ttl} s): their changes and "
                "this transaction's aggregates were not written"
            )
        # 2. activity, aggregates, scalars, reservoir: one pipeline
        calls = []
        plain: list[tuple[str, tuple[Any, ...]]] = []
        for akey, uid, score in zadd:
            plain.append(("zadd", (akey, {uid: score})))
        for akey, uid in zrem:
            plain.append(("zrem", (akey, uid)))
        for (table, key), (row, flat, raws, new) in self.rows_.items():
            ops = _merge_ops(flat, raws, _flat_top(row), st.merge.get(table, {}))
            if new:
                plain.append(("hsetnx", (st.index_key(table), st.row_id(table, key), _enc.encode(key))))
            if ops:
                rkey = st.row_key(table, key)
                calls.append(("merge", [rkey, st.seen_key(rkey)], [*seen, *ops]))
        if self._scalars is not None:
            flat, raws = self._scalars_before
            ops = _merge_ops(flat, raws, _flat_top(self._scalars), st.merge.get("scalars", {}))
            if ops:
                calls.append(("merge", [st.scalars_key, st.seen_key(st.scalars_key)], [*seen, *ops]))
        if self.samples:
            args: list[Any] = []
            for j, v in self.samples:
                args += (j, repr(v))
            calls.append(("sample", [st.reservoir_key, st.seen_key(st.reservoir_key)], [*seen, *args, RESERVOIR]))
        grown = sorted(created)
        for p, stripe in grown:
            plain.append(("zcard", (st.activity_key(p, stripe),)))
        results = st.run(calls, plain, durable=True)
        cards = results[len(results) - len(grown) :]
        for (p, stripe), n in zip(grown, cards):
            if int(n) > st.stripe_capacity:
                st.evict(p, stripe, int(n) - st.stripe_capacity)


# --- the store ---------------------------------------------------------------------------------------

_open_states: weakref.WeakSet[RedisState] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    # Another thread may have held the lock at fork(): the child's copy would never open.
    # (redis-py's connection pools notice the fork and reconnect by themselves.) The child is
    # a new writer: its thread ids repeat the parent's.
    global _process_id
    _process_id = os.urandom(8).hex()
    for state in list(_open_states):
        state._score_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class RedisState:
    """Per-user parts, aggregate rows and scalars on Redis or Redis Cluster, shared by hosts.

    ``client``: a ``redis.Redis`` or ``redis.cluster.RedisCluster`` returning bytes (not
    ``decode_responses``); ``capacity``: users kept per part (least recently active evicted
    first); ``prefix``: of every key (trackers sharing a prefix share their state);
    ``stripes``: sorted sets of activity per part; ``lock_ttl`` / ``lock_wait``: seconds a user's
    lock lives / is waited for; ``merge``: how non-counter numbers merge (:data:`DEFAULT_MERGE`);
    ``retry_timeout``: seconds an operation is retried through a failover, a slot move or a
    dropped connection before :class:`~pyfriction.store.StoreError`; ``replicas``: a commit
    returns once that many replicas of each primary written have it (``WAIT``), else it is
    retried (0: as soon as the primary has it); ``remember``: seconds a key remembers which
    writer applied what (longer than ``retry_timeout``).
    """

    shared = True

    def __init__(self, client: Client, capacity: int, *, prefix: str = "pf", stripes: int = 16,
                 lock_ttl: float = 10.0, lock_wait: float | None = None,
                 merge: dict[str, dict[tuple[Any, ...], str]] | None = None, owns_client: bool = False,
                 retry_timeout: float = 10.0, replicas: int = 0, remember: float | None = None) -> None:  # fmt: skip
        if capacity < 1 or stripes < 1:
            raise ValueError("capacity and stripes must be at least 1")
        if retry_timeout < 0 or replicas < 0:
            raise ValueError("retry_timeout and replicas must not be negative")
        if client.get_encoder().decode_responses:
            raise ValueError("RedisState needs a client returning bytes (decode_responses=False)")
        self.client = client
        self.cluster = isinstance(client, redis.cluster.RedisCluster)
        self.capacity = capacity
        self.prefix = prefix
        self.stripes = stripes
        self.stripe_capacity = math.ceil(capacity / stripes)
        self.lock_ttl = lock_ttl
        self.lock_wait = 2 * lock_ttl if lock_wait is None else lock_wait
        self.merge = DEFAULT_MERGE if merge is None else merge
        self.codecs: dict[int, Codec] = {}
        self.owns_client = owns_client
        self.scalars_key = f"{prefix}:scalars"
        self.reservoir_key = f"{prefix}:reservoir"
        self.retry_timeout = retry_timeout
        self.replicas = replicas
        remember = max(30.0, 3 * retry_timeout) if remember is None else remember
        if remember <= retry_timeout:
            raise ValueError("remember must be longer than retry_timeout")
        self.remember_ms = int(remember * 1000)
        #: Operations run again after a transient error (all hosts' threads of this store).
        self.retries = 0
        self._scripts = {name: client.register_script(src) for name, src in _SCRIPTS.items()}
        self._score_lock = threading.Lock()
        self._last_score = 0.0
        _open_states.add(self)

    @classmethod
    def from_uri(cls, uri: str, capacity: int, *, client_options: dict[str, Any] | None = None,
                 **options: Any) -> RedisState:  # fmt: skip
        """The store on the server(s) of ``uri`` (see :func:`redis_client`), owning its client.
        The store's own options may be given in the URI's query too (``?replicas=1&retry_timeout=20``);
        ``options`` win. Sockets time out (``socket_timeout`` 5 s, ``socket_connect_timeout`` 2 s,
        unless given): a peer gone silent (a partition, a frozen host) is an error retried, not a
        read blocked for ever."""
        uri, from_query = _store_options(uri)
        given = {name for name, _v in parse_qsl(urlsplit(uri).query)} | set(client_options or {})
        client_options = {**{k: v for k, v in SOCKET_DEFAULTS.items() if k not in given}, **(client_options or {})}
        return cls(redis_client(uri, **client_options), capacity, owns_client=True, **{**from_query, **options})

    def close(self) -> None:
        """Close the client if this store made it."""
        if self.owns_client:
            self.client.close()

    def codec(self, part: int, codec: Codec) -> None:
        """See :meth:`StateStore.codec`."""
        self.codecs[part] = codec

    def session(self) -> AbstractContextManager[None]:
        """See :meth:`StateStore.session`: each transaction stays its own here (a transaction
        locks the users it touches as it meets them)."""
        return nullcontext()

    # -- keys ------------------------------------------------------------------------------------------
    def user_keys(self, user_id: str) -> tuple[str, str]:
        """The user's hash and lock (one hash tag: one slot)."""
        tag = f"{self.prefix}:{{{key64(user_id):016x}}}"
        return tag + ":u", tag + ":l"

    def stripe(self, user_id: str) -> int:
        return (key64(user_id) >> 17) % self.stripes

    def activity_key(self, part: int, stripe: int) -> str:
        return f"{self.prefix}:{{a{part}.{stripe}}}"

    def row_id(self, table: str, key: Hashable) -> str:
        return f"{key64(table + chr(0) + _json.encode(key).decode()):016x}"

    def row_key(self, table: str, key: Hashable) -> str:
        return f"{self.prefix}:{{r{self.row_id(table, key)}}}"

    def index_key(self, table: str) -> str:
        return f"{self.prefix}:rows:{table}"

    @staticmethod
    def seen_key(key: str) -> str:
        """Where the scripts writing ``key`` remember which writer applied what (same slot)."""
        return f"{key}:w" if "{" in key else f"{{{key}}}:w"

    # -- plumbing --------------------------------------------------------------------------------------
    def score(self) -> float:
        """Now, strictly after the last score this process gave (the activity order)."""
        with self._score_lock:
            now = max(time.time(), self._last_score + 1e-6)
            self._last_score = now
            return now

    def call(self, fn: Callable[[], Any]) -> Any:
        """``fn()``, run again after a transient error (a failover, a slot move, a dropped
        connection) with a growing pause until ``retry_timeout``, then :class:`StoreError`. Only
        for idempotent operations: every script here is."""
        deadline = time.monotonic() + self.retry_timeout
        pause = 0.01
        while True:
            try:
                return fn()
            except Exception as exc:
                if _ask_to_unknown_node(exc):
                    # redis-py (8.1) follows an ASK to a node it does not know yet (one joining
                    # the cluster, importing its first slot) into an AttributeError: learn the
                    # cluster's nodes again and retry
                    with contextlib.suppress(Exception):
                        cast(Any, self.client).nodes_manager.initialize()
                elif not _transient(exc):
                    raise
                left = deadline - time.monotonic()
                if left <= 0:
                    raise StoreError(
                        f"Redis unavailable for retry_timeout={self.retry_timeout} s: {type(exc).__name__}: {exc}"
                    ) from exc
                self.retries += 1
                time.sleep(min(left, pause * (0.5 + random.random())))
                pause = min(pause * 2, 0.25)

    def run(self, calls: list[tuple[str, list[str], list[Any]]],
            plain: list[tuple[str, tuple[Any, ...]]] | None = None, *, durable: bool = False) -> list[Any]:  # fmt: skip
        """Run scripts (by SHA, loaded again where a node lacks them) and plain commands in one
        pipeline, retried as :meth:`call` does; their results in order (scripts first).
        ``durable``: with ``replicas``, wait until each primary written has passed the writes on
        (else run the whole idempotent pipeline again)."""
        return cast(list[Any], self.call(lambda: self._run_once(calls, plain or [], durable)))

    def _nodes(self, keys: list[str]) -> dict[str, Any]:
        client = cast(redis.cluster.RedisCluster, self.client)
        nodes = (client.get_node_from_key(k) for k in keys)  # type: ignore[no-untyped-call]
        return {n.name: n for n in nodes if n is not None}

    def _run_once(self, calls: list[tuple[str, list[str], list[Any]]], plain: list[tuple[str, tuple[Any, ...]]],
                  durable: bool, loaded: bool = False) -> list[Any]:  # fmt: skip
        # (redis-py's cluster pipeline refuses its ``evalsha`` method, not the command: it routes
        # EVALSHA by its keys.)
        pipe = self.client.pipeline(transaction=False)
        for name, script_keys, args in calls:
            pipe.execute_command("EVALSHA", self._scripts[name].sha, len(script_keys), *script_keys, *args)
        for method, plain_args in plain:
            getattr(pipe, method)(*plain_args)
        wait = durable and self.replicas > 0
        nodes: dict[str, Any] = {}
        keys: list[str] = []
        ms = max(1, min(1000, int(self.retry_timeout * 1000)))
        if wait and self.cluster:
            # WAIT counts the writes of its connection: one per primary, after that primary's writes
            # in the same pipeline (one connection per node)
            keys = [k[0] for _n, k, _a in calls] + [a[0] for _m, a in plain]
            nodes = self._nodes(keys)
            for node in nodes.values():
                pipe.execute_command("WAIT", self.replicas, ms, target_nodes=node)
        elif wait:
            pipe.execute_command("WAIT", self.replicas, ms)
        results = list(pipe.execute(raise_on_error=False))
        if not loaded and any(isinstance(r, NoScriptError) for r in results[: len(calls)]):
            # a new node, a promoted replica, a SCRIPT FLUSH: load, and run it all again (idempotent)
            for s in self._scripts.values():
                self.client.script_load(s.script)
            return self._run_once(calls, plain, durable, loaded=True)
        errors = [r for r in results if isinstance(r, Exception)]
        if errors:
            raise next((e for e in errors if not _transient(e)), errors[0])
        if wait:
            acked = [int(r) for r in results[len(calls) + len(plain) :]]
            if any(n < self.replicas for n in acked):
                raise _NotReplicated(f"a write was not confirmed by {self.replicas} replica(s) within {ms} ms")
            if self.cluster and self._nodes(keys).keys() != nodes.keys():
                raise _NotReplicated("a slot moved during the write: waiting for its new owner's replicas")
        return results[: len(calls) + len(plain)]

    def lock_read(self, lkey: str, hkey: str, token: str) -> dict[bytes, bytes]:
        """Take the user's lock and read their hash (waiting up to ``lock_wait``)."""
        ttl_ms = max(1, int(self.lock_ttl * 1000))
        deadline = time.monotonic() + self.lock_wait
        pause = 0.0005
        script = self._scripts["lock_read"]

        def attempt() -> Any:
            return script(keys=[lkey, hkey], args=[token, ttl_ms])

        while True:
            got, data = cast(list[Any], self.call(attempt))
            if got:
                return dict(zip(data[::2], data[1::2]))
            left = deadline - time.monotonic()
            if left <= 0:
                raise StoreError(f"a user's lock ({lkey}) was held by another transaction for {self.lock_wait} s")
            remaining = int(data) / 1000 if int(data) > 0 else pause
            time.sleep(min(pause, remaining, left))
            pause = min(pause * 2, 0.02)

    def evict(self, part: int, stripe: int, excess: int) -> None:
        """Drop up to ``excess`` least recently active users of ``part`` in ``stripe`` (each step
        idempotent: the candidates are read, not popped, and removed only if not re-scored)."""
        akey = self.activity_key(part, stripe)
        for _round in range(4):
            if excess <= 0:
                return
            found = cast(
                list[tuple[bytes, float]], self._pipe([("zrange", (akey, 0, excess - 1), {"withscores": True})])[0]
            )
            if not found:
                return
            calls = []
            version = os.urandom(12).hex()
            for member, score in found:
                uid = member.decode("utf-8", "surrogatepass")
                hkey, lkey = self.user_keys(uid)
                calls.append(("evict", [lkey, hkey],
                              [b"p%d" % part, b"t%d" % part, repr(score), N_PARTS, uid, version]))  # fmt: skip
            back: dict[bytes, float] = {}
            gone: list[Any] = []
            for (member, score), (status, t) in zip(found, self.run(calls)):
                if status == 1:  # active since: re-scored
                    back[member] = float(t)
                elif status == 2:
                    gone += (member, repr(score))
                # status 0: busy, its holder is using it: kept
            if back:
                self._pipe([("zadd", (akey, back), {})])
            if gone:
                self.run([("zrem_if", [akey], gone)])
            excess -= len(gone) // 2
            if not gone:
                return  # every victim busy or active: the next creation trims again

    # -- transactions -----------------------------------------------------------------------------------
    @contextmanager
    def transaction(self) -> Iterator[_RedisTxn]:
        """See :meth:`StateStore.transaction`: written when the block exits normally."""
        txn = _RedisTxn(self)
        try:
            yield txn
        except BaseException:
            txn.release()
            raise
        try:
            txn.commit()
        except BaseException:
            txn.release()
            raise

    # -- reads --------------------------------------------------------------------------------------------
    def _pipe(self, commands: list[tuple[str, tuple[Any, ...], dict[str, Any]]]) -> list[Any]:
        """Plain (idempotent) commands in one pipeline, retried as :meth:`call` does."""

        def once() -> list[Any]:
            pipe = self.client.pipeline(transaction=False)
            for method, args, kwargs in commands:
                getattr(pipe, method)(*args, **kwargs)
            return list(pipe.execute())

        return cast(list[Any], self.call(once))

    def _members(self, part: int) -> list[tuple[float, str]]:
        got_all = self._pipe([("zrange", (self.activity_key(part, s), 0, -1), {"withscores": True})
                              for s in range(self.stripes)])  # fmt: skip
        found = [(score, m.decode("utf-8", "surrogatepass")) for got in got_all for m, score in got]
        found.sort()
        return found

    def count(self, part: int) -> int:
        """See :meth:`StateStore.count`."""
        return sum(int(n) for n in self._pipe([("zcard", (self.activity_key(part, s),), {})
                                               for s in range(self.stripes)]))  # fmt: skip

    def users(self, part: int) -> list[tuple[str, Any]]:
        """See :meth:`StateStore.users` (by the hosts' clocks of their last activity)."""
        out: list[tuple[str, Any]] = []
        members = self._members(part)
        field = b"p%d" % part
        for at in range(0, len(members), 1000):
            chunk = members[at : at + 1000]
            got = self._pipe([("hmget", (self.user_keys(uid)[0], [b"id", field]), {}) for _score, uid in chunk])
            for (_score, uid), (rid, data) in zip(chunk, got):
                if data and rid is not None and rid.decode("utf-8", "surrogatepass") == uid:
                    out.append((uid, self.codecs[part].decode(_dec.decode(data))))
        return out

    def rows(self, table: str) -> list[tuple[Any, list[Any]]]:
        """See :meth:`StateStore.rows`."""
        index = cast(dict[bytes, bytes], self.call(lambda: self.client.hgetall(self.index_key(table))))
        items = list(index.items())
        out: list[tuple[Any, list[Any]]] = []
        for at in range(0, len(items), 1000):
            chunk = items[at : at + 1000]
            got = self._pipe([("hgetall", (f"{self.prefix}:{{r{rid.decode()}}}",), {}) for rid, _k in chunk])
            for (_rid, k), raw in zip(chunk, got):
                if raw:
                    key = _dec.decode(k)
                    out.append((tuple(key) if isinstance(key, list) else key, _unflatten(raw, top_dict=False)[0]))
        return out

    def reservoir(self) -> list[float]:
        """See :meth:`StateStore.reservoir`."""
        got = cast(list[bytes], self.call(lambda: self.client.lrange(self.reservoir_key, 0, -1)))
        return [float(v) for v in got]

    def set_reservoir(self, values: list[float]) -> None:
        """Replace the reservoir (a snapshot's)."""
        self.run([("set_list", [self.reservoir_key], [repr(float(v)) for v in list(values)[:RESERVOIR]])])

    def clear(self, parts: tuple[int, ...], tables: tuple[str, ...]) -> None:
        """See :meth:`StateStore.clear` (not atomic with concurrent writers)."""
        version = os.urandom(12).hex()
        for p in parts:
            members = self._members(p)
            for at in range(0, len(members), 1000):
                calls = [
                    ("clear_part", [self.user_keys(uid)[0]], [b"p%d" % p, b"t%d" % p, N_PARTS, version])
                    for _s, uid in members[at : at + 1000]
                ]
                self.run(calls)
            self._pipe([("delete", (self.activity_key(p, s),), {}) for s in range(self.stripes)])
        for table in tables:
            ikey = self.index_key(table)
            ids = cast(list[bytes], self._pipe([("hkeys", (ikey,), {})])[0])
            drops: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = [("delete", (ikey,), {})]
            drops += [("delete", (f"{self.prefix}:{{r{rid.decode()}}}",), {}) for rid in ids]
            self._pipe(drops)


# --- URIs -------------------------------------------------------------------------------------------------


def _hosts(netloc: str, uri: str, default_port: int) -> tuple[str | None, str | None, list[tuple[str, int]]]:
    userinfo, at, hostlist = netloc.rpartition("@")
    username: str | None = None
    password: str | None = None
    if at:
        user, colon, pw = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(pw) if colon else None
    hosts: list[tuple[str, int]] = []
    for item in hostlist.split(","):
        item = item.strip()
        if not item:
            raise StoreError(f"{uri!r}: an empty host in the host list")
        if item.startswith("["):
            host, _, rest = item[1:].partition("]")
            port_text = rest[1:] if rest.startswith(":") else ""
        else:
            host, _, port_text = item.rpartition(":") if ":" in item else (item, "", "")
        if not host:
            raise StoreError(f"{uri!r}: no host in {item!r}")
        try:
            port = int(port_text) if port_text else default_port
        except ValueError:
            raise StoreError(f"{uri!r}: the port of {item!r} is not a number") from None
        if not 0 < port < 65536:
            raise StoreError(f"{uri!r}: the port of {item!r} is out of range")
        hosts.append((host, port))
    return username, password, hosts


def _query(query: str, uri: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in parse_qsl(query, keep_blank_values=True):
        parser = cast(Callable[[str], Any] | None, URL_QUERY_ARGUMENT_PARSERS.get(name))
        try:
            out[name] = parser(value) if parser else value
        except (TypeError, ValueError):
            raise StoreError(f"{uri!r}: invalid value {value!r} for the option {name!r}") from None
    if "ssl" in out:
        out["ssl"] = str(out["ssl"]).lower() in ("1", "true", "yes", "on")
    return out


#: Client options :meth:`RedisState.from_uri` sets unless the URI or ``client_options`` give them.
SOCKET_DEFAULTS: dict[str, Any] = {"socket_timeout": 5.0, "socket_connect_timeout": 2.0}

#: The store's own options a URI's query may carry (not given to redis-py), and their types.
STORE_QUERY_OPTIONS: dict[str, Callable[[str], Any]] = {
    "replicas": int,
    "retry_timeout": float,
    "lock_ttl": float,
    "lock_wait": float,
    "stripes": int,
    "remember": float,
}


def _store_options(uri: str) -> tuple[str, dict[str, Any]]:
    """``uri`` without the store's own options in its query, and those options."""
    if not isinstance(uri, str) or "?" not in uri:
        return uri, {}
    parts = urlsplit(uri)
    mine: dict[str, Any] = {}
    rest: list[tuple[str, str]] = []
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        kind = STORE_QUERY_OPTIONS.get(name)
        if kind is None:
            rest.append((name, value))
            continue
        try:
            mine[name] = kind(value)
        except ValueError:
            raise StoreError(f"{uri!r}: invalid value {value!r} for the option {name!r}") from None
    return urlunsplit(parts._replace(query=urlencode(rest))), mine


def redis_client(uri: str, **options: Any) -> Client:
    """The redis-py client of a store URI (bytes responses), as the ``limits`` library names them:

    * ``redis://[[user]:password@]host[:port][/db]``, ``rediss://...`` (TLS), ``redis+unix:///path``;
    * ``redis+cluster://[[user]:password@]host:port[,host:port...]`` (``rediss+cluster://``: TLS);
    * ``redis+sentinel://[[user]:password@]host:port[,host:port...]/service_name[/db]`` (the
      password is given to the sentinels and the primary alike).

    Query options (``?ssl_cert_reqs=required&socket_timeout=2``) and ``options`` go to redis-py
    as they are (TLS: ``ssl_ca_certs``, ``ssl_certfile``, ``ssl_keyfile``...). A bad URI raises
    :class:`~pyfriction.store.StoreError` saying what is wrong.
    """
    if not isinstance(uri, str) or "://" not in uri:
        raise StoreError(f"{uri!r} is not a Redis URI (redis://, rediss://, redis+cluster://, redis+sentinel://)")
    parts = urlsplit(uri)
    scheme = parts.scheme.lower()
    options = {**options, "decode_responses": False}
    if scheme in ("redis", "rediss", "redis+unix", "unix"):
        url = "unix" + uri[uri.index("://") :] if scheme == "redis+unix" else uri
        if scheme != "redis+unix" and not parts.netloc.rpartition("@")[2]:
            raise StoreError(f"{uri!r}: no host")
        if scheme in ("redis", "rediss"):
            _hosts(parts.netloc, uri, 6379)  # checks the host and port
            db = parts.path.strip("/")
            if db and not db.isdigit():
                raise StoreError(f"{uri!r}: the database {db!r} is not a number")
        _query(parts.query, uri)
        try:
            return redis.Redis.from_url(url, **options)
        except ValueError as exc:
            raise StoreError(f"{uri!r}: {exc}") from None
    if scheme in ("redis+cluster", "rediss+cluster"):
        username, password, hosts = _hosts(parts.netloc, uri, 6379)
        if parts.path.strip("/"):
            raise StoreError(f"{uri!r}: a cluster has no database number (only db 0)")
        kwargs = {**_query(parts.query, uri), **options}
        if scheme == "rediss+cluster":
            kwargs["ssl"] = True
        kwargs.pop("db", None)
        nodes = [redis.cluster.ClusterNode(h, p) for h, p in hosts]  # type: ignore[no-untyped-call]
        try:
            return redis.cluster.RedisCluster(startup_nodes=nodes, username=username, password=password, **kwargs)
        except redis.exceptions.RedisClusterException as exc:
            raise StoreError(f"{uri!r}: {exc}") from None
    if scheme == "redis+sentinel":
        username, password, hosts = _hosts(parts.netloc, uri, 26379)
        path = [p for p in parts.path.split("/") if p]
        if not path or len(path) > 2:
            raise StoreError(f"{uri!r}: give the service name: redis+sentinel://host:port/service_name")
        kwargs = {**_query(parts.query, uri), **options}
        if len(path) == 2:
            if not path[1].isdigit():
                raise StoreError(f"{uri!r}: the database {path[1]!r} is not a number")
            kwargs["db"] = int(path[1])
        sentinel_kwargs = dict(kwargs.pop("sentinel_kwargs", None) or {})
        if password is not None:
            kwargs["password"] = password
            sentinel_kwargs.setdefault("password", password)
        if username is not None:
            kwargs["username"] = username
            sentinel_kwargs.setdefault("username", username)
        sentinel = redis.sentinel.Sentinel(hosts, sentinel_kwargs=sentinel_kwargs or None, **kwargs)  # type: ignore[no-untyped-call]
        return cast(redis.Redis, sentinel.master_for(path[0]))  # type: ignore[no-untyped-call]
    raise StoreError(
        f"{uri!r}: unknown scheme {parts.scheme!r} (redis://, rediss://, redis+unix://, redis+cluster://, "
        "redis+sentinel://)"
    )
