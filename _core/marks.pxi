# The Redis store's per-user keys and per-event marks (pyfriction/_marks.py, the specification).
# Part of the one extension pyfriction._core: included by core.pyx (see docs/architecture.md).

# --- keys and slots ------------------------------------------------------------------------------
cdef uint16_t CRC16[256]  # Redis Cluster's CRC16 (XMODEM: polynomial 0x1021, initial 0)
for _i in range(256):
    _c = _i << 8
    for _j in range(8):
        _c = ((_c << 1) ^ 0x1021) if _c & 0x8000 else (_c << 1)
    CRC16[_i] = _c & 0xFFFF
del _i, _j, _c

cdef const char* HEX = b"0123456789abcdef"


def user_keys(ids, str prefix):
    """Each user's ``key64`` (uint64), record key ``prefix:{H}:e`` and cluster slot (int64):
    ``pyfriction._marks.py_user_keys``."""
    cdef list seq = list(ids)
    cdef Py_ssize_t n = len(seq), i, plen, j
    cdef bytes pre = prefix.encode("utf-8", "surrogatepass")
    plen = len(pre)
    k64 = np.zeros(n, dtype=np.uint64)
    slots = np.zeros(n, dtype=np.int64)
    cdef uint64_t[::1] kv = k64
    cdef int64_t[::1] sv = slots
    cdef list keys = [None] * n
    cdef char* buf = <char*>malloc(plen + 21)
    if buf == NULL:
        raise MemoryError()
    cdef uint64_t h
    cdef uint16_t crc
    cdef char c
    try:
        memcpy(buf, <const char*>pre, plen)
        buf[plen] = b':'
        buf[plen + 1] = b'{'
        buf[plen + 18] = b'}'
        buf[plen + 19] = b':'
        buf[plen + 20] = b'e'
        for i in range(n):
            uid = seq[i]
            if not isinstance(uid, str):
                raise TypeError(f"a user id must be a str, not {type(uid).__name__}")
            h = key64(uid)
            kv[i] = h
            crc = 0
            for j in range(16):
                c = HEX[(h >> (60 - 4 * j)) & 15]
                buf[plen + 2 + j] = c
                crc = (crc << 8) ^ CRC16[((crc >> 8) ^ <uint8_t>c) & 0xFF]
            sv[i] = crc & 0x3FFF
            keys[i] = buf[: plen + 21].decode("utf-8", "surrogatepass")
    finally:
        free(buf)
    return k64, keys, slots


# --- event fingerprints and seconds --------------------------------------------------------------
cdef inline uint64_t mark_part(object x) except? 0:
    if x is None:
        return 0
    if isinstance(x, str):
        return key64(x)
    return key64(repr(x))


cdef inline bint own_time(object ts, double* out) except -1:
    """An event's own time (``_marks._time``): False when it has none."""
    cdef double t
    if PyFloat_CheckExact(ts):
        t = PyFloat_AS_DOUBLE(ts)
    elif ts is True or ts is False or not isinstance(ts, _MARK_NUMBERS):
        return False
    else:
        try:
            t = float(ts)
        except OverflowError:  # an int past the doubles: an invalid event, which the engine says
            return False
    if not isfinite(t):
        return False
    out[0] = t
    return True


_MARK_NUMBERS = (int, float, np.integer, np.floating)


def event_marks(uids, kinds, ts, steps, targets, props, double now, bint fingerprints=True):
    """Each event's fingerprint (uint64) and second (float64): ``pyfriction._marks.py_event_marks``."""
    cdef Py_ssize_t n = len(uids), i
    for column in (kinds, ts, steps, targets, props):
        if column is not None and len(column) != n:
            raise ValueError("every column must be as long as the user ids")
    fps = np.zeros(n, dtype=np.uint64)
    seconds = np.empty(n, dtype=np.float64)
    cdef uint64_t[::1] fv = fps
    cdef double[::1] sv = seconds
    cdef double clock = floor(now), t
    cdef uint64_t h, bits
    cdef bint timed
    for i in range(n):
        timed = ts is not None and own_time(ts[i], &t)
        sv[i] = floor(t) if timed else clock
        uid = uids[i]
        if not (fingerprints and timed and isinstance(uid, str)):
            continue
        h = key64(uid)
        h = mix64(h ^ (mark_part(kinds[i]) if kinds is not None else 0))
        memcpy(&bits, &t, 8)
        h = mix64(h ^ bits)
        h = mix64(h ^ (mark_part(steps[i]) if steps is not None else 0))
        h = mix64(h ^ (mark_part(targets[i]) if targets is not None else 0))
        if props is not None and props[i]:
            h = mix64(h ^ key64(repr(props[i])))
        fv[i] = h if h != 0 else 1
    return fps, seconds


# --- which events to score -----------------------------------------------------------------------
def admit(uids, fps, seconds, metas, int dedupe, long cap):
    """The events of a chunk to score, each user's new field ``f`` and the events capped:
    ``pyfriction._marks.py_admit`` (its docstring is the specification)."""
    cdef Py_ssize_t n = len(uids), i, u, nu = 0
    cdef Py_ssize_t ring_size = 8 * dedupe, size = ring_size + 12
    cdef const uint64_t[::1] fv = np.ascontiguousarray(fps, dtype=np.uint64)
    cdef const double[::1] sv = np.ascontiguousarray(seconds, dtype=np.float64)
    if fv.shape[0] != n or sv.shape[0] != n:
        raise ValueError("every column must be as long as the user ids")
    cdef dict index = {}  # user -> their number here
    cdef list order = []
    cdef list keep = []
    cdef long capped = 0
    cdef uint64_t fp, have
    cdef char* base
    cdef double sec
    cdef uint32_t count
    cdef Py_ssize_t j
    cdef bint seen
    # Each user's field f, as the bytes it is stored as (fingerprints, then second and count).
    cdef char* state = <char*>malloc(max(1, n) * size)
    if state == NULL:
        raise MemoryError()
    try:
        for i in range(n):
            uid = uids[i]
            if not isinstance(uid, str):
                keep.append(i)
                continue
            got = index.get(uid)
            if got is None:
                u = nu
                nu += 1
                index[uid] = u
                order.append(uid)
                old = metas.get(uid)
                if not old:
                    memset(state + u * size, 0, size)
                elif len(<bytes>old) != size:
                    raise ValueError(f"a user's field f must be {size} bytes, not {len(<bytes>old)}")
                else:
                    memcpy(state + u * size, <const char*>(<bytes>old), size)
            else:
                u = got
            base = state + u * size  # loads and stores by memcpy: a record is not 8-byte aligned
            fp = fv[i]
            if fp:
                seen = False
                for j in range(dedupe):
                    memcpy(&have, base + 8 * j, 8)
                    if have == fp:
                        seen = True
                        break
                if seen:
                    continue
            if cap:
                memcpy(&sec, base + ring_size, 8)
                memcpy(&count, base + ring_size + 8, 4)
                if sv[i] > sec:
                    sec = sv[i]
                    count = 0
                    memcpy(base + ring_size, &sec, 8)
                if count >= cap:
                    capped += 1
                    continue
                count += 1
                memcpy(base + ring_size + 8, &count, 4)
            if fp and dedupe:
                memmove(base, base + 8, 8 * (dedupe - 1))
                memcpy(base + 8 * (dedupe - 1), &fp, 8)
            keep.append(i)
        out = {}
        for u in range(nu):
            out[order[u]] = PyBytes_FromStringAndSize(state + u * size, size)
        return keep, out, capped
    finally:
        free(state)
