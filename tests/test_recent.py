"""RecentIds: the last ``capacity`` distinct ids, the same from the compiled core and Python."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyfriction import recent
from pyfriction._hashing import key64
from pyfriction.recent import PyRecentIds

from helpers import require_engine


@pytest.fixture(params=["python", "compiled"])
def cls(request: pytest.FixtureRequest) -> Any:
    """Each implementation (the compiled one is required under CI)."""
    if request.param == "python":
        return PyRecentIds
    require_engine("compiled")
    from pyfriction._core import RecentIds as Compiled

    return Compiled


class Model:
    """The specification, spelled out: a list of the remembered ids, oldest first."""

    def __init__(self, capacity: int) -> None:
        self.capacity, self.ids = capacity, []  # type: ignore[var-annotated]

    def seen(self, key: str) -> bool:
        if key in self.ids:
            return True
        self.ids.append(key)
        del self.ids[: max(0, len(self.ids) - self.capacity)]
        return False


IDS = st.text(alphabet="abcdé😀\x00", max_size=3)
OPS = st.lists(st.one_of(IDS.map(lambda k: ("seen", k)),
                         st.lists(st.one_of(st.none(), IDS), max_size=8).map(lambda b: ("filter", b)),
                         st.just(("reload", None))), max_size=60)  # fmt: skip


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(capacity=st.integers(1, 12), ops=OPS)
def test_remembers_exactly_the_last_capacity_ids(cls: Any, capacity: int, ops: list[Any]) -> None:
    r, model = cls(capacity), Model(capacity)
    for op, arg in ops:
        if op == "seen":
            assert r.seen(arg) == model.seen(arg)
        elif op == "filter":
            want = [i for i, k in enumerate(arg) if k is None or not model.seen(k)]
            got = r.filter(arg)
            assert (list(range(len(arg))) if got is None else got) == want
            assert got is None or len(got) < len(arg)
        else:  # a snapshot and a restart: the same memory afterwards
            fresh = cls(capacity)
            fresh.load(r.export())
            r = fresh
        assert len(r) == len(model.ids)
        assert r.export().tolist() == [key64(k) for k in model.ids]


@settings(max_examples=60, deadline=None)
@given(capacity=st.integers(1, 300), keys=st.lists(st.integers(0, 2000).map(str), max_size=3000))
def test_compiled_equals_python_on_long_streams(capacity: int, keys: list[str]) -> None:
    """Many evictions through a small index: the compiled backward-shift deletions keep
    every remaining id findable."""
    require_engine("compiled")
    from pyfriction._core import RecentIds as Compiled

    a, b = Compiled(capacity), PyRecentIds(capacity)
    for k in keys:
        assert a.seen(k) == b.seen(k)
    assert np.array_equal(a.export(), b.export())
    c = PyRecentIds(capacity)
    c.load(a.export())  # across the two
    assert all(a.seen(k) == c.seen(k) for k in keys[-capacity:])


def test_load_keeps_the_newest(cls: Any) -> None:
    big = cls(10)
    for i in range(10):
        big.seen(f"id{i}")
    small = cls(4)
    small.load(big.export())
    assert len(small) == 4 and small.export().tolist() == big.export().tolist()[-4:]
    assert small.seen("id9") and not small.seen("id0")


@pytest.mark.parametrize("bad", [0, -1, 2**31 + 1, "x"])
def test_bad_capacity(cls: Any, bad: Any) -> None:
    with pytest.raises(ValueError):
        cls(bad)


@pytest.mark.parametrize("bad", [5, b"bytes", 1.5])
def test_ids_are_str(cls: Any, bad: Any) -> None:
    r = cls(4)
    with pytest.raises(TypeError):
        r.seen(bad)
    with pytest.raises(TypeError):
        r.filter(["ok", bad])


def test_selected_class_follows_the_engine_switch() -> None:
    expected: str | None = "compiled" if recent._compiled() is not None else "python"
    assert (recent.RecentIds is PyRecentIds) == (expected == "python")
