# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""The compiled friction engine: ``pyfriction._core.CompiledCore``.

It implements, step for step, the specification written out in ``pyfriction/_reference.py``
(read that first: every function here names the reference function it mirrors). The state is
C structs in flat buffers, with no pointers inside:

* ``slots``: ``capacity`` records of ``Slot`` (``_layout.SLOT_DTYPE``, 224 bytes);
* ``index``: open addressing (linear probing, backward-shift deletion) from the user's 64-bit
  key to ``slot + 1``, sized to a power of two at least twice the capacity;
* ``steps``: per-step duration histograms (``_layout.STEP_DTYPE``), open addressing by step key;
* ``meta``: user and step counts and the free list; ``ctr``: the counters.

Two stores hold these buffers:

* ``memory://`` (default): private memory of this process. Recency for eviction is exact: an
  append-only log of slot numbers (``lru_log``; a slot's live entry is the one at the position
  kept in the slot's ``lock`` word, which only a shared store needs as a lock; older entries
  are skipped), so touching a user is one sequential write to a line already in cache; the
  log is compacted when it reaches 1.5 x capacity.
* ``file://PATH``: one memory-mapped file shared by every process that opens it (``_core/
  pf_sync.h`` has the locks). Each slot has a lock word (the holder's pid); updating a user
  takes only that lock. Inserting and evicting users take the table lock; the step and name
  tables have leaf locks of their own (lock order: table, then slot, then leaf). Recency there
  is each user's last event time, and eviction takes the least recent of a sample of slots
  (as Redis does): exact LRU across processes would put a shared write on every event.

The per-event path allocates nothing but the returned float; Python is only called on rare
paths (a new step name, an activation's target name, an episode, a malformed event), and never
while a slot is held: a callback may re-enter ``observe`` or let another thread in.

One extension, many files (docs/architecture.md lists them): the declarations and the class
here, then by concern, each C function taking the core as its first argument: ``spec.pxi``
(the specification: one kernel per scoring step and per detector, named as the reference's
functions), ``table.pxi`` (slots, index, recency), ``names.pxi``, ``intake.pxi`` (one event),
``batch.pxi`` (columnar batches), ``export.pxi``, ``filestore.pxi``, ``recent.pxi``, ``marks.pxi``,
``facts.pxi``, ``guidecodec.pxi`` and ``writeback.pxi`` (paced write-back of the store's files).
``consts.pxi`` is generated from ``pyfriction/_constants.py``.
"""

cimport cython
from libc.stdint cimport int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free, malloc, qsort, realloc
from libc.string cimport memcpy, memmove, memset, memcmp
from libc.errno cimport errno
from libc.math cimport exp, log, pow, floor, isfinite, INFINITY, NAN
from cpython.dict cimport PyDict_CheckExact, PyDict_Contains, PyDict_Size, PyDict_Clear, PyDict_SetItem, PyDict_Next
from cpython.list cimport PyList_GET_ITEM
from cpython.float cimport PyFloat_AS_DOUBLE, PyFloat_CheckExact
from cpython.long cimport PyLong_CheckExact
from cpython.unicode cimport PyUnicode_CheckExact, PyUnicode_GET_LENGTH
from cpython.object cimport PyObject
from cpython.ref cimport Py_INCREF, Py_XINCREF, Py_XDECREF
from cpython.pythread cimport PyThread_get_thread_ident
from cpython.bytes cimport PyBytes_FromStringAndSize
from posix.time cimport clock_gettime, timespec, CLOCK_REALTIME

import math
import mmap as _mmap
import os
from collections.abc import Mapping
from sys import intern as _intern

import numpy as np

from pyfriction import _constants
from pyfriction import events as _ev
from pyfriction._layout import PARAMS_DTYPE, SLOT_DTYPE, STEP_DTYPE

include "cdefs.pxi"        # C declarations: Python's C API, mmap, threads, locks, prefetches
include "consts.pxi"       # GENERATED from pyfriction/_constants.py
include "structs.pxi"      # the C structs of the state (_layout's dtypes) and of the params
include "batch_types.pxi"  # the rows and queues of a columnar batch


ctypedef struct StallMemo:
    # A step's stall limit (``c_stall_limit``) as of its histogram's ``count``: in private
    # memory the buckets only change with the count, so the limit holds while it does.
    uint32_t step
    uint32_t count
    StepRec* rec        # the step's record (NULL: the entry is empty)
    double limit

DEF STALL_MEMO = 64  # direct-mapped by the step key's low bits

ctypedef struct KeyMemo:
    # The key32 of a step or target str of a dict event (``name_key``). The entry owns a
    # reference to the str, so its address names no other object while it is here.
    PyObject* obj
    uint32_t k32

DEF KEY_BITS = 8
DEF KEY_MEMO = 1 << KEY_BITS


@cython.final  # not subclassed: its C methods are called directly and inlined
cdef class CompiledCore:
    """The compiled engine; same surface and semantics as ``_reference.ReferenceCore``.

    ``store`` is None (private memory) or the path of a shared store file (created if absent).
    The class holds the state and the Python-facing methods; the work is done by the C
    functions of the included files (below), each taking the core as its first argument.
    """

    cdef Slot* slots
    cdef uint32_t* index
    cdef uint32_t* lru_log
    cdef uint32_t capacity, mask
    cdef uint32_t log_size, log_head, log_tail
    cdef StepRec* steps
    cdef uint32_t* step_index
    cdef uint32_t step_mask, max_steps
    cdef Meta* meta
    cdef Meta local_meta
    cdef uint64_t* ctr
    cdef uint64_t local_ctr[N_COUNTERS]
    # shared store
    cdef bint shared
    cdef uint32_t pid
    cdef int proc_index
    cdef Header* hdr
    cdef NameRec* ntab
    cdef char* map_base
    cdef size_t map_len
    cdef object map_file
    cdef public object path
    # the episode of the event being applied, copied while its slot was held
    cdef Slot fired
    cdef double fired_score
    cdef double fired_stall
    cdef Pending* pend
    cdef Py_ssize_t pend_n, pend_head, pend_cap
    cdef int deferring
    cdef public bint batch_queue  # may a batch queue its episodes? (see begin_batch)
    # None, or what ``drain`` delivers a queue of several reports inside (see drain)
    cdef public object deliver_session
    cdef uint32_t known[4096]  # name keys already in ``names`` (direct-mapped; 0: empty)
    cdef StallMemo stall_memo[STALL_MEMO]  # private memory only (see c_stall_limit)
    cdef KeyMemo key_memo[KEY_MEMO]  # see name_key
    cdef unsigned long defer_thread
    cdef double last_te
    cdef bint did_fire
    # What an update left for the caller to do with the GIL (NOTE_*): name a step or a
    # target, file a long user id; and the long ids of users evicted meanwhile.
    cdef int note
    cdef uint64_t* gone
    cdef Py_ssize_t gone_n, gone_cap
    # Users evicted since the last ``drain_evicted`` (key, id length, inline id bytes), for
    # the tracker to drop their facts; ``ev_over``: more than EVICTED_MAX were.
    cdef uint64_t* ev_key
    cdef uint8_t* ev_len
    cdef char* ev_uid
    cdef Py_ssize_t ev_n, ev_cap
    cdef uint64_t ev_total, ev_base  # evictions recorded ever; the number of ev_*[0]
    cdef int64_t ev_limit  # while a queued report is delivered: its ev_mark (else -1)
    cdef bint ev_on, ev_over
    cdef object ev_long  # key -> full text of the long ids among them
    cdef long* ordinary_c  # statuses an api_error weighs less for
    cdef int n_ordinary
    cdef long* refusal_c  # statuses an api_error weighs more for
    cdef int n_refusal
    # Large columnar batches (see Row): rows per chunk, and the batch size from which phase
    # B runs on a thread of its own. While it does (``piping``), every other entry point
    # waits; ``inside`` counts the calls in progress (a call may be suspended in a callback,
    # and then no chunk may run without the GIL).
    cdef public Py_ssize_t pipe_rows, pipe_min
    cdef bint piping
    cdef pthread_t pipe_tid
    cdef unsigned long pipe_thread
    cdef int inside
    cdef readonly uint64_t pipe_waits  # calls that waited for another thread's chunk
    cdef int pipe_waiters  # threads waiting now: the batch lets them in between its chunks
    cdef bint has_ttl, has_excl_step, has_excl_target
    cdef double idle_ttl
    cdef double ts_min, ts_ahead, ts_hi  # the plausible event times (events.TsRange)
    cdef object ts_range
    cdef Params P  # the detector and scoring parameters (Rules.params)
    cdef object clock, names, on_episode, on_outcome, type_names, type_codes
    cdef object excl_step, excl_target, ordinary, long_ids, rules
    cdef public object names_view
    cdef object __weakref__

    engine = "compiled"

    def __cinit__(self):
        self.slots = NULL
        self.index = NULL
        self.lru_log = NULL
        self.steps = NULL
        self.step_index = NULL
        self.map_base = NULL
        self.map_len = 0
        self.shared = False
        self.pend = NULL
        self.pend_n = self.pend_head = self.pend_cap = 0
        self.deferring = 0
        self.batch_queue = True
        self.deliver_session = None
        self.ev_limit = -1
        memset(self.known, 0, sizeof(self.known))
        memset(self.stall_memo, 0, sizeof(self.stall_memo))
        memset(self.key_memo, 0, sizeof(self.key_memo))

    def __init__(self, rules, capacity, idle_ttl, clock, names, on_episode, on_outcome,
                 store=None, config_json=b""):
        cfg = rules.config
        cdef uint32_t size = 1
        cdef bytes raw
        capacity = int(capacity)
        if capacity < 1 or capacity > (1 << 30):
            raise ValueError("capacity must be in [1, 2**30]")
        self.capacity = capacity
        while size < 2 * self.capacity:
            size <<= 1
        self.mask = size - 1
        self.max_steps = cfg.max_steps
        size = 1
        while size < 2 * self.max_steps:
            size <<= 1
        self.step_mask = size - 1
        self.rules = rules
        self.clock = clock
        self.names = names
        self.names_view = None
        self.on_episode = on_episode
        self.on_outcome = on_outcome
        self.type_names = _ev.TYPE_NAMES
        self.type_codes = rules.type_codes
        self.pipe_rows = PIPE_ROWS
        self.pipe_min = 2 * PIPE_ROWS
        self.ordinary = rules.ordinary_statuses
        self.ordinary_c = <long*>calloc(len(self.ordinary) + 1, sizeof(long))
        if self.ordinary_c == NULL:
            raise MemoryError()
        for st in self.ordinary:
            self.ordinary_c[self.n_ordinary] = st
            self.n_ordinary += 1
        self.refusal_c = <long*>calloc(len(rules.refusal_statuses) + 1, sizeof(long))
        if self.refusal_c == NULL:
            raise MemoryError()
        for st in rules.refusal_statuses:
            self.refusal_c[self.n_refusal] = st
            self.n_refusal += 1
        self.excl_step = rules.excluded_step
        self.excl_target = rules.excluded_target
        self.has_excl_step = bool(rules.excluded_step)
        self.has_excl_target = bool(rules.excluded_target)
        self.long_ids = {}
        self.has_ttl = idle_ttl is not None
        self.idle_ttl = float(idle_ttl) if idle_ttl is not None else 0.0
        self.ts_range = rules.ts_range
        self.ts_min = self.ts_range.ts_min
        self.ts_ahead = self.ts_range.max_ahead
        self.ts_hi = -INFINITY
        params = rules.params
        if not (isinstance(params, np.ndarray) and params.dtype == PARAMS_DTYPE and params.shape == (1,)):
            raise TypeError("rules.params must be one PARAMS_DTYPE record")
        raw = params.tobytes()
        memcpy(&self.P, <const char*>raw, sizeof(Params))
        self.pid = os.getpid()
        if store is None:
            alloc_memory(self)
        else:
            open_file(self, os.fspath(store), bytes(config_json))

    def __dealloc__(self):
        cdef Py_ssize_t i
        for i in range(KEY_MEMO):
            Py_XDECREF(self.key_memo[i].obj)
        for i in range(self.pend_head, self.pend_n):
            Py_XDECREF(self.pend[i].uid)
            Py_XDECREF(self.pend[i].account)
            Py_XDECREF(self.pend[i].step)
            Py_XDECREF(self.pend[i].target)
        free(self.pend)
        free(self.gone)
        free(self.ev_key)
        free(self.ev_len)
        free(self.ev_uid)
        free(self.ordinary_c)
        free(self.refusal_c)
        if self.shared:
            if self.map_base != NULL:
                munmap(self.map_base, self.map_len)
            return
        big_free(self.slots, self.capacity * sizeof(Slot))
        big_free(self.index, (self.mask + 1) * sizeof(uint32_t))
        big_free(self.lru_log, self.log_size * sizeof(uint32_t))
        free(self.steps)
        free(self.step_index)

    # -- the shared store file ---------------------------------------------------------------
    def after_fork(self):
        """In a child process: a counter block of its own (the mapping itself is inherited)."""
        # A chunk's thread, if the fork caught one running, does not exist in the child.
        self.piping = False
        self.pipe_thread = 0
        if self.shared and self.ctr != self.local_ctr:  # a closed core stays detached
            self.pid = os.getpid()
            attach(self)

    def sync(self, bint wait=False):
        """Write the shared store's dirty pages back to the file and wait (``msync``,
        ``MS_SYNC``), without the GIL: a million users take hundreds of milliseconds, and
        another thread of the process must not stand still meanwhile. ``wait=False`` is
        ``MS_ASYNC``, which does nothing on Linux: the tracker's periodic and explicit
        write-backs are :mod:`pyfriction.writeback`'s paced passes, not this."""
        cdef int flags = MS_SYNC if wait else MS_ASYNC
        if self.shared and self.map_base != NULL:
            with nogil:
                msync(self.map_base, self.map_len, flags)

    def close(self):
        """Detach from the shared store: counters kept, file clean if we were the last."""
        cdef int i, others = 0
        if not self.shared or self.ctr == self.local_ctr:
            return
        if pf_lock(&self.meta.table_lock, self.pid):
            repair(self)
        retire(self, self.proc_index)  # our own block only: other trackers here keep theirs
        for i in range(N_PROCS):
            if self.hdr.procs[i].pid != 0 and not pf_pid_dead(self.hdr.procs[i].pid):
                others += 1
        # Further events of this object count locally; the store's totals are final.
        memset(self.local_ctr, 0, sizeof(self.local_ctr))
        self.ctr = self.local_ctr
        pf_unlock(&self.meta.table_lock)
        msync(self.map_base, self.map_len, MS_SYNC)
        if others == 0:
            self.meta.dirty = 0
            msync(self.map_base, HEADER_SIZE, MS_SYNC)

    @property
    def shared_store(self):
        return self.shared

    # -- counters -----------------------------------------------------------------------------
    @property
    def counters(self):
        cdef int i, c
        enter(self)
        try:
            totals = [self.ctr[c] for c in range(N_COUNTERS)]
            if self.shared:
                for c in range(N_COUNTERS):
                    totals[c] = self.hdr.retired[c]
                    for i in range(N_PROCS):
                        if self.hdr.procs[i].pid != 0:
                            totals[c] += self.hdr.procs[i].ctr[c]
                    if self.ctr == self.local_ctr:
                        totals[c] += self.local_ctr[c]
            return dict(zip(COUNTER_NAMES, totals))
        finally:
            leave(self)

    def set_counters(self, counters):
        cdef int c
        enter(self)
        try:
            current = self.counters
            for c, name in enumerate(COUNTER_NAMES):
                # In a shared store other processes' counts stay theirs: adjust our own block.
                self.ctr[c] += int(counters.get(name, current[name])) - current[name]
        finally:
            leave(self)

    def __len__(self):
        enter(self)
        try:
            return self.meta.n_users
        finally:
            leave(self)

    # -- the table ----------------------------------------------------------------------------
    # -- names ------------------------------------------------------------------------------
    # -- steps --------------------------------------------------------------------------------
    def stall_limit(self, step):
        enter(self)
        try:
            return c_stall_limit(self, step)
        finally:
            leave(self)

    def stall_need(self, step):
        enter(self)
        try:
            return c_stall_need(self, step)
        finally:
            leave(self)

    # -- the specification (reference: ReferenceCore._apply and helpers) ------------------------
    # -- event intake -------------------------------------------------------------------------
    def observe(self, event):
        """Score one event (see ``Tracker.observe``)."""
        enter(self)
        try:
            if PyDict_CheckExact(event):
                return observe_dict(self, <dict>event)
            return observe_slow(self, event)
        finally:
            leave(self)

    def observe_many(self, events):
        """Score a batch (see ``Tracker.observe_many``)."""
        if isinstance(events, Mapping):
            return self.observe_columns(events)
        out = []
        cdef bint began = False
        enter(self)
        try:
            began = begin_batch(self)
            for event in events:
                try:
                    if PyDict_CheckExact(event):
                        out.append(observe_dict(self, <dict>event))
                    else:
                        out.append(observe_slow(self, event))
                except _ev.InvalidEvent:
                    out.append(NAN)
                if len(out) % DRAIN_EVERY == 0:
                    drain(self)
        finally:
            try:
                end_batch(self, began)
            finally:
                leave(self)
        return np.array(out, dtype=np.float64)

    def observe_columns(self, columns):
        """Score a columnar batch (see ``Tracker.observe_many``)."""
        cdef Py_ssize_t n, i
        cdef double[::1] out_v, ts_v
        cdef long long[::1] status_v, results_v
        cdef bint began
        cdef Cols c
        cdef double* out_p
        cdef KindMemo kmemo[KIND_MEMO]
        cdef TextMemo tmemo[TEXT_MEMO]
        n, cols = _ev.columns_of(columns, keep_ts_array=True)
        out = np.empty(n, dtype=np.float64)
        out_v = out
        out_p = &out_v[0] if n else NULL
        if cols.get("properties") is not None:
            # Free-form properties: the general row path (rare in columnar batches).
            rows = list(_ev.columns_to_rows(cols, 0, n))
            began = False
            enter(self)
            try:
                began = begin_batch(self)
                for i in range(n):
                    try:
                        out_v[i] = observe_slow(self, rows[i])
                    except _ev.InvalidEvent:
                        out_v[i] = NAN
                    if (i + 1) % DRAIN_EVERY == 0:
                        drain(self)
            finally:
                try:
                    end_batch(self, began)
                finally:
                    leave(self)
            return out
        # Batches repeat the same few type, step and target objects: what was worked out for
        # one (its code, its key, whether it is valid text) is remembered by address. The
        # batch's lists keep every one of them alive for the whole call, so no address is
        # reused meanwhile; the memos live on this call's stack.
        memset(kmemo, 0, sizeof(kmemo))
        memset(tmemo, 0, sizeof(tmemo))
        memset(&c, 0, sizeof(Cols))
        c.kmemo = kmemo
        c.tmemo = tmemo
        c.uid = <PyObject*>cols["user_id"]
        c.kind = <PyObject*>cols["type"]
        for name in ("step", "target", "account_id"):
            col = cols.get(name)
            if col is not None and type(col) is not list:
                raise TypeError(f"column {name} must be a list here")
        if cols.get("step") is not None:
            c.step = <PyObject*>cols["step"]
        if cols.get("target") is not None:
            c.target = <PyObject*>cols["target"]
        if cols.get("account_id") is not None:
            c.account = <PyObject*>cols["account_id"]
        ts_c = cols.get("ts")
        if isinstance(ts_c, np.ndarray):
            ts_v = ts_c
            if n:
                c.ts = &ts_v[0]
        elif ts_c is not None:
            c.ts_list = <PyObject*>ts_c
        if cols.get("status") is not None:
            status_v = np.ascontiguousarray(cols["status"], dtype=np.int64)
            if n:
                c.status = &status_v[0]
        if cols.get("results") is not None:
            results_v = np.ascontiguousarray(cols["results"], dtype=np.int64)
            if n:
                c.results = &results_v[0]
        enter(self)
        try:
            if (n >= self.pipe_min and self.batch_queue and not self.shared
                    and not self.has_excl_step and not self.has_excl_target):
                run_pipelined(self, &c, cols, n, out_p)
            else:
                run_serial(self, &c, cols, n, out_p)
        finally:
            leave(self)
        return out

    # -- columnar batches (see Row) --------------------------------------------------------------
    def release_tables(self):
        """Unmap the private tables; the core is unusable afterwards. For a forked child that
        only writes a snapshot it has copied: pages it still shares with its parent make every
        write of the parent a page copy, for as long as they are shared."""
        if self.shared or self.slots == NULL:
            return
        big_free(self.slots, self.capacity * sizeof(Slot))
        big_free(self.index, (self.mask + 1) * sizeof(uint32_t))
        big_free(self.lru_log, self.log_size * sizeof(uint32_t))
        self.slots = NULL
        self.index = NULL
        self.lru_log = NULL

    # -- reads --------------------------------------------------------------------------------
    def score(self, user_id, at=None):
        cdef uint32_t s
        cdef Slot* u
        cdef double total = 0.0, t, p_ts
        cdef int i
        cdef uint64_t key = key64(user_id)
        enter(self)
        try:
            s = hold(self, key)
            if s == NONE32:
                return 0.0
            u = &self.slots[s]
            for i in range(NDET):
                total += u.pressure[i]
            p_ts = u.last_ts + <double>u.p_off
            release(self, s)
            if at is not None:
                t = at
                if t > p_ts:
                    total *= exp(-(t - p_ts) * self.P.decay_rate)
            return 1.0 - exp(-total)
        finally:
            leave(self)

    def track_evictions(self, bint on=True):
        """Remember the users evicted from now on (up to EVICTED_MAX between two
        :meth:`drain_evicted`); off by default."""
        if on and self.ev_long is None:
            self.ev_long = {}  # the buffer itself grows as evictions come (ev_room)
        self.ev_n = 0
        self.ev_over = False
        self.ev_limit = -1
        self.ev_base = self.ev_total
        self.ev_on = on

    def drain_evicted(self, bint unless_present=False):
        """The ids of the users evicted since the last call (oldest first), or None when more
        were than it keeps (EVICTED_MAX): the caller then checks whom it still knows.
        ``unless_present``: leave out those back in the table (a shared store: another
        process may have brought them back). While a batch's queued episode or outcome is
        delivered, only the evictions before it fired (the reference engine's order). While
        a batch's chunk runs on its own thread (a delivery of that batch calls this), the
        chunk is finished first if any of those evictions is still to drain."""
        cdef Py_ssize_t i, take
        cdef uint64_t key
        if not self.ev_on:
            return []
        if self.piping:
            # The chunk's thread appends to (and may move) the ev_* buffers. Answering [] and
            # leaving the evictions to the next call is not the same: the caller forgets the
            # facts of these users *now*, before the report adds facts, as the reference does
            # after each event. Late, the forget would drop the facts of a user evicted and
            # back since (or the facts' own LRU would drop someone else first).
            if (self.ev_limit >= 0 and self.ev_limit <= <int64_t>self.ev_base
                    and self.pipe_thread == PyThread_get_thread_ident()):
                return []  # all evicted before this report are drained: the chunk runs on
            wait_pipe(self)
        if self.gone_n:
            forget_gone(self)  # files the long ids' text in ev_long
        if self.ev_over:
            self.ev_n = 0
            self.ev_base = self.ev_total
            self.ev_over = False
            self.ev_long.clear()
            return None
        take = self.ev_n
        if self.ev_limit >= 0 and <int64_t>(self.ev_limit - <int64_t>self.ev_base) < take:
            take = max(0, <Py_ssize_t>(self.ev_limit - <int64_t>self.ev_base))
        out = []
        for i in range(take):
            key = self.ev_key[i]
            if self.ev_len[i] == UID_LONG:
                # get, not pop: a long id evicted, back and evicted again has one text here
                # for its two entries. Popped, the second found none and the whole drain
                # became None ("too many"): the caller's fallback then kept the facts of
                # every user evicted and back since (the reference drops them). Cleared below.
                uid = self.ev_long.get(key)
                if uid is None:
                    out = None
                    continue
            else:
                uid = self.ev_uid[i * UIDB : i * UIDB + self.ev_len[i]].decode("utf-8", "surrogatepass")
            if out is not None and not (unless_present and find(self, key) != 0):
                out.append(uid)
        if take:
            self.ev_n -= take
            self.ev_base += take
            memmove(self.ev_key, self.ev_key + take, self.ev_n * sizeof(uint64_t))
            memmove(self.ev_len, self.ev_len + take, self.ev_n)
            memmove(self.ev_uid, self.ev_uid + take * UIDB, self.ev_n * UIDB)
        if self.ev_n == 0:
            self.ev_long.clear()
        return out

    def has(self, user_id):
        """True when ``user_id`` is in the table."""
        cdef uint32_t s
        enter(self)
        try:
            s = hold(self, key64(user_id))
            if s == NONE32:
                return False
            release(self, s)
            return True
        finally:
            leave(self)

    def record(self, user_id):
        cdef uint32_t s
        cdef Slot copy
        cdef uint64_t key = key64(user_id)
        enter(self)
        try:
            s = hold(self, key)
            if s == NONE32:
                return None
            memcpy(&copy, &self.slots[s], sizeof(Slot))
            release(self, s)
            copy.lock = 0
            return record_of(self, &copy)
        finally:
            leave(self)

    def tick(self, double now):
        """Reference: ``tick``: idle eviction, then decay, stall and rearm for every user,
        least recently active first."""
        cdef uint64_t before
        cdef uint32_t s, i, n = 0
        cdef Slot* u
        cdef double te
        cdef TickKey* order = NULL
        enter(self)
        try:
            before = self.ctr[C_EPISODES]
            if self.has_ttl:
                if self.shared:
                    sweep_idle(self, now)
                else:
                    evict_idle(self, now)
                forget_gone(self)
            # The order is taken first: episodes call Python, which may re-enter observe.
            order = tick_order(self, &n)
            for i in range(n):
                if i + TICK_PREFETCH < n:  # the slots are in no order in memory: fetch ahead
                    PF_PREFETCH(&self.slots[order[i + TICK_PREFETCH].slot])
                s = hold_at(self, order[i].key, order[i].slot)
                if s == NONE32:
                    continue
                u = &self.slots[s]
                decay(&self.P, u, u.last_ts + <double>u.p_off, now)
                te = now if now > u.last_ts else u.last_ts
                check_stall(self, u, te)
                check_episode(self, u, te, 0)
                release(self, s)
                emit(self, None, None, None, None)
            return self.ctr[C_EPISODES] - before
        finally:
            free(order)
            leave(self)

    # -- snapshots ----------------------------------------------------------------------------
    def export(self):
        """Slots least recently active first, step histograms, and ids too long to inline."""
        cdef uint32_t n = 0
        cdef unsigned char[::1] raw
        enter(self)
        try:
            if self.shared:
                return export_shared(self)
            slots = np.empty(self.meta.n_users, dtype=SLOT_DTYPE)  # every record is written below
            if self.meta.n_users:
                raw = slots.view(np.uint8).reshape(-1)
                gather(self, &raw[0], self.log_head, self.meta.n_users, &n)
            steps = steps_array(self)
            return slots, steps, dict(self.long_ids)
        finally:
            leave(self)

    def export_meta(self):
        """What :meth:`export` gives besides the slots: ``(steps, long_ids, n_users)``."""
        enter(self)
        try:
            return steps_array(self), dict(self.long_ids), self.meta.n_users
        finally:
            leave(self)

    def export_chunk(self, out, uint32_t start):
        """The slots of :meth:`export`, in its order, a chunk at a time: fills ``out`` (a
        ``SLOT_DTYPE`` array) from cursor ``start`` (0 at first) and returns ``(count, next
        cursor)``; count 0 once all are out. No copy of the whole table is made: for a
        forked child writing a snapshot, whose tables do not change between calls (nor may
        they: the cursor is a position in the recency log). A shared store has no such
        order: ``export()`` there."""
        cdef uint32_t p, n = 0, cap
        cdef unsigned char[::1] raw
        if self.shared:
            raise ValueError("a tracker on a shared store exports with export(), not in chunks")
        if not isinstance(out, np.ndarray) or out.dtype != SLOT_DTYPE or not out.flags.c_contiguous \
                or not out.flags.writeable or out.ndim != 1:
            raise TypeError("export_chunk needs a writeable, contiguous 1-d SLOT_DTYPE array")
        cap = <uint32_t>min(len(out), 0xFFFFFFFF)
        if cap == 0:
            raise ValueError("export_chunk needs room for at least one slot")
        raw = out.view(np.uint8)
        enter(self)
        try:
            p = gather(self, &raw[0], start, cap, &n)
            return n, p
        finally:
            leave(self)

    def load(self, slots, steps, long_ids):
        """Replace the state with an export (of either engine); keeps the newest when full."""
        cdef Py_ssize_t i, n = len(slots), skip
        cdef uint32_t s, j
        cdef const unsigned char[::1] raw
        cdef const unsigned char[::1] step_raw
        cdef Slot* u
        cdef StepRec* r
        enter(self)
        try:
            slots = np.ascontiguousarray(slots, dtype=SLOT_DTYPE)
            steps = np.ascontiguousarray(steps, dtype=STEP_DTYPE)
            if self.shared and pf_lock(&self.meta.table_lock, self.pid):
                pass  # everything is rebuilt below anyway
            try:
                memset(self.index, 0, (self.mask + 1) * sizeof(uint32_t))
                memset(self.step_index, 0, (self.step_mask + 1) * sizeof(uint32_t))
                memset(self.stall_memo, 0, sizeof(self.stall_memo))  # the records are rewritten
                # Private slots are not cleared: insert() clears each one it hands out, and
                # touching all of them would make the whole table resident for a few users.
                if self.shared:
                    memset(self.slots, 0, self.meta.n_alloc * sizeof(Slot))
                self.meta.n_users = 0
                self.meta.n_alloc = 0
                self.meta.n_steps = 0
                self.meta.free_head = NONE32
                self.log_head = self.log_tail = 0
                self.long_ids = {}
                skip = n - self.capacity if n > self.capacity else 0
                self.ctr[C_EVICTIONS] += skip
                if n:
                    raw = slots.view(np.uint8).reshape(-1)
                    for i in range(skip, n):
                        s = self.meta.n_alloc
                        self.meta.n_alloc += 1
                        u = &self.slots[s]
                        memcpy(u, &raw[i * sizeof(Slot)], sizeof(Slot))
                        u.lock = 0
                        if u.key == 0:
                            raise ValueError("snapshot holds a user with key 0")
                        j = <uint32_t>u.key & self.mask
                        while self.index[j] != 0:
                            if self.slots[self.index[j] - 1].key == u.key:
                                raise ValueError("snapshot holds a user twice")
                            j = (j + 1) & self.mask
                        self.index[j] = s + 1
                        if u.uid_len == UID_LONG:
                            self.long_ids[u.key] = long_ids[u.key]
                        self.meta.n_users += 1
                        touch(self, s)
                if len(steps):
                    step_raw = steps.view(np.uint8).reshape(-1)
                    for i in range(min(len(steps), self.max_steps)):
                        r = step_rec(self, (<StepRec*>&step_raw[i * sizeof(StepRec)]).key, True)
                        memcpy(r, &step_raw[i * sizeof(StepRec)], sizeof(StepRec))
            finally:
                if self.shared:
                    pf_unlock(&self.meta.table_lock)
        finally:
            leave(self)

    def info(self):
        """What ``pyfriction store inspect`` prints, read from this core's state."""
        cdef uint32_t s, live = 0, i
        cdef double oldest = INFINITY, newest = -INFINITY
        enter(self)
        try:
            for s in range(self.meta.n_alloc):
                if self.slots[s].key != 0:
                    if self.slots[s].last_ts < oldest:
                        oldest = self.slots[s].last_ts
                    if self.slots[s].last_ts > newest:
                        newest = self.slots[s].last_ts
            procs = []
            if self.shared:
                for i in range(N_PROCS):
                    if self.hdr.procs[i].pid != 0 and not pf_pid_dead(self.hdr.procs[i].pid):
                        procs.append(self.hdr.procs[i].pid)
            return {
                "capacity": self.capacity,
                "users": self.meta.n_users,
                "fill": self.meta.n_users / <double>self.capacity,
                "steps": self.meta.n_steps,
                "names": self.meta.n_names if self.shared else len(self.names),
                "oldest_activity": oldest if self.meta.n_users else None,
                "newest_activity": newest if self.meta.n_users else None,
                "processes": procs,
                "counters": self.counters,
                "bytes": self.map_len if self.shared else None,
            }
        finally:
            leave(self)



include "hashing.pxi"      # key64/key32, histogram buckets
include "table.pxi"        # slots, index, recency, eviction
include "names.pxi"        # names and step histograms
include "spec.pxi"         # THE SPECIFICATION: detectors and scoring
include "intake.pxi"       # one event: validate, apply, report
include "batch.pxi"        # columnar batches (pipelined)
include "export.pxi"       # reads and snapshots
include "filestore.pxi"    # the shared store file
include "recent.pxi"       # RecentIds (pyfriction.recent)
include "marks.pxi"        # the Redis store's keys and event marks (pyfriction._marks)
include "facts.pxi"        # the facts file's tables (pyfriction.userstate._Table)
include "pidlock.pxi"      # the facts file's lock (PidLock)
include "writeback.pxi"    # one step of the paced write-back of the store's files
include "guidecodec.pxi"   # the facts file's guidance record (pyfriction.guidance._UserCodec)
include "jsondepth.pxi"    # the sidecar's JSON depth check (pyfriction_server.limits)
