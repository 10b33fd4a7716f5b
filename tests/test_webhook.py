"""The webhook sink against a real local HTTP server (``http.server`` in a thread): signed
JSON, retries with backoff after a 500, failures counted, the episode filter, and a dead
endpoint that never slows ``observe``.

Every test that touches an engine runs on both (the ``engine`` fixture of conftest.py). No
timing thresholds: waits are bounded by WAIT, which is never reached when things work.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

import pyfriction
from pyfriction.sinks import SIGNATURE_HEADER, sign, verify

from helpers import T0, ev

WAIT = 20.0
SECRET = "whsec_test_0123456789"


class Receiver:
    """A local HTTP server answering each POST with the next scripted status (then 200);
    ``hold`` makes every request wait until it is released."""

    def __init__(self) -> None:
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.statuses: list[int] = []
        self.hold = threading.Event()
        self.hold.set()  # not holding
        self.entered = threading.Event()
        self.got = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                receiver.entered.set()
                receiver.hold.wait(WAIT)
                with receiver.got:
                    receiver.requests.append(({k.lower(): v for k, v in self.headers.items()}, body))
                    status = receiver.statuses.pop(0) if receiver.statuses else 200
                    receiver.got.notify_all()
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/friction"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.02,), daemon=True)
        self.thread.start()

    def wait_for(self, n: int) -> list[tuple[dict[str, str], bytes]]:
        deadline = time.monotonic() + WAIT
        with self.got:
            while len(self.requests) < n:
                left = deadline - time.monotonic()
                assert left > 0, f"only {len(self.requests)} of {n} requests arrived"
                self.got.wait(left)
            return list(self.requests)

    def close(self) -> None:
        self.hold.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def hook(url: str, **options: Any) -> dict[str, Any]:
    return {"sinks": {"webhook": {"url": url, "secret": SECRET, "backoff": 0.01, "max_backoff": 0.05, **options}}}


def rage(t: pyfriction.Tracker, user: str, ts: float, step: str = "billing.card") -> None:
    for i in range(3):
        t.observe(ev(user, "click", ts + 0.1 * i, step, "#pay-now", account_id="acct-1"))


def wait_until(cond: Callable[[], bool]) -> None:
    deadline = time.monotonic() + WAIT
    while not cond():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


def test_posts_signed_json(make_tracker: Callable[..., pyfriction.Tracker], receiver: Receiver) -> None:
    cfg = hook(receiver.url)
    cfg["guidance"] = {"items": [{"id": "a", "title": "Help"}], "rules": [{"guidance": "a"}], "holdout": {"share": 0}}
    t = make_tracker(cfg)
    rage(t, "u1", T0)
    ((headers, body),) = receiver.wait_for(1)
    episode = t.episodes_seen[0]  # type: ignore[attr-defined]
    # the signature: t=<unix time>,v1=hex(HMAC-SHA256(secret, "<t>.<body>"))
    sig = headers[SIGNATURE_HEADER.lower()]
    fields = dict(part.split("=", 1) for part in sig.split(","))
    expected = hmac.new(SECRET.encode(), f"{fields['t']}.".encode() + body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(fields["v1"], expected)
    assert abs(int(fields["t"]) - time.time()) < 3600
    assert verify(SECRET, body, sig)
    assert not verify(SECRET, body + b" ", sig)
    assert not verify("another secret", body, sig)
    assert not verify(SECRET, body, sig, now=int(fields["t"]) + 301)  # too old: a replay
    assert not verify(SECRET, body, "garbage")
    assert headers["content-type"] == "application/json"
    assert headers["pyfriction-id"] == episode.episode_id
    doc = json.loads(body)
    assert doc["type"] == "friction.episode" and doc["id"] == episode.episode_id
    assert doc["episode"]["user_id"] == "u1" and doc["episode"]["account_id"] == "acct-1"
    assert doc["episode"]["reasons"][0]["detector"] == "rage_click"
    assert doc["episode"]["guidance"]["id"] == "a" and doc["episode"]["holdout"] is False
    assert t.flush(WAIT)
    stats = t.sink_stats()["webhook"]
    assert (stats.submitted, stats.sent, stats.failed, stats.retries, stats.queued) == (1, 1, 0, 0, 0)


def test_sign_and_verify_round_trip() -> None:
    header = sign("k" * 16, b'{"a":1}', 1_700_000_000)
    assert header.startswith("t=1700000000,v1=")
    assert verify("k" * 16, b'{"a":1}', header, now=1_700_000_100)
    assert verify("k" * 16, b'{"a":1}', header + ",v1=00", now=1_700_000_100)  # several signatures: any
    assert not verify("k" * 16, b'{"a":2}', header, now=1_700_000_100)


def test_retries_after_a_500(make_tracker: Callable[..., pyfriction.Tracker], receiver: Receiver) -> None:
    receiver.statuses = [500, 503]
    t = make_tracker(hook(receiver.url, retries=3))
    rage(t, "u1", T0)
    requests = receiver.wait_for(3)
    assert t.flush(WAIT)
    assert len(receiver.requests) == 3
    assert len({h["pyfriction-id"] for h, _ in requests}) == 1  # the same delivery, retried
    assert len({body for _, body in requests}) == 1
    assert all(verify(SECRET, body, h[SIGNATURE_HEADER.lower()]) for h, body in requests)  # each re-signed
    stats = t.sink_stats()["webhook"]
    assert (stats.sent, stats.failed, stats.retries) == (1, 0, 2)
    assert stats.last_error == "HTTP 503"


def test_gives_up_after_the_last_retry_and_counts(make_tracker: Callable[..., pyfriction.Tracker],
                                                  receiver: Receiver) -> None:  # fmt: skip
    receiver.statuses = [500] * 10
    t = make_tracker(hook(receiver.url, retries=2))
    rage(t, "u1", T0)
    assert t.flush(WAIT)
    assert len(receiver.requests) == 3
    stats = t.sink_stats()["webhook"]
    assert (stats.sent, stats.failed, stats.retries) == (0, 1, 2)


def test_a_4xx_is_final(make_tracker: Callable[..., pyfriction.Tracker], receiver: Receiver) -> None:
    receiver.statuses = [400]
    t = make_tracker(hook(receiver.url, retries=3))
    rage(t, "u1", T0)
    assert t.flush(WAIT)
    assert len(receiver.requests) == 1
    assert (t.sink_stats()["webhook"].failed, t.sink_stats()["webhook"].retries) == (1, 0)


def test_filter(make_tracker: Callable[..., pyfriction.Tracker], receiver: Receiver) -> None:
    t = make_tracker(hook(receiver.url, min_score=0.65, detectors=["rage_click", "stall"], steps=["billing.*"]))
    rage(t, "u1", T0)  # score 0.699, rage_click, billing.card: sent
    rage(t, "u2", T0, step="reports")  # wrong step
    for j in range(3):  # an error burst: wrong detector
        t.observe(ev("u3", "form_error", T0 + j, "billing.card", "#card"))
    assert t.flush(WAIT)
    ((_, body),) = receiver.requests
    assert json.loads(body)["episode"]["user_id"] == "u1"
    stats = t.sink_stats()["webhook"]
    assert (stats.submitted, stats.sent, stats.filtered) == (1, 1, 2)
    strict = make_tracker(hook(receiver.url, min_score=0.7))
    rage(strict, "u1", T0)
    assert strict.flush(WAIT) and strict.sink_stats()["webhook"].filtered == 1


def test_a_hanging_endpoint_never_blocks_observe(make_tracker: Callable[..., pyfriction.Tracker],
                                                 receiver: Receiver) -> None:  # fmt: skip
    receiver.hold.clear()  # every request hangs until released
    t = make_tracker(hook(receiver.url, timeout=WAIT, retries=0, queue_size=3))
    rage(t, "first", T0)
    assert receiver.entered.wait(WAIT)  # the worker is now stuck inside a request
    for i in range(50):  # meanwhile the host keeps scoring: every observe returns
        rage(t, f"user-{i}", T0 + 1)
    assert not receiver.hold.is_set()  # ... while the endpoint still holds the first request
    assert receiver.requests == []
    assert len(t.episodes_seen) == 51  # type: ignore[attr-defined]
    stats = t.sink_stats()["webhook"]
    assert stats.submitted == 1 + 3 and stats.dropped == 47  # the queue holds 3; the rest is counted
    assert stats.sent == 0
    receiver.hold.set()
    assert t.flush(WAIT)
    stats = t.sink_stats()["webhook"]
    assert (stats.sent, stats.queued) == (4, 0)


def test_close_does_not_wait_for_a_dead_endpoint(make_tracker: Callable[..., pyfriction.Tracker],
                                                 receiver: Receiver) -> None:  # fmt: skip
    receiver.hold.clear()
    t = make_tracker(hook(receiver.url, timeout=WAIT, retries=5))
    rage(t, "u1", T0)
    rage(t, "u2", T0)
    assert receiver.entered.wait(WAIT)
    assert t.close(timeout=0.1) is False  # gave up waiting; nothing blocked
    rage(t, "u3", T0)  # scoring keeps working after close
    assert len(t.episodes_seen) == 3  # type: ignore[attr-defined]
    stats = t.sink_stats()["webhook"]
    assert stats.dropped >= 1  # u3 after close (and u2, once the worker gets to it)
    receiver.hold.set()


def test_connection_refused_is_retried_then_counted(make_tracker: Callable[..., pyfriction.Tracker]) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t = make_tracker(hook(f"http://127.0.0.1:{port}/", retries=2))
    rage(t, "u1", T0)
    assert t.flush(WAIT)
    stats = t.sink_stats()["webhook"]
    assert (stats.sent, stats.failed, stats.retries) == (0, 1, 2)
    assert stats.last_error is not None and "refused" in stats.last_error.lower()


def test_no_sink_configured(make_tracker: Callable[..., pyfriction.Tracker]) -> None:
    t = make_tracker()
    assert t.sink_stats() == {}


@pytest.mark.parametrize(
    ("webhook", "where"),
    [
        ({"url": "ftp://x", "secret": SECRET}, "$.sinks.webhook.url"),
        ({"url": "https://x.example/h"}, "secret"),
        ({"url": "https://x.example/h", "secret": "short"}, "$.sinks.webhook.secret"),
        ({"url": "https://x.example/h", "secret": SECRET, "retries": -1}, "$.sinks.webhook.retries"),
        ({"url": "https://x.example/h", "secret": SECRET, "timeout": 0}, "$.sinks.webhook.timeout"),
        ({"url": "https://x.example/h", "secret": SECRET, "detectors": ["rage"]}, "detectors"),
        ({"url": "https://x.example/h", "secret": SECRET, "min_score": 1.5}, "$.sinks.webhook.min_score"),
        ({"url": "https://x.example/h", "secret": SECRET, "colour": 1}, "colour"),
    ],
)
def test_config_errors_name_the_key(webhook: dict[str, Any], where: str) -> None:
    with pytest.raises(pyfriction.ConfigError) as info:
        pyfriction.load_config({"sinks": {"webhook": webhook}})
    assert where in str(info.value)


def test_config_from_toml(tmp_path: Any) -> None:
    path = tmp_path / "c.toml"
    path.write_text(
        '[sinks.webhook]\nurl = "https://hooks.example.com/friction"\nsecret = "whsec_abcdefgh"\n'
        'min_score = 0.7\ndetectors = ["rage_click"]\ntimeout = 2\nretries = 5\n',
        encoding="utf-8",
    )
    w: Any | None = pyfriction.load_config(path).sinks.webhook
    assert w is not None
    assert (w.url, w.min_score, w.detectors, w.timeout, w.retries, w.backoff) == (
        "https://hooks.example.com/friction", 0.7, ["rage_click"], 2.0, 5, 1.0)  # fmt: skip
