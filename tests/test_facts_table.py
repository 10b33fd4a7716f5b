"""The facts file's tables: the compiled twins (``_core/facts.pxi``) of ``userstate._Table``'s
methods against the reference, on random sequences of inserts, writes (inline bodies, block
chains, the blocks running out), deletes and reads: the same results and, after every step,
the same bytes in the mapping."""

from __future__ import annotations

import mmap
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyfriction._hashing import key64
from pyfriction.userstate import BLOCK, NONE, _pow2, _Table

from helpers import require_engine

ENTRIES = 12
BLOCKS = 10


def table(guide: int, compiled: bool) -> _Table:
    t = _Table(None, 0, ENTRIES, _pow2(2 * ENTRIES), BLOCKS, 4096, guide)  # type: ignore[arg-type]
    mm = mmap.mmap(-1, t.end)
    t = _Table(mm, 0, ENTRIES, _pow2(2 * ENTRIES), BLOCKS, 4096, guide, compiled=compiled)
    t.set_state([NONE, 0, 0, NONE, 0])
    return t


# Keys sharing their low bits (the index has 32 slots), so that lookups probe and deletions
# shift, around the index's end too.
keys = st.builds(lambda hi, lo: (hi << 5) | lo, st.integers(1, 1 << 40), st.sampled_from([0, 1, 30, 31]))
# Bodies around the edges: inline (40 bytes), one block (252), several.
sizes = st.one_of(st.sampled_from([0, 1, 40, 41, 252, 253, 504, 505, 900]), st.integers(0, 900))
bodies = st.builds(lambda n, b: bytes([b]) * n, sizes, st.integers(0, 255))
ticks = st.integers(0, (1 << 32) - 1)
inserts = st.tuples(st.just("insert"), keys)
writes = st.tuples(st.just("write"), st.integers(0, 20), bodies, st.binary(max_size=64), ticks, st.integers(0, 255))
ops = st.lists(
    st.one_of(  # inserts and writes twice as often as the rest
        inserts,
        inserts,
        writes,
        writes,
        st.tuples(st.just("delete"), st.integers(0, 20)),
        st.tuples(st.just("read"), st.integers(0, 20), st.binary(max_size=40)),
        st.tuples(st.just("find"), keys),
    ),
    min_size=10,
    max_size=80,
)


@pytest.mark.parametrize("guide", [64, 0], ids=["users", "aggregates"])
@settings(max_examples=300, deadline=None)
@given(steps=ops)
def test_compiled_tables_equal_the_reference(guide: int, steps: list[tuple[Any, ...]]) -> None:
    require_engine("compiled")
    ref, comp = table(guide, False), table(guide, True)
    assert type(comp.find.__self__).__name__ == "FactsTable" and ref.find.__self__ is ref  # twins bound
    st_ref, st_comp = ref.state(), comp.state()
    live: list[tuple[int, int]] = []  # (key, entry), as the reference placed them
    for op, *args in steps:
        if op == "insert":
            key = args[0]
            if ref.find(key) >= 0:
                continue
            e = ref.insert(key, st_ref)
            assert comp.insert(key, st_comp) == e
            if e >= 0:
                live.append((key, e))
        elif op == "find":
            assert comp.find(args[0]) == ref.find(args[0])
        elif live:
            key, e = live[args[0] % len(live)]
            if op == "write":
                body, g, tick, kind = args[1], args[2][:guide], args[3], args[4]
                assert comp.write(e, key, tick, kind, body, st_comp, g) == ref.write(
                    e, key, tick, kind, body, st_ref, g
                )
            elif op == "delete":
                ref.delete(e, st_ref)
                comp.delete(e, st_comp)
                live.remove((key, e))
            else:
                assert comp.head(e) == ref.head(e)
                assert comp.body(e) == ref.body(e)
                assert comp.guide(e) == ref.guide(e)
                assert comp.checksum(e, args[1]) == ref.checksum(e, args[1])
        assert st_comp == st_ref
        assert ref.mm[:] == comp.mm[:], f"the mappings differ after {op}"
    for key, e in live:
        assert comp.find(key) == ref.find(key) == e
        assert comp.body(e) == ref.body(e)


@settings(max_examples=300, deadline=None)
@given(text=st.text(st.characters(exclude_categories=()), max_size=80))
def test_compiled_keys_equal_the_reference(text: str) -> None:
    """``key``: the same 64-bit key for any text, surrogates and all (ids are hashed in C
    when the core is built; the file's entries must be found by either)."""
    require_engine("compiled")
    assert table(64, True).key(text) == table(64, False).key(text) == key64(text)


def test_a_body_longer_than_the_blocks_left_is_refused_alike() -> None:
    """Writing more than the free blocks hold: False, the record left empty, its blocks given
    back, on both."""
    require_engine("compiled")
    tables = [table(64, False), table(64, True)]
    states = [t.state() for t in tables]
    for t, s in zip(tables, states, strict=True):
        e = t.insert(7, s)
        assert t.write(e, 7, 1, 1, b"x" * (BLOCK * BLOCKS), s, b"g") is False
        assert t.body(e) == b"" and t.guide(e) == bytes(64)
        assert t.write(e, 7, 2, 1, b"y" * 600, s, b"g") is True
    assert states[0] == states[1] and tables[0].mm[:] == tables[1].mm[:]


def test_a_core_built_for_another_layout_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """A core whose facts-table or guidance-record constants differ from the Python modules' is a
    build error (rebuild it), never bound, never silently replaced by the reference."""
    require_engine("compiled")
    from pyfriction import _core, guidance, userstate

    monkeypatch.delenv("PYFRICTION_NO_EXTENSIONS", raising=False)
    assert userstate.compiled_tables() and guidance._codec_compiled()
    monkeypatch.setattr(_core, "FACTS_LAYOUT", (0, 0, 0, 0, 0))
    monkeypatch.setattr(_core, "GUIDE_LAYOUT", (0.0, 0, 0, 0, 0, 0))
    with pytest.raises(RuntimeError, match="FACTS_LAYOUT: rebuild it"):
        userstate.compiled_tables()
    with pytest.raises(RuntimeError, match="GUIDE_LAYOUT: rebuild it"):
        guidance._codec_compiled()
    monkeypatch.setenv("PYFRICTION_NO_EXTENSIONS", "1")
    assert not userstate.compiled_tables() and not guidance._codec_compiled()
