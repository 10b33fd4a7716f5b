"""Episode sinks: the signed webhook (``[sinks.webhook]`` in the config).

:class:`WebhookSink` posts the episodes that pass its filter as JSON to a URL (a helpdesk, a
customer-success platform, a Slack relay) from a background thread. ``observe`` only puts the
episode on a bounded queue: a slow or dead endpoint never blocks it. A delivery that fails
(network error, timeout, HTTP 408, 429 or 5xx) is retried with exponential backoff; other
4xx answers are final. Everything is counted (:class:`SinkStats`, ``Tracker.sink_stats()``).

Each request is signed the Stripe/Svix way, so the receiver can check it came from you and
is fresh::

    Pyfriction-Signature: t=1700000000,v1=<hex HMAC-SHA256(secret, "1700000000." + body)>
    Pyfriction-Id: <episode id>          (the same on every retry: an idempotency key)

Check it with :func:`verify` (constant-time comparison, 5 minute tolerance by default).
"""

from __future__ import annotations

import fnmatch
import hashlib
import hmac
import logging
import queue
import random
import threading
import time
import urllib.error
import urllib.request
from typing import Any

import msgspec

from ._episodes import Episode
from .config import Webhook
from .dispatcher import RestartsAfterFork

__all__ = ["ID_HEADER", "SIGNATURE_HEADER", "SinkStats", "WebhookSink", "payload", "sign", "verify"]

log = logging.getLogger("pyfriction")

SIGNATURE_HEADER = "Pyfriction-Signature"
ID_HEADER = "Pyfriction-Id"
USER_AGENT = "pyfriction-webhook/0.1"
_RETRY_STATUSES = frozenset({408, 425, 429})
_STOP = object()


class SinkStats(msgspec.Struct, kw_only=True):
    """Counters of one sink.

    ``submitted``: episodes that passed the filter and were queued; ``sent``: delivered (2xx);
    ``failed``: given up after the last retry or a final 4xx; ``retries``: attempts after the
    first; ``dropped``: not delivered because the queue was full or the sink closed;
    ``filtered``: episodes the filter left out; ``queued``: waiting or in flight now.
    """

    submitted: int = 0
    sent: int = 0
    failed: int = 0
    retries: int = 0
    dropped: int = 0
    filtered: int = 0
    queued: int = 0
    last_error: str | None = None


def sign(secret: str, body: bytes, timestamp: int) -> str:
    """The signature header value for ``body`` sent at ``timestamp`` (unix seconds)."""
    mac = hmac.new(secret.encode("utf-8"), str(int(timestamp)).encode("ascii") + b"." + body, hashlib.sha256)
    return f"t={int(timestamp)},v1={mac.hexdigest()}"


def verify(secret: str, body: bytes, header: str, *, tolerance: float = 300.0, now: float | None = None) -> bool:
    """True when ``header`` (the ``Pyfriction-Signature`` value) signs ``body`` with ``secret``
    and its timestamp is within ``tolerance`` seconds of ``now`` (default: the current time)."""
    try:
        fields = dict(part.split("=", 1) for part in header.split(","))
        ts = int(fields["t"])
    except (ValueError, KeyError):
        return False
    if abs((time.time() if now is None else now) - ts) > tolerance:
        return False
    expected = sign(secret, body, ts).split("v1=", 1)[1]
    given = [v for k, v in (p.split("=", 1) for p in header.split(",")) if k == "v1"]
    return any(hmac.compare_digest(expected, g) for g in given)


def payload(episode: Episode) -> bytes:
    """The JSON body posted for an episode: ``{"type": "friction.episode", "id", "created",
    "episode": {...}}`` (the episode with its guidance and holdout flag)."""
    return msgspec.json.encode(
        {"type": "friction.episode", "id": episode.episode_id, "created": episode.ts, "episode": episode}
    )


class WebhookSink(RestartsAfterFork):
    """Posts episodes to ``config.url`` from a daemon thread (started on the first episode)."""

    def __init__(self, config: Webhook) -> None:
        self.config = config
        self._steps = list(config.steps)
        self._detectors = frozenset(config.detectors)
        self._stats = SinkStats()
        self._count_lock = threading.Lock()
        self._rng = random.Random()
        self._reset()
        self._track()

    def _reset(self) -> None:
        self._queue: queue.Queue[Any] = queue.Queue(self.config.queue_size)
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._stop = threading.Event()

    def _count(self, name: str, n: int = 1) -> None:
        with self._count_lock:
            setattr(self._stats, name, getattr(self._stats, name) + n)

    # -- the filter and the queue --------------------------------------------------------------
    def accepts(self, episode: Episode) -> bool:
        """True when the episode passes ``min_score``, ``detectors`` and ``steps``."""
        c = self.config
        if episode.score < c.min_score:
            return False
        if self._detectors and not any(r.detector in self._detectors for r in episode.reasons):
            return False
        if self._steps and not (
            episode.step is not None and any(fnmatch.fnmatchcase(episode.step, p) for p in self._steps)
        ):
            return False
        return True

    def submit(self, episode: Episode) -> bool:
        """Queue the episode if it passes the filter; never blocks. False when filtered out or
        dropped (queue full, sink closed)."""
        if not self.accepts(episode):
            self._count("filtered")
            return False
        if self._closed:
            self._count("dropped")
            return False
        if self._thread is None:
            self._start()
        try:
            self._queue.put_nowait(episode)
        except queue.Full:
            self._count("dropped")
            return False
        self._count("submitted")
        return True

    def _start(self) -> None:
        with self._lock:
            if self._thread is None and not self._closed:
                self._thread = threading.Thread(target=self._run, name="pyfriction-webhook", daemon=True)
                self._thread.start()

    def stats(self) -> SinkStats:
        """A copy of the counters."""
        with self._count_lock:
            s = msgspec.structs.replace(self._stats)
        s.queued = self._queue.unfinished_tasks
        return s

    # -- the worker ----------------------------------------------------------------------------
    def _run(self) -> None:
        q = self._queue
        while True:
            item = q.get()
            try:
                if item is _STOP:
                    return
                if self._stop.is_set():
                    self._count("dropped")
                    continue
                self._deliver(item)
            except Exception:  # never let the worker die
                log.exception("pyfriction: webhook worker error")
                self._count("failed")
            finally:
                q.task_done()

    def _deliver(self, episode: Episode) -> None:
        c = self.config
        body = payload(episode)
        for attempt in range(c.retries + 1):
            if attempt:
                self._count("retries")
                delay = min(c.max_backoff, c.backoff * 2 ** (attempt - 1))
                delay *= 1.0 + 0.1 * self._rng.random()  # a little jitter
                if self._stop.wait(delay):  # closing: give up now
                    self._count("dropped")
                    return
            error, retry = self._post(body, episode.episode_id)
            if error is None:
                self._count("sent")
                return
            with self._count_lock:
                self._stats.last_error = error
            if not retry:
                break
            log.debug("pyfriction: webhook attempt %d failed: %s", attempt + 1, error)
        log.warning("pyfriction: webhook gave up on episode %s: %s", episode.episode_id, self._stats.last_error)
        self._count("failed")

    def _post(self, body: bytes, episode_id: str) -> tuple[str | None, bool]:
        """One attempt: ``(None, _)`` on success, else ``(error, worth retrying)``."""
        headers = {
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            ID_HEADER: episode_id,
            SIGNATURE_HEADER: sign(self.config.secret, body, int(time.time())),
        }
        request = urllib.request.Request(self.config.url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.config.timeout) as response:
                response.read(65536)
                return None, False
        except urllib.error.HTTPError as exc:
            exc.close()
            return f"HTTP {exc.code}", exc.code >= 500 or exc.code in _RETRY_STATUSES
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            return f"{type(exc).__name__}: {reason}", True

    # -- lifecycle -----------------------------------------------------------------------------
    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every queued episode is delivered or given up; False on ``timeout``."""
        if threading.current_thread() is self._thread:
            return False
        q = self._queue
        deadline = None if timeout is None else time.monotonic() + timeout
        with q.all_tasks_done:
            while q.unfinished_tasks:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                q.all_tasks_done.wait(remaining)
        return True

    def close(self, timeout: float | None = None) -> bool:
        """Deliver what is queued within ``timeout`` seconds (default: one request's
        ``timeout``), then stop; what is left is dropped and counted. True when all went out."""
        if timeout is None:
            timeout = self.config.timeout
        done = self.flush(timeout)
        with self._lock:
            self._closed = True
            thread = self._thread
        self._stop.set()  # cut retry waits short; the current request finishes or times out
        if thread is None or thread is threading.current_thread():
            return done
        try:
            self._queue.put_nowait(_STOP)
        except queue.Full:
            pass  # the worker drops the rest (stop is set) and is a daemon anyway
        return done
