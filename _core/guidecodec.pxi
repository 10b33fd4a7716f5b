# The file store's guidance record (pyfriction/guidance.py, ``_UserCodec.pack``/``unpack``: the
# specification): the compiled twin of both, the bytes and the objects alike.
# Part of the one extension pyfriction._core: included by core.pyx (see docs/architecture.md).

from libc.math cimport rint

# guidance.py's record constants (checked there before the twin is bound).
DEF G_UNITS = 512.0
DEF G_I32 = 2147483647
DEF G_HEAD = 14
DEF G_LOCALE_MAX = 15
DEF G_EXPIRED = 32
DEF G_DETAILS = 64

GUIDE_LAYOUT = (G_UNITS, G_I32, G_HEAD, G_LOCALE_MAX, G_EXPIRED, G_DETAILS)

cdef tuple G_MARKS = ("delivered", "shown", "clicked", "dismissed", "completed")


cdef inline int32_t g_rel(double base, double t) noexcept:
    cdef double d = rint((base - t) * G_UNITS)  # round half to even, as Python's round()
    if d < -G_I32:
        return -G_I32
    if d > G_I32:
        return G_I32
    return <int32_t>d


cdef inline void g_put32(bytearray out, int32_t v):
    out += PyBytes_FromStringAndSize(<char*>&v, 4)


cdef str g_prefix(str user_id):
    return f"{key64(user_id):016x}-" if user_id else ""


cdef class GuideCodec:
    """``_UserCodec.pack`` and ``unpack`` compiled: ``tests/test_guidance_codec.py`` checks
    they give the reference's bytes and objects."""

    cdef object User, Offer, Guidance, engine, items_by_id
    cdef list items
    cdef dict index
    cdef double expire_after
    cdef object per_day

    def __init__(self, engine, dict index, User, Offer, Guidance):
        self.engine = engine
        self.items = list(engine.config.items)
        self.items_by_id = engine._items
        self.index = index
        self.expire_after = engine.config.expire_after
        self.per_day = engine.config.caps.per_day
        self.User, self.Offer, self.Guidance = User, Offer, Guidance

    def pack(self, u, str user_id):
        """``(record, rest)``: ``_UserCodec.pack``."""
        cdef list offers = list(u.offers.values())
        cdef double base, r_c, c, when, m
        cdef Py_ssize_t i, n_off = len(offers), found
        cdef int flags, bit, recent_n = 0, given_n = 0, dism_n = 0
        cdef int32_t r
        cdef uint16_t marks[5]
        cdef int n_marks
        cdef double* made
        if n_off:
            base = offers[n_off - 1].guidance.created_at
        else:
            times = list(u.recent) + list(u.given.values()) + list(u.dismissed.values())
            base = max(times) if times else 0.0
        prefix = g_prefix(user_id)
        cdef dict index = self.index
        out = bytearray()
        extra_traits = dict(u.traits)
        loc = extra_traits.get("locale")
        cdef bytes loc_b = b""
        if isinstance(loc, str) and (<str>loc).isascii() and 0 < len(<str>loc) <= G_LOCALE_MAX:
            loc_b = (<str>loc).encode()
            del extra_traits["locale"]
        out.append(len(loc_b))
        out += loc_b
        made = <double*>malloc((n_off + 1) * sizeof(double))
        if made == NULL:
            raise MemoryError()
        try:
            for i in range(n_off):
                made[i] = offers[i].guidance.created_at
            for t in u.recent:
                found = -1
                for i in range(n_off - 1, -1, -1):  # the last offer of that time, as a dict keeps
                    if made[i] == <double>t:
                        found = i
                        break
                if 0 <= found < 255:
                    out.append(found)
                else:
                    out.append(255)
                    g_put32(out, g_rel(base, t))
                recent_n += 1
        finally:
            free(made)
        details = []
        for o in offers:
            g = o.guidance
            idx = index.get(g.id, 255)
            flags = 0
            n_marks = 0
            r = g_rel(base, g.created_at)
            c = base - r / G_UNITS
            bit = 0
            for when_o in (o.delivered, o.shown, o.clicked, o.dismissed, o.completed):
                if when_o:
                    when = when_o
                    flags |= 1 << bit
                    m = rint(when - c)
                    marks[n_marks] = <uint16_t>(65535 if m > 65535 else (0 if m < 0 else m))
                    n_marks += 1
                bit += 1
            if o.expired:
                flags |= G_EXPIRED
            expires = g.expires_at
            episode_id = g.episode_id
            mine = [
                g.id if idx == 255 else None,
                None if expires == c + self.expire_after else expires,
                None if prefix and episode_id == f"{prefix}{int(c * 1000.0):x}" else episode_id,
                g.step,
                g.target,
            ]
            if mine[0] is not None or mine[1] is not None or mine[2] is not None or mine[3] is not None or mine[4] is not None:
                flags |= G_DETAILS
                details.append(mine)
            out.append(idx)
            out.append(flags)
            g_put32(out, r)
            if n_marks:
                out += PyBytes_FromStringAndSize(<char*>marks, 2 * n_marks)
        latest = {o.guidance.id: o for o in offers}
        given_x = {}
        for gid, t in u.given.items():
            last = latest.get(gid)
            if last is not None and last.guidance.created_at == t:
                continue  # implied by the offer
            if gid in index:
                out.append(index[gid])
                g_put32(out, g_rel(base, t))
                given_n += 1
            else:
                given_x[gid] = t
        dism_x = {}
        for gid, t in u.dismissed.items():
            last = latest.get(gid)
            if last is not None and last.dismissed == t:
                continue  # implied by the offer's mark
            if gid in index:
                out.append(index[gid])
                g_put32(out, g_rel(base, t))
                dism_n += 1
            else:
                dism_x[gid] = t
        if recent_n > 255 or n_off > 255 or given_n > 255 or dism_n > 255:
            raise _struct.error("ubyte format requires 0 <= number <= 255")
        head = bytearray(G_HEAD)
        head[0] = min(255, G_HEAD + len(out))
        head[1] = 1
        head[2] = recent_n
        head[3] = n_off
        head[4] = given_n
        head[5] = dism_n
        memcpy(<char*>head + 6, &base, 8)
        rest = [extra_traits or None, details or None, given_x or None, dism_x or None]
        return bytes(head) + bytes(out), (rest if any(v is not None for v in rest) else None)

    def unpack(self, bytes record, rest, str user_id):
        """The user of ``(record, rest)``: ``_UserCodec.unpack``."""
        cdef const unsigned char* p = record
        cdef Py_ssize_t size = len(record), at = G_HEAD, n, k
        cdef int recent_n, offers_n, given_n, dism_n, flags, idx, n_marks, bit, i, j
        cdef double base, c
        cdef int32_t r
        cdef uint16_t mk
        if size < G_HEAD:
            raise _struct.error("unpack_from requires a buffer of at least 14 bytes")
        if p[1] != 1:
            raise ValueError(f"a guidance record of format {p[1]}")
        recent_n, offers_n, given_n, dism_n = p[2], p[3], p[4], p[5]
        memcpy(&base, p + 6, 8)
        traits, details, given_x, dism_x = rest if rest is not None else (None, None, None, None)
        cdef list items = self.items
        cdef Py_ssize_t n_items = len(items)
        prefix = g_prefix(user_id)
        u = self.User(self.per_day)
        u_traits = u.traits
        if at >= size:
            raise IndexError("index out of range")
        n = p[at]
        if n:
            if at + 1 + n > size:
                raise IndexError("index out of range")
            u_traits["locale"] = record[at + 1 : at + 1 + n].decode()
        at += 1 + n
        if traits:
            u_traits.update(traits)
        recent = []
        for i in range(recent_n):
            if at >= size:
                raise IndexError("index out of range")
            j = p[at]
            at += 1
            if j == 255:
                if at + 4 > size:
                    raise _struct.error("unpack_from requires a buffer of at least 4 bytes")
                memcpy(&r, p + at, 4)
                recent.append(base - r / G_UNITS)
                at += 4
            else:
                recent.append(j)
        detail = iter(details or ())
        offers = []
        u_offers, u_given, u_dismissed = u.offers, u.given, u.dismissed
        expire_after = self.expire_after
        for i in range(offers_n):
            if at + 6 > size:
                raise IndexError("index out of range")
            idx, flags = p[at], p[at + 1]
            memcpy(&r, p + at + 2, 4)
            c = base - r / G_UNITS
            at += 6
            n_marks = 0
            for bit in range(5):
                if flags & (1 << bit):
                    n_marks += 1
            if at + 2 * n_marks > size:
                raise _struct.error("unpack_from requires a buffer of enough bytes")
            if flags & G_DETAILS:
                gid_x, expires, episode_id, step, target = next(detail)
            else:
                gid_x = expires = episode_id = step = target = None
            item = items[idx] if idx < n_items and idx != 255 else self.items_by_id.get(gid_x or "")
            gid = gid_x if gid_x is not None else (item.id if item else "")
            offer = self.Offer(
                self.Guidance(
                    id=gid,
                    kind=item.kind if item else "banner",
                    title=item.title if item else gid,
                    body=item.body if item else "",
                    url=item.url if item else None,
                    anchor=item.anchor if item else None,
                    locale=item.locale if item else None,
                    episode_id=episode_id if episode_id is not None else f"{prefix}{int(c * 1000.0):x}",
                    step=step,
                    target=target,
                    created_at=c,
                    expires_at=expires if expires is not None else c + expire_after,
                )
            )
            k = 0
            for bit in range(5):
                if flags & (1 << bit):
                    memcpy(&mk, p + at + 2 * k, 2)
                    setattr(offer, G_MARKS[bit], c + mk)
                    k += 1
            at += 2 * n_marks
            offer.expired = bool(flags & G_EXPIRED)
            if offer.dismissed:
                u_dismissed[gid] = offer.dismissed
            offers.append(offer)
            u_offers[gid] = offer
            u_given[gid] = c
        u_recent = u.recent
        for t in recent:
            u_recent.append(offers[t].guidance.created_at if isinstance(t, int) else t)
        for i in range(given_n):
            if at + 5 > size:
                raise IndexError("index out of range")
            memcpy(&r, p + at + 1, 4)
            u_given[items[p[at]].id] = base - r / G_UNITS
            at += 5
        for i in range(dism_n):
            if at + 5 > size:
                raise IndexError("index out of range")
            memcpy(&r, p + at + 1, 4)
            u_dismissed[items[p[at]].id] = base - r / G_UNITS
            at += 5
        u_given.update(given_x or {})
        u_dismissed.update(dism_x or {})
        return u
