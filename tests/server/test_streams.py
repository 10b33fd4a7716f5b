"""Acceptance 4 (part): 10,000 idle guidance streams held open while ingest continues.

The sidecar runs in its own process (each side needs 10,000 sockets); the test process raises
its open-files limit and holds the streams with plain asyncio sockets on loopback.
"""

from __future__ import annotations

import asyncio
import json
import resource
import statistics
import time
from typing import Any

import httpx
import pytest

from .sidecar_util import GUIDANCE_CONFIG, HOST, WRITE_KEY, ProcessServer

STREAMS = 10_000
WAVE = 500


def _raise_fd_limit(need: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need:
        if hard != resource.RLIM_INFINITY and hard < need:
            pytest.skip(f"open-files hard limit {hard} < {need}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (need if hard == resource.RLIM_INFINITY else hard, hard))


async def _open(port: int, user: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection(HOST, port)
    writer.write(f"GET /v1/guidance/{user}/stream?key={WRITE_KEY} HTTP/1.1\r\nHost: {HOST}\r\n"
                 "Accept: text/event-stream\r\n\r\n".encode())  # fmt: skip
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 60)
    assert head.startswith(b"HTTP/1.1 200"), head[:100]
    await asyncio.wait_for(reader.readuntil(b"\n\n"), 60)  # the stream's preamble
    return reader, writer


def _stream_count(url: str) -> int:
    for line in httpx.get(url + "/metrics", timeout=30).text.splitlines():
        if line.startswith("pyfriction_guidance_streams "):
            return int(float(line.split()[1]))
    return -1


async def _hold_and_ingest(server: ProcessServer) -> dict[str, Any]:
    port = server.port
    conns: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    started = time.monotonic()
    for wave in range(0, STREAMS, WAVE):
        conns += await asyncio.gather(*(_open(port, f"idle-{i}") for i in range(wave, min(STREAMS, wave + WAVE))))
    opened = time.monotonic() - started
    held = await asyncio.to_thread(_stream_count, server.url)

    # Ingest goes on while they are held: 200 batches of 100 events, latency measured.
    latencies = []
    async with httpx.AsyncClient(base_url=server.url, headers={"X-Write-Key": WRITE_KEY}, timeout=30) as client:
        for n in range(200):
            events = [{"id": f"l{n}-{i}", "user_id": f"live-{i % 20}", "type": "click", "target": f"#b{i % 5}"}
                      for i in range(100)]  # fmt: skip
            t0 = time.perf_counter()
            r = await client.post("/v1/events", json=events)
            latencies.append(time.perf_counter() - t0)
            assert r.status_code == 200 and r.json()["accepted"] == 100
        # and one of the held streams gets guidance pushed the moment it is picked
        now = time.time()
        rage = [{"user_id": "idle-7", "type": "click", "target": "#pay", "ts": now + i * 0.1} for i in range(4)]
        assert (await client.post("/v1/events", json={"events": rage, "sent_at": now + 0.4})).status_code == 200
    reader = conns[7][0]
    pushed = b""
    while b"event: guidance" not in pushed:
        pushed += await asyncio.wait_for(reader.readuntil(b"\n\n"), 10)
    for _, writer in conns:
        writer.close()
    return {"opened_s": opened, "held": held, "latencies": latencies, "pushed": pushed}


def test_ten_thousand_idle_streams_while_ingest_continues(tmp_path: Any) -> None:
    _raise_fd_limit(STREAMS + 2_000)
    config = tmp_path / "c.toml"
    # 10,000 streams from one address: past the default per-client rate (a tenth of the key's)
    config.write_text(
        "[server]\nclient_rate_limit = 1e6\nclient_rate_burst = 1000000\n" + json_to_toml(GUIDANCE_CONFIG)
    )
    with ProcessServer(str(tmp_path / "state"), config=str(config)) as server:
        result = asyncio.run(_hold_and_ingest(server))
        assert result["held"] == STREAMS
        lat = sorted(result["latencies"])
        p50, p99 = statistics.median(lat), lat[int(len(lat) * 0.99) - 1]
        print(f"\n{STREAMS} streams opened in {result['opened_s']:.1f} s; ingest meanwhile: "
              f"p50 {p50 * 1e3:.1f} ms, p99 {p99 * 1e3:.1f} ms per 100-event batch")  # fmt: skip
        data = [line for line in result["pushed"].split(b"\n") if line.startswith(b"data: ")]
        assert json.loads(data[-1][6:])["id"] == "pay-help"
        deadline = time.monotonic() + 30
        while _stream_count(server.url) > 0 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _stream_count(server.url) == 0  # closed streams are released


def json_to_toml(doc: dict[str, Any]) -> str:
    """The tests' guidance config as TOML (just what that dict needs: tables, arrays of
    tables, strings, numbers)."""
    lines: list[str] = []

    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        if isinstance(v, str):
            return json.dumps(v)
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        if isinstance(v, dict):
            return "{" + ", ".join(f"{json.dumps(k)} = {value(x)}" for k, x in v.items()) + "}"
        raise TypeError(type(v))

    def table(prefix: str, d: dict[str, Any]) -> None:
        scalars = {
            k: v
            for k, v in d.items()
            if not isinstance(v, dict) and not (isinstance(v, list) and v and isinstance(v[0], dict))
        }
        if prefix:
            lines.append(f"[{prefix}]")
        for k, v in scalars.items():
            lines.append(f"{json.dumps(k)} = {value(v)}")
        for k, v in d.items():
            key = f"{prefix}.{json.dumps(k)}" if prefix else json.dumps(k)
            if isinstance(v, dict):
                table(key, v)
            elif isinstance(v, list) and v and isinstance(v[0], dict):
                for item in v:
                    lines.append(f"[[{key}]]")
                    for ik, iv in item.items():
                        lines.append(f"{json.dumps(ik)} = {value(iv)}")

    table("", doc)
    return "\n".join(lines) + "\n"
