"""``pyfriction --help`` (issue 13 point 7): every command, subcommand, argument and option has a
line of help; every option that is not required says its default; the rendered help has no
leftover ``%`` escapes; and the defaults it states are the parser's own.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from collections.abc import Iterator

import pytest

from pyfriction.cli import build_parser


def parsers(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> Iterator[
        tuple[tuple[str, ...], argparse.ArgumentParser]]:  # fmt: skip
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from parsers(sub, (*path, name))


ALL = list(parsers(build_parser()))
IDS = [" ".join(path) or "pyfriction" for path, _ in ALL]


def test_every_command_is_listed() -> None:
    assert {"demo", "sample", "report", "store", "store inspect", "store resize", "store repair",
            "store reconfigure"} <= set(IDS)  # fmt: skip


@pytest.mark.parametrize(("path", "parser"), ALL, ids=IDS)
def test_every_argument_has_help_and_options_show_their_default(path: tuple[str, ...],
                                                                 parser: argparse.ArgumentParser) -> None:  # fmt: skip
    assert parser.description and len(parser.description) > 20, f"{IDS[ALL.index((path, parser))]}: no description"
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        name = "/".join(action.option_strings) or action.metavar or action.dest
        assert action.help and action.help.strip(), f"{name}: no help"
        if isinstance(action, argparse._SubParsersAction):
            for choice in action._choices_actions:
                assert choice.help, f"{choice.dest}: no help line in the command list"
            continue
        if action.option_strings and not action.required:
            assert "(default: " in action.help, f"{name}: the help does not say the default"
        if action.default not in (None, False, argparse.SUPPRESS) and not isinstance(action.default, bool):
            assert f"(default: {action.default}" in action.help, f"{name}: the stated default is not {action.default!r}"


@pytest.mark.parametrize(("path", "parser"), ALL, ids=IDS)
def test_rendered_help_has_no_format_escapes(path: tuple[str, ...], parser: argparse.ArgumentParser) -> None:
    text = parser.format_help()
    assert "%%" not in text and not re.search(r"%\(\w+\)", text), text


def test_report_help_in_a_subprocess() -> None:
    out = subprocess.run([sys.executable, "-m", "pyfriction", "report", "--help"], capture_output=True, text=True,
                         check=True, timeout=60).stdout  # fmt: skip
    assert "95% confidence" in out and "95%%" not in out
    assert "--config FILE" in out and "default: none" in out
