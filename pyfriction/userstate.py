"""Where guidance bookkeeping and insights keep their state: the one interface, two stores.

:class:`StateStore` is the interface (see docs/architecture.md, "Per-user facts and aggregates"):
a transaction (:meth:`StateStore.transaction`) hands out

* **per-user parts**: a user's guidance record (part :data:`GUIDANCE`), insight record
  (:data:`INSIGHT`) and open struggle (:data:`STRUGGLE`), created on demand, bounded by the
  capacity (least recently active users evicted first, all their parts together in the file);
* **aggregate rows**: counters keyed per table (``hotspots``, ``accounts``, ``items``,
  ``detectors``), at most ``MAX_KEYS`` keys per table, the rest pooled under ``(other)``;
* **scalars**: a small dict of global counters, and the lead-time reservoir.

:class:`MemoryState` keeps live Python objects (a plain tracker, one process).
:class:`FileState` keeps them in a memory-mapped file next to a ``file://`` store
(``PATH.facts``), shared by every process that opens it: every change is made under one
lock, a word of the file's header holding its holder's pid (``_core/pidlock.pxi``: a waiter
that finds the holder dead takes it over), and a holder that died in the middle of a change is
detected (the header's ``busy`` word still holds its pid) and the file checked and rebuilt from
its records, whose checksums reveal one written in part.
"""

from __future__ import annotations

import fcntl
import mmap
import os
import random
import struct
import threading
import weakref
import zlib
from collections.abc import Callable, Hashable, Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any, Protocol, runtime_checkable

import msgspec

from ._filelock import BusyLock
from ._hashing import key64
from ._switch import compiled_twin
from .diskspace import reserve

__all__ = [
    "GUIDANCE",
    "INSIGHT",
    "MAX_KEYS",
    "OTHER",
    "STRUGGLE",
    "TABLES",
    "Codec",
    "FileState",
    "MemoryState",
    "StateStore",
    "StateTxn",
    "facts_path",
]

#: The parts of a user's record.
GUIDANCE, INSIGHT, STRUGGLE = 0, 1, 2
N_PARTS = 3
#: The aggregate tables.
TABLES = ("hotspots", "accounts", "items", "detectors")
#: Rows kept per table; further keys are pooled under OTHER.
MAX_KEYS = 10_000
OTHER = "(other)"
#: Lead times kept for the median and 90th percentile (a uniform reservoir sample).
RESERVOIR = 10_000


class Codec(Protocol):
    """Turns a part's live object into msgpack-able plain data and back (the file store)."""

    def encode(self, value: Any) -> Any:
        """Plain data (lists, dicts, numbers, strings) for ``value``."""
        ...

    def decode(self, plain: Any) -> Any:
        """The live object for what :meth:`encode` returned."""
        ...


@runtime_checkable
class PackedCodec(Protocol):
    """A part stored as a fixed binary record (at most :data:`GUIDE` bytes kept in the user's
    entry, the rest of it and the plain remainder in the body): the guidance part."""

    def pack(self, value: Any, user_id: str) -> tuple[bytes, Any]:
        """``(record, rest)``: the record's first byte is its length (255: longer)."""
        ...

    def unpack(self, record: bytes, rest: Any, user_id: str) -> Any:
        """The live object of :meth:`pack`'s result."""
        ...


class StateTxn(Protocol):
    """What one transaction reads and changes; valid inside ``with store.transaction()`` only."""

    def user(self, part: int, user_id: str, create: Callable[[], Any] | None = None) -> Any:
        """The user's ``part`` (None if absent and ``create`` is None, else made by ``create``);
        marks the user active (the last to be evicted)."""
        ...

    def peek(self, part: int, user_id: str) -> Any:
        """The user's ``part`` or None, without marking the user active."""
        ...

    def discard(self, part: int, user_id: str) -> Any:
        """Remove and return the user's ``part`` (None if absent)."""
        ...

    def row(self, table: str, key: Hashable, fresh: Callable[[], list[Any]]) -> list[Any]:
        """The aggregate row of ``key`` in ``table``, made by ``fresh`` when new (pooled under
        :data:`OTHER` once the table holds :data:`MAX_KEYS` rows)."""
        ...

    def get_row(self, table: str, key: Hashable) -> list[Any] | None:
        """The aggregate row of ``key`` in ``table``, or None."""
        ...

    @property
    def scalars(self) -> dict[str, Any]:
        """The global counters (a mutable dict)."""
        ...

    def sample(self, value: float, seen: int, rng: random.Random) -> None:
        """Offer ``value``, the ``seen``-th of its kind, to the reservoir (uniform sampling)."""
        ...


class StateStore(Protocol):
    """Per-user parts, aggregate rows and scalars behind transactions (memory or file)."""

    shared: bool

    def transaction(self) -> Any:
        """A context manager yielding a :class:`StateTxn`; changes are kept when it exits."""
        ...

    def session(self) -> Any:
        """A context manager: the transactions this thread opens inside it may be one (the file
        store: one lock, each record read and written once; a tracker's work for one episode,
        or for a batch's queue of them). Only transactions, :meth:`forget` and :meth:`user_ids`
        may be used inside it, no other method of the store."""
        ...

    def codec(self, part: int, codec: Codec) -> None:
        """How ``part`` is stored (the file store needs it; the memory store ignores it)."""
        ...

    def count(self, part: int) -> int:
        """Users holding ``part``."""
        ...

    def users(self, part: int) -> list[tuple[str, Any]]:
        """``(user_id, part)`` of every user holding ``part``, least recently active first."""
        ...

    def rows(self, table: str) -> list[tuple[Any, list[Any]]]:
        """Every ``(key, row)`` of ``table``."""
        ...

    def reservoir(self) -> list[float]:
        """A copy of the reservoir sample."""
        ...

    def set_reservoir(self, values: list[float]) -> None:
        """Replace the reservoir sample (a snapshot's)."""
        ...

    def clear(self, parts: tuple[int, ...], tables: tuple[str, ...]) -> None:
        """Forget ``parts`` of every user and every row of ``tables`` (before a load)."""
        ...

    def forget(self, user_ids: Iterable[str]) -> None:
        """Remove every part of these users at once (the engine evicted them)."""
        ...

    def user_ids(self) -> list[str]:
        """Every user holding any part."""
        ...


def _pooled(table: dict[Any, Any], key: Any) -> Any:
    return (OTHER, OTHER) if isinstance(key, tuple) else OTHER


# --- memory -------------------------------------------------------------------------------------


class MemoryState:
    """The store of a tracker private to its process: live objects, one lock."""

    shared = False

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.lock = threading.Lock()
        # Plain dicts kept in recency order (a touch re-inserts): an OrderedDict's links cost
        # about 50 bytes more per user, and there is one entry per user with an episode.
        self.parts: list[dict[str, Any]] = [{} for _ in range(N_PARTS)]
        self.tables: dict[str, dict[Any, list[Any]]] = {t: {} for t in TABLES}
        self._scalars: dict[str, Any] = {}
        self._reservoir: list[float] = []

    @contextmanager
    def transaction(self) -> Iterator[MemoryState]:
        """The store itself, under its lock (changes are made in place)."""
        with self.lock:
            yield self

    def session(self) -> AbstractContextManager[None]:
        """See :meth:`StateStore.session`: nothing to share here (each transaction changes the
        live objects in place)."""
        return nullcontext()

    def codec(self, part: int, codec: Codec) -> None:
        """Not needed: the objects stay live."""

    # -- the transaction's side ---------------------------------------------------------------
    def user(self, part: int, user_id: str, create: Callable[[], Any] | None = None) -> Any:
        """See :meth:`StateTxn.user`."""
        users = self.parts[part]
        value = users.pop(user_id, None)
        if value is not None:
            users[user_id] = value  # the most recent now
        elif create is not None:
            value = users[user_id] = create()
            while len(users) > self.capacity:
                del users[next(iter(users))]  # the least recently touched
        return value

    def peek(self, part: int, user_id: str) -> Any:
        """See :meth:`StateTxn.peek`."""
        return self.parts[part].get(user_id)

    def discard(self, part: int, user_id: str) -> Any:
        """See :meth:`StateTxn.discard`."""
        return self.parts[part].pop(user_id, None)

    def row(self, table: str, key: Hashable, fresh: Callable[[], list[Any]]) -> list[Any]:
        """See :meth:`StateTxn.row`."""
        rows = self.tables[table]
        found = rows.get(key)
        if found is None:
            if len(rows) >= MAX_KEYS:
                key = _pooled(rows, key)
                found = rows.get(key)
                if found is not None:
                    return found
            found = rows[key] = fresh()
        return found

    def get_row(self, table: str, key: Hashable) -> list[Any] | None:
        """See :meth:`StateTxn.get_row`."""
        return self.tables[table].get(key)

    @property
    def scalars(self) -> dict[str, Any]:
        """See :meth:`StateTxn.scalars`."""
        return self._scalars

    def sample(self, value: float, seen: int, rng: random.Random) -> None:
        """See :meth:`StateTxn.sample`."""
        if len(self._reservoir) < RESERVOIR:
            self._reservoir.append(value)
        else:
            j = rng.randrange(seen)
            if j < RESERVOIR:
                self._reservoir[j] = value

    # -- reads ---------------------------------------------------------------------------------
    def count(self, part: int) -> int:
        """See :meth:`StateStore.count`."""
        return len(self.parts[part])

    def users(self, part: int) -> list[tuple[str, Any]]:
        """See :meth:`StateStore.users`."""
        with self.lock:
            return list(self.parts[part].items())

    def rows(self, table: str) -> list[tuple[Any, list[Any]]]:
        """See :meth:`StateStore.rows`."""
        with self.lock:
            return list(self.tables[table].items())

    def reservoir(self) -> list[float]:
        """See :meth:`StateStore.reservoir`."""
        with self.lock:
            return list(self._reservoir)

    def set_reservoir(self, values: list[float]) -> None:
        """Replace the reservoir (a snapshot's)."""
        self._reservoir = list(values)[:RESERVOIR]

    def clear(self, parts: tuple[int, ...], tables: tuple[str, ...]) -> None:
        """See :meth:`StateStore.clear`."""
        with self.lock:
            for p in parts:
                self.parts[p].clear()
            for t in tables:
                self.tables[t].clear()

    def forget(self, user_ids: Iterable[str]) -> None:
        """See :meth:`StateStore.forget`."""
        with self.lock:
            for uid in user_ids:
                for users in self.parts:
                    users.pop(uid, None)

    def user_ids(self) -> list[str]:
        """See :meth:`StateStore.user_ids`."""
        with self.lock:
            seen: dict[str, None] = {}
            for users in self.parts:
                seen.update(dict.fromkeys(users))
            return list(seen)


# --- the file -------------------------------------------------------------------------------------

MAGIC = b"PFFACTS\0"
#: 2: a user's guidance record packed in 64 bytes of the user's entry (1: all msgpack).
#: 3: the lock is the header's pid word (2: an ``fcntl`` lock, which a process of version 3
#: would not see: the two must never share a file).
VERSION = 3
PAGE = 4096
HEADER = PAGE
#: A record: key, activity tick, first block + 1, body length, kind, checksum, then (a user's)
#: the packed guidance record, then the body: 128 bytes a user, 64 an aggregate row.
_ENTRY = struct.Struct("<QIIHBxI")
#: The guidance record's room in a user's entry (``_UserCodec.pack``: what it packs beyond
#: goes to the body).
GUIDE = 64
ENTRY = 128
AGG_ENTRY = 64
INLINE = ENTRY - _ENTRY.size - GUIDE  # 40 bytes of body inside a user's record
#: Side-table blocks: the next block + 1, then the body's continuation.
BLOCK = 256
BLOCK_BODY = BLOCK - 4
#: Header: magic, version, capacity, then per table (users, aggregates): entries, index size,
#: blocks; busy pid; tick; per table free head, allocated, used, block free head, blocks
#: allocated; rows per aggregate table; scalars' length.
_FIXED = struct.Struct("<8sII3I3III")
_TABLE_STATE = struct.Struct("<5I")
_STATE_OFF = (64, 84)
_ROWS_OFF = 104
_SCALARS_LEN_OFF = 124
_SCALARS_OFF = 128
SCALARS_MAX = HEADER - _SCALARS_OFF
_BUSY_OFF = _FIXED.size - 8
_TICK_OFF = _FIXED.size - 4
#: The lock word (``PidLock``): free header bytes between the fixed fields and the state.
_LOCK_OFF = _FIXED.size
_U32 = struct.Struct("<I")
USER_KIND = 1
#: Users sampled to pick one to evict (the least recently active of them, as Redis does).
EVICT_SAMPLE = 16
NONE = 0xFFFFFFFF
#: Aggregate row keys memoised per store (FileState.row_key).
_ROW_KEYS_MAX = 4 * MAX_KEYS


def compiled_tables() -> bool:
    """Whether the facts tables use the compiled core's methods (``_core/facts.pxi``)."""
    return compiled_twin("FACTS_LAYOUT", (_ENTRY.size, INLINE, BLOCK, BLOCK_BODY, NONE))


def facts_path(store_path: str) -> str:
    """The file holding the guidance bookkeeping and insights of the store at ``store_path``."""
    return store_path + ".facts"


def _pow2(n: int) -> int:
    size = 1
    while size < n:
        size <<= 1
    return size


def _page_up(n: int) -> int:
    return (n + PAGE - 1) // PAGE * PAGE


class _Table:
    """One open-addressing hash table of fixed records in the file, with its side blocks."""

    def __init__(self, mm: mmap.mmap, number: int, entries: int, index_size: int, blocks: int, off: int,
                 guide: int, compiled: bool | None = None) -> None:  # fmt: skip
        """``compiled``: bind the compiled twins (None: where the core is built and not turned off)."""
        self.mm = mm
        self.state_off = _STATE_OFF[number]
        self.entries, self.index_size, self.n_blocks = entries, index_size, blocks
        self.mask = index_size - 1
        self.index_off = off
        self.guide_size = guide  # the packed record's room (users) or 0
        self.stride = _ENTRY.size + guide + INLINE
        self.entry_off = _page_up(off + 4 * index_size)
        self.block_off = _page_up(self.entry_off + self.stride * entries)
        self.end = _page_up(self.block_off + BLOCK * blocks)
        if mm is not None and (compiled_tables() if compiled is None else compiled):
            self.bind_compiled()

    def bind_compiled(self) -> None:
        """Use the compiled twins of the methods every transaction calls (``_core/facts.pxi``,
        the same bytes and results; ``tests/test_facts_table.py``): these methods here are
        their specification, and what runs without the core."""
        from ._core import FactsTable

        k = FactsTable(self.mm, self.index_off, self.index_size, self.entry_off, self.stride, self.guide_size,
                       self.entries, self.block_off, self.n_blocks)  # fmt: skip
        self.head, self.find, self.guide, self.body = k.head, k.find, k.guide, k.body  # type: ignore[method-assign]
        self.key = k.key  # type: ignore[method-assign]
        self.checksum, self.write, self.insert, self.delete = k.checksum, k.write, k.insert, k.delete  # type: ignore[method-assign]

    # -- header words -----------------------------------------------------------------------------
    def state(self) -> list[int]:
        return list(_TABLE_STATE.unpack_from(self.mm, self.state_off))

    def set_state(self, values: list[int]) -> None:
        _TABLE_STATE.pack_into(self.mm, self.state_off, *values)

    # -- the index --------------------------------------------------------------------------------
    def _slot(self, j: int) -> int:
        return int.from_bytes(self.mm[self.index_off + 4 * j : self.index_off + 4 * j + 4], "little")

    def _set_slot(self, j: int, value: int) -> None:
        self.mm[self.index_off + 4 * j : self.index_off + 4 * j + 4] = value.to_bytes(4, "little")

    def head(self, e: int) -> tuple[int, int, int, int, int, int]:
        return _ENTRY.unpack_from(self.mm, self.entry_off + self.stride * e)

    @staticmethod
    def key(text: str) -> int:
        """The key of a user id or of a row's text (``key64``; the compiled twin hashes in C:
        a transaction's first look at a user hashed its id in Python for 6 us of an episode's
        40)."""
        return key64(text)

    def find(self, key: int) -> int:
        """The entry holding ``key``, or -1."""
        j = key & self.mask
        while True:
            s = self._slot(j)
            if s == 0:
                return -1
            if self.head(s - 1)[0] == key:
                return s - 1
            j = (j + 1) & self.mask

    def _index_insert(self, key: int, e: int) -> None:
        j = key & self.mask
        while self._slot(j) != 0:
            j = (j + 1) & self.mask
        self._set_slot(j, e + 1)

    def _index_delete(self, key: int) -> None:
        """Remove ``key`` from the index by backward shift (no tombstones)."""
        j = key & self.mask
        while True:
            s = self._slot(j)
            if s == 0:
                return  # not indexed
            if self.head(s - 1)[0] == key:
                break
            j = (j + 1) & self.mask
        while True:
            self._set_slot(j, 0)
            k = j
            while True:
                k = (k + 1) & self.mask
                s = self._slot(k)
                if s == 0:
                    return
                home = self.head(s - 1)[0] & self.mask
                # The entry at k may fill the hole at j unless its home lies cyclically in (j, k].
                if (k > j and (home <= j or home > k)) or (k < j and home <= j and home > k):
                    self._set_slot(j, s)
                    j = k
                    break

    # -- bodies --------------------------------------------------------------------------------------
    def body(self, e: int) -> bytes:
        key, _tick, ext, length, _kind, _crc = self.head(e)
        at = self.entry_off + self.stride * e + _ENTRY.size + self.guide_size
        if ext == 0:
            return self.mm[at : at + length]
        parts = []
        b, left = ext - 1, length
        while left > 0 and 0 <= b < self.n_blocks:
            at = self.block_off + BLOCK * b
            take = min(left, BLOCK_BODY)
            parts.append(self.mm[at + 4 : at + 4 + take])
            left -= take
            b = int.from_bytes(self.mm[at : at + 4], "little") - 1
        return b"".join(parts)

    def _free_blocks(self, ext: int, st: list[int]) -> None:
        b = ext - 1
        while 0 <= b < self.n_blocks:
            at = self.block_off + BLOCK * b
            nxt = int.from_bytes(self.mm[at : at + 4], "little") - 1
            self.mm[at : at + 4] = (st[3] + 1 if st[3] != NONE else 0).to_bytes(4, "little")
            st[3] = b
            b = nxt

    def _alloc_block(self, st: list[int]) -> int:
        if st[3] != NONE:
            b = st[3]
            at = self.block_off + BLOCK * b
            nxt = int.from_bytes(self.mm[at : at + 4], "little")
            st[3] = nxt - 1 if nxt else NONE
            return b
        if st[4] < self.n_blocks:
            st[4] += 1
            return st[4] - 1
        return -1

    def blocks_free(self, st: list[int]) -> int:
        n = self.n_blocks - st[4]
        b = st[3]
        while b != NONE and n < 1 << 30:
            n += 1
            nxt = int.from_bytes(self.mm[self.block_off + BLOCK * b : self.block_off + BLOCK * b + 4], "little")
            b = nxt - 1 if nxt else NONE
        return n

    def guide(self, e: int) -> bytes:
        """The packed record's room in entry ``e`` (zeros when none)."""
        at = self.entry_off + self.stride * e + _ENTRY.size
        return self.mm[at : at + self.guide_size]

    def checksum(self, e: int, body: bytes) -> int:
        return zlib.crc32(body, zlib.crc32(self.guide(e))) if self.guide_size else zlib.crc32(body)

    def write(self, e: int, key: int, tick: int, kind: int, body: bytes, st: list[int], guide: bytes = b"") -> bool:
        """Write a record's body and packed record (the old chain freed first); False when
        the blocks ran out."""
        old = self.head(e)
        if old[0] == key and old[2]:
            self._free_blocks(old[2], st)
        at = self.entry_off + self.stride * e
        ext = 0
        if len(body) > INLINE:
            need = (len(body) + BLOCK_BODY - 1) // BLOCK_BODY
            chain: list[int] = []
            for _ in range(need):
                b = self._alloc_block(st)
                if b < 0:
                    for got in chain:  # give back what was taken, one by one (no chain yet)
                        p = self.block_off + BLOCK * got
                        self.mm[p : p + 4] = bytes(4)
                        self._free_blocks(got + 1, st)
                    self.mm[at + _ENTRY.size : at + _ENTRY.size + self.guide_size] = bytes(self.guide_size)
                    self.mm[at : at + _ENTRY.size] = _ENTRY.pack(key, tick, 0, 0, kind, self.checksum(e, b""))
                    return False
                chain.append(b)
            for i, b in enumerate(chain):
                p = self.block_off + BLOCK * b
                nxt = chain[i + 1] + 1 if i + 1 < len(chain) else 0
                piece = body[i * BLOCK_BODY : (i + 1) * BLOCK_BODY]
                self.mm[p : p + 4] = nxt.to_bytes(4, "little")
                self.mm[p + 4 : p + 4 + len(piece)] = piece
            ext = chain[0] + 1
        else:
            inline = at + _ENTRY.size + self.guide_size
            self.mm[inline : inline + len(body)] = body
        if self.guide_size:
            guide = guide.ljust(self.guide_size, b"\0")
            self.mm[at + _ENTRY.size : at + _ENTRY.size + self.guide_size] = guide
            crc = zlib.crc32(body, zlib.crc32(guide))  # what checksum(e, body) reads back, in hand
        else:
            crc = zlib.crc32(body)
        # The header last, checksum included: a record cut short by a crash fails its check.
        self.mm[at : at + _ENTRY.size] = _ENTRY.pack(key, tick, ext, len(body), kind, crc)
        return True

    def insert(self, key: int, st: list[int]) -> int:
        """A free entry for ``key`` (indexed), or -1 when the table is full."""
        if st[0] != NONE:
            e = st[0]
            st[0] = self.head(e)[1]  # a free entry's tick links the free list
        elif st[1] < self.entries:
            e = st[1]
            st[1] += 1
        else:
            return -1
        at = self.entry_off + self.stride * e
        self.mm[at + _ENTRY.size : at + _ENTRY.size + self.guide_size] = bytes(self.guide_size)
        self.mm[at : at + _ENTRY.size] = _ENTRY.pack(key, 0, 0, 0, 0, self.checksum(e, b""))
        self._index_insert(key, e)
        st[2] += 1
        return e

    def delete(self, e: int, st: list[int]) -> None:
        key, _tick, ext, _length, _kind, _crc = self.head(e)
        self._index_delete(key)
        if ext:
            self._free_blocks(ext, st)
        at = self.entry_off + self.stride * e
        self.mm[at : at + _ENTRY.size] = _ENTRY.pack(0, st[0], 0, 0, 0, 0)
        st[0] = e
        st[2] -= 1

    def live(self, st: list[int]) -> Iterator[int]:
        for e in range(st[1]):
            if self.head(e)[0] != 0:
                yield e

    def rebuild(self) -> list[int]:
        """Check every record and rebuild the index, free lists and counts (after a crash)."""
        st = self.state()
        n_alloc = min(st[1], self.entries)
        self.mm[self.index_off : self.index_off + 4 * self.index_size] = bytes(4 * self.index_size)
        used_blocks: set[int] = set()
        good: list[int] = []
        for e in range(n_alloc):
            key, tick, ext, length, kind, crc = self.head(e)
            if key == 0:
                continue
            chain: list[int] = []
            b, ok = ext - 1, True
            while ext and 0 <= b < self.n_blocks and len(chain) * BLOCK_BODY < length:
                if b in used_blocks or b in chain:
                    ok = False
                    break
                chain.append(b)
                p = self.block_off + BLOCK * b
                b = int.from_bytes(self.mm[p : p + 4], "little") - 1
            ok = ok and self.find(key) < 0 and self.checksum(e, self.body(e)) == crc
            if not ok:
                at = self.entry_off + self.stride * e
                self.mm[at : at + _ENTRY.size] = bytes(_ENTRY.size)
                continue
            used_blocks.update(chain)
            self._index_insert(key, e)
            good.append(e)
        free_head = NONE
        for e in range(n_alloc - 1, -1, -1):
            if self.head(e)[0] == 0:
                at = self.entry_off + self.stride * e
                self.mm[at : at + _ENTRY.size] = _ENTRY.pack(0, free_head, 0, 0, 0, 0)
                free_head = e
        block_alloc = min(st[4], self.n_blocks)
        block_free = NONE
        for b in range(block_alloc - 1, -1, -1):
            if b not in used_blocks:
                p = self.block_off + BLOCK * b
                self.mm[p : p + 4] = (block_free + 1 if block_free != NONE else 0).to_bytes(4, "little")
                block_free = b
        st = [free_head, n_alloc, len(good), block_free, block_alloc]
        self.set_state(st)
        return good


class _FileTxn:
    """A transaction on a :class:`FileState`: records read once, written back at the end."""

    def __init__(self, store: FileState) -> None:
        self.store = store
        self.users: dict[str, list[Any]] = {}  # user id -> [plain or live parts, decoded flags, touched]
        self.rows_: dict[tuple[str, Any], list[Any]] = {}
        self._scalars: dict[str, Any] | None = None
        self._samples: list[tuple[int, float]] = []

    # -- users ------------------------------------------------------------------------------------
    def _record(self, user_id: str) -> list[Any]:
        rec = self.users.get(user_id)
        if rec is None:
            parts: list[Any] = [None] * N_PARTS
            t = self.store.users_table
            e = t.find(t.key(user_id))
            raw = b""
            if e >= 0:
                guide, body = t.guide(e), t.body(e)
                raw = guide + body
                got = self.store.read_entry(t, e, guide, body)
                if got is not None and got[0] == user_id:  # else another id with the same key
                    parts = got[1]
            rec = self.users[user_id] = [parts, [False] * N_PARTS, False, raw]
        return rec

    def _part(self, rec: list[Any], part: int, user_id: str) -> Any:
        if not rec[1][part] and rec[0][part] is not None:
            rec[0][part] = self.store.decode_part(part, rec[0][part], user_id)
        rec[1][part] = True
        return rec[0][part]

    def user(self, part: int, user_id: str, create: Callable[[], Any] | None = None) -> Any:
        """See :meth:`StateTxn.user`."""
        rec = self._record(user_id)
        value = self._part(rec, part, user_id)
        if value is None and create is not None:
            value = rec[0][part] = create()
        if value is not None:
            rec[2] = True
        return value

    def peek(self, part: int, user_id: str) -> Any:
        """See :meth:`StateTxn.peek`."""
        return self._part(self._record(user_id), part, user_id)

    def discard(self, part: int, user_id: str) -> Any:
        """See :meth:`StateTxn.discard`."""
        rec = self._record(user_id)
        value = self._part(rec, part, user_id)
        rec[0][part] = None
        return value

    # -- aggregates ---------------------------------------------------------------------------------
    def get_row(self, table: str, key: Hashable) -> list[Any] | None:
        """See :meth:`StateTxn.get_row`."""
        cached = self.rows_.get((table, key))
        if cached is not None:
            return cached[0]  # type: ignore[no-any-return]
        t = self.store.agg_table
        e = t.find(self.store.row_key(table, key))
        if e < 0:
            return None
        raw = t.body(e)
        row = list(msgspec.msgpack.decode(raw)[1])
        # The entry number too: the aggregate table only changes under the lock, which the
        # transaction holds until its commit writes the row back there.
        self.rows_[(table, key)] = [row, raw, e]
        return row

    def row(self, table: str, key: Hashable, fresh: Callable[[], list[Any]]) -> list[Any]:
        """See :meth:`StateTxn.row`."""
        found = self.get_row(table, key)
        if found is not None:
            return found
        n = self.store.row_count(table) + sum(1 for (tb, _k), v in self.rows_.items() if tb == table and not v[1])
        if n >= MAX_KEYS:
            key = _pooled({}, key)
            found = self.get_row(table, key)
            if found is not None:
                return found
        row = fresh()
        self.rows_[(table, key)] = [row, b"", -1]
        return row

    @property
    def scalars(self) -> dict[str, Any]:
        """See :meth:`StateTxn.scalars`."""
        if self._scalars is None:
            self._scalars = self.store.read_scalars_cached()
        return self._scalars

    def sample(self, value: float, seen: int, rng: random.Random) -> None:
        """See :meth:`StateTxn.sample`."""
        if seen <= RESERVOIR:
            self._samples.append((seen - 1, value))
        else:
            j = rng.randrange(seen)
            if j < RESERVOIR:
                self._samples.append((j, value))

    # -- commit ------------------------------------------------------------------------------------
    def commit(self) -> None:
        store = self.store
        if self.users:  # a transaction that read no user or row writes no table's state back
            store.commit_users(self.users)
        if self.rows_:
            store.commit_rows(self.rows_)
        if self._scalars is not None:
            store.write_scalars(self._scalars)
        for j, value in self._samples:
            struct.pack_into("<d", store.mm, store.reservoir_off + 8 * j, value)


class _Held:
    """:meth:`FileState.locked` (a class, not a generator: the lock is taken once per episode,
    and a generator's context manager cost more than the lock itself)."""

    __slots__ = ("store", "thread_lock")

    def __init__(self, store: FileState) -> None:
        self.store = store

    def __enter__(self) -> None:
        self.thread_lock = self.store._acquire()

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> None:
        self.store._release(self.thread_lock, clean=kind is None)


class _Transaction:
    """A transaction of a :class:`FileState` under its lock, committed when the block exits
    normally; ``session``: the store's session (see :meth:`FileState.session`), which the
    thread's transactions inside it join (when one is open already, this one is nested in
    it and does nothing)."""

    __slots__ = ("store", "is_session", "thread_lock", "txn")

    def __init__(self, store: FileState, session: bool) -> None:
        self.store = store
        self.is_session = session
        self.txn: _FileTxn | None = None

    def __enter__(self) -> Any:
        store = self.store
        if self.is_session and store._own_session() is not None:
            return None  # nested: the outer session commits
        self.thread_lock = store._acquire()
        txn = self.txn = _FileTxn(store)
        if not self.is_session:
            return txn
        # The thread first: another thread that reads the session set must never pair it
        # with a thread id of its own (from a session of its that ended).
        store._session_thread = threading.get_ident()
        store._session = txn
        return None

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> None:
        txn = self.txn
        if txn is None:
            return
        store = self.store
        clean = False
        try:
            if kind is None:
                txn.commit()
                clean = True
        finally:
            if not clean:
                store._scalars_cache = None  # it may hold changes that were not written
            if self.is_session:
                store._session = None
            store._release(self.thread_lock, clean)


class _Mapped:
    """One facts file mapped into this process: shared by every :class:`FileState` of the
    process on it. The file's lock word holds a pid, so this process's threads take turns on
    a lock of their own before they take it (the processes that create and check the file take
    turns on an ``fcntl`` lock: the word is not there yet)."""

    def __init__(self, path: str, file: Any, capacity: int) -> None:
        self.path = path
        self.file = file
        self.fd: int = file.fileno()
        self.lock = threading.Lock()
        fcntl.lockf(self.fd, fcntl.LOCK_EX, 1, 0)  # creating and checking: one process at a time
        try:
            self._open(capacity)
        finally:
            fcntl.lockf(self.fd, fcntl.LOCK_UN, 1, 0)

    def _layout(self, mm: Any, capacity: int) -> tuple[_Table, _Table, int, int]:
        reservoir_off = HEADER
        users_off = _page_up(reservoir_off + 8 * RESERVOIR)
        agg_entries = len(TABLES) * (MAX_KEYS + 1) + 16
        users = _Table(mm, 0, capacity, _pow2(2 * capacity), capacity, users_off, GUIDE)
        agg = _Table(mm, 1, agg_entries, _pow2(2 * agg_entries), agg_entries, users.end, 0)
        return users, agg, reservoir_off, agg.end

    def _open(self, capacity: int) -> None:
        from .store import StoreError

        size = os.fstat(self.fd).st_size
        fresh = size < HEADER
        if not fresh:
            magic, version, stored = _FIXED.unpack(os.pread(self.fd, _FIXED.size, 0))[:3]
            if magic != MAGIC:
                raise StoreError(f"{self.path}: not a pyfriction facts file; move it aside")
            if version != VERSION:
                raise StoreError(
                    f"{self.path}: a pyfriction facts file of version {version}, this version reads version "
                    f"{VERSION}: move it aside (or delete it: the guidance bookkeeping and insights start afresh; "
                    "the friction state in the store itself is kept)"
                )
            capacity = stored
        users, agg, _r, total = self._layout(None, capacity)
        if fresh:
            try:  # all blocks now, not a SIGBUS on a full disk later (pyfriction.diskspace)
                reserve(self.fd, total, self.path)
            except OSError as exc:
                raise StoreError(f"cannot create the facts file: {exc.strerror}") from None
        elif size < total:
            raise StoreError(f"{self.path}: the facts file is truncated ({size} of {total} bytes); move it aside")
        self.mm = mmap.mmap(self.fd, total)
        self.busy_lock = BusyLock(self.mm, self.fd, _lock_word(self.mm, self.path), _U32, _BUSY_OFF)
        self.capacity = capacity
        self.users_table, self.agg_table, self.reservoir_off, _total = self._layout(self.mm, capacity)
        if fresh:
            _FIXED.pack_into(self.mm, 0, MAGIC, VERSION, capacity, users.entries, users.index_size, users.n_blocks,
                             agg.entries, agg.index_size, agg.n_blocks, 0, 0)  # fmt: skip
            for t in (self.users_table, self.agg_table):
                t.set_state([NONE, 0, 0, NONE, 0])


def _lock_word(mm: mmap.mmap, path: str) -> Any:
    """The facts file's lock (``_core.PidLock`` on the header's lock word)."""
    from .store import StoreError

    if not compiled_twin("FACTS_LAYOUT", (_ENTRY.size, INLINE, BLOCK, BLOCK_BODY, NONE)):
        # Not reached through a tracker (a file:// store needs the core already); a lock that
        # pure Python could take would not exclude the compiled processes on the file.
        raise StoreError(f"{path}: the facts file needs the compiled core (pyfriction._core)")
    from ._core import PidLock

    return PidLock(mm, _LOCK_OFF)


_mapped: weakref.WeakValueDictionary[tuple[int, int], _Mapped] = weakref.WeakValueDictionary()
_open_states: weakref.WeakSet[FileState] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    # Another thread may have held a lock at fork(): the child's copy would never open.
    for m in list(_mapped.values()):
        m.lock = threading.Lock()
    for state in list(_open_states):
        state.rng = random.Random()
        state._session = None  # another thread's: it holds no lock in the child


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class FileState:
    """Per-user parts, aggregates and scalars in a memory-mapped file shared by processes.

    ``capacity`` users (least recently active of a sample evicted first when full, every
    part of them at once); each user's record is 128 bytes: a header, the packed guidance
    record (64 bytes; see :class:`PackedCodec`), and 40 bytes of body; what does not fit
    spills into a side table of 256-byte blocks (one per user on average, sparse on disk
    until used). A file created with another capacity keeps its own.
    """

    shared = True

    def __init__(self, path: str, capacity: int) -> None:
        self.path = path
        self.codecs: dict[int, Codec] = {}
        self.packed: PackedCodec | None = None  # the guidance part's codec, if it packs
        self.rng = random.Random()
        # The open session's transaction (see :meth:`session`) and the thread that opened it.
        self._session: _FileTxn | None = None
        self._session_thread = 0
        self._row_keys: dict[tuple[str, Hashable], int] = {}
        # The scalars this store last wrote, as (bytes, dict): see read_scalars_cached.
        self._scalars_cache: tuple[bytes, dict[str, Any]] | None = None
        # A file object owns the descriptor: closed with the mapping when nothing uses it.
        file = open(os.open(path, os.O_RDWR | os.O_CREAT, 0o644), "r+b", buffering=0)
        st = os.fstat(file.fileno())
        m = _mapped.get((st.st_dev, st.st_ino))
        if m is not None:
            file.close()  # no lock of ours is held on it yet: closing drops nothing
        else:
            try:
                m = _Mapped(path, file, capacity)
            except BaseException:
                file.close()
                raise
            _mapped[(st.st_dev, st.st_ino)] = m
        self.m = m
        self.mm = m.mm
        self.fd = m.fd
        self.capacity = m.capacity
        self.users_table, self.agg_table, self.reservoir_off = m.users_table, m.agg_table, m.reservoir_off
        _open_states.add(self)

    def close(self) -> None:
        """Let go of the file (unmapped and closed once no store of this process uses it)."""
        _open_states.discard(self)

    def sync(self) -> None:
        """Write the file's dirty pages back now and wait (``fdatasync`` of the mapped file,
        the same pages as ``msync``, without holding the GIL as ``mmap.flush`` does)."""
        os.fdatasync(self.fd)

    def codec(self, part: int, codec: Codec) -> None:
        """See :meth:`StateStore.codec`."""
        self.codecs[part] = codec
        if part == GUIDANCE:
            self.packed = codec if isinstance(codec, PackedCodec) else None

    # -- the lock ------------------------------------------------------------------------------------
    def locked(self) -> AbstractContextManager[None]:
        """This process's threads one at a time, then the processes one at a time (the
        header's pid word: a waiter takes it over from a holder that died); a holder that
        died in the middle of a change left its pid in ``busy``: the file is checked and
        rebuilt first."""
        return _Held(self)

    def _acquire(self) -> threading.Lock:
        """Take the lock (see :meth:`locked`); returns the thread lock to give to :meth:`_release`
        (a fork in between gives the child a new one)."""
        thread_lock = self.m.lock
        if self.m.busy_lock.hold(thread_lock):  # a holder died mid-change: check the file first
            try:
                self.repair()
            except BaseException:
                self._release(thread_lock, clean=False)
                raise
        return thread_lock

    def _release(self, thread_lock: threading.Lock, clean: bool) -> None:
        """Let go of the lock; ``clean``: the change is complete (else ``busy`` keeps this
        pid, and the next holder checks the file first, as after a crash)."""
        self.m.busy_lock.let_go(thread_lock, clean)

    def repair(self) -> None:
        """Rebuild both tables from their records and recount the aggregate rows."""
        self.users_table.rebuild()
        counts = [0] * len(TABLES)
        t = self.agg_table
        for e in t.rebuild():
            kind = t.head(e)[4]
            if 1 <= kind <= len(TABLES):
                counts[kind - 1] += 1
        struct.pack_into(f"<{len(TABLES)}I", self.mm, _ROWS_OFF, *counts)
        try:
            self.read_scalars()
        except (msgspec.DecodeError, ValueError):
            self.write_scalars({})

    def transaction(self) -> AbstractContextManager[_FileTxn]:
        """See :meth:`StateStore.transaction`: the changes are written when it exits normally
        (inside a :meth:`session` of this thread: when the session does)."""
        txn = self._own_session()
        if txn is not None:
            # The session's lock is held and its commit writes this block's changes.
            return nullcontext(txn)
        return _Transaction(self, False)

    def session(self) -> AbstractContextManager[None]:
        """See :meth:`StateStore.session`: one transaction for every transaction this thread
        opens inside it, under one hold of the lock, written when the session exits normally
        (nothing of it when it raises, as for one transaction).

        Why this is safe: the lock is held from the first read to the last write, so the other
        processes and threads see the session's changes all at once, as they saw each
        transaction's before (a session is one longer transaction: atomic, never interleaved
        with another's). Within it, each later block reads what the earlier ones changed (the
        records cached by the transaction are the live objects those blocks changed), as it
        would have read them back from the file. A tracker opens one per episode, around
        ``select`` and ``InsightsCollector.episode``: the user's record is then read, decoded,
        encoded and written once instead of once per block, and the scalars likewise; and the
        compiled core one around a batch's queue of episodes and outcomes (``drain``), inside
        which the tracker's per-episode sessions are nested. A nested block that raises is the
        caller's to handle (the tracker logs it and goes on): the outer session still writes
        what every block changed when it exits normally. :meth:`forget` and :meth:`user_ids`
        work inside one too (through its transaction); no other method of the store does."""
        return _Transaction(self, True)

    # -- pieces for the transaction -----------------------------------------------------------------
    def _tick(self) -> int:
        tick: int = (_U32.unpack_from(self.mm, _TICK_OFF)[0] + 1) & 0xFFFFFFFF
        _U32.pack_into(self.mm, _TICK_OFF, tick)
        return tick

    def _packed(self, part: int) -> PackedCodec | None:
        return self.packed if part == GUIDANCE else None

    def decode_part(self, part: int, plain: Any, user_id: str) -> Any:
        """The live object of a part as stored."""
        packed = self._packed(part)
        if packed is not None:
            return packed.unpack(plain[0], plain[1], user_id)
        return self.codecs[part].decode(plain)

    def read_entry(self, t: _Table, e: int, guide: bytes | None = None,
                   body: bytes | None = None) -> tuple[str, list[Any]] | None:  # fmt: skip
        """``(user id, parts as stored)`` of entry ``e`` (None if unreadable): the guidance
        part as ``(record, rest)``, the others plain. ``guide`` and ``body``: the entry's, when
        the caller has read them already (under the same hold of the lock)."""
        try:
            doc = msgspec.msgpack.decode(t.body(e) if body is None else body)
            uid, parts = str(doc[0]), list(doc[1:]) + [None] * (N_PARTS + 1 - len(doc))
        except (msgspec.DecodeError, IndexError, TypeError, ValueError):
            return None
        if guide is None:
            guide = t.guide(e)
        spill = parts[GUIDANCE]
        if guide[0]:
            record = guide[: min(guide[0], GUIDE)] + (bytes(spill[0]) if spill else b"")
            parts[GUIDANCE] = (record, spill[1] if spill else None)
        else:
            parts[GUIDANCE] = None
        return uid, parts

    def _encode_user(self, user_id: str, rec: list[Any]) -> tuple[bytes, bytes]:
        """``(packed guidance record's first GUIDE bytes, body)`` of a user's parts."""
        plain = []
        for p, v in enumerate(rec[0]):
            if not rec[1][p] or v is None:
                plain.append(v)
                continue
            packed = self._packed(p)
            plain.append(packed.pack(v, user_id) if packed is not None else self.codecs[p].encode(v))
        guide = b""
        g = plain[GUIDANCE]
        if g is not None:
            record, rest = g
            guide, spill = record[:GUIDE], record[GUIDE:]
            plain[GUIDANCE] = [spill, rest] if spill or rest is not None else None
        return guide, msgspec.msgpack.encode([user_id, *plain])

    def commit_users(self, users: dict[str, list[Any]]) -> None:
        t = self.users_table
        st = t.state()
        for user_id, rec in users.items():
            key = t.key(user_id)
            e = t.find(key)
            if rec[0].count(None) == N_PARTS:  # every part gone: the record goes
                if e >= 0 and rec[3]:
                    t.delete(e, st)
                continue
            guide, body = self._encode_user(user_id, rec)
            if guide.ljust(GUIDE, b"\0") + body == rec[3] and not rec[2]:
                continue  # read, unchanged, not marked active
            tick = self._tick() if rec[2] or e < 0 else t.head(e)[1]
            if e < 0:
                while st[2] >= t.entries:
                    self._evict(st, keep=key)
                e = t.insert(key, st)
            while not t.write(e, key, tick, USER_KIND, body, st, guide):
                if not self._evict(st, keep=key):  # this user alone exceeds the side table
                    t.delete(e, st)
                    break
        t.set_state(st)

    def _evict(self, st: list[int], keep: int) -> bool:
        """Drop the least recently active of a sample of users; False when none but ``keep``."""
        t = self.users_table
        best, best_age = -1, -1
        now = int.from_bytes(self.mm[_TICK_OFF : _TICK_OFF + 4], "little")
        for _ in range(EVICT_SAMPLE if st[2] > EVICT_SAMPLE else 0):
            e = self.rng.randrange(st[1])
            key, tick = t.head(e)[:2]
            if key and key != keep and (now - tick) & 0xFFFFFFFF > best_age:
                best, best_age = e, (now - tick) & 0xFFFFFFFF
        if best < 0:  # few users (or an unlucky sample): look at all
            for e in t.live(st):
                key, tick = t.head(e)[:2]
                if key != keep and (now - tick) & 0xFFFFFFFF > best_age:
                    best, best_age = e, (now - tick) & 0xFFFFFFFF
        if best < 0:
            return False
        t.delete(best, st)
        return True

    def row_key(self, table: str, key: Hashable) -> int:
        # A pure function of (table, key), worked out twice per row and transaction: memoised
        # (bounded; the keys are few, MAX_KEYS a table once pooled) for the keys the insights
        # use, str and tuples of str or None, where equal keys encode alike (1 == True does not).
        found = self._row_keys.get((table, key))
        if found is None:
            found = self.agg_table.key(table + "\0" + msgspec.json.encode(key).decode())
            if type(key) is str or (type(key) is tuple and all(k is None or type(k) is str for k in key)):
                if len(self._row_keys) >= _ROW_KEYS_MAX:
                    self._row_keys.clear()
                self._row_keys[(table, key)] = found
        return found

    def row_count(self, table: str) -> int:
        at = _ROWS_OFF + 4 * TABLES.index(table)
        return int.from_bytes(self.mm[at : at + 4], "little")

    def commit_rows(self, rows: dict[tuple[str, Any], list[Any]]) -> None:
        t = self.agg_table
        st = t.state()
        for (table, key), (row, raw, e) in rows.items():
            body = msgspec.msgpack.encode([key, row])
            if body == raw:
                continue
            rk = self.row_key(table, key)
            if e < 0:
                e = t.insert(rk, st)
                if e < 0:
                    continue  # cannot happen: the rows are pooled well below the entries
                at = _ROWS_OFF + 4 * TABLES.index(table)
                self.mm[at : at + 4] = (self.row_count(table) + 1).to_bytes(4, "little")
            t.write(e, rk, 0, TABLES.index(table) + 1, body, st)
        t.set_state(st)

    def read_scalars_cached(self) -> dict[str, Any]:
        """The scalars, for a transaction (lock held): the dict this store last committed
        when the file still holds exactly the bytes it wrote then (every episode reads them;
        decoding them was a fifth of the facts file's reads). Any other change, by any
        process, changes the bytes; a transaction that raises drops the dict (its changes
        were not written)."""
        n = int.from_bytes(self.mm[_SCALARS_LEN_OFF : _SCALARS_LEN_OFF + 4], "little")
        raw = self.mm[_SCALARS_OFF : _SCALARS_OFF + min(n, SCALARS_MAX)]
        cached = self._scalars_cache
        if cached is not None and cached[0] == raw:
            return cached[1]
        value = self.read_scalars()
        self._scalars_cache = (raw, value)
        return value

    def read_scalars(self) -> dict[str, Any]:
        n = int.from_bytes(self.mm[_SCALARS_LEN_OFF : _SCALARS_LEN_OFF + 4], "little")
        if not n:
            return {}
        value = msgspec.msgpack.decode(self.mm[_SCALARS_OFF : _SCALARS_OFF + min(n, SCALARS_MAX)])
        if not isinstance(value, dict):
            raise ValueError("scalars are not a map")
        return value

    def write_scalars(self, values: dict[str, Any]) -> None:
        body = msgspec.msgpack.encode(values)
        if len(body) > SCALARS_MAX:
            raise ValueError("too many scalars for the facts file's header")
        # The length after the body: a crash in between leaves the old length, and a torn
        # body fails to decode and is reset by repair.
        self.mm[_SCALARS_OFF : _SCALARS_OFF + len(body)] = body
        self.mm[_SCALARS_LEN_OFF : _SCALARS_LEN_OFF + 4] = len(body).to_bytes(4, "little")
        self._scalars_cache = (body, values)

    # -- reads ----------------------------------------------------------------------------------------
    def count(self, part: int) -> int:
        """See :meth:`StateStore.count` (users holding any part, in the file)."""
        with self.locked():
            return self.users_table.state()[2]

    def users(self, part: int) -> list[tuple[str, Any]]:
        """See :meth:`StateStore.users`."""
        found: list[tuple[int, str, Any]] = []
        with self.locked():
            t = self.users_table
            for e in t.live(t.state()):
                got = self.read_entry(t, e)
                if got is not None and got[1][part] is not None:
                    found.append((t.head(e)[1], got[0], self.decode_part(part, got[1][part], got[0])))
        now = int.from_bytes(self.mm[_TICK_OFF : _TICK_OFF + 4], "little")
        found.sort(key=lambda x: -((now - x[0]) & 0xFFFFFFFF))
        return [(uid, value) for _tick, uid, value in found]

    def rows(self, table: str) -> list[tuple[Any, list[Any]]]:
        """See :meth:`StateStore.rows`."""
        kind = TABLES.index(table) + 1
        out: list[tuple[Any, list[Any]]] = []
        with self.locked():
            t = self.agg_table
            for e in t.live(t.state()):
                if t.head(e)[4] == kind:
                    key, row = msgspec.msgpack.decode(t.body(e))
                    out.append((tuple(key) if isinstance(key, list) else key, row))
        return out

    def reservoir(self) -> list[float]:
        """See :meth:`StateStore.reservoir`."""
        with self.locked():
            n = min(int(self.read_scalars().get("lead_seen", 0)), RESERVOIR)
            return list(struct.unpack_from(f"<{n}d", self.mm, self.reservoir_off))

    def set_reservoir(self, values: list[float]) -> None:
        """Replace the reservoir (a snapshot's; ``lead_seen`` is set by the caller)."""
        values = list(values)[:RESERVOIR]
        with self.locked():
            struct.pack_into(f"<{len(values)}d", self.mm, self.reservoir_off, *values)

    def clear(self, parts: tuple[int, ...], tables: tuple[str, ...]) -> None:
        """See :meth:`StateStore.clear`."""
        with self.locked():
            t = self.users_table
            st = t.state()
            for e in list(t.live(st)):
                got = self.read_entry(t, e)
                if got is None:
                    t.delete(e, st)
                    continue
                uid, plain = got
                for p in parts:
                    plain[p] = None
                key = t.head(e)[0]
                if all(v is None for v in plain):
                    t.delete(e, st)
                else:
                    g = plain[GUIDANCE]
                    guide = b"" if g is None else g[0][:GUIDE]
                    if g is not None:
                        spill = g[0][GUIDE:]
                        plain[GUIDANCE] = [spill, g[1]] if spill or g[1] is not None else None
                    body = msgspec.msgpack.encode([uid, *plain])
                    t.write(e, key, t.head(e)[1], USER_KIND, body, st, guide)
            t.set_state(st)
            a = self.agg_table
            st = a.state()
            kinds = {TABLES.index(tb) + 1 for tb in tables}
            for e in list(a.live(st)):
                if a.head(e)[4] in kinds:
                    a.delete(e, st)
            a.set_state(st)
            for tb in tables:
                at = _ROWS_OFF + 4 * TABLES.index(tb)
                self.mm[at : at + 4] = bytes(4)

    def _own_session(self) -> _FileTxn | None:
        """The session this thread holds, if any."""
        txn = self._session
        return txn if txn is not None and self._session_thread == threading.get_ident() else None

    def forget(self, user_ids: Iterable[str]) -> None:
        """See :meth:`StateStore.forget`. Inside a session of this thread (a batch's episodes,
        delivered in one): through the session's transaction, so that its commit cannot
        write back a user it read before."""
        txn = self._own_session()
        if txn is not None:
            for uid in user_ids:
                rec = txn._record(uid)
                rec[0] = [None] * N_PARTS  # every part gone: the commit deletes the entry
                rec[2] = False
            return
        hash_of = self.users_table.key
        keys = [hash_of(uid) for uid in user_ids]
        if not keys:
            return
        with self.locked():
            t = self.users_table
            st = t.state()
            for key in keys:
                e = t.find(key)
                if e >= 0:
                    t.delete(e, st)
            t.set_state(st)

    def user_ids(self) -> list[str]:
        """See :meth:`StateStore.user_ids` (inside a session of this thread: with the users
        its transaction holds)."""
        txn = self._own_session()
        if txn is not None:  # the lock is this thread's already
            t = self.users_table
            found = dict.fromkeys(self._uid_of(t, e) for e in t.live(t.state()))
            found.update((uid, None) for uid, rec in txn.users.items() if rec[0].count(None) < N_PARTS)
            return list(found)
        with self.locked():
            t = self.users_table
            return [self._uid_of(t, e) for e in t.live(t.state())]

    def _uid_of(self, t: _Table, e: int) -> str:
        got = self.read_entry(t, e)
        return got[0] if got is not None else ""
