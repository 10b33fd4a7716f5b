# Reads and snapshots: records, export in recency order.
# Part of the one extension pyfriction._core: included by core.pyx (see docs/architecture.md).

cdef object uid_of(CompiledCore self, Slot* u):
    if u.uid_len == UID_LONG:
        known = self.long_ids.get(u.key)
        if known is not None:
            return known
        # Another process of a shared store saw this long id: its inline prefix is all
        # this one has.
        return (<bytes>PyBytes_FromStringAndSize(u.uid, UIDB)).decode("utf-8", "replace")
    return (<bytes>PyBytes_FromStringAndSize(u.uid, u.uid_len)).decode("utf-8", "surrogatepass")


cdef object record_of(CompiledCore self, Slot* u):
    return np.frombuffer(PyBytes_FromStringAndSize(<char*>u, sizeof(Slot)), dtype=SLOT_DTYPE)[0]


cdef object steps_array(CompiledCore self):
    cdef unsigned char[::1] step_raw
    steps = np.zeros(self.meta.n_steps, dtype=STEP_DTYPE)
    if self.meta.n_steps:
        step_raw = steps.view(np.uint8).reshape(-1)
        memcpy(&step_raw[0], self.steps, self.meta.n_steps * sizeof(StepRec))
    return steps


cdef uint32_t gather(CompiledCore self, unsigned char* out, uint32_t p, uint32_t cap, uint32_t* n) noexcept nogil:
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


cdef export_shared(CompiledCore self):
    cdef uint32_t s, n = 0, top = self.meta.n_alloc
    cdef unsigned char[::1] raw
    slots = np.zeros(top, dtype=SLOT_DTYPE)
    raw = slots.view(np.uint8).reshape(-1)
    for s in range(top):
        if hold(self, self.slots[s].key) == s and self.slots[s].key != 0:
            memcpy(&raw[n * sizeof(Slot)], &self.slots[s], sizeof(Slot))
            release(self, s)
            n += 1
    slots = slots[:n]
    slots["lock"] = 0
    slots = slots[np.argsort(slots["last_ts"], kind="stable")]  # least recent first
    steps = steps_array(self)
    return slots, steps, dict(self.long_ids)


cdef dict slot_fields(Slot* u):
    """The fields of a slot that ``_episodes.make_episode`` reads, as plain Python values
    (the same values a ``SLOT_DTYPE`` record gives: each float32 widened to a double)."""
    cdef int i
    return {
        "key": u.key, "step": u.step, "prev_step": u.prev_step, "step_ts": u.step_ts, "base": u.base,
        "pressure": [<double>u.pressure[i] for i in range(NDET)],
        "click_r": [<double>u.click_r[i] for i in range(RING)],
        "err_r": [<double>u.err_r[i] for i in range(RING)],
        "click_n": u.click_n, "click_target": u.click_target, "dead_n": u.dead_n,
        "dead_target": u.dead_target, "err_n": u.err_n, "fail_target": u.fail_target,
        "fail_n": u.fail_n, "fail_t": <double>u.fail_t, "fail_t0": <double>u.fail_t0, "flags": u.flags,
        "uturn_n": u.uturn_n, "search_n": u.search_n, "custom": u.custom,
    }
