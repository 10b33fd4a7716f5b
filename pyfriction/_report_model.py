"""What a report is made of, shared by the text report (:mod:`pyfriction.report`) and the HTML
page (:mod:`pyfriction._report_html`): the result of a replay and the formatting of its figures.
"""

from __future__ import annotations

import msgspec

from .insights import Insights

__all__ = ["ReportResult", "deflection_note", "duration", "item_columns", "pct"]


class ReportResult(msgspec.Struct, kw_only=True):
    """A replay's :class:`Insights` with where they came from."""

    source: str
    #: The config file (or ``"<config>"`` for one given as an object); None without one.
    config: str | None
    #: Whether the config had guidance items: deflection and item figures mean something.
    catalog: bool = False
    #: ``guidance_shown``/``_clicked``/``_dismissed`` events in the log.
    guidance_events: int = 0
    lines: int
    events: int
    identified: int
    skipped: int
    errors: list[str]
    seconds: float
    insights: Insights


def deflection_note(result: ReportResult) -> str:
    """Why a report without a catalog has no deflection figures, and what to pass."""
    needs = "deflection needs --config FILE with the guidance (catalog, rules, holdout) that was live"
    if result.guidance_events:
        return f"The log has {result.guidance_events:,} guidance events, but {needs} when it was recorded."
    return f"No guidance catalog: {needs} when the log was recorded."


# --- text ----------------------------------------------------------------------------------------


def duration(seconds: float | None) -> str:
    """``45 s``, ``12 min``, ``1 h 20 min``, ``24 h``, ``2.5 d``; ``-`` for None."""
    if seconds is None:
        return "-"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * 86400:
        h, m = divmod(int(round(seconds / 60)), 60)
        return f"{h} h {m} min" if m else f"{h} h"
    return f"{seconds / 86400:.1f} d"


def pct(x: float | None, digits: int = 1) -> str:
    """``31.9%``; ``-`` for None."""
    return "-" if x is None else f"{x * 100:.{digits}f}%"


def item_columns(ins: Insights) -> list[str]:
    """The item counters worth a column: ``completed`` and ``expired`` only when some item has
    them (a log replay sees neither: completion is reported with ``Tracker.ack``, and nothing
    fetches pending items)."""
    cols = ["offered", "delivered", "shown", "clicked", "dismissed", "completed", "expired", "anchor_missing"]
    return [
        c for c in cols if c in ("offered", "shown", "clicked", "dismissed") or any(getattr(i, c) for i in ins.items)
    ]
