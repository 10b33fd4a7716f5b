"""Acceptance 3: headless Chromium loads a page with pyfriction.js, rage-clicks a dead
button, and the guidance tooltip appears next to it (screenshot in ``.artifacts/``). The
guidance UI itself is tested in detail by ``test_browser_guidance.py``.

Debian's ``/usr/bin/chromium`` driven by Playwright (``executable_path``; Playwright's own
browser download is not used). Without Chromium or Playwright the tests skip, and FAIL when
the environment variable ``CI`` is set.
"""

from __future__ import annotations

import http.server
import os
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from .sidecar_util import ADMIN_KEY, GUIDANCE_CONFIG, HOST, ROOT, WRITE_KEY, ThreadServer, free_port, wait_for

CHROMIUM = os.environ.get("PYFRICTION_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--no-first-run"]  # fmt: skip
ARTIFACTS = os.path.join(ROOT, ".artifacts")
USER = "browser-user"

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Checkout</title>
<style>body {{ font: 16px system-ui, sans-serif; margin: 40px; }} button {{ font-size: 16px; padding: 8px 20px; }}</style>
</head><body>
<h1>Checkout</h1>
<p>Total: 42.00 EUR</p>
<button id="pay">Pay now</button>
<div data-pyfriction-ignore><button id="stepper">+1 seat</button></div>
<button id="go" onclick="history.pushState({{}}, '', '/checkout/confirm')">Continue</button>
<script src="{sidecar}/v1/pyfriction.js" data-write-key="{key}" data-user-id="{user}" data-flush-ms="150"></script>
</body></html>
"""


def _require_browser() -> Any:
    problem = None
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as exc:
        problem = f"playwright is not installed ({exc})"
    if problem is None and not os.access(CHROMIUM, os.X_OK):
        problem = f"{CHROMIUM} not found (apt-get install chromium)"
    if problem is not None:
        if os.environ.get("CI"):
            pytest.fail(f"browser test cannot run under CI: {problem}", pytrace=False)
        pytest.skip(problem)
    return sync_playwright


@pytest.fixture(scope="module")
def site() -> Iterator[tuple[str, ThreadServer]]:
    """A sidecar plus a page server on another loopback port (a cross-origin set-up, as in
    production: the sidecar allowlists the page's origin)."""
    page_port = free_port()
    origin = f"http://{HOST}:{page_port}"
    with ThreadServer(write_keys=[WRITE_KEY], admin_keys=[ADMIN_KEY], engine_config=GUIDANCE_CONFIG,
                      cors_origins=[origin]) as sidecar:  # fmt: skip
        html = PAGE.format(sidecar=sidecar.url, key=WRITE_KEY, user=USER).encode()

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200 if not self.path.startswith("/api/") else 500)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(html)))
                self.end_headers()
                self.wfile.write(html)

            def log_message(self, *args: Any) -> None:
                pass

        httpd = http.server.ThreadingHTTPServer((HOST, page_port), Handler)
        thread = threading.Thread(target=httpd.serve_forever, daemon=True)
        thread.start()
        try:
            yield origin, sidecar
        finally:
            httpd.shutdown()


def _state(sidecar: ThreadServer) -> Any:
    r = httpx.get(f"{sidecar.url}/v1/users/{USER}", headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    return r.json() if r.status_code == 200 else None


def test_rage_click_on_dead_button_shows_tooltip_next_to_it(site: tuple[str, ThreadServer]) -> None:
    sync_playwright = _require_browser()
    origin, sidecar = site
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 900, "height": 600})
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(origin + "/checkout")
            page.wait_for_function("window.pyfriction && window.pyfriction.version")
            # The ignored stepper is clicked a lot: nothing is tracked for it.
            for _ in range(5):
                page.click("#stepper", delay=10)
            # A failed request the user saw.
            page.evaluate("fetch('/api/save').catch(() => {})")
            # Rage-click the dead "Pay now" button.
            for _ in range(4):
                page.click("#pay", delay=20)
            tooltip = page.wait_for_selector('[data-pyfriction-ui="tooltip"]', state="visible", timeout=15_000)
            assert tooltip is not None
            os.makedirs(ARTIFACTS, exist_ok=True)
            page.screenshot(path=os.path.join(ARTIFACTS, "pyfriction-tooltip.png"))

            box, pay = tooltip.bounding_box(), page.query_selector("#pay").bounding_box()
            assert box is not None and pay is not None
            # next to the button (the free side: right of it), never over it
            assert 0 <= box["x"] - (pay["x"] + pay["width"]) <= 20, (box, pay)
            assert box["y"] <= pay["y"] + pay["height"] and box["y"] + box["height"] >= pay["y"], (box, pay)
            assert tooltip.get_attribute("role") == "dialog"
            title_id = tooltip.get_attribute("aria-labelledby")
            assert title_id and page.text_content(f"#{title_id}") == "Payment is on its way"
            assert "Pay" in (tooltip.inner_html()) and "<strong>" in tooltip.inner_html()  # safe Markdown
            assert title_id in (page.get_attribute("#pay", "aria-describedby") or "").split()
            assert page.query_selector('[data-pyfriction-ui] button[aria-label="Dismiss"]') is not None

            # Escape with focus in it closes it and reports "dismissed" (after "shown").
            page.focus('[data-pyfriction-ui] button[aria-label="Dismiss"]')
            page.keyboard.press("Escape")
            page.wait_for_selector('[data-pyfriction-ui="tooltip"]', state="detached", timeout=5_000)
            assert page.evaluate("document.activeElement.id") == "pay"  # focus back on the anchor
            assert page.get_attribute("#pay", "aria-describedby") is None  # restored exactly

            def feedback() -> bool:
                text = httpx.get(sidecar.url + "/metrics").text
                return ('guidance_feedback_total{outcome="shown"} 1' in text
                        and 'guidance_feedback_total{outcome="dismissed"} 1' in text)  # fmt: skip

            wait_for(feedback, timeout=10)

            # History-API navigation is a page view.
            page.click("#go")
            page.evaluate("window.pyfriction.flush()")
            wait_for(lambda: (_state(sidecar) or {}).get("step") == "/checkout/confirm", timeout=10)
            assert errors == []
        finally:
            browser.close()

    state = _state(sidecar)
    assert state is not None and state["episodes"] == 1
    assert "rage_click" in state["detectors"]
    # events: 2 page views, 4 clicks on #pay (+ dead clicks), 1 api_error, 1 click on #go;
    # none for the ignored stepper
    assert sidecar.tracker.stats().events >= 8
    assert os.path.getsize(os.path.join(ARTIFACTS, "pyfriction-tooltip.png")) > 1000


def test_browser_events_are_tracked_with_stable_targets(site: tuple[str, ThreadServer]) -> None:
    sync_playwright = _require_browser()
    origin, sidecar = site
    seen: list[dict[str, Any]] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            page = browser.new_page()

            def capture(route: Any) -> None:
                seen.append(route.request.post_data_json)
                route.continue_()

            page.route("**/v1/events", capture)
            page.goto(origin + "/other")
            page.wait_for_function("window.pyfriction && window.pyfriction.version")
            page.click("#stepper")
            page.evaluate("fetch('/api/fail')")
            time.sleep(0.5)
            page.click("#pay")  # nothing happens after it: a dead click once the window (1 s) passes
            time.sleep(1.5)
            page.evaluate("window.pyfriction.flush()")
            wait_for(lambda: any(e["type"] == "api_error" for b in seen for e in b["events"]), timeout=10)
        finally:
            browser.close()
    events = [e for b in seen for e in b["events"]]
    assert all(b["lib"] == "pyfriction.js" and b["writeKey"] == WRITE_KEY for b in seen)
    kinds = {(e["type"], e.get("target")) for e in events}
    assert ("click", "#pay") in kinds and ("dead_click", "#pay") in kinds
    assert ("api_error", "GET /api/fail") in kinds
    assert not any(e.get("target") == "#stepper" for e in events)  # data-pyfriction-ignore
    api = next(e for e in events if e["type"] == "api_error")
    assert api["properties"]["status"] == 500
    assert all(e["id"] and e["user_id"] == USER and e["step"] for e in events)
