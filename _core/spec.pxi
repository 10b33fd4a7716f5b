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
    """Re-express every time offset from the new base ``te``."""
    cdef double shift = u.base
    cdef int i
    for i in range(RING):
        u.click_r[i] = <float>((shift + <double>u.click_r[i]) - te)
        u.err_r[i] = <float>((shift + <double>u.err_r[i]) - te)
    u.dead_t = <float>((shift + <double>u.dead_t) - te)
    u.uturn_t = <float>((shift + <double>u.uturn_t) - te)
    u.fail_t = <float>((shift + <double>u.fail_t) - te)
    u.fail_t0 = <float>((shift + <double>u.fail_t0) - te)
    u.search_t = <float>((shift + <double>u.search_t) - te)
    u.stall_t = <float>((shift + <double>u.stall_t) - te)
    u.base = te


cdef inline bint decay(const Params* P, Slot* u, double p, double t) noexcept nogil:
    """Value the pressures (valued at ``p``) at ``t`` if later; False if not."""
    cdef double dt = t - p
    cdef double f
    cdef int i
    if dt > 0.0:
        if not calm(u):  # zero pressures stay zero: no exp() to pay
            f = exp(-dt * P.decay_rate)
            for i in range(NDET):
                u.pressure[i] = <float>(<double>u.pressure[i] * f)
        u.p_off = <float>(t - u.last_ts)
        return True
    return False


cdef inline bint calm(const Slot* u) noexcept nogil:
    """Every pressure is zero (their bits: a pressure is never negative)."""
    cdef const uint32_t* w = <const uint32_t*>u.pressure
    cdef uint32_t bits = 0
    cdef int i
    for i in range(NDET):
        bits |= w[i]
    return bits == 0


cdef inline void activate(Slot* u, int detector, double weight) noexcept nogil:
    """A detector fired: its weight joins its pressure."""
    u.pressure[detector] = <float>(<double>u.pressure[detector] + weight)


cdef inline double current(const Slot* u) noexcept nogil:
    """The score: ``1 - exp(-sum of the pressures)``."""
    cdef double total = 0.0
    cdef int i
    for i in range(NDET):
        total += u.pressure[i]
    if total == 0.0:
        return 0.0  # what 1 - exp(-0) gives, without the call
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
        u.flags |= F_IN_EPISODE | F_HAS_EPISODE | F_STUCK
        u.episode_ts = te
        if u.episodes < U16MAX:
            u.episodes += 1
        u.episode_score = <float>score
        return True
    return False


# --- run helpers ----------------------------------------------------------------------------------
cdef inline int within_window(const Slot* u, const float* ring, double te, double window) noexcept nogil:
    """Events a new one at ``te`` makes within ``window``: itself and the ring's recent ones."""
    cdef int i, within = 1
    for i in range(RING):
        if te - (u.base + <double>ring[i]) <= window:
            within += 1
        else:
            break
    return within


cdef inline void push_time(Slot* u, float* ring, double te) noexcept nogil:
    """``te`` becomes the ring's newest entry."""
    cdef int i
    for i in range(RING - 1, 0, -1):
        ring[i] = ring[i - 1]
    ring[0] = <float>(te - u.base)


cdef inline bint burst(Slot* u, float* ring, uint8_t* n, uint16_t flag, double te, double window,
                       int need) noexcept nogil:
    """Push ``te`` into a ring; True when this event makes ``need`` within ``window`` and the
    run has not activated yet. A gap longer than ``window`` starts a new run."""
    cdef int within
    if te - (u.base + <double>ring[0]) > window:
        n[0] = 0
        u.flags &= ~flag
    within = within_window(u, ring, te, window)
    push_time(u, ring, te)
    if n[0] < U8MAX:
        n[0] += 1
    if within >= need and not u.flags & flag:
        u.flags |= flag
        return True
    return False


cdef inline int run_length(Slot* u, float* last, uint8_t* n, double te, double window) noexcept nogil:
    """A run of events each within ``window`` of the one before: the run's length with this
    one (1 when it starts a new run); ``last`` becomes ``te``."""
    if te - (u.base + <double>last[0]) <= window:
        if n[0] < U8MAX:
            n[0] += 1
    else:
        n[0] = 1
    last[0] = <float>(te - u.base)
    return n[0]


# --- detectors, in the order of their indices ------------------------------------------------------
cdef inline bint rage_click(const Params* P, Slot* u, uint32_t t, double te, bint selection) noexcept nogil:
    """D_RAGE on a click: ``rage_need`` clicks on one target within ``rage_win`` (fast), or
    ``slow_need`` within ``slow_win`` on a target that gave a dead click meanwhile (slow: an
    element that does not respond), once per run each. A click that selected text or
    scrolled vetoes the run, as Datadog's does. Also keeps the last click for
    ``error_click``. True: it fired (the caller remembers the target's name)."""
    cdef int i, fast, slow
    cdef double gap
    if t == 0:
        return False
    if t != u.click_target:
        u.click_target = t
        for i in range(RING):
            u.click_r[i] = -INFINITY
        u.click_n = 0
        u.flags &= ~(F_RAGE | F_SLOW)
    gap = te - (u.base + <double>u.click_r[0])
    if gap > P.rage_win:
        u.flags &= ~F_RAGE
    if gap > P.slow_win:
        u.flags &= ~F_SLOW
        u.click_n = 0
    fast = within_window(u, u.click_r, te, P.rage_win)
    slow = within_window(u, u.click_r, te, P.slow_win)
    push_time(u, u.click_r, te)
    if u.click_n < U8MAX:
        u.click_n += 1
    u.flags &= ~F_CLICK_USED
    if selection:
        u.flags |= F_RAGE | F_SLOW
        return False
    if not P.rage_on:
        return False
    if fast >= P.rage_need and not u.flags & F_RAGE:
        u.flags |= F_RAGE | F_SLOW  # the fast run includes the slow one
        activate(u, D_RAGE, P.rage_w)
        return True
    return slow_rage(P, u, t, te, slow)


cdef inline bint slow_rage(const Params* P, Slot* u, uint32_t t, double te, int clicks) noexcept nogil:
    """The slow rage of ``rage_click``: ``clicks`` on ``t`` within ``slow_win`` of ``te``, and
    a dead click on it within ``slow_win`` (the browser script sends a click, and a second
    later a dead click when nothing responded: the dead click is not a click more)."""
    if (clicks >= P.slow_need and not u.flags & F_SLOW and u.dead_target == t
            and te - (u.base + <double>u.dead_t) <= P.slow_win):
        u.flags |= F_SLOW
        activate(u, D_RAGE, P.slow_w)
        return True
    return False


cdef inline bint dead_click(const Params* P, Slot* u, uint32_t t, double te) noexcept nogil:
    """D_DEAD: every dead click adds ``dead_w`` once a run on one target (each within
    ``dead_win`` of the last) reaches ``dead_need``, ``dead_single_w`` before; it may complete
    a slow rage on the clicks before it."""
    cdef int n
    if not P.dead_on:
        return False
    if t == 0:
        activate(u, D_DEAD, P.dead_single_w if P.dead_need > 1 else P.dead_w)
        return False
    if t != u.dead_target:
        u.dead_target = t
        u.dead_n = 0
        u.dead_t = -INFINITY  # a new target starts a new run
    n = run_length(u, &u.dead_t, &u.dead_n, te, P.dead_win)
    activate(u, D_DEAD, P.dead_w if n >= P.dead_need else P.dead_single_w)
    if P.rage_on and t == u.click_target:
        slow_rage(P, u, t, te, within_window(u, u.click_r, te, P.slow_win) - 1)
    return True


cdef inline void error_burst(const Params* P, Slot* u, double te, double factor) noexcept nogil:
    """D_ERR: ``err_need`` errors of any kind within ``err_win`` (weight times ``factor``)."""
    if P.err_on and burst(u, u.err_r, &u.err_n, F_ERR, te, P.err_win, P.err_need):
        activate(u, D_ERR, P.err_w * factor)


cdef inline bint repeat_failure(const Params* P, Slot* u, uint32_t t, double te, double factor) noexcept nogil:
    """D_FAIL: failures on a target (a field, an endpoint), each within ``fail_win`` of the last,
    on the same target or the same step visit; from the ``fail_need``-th on each adds ``fail_w``
    (same target as the last) or ``area_w`` (another target), times ``factor``. A failure that
    names no target (a page's stray script error) is no attempt of the user's."""
    cdef double last
    cdef bint same
    if not P.fail_on or t == 0:
        return False
    last = u.base + <double>u.fail_t
    same = t == u.fail_target
    if te - last <= P.fail_win and (same or last >= u.step_ts):
        if u.fail_n < U8MAX:
            u.fail_n += 1
        if not same:
            u.flags |= F_FAIL_MIXED
    else:
        u.fail_n = 1
        u.fail_t0 = <float>(te - u.base)
        u.flags &= ~F_FAIL_MIXED
    u.fail_t = <float>(te - u.base)
    u.fail_target = t
    if u.fail_n >= P.fail_need:
        activate(u, D_FAIL, (P.fail_w if same else P.area_w) * factor)
        return True
    return False


cdef inline void uturn(const Params* P, Slot* u, uint32_t s, double dur, double te) noexcept nogil:
    """D_UTURN: back to the step before within ``uturn_bounce`` seconds; from the
    ``uturn_need``-th of a run on (each within ``uturn_win`` of the last) each adds
    ``uturn_w``, before that ``uturn_single_w``."""
    cdef int n
    if not (P.uturn_on and s == u.prev_step and dur <= P.uturn_bounce):
        return
    n = run_length(u, &u.uturn_t, &u.uturn_n, te, P.uturn_win)
    activate(u, D_UTURN, P.uturn_w if n >= P.uturn_need else P.uturn_single_w)


cdef inline void empty_search(const Params* P, Slot* u, long results, double te) noexcept nogil:
    """D_SEARCH: searches with no result; from the ``search_need``-th of a run on (each within
    ``search_win`` of the last) each adds ``search_w``, before that ``search_single_w``."""
    cdef int n
    if P.search_on and results == 0:
        n = run_length(u, &u.search_t, &u.search_n, te, P.search_win)
        activate(u, D_SEARCH, P.search_w if n >= P.search_need else P.search_single_w)


cdef inline void help_seeking(const Params* P, Slot* u, int code) noexcept nogil:
    """D_HELP: every help or contact event; boosted when other friction is already high. The
    visit is then a stuck one (out of the step's baseline)."""
    cdef double w, other = 0.0
    cdef int i
    u.flags |= F_STUCK
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
    """D_STALL: past the step's ``limit``, the stall pressure is at least ``stall_w`` per
    ``limit`` seconds beyond it: a level set from the time on the step (not added), so it
    grows while the user stays, whatever the decay, and does not depend on how often it is
    judged."""
    cdef double over
    cdef float level
    if limit <= 0.0:
        return
    over = te - (u.step_ts + limit)
    if over > 0.0:
        level = <float>(P.stall_w * over / limit)
        if level > u.pressure[D_STALL]:
            u.pressure[D_STALL] = level
        u.stall_t = <float>(te - u.base)


cdef inline void custom(const Params* P, Slot* u, int code) noexcept nogil:
    """D_CUSTOM: a config-mapped event with a weight of its own."""
    u.custom = <uint8_t>(code - T_CUSTOM)
    activate(u, D_CUSTOM, P.custom_w[code - T_CUSTOM])


cdef inline void error_click(const Params* P, Slot* u, double te, double factor) noexcept nogil:
    """D_ECLICK: an error within ``eclick_win`` of a click on this step visit, once per click."""
    cdef double clicked
    if not P.eclick_on or u.flags & F_CLICK_USED:
        return
    clicked = u.base + <double>u.click_r[0]
    if te - clicked <= P.eclick_win and clicked >= u.step_ts:
        u.flags |= F_CLICK_USED
        activate(u, D_ECLICK, P.eclick_w * factor)


cdef inline void success(const Params* P, Slot* u) noexcept nogil:
    """A success relieves the pressures, ends every run and the visit's stall."""
    cdef int i
    for i in range(NDET):
        u.pressure[i] = <float>(<double>u.pressure[i] * P.keep_after_success)
    for i in range(RING):
        u.click_r[i] = -INFINITY
        u.err_r[i] = -INFINITY
    u.dead_t = -INFINITY
    u.uturn_t = -INFINITY
    u.fail_t = -INFINITY
    u.fail_t0 = -INFINITY
    u.search_t = -INFINITY
    u.click_n = 0
    u.dead_n = 0
    u.err_n = 0
    u.fail_n = 0
    u.uturn_n = 0
    u.search_n = 0
    u.flags &= ~(LATCHES | F_FAIL_MIXED)
    u.flags |= F_DONE


# --- the steps that need the tables ------------------------------------------------------------------
cdef inline double error_factor(CompiledCore self, int code, long status) noexcept nogil:
    """An api_error's status scales the error detectors: ``ordinary_factor`` for an ordinary
    status, ``refusal_factor`` for a refusal, 1 otherwise."""
    cdef int i
    if code == T_API_ERROR:
        for i in range(self.n_ordinary):
            if self.ordinary_c[i] == status:
                return self.P.ordinary_factor
        for i in range(self.n_refusal):
            if self.refusal_c[i] == status:
                return self.P.refusal_factor
    return 1.0


cdef inline void check_stall(CompiledCore self, Slot* u, double te) noexcept nogil:
    # The limit is at least stall_min_s: within it there is nothing to judge, and most events
    # come early in a visit, so the step's baseline is not even looked up.
    if not self.P.stall_on or u.step == 0 or u.flags & F_DONE or te - u.step_ts <= self.P.stall_min_s:
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
        # A visit that saw an episode, help or contact was a stuck user: it would teach the
        # step that being stuck is normal.
        if dur <= self.P.stall_max_dur and not u.flags & F_STUCK:
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
    u.stall_t = -INFINITY
    u.flags &= ~(F_STUCK | F_DONE)


cdef inline double check_episode(CompiledCore self, Slot* u, double te, int code) noexcept nogil:
    """The score, and an episode when it crosses: copied into ``self.fired`` while the slot is
    held; ``emit()`` or the batch queue reports it after the slot is released."""
    cdef double score = current(u)
    if crossing(&self.P, u, score, te, code):
        self.ctr[C_EPISODES] += 1
        memcpy(&self.fired, u, sizeof(Slot))
        self.fired.lock = 0
        self.fired_score = score
        self.fired_stall = c_stall_need(self, u.step)
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
        # A click that selected text or scrolled (``events.results_of``) is not rage.
        if rage_click(P, u, target_k, te, results == SELECTION):
            self.note |= NOTE_TARGET
    elif code == T_DEAD:
        if dead_click(P, u, target_k, te):
            self.note |= NOTE_TARGET
    elif code == T_ERROR or code == T_API_ERROR or code == T_FORM_ERROR:
        factor = error_factor(self, code, status)
        error_burst(P, u, te, factor)
        error_click(P, u, te, factor)
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
