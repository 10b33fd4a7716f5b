"""Shared by the browser tests: Debian's Chromium through Playwright, the test SaaS pages of
``tests/server/pages/`` served from their own origin, axe-core from ``browser/node_modules``,
and screenshots kept in ``.artifacts/screenshots/`` (a CI artifact).

Without Chromium, Playwright or the npm packages (``.ci/browser.sh``) the tests skip, and FAIL
when the environment variable ``CI`` is set.
"""

from __future__ import annotations

import http.server
import os
import threading
import tomllib
from collections.abc import Iterator
from typing import Any, NoReturn
from urllib.parse import parse_qs, urlsplit

import pytest

from .sidecar_util import HOST, ROOT, WRITE_KEY, free_port

CHROMIUM = os.environ.get("PYFRICTION_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--no-first-run"]  # fmt: skip
SCREENSHOTS = os.path.join(ROOT, ".artifacts", "screenshots")
PAGES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "pages")
BROWSER_DIR = os.path.join(ROOT, "browser")
AXE = os.path.join(BROWSER_DIR, "node_modules", "axe-core", "axe.min.js")
BUNDLED = os.path.join(ROOT, "pyfriction", "data", "browser.toml")


def missing(problem: str) -> NoReturn:
    """Skip for a missing tool; fail under CI, where .ci/run installs everything."""
    if os.environ.get("CI"):
        pytest.fail(f"browser test cannot run under CI: {problem}", pytrace=False)
    pytest.skip(problem)


def require_browser() -> Any:
    """Playwright's ``sync_playwright`` (skips or fails when Chromium or Playwright is missing)."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as exc:
        missing(f"playwright is not installed ({exc})")
    if not os.access(CHROMIUM, os.X_OK):
        missing(f"{CHROMIUM} not found (apt-get install chromium)")
    if not os.path.exists(AXE):
        missing(f"{AXE} not found (bash .ci/browser.sh)")
    return sync_playwright


def bundled_config(**guidance: Any) -> dict[str, Any]:
    """The bundled browser config as a dict, with ``guidance`` entries overridden (tests:
    no holdout, no caps) and extra items/rules appended."""
    with open(BUNDLED, "rb") as f:
        cfg = tomllib.load(f)
    g = cfg["guidance"]
    g["holdout"] = {"share": 0.0}
    g["caps"] = {"per_day": 1000, "item_cooldown": 0.0, "dismiss_for": 1.0}
    g["items"] += guidance.pop("items", [])
    g["rules"] = guidance.pop("rules", []) + g["rules"]
    g.update(guidance)
    return cfg


def script_tag(sidecar: str, params: dict[str, str]) -> str:
    """The host page's ``<script>`` tag; query parameters of the page URL become data-attributes."""
    attrs = {"write-key": WRITE_KEY, "user-id": params.get("user", "browser-user"), "flush-ms": "100",
             "retry-ms": params.get("retry", "150")}  # fmt: skip
    for name in ("banner-offset", "banner-container", "theme", "locale", "dead-click-ms"):
        if name in params:
            attrs[name] = params[name]
    data = " ".join(f'data-{k}="{v}"' for k, v in attrs.items())
    return f'<script src="{sidecar}/v1/pyfriction.js" {data}></script>'


class PageServer:
    """The test SaaS app on its own loopback origin: ``/import``, ``/billing`` (pages/), its CSS
    and JS, and ``POST /api/imports`` (422, or 200 with ``?ok=1``). ``?csp=1`` serves the page
    with ``Content-Security-Policy: style-src 'self'`` (plus script/connect for the sidecar)."""

    def __init__(self, sidecar_url: str) -> None:
        self.port = free_port()
        self.origin = f"http://{HOST}:{self.port}"
        sidecar = sidecar_url

        class Handler(http.server.BaseHTTPRequestHandler):
            def _send(self, status: int, body: bytes, ctype: str, extra: dict[str, str] | None = None) -> None:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                for k, v in (extra or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                url = urlsplit(self.path)
                params = {k: v[0] for k, v in parse_qs(url.query).items()}
                name = url.path.strip("/").split("/")[0] or "import"
                if name in ("app.css", "app.js"):
                    with open(os.path.join(PAGES, name), "rb") as f:
                        ctype = "text/css" if name.endswith(".css") else "text/javascript"
                        self._send(200, f.read(), ctype + "; charset=utf-8")
                    return
                path = os.path.join(PAGES, name + ".html")
                if not os.path.exists(path):
                    self._send(404, b"not found", "text/plain")
                    return
                with open(path, encoding="utf-8") as f:
                    html = f.read()
                rtl = params.get("dir") == "rtl"
                html = (html.replace("{{SCRIPT}}", script_tag(sidecar, params))
                        .replace("{{LANG}}", "ar" if rtl else "en").replace("{{DIR}}", "rtl" if rtl else "ltr")
                        .replace("{{BODYCLASS}}", params.get("bodyclass", "")))  # fmt: skip
                extra = {}
                if params.get("csp"):
                    extra["Content-Security-Policy"] = (
                        f"default-src 'self'; style-src 'self'; script-src 'self' {sidecar}; connect-src 'self' {sidecar}"
                    )
                self._send(200, html.encode(), "text/html; charset=utf-8", extra)

            def do_POST(self) -> None:
                url = urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                ok = "ok=1" in (url.query or "")
                body = b'{"imported": 12}' if ok else b'{"error": "invalid date"}'
                self._send(200 if ok else 422, body, "application/json")

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer((HOST, self.port), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> PageServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def axe_violations(page: Any) -> list[dict[str, Any]]:
    """axe-core's violations on the page as it is now (all default rules)."""
    if not page.evaluate("!!window.axe"):
        with open(AXE, encoding="utf-8") as f:
            page.evaluate(f.read())  # evaluated, not a <script>: works under the pages' CSP too
    result = page.evaluate("axe.run(document, {resultTypes: ['violations']}).then(r => r.violations)")
    return [{"id": v["id"], "nodes": [n["target"] for n in v["nodes"]]} for v in result]


def screenshot(page: Any, name: str) -> str:
    """Save a screenshot into .artifacts/screenshots/ and return its path."""
    os.makedirs(SCREENSHOTS, exist_ok=True)
    path = os.path.join(SCREENSHOTS, name)
    page.screenshot(path=path)
    return path


def rect(page: Any, selector: str, text: bool = False) -> dict[str, float]:
    """The viewport rectangle of the element ``selector`` (``>>>`` pierces a shadow root);
    ``text``: of its contents (a hint's words, not the full width of its block)."""
    r = page.evaluate(
        """([sel, text]) => { let el = document; for (const part of sel.split('>>>')) {
                      el = (el.shadowRoot || el).querySelector(part.trim()); }
                    let r = el.getBoundingClientRect();
                    if (text) { const range = document.createRange(); range.selectNodeContents(el);
                                r = range.getBoundingClientRect(); }
                    return {left: r.left, top: r.top, right: r.right, bottom: r.bottom}; }""",
        [selector, text],
    )
    return dict(r)


def overlaps(a: dict[str, float], b: dict[str, float]) -> bool:
    return min(a["right"], b["right"]) > max(a["left"], b["left"]) and min(a["bottom"], b["bottom"]) > max(
        a["top"], b["top"]
    )


def iter_browser(sync_playwright: Any) -> Iterator[Any]:
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()
