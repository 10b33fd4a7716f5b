"""``pyfriction-server --workers N``: N worker processes on one port and one shared store.

The parent binds the port (and keeps it bound, never listening), then forks the workers; each
listens on a socket of its own bound to the same address with ``SO_REUSEPORT`` (see
:func:`own_socket`: the kernel spreads new connections evenly over them) with its own event loop,
journal (``STATE_DIR/journal-K/``) and journal syncer, and all of them score against the
``file://`` store ``STATE_DIR/friction.state`` (see :mod:`pyfriction_server.state` and
:mod:`pyfriction_server.shared` for what else they share). The parent only supervises:

* a worker that dies (a crash, ``kill -9``) is started again; it replays its own journal
  after its watermark first, so nothing it had accepted is lost;
* SIGTERM or SIGINT is passed on to every worker, which drains as a single sidecar does
  (streams end, in-flight requests finish, the journal is checkpointed); the parent exits
  once all have, with status 0 if every one of them stopped cleanly. Workers still running
  ``shutdown_timeout + 30`` seconds later are killed;
* a worker that keeps failing at start (5 times in a row within 10 s of its start, or with
  status 2, a setting the sidecar refuses) stops the whole sidecar, with status 1;
* every worker dies with the parent (``PR_SET_PDEATHSIG``): a parent killed with SIGKILL
  leaves no worker holding the port.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import socket
import time
from collections.abc import Callable

from .settings import Settings
from .shared import Worker

__all__ = ["own_socket", "supervise"]

log = logging.getLogger("pyfriction.server")

#: A worker that exits sooner than this after its start failed to start.
START_WINDOW = 10.0
#: Consecutive failed starts after which the sidecar gives up.
MAX_FAILED_STARTS = 5
_PR_SET_PDEATHSIG = 1

Serve = Callable[[Settings, socket.socket, Worker], int]


def _die_with_parent(parent: int) -> None:
    """Ask the kernel for SIGTERM when the parent dies (Linux); elsewhere nothing."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # it died before the request took effect
        os.kill(os.getpid(), signal.SIGTERM)


def own_socket(shared: socket.socket) -> socket.socket:
    """A socket of this worker's own, bound to ``shared``'s address with ``SO_REUSEPORT``, or
    ``shared`` itself where that fails (no ``SO_REUSEPORT``, or ``shared`` bound without it).

    Why: on one socket shared by every worker, the worker that wakes first accepts every
    connection waiting (asyncio accepts up to a hundred per wake-up), so the pool of
    keep-alive connections a client opens at once lands on one worker while the others idle
    (measured: ``--workers 2`` served 0.94x of one worker's events/s, one process busy, the
    other idle). With a listening socket per worker the kernel hashes each new connection
    to one of them. The cost: connections still waiting in the queue of a worker that dies
    are reset (their clients retry; none of their events was accepted), where a shared
    queue would have passed them to another worker."""
    if not hasattr(socket, "SO_REUSEPORT"):
        return shared
    own = socket.socket(shared.family, socket.SOCK_STREAM)
    try:
        own.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        own.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        own.bind(shared.getsockname())
    except OSError as exc:
        own.close()
        log.warning("serving the shared socket: %s", exc)
        return shared
    return own


def supervise(settings: Settings, sock: socket.socket, serve: Serve, count: int) -> int:
    """Run ``count`` workers, each ``serve(settings, sock, worker)`` in a forked child, until
    SIGTERM/SIGINT; returns the exit status."""
    parent = os.getpid()
    children: dict[int, tuple[int, float]] = {}  # pid -> (worker index, started)
    state = {"stopping": False, "deadline": 0.0, "status": 0}
    failures = [0] * count

    def start(index: int) -> None:
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                for sig in (signal.SIGTERM, signal.SIGINT):
                    signal.signal(sig, signal.SIG_DFL)
                _die_with_parent(parent)
                code = serve(settings, own_socket(sock), Worker(index, count))
            except BaseException:
                log.exception("worker failed", extra={"worker": index})
            finally:
                os._exit(code)
        children[pid] = (index, time.monotonic())
        log.info("worker started", extra={"worker": index, "pid": pid})

    def stop(signum: int = signal.SIGTERM, frame: object = None) -> None:
        if not state["stopping"]:
            state["stopping"] = True
            state["deadline"] = time.monotonic() + settings.shutdown_timeout + 30.0
        for pid in list(children):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, stop)
    for index in range(count):
        start(index)
    while children:
        if state["stopping"]:
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                if time.monotonic() > state["deadline"]:
                    log.error("workers still running after the shutdown deadline: killed")
                    for other in children:
                        os.kill(other, signal.SIGKILL)
                    state["deadline"] = float("inf")
                    state["status"] = 1
                time.sleep(0.05)
                continue
        else:
            pid, status = os.wait()  # retried by Python after a signal handler (PEP 475)
        if pid not in children:
            continue
        index, started = children.pop(pid)
        code = os.waitstatus_to_exitcode(status)
        if state["stopping"]:
            # A worker still starting when the stop came dies of the SIGTERM itself (its
            # handler is not installed yet): stopped as asked, not a failure.
            if code not in (0, -signal.SIGTERM):
                state["status"] = 1
            continue
        log.error("worker exited; starting it again", extra={"worker": index, "pid": pid, "status": code})
        failures[index] = failures[index] + 1 if time.monotonic() - started < START_WINDOW else 1
        if code == 2 or failures[index] >= MAX_FAILED_STARTS:
            log.error("a worker cannot start: stopping the sidecar", extra={"worker": index, "status": code})
            state["status"] = 1
            stop()
            continue
        time.sleep(0.1 * failures[index])  # no busy loop on a worker that dies at once
        start(index)
    sock.close()  # kept open until now: a worker started again inherits it (the parent never accepts)
    return int(state["status"])
