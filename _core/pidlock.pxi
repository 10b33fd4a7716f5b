# A lock word in a shared mapping (pf_sync.h): the facts file's lock (pyfriction.userstate).
# Part of the one extension pyfriction._core: included by core.pyx (see docs/architecture.md).
#
# Why not fcntl: an episode's facts take the lock once or twice, and lockf's two system calls
# cost 7-14 us of an episode's 60 on a file store in a busy process (against about 1 us in a
# loop that does nothing else), a tenth of observe()'s time per event with guidance; one
# compare-and-swap costs nanoseconds. What fcntl gave for free, the word gives too: the
# holder's pid in it, and a waiter that finds the holder dead (kill -9) takes the lock over.

from cpython.exc cimport PyErr_CheckSignals

#: Naps of 50 us between looks at signals while waiting (about 10 ms).
DEF PID_LOCK_BUDGET = 200


cdef class PidLock:
    """The 32-bit word at ``offset`` of ``mm`` as a lock between processes: 0 free, else the
    holder's pid. :meth:`acquire` waits (spinning, then yielding, then napping; without the
    GIL) and takes the lock over from a holder that no longer exists; :meth:`release` frees it.
    Threads of one process must take turns before they call :meth:`acquire` (a word holding
    the caller's own pid is a leftover of a dead process with that pid)."""

    cdef object view  # a memoryview of the mapping: keeps it alive and its address valid
    cdef uint32_t* word

    def __init__(self, mm, Py_ssize_t offset):
        cdef unsigned char[::1] v = mm
        if offset < 0 or offset % 4 or offset + 4 > v.shape[0]:
            raise ValueError("the lock word does not fit the mapping")
        self.view = v
        self.word = <uint32_t*>(&v[0] + offset)

    def acquire(self, uint32_t me):
        """Take the lock as pid ``me`` (waits); True when it was taken over from a dead holder."""
        cdef int got, napping = 0
        if me == 0:
            raise ValueError("a pid is never 0")
        if pf_try_lock(self.word, me):
            return False  # the common case: free, taken with the GIL held
        while True:
            with nogil:
                got = pf_lock_patient(self.word, me, PID_LOCK_BUDGET, napping)
            if got >= 0:
                return got == 1
            napping = 1
            PyErr_CheckSignals()  # raises KeyboardInterrupt and the like: still not holding it

    def release(self):
        """Free the lock (its holder's call)."""
        pf_unlock(self.word)

    def holder(self):
        """The pid holding the lock, 0 when free."""
        return pf_load32(self.word)
