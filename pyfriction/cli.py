"""The ``pyfriction`` command line.

``pyfriction demo`` replays a JSON Lines event stream (by default the bundled sample) through
a :class:`pyfriction.Tracker` and prints every friction episode as it fires, then a summary.
Each subcommand is a ``_cmd_*`` function registered in :func:`build_parser`.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from collections.abc import Iterator, Sequence
from importlib import resources
from typing import IO, Any

import msgspec

from pyfriction import Episode, InvalidEvent, Tracker
from pyfriction._cli_error import CliError

__all__ = ["build_parser", "format_episode", "main"]

SAMPLE = "sample_events.jsonl"


@contextlib.contextmanager
def _open_events(path: str | None) -> Iterator[IO[bytes]]:
    """The JSON Lines file at ``path`` (``-`` for stdin), or the bundled sample when ``None``."""
    if path is None:
        with (resources.files("pyfriction") / "data" / SAMPLE).open("rb") as fh:
            yield fh
    elif path == "-":
        yield sys.stdin.buffer
    else:
        try:
            fh = open(path, "rb")
        except OSError as exc:
            raise CliError(f"cannot read {path}: {exc.strerror}") from None
        with fh:
            yield fh


def _read_events(fh: IO[bytes], name: str) -> Iterator[tuple[int, Any]]:
    """Yield ``(line number, decoded object)`` for each non-blank line."""
    decode = msgspec.json.Decoder().decode
    for lineno, line in enumerate(fh, 1):
        if line.strip():
            try:
                yield lineno, decode(line)
            except msgspec.DecodeError as exc:
                raise CliError(f"{name}:{lineno}: not valid JSON: {exc}") from None


def _format_time(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts))


def format_episode(episode: Episode) -> str:
    """One readable line for an episode: time, user, account, step, score and reasons."""
    reasons = "; ".join(f"{r.detector}: {r.detail}" for r in episode.reasons)
    return (
        f"{_format_time(episode.ts)}  {episode.user_id:<8} {episode.account_id or '-':<14} "
        f"{episode.step or '-':<18} score {episode.score:.2f}  {reasons}"
    )


class _EpisodePrinter:
    """A sync ``on_friction`` callback printing one line per episode.

    The tracker catches callback errors, so a closed stdout (``pyfriction demo | head``) is
    recorded here for the replay loop to stop on.
    """

    def __init__(self) -> None:
        self.broken_pipe = False

    def __call__(self, episode: Episode) -> None:
        if not self.broken_pipe:
            try:
                print(format_episode(episode), flush=True)
            except BrokenPipeError:
                self.broken_pipe = True


def _cmd_demo(args: argparse.Namespace) -> int:
    name = args.events or f"<bundled {SAMPLE}>"
    with _open_events(args.events) as fh:
        try:
            tracker = Tracker(engine=args.engine)
        except ImportError as exc:  # engine='compiled' without a built core
            raise CliError(str(exc)) from None
        try:
            printer = _EpisodePrinter()
            tracker.on_friction(printer, sync=True)
            for lineno, event in _read_events(fh, name):
                try:
                    tracker.observe(event)
                except InvalidEvent as exc:
                    print(f"{name}:{lineno}: skipped: {exc}", file=sys.stderr)
                if printer.broken_pipe:
                    raise BrokenPipeError
            tracker.flush()
            stats = tracker.stats()
        finally:
            tracker.close()
    print(
        f"\n{stats.events} events from {stats.users} users -> {stats.episodes} friction episodes "
        f"({tracker.engine} engine)"
    )
    if stats.invalid or stats.unknown:
        print(f"{stats.invalid} invalid and {stats.unknown} unknown events ignored")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand."""
    parser = argparse.ArgumentParser(
        prog="pyfriction",
        description="Detect user friction in SaaS event streams: replay a stream (demo), simulate one (sample), "
        "report on a recorded log (report), learn weights from your tickets (calibrate), or look after a shared "
        "file:// store (store). `pyfriction COMMAND --help` explains each.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, help="the command to run")

    demo = commands.add_parser(
        "demo",
        help="replay an event stream and print friction episodes as they fire",
        description="Replay a JSON Lines event stream (one event object per line) through a "
        "Tracker, print each friction episode as it fires, then a summary.",
    )
    demo.add_argument(
        "--events",
        metavar="FILE",
        help="JSON Lines file of events, '-' for stdin (default: the bundled sample stream of 200 users)",
    )
    demo.add_argument(
        "--engine",
        choices=("auto", "compiled", "reference"),
        default="auto",
        help="engine to run (default: auto, the compiled core when it is available)",
    )
    demo.set_defaults(func=_cmd_demo)

    from pyfriction import report

    report.add_parser(commands)
    from pyfriction import store_admin

    store_admin.add_parser(commands)
    from pyfriction import calibrate

    calibrate.add_parser(commands)
    sample = commands.add_parser(
        "sample",
        help="write a simulated event stream (optionally with simulated guidance)",
        description="Write the sample app's simulated event stream as JSON Lines. --guided also simulates "
        "guidance (identify records, guidance feedback, fewer tickets for guided users; see "
        "pyfriction._sample.simulate_guidance: the reactions and effects are assumptions of the simulation).",
    )
    sample.add_argument("-o", "--output", metavar="FILE", default="-", help="output file (default: -, stdout)")
    sample.add_argument("--users", type=int, default=200, metavar="N", help="simulated users (default: 200)")
    sample.add_argument("--seed", type=int, default=7, metavar="N", help="random seed (default: 7)")
    sample.add_argument(
        "--guided", action="store_true", help="also simulate guidance and the users' reactions (default: off)"
    )
    sample.add_argument(
        "--config",
        metavar="FILE",
        help="the guidance config --guided simulates (default: the sample app's, pyfriction/data/guidance.toml)",
    )
    sample.add_argument(
        "--write-config",
        metavar="FILE",
        help="also write that guidance config to FILE, for `pyfriction report --config FILE` (default: not written)",
    )
    sample.add_argument(
        "--segment",
        action="store_true",
        help="write Segment-style track/page/identify payloads (default: off, canonical events)",
    )
    sample.set_defaults(func=_cmd_sample)
    return parser


def _cmd_sample(args: argparse.Namespace) -> int:
    from pyfriction import _sample

    if args.users < 1:
        raise CliError("--users must be at least 1")
    events = _sample.generate(args.users, args.seed, guided=args.guided, config=args.config)
    if args.write_config:
        from pyfriction.report import default_config_path

        source = args.config or default_config_path()
        try:
            with open(source, "rb") as src:
                text = src.read()
            with open(args.write_config, "wb") as dst:
                dst.write(text)
        except OSError as exc:
            raise CliError(f"cannot copy {source} to {args.write_config}: {exc.strerror}") from None
    out = "/dev/stdout" if args.output == "-" else args.output
    try:
        n = _sample.write_events(out, events, segment=args.segment)
    except OSError as exc:
        raise CliError(f"cannot write {args.output}: {exc.strerror}") from None
    if args.output != "-":
        print(f"wrote {n:,} records to {args.output}", file=sys.stderr)
    if args.write_config:
        print(f"wrote the guidance config to {args.write_config}", file=sys.stderr)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with ``argv`` (default: ``sys.argv[1:]``); return the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except CliError as exc:
        parser.exit(2, f"{parser.prog}: error: {exc}\n")
    except BrokenPipeError:  # e.g. `pyfriction demo | head`: quiet exit, as `cat` does
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
