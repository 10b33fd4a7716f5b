"""Fixtures of the sidecar tests (the servers themselves are in ``sidecar_util``).

``sidecar``: one in-memory sidecar per test module, served by uvicorn on a free loopback
port, with a write key, an admin key and a small guidance catalog. ``admin``: headers
carrying the admin key.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .sidecar_util import ADMIN_KEY, EVENT_RULES, GUIDANCE_CONFIG, WRITE_KEY, ThreadServer


@pytest.fixture
def admin() -> dict[str, str]:
    """Headers carrying the admin key."""
    return {"Authorization": f"Bearer {ADMIN_KEY}"}


@pytest.fixture(scope="module")
def sidecar() -> Iterator[ThreadServer]:
    """One in-memory sidecar per test module (write + admin keys, guidance catalog, event rules)."""
    with ThreadServer(
        write_keys=[WRITE_KEY], admin_keys=[ADMIN_KEY], engine_config=GUIDANCE_CONFIG, events=EVENT_RULES
    ) as s:
        yield s
