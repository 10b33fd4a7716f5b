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
"""

cimport cython
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free, malloc, realloc
from libc.string cimport memcpy, memset, memcmp
from libc.math cimport exp, log, pow, floor, INFINITY, NAN
from cpython.dict cimport PyDict_CheckExact, PyDict_Contains, PyDict_Size, PyDict_Clear, PyDict_SetItem
from cpython.list cimport PyList_GET_ITEM
from cpython.float cimport PyFloat_AS_DOUBLE, PyFloat_CheckExact
from cpython.long cimport PyLong_CheckExact
from cpython.unicode cimport PyUnicode_CheckExact, PyUnicode_GET_LENGTH
from cpython.object cimport PyObject
from cpython.ref cimport Py_XINCREF, Py_XDECREF
from cpython.pythread cimport PyThread_get_thread_ident
from cpython.bytes cimport PyBytes_FromStringAndSize

import math
import mmap as _mmap
import os
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
    int Py_IS_FINITE(double)

cdef extern from "sys/mman.h":
    void* mmap(void* addr, size_t length, int prot, int flags, int fd, long offset) nogil
    int munmap(void* addr, size_t length) nogil
    int madvise(void* addr, size_t length, int advice) nogil
    int msync(void* addr, size_t length, int flags) nogil
    int PROT_READ, PROT_WRITE, MAP_PRIVATE, MAP_SHARED, MAP_ANONYMOUS, MADV_HUGEPAGE
    int MS_ASYNC, MS_SYNC
    void* MAP_FAILED

cdef extern from "<pthread.h>" nogil:
    ctypedef unsigned long pthread_t
    int pthread_create(pthread_t* thread, const void* attr, void* (*start)(void*) noexcept nogil, void* arg)
    int pthread_join(pthread_t thread, void** ret)

cdef extern from "<unistd.h>" nogil:
    int usleep(unsigned int usec)

cdef extern from "pf_sync.h":
    int pf_lock(uint32_t* lock, uint32_t me) nogil
    void pf_unlock(uint32_t* lock) nogil
    int pf_pid_dead(uint32_t pid) nogil
    uint32_t pf_load32(const uint32_t* p) nogil
    void pf_store32(uint32_t* p, uint32_t v) nogil
    void pf_add32(uint32_t* p, uint32_t v) nogil

cdef extern from *:
    """
    #if defined(__GNUC__) || defined(__clang__)
    #define PF_PREFETCH(p) __builtin_prefetch((const void*)(p), 1, 3)
    #else
    #define PF_PREFETCH(p) ((void)0)
    #endif
    #define PF_NONE32 0xFFFFFFFFu
    /* Prefetches for a row ``LOOKAHEAD`` ahead (its index entry) and one half as far (the
       lines of its slot). In C and forced inline: a function of prefetches alone has no
       effect a compiler must keep, and a call to it may be dropped. */
    static inline __attribute__((always_inline)) void pf_slot(const void* slot) {
        const char* l = (const char*)slot;
        PF_PREFETCH(l);
        PF_PREFETCH(l + 64);
        PF_PREFETCH(l + 128);
        PF_PREFETCH(l + 192);
    }
    static inline __attribute__((always_inline)) void pf_ahead(
            const uint32_t* index, const char* slots, size_t slot_size, uint32_t mask,
            int far_ok, uint64_t far_key, int near_ok, uint64_t near_key) {
        if (far_ok)
            PF_PREFETCH(&index[(uint32_t)far_key & mask]);
        if (near_ok) {
            uint32_t e = index[(uint32_t)near_key & mask];
            if (e)
                pf_slot(slots + (size_t)(e - 1) * slot_size);
        }
    }
    """
    void PF_PREFETCH(const void*) nogil
    void pf_ahead(const uint32_t* index, const char* slots, size_t slot_size, uint32_t mask,
                  int far_ok, uint64_t far_key, int near_ok, uint64_t near_key) nogil
    void pf_slot(const void* slot) nogil
    # C constants (a DEF this large would be a Python int where no GIL is held)
    const uint32_t NONE32 "PF_NONE32"
    const uint32_t U32MAX "PF_NONE32"

# --- the layout (must match pyfriction/_layout.py and store.py; checked at import) ----------
DEF RING = 4
DEF NDET = 9
DEF UIDB = 40
DEF NB = 24
DEF UID_LONG = 255
DEF MAX_TEXT = 1024
DEF MAX_CUSTOM = 256
DEF LOOKAHEAD = 16
DEF DRAIN_EVERY = 32768  # rows of a batch between deliveries of its episodes
DEF PIPE_ROWS = 32768  # rows per chunk of a columnar batch (see Row)
DEF NOTE_STEP = 1  # the update named a step: remember it
DEF NOTE_TARGET = 2  # ... a target
DEF NOTE_LONG = 4  # a new user's id is longer than UIDB: file its full text
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

# counters (Python order: events, invalid, unknown, excluded, episodes, evictions, tickets)
DEF C_EVENTS = 0
DEF C_INVALID = 1
DEF C_UNKNOWN = 2
DEF C_EXCLUDED = 3
DEF C_EPISODES = 4
DEF C_EVICTIONS = 5
DEF C_TICKETS = 6
DEF N_COUNTERS = 7
COUNTER_NAMES = ("events", "invalid", "unknown", "excluded", "episodes", "evictions", "tickets")


# shared store
DEF HEADER_SIZE = 4096
DEF CONFIG_SIZE = 65536
DEF N_PROCS = 56
DEF NAME_TEXT = 123
DEF N_NAMES = 8192
DEF SAMPLE = 8
DEF STORE_VERSION = 1

ctypedef struct Slot:
    uint64_t key
    double last_ts
    double episode_ts
    double step_ts
    double base
    float click_r[RING]
    float dead_r[RING]
    float err_r[RING]
    float uturn_t
    float fail_t
    float search_t
    float p_off             # pressures valued at last_ts + p_off (0 after every event)
    float pressure[NDET]
    float episode_score
    uint32_t events
    uint32_t step
    uint32_t prev_step
    uint32_t click_target
    uint32_t dead_target
    uint32_t fail_target
    uint32_t lock
    uint16_t flags
    uint16_t episodes       # saturating
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

ctypedef struct Meta:
    uint32_t table_lock     # inserting and evicting users
    uint32_t steps_lock     # adding a step (leaf)
    uint32_t names_lock     # adding a name (leaf)
    uint32_t n_users
    uint32_t n_alloc        # slots ever handed out (free ones below are on the free list)
    uint32_t free_head      # free list, threaded through free slots' ``events``
    uint32_t n_steps
    uint32_t n_names
    uint32_t hand           # where the next eviction sample starts
    uint32_t dirty          # set while processes are attached; 0 after a clean last close
    uint32_t pad[6]

ctypedef struct ProcRec:
    uint32_t pid
    uint32_t pad
    uint64_t ctr[N_COUNTERS]

ctypedef struct NameRec:
    uint32_t key
    uint8_t len
    char text[NAME_TEXT]

ctypedef struct Header:
    char magic[8]
    uint32_t version
    uint32_t header_size
    uint32_t capacity
    uint32_t index_size
    uint32_t max_steps
    uint32_t step_index_size
    uint32_t n_names
    uint32_t slot_size
    char layout[16]
    char config[16]         # fingerprint of the detector config every process must share
    uint32_t config_len     # bytes of the config (JSON) stored after the header
    uint32_t pad0
    uint64_t checksum       # FNV-1a of every byte before it
    char pad1[40]
    Meta meta               # at 128
    char pad2[64]
    uint64_t retired[8]     # at 256: counters of processes that have gone
    char pad3[192]
    ProcRec procs[N_PROCS]  # at 512: one counter block per attached process


ctypedef struct KindMemo:
    # What one batch learnt about a type string object: its code, or -1 when it is no type.
    PyObject* obj
    int code

ctypedef struct TextMemo:
    # ...and about a step/target/account string object (key32 computed when first needed).
    PyObject* obj
    uint32_t k32
    uint8_t ok
    uint8_t empty

DEF KIND_MEMO = 64
DEF TEXT_MEMO = 256

# A columnar batch is worked in chunks of rows. Phase A (with the GIL) reads the row's
# objects into a Row; phase B (C only, no Python object touched) applies the rows to the
# table; what needs Python afterwards (episodes, outcomes, names, long ids) is queued in
# order as Actions and delivered in phase C. Large batches overlap phase B of one chunk, on
# a thread of its own without the GIL, with phases C of the chunk before and A of the next.
ctypedef struct Row:
    uint64_t key
    double ts
    Py_ssize_t uid_n
    long status
    long results
    uint32_t step_k
    uint32_t target_k
    int code
    int objs            # ROW_*: which optional texts the row has

DEF ROW_STEP = 1
DEF ROW_TARGET = 2
DEF ROW_ACCOUNT = 4

ctypedef struct Action:
    int kind            # A_GONE | A_NOTE | A_PEND
    int bits            # A_NOTE: NOTE_*; A_PEND: the row's ROW_* bits
    uint32_t step_k
    uint32_t target_k
    Py_ssize_t row      # the batch row (A_NOTE, A_PEND)
    uint64_t key        # A_GONE, A_NOTE: the user; A_PEND: index into Buf.pend

DEF A_GONE = 1
DEF A_NOTE = 2
DEF A_PEND = 3

ctypedef struct Buf:
    Action* act
    Py_ssize_t act_n, act_cap
    Pending* pend
    Py_ssize_t pend_n, pend_cap
    bint failed         # out of memory while queueing: the batch raises MemoryError

ctypedef struct Cols:
    # The batch's columns (borrowed: the call's dict keeps them alive). NULL: no such column.
    PyObject* uid
    PyObject* kind
    PyObject* step
    PyObject* target
    PyObject* account
    PyObject* ts_list
    double* ts
    long long* status
    long long* results
    KindMemo* kmemo
    TextMemo* tmemo

ctypedef struct Job:
    void* core          # the CompiledCore (borrowed; the calling thread holds it)
    Row* rows
    char* uids          # UIDB bytes of each row's id
    Py_ssize_t lo, hi   # the batch rows of this chunk
    double* out
    Buf* buf

ctypedef struct Pending:
    # An episode (code 0) or an outcome event (its type code) reported during a batch, to be
    # handed to the tracker when the batch drains. The object pointers are owned (or NULL).
    Slot rec
    double score
    double te
    double stall
    int code
    PyObject* uid
    PyObject* account
    PyObject* step
    PyObject* target


def layout():
    """Sizes and offsets of the C structs, checked against ``_layout`` and ``store``."""
    cdef Slot s
    cdef StepRec r
    cdef Header h
    cdef char* b = <char*>&s
    cdef char* hb = <char*>&h
    offsets = {
        "key": <char*>&s.key - b, "last_ts": <char*>&s.last_ts - b, "p_off": <char*>&s.p_off - b,
        "episode_ts": <char*>&s.episode_ts - b, "step_ts": <char*>&s.step_ts - b,
        "base": <char*>&s.base - b, "click_r": <char*>&s.click_r[0] - b,
        "dead_r": <char*>&s.dead_r[0] - b, "err_r": <char*>&s.err_r[0] - b,
        "uturn_t": <char*>&s.uturn_t - b, "fail_t": <char*>&s.fail_t - b,
        "search_t": <char*>&s.search_t - b, "pressure": <char*>&s.pressure[0] - b,
        "episode_score": <char*>&s.episode_score - b, "events": <char*>&s.events - b,
        "episodes": <char*>&s.episodes - b, "step": <char*>&s.step - b,
        "prev_step": <char*>&s.prev_step - b, "click_target": <char*>&s.click_target - b,
        "dead_target": <char*>&s.dead_target - b, "fail_target": <char*>&s.fail_target - b,
        "lock": <char*>&s.lock - b, "flags": <char*>&s.flags - b, "click_n": <char*>&s.click_n - b,
        "dead_n": <char*>&s.dead_n - b, "err_n": <char*>&s.err_n - b,
        "fail_n": <char*>&s.fail_n - b, "uturn_n": <char*>&s.uturn_n - b,
        "search_n": <char*>&s.search_n - b, "custom": <char*>&s.custom - b,
        "uid_len": <char*>&s.uid_len - b, "uid": <char*>&s.uid[0] - b,
    }
    header = {
        "checksum": <char*>&h.checksum - hb, "meta": <char*>&h.meta - hb,
        "retired": <char*>&h.retired[0] - hb, "procs": <char*>&h.procs[0] - hb,
        "config_len": <char*>&h.config_len - hb, "size": sizeof(Header),
        "proc_size": sizeof(ProcRec), "meta_size": sizeof(Meta), "name_size": sizeof(NameRec),
    }
    return sizeof(Slot), offsets, sizeof(StepRec), header


def _check_layout():
    size, offsets, step_size, header = layout()
    if size != SLOT_DTYPE.itemsize or step_size != STEP_DTYPE.itemsize:
        raise ImportError("pyfriction._core was built for another state layout; rebuild it")
    for name, (_, off) in SLOT_DTYPE.fields.items():
        if offsets.get(name) != off:
            raise ImportError(f"pyfriction._core: field {name} at {offsets.get(name)}, layout says {off}")
    if (_RING, _NDET, _UIDB, _NB, _REBASE, _CACHE_MAX) != (RING, NDET, UIDB, NB, REBASE, NAMES_MAX):
        raise ImportError("pyfriction._core was built for other layout constants; rebuild it")
    if header["meta"] != 128 or header["retired"] != 256 or header["procs"] != 512 \
            or header["size"] != HEADER_SIZE or header["name_size"] != 128:
        raise ImportError(f"pyfriction._core: unexpected store header layout {header}")


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

cdef inline uint64_t fnv_raw(const char* p, Py_ssize_t n) nogil:
    cdef uint64_t h = FNV_OFFSET
    cdef Py_ssize_t i
    for i in range(n):
        h = (h ^ <uint8_t>p[i]) * <uint64_t>FNV_PRIME
    return h

cdef inline uint64_t fnv_bytes(const char* p, Py_ssize_t n) nogil:
    cdef uint64_t h = mix64(fnv_raw(p, n))
    return h if h != 0 else 1  # 0 marks a free slot

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

cdef double BUCKET_UPPER[NB]
for _b in range(NB):
    BUCKET_UPPER[_b] = 1.0 if _b == 0 else pow(1.5, _b)  # the reference's math.pow(1.5, b)

cdef inline double bucket_upper(int b) nogil:
    return BUCKET_UPPER[b]


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
    if p != NULL and n:
        munmap(p, n)


cdef inline size_t page_up(size_t n) nogil:
    return (n + 4095) & ~(<size_t>4095)


def store_sections(uint32_t capacity, uint32_t max_steps):
    """Offsets of a shared store file's sections: ``(sizes dict, total bytes)``."""
    cdef uint32_t index_size = 1, step_index_size = 1
    while index_size < 2 * capacity:
        index_size <<= 1
    while step_index_size < 2 * max_steps:
        step_index_size <<= 1
    cdef size_t config_off = HEADER_SIZE
    cdef size_t slots_off = config_off + CONFIG_SIZE
    cdef size_t index_off = page_up(slots_off + <size_t>capacity * sizeof(Slot))
    cdef size_t steps_off = page_up(index_off + <size_t>index_size * 4)
    cdef size_t step_index_off = page_up(steps_off + <size_t>max_steps * sizeof(StepRec))
    cdef size_t names_off = page_up(step_index_off + <size_t>step_index_size * 4)
    cdef size_t total = page_up(names_off + <size_t>N_NAMES * sizeof(NameRec))
    return {
        "index_size": index_size, "step_index_size": step_index_size, "config": config_off,
        "slots": slots_off, "index": index_off, "steps": steps_off,
        "step_index": step_index_off, "names": names_off, "n_names": N_NAMES,
    }, total


class StoreError(RuntimeError):
    """A shared store file cannot be used: wrong kind, version, layout, config or capacity,
    or damaged. The message says which and what to do."""


@cython.final  # not subclassed: its C methods are called directly and inlined
cdef class CompiledCore:
    """The compiled engine; same surface and semantics as ``_reference.ReferenceCore``.

    ``store`` is None (private memory) or the path of a shared store file (created if absent).
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
    cdef uint32_t known[4096]  # name keys already in ``names`` (direct-mapped; 0: empty)
    cdef unsigned long defer_thread
    cdef double last_te
    cdef bint did_fire
    # What an update left for the caller to do with the GIL (NOTE_*): name a step or a
    # target, file a long user id; and the long ids of users evicted meanwhile.
    cdef int note
    cdef uint64_t* gone
    cdef Py_ssize_t gone_n, gone_cap
    cdef long* ordinary_c  # statuses an api_error weighs less for
    cdef int n_ordinary
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
        memset(self.known, 0, sizeof(self.known))

    def __init__(self, rules, capacity, idle_ttl, clock, names, on_episode, on_outcome,
                 store=None, config_json=b""):
        cfg = rules.config
        cdef uint32_t size = 1
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
        self.pid = os.getpid()
        if store is None:
            self.alloc_memory()
        else:
            self.open_file(os.fspath(store), bytes(config_json))

    cdef alloc_memory(self):
        self.log_size = self.capacity + self.capacity // 2 + 16
        self.slots = <Slot*>big_alloc(self.capacity * sizeof(Slot))
        self.index = <uint32_t*>big_alloc((self.mask + 1) * sizeof(uint32_t))
        self.lru_log = <uint32_t*>big_alloc(self.log_size * sizeof(uint32_t))
        self.steps = <StepRec*>calloc(self.max_steps, sizeof(StepRec))
        self.step_index = <uint32_t*>calloc(self.step_mask + 1, sizeof(uint32_t))
        if (self.slots == NULL or self.index == NULL or self.lru_log == NULL
                or self.steps == NULL or self.step_index == NULL):
            raise MemoryError(f"cannot allocate the state of {self.capacity} users")
        memset(&self.local_meta, 0, sizeof(Meta))
        self.meta = &self.local_meta
        self.meta.free_head = NONE32
        memset(self.local_ctr, 0, sizeof(self.local_ctr))
        self.ctr = self.local_ctr

    def __dealloc__(self):
        cdef Py_ssize_t i
        for i in range(self.pend_head, self.pend_n):
            Py_XDECREF(self.pend[i].uid)
            Py_XDECREF(self.pend[i].account)
            Py_XDECREF(self.pend[i].step)
            Py_XDECREF(self.pend[i].target)
        free(self.pend)
        free(self.gone)
        free(self.ordinary_c)
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
    cdef open_file(self, str path, bytes config_json):
        import fcntl
        sections, total = store_sections(self.capacity, self.max_steps)
        fingerprint = config_fingerprint(config_json)
        if len(config_json) > CONFIG_SIZE:
            raise StoreError("config too large for the store file")
        try:
            f = open(path, "a+b")
        except OSError as exc:
            raise StoreError(f"cannot open store {path!r}: {exc.strerror}") from None
        try:
            # One process at a time creates, checks and attaches; the hot path takes no flock.
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            size = os.fstat(f.fileno()).st_size
            if size == 0:
                os.ftruncate(f.fileno(), total)
                size = total
                fresh = True
            else:
                fresh = False
                check_header(path, f, self.capacity, self.max_steps, fingerprint, total, size)
            base = mmap(NULL, total, PROT_READ | PROT_WRITE, MAP_SHARED, f.fileno(), 0)
            if base == MAP_FAILED:
                raise StoreError(f"{path}: cannot map the store ({total} bytes)")
            self.map_base = <char*>base
            self.map_len = total
            self.map_file = f
            self.shared = True
            self.path = path
            self.hdr = <Header*>self.map_base
            self.meta = &self.hdr.meta
            self.slots = <Slot*>(self.map_base + <size_t>sections["slots"])
            self.index = <uint32_t*>(self.map_base + <size_t>sections["index"])
            self.steps = <StepRec*>(self.map_base + <size_t>sections["steps"])
            self.step_index = <uint32_t*>(self.map_base + <size_t>sections["step_index"])
            self.ntab = <NameRec*>(self.map_base + <size_t>sections["names"])
            if fresh:
                self.write_header(sections, fingerprint, config_json)
            self.attach()
            msync(self.map_base, HEADER_SIZE, MS_SYNC)
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)
        self.names_view = SharedNames(self)

    cdef write_header(self, dict sections, bytes fingerprint, bytes config_json):
        cdef Header* h = self.hdr
        memcpy(h.magic, b"PYFRICT\0", 8)
        h.version = STORE_VERSION
        h.header_size = HEADER_SIZE
        h.capacity = self.capacity
        h.index_size = sections["index_size"]
        h.max_steps = self.max_steps
        h.step_index_size = sections["step_index_size"]
        h.n_names = N_NAMES
        h.slot_size = sizeof(Slot)
        layout_hash = store_layout_hash()
        memcpy(h.layout, <char*>layout_hash, 16)
        memcpy(h.config, <char*>fingerprint, 16)
        h.config_len = len(config_json)
        if config_json:
            memcpy(self.map_base + HEADER_SIZE, <char*>config_json, len(config_json))
        h.meta.free_head = NONE32
        h.checksum = fnv_raw(<char*>h, <char*>&h.checksum - <char*>h)

    cdef attach(self):
        """Claim a counter block (the table lock held); check the file after a crash."""
        cdef int i, mine = -1, others = 0
        cdef uint32_t p
        cdef Header* h = self.hdr
        if pf_lock(&self.meta.table_lock, self.pid):
            self.repair()
        try:
            for i in range(N_PROCS):
                p = h.procs[i].pid
                if p != 0 and pf_pid_dead(p):
                    self.retire(i)
                    p = 0
                if p == 0 and mine < 0:
                    mine = i
                elif p != 0:
                    others += 1  # another process, or another tracker of this one
            if mine < 0:
                raise StoreError(f"{self.path}: more than {N_PROCS} processes attached")
            if others == 0 and self.meta.dirty:
                # Nobody is attached yet the file was not closed cleanly: the last processes
                # died (or the machine did). The slots are the truth; rebuild the rest from them.
                self.repair()
            h.procs[mine].pid = self.pid
            memset(h.procs[mine].ctr, 0, sizeof(h.procs[mine].ctr))
            self.ctr = h.procs[mine].ctr
            self.proc_index = mine
            self.meta.dirty = 1
        finally:
            pf_unlock(&self.meta.table_lock)

    cdef void retire(self, int i) noexcept:
        cdef int c
        for c in range(N_COUNTERS):
            self.hdr.retired[c] += self.hdr.procs[i].ctr[c]
            self.hdr.procs[i].ctr[c] = 0
        self.hdr.procs[i].pid = 0

    cdef repair(self):
        """Rebuild the index, free list and counts from the slots (table lock held)."""
        cdef uint32_t s, j, n = 0, free_head = NONE32, top = 0
        cdef Slot* u
        cdef bint ok
        memset(self.index, 0, (self.mask + 1) * sizeof(uint32_t))
        for s in range(self.capacity):
            u = &self.slots[s]
            if u.key == 0:
                continue
            top = s + 1
            ok = (Py_IS_FINITE(u.last_ts) and Py_IS_FINITE(u.p_off) and u.p_off >= 0.0 and Py_IS_FINITE(u.base)
                  and (u.uid_len <= UIDB or u.uid_len == UID_LONG))
            j = <uint32_t>u.key & self.mask
            while ok and self.index[j] != 0:
                if self.slots[self.index[j] - 1].key == u.key:
                    ok = False  # the same user twice: keep the first
                j = (j + 1) & self.mask
            if not ok:
                memset(u, 0, sizeof(Slot))
                continue
            u.lock = 0
            self.index[j] = s + 1
            n += 1
        for s in range(top):
            if self.slots[s].key == 0:
                self.slots[s].events = free_head
                free_head = s
        self.meta.n_users = n
        self.meta.n_alloc = top
        self.meta.free_head = free_head
        self.meta.steps_lock = 0
        self.meta.names_lock = 0

    def after_fork(self):
        """In a child process: a counter block of its own (the mapping itself is inherited)."""
        # A chunk's thread, if the fork caught one running, does not exist in the child.
        self.piping = False
        self.pipe_thread = 0
        if self.shared and self.ctr != self.local_ctr:  # a closed core stays detached
            self.pid = os.getpid()
            self.attach()

    def sync(self, bint wait=False):
        """Write the shared store's dirty pages back to the file (``msync``)."""
        if self.shared and self.map_base != NULL:
            msync(self.map_base, self.map_len, MS_SYNC if wait else MS_ASYNC)

    def close(self):
        """Detach from the shared store: counters kept, file clean if we were the last."""
        cdef int i, others = 0
        if not self.shared or self.ctr == self.local_ctr:
            return
        if pf_lock(&self.meta.table_lock, self.pid):
            self.repair()
        self.retire(self.proc_index)  # our own block only: other trackers here keep theirs
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
        self.enter()
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
            self.leave()

    def set_counters(self, counters):
        cdef int c
        self.enter()
        try:
            current = self.counters
            for c, name in enumerate(COUNTER_NAMES):
                # In a shared store other processes' counts stay theirs: adjust our own block.
                self.ctr[c] += int(counters.get(name, current[name])) - current[name]
        finally:
            self.leave()

    def __len__(self):
        self.enter()
        try:
            return self.meta.n_users
        finally:
            self.leave()

    # -- the table ----------------------------------------------------------------------------
    cdef inline uint32_t find(self, uint64_t key) noexcept nogil:
        """slot + 1 of ``key``, or 0. In a shared store the answer is a hint, to be confirmed
        under the slot's lock (another process may move or evict it)."""
        cdef uint32_t i = <uint32_t>key & self.mask
        cdef uint32_t e
        cdef const char* line
        while True:
            e = pf_load32(&self.index[i])
            if e == 0:
                return 0
            # The record spans four cache lines: ask for all of them while the first loads.
            line = <const char*>&self.slots[e - 1]
            PF_PREFETCH(line + 64)
            PF_PREFETCH(line + 128)
            PF_PREFETCH(line + 192)
            if self.slots[e - 1].key == key:
                return e
            i = (i + 1) & self.mask

    cdef inline void touch(self, uint32_t s) noexcept nogil:
        """Make slot ``s`` the most recently active (reference: ``move_to_end``)."""
        if self.shared:
            return  # recency in a shared store is the slot's last_ts
        if self.log_tail == self.log_size:
            self.compact_log()
        self.lru_log[self.log_tail] = s
        self.slots[s].lock = self.log_tail
        self.log_tail += 1

    cdef void compact_log(self) noexcept nogil:
        cdef uint32_t p, s, out = 0
        for p in range(self.log_head, self.log_tail):
            if p + LOOKAHEAD < self.log_tail:
                # Each entry reads its slot's lock word: random lines, so ask ahead.
                PF_PREFETCH(&self.slots[self.lru_log[p + LOOKAHEAD]].lock)
            s = self.lru_log[p]
            if self.slots[s].lock == p:
                self.lru_log[out] = s
                self.slots[s].lock = out
                out += 1
        self.log_head = 0
        self.log_tail = out

    cdef uint32_t oldest(self) noexcept nogil:
        """The least recently active slot, or NONE32. Memory: exact, from the log (skipping
        stale entries). Shared: the least recent of SAMPLE slots from a rotating hand."""
        cdef uint32_t s, i, n, best = NONE32
        cdef double best_ts = INFINITY
        if not self.shared:
            while self.log_head < self.log_tail:
                s = self.lru_log[self.log_head]
                if self.slots[s].lock == self.log_head:
                    return s
                self.log_head += 1
            return NONE32
        n = self.meta.n_alloc
        if n == 0:
            return NONE32
        s = self.meta.hand % n
        for i in range(n if n < 4 * SAMPLE else 4 * SAMPLE):
            if self.slots[s].key != 0:
                if self.slots[s].last_ts < best_ts:
                    best_ts = self.slots[s].last_ts
                    best = s
                if i >= SAMPLE and best != NONE32:
                    break
            s = s + 1 if s + 1 < n else 0
        self.meta.hand = s
        return best

    cdef void unlink(self, uint32_t s) noexcept nogil:
        """Remove slot ``s`` from the index (backward-shift deletion: probe chains stay
        unbroken without tombstones)."""
        cdef uint32_t i = <uint32_t>self.slots[s].key & self.mask
        cdef uint32_t j, k, e
        while pf_load32(&self.index[i]) != s + 1:
            i = (i + 1) & self.mask
        j = i
        while True:
            j = (j + 1) & self.mask
            e = pf_load32(&self.index[j])
            if e == 0:
                break
            k = <uint32_t>self.slots[e - 1].key & self.mask
            if (i <= j and i < k <= j) or (i > j and (i < k or k <= j)):
                continue
            pf_store32(&self.index[i], e)
            i = j
        pf_store32(&self.index[i], 0)

    cdef void evict(self, uint32_t s) noexcept nogil:
        """Forget the user in slot ``s`` (shared: table lock held; the slot is locked here).
        A long id's full text is dropped by ``forget_gone`` (it needs the GIL)."""
        cdef Slot* u = &self.slots[s]
        cdef uint64_t* g
        if self.shared:
            pf_lock(&u.lock, self.pid)
        self.unlink(s)
        if u.uid_len == UID_LONG:
            if self.gone_n == self.gone_cap:
                g = <uint64_t*>realloc(self.gone, (2 * self.gone_cap + 16) * sizeof(uint64_t))
                if g != NULL:
                    self.gone = g
                    self.gone_cap = 2 * self.gone_cap + 16
            if self.gone_n < self.gone_cap:  # else the entry stays, bounded by the id table
                self.gone[self.gone_n] = u.key
                self.gone_n += 1
        if not self.shared:
            u.lock = NONE32  # its old log entries are stale now
        clear_keeping_lock(u)
        u.key = 0
        u.events = self.meta.free_head  # the free list threads through freed slots
        self.meta.free_head = s
        self.meta.n_users -= 1
        self.ctr[C_EVICTIONS] += 1
        if self.shared:
            pf_unlock(&u.lock)

    cdef void forget_gone(self) except *:
        """Drop the full text of the long ids evicted since the last call."""
        cdef Py_ssize_t i
        for i in range(self.gone_n):
            self.long_ids.pop(self.gone[i], None)
        self.gone_n = 0

    cdef void evict_idle(self, double now) noexcept nogil:
        cdef double horizon = now - self.idle_ttl
        cdef uint32_t s
        while True:
            s = self.oldest()
            if s == NONE32 or self.slots[s].last_ts >= horizon:
                return
            self.evict(s)
            if self.shared:
                return  # one per insert: a sample is no sweep (tick() sweeps)

    cdef uint32_t insert(self, uint64_t key, object uid, double ts) except NONE32:
        """New user (reference: ``_insert``); returns its slot (shared: table lock held by the
        caller, and the new slot is returned locked)."""
        cdef Py_ssize_t n
        cdef const char* p = PyUnicode_AsUTF8AndSize(uid, &n)
        cdef uint32_t s
        if p == NULL:
            PyErr_Clear()
            raw = (<str>uid).encode("utf-8", "surrogatepass")
            s = self.insert_raw(key, <const char*>raw, len(raw), ts)
        else:
            s = self.insert_raw(key, p, n, ts)
        self.settle_ids(key, uid)
        return s

    cdef inline void settle_ids(self, uint64_t key, object uid) except *:
        """The GIL part of inserting (and evicting) users: long ids' full text."""
        if self.gone_n:
            self.forget_gone()
        if self.note & NOTE_LONG:
            self.note &= ~NOTE_LONG
            self.long_ids[key] = uid

    cdef uint32_t insert_raw(self, uint64_t key, const char* p, Py_ssize_t n, double ts) noexcept nogil:
        """The C part of ``insert``: ``p``/``n`` are the id's UTF-8 bytes. A long id sets
        NOTE_LONG; the caller files its full text (``settle_ids``)."""
        cdef uint32_t s, i
        cdef Slot* u
        if self.has_ttl:
            self.evict_idle(ts)
        if self.meta.n_users >= self.capacity:
            self.evict(self.oldest())
        if self.meta.free_head != NONE32:
            s = self.meta.free_head
            self.meta.free_head = self.slots[s].events
        else:
            s = self.meta.n_alloc
            self.meta.n_alloc += 1
        u = &self.slots[s]
        if self.shared:
            pf_lock(&u.lock, self.pid)
        clear_keeping_lock(u)
        u.last_ts = ts
        u.step_ts = ts
        u.base = ts
        for i in range(RING):
            u.click_r[i] = -INFINITY
            u.dead_r[i] = -INFINITY
            u.err_r[i] = -INFINITY
        u.uturn_t = -INFINITY
        u.fail_t = -INFINITY
        u.search_t = -INFINITY
        memcpy(u.uid, p, n if n < UIDB else UIDB)
        if n <= UIDB:
            u.uid_len = <uint8_t>n
        else:
            u.uid_len = UID_LONG
            self.note |= NOTE_LONG
        u.key = key
        # Publish: the key is in place before the index entry points at the slot.
        i = <uint32_t>key & self.mask
        while pf_load32(&self.index[i]) != 0:
            i = (i + 1) & self.mask
        pf_store32(&self.index[i], s + 1)
        self.meta.n_users += 1
        self.touch(s)
        return s

    cdef uint32_t acquire(self, uint64_t key, object uid, double ts) except NONE32:
        """Shared store: the slot of ``key`` (inserted if new), locked by this process."""
        cdef uint32_t e, s
        while True:
            e = self.find(key)
            if e == 0:
                if pf_lock(&self.meta.table_lock, self.pid):
                    self.repair()
                try:
                    e = self.find(key)
                    if e == 0:
                        return self.insert(key, uid, ts)
                finally:
                    pf_unlock(&self.meta.table_lock)
            s = e - 1
            pf_lock(&self.slots[s].lock, self.pid)
            if self.slots[s].key == key:
                return s
            pf_unlock(&self.slots[s].lock)  # evicted or moved meanwhile: look again

    cdef inline void release(self, uint32_t s) noexcept:
        if self.shared:
            pf_unlock(&self.slots[s].lock)

    cdef uint32_t hold(self, uint64_t key) noexcept:
        """The slot of ``key`` held for reading (shared: locked), or NONE32."""
        cdef uint32_t e
        while True:
            e = self.find(key)
            if e == 0:
                return NONE32
            if not self.shared:
                return e - 1
            pf_lock(&self.slots[e - 1].lock, self.pid)
            if self.slots[e - 1].key == key:
                return e - 1
            pf_unlock(&self.slots[e - 1].lock)

    # -- names ------------------------------------------------------------------------------
    cdef inline void remember(self, uint32_t key, object text) except *:
        """Reference: ``_rules.Names.remember``. Memory: C calls only on the names dict (no
        Python code may run while a slot is held). Shared: the file's name table."""
        if self.shared:
            self.remember_shared(key, text)
            return
        # Most calls name a step or target seen moments ago: skip the dict (and the int
        # object its key needs) when this core put that key there. Only this core removes
        # names (the clear below), and it forgets what it knew when it does.
        if self.known[key & 4095] == key:
            return
        k = key
        if not PyDict_Contains(self.names, k):
            if PyDict_Size(self.names) >= NAMES_MAX:
                PyDict_Clear(self.names)
                memset(self.known, 0, sizeof(self.known))
            PyDict_SetItem(self.names, k, text)
        self.known[key & 4095] = key

    cdef NameRec* name_rec(self, uint32_t key) noexcept:
        cdef uint32_t i = <uint32_t>mix64(key) & (N_NAMES - 1)
        cdef uint32_t k
        while True:
            k = pf_load32(&self.ntab[i].key)
            if k == 0 or k == key:
                return &self.ntab[i]
            i = (i + 1) & (N_NAMES - 1)

    cdef void remember_shared(self, uint32_t key, object text) except *:
        cdef NameRec* r = self.name_rec(key)
        cdef Py_ssize_t n
        cdef const char* p
        if r.key == key:
            return
        p = PyUnicode_AsUTF8AndSize(text, &n)
        if p == NULL:
            PyErr_Clear()
            return
        if n > NAME_TEXT or self.meta.n_names >= N_NAMES * 3 // 4:
            return  # too long or table full: episodes fall back to the key
        pf_lock(&self.meta.names_lock, self.pid)
        r = self.name_rec(key)
        if r.key == 0:
            memcpy(r.text, p, n)
            r.len = <uint8_t>n
            pf_store32(&r.key, key)
            self.meta.n_names += 1
        pf_unlock(&self.meta.names_lock)

    cdef object name_of(self, uint32_t key):
        cdef NameRec* r = self.name_rec(key)
        if r.key != key:
            return None
        return (<bytes>PyBytes_FromStringAndSize(r.text, r.len)).decode("utf-8", "replace")

    # -- steps --------------------------------------------------------------------------------
    cdef StepRec* step_rec(self, uint32_t step, bint create) noexcept nogil:
        cdef uint32_t i = mix64(step) & self.step_mask
        cdef uint32_t e
        cdef StepRec* r
        while True:
            e = pf_load32(&self.step_index[i])
            if e == 0:
                if not create or self.meta.n_steps >= self.max_steps:
                    return NULL
                if self.shared:
                    pf_lock(&self.meta.steps_lock, self.pid)
                    if pf_load32(&self.step_index[i]) != 0:  # someone else added one: look again
                        pf_unlock(&self.meta.steps_lock)
                        continue
                    if self.meta.n_steps >= self.max_steps:
                        pf_unlock(&self.meta.steps_lock)
                        return NULL
                r = &self.steps[self.meta.n_steps]
                memset(r, 0, sizeof(StepRec))
                r.key = step
                self.meta.n_steps += 1
                pf_store32(&self.step_index[i], self.meta.n_steps)
                if self.shared:
                    pf_unlock(&self.meta.steps_lock)
                return r
            if self.steps[e - 1].key == step:
                return &self.steps[e - 1]
            i = (i + 1) & self.step_mask

    cdef double c_stall_limit(self, uint32_t step) noexcept nogil:
        """Reference: ``Rules.stall_limit`` via ``ReferenceCore.stall_limit``."""
        cdef StepRec* r = self.step_rec(step, False)
        cdef double need, q
        cdef uint64_t seen = 0
        cdef uint32_t count
        cdef int b
        if r == NULL:
            return -1.0
        count = r.count
        if count < <uint32_t>self.stall_min_n:
            return -1.0
        need = self.stall_q * count
        q = bucket_upper(NB - 1)
        for b in range(NB):
            seen += r.buckets[b]
            if seen >= need:
                q = bucket_upper(b)
                break
        q = self.stall_factor * q
        return self.stall_min_s if self.stall_min_s >= q else q

    def stall_limit(self, step):
        self.enter()
        try:
            return self.c_stall_limit(step)
        finally:
            self.leave()

    # -- the specification (reference: ReferenceCore._apply and helpers) ------------------------
    cdef inline bint decay(self, Slot* u, double p, double t) noexcept nogil:
        """Value the pressures (valued at ``p``) at ``t`` if later; False if not."""
        cdef double dt = t - p
        cdef double f
        cdef int i
        if dt > 0.0:
            f = exp(-dt * self.decay_rate)
            for i in range(NDET):
                u.pressure[i] = <float>(<double>u.pressure[i] * f)
            u.p_off = <float>(t - u.last_ts)
            return True
        return False

    cdef inline void check_stall(self, Slot* u, double te) noexcept nogil:
        cdef double limit
        if not self.stall_on or u.step == 0 or u.flags & F_STALL:
            return
        limit = self.c_stall_limit(u.step)
        if limit >= 0.0 and te - u.step_ts > limit:
            u.flags |= F_STALL
            u.pressure[D_STALL] = <float>(<double>u.pressure[D_STALL] + self.stall_w)

    cdef void navigate(self, Slot* u, uint32_t s, double te) noexcept nogil:
        cdef double dur
        cdef StepRec* r
        self.note |= NOTE_STEP
        if u.step != 0:
            dur = te - u.step_ts
            if dur <= self.stall_max_dur:
                r = self.step_rec(u.step, True)
                if r != NULL and r.count < U32MAX:
                    if self.shared:
                        pf_add32(&r.count, 1)
                        pf_add32(&r.buckets[bucket_of(dur)], 1)
                    else:
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

    cdef inline double current(self, Slot* u) noexcept nogil:
        cdef double total = 0.0
        cdef int i
        for i in range(NDET):
            total += u.pressure[i]
        return 1.0 - exp(-total)

    cdef double check_episode(self, Slot* u, double te, int code) noexcept nogil:
        """Reference: ``_check_episode``. A crossing is copied into ``self.fired`` while the
        slot is held; ``emit()`` reports it after the slot is released."""
        cdef double score = self.current(u)
        if u.flags & F_IN_EPISODE:
            if score < self.rearm:
                u.flags &= ~F_IN_EPISODE
        elif (score >= self.threshold and code != T_TICKET
              and (not u.flags & F_HAS_EPISODE or te - u.episode_ts >= self.cooldown)):
            u.flags |= F_IN_EPISODE | F_HAS_EPISODE
            u.episode_ts = te
            if u.episodes < 0xFFFF:
                u.episodes += 1
            u.episode_score = <float>score
            self.ctr[C_EPISODES] += 1
            memcpy(&self.fired, u, sizeof(Slot))
            self.fired.lock = 0
            self.fired_score = score
            self.fired_stall = self.c_stall_limit(u.step)
            self.did_fire = True
        return score

    cdef emit(self, object uid, object account, object step, object target):
        """Report the episode fired by the last update, if any (no slot held now)."""
        if not self.did_fire:
            return
        self.did_fire = False
        rec = slot_fields(&self.fired)
        if uid is None:
            uid = self.uid_of(&self.fired)
        self.on_episode(rec, uid, account, step, target, self.fired.episode_ts, self.fired_score,
                        self.fired_stall)

    cdef report(self, PyObject* uid, int code, object account, object step, object target):
        """Hand the last update's episode and outcome (if any) to the tracker; while this
        thread scores a batch, queue them instead (see ``begin_batch``)."""
        cdef bint outcome = T_TICKET <= code <= T_GUIDANCE_DISMISSED
        if self.deferring and self.defer_thread == PyThread_get_thread_ident():
            if self.did_fire:
                self.did_fire = False
                self.push(&self.fired, 0, self.fired_score, self.fired.episode_ts, self.fired_stall,
                          uid, account, step, target)
            if outcome:
                self.push(NULL, code, 0.0, self.last_te, 0.0, uid, account, step, target)
            return
        self.emit(<object>uid, account, step, target)
        if outcome:
            self.on_outcome(self.type_names[code], <object>uid, account, step, target, self.last_te)

    cdef int push(self, Slot* rec, int code, double score, double te, double stall,
                  PyObject* uid, object account, object step, object target) except -1:
        cdef Pending* p
        cdef Py_ssize_t cap
        if self.pend_n == self.pend_cap:
            cap = 64 if self.pend_cap == 0 else 2 * self.pend_cap
            p = <Pending*>realloc(self.pend, cap * sizeof(Pending))
            if p == NULL:
                raise MemoryError("cannot queue a batch's episodes")
            self.pend = p
            self.pend_cap = cap
        p = &self.pend[self.pend_n]
        if rec != NULL:
            memcpy(&p.rec, rec, sizeof(Slot))
        p.code = code
        p.score = score
        p.te = te
        p.stall = stall
        p.uid = uid
        p.account = NULL if account is None else <PyObject*>account
        p.step = NULL if step is None else <PyObject*>step
        p.target = NULL if target is None else <PyObject*>target
        Py_XINCREF(p.uid)
        Py_XINCREF(p.account)
        Py_XINCREF(p.step)
        Py_XINCREF(p.target)
        self.pend_n += 1
        return 0

    cdef bint begin_batch(self):
        """From here until ``end_batch``, this thread's episodes and outcomes are queued and
        delivered in order at each ``drain``: the batch loop stays in C with its data in
        cache, and the Python work runs in one warm stretch. The tracker allows it only
        while no callback runs inline (``batch_queue``): an inline callback may observe, and
        must see the state of the moment its episode fired. False when not allowed, or when
        another thread is inside a batch of this core (this call then reports as it goes)."""
        cdef unsigned long me = PyThread_get_thread_ident()
        if not self.batch_queue or (self.deferring and self.defer_thread != me):
            return False
        self.defer_thread = me
        self.deferring += 1
        return True

    cdef end_batch(self, bint began):
        if began:
            self.deferring -= 1
        self.drain()

    cdef drain(self):
        """Deliver the queued episodes and outcomes, oldest first. A callback may re-enter
        ``observe``: what it queues is delivered by this same loop."""
        cdef Pending* p
        cdef int code
        cdef double score, te, stall
        while self.pend_head < self.pend_n:
            p = &self.pend[self.pend_head]
            self.pend_head += 1
            code, score, te, stall = p.code, p.score, p.te, p.stall
            uid = None if p.uid == NULL else <object>p.uid
            account = None if p.account == NULL else <object>p.account
            step = None if p.step == NULL else <object>p.step
            target = None if p.target == NULL else <object>p.target
            Py_XDECREF(p.uid)
            Py_XDECREF(p.account)
            Py_XDECREF(p.step)
            Py_XDECREF(p.target)
            if code == 0:
                rec = slot_fields(&p.rec)
                if uid is None:
                    uid = self.uid_of(&p.rec)
                # p may move from here on: a callback can queue more.
                self.on_episode(rec, uid, account, step, target, te, score, stall)
            else:
                self.on_outcome(self.type_names[code], uid, account, step, target, te)
        self.pend_head = self.pend_n = 0

    cdef inline int code_of(self, object kind) except -1:
        cdef PyObject* o = PyDict_GetItemWithError(self.type_codes, kind)
        return T_UNKNOWN if o == NULL else <int><object>o

    cdef double apply(self, PyObject* uid, uint64_t key, object kind, double ts, object step,
                      object target, object account, long status, long results,
                      int code=-1, uint32_t step_k=0, uint32_t target_k=0) except? -1.0:
        """One valid event. ``uid`` is borrowed and only read for a new user, an episode or
        an outcome: in a batch over many users, touching each id object again would cost a
        cache miss per event."""
        cdef uint32_t s
        cdef double score
        self.ctr[C_EVENTS] += 1
        if code < 0:
            code = self.code_of(kind)
        # Python code (the exclusion globs) runs before the slot is looked up: it may let
        # another thread in, which must not find us holding a slot.
        if (code == T_UNKNOWN or (self.has_excl_step and self.excl_step(step))
                or (self.has_excl_target and self.excl_target(target))):
            if code == T_UNKNOWN:
                self.ctr[C_UNKNOWN] += 1
            else:
                self.ctr[C_EXCLUDED] += 1
            s = self.hold(key)
            if s == NONE32:
                return 0.0
            score = self.current(&self.slots[s])
            self.release(s)
            return score
        if step_k == 0 and code == T_PAGE and step is not None:
            step_k = key32(step)
        if target_k == 0 and T_CLICK <= code <= T_FORM_ERROR and target is not None:
            target_k = key32(target)
        if self.shared:
            s = self.acquire(key, <object>uid, ts)
        else:
            s = self.find(key)
            if s == 0:
                s = self.insert(key, <object>uid, ts)
            else:
                s -= 1
                self.touch(s)
        score = self.update(&self.slots[s], code, ts, step_k, target_k, status, results)
        self.release(s)
        if self.note:
            self.settle(step_k, step, target_k, target)
        if self.did_fire or T_TICKET <= code <= T_GUIDANCE_DISMISSED:
            self.report(uid, code, account, step, target)
        return score

    cdef void settle(self, uint32_t step_k, object step, uint32_t target_k, object target) except *:
        """Remember the names an update noted (no slot held: Python may run)."""
        cdef int note = self.note
        self.note = 0
        if note & NOTE_STEP:
            self.remember(step_k, step)
        if note & NOTE_TARGET:
            self.remember(target_k, target)

    cdef bint target_burst(self, Slot* u, uint32_t* current, float* ring, uint8_t* n,
                           uint16_t flag, uint32_t t, double te, double window,
                           int need) noexcept nogil:
        """Reference: ``_target_burst``: a burst on one target; another target starts over."""
        cdef int i
        if t != current[0]:
            current[0] = t
            for i in range(RING):
                ring[i] = -INFINITY
            n[0] = 0
            u.flags &= ~flag
        if burst(u, ring, n, flag, te, window, need):
            self.note |= NOTE_TARGET
            return True
        return False

    cdef double update(self, Slot* u, int code, double ts, uint32_t step_k, uint32_t target_k,
                       long status, long results) noexcept nogil:
        """The event's effect on one user (reference: the body of ``_apply``). ``step_k`` is
        the step's key32 on a page event, ``target_k`` the target's on a click, dead click or
        error (0: none). Names it needs remembered are left in ``note`` (see ``settle``)."""
        cdef uint32_t t
        cdef double te, factor, w, other, keep
        cdef int i
        cdef double p = u.last_ts + <double>u.p_off  # when the pressures are valued
        te = ts if ts > u.last_ts else u.last_ts
        u.last_ts = te
        self.last_te = te
        if u.events < U32MAX:
            u.events += 1
        if te - u.base > REBASE:
            rebase(u, te)
        if not self.decay(u, p, te):
            u.p_off = <float>(p - te)  # still valued later than the event (a tick ran ahead)
        t = step_k if code == T_PAGE else 0
        if t != 0 and t != u.step:
            self.navigate(u, t, te)
        else:
            self.check_stall(u, te)

        if code == T_PAGE:
            pass
        elif code == T_CLICK:
            if self.rage_on and target_k != 0 and self.target_burst(
                    u, &u.click_target, u.click_r, &u.click_n, F_RAGE, target_k, te,
                    self.rage_win, self.rage_need):
                u.pressure[D_RAGE] = <float>(<double>u.pressure[D_RAGE] + self.rage_w)
        elif code == T_DEAD:
            if self.dead_on and target_k != 0 and self.target_burst(
                    u, &u.dead_target, u.dead_r, &u.dead_n, F_DEAD, target_k, te,
                    self.dead_win, self.dead_need):
                u.pressure[D_DEAD] = <float>(<double>u.pressure[D_DEAD] + self.dead_w)
        elif code == T_ERROR or code == T_API_ERROR or code == T_FORM_ERROR:
            factor = 1.0
            if code == T_API_ERROR:
                for i in range(self.n_ordinary):
                    if self.ordinary_c[i] == status:
                        factor = self.ordinary_factor
                        break
            if self.err_on and burst(u, u.err_r, &u.err_n, F_ERR, te, self.err_win, self.err_need):
                u.pressure[D_ERR] = <float>(<double>u.pressure[D_ERR] + self.err_w * factor)
            if self.fail_on and target_k != 0:
                t = target_k
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
                    self.note |= NOTE_TARGET
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
            self.ctr[C_TICKETS] += 1
        elif code >= T_CUSTOM:
            u.custom = <uint8_t>(code - T_CUSTOM)
            u.pressure[D_CUSTOM] = <float>(<double>u.pressure[D_CUSTOM] + self.custom_w[code - T_CUSTOM])
        return self.check_episode(u, te, code)

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
        step = optional_text(d, "step")
        target = optional_text(d, "target")
        account = optional_text(d, "account_id")
        if step is _BAD or target is _BAD or account is _BAD:
            return self.observe_slow(d)
        o = PyDict_GetItemWithError(d, "properties")
        if o != NULL and <object>o is not None:
            if not PyDict_CheckExact(<object>o):
                return self.observe_slow(d)
            status = int_property(<dict>o, "status")
            results = int_property(<dict>o, "results")
        return self.apply(<PyObject*>uid, key64(uid), kind, ts, step, target, account, status, results)

    cdef double observe_slow(self, object event) except? -1.0:
        try:
            p = _ev.parse_event(event, self.clock)
        except _ev.InvalidEvent:
            self.ctr[C_INVALID] += 1
            raise
        uid = p[0]
        return self.apply(<PyObject*>uid, key64(uid), p[1], p[2], p[3], p[4], p[5], p[6], p[7])

    def observe(self, event):
        """Score one event (see ``Tracker.observe``)."""
        self.enter()
        try:
            if PyDict_CheckExact(event):
                return self.observe_dict(<dict>event)
            return self.observe_slow(event)
        finally:
            self.leave()

    def observe_many(self, events):
        """Score a batch (see ``Tracker.observe_many``)."""
        if isinstance(events, Mapping):
            return self.observe_columns(events)
        out = []
        cdef bint began = False
        self.enter()
        try:
            began = self.begin_batch()
            for event in events:
                try:
                    if PyDict_CheckExact(event):
                        out.append(self.observe_dict(<dict>event))
                    else:
                        out.append(self.observe_slow(event))
                except _ev.InvalidEvent:
                    out.append(NAN)
                if len(out) % DRAIN_EVERY == 0:
                    self.drain()
        finally:
            try:
                self.end_batch(began)
            finally:
                self.leave()
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
        n, cols = columns_of(columns, keep_ts_array=True)
        out = np.empty(n, dtype=np.float64)
        out_v = out
        out_p = &out_v[0] if n else NULL
        if cols.get("properties") is not None:
            # Free-form properties: the general row path (rare in columnar batches).
            rows = _rows(cols, n)
            began = False
            self.enter()
            try:
                began = self.begin_batch()
                for i in range(n):
                    try:
                        out_v[i] = self.observe_slow(rows[i])
                    except _ev.InvalidEvent:
                        out_v[i] = NAN
                    if (i + 1) % DRAIN_EVERY == 0:
                        self.drain()
            finally:
                try:
                    self.end_batch(began)
                finally:
                    self.leave()
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
        self.enter()
        try:
            if (n >= self.pipe_min and self.batch_queue and not self.shared
                    and not self.has_excl_step and not self.has_excl_target):
                self.run_pipelined(&c, cols, n, out_p)
            else:
                self.run_serial(&c, cols, n, out_p)
        finally:
            self.leave()
        return out

    # -- columnar batches (see Row) --------------------------------------------------------------
    cdef inline int enter(self) except -1:
        """An entry point begins: wait while another thread's chunk runs without the GIL."""
        if self.piping:
            self.wait_pipe()
        if self.slots == NULL:
            raise RuntimeError("this tracker's tables were released (release_tables)")
        self.inside += 1
        return 0

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

    cdef inline void leave(self) noexcept:
        self.inside -= 1

    cdef int wait_pipe(self) except -1:
        if self.pipe_thread == PyThread_get_thread_ident():
            self.join_pipe()  # re-entered from this batch's own delivery: finish the chunk first
            return 0
        self.pipe_waits += 1
        self.pipe_waiters += 1
        try:
            while self.piping:
                with nogil:
                    usleep(50)
        finally:
            self.pipe_waiters -= 1
        return 0

    cdef void join_pipe(self) noexcept:
        if self.piping:
            with nogil:
                pthread_join(self.pipe_tid, NULL)
            self.piping = False
            self.pipe_thread = 0

    cdef Py_ssize_t fill_rows(self, Cols* c, Py_ssize_t lo, Py_ssize_t hi, Row* rows,
                              char* uids) except -1:
        """Phase A: rows ``lo`` to ``hi`` into ``rows`` (and their ids' bytes into ``uids``
        unless NULL). Returns where it stopped: ``hi``, or the first row the general path must
        judge (an odd value, a missing or non-float time)."""
        cdef Py_ssize_t i, n
        cdef PyObject* uid
        cdef PyObject* o
        cdef const char* p
        cdef Row* r
        cdef KindMemo* km
        cdef TextMemo* tm
        cdef double ts
        cdef long long v
        for i in range(lo, hi):
            if i + 8 < hi:
                uid = PyList_GET_ITEM(<object>c.uid, i + 8)
                PF_PREFETCH(uid)
                PF_PREFETCH(<const char*>uid + 64)
            r = &rows[i - lo]
            uid = PyList_GET_ITEM(<object>c.uid, i)
            if not (PyUnicode_CheckExact(<object>uid) and 0 < PyUnicode_GET_LENGTH(<object>uid) <= MAX_TEXT):
                return i
            p = PyUnicode_AsUTF8AndSize(<object>uid, &n)
            if p == NULL:  # lone surrogates: the general path encodes them
                PyErr_Clear()
                return i
            r.key = fnv_bytes(p, n)
            if r.key == 0:
                return i
            r.uid_n = n
            if uids != NULL:
                memcpy(uids + (i - lo) * UIDB, p, n if n < UIDB else UIDB)
            o = PyList_GET_ITEM(<object>c.kind, i)
            km = &c.kmemo[(<size_t>o >> 4) & (KIND_MEMO - 1)]
            if km.obj != o:
                km.obj = o
                if PyUnicode_CheckExact(<object>o) and 0 < PyUnicode_GET_LENGTH(<object>o) <= MAX_TEXT:
                    km.code = self.code_of(<object>o)
                else:
                    km.code = -1
            if km.code < 0:
                return i
            r.code = km.code
            r.objs = 0
            r.step_k = r.target_k = 0
            if c.step != NULL:
                o = PyList_GET_ITEM(<object>c.step, i)
                if o != <PyObject*>None:
                    tm = text_memo(c.tmemo, o)
                    if not tm.ok:
                        return i
                    if not tm.empty:
                        r.objs |= ROW_STEP
                        if r.code == T_PAGE:
                            if tm.k32 == 0:
                                tm.k32 = key32(<object>o)
                            r.step_k = tm.k32
            if c.target != NULL:
                o = PyList_GET_ITEM(<object>c.target, i)
                if o != <PyObject*>None:
                    tm = text_memo(c.tmemo, o)
                    if not tm.ok:
                        return i
                    if not tm.empty:
                        r.objs |= ROW_TARGET
                        if T_CLICK <= r.code <= T_FORM_ERROR:
                            if tm.k32 == 0:
                                tm.k32 = key32(<object>o)
                            r.target_k = tm.k32
            if c.account != NULL:
                o = PyList_GET_ITEM(<object>c.account, i)
                if o != <PyObject*>None:
                    tm = text_memo(c.tmemo, o)
                    if not tm.ok:
                        return i
                    if not tm.empty:
                        r.objs |= ROW_ACCOUNT
            r.status = r.results = -1
            if c.status != NULL:
                v = c.status[i]
                if 0 <= v <= I31:
                    r.status = <long>v
            if c.results != NULL:
                v = c.results[i]
                if 0 <= v <= I31:
                    r.results = <long>v
            if c.ts != NULL:
                ts = c.ts[i]
            elif c.ts_list != NULL and PyFloat_CheckExact(<object>PyList_GET_ITEM(<object>c.ts_list, i)):
                ts = PyFloat_AS_DOUBLE(<object>PyList_GET_ITEM(<object>c.ts_list, i))
            else:
                return i  # the clock, an int, or an error: the general path judges
            if not (Py_IS_FINITE(ts) and ts >= 0.0):
                return i
            r.ts = ts
        return hi

    cdef object run_serial(self, Cols* c, dict cols, Py_ssize_t n, double* out):
        """Phases A and B in chunks with the GIL held, each event reported as it happens (or
        queued for ``drain`` while this thread's batch queue is on)."""
        cdef Py_ssize_t chunk = min(n, max(1, self.pipe_rows))
        cdef Row* rows = <Row*>malloc(max(1, chunk) * sizeof(Row))
        cdef Py_ssize_t i = 0, j, k, hi
        cdef Row* r
        cdef bint began
        if rows == NULL:
            raise MemoryError("cannot allocate a batch's rows")
        began = self.begin_batch()
        try:
            while i < n:
                hi = min(n, i + chunk)
                j = self.fill_rows(c, i, hi, rows, NULL)
                for k in range(i, j):
                    # While row k runs: the index entry of the row LOOKAHEAD ahead, and the
                    # slot of the row half as far (its index entry arrived meanwhile).
                    pf_ahead(self.index, <const char*>self.slots, sizeof(Slot), self.mask,
                             k + LOOKAHEAD < j, rows[k - i + LOOKAHEAD].key if k + LOOKAHEAD < j else 0,
                             k + LOOKAHEAD // 2 < j, rows[k - i + LOOKAHEAD // 2].key if k + LOOKAHEAD // 2 < j else 0)
                    if (k + 1) % DRAIN_EVERY == 0 and self.pend_n:
                        self.drain()
                    r = &rows[k - i]
                    out[k] = self.apply(PyList_GET_ITEM(<object>c.uid, k), r.key, None, r.ts,
                                        row_text(c.step, k, r.objs & ROW_STEP),
                                        row_text(c.target, k, r.objs & ROW_TARGET),
                                        row_text(c.account, k, r.objs & ROW_ACCOUNT),
                                        r.status, r.results, r.code, r.step_k, r.target_k)
                if j < hi:
                    out[j] = self.observe_row(cols, j)
                    j += 1
                i = j
        finally:
            free(rows)
            self.end_batch(began)

    cdef double observe_row(self, dict cols, Py_ssize_t i) except? -1.0:
        try:
            return self.observe_slow(_row(cols, i))
        except _ev.InvalidEvent:
            return NAN

    cdef object run_pipelined(self, Cols* c, dict cols, Py_ssize_t n, double* out):
        """Phases A, B and C in chunks; B without the GIL on a thread of its own while this
        one delivers the chunk before and reads the chunk after (when no other call is in
        progress: else B runs here, with the GIL). Episodes, outcomes and names are delivered
        in the order they happened, all before this returns."""
        cdef Py_ssize_t chunk = max(1, self.pipe_rows)
        cdef Row* rows[2]
        cdef char* uids[2]
        cdef Buf bufs[2]
        cdef Job job
        cdef Py_ssize_t i = 0, j, hi, nj = 0, nhi = 0
        cdef int cur = 0, k
        cdef bint threaded
        memset(bufs, 0, sizeof(bufs))
        rows[0] = rows[1] = NULL
        uids[0] = uids[1] = NULL
        try:
            for k in range(2):
                rows[k] = <Row*>big_alloc(chunk * sizeof(Row))
                uids[k] = <char*>big_alloc(chunk * UIDB)
                if rows[k] == NULL or uids[k] == NULL:
                    raise MemoryError("cannot allocate a batch's rows")
            hi = min(n, chunk)
            j = self.fill_rows(c, 0, hi, rows[0], uids[0])
            while True:
                # rows [i, j) are read into rows[cur]; bufs[1 - cur] holds the chunk before.
                nj = nhi = j
                if j > i:
                    job.core = <void*>self
                    job.rows, job.uids, job.lo, job.hi = rows[cur], uids[cur], i, j
                    job.out, job.buf = out, &bufs[cur]
                    threaded = False
                    if self.pipe_waiters:
                        # Between two chunks nothing runs without the GIL: hand it over, so
                        # that a thread waiting for one (it asked for the GIL by now) gets in,
                        # and run this chunk here, with the GIL, until it has.
                        with nogil:
                            pass
                    elif self.inside == 1 and bufs[1 - cur].act_n:  # else nothing to overlap
                        self.pipe_thread = PyThread_get_thread_ident()
                        self.piping = True
                        threaded = pthread_create(&self.pipe_tid, NULL, run_job, &job) == 0
                        if not threaded:
                            self.piping = False
                            self.pipe_thread = 0
                    if not threaded:
                        self.run_rows(&job)
                    try:
                        self.deliver(&bufs[1 - cur], c)
                        if j == hi and j < n:  # read the next chunk meanwhile
                            nhi = min(n, j + chunk)
                            nj = self.fill_rows(c, j, nhi, rows[1 - cur], uids[1 - cur])
                    finally:
                        self.join_pipe()
                    if bufs[cur].failed:
                        raise MemoryError("cannot queue a batch's episodes")
                    cur = 1 - cur
                if j < hi:  # row j is for the general path: everything before it first
                    self.deliver(&bufs[1 - cur], c)
                    out[j] = self.observe_row(cols, j)
                    i = j + 1
                    if i >= n:
                        break
                    hi = min(n, i + chunk)
                    j = self.fill_rows(c, i, hi, rows[cur], uids[cur])
                    continue
                if j >= n:
                    break
                i, j, hi = j, nj, nhi
            self.deliver(&bufs[1 - cur], c)
        finally:
            self.join_pipe()
            for k in range(2):
                big_free(rows[k], chunk * sizeof(Row))
                big_free(uids[k], chunk * UIDB)
                big_free(bufs[k].act, bufs[k].act_cap * sizeof(Action))
                big_free(bufs[k].pend, bufs[k].pend_cap * sizeof(Pending))

    cdef void run_rows(self, Job* job) noexcept nogil:
        """Phase B: apply a chunk's rows; C only (it may run without the GIL)."""
        cdef Py_ssize_t k, n = job.hi - job.lo
        for k in range(n):
            pf_ahead(self.index, <const char*>self.slots, sizeof(Slot), self.mask,  # as in run_serial
                     k + LOOKAHEAD < n, job.rows[k + LOOKAHEAD].key if k + LOOKAHEAD < n else 0,
                     k + LOOKAHEAD // 2 < n, job.rows[k + LOOKAHEAD // 2].key if k + LOOKAHEAD // 2 < n else 0)
            job.out[job.lo + k] = self.apply_row(&job.rows[k], job.uids + k * UIDB, job.lo + k, job.buf)

    cdef double apply_row(self, Row* r, const char* uid, Py_ssize_t row, Buf* b) noexcept nogil:
        """``apply`` for a row of a private table, C only: what needs Python is queued."""
        cdef uint32_t s
        cdef double score
        cdef Py_ssize_t g
        self.ctr[C_EVENTS] += 1
        if r.code == T_UNKNOWN:
            self.ctr[C_UNKNOWN] += 1
            s = self.find(r.key)
            return 0.0 if s == 0 else self.current(&self.slots[s - 1])
        s = self.find(r.key)
        if s == 0:
            s = self.insert_raw(r.key, uid, r.uid_n, r.ts)
        else:
            s -= 1
            self.touch(s)
        score = self.update(&self.slots[s], r.code, r.ts, r.step_k, r.target_k, r.status, r.results)
        for g in range(self.gone_n):
            queue_action(b, A_GONE, 0, 0, 0, -1, self.gone[g])
        self.gone_n = 0
        if self.note:
            queue_action(b, A_NOTE, self.note, r.step_k, r.target_k, row, r.key)
            self.note = 0
        if self.did_fire:
            self.did_fire = False
            queue_pending(b, &self.fired, 0, self.fired_score, self.fired.episode_ts, self.fired_stall,
                          row, r.objs)
        if T_TICKET <= r.code <= T_GUIDANCE_DISMISSED:
            queue_pending(b, NULL, r.code, 0.0, self.last_te, 0.0, row, r.objs)
        return score

    cdef object deliver(self, Buf* b, Cols* c):
        """Phase C: a chunk's queue, in order: long ids, names, episodes and outcomes. A
        callback that raises does not stop the others; the first error is raised after."""
        cdef Py_ssize_t k
        cdef Action* a
        cdef Pending* p
        error = None
        try:
            for k in range(b.act_n):
                a = &b.act[k]
                if a.kind == A_GONE:
                    self.long_ids.pop(a.key, None)
                elif a.kind == A_NOTE:
                    if a.bits & NOTE_LONG:
                        self.long_ids[a.key] = <object>PyList_GET_ITEM(<object>c.uid, a.row)
                    if a.bits & NOTE_STEP:
                        self.remember(a.step_k, <object>PyList_GET_ITEM(<object>c.step, a.row))
                    if a.bits & NOTE_TARGET:
                        self.remember(a.target_k, <object>PyList_GET_ITEM(<object>c.target, a.row))
                else:
                    p = &b.pend[a.key]
                    uid = <object>PyList_GET_ITEM(<object>c.uid, a.row)
                    account = row_text(c.account, a.row, a.bits & ROW_ACCOUNT)
                    step = row_text(c.step, a.row, a.bits & ROW_STEP)
                    target = row_text(c.target, a.row, a.bits & ROW_TARGET)
                    try:
                        if p.code == 0:
                            self.on_episode(slot_fields(&p.rec), uid, account, step, target, p.te,
                                            p.score, p.stall)
                        else:
                            self.on_outcome(self.type_names[p.code], uid, account, step, target, p.te)
                    except Exception as exc:
                        if error is None:
                            error = exc
        finally:
            b.act_n = b.pend_n = 0
        if error is not None:
            raise error

    # -- reads --------------------------------------------------------------------------------
    cdef object uid_of(self, Slot* u):
        if u.uid_len == UID_LONG:
            known = self.long_ids.get(u.key)
            if known is not None:
                return known
            # Another process of a shared store saw this long id: its inline prefix is all
            # this one has.
            return (<bytes>PyBytes_FromStringAndSize(u.uid, UIDB)).decode("utf-8", "replace")
        return (<bytes>PyBytes_FromStringAndSize(u.uid, u.uid_len)).decode("utf-8", "surrogatepass")

    cdef object record_of(self, Slot* u):
        return np.frombuffer(PyBytes_FromStringAndSize(<char*>u, sizeof(Slot)), dtype=SLOT_DTYPE)[0]

    def score(self, user_id, at=None):
        cdef uint32_t s
        cdef Slot* u
        cdef double total = 0.0, t, p_ts
        cdef int i
        cdef uint64_t key = key64(user_id)
        self.enter()
        try:
            s = self.hold(key)
            if s == NONE32:
                return 0.0
            u = &self.slots[s]
            for i in range(NDET):
                total += u.pressure[i]
            p_ts = u.last_ts + <double>u.p_off
            self.release(s)
            if at is not None:
                t = at
                if t > p_ts:
                    total *= exp(-(t - p_ts) * self.decay_rate)
            return 1.0 - exp(-total)
        finally:
            self.leave()

    def record(self, user_id):
        cdef uint32_t s
        cdef Slot copy
        cdef uint64_t key = key64(user_id)
        self.enter()
        try:
            s = self.hold(key)
            if s == NONE32:
                return None
            memcpy(&copy, &self.slots[s], sizeof(Slot))
            self.release(s)
            copy.lock = 0
            return self.record_of(&copy)
        finally:
            self.leave()

    def tick(self, double now):
        """Reference: ``tick``: idle eviction, then decay, stall and rearm for every user,
        least recently active first."""
        cdef uint64_t before
        cdef uint32_t p, s, end
        cdef Slot* u
        cdef double te
        cdef uint64_t key
        self.enter()
        try:
            before = self.ctr[C_EPISODES]
            if self.has_ttl:
                if self.shared:
                    self.sweep_idle(now)
                else:
                    self.evict_idle(now)
                self.forget_gone()
            # The order is taken first: episodes call Python, which may re-enter observe.
            order = []
            if self.shared:
                for s in range(self.meta.n_alloc):
                    if self.slots[s].key != 0:
                        order.append((self.slots[s].last_ts, self.slots[s].key))
                order.sort()
                order = [k for _, k in order]
            else:
                p = self.log_head
                end = self.log_tail
                while p < end:
                    s = self.lru_log[p]
                    if self.slots[s].lock == p:
                        order.append(self.slots[s].key)
                    p += 1
            for k in order:
                key = k
                s = self.hold(key)
                if s == NONE32:
                    continue
                u = &self.slots[s]
                self.decay(u, u.last_ts + <double>u.p_off, now)
                te = now if now > u.last_ts else u.last_ts
                self.check_stall(u, te)
                self.check_episode(u, te, 0)
                self.release(s)
                self.emit(None, None, None, None)
            return self.ctr[C_EPISODES] - before
        finally:
            self.leave()

    cdef sweep_idle(self, double now):
        cdef double horizon = now - self.idle_ttl
        cdef uint32_t s
        if pf_lock(&self.meta.table_lock, self.pid):
            self.repair()
        try:
            for s in range(self.meta.n_alloc):
                if self.slots[s].key != 0 and self.slots[s].last_ts < horizon:
                    self.evict(s)
        finally:
            pf_unlock(&self.meta.table_lock)

    # -- snapshots ----------------------------------------------------------------------------
    def export(self):
        """Slots least recently active first, step histograms, and ids too long to inline."""
        cdef uint32_t n = 0
        cdef unsigned char[::1] raw
        self.enter()
        try:
            if self.shared:
                return self.export_shared()
            slots = np.empty(self.meta.n_users, dtype=SLOT_DTYPE)  # every record is written below
            if self.meta.n_users:
                raw = slots.view(np.uint8).reshape(-1)
                self.gather(&raw[0], self.log_head, self.meta.n_users, &n)
            steps = self.steps_array()
            return slots, steps, dict(self.long_ids)
        finally:
            self.leave()

    def export_meta(self):
        """What :meth:`export` gives besides the slots: ``(steps, long_ids, n_users)``."""
        self.enter()
        try:
            return self.steps_array(), dict(self.long_ids), self.meta.n_users
        finally:
            self.leave()

    cdef object steps_array(self):
        cdef unsigned char[::1] step_raw
        steps = np.zeros(self.meta.n_steps, dtype=STEP_DTYPE)
        if self.meta.n_steps:
            step_raw = steps.view(np.uint8).reshape(-1)
            memcpy(&step_raw[0], self.steps, self.meta.n_steps * sizeof(StepRec))
        return steps

    cdef uint32_t gather(self, unsigned char* out, uint32_t p, uint32_t cap, uint32_t* n) noexcept nogil:
        """Copy up to ``cap`` live slots, least recently active first, from recency-log
        position ``p`` on into ``out``; ``n`` counts them; returns the next position."""
        cdef uint32_t s
        if p < self.log_head:
            p = self.log_head
        while p < self.log_tail and n[0] < cap:
            if p + LOOKAHEAD < self.log_tail:  # the log order is random in the table: ask ahead
                pf_slot(&self.slots[self.lru_log[p + LOOKAHEAD]])
            s = self.lru_log[p]
            if self.slots[s].lock == p:
                memcpy(&out[n[0] * sizeof(Slot)], &self.slots[s], sizeof(Slot))
                (<Slot*>&out[n[0] * sizeof(Slot)]).lock = 0  # a log position, not state
                n[0] += 1
            p += 1
        return p

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
        self.enter()
        try:
            p = self.gather(&raw[0], start, cap, &n)
            return n, p
        finally:
            self.leave()

    cdef export_shared(self):
        cdef uint32_t s, n = 0, top = self.meta.n_alloc
        cdef unsigned char[::1] raw
        slots = np.zeros(top, dtype=SLOT_DTYPE)
        raw = slots.view(np.uint8).reshape(-1)
        for s in range(top):
            if self.hold(self.slots[s].key) == s and self.slots[s].key != 0:
                memcpy(&raw[n * sizeof(Slot)], &self.slots[s], sizeof(Slot))
                self.release(s)
                n += 1
        slots = slots[:n]
        slots["lock"] = 0
        slots = slots[np.argsort(slots["last_ts"], kind="stable")]  # least recent first
        steps = self.steps_array()
        return slots, steps, dict(self.long_ids)

    def load(self, slots, steps, long_ids):
        """Replace the state with an export (of either engine); keeps the newest when full."""
        cdef Py_ssize_t i, n = len(slots), skip
        cdef uint32_t s, j
        cdef const unsigned char[::1] raw
        cdef const unsigned char[::1] step_raw
        cdef Slot* u
        cdef StepRec* r
        self.enter()
        try:
            slots = np.ascontiguousarray(slots, dtype=SLOT_DTYPE)
            steps = np.ascontiguousarray(steps, dtype=STEP_DTYPE)
            if self.shared and pf_lock(&self.meta.table_lock, self.pid):
                pass  # everything is rebuilt below anyway
            try:
                memset(self.index, 0, (self.mask + 1) * sizeof(uint32_t))
                memset(self.step_index, 0, (self.step_mask + 1) * sizeof(uint32_t))
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
                        self.touch(s)
                if len(steps):
                    step_raw = steps.view(np.uint8).reshape(-1)
                    for i in range(min(len(steps), self.max_steps)):
                        r = self.step_rec((<StepRec*>&step_raw[i * sizeof(StepRec)]).key, True)
                        memcpy(r, &step_raw[i * sizeof(StepRec)], sizeof(StepRec))
            finally:
                if self.shared:
                    pf_unlock(&self.meta.table_lock)
        finally:
            self.leave()

    def info(self):
        """What ``pyfriction store inspect`` prints, read from this core's state."""
        cdef uint32_t s, live = 0, i
        cdef double oldest = INFINITY, newest = -INFINITY
        self.enter()
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
            self.leave()


cdef class SharedNames:
    """The shared store's name table, read like the ``Names`` dict of a private tracker."""

    cdef CompiledCore core

    def __init__(self, CompiledCore core):
        self.core = core

    def get(self, key, default=None):
        k = int(key)
        if not 0 < k <= U32MAX:
            return default
        name = self.core.name_of(k)
        return default if name is None else name

    def __contains__(self, key):
        return self.get(key) is not None

    def remember(self, key, text):
        self.core.remember_shared(int(key), text)

    def update(self, pairs):
        for key, text in (pairs.items() if hasattr(pairs, "items") else pairs):
            self.remember(key, text)

    def items(self):
        cdef uint32_t i
        out = []
        for i in range(N_NAMES):
            if self.core.ntab[i].key != 0:
                out.append((self.core.ntab[i].key, self.core.name_of(self.core.ntab[i].key)))
        return out

    def __len__(self):
        return self.core.meta.n_names


# --- the store file's header --------------------------------------------------------------------
def store_layout_hash():
    """16 bytes naming the layout of slots, steps and the header this build writes."""
    import hashlib
    size, offsets, step_size, header = layout()
    text = repr((SLOT_DTYPE.descr, STEP_DTYPE.descr, sorted(header.items()), STORE_VERSION, N_PROCS,
                 N_NAMES, CONFIG_SIZE))
    return hashlib.sha256(text.encode()).digest()[:16]


def config_fingerprint(bytes config_json):
    import hashlib
    return hashlib.sha256(config_json).digest()[:16]


def read_header(path, f=None):
    """The fixed fields of a store file's header as a dict (raises StoreError)."""
    import struct
    own = f is None
    if own:
        try:
            f = open(path, "rb")
        except OSError as exc:
            raise StoreError(f"cannot open store {path!r}: {exc}") from None
    try:
        f.seek(0)
        raw = f.read(HEADER_SIZE)
    finally:
        if own:
            f.close()
    if len(raw) < HEADER_SIZE or raw[:8] != b"PYFRICT\0":
        raise StoreError(f"{path}: not a pyfriction store file")
    fields = struct.unpack_from("<8I16s16sIIQ", raw, 8)
    version, header_size, capacity, index_size, max_steps, step_index_size, n_names, slot_size = fields[:8]
    checksum = fields[12]
    cdef const char* p = raw
    if fnv_raw(p, 80) != checksum:
        raise StoreError(f"{path}: the store header is damaged (checksum mismatch); restore it "
                         f"from a snapshot (`pyfriction store repair {path} --snapshot FILE`)")
    return {
        "version": version, "header_size": header_size, "capacity": capacity,
        "index_size": index_size, "max_steps": max_steps, "step_index_size": step_index_size,
        "n_names": n_names, "slot_size": slot_size, "layout": fields[8], "config": fields[9],
        "config_len": fields[10],
    }


cdef check_header(str path, f, uint32_t capacity, uint32_t max_steps, bytes fingerprint,
                  size_t total, size_t size):
    h = read_header(path, f)
    if h["version"] != STORE_VERSION:
        raise StoreError(f"{path}: store file version {h['version']}, this pyfriction reads "
                         f"version {STORE_VERSION}")
    if h["layout"] != store_layout_hash() or h["slot_size"] != sizeof(Slot):
        raise StoreError(f"{path}: the store file was written with another state layout "
                         "(another pyfriction build); create a new file or restore a snapshot")
    if h["config"] != fingerprint:
        raise StoreError(f"{path}: the store was created with another configuration; every "
                         "process sharing a store must use the same config")
    if h["capacity"] != capacity or h["max_steps"] != max_steps:
        raise StoreError(f"{path}: the store holds capacity {h['capacity']} (max_steps "
                         f"{h['max_steps']}), the tracker asks for {capacity} ({max_steps}); "
                         f"change capacity offline with `pyfriction store resize {path} "
                         f"--capacity N`")
    if size < total:
        raise StoreError(f"{path}: the store file is truncated ({size} of {total} bytes)")


def read_config(path):
    """The config JSON a store file was created with."""
    h = read_header(path)
    with open(path, "rb") as f:
        f.seek(HEADER_SIZE)
        return f.read(h["config_len"])


cdef dict slot_fields(Slot* u):
    """The fields of a slot that ``_episodes.make_episode`` reads, as plain Python values
    (the same values a ``SLOT_DTYPE`` record gives: each float32 widened to a double)."""
    cdef int i
    return {
        "key": u.key, "step": u.step, "prev_step": u.prev_step, "step_ts": u.step_ts,
        "pressure": [<double>u.pressure[i] for i in range(NDET)],
        "click_r": [<double>u.click_r[i] for i in range(RING)],
        "dead_r": [<double>u.dead_r[i] for i in range(RING)],
        "err_r": [<double>u.err_r[i] for i in range(RING)],
        "click_n": u.click_n, "click_target": u.click_target, "dead_n": u.dead_n,
        "dead_target": u.dead_target, "err_n": u.err_n, "fail_target": u.fail_target,
        "fail_n": u.fail_n, "uturn_n": u.uturn_n, "search_n": u.search_n, "custom": u.custom,
    }


cdef inline void clear_keeping_lock(Slot* u) noexcept nogil:
    """Zero a slot but its key and its lock word: a waiter must never see the lock free while
    its holder is still rewriting the slot."""
    cdef char* b = <char*>u
    memset(b + sizeof(uint64_t), 0, <char*>&u.lock - b - sizeof(uint64_t))
    memset(<char*>&u.flags, 0, sizeof(Slot) - (<char*>&u.flags - b))


# --- helpers of the specification ---------------------------------------------------------------
cdef inline void rebase(Slot* u, double te) noexcept nogil:
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
                       int need) noexcept nogil:
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


_BAD = object()


cdef inline object optional_text(dict d, str key):
    """An optional text field of a dict event: None when absent or empty, the str when fine,
    ``_BAD`` when the reference parser has to judge it (and raise)."""
    cdef PyObject* o = PyDict_GetItemWithError(d, key)
    if o == NULL or <object>o is None:
        return None
    if not PyUnicode_CheckExact(<object>o) or PyUnicode_GET_LENGTH(<object>o) > MAX_TEXT:
        return _BAD
    return <object>o if PyUnicode_GET_LENGTH(<object>o) > 0 else None


cdef void* run_job(void* arg) noexcept nogil:
    """Thread body of a chunk's phase B (see ``CompiledCore.run_pipelined``)."""
    cdef Job* job = <Job*>arg
    (<CompiledCore>job.core).run_rows(job)
    return NULL


cdef inline object row_text(PyObject* col, Py_ssize_t i, int present):
    return <object>PyList_GET_ITEM(<object>col, i) if present else None


cdef bint room(void** arr, Py_ssize_t n, Py_ssize_t* cap, size_t size, Py_ssize_t first) noexcept nogil:
    """Make room in a queue's array ``*arr`` (``n`` entries used of ``*cap``) for one more:
    ``first`` entries at the start, then four times as many each time. False: no memory.
    Mapped, not from the heap: a batch's queues must not leave the heap bigger after it."""
    cdef Py_ssize_t bigger
    cdef void* q
    if n < cap[0]:
        return True
    bigger = first if cap[0] == 0 else 4 * cap[0]
    q = big_alloc(bigger * size)
    if q == NULL:
        return False
    if n:
        memcpy(q, arr[0], n * size)
    big_free(arr[0], cap[0] * size)
    arr[0], cap[0] = q, bigger
    return True


cdef void queue_action(Buf* b, int kind, int bits, uint32_t step_k, uint32_t target_k,
                       Py_ssize_t row, uint64_t key) noexcept nogil:
    cdef Action* a
    if not room(<void**>&b.act, b.act_n, &b.act_cap, sizeof(Action), 4096):
        b.failed = True
        return
    a = &b.act[b.act_n]
    b.act_n += 1
    a.kind, a.bits, a.step_k, a.target_k, a.row, a.key = kind, bits, step_k, target_k, row, key


cdef void queue_pending(Buf* b, Slot* rec, int code, double score, double te, double stall,
                        Py_ssize_t row, int objs) noexcept nogil:
    cdef Pending* p
    if not room(<void**>&b.pend, b.pend_n, &b.pend_cap, sizeof(Pending), 256):
        b.failed = True
        return
    p = &b.pend[b.pend_n]
    if rec != NULL:
        memcpy(&p.rec, rec, sizeof(Slot))
    p.code, p.score, p.te, p.stall = code, score, te, stall
    p.uid = p.account = p.step = p.target = NULL
    queue_action(b, A_PEND, objs, 0, 0, row, <uint64_t>b.pend_n)
    b.pend_n += 1


cdef inline TextMemo* text_memo(TextMemo* memo, PyObject* o):
    cdef TextMemo* m = &memo[(<size_t>o >> 4) & (TEXT_MEMO - 1)]
    cdef Py_ssize_t n
    if m.obj != o:
        m.obj = o
        m.k32 = 0
        if PyUnicode_CheckExact(<object>o):
            n = PyUnicode_GET_LENGTH(<object>o)
            m.ok = n <= MAX_TEXT
            m.empty = n == 0
        else:
            m.ok = False
            m.empty = False
    return m


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


# --- recently seen ids (pyfriction/recent.py) ---------------------------------------------------
cdef class RecentIds:
    """The last ``capacity`` distinct ids seen, as 64-bit fingerprints (``pyfriction.recent``).

    A ring of fingerprints in arrival order and an open-addressing index (linear probing,
    at most half full) of ring positions; the oldest is unlinked (backward-shift deletion,
    no tombstones) when a new one needs its place. Memory is taken once, at its full size.
    """

    cdef uint64_t* ring
    cdef uint32_t* index     # ring position + 1; 0 is an empty slot
    cdef uint32_t cap, mask, count, w
    cdef size_t ring_bytes, index_bytes

    def __cinit__(self, capacity):
        cdef uint64_t size = 2
        capacity = int(capacity)
        if not 1 <= capacity <= (1 << 31):
            raise ValueError(f"capacity must be between 1 and 2**31, not {capacity}")
        self.cap = <uint32_t>capacity
        while size < 2 * <uint64_t>self.cap:
            size <<= 1
        self.mask = <uint32_t>(size - 1)
        self.ring_bytes = self.cap * sizeof(uint64_t)
        self.index_bytes = size * sizeof(uint32_t)
        self.ring = <uint64_t*>big_alloc(self.ring_bytes)
        self.index = <uint32_t*>big_alloc(self.index_bytes)
        if self.ring == NULL or self.index == NULL:
            raise MemoryError(f"cannot map the memory of {capacity} recent ids")
        self.count = 0
        self.w = 0

    def __dealloc__(self):
        big_free(self.ring, self.ring_bytes)
        big_free(self.index, self.index_bytes)

    @property
    def capacity(self):
        return self.cap

    def __len__(self):
        return self.count

    cdef inline bint has(self, uint64_t fp) noexcept nogil:
        cdef uint32_t i = <uint32_t>fp & self.mask
        while self.index[i]:
            if self.ring[self.index[i] - 1] == fp:
                return True
            i = (i + 1) & self.mask
        return False

    cdef void unlink(self, uint32_t pos) noexcept nogil:
        """Take ring position ``pos`` out of the index; entries after it in its probe run
        move back so that every lookup still finds them."""
        cdef uint32_t i = <uint32_t>self.ring[pos] & self.mask, j, home
        while self.index[i] != pos + 1:
            i = (i + 1) & self.mask
        j = i
        while True:
            j = (j + 1) & self.mask
            if self.index[j] == 0:
                break
            home = <uint32_t>self.ring[self.index[j] - 1] & self.mask
            # the entry at j may fill the hole at i unless its home lies cyclically in (i, j]
            if (i < j and i < home and home <= j) or (i > j and (home > i or home <= j)):
                continue
            self.index[i] = self.index[j]
            i = j
        self.index[i] = 0

    cdef bint add(self, uint64_t fp) noexcept nogil:
        """True if ``fp`` is remembered; else remember it (forgetting the oldest when full)."""
        cdef uint32_t i = <uint32_t>fp & self.mask, pos
        while self.index[i]:
            if self.ring[self.index[i] - 1] == fp:
                return True
            i = (i + 1) & self.mask
        pos = self.w
        if self.count == self.cap:
            self.unlink(pos)
            i = <uint32_t>fp & self.mask  # the unlink may have moved entries of this run
            while self.index[i]:
                i = (i + 1) & self.mask
        else:
            self.count += 1
        self.ring[pos] = fp
        self.index[i] = pos + 1
        self.w = pos + 1 if pos + 1 < self.cap else 0
        return False

    def seen(self, key):
        """True if ``key`` is among the remembered ids; else remember it and return False."""
        if not isinstance(key, str):
            raise TypeError(f"ids are str, not {type(key).__name__}")
        return self.add(key64(key))

    def filter(self, ids):
        """Remember every id of a batch, in order. None when none was seen before (None ids
        are always kept); else the indexes of the rows to keep (a retried id is dropped,
        and so is an id repeated within the batch, after its first row)."""
        cdef Py_ssize_t i, n = len(ids)
        cdef list keep = None
        for i in range(n):
            key = ids[i]
            if key is not None:
                if not isinstance(key, str):
                    raise TypeError(f"ids are str, not {type(key).__name__}")
                if self.add(key64(key)):
                    if keep is None:
                        keep = list(range(i))
                    continue
            if keep is not None:
                keep.append(i)
        return keep

    def export(self):
        """The fingerprints, oldest first (for snapshots)."""
        cdef uint64_t[::1] out
        cdef uint32_t start = self.w if self.count == self.cap else 0, k
        arr = np.empty(self.count, dtype=np.uint64)
        out = arr
        for k in range(self.count):
            out[k] = self.ring[(start + k) % self.cap]
        return arr

    def load(self, fingerprints):
        """Replace the memory with :meth:`export`'s output (of either class); the newest
        ``capacity`` are kept."""
        cdef const uint64_t[::1] fps = np.ascontiguousarray(np.asarray(fingerprints, dtype=np.uint64).reshape(-1))
        cdef Py_ssize_t k, n = fps.shape[0]
        memset(self.index, 0, self.index_bytes)
        self.count = 0
        self.w = 0
        for k in range(n - self.cap if n > self.cap else 0, n):
            self.add(fps[k])
