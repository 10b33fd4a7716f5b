# RecentIds: the last N distinct ids as 64-bit fingerprints (pyfriction/recent.py).
# Part of the one extension pyfriction._core: included by core.pyx (see docs/architecture.md).

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

    cdef bint add(self, uint64_t fp) noexcept nogil:
        """True if ``fp`` is remembered; else remember it (forgetting the oldest when full)."""
        cdef uint32_t i = <uint32_t>fp & self.mask, pos
        while self.index[i]:
            if self.ring[self.index[i] - 1] == fp:
                return True
            i = (i + 1) & self.mask
        pos = self.w
        if self.count == self.cap:
            index_delete(self.index, self.mask, pos + 1, <const char*>self.ring, sizeof(uint64_t))
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


# --- ids shared by processes (pyfriction_server.shared.SharedIds) ----------------------------
#: Batches up to this many ids keep their fingerprints on the stack and find repeats within
#: the batch by a scan of the rows before (no set of Python ints); bigger ones use a set.
DEF FILTER_INLINE = 256


cdef class TaggedIds:
    """The table of ``SharedIds`` (pyfriction_server.shared) on its memory-mapped file: two
    generations of open-addressing tables of (fingerprint, tag), a header word holding the
    generation (its low bit: the current table) and one the current table's count. The caller
    holds the file's lock; this only does the probing, in C (the pure-Python twin is
    ``SharedIds`` itself, used where the core is not built)."""

    cdef object view             # the exported buffer: keeps the mapping's memory in place
    cdef uint64_t* meta          # [generation, count]
    cdef uint64_t* fps[2]
    cdef uint64_t* tags[2]
    cdef uint64_t mask, cap, slots

    def __cinit__(self, buffer, Py_ssize_t meta_off, Py_ssize_t table_off, uint64_t slots, uint64_t capacity):
        cdef unsigned char[::1] mem = buffer
        cdef unsigned char* base
        cdef int g
        if slots == 0 or slots & (slots - 1) or capacity == 0 or capacity * 2 > slots:
            raise ValueError("slots must be a power of two holding twice the capacity")
        if meta_off < 0 or meta_off + 16 > mem.shape[0] or table_off < 0 or table_off + <Py_ssize_t>(32 * slots) > mem.shape[0]:
            raise ValueError("the table does not fit in the buffer")
        self.view = mem
        base = &mem[0]
        self.meta = <uint64_t*>(base + meta_off)
        for g in range(2):
            self.fps[g] = <uint64_t*>(base + table_off + g * slots * 16)
            self.tags[g] = self.fps[g] + slots
        self.mask, self.cap, self.slots = slots - 1, capacity, slots

    def release(self):
        """Let go of the buffer (before the mapping is closed)."""
        self.view = None
        self.meta = NULL

    cdef inline uint64_t find(self, int g, uint64_t fp) noexcept nogil:
        cdef uint64_t i = fp & self.mask
        cdef uint64_t* fps = self.fps[g]
        while fps[i] != 0 and fps[i] != fp:
            i = (i + 1) & self.mask
        return i

    cdef void switch(self) noexcept nogil:
        cdef uint64_t generation = self.meta[0] + 1
        memset(self.fps[generation & 1], 0, self.slots * sizeof(uint64_t))
        self.meta[1] = 0
        self.meta[0] = generation

    def repair(self):
        """After a holder died mid-change: recount the current table (an insert leaves a whole
        entry or none: the fingerprint is written last); switch if it is over full."""
        cdef uint64_t i, n = 0
        cdef uint64_t* fps
        if self.meta == NULL:
            raise ValueError("released")
        fps = self.fps[self.meta[0] & 1]
        for i in range(self.slots):
            if fps[i]:
                n += 1
        self.meta[1] = n
        if n > self.cap:
            self.switch()

    def filter(self, ids, uint64_t tag):
        """As ``SharedIds.filter``: the indexes of the rows to keep, or None to keep all.

        Two passes: every id's fingerprint first, with a prefetch of its slot in both tables,
        then the probes. The table is megabytes of random slots, so each probe is a cache miss;
        prefetched a batch ahead, a request's hundred misses overlap instead of following one
        another (a third of the time of the probes one by one, in the two-worker sidecar)."""
        cdef Py_ssize_t index, k, n = len(ids)
        cdef list keep = None
        cdef set here = None
        cdef uint64_t fp, i, j, seen_tag = 0, home
        cdef uint64_t small[FILTER_INLINE]
        cdef uint64_t* fps_of = small
        cdef int g
        cdef bint found
        if self.meta == NULL:
            raise ValueError("released")
        if n > FILTER_INLINE:  # a big batch: its fingerprints on the heap, repeats in a set
            fps_of = <uint64_t*>malloc(n * sizeof(uint64_t))
            if fps_of == NULL:
                raise MemoryError()
            here = set()
        try:
            g = self.meta[0] & 1
            for index in range(n):  # 0: a None id (always kept)
                key = ids[index]
                if key is None:
                    fps_of[index] = 0
                    continue
                if not isinstance(key, str):
                    raise TypeError(f"ids are str, not {type(key).__name__}")
                fp = key64(key)
                if fp == 0:
                    fp = 1  # 0 marks an empty slot
                fps_of[index] = fp
                home = fp & self.mask
                PF_PREFETCH(&self.fps[g][home])
                PF_PREFETCH(&self.fps[1 - g][home])
                PF_PREFETCH(&self.tags[g][home])
            for index in range(n):
                fp = fps_of[index]
                if fp != 0:
                    # An id repeated within the batch is a duplicate after its first row.
                    found = False
                    if here is not None:
                        found = fp in here
                        if not found:
                            here.add(fp)
                    else:
                        for k in range(index):
                            if fps_of[k] == fp:
                                found = True
                                break
                    if not found:
                        g = self.meta[0] & 1
                        i = self.find(g, fp)
                        if self.fps[g][i] == fp:
                            found, seen_tag = True, self.tags[g][i]
                        else:
                            j = self.find(1 - g, fp)
                            if self.fps[1 - g][j] == fp:
                                found, seen_tag = True, self.tags[1 - g][j]
                        if found and seen_tag == tag:
                            found = False  # the record itself, replayed: kept, already remembered
                        elif not found:
                            if self.meta[1] >= self.cap:
                                self.switch()
                                g = self.meta[0] & 1
                                i = self.find(g, fp)
                            self.tags[g][i] = tag
                            self.fps[g][i] = fp
                            self.meta[1] += 1
                    if found:
                        if keep is None:
                            keep = list(range(index))
                        continue
                if keep is not None:
                    keep.append(index)
        finally:
            if fps_of != small:
                free(fps_of)
        return keep
