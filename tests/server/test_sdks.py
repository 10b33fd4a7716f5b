"""Acceptance 1: the real Segment, RudderStack and PostHog SDKs, pointed at a real sidecar.

Each SDK is used as a team would use it, with only its host changed: every event arrives
and is scored (the admin endpoint shows the user's event count, and the rage clicks fire an
episode), the SDK's ``on_error`` never runs, and a batch delivered twice (what an SDK's
retry does after a lost answer: same body, same message ids) is not counted twice.
"""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest

from .sidecar_util import WRITE_KEY, user_events, wait_for

N_CLICKS = 5  # on the same target within a second: a rage click


def _uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def _episodes(url: str, user: str, admin: dict[str, str]) -> int:
    return int(httpx.get(f"{url}/v1/users/{user}", headers=admin).json()["episodes"])


def test_segment_sdk(sidecar: Any, admin: dict[str, str]) -> None:
    from segment.analytics.client import Client

    errors: list[Any] = []
    user = _uid("seg")
    client = Client(WRITE_KEY, host=sidecar.url, on_error=lambda e, batch: errors.append(e), gzip=True,
                    max_retries=1, upload_interval=0.05)  # fmt: skip
    client.identify(user, {"plan": "pro", "locale": "en"})
    client.page(user, name="billing", properties={"path": "/billing"})
    for _ in range(N_CLICKS):
        client.track(user, "click", {"target": "#pay", "step": "billing"})
    client.track(user, "Payment Failed", {"target": "/api/pay", "status": 502})  # the engine's event_map
    client.flush()
    client.shutdown()
    assert errors == []
    assert wait_for(lambda: user_events(sidecar.url, user) == N_CLICKS + 2)
    assert _episodes(sidecar.url, user, admin) == 1
    assert sidecar.tracker.traits(user).get("plan") == "pro"


def test_segment_retried_batch_is_not_double_counted(sidecar: Any) -> None:
    from segment.analytics import request

    user = _uid("seg-retry")
    batch = [{"type": "track", "event": "click", "userId": user, "messageId": f"m-{i}-{user}",
              "timestamp": "2024-01-01T00:00:00.000Z", "properties": {"target": f"#b{i}"}} for i in range(10)]  # fmt: skip
    for attempt in range(3):  # the SDK's own post(), as its retry loop calls it
        r = request.post(WRITE_KEY, host=sidecar.url, gzip=True, retry_count=attempt, batch=batch)
        assert r.status_code == 200 and r.json() == {"success": True}
    assert user_events(sidecar.url, user) == 10


def test_rudderstack_sdk(sidecar: Any, admin: dict[str, str]) -> None:
    from rudderstack.analytics.client import Client

    errors: list[Any] = []
    user = _uid("rudder")
    client = Client(
        WRITE_KEY, host=sidecar.url, on_error=lambda e, batch: errors.append(e), max_retries=1, upload_interval=0.05
    )  # fmt: skip  (gzip is on by default)
    assert client.gzip
    client.page(user, name="/import", properties={})
    for _ in range(N_CLICKS):
        client.track(user, "click", {"target": "#pay"})
    client.flush()
    client.shutdown()
    assert errors == []
    assert wait_for(lambda: user_events(sidecar.url, user) == N_CLICKS + 1)
    assert _episodes(sidecar.url, user, admin) == 1


def test_rudderstack_retried_batch_is_not_double_counted(sidecar: Any) -> None:
    from rudderstack.analytics import request

    user = _uid("rudder-retry")
    batch = [{"type": "track", "event": "api_error", "userId": user, "messageId": f"{user}-{i}",
              "properties": {"target": "/api/import", "status": 500}} for i in range(4)]  # fmt: skip
    for _ in range(2):
        assert request.post(WRITE_KEY, host=sidecar.url, batch=batch).status_code == 200
    assert user_events(sidecar.url, user) == 4


@pytest.mark.parametrize("mode", ["v0", "v1"])
def test_posthog_sdk(sidecar: Any, admin: dict[str, str], mode: str) -> None:
    from posthog import Posthog

    errors: list[Any] = []
    user = _uid(f"ph-{mode}")
    client = Posthog(WRITE_KEY, host=sidecar.url, on_error=lambda e, batch: errors.append(e), gzip=True,
                     max_retries=1, flush_interval=0.05, capture_mode=mode, enable_local_evaluation=False)  # fmt: skip
    client.capture("$pageview", distinct_id=user, properties={"$current_url": "https://app.example.com/billing?x=1"})
    client.capture("$rageclick", distinct_id=user, properties={"$pathname": "/billing",
                   "$elements_chain": 'button.btn-primary:attr__id="pay"attr_id="pay"nth-child="1"text="Pay"'})  # fmt: skip
    client.capture("$exception", distinct_id=user, properties={"$exception_list": [{"type": "TypeError"}]})
    client.capture("Import Failed", distinct_id=user, properties={"endpoint": "/api/import", "code": 500})
    client.flush()
    client.shutdown()
    assert errors == []
    # 1 page + 3 clicks (the $rageclick) + 1 error + 1 team event mapped by [server.events]
    assert wait_for(lambda: user_events(sidecar.url, user) == 6)
    assert _episodes(sidecar.url, user, admin) == 1
    state = httpx.get(f"{sidecar.url}/v1/users/{user}", headers=admin).json()
    assert state["step"] == "/billing" and "rage_click" in state["detectors"]


def test_posthog_retried_batch_is_not_double_counted(sidecar: Any) -> None:
    from posthog import request

    user = _uid("ph-retry")
    batch = [{"event": "click", "distinct_id": user, "uuid": str(uuid.uuid4()), "properties": {"target": "#x"},
              "timestamp": "2024-01-01T00:00:00+00:00"} for _ in range(7)]  # fmt: skip
    for _ in range(2):
        res = request.batch_post(WRITE_KEY, host=sidecar.url, gzip=True, batch=batch)
        assert res.status_code == 200
    assert user_events(sidecar.url, user) == 7


def test_sdk_events_feed_metrics(sidecar: Any) -> None:
    text = httpx.get(sidecar.url + "/metrics").text
    accepted = {line.split("{")[1].split("}")[0]: float(line.rsplit(" ", 1)[1])
                for line in text.splitlines() if line.startswith("pyfriction_events_accepted_total{")}  # fmt: skip
    assert accepted['source="segment"'] > 0 and accepted['source="posthog"'] > 0
    assert 'pyfriction_events_rejected_total{reason="duplicate"}' in text
    # no user ids in labels: every label value comes from a bounded set
    from pyfriction_server.metrics import ACCEPTED_KINDS, REJECT_REASONS, SOURCES

    bounded = {*SOURCES, *REJECT_REASONS, *ACCEPTED_KINDS, "poll", "stream", "shown", "clicked", "dismissed",
               "completed", "anchor_missing", "warning", "error", "info", "GET", "POST", "OPTIONS"}  # fmt: skip
    routes = {r.path.replace(":path}", "}") for r in sidecar.app.routes} | {"unmatched"}
    for line in text.splitlines():
        if line.startswith("#") or "{" not in line:
            continue
        for pair in line.split("{", 1)[1].rsplit("}", 1)[0].split('",'):
            name, _, value = pair.partition("=")
            value = value.strip('"')
            assert value in (routes if name == "route" else bounded) or name in ("le", "reason"), line
