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
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <sys/types.h>

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

static inline int pf_lock(uint32_t *lock, uint32_t me) {
    uint32_t spins = 0;
    for (;;) {
        uint32_t cur = __atomic_load_n(lock, __ATOMIC_RELAXED);
        if (cur == 0) {
            if (__atomic_compare_exchange_n(lock, &cur, me, 0, __ATOMIC_ACQUIRE, __ATOMIC_RELAXED))
                return 0;
            continue;
        }
        spins++;
        if (spins < 256) {
            pf_relax();
            continue;
        }
        if ((spins & 255) == 0 && (cur == me || pf_pid_dead(cur))) {
            if (__atomic_compare_exchange_n(lock, &cur, me, 0, __ATOMIC_ACQUIRE, __ATOMIC_RELAXED))
                return 1;
            continue;
        }
        sched_yield();
    }
}

static inline void pf_unlock(uint32_t *lock) { __atomic_store_n(lock, 0, __ATOMIC_RELEASE); }

static inline uint32_t pf_load32(const uint32_t *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
static inline void pf_store32(uint32_t *p, uint32_t v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }
static inline uint64_t pf_load64(const uint64_t *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
static inline void pf_add32(uint32_t *p, uint32_t v) { __atomic_fetch_add(p, v, __ATOMIC_RELAXED); }

#endif
