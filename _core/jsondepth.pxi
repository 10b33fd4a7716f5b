# The sidecar's JSON depth check (pyfriction_server.limits.check_depth): one pass over the body.

from libc.string cimport memchr


def json_too_deep(const unsigned char[::1] body, Py_ssize_t limit):
    """True when the JSON text ``body`` nests arrays and objects deeper than ``limit``;
    brackets inside strings do not count. A string starts at a quote outside strings and
    ends at the next quote that no backslash escapes, or at the end of the text. One pass
    without the GIL that stops at the first level past ``limit``; strings, most of a body's
    bytes, are crossed with ``memchr``. The readable twin is
    ``pyfriction_server.limits._reference_too_deep``."""
    cdef Py_ssize_t n = body.shape[0], depth = 0, escapes
    cdef bint deep = False
    cdef const unsigned char* p
    cdef const unsigned char* end
    cdef const unsigned char* q
    cdef const unsigned char* r
    cdef unsigned char c
    if n == 0:
        return False
    p = &body[0]
    end = p + n
    with nogil:
        while p < end:
            c = p[0]
            if c == 0x22:  # a string: to the next quote not escaped, or to the end
                q = p + 1
                while True:
                    q = <const unsigned char*>memchr(q, 0x22, end - q)
                    if q == NULL:
                        q = end
                        break
                    escapes = 0  # an odd run of backslashes before it escapes it
                    r = q - 1
                    while r > p and r[0] == 0x5C:
                        escapes += 1
                        r -= 1
                    if escapes % 2 == 0:
                        break
                    q += 1
                p = q
            elif c == 0x5B or c == 0x7B:
                depth += 1
                if depth > limit:
                    deep = True
                    break
            elif c == 0x5D or c == 0x7D:
                depth -= 1
            p += 1
    return deep
