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

Every process sharing a store must agree on what gives its state a meaning (detectors,
scoring, ``idle_ttl``, custom-weight events; capacity and layout are in the header): see
:func:`attach_config`. Guidance, sinks and the rest may differ between processes.

The offline tools behind ``pyfriction store inspect|resize|reconfigure|repair`` are here too.
"""

from __future__ import annotations

import os
import time
from typing import Any
from urllib.parse import unquote, urlparse

import msgspec

from .config import Config, EventMapping, load_config

__all__ = [
    "StoreError",
    "attach_config",
    "config_differences",
    "config_json",
    "inspect",
    "parse_store",
    "reconfigure",
    "repair",
    "resize",
]

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


def _meaning(config: Config) -> dict[str, Any]:
    """The settings that give the state in a store file its meaning, as a loadable config dict.

    The detectors and the scoring (what the pressures, rings and counters of a user record
    stand for), ``idle_ttl`` (which records may still be there) and the custom-weight events
    (a record remembers its last one by position). Capacity and step count are checked on
    their own from the file's header, and the layout by its hash. Everything else (guidance
    texts, rules, caps, holdout, sinks, type aliases in ``event_map``, exclusions, the
    dispatcher queue) is read per event or per process and never stored, so workers may
    differ in it and a store opens whatever it says.
    """
    custom = {
        name: {"weight": mapped.weight}
        for name, mapped in config.event_map.items()
        if isinstance(mapped, EventMapping) and mapped.type is None
    }
    return {
        "detectors": msgspec.to_builtins(config.detectors),
        "scoring": msgspec.to_builtins(config.scoring),
        "idle_ttl": config.idle_ttl,
        "event_map": custom,
    }


def config_json(config: Config) -> bytes:
    """What every process sharing a store must agree on (see :func:`_meaning`), as the JSON
    the store file's header holds and fingerprints. Not key-sorted: the custom events keep
    the order that numbers them (the structs' fields have a fixed order of their own)."""
    return msgspec.json.encode(_meaning(config))


def _flat(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict):
        out: dict[str, Any] = {}
        for key, value in data.items():
            out.update(_flat(value, f"{prefix}.{key}" if prefix else str(key)))
        return out if out or not prefix else {prefix: data}
    return {prefix: data}


def config_differences(stored: Config, wanted: Config, *, ordered: bool = True) -> list[str]:
    """The settings (dotted keys) in which two configs give a store's state another meaning.
    ``ordered``: the order of the custom-weight events counts too (a store written before
    this check recorded them sorted, so its order says nothing)."""
    meaning_old, meaning_new = _meaning(stored), _meaning(wanted)
    old, new = _flat(meaning_old), _flat(meaning_new)
    found = sorted(
        f"{key} (the store has {old.get(key, 'none')!r}, this process {new.get(key, 'none')!r})"
        for key in old.keys() | new.keys()
        if old.get(key) != new.get(key)
    )
    order_old, order_new = list(meaning_old["event_map"]), list(meaning_new["event_map"])
    if ordered and not found and order_old != order_new:
        found.append(f"the order of the custom-weight events in event_map (the store has {order_old}, "
                     f"this process {order_new})")  # fmt: skip
    return found


def attach_config(path: str, config: Config) -> bytes:
    """The config JSON to attach a process with ``config`` to the store at ``path``.

    A new or empty file gets :func:`config_json`. An existing store keeps the JSON it holds
    when ``config`` agrees with it on every setting of :func:`_meaning` (so a file written by
    an older pyfriction, which fingerprinted the whole config, still opens after an edit of
    its guidance); otherwise :class:`StoreError` names each differing setting and the
    commands that resolve it. A file whose header cannot be read is left to the core to
    report.
    """
    wanted = config_json(config)
    try:
        if os.path.getsize(path) == 0:
            return wanted
        stored_json = bytes(_core().read_config(path))
    except (OSError, StoreError):
        return wanted  # no store yet, or one the core refuses with its own message
    stored = _load_stored(path, stored_json)
    if stored_json == wanted:
        return wanted
    recorded = msgspec.json.decode(stored_json)
    ordered = isinstance(recorded, dict) and set(recorded) == set(_meaning(config))
    differences = config_differences(stored, config, ordered=ordered)
    if not differences:
        return bytes(stored_json)
    raise StoreError(
        f"{path}: the store was created with another configuration: "
        + "; ".join(differences)
        + ". Start every process with the same settings, or adopt the new ones for the stored "
        f"state (offline: stop the workers first) with `pyfriction store reconfigure {path} "
        "--config FILE`"
    )


def _core() -> Any:
    try:
        from . import _core as core
    except ImportError as exc:  # pragma: no cover - exercised only without a compiler
        raise StoreError("file:// stores need the compiled core (pyfriction._core)") from exc
    return core


def _load_stored(path: str, stored: bytes, **options: Any) -> Config:
    """The config a store's header records; :class:`StoreError` when it does not decode."""
    try:
        return load_config(msgspec.json.decode(stored), **options)
    except (msgspec.DecodeError, ValueError) as exc:  # a file cut short, or overwritten
        raise StoreError(
            f"{path}: the store's configuration record is damaged or truncated ({exc}); rebuild the "
            f"store from a snapshot with `pyfriction store repair {path} --snapshot FILE`, or move it aside"
        ) from None


def _open(path: str, capacity: int | None = None) -> Any:
    """A CompiledCore attached to an existing store, with the config it was created with."""
    from ._rules import Names, Rules

    core = _core()
    if not os.path.exists(path):
        raise StoreError(f"no store at {path!r}")
    header = core.read_header(path)
    stored = bytes(core.read_config(path))
    config = _load_stored(path, stored, capacity=header["capacity"] if capacity is None else capacity,
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
        json = _core().read_config(path)
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
