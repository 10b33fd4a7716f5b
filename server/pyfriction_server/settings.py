"""Settings: embedded defaults, a TOML config file, ``PYFRICTION_SERVER_*`` variables, CLI flags.

Later sources win: defaults < ``--config FILE`` (its ``[server]`` table) < environment <
command line. The rest of the config file (``[detectors]``, ``[scoring]``, ``event_map``...) is
the engine's own configuration, validated by :func:`pyfriction.load_config`.

Example ``pyfriction-server.toml``::

    [server]
    port = 8700
    write_keys = ["wk_live_browser"]
    admin_keys = ["sk_live_support"]
    identity_secret = "a long random string"
    cors_origins = ["https://app.example.com"]

    # A team's own event names and properties onto canonical types, steps and targets.
    [server.events."Payment Failed"]
    type = "api_error"
    step = "checkout.payment"
    target_from = "properties.provider"
    status_from = "properties.code"

    [scoring]
    threshold = 0.6
"""

from __future__ import annotations

import argparse
import os
import tomllib
from collections.abc import Mapping, Sequence
from typing import Annotated, Any

import msgspec

import pyfriction
from pyfriction.events import CANONICAL_TYPES
from pyfriction.store import is_redis_store
from pyfriction.tracker import compiled_available

__all__ = ["EventRule", "Settings", "SettingsError", "load_settings", "parse_args"]

ENV_PREFIX = "PYFRICTION_SERVER_"
#: The file a single-process sidecar keeps in its state directory (its snapshot's name, the
#: dedupe memory, the journal position): its presence keeps a directory in that mode.
SINGLE_PROCESS_STATE = "state.msgpack"


class SettingsError(ValueError):
    """Invalid settings; the message names the offending key, variable or flag."""


class EventRule(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """How one of the team's event names becomes a canonical event.

    ``type`` is a canonical type (left out: the name goes to the engine, whose ``event_map``
    may still map it). ``step``/``target`` are fixed values; ``step_from``, ``target_from``,
    ``status_from``, ``results_from`` and ``account_from`` are dotted paths into the incoming
    message (``properties.provider``, ``context.page.path``), taking precedence when present.
    Everything a rule leaves open follows the engine config's ``[segment]`` paths.
    """

    type: str | None = None
    step: str | None = None
    target: str | None = None
    step_from: str | None = None
    target_from: str | None = None
    status_from: str | None = None
    results_from: str | None = None
    account_from: str | None = None

    def __post_init__(self) -> None:
        if self.type is not None and self.type not in CANONICAL_TYPES:
            raise ValueError(f"unknown type {self.type!r}; expected one of {', '.join(sorted(CANONICAL_TYPES))}")
        for name in ("step_from", "target_from", "status_from", "results_from", "account_from"):
            path = getattr(self, name)
            if path is not None and (not path or "" in path.split(".")):
                raise ValueError(f"`{name}` must be a dotted path like properties.provider, not {path!r}")


Port = Annotated[int, msgspec.Meta(ge=0, le=65535)]
PositiveInt = Annotated[int, msgspec.Meta(ge=1)]
Seconds = Annotated[float, msgspec.Meta(gt=0)]


class Settings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Everything the sidecar reads at start. Every field has a working default."""

    host: str = "127.0.0.1"
    port: Port = 8700
    #: Publishable keys: ingest and guidance only, safe to ship in a browser. None configured:
    #: ingest and guidance accept any key or none (development; a warning is logged).
    write_keys: list[str] = msgspec.field(default_factory=list)
    #: Secret keys: also the support endpoints (/v1/users, /v1/hotspots). None configured:
    #: those endpoints are closed.
    admin_keys: list[str] = msgspec.field(default_factory=list)
    #: HMAC-SHA256 secret shared with the host backend for identity verification of the
    #: guidance endpoints (see :func:`pyfriction_server.user_token`); None: not required.
    identity_secret: str | None = None
    #: Origins allowed to call the sidecar from a browser ("*" for any).
    cors_origins: list[str] = msgspec.field(default_factory=list)
    #: Where the ingest journal and snapshots live; "" keeps everything in memory (an accepted
    #: event is then scored, not persisted).
    state_dir: str = "pyfriction-state"
    #: fsync the journal before answering (group commit); off trades durability for speed.
    fsync: bool = True
    #: Seconds between journal syncs at most: requests arriving in between share the next one
    #: (fewer syncs, more throughput; up to this much more latency).
    sync_interval: Annotated[float, msgspec.Meta(ge=0, le=1)] = 0.002
    #: Seconds between snapshots (the journal is truncated at each).
    snapshot_interval: Seconds = 300.0
    #: Journal bytes after which a snapshot is taken early.
    snapshot_journal_bytes: PositiveInt = 256 << 20
    #: Write snapshots from a forked child (copy-on-write, as Redis does): ingest pauses for
    #: the fork only. Off, or where there is no fork: a thread writes them, and ingest waits
    #: while the state is copied (about a second at a million users).
    snapshot_fork: bool = True
    #: Largest request body on the wire (bytes).
    max_body_bytes: PositiveInt = 500 * 1024
    #: Largest decompressed body (bytes): Segment's 500 KB per batch.
    max_batch_bytes: PositiveInt = 500 * 1024
    #: Largest single event (bytes of JSON): Segment's 32 KB.
    max_event_bytes: PositiveInt = 32 * 1024
    #: Largest number of events in one request.
    max_batch_events: PositiveInt = 10_000
    #: Seconds a client may take to send its whole body.
    body_timeout: Seconds = 10.0
    #: Seconds a client may take to send a request's headers (from the connection, or from the
    #: first byte of a request on a kept-alive one); then 408 and the connection is closed.
    header_timeout: Seconds = 10.0
    #: Deepest nesting of arrays and objects in a JSON body (deeper: 400).
    max_json_depth: Annotated[int, msgspec.Meta(ge=4, le=256)] = 64
    #: Requests per second per key (token bucket), and the burst allowed above it.
    rate_limit: Seconds = 5_000.0
    rate_burst: PositiveInt = 10_000
    #: Requests per second per client address (an IPv6 client by its /64), and its burst,
    #: spent before the key's, so that one client cannot use up a public write key for
    #: everyone. Not set: a tenth of ``rate_limit`` and ``rate_burst``.
    client_rate_limit: Annotated[float, msgspec.Meta(gt=0)] | None = None
    client_rate_burst: PositiveInt | None = None
    #: Ingest records waiting for the journal before new requests get 503.
    max_pending: PositiveInt = 10_000
    #: Delivery ids (messageId / uuid) remembered to drop retried deliveries: exactly the
    #: last this many, as 64-bit fingerprints (16 to 24 bytes of memory each; pyfriction.recent).
    dedupe_size: Annotated[int, msgspec.Meta(ge=1, le=1 << 31)] = 1_000_000
    #: Correct event times for client clock skew: receivedAt - (sentAt - timestamp).
    skew_correction: bool = True
    #: Seconds between keep-alive comments on guidance streams.
    sse_keepalive: Seconds = 15.0
    #: Open guidance streams at most; more get 503.
    max_streams: PositiveInt = 50_000
    #: Seconds between ``Tracker.tick()`` runs (stalls, rearm, idle eviction). A tick walks
    #: every tracked user (about 0.4 s per million on a shared store, 0.15 s in memory, on the
    #: compiled engine; ingest waits meanwhile).
    tick_interval: Seconds = 60.0
    #: Seconds to finish in-flight requests at shutdown.
    shutdown_timeout: Seconds = 10.0
    #: Worker processes serving the port, all on one shared store in ``state_dir``. 0 (the
    #: default): one per core, where the compiled engine is built and there is a state
    #: directory not written by a single process; else one process. 1: one process, its state
    #: in memory with snapshots. More than one needs the compiled engine and a state directory.
    workers: Annotated[int, msgspec.Meta(ge=0, le=1024)] = 0
    #: Workers: a directory in memory (tmpfs) where their shared store, its facts and the dedupe
    #: memory live while they run, copied to ``state_dir`` at each checkpoint and restored from
    #: it after a restart of the machine (pyfriction_server.live): on a disk the kernel's own
    #: write-back of those mapped files stalled both workers for up to a second at a time.
    #: Without the directory, or without room in it for them: mapped in ``state_dir``, with a
    #: warning. "": always in ``state_dir``.
    live_dir: str = "/dev/shm"
    #: Where the users' state lives when several sidecar hosts share it: a Redis URI
    #: (``redis://``, ``redis+cluster://``, ``redis+sentinel://``; see
    #: :mod:`pyfriction.redis_engine`). Empty (the default): on this host, in ``state_dir``.
    #: With a store, every worker (``workers`` as above; 1 included) scores on it and
    #: journals into ``state_dir`` as workers do.
    store: str = ""
    #: Engine: "auto", "compiled" or "reference".
    engine: str = "auto"
    #: Log level and one JSON line per request (errors and rejections are always logged).
    log_level: str = "info"
    access_log: bool = False
    #: A team's event names -> canonical type, step, target (see :class:`EventRule`).
    events: dict[str, EventRule] = msgspec.field(default_factory=dict)
    #: The engine configuration (everything in the config file outside ``[server]``).
    engine_config: dict[str, Any] = msgspec.field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.engine not in ("auto", "compiled", "reference"):
            raise ValueError(f"`engine` must be auto, compiled or reference, not {self.engine!r}")
        if self.log_level.lower() not in ("debug", "info", "warning", "error", "critical"):
            raise ValueError(f"`log_level` must be debug, info, warning, error or critical, not {self.log_level!r}")
        for key in (*self.write_keys, *self.admin_keys):
            if not key or len(key) > 256 or not key.isprintable() or " " in key:
                raise ValueError("keys must be 1 to 256 printable characters without spaces")
        if self.store and not is_redis_store(self.store):
            raise ValueError("`store` must be a Redis URI (redis://, rediss://, redis+cluster://, redis+sentinel://); "
                             "on one host the state lives in `state_dir`")  # fmt: skip
        if self.store and not self.state_dir:
            raise ValueError("a `store` needs `state_dir` for each worker's journal: it must not be empty")
        if self.workers > 1 and not self.state_dir:
            raise ValueError("several `workers` share their state through `state_dir`: it must not be empty")
        if self.workers > 1 and self.engine == "reference" and not self.store:
            raise ValueError("several `workers` need the compiled engine (`engine` is reference)")
        if self.max_event_bytes > self.max_batch_bytes:
            raise ValueError("`max_event_bytes` must not exceed `max_batch_bytes`")

    @property
    def worker_count(self) -> int | None:
        """How many worker processes to start, or None for one process without workers (see
        ``workers``)."""
        if self.store:  # the state is in the store: workers always, each journaling
            return self.workers or _cores()
        if self.workers == 1:
            return None
        if self.workers > 1:
            return self.workers
        if not self.state_dir or self.engine == "reference" or not compiled_available():
            return None
        if os.path.exists(os.path.join(self.state_dir, SINGLE_PROCESS_STATE)):
            return None  # a directory keeps the mode it was written in
        return _cores()

    def tracker_config(self) -> pyfriction.Config:
        """The engine's validated :class:`pyfriction.Config` (raises :class:`SettingsError`)."""
        try:
            return pyfriction.load_config(self.engine_config)
        except pyfriction.ConfigError as exc:
            raise SettingsError(str(exc)) from None


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))  # the cores this process may run on
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


#: (flag, field, kind, metavar, help, default as shown) for every command-line flag; the
#: environment variable is PYFRICTION_SERVER_<FLAG in upper case with dashes as underscores>
#: (lists comma-separated).
FLAGS: list[tuple[str, str, str, str, str, str]] = [
    ("--host", "host", "str", "ADDRESS", "address to listen on", "127.0.0.1"),
    ("--port", "port", "int", "PORT", "port to listen on", "8700"),
    ("--write-key", "write_keys", "list", "KEY", "publishable write key: ingest and guidance",
     "none: ingest and guidance accept any caller"),
    ("--admin-key", "admin_keys", "list", "KEY", "secret admin key: also the support endpoints",
     "none: the support endpoints are closed"),
    ("--identity-secret", "identity_secret", "str", "SECRET", "HMAC secret for the user tokens of the guidance "
     "endpoints", "none: no user token needed"),
    ("--cors-origin", "cors_origins", "list", "ORIGIN", "browser origin allowed (* for any)",
     "none: no browser origin"),
    ("--state-dir", "state_dir", "str", "DIR", "journal and snapshot directory ('' keeps everything in memory)",
     "./pyfriction-state, in the working directory"),
    ("--workers", "workers", "int", "N", "worker processes on one shared store in the state directory (0: one per "
     "core; 1: one process, its state in memory with snapshots)", "0, where the compiled engine is built and the state "
     "directory was not written by one process; else 1"),
    ("--live-dir", "live_dir", "str", "DIR", "workers: a directory in memory (tmpfs) for their shared store between "
     "checkpoints ('' keeps it in the state directory)", "/dev/shm, where it has room; else the state directory"),
    ("--store", "store", "str", "URI", "Redis URI of the users' state, shared by several sidecar hosts "
     "(redis://, redis+cluster://, redis+sentinel://)", "none: the state is on this host, in the state directory"),
    ("--log-level", "log_level", "str", "LEVEL", "debug, info, warning, error or critical", "info"),
]  # fmt: skip


def env_name(flag: str) -> str:
    """``--write-key`` -> ``PYFRICTION_SERVER_WRITE_KEY``."""
    return ENV_PREFIX + flag.lstrip("-").replace("-", "_").upper()


def _help(text: str, flag: str, default: str) -> str:
    # argparse formats help with %: a literal one must be doubled
    return f"{text} [env {env_name(flag)}; default: {default}]".replace("%", "%%")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse the command line (``--config FILE`` and the :data:`FLAGS`)."""
    parser = argparse.ArgumentParser(
        prog="pyfriction-server",
        description="The pyfriction sidecar: Segment, RudderStack and PostHog ingest, native events, friction "
        "scoring, guidance for the browser.",
        epilog="Precedence: defaults < --config file ([server] table) < environment < command line. Every other "
        "setting (rate limits, timeouts, snapshots...) is a key of the [server] table; see docs/sidecar.md.",
    )
    parser.add_argument("--config", metavar="FILE",
                        help=_help("TOML config file: a [server] table and the engine's configuration", "--config",
                                   "none: the embedded defaults"))  # fmt: skip
    for flag, field, kind, metavar, help_text, default in FLAGS:
        text = _help(help_text + (" (repeatable; comma-separated in the environment)" if kind == "list" else ""),
                     flag, default)  # fmt: skip
        if kind == "list":
            parser.add_argument(flag, dest=field, action="append", metavar=metavar, help=text)
        else:
            parser.add_argument(flag, dest=field, type=int if kind == "int" else str, metavar=metavar, help=text)
    return parser.parse_args(argv)


def _read_file(path: str) -> tuple[dict[str, Any], dict[str, Any]]:
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except OSError as exc:
        raise SettingsError(f"cannot read config file {path!r}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"{path}: invalid TOML: {exc}") from None
    server = data.pop("server", {})
    if not isinstance(server, dict):
        raise SettingsError(f"{path}: `server` must be a table")
    return server, data


def _split(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def load_settings(
    argv: Sequence[str] | None = None,
    environ: Mapping[str, str] | None = None,
    **overrides: Any,
) -> Settings:
    """Build :class:`Settings` from the config file, environment, command line and ``overrides``.

    ``argv=None`` reads no command line (pass ``sys.argv[1:]`` explicitly); ``environ``
    defaults to ``os.environ``. Raises :class:`SettingsError` naming what is wrong.
    """
    env = os.environ if environ is None else environ
    args = parse_args(list(argv) if argv is not None else [])
    raw: dict[str, Any] = {}
    engine: dict[str, Any] = {}
    config_path = args.config or env.get(ENV_PREFIX + "CONFIG")
    if config_path:
        raw, engine = _read_file(config_path)
    for flag, field, kind, *_ in FLAGS:
        name = env_name(flag)
        if name in env:
            value = env[name]
            if kind == "list":
                raw[field] = _split(value)
            elif kind == "int":
                try:
                    raw[field] = int(value)
                except ValueError:
                    raise SettingsError(f"{name}: expected an integer, not {value!r}") from None
            else:
                raw[field] = value
    for _, field, *_ in FLAGS:
        value = getattr(args, field)
        if value is not None:
            raw[field] = [v for item in value for v in _split(item)] if isinstance(value, list) else value
    raw.update(overrides)
    if engine and "engine_config" not in overrides:
        raw["engine_config"] = engine
    try:
        settings = msgspec.convert(raw, Settings)
    except msgspec.ValidationError as exc:
        where = f" ({config_path})" if config_path else ""
        raise SettingsError(f"invalid settings{where}: {str(exc).replace('$.', 'server.')}") from None
    settings.tracker_config()  # the engine config is validated at start, not at first use
    return settings
