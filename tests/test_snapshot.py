"""Snapshots (round trips on each engine and across engines, damaged files, atomic writes)
and eviction (capacity, least recently active, idle_ttl)."""

from __future__ import annotations

import os
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import pyfriction
from pyfriction import SnapshotError, _legacy
from pyfriction._layout import SLOT_DTYPE, STEP_DTYPE
from pyfriction._sample import generate
from pyfriction.tracker import LAYOUT_HASH, SNAPSHOT_VERSION

from helpers import ENGINES, T0, ev, legacy_snapshot, require_engine

# Every user id here is longer than the 46 bytes stored inline, non-ASCII, and all share
# their first 46 bytes: only the full id tells them apart.
LONG_PREFIX = "użytkownik-żółć-" * 3


def long_id(i: int) -> str:
    return f"{LONG_PREFIX}{i:04d}-ß"


def stream() -> list[Any]:
    """A realistic interleaved stream (160 users over 3 hours), a third of them with long
    ids, sprinkled with unknown types and invalid events, ending with two users who just
    entered a step and stay there (for tick() to find stalled)."""
    events: list[Any] = []
    for i, e in enumerate(generate(160, seed=11)):
        e = dict(e)
        if int(e["user_id"][1:]) % 3 == 0:
            e["user_id"] = long_id(int(e["user_id"][1:]))
        events.append(e)
        if i % 97 == 0:
            events.append(dict(e, type="scroll"))  # unknown type
        if i % 131 == 0:
            events.append(dict(e, ts=-1.0))  # invalid
    last = events[-1]["ts"]
    events.append(ev("stuck-1", "page", last + 1, "billing.card"))
    events.append(ev(long_id(9999), "page", last + 1, "dashboard"))
    return events


STREAM = stream()
USERS = sorted({e["user_id"] for e in STREAM})
END = STREAM[-1]["ts"]
#: threshold 0.45 lets a stall alone fire; exclusions make the counters move
BASE_CONFIG: dict[str, Any] = {"scoring": {"threshold": 0.45, "rearm": 0.2}, "exclude_targets": [".page-title"]}
CONFIGS = {
    "unbounded": BASE_CONFIG,
    "evicting": dict(BASE_CONFIG, capacity=60, idle_ttl=1800.0),
}
COUNTERS = ("events", "users", "capacity", "episodes", "evictions", "invalid", "unknown", "excluded",
            "tickets", "callbacks_dropped", "callbacks_failed", "queue_depth")  # fmt: skip


def feed(tracker: pyfriction.Tracker, events: list[Any]) -> None:
    """Half the events one by one, half in batches: both paths into the engine."""
    for i, e in enumerate(events):
        if i % 2:
            tracker.observe_many([e])
        else:
            try:
                tracker.observe(e)
            except pyfriction.InvalidEvent:
                pass


def counters(tracker: pyfriction.Tracker) -> dict[str, Any]:
    stats = tracker.stats()
    return {k: getattr(stats, k) for k in COUNTERS}


@pytest.fixture
def trackers() -> Iterator[Callable[..., pyfriction.Tracker]]:
    """Like make_tracker, but the engine is an argument (for cross-engine tests)."""
    made: list[pyfriction.Tracker] = []

    def factory(config: Any = None, *, restore_from: Any = None, **kwargs: Any) -> pyfriction.Tracker:
        if restore_from is not None:
            tracker = pyfriction.Tracker.restore(restore_from, config, **kwargs)
        else:
            tracker = pyfriction.Tracker(config, **kwargs)
        seen: list[pyfriction.Episode] = []
        tracker.episodes_seen = seen  # type: ignore[attr-defined]
        tracker.on_friction(seen.append, sync=True)
        made.append(tracker)
        return tracker

    yield factory
    for tracker in made:
        tracker.close(timeout=5.0)


PAIRS = [(s, d) for s in ENGINES for d in ENGINES]


@pytest.mark.parametrize("config_name", list(CONFIGS))
@pytest.mark.parametrize("source,dest", PAIRS, ids=[f"{s}-to-{d}" for s, d in PAIRS])
def test_restart_loses_nothing(trackers: Any, tmp_path: Path, source: str, dest: str, config_name: str) -> None:
    require_engine(source)
    require_engine(dest)
    config = CONFIGS[config_name]
    split = len(STREAM) // 2
    whole = trackers(config, engine=source)  # never stops
    first = trackers(config, engine=source)
    feed(whole, STREAM[:split])
    feed(first, STREAM[:split])
    fired_before = len(whole.episodes_seen)
    path = tmp_path / "state.snap"
    first.snapshot(path)
    assert os.listdir(tmp_path) == ["state.snap"]

    restored = trackers(restore_from=path, engine=dest)
    assert restored.engine == dest
    assert restored.config == whole.config
    assert counters(restored) == counters(whole)
    for user in USERS:
        assert restored.state(user) == whole.state(user), user
        assert restored.score(user) == whole.score(user), user
        assert restored.score(user, at=END) == whole.score(user, at=END), user

    feed(whole, STREAM[split:])
    feed(restored, STREAM[split:])
    assert len(whole.episodes_seen) > fired_before  # the second half does fire episodes
    assert restored.episodes_seen == whole.episodes_seen[fired_before:]
    assert whole.tick(END + 1000.0) == restored.tick(END + 1000.0) > 0  # stalls (needs step baselines)
    assert restored.episodes_seen == whole.episodes_seen[fired_before:]
    assert counters(restored) == counters(whole)
    for user in USERS:
        assert restored.state(user) == whole.state(user), user
        assert restored.score(user, at=END + 2000.0) == whole.score(user, at=END + 2000.0), user
    if config_name == "unbounded":
        assert restored.stats().users == len(USERS)
        assert {e.user_id for e in restored.episodes_seen} & {long_id(i) for i in range(0, 160, 3)}
    else:
        assert restored.stats().evictions > 0


def test_long_user_ids_survive(make_tracker: Any, engine: str, tmp_path: Path) -> None:
    ids = [
        long_id(1),
        long_id(2),
        "é" * 23,  # exactly 46 bytes
        "é" * 23 + "x",  # 47 bytes
        "a" * 45 + "é",  # 47 bytes, the cut falls inside the last character
        "😀" * 12,  # 48 bytes of 4-byte characters
        "x" * 1024,  # the longest id accepted
        "ascii-only-but-quite-long-user-id-0123456789-abcdef",
    ]
    t = make_tracker()
    for i, uid in enumerate(ids):
        for e in [ev(uid, "page", T0 + i, "billing")] + [
            ev(uid, "click", T0 + i + 0.1 * k, target="#pay") for k in range(1, 4)
        ]:
            t.observe(e)
    assert [e.user_id for e in t.episodes_seen] == ids
    path = tmp_path / "s.snap"
    t.snapshot(path)
    r = pyfriction.Tracker.restore(path, engine=engine)
    try:
        for uid in ids:
            state = r.state(uid)
            assert state is not None and state.user_id == uid
            assert state == t.state(uid)
        # and again, through a second generation
        r.snapshot(path)
        r2 = pyfriction.Tracker.restore(path, engine=engine)
        got: list[str] = []
        r2.on_friction(lambda e: got.append(e.user_id), sync=True)
        for uid in ids:
            assert r2.state(uid).user_id == uid
            r2.observe(ev(uid, "success", T0 + 100, target="#pay"))
            for k in range(3):
                r2.observe(ev(uid, "click", T0 + 2000 + 0.1 * k, target="#pay"))
        assert got == ids
        assert r2.stats().users == len(ids)
        r2.close()
    finally:
        r.close()


def test_user_id_with_nul_characters_survives(make_tracker: Any, engine: str, tmp_path: Path) -> None:
    ids = ["ab\x00", "\x00", "a\x00b", "trailing-nul-but-long-" + "x" * 30 + "\x00"]
    t = make_tracker()
    for uid in ids:
        t.observe(ev(uid, "page", T0, "x"))
    path = tmp_path / "s.snap"
    t.snapshot(path)
    r = pyfriction.Tracker.restore(path, engine=engine)
    try:
        got: list[str] = []
        r.on_friction(lambda e: got.append(e.user_id), sync=True)
        for uid in ids:
            assert r.state(uid) is not None and r.state(uid).user_id == uid
            for k in range(3):  # an episode names the user as the engine stored it
                r.observe(ev(uid, "click", T0 + 10 + 0.1 * k, target="#pay"))
        assert got == ids
        assert r.stats().users == len(ids)
    finally:
        r.close()


def test_restore_into_smaller_capacity_keeps_most_recent(make_tracker: Any, engine: str, tmp_path: Path) -> None:
    t = make_tracker(capacity=100)
    for i in range(50):
        t.observe(ev(f"u{i:02d}", "page", T0 + i, "x"))
    t.observe(ev("u00", "click", T0 + 100, target="#a"))  # u00 is now the most recent
    t.observe(ev("u01", "click", T0 + 10, target="#a"))  # a late event is activity too
    path = tmp_path / "s.snap"
    t.snapshot(path)
    r = pyfriction.Tracker.restore(path, engine=engine, capacity=20)
    try:
        assert r.config.capacity == 20
        stats = r.stats()
        assert stats.users == 20
        assert stats.evictions == 30
        assert stats.events == 52
        kept = sorted(u for u in (f"u{i:02d}" for i in range(50)) if r.state(u) is not None)
        assert kept == ["u00", "u01"] + [f"u{i:02d}" for i in range(32, 50)]
        for u in kept:
            assert r.state(u) == t.state(u)
        # the recency order survived too: the next new user evicts u32, the oldest kept
        r.observe(ev("new", "page", T0 + 200, "x"))
        assert r.state("u32") is None and r.state("u33") is not None
        assert r.stats().evictions == 31
    finally:
        r.close()


def test_restore_keeps_counters_and_adds_evictions(make_tracker: Any, engine: str, tmp_path: Path) -> None:
    t = make_tracker(capacity=5)
    for i in range(8):
        t.observe(ev(f"u{i}", "page", T0 + i, "x"))
    assert t.stats().evictions == 3
    path = tmp_path / "s.snap"
    t.snapshot(path)
    r = pyfriction.Tracker.restore(path, engine=engine, capacity=2)
    try:
        assert r.stats().evictions == 6
        assert r.stats().events == 8
    finally:
        r.close()


def test_restore_with_config_override(make_tracker: Any, engine: str, tmp_path: Path) -> None:
    t = make_tracker(scoring={"threshold": 0.45, "rearm": 0.2})
    t.observe(ev("u1", "page", T0, "x"))
    path = tmp_path / "s.snap"
    t.snapshot(path)
    same = pyfriction.Tracker.restore(path, engine=engine)
    other = pyfriction.Tracker.restore(path, {"scoring": {"threshold": 0.9}}, engine=engine)
    try:
        assert same.config.scoring.threshold == 0.45
        assert other.config.scoring.threshold == 0.9
        assert other.state("u1") == t.state("u1")
    finally:
        same.close()
        other.close()


def test_empty_tracker_round_trip(make_tracker: Any, engine: str, tmp_path: Path) -> None:
    path = tmp_path / "s.snap"
    make_tracker().snapshot(str(path))
    r = pyfriction.Tracker.restore(str(path), engine=engine)
    try:
        assert r.stats().users == 0 and r.stats().events == 0
        r.observe(ev("u1", "page", T0, "x"))
        assert r.state("u1") is not None
    finally:
        r.close()


def test_changes_after_the_capture_are_not_in_the_file(make_tracker: Any, engine: str, tmp_path: Path) -> None:
    """``captured`` runs once the state is copied: what the tracker does from then on (while
    the file is written) is not in it."""
    t = make_tracker()
    for i in range(3):
        t.observe(ev("u1", "click", T0 + 0.1 * i, "s", "#pay"))
    calls = []

    def captured() -> None:
        calls.append(t.stats().events)
        t.observe(ev("u2", "page", T0 + 1, "s"))
        t.observe(ev("u1", "success", T0 + 1, "s"))

    path = tmp_path / "s.snap"
    t.snapshot(path, captured=captured)
    assert calls == [3]
    r = pyfriction.Tracker.restore(path, engine=engine)
    try:
        assert r.stats().events == 3 and r.state("u2") is None
        assert r.score("u1") > 0.5 > t.score("u1")  # the success came after the capture
        assert r.state("u1").events == 3  # type: ignore[union-attr]
    finally:
        r.close()


def test_release_frees_the_tables_after_the_copy(make_tracker: Any, engine: str, tmp_path: Path) -> None:
    """``release=True`` (for a forked child that only writes the file): the file is whole, and
    the compiled engine's tables are gone (a call says so rather than reading freed memory)."""
    t = make_tracker()
    for i in range(3):
        t.observe(ev("u1", "click", T0 + 0.1 * i, "s", "#pay"))
    path = tmp_path / "s.snap"
    t.snapshot(path, release=True)
    r = pyfriction.Tracker.restore(path, engine=engine)
    try:
        assert r.state("u1").events == 3  # type: ignore[union-attr]
    finally:
        r.close()
    if t.engine == "compiled":
        with pytest.raises(RuntimeError, match="released"):
            t.observe(ev("u1", "click", T0 + 1, "s", "#pay"))


@settings(max_examples=80, deadline=None)
@given(n=st.integers(0, 40), part_records=st.integers(1, 7), cuts=st.lists(st.integers(1, 900), max_size=12),
       state=st.dictionaries(st.text(max_size=5), st.integers(-(2**63), 2**63 - 1), max_size=5))  # fmt: skip
def test_snapshot_file_is_one_msgpack_document(tmp_path_factory: Any, n: int, part_records: int, cuts: list[int],
                                               state: dict[str, int]) -> None:  # fmt: skip
    """However the records arrive in chunks and however many parts they fill, the streamed
    file is exactly the MessagePack of its document, its CRC-32 covers the sections, and it
    reads back as written."""
    from pyfriction import _snapfile

    records = np.frombuffer(os.urandom(n * SLOT_DTYPE.itemsize), dtype=SLOT_DTYPE)
    steps = np.frombuffer(os.urandom(3 * STEP_DTYPE.itemsize), dtype=STEP_DTYPE)
    raw = records.tobytes()
    chunks, at = [], 0
    for cut in cuts:  # chunks of any byte length, the last one whatever is left
        chunks.append(memoryview(raw)[at : at + cut])
        at += cut
    chunks.append(memoryview(raw)[at:])
    path = tmp_path_factory.mktemp("snap") / "s.snap"
    old = _snapfile.PART_BYTES
    _snapfile.PART_BYTES = part_records * SLOT_DTYPE.itemsize
    try:
        _snapfile.write(path, layout=LAYOUT_HASH, state=state, slots=chunks, n_slots=n, steps=steps)
    finally:
        _snapfile.PART_BYTES = old
    blob = path.read_bytes()
    doc = msgspec.msgpack.decode(blob)
    assert msgspec.msgpack.encode(doc) == blob
    parts = doc["slots"]
    assert len(parts) == -(-n // part_records) and all(len(p) <= part_records * SLOT_DTYPE.itemsize for p in parts)
    assert b"".join(parts) == raw and doc["steps"] == steps.tobytes()
    crc = zlib.crc32(doc["state"])
    for part in parts:
        crc = zlib.crc32(part, crc)
    assert doc["crc32"] == zlib.crc32(doc["steps"], crc)
    assert (doc["format"], doc["version"], doc["layout"]) == ("pyfriction-snapshot", SNAPSHOT_VERSION, LAYOUT_HASH)
    snap = _snapfile.read(path, LAYOUT_HASH)
    assert snap.state == state and snap.slots.tobytes() == raw and snap.steps.tobytes() == steps.tobytes()


@pytest.mark.parametrize("chunk", [1, 3, 16384])
def test_streamed_snapshot_is_the_copied_one(make_tracker: Any, engine: str, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch, chunk: int) -> None:  # fmt: skip
    """``release=True`` streams the records from the tables in chunks (the cursor skips the
    stale recency entries) and gives byte for byte the file a copy gives."""
    monkeypatch.setattr(pyfriction.tracker, "_SNAPSHOT_CHUNK", chunk)
    t = make_tracker(**CONFIGS["evicting"])
    feed(t, STREAM)
    assert t.stats().evictions > 0  # the recency log holds stale entries
    t.snapshot(tmp_path / "copied.snap")
    t.snapshot(tmp_path / "streamed.snap", release=True)
    assert (tmp_path / "copied.snap").read_bytes() == (tmp_path / "streamed.snap").read_bytes()


@pytest.mark.compiled
def test_both_engines_write_the_same_file(tmp_path: Path) -> None:
    files = []
    for engine in ENGINES:
        t = pyfriction.Tracker(CONFIGS["evicting"], engine=engine)
        feed(t, STREAM)
        files.append(tmp_path / f"{engine}.snap")
        t.snapshot(files[-1], release=True)
        t.close()
    assert files[0].read_bytes() == files[1].read_bytes()


def test_tables_that_change_while_streamed_leave_no_file(make_tracker: Any, engine: str, tmp_path: Path) -> None:
    from pyfriction import _snapfile

    t = make_tracker()
    t.observe(ev("u1", "page", T0, "x"))
    t.snapshot(tmp_path / "keep.snap")
    slots, steps, _ = t._core.export()
    for n in (0, 2):  # one record written where the count said 0, or 2
        with pytest.raises(RuntimeError, match="changed"):
            _snapfile.write(tmp_path / "keep.snap", layout=LAYOUT_HASH, state={}, slots=[slots], n_slots=n, steps=steps)
    assert os.listdir(tmp_path) == ["keep.snap"]
    assert pyfriction.Tracker.restore(tmp_path / "keep.snap", engine=engine).state("u1") == t.state("u1")


@pytest.mark.parametrize("bad", [lambda: np.zeros(4, dtype=np.uint8), lambda: np.zeros(0, dtype=SLOT_DTYPE),
                                 lambda: np.zeros(4, dtype=SLOT_DTYPE)[::2], lambda: [1, 2]],
                         ids=["bytes", "empty", "strided", "list"])  # fmt: skip
def test_export_chunk_refuses_a_bad_buffer(make_tracker: Any, bad: Any) -> None:
    t = make_tracker()
    t.observe(ev("u1", "page", T0, "x"))
    with pytest.raises((TypeError, ValueError)):
        t._core.export_chunk(bad(), 0)


# --- damaged and foreign files -------------------------------------------------------------


@pytest.fixture
def snapshot_doc(tmp_path: Path) -> dict[str, Any]:
    """The decoded document of a real snapshot holding one long-id user."""
    t = pyfriction.Tracker(engine="reference")
    t.observe(ev("u1", "page", T0, "x"))
    t.observe(ev(long_id(1), "page", T0, "x"))
    path = tmp_path / "real.snap"
    t.snapshot(path)
    t.close()
    doc: dict[str, Any] = msgspec.msgpack.decode(path.read_bytes())
    path.unlink()
    return doc


def _crc(doc: dict[str, Any]) -> int:
    crc = zlib.crc32(doc["state"])
    for part in doc["slots"]:
        crc = zlib.crc32(part, crc)
    return zlib.crc32(doc["steps"], crc)


def _write(tmp_path: Path, blob: bytes) -> Path:
    path = tmp_path / "bad.snap"
    path.write_bytes(blob)
    return path


def _restore_fails(path: Path, engine: str, *needles: str) -> SnapshotError:
    with pytest.raises(SnapshotError) as info:
        pyfriction.Tracker.restore(path, engine=engine)
    message = str(info.value)
    assert str(path) in message, message
    for needle in needles:
        assert needle in message, message
    return info.value


def test_snapshot_error_is_exported() -> None:
    assert pyfriction.SnapshotError is SnapshotError
    assert issubclass(SnapshotError, ValueError)


def test_missing_file(engine: str, tmp_path: Path) -> None:
    _restore_fails(tmp_path / "none.snap", engine, "cannot read")


@pytest.mark.parametrize(
    "blob",
    [b"", b"\xc1", b"\xc1\xc1\xc1 garbage", b"PK\x03\x04 zip, not msgpack", b"\x81\xa6format"],
    ids=["empty", "reserved-byte", "garbage", "zip", "cut-map"],
)
def test_corrupt_file(engine: str, tmp_path: Path, blob: bytes) -> None:
    _restore_fails(_write(tmp_path, blob), engine, "not a pyfriction snapshot")


def test_truncated_file(engine: str, tmp_path: Path, snapshot_doc: dict[str, Any]) -> None:
    blob = msgspec.msgpack.encode(snapshot_doc)
    for cut in (1, 10, len(blob) // 3, len(blob) // 2, len(blob) - 1):
        _restore_fails(_write(tmp_path, blob[:cut]), engine, "not a pyfriction snapshot")


def test_corrupt_header(engine: str, tmp_path: Path, snapshot_doc: dict[str, Any]) -> None:
    blob = bytearray(msgspec.msgpack.encode(snapshot_doc))
    blob[0:4] = b"\xde\xad\xbe\xef"
    with pytest.raises(SnapshotError):
        pyfriction.Tracker.restore(_write(tmp_path, bytes(blob)), engine=engine)


@pytest.mark.parametrize(
    "doc",
    [
        {"hello": 1},
        [1, 2, 3],
        "pyfriction-snapshot",
        42,
        {"format": "something-else", "version": 1},
        {},
        {"format": "something-else", "slots": "x"},
    ],
    ids=["dict", "list", "str", "int", "other-format", "empty-map", "other-format-odd-keys"],
)
def test_non_snapshot_msgpack(engine: str, tmp_path: Path, doc: Any) -> None:
    _restore_fails(_write(tmp_path, msgspec.msgpack.encode(doc)), engine, "not a pyfriction snapshot")


@pytest.mark.parametrize("version", [SNAPSHOT_VERSION + 1, 0, True, "3", None])
def test_wrong_version(engine: str, tmp_path: Path, snapshot_doc: dict[str, Any], version: Any) -> None:
    snapshot_doc["version"] = version
    _restore_fails(_write(tmp_path, msgspec.msgpack.encode(snapshot_doc)), engine, "version", str(version))


def test_wrong_layout(engine: str, tmp_path: Path, snapshot_doc: dict[str, Any]) -> None:
    snapshot_doc["layout"] = "0123456789abcdef"
    assert LAYOUT_HASH != "0123456789abcdef"
    _restore_fails(_write(tmp_path, msgspec.msgpack.encode(snapshot_doc)), engine, "layout",
                   "0123456789abcdef", LAYOUT_HASH)  # fmt: skip


def _state(fn: Callable[[dict[str, Any]], Any]) -> Callable[[dict[str, Any]], None]:
    """A damage done to the decoded "state" section."""

    def damage(doc: dict[str, Any]) -> None:
        state = msgspec.msgpack.decode(doc["state"])
        fn(state)
        doc["state"] = msgspec.msgpack.encode(state)

    return damage


@pytest.mark.parametrize(
    "damage",
    [
        lambda d: d.pop("slots"),
        lambda d: d.pop("crc32"),
        _state(lambda s: s.pop("counters")),
        lambda d: d.__setitem__("slots", [d["slots"][0][:-1]]),  # not a whole number of records
        lambda d: d.__setitem__("steps", b"\x01\x02\x03"),
        lambda d: d.__setitem__("slots", "not bytes"),
        lambda d: d.__setitem__("slots", [1, 2]),
        lambda d: d.__setitem__("state", msgspec.msgpack.encode([1, 2])),
        lambda d: d.__setitem__("state", b"\xc1"),
        _state(lambda s: s.__setitem__("names", 5)),
        _state(lambda s: s.__setitem__("long_ids", [])),  # the long id is lost
        _state(lambda s: s.__setitem__("config", {"capacity": 0})),
        _state(lambda s: s.__setitem__("config", {"bogus": 1})),
        _state(lambda s: s.pop("guidance")),
    ],
    ids=[
        "no-slots",
        "no-crc",
        "no-counters",
        "short-slots",
        "bad-steps",
        "str-slots",
        "int-parts",
        "list-state",
        "bad-state",
        "int-names",
        "no-long-ids",
        "bad-config",
        "unknown-config",
        "no-guidance",
    ],  # fmt: skip
)
def test_damaged_document(engine: str, tmp_path: Path, snapshot_doc: dict[str, Any], damage: Any) -> None:
    # A document that is damaged yet carries a matching checksum (written by a buggy writer):
    # the structural checks still refuse it.
    damage(snapshot_doc)
    if isinstance(snapshot_doc.get("slots"), list) and "crc32" in snapshot_doc:
        try:
            snapshot_doc["crc32"] = _crc(snapshot_doc)
        except TypeError:
            pass  # a section that is not bytes: nothing to checksum
    _restore_fails(_write(tmp_path, msgspec.msgpack.encode(snapshot_doc)), engine, "damaged")


@pytest.mark.parametrize("section", ["state", "slots", "steps"])
@pytest.mark.parametrize("where", [0.1, 0.5, 0.9])
def test_flipped_byte_is_caught_by_the_checksum(engine: str, tmp_path: Path, snapshot_doc: dict[str, Any],
                                                section: str, where: float) -> None:  # fmt: skip
    if section == "steps":
        snapshot_doc["steps"] = bytes(STEP_DTYPE.itemsize)  # the fixture has no step histogram
        snapshot_doc["crc32"] = _crc(snapshot_doc)
    blob = bytearray(snapshot_doc[section][0] if section == "slots" else snapshot_doc[section])
    blob[int(len(blob) * where)] ^= 0x10
    snapshot_doc[section] = [bytes(blob)] if section == "slots" else bytes(blob)
    _restore_fails(_write(tmp_path, msgspec.msgpack.encode(snapshot_doc)), engine, "damaged", "checksum")


def test_version_2_files_are_still_read(make_tracker: Any, engine: str, tmp_path: Path) -> None:
    t = make_tracker(**CONFIGS["unbounded"])
    feed(t, STREAM)
    t.snapshot(tmp_path / "v3.snap")
    v2 = _write(tmp_path, legacy_snapshot(msgspec.msgpack.decode((tmp_path / "v3.snap").read_bytes()), 2))
    r = pyfriction.Tracker.restore(v2, engine=engine)
    try:
        assert counters(r) == counters(t)
        assert all(r.state(u) == t.state(u) for u in USERS)
        r.snapshot(tmp_path / "again.snap")  # and it is written back in the current version
        assert (tmp_path / "again.snap").read_bytes() == (tmp_path / "v3.snap").read_bytes()
    finally:
        r.close()
    blob = bytearray(v2.read_bytes())
    blob[-40] ^= 0x10  # inside the payload
    _restore_fails(_write(tmp_path, bytes(blob)), engine, "damaged", "checksum")


# --- atomic writes -------------------------------------------------------------------------


def test_snapshot_write_is_atomic(make_tracker: Any, engine: str, tmp_path: Path,
                                  monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    t = make_tracker()
    t.observe(ev("old", "page", T0, "x"))
    path = tmp_path / "state.snap"
    t.snapshot(path)
    assert os.listdir(tmp_path) == ["state.snap"]
    t.observe(ev("new", "page", T0 + 1, "x"))
    t.snapshot(path)  # replaces
    assert os.listdir(tmp_path) == ["state.snap"]
    before = path.read_bytes()

    # a write that fails midway leaves the previous snapshot whole, and no temporary file
    def broken_fsync(fd: int) -> None:
        raise OSError(28, "No space left on device")

    t.observe(ev("newest", "page", T0 + 2, "x"))
    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError):
        t.snapshot(path)
    monkeypatch.undo()
    assert os.listdir(tmp_path) == ["state.snap"]
    assert path.read_bytes() == before
    r = pyfriction.Tracker.restore(path, engine=engine)
    try:
        assert r.state("new") is not None and r.state("newest") is None
    finally:
        r.close()

    # a target that cannot be replaced (a directory) fails cleanly too
    target = tmp_path / "adir"
    target.mkdir()
    (target / "keep").write_text("x")
    with pytest.raises(OSError):
        t.snapshot(target)
    assert sorted(os.listdir(tmp_path)) == ["adir", "state.snap"]


def test_snapshot_to_relative_path(make_tracker: Any, engine: str, tmp_path: Path,
                                   monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    monkeypatch.chdir(tmp_path)
    t = make_tracker()
    t.observe(ev("u1", "page", T0, "x"))
    t.snapshot("rel.snap")
    assert os.listdir(tmp_path) == ["rel.snap"]
    r = pyfriction.Tracker.restore("rel.snap", engine=engine)
    try:
        assert r.state("u1") == t.state("u1")
    finally:
        r.close()


# --- eviction -------------------------------------------------------------------------------


def test_capacity_eviction_100k_users(make_tracker: Any) -> None:
    n = 100_000
    t = make_tracker(capacity=1000)
    out = t.observe_many(
        {
            "user_id": [f"u{i}" for i in range(n)],
            "type": ["page"] * n,
            "ts": [T0 + i * 0.01 for i in range(n)],
            "step": ["home"] * n,
        }  # fmt: skip
    )
    assert out.shape == (n,)
    stats = t.stats()
    assert stats.users == 1000
    assert stats.evictions == 99_000
    assert stats.events == n
    assert all(t.state(f"u{i}") is not None for i in range(n - 1000, n))
    assert all(t.state(f"u{i}") is None for i in (0, 1, 50_000, n - 1001))
    assert t.state(f"u{n - 1000}").user_id == f"u{n - 1000}"


def test_least_recently_active_is_evicted(make_tracker: Any) -> None:
    t = make_tracker(capacity=3)
    for i, u in enumerate("abc"):
        t.observe(ev(u, "page", T0 + i, "x"))
    t.observe(ev("a", "click", T0 + 10, target="#t"))  # touch a: b is now the oldest
    t.observe(ev("d", "page", T0 + 11, "x"))
    assert t.state("b") is None
    assert all(t.state(u) is not None for u in "acd")
    t.observe(ev("c", "click", T0 + 5, target="#t"))  # a late event still counts as activity
    t.observe(ev("e", "page", T0 + 12, "x"))
    assert t.state("a") is None
    assert all(t.state(u) is not None for u in "cde")
    assert t.stats().evictions == 2
    assert t.stats().users == 3


def test_ignored_events_do_not_refresh_recency(make_tracker: Any) -> None:
    t = make_tracker(capacity=2, exclude_targets=["#skip"])
    t.observe(ev("a", "page", T0, "x"))
    t.observe(ev("b", "page", T0 + 1, "x"))
    t.observe(ev("a", "scroll", T0 + 2))  # unknown type: changes nothing
    t.observe(ev("a", "click", T0 + 3, target="#skip"))  # excluded: changes nothing
    with pytest.raises(pyfriction.InvalidEvent):
        t.observe({"user_id": "a", "type": "click", "ts": -1})
    t.observe(ev("c", "page", T0 + 4, "x"))
    assert t.state("a") is None
    assert t.state("b") is not None and t.state("c") is not None


def test_idle_ttl_on_insert_and_tick(make_tracker: Any) -> None:
    now = [T0]
    t = make_tracker(idle_ttl=60.0, clock=lambda: now[0])
    t.observe(ev("a", "page", T0, "x"))
    t.observe(ev("b", "page", T0 + 50, "x"))
    t.observe(ev("k", "page", T0 + 10, "x"))
    t.observe(ev("k", "click", T0 + 90, target="#t"))  # k stays active
    t.observe(ev("c", "page", T0 + 100, "x"))  # a new user: a (silent 100 s) goes
    assert t.state("a") is None
    assert all(t.state(u) is not None for u in "bkc")
    assert t.stats().evictions == 1
    t.observe(ev("d", "page", T0 + 110, "x"))  # b silent for exactly 60 s: not longer, kept
    assert t.state("b") is not None
    assert t.tick(T0 + 155) == 0  # b (105 s) and k (65 s) go; c (55 s) and d stay
    assert t.state("b") is None and t.state("k") is None
    assert t.state("c") is not None and t.state("d") is not None
    assert t.stats().evictions == 3
    now[0] = T0 + 1000  # tick() without an argument uses the clock
    t.tick()
    assert t.stats().users == 0
    assert t.stats().evictions == 5


def test_idle_ttl_none_never_evicts_idle(make_tracker: Any) -> None:
    t = make_tracker()
    # In the past (event times later than tomorrow are refused): 20 years up to T0.
    t.observe(ev("a", "page", T0 - 20 * 365 * 86400, "x"))
    t.observe(ev("b", "page", T0 - 10 * 365 * 86400, "x"))
    t.tick(T0)
    assert t.state("a") is not None
    assert t.stats().evictions == 0


def _as_previous_layout(doc: dict[str, Any]) -> dict[str, Any]:
    """A current snapshot document rewritten in the slot layout before accumulating detectors
    (``_legacy.SLOT_V1``): the form a deployment's last snapshot has when it upgrades."""
    new = np.frombuffer(b"".join(doc["slots"]), dtype=SLOT_DTYPE)
    old = np.zeros(len(new), dtype=_legacy.SLOT_V1)
    for name in _legacy.SLOT_V1.names or ():
        if name in SLOT_DTYPE.names and name not in ("pressure", "flags"):
            old[name] = new[name]
    old["pressure"] = new["pressure"][:, :9]
    old["dead_r"][:, 0] = new["dead_t"]
    old["dead_r"][:, 1:] = -np.inf
    old["flags"] = new["flags"] & 0b10111
    out = dict(doc, layout=_legacy.layout_hash(_legacy.SLOT_V1), slots=[old.tobytes()])
    out["crc32"] = _crc(out)
    return out


def test_snapshot_of_the_previous_layout_is_upgraded(make_tracker: Any, engine: str, tmp_path: Path) -> None:
    t = make_tracker(**CONFIGS["unbounded"])
    feed(t, STREAM)
    t.snapshot(tmp_path / "now.snap")
    doc = msgspec.msgpack.decode((tmp_path / "now.snap").read_bytes())
    assert doc["layout"] != _legacy.layout_hash(_legacy.SLOT_V1)
    before = _write(tmp_path, msgspec.msgpack.encode(_as_previous_layout(doc)))
    r = pyfriction.Tracker.restore(before, engine=engine)
    try:
        assert r.stats().users == t.stats().users > 0
        for u in USERS:
            old, new = t.state(u), r.state(u)
            assert (old is None) == (new is None)
            if old is not None and new is not None:
                # Every user comes back with their pressures, step, counts and episode state;
                # the error-click pressure (absent from that layout) starts at 0.
                kept = {k: v for k, v in old.detectors.items() if k != "error_click"}
                assert new.detectors == pytest.approx(kept)
                assert (new.step, new.events, new.episodes, new.in_episode) == (
                    old.step, old.events, old.episodes, old.in_episode)  # fmt: skip
        assert counters(r) == counters(t)
    finally:
        r.close()
