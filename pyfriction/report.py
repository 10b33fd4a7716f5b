"""``pyfriction report``: replay a recorded event log and report what friction cost and what
guidance saved.

:func:`replay_log` feeds a JSON Lines log (canonical events, or Segment-style ``track``/
``page``/``identify`` payloads mapped by the config's ``[segment]`` section) through a
:class:`pyfriction.Tracker` with the guidance config, and returns its :class:`Insights`
(hotspots, lead time, deflection with a 95% interval, guidance items, accounts).
:func:`format_text` renders them as readable tables, :func:`to_json` for machines and
:func:`pyfriction._report_html.render_html` as a self-contained HTML page with SVG charts.

Deflection is measured against the guidance catalog that was live when the log was recorded,
so it needs ``--config`` with that catalog. Without it the report has no catalog (it never
borrows the sample app's, which only ``pyfriction demo`` and ``pyfriction sample`` use): it
shows hotspots, lead time and accounts, and says what deflection needs.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Iterator, Sequence
from importlib import resources
from typing import IO, Any

import msgspec

from ._report_model import ReportResult, deflection_note, duration, item_columns, pct
from .config import Config, load_config
from .insights import Insights
from .segment import ReplayCounts, replay
from .tracker import Tracker

__all__ = [
    "Progress",
    "ReportResult",
    "add_parser",
    "default_config_path",
    "deflection_note",
    "format_text",
    "replay_log",
    "store_report",
    "to_json",
]

DEFAULT_CONFIG = "guidance.toml"


def default_config_path() -> str:
    """The bundled guidance config of the sample app (what ``pyfriction sample --guided``
    simulates; ``report`` uses it only when given as ``--config``)."""
    return str(resources.files("pyfriction") / "data" / DEFAULT_CONFIG)


class Progress:
    """A one-line progress bar on a terminal stream (``\\r``-redrawn), shown once a replay has
    run ``delay`` seconds, redrawn at most every ``interval`` seconds."""

    WIDTH = 28

    def __init__(self, stream: IO[str], total: int | None, label: str, *, delay: float = 0.5,
                 interval: float = 0.1) -> None:  # fmt: skip
        self.stream, self.total, self.label = stream, total, label
        self.delay, self.interval = delay, interval
        self.start = time.monotonic()
        self._next = self.start + delay
        self.shown = False

    def update(self, done: int, events: int, force: bool = False) -> None:
        """Redraw with ``done`` bytes (of ``total``) and ``events`` replayed, when due."""
        now = time.monotonic()
        if not force and now < self._next:
            return
        self._next = now + self.interval
        elapsed = now - self.start
        if self.total:
            frac = min(1.0, done / self.total)
            filled = int(frac * self.WIDTH)
            bar = f"[{'#' * filled}{'.' * (self.WIDTH - filled)}] {frac * 100:5.1f}%"
        else:
            bar = ""
        rate = events / elapsed if elapsed > 0 else 0.0
        line = f"\rreplaying {self.label} {bar} {events:,} events {elapsed:.1f} s ({rate:,.0f}/s)"
        try:
            self.stream.write(line)
            self.stream.flush()
            self.shown = True
        except (OSError, ValueError):
            pass

    def close(self, done: int, events: int) -> None:
        """Draw the final state (if the bar was shown) and end the line."""
        if self.shown:
            self.update(done, events, force=True)
            try:
                self.stream.write("\n")
                self.stream.flush()
            except (OSError, ValueError):
                pass


def _lines(fh: IO[bytes], progress: Progress | None, counts: list[int]) -> Iterator[Any]:
    decode = msgspec.json.Decoder().decode
    done = 0
    for line in fh:
        done += len(line)
        counts[0] += 1
        if progress is not None and counts[0] % 2048 == 0:
            progress.update(done, counts[0])
        if not line.strip():
            continue
        try:
            yield decode(line)
        except msgspec.DecodeError as exc:
            yield ValueError(f"line {counts[0]}: not valid JSON: {exc}")
    counts[1] = done


def store_report(path: str, config: Any = None, *, limit: int | None = None) -> ReportResult:
    """The insights held by the ``file://`` store at ``path``: the totals of every process
    that shares it, read without replaying anything (live processes may go on meanwhile).

    ``config`` gives the catalog's texts (default: the store's own config, without a catalog);
    it must agree with the store on what gives its state a meaning. Raises
    :class:`pyfriction.store.StoreError` for a missing or foreign file.
    """
    from .store import StoreError, core_module, stored_config

    if not os.path.exists(path):
        raise StoreError(f"no store at {path!r}")
    core = core_module()
    header = core.read_header(path)
    sizes = {"capacity": header["capacity"], "max_steps": header["max_steps"]}
    cfg_name = None if config is None else (
        os.fspath(config) if isinstance(config, (str, os.PathLike)) else "<config>")  # fmt: skip
    cfg = (
        stored_config(path, bytes(core.read_config(path)), **sizes) if config is None else load_config(config, **sizes)
    )
    started = time.monotonic()
    tracker = Tracker(cfg, engine="compiled", store=f"file://{path}")
    try:
        insights = tracker.insights(limit=limit)
    finally:
        tracker.close(1.0)
    return ReportResult(source=path, config=cfg_name, catalog=bool(cfg.guidance.items), lines=0,
                        events=insights.events, identified=0, skipped=0, errors=[],
                        seconds=time.monotonic() - started, insights=insights)  # fmt: skip


def replay_log(path: str, config: Any = None, *, engine: str = "auto", progress: IO[str] | None = None,
               progress_delay: float = 0.5, limit: int | None = None) -> ReportResult:  # fmt: skip
    """Replay the JSON Lines log at ``path`` (``-``: stdin) and return its insights.

    ``config`` is a config (path, mapping or :class:`Config`) with the guidance that was live
    when the log was recorded; without one there is no catalog (no deflection or item
    figures). The tracker's clock follows the log's timestamps. ``progress`` is a stream to
    draw a progress bar on (shown after ``progress_delay`` seconds). Lines that are not JSON
    or not events are skipped and counted. Raises OSError when the log cannot be read.
    """
    cfg_name = None if config is None else (
        os.fspath(config) if isinstance(config, (str, os.PathLike)) else "<config>")  # fmt: skip
    cfg: Config = load_config(config)
    guidance_types = _guidance_types(cfg)
    seen = [0]
    now = [0.0]
    tracker = Tracker(cfg, engine=engine, clock=lambda: now[0])
    counts = [0, 0]
    started = time.monotonic()
    fh: IO[bytes]
    if path == "-":
        fh, total, label, close = sys.stdin.buffer, None, "<stdin>", False
    else:
        fh = open(path, "rb")
        total, label, close = os.fstat(fh.fileno()).st_size, os.path.basename(path), True
    bar = Progress(progress, total, label, delay=progress_delay) if progress is not None else None

    def observe(event: Any) -> None:
        ts = event.get("ts") if isinstance(event, dict) else getattr(event, "ts", None)
        if isinstance(ts, (int, float)) and not isinstance(ts, bool) and ts > now[0]:
            now[0] = float(ts)
        tracker.observe(event)
        kind = event.get("type") if isinstance(event, dict) else getattr(event, "type", None)
        if kind in guidance_types:
            seen[0] += 1

    def records() -> Iterator[Any]:
        for item in _lines(fh, bar, counts):
            if isinstance(item, ValueError):
                bad.skipped += 1
                if len(bad.errors) < 5:
                    bad.errors.append(str(item))
                continue
            yield item

    bad = ReplayCounts()  # lines that are not JSON
    try:
        done = replay(records(), observe, tracker.identify, cfg.segment)
        tracker.flush(5.0)
        insights = tracker.insights(limit=limit)
    finally:
        tracker.close(1.0)
        if close:
            fh.close()
    if bar is not None:
        bar.close(counts[1], done.events)
    return ReportResult(
        source=path,
        config=cfg_name,
        catalog=bool(cfg.guidance.items),
        guidance_events=seen[0],
        lines=counts[0],
        events=done.events,
        identified=done.identified,
        skipped=done.skipped + bad.skipped,
        errors=(bad.errors + done.errors)[:5],
        seconds=time.monotonic() - started,
        insights=insights,
    )


def _guidance_types(cfg: Config) -> frozenset[str]:
    """The event names that are guidance feedback: the canonical ones and their aliases."""
    from .config import EventMapping
    from .guidance import EVENT_OUTCOMES

    names = set(EVENT_OUTCOMES)
    for name, mapped in cfg.event_map.items():
        kind = mapped if isinstance(mapped, str) else mapped.type if isinstance(mapped, EventMapping) else None
        if kind in EVENT_OUTCOMES:
            names.add(name)
    return frozenset(names)


def _utc(ts: float | None) -> str:
    return "-" if ts is None else time.strftime("%Y-%m-%d %H:%M", time.gmtime(ts))


def _table(
    headers: Sequence[str], rows: Sequence[Sequence[Any]], right: Sequence[bool], indent: str = "  "
) -> list[str]:
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    out = []
    for r in cells:
        parts = [c.rjust(w) if right[i] else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))]
        out.append((indent + "  ".join(parts)).rstrip())
    return out


def _cut(text: str | None, width: int) -> str:
    text = text or "-"
    return text if len(text) <= width else text[: width - 3] + "..."


def format_text(result: ReportResult, *, top: int = 10) -> str:
    """The report as readable plain-text tables (ASCII only)."""
    ins = result.insights
    lines: list[str] = []
    add = lines.append
    add(f"pyfriction report: {result.source}")
    split = (
        f" ({ins.guided_episodes:,} with guidance, {ins.holdout_episodes:,} in the holdout)" if result.catalog else ""
    )
    add(
        f"{ins.events:,} events from {ins.users:,} users -> {ins.episodes:,} friction episodes{split}, "
        f"{ins.tickets:,} tickets"
    )
    config = "no config" if result.config is None else f"config {os.path.basename(result.config)}"
    add(f"{_utc(ins.since)} to {_utc(ins.until)} UTC; {ins.engine} engine; {config}")
    if result.skipped:
        add(f"{result.skipped:,} lines skipped (first: {result.errors[0] if result.errors else '?'})")

    add("")
    add("FRICTION HOTSPOTS (by users affected)")
    if ins.hotspots:
        rows = []
        for i, h in enumerate(ins.hotspots[:top], 1):
            dom = ", ".join(f"{d} {n}" for d, n in list(h.detectors.items())[:3])
            rows.append([i, _cut(h.step, 22), _cut(h.target, 24), h.users, h.episodes, h.tickets, dom])
        lines += _table(["#", "step", "target", "users", "episodes", "tickets", "dominant detectors"], rows,
                        [True, False, False, True, True, True, False])  # fmt: skip
        if len(ins.hotspots) > top:
            add(f"  ... and {len(ins.hotspots) - top} more")
    else:
        add("  no episodes")

    lt = ins.lead_time
    add("")
    add(f"LEAD TIME (first episode -> ticket, within {duration(ins.deflection.window)})")
    add(
        f"  {lt.tickets:,} tickets, {lt.preceded:,} preceded by an episode ({pct(lt.share)}); "
        f"median {duration(lt.median)}, 90th percentile {duration(lt.p90)}"
    )
    peak = max((b.count for b in lt.buckets), default=0)
    for b in lt.buckets:
        bar = "#" * (round(30 * b.count / peak) if peak else 0)
        add(f"  {b.label:>10}  {bar:<30} {b.count:>6,}")

    if ins.detection.tickets:
        lines += _detection_text(ins)

    if result.catalog:
        lines += _deflection_text(result)
    elif result.guidance_events:
        add("")
        add("DEFLECTION")
        add("  " + deflection_note(result))

    add("")
    add("ACCOUNTS (friction per customer)")
    if ins.accounts:
        guided = result.catalog  # without a catalog no one is guided: no column of zeros
        rows = [
            [_cut(a.account_id, 24), a.users, a.episodes, a.tickets] + ([a.guided] if guided else [])
            + [_utc(a.last_episode)]
            for a in ins.accounts[:top]
        ]  # fmt: skip
        headers = ["account", "users in friction", "episodes", "tickets"] + (["guided users"] if guided else [])
        lines += _table(headers + ["last episode (UTC)"], rows, [False] + [True] * (len(headers) - 1) + [False])
        if len(ins.accounts) > top:
            add(f"  ... and {len(ins.accounts) - top} more")
    else:
        add("  no account_id in the episodes")
    if not result.catalog and not result.guidance_events:
        add("")
        add(deflection_note(result))
    return "\n".join(lines) + "\n"


def _detection_text(ins: Insights) -> list[str]:
    """The DETECTION QUALITY section (a log with tickets): tickets are labels that come for free."""
    d = ins.detection
    lines = ["", "DETECTION QUALITY (tickets as labels; `pyfriction calibrate` learns weights from them)"]
    lines.append(
        f"  {d.preceded:,} of {d.tickets:,} tickets preceded by an episode ({pct(d.recall)}); "
        f"{d.unticketed:,} of {d.struggles:,} struggles with an episode had no ticket after them"
    )
    rows = [[r.detector, r.struggles, r.ticketed, pct(r.precision)] for r in d.detectors]
    if rows:
        lines += _table(["detector (first episode)", "struggles", "then a ticket", "share"], rows,
                        [False, True, True, True])  # fmt: skip
    return lines


def _deflection_text(result: ReportResult) -> list[str]:
    """The DEFLECTION and GUIDANCE ITEMS sections (a report with a catalog)."""
    ins = result.insights
    d = ins.deflection
    lines: list[str] = []
    add = lines.append
    add("")
    add(f"DEFLECTION (ticket within {duration(d.window)} of the first episode with guidance to offer)")
    rows = []
    for name, g in (("offered guidance", d.guided), ("holdout (none)", d.holdout)):
        ci = "-" if g.low is None else f"{pct(g.low)} - {pct(g.high)}"
        rows.append([name, g.users, g.tickets, pct(g.rate), ci])
    lines += _table(["group", "users", "tickets", "rate", "95% CI"], rows, [False, True, True, True, True])
    if d.difference is None:
        add("  not enough data: both groups need users (is the holdout share 0, or no rule matching?)")
    else:
        fewer = "fewer" if d.difference >= 0 else "more"
        rel = "" if d.relative is None else f", {-d.relative * 100:+.0f}% relative"
        verdict = "significant" if d.significant else "not significant at 95%"
        assert d.low is not None and d.high is not None
        add(
            f"  -> {abs(d.difference) * 100:.1f} pts {fewer} tickets with guidance "
            f"(95% CI {d.low * 100:.1f} to {d.high * 100:.1f} pts{rel}; {verdict})"
        )

    add("")
    add("GUIDANCE ITEMS")
    if ins.items:
        cols = item_columns(ins)
        rows = [[_cut(it.id, 22), it.kind] + [getattr(it, c) for c in cols] + [pct(it.click_rate, 0),
                pct(it.dismiss_rate, 0)] for it in ins.items]  # fmt: skip
        lines += _table(["item", "kind"] + cols + ["click", "dismiss"], rows, [False, False] + [True] * (len(cols) + 2))
    else:
        add("  no item offered yet")
    return lines


def to_json(result: ReportResult) -> bytes:
    """The whole result as JSON (the insights under ``"insights"``)."""
    return msgspec.json.encode(result)


# --- the command -----------------------------------------------------------------------------------


def add_parser(commands: Any) -> argparse.ArgumentParser:
    """Add the ``report`` subcommand to an argparse subparsers object."""
    p = commands.add_parser(
        "report",
        help="replay an event log and report hotspots, lead time and accounts (deflection with --config)",
        description="Replay a JSON Lines event log (canonical events or Segment-style track/page/identify "
        "payloads) through a Tracker with guidance, and report friction hotspots, the lead time before "
        "tickets and accounts; with --config (the guidance that was live when the log was recorded) also ticket "
        "deflection by guidance, with its 95% confidence interval, and the guidance items.",
    )
    p.add_argument("events", metavar="EVENTS.jsonl", nargs="?",
                   help="the event log (JSON Lines), '-' for stdin (or --store instead)")  # fmt: skip
    p.add_argument(
        "--store",
        metavar="FILE",
        help="report the insights a file:// store holds (the totals of every process sharing it) instead of "
        "replaying a log (default: none)",
    )
    p.add_argument(
        "--config",
        metavar="FILE",
        help="TOML config with the [guidance] that was live, for deflection and item figures (default: none, "
        "no guidance catalog)",
    )
    p.add_argument(
        "--html", metavar="OUT.html", help="also write a self-contained HTML page with charts (default: none)"
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of tables (default: tables)")
    p.add_argument("--top", type=int, default=10, metavar="N", help="rows of hotspots and accounts (default: 10)")
    p.add_argument(
        "--engine",
        choices=("auto", "compiled", "reference"),
        default="auto",
        help="engine to replay with (default: auto, the compiled core when it is available)",
    )
    bar = p.add_mutually_exclusive_group()
    bar.add_argument("--progress", dest="progress", action="store_true", default=None,
                     help="always draw a progress bar on stderr (default: on a terminal, for long replays)")  # fmt: skip
    bar.add_argument(
        "--no-progress",
        dest="progress",
        action="store_false",
        help="never draw the progress bar (default: on a terminal, for long replays)",
    )
    p.set_defaults(func=run)
    return p  # type: ignore[no-any-return]


def run(args: argparse.Namespace) -> int:
    """The ``report`` command: returns the exit status; raises the CLI's error type for user errors."""
    from ._cli_error import CliError
    from .config import ConfigError
    from .store import StoreError

    if (args.events is None) == (args.store is None):
        raise CliError("give an event log (EVENTS.jsonl) or --store FILE, not both or neither")
    show = sys.stderr.isatty() if args.progress is None else args.progress
    try:
        if args.store is not None:
            result = store_report(args.store, args.config)
        else:
            result = replay_log(args.events, args.config, engine=args.engine, progress=sys.stderr if show else None,
                                progress_delay=0.5 if args.progress is None else 0.0, limit=None)  # fmt: skip
    except StoreError as exc:
        raise CliError(str(exc)) from None
    except OSError as exc:
        raise CliError(f"cannot read {exc.filename or args.events}: {exc.strerror or exc}") from None
    except ConfigError as exc:
        raise CliError(str(exc)) from None
    except ImportError as exc:
        raise CliError(str(exc)) from None
    if args.html:
        from ._report_html import render_html

        try:
            with open(args.html, "w", encoding="utf-8") as fh:
                fh.write(render_html(result))
        except OSError as exc:
            raise CliError(f"cannot write {args.html}: {exc.strerror}") from None
        print(f"wrote {args.html}", file=sys.stderr)
    if args.json:
        sys.stdout.buffer.write(to_json(result) + b"\n")
        sys.stdout.flush()
    else:
        sys.stdout.write(format_text(result, top=args.top))
        sys.stdout.flush()
    return 0
