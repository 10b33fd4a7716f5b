"""The Redis store's keys and event marks: the compiled twin equals the specification
(``pyfriction._marks``), and the specification says what the Redis store relies on."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from redis.crc import key_slot

from pyfriction import _marks
from pyfriction._hashing import key64
from pyfriction._marks import py_event_marks, py_user_keys

from helpers import require_engine


@pytest.fixture(params=["python", "compiled"])
def twins(request: pytest.FixtureRequest) -> tuple[Any, Any]:
    """``(user_keys, event_marks)`` of each implementation (compiled required under CI)."""
    if request.param == "python":
        return py_user_keys, py_event_marks
    require_engine("compiled")
    from pyfriction._core import event_marks, user_keys

    return user_keys, event_marks


def compiled() -> tuple[Any, Any]:
    require_engine("compiled")
    from pyfriction._core import event_marks, user_keys

    return user_keys, event_marks


IDS = st.text(alphabet=st.characters(codec="utf-8") | st.sampled_from("\ud800\udfff"), max_size=60)
# What a column may hold: names, numbers of every kind, odd objects (hashed by their repr).
VALUES = st.one_of(
    st.none(), st.text(max_size=12), st.integers(-(2**80), 2**80), st.floats(allow_nan=True),
    st.booleans(), st.builds(np.float64, st.floats()), st.builds(np.int64, st.integers(-(2**63), 2**63 - 1)),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2), st.lists(st.integers(), max_size=2),
    st.integers(-(2**2000), 2**2000),
)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(ids=st.lists(IDS, max_size=30), prefix=st.text(max_size=10))
def test_user_keys_twins_agree(ids: list[str], prefix: str) -> None:
    user_keys, _ = compiled()
    got, want = user_keys(ids, prefix), py_user_keys(ids, prefix)
    assert got[0].tolist() == want[0].tolist()
    assert got[1] == want[1]
    assert got[2].tolist() == want[2].tolist()


@settings(max_examples=300, deadline=None)
@given(data=st.data(), n=st.integers(0, 25), now=st.floats(-1e12, 1e12), fingerprints=st.booleans())
def test_event_marks_twins_agree(data: st.DataObject, n: int, now: float, fingerprints: bool) -> None:
    _, event_marks = compiled()
    uids = data.draw(st.lists(st.one_of(st.sampled_from(["u0", "u1", "ü"]), VALUES), min_size=n, max_size=n))
    cols = [data.draw(st.none() | st.lists(VALUES, min_size=n, max_size=n)) for _ in range(5)]
    got = event_marks(uids, *cols, now, fingerprints)
    want = py_event_marks(uids, *cols, now, fingerprints)
    assert got[0].tolist() == want[0].tolist()
    assert got[1].tolist() == want[1].tolist()


def test_keys_are_the_facts_stores_tag_and_slot(twins: tuple[Any, Any]) -> None:
    user_keys, _ = twins
    ids = ["u1", "ü-ñ-😀", "L" * 80, ""]
    k64, keys, slots = user_keys(ids, "shop")
    for uid, h, key, slot in zip(ids, k64.tolist(), keys, slots.tolist()):
        assert h == key64(uid)
        assert key == f"shop:{{{key64(uid):016x}}}:e"
        assert slot == key_slot(key.encode())  # Redis's own slot of the key


@pytest.mark.parametrize("bad", [5, None, b"u1"])
def test_user_ids_must_be_str(twins: tuple[Any, Any], bad: Any) -> None:
    user_keys, _ = twins
    with pytest.raises(TypeError):
        user_keys(["ok", bad], "pf")


def test_fingerprints_and_seconds(twins: tuple[Any, Any]) -> None:
    _, event_marks = twins
    uids = ["u1", "u1", "u1", "u1", "u2", None, "u1", "u1", "u1"]
    kinds = ["click", "click", "page", "click", "click", "click", "click", "click", "click"]
    ts = [10.5, 10.5, 10.5, 10.75, 10.5, 10.5, None, True, 2**2000]
    fps, seconds = event_marks(uids, kinds, ts, None, None, None, 99.9)
    fp = fps.tolist()
    assert fp[0] == fp[1] != 0  # the same event twice: one fingerprint
    assert len({fp[0], fp[2], fp[3], fp[4]}) == 4  # type, time or user differ: another
    assert fp[5:] == [0, 0, 0, 0]  # no user id, no time of its own (none, a bool, too large)
    assert seconds.tolist() == [10, 10, 10, 10, 10, 10, 99, 99, 99]
    assert event_marks(uids, kinds, ts, None, None, None, 99.9, False)[0].tolist() == [0] * len(uids)


def test_every_part_counts(twins: tuple[Any, Any]) -> None:
    _, event_marks = twins
    base = ["u1", "click", 5.0, "s", "#t", {"a": 1}]
    variants = [base, ["u2", *base[1:]], [base[0], "page", *base[2:]], [*base[:2], 6.0, *base[3:]],
                [*base[:3], "s2", *base[4:]], [*base[:4], "#u", base[5]], [*base[:5], {"a": 2}],
                [*base[:5], None], [*base[:3], None, *base[4:]]]  # fmt: skip
    fps = event_marks(*([v[i] for v in variants] for i in range(6)), 0.0)[0].tolist()
    assert len(set(fps)) == len(variants) and 0 not in fps


def test_int_and_float_times_are_one_time(twins: tuple[Any, Any]) -> None:
    _, event_marks = twins
    fps = event_marks(["u"] * 3, ["x"] * 3, [7, 7.0, np.int64(7)], None, None, None, 0.0)[0].tolist()
    assert fps[0] == fps[1] == fps[2] != 0


def test_columns_must_be_one_length(twins: tuple[Any, Any]) -> None:
    _, event_marks = twins
    with pytest.raises(ValueError):
        event_marks(["u1", "u2"], ["click"], None, None, None, None, 0.0)


def test_selected_twins_follow_the_engine_switch() -> None:
    compiled_built = _marks._compiled() is not None
    assert (_marks.user_keys is py_user_keys) == (not compiled_built)
    assert (_marks.event_marks is py_event_marks) == (not compiled_built)


class AdmitModel:
    """``admit`` spelled out over Python lists: the last ``dedupe`` fingerprints, the rate."""

    def __init__(self, dedupe: int, cap: int) -> None:
        self.dedupe, self.cap = dedupe, cap
        self.rings: dict[str, list[int]] = {}
        self.rates: dict[str, tuple[float, int]] = {}

    def run(self, uids: list[Any], fps: list[int], seconds: list[float]) -> tuple[list[int], int]:
        keep, capped = [], 0
        for n, uid in enumerate(uids):
            if not isinstance(uid, str):
                keep.append(n)
                continue
            ring = self.rings.setdefault(uid, [])
            if fps[n] and fps[n] in ring[-self.dedupe :] and self.dedupe:
                continue
            if self.cap:
                sec, count = self.rates.get(uid, (0.0, 0))
                if seconds[n] > sec:
                    sec, count = seconds[n], 0
                if count >= self.cap:
                    capped += 1
                    self.rates[uid] = (sec, count)
                    continue
                self.rates[uid] = (sec, count + 1)
            if fps[n]:
                ring.append(fps[n])
            keep.append(n)
        return keep, capped


ADMIT_USERS = st.sampled_from(["a", "b", "c", None, 7])


def admit_of(which: str) -> Any:
    if which == "python":
        return _marks.py_admit
    require_engine("compiled")
    from pyfriction._core import admit

    return admit


@pytest.mark.parametrize("which", ["python", "compiled"])
@settings(max_examples=300, deadline=None)
@given(dedupe=st.integers(0, 5), cap=st.integers(0, 4),
       batches=st.lists(st.lists(st.tuples(ADMIT_USERS, st.integers(0, 6), st.integers(0, 4)), max_size=20),
                        max_size=4))  # fmt: skip
def test_admit_twins_equal_the_model_across_batches(which: str, dedupe: int, cap: int,
                                                    batches: list[list[tuple[Any, int, int]]]) -> None:  # fmt: skip
    """Batch by batch, each user's field f carried from one to the next (as Redis keeps it):
    both implementations drop exactly what the model drops, however the stream is cut."""
    admit = admit_of(which)
    model = AdmitModel(dedupe, cap)
    metas: dict[str, bytes] = {}
    for batch in batches:
        uids = [u for u, _fp, _s in batch]
        fps = np.array([fp for _u, fp, _s in batch], dtype=np.uint64)
        seconds = np.array([float(s) for _u, _fp, s in batch], dtype=np.float64)
        keep, out, capped = admit(uids, fps, seconds, metas, dedupe, cap)
        assert (keep, capped) == model.run(uids, fps.tolist(), seconds.tolist())
        assert set(out) == {u for u in uids if isinstance(u, str)}
        metas.update(out)
        for uid, meta in out.items():
            assert len(meta) == 8 * dedupe + 12
            ring = np.frombuffer(meta[: 8 * dedupe], dtype="<u8").tolist()
            assert [fp for fp in ring if fp] == model.rings[uid][-dedupe:] if dedupe else ring == []


@pytest.mark.parametrize("which", ["python", "compiled"])
def test_admit_refuses_a_field_of_another_size(which: str) -> None:
    admit = admit_of(which)
    with pytest.raises(ValueError):
        admit(["a"], np.array([5], dtype=np.uint64), np.array([1.0]), {"a": b"short"}, 2, 0)
