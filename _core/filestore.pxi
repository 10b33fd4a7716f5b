# The shared store file (file://PATH): layout of its sections, header, attach and repair.
# Part of the one extension pyfriction._core: included by core.pyx (see docs/architecture.md).

def store_sections(uint32_t capacity, uint32_t max_steps):
    """Offsets of a shared store file's sections: ``(sizes dict, total bytes)``."""
    cdef uint32_t index_size = 1, step_index_size = 1
    while index_size < 2 * capacity:
        index_size <<= 1
    while step_index_size < 2 * max_steps:
        step_index_size <<= 1
    cdef size_t config_off = HEADER_SIZE
    cdef size_t slots_off = config_off + CONFIG_SIZE
    cdef size_t index_off = page_up(slots_off + <size_t>capacity * sizeof(Slot))
    cdef size_t steps_off = page_up(index_off + <size_t>index_size * 4)
    cdef size_t step_index_off = page_up(steps_off + <size_t>max_steps * sizeof(StepRec))
    cdef size_t names_off = page_up(step_index_off + <size_t>step_index_size * 4)
    cdef size_t total = page_up(names_off + <size_t>N_NAMES * sizeof(NameRec))
    return {
        "index_size": index_size, "step_index_size": step_index_size, "config": config_off,
        "slots": slots_off, "index": index_off, "steps": steps_off,
        "step_index": step_index_off, "names": names_off, "n_names": N_NAMES,
    }, total


class StoreError(RuntimeError):
    """A shared store file cannot be used: wrong kind, version, layout, config or capacity,
    or damaged. The message says which and what to do."""



cdef open_file(CompiledCore self, str path, bytes config_json):
    import fcntl
    from pyfriction.diskspace import reserve
    sections, total = store_sections(self.capacity, self.max_steps)
    fingerprint = config_fingerprint(config_json)
    if len(config_json) > CONFIG_SIZE:
        raise StoreError("config too large for the store file")
    try:
        f = open(path, "a+b")
    except OSError as exc:
        raise StoreError(f"cannot open store {path!r}: {exc.strerror}") from None
    try:
        # One process at a time creates, checks and attaches; the hot path takes no flock.
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        size = os.fstat(f.fileno()).st_size
        if size == 0:
            # Every block now: a block missing when a page is first written through the map
            # on a full disk is a SIGBUS for the whole host process (pyfriction.diskspace).
            try:
                reserve(f.fileno(), total, path)
            except OSError as exc:
                raise StoreError(f"cannot create the store: {exc.strerror}") from None
            size = total
            fresh = True
        else:
            fresh = False
            check_header(path, f, self.capacity, self.max_steps, fingerprint, total, size)
        base = mmap(NULL, total, PROT_READ | PROT_WRITE, MAP_SHARED, f.fileno(), 0)
        if base == MAP_FAILED:
            raise StoreError(f"{path}: cannot map the store ({total} bytes)")
        self.map_base = <char*>base
        self.map_len = total
        self.map_file = f
        self.shared = True
        self.path = path
        self.hdr = <Header*>self.map_base
        self.meta = &self.hdr.meta
        self.slots = <Slot*>(self.map_base + <size_t>sections["slots"])
        self.index = <uint32_t*>(self.map_base + <size_t>sections["index"])
        self.steps = <StepRec*>(self.map_base + <size_t>sections["steps"])
        self.step_index = <uint32_t*>(self.map_base + <size_t>sections["step_index"])
        self.ntab = <NameRec*>(self.map_base + <size_t>sections["names"])
        if fresh:
            write_header(self, sections, fingerprint, config_json)
        attach(self)
        msync(self.map_base, HEADER_SIZE, MS_SYNC)
    finally:
        fcntl.flock(f.fileno(), fcntl.LOCK_UN)
    self.names_view = SharedNames(self)


cdef write_header(CompiledCore self, dict sections, bytes fingerprint, bytes config_json):
    cdef Header* h = self.hdr
    memcpy(h.magic, b"PYFRICT\0", 8)
    h.version = STORE_VERSION
    h.header_size = HEADER_SIZE
    h.capacity = self.capacity
    h.index_size = sections["index_size"]
    h.max_steps = self.max_steps
    h.step_index_size = sections["step_index_size"]
    h.n_names = N_NAMES
    h.slot_size = sizeof(Slot)
    layout_hash = store_layout_hash()
    memcpy(h.layout, <char*>layout_hash, 16)
    memcpy(h.config, <char*>fingerprint, 16)
    h.config_len = len(config_json)
    if config_json:
        memcpy(self.map_base + HEADER_SIZE, <char*>config_json, len(config_json))
    h.meta.free_head = NONE32
    h.checksum = fnv_raw(<char*>h, <char*>&h.checksum - <char*>h)


cdef attach(CompiledCore self):
    """Claim a counter block (the table lock held); check the file after a crash."""
    cdef int i, mine = -1, others = 0
    cdef uint32_t p
    cdef Header* h = self.hdr
    if pf_lock(&self.meta.table_lock, self.pid):
        repair(self)
    try:
        for i in range(N_PROCS):
            p = h.procs[i].pid
            if p != 0 and pf_pid_dead(p):
                retire(self, i)
                p = 0
            if p == 0 and mine < 0:
                mine = i
            elif p != 0:
                others += 1  # another process, or another tracker of this one
        if mine < 0:
            raise StoreError(f"{self.path}: more than {N_PROCS} processes attached")
        if others == 0 and self.meta.dirty:
            # Nobody is attached yet the file was not closed cleanly: the last processes
            # died (or the machine did). The slots are the truth; rebuild the rest from them.
            repair(self)
        h.procs[mine].pid = self.pid
        memset(h.procs[mine].ctr, 0, sizeof(h.procs[mine].ctr))
        self.ctr = h.procs[mine].ctr
        self.proc_index = mine
        self.meta.dirty = 1
    finally:
        pf_unlock(&self.meta.table_lock)


cdef void retire(CompiledCore self, int i) noexcept:
    cdef int c
    for c in range(N_COUNTERS):
        self.hdr.retired[c] += self.hdr.procs[i].ctr[c]
        self.hdr.procs[i].ctr[c] = 0
    self.hdr.procs[i].pid = 0


cdef repair(CompiledCore self):
    """Rebuild the index, free list and counts from the slots (table lock held)."""
    cdef uint32_t s, j, n = 0, free_head = NONE32, top = 0
    cdef Slot* u
    cdef bint ok
    memset(self.index, 0, (self.mask + 1) * sizeof(uint32_t))
    for s in range(self.capacity):
        u = &self.slots[s]
        if u.key == 0:
            continue
        top = s + 1
        ok = (Py_IS_FINITE(u.last_ts) and Py_IS_FINITE(u.p_off) and u.p_off >= 0.0 and Py_IS_FINITE(u.base)
              and (u.uid_len <= UIDB or u.uid_len == UID_LONG))
        j = <uint32_t>u.key & self.mask
        while ok and self.index[j] != 0:
            if self.slots[self.index[j] - 1].key == u.key:
                ok = False  # the same user twice: keep the first
            j = (j + 1) & self.mask
        if not ok:
            memset(u, 0, sizeof(Slot))
            continue
        u.lock = 0
        self.index[j] = s + 1
        n += 1
    for s in range(top):
        if self.slots[s].key == 0:
            self.slots[s].events = free_head
            free_head = s
    self.meta.n_users = n
    self.meta.n_alloc = top
    self.meta.free_head = free_head
    self.meta.steps_lock = 0
    self.meta.names_lock = 0


cdef class SharedNames:
    """The shared store's name table, read like the ``Names`` dict of a private tracker."""

    cdef CompiledCore core

    def __init__(self, CompiledCore core):
        self.core = core

    def get(self, key, default=None):
        k = int(key)
        if not 0 < k <= U32MAX:
            return default
        name = name_of(self.core, k)
        return default if name is None else name

    def __contains__(self, key):
        return self.get(key) is not None

    def remember(self, key, text):
        remember_shared(self.core, int(key), text)

    def update(self, pairs):
        for key, text in (pairs.items() if hasattr(pairs, "items") else pairs):
            self.remember(key, text)

    def items(self):
        cdef uint32_t i
        out = []
        for i in range(N_NAMES):
            if self.core.ntab[i].key != 0:
                out.append((self.core.ntab[i].key, name_of(self.core, self.core.ntab[i].key)))
        return out

    def __len__(self):
        return self.core.meta.n_names


# --- the store file's header --------------------------------------------------------------------
def store_layout_hash():
    """16 bytes naming the layout of slots, steps and the header this build writes."""
    import hashlib
    size, offsets, step_size, header = layout()
    text = repr((SLOT_DTYPE.descr, STEP_DTYPE.descr, sorted(header.items()), STORE_VERSION, N_PROCS,
                 N_NAMES, CONFIG_SIZE))
    return hashlib.sha256(text.encode()).digest()[:16]


def config_fingerprint(bytes config_json):
    import hashlib
    return hashlib.sha256(config_json).digest()[:16]


def read_header(path, f=None):
    """The fixed fields of a store file's header as a dict (raises StoreError)."""
    import struct
    own = f is None
    if own:
        try:
            f = open(path, "rb")
        except OSError as exc:
            raise StoreError(f"cannot open store {path!r}: {exc}") from None
    try:
        f.seek(0)
        raw = f.read(HEADER_SIZE)
    finally:
        if own:
            f.close()
    if len(raw) < HEADER_SIZE or raw[:8] != b"PYFRICT\0":
        raise StoreError(f"{path}: not a pyfriction store file")
    fields = struct.unpack_from("<8I16s16sIIQ", raw, 8)
    version, header_size, capacity, index_size, max_steps, step_index_size, n_names, slot_size = fields[:8]
    checksum = fields[12]
    cdef const char* p = raw
    if fnv_raw(p, 80) != checksum:
        raise StoreError(f"{path}: the store header is damaged (checksum mismatch); restore it "
                         f"from a snapshot (`pyfriction store repair {path} --snapshot FILE`)")
    return {
        "version": version, "header_size": header_size, "capacity": capacity,
        "index_size": index_size, "max_steps": max_steps, "step_index_size": step_index_size,
        "n_names": n_names, "slot_size": slot_size, "layout": fields[8], "config": fields[9],
        "config_len": fields[10],
    }


cdef check_header(str path, f, uint32_t capacity, uint32_t max_steps, bytes fingerprint,
                  size_t total, size_t size):
    h = read_header(path, f)
    if h["version"] != STORE_VERSION:
        raise StoreError(f"{path}: store file version {h['version']}, this pyfriction reads "
                         f"version {STORE_VERSION}")
    if h["layout"] != store_layout_hash() or h["slot_size"] != sizeof(Slot):
        raise StoreError(f"{path}: the store file was written with another state layout "
                         "(another pyfriction build); create a new file or restore a snapshot")
    if h["config"] != fingerprint:
        raise StoreError(f"{path}: the store was created with another configuration; every "
                         "process sharing a store must use the same config")
    if h["capacity"] != capacity or h["max_steps"] != max_steps:
        raise StoreError(f"{path}: the store holds capacity {h['capacity']} (max_steps "
                         f"{h['max_steps']}), the tracker asks for {capacity} ({max_steps}); "
                         f"change capacity offline with `pyfriction store resize {path} "
                         f"--capacity N`")
    if size < total:
        raise StoreError(f"{path}: the store file is truncated ({size} of {total} bytes)")


def read_config(path):
    """The config JSON a store file was created with."""
    h = read_header(path)
    with open(path, "rb") as f:
        f.seek(HEADER_SIZE)
        return f.read(h["config_len"])
