"""``pyfriction-server`` / ``python -m pyfriction_server``: run the sidecar.

SIGTERM or SIGINT shut it down gracefully: guidance streams end, the listening socket
closes, in-flight requests finish, the journal drains, the state is snapshotted. With
``--workers`` other than 1, a parent process supervises that many workers on one port
(:mod:`pyfriction_server.workers`).
"""

from __future__ import annotations

import gc
import logging
import os
import resource
import signal
import socket
import sys
from collections.abc import Sequence

from . import live
from .app import Server, create_app, server_config
from .logs import setup_logging
from .settings import Settings, SettingsError, load_settings
from .shared import Worker
from .state import StateError
from .workers import supervise

__all__ = ["main"]


def raise_fd_limit() -> int:
    """Raise the open-files soft limit to the hard limit (streams hold a socket each)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            return int(hard)
        except (ValueError, OSError):
            pass
    return int(soft)


def listen(host: str, port: int, reuse_port: bool = False) -> socket.socket:
    """The listening socket, bound before anything else starts (so that a port in use is one
    clear line, before the state directory is even opened). ``reuse_port``: with
    ``SO_REUSEPORT`` where there is one, so that workers can bind sockets of their own to the
    same address (see :func:`pyfriction_server.workers.own_socket`). Raises OSError."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port and hasattr(socket, "SO_REUSEPORT"):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    try:
        settings = load_settings(sys.argv[1:] if argv is None else argv)
    except SettingsError as exc:
        print(f"pyfriction-server: {exc}", file=sys.stderr)
        return 2
    try:
        sock = listen(settings.host, settings.port, reuse_port=settings.worker_count is not None)
    except OSError as exc:
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        print(f"pyfriction-server: cannot listen on {settings.host}:{settings.port}: {reason}", file=sys.stderr)
        return 2
    setup_logging(settings.log_level)
    files = raise_fd_limit()
    count = settings.worker_count
    if count is not None:
        logging.getLogger("pyfriction.server").info(
            "starting workers", extra={"host": settings.host, "port": settings.port, "workers": count,
                                       "open_files": files})  # fmt: skip
        try:
            live.claim(os.path.abspath(settings.state_dir), wait=settings.shutdown_timeout + 30.0)
            settings = live.prepare(settings)
        except (OSError, SettingsError, StateError) as exc:
            logging.getLogger("pyfriction.server").error("cannot start: %s", exc)
            sock.close()
            return 1
        status = supervise(settings, sock, serve, count)
        live.release(settings)
        return status
    return serve(settings, sock, None, files)


def serve(settings: Settings, sock: socket.socket, worker: Worker | None, files: int | None = None) -> int:
    """Serve ``sock`` in this process (the only one, or ``worker`` of several) until
    SIGTERM/SIGINT; returns the exit status."""
    log = logging.getLogger("pyfriction.server")
    try:
        app = create_app(settings, worker)
    except (SettingsError, OSError) as exc:
        log.error("cannot start: %s", exc)
        sock.close()
        return 2
    # Everything allocated so far lives for the whole run: keep the collector off it, and
    # collect less often (each ingest request allocates a few hundred short-lived objects).
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)
    server = Server(server_config(app, settings))
    where = {} if worker is None else {"worker": worker.index}
    log.info("starting", extra={"host": settings.host, "port": settings.port, "open_files": files, **where})
    # uvicorn re-raises SIGTERM/SIGINT once its graceful shutdown is done; a requested stop
    # that completed is a success, not a death by signal.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _stopped)
    try:
        server.run(sockets=[sock])
    except StateError as exc:
        log.error("cannot start: %s", exc)
        return 1
    except _Stopped:
        return 0  # asked to stop, even before the start was complete: not a failure
    return 0 if server.started else 1


class _Stopped(Exception):
    pass


def _stopped(signum: int, frame: object) -> None:
    raise _Stopped()


if __name__ == "__main__":
    sys.exit(main())
