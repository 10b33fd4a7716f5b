"""The JSON depth check (``pyfriction_server.limits.check_depth``), compiled and pure twins.

* On valid JSON, both give the nesting depth of the value itself: brackets inside strings
  (escaped quotes included) never count, nor hide levels (a closer inside a string once
  made a body nested past the limit pass the check).
* On any text at all, the compiled one-pass scanner (``pyfriction._core.json_too_deep``)
  answers as its readable twin does, unterminated strings and trailing backslashes included.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from pyfriction_server import limits
from pyfriction_server.errors import HTTPError

core = pytest.importorskip("pyfriction._core")

TWINS: list[Callable[[bytes, int], bool]] = [limits._reference_too_deep, limits._counted_too_deep, core.json_too_deep]
NASTY = st.text(alphabet='[]{}"\\ ,:a', max_size=12)  # strings made of what the scanner looks at
VALUES = st.recursive(
    st.none() | st.integers() | NASTY,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(NASTY, inner, max_size=3),
    max_leaves=25,
)


def depth(value: Any) -> int:
    if isinstance(value, list):
        return 1 + max((depth(v) for v in value), default=0)
    if isinstance(value, dict):
        return 1 + max((depth(v) for v in value.values()), default=0)
    return 0


@settings(max_examples=300, deadline=None)
@given(value=VALUES)
@example(value=["]" * 20, [[[[[]]]]]])  # closers in a string before the deep part
@example(value={'"]]': [[["\\"]]]})
def test_both_twins_give_the_depth_of_valid_json(value: Any) -> None:
    body = json.dumps(value, ensure_ascii=False).encode()
    levels = depth(value)
    for too_deep in TWINS:
        assert too_deep(body, levels) is False
        if levels:
            assert too_deep(body, levels - 1) is True


@settings(max_examples=500, deadline=None)
@given(body=st.binary(max_size=80).map(lambda b: bytes(b'[]{}"\\ a'[x % 8] for x in b)), limit=st.integers(0, 6))
@example(body=b'["abc', limit=0)  # an unterminated string to the end
@example(body=b'["\\', limit=0)  # a backslash as the last byte
@example(body=b'"\\"[[', limit=1)  # an escaped quote: still inside the string
def test_the_compiled_scanner_answers_as_its_twin_on_any_text(body: bytes, limit: int) -> None:
    assert core.json_too_deep(body, limit) == limits._reference_too_deep(body, limit)
    assert limits._counted_too_deep(body, limit) == limits._reference_too_deep(body, limit)


@pytest.mark.parametrize("too_deep", TWINS, ids=["reference", "counted", "compiled"])
def test_a_closer_inside_a_string_does_not_hide_levels(monkeypatch: Any, too_deep: Any) -> None:
    monkeypatch.setattr(limits, "_too_deep", too_deep)
    body = b'{"a": "' + b"]" * 200 + b'", "b": ' + b"[" * 70 + b"]" * 70 + b"}"
    with pytest.raises(HTTPError) as raised:
        limits.check_depth(body, 64)
    assert raised.value.status == 400
    limits.check_depth(body, 71)  # 71 levels: allowed at 71
