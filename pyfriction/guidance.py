"""Guidance: from a friction episode to help on the user's screen, without annoying anyone.

The config's ``[guidance]`` section holds a catalog of items (tooltips, banners, modals, links)
and the rules that pick one for an episode (see :class:`pyfriction.config.GuidanceRule`). When
an episode fires, :class:`GuidanceEngine` picks the item of the most specific matching rule,
subject to the caps (:class:`pyfriction.config.GuidanceCaps`), and the tracker sets
``episode.guidance`` before any callback runs. The host then pulls what is waiting with
``Tracker.pending(user_id)`` (or receives it from ``Tracker.on_guidance``) and reports what
the user did with ``Tracker.ack(user_id, guidance_id, outcome)``.

Delivery: ``Tracker.pending`` hands each item out once (it counts as delivered when read: for
a host that renders what it reads). The sidecar instead reads with :func:`unshown`, which keeps
an item until a page reports it ``shown`` (it counts as delivered when shown): a browser tab
that read it and closed before showing it, or a stream that dropped, does not lose it.

A deterministic share of users, the holdout (:func:`in_holdout`), never gets guidance: their
episodes carry ``holdout=True`` and the rule that *would* have applied, so ``Tracker.insights``
can compare ticket rates of guided users against them.

All per-user bookkeeping (traits, offers, caps) lives in a store bounded by the tracker's
capacity, least recently active users evicted first (and goes with the user when the engine
evicts them), and travels in snapshots: in memory for
a tracker of its own, in the store's facts file for a ``file://`` store (shared by every
process: see :mod:`pyfriction.userstate`).
"""

from __future__ import annotations

import fnmatch
import hashlib
import html
import math
import re
import struct
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from ._episodes import Episode, Guidance
from ._hashing import key64
from ._switch import compiled_twin
from .config import GuidanceConfig, GuidanceItem, GuidanceRule
from .events import MAX_TEXT
from .userstate import GUIDANCE, MemoryState, StateStore

__all__ = [
    "EVENT_OUTCOMES",
    "OUTCOMES",
    "GuidanceEngine",
    "Selection",
    "holdout_fraction",
    "in_holdout",
    "locale_matches",
    "render_body",
    "unshown",
]

#: What ``Tracker.ack`` accepts. ``anchor_missing``: a tooltip's anchor was not on the page, so
#: the browser showed the item as a banner instead (counted per item; it says nothing about
#: what the user did, so it changes no offer and implies nothing).
OUTCOMES = ("shown", "clicked", "dismissed", "completed", "anchor_missing")
#: Event types that report guidance feedback in an event stream; their ``target`` is the item id.
EVENT_OUTCOMES = {"guidance_shown": "shown", "guidance_clicked": "clicked", "guidance_dismissed": "dismissed"}
#: The rolling window of ``caps.per_day``.
DAY = 86400.0
#: Offers remembered per user (enough to ack the recent ones; the caps keep their own record).
MAX_OFFERS = 8
#: Traits kept per user; string values are cut at MAX_TEXT characters.
MAX_TRAITS = 64

_GLOB = re.compile(r"[*?\[]")


# --- holdout and locales ----------------------------------------------------------------------


def holdout_fraction(user_id: str, salt: str) -> float:
    """A number in [0, 1) fixed by ``salt`` and ``user_id``: the user's place in the holdout draw.

    SHA-256 of ``salt``, a NUL byte and the UTF-8 user id, first 8 bytes as an integer over
    2**64: the same on every machine, process and Python version.
    """
    digest = hashlib.sha256(salt.encode("utf-8", "surrogatepass") + b"\0" + user_id.encode("utf-8", "surrogatepass"))
    return int.from_bytes(digest.digest()[:8], "big") / 18446744073709551616.0


def in_holdout(user_id: str, share: float, salt: str) -> bool:
    """True when ``user_id`` is in a holdout of ``share`` (0..1) drawn with ``salt``."""
    return share > 0.0 and holdout_fraction(user_id, salt) < share


def _norm_locale(locale: str) -> str:
    return locale.strip().replace("_", "-").lower()


def locale_matches(pattern: str, locale: str | None) -> bool:
    """True when ``locale`` is ``pattern`` or a variant of it: ``"de"`` matches ``"de-AT"`` and
    ``"de_at"``, ``"de-AT"`` matches only ``"de-AT"``; case-insensitive. None matches nothing."""
    if not locale:
        return False
    p, loc = _norm_locale(pattern), _norm_locale(locale)
    return loc == p or loc.startswith(p + "-")


# --- the safe Markdown subset -------------------------------------------------------------------

_CODE = re.compile(r"`([^`\n]+)`")
_STRONG = re.compile(r"\*\*(?=\S)(.+?)(?<=\S)\*\*")
_EM = re.compile(r"(?<![*\w])\*(?=\S)([^*\n]+?)(?<=\S)\*(?![*\w])")
_LINK = re.compile(r"\[([^\]\n]+)\]\(((?:https?://|/)[^\s()<>\"']*)\)")


def _inline(escaped: str) -> str:
    parts = _CODE.split(escaped)  # odd indexes: code spans, left verbatim
    out = []
    for i, part in enumerate(parts):
        if i % 2:
            out.append(f"<code>{part}</code>")
            continue
        part = _LINK.sub(lambda m: f'<a href="{m.group(2)}" rel="noopener noreferrer">{m.group(1)}</a>', part)
        part = _STRONG.sub(r"<strong>\1</strong>", part)
        part = _EM.sub(r"<em>\1</em>", part)
        out.append(part)
    return "".join(out)


def render_body(text: str) -> str:
    """The HTML of a guidance body written in plain text or the safe Markdown subset.

    Everything is HTML-escaped first; then ``**bold**``, ``*emphasis*``, ``` `code` ```,
    ``[text](https://...)`` (http, https and site-relative ``/...`` links only), lines starting
    with ``- `` (a list), blank lines (paragraphs) and line breaks are rendered. No raw HTML,
    no images, no script URLs: the result is safe to insert into a page.
    """
    blocks = re.split(r"\n\s*\n", text.replace("\r\n", "\n").strip())
    out = []
    for block in blocks:
        if not block.strip():
            continue
        lines = [html.escape(line.strip()) for line in block.split("\n")]
        if all(line.startswith(("- ", "* ")) for line in lines):
            items = "".join(f"<li>{_inline(line[2:].strip())}</li>" for line in lines)
            out.append(f"<ul>{items}</ul>")
        else:
            out.append("<p>" + "<br>".join(_inline(line) for line in lines) + "</p>")
    return "".join(out)


# --- rules ----------------------------------------------------------------------------------------


class _Matcher:
    """An exact name or a glob pattern."""

    __slots__ = ("pattern", "glob")

    def __init__(self, pattern: str) -> None:
        self.pattern = pattern
        self.glob = bool(_GLOB.search(pattern))

    def __call__(self, value: str | None) -> bool:
        if value is None:
            return False
        return fnmatch.fnmatchcase(value, self.pattern) if self.glob else value == self.pattern


def _trait_matches(expected: Any, actual: Any) -> bool:
    if isinstance(expected, list):
        return any(_trait_matches(e, actual) for e in expected)
    if isinstance(expected, bool) or isinstance(actual, bool):
        return isinstance(expected, bool) and isinstance(actual, bool) and expected == actual
    if isinstance(expected, str) or isinstance(actual, str):
        return isinstance(expected, str) and isinstance(actual, str) and expected == actual
    return bool(expected == actual)


class _Rule:
    """A config rule, compiled: matchers and its specificity."""

    __slots__ = ("index", "items", "step", "target", "detectors", "traits", "locale", "rank")

    def __init__(self, index: int, rule: GuidanceRule) -> None:
        self.index = index
        self.items = rule.items
        self.step = _Matcher(rule.step) if rule.step is not None else None
        self.target = _Matcher(rule.target) if rule.target is not None else None
        self.detectors = frozenset(rule.detectors)
        self.traits = dict(rule.traits)
        self.locale = rule.locale
        conditions = (
            (self.step is not None) + (self.target is not None) + bool(self.detectors)
            + len(self.traits) + (self.locale is not None)
        )  # fmt: skip
        exact = (self.step is not None and not self.step.glob) + (self.target is not None and not self.target.glob)
        #: Sort key: most conditions first, then most exact patterns, then declared order.
        self.rank = (-conditions, -exact, index)

    def matches(self, episode: Episode, traits: Mapping[str, Any], locale: str | None) -> bool:
        if self.step is not None and not self.step(episode.step):
            return False
        if self.target is not None and not self.target(episode.target):
            return False
        if self.detectors and not any(r.detector in self.detectors for r in episode.reasons):
            return False
        for name, expected in self.traits.items():
            if name not in traits or not _trait_matches(expected, traits[name]):
                return False
        if self.locale is not None and not locale_matches(self.locale, locale):
            return False
        return True


# --- per-user state ------------------------------------------------------------------------------


class _Offer:
    """One item offered to one user, and what became of it (times; 0.0 for not yet)."""

    __slots__ = ("guidance", "delivered", "shown", "clicked", "dismissed", "completed", "expired")

    def __init__(self, guidance: Guidance) -> None:
        self.guidance = guidance
        self.delivered = self.shown = self.clicked = self.dismissed = self.completed = 0.0
        self.expired = False

    def waiting(self, now: float) -> bool:
        """Still pending display at ``now``: not delivered, shown or expired."""
        return not (self.delivered or self.shown or self.expired) and now < self.guidance.expires_at


class _User:
    __slots__ = ("traits", "recent", "given", "dismissed", "offers")

    def __init__(self, per_day: int) -> None:
        self.traits: dict[str, Any] = {}
        self.recent: deque[float] = deque(maxlen=per_day)  # times of the latest offers
        self.given: dict[str, float] = {}  # item id -> time last offered
        self.dismissed: dict[str, float] = {}  # item id -> time dismissed
        self.offers: OrderedDict[str, _Offer] = OrderedDict()  # item id -> latest offer


#: Times in a packed record: signed offsets from its base time in units of 1/TIME_UNITS s.
TIME_UNITS = 512
_I32 = (1 << 31) - 1
#: Offer flags in a packed record: the marks set (each followed by its time), then whether
#: the offer's details (an item outside the catalog, another expiry, an episode id of
#: another form, its step or target) are in the record's extra part.
_MARKS = ("delivered", "shown", "clicked", "dismissed", "completed")
_EXPIRED, _DETAILS = 32, 64
_HEAD = struct.Struct("<BBBBBBd")  # length, format, recent, offers, given, dismissed, base
_S32 = struct.Struct("<i")
_NO_DETAILS: list[Any] = [None] * 5
#: Marks set per combination of the five mark flags, and the structs of 0 to 5 marks.
_N_MARKS = tuple(bin(f).count("1") for f in range(32))
_MARKS_S = tuple(struct.Struct(f"<{n}H") for n in range(6))
_LOCALE_MAX = 15


def _codec_compiled() -> bool:
    """Whether the guidance record uses the compiled core's codec (``_core/guidecodec.pxi``:
    the same bytes and objects as :class:`_UserCodec`'s methods, its specification)."""
    return compiled_twin("GUIDE_LAYOUT", (float(TIME_UNITS), _I32, _HEAD.size, _LOCALE_MAX, _EXPIRED, _DETAILS))


class _UserCodec:
    """A user's guidance record as plain data and back (the file store).

    :meth:`pack` gives the compact form the file keeps: a fixed binary record, ``bytes``
    (64 bytes or fewer for a user with the default caps; see docs/architecture.md, "Per-user
    facts and aggregates"), and the rest as plain data or None. The record: a header (its
    length, the format, counts, a base time: the newest offer's, exact), the ``locale``
    trait (up to 15 bytes), the caps' window as references to offers (or times), per offer
    its catalog index, flags and the times of its marks, then the cooldowns and dismissals
    that no offer implies. Times other than the base are offsets of 1/512 s (about 2 ms;
    +-48 days, clamped beyond: older ones no cap looks at); mark times are whole seconds
    after the offer (up to 18 h). The rest: other traits, and per offer its step, target and
    anything the record cannot say. The texts of an item come from this process's catalog.
    """

    def __init__(self, engine: GuidanceEngine, compiled: bool | None = None) -> None:
        """``compiled``: bind the compiled twins of :meth:`pack` and :meth:`unpack` (None:
        where the core is built and not turned off)."""
        self.engine = engine
        self._index = {item.id: i for i, item in enumerate(engine.config.items) if i < 255}
        if compiled if compiled is not None else _codec_compiled():
            from ._core import GuideCodec

            twin = GuideCodec(engine, self._index, _User, _Offer, Guidance)
            self.pack, self.unpack = twin.pack, twin.unpack  # type: ignore[method-assign]

    # -- the plain form (unused by the file store, kept for the Codec protocol) ------------------
    def encode(self, u: _User) -> Any:
        fixed, extra = self.pack(u, "")
        return [fixed, extra]

    def decode(self, plain: Any) -> _User:
        return self.unpack(bytes(plain[0]), plain[1], "")

    # -- the compact form -----------------------------------------------------------------------------
    def pack(self, u: _User, user_id: str) -> tuple[bytes, Any]:
        """``(record, rest)``: see the class."""
        offers = list(u.offers.values())
        if offers:
            base = offers[-1].guidance.created_at
        else:
            times = list(u.recent) + list(u.given.values()) + list(u.dismissed.values())
            base = max(times) if times else 0.0

        def rel(t: float) -> int:
            d = round((base - t) * TIME_UNITS)
            return -_I32 if d < -_I32 else (_I32 if d > _I32 else d)

        prefix = f"{key64(user_id):016x}-" if user_id else ""
        expire_after = self.engine.config.expire_after
        index = self._index
        out = bytearray()
        extra_traits = dict(u.traits)
        loc = extra_traits.get("locale")
        loc_b = b""
        if isinstance(loc, str) and loc.isascii() and 0 < len(loc) <= _LOCALE_MAX:
            loc_b = loc.encode()
            del extra_traits["locale"]
        out.append(len(loc_b))
        out += loc_b
        created = {o.guidance.created_at: i for i, o in enumerate(offers)}
        recent_n = 0
        for t in u.recent:
            i = created.get(t)
            if i is not None and i < 255:
                out.append(i)
            else:
                out.append(255)
                out += _S32.pack(rel(t))
            recent_n += 1
        details: list[Any] = []
        for o in offers:
            g = o.guidance
            idx = index.get(g.id, 255)
            flags = 0
            marks = []
            r = rel(g.created_at)
            c = base - r / TIME_UNITS  # the offer's time as the record gives it back
            for bit, when in enumerate((o.delivered, o.shown, o.clicked, o.dismissed, o.completed)):
                if when:
                    flags |= 1 << bit
                    marks.append(min(65535, max(0, round(when - c))))
            if o.expired:
                flags |= _EXPIRED
            mine = [
                g.id if idx == 255 else None,
                None if g.expires_at == c + expire_after else g.expires_at,
                None if prefix and g.episode_id == f"{prefix}{int(c * 1000.0):x}" else g.episode_id,
                g.step,
                g.target,
            ]
            if mine != _NO_DETAILS:
                flags |= _DETAILS
                details.append(mine)
            out.append(idx)
            out.append(flags)
            out += _S32.pack(r)
            if marks:
                out += _MARKS_S[len(marks)].pack(*marks)
        latest = {o.guidance.id: o for o in offers}
        given_x: dict[str, float] = {}
        given_n = 0
        for gid, t in u.given.items():
            last = latest.get(gid)
            if last is not None and last.guidance.created_at == t:
                continue  # implied by the offer
            if gid in index:
                out.append(index[gid])
                out += _S32.pack(rel(t))
                given_n += 1
            else:
                given_x[gid] = t
        dism_x: dict[str, float] = {}
        dism_n = 0
        for gid, t in u.dismissed.items():
            last = latest.get(gid)
            if last is not None and last.dismissed == t:
                continue  # implied by the offer's mark (whole seconds after it)
            if gid in index:
                out.append(index[gid])
                out += _S32.pack(rel(t))
                dism_n += 1
            else:
                dism_x[gid] = t
        head = _HEAD.pack(min(255, _HEAD.size + len(out)), 1, recent_n, len(offers), given_n, dism_n, base)
        rest = [extra_traits or None, details or None, given_x or None, dism_x or None]
        return head + bytes(out), (rest if any(v is not None for v in rest) else None)

    def unpack(self, record: bytes, rest: Any, user_id: str) -> _User:
        """The user of :meth:`pack`'s ``(record, rest)``."""
        _n, fmt, recent_n, offers_n, given_n, dism_n, base = _HEAD.unpack_from(record, 0)
        if fmt != 1:
            raise ValueError(f"a guidance record of format {fmt}")
        traits, details, given_x, dism_x = rest if rest is not None else (None, None, None, None)
        items = self.engine.config.items
        prefix = f"{key64(user_id):016x}-" if user_id else ""
        u = _User(self.engine.config.caps.per_day)
        at = _HEAD.size
        n = record[at]
        if n:
            u.traits["locale"] = record[at + 1 : at + 1 + n].decode()
        at += 1 + n
        if traits:
            u.traits.update(traits)
        recent: list[int | float] = []
        for _ in range(recent_n):
            i = record[at]
            at += 1
            if i == 255:
                recent.append(base - _S32.unpack_from(record, at)[0] / TIME_UNITS)
                at += 4
            else:
                recent.append(i)
        detail = iter(details or ())
        offers: list[_Offer] = []
        for _ in range(offers_n):
            idx, flags = record[at], record[at + 1]
            c = base - _S32.unpack_from(record, at + 2)[0] / TIME_UNITS
            at += 6
            n_marks = _N_MARKS[flags & 31]
            marks = _MARKS_S[n_marks].unpack_from(record, at)
            at += 2 * n_marks
            gid_x, expires, episode_id, step, target = next(detail) if flags & _DETAILS else (None,) * 5
            item = items[idx] if idx < len(items) and idx != 255 else self.engine._items.get(gid_x or "")
            gid = gid_x if gid_x is not None else (item.id if item else "")
            offer = _Offer(
                Guidance(
                    id=gid,
                    kind=item.kind if item else "banner",
                    title=item.title if item else gid,
                    body=item.body if item else "",
                    url=item.url if item else None,
                    anchor=item.anchor if item else None,
                    locale=item.locale if item else None,
                    episode_id=episode_id if episode_id is not None else f"{prefix}{int(c * 1000.0):x}",
                    step=step,
                    target=target,
                    created_at=c,
                    expires_at=expires if expires is not None else c + self.engine.config.expire_after,
                )
            )
            k = 0
            for bit, name in enumerate(_MARKS):
                if flags & (1 << bit):
                    setattr(offer, name, c + marks[k])
                    k += 1
            offer.expired = bool(flags & _EXPIRED)
            if offer.dismissed:
                u.dismissed[gid] = offer.dismissed
            offers.append(offer)
            u.offers[gid] = offer
            u.given[gid] = c
        for t in recent:
            u.recent.append(offers[t].guidance.created_at if isinstance(t, int) else t)
        for _ in range(given_n):
            u.given[items[record[at]].id] = base - struct.unpack_from("<i", record, at + 1)[0] / TIME_UNITS
            at += 5
        for _ in range(dism_n):
            u.dismissed[items[record[at]].id] = base - struct.unpack_from("<i", record, at + 1)[0] / TIME_UNITS
            at += 5
        u.given.update(given_x or {})
        u.dismissed.update(dism_x or {})
        return u


class Selection:
    """What the engine decided for one episode.

    ``guidance``: the item offered (None when nothing matched, the caps held it back or the
    user is in the holdout). ``eligible``: the item id the rules pick for this user ignoring
    the caps (what a holdout user would have got): the exposure that insights measure.
    ``blocked``: why nothing was offered although a rule matched (``"holdout"``,
    ``"daily cap"``, ``"pending"``, ``"cooldown"``, ``"disabled"``).
    """

    __slots__ = ("guidance", "eligible", "holdout", "blocked")

    def __init__(self, guidance: Guidance | None, eligible: str | None, holdout: bool,
                 blocked: str | None) -> None:  # fmt: skip
        self.guidance = guidance
        self.eligible = eligible
        self.holdout = holdout
        self.blocked = blocked

    def __repr__(self) -> str:
        gid = self.guidance.id if self.guidance else None
        return (
            f"Selection(guidance={gid!r}, eligible={self.eligible!r}, holdout={self.holdout}, blocked={self.blocked!r})"
        )


#: ``listener(item_id, what)`` with what in offered/delivered/shown/clicked/dismissed/completed/expired.
ItemListener = Callable[[str, str], None]


def clean_traits(traits: Mapping[str, Any]) -> dict[str, Any]:
    """Validated traits: string keys; str, int, float, bool values (None removes a trait)."""
    if not isinstance(traits, Mapping):
        raise TypeError(f"traits must be a mapping, not {type(traits).__name__}")
    out: dict[str, Any] = {}
    for key, value in traits.items():
        if not isinstance(key, str) or not key:
            raise TypeError(f"trait names must be non-empty strings, not {key!r}")
        if value is None or isinstance(value, (bool, int)):
            out[key[:MAX_TEXT]] = value
        elif isinstance(value, float):
            out[key[:MAX_TEXT]] = value if math.isfinite(value) else None
        elif isinstance(value, str):
            out[key[:MAX_TEXT]] = value[:MAX_TEXT]
        # Other values (lists, dicts, dates) cannot be matched by rules: ignored.
    return out


class GuidanceEngine:
    """Picks guidance for episodes and keeps the per-user bookkeeping behind the caps.

    Thread-safe. ``capacity`` bounds the users remembered (least recently active evicted
    first); ``listener`` hears what happens to each item (for insights), called outside the
    engine's lock. ``state``: where the per-user records live (default: this process's
    memory; a :class:`pyfriction.userstate.FileState` shares them between processes).
    """

    def __init__(self, config: GuidanceConfig, capacity: int, listener: ItemListener | None = None,
                 state: StateStore | None = None) -> None:  # fmt: skip
        self.config = config
        self._capacity = capacity
        self._listener = listener
        self._items: dict[str, GuidanceItem] = {item.id: item for item in config.items}
        self._rules = sorted((_Rule(i, r) for i, r in enumerate(config.rules)), key=lambda r: r.rank)
        self._state: StateStore = MemoryState(capacity) if state is None else state
        self._state.codec(GUIDANCE, _UserCodec(self))

    @property
    def unattributed(self) -> int:
        """Guidance outcomes for items the user was never offered (or that were forgotten)."""
        with self._state.transaction() as tx:
            return int(tx.scalars.get("unattributed", 0))

    @property
    def active(self) -> bool:
        """True when guidance is enabled and some rule can pick an item."""
        return self.config.enabled and bool(self._rules)

    def __len__(self) -> int:
        return self._state.count(GUIDANCE)

    # -- users ------------------------------------------------------------------------------
    def _new_user(self) -> _User:
        return _User(self.config.caps.per_day)

    def identify(self, user_id: str, traits: Mapping[str, Any]) -> None:
        """Merge ``traits`` into the user's (a None value removes that trait)."""
        clean = clean_traits(traits)
        with self._state.transaction() as tx:
            u = tx.user(GUIDANCE, user_id, self._new_user)
            for key, value in clean.items():
                if value is None:
                    u.traits.pop(key, None)
                elif key in u.traits or len(u.traits) < MAX_TRAITS:
                    u.traits[key] = value

    def traits(self, user_id: str) -> dict[str, Any]:
        """A copy of the user's traits (empty when unknown)."""
        with self._state.transaction() as tx:
            u = tx.peek(GUIDANCE, user_id)
            return dict(u.traits) if u is not None else {}

    def _locale(self, traits: Mapping[str, Any]) -> str | None:
        loc = traits.get("locale")
        return loc if isinstance(loc, str) and loc else self.config.default_locale

    def is_holdout(self, user_id: str) -> bool:
        """True when the user is in the holdout (never gets guidance)."""
        h = self.config.holdout
        return in_holdout(user_id, h.share, h.salt)

    # -- selection --------------------------------------------------------------------------
    def select(self, episode: Episode) -> Selection:
        """Pick guidance for ``episode`` and record the offer; the episode is not modified."""
        if not self.active:
            return Selection(None, None, False, None)
        user_id, ts = episode.user_id, episode.ts
        holdout = self.is_holdout(user_id)
        events: list[tuple[str, str]] = []
        with self._state.transaction() as tx:
            u = tx.user(GUIDANCE, user_id, self._new_user)
            locale = self._locale(u.traits)
            candidates = [r for r in self._rules if r.matches(episode, u.traits, locale)]
            eligible = None
            for rule in candidates:
                eligible = next((i for i in rule.items if self._locale_ok(i, locale)), None)
                if eligible is not None:
                    break
            if eligible is None:
                return Selection(None, None, holdout, None)
            if holdout:
                return Selection(None, eligible, True, "holdout")
            caps = self.config.caps
            for offer in u.offers.values():  # expire what nobody fetched in time
                if not offer.expired and not (offer.delivered or offer.shown) and ts >= offer.guidance.expires_at:
                    offer.expired = True
                    events.append((offer.guidance.id, "expired"))
            blocked: str | None = None
            chosen: str | None = None
            if caps.per_day == 0 or (len(u.recent) >= caps.per_day and ts - u.recent[0] < DAY):
                blocked = "daily cap"
            elif any(offer.waiting(ts) for offer in u.offers.values()):
                blocked = "pending"
            else:
                for rule in candidates:
                    chosen = next((i for i in rule.items if self._allowed(u, i, locale, ts)), None)
                    if chosen is not None:
                        break
                if chosen is None:
                    blocked = "cooldown"
            guidance = None
            if chosen is not None:
                guidance = self._offer(u, self._items[chosen], episode)
                events.append((chosen, "offered"))
        self._notify(events)
        return Selection(guidance, eligible, False, blocked)

    def _locale_ok(self, item_id: str, locale: str | None) -> bool:
        item = self._items[item_id]
        return item.locale is None or locale_matches(item.locale, locale)

    def _allowed(self, u: _User, item_id: str, locale: str | None, ts: float) -> bool:
        if not self._locale_ok(item_id, locale):
            return False
        caps = self.config.caps
        last = u.given.get(item_id)
        if last is not None and ts - last < caps.item_cooldown:
            return False
        gone = u.dismissed.get(item_id)
        if gone is not None and ts - gone < caps.dismiss_for:
            return False
        return True

    def _offer(self, u: _User, item: GuidanceItem, episode: Episode) -> Guidance:
        ts = episode.ts
        guidance = Guidance(
            id=item.id,
            kind=item.kind,
            title=item.title,
            body=item.body,
            url=item.url,
            anchor=item.anchor,
            locale=item.locale,
            episode_id=episode.episode_id,
            step=episode.step,
            target=episode.target,
            created_at=ts,
            expires_at=ts + self.config.expire_after,
        )
        u.recent.append(ts)
        u.given[item.id] = ts
        u.offers.pop(item.id, None)
        u.offers[item.id] = _Offer(guidance)
        while len(u.offers) > MAX_OFFERS:
            u.offers.popitem(last=False)
        return guidance

    # -- delivery ---------------------------------------------------------------------------
    def pending(self, user_id: str, now: float) -> list[Guidance]:
        """Guidance waiting for ``user_id`` at ``now``, oldest first; marks it delivered, so it is
        returned once (``Tracker.pending``: for a host that shows what it reads). Nothing read
        before, by this or by :meth:`unshown`, comes back."""
        events: list[tuple[str, str]] = []
        out: list[Guidance] = []
        with self._state.transaction() as tx:
            u = tx.peek(GUIDANCE, user_id)
            if u is None:
                return out
            for offer in u.offers.values():
                if offer.delivered or offer.shown or offer.expired:
                    continue
                if now >= offer.guidance.expires_at:
                    offer.expired = True
                    events.append((offer.guidance.id, "expired"))
                    continue
                offer.delivered = now
                events.append((offer.guidance.id, "delivered"))
                out.append(offer.guidance)
        self._notify(events)
        out.sort(key=lambda g: g.created_at)
        return out

    def unshown(self, user_id: str, now: float) -> list[Guidance]:
        """Guidance offered to ``user_id`` that no page has shown yet, oldest first: what a
        browser should (still) display at ``now``. Unlike :meth:`pending`, reading does not
        consume: an item comes back on every call, whether read before or not, until a page
        reports it ``shown`` (or ``clicked``, ``dismissed``, ``completed``, which imply it) or
        it expires (``guidance.expire_after`` after the offer). The first read marks it
        delivered (insights count it then; :meth:`pending` no longer returns it). For a host
        whose pages report what they show (the sidecar: a tab may close, or a stream drop,
        between reading an item and showing it; another tab or the reconnect gets it again)."""
        events: list[tuple[str, str]] = []
        out: list[Guidance] = []
        with self._state.transaction() as tx:
            u = tx.peek(GUIDANCE, user_id)
            if u is None:
                return out
            for offer in u.offers.values():
                if offer.shown or offer.expired:
                    continue
                if now >= offer.guidance.expires_at:
                    if not offer.delivered:  # as pending() does: never read, now expired
                        offer.expired = True
                        events.append((offer.guidance.id, "expired"))
                    continue
                if not offer.delivered:
                    offer.delivered = now
                    events.append((offer.guidance.id, "delivered"))
                out.append(offer.guidance)
        self._notify(events)
        out.sort(key=lambda g: g.created_at)
        return out

    def outcome(self, user_id: str, item_id: str, outcome: str, ts: float) -> bool:
        """Record what the user did with an item; False when it was never offered to them.

        ``clicked``, ``dismissed`` and ``completed`` imply ``shown``. Each outcome counts once
        per offer. A dismissed item is not offered again for ``caps.dismiss_for`` seconds.
        """
        if outcome not in OUTCOMES:
            raise ValueError(f"outcome must be one of {', '.join(OUTCOMES)}, not {outcome!r}")
        events: list[tuple[str, str]] = []
        with self._state.transaction() as tx:
            u = tx.peek(GUIDANCE, user_id)
            offer = u.offers.get(item_id) if u is not None else None
            if u is None or offer is None:
                tx.scalars["unattributed"] = tx.scalars.get("unattributed", 0) + 1
                return False
            tx.user(GUIDANCE, user_id)  # marks the user active
            if outcome == "anchor_missing":
                events.append((item_id, outcome))
            elif not offer.shown:
                offer.shown = ts
                events.append((item_id, "shown"))
            if outcome not in ("shown", "anchor_missing") and not getattr(offer, outcome):
                setattr(offer, outcome, ts)
                events.append((item_id, outcome))
                if outcome == "dismissed":  # the first dismissal of this offer starts the period
                    u.dismissed[item_id] = ts
        self._notify(events)
        return True

    def _notify(self, events: Sequence[tuple[str, str]]) -> None:
        if self._listener is not None:
            for item_id, what in events:
                self._listener(item_id, what)

    # -- snapshots --------------------------------------------------------------------------
    def export(self) -> dict[str, Any]:
        """The per-user state as plain data (msgpack-able), least recently active first."""
        users = []
        for uid, u in self._state.users(GUIDANCE):
            offers = [
                [o.guidance, o.delivered, o.shown, o.clicked, o.dismissed, o.completed, o.expired]
                for o in u.offers.values()
            ]
            users.append([uid, u.traits, list(u.recent), u.given, u.dismissed, offers])
        return {"users": users, "unattributed": self.unattributed}

    def load(self, data: Mapping[str, Any], convert: Callable[[Any], Guidance]) -> None:
        """Replace the state with an :meth:`export` (``convert`` turns a decoded offer back into
        a :class:`Guidance`); keeps the most recently active users when over capacity."""
        self._state.clear((GUIDANCE,), ())
        with self._state.transaction() as tx:
            rows: list[Any] = list(data.get("users", ()))
            for uid, traits, recent, given, dismissed, offers in rows[max(0, len(rows) - self._capacity) :]:
                u = _User(self.config.caps.per_day)
                u.traits = {str(k): v for k, v in dict(traits).items()}
                u.recent.extend(float(t) for t in recent)
                u.given = {str(k): float(v) for k, v in dict(given).items()}
                u.dismissed = {str(k): float(v) for k, v in dict(dismissed).items()}
                for g, delivered, shown, clicked, dismissed_at, completed, expired in offers:
                    offer = _Offer(convert(g))
                    offer.delivered, offer.shown, offer.clicked = float(delivered), float(shown), float(clicked)
                    offer.dismissed, offer.completed, offer.expired = (
                        float(dismissed_at),
                        float(completed),
                        bool(expired),
                    )
                    u.offers[offer.guidance.id] = offer
                tx.user(GUIDANCE, str(uid), lambda u=u: u)
            tx.scalars["unattributed"] = int(data.get("unattributed", 0))

    def known_items(self) -> Iterable[GuidanceItem]:
        """The catalog, in declared order."""
        return self._items.values()


def unshown(tracker: Any, user_id: str) -> list[Guidance]:
    """The guidance a :class:`pyfriction.Tracker` offered ``user_id`` that no page has shown
    yet, at the tracker's clock: ``tracker.unshown(user_id)`` (kept for callers of this
    function), that is :meth:`GuidanceEngine.unshown` (reading does not consume; an
    item comes back until ``tracker.ack(user_id, guidance_id, "shown")`` or its expiry)."""
    result: list[Guidance] = tracker.unshown(user_id)
    return result
