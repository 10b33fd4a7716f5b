/* Writing a range of a file's dirty pages back to the disk, and waiting for it, without a
 * device flush: the paced write-back of the shared store (pyfriction.writeback) calls it
 * for one small step at a time, so the disk never gets the whole store at once (a journal's
 * fsync queued behind a 300 MB burst waits for all of it).
 *
 * Linux: sync_file_range (Python's os module has no binding; pyconfig.h defines
 * _GNU_SOURCE, which declares it). Elsewhere there is no ranged call: fdatasync writes the
 * whole file, and pf_write_back_ranged tells the caller so (one call per file, no steps). */
#ifndef PF_WRITEBACK_H
#define PF_WRITEBACK_H

#include <fcntl.h>
#include <unistd.h>

#if defined(__linux__) && defined(SYNC_FILE_RANGE_WRITE)
#define PF_WRITE_BACK_RANGED 1
#else
#define PF_WRITE_BACK_RANGED 0
#endif

static inline int pf_write_back(int fd, long long offset, long long nbytes) {
#if PF_WRITE_BACK_RANGED
    return sync_file_range(fd, (off_t)offset, (off_t)nbytes,
                           SYNC_FILE_RANGE_WAIT_BEFORE | SYNC_FILE_RANGE_WRITE | SYNC_FILE_RANGE_WAIT_AFTER);
#else
    (void)offset;
    (void)nbytes;
    return fdatasync(fd);
#endif
}

#endif
