"""Every constant the two engines share, in one leaf module (it imports nothing of pyfriction).

The compiled core's ``_core/consts.pxi`` is generated from this module by
``python -m pyfriction._gen_consts`` (a test checks that regenerating changes nothing), and the
compiled module compares each of its values with the ones here when it is imported. To change a
constant: change it here, regenerate, rebuild (``python setup.py build_ext --inplace``).
"""

from __future__ import annotations

__all__: list[str] = []  # private: the public names are re-exported by events, _layout, config

# --- event type codes ----------------------------------------------------------------------
# Codes >= CUSTOM_BASE are config-mapped event names that carry a weight of their own
# (detector "custom"). The outcome types (TICKET .. GUIDANCE_DISMISSED) are reported to the
# tracker after they are applied; the types that carry a target a detector keys on are
# CLICK .. FORM_ERROR (TARGET_FIRST .. TARGET_LAST).
UNKNOWN = 0
PAGE = 1
CLICK = 2
DEAD_CLICK = 3
ERROR = 4
API_ERROR = 5
FORM_ERROR = 6
SEARCH = 7
HELP = 8
CONTACT = 9
SUCCESS = 10
TICKET = 11
GUIDANCE_SHOWN = 12
GUIDANCE_CLICKED = 13
GUIDANCE_DISMISSED = 14
CUSTOM_BASE = 32
#: The most custom-weight event names a config may map (codes CUSTOM_BASE .. CUSTOM_BASE + 255).
MAX_CUSTOM = 256
TARGET_FIRST = CLICK
TARGET_LAST = FORM_ERROR
OUTCOME_FIRST = TICKET
OUTCOME_LAST = GUIDANCE_DISMISSED

TYPE_CODES: dict[str, int] = {
    "page": PAGE,
    "click": CLICK,
    "dead_click": DEAD_CLICK,
    "error": ERROR,
    "api_error": API_ERROR,
    "form_error": FORM_ERROR,
    "search": SEARCH,
    "help": HELP,
    "contact": CONTACT,
    "success": SUCCESS,
    "ticket": TICKET,
    "guidance_shown": GUIDANCE_SHOWN,
    "guidance_clicked": GUIDANCE_CLICKED,
    "guidance_dismissed": GUIDANCE_DISMISSED,
}

# --- detectors -----------------------------------------------------------------------------
# Detector indices: the order of ``pressure`` in a slot and of ties among reasons.
RAGE_CLICK = 0
DEAD_CLICK_DET = 1  # the detector (DEAD_CLICK is the event type)
ERROR_BURST = 2
REPEAT_FAILURE = 3
UTURN = 4
EMPTY_SEARCH = 5
HELP_SEEKING = 6
STALL = 7
CUSTOM = 8
ERROR_CLICK = 9
N_DETECTORS = 10
DETECTOR_NAMES = (
    "rage_click",
    "dead_click",
    "error_burst",
    "repeat_failure",
    "uturn",
    "empty_search",
    "help_seeking",
    "stall",
    "custom",
    "error_click",
)

# --- bits of a slot's ``flags`` -------------------------------------------------------------
F_IN_EPISODE = 1 << 0  # score crossed the threshold and has not fallen below rearm since
F_HAS_EPISODE = 1 << 1  # episode_ts is valid
F_RAGE = 1 << 2  # the fast rage run on click_target has activated (one activation per run)
F_SLOW = 1 << 3  # ... the slow (unresponsive element) rage run has activated
F_ERR = 1 << 4  # the error burst has activated
F_CLICK_USED = 1 << 5  # the last click already made an error click
F_STUCK = 1 << 6  # this step visit saw an episode, help or contact: it stays out of the baseline
F_DONE = 1 << 7  # a success on this step visit: no more stall pressure until the next step
F_FAIL_MIXED = 1 << 8  # the failure run spans several targets of the step
#: The latches a success event clears.
LATCHES = F_RAGE | F_SLOW | F_ERR | F_CLICK_USED

# --- counters, in the order both engines keep them -------------------------------------------
COUNTER_NAMES = ("events", "invalid", "unknown", "excluded", "episodes", "evictions", "tickets")

# --- sizes and limits ------------------------------------------------------------------------
#: Recent events remembered per burst detector (the ``*_r`` rings of a slot).
RING_SIZE = 4
#: Longest user id, type, step, target or account id accepted, in characters.
MAX_TEXT = 1024
#: Bytes of a user id stored inline; longer ids keep their first UID_BYTES bytes and
#: ``uid_len == UID_LONG``, the full id lives in a side table bounded by capacity.
UID_BYTES = 40
UID_LONG = 255
#: Evicted users an engine remembers between two ``drain_evicted`` calls (the tracker then
#: drops their guidance and insight facts); beyond, it reports an overflow.
EVICTED_MAX = 65536
#: Buckets of a step's duration histogram: bucket 0 holds visits under 1 s, bucket b >= 1 holds
#: [GAMMA**(b-1), GAMMA**b) seconds; the last also takes everything longer.
N_BUCKETS = 24
GAMMA = 1.5
#: Window timestamps are float32 offsets from ``base``; ``base`` moves to the event time once
#: it is this many seconds old, keeping offsets within about 2 ms of exact.
REBASE_AFTER = 16384.0
#: Bound on the name table and the exclusion caches; they are cleared when full.
CACHE_MAX = 1 << 16
#: Saturation of the 8-bit run counters, the 16-bit episode count and the 32-bit event count.
U8_MAX = 0xFF
U16_MAX = 0xFFFF
U32_MAX = 0xFFFFFFFF
#: Integer properties (status, results) are values in [0, I31_MAX]; anything else is "none" (-1).
I31_MAX = 0x7FFFFFFF
#: ``results`` of an event whose ``properties.selection`` is set: a click that selected text or
#: scrolled the page (rage ignores it). A search with a selection is not an empty one either.
SELECTION = -2
