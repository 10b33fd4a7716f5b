/* Cross-process synchronisation for the shared (file://) store.
 *
 * A lock is a 32-bit word holding the pid of its holder (0: free). Taking it is one
 * compare-and-swap; a waiter that spins for long checks whether the holder still exists and,
 * if it died (kill -9 in the middle of an update), takes the lock over. pf_lock() returns 1
 * in that case so the caller can repair what the dead holder may have left half done.
 * Within one process the GIL already serialises the engine, so "held by my own pid" while I
 * am waiting can only be a leftover of a previous process with the same pid: taken over too.
 */
#ifndef PF_SYNC_H
#define PF_SYNC_H

#include <errno.h>
#include <stdio.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <sys/types.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static inline void pf_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

static inline int pf_pid_dead(uint32_t pid) {
    return pid != 0 && kill((pid_t)pid, 0) == -1 && errno == ESRCH;
}

/* A process killed and not yet reaped by its parent (a zombie) still answers kill(pid, 0);
 * the locks of fcntl are let go at its death, so a lock word must be too: its state in
 * /proc/PID/stat is Z (or X). Looked at only after a long wait (a few system calls). */
static inline int pf_pid_zombie(uint32_t pid) {
    char path[40], buf[512];
    const char *close_paren;
    ssize_t n;
    int fd;
    if (pid == 0)
        return 0;
    snprintf(path, sizeof path, "/proc/%u/stat", pid);
    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return 0;
    n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0)
        return 0;
    buf[n] = 0;
    close_paren = strrchr(buf, ')');  /* the command name may hold anything, ')' included */
    return close_paren != NULL && close_paren[1] == ' ' && (close_paren[2] == 'Z' || close_paren[2] == 'X');
}

/* One look at a lock word that is not `me`'s to keep: 0 when it was free and is now `me`'s,
 * 1 when its holder is gone (`ask`: whether to find out this time; `zombies`: whether a
 * zombie counts as gone) and it is now `me`'s, -1 when it is held, -2 when another waiter
 * won a race for it (look again at once). */
static inline int pf_lock_look(uint32_t *lock, uint32_t me, int ask, int zombies) {
    uint32_t cur = __atomic_load_n(lock, __ATOMIC_RELAXED);
    int gone;
    if (cur == 0)
        gone = 0;
    else if (ask && (cur == me || pf_pid_dead(cur) || (zombies && pf_pid_zombie(cur))))
        gone = 1;
    else
        return -1;
    return __atomic_compare_exchange_n(lock, &cur, me, 0, __ATOMIC_ACQUIRE, __ATOMIC_RELAXED) ? gone : -2;
}

static inline int pf_lock(uint32_t *lock, uint32_t me) {
    uint32_t spins = 0;
    for (;;) {
        int got = pf_lock_look(lock, me, spins >= 256 && (spins & 255) == 0, 0);
        if (got >= 0)
            return got;
        if (got == -2)
            continue;
        spins++;
        if (spins < 256)
            pf_relax();
        else
            sched_yield();
    }
}

/* One try: 1 when the lock was free and is now `me`'s. */
static inline int pf_try_lock(uint32_t *lock, uint32_t me) {
    return pf_lock_look(lock, me, 0, 0) == 0;
}

/* pf_lock for a lock held while Python code runs (the facts file: an episode's transaction,
 * or a report reading every user): the same compare-and-swap and take-over of a dead holder,
 * but past the spins and yields the waiter naps (50 us), so that a long hold does not cost a
 * waiting core; and it gives up after about `budget` naps, returning -1, so that the caller
 * can look at signals (Ctrl-C) and call again. Returns 0 taken, 1 taken over from a dead
 * holder, -1 not taken yet; `napping`: the caller waited already (-1 came back), so go
 * straight to the naps. */
static inline int pf_lock_patient(uint32_t *lock, uint32_t me, uint32_t budget, int napping) {
    uint32_t spins = napping ? 2048 : 0, naps = 0;
    struct timespec nap = {0, 50000};
    for (;;) {
        int got = pf_lock_look(lock, me, spins >= 128 && (spins & 63) == 0, spins >= 2048);
        if (got >= 0)
            return got;
        if (got == -2)
            continue;
        spins++;
        if (spins < 128) {
            pf_relax();
        } else if (spins < 2048) {
            sched_yield();
        } else {
            if (++naps > budget)
                return -1;
            nanosleep(&nap, NULL);
        }
    }
}

static inline void pf_unlock(uint32_t *lock) { __atomic_store_n(lock, 0, __ATOMIC_RELEASE); }

static inline uint32_t pf_load32(const uint32_t *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
static inline void pf_store32(uint32_t *p, uint32_t v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }
static inline uint64_t pf_load64(const uint64_t *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
static inline void pf_add32(uint32_t *p, uint32_t v) { __atomic_fetch_add(p, v, __ATOMIC_RELAXED); }

#endif
