"""The guidance record of the file store (``guidance._UserCodec``): what it gives back is what
it was given, to the precision its docstring states, for any user's bookkeeping (hypothesis):

* traits, offers in order (item, step, target, episode id, expiry), the caps' window, item
  cooldowns and dismissals all come back;
* the newest offer's time exactly, other times to 1/512 s, the times of an offer's marks
  (delivered, shown, clicked, dismissed, completed) to the second after the offer;

for the codec's own methods and for their compiled twins, which give the same bytes and
objects.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import pyfriction
from pyfriction._episodes import Guidance
from pyfriction._hashing import key64
from pyfriction.guidance import MAX_OFFERS, TIME_UNITS, _Offer, _User, _UserCodec

from helpers import require_engine

CATALOG = [{"id": "a", "kind": "banner", "title": "A"}, {"id": "b", "kind": "tooltip", "title": "B", "anchor": "#b"}]
T0 = 1_700_000_000.0
TICK = 1.0 / TIME_UNITS + 1e-6  # a time's precision in the record (and a float's rounding)
MARKS = ("delivered", "shown", "clicked", "dismissed", "completed")
IDS = ["a", "b", "x", "y", "z"]  # x, y, z: items no longer (or never) in the catalog


@pytest.fixture(scope="module")
def engine() -> Any:
    t = pyfriction.Tracker({"guidance": {"items": CATALOG, "rules": [{"guidance": "a"}]}})
    yield t._guidance
    t.close()


@pytest.fixture(scope="module", params=["reference", "compiled"])
def codec(request: pytest.FixtureRequest, engine: Any) -> Any:
    """The codec, with its own methods (the specification) or the compiled twins."""
    if request.param == "compiled":
        require_engine("compiled")
    return _UserCodec(engine, compiled=request.param == "compiled")


times = st.floats(0.0, 10 * 86400.0)  # seconds before the newest offer (within the record's range)
offers = st.lists(
    st.tuples(
        st.sampled_from(IDS),
        times,
        st.lists(st.one_of(st.just(0.0), st.floats(0.001, 3600.0)), min_size=5, max_size=5),  # marks, after the offer
        st.booleans(),  # expired
        st.one_of(st.none(), st.sampled_from(["billing", "import.mapping"])),
        st.one_of(st.none(), st.sampled_from(["#pay", "#search"])),
        st.booleans(),  # the episode id of the usual form
        st.one_of(st.none(), st.floats(1.0, 86400.0)),  # another expiry than expire_after
    ),
    max_size=MAX_OFFERS,
    unique_by=lambda o: o[0],
)
users = st.fixed_dictionaries(
    {
        "user_id": st.sampled_from(["u1", "someone@example.com", ""]),
        "offers": offers,
        "recent": st.lists(st.one_of(st.integers(0, MAX_OFFERS - 1), times), max_size=3),
        "given": st.dictionaries(st.sampled_from(IDS), times, max_size=3),
        "dismissed": st.dictionaries(st.sampled_from(IDS), times, max_size=3),
        "traits": st.dictionaries(
            st.sampled_from(["plan", "seats", "beta"]),
            st.one_of(st.text(max_size=8), st.integers(), st.booleans()),
            max_size=2,
        ),  # fmt: skip
        "locale": st.one_of(st.none(), st.sampled_from(["de", "de-AT", "pt-BR", "a-very-long-locale-tag"])),
        "base": st.floats(-86400.0, 86400.0),
    }
)


def build(codec: _UserCodec, spec: dict[str, Any]) -> _User:
    """A user's bookkeeping as the engine would leave it: offers oldest first, each one's item
    in the cooldowns (``given``), a dismissed offer's mark in the dismissals."""
    engine = codec.engine
    items = {i.id: i for i in engine.config.items}
    u = _User(engine.config.caps.per_day)
    base = T0 + spec["base"]
    made = sorted(spec["offers"], key=lambda o: -o[1])  # oldest first, the newest at `base`
    newest = made[-1][1] if made else 0.0
    u.offers = OrderedDict()
    for gid, ago, marks, expired, step, target, usual_id, expiry in made:
        at = base - (ago - newest)
        item = items.get(gid)
        prefix = f"{key64(spec['user_id']):016x}-" if spec["user_id"] else ""
        g = Guidance(id=gid, kind=item.kind if item else "banner", title=item.title if item else gid,
                     body=item.body if item else "", url=item.url if item else None,
                     anchor=item.anchor if item else None, locale=item.locale if item else None,
                     episode_id=f"{prefix}{int(at * 1000.0):x}" if usual_id and prefix else f"ep-{gid}",
                     step=step, target=target, created_at=at,
                     expires_at=at + (engine.config.expire_after if expiry is None else expiry))  # fmt: skip
        o = _Offer(g)
        for name, after in zip(MARKS, marks, strict=True):
            setattr(o, name, at + after if after else 0.0)
        o.expired = expired
        u.offers[gid] = o
        u.given[gid] = at
        if o.dismissed:
            u.dismissed[gid] = o.dismissed
    offered = list(u.offers.values())
    for r in spec["recent"]:
        if isinstance(r, int):
            if r < len(offered):
                u.recent.append(offered[r].guidance.created_at)
        else:
            u.recent.append(base - r)
    for gid, ago in spec["given"].items():
        u.given[gid] = base - ago
    for gid, ago in spec["dismissed"].items():
        u.dismissed[gid] = base - ago
    u.traits = dict(spec["traits"])
    if spec["locale"] is not None:
        u.traits["locale"] = spec["locale"]
    return u


def close(got: float, want: float, tol: float) -> bool:
    return abs(got - want) <= tol


@settings(max_examples=300, deadline=None)
@given(spec=users)
def test_the_record_gives_back_what_it_was_given(codec: _UserCodec, spec: dict[str, Any]) -> None:
    u = build(codec, spec)
    uid = spec["user_id"]
    record, rest = codec.pack(u, uid)
    assert record[0] == min(255, len(record))  # the length byte
    back = codec.unpack(record, rest, uid)
    assert back.traits == u.traits
    assert list(back.offers) == list(u.offers)
    newest = list(u.offers.values())[-1].guidance.created_at if u.offers else None
    for gid, o in u.offers.items():
        b = back.offers[gid]
        g, bg = o.guidance, b.guidance
        assert (bg.id, bg.step, bg.target, bg.episode_id) == (g.id, g.step, g.target, g.episode_id)
        if gid in ("a", "b"):  # the texts come from the catalog
            assert (bg.kind, bg.title, bg.anchor) == (g.kind, g.title, g.anchor)
        if g.created_at == newest:
            assert bg.created_at == g.created_at  # the record's base: exact
        assert close(bg.created_at, g.created_at, TICK)
        assert close(bg.expires_at, g.expires_at, 2 * TICK)
        assert b.expired == o.expired
        for name in MARKS:
            want, got = getattr(o, name), getattr(b, name)
            assert (got == 0.0) == (want == 0.0), name
            assert close(got, want, 0.5 + TICK), name
    assert len(back.recent) == len(u.recent)
    for got, want in zip(back.recent, u.recent, strict=True):
        assert close(got, want, TICK)
    assert back.given.keys() == u.given.keys()
    for gid, want in u.given.items():
        assert close(back.given[gid], want, TICK)
    assert back.dismissed.keys() == u.dismissed.keys()
    for gid, want in u.dismissed.items():
        assert close(back.dismissed[gid], want, 0.5 + TICK)
    # What came back, written and read again, stays exactly as it is: nothing drifts with
    # each write (the bytes may differ: a time now equal to its offer's is implied).
    assert canonical(codec.unpack(*codec.pack(back, uid), uid)) == canonical(back)


def canonical(u: _User) -> Any:
    offers = [(o.guidance, o.delivered, o.shown, o.clicked, o.dismissed, o.completed, o.expired)
              for o in u.offers.values()]  # fmt: skip
    return u.traits, offers, list(u.recent), u.given, u.dismissed


@settings(max_examples=300, deadline=None)
@given(spec=users)
def test_the_compiled_codec_equals_the_reference(engine: Any, spec: dict[str, Any]) -> None:
    """``_core/guidecodec.pxi`` against ``_UserCodec``'s own methods: the same record and rest,
    and the same user read back, from either one's record."""
    require_engine("compiled")
    ref, comp = _UserCodec(engine, compiled=False), _UserCodec(engine, compiled=True)
    assert ref.pack.__self__ is ref and type(comp.pack.__self__).__name__ == "GuideCodec"  # twins bound
    u = build(ref, spec)
    uid = spec["user_id"]
    packed = ref.pack(u, uid)
    assert comp.pack(u, uid) == packed
    assert canonical(comp.unpack(*packed, uid)) == canonical(ref.unpack(*packed, uid))
