# Names (32-bit key -> text) and the step histograms.
# Part of the one extension pyfriction._core: included by core.pyx (see docs/architecture.md).

cdef inline void remember(CompiledCore self, uint32_t key, object text) except *:
    """Reference: ``_rules.Names.remember``. Memory: C calls only on the names dict (no
    Python code may run while a slot is held). Shared: the file's name table."""
    if self.shared:
        remember_shared(self, key, text)
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


cdef NameRec* name_rec(CompiledCore self, uint32_t key) noexcept:
    cdef uint32_t i = <uint32_t>mix64(key) & (N_NAMES - 1)
    cdef uint32_t k
    while True:
        k = pf_load32(&self.ntab[i].key)
        if k == 0 or k == key:
            return &self.ntab[i]
        i = (i + 1) & (N_NAMES - 1)


cdef void remember_shared(CompiledCore self, uint32_t key, object text) except *:
    cdef NameRec* r = name_rec(self, key)
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
    r = name_rec(self, key)
    if r.key == 0:
        memcpy(r.text, p, n)
        r.len = <uint8_t>n
        pf_store32(&r.key, key)
        self.meta.n_names += 1
    pf_unlock(&self.meta.names_lock)


cdef object name_of(CompiledCore self, uint32_t key):
    cdef NameRec* r = name_rec(self, key)
    if r.key != key:
        return None
    return (<bytes>PyBytes_FromStringAndSize(r.text, r.len)).decode("utf-8", "replace")


cdef StepRec* step_rec(CompiledCore self, uint32_t step, bint create) noexcept nogil:
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


cdef double c_stall_need(CompiledCore self, uint32_t step) noexcept nogil:
    """Reference: ``Rules.stall_need`` via ``ReferenceCore.stall_need``: the step's stall
    quantile, interpolated inside its bucket (``_layout.quantile``); -1 without a baseline."""
    return need_of(self, step_rec(self, step, False))


cdef double need_of(CompiledCore self, const StepRec* r) noexcept nogil:
    """``c_stall_need`` of a step's record (NULL: none)."""
    cdef double need, frac
    cdef uint64_t seen = 0
    cdef uint32_t count, c
    cdef int b
    if r == NULL:
        return -1.0
    count = r.count
    if count < <uint32_t>self.P.stall_min_n:
        return -1.0
    need = self.P.stall_q * count
    for b in range(NB):
        c = r.buckets[b]
        if c > 0 and <double>(seen + c) >= need:
            frac = (need - <double>seen) / <double>c
            if b == 0:
                return frac
            return pow(GAMMA, <double>(b - 1) + frac)
        seen += c
    return bucket_upper(NB - 1)


cdef inline double limit_of(CompiledCore self, double q) noexcept nogil:
    """Reference: ``Rules.limit_of``: the limit for a stall quantile ``q`` (-1: none)."""
    if q < 0.0:
        return -1.0
    q = self.P.stall_factor * q
    return self.P.stall_min_s if self.P.stall_min_s >= q else q


cdef inline double c_stall_limit(CompiledCore self, uint32_t step) noexcept nogil:
    """Reference: ``Rules.limit_of(stall_need)``: -1 without a baseline.

    Judged on most events late in a visit, and the quantile (a walk over the buckets and a
    ``pow``) only changes when the step's histogram does: in private memory the limit is
    memoised with the histogram's count (buckets and count change together, in
    ``navigate``; ``load`` clears the memo). A shared store's histograms change under other
    processes, count and bucket apart: there it is worked out every time."""
    cdef const StallMemo* m = &self.stall_memo[step & (STALL_MEMO - 1)]
    if m.rec != NULL and m.step == step and m.rec.count == m.count:  # never set when shared
        return m.limit
    return stall_limit_anew(self, step)


cdef double stall_limit_anew(CompiledCore self, uint32_t step) noexcept nogil:
    """``c_stall_limit`` worked out (and memoised in private memory)."""
    cdef StallMemo* m
    cdef StepRec* r
    cdef double limit
    if self.shared:
        return limit_of(self, c_stall_need(self, step))
    r = step_rec(self, step, False)
    limit = limit_of(self, need_of(self, r))
    if r != NULL:  # a step without a record gets one later: not memoised
        m = &self.stall_memo[step & (STALL_MEMO - 1)]
        m.step, m.count, m.rec, m.limit = step, r.count, r, limit
    return limit
