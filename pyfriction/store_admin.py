"""Offline maintenance of a ``file://`` store: ``pyfriction store inspect|resize|reconfigure|repair``.

Each tool opens the store file itself (no tracker needs to be running; stop the workers before
resizing, reconfiguring or repairing). ``repair`` can rebuild a store from a snapshot, which is
why these live apart from :mod:`pyfriction.store`: they need :class:`pyfriction.Tracker`, and
the tracker needs the store.
"""

from __future__ import annotations

import os
import time
from typing import Any

import msgspec

from .config import load_config
from .store import StoreError, config_json, core_module, stored_config
from .tracker import Tracker

__all__ = ["add_parser", "inspect", "reconfigure", "repair", "resize"]


def _open(path: str, capacity: int | None = None) -> Any:
    """A CompiledCore attached to an existing store, with the config it was created with."""
    from ._rules import Names, Rules

    core = core_module()
    if not os.path.exists(path):
        raise StoreError(f"no store at {path!r}")
    header = core.read_header(path)
    stored = bytes(core.read_config(path))
    config = stored_config(path, stored, capacity=header["capacity"] if capacity is None else capacity,
                          max_steps=header["max_steps"])  # fmt: skip
    rules = Rules(config)
    noop = lambda *a: None  # noqa: E731
    # The header's own JSON: a file from an older pyfriction fingerprinted the whole config.
    return core.CompiledCore(rules, config.capacity, config.idle_ttl, time.time, Names(), noop,
                             noop, store=path, config_json=stored)  # fmt: skip


def inspect(path: str) -> dict[str, Any]:
    """Capacity, users, fill factor, evictions, oldest/newest activity of a store file."""
    core = _open(path)
    try:
        info: dict[str, Any] = core.info()
        info["processes"] = [p for p in info["processes"] if p != os.getpid()]
        info["path"] = path
        return info
    finally:
        core.close()


def _offline(core: Any, path: str) -> None:
    others = [p for p in core.info()["processes"] if p != os.getpid()]
    if others:
        core.close()
        raise StoreError(f"{path}: processes {others} still use the store; stop them first")


def resize(path: str, capacity: int) -> dict[str, Any]:
    """Copy a store into a new file of ``capacity`` users and put it in place (offline:
    no other process may have it open). Shrinking keeps the most recently active users."""
    return _rewrite(path, capacity, None)


def reconfigure(path: str, config: Any) -> dict[str, Any]:
    """Adopt ``config`` (a path, mapping or :class:`Config`) for the state in a store: copy it
    into a new file that records the new settings and put it in place (offline, like
    :func:`resize`). The users' state is kept as it is, as :meth:`Tracker.restore` keeps a
    snapshot's under another config: pressures decay and detectors fire by the new settings
    from the next event on. The capacity stays the file's (change it with :func:`resize`)."""
    return _rewrite(path, None, config_json(load_config(config)))


def _rewrite(path: str, capacity: int | None, json: bytes | None) -> dict[str, Any]:
    old = _open(path)
    _offline(old, path)
    slots, steps, long_ids = old.export()
    names = list(old.names_view.items())
    counters = old.counters
    if json is None:
        json = core_module().read_config(path)
    if capacity is None:
        capacity = int(old.info()["capacity"])
    old.close()
    tmp = f"{path}.resize-{os.getpid()}"
    if os.path.exists(tmp):
        os.unlink(tmp)
    try:
        _create_like(path, tmp, json, capacity)
        new = _open(tmp, capacity)
        new.load(slots, steps, long_ids)
        new.names_view.update(names)
        new.set_counters({**counters, "evictions": counters["evictions"] + max(0, len(slots) - capacity)})
        new.close()
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return inspect(path)


def _create_like(path: str, new_path: str, json: bytes, capacity: int) -> None:
    from ._rules import Names, Rules

    core = core_module()
    header = core.read_header(path)
    config = load_config(msgspec.json.decode(json), capacity=capacity, max_steps=header["max_steps"])
    noop = lambda *a: None  # noqa: E731
    fresh = core.CompiledCore(Rules(config), capacity, config.idle_ttl, time.time, Names(), noop,
                              noop, store=new_path, config_json=config_json(config))  # fmt: skip
    fresh.close()


def repair(path: str, snapshot: str | None = None) -> dict[str, Any]:
    """Check and rebuild a store after a crash. With ``snapshot``, or when the header itself is
    damaged, the store is recreated from that snapshot (written by ``Tracker.snapshot``)."""

    if snapshot is None:
        core = _open(path)  # attaching alone verifies and rebuilds an uncleanly closed file
        _offline(core, path)
        core.close()
        return inspect(path)
    restored = Tracker.restore(snapshot, engine="compiled")
    if os.path.exists(path):
        try:
            core = _open(path)
            _offline(core, path)
            core.close()
        except StoreError:
            pass  # damaged beyond reading: replaced below
        os.unlink(path)
    target = Tracker(restored.config, engine="compiled", store=f"file://{os.path.abspath(path)}")
    restored.copy_state_to(target)
    target.close()
    return inspect(path)


# --- `pyfriction store ...` -------------------------------------------------------------------
def _format_info(info: dict[str, Any]) -> str:
    def when(ts: float | None) -> str:
        return "-" if ts is None else time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts)) + " UTC"

    c = info["counters"]
    return "\n".join(
        [
            f"store            {info['path']}",
            f"size             {info['bytes']:,} bytes",
            f"capacity         {info['capacity']:,} users",
            f"users            {info['users']:,} ({info['fill']:.1%} full)",
            f"steps learned    {info['steps']:,}",
            f"names            {info['names']:,}",
            f"oldest activity  {when(info['oldest_activity'])}",
            f"newest activity  {when(info['newest_activity'])}",
            f"events           {c['events']:,} (invalid {c['invalid']:,}, unknown {c['unknown']:,})",
            f"episodes         {c['episodes']:,}",
            f"evictions        {c['evictions']:,}",
            f"processes        {', '.join(map(str, info['processes'])) or 'none attached'}",
        ]
    )


def _cmd(args: Any) -> int:
    import json
    import sys

    from .config import ConfigError

    try:
        if args.store_command == "inspect":
            info = inspect(args.file)
        elif args.store_command == "resize":
            if args.capacity < 1:
                raise StoreError("--capacity must be at least 1")
            info = resize(args.file, args.capacity)
        elif args.store_command == "reconfigure":
            info = reconfigure(args.file, args.config)
        else:
            info = repair(args.file, args.snapshot)
    except (StoreError, ConfigError) as exc:
        print(f"pyfriction store: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a directory, no permission, a full disk while rewriting
        print(f"pyfriction store: {exc.filename or args.file}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    print(json.dumps(info, indent=2) if args.json else _format_info(info))
    return 0


def add_parser(commands: Any) -> None:
    """Add ``store inspect|resize|reconfigure|repair`` to the command line."""
    store = commands.add_parser(
        "store",
        help="inspect, resize, reconfigure or repair a shared file:// store",
        description="Offline tools for the memory-mapped store file that the workers of a server share "
        "(Tracker(store='file:///path/friction.state')). resize, reconfigure and repair rewrite the file: "
        "stop every process using it first.",
    )
    sub = store.add_subparsers(dest="store_command", metavar="ACTION", required=True, help="what to do with FILE")
    file_help = "the store file (the path of its file:// URI)"
    json_help = "print the store's figures as JSON instead of a table (default: a table)"
    p = sub.add_parser(
        "inspect",
        help="capacity, users, fill factor, evictions, activity range",
        description="Show a store's capacity, users, fill factor, learned steps, event and episode counters, "
        "evictions, the oldest and newest activity, and the processes attached to it. Read-only.",
    )
    p.add_argument("file", metavar="FILE", help=file_help)
    p.add_argument("--json", action="store_true", help=json_help)
    p = sub.add_parser(
        "resize",
        help="change the capacity (offline: stop the workers first)",
        description="Copy the store into a new file of --capacity users and put it in place. Shrinking keeps "
        "the most recently active users (the rest count as evictions). Offline: no process may have it open.",
    )
    p.add_argument("file", metavar="FILE", help=file_help)
    p.add_argument("--capacity", type=int, required=True, metavar="N", help="users the new file holds (required)")
    p.add_argument("--json", action="store_true", help=json_help)
    p = sub.add_parser(
        "reconfigure",
        help="adopt new detector/scoring settings for the stored state (offline)",
        description="Record the detector, scoring, idle_ttl and custom-event settings of --config in the store, "
        "keeping every user's state: what a worker started with that config needs to open the store. "
        "Offline: no process may have it open. Guidance, sinks and the other settings never need this.",
    )
    p.add_argument("file", metavar="FILE", help=file_help)
    p.add_argument("--config", required=True, metavar="CONFIG.toml", help="the workers' new config file (required)")
    p.add_argument("--json", action="store_true", help=json_help)
    p = sub.add_parser(
        "repair",
        help="check and rebuild after a crash, or recreate from a snapshot",
        description="Check a store left behind by a crash and rebuild its index from the user records; with "
        "--snapshot, recreate the store from a Tracker.snapshot() file instead (also when the file is damaged "
        "beyond repair). Offline: no process may have it open.",
    )
    p.add_argument("file", metavar="FILE", help=file_help)
    p.add_argument(
        "--snapshot",
        metavar="SNAP",
        help="a Tracker.snapshot() file to recreate the store from (default: none, check the file in place)",
    )
    p.add_argument("--json", action="store_true", help=json_help)
    store.set_defaults(func=_cmd)
