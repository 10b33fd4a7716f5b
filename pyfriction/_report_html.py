"""The HTML page of ``pyfriction report --html``: self-contained, no JavaScript, no external
resources; charts are inline SVG (hotspot bars, lead-time histogram, deflection with its
interval). Every bar is a ``<rect class="bar ...">`` carrying its value in ``data-value``.
"""

from __future__ import annotations

import html
import time
from collections.abc import Sequence
from typing import Any

from ._report_model import ReportResult, deflection_note, duration, item_columns, pct

__all__ = ["render_html"]

_CSS = """
:root { --ink:#1f2937; --muted:#6b7280; --line:#e5e7eb; --accent:#4f46e5; --teal:#0d9488;
        --grey:#9ca3af; --bg:#f9fafb; }
* { box-sizing: border-box; }
body { margin: 0; font: 15px/1.5 -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif;
       color: var(--ink); background: var(--bg); }
main { max-width: 980px; margin: 0 auto; padding: 32px 24px 64px; }
h1 { font-size: 26px; margin: 0 0 4px; }
h2 { font-size: 19px; margin: 0 0 4px; }
.sub { color: var(--muted); margin: 0 0 24px; }
.cards { display: grid; grid-template-columns: repeat(auto-fit, minmax(170px, 1fr)); gap: 12px; margin-bottom: 24px; }
.card { background: #fff; border: 1px solid var(--line); border-radius: 10px; padding: 14px 16px; }
.card .n { font-size: 24px; font-weight: 650; }
.card .l { color: var(--muted); font-size: 13px; }
section { background: #fff; border: 1px solid var(--line); border-radius: 10px; padding: 20px 22px; margin-bottom: 20px; }
section p.lead { color: var(--muted); margin: 0 0 14px; }
svg { display: block; width: 100%; height: auto; }
svg text { font: 12px -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif; fill: var(--ink); }
svg .muted { fill: var(--muted); }
table { border-collapse: collapse; width: 100%; font-size: 14px; }
th, td { text-align: left; padding: 6px 8px; border-bottom: 1px solid var(--line); }
th { color: var(--muted); font-weight: 600; font-size: 12px; text-transform: uppercase; letter-spacing: .03em; }
td.n, th.n { text-align: right; font-variant-numeric: tabular-nums; }
.verdict { font-weight: 600; }
.good { color: #047857; } .bad { color: #b91c1c; } .meh { color: var(--muted); }
.note { color: var(--muted); font-size: 13px; margin-top: 10px; }
footer { color: var(--muted); font-size: 12px; text-align: center; }
"""


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _svg(width: int, height: int, body: Sequence[str], label: str) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" width="{width}" '
        f'height="{height}" role="img" aria-label="{_e(label)}">' + "".join(body) + "</svg>"
    )


def _hotspot_chart(result: ReportResult, top: int = 12) -> str:
    spots = result.insights.hotspots[:top]
    if not spots:
        return '<p class="note">No friction episodes in this log.</p>'
    width, label_w, bar_w, row = 900, 300, 360, 30
    height = 16 + row * len(spots)
    peak = max(h.users for h in spots) or 1
    body = []
    for i, h in enumerate(spots):
        y = 8 + i * row
        name = f"{h.step or '-'}  ·  {h.target or '-'}"
        if len(name) > 44:
            name = name[:41] + "..."
        w = max(2.0, bar_w * h.users / peak)
        dom = next(iter(h.detectors), "-")
        tip = f"{h.step} / {h.target}: {h.users} users, {h.episodes} episodes, {h.tickets} tickets; mostly {dom}"
        body.append(f'<text x="{label_w - 10}" y="{y + 19}" text-anchor="end">{_e(name)}</text>')
        body.append(
            f'<rect class="bar hotspot-bar" data-value="{h.users}" x="{label_w}" y="{y + 4}" width="{w:.1f}" '
            f'height="{row - 10}" rx="3" fill="#4f46e5"><title>{_e(tip)}</title></rect>'
        )
        body.append(
            f'<text x="{label_w + w + 8:.1f}" y="{y + 19}">{h.users} users · {h.episodes} episodes · '
            f'<tspan class="muted">{_e(dom)}</tspan></text>'
        )
    return _svg(width, height, body, "Friction hotspots: users affected per step and target")


def _lead_chart(result: ReportResult) -> str:
    lt = result.insights.lead_time
    if not lt.preceded:
        return '<p class="note">No ticket was preceded by an episode.</p>'
    width, height, left, bottom, top = 900, 260, 50, 40, 20
    n = len(lt.buckets)
    slot = (width - left - 10) / n
    peak = max(b.count for b in lt.buckets) or 1
    plot_h = height - top - bottom
    body = [f'<line x1="{left}" y1="{height - bottom}" x2="{width - 10}" y2="{height - bottom}" stroke="#d1d5db"/>']
    for frac in (0.5, 1.0):
        y = height - bottom - plot_h * frac
        body.append(f'<line x1="{left}" y1="{y:.1f}" x2="{width - 10}" y2="{y:.1f}" stroke="#f3f4f6"/>')
        body.append(f'<text class="muted" x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{peak * frac:.0f}</text>')
    for i, b in enumerate(lt.buckets):
        h = plot_h * b.count / peak
        x = left + i * slot + slot * 0.15
        y = height - bottom - h
        body.append(
            f'<rect class="bar lead-bar" data-value="{b.count}" x="{x:.1f}" y="{y:.1f}" width="{slot * 0.7:.1f}" '
            f'height="{h:.1f}" rx="3" fill="#0d9488"><title>{_e(b.label)}: {b.count} tickets</title></rect>'
        )
        if b.count:
            body.append(f'<text x="{x + slot * 0.35:.1f}" y="{y - 5:.1f}" text-anchor="middle">{b.count}</text>')
        body.append(
            f'<text class="muted" x="{x + slot * 0.35:.1f}" y="{height - bottom + 18}" text-anchor="middle">{_e(b.label)}</text>'
        )
    return _svg(width, height, body, "Lead time: minutes from the first episode to the ticket")


def _deflection_chart(result: ReportResult) -> str:
    d = result.insights.deflection
    if d.difference is None or d.guided.rate is None or d.holdout.rate is None:
        return (
            '<p class="note">Not enough data to compare: both users offered guidance and holdout users '
            "need an episode with guidance to offer (is the holdout share 0?).</p>"
        )
    assert d.low is not None and d.high is not None
    width, left, plot_w = 900, 170, 600
    peak = max(0.05, (d.holdout.high or 0.0), (d.guided.high or 0.0))
    scale = plot_w / peak
    body = []
    rows = (
        ("Holdout (no guidance)", d.holdout, "#9ca3af", "holdout"),
        ("Offered guidance", d.guided, "#4f46e5", "guided"),
    )
    for i, (name, g, colour, key) in enumerate(rows):
        y = 20 + i * 46
        assert g.rate is not None and g.low is not None and g.high is not None
        w = max(2.0, g.rate * scale)
        body.append(f'<text x="{left - 10}" y="{y + 20}" text-anchor="end">{_e(name)}</text>')
        body.append(
            f'<rect class="bar deflection-bar {key}" data-value="{g.rate:.4f}" x="{left}" y="{y + 4}" '
            f'width="{w:.1f}" height="24" rx="3" fill="{colour}"><title>{_e(name)}: {g.tickets} of {g.users} users '
            f"filed a ticket ({pct(g.rate)}, 95% CI {pct(g.low)} to {pct(g.high)})</title></rect>"
        )
        x1, x2 = left + g.low * scale, left + g.high * scale
        body.append(
            f'<line class="ci" x1="{x1:.1f}" y1="{y + 16}" x2="{x2:.1f}" y2="{y + 16}" stroke="#111827" stroke-width="1.5"/>'
        )
        for x in (x1, x2):
            body.append(
                f'<line x1="{x:.1f}" y1="{y + 10}" x2="{x:.1f}" y2="{y + 22}" stroke="#111827" stroke-width="1.5"/>'
            )
        body.append(
            f'<text x="{left + max(w, g.high * scale) + 10:.1f}" y="{y + 20}">{pct(g.rate)} '
            f'<tspan class="muted">({g.tickets}/{g.users})</tspan></text>'
        )
    # The difference and its interval, on its own axis around zero.
    y0 = 128
    lo, hi = min(d.low, 0.0), max(d.high, 0.0)
    span = (hi - lo) or 0.01
    lo, hi = lo - span * 0.1, hi + span * 0.1
    sx = plot_w / (hi - lo)

    def x_of(v: float) -> float:
        return left + (v - lo) * sx

    body.append(f'<text x="{left - 10}" y="{y0 + 24}" text-anchor="end">Difference</text>')
    body.append(f'<line x1="{left}" y1="{y0 + 40}" x2="{left + plot_w}" y2="{y0 + 40}" stroke="#d1d5db"/>')
    body.append(
        f'<line x1="{x_of(0):.1f}" y1="{y0 + 4}" x2="{x_of(0):.1f}" y2="{y0 + 44}" stroke="#9ca3af" stroke-dasharray="4 3"/>'
    )
    body.append(f'<text class="muted" x="{x_of(0):.1f}" y="{y0 + 58}" text-anchor="middle">0</text>')
    colour = "#047857" if d.significant and d.difference > 0 else ("#b91c1c" if d.significant else "#6b7280")
    body.append(
        f'<rect class="bar deflection-interval" data-value="{d.high - d.low:.4f}" x="{x_of(d.low):.1f}" y="{y0 + 16}" '
        f'width="{max(2.0, (d.high - d.low) * sx):.1f}" height="12" rx="6" fill="{colour}" fill-opacity="0.25" '
        f'stroke="{colour}"><title>95% CI {d.low * 100:.1f} to {d.high * 100:.1f} points</title></rect>'
    )
    body.append(f'<circle class="estimate" cx="{x_of(d.difference):.1f}" cy="{y0 + 22}" r="6" fill="{colour}"/>')
    for v in (d.low, d.high):
        body.append(f'<text class="muted" x="{x_of(v):.1f}" y="{y0 + 58}" text-anchor="middle">{v * 100:+.1f}</text>')
    body.append(
        f'<text x="{x_of(d.difference):.1f}" y="{y0 + 8}" text-anchor="middle">{d.difference * 100:+.1f} pts</text>'
    )
    return _svg(width, 200, body, "Ticket rate with and without guidance, and the difference with its 95% interval")


def _verdict(result: ReportResult) -> str:
    d = result.insights.deflection
    if d.difference is None or d.low is None or d.high is None:
        return '<p class="verdict meh">Not enough data to measure deflection yet.</p>'
    fewer = "fewer" if d.difference >= 0 else "more"
    cls = "good" if d.significant and d.difference > 0 else ("bad" if d.significant else "meh")
    sure = (
        "The 95% interval excludes zero: guidance makes a difference."
        if d.significant
        else "The 95% interval includes zero: not conclusive yet."
    )
    rel = "" if d.relative is None else f" ({abs(d.relative) * 100:.0f}% {fewer} relative to the holdout)"
    return (
        f'<p class="verdict {cls}">Users offered guidance filed {abs(d.difference) * 100:.1f} points {fewer} tickets'
        f"{rel}: 95% CI {d.low * 100:.1f} to {d.high * 100:.1f} points. {sure}</p>"
    )


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]], numeric: Sequence[bool]) -> str:
    head = "".join(f'<th class="{"n" if n else ""}">{_e(h)}</th>' for h, n in zip(headers, numeric))
    body = "".join(
        "<tr>" + "".join(f'<td class="{"n" if n else ""}">{_e(c)}</td>' for c, n in zip(row, numeric)) + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _utc(ts: float | None) -> str:
    return "-" if ts is None else time.strftime("%Y-%m-%d %H:%M", time.gmtime(ts))


def render_html(result: ReportResult, *, top: int = 12) -> str:
    """The report as one self-contained HTML page."""
    ins = result.insights
    lt, d = ins.lead_time, ins.deflection
    cards = [
        (f"{ins.episodes:,}", "friction episodes"),
        (f"{ins.tickets:,}", "support tickets"),
        (pct(lt.share, 0), "of tickets preceded by an episode"),
        (duration(lt.median), "median warning before a ticket"),
    ]
    if result.catalog:
        cards.append(("-" if d.difference is None else f"{d.difference * 100:+.1f} pts", "fewer tickets with guidance"))
    card_html = "".join(
        f'<div class="card"><div class="n">{_e(n)}</div><div class="l">{_e(label)}</div></div>' for n, label in cards
    )
    cols = item_columns(ins)
    items = _table(
        ["Item", "Kind"] + [c.capitalize() for c in cols] + ["Click rate", "Dismiss rate"],
        [
            [it.id, it.kind] + [getattr(it, c) for c in cols] + [pct(it.click_rate, 0), pct(it.dismiss_rate, 0)]
            for it in ins.items
        ],  # fmt: skip
        [False, False] + [True] * (len(cols) + 2),
    )
    guided = result.catalog  # without a catalog no one is guided: no column of zeros
    accounts = _table(
        ["Account", "Users in friction", "Episodes", "Tickets"] + (["Guided users"] if guided else [])
        + ["Last episode (UTC)"],
        [[a.account_id, a.users, a.episodes, a.tickets] + ([a.guided] if guided else []) + [_utc(a.last_episode)]
         for a in ins.accounts[:25]],
        [False, True, True, True] + ([True] if guided else []) + [False],
    )  # fmt: skip
    if result.catalog:
        guidance = f"""<section id="deflection"><h2>Does guidance prevent tickets?</h2>
<p class="lead">Share of users who filed a ticket within {duration(d.window)} of their first episode with guidance to
offer: users offered guidance against the holdout, who never get any. Bars show each rate with its 95% interval.</p>
{_deflection_chart(result)}
{_verdict(result)}</section>

<section id="items"><h2>Guidance items</h2>
<p class="lead">Click and dismiss rates are among the offers that were shown.</p>
{items}</section>
"""
        split = f" · {ins.guided_episodes:,} episodes got guidance, {ins.holdout_episodes:,} were in the holdout"
    else:
        section = '<section id="deflection"><h2>Does guidance prevent tickets?</h2>' if result.guidance_events else ""
        guidance = f'{section}<p class="note" id="deflection-note">{_e(deflection_note(result))}</p>' + (
            "</section>" if section else ""
        )
        split = ""
    config = "no config" if result.config is None else "config " + result.config.rsplit("/", 1)[-1]
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Friction report: {_e(result.source)}</title>
<style>{_CSS}</style></head>
<body><main>
<h1>Friction report</h1>
<p class="sub">{_e(result.source)} · {_utc(ins.since)} to {_utc(ins.until)} UTC · {ins.events:,} events from
{ins.users:,} users{split}</p>
<div class="cards">{card_html}</div>

<section id="hotspots"><h2>Where users struggle</h2>
<p class="lead">Steps and targets ranked by users affected, with the detector behind most episodes there.</p>
{_hotspot_chart(result, top)}</section>

<section id="lead-time"><h2>Warning before a ticket</h2>
<p class="lead">{lt.preceded:,} of {lt.tickets:,} tickets ({pct(lt.share)}) came after an episode of the same user;
the first episode fired a median {duration(lt.median)} before the ticket (90th percentile {duration(lt.p90)}).</p>
{_lead_chart(result)}</section>

{guidance}
<section id="accounts"><h2>Accounts</h2>
<p class="lead">Friction rolled up per customer account.</p>
{accounts}</section>
<footer>pyfriction report · {_e(config)} · {ins.engine} engine</footer>
</main></body></html>
"""
