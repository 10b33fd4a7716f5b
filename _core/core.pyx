# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""The compiled friction engine: ``pyfriction._core.CompiledCore``.

It implements, step for step, the specification written out in ``pyfriction/_reference.py``
(read that first: every function here names the reference function it mirrors). The state is
C structs in flat buffers, with no pointers inside:

* ``slots``: ``capacity`` records of ``Slot`` (``_layout.SLOT_DTYPE``, 232 bytes);
* ``index``: open addressing (linear probing, backward-shift deletion) from the user's 64-bit
  key to ``slot + 1``, sized to a power of two at least twice the capacity;
* ``lru_log`` / ``lru_pos``: recency as an append-only log of slot numbers; a slot's live entry
  is the one at ``lru_pos[slot]``, older entries are skipped when met. Touching a user is one
  sequential write, instead of the two random writes of a linked list; the log is compacted
  when it reaches 1.5 x capacity;
* ``steps``: per-step duration histograms (``_layout.STEP_DTYPE``), open addressing by step key.

The per-event path allocates nothing but the returned float; Python is only called on rare
paths (a new step name, an activation's target name, an episode, a malformed event).
"""

from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free
from libc.string cimport memcpy, memset
from libc.math cimport exp, log, pow, floor, INFINITY, NAN
from cpython.dict cimport PyDict_GetItem, PyDict_CheckExact, PyDict_Contains, PyDict_Size, PyDict_Clear, PyDict_SetItem
from cpython.list cimport PyList_GET_ITEM, PyList_CheckExact, PyList_GET_SIZE
from cpython.float cimport PyFloat_AS_DOUBLE, PyFloat_CheckExact
from cpython.long cimport PyLong_CheckExact, PyLong_AsLongLong
from cpython.unicode cimport PyUnicode_CheckExact, PyUnicode_GET_LENGTH
from cpython.object cimport PyObject
from cpython.bytes cimport PyBytes_FromStringAndSize
from cpython.mem cimport PyMem_Malloc, PyMem_Free

import math
from collections.abc import Mapping

import numpy as np

from pyfriction import events as _ev
from pyfriction._layout import SLOT_DTYPE, STEP_DTYPE, UID_BYTES as _UIDB, N_DETECTORS as _NDET
from pyfriction._layout import N_BUCKETS as _NB, REBASE_AFTER as _REBASE
from pyfriction.config import RING_SIZE as _RING
from pyfriction._reference import columns_of
from pyfriction._rules import CACHE_MAX as _CACHE_MAX

cdef extern from "Python.h":
    const char* PyUnicode_AsUTF8AndSize(object, Py_ssize_t*)
    PyObject* PyDict_GetItemWithError(object, object) except? NULL
    long long PyLong_AsLongLongAndOverflow(object, int*) except? -1
    void PyErr_Clear()
    double PyLong_AsDouble(object)
    PyObject* PyErr_Occurred()
    int Py_IS_NAN(double)
    int Py_IS_FINITE(double)

cdef extern from "sys/mman.h":
    void* mmap(void* addr, size_t length, int prot, int flags, int fd, long offset) nogil
    int munmap(void* addr, size_t length) nogil
    int madvise(void* addr, size_t length, int advice) nogil
    int PROT_READ, PROT_WRITE, MAP_PRIVATE, MAP_ANONYMOUS, MADV_HUGEPAGE
    void* MAP_FAILED

cdef extern from *:
    """
    #if defined(__GNUC__) || defined(__clang__)
    #define PF_PREFETCH(p) __builtin_prefetch((const void*)(p), 1, 3)
    #else
    #define PF_PREFETCH(p) ((void)0)
    #endif
    """
    void PF_PREFETCH(const void*) nogil

# --- the layout (must match pyfriction/_layout.py; checked at import) -----------------------
DEF RING = 4
DEF NDET = 9
DEF UIDB = 46
DEF NB = 24
DEF UID_LONG = 255
DEF MAX_TEXT = 1024
DEF MAX_CUSTOM = 256
DEF LOOKAHEAD = 16
DEF NAMES_MAX = 65536
DEF REBASE = 16384.0
DEF I31 = 0x7FFFFFFF

# detectors
DEF D_RAGE = 0
DEF D_DEAD = 1
DEF D_ERR = 2
DEF D_FAIL = 3
DEF D_UTURN = 4
DEF D_SEARCH = 5
DEF D_HELP = 6
DEF D_STALL = 7
DEF D_CUSTOM = 8

# flags
DEF F_IN_EPISODE = 1
DEF F_HAS_EPISODE = 2
DEF F_RAGE = 4
DEF F_DEAD = 8
DEF F_ERR = 16
DEF F_FAIL = 32
DEF F_UTURN = 64
DEF F_SEARCH = 128
DEF F_STALL = 256
DEF LATCHES = 4 | 8 | 16 | 32 | 64 | 128

# event types (pyfriction/events.py)
DEF T_UNKNOWN = 0
DEF T_PAGE = 1
DEF T_CLICK = 2
DEF T_DEAD = 3
DEF T_ERROR = 4
DEF T_API_ERROR = 5
DEF T_FORM_ERROR = 6
DEF T_SEARCH = 7
DEF T_HELP = 8
DEF T_CONTACT = 9
DEF T_SUCCESS = 10
DEF T_TICKET = 11
DEF T_GUIDANCE_DISMISSED = 14
DEF T_CUSTOM = 32

DEF NONE32 = 0xFFFFFFFF
DEF U32MAX = 0xFFFFFFFF

ctypedef struct Slot:
    uint64_t key
    double last_ts
    double p_ts
    double episode_ts
    double step_ts
    double base
    float click_r[RING]
    float dead_r[RING]
    float err_r[RING]
    float uturn_t
    float fail_t
    float search_t
    float pressure[NDET]
    float episode_score
    uint32_t events
    uint32_t episodes
    uint32_t step
    uint32_t prev_step
    uint32_t click_target
    uint32_t dead_target
    uint32_t fail_target
    uint16_t flags
    uint8_t click_n
    uint8_t dead_n
    uint8_t err_n
    uint8_t fail_n
    uint8_t uturn_n
    uint8_t search_n
    uint8_t custom
    uint8_t uid_len
    char uid[UIDB]

ctypedef struct StepRec:
    uint32_t key
    uint32_t count
    uint32_t buckets[NB]


def layout():
    """``(sizeof(Slot), {field: offset}, sizeof(StepRec))``: checked against ``_layout``."""
    cdef Slot s
    cdef StepRec r
    cdef char* b = <char*>&s
    offsets = {
        "key": <char*>&s.key - b, "last_ts": <char*>&s.last_ts - b, "p_ts": <char*>&s.p_ts - b,
        "episode_ts": <char*>&s.episode_ts - b, "step_ts": <char*>&s.step_ts - b,
        "base": <char*>&s.base - b, "click_r": <char*>&s.click_r[0] - b,
        "dead_r": <char*>&s.dead_r[0] - b, "err_r": <char*>&s.err_r[0] - b,
        "uturn_t": <char*>&s.uturn_t - b, "fail_t": <char*>&s.fail_t - b,
        "search_t": <char*>&s.search_t - b, "pressure": <char*>&s.pressure[0] - b,
        "episode_score": <char*>&s.episode_score - b, "events": <char*>&s.events - b,
        "episodes": <char*>&s.episodes - b, "step": <char*>&s.step - b,
        "prev_step": <char*>&s.prev_step - b, "click_target": <char*>&s.click_target - b,
        "dead_target": <char*>&s.dead_target - b, "fail_target": <char*>&s.fail_target - b,
        "flags": <char*>&s.flags - b, "click_n": <char*>&s.click_n - b,
        "dead_n": <char*>&s.dead_n - b, "err_n": <char*>&s.err_n - b,
        "fail_n": <char*>&s.fail_n - b, "uturn_n": <char*>&s.uturn_n - b,
        "search_n": <char*>&s.search_n - b, "custom": <char*>&s.custom - b,
        "uid_len": <char*>&s.uid_len - b, "uid": <char*>&s.uid[0] - b,
    }
    return sizeof(Slot), offsets, sizeof(StepRec)


def _check_layout():
    size, offsets, step_size = layout()
    if size != SLOT_DTYPE.itemsize or step_size != STEP_DTYPE.itemsize:
        raise ImportError("pyfriction._core was built for another state layout; rebuild it")
    for name, (_, off) in SLOT_DTYPE.fields.items():
        if offsets.get(name) != off:
            raise ImportError(f"pyfriction._core: field {name} at {offsets.get(name)}, layout says {off}")
    if (_RING, _NDET, _UIDB, _NB, _REBASE, _CACHE_MAX) != (RING, NDET, UIDB, NB, REBASE, NAMES_MAX):
        raise ImportError("pyfriction._core was built for other layout constants; rebuild it")


_check_layout()

# --- hashing (pyfriction/_hashing.py) ---------------------------------------------------------
DEF FNV_OFFSET = 0xCBF29CE484222325
DEF FNV_PRIME = 0x100000001B3

cdef inline uint64_t mix64(uint64_t h) nogil:
    h ^= h >> 30
    h *= <uint64_t>0xBF58476D1CE4E5B9
    h ^= h >> 27
    h *= <uint64_t>0x94D049BB133111EB
    h ^= h >> 31
    return h

cdef inline uint64_t fnv_bytes(const char* p, Py_ssize_t n) nogil:
    cdef uint64_t h = FNV_OFFSET
    cdef Py_ssize_t i
    for i in range(n):
        h = (h ^ <uint8_t>p[i]) * <uint64_t>FNV_PRIME
    return mix64(h)

cdef uint64_t key64(object s) except? 0:
    """key64 of a str: its UTF-8 bytes, or with surrogates passed through, as the reference."""
    cdef Py_ssize_t n
    cdef const char* p = PyUnicode_AsUTF8AndSize(s, &n)
    if p == NULL:
        PyErr_Clear()
        raw = (<str>s).encode("utf-8", "surrogatepass")
        return fnv_bytes(<const char*>raw, len(raw))
    return fnv_bytes(p, n)

cdef inline uint32_t fold32(uint64_t h) nogil:
    cdef uint32_t k = <uint32_t>(h ^ (h >> 32))
    return k if k != 0 else 1

cdef inline uint32_t key32(object s) except? 0:
    return fold32(key64(s))

# --- step histograms (pyfriction/_layout.py) --------------------------------------------------
cdef double LOG_GAMMA = log(1.5)

cdef inline int bucket_of(double d) nogil:
    if d < 1.0:
        return 0
    cdef int b = 1 + <int>floor(log(d) / LOG_GAMMA)
    return b if b < NB else NB - 1

cdef inline double bucket_upper(int b) nogil:
    return 1.0 if b == 0 else pow(1.5, b)


cdef void* big_alloc(size_t n) noexcept nogil:
    """Zeroed memory straight from the kernel. The user table is hundreds of MB read at
    random: transparent huge pages cut the TLB misses that otherwise dominate a lookup."""
    cdef void* p = mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
    if p == MAP_FAILED:
        return NULL
    if n >= (2 << 20):
        madvise(p, n, MADV_HUGEPAGE)
    return p


cdef void big_free(void* p, size_t n) noexcept nogil:
    if p != NULL:
        munmap(p, n)


cdef class CompiledCore:
    """The compiled engine; same surface and semantics as ``_reference.ReferenceCore``."""

    cdef Slot* slots
    cdef uint32_t* index
    cdef uint32_t* lru_log
    cdef uint32_t* lru_pos
    cdef uint32_t capacity, mask, n_users, n_alloc, free_head
    cdef uint32_t log_size, log_head, log_tail
    cdef StepRec* steps
    cdef uint32_t* step_index
    cdef uint32_t step_mask, n_steps, max_steps
    cdef uint64_t c_events, c_invalid, c_unknown, c_excluded, c_episodes, c_evictions, c_tickets
    cdef bint has_ttl, has_excl_step, has_excl_target
    cdef double idle_ttl, decay_rate
    # detector parameters
    cdef bint rage_on, dead_on, err_on, fail_on, uturn_on, search_on, help_on, stall_on
    cdef double rage_w, rage_win, dead_w, dead_win, err_w, err_win, ordinary_factor
    cdef double fail_w, fail_win, uturn_w, uturn_win, uturn_bounce, search_w, search_win
    cdef double help_w, contact_w, after_friction, boost
    cdef double stall_w, stall_q, stall_factor, stall_min_s, stall_max_dur
    cdef int rage_need, dead_need, err_need, fail_need, uturn_need, search_need, stall_min_n
    cdef double threshold, rearm, cooldown, keep_after_success
    cdef double custom_w[MAX_CUSTOM]
    cdef object clock, names, on_episode, on_outcome, type_names, type_codes, excl_step, excl_target, ordinary, long_ids
    cdef object rules

    engine = "compiled"

    def __cinit__(self):
        self.slots = NULL
        self.index = NULL
        self.lru_log = NULL
        self.lru_pos = NULL
        self.steps = NULL
        self.step_index = NULL

    def __init__(self, rules, capacity, idle_ttl, clock, names, on_episode, on_outcome):
        cfg = rules.config
        cdef uint32_t size = 1
        capacity = int(capacity)
        if capacity < 1 or capacity > (1 << 30):
            raise ValueError("capacity must be in [1, 2**30]")
        self.capacity = capacity
        while size < 2 * self.capacity:
            size <<= 1
        self.mask = size - 1
        self.log_size = self.capacity + self.capacity // 2 + 16
        self.slots = <Slot*>big_alloc(self.capacity * sizeof(Slot))
        self.index = <uint32_t*>big_alloc(size * sizeof(uint32_t))
        self.lru_log = <uint32_t*>big_alloc(self.log_size * sizeof(uint32_t))
        self.lru_pos = <uint32_t*>big_alloc(self.capacity * sizeof(uint32_t))
        self.max_steps = cfg.max_steps
        size = 1
        while size < 2 * self.max_steps:
            size <<= 1
        self.step_mask = size - 1
        self.steps = <StepRec*>calloc(self.max_steps, sizeof(StepRec))
        self.step_index = <uint32_t*>calloc(size, sizeof(uint32_t))
        if (self.slots == NULL or self.index == NULL or self.lru_log == NULL
                or self.lru_pos == NULL or self.steps == NULL or self.step_index == NULL):
            raise MemoryError(f"cannot allocate the state of {capacity} users")
        self.free_head = NONE32
        self.rules = rules
        self.clock = clock
        self.names = names
        self.on_episode = on_episode
        self.on_outcome = on_outcome
        self.type_names = _ev.TYPE_NAMES
        self.type_codes = rules.type_codes
        self.ordinary = rules.ordinary_statuses
        self.excl_step = rules.excluded_step
        self.excl_target = rules.excluded_target
        self.has_excl_step = bool(rules.excluded_step)
        self.has_excl_target = bool(rules.excluded_target)
        self.long_ids = {}
        self.has_ttl = idle_ttl is not None
        self.idle_ttl = float(idle_ttl) if idle_ttl is not None else 0.0
        self.decay_rate = rules.decay_rate
        d = cfg.detectors
        self.rage_on, self.rage_w, self.rage_win, self.rage_need = (
            d.rage_click.enabled, d.rage_click.weight, d.rage_click.window, d.rage_click.min_clicks)
        self.dead_on, self.dead_w, self.dead_win, self.dead_need = (
            d.dead_click.enabled, d.dead_click.weight, d.dead_click.window, d.dead_click.min_clicks)
        self.err_on, self.err_w, self.err_win, self.err_need = (
            d.error_burst.enabled, d.error_burst.weight, d.error_burst.window, d.error_burst.min_errors)
        self.ordinary_factor = d.error_burst.ordinary_factor
        self.fail_on, self.fail_w, self.fail_win, self.fail_need = (
            d.repeat_failure.enabled, d.repeat_failure.weight, d.repeat_failure.window,
            d.repeat_failure.min_failures)
        self.uturn_on, self.uturn_w, self.uturn_win, self.uturn_need = (
            d.uturn.enabled, d.uturn.weight, d.uturn.window, d.uturn.min_uturns)
        self.uturn_bounce = d.uturn.bounce
        self.search_on, self.search_w, self.search_win, self.search_need = (
            d.empty_search.enabled, d.empty_search.weight, d.empty_search.window,
            d.empty_search.min_searches)
        self.help_on, self.help_w, self.contact_w = (
            d.help_seeking.enabled, d.help_seeking.help_weight, d.help_seeking.contact_weight)
        self.after_friction, self.boost = d.help_seeking.after_friction, d.help_seeking.boost
        self.stall_on, self.stall_w, self.stall_q, self.stall_factor = (
            d.stall.enabled, d.stall.weight, d.stall.quantile, d.stall.factor)
        self.stall_min_s, self.stall_min_n, self.stall_max_dur = (
            d.stall.min_seconds, d.stall.min_samples, d.stall.max_duration)
        sc = cfg.scoring
        self.threshold, self.rearm, self.cooldown = sc.threshold, sc.rearm, sc.cooldown
        self.keep_after_success = 1.0 - sc.success_relief
        if len(rules.custom_weights) > MAX_CUSTOM:
            raise ValueError("too many custom-weight events")
        for i, w in enumerate(rules.custom_weights):
            self.custom_w[i] = w

    def __dealloc__(self):
        big_free(self.slots, self.capacity * sizeof(Slot))
        big_free(self.index, (self.mask + 1) * sizeof(uint32_t))
        big_free(self.lru_log, self.log_size * sizeof(uint32_t))
        big_free(self.lru_pos, self.capacity * sizeof(uint32_t))
        free(self.steps)
        free(self.step_index)

    # -- counters -----------------------------------------------------------------------------
    @property
    def counters(self):
        return {
            "events": self.c_events, "invalid": self.c_invalid, "unknown": self.c_unknown,
            "excluded": self.c_excluded, "episodes": self.c_episodes,
            "evictions": self.c_evictions, "tickets": self.c_tickets,
        }

    def set_counters(self, counters):
        self.c_events = counters.get("events", self.c_events)
        self.c_invalid = counters.get("invalid", self.c_invalid)
        self.c_unknown = counters.get("unknown", self.c_unknown)
        self.c_excluded = counters.get("excluded", self.c_excluded)
        self.c_episodes = counters.get("episodes", self.c_episodes)
        self.c_evictions = counters.get("evictions", self.c_evictions)
        self.c_tickets = counters.get("tickets", self.c_tickets)

    def __len__(self):
        return self.n_users

    # -- the table ----------------------------------------------------------------------------
    cdef inline uint32_t find(self, uint64_t key) noexcept:
        """slot + 1 of ``key``, or 0."""
        cdef uint32_t i = <uint32_t>key & self.mask
        cdef uint32_t e
        cdef const char* line
        while True:
            e = self.index[i]
            if e == 0:
                return 0
            # The record spans four cache lines: ask for all of them while the first loads.
            line = <const char*>&self.slots[e - 1]
            PF_PREFETCH(line + 64)
            PF_PREFETCH(line + 128)
            PF_PREFETCH(line + 192)
            PF_PREFETCH(&self.lru_pos[e - 1])
            if self.slots[e - 1].key == key:
                return e
            i = (i + 1) & self.mask

    cdef inline void touch(self, uint32_t s) noexcept:
        """Make slot ``s`` the most recently active (reference: ``move_to_end``)."""
        if self.log_tail == self.log_size:
            self.compact_log()
        self.lru_log[self.log_tail] = s
        self.lru_pos[s] = self.log_tail
        self.log_tail += 1

    cdef void compact_log(self) noexcept:
        cdef uint32_t p, s, out = 0
        for p in range(self.log_head, self.log_tail):
            s = self.lru_log[p]
            if self.lru_pos[s] == p:
                self.lru_log[out] = s
                self.lru_pos[s] = out
                out += 1
        self.log_head = 0
        self.log_tail = out

    cdef inline uint32_t oldest(self) noexcept:
        """The least recently active slot (skipping stale log entries), or NONE32."""
        cdef uint32_t s
        while self.log_head < self.log_tail:
            s = self.lru_log[self.log_head]
            if self.lru_pos[s] == self.log_head:
                return s
            self.log_head += 1
        return NONE32

    cdef void evict(self, uint32_t s) except *:
        cdef Slot* u = &self.slots[s]
        cdef uint32_t i = <uint32_t>u.key & self.mask
        cdef uint32_t j, k, e
        while self.index[i] != s + 1:
            i = (i + 1) & self.mask
        # Backward-shift deletion keeps every probe chain unbroken without tombstones.
        j = i
        while True:
            j = (j + 1) & self.mask
            e = self.index[j]
            if e == 0:
                break
            k = <uint32_t>self.slots[e - 1].key & self.mask
            if (i <= j and i < k <= j) or (i > j and (i < k or k <= j)):
                continue
            self.index[i] = e
            i = j
        self.index[i] = 0
        if u.uid_len == UID_LONG:
            self.long_ids.pop(u.key, None)
        self.lru_pos[s] = NONE32
        memset(u, 0, sizeof(Slot))
        u.key = self.free_head  # the free list threads through freed slots
        self.free_head = s
        self.n_users -= 1
        self.c_evictions += 1

    cdef void evict_idle(self, double now) except *:
        cdef double horizon = now - self.idle_ttl
        cdef uint32_t s
        while True:
            s = self.oldest()
            if s == NONE32 or self.slots[s].last_ts >= horizon:
                return
            self.evict(s)

    cdef uint32_t insert(self, uint64_t key, object uid, double ts) except NONE32:
        """New user (reference: ``_insert``); returns its slot."""
        cdef uint32_t s, i
        cdef Slot* u
        cdef Py_ssize_t n
        cdef const char* p
        if self.has_ttl:
            self.evict_idle(ts)
        if self.n_users >= self.capacity:
            self.evict(self.oldest())
        if self.free_head != NONE32:
            s = self.free_head
            self.free_head = <uint32_t>self.slots[s].key
        else:
            s = self.n_alloc
            self.n_alloc += 1
        i = <uint32_t>key & self.mask
        while self.index[i] != 0:
            i = (i + 1) & self.mask
        self.index[i] = s + 1
        u = &self.slots[s]
        memset(u, 0, sizeof(Slot))
        u.key = key
        u.last_ts = ts
        u.p_ts = ts
        u.step_ts = ts
        u.base = ts
        for i in range(RING):
            u.click_r[i] = -INFINITY
            u.dead_r[i] = -INFINITY
            u.err_r[i] = -INFINITY
        u.uturn_t = -INFINITY
        u.fail_t = -INFINITY
        u.search_t = -INFINITY
        p = PyUnicode_AsUTF8AndSize(uid, &n)
        if p == NULL:
            PyErr_Clear()
            raw = (<str>uid).encode("utf-8", "surrogatepass")
            p = <const char*>raw
            n = len(raw)
            memcpy(u.uid, p, n if n < UIDB else UIDB)
        else:
            memcpy(u.uid, p, n if n < UIDB else UIDB)
        if n <= UIDB:
            u.uid_len = <uint8_t>n
        else:
            u.uid_len = UID_LONG
            self.long_ids[key] = uid
        self.n_users += 1
        self.touch(s)
        return s

    cdef inline void remember(self, uint32_t key, object text) except *:
        """Reference: ``_rules.Names.remember``, in C calls only: no Python code may run (and
        let another thread in) while a slot pointer is held."""
        k = key
        if not PyDict_Contains(self.names, k):
            if PyDict_Size(self.names) >= NAMES_MAX:
                PyDict_Clear(self.names)
            PyDict_SetItem(self.names, k, text)

    # -- steps --------------------------------------------------------------------------------
    cdef StepRec* step_rec(self, uint32_t step, bint create) noexcept:
        cdef uint32_t i = mix64(step) & self.step_mask
        cdef uint32_t e
        while True:
            e = self.step_index[i]
            if e == 0:
                if not create or self.n_steps >= self.max_steps:
                    return NULL
                self.steps[self.n_steps].key = step
                self.n_steps += 1
                self.step_index[i] = self.n_steps
                return &self.steps[self.n_steps - 1]
            if self.steps[e - 1].key == step:
                return &self.steps[e - 1]
            i = (i + 1) & self.step_mask

    cdef double c_stall_limit(self, uint32_t step) noexcept:
        """Reference: ``Rules.stall_limit`` via ``ReferenceCore.stall_limit``."""
        cdef StepRec* r = self.step_rec(step, False)
        cdef double need, q
        cdef uint64_t seen = 0
        cdef int b
        if r == NULL or r.count < <uint32_t>self.stall_min_n:
            return -1.0
        need = self.stall_q * r.count
        q = bucket_upper(NB - 1)
        for b in range(NB):
            seen += r.buckets[b]
            if seen >= need:
                q = bucket_upper(b)
                break
        q = self.stall_factor * q
        return self.stall_min_s if self.stall_min_s >= q else q

    def stall_limit(self, step):
        return self.c_stall_limit(step)

    # -- the specification (reference: ReferenceCore._apply and helpers) ------------------------
    cdef inline void decay(self, Slot* u, double t) noexcept:
        cdef double dt = t - u.p_ts
        cdef double f
        cdef int i
        if dt > 0.0:
            f = exp(-dt * self.decay_rate)
            for i in range(NDET):
                u.pressure[i] = <float>(<double>u.pressure[i] * f)
            u.p_ts = t

    cdef inline void check_stall(self, Slot* u, double te) noexcept:
        cdef double limit
        if not self.stall_on or u.step == 0 or u.flags & F_STALL:
            return
        limit = self.c_stall_limit(u.step)
        if limit >= 0.0 and te - u.step_ts > limit:
            u.flags |= F_STALL
            u.pressure[D_STALL] = <float>(<double>u.pressure[D_STALL] + self.stall_w)

    cdef object navigate(self, Slot* u, uint32_t s, object step, double te):
        cdef double dur
        cdef StepRec* r
        self.remember(s, step)
        if u.step != 0:
            dur = te - u.step_ts
            if dur <= self.stall_max_dur:
                r = self.step_rec(u.step, True)
                if r != NULL and r.count < U32MAX:
                    r.count += 1
                    r.buckets[bucket_of(dur)] += 1
            if self.uturn_on and s == u.prev_step and dur <= self.uturn_bounce:
                if te - (u.base + <double>u.uturn_t) > self.uturn_win:
                    u.uturn_n = 1
                    u.uturn_t = <float>(te - u.base)
                    u.flags &= ~F_UTURN
                elif u.uturn_n < 255:
                    u.uturn_n += 1
                if u.uturn_n >= self.uturn_need and not u.flags & F_UTURN:
                    u.flags |= F_UTURN
                    u.pressure[D_UTURN] = <float>(<double>u.pressure[D_UTURN] + self.uturn_w)
        u.prev_step = u.step
        u.step = s
        u.step_ts = te
        u.flags &= ~F_STALL
        return None

    cdef inline double current(self, Slot* u) noexcept:
        cdef double total = 0.0
        cdef int i
        for i in range(NDET):
            total += u.pressure[i]
        return 1.0 - exp(-total)

    cdef double check_episode(self, Slot* u, double te, int code, object uid, object account,
                              object step, object target) except? -1.0:
        cdef double score = self.current(u)
        if u.flags & F_IN_EPISODE:
            if score < self.rearm:
                u.flags &= ~F_IN_EPISODE
        elif (score >= self.threshold and code != T_TICKET
              and (not u.flags & F_HAS_EPISODE or te - u.episode_ts >= self.cooldown)):
            u.flags |= F_IN_EPISODE | F_HAS_EPISODE
            u.episode_ts = te
            if u.episodes < U32MAX:
                u.episodes += 1
            u.episode_score = <float>score
            self.c_episodes += 1
            if uid is None:
                uid = self.uid_of(u)
            self.on_episode(self.record_of(u), uid, account, step, target, te, score)
        return score

    cdef double apply(self, object uid, uint64_t key, object kind, double ts, object step,
                      object target, object account, long status, long results) except? -1.0:
        cdef PyObject* code_o
        cdef int code
        cdef uint32_t e, s, t
        cdef Slot* u
        cdef double te, factor, w, other, keep
        cdef int i
        self.c_events += 1
        code_o = PyDict_GetItemWithError(self.type_codes, kind)
        code = T_UNKNOWN if code_o == NULL else <int><object>code_o
        # Python code (the exclusion globs) runs before the slot is looked up: it may let
        # another thread in, which must not find us holding a slot pointer.
        if (code == T_UNKNOWN or (self.has_excl_step and self.excl_step(step))
                or (self.has_excl_target and self.excl_target(target))):
            if code == T_UNKNOWN:
                self.c_unknown += 1
            else:
                self.c_excluded += 1
            e = self.find(key)
            return 0.0 if e == 0 else self.current(&self.slots[e - 1])
        e = self.find(key)
        if e == 0:
            s = self.insert(key, uid, ts)
        else:
            s = e - 1
            self.touch(s)
        u = &self.slots[s]
        te = ts if ts > u.last_ts else u.last_ts
        u.last_ts = te
        if u.events < U32MAX:
            u.events += 1
        if te - u.base > REBASE:
            rebase(u, te)
        self.decay(u, te)
        t = key32(step) if code == T_PAGE and step is not None else 0
        if t != 0 and t != u.step:
            self.navigate(u, t, step, te)
        else:
            self.check_stall(u, te)

        if code == T_PAGE:
            pass
        elif code == T_CLICK:
            if self.rage_on and target is not None:
                t = key32(target)
                if t != u.click_target:
                    u.click_target = t
                    for i in range(RING):
                        u.click_r[i] = -INFINITY
                    u.click_n = 0
                    u.flags &= ~F_RAGE
                if burst(u, u.click_r, &u.click_n, F_RAGE, te, self.rage_win, self.rage_need):
                    self.remember(t, target)
                    u.pressure[D_RAGE] = <float>(<double>u.pressure[D_RAGE] + self.rage_w)
        elif code == T_DEAD:
            if self.dead_on and target is not None:
                t = key32(target)
                if t != u.dead_target:
                    u.dead_target = t
                    for i in range(RING):
                        u.dead_r[i] = -INFINITY
                    u.dead_n = 0
                    u.flags &= ~F_DEAD
                if burst(u, u.dead_r, &u.dead_n, F_DEAD, te, self.dead_win, self.dead_need):
                    self.remember(t, target)
                    u.pressure[D_DEAD] = <float>(<double>u.pressure[D_DEAD] + self.dead_w)
        elif code == T_ERROR or code == T_API_ERROR or code == T_FORM_ERROR:
            factor = 1.0
            if code == T_API_ERROR and status in self.ordinary:
                factor = self.ordinary_factor
            if self.err_on and burst(u, u.err_r, &u.err_n, F_ERR, te, self.err_win, self.err_need):
                u.pressure[D_ERR] = <float>(<double>u.pressure[D_ERR] + self.err_w * factor)
            if self.fail_on and target is not None:
                t = key32(target)
                if t == u.fail_target and te - (u.base + <double>u.fail_t) <= self.fail_win:
                    if u.fail_n < 255:
                        u.fail_n += 1
                else:
                    u.fail_target = t
                    u.fail_n = 1
                    u.flags &= ~F_FAIL
                u.fail_t = <float>(te - u.base)
                if u.fail_n >= self.fail_need and not u.flags & F_FAIL:
                    u.flags |= F_FAIL
                    self.remember(t, target)
                    u.pressure[D_FAIL] = <float>(<double>u.pressure[D_FAIL] + self.fail_w * factor)
        elif code == T_SEARCH:
            if self.search_on and results == 0:
                if te - (u.base + <double>u.search_t) <= self.search_win:
                    if u.search_n < 255:
                        u.search_n += 1
                else:
                    u.search_n = 1
                    u.flags &= ~F_SEARCH
                u.search_t = <float>(te - u.base)
                if u.search_n >= self.search_need and not u.flags & F_SEARCH:
                    u.flags |= F_SEARCH
                    u.pressure[D_SEARCH] = <float>(<double>u.pressure[D_SEARCH] + self.search_w)
        elif code == T_HELP or code == T_CONTACT:
            if self.help_on:
                w = self.help_w if code == T_HELP else self.contact_w
                other = 0.0
                for i in range(NDET):
                    if i != D_HELP:
                        other += u.pressure[i]
                if other >= self.after_friction:
                    w *= self.boost
                u.pressure[D_HELP] = <float>(<double>u.pressure[D_HELP] + w)
        elif code == T_SUCCESS:
            keep = self.keep_after_success
            for i in range(NDET):
                u.pressure[i] = <float>(<double>u.pressure[i] * keep)
            for i in range(RING):
                u.click_r[i] = -INFINITY
                u.dead_r[i] = -INFINITY
                u.err_r[i] = -INFINITY
            u.uturn_t = -INFINITY
            u.fail_t = -INFINITY
            u.search_t = -INFINITY
            u.click_n = 0
            u.dead_n = 0
            u.err_n = 0
            u.fail_n = 0
            u.uturn_n = 0
            u.search_n = 0
            u.flags &= ~LATCHES
        elif code == T_TICKET:
            self.c_tickets += 1
        elif code >= T_CUSTOM:
            u.custom = <uint8_t>(code - T_CUSTOM)
            u.pressure[D_CUSTOM] = <float>(<double>u.pressure[D_CUSTOM] + self.custom_w[code - T_CUSTOM])
        score = self.check_episode(u, te, code, uid, account, step, target)
        if T_TICKET <= code <= T_GUIDANCE_DISMISSED:
            self.on_outcome(self.type_names[code], uid, account, step, target, te)
        return score

    # -- event intake -------------------------------------------------------------------------
    cdef double observe_dict(self, dict d) except? -1.0:
        """The fast path for a plain dict; anything unusual goes to the reference parser."""
        cdef PyObject* o
        cdef object uid, kind, step = None, target = None, account = None
        cdef double ts
        cdef long status = -1, results = -1
        o = PyDict_GetItemWithError(d, "user_id")
        if o == NULL or not PyUnicode_CheckExact(<object>o):
            return self.observe_slow(d)
        uid = <object>o
        o = PyDict_GetItemWithError(d, "type")
        if o == NULL or not PyUnicode_CheckExact(<object>o):
            return self.observe_slow(d)
        kind = <object>o
        if not (0 < PyUnicode_GET_LENGTH(uid) <= MAX_TEXT and 0 < PyUnicode_GET_LENGTH(kind) <= MAX_TEXT):
            return self.observe_slow(d)
        o = PyDict_GetItemWithError(d, "ts")
        if o == NULL or <object>o is None:
            return self.observe_slow(d)  # the clock: rare enough for the general path
        if PyFloat_CheckExact(<object>o):
            ts = PyFloat_AS_DOUBLE(<object>o)
        elif PyLong_CheckExact(<object>o):
            ts = PyLong_AsDouble(<object>o)
            if ts == -1.0 and PyErr_Occurred() != NULL:
                PyErr_Clear()  # too large for a double: the general path says so
                return self.observe_slow(d)
        else:
            return self.observe_slow(d)
        if not (Py_IS_FINITE(ts) and ts >= 0.0):
            return self.observe_slow(d)
        o = PyDict_GetItemWithError(d, "step")
        if o != NULL and <object>o is not None:
            if not PyUnicode_CheckExact(<object>o) or PyUnicode_GET_LENGTH(<object>o) > MAX_TEXT:
                return self.observe_slow(d)
            if PyUnicode_GET_LENGTH(<object>o) > 0:
                step = <object>o
        o = PyDict_GetItemWithError(d, "target")
        if o != NULL and <object>o is not None:
            if not PyUnicode_CheckExact(<object>o) or PyUnicode_GET_LENGTH(<object>o) > MAX_TEXT:
                return self.observe_slow(d)
            if PyUnicode_GET_LENGTH(<object>o) > 0:
                target = <object>o
        o = PyDict_GetItemWithError(d, "account_id")
        if o != NULL and <object>o is not None:
            if not PyUnicode_CheckExact(<object>o) or PyUnicode_GET_LENGTH(<object>o) > MAX_TEXT:
                return self.observe_slow(d)
            if PyUnicode_GET_LENGTH(<object>o) > 0:
                account = <object>o
        o = PyDict_GetItemWithError(d, "properties")
        if o != NULL and <object>o is not None:
            if not PyDict_CheckExact(<object>o):
                return self.observe_slow(d)
            status = int_property(<dict>o, "status")
            results = int_property(<dict>o, "results")
        return self.apply(uid, key64(uid), kind, ts, step, target, account, status, results)

    cdef double observe_slow(self, object event) except? -1.0:
        try:
            p = _ev.parse_event(event, self.clock)
        except _ev.InvalidEvent:
            self.c_invalid += 1
            raise
        return self.apply(p[0], key64(p[0]), p[1], p[2], p[3], p[4], p[5], p[6], p[7])

    def observe(self, event):
        """Score one event (see ``Tracker.observe``)."""
        if PyDict_CheckExact(event):
            return self.observe_dict(<dict>event)
        return self.observe_slow(event)

    def observe_many(self, events):
        """Score a batch (see ``Tracker.observe_many``)."""
        if isinstance(events, Mapping):
            return self.observe_columns(events)
        out = []
        for event in events:
            try:
                if PyDict_CheckExact(event):
                    out.append(self.observe_dict(<dict>event))
                else:
                    out.append(self.observe_slow(event))
            except _ev.InvalidEvent:
                out.append(NAN)
        return np.array(out, dtype=np.float64)

    def observe_columns(self, columns):
        cdef Py_ssize_t n, i
        cdef double[::1] out_v, ts_v
        cdef long long[::1] status_v, results_v
        cdef bint have_ts, have_status, have_results
        n, cols = columns_of(columns, keep_ts_array=True)
        out = np.empty(n, dtype=np.float64)
        out_v = out
        if cols.get("properties") is not None:
            # Free-form properties: the general row path (rare in columnar batches).
            rows = _rows(cols, n)
            for i in range(n):
                try:
                    out_v[i] = self.observe_slow(rows[i])
                except _ev.InvalidEvent:
                    out_v[i] = NAN
            return out
        cdef list uid_c = cols["user_id"]
        cdef list type_c = cols["type"]
        step_c = cols.get("step")
        target_c = cols.get("target")
        account_c = cols.get("account_id")
        ts_c = cols.get("ts")
        have_ts = ts_c is not None and isinstance(ts_c, np.ndarray)
        if have_ts:
            ts_v = ts_c
        have_status = cols.get("status") is not None
        have_results = cols.get("results") is not None
        if have_status:
            status_v = np.ascontiguousarray(cols["status"], dtype=np.int64)
        if have_results:
            results_v = np.ascontiguousarray(cols["results"], dtype=np.int64)
        cdef object uid, kind, step, target, account, ts_o
        cdef double ts
        cdef long status, results
        cdef Py_ssize_t ahead
        cdef uint32_t e
        # Keys first: the id strings are read in one sweep whose misses overlap, then the
        # table entries of rows LOOKAHEAD ahead are prefetched while the current row runs.
        keys = np.zeros(n, dtype=np.uint64)
        cdef uint64_t[::1] keys_v = keys
        for i in range(n):
            uid = <object>PyList_GET_ITEM(uid_c, i)
            if PyUnicode_CheckExact(uid):
                keys_v[i] = key64(uid)
        for i in range(n):
            ahead = i + LOOKAHEAD
            if ahead < n:
                PF_PREFETCH(&self.index[<uint32_t>keys_v[ahead] & self.mask])
            ahead = i + LOOKAHEAD // 2
            if ahead < n:
                e = self.index[<uint32_t>keys_v[ahead] & self.mask]
                if e != 0:
                    PF_PREFETCH(&self.slots[e - 1])
                    PF_PREFETCH(<const char*>&self.slots[e - 1] + 128)
            uid = <object>PyList_GET_ITEM(uid_c, i)
            kind = <object>PyList_GET_ITEM(type_c, i)
            step = None if step_c is None else <object>PyList_GET_ITEM(step_c, i)
            target = None if target_c is None else <object>PyList_GET_ITEM(target_c, i)
            account = None if account_c is None else <object>PyList_GET_ITEM(account_c, i)
            status = -1
            results = -1
            if have_status and 0 <= status_v[i] <= I31:
                status = <long>status_v[i]
            if have_results and 0 <= results_v[i] <= I31:
                results = <long>results_v[i]
            if have_ts:
                ts = ts_v[i]
            else:
                ts_o = None if ts_c is None else <object>PyList_GET_ITEM(ts_c, i)
                if ts_o is not None and PyFloat_CheckExact(ts_o):
                    ts = PyFloat_AS_DOUBLE(ts_o)
                else:
                    ts = NAN  # let the row path judge it (clock, int, or an error)
            if (PyUnicode_CheckExact(uid) and PyUnicode_CheckExact(kind)
                    and 0 < PyUnicode_GET_LENGTH(uid) <= MAX_TEXT
                    and 0 < PyUnicode_GET_LENGTH(kind) <= MAX_TEXT
                    and Py_IS_FINITE(ts) and ts >= 0.0
                    and text_ok(step) and text_ok(target) and text_ok(account)):
                out_v[i] = self.apply(uid, keys_v[i], kind, ts, nonempty(step), nonempty(target),
                                      nonempty(account), status, results)
            else:
                try:
                    out_v[i] = self.observe_slow(_row(cols, i))
                except _ev.InvalidEvent:
                    out_v[i] = NAN
        return out

    # -- reads --------------------------------------------------------------------------------
    cdef object uid_of(self, Slot* u):
        if u.uid_len == UID_LONG:
            return self.long_ids[u.key]
        return (<bytes>PyBytes_FromStringAndSize(u.uid, u.uid_len)).decode("utf-8", "surrogatepass")

    cdef object record_of(self, Slot* u):
        return np.frombuffer(PyBytes_FromStringAndSize(<char*>u, sizeof(Slot)), dtype=SLOT_DTYPE)[0]

    def score(self, user_id, at=None):
        cdef uint32_t e = self.find(key64(user_id))
        cdef Slot* u
        cdef double total = 0.0, t
        cdef int i
        if e == 0:
            return 0.0
        u = &self.slots[e - 1]
        for i in range(NDET):
            total += u.pressure[i]
        if at is not None:
            t = at
            if t > u.p_ts:
                total *= exp(-(t - u.p_ts) * self.decay_rate)
        return 1.0 - exp(-total)

    def record(self, user_id):
        cdef uint32_t e = self.find(key64(user_id))
        return None if e == 0 else self.record_of(&self.slots[e - 1])

    def tick(self, double now):
        cdef uint64_t before = self.c_episodes
        cdef uint32_t p, s, end
        cdef Slot* u
        cdef double te
        if self.has_ttl:
            self.evict_idle(now)
        # Least recently active first, like the reference; episodes fired here call Python,
        # which cannot touch the log (observe re-entered from a callback appends past `end`).
        p = self.log_head
        end = self.log_tail
        order = []
        while p < end:
            s = self.lru_log[p]
            if self.lru_pos[s] == p:
                order.append(self.slots[s].key)
            p += 1
        for k in order:
            s = self.find(k)
            if s == 0:
                continue
            u = &self.slots[s - 1]
            self.decay(u, now)
            te = now if now > u.last_ts else u.last_ts
            self.check_stall(u, te)
            self.check_episode(u, te, 0, None, None, None, None)
        return self.c_episodes - before

    # -- snapshots ----------------------------------------------------------------------------
    def export(self):
        """Slots least recently active first, step histograms, and ids too long to inline."""
        cdef uint32_t p, s, n = 0
        slots = np.zeros(self.n_users, dtype=SLOT_DTYPE)
        steps = np.zeros(self.n_steps, dtype=STEP_DTYPE)
        cdef unsigned char[::1] raw = slots.view(np.uint8).reshape(-1)
        cdef unsigned char[::1] step_raw = steps.view(np.uint8).reshape(-1)
        for p in range(self.log_head, self.log_tail):
            s = self.lru_log[p]
            if self.lru_pos[s] == p:
                memcpy(&raw[n * sizeof(Slot)], &self.slots[s], sizeof(Slot))
                n += 1
        if self.n_steps:
            memcpy(&step_raw[0], self.steps, self.n_steps * sizeof(StepRec))
        return slots, steps, dict(self.long_ids)

    def load(self, slots, steps, long_ids):
        """Replace the state with an export (of either engine); keeps the newest when full."""
        cdef Py_ssize_t i, n = len(slots), skip
        cdef uint32_t s, j
        cdef const unsigned char[::1] raw
        cdef const unsigned char[::1] step_raw
        cdef Slot* u
        cdef StepRec* r
        slots = np.ascontiguousarray(slots, dtype=SLOT_DTYPE)
        steps = np.ascontiguousarray(steps, dtype=STEP_DTYPE)
        memset(self.index, 0, (self.mask + 1) * sizeof(uint32_t))
        memset(self.step_index, 0, (self.step_mask + 1) * sizeof(uint32_t))
        # Slots are not cleared: insert() clears each one it hands out, and touching all of
        # them here would make the whole table resident for a handful of users.
        self.n_users = self.n_alloc = self.n_steps = 0
        self.log_head = self.log_tail = 0
        self.free_head = NONE32
        self.long_ids = {}
        skip = n - self.capacity if n > self.capacity else 0
        self.c_evictions += skip
        if n:
            raw = slots.view(np.uint8).reshape(-1)
            for i in range(skip, n):
                s = self.n_alloc
                self.n_alloc += 1
                u = &self.slots[s]
                memcpy(u, &raw[i * sizeof(Slot)], sizeof(Slot))
                j = <uint32_t>u.key & self.mask
                while self.index[j] != 0:
                    if self.slots[self.index[j] - 1].key == u.key:
                        raise ValueError("snapshot holds a user twice")
                    j = (j + 1) & self.mask
                self.index[j] = s + 1
                if u.uid_len == UID_LONG:
                    self.long_ids[u.key] = long_ids[u.key]
                self.n_users += 1
                self.touch(s)
        if len(steps):
            step_raw = steps.view(np.uint8).reshape(-1)
            for i in range(min(len(steps), self.max_steps)):
                r = self.step_rec((<StepRec*>&step_raw[i * sizeof(StepRec)]).key, True)
                memcpy(r, &step_raw[i * sizeof(StepRec)], sizeof(StepRec))


# --- helpers of the specification ---------------------------------------------------------------
cdef inline void rebase(Slot* u, double te) noexcept:
    """Reference: ``ReferenceCore._rebase``."""
    cdef double shift = u.base
    cdef int i
    for i in range(RING):
        u.click_r[i] = <float>((shift + <double>u.click_r[i]) - te)
        u.dead_r[i] = <float>((shift + <double>u.dead_r[i]) - te)
        u.err_r[i] = <float>((shift + <double>u.err_r[i]) - te)
    u.uturn_t = <float>((shift + <double>u.uturn_t) - te)
    u.fail_t = <float>((shift + <double>u.fail_t) - te)
    u.search_t = <float>((shift + <double>u.search_t) - te)
    u.base = te


cdef inline bint burst(Slot* u, float* ring, uint8_t* n, uint16_t flag, double te, double window,
                       int need) noexcept:
    """Reference: ``ReferenceCore._burst``."""
    cdef int i, within = 1
    if te - (u.base + <double>ring[0]) > window:
        n[0] = 0
        u.flags &= ~flag
    for i in range(RING):
        if te - (u.base + <double>ring[i]) <= window:
            within += 1
        else:
            break
    for i in range(RING - 1, 0, -1):
        ring[i] = ring[i - 1]
    ring[0] = <float>(te - u.base)
    if n[0] < 255:
        n[0] += 1
    if within >= need and not u.flags & flag:
        u.flags |= flag
        return True
    return False


cdef inline long int_property(dict props, str name) except? -2:
    """Reference: ``events._int_property``; exact ints here, anything else in Python."""
    cdef PyObject* o = PyDict_GetItemWithError(props, name)
    cdef long long v
    cdef int overflow = 0
    if o == NULL:
        return -1
    if PyLong_CheckExact(<object>o):
        v = PyLong_AsLongLongAndOverflow(<object>o, &overflow)
        return <long>v if overflow == 0 and 0 <= v <= I31 else -1
    return _ev.int_value(<object>o)


cdef inline bint text_ok(object o):
    return o is None or (PyUnicode_CheckExact(o) and PyUnicode_GET_LENGTH(o) <= MAX_TEXT)


cdef inline object nonempty(object o):
    return None if o is None or PyUnicode_GET_LENGTH(o) == 0 else o


cdef dict _row(dict cols, Py_ssize_t i):
    return next(iter(_rows_from(cols, i, i + 1)))


def _rows(cols, n):
    return list(_rows_from(cols, 0, n))


def _rows_from(cols, start, stop):
    from pyfriction._reference import columns_to_rows
    return columns_to_rows(cols, start, stop)
