"""Acceptance 2: schemathesis against /openapi.json of a running sidecar.

Every operation of the document is exercised with generated requests (valid and invalid
ones), with an admin key, a write key, a wrong key and no key; schemathesis' built-in checks
must find no server error and no response that the document does not describe (status code,
content type, headers, body schema). Bounded: a few examples per operation.

schemathesis is used through its Python API (``get_all_operations`` and each operation's
``as_strategy`` under hypothesis' ``@given``), not its pytest plugin, whose collection hooks
break with newer pytest releases (``'Function' object has no attribute '_nodeid'``).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import ignored_auth

from .sidecar_util import ADMIN_KEY, GUIDANCE_CONFIG, ThreadServer

MAX_EXAMPLES = 12
#: The credentials each run sends, explicitly, so that schemathesis' own generated
#: credentials do not decide which branch is tested. ignored_auth is left out: it resends
#: with schemathesis' own (invalid) credentials but keeps this explicit key, which the server
#: rightly honours (test_faults covers wrong keys).
AUTHS = {
    "admin-key": {"Authorization": f"Bearer {ADMIN_KEY}"},
    "write-key": {"X-Write-Key": "wk"},
    "wrong-key": {"Authorization": "Bearer not-a-key"},
    "no-key": {},
}


@pytest.fixture(scope="module")
def api_server() -> Iterator[ThreadServer]:
    # Generous rate limits: schemathesis must see the API's answers, not 429s (rate limiting
    # has its own test).
    with ThreadServer(write_keys=["wk"], admin_keys=[ADMIN_KEY], engine_config=GUIDANCE_CONFIG,
                      rate_limit=1e6, rate_burst=1_000_000) as server:  # fmt: skip
        yield server


def _operations(url: str) -> list[Any]:
    """Every operation of the served document but the stream (it never ends by itself; checked below)."""
    schema = schemathesis.openapi.from_url(url + "/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 20
    return [op for op in operations if not op.path.endswith("/stream")]


@pytest.mark.parametrize("auth", list(AUTHS))
def test_api_conforms(api_server: ThreadServer, auth: str) -> None:
    headers = AUTHS[auth]
    for operation in _operations(api_server.url):
        cases = st.one_of(
            operation.as_strategy(GenerationMode.POSITIVE), operation.as_strategy(GenerationMode.NEGATIVE)
        )

        @given(case=cases)
        @settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))  # fmt: skip
        def conforms(case: Any) -> None:
            case.call_and_validate(headers=headers, timeout=10, excluded_checks=[ignored_auth])

        conforms()


def test_stream_operation_matches_its_document(api_server: ThreadServer) -> None:
    # Streams never end by themselves, so they are checked here rather than by generated calls
    # (whose response would have to be read to its end).
    doc = httpx.get(api_server.url + "/openapi.json").json()
    op = doc["paths"]["/v1/guidance/{user_id}/stream"]["get"]
    assert set(op["responses"]["200"]["content"]) == {"text/event-stream"}
    url = api_server.url + "/v1/guidance/u1/stream"
    with httpx.stream("GET", url, headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=5) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        assert next(r.iter_lines()).startswith("retry:")
    assert httpx.get(url, headers={"Authorization": "Bearer wrong"}).status_code == 401


def test_every_route_is_documented(api_server: ThreadServer) -> None:
    from starlette.routing import Route

    documented = httpx.get(api_server.url + "/openapi.json").json()["paths"]
    for route in api_server.app.routes:
        if isinstance(route, Route):
            assert route.path.replace(":path}", "}") in documented, route.path
