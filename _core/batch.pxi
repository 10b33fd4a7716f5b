# Columnar batches: phases A (read rows), B (apply, C only) and C (deliver).
# Part of the one extension pyfriction._core: included by core.pyx (see docs/architecture.md).

cdef inline int enter(CompiledCore self) except -1:
    """An entry point begins: wait while another thread's chunk runs without the GIL."""
    if self.piping:
        wait_pipe(self)
    if self.slots == NULL:
        raise RuntimeError("this tracker's tables were released (release_tables)")
    self.inside += 1
    return 0


cdef inline void leave(CompiledCore self) noexcept:
    self.inside -= 1


cdef int wait_pipe(CompiledCore self) except -1:
    if self.pipe_thread == PyThread_get_thread_ident():
        join_pipe(self)  # re-entered from this batch's own delivery: finish the chunk first
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


cdef void join_pipe(CompiledCore self) noexcept:
    if self.piping:
        with nogil:
            pthread_join(self.pipe_tid, NULL)
        self.piping = False
        self.pipe_thread = 0


cdef Py_ssize_t fill_rows(CompiledCore self, Cols* c, Py_ssize_t lo, Py_ssize_t hi, Row* rows,
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
        p = pf_utf8(<object>uid, &n)
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
        km = &c.kmemo[memo_slot(o, KIND_BITS)]
        if km.obj != o:
            km.obj = o
            if (PyUnicode_CheckExact(<object>o) and 0 < PyUnicode_GET_LENGTH(<object>o) <= MAX_TEXT
                    and well_formed(<object>o)):
                km.code = code_of(self, <object>o)
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
            if 0 <= v <= I31 or v == SELECTION:
                r.results = <long>v
        if c.ts != NULL:
            ts = c.ts[i]
        elif c.ts_list != NULL and PyFloat_CheckExact(<object>PyList_GET_ITEM(<object>c.ts_list, i)):
            ts = PyFloat_AS_DOUBLE(<object>PyList_GET_ITEM(<object>c.ts_list, i))
        else:
            return i  # the clock, an int, or an error: the general path judges
        if not ts_plausible(self, ts):
            return i  # out of range (or not finite): the general path says why
        r.ts = ts
    return hi


cdef object run_serial(CompiledCore self, Cols* c, dict cols, Py_ssize_t n, double* out):
    """Phases A and B in chunks with the GIL held, each event reported as it happens (or
    queued for ``drain`` while this thread's batch queue is on)."""
    cdef Py_ssize_t chunk = min(n, max(1, self.pipe_rows))
    cdef Row* rows = <Row*>malloc(max(1, chunk) * sizeof(Row))
    cdef Py_ssize_t i = 0, j, k, hi
    cdef Row* r
    cdef bint began
    if rows == NULL:
        raise MemoryError("cannot allocate a batch's rows")
    began = begin_batch(self)
    try:
        while i < n:
            hi = min(n, i + chunk)
            j = fill_rows(self, c, i, hi, rows, NULL)
            for k in range(i, j):
                # While row k runs: the index entry of the row LOOKAHEAD ahead, and the
                # slot of the row half as far (its index entry arrived meanwhile).
                pf_ahead(self.index, <const char*>self.slots, sizeof(Slot), self.mask,
                         k + LOOKAHEAD < j, rows[k - i + LOOKAHEAD].key if k + LOOKAHEAD < j else 0,
                         k + LOOKAHEAD // 2 < j, rows[k - i + LOOKAHEAD // 2].key if k + LOOKAHEAD // 2 < j else 0)
                if (k + 1) % DRAIN_EVERY == 0 and self.pend_n:
                    drain(self)
                r = &rows[k - i]
                out[k] = apply(self, PyList_GET_ITEM(<object>c.uid, k), r.key, None, r.ts,
                                    row_text(c.step, k, r.objs & ROW_STEP),
                                    row_text(c.target, k, r.objs & ROW_TARGET),
                                    row_text(c.account, k, r.objs & ROW_ACCOUNT),
                                    r.status, r.results, r.code, r.step_k, r.target_k)
            if j < hi:
                out[j] = observe_row(self, cols, j)
                j += 1
            i = j
    finally:
        free(rows)
        end_batch(self, began)


cdef double observe_row(CompiledCore self, dict cols, Py_ssize_t i) except? -1.0:
    try:
        return observe_slow(self, _row(cols, i))
    except _ev.InvalidEvent:
        return NAN


cdef object run_pipelined(CompiledCore self, Cols* c, dict cols, Py_ssize_t n, double* out):
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
        j = fill_rows(self, c, 0, hi, rows[0], uids[0])
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
                    run_rows(self, &job)
                try:
                    deliver(self, &bufs[1 - cur], c)
                    if j == hi and j < n:  # read the next chunk meanwhile
                        nhi = min(n, j + chunk)
                        nj = fill_rows(self, c, j, nhi, rows[1 - cur], uids[1 - cur])
                finally:
                    join_pipe(self)
                if bufs[cur].failed:
                    raise MemoryError("cannot queue a batch's episodes")
                cur = 1 - cur
            if j < hi:  # row j is for the general path: everything before it first
                deliver(self, &bufs[1 - cur], c)
                out[j] = observe_row(self, cols, j)
                i = j + 1
                if i >= n:
                    break
                hi = min(n, i + chunk)
                j = fill_rows(self, c, i, hi, rows[cur], uids[cur])
                continue
            if j >= n:
                break
            i, j, hi = j, nj, nhi
        deliver(self, &bufs[1 - cur], c)
    finally:
        join_pipe(self)
        for k in range(2):
            big_free(rows[k], chunk * sizeof(Row))
            big_free(uids[k], chunk * UIDB)
            big_free(bufs[k].act, bufs[k].act_cap * sizeof(Action))
            big_free(bufs[k].pend, bufs[k].pend_cap * sizeof(Pending))


cdef void run_rows(CompiledCore self, Job* job) noexcept nogil:
    """Phase B: apply a chunk's rows; C only (it may run without the GIL)."""
    cdef Py_ssize_t k, n = job.hi - job.lo
    for k in range(n):
        pf_ahead(self.index, <const char*>self.slots, sizeof(Slot), self.mask,  # as in run_serial
                 k + LOOKAHEAD < n, job.rows[k + LOOKAHEAD].key if k + LOOKAHEAD < n else 0,
                 k + LOOKAHEAD // 2 < n, job.rows[k + LOOKAHEAD // 2].key if k + LOOKAHEAD // 2 < n else 0)
        job.out[job.lo + k] = apply_row(self, &job.rows[k], job.uids + k * UIDB, job.lo + k, job.buf)


cdef double apply_row(CompiledCore self, Row* r, const char* uid, Py_ssize_t row, Buf* b) noexcept nogil:
    """``apply`` for a row of a private table, C only: what needs Python is queued."""
    cdef uint32_t s
    cdef double score
    cdef Py_ssize_t g
    self.ctr[C_EVENTS] += 1
    if r.code == T_UNKNOWN:
        self.ctr[C_UNKNOWN] += 1
        s = find(self, r.key)
        return 0.0 if s == 0 else current(&self.slots[s - 1])
    s = find(self, r.key)
    if s == 0:
        s = insert_raw(self, r.key, uid, r.uid_n, r.ts)
    else:
        s -= 1
        touch(self, s)
    score = update(self, &self.slots[s], r.code, r.ts, r.step_k, r.target_k, r.status, r.results)
    for g in range(self.gone_n):
        queue_action(b, A_GONE, 0, 0, 0, -1, self.gone[g])
    self.gone_n = 0
    if self.note:
        queue_action(b, A_NOTE, self.note, r.step_k, r.target_k, row, r.key)
        self.note = 0
    if self.did_fire:
        self.did_fire = False
        queue_pending(b, &self.fired, 0, self.fired_score, self.fired.episode_ts, self.fired_stall,
                      row, r.objs, self.ev_total)
    if T_TICKET <= r.code <= T_GUIDANCE_DISMISSED:
        queue_pending(b, NULL, r.code, 0.0, self.last_te, 0.0, row, r.objs, self.ev_total)
    return score


cdef object deliver(CompiledCore self, Buf* b, Cols* c):
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
                gone_uid = self.long_ids.pop(a.key, None)
                if self.ev_on and gone_uid is not None:
                    self.ev_long[a.key] = gone_uid  # for drain_evicted
            elif a.kind == A_NOTE:
                if a.bits & NOTE_LONG:
                    self.long_ids[a.key] = <object>PyList_GET_ITEM(<object>c.uid, a.row)
                if a.bits & NOTE_STEP:
                    remember(self, a.step_k, <object>PyList_GET_ITEM(<object>c.step, a.row))
                if a.bits & NOTE_TARGET:
                    remember(self, a.target_k, <object>PyList_GET_ITEM(<object>c.target, a.row))
            else:
                p = &b.pend[a.key]
                uid = <object>PyList_GET_ITEM(<object>c.uid, a.row)
                account = row_text(c.account, a.row, a.bits & ROW_ACCOUNT)
                step = row_text(c.step, a.row, a.bits & ROW_STEP)
                target = row_text(c.target, a.row, a.bits & ROW_TARGET)
                self.ev_limit = p.ev_mark
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
                    self.ev_limit = -1
    finally:
        b.act_n = b.pend_n = 0
    if error is not None:
        raise error


cdef void* run_job(void* arg) noexcept nogil:
    """Thread body of a chunk's phase B (see ``CompiledCore.run_pipelined``)."""
    cdef Job* job = <Job*>arg
    run_rows(<CompiledCore>job.core, job)
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
                        Py_ssize_t row, int objs, uint64_t ev_mark) noexcept nogil:
    cdef Pending* p
    if not room(<void**>&b.pend, b.pend_n, &b.pend_cap, sizeof(Pending), 256):
        b.failed = True
        return
    p = &b.pend[b.pend_n]
    if rec != NULL:
        memcpy(&p.rec, rec, sizeof(Slot))
    p.code, p.score, p.te, p.stall = code, score, te, stall
    p.ev_mark = ev_mark
    p.uid = p.account = p.step = p.target = NULL
    queue_action(b, A_PEND, objs, 0, 0, row, <uint64_t>b.pend_n)
    b.pend_n += 1


cdef inline size_t memo_slot(PyObject* o, int bits) noexcept nogil:
    return <size_t>(((<uint64_t>o >> 4) * <uint64_t>0x9E3779B97F4A7C15) >> (64 - bits))


cdef inline TextMemo* text_memo(TextMemo* memo, PyObject* o):
    cdef TextMemo* m = &memo[memo_slot(o, TEXT_BITS)]
    cdef Py_ssize_t n
    if m.obj != o:
        m.obj = o
        m.k32 = 0
        if PyUnicode_CheckExact(<object>o):
            n = PyUnicode_GET_LENGTH(<object>o)
            m.ok = n <= MAX_TEXT and well_formed(<object>o)
            m.empty = n == 0
        else:
            m.ok = False
            m.empty = False
    return m



cdef dict _row(dict cols, Py_ssize_t i):
    return next(iter(_ev.columns_to_rows(cols, i, i + 1)))
