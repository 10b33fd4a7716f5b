"""Guidance delivery: an episode picks guidance, the browser gets it by poll or by stream
(pushed the moment it is picked), and reports shown / clicked / dismissed."""

from __future__ import annotations

import json
import threading
import time
import uuid
from typing import Any

import httpx

from .sidecar_util import WRITE_KEY

AUTH = {"X-Write-Key": WRITE_KEY}


def _rage(url: str, user: str, target: str = "#pay") -> None:
    now = time.time()
    events = [{"id": f"{user}-{i}", "user_id": user, "type": "click", "target": target, "step": "billing",
               "ts": now + i * 0.1} for i in range(4)]  # fmt: skip
    r = httpx.post(url + "/v1/events", json={"events": events, "sent_at": now + 0.4}, headers=AUTH)
    assert r.status_code == 200 and r.json()["accepted"] == 4


def test_poll_then_ack(sidecar: Any) -> None:
    user = f"g-{uuid.uuid4().hex[:8]}"
    base = f"{sidecar.url}/v1/guidance/{user}"
    assert httpx.get(base, headers=AUTH).json() == {"guidance": []}
    _rage(sidecar.url, user)
    items = httpx.get(base, headers=AUTH).json()["guidance"]
    assert [g["id"] for g in items] == ["pay-help"]
    g = items[0]
    assert g["kind"] == "tooltip" and g["anchor"] == "#pay" and g["target"] == "#pay"
    assert "<strong>Pay</strong>" in g["body_html"]
    assert httpx.get(base, headers=AUTH).json() == {"guidance": []}  # delivered once
    for outcome in ("shown", "clicked"):
        r = httpx.post(base + "/ack", json={"guidance_id": g["id"], "outcome": outcome}, headers=AUTH)
        assert r.status_code == 200 and r.json() == {"ok": True}
    r = httpx.post(base + "/ack", json={"guidance_id": "never-offered", "outcome": "shown"}, headers=AUTH)
    assert r.status_code == 404
    r = httpx.post(base + "/ack", json={"guidance_id": g["id"], "outcome": "loved"}, headers=AUTH)
    assert r.status_code == 400
    metrics = httpx.get(sidecar.url + "/metrics").text
    assert 'pyfriction_guidance_feedback_total{outcome="clicked"} 1' in metrics
    assert 'pyfriction_guidance_delivered_total{channel="poll"} 1' in metrics


def test_stream_pushes_guidance_when_picked(sidecar: Any) -> None:
    user = f"s-{uuid.uuid4().hex[:8]}"
    received: list[dict[str, Any]] = []
    opened = threading.Event()

    def listen() -> None:
        with httpx.stream("GET", f"{sidecar.url}/v1/guidance/{user}/stream", params={"key": WRITE_KEY},
                          timeout=20) as r:  # fmt: skip
            assert r.status_code == 200
            assert r.headers["content-type"].startswith("text/event-stream")
            event = None
            for line in r.iter_lines():
                opened.set()
                if line.startswith("event: "):
                    event = line[7:]
                elif line.startswith("data: ") and event == "guidance":
                    received.append(json.loads(line[6:]))
                    return

    t = threading.Thread(target=listen, daemon=True)
    t.start()
    assert opened.wait(10)
    # Pushed, not polled: without the wake-up the stream would find the item only at its next
    # keep-alive, later than the listener waits.
    listen_for = 10.0
    assert sidecar.settings.sse_keepalive > listen_for
    _rage(sidecar.url, user)
    t.join(listen_for)
    assert [g["id"] for g in received] == ["pay-help"]
    # delivered through the stream: a poll finds nothing more
    assert httpx.get(f"{sidecar.url}/v1/guidance/{user}", headers=AUTH).json() == {"guidance": []}


def test_script_is_served(sidecar: Any) -> None:
    r = httpx.get(sidecar.url + "/v1/pyfriction.js")
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/javascript")
    assert b"sendBeacon" in r.content and b"data-pyfriction-ignore" in r.content
    # what travels: the script is served compressed (see test_browser_guidance.py for the rest)
    assert r.headers.get("content-encoding") in ("gzip", "br") and int(r.headers["content-length"]) < 16_000
    again = httpx.get(sidecar.url + "/v1/pyfriction.js", headers={"If-None-Match": r.headers["etag"]})
    assert again.status_code == 304


def test_identify_traits_reach_guidance_rules(sidecar: Any) -> None:
    user = f"t-{uuid.uuid4().hex[:8]}"
    r = httpx.post(sidecar.url + "/v1/identify", json={"userId": user, "traits": {"plan": "team"},
                                                        "context": {"locale": "de-AT", "groupId": "acme"}},
                   headers=AUTH)  # fmt: skip
    assert r.status_code == 200
    traits = sidecar.tracker.traits(user)
    assert traits["plan"] == "team" and traits["locale"] == "de-AT" and traits["account_id"] == "acme"
