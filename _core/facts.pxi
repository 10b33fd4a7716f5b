# The facts file's hash tables (pyfriction/userstate.py, ``_Table``: the specification): the
# compiled twin of the methods every transaction calls. Same bytes written, same results; the
# table binds them in place of its own where the core is built.
# Part of the one extension pyfriction._core: included by core.pyx (see docs/architecture.md).

from cpython.bytes cimport PyBytes_AS_STRING

import struct as _struct
from zlib import crc32 as _crc32

# _Table's layout constants (userstate.py): the record header ``<QIIHBxI``, blocks.
DEF F_HEAD = 24
DEF F_INLINE = 40
DEF F_BLOCK = 256
DEF F_BLOCK_BODY = 252
DEF F_NONE = 0xFFFFFFFF

#: What userstate checks before it binds the methods (a core built from other sources is refused).
FACTS_LAYOUT = (F_HEAD, F_INLINE, F_BLOCK, F_BLOCK_BODY, F_NONE)

cdef inline uint32_t f_ld32(const unsigned char* p) noexcept nogil:
    cdef uint32_t v
    memcpy(&v, p, 4)  # the file is little-endian, as every platform the core builds on
    return v

cdef inline void f_st32(unsigned char* p, uint32_t v) noexcept nogil:
    memcpy(p, &v, 4)

cdef inline uint64_t f_ld64(const unsigned char* p) noexcept nogil:
    cdef uint64_t v
    memcpy(&v, p, 8)
    return v

cdef inline void f_st64(unsigned char* p, uint64_t v) noexcept nogil:
    memcpy(p, &v, 8)


cdef struct FState:  # a table's five state words (``st``): free head, allocated, used, block free head, blocks allocated
    uint32_t w[5]


cdef class FactsTable:
    """The hot methods of one ``userstate._Table`` on the same mapping: ``key``, ``head``, ``find``,
    ``guide``, ``body``, ``checksum``, ``write``, ``insert`` and ``delete``, each the
    reference method's twin (``tests/test_facts_table.py``). ``st``, the table's state words,
    is the same Python list the reference changes in place."""

    cdef object view  # a memoryview of the mmap: keeps the mapping alive and its address valid
    cdef unsigned char* base
    cdef Py_ssize_t size, index_off, entry_off, block_off, stride, guide_size
    cdef uint32_t entries, n_blocks
    cdef uint64_t mask

    def __init__(self, mm, Py_ssize_t index_off, uint64_t index_size, Py_ssize_t entry_off, Py_ssize_t stride,
                 Py_ssize_t guide_size, uint32_t entries, Py_ssize_t block_off, uint32_t n_blocks):
        cdef unsigned char[::1] v = mm
        if block_off + <Py_ssize_t>F_BLOCK * n_blocks > v.shape[0] or entry_off + stride * <Py_ssize_t>entries > block_off:
            raise ValueError("the table does not fit the mapping")
        if stride < F_HEAD + guide_size + F_INLINE or index_size & (index_size - 1):
            raise ValueError("bad table layout")
        self.view = v
        self.base = &v[0]
        self.size = v.shape[0]
        self.index_off, self.entry_off, self.block_off = index_off, entry_off, block_off
        self.stride, self.guide_size = stride, guide_size
        self.entries, self.n_blocks = entries, n_blocks
        self.mask = index_size - 1

    # -- helpers -------------------------------------------------------------------------------
    cdef inline unsigned char* entry(self, Py_ssize_t e) except NULL:
        if e < 0 or e >= self.entries:  # only a damaged index points elsewhere
            raise IndexError(f"entry {e} out of range: the facts file is damaged")
        return self.base + self.entry_off + self.stride * e

    cdef inline uint32_t slot(self, uint64_t j) noexcept:
        return f_ld32(self.base + self.index_off + 4 * j)

    cdef inline void set_slot(self, uint64_t j, uint32_t value) noexcept:
        f_st32(self.base + self.index_off + 4 * j, value)

    cdef uint64_t key_of(self, Py_ssize_t e) except? 0:
        return f_ld64(self.entry(e))

    cdef void write_head(self, unsigned char* at, uint64_t key, uint32_t tick, uint32_t ext, uint16_t length,
                         uint8_t kind, uint32_t crc) noexcept:
        f_st64(at, key)
        f_st32(at + 8, tick)
        f_st32(at + 12, ext)
        memcpy(at + 16, &length, 2)
        at[18] = kind
        at[19] = 0
        f_st32(at + 20, crc)

    cdef uint32_t crc_of(self, unsigned char* at, bytes body) except? 0:
        # zlib's crc32 through Python: the extension links nothing more (the record is small).
        if self.guide_size:
            return _crc32(body, _crc32(PyBytes_FromStringAndSize(<char*>at + F_HEAD, self.guide_size)))
        return _crc32(body)

    cdef void free_blocks(self, int64_t b, FState* st) noexcept:
        cdef int64_t nxt
        cdef unsigned char* at
        while 0 <= b < self.n_blocks:
            at = self.base + self.block_off + F_BLOCK * b
            nxt = <int64_t>f_ld32(at) - 1
            f_st32(at, st.w[3] + 1 if st.w[3] != F_NONE else 0)
            st.w[3] = <uint32_t>b
            b = nxt

    cdef int64_t alloc_block(self, FState* st) noexcept:
        cdef uint32_t b, nxt
        if st.w[3] != F_NONE:
            b = st.w[3]
            nxt = f_ld32(self.base + self.block_off + F_BLOCK * <Py_ssize_t>b)
            st.w[3] = nxt - 1 if nxt else F_NONE
            return b
        if st.w[4] < self.n_blocks:
            st.w[4] += 1
            return st.w[4] - 1
        return -1

    cdef void index_insert(self, uint64_t key, uint32_t e) noexcept:
        cdef uint64_t j = key & self.mask
        while self.slot(j) != 0:
            j = (j + 1) & self.mask
        self.set_slot(j, e + 1)

    # -- the reference's methods ----------------------------------------------------------------
    def head(self, Py_ssize_t e):
        """``(key, tick, first block + 1, body length, kind, checksum)`` of entry ``e``."""
        cdef unsigned char* at = self.entry(e)
        cdef uint16_t length
        memcpy(&length, at + 16, 2)
        return (f_ld64(at), f_ld32(at + 8), f_ld32(at + 12), length, at[18], f_ld32(at + 20))

    def key(self, str text):
        """``key64`` of a user id or a row's text (the reference's ``_Table.key``)."""
        return key64(text)

    def find(self, uint64_t key):
        """The entry holding ``key``, or -1."""
        cdef uint64_t j = key & self.mask
        cdef uint32_t s
        while True:
            s = self.slot(j)
            if s == 0:
                return -1
            if self.key_of(s - 1) == key:
                return <Py_ssize_t>s - 1
            j = (j + 1) & self.mask

    def guide(self, Py_ssize_t e):
        """The packed record's room in entry ``e``."""
        return PyBytes_FromStringAndSize(<char*>self.entry(e) + F_HEAD, self.guide_size)

    def body(self, Py_ssize_t e):
        """Entry ``e``'s body (inline, or along its block chain)."""
        cdef unsigned char* at = self.entry(e)
        cdef uint32_t ext = f_ld32(at + 12)
        cdef uint16_t length
        memcpy(&length, at + 16, 2)
        cdef Py_ssize_t start, left = length, take
        cdef int64_t b
        if ext == 0:
            start = self.entry_off + self.stride * e + F_HEAD + self.guide_size
            take = min(<Py_ssize_t>length, self.size - start)  # as a slice of the mapping ends there
            return PyBytes_FromStringAndSize(<char*>self.base + start, take)
        out = PyBytes_FromStringAndSize(NULL, length)
        cdef unsigned char* dst = <unsigned char*>PyBytes_AS_STRING(out)
        cdef Py_ssize_t got = 0
        b = <int64_t>ext - 1
        while left > 0 and 0 <= b < self.n_blocks:
            at = self.base + self.block_off + F_BLOCK * b
            take = min(left, <Py_ssize_t>F_BLOCK_BODY)
            memcpy(dst + got, at + 4, take)
            got += take
            left -= take
            b = <int64_t>f_ld32(at) - 1
        return out if got == length else out[:got]

    def checksum(self, Py_ssize_t e, bytes body):
        """The CRC-32 of entry ``e``'s packed record and ``body``."""
        return self.crc_of(self.entry(e), body)

    def write(self, Py_ssize_t e, uint64_t key, uint32_t tick, uint8_t kind, bytes body, list st, bytes guide=b""):
        """Write a record's body and packed record (the old chain freed first); False when
        the blocks ran out."""
        cdef unsigned char* at = self.entry(e)
        cdef Py_ssize_t n = len(body), need, i, g = len(guide), take
        cdef FState s
        cdef int64_t b
        cdef uint32_t ext = 0, crc
        cdef unsigned char* p
        cdef const unsigned char* src = body
        if n > 0xFFFF:
            raise _struct.error("ushort format requires 0 <= number <= 65535")
        if self.guide_size and g > self.guide_size:
            raise IndexError("mmap slice assignment is wrong size")
        load_state(&s, st)
        if f_ld64(at) == key and f_ld32(at + 12):
            self.free_blocks(<int64_t>f_ld32(at + 12) - 1, &s)
        cdef list chain
        if n > F_INLINE:
            need = (n + F_BLOCK_BODY - 1) // F_BLOCK_BODY
            chain = []
            for i in range(need):
                b = self.alloc_block(&s)
                if b < 0:
                    for got in chain:  # give back what was taken, one by one (no chain yet)
                        f_st32(self.base + self.block_off + F_BLOCK * <Py_ssize_t>got, 0)
                        self.free_blocks(got, &s)
                    memset(at + F_HEAD, 0, self.guide_size)
                    self.write_head(at, key, tick, 0, 0, kind, self.crc_of(at, b""))
                    store_state(&s, st)
                    return False
                chain.append(b)
            for i in range(need):
                p = self.base + self.block_off + F_BLOCK * <Py_ssize_t>chain[i]
                f_st32(p, <uint32_t>chain[i + 1] + 1 if i + 1 < need else 0)
                take = min(n - i * F_BLOCK_BODY, <Py_ssize_t>F_BLOCK_BODY)
                memcpy(p + 4, src + i * F_BLOCK_BODY, take)
            ext = <uint32_t>chain[0] + 1
        else:
            memcpy(at + F_HEAD + self.guide_size, src, n)
        if self.guide_size:  # padded with zeros, as the reference's ljust
            if g:
                memcpy(at + F_HEAD, <const unsigned char*>guide, g)
            memset(at + F_HEAD + g, 0, self.guide_size - g)
        crc = self.crc_of(at, body)
        # The header last, checksum included: a record cut short by a crash fails its check.
        self.write_head(at, key, tick, ext, <uint16_t>n, kind, crc)
        store_state(&s, st)
        return True

    def insert(self, uint64_t key, list st):
        """A free entry for ``key`` (indexed), or -1 when the table is full."""
        cdef FState s
        cdef uint32_t e
        load_state(&s, st)
        if s.w[0] != F_NONE:
            e = s.w[0]
            s.w[0] = f_ld32(self.entry(e) + 8)  # a free entry's tick links the free list
        elif s.w[1] < self.entries:
            e = s.w[1]
            s.w[1] += 1
        else:
            return -1
        cdef unsigned char* at = self.entry(e)
        memset(at + F_HEAD, 0, self.guide_size)
        self.write_head(at, key, 0, 0, 0, 0, self.crc_of(at, b""))
        self.index_insert(key, e)
        s.w[2] += 1
        store_state(&s, st)
        return e

    def delete(self, Py_ssize_t e, list st):
        """Free entry ``e``: out of the index, its blocks freed, onto the free list."""
        cdef FState s
        cdef unsigned char* at = self.entry(e)
        cdef uint32_t ext = f_ld32(at + 12)
        load_state(&s, st)
        # The core's one backward-shift deletion (table.pxi): the same moves as the reference's.
        index_delete(<uint32_t*>(self.base + self.index_off), <uint32_t>self.mask, <uint32_t>e + 1,
                     <const char*>(self.base + self.entry_off), <size_t>self.stride)
        if ext:
            self.free_blocks(<int64_t>ext - 1, &s)
        self.write_head(at, 0, s.w[0], 0, 0, 0, 0)
        s.w[0] = <uint32_t>e
        s.w[2] -= 1
        store_state(&s, st)


cdef int load_state(FState* s, list st) except -1:
    cdef int i
    if len(st) != 5:
        raise ValueError("a table state is five words")
    for i in range(5):
        s.w[i] = st[i]
    return 0


cdef void store_state(FState* s, list st) noexcept:
    cdef int i
    for i in range(5):
        st[i] = s.w[i]
