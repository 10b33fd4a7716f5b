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
