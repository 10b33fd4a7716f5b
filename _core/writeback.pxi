# Paced write-back of the shared store's files (pyfriction.writeback): one step of it.

cdef extern from "pf_writeback.h":
    int pf_write_back(int fd, long long offset, long long nbytes) nogil
    int PF_WRITE_BACK_RANGED

#: True where write_back() writes the range it is given (Linux); False where it writes the
#: whole file (the caller then makes one call per file).
WRITE_BACK_RANGED = bool(PF_WRITE_BACK_RANGED)


def write_back(int fd, long long offset, long long nbytes):
    """Write the dirty pages of ``fd`` in ``[offset, offset + nbytes)`` to the disk and wait,
    without the GIL and without a device flush (``sync_file_range``; ``fdatasync`` of the
    whole file where there is no ranged call, see ``WRITE_BACK_RANGED``). Raises ``OSError``."""
    cdef int rc, err = 0
    if offset < 0 or nbytes < 0:
        raise ValueError("offset and nbytes must be >= 0")
    with nogil:
        rc = pf_write_back(fd, offset, nbytes)
        if rc != 0:
            err = errno
    if rc != 0:
        raise OSError(err, os.strerror(err))
