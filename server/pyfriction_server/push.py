"""Guidance wake-ups between sidecar hosts, by Redis sharded pub/sub (``--store redis...``).

A user's guidance stream is held by one worker of one host; the episode that queues guidance
for that user may be scored anywhere. The worker that queued it publishes the user's
fingerprint with ``SPUBLISH`` on one of ``BUCKETS`` channels (``P:{gN}``: hash tags spread
them over the cluster's nodes, so no node carries every message); every worker of every host
listens to all of them (``SSUBSCRIBE``, on a thread of its own) and wakes the streams it holds
for that fingerprint, which then read the user's pending guidance from the store.

Push is at most once: a message published while a listener is reconnecting (a failover, a
slot moving) is lost. The pull stays authoritative: a stream reads the store again at every
keep-alive (``sse_keepalive``), and the poll endpoint and the next page view do too.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from pyfriction.recent import fingerprint

__all__ = ["BUCKETS", "RedisPush"]

log = logging.getLogger("pyfriction_server")

#: Channels the wake-ups are spread over.
BUCKETS = 16


class RedisPush:
    """Publish and hear guidance wake-ups on a Redis store (see the module docstring).

    ``client``: a redis-py client of the store (``pyfriction.redis_state.redis_client``).
    """

    def __init__(self, client: Any, prefix: str) -> None:
        self.client = client
        self.channels = [f"{prefix}:{{g{n}}}" for n in range(BUCKETS)]
        self._heard: Callable[[list[int]], object] = lambda keys: None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        #: Wake-ups published and heard, and listener reconnections (for tests and logs).
        self.published = self.received = self.reconnects = 0

    def publish(self, user_id: str) -> None:
        """Tell every listener that ``user_id`` has new guidance (best effort: never raises)."""
        key = fingerprint(user_id)
        try:
            self.client.spublish(self.channels[key % BUCKETS], key.to_bytes(8, "little"))
            self.published += 1
        except Exception as exc:  # at most once: the pull at the next keep-alive delivers it
            log.warning("guidance wake-up not published: %s", exc)

    def start(self, heard: Callable[[list[int]], object]) -> None:
        """Listen on a thread of its own; ``heard(keys)`` is called there with the fingerprints
        of users whose guidance was queued somewhere."""
        self._heard = heard
        self._thread = threading.Thread(target=self._listen, name="pyfriction-push", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        try:
            self.client.close()
        except Exception:
            pass

    def _listen(self) -> None:
        pause = 0.05
        while not self._stop.is_set():
            pubsub = None
            try:
                pubsub = self.client.pubsub()
                pubsub.ssubscribe(*self.channels)
                pause = 0.05
                while not self._stop.is_set():
                    message = pubsub.get_sharded_message(ignore_subscribe_messages=True, timeout=0.2)
                    if message is None or message.get("type") != "smessage":
                        continue
                    data = message.get("data")
                    if isinstance(data, bytes) and len(data) == 8:
                        self.received += 1
                        self._heard([int.from_bytes(data, "little")])
            except Exception as exc:  # a node gone or a slot moved: subscribe again
                if self._stop.is_set():
                    break
                self.reconnects += 1
                log.info("guidance wake-ups: listening again after %s", exc)
                time.sleep(pause)
                pause = min(pause * 2, 2.0)
            finally:
                if pubsub is not None:
                    try:
                        pubsub.close()
                    except Exception:
                        pass
