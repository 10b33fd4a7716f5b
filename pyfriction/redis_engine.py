"""The engine's per-user records on Redis or Redis Cluster: one user, one state, on every host.

:class:`RedisCore` is the engine of a :class:`~pyfriction.Tracker` whose store is
``redis://``, ``redis+cluster://`` or ``redis+sentinel://``. It keeps one implementation of the
detectors: the tracker's own engine (compiled or reference) computes on the host, over a small
*working table* that holds only the users of the batch at hand; Redis stores each user's record
and commits it with a compare-and-set on the head of the record (its version and the token of
the commit that wrote it), so two hosts updating one user at once never lose an update.

**A batch** (``observe_many``; ``observe`` is a batch of one) goes in chunks of at most
``chunk`` distinct users:

1. one read of the chunk's users per node (a script of ``GET``s; the users are grouped by the
   primary that owns their slot, see ``_by_node``);
2. the working table is loaded with those records and the cached step baselines
   (``Engine.load``), and the engine scores the chunk as it would in memory; episodes and
   outcomes are held back;
3. one commit per node: per changed user, a script compares the head read with the stored
   one and writes the new value (version + 1, this attempt's token), or answers the value
   found;
4. users whose commit met another head (another host got there first) are scored again
   from the fresh record: the whole chunk is replayed from its start with the step baselines
   and counters it began with (so they count once), and only those users are committed;
   episodes are delivered for each user from the run whose commit succeeded, after it
   succeeded. Up to ``retries`` rounds, then :class:`~pyfriction.store.StoreError`.

Every step of a user is deterministic given the record, the events and the baselines, so a
replay gives what one host alone would have given.

**Why scripts and not Redis Functions.** The commit is a stock Lua script run by ``EVALSHA``
(loaded again on a node that lacks it: a new primary, a ``SCRIPT FLUSH``). A Function
(``FCALL``) would do the same, but redis-py's cluster client routes ``FCALL`` by asking a node
which arguments are keys (``COMMAND GETKEYS``: one more round trip per call), while it parses
``EVALSHA``'s keys itself. Both are plain Redis 7, so managed services run either.

**Keys** (``P`` the prefix, ``H`` the user's 64-bit key in hex: the hash tag the facts store
:class:`~pyfriction.redis_state.RedisState` uses too, so all of a user's keys share one slot)::

    P:{H}:e        string: the head (HEAD: the version as a double, the record's size, the
                   24-byte token of the commit that wrote it: a retried commit knows its
                   own), the record (SLOT_DTYPE bytes), then field ``f`` (the last ``dedupe``
                   event fingerprints, the rate cap's second and count); one string, so a
                   read is one GET and a commit one GET and one SET
    P:{steps}      hash: step key -> count and histogram buckets (little-endian uint32s)
    P:{counters}   hash: the engine's counters, and "users" (records created minus deleted)
    P:{names}      hash: step and target key -> name (HSETNX), so an episode on one host names
                   what another host saw
    P:{steps}:X, P:{counters}:X   the number of host X's last flush there (a day's TTL)

**Step baselines and counters** are aggregates of every host: each host adds what its chunks
changed (``HINCRBY``; the step histograms by a script summing the packed buckets) and reads the
totals back in the same call, every ``baseline_interval`` seconds (default 2; 0: at every
chunk, which makes hosts in lock-step give exactly one tracker's results). Between refreshes a
host's stall limits lag the others' visits by at most that interval.

**Time-driven checks**: ``tick`` runs stall, decay, rearm and idle eviction for the users this
host committed lately (up to ``recent`` of them, least recently committed forgotten first),
through the same compare-and-set; a user ticked by two hosts fires once (the second commit
meets the first's head and replays from it). A user's record expires in Redis after
``idle_ttl`` of silence when the config sets one.

**Not here** (they need a snapshot of every user): ``export``, ``load`` and snapshots raise
:class:`~pyfriction.store.StoreError`; Redis's own persistence (RDB/AOF) and replicas keep the
state. ``capacity`` is the working table's bound per chunk, not a bound on the users in Redis:
size Redis's memory for them (about 560 bytes per user; see docs/operating.md).
"""

from __future__ import annotations

import itertools
import logging
import math
import struct
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, cast
from urllib.parse import unquote

import numpy as np
import redis
import redis.cluster
from redis.exceptions import NoScriptError

from ._constants import COUNTER_NAMES
from ._hashing import key64
from ._layout import SLOT_DTYPE, STEP_DTYPE, UID_BYTES
from ._marks import RATE, admit, event_marks, user_keys
from ._rules import Names
from .redis_pipe import NodePipelines
from .store import StoreError

__all__ = ["RedisCore", "split_options"]

log = logging.getLogger("pyfriction")

#: :class:`RedisCore` options a store URI's query may carry (the rest go to redis-py), and how
#: they are read.
URI_OPTIONS: dict[str, Callable[[str], Any]] = {
    "prefix": str, "chunk": int, "baseline_interval": float, "retries": int, "retry_timeout": float,
    "replicas": int, "wait_timeout": float, "dedupe": int, "rate_cap": int, "flush_interval": float,
    # the facts store's (RedisState)
    "lock_ttl": float, "lock_wait": float, "stripes": int, "remember": float,
}  # fmt: skip
#: Which of them go to the records (RedisCore) and to the facts (RedisState); some go to both.
CORE_OPTIONS = frozenset({"prefix", "chunk", "baseline_interval", "retries", "retry_timeout", "replicas",
                          "wait_timeout", "dedupe", "rate_cap", "flush_interval"})  # fmt: skip
STATE_OPTIONS = frozenset({"prefix", "retry_timeout", "replicas", "lock_ttl", "lock_wait", "stripes", "remember"})

Client = Any  # redis.Redis | redis.cluster.RedisCluster (redis-py's types are loose here)
#: Makes the working table: ``(capacity, emit, outcome) -> Engine``.
LocalFactory = Callable[[int, Callable[..., None], Callable[..., None]], Any]

# KEYS[1] the user's record; ARGV: the head read (HEAD.size bytes, as the value starts; zeros:
# none), the new value (starting with 8 zero bytes: delete), ttl in ms (0: none). Answers {1,
# created (1/0)} or, when the value does not start with that head, {0, the value ('' none)}.
_COMMIT = """
local cur = redis.call('GET', KEYS[1])
local have = cur and string.sub(cur, 1, #ARGV[1]) or string.rep('\\0', #ARGV[1])
if have ~= ARGV[1] then return {0, cur or ''} end
if string.sub(ARGV[2], 1, 8) == string.rep('\\0', 8) then
  redis.call('DEL', KEYS[1])
  return {1, 0}
end
local ttl = tonumber(ARGV[3])
if ttl > 0 then redis.call('SET', KEYS[1], ARGV[2], 'PX', ttl) else redis.call('SET', KEYS[1], ARGV[2]) end
if cur then return {1, 0} end
return {1, 1}
"""

# KEYS[1] the step table, KEYS[2] this host's last flush there; ARGV[1] uint32s per step, ARGV[2]
# the flush's number, then pairs: step key, packed deltas. Adds (saturating at 2^32 - 1), unless
# this flush was added already (sent again after its reply was lost: a host's flushes are
# numbered), and answers the whole table.
_STEPS = """
if tonumber(redis.call('GET', KEYS[2]) or '-1') < tonumber(ARGV[2]) then
  local n = tonumber(ARGV[1])
  local fmt = '<' .. string.rep('I4', n)
  for i = 3, #ARGV, 2 do
    local d = {struct.unpack(fmt, ARGV[i + 1])}
    local cur = redis.call('HGET', KEYS[1], ARGV[i])
    if cur then
      local c = {struct.unpack(fmt, cur)}
      for j = 1, n do
        d[j] = math.min(c[j] + d[j], 4294967295)
      end
    end
    redis.call('HSET', KEYS[1], ARGV[i], struct.pack(fmt, unpack(d, 1, n)))
  end
  redis.call('SET', KEYS[2], ARGV[2], 'EX', 86400)
end
return redis.call('HGETALL', KEYS[1])
"""

# KEYS[1] the counters, KEYS[2] this host's last flush; ARGV: the flush's number, then pairs:
# name, delta. Answers every counter.
_COUNTERS = """
if tonumber(redis.call('GET', KEYS[2]) or '-1') < tonumber(ARGV[1]) then
  for i = 2, #ARGV, 2 do
    redis.call('HINCRBY', KEYS[1], ARGV[i], ARGV[i + 1])
  end
  redis.call('SET', KEYS[2], ARGV[1], 'EX', 86400)
end
return redis.call('HGETALL', KEYS[1])
"""

# The same for many users of one node in one call. The keys are arguments, not declared keys
# (declared keys must share a slot), which ``allow-cross-slot-keys`` permits as long as every
# key is on the node; every read comes before any write, so a key that is not (a slot moving
# away: "non local key", a redirection inside a script) fails the call before it wrote
# anything, and the caller goes user by user. Arguments and answers are packed (keys joined by
# newlines, values back to back) so that a call of a thousand users is a few strings to encode
# and parse, not thousands of values; the script only compares and copies bytes (a user's
# value is one string: one GET, one SET), which is what keeps Redis's CPU per event low.
# Read: ARGV[1] keys; answers their values ('' none). An array, not one packed string: Lua's
# table.concat (and a length packed per value) cost more than twice the GETs themselves.
_READ_MANY = """#!lua flags=allow-cross-slot-keys
local out = {}
for key in string.gmatch(ARGV[1], '[^\\n]+') do
  out[#out + 1] = redis.call('GET', key) or ''
end
return out
"""

# Commit: ARGV keys, ttl, the heads read (ARGV[6] bytes each; zeros: none), the new values back
# to back, a value's size (a host's values are all one size; one starting with 8 zero bytes
# deletes). The whole head is compared, not only the version: its token is unique to the commit
# that wrote it, so a record deleted and written again up to the same version is no match.
# Answers {records created, then per user whose head was another: its index, the value found}.
_COMMIT_MANY = """#!lua flags=allow-cross-slot-keys
local ttl, size, hsize = tonumber(ARGV[2]), tonumber(ARGV[5]), tonumber(ARGV[6])
local none, gone = string.rep('\\0', hsize), string.rep('\\0', 8)
local keys, cur = {}, {}
for key in string.gmatch(ARGV[1], '[^\\n]+') do
  keys[#keys + 1] = key
  cur[#keys] = redis.call('GET', key)
end
local out = {0}
for i, key in ipairs(keys) do
  local c = cur[i]
  local have = c and string.sub(c, 1, hsize) or none
  if have ~= string.sub(ARGV[3], hsize * (i - 1) + 1, hsize * i) then
    out[#out + 1] = i - 1
    out[#out + 1] = c or ''
  else
    local value = string.sub(ARGV[4], size * (i - 1) + 1, size * i)
    if string.sub(value, 1, 8) == gone then
      redis.call('DEL', key)
    else
      if ttl > 0 then redis.call('SET', key, value, 'PX', ttl) else redis.call('SET', key, value) end
      if not c then out[1] = out[1] + 1 end
    end
  end
end
return out
"""

# KEYS[1] the names; ARGV: how many this host knows, then pairs: key, text (HSETNX: the first
# text of a key stays). Answers {count, and every pair when the count is not the one known}.
_NAMES = """
for i = 2, #ARGV, 2 do
  redis.call('HSETNX', KEYS[1], ARGV[i], ARGV[i + 1])
end
local n = redis.call('HLEN', KEYS[1])
if n == tonumber(ARGV[1]) then return {n} end
return {n, redis.call('HGETALL', KEYS[1])}
"""

_SCRIPTS = {"names": _NAMES, "commit": _COMMIT, "steps": _STEPS, "counters": _COUNTERS, "read_many": _READ_MANY,
            "commit_many": _COMMIT_MANY}  # fmt: skip
_STEP_INTS = 1 + STEP_DTYPE["buckets"].shape[0]  # count, then the buckets
SLOT_SIZE = SLOT_DTYPE.itemsize
#: A user's value starts with its version (a double: exact to 2**53, and what Lua compares as
#: 8 bytes), the size of the record that follows (a store of another layout is refused, not
#: misread) and the token of the commit that wrote it (a commit sent again after its reply was
#: lost knows its own write); the record and field ``f`` follow.
HEAD = struct.Struct("<dI24s")
#: A commit's token: the host's 16 bytes and the attempt's number.
_ATTEMPT = struct.Struct("<Q")
#: A user's state as read: version, record (SLOT_DTYPE bytes), field ``f`` (recent event
#: fingerprints, the rate) and the head of the value (what a commit expects to find: version,
#: size and the token of the commit that wrote it; zeros when there is none).
Rec = tuple[int, bytes, bytes, bytes]
#: The rate cap's state at the end of a user's fingerprints: the second it counts, events in it.
RATE_SIZE = RATE.size
NO_REC: Rec = (0, b"", b"", bytes(HEAD.size))


def split_options(uri: str) -> tuple[str, dict[str, Any]]:
    """``uri`` without the :data:`URI_OPTIONS` of its query, and those options
    (``redis+cluster://h:7000?prefix=shop&baseline_interval=1``)."""
    base, sep, query = uri.partition("?")
    if not sep:
        return uri, {}
    options: dict[str, Any] = {}
    rest = []
    for pair in query.split("&"):
        name, _eq, value = pair.partition("=")
        if name in URI_OPTIONS:
            try:
                options[name] = URI_OPTIONS[name](unquote(value))
            except ValueError:
                raise StoreError(f"{uri!r}: invalid value {value!r} for the option {name!r}") from None
        elif pair:
            rest.append(pair)
    return base + ("?" + "&".join(rest) if rest else ""), options


def _user_id_of(event: Any) -> Any:
    if isinstance(event, Mapping):
        return event.get("user_id")
    return getattr(event, "user_id", None)


class RedisCore:
    """The engine interface (:class:`pyfriction._engine.Engine`) over records on Redis.

    ``make_local(capacity, emit, outcome)`` makes the working table (the tracker's engine,
    private memory); ``emit`` / ``outcome`` are the tracker's callbacks, called after a
    user's record is committed. ``client``: a redis-py client returning bytes. See the module
    docstring for the rest.
    """

    def __init__(self, make_local: LocalFactory, client: Client, emit: Callable[..., None],
                 outcome: Callable[..., None], *, prefix: str = "pf", chunk: int = 4096,
                 baseline_interval: float = 2.0, idle_ttl: float | None = None, retries: int = 64,
                 recent: int = 100_000, retry_timeout: float = 10.0, replicas: int = 0,
                 wait_timeout: float = 1.0, dedupe: int = 16, rate_cap: int = 100,
                 clock: Callable[[], float] = time.time, names: Any = None,
                 flush_interval: float = 0.0) -> None:  # fmt: skip
        if chunk < 1 or retries < 1 or recent < 1:
            raise ValueError("chunk, retries and recent must be at least 1")
        if not 0 <= dedupe <= 1024:
            raise ValueError("dedupe (event fingerprints remembered per user) must be 0 to 1024")
        if rate_cap < 0:
            raise ValueError("rate_cap (events per user per second, 0: none) must be 0 or more")
        self.dedupe = dedupe
        self.rate_cap = rate_cap
        self.meta_size = 8 * dedupe + RATE_SIZE
        #: Events dropped as replays of events a user's record remembers.
        self.duplicates = 0
        #: Events dropped by the per-user rate cap.
        self.capped = 0
        self._capped_now = 0
        self._clock = clock
        if not baseline_interval >= 0:
            raise ValueError("baseline_interval must be 0 or more seconds")
        self.client = client
        self.prefix = prefix
        self.chunk = chunk
        self.retries = retries
        self.baseline_interval = baseline_interval
        self.ttl_ms = int(idle_ttl * 1000) if idle_ttl else 0
        self._emit_out, self._outcome_out = emit, outcome
        self._held: list[tuple[str, bool, tuple[Any, ...]]] = []  # (user, is_episode, args)
        self._local = make_local(chunk, self._hold_episode, self._hold_outcome)
        self.engine: str = self._local.engine
        self.batch_queue = True
        self._lock = threading.RLock()
        self._scripts = {name: client.register_script(src) for name, src in _SCRIPTS.items()}
        self._pipes = NodePipelines(client, retry_timeout, replicas, wait_timeout)
        if not flush_interval >= 0:
            raise ValueError("flush_interval must be 0 (off) or a number of seconds")
        self.flush_interval = flush_interval
        self._queue: list[Any] = []
        self._queued = threading.Condition()
        self._flushing = threading.Lock()
        self._stopping = False
        self._thread: threading.Thread | None = None
        #: Background batches Redis refused (kept queued and tried again).
        self.flush_errors = 0
        self._cluster = isinstance(client, redis.cluster.RedisCluster)
        #: Users whose node's batched call failed and went one by one (slot moves, failovers).
        self.fallbacks = 0
        self.steps_key = f"{prefix}:{{steps}}"
        self.counters_key = f"{prefix}:{{counters}}"
        self.names_key = f"{prefix}:{{names}}"
        self._names: Any = names if names is not None else Names()
        self._shared_names: set[int] = set()  # keys Redis is known to name
        # The step baselines: totals as last read, plus what this host added since.
        self._baseline = np.zeros(0, dtype=STEP_DTYPE)
        self._pending_steps: dict[int, np.ndarray] = {}
        self._totals: dict[str, int] = {}
        self._flushed = dict(self._local.counters)  # local counters already added to Redis
        self._users_delta = 0
        self._refreshed = -float("inf")
        self._host = uuid.uuid4().hex[:16].encode()  # tokens of this host's commits and flushes
        self._attempts = itertools.count()
        self._flushes = 0
        self._recent: dict[str, None] = {}  # oldest first (a dict keeps insertion order)
        self._addresses: dict[str, tuple[int, str, int]] = {}  # the chunk's users' (see _address)
        self._recent_cap = recent
        self._evicted: list[str] | None = None
        self.commits = 0
        self.conflicts = 0
        self.refresh()
        if flush_interval:
            self._thread = threading.Thread(target=self._flusher, name="pyfriction-redis-flush", daemon=True)
            self._thread.start()

    # -- plumbing -----------------------------------------------------------------------------
    def _hold_episode(self, rec: Any, user_id: str, *rest: Any) -> None:
        self._held.append((user_id, True, (rec, user_id, *rest)))

    def _hold_outcome(self, kind: str, user_id: str, *rest: Any) -> None:
        self._held.append((user_id, False, (kind, user_id, *rest)))

    def record_key(self, user_id: str) -> str:
        """The key of a user's record (the facts store's hash tag: the same slot)."""
        return f"{self.prefix}:{{{key64(user_id):016x}}}:e"

    def _address(self, users: Sequence[str]) -> tuple[list[int], list[str], list[int]]:
        """Each user's ``key64``, record key and cluster slot (a chunk computes them once)."""
        known = self._addresses
        todo = [uid for uid in users if uid not in known]
        if todo:
            k64, keys, slots = user_keys(todo, self.prefix)
            known.update(zip(todo, zip(k64.tolist(), keys, slots.tolist())))
        got = [known[uid] for uid in users]
        return [a[0] for a in got], [a[1] for a in got], [a[2] for a in got]

    def _run(self, calls: list[tuple[str, list[str], list[Any]]]) -> list[Any]:
        """Scripts by SHA, a pipeline per node (loaded again where a node lacks them); results in
        order."""

        def send(indices: list[int]) -> list[Any]:
            commands = []
            for i in indices:
                name, keys, args = calls[i]
                commands.append((keys[0], ("EVALSHA", self._scripts[name].sha, len(keys), *keys, *args)))
            return self._pipes.run(commands)

        results = send(list(range(len(calls))))
        for _round in range(3):
            missing = [i for i, r in enumerate(results) if isinstance(r, NoScriptError)]
            if not missing:
                break
            # A new primary (a slot moving to it: its map may be news to this client), a
            # promoted replica without them, a SCRIPT FLUSH: load them everywhere, send again.
            self._pipes.refresh()
            for script in self._scripts.values():
                self.client.script_load(script.script)
            for i, r in zip(missing, send(missing)):
                results[i] = r
        for r in results:
            if isinstance(r, Exception):
                raise StoreError(f"Redis refused a pyfriction script: {r}") from r
        return results

    def _per_node(
        self, name: str, keys: Sequence[str], slots: Sequence[int], args: Callable[[list[int]], list[Any]]
    ) -> list[tuple[list[int], Any]]:
        """Run script ``name`` once per node over the ``keys`` it owns (``slots`` their cluster
        slots; ``args(indices)`` its arguments after the keys); ``(indices, reply)`` per node,
        the reply None where the call failed (the caller goes user by user there:
        redirections and retries are NodePipelines')."""
        if not self._cluster:
            groups = {"-": (self.client, list(range(len(keys))))}
        else:
            try:
                groups = self._by_node(slots)
            except Exception:  # no slot map now (a failover): user by user, with retries
                return [(list(range(len(keys))), None)]
        out: list[tuple[list[int], Any]] = []
        sha = self._scripts[name].sha
        for conn, indices in groups.values():
            argv = ["\n".join(keys[i] for i in indices), *args(indices)]
            try:
                try:
                    reply = self._call(conn, sha, argv, name != "read_many")
                except NoScriptError:
                    conn.script_load(self._scripts[name].script)
                    reply = self._call(conn, sha, argv, name != "read_many")
            except Exception:  # a slot moving, a failover, a dropped connection: user by user
                self.fallbacks += len(indices)
                reply = None
            out.append((indices, reply))
        return out

    def _by_node(self, slots: Sequence[int]) -> dict[str, tuple[Any, list[int]]]:
        """The indices of ``slots`` grouped by the primary that owns them (name -> connection,
        indices). The slot map is read directly: get_node_from_slot's deprecation wrapper cost
        more than the rest of the routing together; and the users are grouped in numpy, as a
        Python loop per user was most of what was left."""
        manager = self.client.nodes_manager
        cache = manager.slots_cache
        if len(slots) == 1:  # observe() of one event: numpy costs more than it saves
            nodes, of_user = [cache[slots[0]][0]], np.zeros(1, dtype=np.int64)
        else:
            distinct, which = np.unique(np.asarray(slots, dtype=np.int64), return_inverse=True)
            numbers: dict[str, int] = {}
            nodes = []
            of_slot = np.empty(len(distinct), dtype=np.int64)
            for n, slot in enumerate(distinct.tolist()):
                node = cache[slot][0]
                number = numbers.get(node.name)
                if number is None:
                    number = numbers[node.name] = len(nodes)
                    nodes.append(node)
                of_slot[n] = number
            of_user = of_slot[which.reshape(-1)]
        order = np.argsort(of_user, kind="stable")
        bounds = np.searchsorted(of_user[order], np.arange(len(nodes) + 1))
        groups = {}
        for number, node in enumerate(nodes):
            if node.redis_connection is None:
                manager.create_redis_connections([node])
            groups[node.name] = (node.redis_connection, order[bounds[number] : bounds[number + 1]].tolist())
        return groups

    def _call(self, conn: Any, sha: str, argv: list[Any], writes: bool) -> Any:
        if not writes:
            return conn.execute_command("EVALSHA", sha, 0, *argv)
        pipe = conn.pipeline(transaction=False)
        pipe.execute_command("EVALSHA", sha, 0, *argv)
        self._pipes.wait_for_replicas(pipe)
        return self._pipes.replicated(pipe.execute())[0]

    def _read(self, users: Sequence[str]) -> dict[str, Rec]:
        """Each user's version, record and recent fingerprints (``NO_REC`` when Redis has none)."""
        _k64, keys, slots = self._address(users)
        found: list[Rec] = [NO_REC] * len(users)
        missing: list[int] = []
        for indices, reply in self._per_node("read_many", keys, slots, lambda _idx: []):
            if reply is None:
                missing += indices
                continue
            if len(reply) != len(indices):
                raise StoreError(f"Redis answered {len(reply)} records for {len(indices)} keys")
            for i, value in zip(indices, reply):
                found[i] = self._parse(value, keys[i])[0]
        if missing:
            again = self._pipes.run([(keys[i], ("GET", keys[i])) for i in missing])
            for i, reply in zip(missing, again):
                if isinstance(reply, Exception):
                    raise StoreError(f"Redis refused a read: {reply}") from reply
                found[i] = self._parse(bytes(reply or b""), keys[i])[0]
        return dict(zip(users, found))

    def _parse(self, value: bytes, key: str) -> tuple[Rec, bytes]:
        """A user's value as read: their state, and the token of the commit that wrote it."""
        if not value:
            return NO_REC, b""
        if len(value) < HEAD.size:
            raise StoreError(f"{key} holds {len(value)} bytes, not a pyfriction record")
        version, size, token = HEAD.unpack_from(value)
        if size != SLOT_SIZE or len(value) < HEAD.size + size:
            raise StoreError(f"{key} holds a record of {size} bytes and this pyfriction's are {SLOT_SIZE}: "
                             "a store written by another version of pyfriction")  # fmt: skip
        end = HEAD.size + size
        return (int(version), value[HEAD.size : end], self._meta(value[end:]), value[: HEAD.size]), token

    def _meta(self, raw: bytes) -> bytes:
        """A user's field ``f`` at its size: the ``dedupe`` fingerprints (newest last, zero-padded
        in front), then the rate cap's second and count. Cut or padded in front, so a store
        written with another ``dedupe`` keeps the newest fingerprints and the rate."""
        size = self.meta_size
        return raw[len(raw) - size :] if len(raw) >= size else bytes(size - len(raw)) + raw

    # -- baselines and counters -----------------------------------------------------------------
    def refresh(self) -> None:
        """Add this host's step visits and counters to Redis and read the totals back."""
        with self._lock:
            local = dict(self._local.counters)
            deltas = [(name, local[name] - self._flushed.get(name, 0)) for name in COUNTER_NAMES]
            args: list[Any] = [x for name, d in deltas if d for x in (name, d)]
            if self._users_delta:
                args += ["users", self._users_delta]
            step_args: list[Any] = [_STEP_INTS, self._flushes]
            for key, delta in self._pending_steps.items():
                step_args += [key, delta.astype("<u4").tobytes()]
            host = self._host.decode()
            new_names = [x for key, text in list(self._names.items()) if key not in self._shared_names
                         for x in (key, text)]  # fmt: skip
            got_steps, got_counters, got_names = self._run([
                ("steps", [self.steps_key, f"{self.steps_key}:{host}"], step_args),
                ("counters", [self.counters_key, f"{self.counters_key}:{host}"], [self._flushes, *args]),
                ("names", [self.names_key], [len(self._shared_names), *new_names]),
            ])  # fmt: skip
            if len(got_names) > 1:  # another host named steps or targets: learn them
                pairs = got_names[1]
                shared = {int(k): v.decode("utf-8", "replace") for k, v in zip(pairs[::2], pairs[1::2])}
                for key, text in shared.items():
                    self._names.remember(key, text)
                self._shared_names = set(shared)
            else:
                self._shared_names.update(new_names[::2])
            self._flushes += 1
            self._flushed = local
            self._users_delta = 0
            self._pending_steps = {}
            fields = dict(zip(got_steps[::2], got_steps[1::2]))
            steps = np.zeros(len(fields), dtype=STEP_DTYPE)
            for i, (key, packed) in enumerate(sorted(fields.items(), key=lambda kv: int(kv[0]))):
                ints = np.frombuffer(packed, dtype="<u4")
                steps[i]["key"] = int(key)
                steps[i]["count"] = ints[0]
                steps[i]["buckets"] = ints[1:]
            self._baseline = steps
            self._totals = {k.decode(): int(v) for k, v in zip(got_counters[::2], got_counters[1::2])}
            self._refreshed = time.monotonic()

    def _refresh_due(self) -> None:
        if time.monotonic() - self._refreshed >= self.baseline_interval:
            self.refresh()

    def _note_steps(self, before: np.ndarray, after: np.ndarray) -> None:
        """What a chunk added to the step histograms: pending for Redis, and in the cache."""
        if len(after):
            now = np.column_stack((after["count"], after["buckets"])).astype(np.int64)
            keys = after["key"]
            if len(before):  # subtract each step's row before the chunk, found by key
                order = np.argsort(before["key"], kind="stable")
                known = before["key"][order]
                at = np.minimum(np.searchsorted(known, keys), len(known) - 1)
                hit = known[at] == keys
                was = np.column_stack((before["count"], before["buckets"])).astype(np.int64)[order][at]
                now[hit] -= was[hit]
            for i in np.flatnonzero(now.any(axis=1)).tolist():
                key = int(keys[i])
                pending = self._pending_steps.get(key)
                self._pending_steps[key] = now[i] if pending is None else pending + now[i]
        self._baseline = after.copy()

    # -- scoring ----------------------------------------------------------------------------------
    def _chunks(self, events: Any) -> Iterable[tuple[Any, list[str]]]:
        """``events`` in runs of at most ``chunk`` distinct users, with those users."""
        if isinstance(events, Mapping):  # columns
            ids = list(events.get("user_id", ()))
            n = len(ids)
            start = 0
            while start < n:
                seen: dict[str, None] = {}
                end = start
                while end < n and (ids[end] in seen or len(seen) < self.chunk):
                    if isinstance(ids[end], str):
                        seen[ids[end]] = None
                    end += 1
                yield {k: v[start:end] if not isinstance(v, (str, bytes)) else v for k, v in events.items()}, list(seen)
                start = end
            return
        batch: list[Any] = []
        users: dict[str, None] = {}
        for event in events:
            uid = _user_id_of(event)
            if isinstance(uid, str) and uid not in users and len(users) >= self.chunk:
                yield batch, list(users)
                batch, users = [], {}
            if isinstance(uid, str):
                users[uid] = None
            batch.append(event)
        if batch:
            yield batch, list(users)

    def observe(self, event: Any) -> float:
        """See :meth:`pyfriction.Tracker.observe`. With ``flush_interval`` the event is queued
        for the background flush and NaN returned (its score is not known yet)."""
        if self.flush_interval:
            with self._queued:
                if len(self._queue) >= self.chunk:  # back-pressure: the caller waits for a flush
                    self._queued.notify()
                    while len(self._queue) >= self.chunk and not self._stopping:
                        self._queued.wait(0.05)
                self._queue.append(event)
            return math.nan
        uid = _user_id_of(event)
        return float(self._chunk("one", event, [uid] if isinstance(uid, str) else []))

    def _flusher(self) -> None:
        """The background mode: every ``flush_interval`` seconds, the queued events as one batch.
        A batch Redis refused (past ``retry_timeout``) stays queued, in order, and is tried again."""
        while True:
            with self._queued:
                if not self._queue and not self._stopping:
                    self._queued.wait(self.flush_interval)
                if not self._queue and self._stopping:
                    return
            try:
                self._flush_once()
            except Exception:
                self.flush_errors += 1
                log.exception("pyfriction: a background batch failed; it stays queued")
                time.sleep(min(1.0, 10 * self.flush_interval))
                continue
            time.sleep(self.flush_interval)

    def _flush_once(self) -> bool:
        """Score the oldest queued events (one chunk); False when none were queued. One at a
        time (the thread and :meth:`flush`), so no event is scored twice."""
        with self._flushing:
            with self._queued:
                batch = self._queue[: self.chunk]
            if not batch:
                return False
            self.observe_many(batch)
            with self._queued:
                del self._queue[: len(batch)]
                self._queued.notify_all()
            return True

    def flush(self) -> None:
        """Score what the background mode holds now (no-op without it)."""
        while self.flush_interval and self._flush_once():
            pass

    def observe_many(self, events: Any) -> np.ndarray:
        """See :meth:`pyfriction.Tracker.observe_many`."""
        parts = [self._chunk("many", part, users) for part, users in self._chunks(events)]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.float64)

    def observe_columns(self, columns: Mapping[str, Any]) -> np.ndarray:
        """A columnar batch (as ``observe_many`` of a mapping)."""
        return self.observe_many(columns)

    def _load(self, records: Mapping[str, Rec], steps: np.ndarray) -> None:
        present = [(uid, rec[1]) for uid, rec in records.items() if rec[1]]
        slots = np.frombuffer(b"".join(rec for _uid, rec in present), dtype=SLOT_DTYPE)
        long_ids = {key64(uid): uid for uid, _rec in present if len(uid.encode("utf-8", "surrogatepass")) > UID_BYTES}
        if len(slots):  # least recently active first, as an export gives them
            slots = slots[np.argsort(slots["last_ts"], kind="stable")]
        self._local.load(slots, steps, long_ids)

    def _marks(self, kind: str, payload: Any) -> tuple[list[Any], np.ndarray, np.ndarray] | None:
        """The user id, fingerprint (0: none) and second of each event of a chunk, or None when
        neither deduplication nor the rate cap is on. An event is known by its user, type,
        time, step, target and properties; one without a time of its own (the clock gives it
        one) has no fingerprint and is never dropped as a replay."""
        if not (self.dedupe or self.rate_cap) or kind == "tick":
            return None
        columns: list[list[Any] | None]
        if kind == "one":
            columns = [[x] for x in _fields(payload)]
        elif isinstance(payload, Mapping):
            n = len(payload.get("user_id", ()))
            columns = [_column(payload.get(name), n) for name in _FIELDS]
        else:
            columns = [list(c) for c in zip(*(_fields(e) for e in payload))] or [[] for _ in _FIELDS]
        uids = columns[0] or []
        fps, seconds = event_marks(uids, *columns[1:], float(self._clock()), bool(self.dedupe))
        return uids, fps, seconds

    def _admit(self, marks: tuple[list[Any], np.ndarray, np.ndarray],
               records: Mapping[str, Rec]) -> tuple[list[int], dict[str, bytes]]:  # fmt: skip
        """The events to score (indices) and each user's new field ``f``: replays of events a
        user's record remembers and events past ``rate_cap`` are dropped
        (:func:`pyfriction._marks.py_admit` says exactly how)."""
        uids, fps, seconds = marks
        metas = {uid: rec[2] for uid, rec in records.items()}
        keep, out, capped = admit(uids, fps, seconds, metas, self.dedupe, self.rate_cap)
        self._capped_now = capped
        return keep, out

    def _score(self, kind: str, payload: Any, keep: list[int] | None, uids: list[Any] | None) -> Any:
        """Run a chunk (only the events ``keep`` names, when given) on the working table; a
        dropped event's score is its user's score after the chunk."""
        local = self._local
        if kind == "tick":
            return local.tick(payload)
        if kind == "one":
            if keep is not None and not keep:
                return local.score(payload.get("user_id") if isinstance(payload, Mapping) else payload.user_id)
            return local.observe(payload)
        total = len(uids) if uids is not None else 0
        if keep is None or len(keep) == total:
            return local.observe_many(payload)
        part: Any = (
            {k: _take(v, keep) for k, v in payload.items()}
            if isinstance(payload, Mapping)
            else [payload[n] for n in keep]
        )
        got = local.observe_many(part)
        out = np.empty(total, dtype=np.float64)
        assert uids is not None
        for n, uid in enumerate(uids):
            out[n] = local.score(uid) if isinstance(uid, str) else np.nan
        out[keep] = got
        return out

    def _chunk(self, kind: str, payload: Any, users: list[str]) -> Any:
        """Score one chunk against Redis (``kind`` "one", "many" or "tick"): see the module
        docstring."""
        with self._lock:
            self._refresh_due()
            self._addresses = {}
            records = self._read(users) if users else {}
            marks = self._marks(kind, payload)
            steps0 = self._baseline.copy()
            counters0 = dict(self._local.counters)
            done: set[str] = set()
            deliver: list[tuple[bool, tuple[Any, ...]]] = []
            for _round in range(self.retries):
                self._held = []
                self._local.set_counters(counters0)
                self._load(records, steps0)
                self._capped_now = 0
                keep, metas = self._admit(marks, records) if marks is not None else (None, {})
                result = self._score(kind, payload, keep, marks[0] if marks is not None else None)
                slots, steps, long_ids = self._local.export()
                keys = slots["key"].tolist()
                data = slots.tobytes()
                record_keys = self._address(list(records))[0]
                by_key = dict(zip(record_keys, records))
                changed: dict[str, tuple[bytes, bytes]] = {}
                for n, key in enumerate(keys):
                    uid = by_key.get(key) or long_ids.get(key) or _inline_uid(slots[n])
                    if uid in done:
                        continue
                    raw = data[n * SLOT_SIZE : (n + 1) * SLOT_SIZE]
                    _v, old, old_meta, _head = records.get(uid, NO_REC)
                    meta = metas.get(uid, old_meta or bytes(self.meta_size))
                    if old != raw or meta != old_meta:
                        changed[uid] = (raw, meta)
                present = set(keys)
                for key, (uid, (_v, rec, _ring, _head)) in zip(record_keys, records.items()):  # evicted (idle)
                    if rec and key not in present and uid not in done:
                        changed[uid] = (b"", b"")
                conflicted = self._commit(changed, records)
                # Delivered from the run whose commit held for the user; a user unchanged by
                # the chunk (nothing to write) is settled by the run too.
                settled = ({uid for uid, _ep, _args in self._held} | set(changed)) - done - set(conflicted)
                deliver += [(ep, args) for uid, ep, args in self._held if uid in settled]
                done |= settled
                if not conflicted:
                    break
                self.conflicts += len(conflicted)
            else:
                raise StoreError(f"{len(conflicted)} users' records kept changing under this host for "
                                 f"{self.retries} rounds; giving up on this batch")  # fmt: skip
            if keep is not None and marks is not None:
                self.capped += self._capped_now
                self.duplicates += len(marks[1]) - len(keep) - self._capped_now
            self._note_steps(steps0, steps)
            self._held = []
            self._addresses = {}
            self._refresh_due()  # at once with 0, so another host's next chunk sees this one's visits
        for is_episode, args in deliver:  # after the commits, outside the lock: callbacks may observe
            (self._emit_out if is_episode else self._outcome_out)(*args)
        return result

    def _commit(self, changed: Mapping[str, tuple[bytes, bytes]], records: dict[str, Rec]) -> list[str]:
        """Commit ``changed`` (user -> record, fingerprints; an empty record deletes) over the
        versions in ``records``; returns the users another host changed first, whose fresh
        state replaces theirs in ``records`` (the others keep the state the chunk started
        from: a replay must start there too)."""
        if not changed:
            return []
        users = list(changed)
        token = self._host + _ATTEMPT.pack(next(self._attempts))
        _k64, keys, slots = self._address(users)
        versions = [records.get(uid, NO_REC)[0] for uid in users]
        heads = [records.get(uid, NO_REC)[3] for uid in users]
        size = HEAD.size + SLOT_SIZE + self.meta_size
        deletion = bytes(size)  # its version, 0, deletes
        values = [HEAD.pack(versions[i] + 1, SLOT_SIZE, token) + rec + meta if rec else deletion
                  for i, (rec, meta) in enumerate(changed[uid] for uid in users)]  # fmt: skip
        # (index, value found) of each user who met another version
        refused: list[tuple[int, bytes]] = []
        created = 0
        missing: list[int] = []

        def args(idx: list[int]) -> list[Any]:
            return [self.ttl_ms, b"".join(heads[i] for i in idx),
                    b"".join(values[i] for i in idx), size, HEAD.size]  # fmt: skip

        for indices, reply in self._per_node("commit_many", keys, slots, args):
            if reply is None:
                missing += indices
                continue
            created += int(reply[0])
            refused += [(indices[int(reply[k])], bytes(reply[k + 1])) for k in range(1, len(reply), 2)]
        if missing:
            calls = [("commit", [keys[i]], [heads[i], values[i], self.ttl_ms]) for i in missing]
            for i, reply in zip(missing, self._run(calls)):
                if reply[0]:
                    created += int(reply[1])
                else:
                    refused.append((i, bytes(reply[1])))
        conflicted = []
        for i, value in refused:
            uid = users[i]
            new = changed[uid][0]
            found, their_token = self._parse(value, keys[i])
            if _ours(new, versions[i], found[0], their_token == token):
                created += int(versions[i] == 0 and bool(new))  # ours, sent again after its reply was lost
                continue
            records[uid] = found
            conflicted.append(uid)
        self._users_delta += created
        lost = set(conflicted)
        for uid in users:
            if uid in lost:
                continue
            self.commits += 1
            if changed[uid][0]:
                self._remember(uid)
            else:
                self._users_delta -= 1
                self._recent.pop(uid, None)
                if self._evicted is not None:
                    self._evicted.append(uid)
        return conflicted

    def _remember(self, uid: str) -> None:
        recent = self._recent
        recent.pop(uid, None)
        recent[uid] = None
        if len(recent) > self._recent_cap:
            del recent[next(iter(recent))]

    def tick(self, now: float) -> int:
        """Stall, decay, rearm and idle eviction at ``now`` for the users this host committed
        lately; returns the episodes fired."""
        fired = 0
        users = list(self._recent)
        for start in range(0, len(users), self.chunk):
            part = users[start : start + self.chunk]
            before = self._local.counters["episodes"]
            self._chunk("tick", now, part)
            fired += self._local.counters["episodes"] - before
        return fired

    # -- reads --------------------------------------------------------------------------------------
    def record(self, user_id: str) -> Any:
        """A user's record (``SLOT_DTYPE``) as Redis holds it, or None."""
        rec = self._read([user_id])[user_id][1]
        self._addresses = {}
        return np.frombuffer(rec, dtype=SLOT_DTYPE)[0].copy() if rec else None

    def has(self, user_id: str) -> bool:
        """Does Redis hold a record of ``user_id``?"""
        return bool(self.client.exists(self.record_key(user_id)))

    def score(self, user_id: str, at: float | None = None) -> float:
        """A user's score after their last event (or decayed to ``at``); 0.0 if unknown."""
        with self._lock:
            records = self._read([user_id])
            self._addresses = {}
            if not records[user_id][1]:
                return 0.0
            self._load(records, self._baseline)
            return float(self._local.score(user_id, at))

    def stall_need(self, step: int) -> float:
        """What users need on ``step`` by the cached baselines (see the module docstring)."""
        with self._lock:
            self._local.load(np.zeros(0, dtype=SLOT_DTYPE), self._baseline, {})
            return float(self._local.stall_need(step))

    def stall_limit(self, step: int) -> float:
        """The stall limit on ``step`` by the cached baselines."""
        with self._lock:
            self._local.load(np.zeros(0, dtype=SLOT_DTYPE), self._baseline, {})
            return float(self._local.stall_limit(step))

    @property
    def counters(self) -> dict[str, int]:
        """Every host's counters (read again when ``baseline_interval`` has passed), plus this
        host's since."""
        with self._lock:
            self._refresh_due()
            local = self._local.counters
            return {name: self._totals.get(name, 0) + local[name] - self._flushed.get(name, 0)
                    for name in COUNTER_NAMES}  # fmt: skip

    def set_counters(self, counters: Mapping[str, int]) -> None:
        """Not on a shared Redis store (counters are every host's): :class:`StoreError`."""
        raise StoreError("a Redis store's counters are every host's sums; they cannot be set")

    def __len__(self) -> int:
        """Users with a record in Redis (created minus deleted, as last read; records expired by
        ``idle_ttl`` are still counted)."""
        with self._lock:
            self._refresh_due()
            return max(0, self._totals.get("users", 0) + self._users_delta)

    def track_evictions(self, on: bool = True) -> None:
        """Remember the users this host deletes (idle eviction by ``tick``)."""
        self._evicted = [] if on else None

    def drain_evicted(self, unless_present: bool = False) -> list[str] | None:
        """The users deleted since the last call (see :meth:`track_evictions`)."""
        if self._evicted is None:
            return []
        gone, self._evicted = self._evicted, []
        if unless_present:
            gone = [uid for uid in gone if not self.has(uid)]
        return gone

    def stats(self) -> dict[str, int]:
        """This host's counts of what the store did: records committed, commits that met a newer
        version (replayed), events dropped as replays and by the rate cap, users that went one
        by one (their node's batched call failed), commands retried, pipelines short of
        ``replicas``."""
        return {"commits": self.commits, "conflicts": self.conflicts, "duplicates": self.duplicates,
                "capped": self.capped, "fallbacks": self.fallbacks, "retried": self._pipes.retried,
                "unreplicated": self._pipes.unreplicated}  # fmt: skip

    def sync(self, wait: bool = False) -> None:
        """Score the queued events (background mode), then add this host's baselines and
        counters to Redis."""
        self.flush()
        self.refresh()

    def close(self) -> None:
        """Score the queued events and stop the background thread."""
        self.sync()
        with self._queued:
            self._stopping = True
            self._queued.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=10)

    # -- snapshots: not on Redis ------------------------------------------------------------------
    def _no_snapshot(self) -> StoreError:
        return StoreError("a Redis store is not snapshotted by pyfriction: Redis's persistence (RDB/AOF) "
                          "and replicas keep it")  # fmt: skip

    def export(self) -> tuple[np.ndarray, np.ndarray, dict[int, str]]:
        """Not on Redis: :class:`StoreError`."""
        raise self._no_snapshot()

    def export_meta(self) -> tuple[np.ndarray, dict[int, str], int]:
        """Not on Redis: :class:`StoreError`."""
        raise self._no_snapshot()

    def export_chunk(self, out: np.ndarray, start: int) -> tuple[int, int]:
        """Not on Redis: :class:`StoreError`."""
        raise self._no_snapshot()

    def load(self, slots: np.ndarray, steps: np.ndarray, long_ids: Mapping[int, str]) -> None:
        """Not on Redis: :class:`StoreError`."""
        raise self._no_snapshot()


_FIELDS = ("user_id", "type", "ts", "step", "target", "properties")


def _fields(event: Any) -> tuple[Any, ...]:
    if isinstance(event, Mapping):
        get = event.get
        return get("user_id"), get("type"), get("ts"), get("step"), get("target"), get("properties")
    return tuple(getattr(event, name, None) for name in _FIELDS)


def _column(column: Any, n: int) -> list[Any] | None:
    """A batch's column as a list of ``n`` (None: absent; a text or a scalar: the same for each)."""
    if column is None:
        return None
    if isinstance(column, np.ndarray):
        return cast(list[Any], column.tolist()) if column.ndim == 1 and len(column) == n else [column] * n
    if isinstance(column, (str, bytes)) or not isinstance(column, Sequence) or len(column) != n:
        return [column] * n
    return list(column)


def _take(column: Any, keep: list[int]) -> Any:
    if isinstance(column, np.ndarray):
        return column[keep]
    if isinstance(column, (str, bytes)) or not isinstance(column, Sequence):
        return column
    return [column[n] for n in keep]


def _ours(new: bytes, expected: int, version: int, our_token: bool) -> bool:
    """Is a refused commit's answer the state our own earlier attempt left (its reply lost with
    a connection, the command sent again)? A write carries its attempt's token (unique to this
    host and attempt) and the refusal answers the token of the write it met; a deletion met
    by a missing record is done whoever deleted it."""
    if new:
        return version == expected + 1 and our_token
    return version == 0 and expected != 0


def _inline_uid(rec: Any) -> str:
    n = int(rec["uid_len"])
    raw = cast(bytes, rec["uid"])
    return bytes(raw)[: min(n, UID_BYTES)].decode("utf-8", "surrogatepass")
