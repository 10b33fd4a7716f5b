# C declarations and the core-only constants.
# Part of the one extension pyfriction._core: included by core.pyx (see docs/architecture.md).

cdef extern from "Python.h":
    bint PyUnicode_IS_ASCII(object)
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
    int pf_try_lock(uint32_t* lock, uint32_t me) nogil
    int pf_lock_patient(uint32_t* lock, uint32_t me, uint32_t budget, int napping) nogil
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
    /* PyUnicode_AsUTF8AndSize, with its common case inline: a compact ASCII str is its own
       UTF-8 (the pointer that function returns for it), and a batch asks for every id. */
    static inline const char* pf_utf8(PyObject* o, Py_ssize_t* n) {
        if (PyUnicode_CheckExact(o) && PyUnicode_IS_COMPACT_ASCII(o)) {
            *n = PyUnicode_GET_LENGTH(o);
            return (const char*)(((PyASCIIObject*)o) + 1);
        }
        return PyUnicode_AsUTF8AndSize(o, n);
    }
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
    const char* pf_utf8(object, Py_ssize_t*)
    void pf_ahead(const uint32_t* index, const char* slots, size_t slot_size, uint32_t mask,
                  int far_ok, uint64_t far_key, int near_ok, uint64_t near_key) nogil
    void pf_slot(const void* slot) nogil
    # C constants (a DEF this large would be a Python int where no GIL is held)
    const uint32_t NONE32 "PF_NONE32"
    const uint32_t U32MAX "PF_NONE32"

# core-only constants (not shared with the reference)
DEF LOOKAHEAD = 16
DEF DRAIN_EVERY = 32768  # rows of a batch between deliveries of its episodes
DEF PIPE_ROWS = 32768  # rows per chunk of a columnar batch (see Row)
DEF NOTE_STEP = 1  # the update named a step: remember it
DEF NOTE_TARGET = 2  # ... a target
DEF NOTE_LONG = 4  # a new user's id is longer than UIDB: file its full text
