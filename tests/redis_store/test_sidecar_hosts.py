"""Several sidecar hosts on one Redis store (``pyfriction-server --store redis+cluster://...``):
real sidecar processes, each with its own state directory (its journal), behind no load
balancer but the test, which sends a user's events to either host."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from server.sidecar_util import ADMIN_KEY, WRITE_KEY, ProcessServer, wait_for

from pyfriction.recent import fingerprint
from pyfriction.tracker import compiled_available
from pyfriction_server.push import BUCKETS

AUTH = {"X-Write-Key": WRITE_KEY}
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
CONFIG = """\
capacity = 20000
[server]
dedupe_size = 100000
sse_keepalive = 60.0
[scoring]
cooldown = 0.0
[guidance]
rules = [{guidance = "pay-help", target = "#pay"}]
caps = {per_day = 100, item_cooldown = 0.0}
holdout = {share = 0.0}
[[guidance.items]]
id = "pay-help"
kind = "tooltip"
anchor = "#pay"
title = "Payment is on its way"
"""


def _listeners(uri: str, prefix: str, user: str) -> int:
    """Subscribers of the user's wake-up channel, summed over every node of ``uri``."""
    channel = f"{prefix}:{{g{fingerprint(user) % BUCKETS}}}"
    total = 0
    for hostport in uri.split("://", 1)[1].split("/", 1)[0].split(","):
        host, _, port = hostport.rpartition(":")
        with redis.Redis(host=host, port=int(port)) as r:
            total += int(r.execute_command("PUBSUB", "SHARDNUMSUB", channel)[1])
    return total


def _host(tmp_path: Path, name: str, uri: str, prefix: str) -> ProcessServer:
    config = tmp_path / "sidecar.toml"
    config.write_text(CONFIG)
    # The prefix keeps this test's keys apart on the module's shared servers.
    store = f"{uri}{'&' if '?' in uri else '?'}prefix={prefix}"
    return ProcessServer(str(tmp_path / name), "--store", store, config=str(config), workers=1)


@pytest.mark.skipif(not compiled_available(), reason="the sidecar's default engine is the compiled one")
def test_two_sidecar_hosts_share_users_and_guidance(tmp_path: Path, redis_target: tuple[str, str]) -> None:
    prefix = "s" + uuid.uuid4().hex[:8]
    hosts = [_host(tmp_path, f"host{i}", redis_target[1], prefix).start() for i in range(2)]
    try:
        user = "u-" + prefix
        now = time.time()
        sent = 0
        for i in range(12):  # page views alternating between the hosts
            event = {"id": f"e{i}", "user_id": user, "type": "page", "step": f"s{i % 3}", "ts": now + i}
            r = httpx.post(hosts[i % 2].url + "/v1/events", json=[event], headers=AUTH, timeout=30)
            assert r.status_code == 200 and r.json()["accepted"] == 1
            sent += 1
        for host in hosts:
            assert httpx.get(f"{host.url}/v1/users/{user}", headers=ADMIN, timeout=30).json()["events"] == sent
        # An episode scored on host 0 queues guidance that host 1 delivers, once.
        clicks = [{"id": f"c{i}", "user_id": user, "type": "click", "target": "#pay", "ts": now + 20 + i * 0.1}
                  for i in range(4)]  # fmt: skip
        r = httpx.post(hosts[0].url + "/v1/events", json=clicks, headers=AUTH, timeout=30)
        assert r.status_code == 200 and r.json()["accepted"] == 4
        got: list[Any] = []

        def delivered() -> bool:
            doc = httpx.get(f"{hosts[1].url}/v1/guidance/{user}", headers=AUTH, timeout=30).json()
            got.extend(doc["guidance"])
            return bool(got)

        wait_for(delivered, timeout=30, interval=0.05)
        assert [g["id"] for g in got] == ["pay-help"]
        assert httpx.get(f"{hosts[0].url}/v1/guidance/{user}", headers=AUTH, timeout=30).json()["guidance"] == []
        # The store's counts are exported (Prometheus text; 0 here: no conflict, replay or cap).
        text = httpx.get(hosts[0].url + "/metrics", timeout=30).text
        assert "pyfriction_store_conflicts 0" in text and "pyfriction_store_capped 0" in text
        for host in hosts:
            assert host.stop() == 0
    finally:
        for host in hosts:
            if host.proc is not None and host.proc.poll() is None:
                host.kill()


@pytest.mark.skipif(not compiled_available(), reason="the sidecar's default engine is the compiled one")
def test_a_stream_on_one_host_hears_guidance_queued_on_another(tmp_path: Path, redis_target: tuple[str, str]) -> None:
    """Pushed by sharded pub/sub: the item comes before the stream's first keep-alive (60 s
    here), when it would otherwise read the store again."""
    prefix = "p" + uuid.uuid4().hex[:8]
    hosts = [_host(tmp_path, f"host{i}", redis_target[1], prefix).start() for i in range(2)]
    try:
        user = "u-" + prefix
        with httpx.stream("GET", f"{hosts[1].url}/v1/guidance/{user}/stream", params={"key": WRITE_KEY},
                          timeout=60) as r:  # fmt: skip
            lines = r.iter_lines()
            assert next(lines) == "retry: 3000"
            next(lines)  # the stream's comment line
            wait_for(lambda: _listeners(redis_target[1], prefix, user) >= 2, timeout=30)  # both hosts listen
            now = time.time()
            clicks = [{"id": f"c{i}", "user_id": user, "type": "click", "target": "#pay", "ts": now + i * 0.1}
                      for i in range(4)]  # fmt: skip
            r0 = httpx.post(hosts[0].url + "/v1/events", json=clicks, headers=AUTH, timeout=30)
            assert r0.status_code == 200 and r0.json()["accepted"] == 4
            event = None
            got: list[str] = []
            keepalives = 0
            for line in lines:
                keepalives += line == ": keep-alive"
                if line.startswith("event: "):
                    event = line[7:]
                elif line.startswith("data: ") and event == "guidance":
                    got.append(json.loads(line[6:])["id"])
                    break
            assert got == ["pay-help"]
            assert keepalives == 0  # pushed, not read again at a keep-alive
        for host in hosts:
            assert host.stop() == 0
    finally:
        for host in hosts:
            if host.proc is not None and host.proc.poll() is None:
                host.kill()
