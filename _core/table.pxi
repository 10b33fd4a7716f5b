# The user table: slots, the index (open addressing) and recency; memory allocation.
# Part of the one extension pyfriction._core: included by core.pyx (see docs/architecture.md).

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



cdef inline void clear_keeping_lock(Slot* u) noexcept nogil:
    """Zero a slot but its key and its lock word: a waiter must never see the lock free while
    its holder is still rewriting the slot."""
    cdef char* b = <char*>u
    memset(b + sizeof(uint64_t), 0, <char*>&u.lock - b - sizeof(uint64_t))
    memset(<char*>&u.flags, 0, sizeof(Slot) - (<char*>&u.flags - b))



cdef alloc_memory(CompiledCore self):
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


cdef inline uint32_t find(CompiledCore self, uint64_t key) noexcept nogil:
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


cdef inline void touch(CompiledCore self, uint32_t s) noexcept nogil:
    """Make slot ``s`` the most recently active (reference: ``move_to_end``)."""
    if self.shared:
        return  # recency in a shared store is the slot's last_ts
    if self.log_tail == self.log_size:
        compact_log(self)
    self.lru_log[self.log_tail] = s
    self.slots[s].lock = self.log_tail
    self.log_tail += 1


cdef void compact_log(CompiledCore self) noexcept nogil:
    cdef uint32_t p, s, out = 0
    cdef uint32_t ahead = self.log_tail - LOOKAHEAD if self.log_tail - self.log_head > LOOKAHEAD else self.log_head
    for p in range(self.log_head, ahead):
        # Each entry reads its slot's lock word: random lines, so ask ahead (this loop is
        # the entries with one LOOKAHEAD after them: no test for it on each).
        PF_PREFETCH(&self.slots[self.lru_log[p + LOOKAHEAD]].lock)
        s = self.lru_log[p]
        if self.slots[s].lock == p:
            self.lru_log[out] = s
            self.slots[s].lock = out
            out += 1
    for p in range(ahead, self.log_tail):
        s = self.lru_log[p]
        if self.slots[s].lock == p:
            self.lru_log[out] = s
            self.slots[s].lock = out
            out += 1
    self.log_head = 0
    self.log_tail = out


cdef uint32_t oldest(CompiledCore self) noexcept nogil:
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


cdef inline void index_delete(uint32_t* index, uint32_t mask, uint32_t entry, const char* recs,
                              size_t stride) noexcept nogil:
    """Remove ``entry`` (record number + 1) from an open-addressing index with linear probing
    by backward-shift deletion: the entries after it in its probe run move back, so every
    lookup still finds them, with no tombstones. A record's 64-bit key is the first field of
    each ``stride``-byte record at ``recs``; its home is ``key & mask``. The one deletion
    routine of the user index (``unlink``), of ``RecentIds`` and of the facts tables
    (``facts.pxi``). The loads and stores are atomic: in a shared store, readers probe the
    index without the table lock."""
    cdef uint32_t i = <uint32_t>(<const uint64_t*>(recs + <size_t>(entry - 1) * stride))[0] & mask
    cdef uint32_t j, home, e
    while pf_load32(&index[i]) != entry:
        i = (i + 1) & mask
    j = i
    while True:
        j = (j + 1) & mask
        e = pf_load32(&index[j])
        if e == 0:
            break
        home = <uint32_t>(<const uint64_t*>(recs + <size_t>(e - 1) * stride))[0] & mask
        # the entry at j may fill the hole at i unless its home lies cyclically in (i, j]
        if (i <= j and i < home <= j) or (i > j and (i < home or home <= j)):
            continue
        pf_store32(&index[i], e)
        i = j
    pf_store32(&index[i], 0)


cdef inline void unlink(CompiledCore self, uint32_t s) noexcept nogil:
    """Remove slot ``s`` from the user index (the slot's key is still in place)."""
    index_delete(self.index, self.mask, s + 1, <const char*>self.slots, sizeof(Slot))


cdef void evict(CompiledCore self, uint32_t s) noexcept nogil:
    """Forget the user in slot ``s`` (shared: table lock held; the slot is locked here).
    A long id's full text is dropped by ``forget_gone`` (it needs the GIL)."""
    cdef Slot* u = &self.slots[s]
    cdef uint64_t* g
    if self.shared:
        pf_lock(&u.lock, self.pid)
    unlink(self, s)
    if u.uid_len == UID_LONG:
        if self.gone_n == self.gone_cap:
            g = <uint64_t*>realloc(self.gone, (2 * self.gone_cap + 16) * sizeof(uint64_t))
            if g != NULL:
                self.gone = g
                self.gone_cap = 2 * self.gone_cap + 16
        if self.gone_n < self.gone_cap:  # else the entry stays, bounded by the id table
            self.gone[self.gone_n] = u.key
            self.gone_n += 1
    if self.ev_on:
        self.ev_total += 1
        if ev_room(self):
            self.ev_key[self.ev_n] = u.key
            self.ev_len[self.ev_n] = u.uid_len
            memcpy(self.ev_uid + self.ev_n * UIDB, u.uid, UIDB)
            self.ev_n += 1
        else:
            self.ev_over = True
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


cdef bint ev_room(CompiledCore self) noexcept nogil:
    """Room for one more evicted user: the buffer doubles as needed, up to EVICTED_MAX."""
    cdef Py_ssize_t cap
    cdef void* p
    if self.ev_n < self.ev_cap:
        return True
    if self.ev_cap >= EVICTED_MAX:
        return False
    cap = 256 if self.ev_cap == 0 else 2 * self.ev_cap
    if cap > EVICTED_MAX:
        cap = EVICTED_MAX
    p = realloc(self.ev_key, cap * sizeof(uint64_t))
    if p == NULL:
        return False
    self.ev_key = <uint64_t*>p
    p = realloc(self.ev_len, cap * sizeof(uint8_t))
    if p == NULL:
        return False
    self.ev_len = <uint8_t*>p
    p = realloc(self.ev_uid, cap * UIDB)
    if p == NULL:
        return False
    self.ev_uid = <char*>p
    self.ev_cap = cap
    return True


cdef enum:
    TICK_PREFETCH = 8  # users ahead whose slot ``tick`` fetches while it checks one


cdef struct TickKey:  # a user's place in the order of ``tick``
    double last_ts
    uint64_t key
    uint32_t slot


cdef int tick_key_cmp(const void* a, const void* b) noexcept nogil:
    # As Python compares the tuples (last_ts, key) the reference sorts (no NaN reaches last_ts).
    cdef const TickKey* x = <const TickKey*>a
    cdef const TickKey* y = <const TickKey*>b
    if x.last_ts != y.last_ts:
        return -1 if x.last_ts < y.last_ts else 1
    if x.key != y.key:
        return -1 if x.key < y.key else 1
    return 0


cdef TickKey* tick_order(CompiledCore self, uint32_t* n) except NULL:
    """Every user, least recently active first (``tick``'s order), with the slot each was in
    (``n`` set to their number; free() the array). In C arrays: as a list of Python tuples
    sorted in Python, the order took most of a tick's 1.4 s at a million users on a shared
    store, during which the sidecar's worker answered nothing."""
    cdef uint32_t s, p, count = 0, cap
    cdef TickKey* order
    cap = self.meta.n_alloc if self.shared else self.log_tail - self.log_head
    order = <TickKey*>malloc(sizeof(TickKey) * (cap if cap else 1))
    if order == NULL:
        raise MemoryError()
    if self.shared:
        for s in range(cap):
            if self.slots[s].key != 0:
                order[count].last_ts = self.slots[s].last_ts
                order[count].key = self.slots[s].key
                order[count].slot = s
                count += 1
        qsort(order, count, sizeof(TickKey), tick_key_cmp)
    else:
        p = self.log_head
        while p < self.log_tail:
            s = self.lru_log[p]
            if self.slots[s].lock == p:
                order[count].key = self.slots[s].key
                order[count].slot = s
                count += 1
            p += 1
    n[0] = count
    return order


cdef uint32_t hold_at(CompiledCore self, uint64_t key, uint32_t s) noexcept:
    """:func:`hold` for a user last seen in slot ``s`` (``tick``'s order): that slot when it
    still holds them, which spares the index probe, a cache miss per user at a million users;
    else wherever :func:`hold` finds them (moved by another process, or gone: NONE32)."""
    if s < self.capacity:
        if self.shared:
            pf_lock(&self.slots[s].lock, self.pid)
            if self.slots[s].key == key:
                return s
            pf_unlock(&self.slots[s].lock)
        elif self.slots[s].key == key:
            return s
    return hold(self, key)


cdef void forget_gone(CompiledCore self) except *:
    """Drop the full text of the long ids evicted since the last call."""
    cdef Py_ssize_t i
    for i in range(self.gone_n):
        uid = self.long_ids.pop(self.gone[i], None)
        if self.ev_on and uid is not None and not self.ev_over:
            self.ev_long[self.gone[i]] = uid  # for drain_evicted
    self.gone_n = 0


cdef void evict_idle(CompiledCore self, double now) noexcept nogil:
    cdef double horizon = now - self.idle_ttl
    cdef uint32_t s
    while True:
        s = oldest(self)
        if s == NONE32 or self.slots[s].last_ts >= horizon:
            return
        evict(self, s)
        if self.shared:
            return  # one per insert: a sample is no sweep (tick() sweeps)


cdef uint32_t insert(CompiledCore self, uint64_t key, object uid, double ts) except NONE32:
    """New user (reference: ``_insert``); returns its slot (shared: table lock held by the
    caller, and the new slot is returned locked)."""
    cdef Py_ssize_t n
    cdef const char* p = PyUnicode_AsUTF8AndSize(uid, &n)
    cdef uint32_t s
    if p == NULL:
        PyErr_Clear()
        raw = (<str>uid).encode("utf-8", "surrogatepass")
        s = insert_raw(self, key, <const char*>raw, len(raw), ts)
    else:
        s = insert_raw(self, key, p, n, ts)
    settle_ids(self, key, uid)
    return s


cdef inline void settle_ids(CompiledCore self, uint64_t key, object uid) except *:
    """The GIL part of inserting (and evicting) users: long ids' full text."""
    if self.gone_n:
        forget_gone(self)
    if self.note & NOTE_LONG:
        self.note &= ~NOTE_LONG
        self.long_ids[key] = uid


cdef uint32_t insert_raw(CompiledCore self, uint64_t key, const char* p, Py_ssize_t n, double ts) noexcept nogil:
    """The C part of ``insert``: ``p``/``n`` are the id's UTF-8 bytes. A long id sets
    NOTE_LONG; the caller files its full text (``settle_ids``)."""
    cdef uint32_t s, i
    cdef Slot* u
    if self.has_ttl:
        evict_idle(self, ts)
    if self.meta.n_users >= self.capacity:
        evict(self, oldest(self))
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
        u.err_r[i] = -INFINITY
    u.dead_t = -INFINITY
    u.uturn_t = -INFINITY
    u.fail_t = -INFINITY
    u.fail_t0 = -INFINITY
    u.search_t = -INFINITY
    u.stall_t = -INFINITY
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
    touch(self, s)
    return s


cdef uint32_t acquire(CompiledCore self, uint64_t key, object uid, double ts) except NONE32:
    """Shared store: the slot of ``key`` (inserted if new), locked by this process."""
    cdef uint32_t e, s
    while True:
        e = find(self, key)
        if e == 0:
            if pf_lock(&self.meta.table_lock, self.pid):
                repair(self)
            try:
                e = find(self, key)
                if e == 0:
                    return insert(self, key, uid, ts)
            finally:
                pf_unlock(&self.meta.table_lock)
        s = e - 1
        pf_lock(&self.slots[s].lock, self.pid)
        if self.slots[s].key == key:
            return s
        pf_unlock(&self.slots[s].lock)  # evicted or moved meanwhile: look again


cdef inline void release(CompiledCore self, uint32_t s) noexcept:
    if self.shared:
        pf_unlock(&self.slots[s].lock)


cdef uint32_t hold(CompiledCore self, uint64_t key) noexcept:
    """The slot of ``key`` held for reading (shared: locked), or NONE32."""
    cdef uint32_t e
    while True:
        e = find(self, key)
        if e == 0:
            return NONE32
        if not self.shared:
            return e - 1
        pf_lock(&self.slots[e - 1].lock, self.pid)
        if self.slots[e - 1].key == key:
            return e - 1
        pf_unlock(&self.slots[e - 1].lock)


cdef sweep_idle(CompiledCore self, double now):
    cdef double horizon = now - self.idle_ttl
    cdef uint32_t s
    if pf_lock(&self.meta.table_lock, self.pid):
        repair(self)
    try:
        for s in range(self.meta.n_alloc):
            if self.slots[s].key != 0 and self.slots[s].last_ts < horizon:
                evict(self, s)
    finally:
        pf_unlock(&self.meta.table_lock)
