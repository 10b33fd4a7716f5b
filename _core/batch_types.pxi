# The types of a columnar batch: rows, memos, queued actions (see batch.pxi).
# Part of the one extension pyfriction._core: included by core.pyx (see docs/architecture.md).

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

# Direct-mapped by a multiplicative hash of the address: a batch's few dozen distinct
# objects then rarely share an entry (two that do would take turns to be worked out again,
# row after row: a dict lookup or a key hash each time).
DEF KIND_BITS = 8
DEF KIND_MEMO = 1 << KIND_BITS
DEF TEXT_BITS = 10
DEF TEXT_MEMO = 1 << TEXT_BITS

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
    uint64_t ev_mark    # evictions recorded before it fired (drain_evicted stops there)
    PyObject* uid
    PyObject* account
    PyObject* step
    PyObject* target
