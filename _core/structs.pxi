# The state's C structs: they match pyfriction/_layout.py byte for byte (checked at import).
# Part of the one extension pyfriction._core: included by core.pyx (see docs/architecture.md).

# shared store
# shared store
DEF HEADER_SIZE = 4096
DEF CONFIG_SIZE = 65536
DEF N_PROCS = 56
DEF NAME_TEXT = 123
DEF N_NAMES = 8192
DEF SAMPLE = 8
DEF STORE_VERSION = 1

ctypedef struct Slot:
    uint64_t key
    double last_ts
    double episode_ts
    double step_ts
    double base
    float click_r[RING]     # recent clicks and dead clicks on click_target, newest first
    float err_r[RING]
    float dead_t            # last dead click on dead_target
    float uturn_t           # last u-turn
    float fail_t            # last failure
    float fail_t0           # first failure of the run
    float search_t          # last empty search
    float stall_t           # stall last judged past the limit in this visit
    float p_off             # pressures valued at last_ts + p_off (0 after every event)
    float pressure[NDET]
    float episode_score
    uint32_t events
    uint32_t step
    uint32_t prev_step
    uint32_t click_target
    uint32_t dead_target
    uint32_t fail_target
    uint32_t lock
    uint16_t flags
    uint16_t episodes       # saturating
    uint8_t click_n
    uint8_t dead_n
    uint8_t err_n
    uint8_t fail_n
    uint8_t uturn_n
    uint8_t search_n
    uint8_t custom
    uint8_t uid_len
    char uid[UIDB]

ctypedef struct StepRec:
    uint32_t key
    uint32_t count
    uint32_t buckets[NB]

ctypedef struct Meta:
    uint32_t table_lock     # inserting and evicting users
    uint32_t steps_lock     # adding a step (leaf)
    uint32_t names_lock     # adding a name (leaf)
    uint32_t n_users
    uint32_t n_alloc        # slots ever handed out (free ones below are on the free list)
    uint32_t free_head      # free list, threaded through free slots' ``events``
    uint32_t n_steps
    uint32_t n_names
    uint32_t hand           # where the next eviction sample starts
    uint32_t dirty          # set while processes are attached; 0 after a clean last close
    uint32_t pad[6]

ctypedef struct ProcRec:
    uint32_t pid
    uint32_t pad
    uint64_t ctr[N_COUNTERS]

ctypedef struct NameRec:
    uint32_t key
    uint8_t len
    char text[NAME_TEXT]

ctypedef struct Header:
    char magic[8]
    uint32_t version
    uint32_t header_size
    uint32_t capacity
    uint32_t index_size
    uint32_t max_steps
    uint32_t step_index_size
    uint32_t n_names
    uint32_t slot_size
    char layout[16]
    char config[16]         # fingerprint of the detector config every process must share
    uint32_t config_len     # bytes of the config (JSON) stored after the header
    uint32_t pad0
    uint64_t checksum       # FNV-1a of every byte before it
    char pad1[40]
    Meta meta               # at 128
    char pad2[64]
    uint64_t retired[8]     # at 256: counters of processes that have gone
    char pad3[192]
    ProcRec procs[N_PROCS]  # at 512: one counter block per attached process


ctypedef struct Params:
    # The detector and scoring parameters (``_layout.PARAMS_DTYPE``, built by ``Rules``).
    double decay_rate, threshold, rearm, cooldown, keep_after_success
    double rage_w, rage_win, slow_w, slow_win, dead_w, dead_single_w, dead_win
    double err_w, err_win, ordinary_factor, refusal_factor
    double fail_w, area_w, fail_win, uturn_w, uturn_single_w, uturn_win, uturn_bounce
    double search_w, search_single_w, search_win
    double help_w, contact_w, after_friction, boost
    double stall_w, stall_q, stall_factor, stall_min_s, stall_max_dur
    double eclick_w, eclick_win
    double custom_w[MAX_CUSTOM]
    int32_t rage_need, slow_need, dead_need, err_need, fail_need, uturn_need, search_need, stall_min_n, n_custom
    uint8_t rage_on, dead_on, err_on, fail_on, uturn_on, search_on, help_on, stall_on, eclick_on
    uint8_t pad[3]


def params_layout():
    """Size and field offsets of ``Params``, checked against ``PARAMS_DTYPE``."""
    cdef Params q
    cdef char* b = <char*>&q
    offsets = {
        "decay_rate": <char*>&q.decay_rate - b,
        "threshold": <char*>&q.threshold - b,
        "rearm": <char*>&q.rearm - b,
        "cooldown": <char*>&q.cooldown - b,
        "keep_after_success": <char*>&q.keep_after_success - b,
        "rage_w": <char*>&q.rage_w - b,
        "rage_win": <char*>&q.rage_win - b,
        "slow_w": <char*>&q.slow_w - b,
        "slow_win": <char*>&q.slow_win - b,
        "dead_w": <char*>&q.dead_w - b,
        "dead_single_w": <char*>&q.dead_single_w - b,
        "dead_win": <char*>&q.dead_win - b,
        "err_w": <char*>&q.err_w - b,
        "err_win": <char*>&q.err_win - b,
        "ordinary_factor": <char*>&q.ordinary_factor - b,
        "refusal_factor": <char*>&q.refusal_factor - b,
        "fail_w": <char*>&q.fail_w - b,
        "area_w": <char*>&q.area_w - b,
        "fail_win": <char*>&q.fail_win - b,
        "uturn_w": <char*>&q.uturn_w - b,
        "uturn_single_w": <char*>&q.uturn_single_w - b,
        "uturn_win": <char*>&q.uturn_win - b,
        "uturn_bounce": <char*>&q.uturn_bounce - b,
        "search_w": <char*>&q.search_w - b,
        "search_single_w": <char*>&q.search_single_w - b,
        "search_win": <char*>&q.search_win - b,
        "help_w": <char*>&q.help_w - b,
        "contact_w": <char*>&q.contact_w - b,
        "after_friction": <char*>&q.after_friction - b,
        "boost": <char*>&q.boost - b,
        "stall_w": <char*>&q.stall_w - b,
        "stall_q": <char*>&q.stall_q - b,
        "stall_factor": <char*>&q.stall_factor - b,
        "stall_min_s": <char*>&q.stall_min_s - b,
        "stall_max_dur": <char*>&q.stall_max_dur - b,
        "eclick_w": <char*>&q.eclick_w - b,
        "eclick_win": <char*>&q.eclick_win - b,
        "custom_w": <char*>&q.custom_w[0] - b,
        "rage_need": <char*>&q.rage_need - b,
        "slow_need": <char*>&q.slow_need - b,
        "dead_need": <char*>&q.dead_need - b,
        "err_need": <char*>&q.err_need - b,
        "fail_need": <char*>&q.fail_need - b,
        "uturn_need": <char*>&q.uturn_need - b,
        "search_need": <char*>&q.search_need - b,
        "stall_min_n": <char*>&q.stall_min_n - b,
        "n_custom": <char*>&q.n_custom - b,
        "rage_on": <char*>&q.rage_on - b,
        "dead_on": <char*>&q.dead_on - b,
        "err_on": <char*>&q.err_on - b,
        "fail_on": <char*>&q.fail_on - b,
        "uturn_on": <char*>&q.uturn_on - b,
        "search_on": <char*>&q.search_on - b,
        "help_on": <char*>&q.help_on - b,
        "stall_on": <char*>&q.stall_on - b,
        "eclick_on": <char*>&q.eclick_on - b,
        "pad": <char*>&q.pad[0] - b,
    }
    return sizeof(Params), offsets


def layout():
    """Sizes and offsets of the C structs, checked against ``_layout`` and ``store``."""
    cdef Slot s
    cdef StepRec r
    cdef Header h
    cdef char* b = <char*>&s
    cdef char* hb = <char*>&h
    offsets = {
        "key": <char*>&s.key - b,
        "last_ts": <char*>&s.last_ts - b,
        "episode_ts": <char*>&s.episode_ts - b,
        "step_ts": <char*>&s.step_ts - b,
        "base": <char*>&s.base - b,
        "click_r": <char*>&s.click_r[0] - b,
        "err_r": <char*>&s.err_r[0] - b,
        "dead_t": <char*>&s.dead_t - b,
        "uturn_t": <char*>&s.uturn_t - b,
        "fail_t": <char*>&s.fail_t - b,
        "fail_t0": <char*>&s.fail_t0 - b,
        "search_t": <char*>&s.search_t - b,
        "stall_t": <char*>&s.stall_t - b,
        "p_off": <char*>&s.p_off - b,
        "pressure": <char*>&s.pressure[0] - b,
        "episode_score": <char*>&s.episode_score - b,
        "events": <char*>&s.events - b,
        "step": <char*>&s.step - b,
        "prev_step": <char*>&s.prev_step - b,
        "click_target": <char*>&s.click_target - b,
        "dead_target": <char*>&s.dead_target - b,
        "fail_target": <char*>&s.fail_target - b,
        "lock": <char*>&s.lock - b,
        "flags": <char*>&s.flags - b,
        "episodes": <char*>&s.episodes - b,
        "click_n": <char*>&s.click_n - b,
        "dead_n": <char*>&s.dead_n - b,
        "err_n": <char*>&s.err_n - b,
        "fail_n": <char*>&s.fail_n - b,
        "uturn_n": <char*>&s.uturn_n - b,
        "search_n": <char*>&s.search_n - b,
        "custom": <char*>&s.custom - b,
        "uid_len": <char*>&s.uid_len - b,
        "uid": <char*>&s.uid[0] - b,
    }
    header = {
        "checksum": <char*>&h.checksum - hb, "meta": <char*>&h.meta - hb,
        "retired": <char*>&h.retired[0] - hb, "procs": <char*>&h.procs[0] - hb,
        "config_len": <char*>&h.config_len - hb, "size": sizeof(Header),
        "proc_size": sizeof(ProcRec), "meta_size": sizeof(Meta), "name_size": sizeof(NameRec),
    }
    return sizeof(Slot), offsets, sizeof(StepRec), header


def _check_layout():
    size, offsets, step_size, header = layout()
    if size != SLOT_DTYPE.itemsize or step_size != STEP_DTYPE.itemsize:
        raise ImportError("pyfriction._core was built for another state layout; rebuild it")
    for name, (_, off) in SLOT_DTYPE.fields.items():
        if offsets.get(name) != off:
            raise ImportError(f"pyfriction._core: field {name} at {offsets.get(name)}, layout says {off}")
    built = compiled_constants()
    for name, value in built.items():
        if name.startswith("COUNTER:"):
            expected = _constants.COUNTER_NAMES.index(name[8:]) if name[8:] in _constants.COUNTER_NAMES else None
        else:
            expected = getattr(_constants, name, None)
        if expected != value:
            raise ImportError(f"pyfriction._core was built with {name} = {value!r}, pyfriction._constants says "
                              f"{expected!r}: regenerate (python -m pyfriction._gen_consts) and rebuild")
    if len(_constants.COUNTER_NAMES) != N_COUNTERS:
        raise ImportError("pyfriction._core was built for another set of counters; rebuild it")
    p_size, p_offsets = params_layout()
    if p_size != PARAMS_DTYPE.itemsize:
        raise ImportError(f"pyfriction._core: Params is {p_size} bytes, PARAMS_DTYPE {PARAMS_DTYPE.itemsize}; rebuild")
    for name, (_, off) in PARAMS_DTYPE.fields.items():
        if p_offsets.get(name) != off:
            raise ImportError(f"pyfriction._core: param {name} at {p_offsets.get(name)}, PARAMS_DTYPE says {off}")
    if header["meta"] != 128 or header["retired"] != 256 or header["procs"] != 512 \
            or header["size"] != HEADER_SIZE or header["name_size"] != 128:
        raise ImportError(f"pyfriction._core: unexpected store header layout {header}")


_check_layout()
