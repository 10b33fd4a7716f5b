# Event intake: one event's path (validate, apply, report) and the episode queue.
# Part of the one extension pyfriction._core: included by core.pyx (see docs/architecture.md).

cdef emit(CompiledCore self, object uid, object account, object step, object target):
    """Report the episode fired by the last update, if any (no slot held now)."""
    if not self.did_fire:
        return
    self.did_fire = False
    rec = slot_fields(&self.fired)
    if uid is None:
        uid = uid_of(self, &self.fired)
    self.on_episode(rec, uid, account, step, target, self.fired.episode_ts, self.fired_score,
                    self.fired_stall)


cdef report(CompiledCore self, PyObject* uid, int code, object account, object step, object target):
    """Hand the last update's episode and outcome (if any) to the tracker; while this
    thread scores a batch, queue them instead (see ``begin_batch``)."""
    cdef bint outcome = T_TICKET <= code <= T_GUIDANCE_DISMISSED
    if self.deferring and self.defer_thread == PyThread_get_thread_ident():
        if self.did_fire:
            self.did_fire = False
            push(self, &self.fired, 0, self.fired_score, self.fired.episode_ts, self.fired_stall,
                      uid, account, step, target)
        if outcome:
            push(self, NULL, code, 0.0, self.last_te, 0.0, uid, account, step, target)
        return
    emit(self, <object>uid, account, step, target)
    if outcome:
        self.on_outcome(self.type_names[code], <object>uid, account, step, target, self.last_te)


cdef int push(CompiledCore self, Slot* rec, int code, double score, double te, double stall,
              PyObject* uid, object account, object step, object target) except -1:
    cdef Pending* p
    cdef Py_ssize_t cap
    if self.pend_n == self.pend_cap:
        cap = 64 if self.pend_cap == 0 else 2 * self.pend_cap
        p = <Pending*>realloc(self.pend, cap * sizeof(Pending))
        if p == NULL:
            raise MemoryError("cannot queue a batch's episodes")
        self.pend = p
        self.pend_cap = cap
    p = &self.pend[self.pend_n]
    if rec != NULL:
        memcpy(&p.rec, rec, sizeof(Slot))
    p.code = code
    p.ev_mark = self.ev_total
    p.score = score
    p.te = te
    p.stall = stall
    p.uid = uid
    p.account = NULL if account is None else <PyObject*>account
    p.step = NULL if step is None else <PyObject*>step
    p.target = NULL if target is None else <PyObject*>target
    Py_XINCREF(p.uid)
    Py_XINCREF(p.account)
    Py_XINCREF(p.step)
    Py_XINCREF(p.target)
    self.pend_n += 1
    return 0


cdef bint begin_batch(CompiledCore self):
    """From here until ``end_batch``, this thread's episodes and outcomes are queued and
    delivered in order at each ``drain``: the batch loop stays in C with its data in
    cache, and the Python work runs in one warm stretch. The tracker allows it only
    while no callback runs inline (``batch_queue``): an inline callback may observe, and
    must see the state of the moment its episode fired. False when not allowed, or when
    another thread is inside a batch of this core (this call then reports as it goes)."""
    cdef unsigned long me = PyThread_get_thread_ident()
    if not self.batch_queue or (self.deferring and self.defer_thread != me):
        return False
    self.defer_thread = me
    self.deferring += 1
    return True


cdef end_batch(CompiledCore self, bint began):
    if began:
        self.deferring -= 1
    drain(self)


cdef drain(CompiledCore self):
    """Deliver the queued episodes and outcomes, oldest first, inside one
    ``deliver_session()`` when the tracker gives one and more than one is queued (a
    ``file://`` store: one lock and one write of the facts for them all, not one each)."""
    if self.deliver_session is not None and self.pend_n - self.pend_head > 1:
        with self.deliver_session():
            drain_queue(self)
    else:
        drain_queue(self)


cdef drain_queue(CompiledCore self):
    """``drain``'s loop. A callback may re-enter ``observe``: what it queues is delivered by
    this same loop."""
    cdef Pending* p
    cdef int code
    cdef double score, te, stall
    cdef uint64_t mark
    while self.pend_head < self.pend_n:
        p = &self.pend[self.pend_head]
        self.pend_head += 1
        code, score, te, stall = p.code, p.score, p.te, p.stall
        mark = p.ev_mark
        uid = None if p.uid == NULL else <object>p.uid
        account = None if p.account == NULL else <object>p.account
        step = None if p.step == NULL else <object>p.step
        target = None if p.target == NULL else <object>p.target
        Py_XDECREF(p.uid)
        Py_XDECREF(p.account)
        Py_XDECREF(p.step)
        Py_XDECREF(p.target)
        if code == 0:
            rec = slot_fields(&p.rec)
            if uid is None:
                uid = uid_of(self, &p.rec)
            # p may move from here on: a callback can queue more.
            self.ev_limit = mark
            try:
                self.on_episode(rec, uid, account, step, target, te, score, stall)
            finally:
                self.ev_limit = -1
        else:
            self.ev_limit = mark
            try:
                self.on_outcome(self.type_names[code], uid, account, step, target, te)
            finally:
                self.ev_limit = -1
    self.pend_head = self.pend_n = 0


cdef inline int code_of(CompiledCore self, object kind) except -1:
    cdef PyObject* o = PyDict_GetItemWithError(self.type_codes, kind)
    return T_UNKNOWN if o == NULL else <int><object>o


cdef double apply(CompiledCore self, PyObject* uid, uint64_t key, object kind, double ts, object step,
                  object target, object account, long status, long results,
                  int code=-1, uint32_t step_k=0, uint32_t target_k=0) except? -1.0:
    """One valid event. ``uid`` is borrowed and only read for a new user, an episode or
    an outcome: in a batch over many users, touching each id object again would cost a
    cache miss per event."""
    cdef uint32_t s
    cdef double score
    self.ctr[C_EVENTS] += 1
    if code < 0:
        code = code_of(self, kind)
    # Python code (the exclusion globs) runs before the slot is looked up: it may let
    # another thread in, which must not find us holding a slot.
    if (code == T_UNKNOWN or (self.has_excl_step and self.excl_step(step))
            or (self.has_excl_target and self.excl_target(target))):
        if code == T_UNKNOWN:
            self.ctr[C_UNKNOWN] += 1
        else:
            self.ctr[C_EXCLUDED] += 1
        s = hold(self, key)
        if s == NONE32:
            return 0.0
        score = current(&self.slots[s])
        release(self, s)
        return score
    if step_k == 0 and code == T_PAGE and step is not None:
        step_k = name_key(self, step)
    if target_k == 0 and T_CLICK <= code <= T_FORM_ERROR and target is not None:
        target_k = name_key(self, target)
    if self.shared:
        s = acquire(self, key, <object>uid, ts)
    else:
        s = find(self, key)
        if s == 0:
            s = insert(self, key, <object>uid, ts)
        else:
            s -= 1
            touch(self, s)
    score = update(self, &self.slots[s], code, ts, step_k, target_k, status, results)
    release(self, s)
    if self.note:
        settle(self, step_k, step, target_k, target)
    if self.did_fire or T_TICKET <= code <= T_GUIDANCE_DISMISSED:
        report(self, uid, code, account, step, target)
    return score


cdef inline uint32_t name_key(CompiledCore self, object s) except? 0:
    """``key32(s)`` of an event's step or target: one events name again and again, and
    hashing it anew was a tenth of a dict event's work. Memoised by address; the memo
    holds the str (see KeyMemo)."""
    cdef KeyMemo* m = &self.key_memo[memo_slot(<PyObject*>s, KEY_BITS)]
    cdef PyObject* old = m.obj
    cdef uint32_t k
    if old == <PyObject*>s:
        return m.k32
    k = key32(s)
    Py_INCREF(s)
    m.obj = <PyObject*>s
    m.k32 = k
    Py_XDECREF(old)  # last: the entry is whole if letting go of the old str runs code
    return k


cdef void settle(CompiledCore self, uint32_t step_k, object step, uint32_t target_k, object target) except *:
    """Remember the names an update noted (no slot held: Python may run)."""
    cdef int note = self.note
    self.note = 0
    if note & NOTE_STEP:
        remember(self, step_k, step)
    if note & NOTE_TARGET:
        remember(self, target_k, target)


# The fields of a dict event, interned: an event written as a literal (or by the SDK) has
# these very objects as its keys.
cdef str K_USER_ID = _intern("user_id")
cdef str K_TYPE = _intern("type")
cdef str K_TS = _intern("ts")
cdef str K_STEP = _intern("step")
cdef str K_TARGET = _intern("target")
cdef str K_ACCOUNT = _intern("account_id")
cdef str K_PROPERTIES = _intern("properties")


cdef double observe_dict(CompiledCore self, dict d) except? -1.0:
    """The fast path for a plain dict; anything unusual goes to the reference parser.

    The fields are read in one walk over the dict when each of its keys is one of the
    interned field names (what a lookup would find, by identity); a lookup per field
    costs more than the whole walk. Any other key (another object, an unknown field):
    one lookup per field, as a lookup finds them by equality."""
    cdef PyObject* o
    cdef PyObject* k
    cdef PyObject* v
    cdef PyObject* f_uid = NULL
    cdef PyObject* f_type = NULL
    cdef PyObject* f_ts = NULL
    cdef PyObject* f_step = NULL
    cdef PyObject* f_target = NULL
    cdef PyObject* f_account = NULL
    cdef PyObject* f_props = NULL
    cdef Py_ssize_t pos = 0
    cdef bint walked = True
    cdef object uid, kind, step = None, target = None, account = None
    cdef double ts
    cdef long status = -1, results = -1
    while PyDict_Next(d, &pos, &k, &v):
        if k == <PyObject*>K_USER_ID:
            f_uid = v
        elif k == <PyObject*>K_TYPE:
            f_type = v
        elif k == <PyObject*>K_TS:
            f_ts = v
        elif k == <PyObject*>K_STEP:
            f_step = v
        elif k == <PyObject*>K_TARGET:
            f_target = v
        elif k == <PyObject*>K_PROPERTIES:
            f_props = v
        elif k == <PyObject*>K_ACCOUNT:
            f_account = v
        else:
            walked = False
            break
    if not walked:
        f_uid = PyDict_GetItemWithError(d, K_USER_ID)
        f_type = PyDict_GetItemWithError(d, K_TYPE)
        f_ts = PyDict_GetItemWithError(d, K_TS)
        f_step = PyDict_GetItemWithError(d, K_STEP)
        f_target = PyDict_GetItemWithError(d, K_TARGET)
        f_account = PyDict_GetItemWithError(d, K_ACCOUNT)
        f_props = PyDict_GetItemWithError(d, K_PROPERTIES)
    o = f_uid
    if o == NULL or not PyUnicode_CheckExact(<object>o):
        return observe_slow(self, d)
    uid = <object>o
    o = f_type
    if o == NULL or not PyUnicode_CheckExact(<object>o):
        return observe_slow(self, d)
    kind = <object>o
    if not (0 < PyUnicode_GET_LENGTH(uid) <= MAX_TEXT and 0 < PyUnicode_GET_LENGTH(kind) <= MAX_TEXT
            and well_formed(uid) and well_formed(kind)):
        return observe_slow(self, d)
    o = f_ts
    if o == NULL or <object>o is None:
        return observe_slow(self, d)  # the clock: rare enough for the general path
    if PyFloat_CheckExact(<object>o):
        ts = PyFloat_AS_DOUBLE(<object>o)
    elif PyLong_CheckExact(<object>o):
        ts = PyLong_AsDouble(<object>o)
        if ts == -1.0 and PyErr_Occurred() != NULL:
            PyErr_Clear()  # too large for a double: the general path says so
            return observe_slow(self, d)
    else:
        return observe_slow(self, d)
    if not ts_plausible(self, ts):
        return observe_slow(self, d)  # out of range (or not finite): the general path says why
    step = optional_text(f_step)
    target = optional_text(f_target)
    account = optional_text(f_account)
    if step is _BAD or target is _BAD or account is _BAD:
        return observe_slow(self, d)
    o = f_props
    if o != NULL and <object>o is not None:
        if not PyDict_CheckExact(<object>o):
            return observe_slow(self, d)
        status = int_property(<dict>o, "status")
        if PyDict_GetItemWithError(<dict>o, "selection") == NULL:
            results = int_property(<dict>o, "results")
        else:
            results = _ev.results_of(<object>o)  # rare: the reference decides
    return apply(self, <PyObject*>uid, key64(uid), kind, ts, step, target, account, status, results)


cdef double observe_slow(CompiledCore self, object event) except? -1.0:
    try:
        p = _ev.parse_event(event, self.clock, self.ts_range)
    except _ev.InvalidEvent:
        self.ctr[C_INVALID] += 1
        raise
    uid = p[0]
    return apply(self, <PyObject*>uid, key64(uid), p[1], p[2], p[3], p[4], p[5], p[6], p[7])


cdef inline long int_property(dict props, str name) except? -2:
    """Reference: ``events._int_property``; exact ints here, anything else in Python."""
    cdef PyObject* o = PyDict_GetItemWithError(props, name)
    cdef long long v
    cdef int overflow = 0
    if o == NULL:
        return -1
    if PyLong_CheckExact(<object>o):
        v = PyLong_AsLongLongAndOverflow(<object>o, &overflow)
        return <long>v if overflow == 0 and 0 <= v <= I31 else -1
    return _ev.int_value(<object>o)


_BAD = object()


cdef inline object optional_text(PyObject* o):
    """An optional text field of a dict event (NULL: absent): None when absent or empty, the
    str when fine, ``_BAD`` when the reference parser has to judge it (and raise)."""
    if o == NULL or <object>o is None:
        return None
    if not PyUnicode_CheckExact(<object>o) or PyUnicode_GET_LENGTH(<object>o) > MAX_TEXT or not well_formed(<object>o):
        return _BAD
    return <object>o if PyUnicode_GET_LENGTH(<object>o) > 0 else None


cdef inline bint well_formed(object s):
    """A str that encodes to UTF-8 (no lone surrogate): ``events._text`` refuses the others.
    ASCII is the common case and free to tell; else the UTF-8 form is made (and kept by the
    str, which needs it anyway for its key)."""
    cdef Py_ssize_t n
    if PyUnicode_IS_ASCII(s):
        return True
    if PyUnicode_AsUTF8AndSize(s, &n) == NULL:
        PyErr_Clear()
        return False
    return True


cdef inline double wall_clock() noexcept nogil:
    cdef timespec t
    clock_gettime(CLOCK_REALTIME, &t)
    return <double>t.tv_sec + <double>t.tv_nsec * 1e-9


cdef inline bint ts_plausible(CompiledCore self, double ts) noexcept nogil:
    """``events.TsRange.ok``: within [ts_min, wall clock + max_ahead]. The upper bound is
    kept and recomputed only when a time passes it (it only grows, so a stale bound never
    accepts too late a time): the common case is two comparisons."""
    if not (ts >= self.ts_min):  # also NaN
        return False
    if ts <= self.ts_hi:
        return True
    self.ts_hi = wall_clock() + self.ts_ahead
    return ts <= self.ts_hi
