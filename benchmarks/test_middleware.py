"""Overhead of the ASGI middleware on a FastAPI endpoint, measured in process.

    python -m pytest benchmarks/test_middleware.py -p no:cacheprovider -s

The same FastAPI endpoint (``GET /items/{item_id}``, JSON, a signed-in user in
``scope["user"]``) is built twice, without and with :class:`FrictionMiddleware`, and both are
driven by an in-process ASGI call loop (no network, no server: a load generator's own noise
would swamp a few microseconds). Requests alternate between the two apps in small blocks, so
drift (CPU frequency, other processes on a shared machine) hits both alike. The figure is the
difference of the per-request medians; the acceptance bound is 5 µs.

A second figure isolates the middleware around a trivial ASGI app; a third is the cost of a
request the middleware does observe (a 422 → ``form_error`` into the tracker).
``MIDDLEWARE_BENCH_REQUESTS`` (default 40,000 per app) scales the run (about 20 s).
"""

from __future__ import annotations

import asyncio
import gc
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

import pytest

pytest.importorskip("fastapi")

from fastapi import FastAPI, HTTPException
from starlette.authentication import SimpleUser

import pyfriction
from pyfriction.integrations.asgi import FrictionMiddleware

REQUESTS = int(os.environ.get("MIDDLEWARE_BENCH_REQUESTS", "40000"))
BLOCK = 50
BOUND_US = 5.0


def make_app(with_middleware: bool) -> FastAPI:
    app = FastAPI()

    @app.get("/items/{item_id}")
    async def item(item_id: int) -> Any:
        if item_id < 0:
            raise HTTPException(422, "negative")
        return {"id": item_id}

    if with_middleware:
        app.add_middleware(FrictionMiddleware)
    return app


def scope_for(path: str) -> dict[str, Any]:
    return {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
        "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
        "headers": [(b"host", b"bench")], "client": ("127.0.0.1", 5000), "server": ("bench", 80),
        "user": SimpleUser("u42"),
    }  # fmt: skip


async def _receive() -> dict[str, Any]:
    return {"type": "http.request", "body": b"", "more_body": False}


async def _send(message: Any) -> None:
    pass


async def _time_block(app: Any, path: str, n: int, out: list[float]) -> None:
    perf = time.perf_counter_ns
    for _ in range(n):
        scope = scope_for(path)
        t0 = perf()
        await app(scope, _receive, _send)
        out.append((perf() - t0) / 1000.0)


async def _compare(a: Any, b: Any, path: str, requests: int) -> tuple[list[float], list[float]]:
    """Per-request µs of ``a`` and ``b``, alternating blocks (after a warm-up of both)."""
    ta: list[float] = []
    tb: list[float] = []
    await _time_block(a, path, 500, [])
    await _time_block(b, path, 500, [])
    gc.collect()
    gc.disable()
    try:
        for _ in range(requests // BLOCK):
            await _time_block(a, path, BLOCK, ta)
            await _time_block(b, path, BLOCK, tb)
    finally:
        gc.enable()
    return ta, tb


def _run(coro_fn: Callable[[], Any]) -> Any:
    return asyncio.run(coro_fn())


@pytest.fixture
def sdk() -> Any:
    tracker = pyfriction.init(default_integrations=False)
    yield tracker
    pyfriction.init(default_integrations=False)


def _report(capsys: Any, lines: list[str]) -> None:
    with capsys.disabled():
        print()
        for line in lines:
            print("  " + line)


def _paired(a: Any, b: Any, path: str, requests: int, rounds: int = 8) -> tuple[float, float, float, list[float]]:
    """Median µs of ``a`` and of ``b`` over all requests, and the added latency: the median
    over ``rounds`` of (median of ``b`` - median of ``a``) within the round, which a load
    change during the run (a shared machine) shifts less than one global difference."""
    all_a: list[float] = []
    all_b: list[float] = []
    diffs: list[float] = []
    for _ in range(rounds):
        ta, tb = _run(lambda: _compare(a, b, path, requests // rounds))
        all_a += ta
        all_b += tb
        diffs.append(statistics.median(tb) - statistics.median(ta))
    return statistics.median(all_a), statistics.median(all_b), statistics.median(diffs), all_a + all_b


def test_middleware_overhead_on_fastapi(sdk: Any, capsys: Any) -> None:
    without, with_mw = make_app(False), make_app(True)
    m_without, m_with, added, _ = _paired(without, with_mw, "/items/7", REQUESTS)

    # the middleware alone, around an ASGI app that answers at once
    async def bare(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": b"{}"})

    b_without, b_with, bare_added, _ = _paired(bare, FrictionMiddleware(bare), "/items/7", REQUESTS)

    # a request the middleware observes: 422 -> form_error into the tracker
    e_without, e_with, observed_added, _ = _paired(without, with_mw, "/items/-1", REQUESTS // 4, rounds=4)

    _report(capsys, [
        f"FastAPI GET /items/{{id}} (200, signed-in user), {REQUESTS:,} requests each, engine {sdk.engine}:",
        f"  median without middleware {m_without:7.2f} µs, with {m_with:7.2f} µs",
        f"  added at the median {added:+.2f} µs (median of 8 paired rounds; bound {BOUND_US} µs)",
        f"middleware alone around a bare ASGI app: {b_without:.2f} -> {b_with:.2f} µs, added {bare_added:+.2f} µs",
        f"observed request (422 -> form_error into the tracker): {e_without:.2f} -> {e_with:.2f} µs, added {observed_added:+.2f} µs",
    ])  # fmt: skip
    assert added <= BOUND_US, f"the middleware adds {added:.2f} µs per request at the median (bound {BOUND_US} µs)"
