# The specification: detectors and scoring (reference: pyfriction/_reference.py).
# Part of the one extension pyfriction._core: included by core.pyx (see docs/architecture.md).
#
# One ``cdef inline`` kernel per scoring step and per detector, named and ordered as the
# reference's module-level functions so that the two files read side by side. A kernel sees
# the parameters (``Params``, copied from ``Rules.params``) and one user's slot, nothing else;
# what needs the tables (the step histograms, the counters, the episode to report) is done by
# the few functions at the end that take the core (``update``, ``navigate``, ``check_stall``,
# ``check_episode``).


# --- scoring steps ------------------------------------------------------------------------------
cdef inline void rebase(Slot* u, double te) noexcept nogil:
    """Re-express every window offset from the new base ``te``."""
    cdef double shift = u.base
    cdef int i
    for i in range(RING):
        u.click_r[i] = <float>((shift + <double>u.click_r[i]) - te)
        u.dead_r[i] = <float>((shift + <double>u.dead_r[i]) - te)
        u.err_r[i] = <float>((shift + <double>u.err_r[i]) - te)
    u.uturn_t = <float>((shift + <double>u.uturn_t) - te)
    u.fail_t = <float>((shift + <double>u.fail_t) - te)
    u.search_t = <float>((shift + <double>u.search_t) - te)
    u.base = te


cdef inline bint decay(const Params* P, Slot* u, double p, double t) noexcept nogil:
    """Value the pressures (valued at ``p``) at ``t`` if later; False if not."""
    cdef double dt = t - p
    cdef double f
    cdef int i
    if dt > 0.0:
        f = exp(-dt * P.decay_rate)
        for i in range(NDET):
            u.pressure[i] = <float>(<double>u.pressure[i] * f)
        u.p_off = <float>(t - u.last_ts)
        return True
    return False


cdef inline void activate(Slot* u, int detector, double weight) noexcept nogil:
    """A detector fired: its weight joins its pressure."""
    u.pressure[detector] = <float>(<double>u.pressure[detector] + weight)


cdef inline double current(const Slot* u) noexcept nogil:
    """The score: ``1 - exp(-sum of the pressures)``."""
    cdef double total = 0.0
    cdef int i
    for i in range(NDET):
        total += u.pressure[i]
    return 1.0 - exp(-total)


cdef inline bint crossing(const Params* P, Slot* u, double score, double te, int code) noexcept nogil:
    """Rearm below ``rearm``; True when ``score`` starts an episode (threshold reached, not on
    a ticket, cooldown over); the slot then records it."""
    if u.flags & F_IN_EPISODE:
        if score < P.rearm:
            u.flags &= ~F_IN_EPISODE
        return False
    if (score >= P.threshold and code != T_TICKET
            and (not u.flags & F_HAS_EPISODE or te - u.episode_ts >= P.cooldown)):
        u.flags |= F_IN_EPISODE | F_HAS_EPISODE
        u.episode_ts = te
        if u.episodes < U16MAX:
            u.episodes += 1
        u.episode_score = <float>score
        return True
    return False


# --- window helpers -------------------------------------------------------------------------------
cdef inline bint burst(Slot* u, float* ring, uint8_t* n, uint16_t flag, double te, double window,
                       int need) noexcept nogil:
    """Push ``te`` into a ring; True when this event makes ``need`` within ``window`` and the
    run has not activated yet. A gap longer than ``window`` starts a new run."""
    cdef int i, within = 1
    if te - (u.base + <double>ring[0]) > window:
        n[0] = 0
        u.flags &= ~flag
    for i in range(RING):
        if te - (u.base + <double>ring[i]) <= window:
            within += 1
        else:
            break
    for i in range(RING - 1, 0, -1):
        ring[i] = ring[i - 1]
    ring[0] = <float>(te - u.base)
    if n[0] < U8MAX:
        n[0] += 1
    if within >= need and not u.flags & flag:
        u.flags |= flag
        return True
    return False


cdef inline bint target_burst(Slot* u, uint32_t* current_target, float* ring, uint8_t* n, uint16_t flag,
                              uint32_t t, double te, double window, int need) noexcept nogil:
    """A burst on one target; an event on another target starts the run over."""
    cdef int i
    if t != current_target[0]:
        current_target[0] = t
        for i in range(RING):
            ring[i] = -INFINITY
        n[0] = 0
        u.flags &= ~flag
    return burst(u, ring, n, flag, te, window, need)


cdef inline bint repeat(Slot* u, float* last, uint8_t* n, uint16_t flag, double te, double window,
                        int need) noexcept nogil:
    """A run of events each within ``window`` of the one before; True when it reaches
    ``need`` and has not activated yet."""
    if te - (u.base + <double>last[0]) <= window:
        if n[0] < U8MAX:
            n[0] += 1
    else:
        n[0] = 1
        u.flags &= ~flag
    last[0] = <float>(te - u.base)
    if n[0] >= need and not u.flags & flag:
        u.flags |= flag
        return True
    return False


# --- detectors, in the order of their indices ------------------------------------------------------
cdef inline bint rage_click(const Params* P, Slot* u, uint32_t t, double te) noexcept nogil:
    """D_RAGE: ``rage_need`` clicks on one target within ``rage_win``. True: it fired (the
    caller remembers the target's name)."""
    if P.rage_on and t != 0 and target_burst(u, &u.click_target, u.click_r, &u.click_n, F_RAGE, t, te,
                                             P.rage_win, P.rage_need):
        activate(u, D_RAGE, P.rage_w)
        return True
    return False


cdef inline bint dead_click(const Params* P, Slot* u, uint32_t t, double te) noexcept nogil:
    """D_DEAD: ``dead_need`` dead clicks on one target within ``dead_win``."""
    if P.dead_on and t != 0 and target_burst(u, &u.dead_target, u.dead_r, &u.dead_n, F_DEAD, t, te,
                                             P.dead_win, P.dead_need):
        activate(u, D_DEAD, P.dead_w)
        return True
    return False


cdef inline void error_burst(const Params* P, Slot* u, double te, double factor) noexcept nogil:
    """D_ERR: ``err_need`` errors of any kind within ``err_win`` (weight times ``factor``)."""
    if P.err_on and burst(u, u.err_r, &u.err_n, F_ERR, te, P.err_win, P.err_need):
        activate(u, D_ERR, P.err_w * factor)


cdef inline bint repeat_failure(const Params* P, Slot* u, uint32_t t, double te, double factor) noexcept nogil:
    """D_FAIL: ``fail_need`` errors on one target, each within ``fail_win`` of the last."""
    if not P.fail_on or t == 0:
        return False
    if t != u.fail_target:
        u.fail_target = t
        u.fail_n = 0
        u.fail_t = -INFINITY  # a new target starts a new run
    if repeat(u, &u.fail_t, &u.fail_n, F_FAIL, te, P.fail_win, P.fail_need):
        activate(u, D_FAIL, P.fail_w * factor)
        return True
    return False


cdef inline void uturn(const Params* P, Slot* u, uint32_t s, double dur, double te) noexcept nogil:
    """D_UTURN: back to the step before within ``uturn_bounce`` seconds, ``uturn_need`` times
    in a run that started less than ``uturn_win`` ago."""
    if not (P.uturn_on and s == u.prev_step and dur <= P.uturn_bounce):
        return
    if te - (u.base + <double>u.uturn_t) > P.uturn_win:
        u.uturn_n = 1
        u.uturn_t = <float>(te - u.base)
        u.flags &= ~F_UTURN
    elif u.uturn_n < U8MAX:
        u.uturn_n += 1
    if u.uturn_n >= P.uturn_need and not u.flags & F_UTURN:
        u.flags |= F_UTURN
        activate(u, D_UTURN, P.uturn_w)


cdef inline void empty_search(const Params* P, Slot* u, long results, double te) noexcept nogil:
    """D_SEARCH: ``search_need`` searches with no result, each within ``search_win`` of the last."""
    if P.search_on and results == 0 and repeat(u, &u.search_t, &u.search_n, F_SEARCH, te, P.search_win,
                                               P.search_need):
        activate(u, D_SEARCH, P.search_w)


cdef inline void help_seeking(const Params* P, Slot* u, int code) noexcept nogil:
    """D_HELP: every help or contact event; boosted when other friction is already high."""
    cdef double w, other = 0.0
    cdef int i
    if not P.help_on:
        return
    w = P.help_w if code == T_HELP else P.contact_w
    for i in range(NDET):
        if i != D_HELP:
            other += u.pressure[i]
    if other >= P.after_friction:
        w *= P.boost
    activate(u, D_HELP, w)


cdef inline void stall(const Params* P, Slot* u, double limit, double te) noexcept nogil:
    """D_STALL: on the current step longer than its ``limit`` (once per visit)."""
    if limit >= 0.0 and te - u.step_ts > limit:
        u.flags |= F_STALL
        activate(u, D_STALL, P.stall_w)


cdef inline void custom(const Params* P, Slot* u, int code) noexcept nogil:
    """D_CUSTOM: a config-mapped event with a weight of its own."""
    u.custom = <uint8_t>(code - T_CUSTOM)
    activate(u, D_CUSTOM, P.custom_w[code - T_CUSTOM])


cdef inline void success(const Params* P, Slot* u) noexcept nogil:
    """A success relieves the pressures and ends every run."""
    cdef int i
    for i in range(NDET):
        u.pressure[i] = <float>(<double>u.pressure[i] * P.keep_after_success)
    for i in range(RING):
        u.click_r[i] = -INFINITY
        u.dead_r[i] = -INFINITY
        u.err_r[i] = -INFINITY
    u.uturn_t = -INFINITY
    u.fail_t = -INFINITY
    u.search_t = -INFINITY
    u.click_n = 0
    u.dead_n = 0
    u.err_n = 0
    u.fail_n = 0
    u.uturn_n = 0
    u.search_n = 0
    u.flags &= ~LATCHES


# --- the steps that need the tables ------------------------------------------------------------------
cdef inline double error_factor(CompiledCore self, int code, long status) noexcept nogil:
    """An api_error with an ordinary status weighs ``ordinary_factor`` of an error."""
    cdef int i
    if code == T_API_ERROR:
        for i in range(self.n_ordinary):
            if self.ordinary_c[i] == status:
                return self.P.ordinary_factor
    return 1.0


cdef inline void check_stall(CompiledCore self, Slot* u, double te) noexcept nogil:
    if not self.P.stall_on or u.step == 0 or u.flags & F_STALL:
        return
    stall(&self.P, u, c_stall_limit(self, u.step), te)


cdef void navigate(CompiledCore self, Slot* u, uint32_t s, double te) noexcept nogil:
    """A page event to another step ends the visit: its duration joins the step's histogram,
    a quick return is a u-turn, and the new step is entered (its name noted)."""
    cdef double dur
    cdef StepRec* r
    self.note |= NOTE_STEP
    if u.step != 0:
        dur = te - u.step_ts
        if dur <= self.P.stall_max_dur:
            r = step_rec(self, u.step, True)
            if r != NULL and r.count < U32MAX:
                if self.shared:
                    pf_add32(&r.count, 1)
                    pf_add32(&r.buckets[bucket_of(dur)], 1)
                else:
                    r.count += 1
                    r.buckets[bucket_of(dur)] += 1
        uturn(&self.P, u, s, dur, te)
    u.prev_step = u.step
    u.step = s
    u.step_ts = te
    u.flags &= ~F_STALL


cdef double check_episode(CompiledCore self, Slot* u, double te, int code) noexcept nogil:
    """The score, and an episode when it crosses: copied into ``self.fired`` while the slot is
    held; ``emit()`` or the batch queue reports it after the slot is released."""
    cdef double score = current(u)
    if crossing(&self.P, u, score, te, code):
        self.ctr[C_EPISODES] += 1
        memcpy(&self.fired, u, sizeof(Slot))
        self.fired.lock = 0
        self.fired_score = score
        self.fired_stall = c_stall_limit(self, u.step)
        self.did_fire = True
    return score


cdef double update(CompiledCore self, Slot* u, int code, double ts, uint32_t step_k, uint32_t target_k,
                   long status, long results) noexcept nogil:
    """The event's effect on one user (reference: ``update``). ``step_k`` is the step's key32
    on a page event, ``target_k`` the target's on a click, dead click or error (0: none).
    Names it needs remembered are left in ``note`` (see ``settle``)."""
    cdef const Params* P = &self.P
    cdef double factor
    cdef double p = u.last_ts + <double>u.p_off  # when the pressures are valued
    cdef double te = ts if ts > u.last_ts else u.last_ts  # a late event counts as happening now
    u.last_ts = te
    self.last_te = te
    if u.events < U32MAX:
        u.events += 1
    if te - u.base > REBASE:
        rebase(u, te)
    if not decay(P, u, p, te):
        u.p_off = <float>(p - te)  # still valued later than the event (a tick ran ahead)
    # Stall is judged while the user is still on the step: an event that moves them on ends
    # the visit instead (its duration feeds the step's baseline).
    if code == T_PAGE and step_k != 0 and step_k != u.step:
        navigate(self, u, step_k, te)
    else:
        check_stall(self, u, te)

    if code == T_CLICK:
        if rage_click(P, u, target_k, te):
            self.note |= NOTE_TARGET
    elif code == T_DEAD:
        if dead_click(P, u, target_k, te):
            self.note |= NOTE_TARGET
    elif code == T_ERROR or code == T_API_ERROR or code == T_FORM_ERROR:
        factor = error_factor(self, code, status)
        error_burst(P, u, te, factor)
        if repeat_failure(P, u, target_k, te, factor):
            self.note |= NOTE_TARGET
    elif code == T_SEARCH:
        empty_search(P, u, results, te)
    elif code == T_HELP or code == T_CONTACT:
        help_seeking(P, u, code)
    elif code == T_SUCCESS:
        success(P, u)
    elif code == T_TICKET:
        self.ctr[C_TICKETS] += 1
    elif code >= T_CUSTOM:
        custom(P, u, code)
    return check_episode(self, u, te, code)
