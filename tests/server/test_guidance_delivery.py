"""An item counts as delivered when shown, not when read (issue 19): the sidecar keeps it for
every new stream (another tab, a reconnect) until a page reports it ``shown``, an open stream
never sends it twice, and the expiry still bounds it. No browser needed."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from .sidecar_util import WRITE_KEY, ThreadServer

AUTH = {"X-Write-Key": WRITE_KEY}
CONFIG: dict[str, Any] = {
    "guidance": {
        "items": [
            {"id": "pay-help", "kind": "tooltip", "anchor": "#pay", "title": "Payment is on its way"},
            {"id": "plan-help", "kind": "banner", "title": "Plans"},
        ],
        "rules": [{"guidance": "pay-help", "target": "#pay"}, {"guidance": "plan-help", "target": "#plan"}],
        "holdout": {"share": 0.0},
        "caps": {"per_day": 100, "item_cooldown": 0.0},
    },
    # a second episode for the same user a second later (a new item for an open stream)
    "scoring": {"half_life": 0.2, "cooldown": 0.0},
}  # fmt: skip


@pytest.fixture(scope="module")
def sidecar() -> Iterator[ThreadServer]:
    # a short keep-alive: a stream that has nothing to send says so quickly
    with ThreadServer(write_keys=[WRITE_KEY], engine_config=CONFIG, sse_keepalive=0.3) as s:
        yield s


def _rage(url: str, user: str, target: str) -> None:
    now = time.time()
    events = [{"id": f"{user}-{target}-{i}", "user_id": user, "type": "click", "target": target, "step": "billing",
               "ts": now + i * 0.1} for i in range(4)]  # fmt: skip
    r = httpx.post(url + "/v1/events", json={"events": events, "sent_at": now + 0.4}, headers=AUTH)
    assert r.status_code == 200 and r.json()["accepted"] == 4


class Stream:
    """An SSE stream of the user's guidance, read line by line."""

    def __init__(self, url: str, user: str) -> None:
        self._cm = httpx.stream("GET", f"{url}/v1/guidance/{user}/stream", params={"key": WRITE_KEY}, timeout=10)
        self._r = self._cm.__enter__()
        assert self._r.status_code == 200
        self._lines = self._r.iter_lines()

    def until_idle(self, settle: float = 1.0) -> list[str]:
        """The ids of the items the stream sends from now until a keep-alive at least ``settle``
        seconds from now (keep-alives come only when it has nothing to send)."""
        start = time.monotonic()
        ids: list[str] = []
        event = None
        for line in self._lines:
            if line == ": keep-alive" and time.monotonic() - start >= settle:
                return ids
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: ") and event == "guidance":
                ids.append(json.loads(line[6:])["id"])
        raise AssertionError("the stream ended")

    def close(self) -> None:
        self._cm.__exit__(None, None, None)


def _ack(url: str, user: str, item: str, outcome: str = "shown") -> None:
    r = httpx.post(f"{url}/v1/guidance/{user}/ack", json={"guidance_id": item, "outcome": outcome}, headers=AUTH)
    assert r.status_code == 200


def test_a_read_item_comes_back_to_a_new_stream_until_shown(sidecar: ThreadServer) -> None:
    url, user = sidecar.url, f"d-{uuid.uuid4().hex[:8]}"
    _rage(url, user, "#pay")
    # a tab's stream reads the item; the tab closes before showing it
    tab = Stream(url, user)
    assert tab.until_idle() == ["pay-help"]
    tab.close()
    # the reconnect (or another tab) gets it again; two tabs open at once both get it
    again, other = Stream(url, user), Stream(url, user)
    assert again.until_idle() == ["pay-help"] and other.until_idle() == ["pay-help"]
    # an open stream never sends an item twice: a new item wakes it, only the new one comes
    time.sleep(1.0)  # the score falls back (half_life 0.2 s): the next rage is a new episode
    _rage(url, user, "#plan")
    assert again.until_idle() == ["plan-help"]
    assert again.until_idle() == []
    # shown (in some tab): gone for every new stream; the other item is still on its way
    _ack(url, user, "pay-help")
    later = Stream(url, user)
    assert later.until_idle() == ["plan-help"]
    for s in (again, other, later):
        s.close()
    # a guidance_shown event counts like the ack
    r = httpx.post(url + "/v1/events", headers=AUTH, json={"events": [
        {"id": f"{user}-shown", "user_id": user, "type": "guidance_shown", "target": "plan-help", "ts": time.time()}]})  # fmt: skip
    assert r.status_code == 200
    last = Stream(url, user)
    assert last.until_idle() == []
    last.close()
    item = {i.id: i for i in sidecar.tracker.insights().items}
    assert (item["pay-help"].delivered, item["pay-help"].shown) == (1, 1)  # delivered: at the first read


def test_the_poll_hands_out_once_or_keeps_until_shown(sidecar: ThreadServer) -> None:
    url, user = sidecar.url, f"p-{uuid.uuid4().hex[:8]}"
    base = f"{url}/v1/guidance/{user}"
    _rage(url, user, "#pay")
    for _ in range(2):  # keep=1 (pyfriction.js without EventSource): what a stream would send
        assert [g["id"] for g in httpx.get(base, params={"keep": "1"}, headers=AUTH).json()["guidance"]] == ["pay-help"]
    # without keep, as before: an item read once (here by the keep=1 polls) is not handed out again
    assert httpx.get(base, headers=AUTH).json() == {"guidance": []}
    _ack(url, user, "pay-help", "dismissed")  # implies shown
    assert httpx.get(base, params={"keep": "1"}, headers=AUTH).json() == {"guidance": []}


def test_an_unshown_item_expires(sidecar: ThreadServer) -> None:
    url, user = sidecar.url, f"e-{uuid.uuid4().hex[:8]}"
    _rage(url, user, "#pay")
    s = Stream(url, user)
    assert s.until_idle() == ["pay-help"]
    s.close()
    tracker = sidecar.tracker
    clock = tracker._clock
    expire_after = tracker.config.guidance.expire_after
    tracker._clock = lambda: clock() + expire_after + 1
    try:
        s = Stream(url, user)
        assert s.until_idle() == []
        s.close()
    finally:
        tracker._clock = clock
