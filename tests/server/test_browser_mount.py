"""pyfriction.js in-process (``data-mount``, the integrations' guidance endpoints), in Debian's
Chromium: their poll hands an item out once, so the script keeps an item that waits for its page
across page loads (the sidecar re-sends such an item to every new stream instead: see
test_guidance_delivery.py). The host app is played by Playwright's routes."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

import pytest

from .browser_util import iter_browser, require_browser

SCRIPT = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                      "server", "pyfriction_server", "static", "pyfriction.js")  # fmt: skip
ORIGIN = "http://app.test"
ITEM = {"id": "dates", "kind": "tooltip", "anchor": "#date", "step": "/import", "title": "Dates look like 2024-03-31",
        "created_at": 1.0, "expires_at": 4e9}  # fmt: skip
PAGE = """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{path}</title></head><body><main>
<h1>{path}</h1><label for="date">Date</label><input id="date"></main>
<script src="/pyfriction.js" data-mount="/_pf" data-poll-ms="100"></script></body></html>"""


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    yield from iter_browser(require_browser())


def test_an_item_polled_on_another_page_shows_after_a_page_load(browser: Any) -> None:
    with open(SCRIPT, "rb") as f:
        script = f.read()
    served: list[str] = []
    acks: list[tuple[str, str]] = []

    def app(route: Any) -> None:
        path = route.request.url[len(ORIGIN) :].split("?")[0]
        if path == "/pyfriction.js":
            route.fulfill(body=script, content_type="application/javascript")
        elif path == "/_pf/guidance":  # handed out once, like Tracker.pending
            items = [] if served else [ITEM]
            served.extend(g["id"] for g in items)
            route.fulfill(json={"guidance": items})
        elif path == "/_pf/ack":
            doc = json.loads(route.request.post_data or "{}")
            acks.append((doc["id"], doc["outcome"]))
            route.fulfill(json={"ok": True})
        elif path == "/_pf/events":
            route.fulfill(json={"accepted": 0})
        else:
            route.fulfill(body=PAGE.format(path=path), content_type="text/html")

    ctx = browser.new_context()
    try:
        page = ctx.new_page()
        page.route(ORIGIN + "/**", app)
        page.goto(ORIGIN + "/billing")
        for _ in range(100):  # the poll reads the item on /billing: not its page, nothing shows
            if served:
                break
            page.wait_for_timeout(50)
        assert served == ["dates"]
        page.wait_for_timeout(300)
        assert page.locator("[data-pyfriction-ui]").count() == 0
        page.goto(ORIGIN + "/import")  # a full page load: the item waited in localStorage
        page.wait_for_selector('[data-pyfriction-ui="tooltip"][data-guidance-id="dates"]', state="visible")
        for _ in range(100):
            if ("dates", "shown") in acks:
                break
            page.wait_for_timeout(50)
        assert ("dates", "shown") in acks
        page.goto(ORIGIN + "/import")  # shown: not again
        page.wait_for_timeout(500)
        assert page.locator("[data-pyfriction-ui]").count() == 0
    finally:
        ctx.close()
