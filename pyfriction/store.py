"""Where a tracker keeps its state: ``memory://`` or a shared ``file://`` store.

``memory://`` (the default) is private to the process. ``file:///var/lib/app/friction.state``
is one memory-mapped file holding the slot table, the step baselines and the name table,
shared by every process that opens it: the workers of a gunicorn or uvicorn server all score
against the same per-user state, with a lock per user and no network hop. The file is the
state: it survives the death of any or all workers. Only the compiled engine implements it;
the reference engine refuses ``file://`` with :class:`StoreError`.

What is *not* in the file: the guidance bookkeeping, traits and insights of each process; the
full text of user ids longer than 40 bytes (other processes see their first 40 bytes); step and
target names longer than 123 UTF-8 bytes or beyond the table's 6,144 names (episodes and states
then show the name's key, ``#1a2b3c4d``). A lock whose holder died is taken over; one whose
holder's pid was reused by a live process is not (containers that recycle pids quickly should
keep one store per pid namespace).

The offline tools behind ``pyfriction store inspect|resize|repair`` are here too.
"""

from __future__ import annotations

import os
import time
from typing import Any
from urllib.parse import unquote, urlparse

import msgspec

from .config import Config, load_config

__all__ = ["StoreError", "config_json", "inspect", "parse_store", "repair", "resize"]

SCHEMES = ("memory", "file")

try:
    from ._core import StoreError  # the compiled core raises it
except ImportError:  # pure-Python install: the same name, for the same errors

    class StoreError(RuntimeError):  # type: ignore[no-redef]
        """A shared store file cannot be used (wrong kind, version, layout, config, capacity
        or damaged); the message says which and what to do."""


def parse_store(uri: str | None) -> str | None:
    """The file path of a store URI, or None for ``memory://``.

    Like the ``limits`` library's storage URIs: ``memory://`` and ``file:///abs/path`` (or
    ``file://relative/path``). Anything else is a :class:`StoreError` naming the schemes.
    """
    if uri is None or uri == "memory://":
        return None
    if not isinstance(uri, str):
        raise StoreError(f"store must be a URI string such as 'memory://', not {type(uri).__name__}")
    parts = urlparse(uri)
    if parts.scheme == "memory" and not (parts.netloc or parts.path):
        return None
    if parts.scheme != "file" or "://" not in uri:
        raise StoreError(
            f"unsupported store {uri!r}: use one of "
            + ", ".join(f"'{s}://'" for s in SCHEMES)
            + " (e.g. 'file:///var/lib/app/friction.state')"
        )
    path = unquote(parts.netloc + parts.path)
    if not path or path.endswith("/"):
        raise StoreError(f"store {uri!r} names no file")
    return path


def config_json(config: Config) -> bytes:
    """The config every process sharing a store must agree on (capacity and step count are
    checked on their own, and the dispatcher queue is each process's business)."""
    data = msgspec.to_builtins(config)
    for key in ("capacity", "max_steps", "queue_size"):
        data.pop(key, None)
    return msgspec.json.encode(data, order="sorted")


def _core() -> Any:
    try:
        from . import _core as core
    except ImportError as exc:  # pragma: no cover - exercised only without a compiler
        raise StoreError("file:// stores need the compiled core (pyfriction._core)") from exc
    return core


def _open(path: str, capacity: int | None = None) -> Any:
    """A CompiledCore attached to an existing store, with the config it was created with."""
    from ._rules import Names, Rules

    core = _core()
    if not os.path.exists(path):
        raise StoreError(f"no store at {path!r}")
    header = core.read_header(path)
    config = load_config(
        msgspec.json.decode(core.read_config(path)),
        capacity=header["capacity"] if capacity is None else capacity,
        max_steps=header["max_steps"],
    )
    rules = Rules(config)
    noop = lambda *a: None  # noqa: E731
    return core.CompiledCore(rules, config.capacity, config.idle_ttl, time.time, Names(), noop,
                             noop, store=path, config_json=config_json(config))  # fmt: skip


def inspect(path: str) -> dict[str, Any]:
    """Capacity, users, fill factor, evictions, oldest/newest activity of a store file."""
    core = _open(path)
    try:
        info = core.info()
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
    old = _open(path)
    _offline(old, path)
    slots, steps, long_ids = old.export()
    names = list(old.names_view.items())
    counters = old.counters
    json = _core().read_config(path)
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

    core = _core()
    header = core.read_header(path)
    config = load_config(msgspec.json.decode(json), capacity=capacity, max_steps=header["max_steps"])
    noop = lambda *a: None  # noqa: E731
    fresh = core.CompiledCore(Rules(config), capacity, config.idle_ttl, time.time, Names(), noop,
                              noop, store=new_path, config_json=config_json(config))  # fmt: skip
    fresh.close()


def repair(path: str, snapshot: str | None = None) -> dict[str, Any]:
    """Check and rebuild a store after a crash. With ``snapshot``, or when the header itself is
    damaged, the store is recreated from that snapshot (written by ``Tracker.snapshot``)."""
    from .tracker import Tracker

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
    slots, steps, long_ids = restored._core.export()
    target._core.load(slots, steps, long_ids)
    target._names.update(restored._names.items())
    target._core.set_counters(restored._core.counters)
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

    try:
        if args.store_command == "inspect":
            info = inspect(args.file)
        elif args.store_command == "resize":
            if args.capacity < 1:
                raise StoreError("--capacity must be at least 1")
            info = resize(args.file, args.capacity)
        else:
            info = repair(args.file, args.snapshot)
    except StoreError as exc:
        print(f"pyfriction store: {exc}", file=__import__("sys").stderr)
        return 2
    print(json.dumps(info, indent=2) if args.json else _format_info(info))
    return 0


def add_parser(commands: Any) -> None:
    """Add ``store inspect|resize|repair`` to the command line."""
    store = commands.add_parser("store", help="inspect, resize or repair a shared file:// store")
    sub = store.add_subparsers(dest="store_command", metavar="ACTION", required=True)
    p = sub.add_parser("inspect", help="capacity, users, fill factor, evictions, activity range")
    p.add_argument("file")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p = sub.add_parser("resize", help="change the capacity (offline: stop the workers first)")
    p.add_argument("file")
    p.add_argument("--capacity", type=int, required=True, metavar="N")
    p.add_argument("--json", action="store_true")
    p = sub.add_parser("repair", help="check and rebuild after a crash, or recreate from a snapshot")
    p.add_argument("file")
    p.add_argument("--snapshot", metavar="SNAP", help="a Tracker.snapshot() file to rebuild from")
    p.add_argument("--json", action="store_true")
    store.set_defaults(func=_cmd)
