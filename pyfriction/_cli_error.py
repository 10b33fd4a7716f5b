"""The command line's error type, apart from :mod:`pyfriction.cli` so that the subcommands'
modules (``report``, ``store_admin``, ``calibrate``) raise it without importing the CLI that
imports them."""

from __future__ import annotations

__all__ = ["CliError"]


class CliError(Exception):
    """A user-facing error: printed as ``pyfriction: error: ...`` with exit status 2."""
