"""Where a tracker keeps its state: ``memory://`` or a shared ``file://`` store.

``memory://`` (the default) is private to the process. ``file:///var/lib/app/friction.state``
is one memory-mapped file holding the slot table, the step baselines and the name table,
shared by every process that opens it: the workers of a gunicorn or uvicorn server all score
against the same per-user state, with a lock per user and no network hop. The file is the
state: it survives the death of any or all workers. Only the compiled engine implements it;
the reference engine refuses ``file://`` with :class:`StoreError`.

Next to it, ``PATH.facts`` holds the guidance bookkeeping, traits and insights, shared the
same way (see :mod:`pyfriction.userstate`). What is *not* in the files: the full text of user
ids longer than 40 bytes (other processes see their first 40 bytes); step and
target names longer than 123 UTF-8 bytes or beyond the table's 6,144 names (episodes and states
then show the name's key, ``#1a2b3c4d``). A lock whose holder died is taken over; one whose
holder's pid was reused by a live process is not (containers that recycle pids quickly should
keep one store per pid namespace).

Every process sharing a store must agree on what gives its state a meaning (detectors,
scoring, ``idle_ttl``, custom-weight events; capacity and layout are in the header): see
:func:`attach_config`. Guidance, sinks and the rest may differ between processes.

The offline tools behind ``pyfriction store inspect|resize|reconfigure|repair`` are in
:mod:`pyfriction.store_admin`.
"""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import unquote, urlparse

import msgspec

from .config import Config, EventMapping, load_config

__all__ = [
    "StoreError",
    "attach_config",
    "config_differences",
    "config_json",
    "core_module",
    "is_redis_store",
    "parse_store",
    "stored_config",
]

SCHEMES = ("memory", "file")
#: Stores on Redis (:mod:`pyfriction.redis_engine`, :mod:`pyfriction.redis_state`).
REDIS_SCHEMES = ("redis", "rediss", "redis+unix", "redis+cluster", "rediss+cluster", "redis+sentinel")

try:
    from ._core import StoreError  # the compiled core raises it
except ImportError:  # pure-Python install: the same name, for the same errors

    class StoreError(RuntimeError):  # type: ignore[no-redef]
        """A shared store file cannot be used (wrong kind, version, layout, config, capacity
        or damaged); the message says which and what to do."""


def is_redis_store(uri: object) -> bool:
    """Is ``uri`` a Redis store (``redis://``, ``redis+cluster://``, ``redis+sentinel://``...)?"""
    return isinstance(uri, str) and "://" in uri and uri.split("://", 1)[0].lower() in REDIS_SCHEMES


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
            + ", ".join(f"'{s}://'" for s in (*SCHEMES, *REDIS_SCHEMES))
            + " (e.g. 'file:///var/lib/app/friction.state', 'redis+cluster://host:7000')"
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
        stored_json = bytes(core_module().read_config(path))
    except (OSError, StoreError):
        return wanted  # no store yet, or one the core refuses with its own message
    stored = stored_config(path, stored_json)
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


def core_module() -> Any:
    """The compiled core module; :class:`StoreError` without it."""
    try:
        from . import _core as core
    except ImportError as exc:  # pragma: no cover - exercised only without a compiler
        raise StoreError("file:// stores need the compiled core (pyfriction._core)") from exc
    return core


def stored_config(path: str, stored: bytes, **options: Any) -> Config:
    """The config a store's header records; :class:`StoreError` when it does not decode."""
    try:
        return load_config(msgspec.json.decode(stored), **options)
    except (msgspec.DecodeError, ValueError) as exc:  # a file cut short, or overwritten
        raise StoreError(
            f"{path}: the store's configuration record is damaged or truncated ({exc}); rebuild the "
            f"store from a snapshot with `pyfriction store repair {path} --snapshot FILE`, or move it aside"
        ) from None
