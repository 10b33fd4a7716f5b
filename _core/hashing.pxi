# Hashing (pyfriction/_hashing.py) and step-histogram buckets (pyfriction/_layout.py).
# Part of the one extension pyfriction._core: included by core.pyx (see docs/architecture.md).

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
    cdef Py_ssize_t i = 0
    # Four bytes a round: FNV is one multiply after another, so the loop's own count and
    # test were a third of its instructions (every event hashes its user id).
    while i + 4 <= n:
        h = (h ^ <uint8_t>p[i]) * <uint64_t>FNV_PRIME
        h = (h ^ <uint8_t>p[i + 1]) * <uint64_t>FNV_PRIME
        h = (h ^ <uint8_t>p[i + 2]) * <uint64_t>FNV_PRIME
        h = (h ^ <uint8_t>p[i + 3]) * <uint64_t>FNV_PRIME
        i += 4
    while i < n:
        h = (h ^ <uint8_t>p[i]) * <uint64_t>FNV_PRIME
        i += 1
    return h

cdef inline uint64_t fnv_bytes(const char* p, Py_ssize_t n) nogil:
    cdef uint64_t h = mix64(fnv_raw(p, n))
    return h if h != 0 else 1  # 0 marks a free slot

cdef uint64_t key64(object s) except? 0:
    """key64 of a str: its UTF-8 bytes, or with surrogates passed through, as the reference."""
    cdef Py_ssize_t n
    cdef const char* p = pf_utf8(s, &n)
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
del _b

cdef inline double bucket_upper(int b) nogil:
    return BUCKET_UPPER[b]
