"""pyfriction.js on a DOM-heavy page: how much slower the page's own work gets.

    python benchmarks/browser_overhead.py [--rounds 100] [--repeat 5] [--script PATH] [--json OUT]

Debian's Chromium (Playwright, ``executable_path=/usr/bin/chromium``) loads
``benchmarks/browser/dom_heavy.html`` (a 1,500-row table updated in 100 yielding tasks, with a
click every 10th task) with and without the script, alternately, in fresh pages; the page's own
``performance.now()`` times its workload. The script talks to a real sidecar (in-process,
uvicorn in a thread). Reported: the median workload time of each, and the overhead
(median with / median without - 1). ``--script`` measures another build (e.g. the previous
version, ``git show HEAD~1:server/pyfriction_server/static/pyfriction.js > old.js``).
The acceptance bound of issue 19 is an overhead <= 5 %.
"""

from __future__ import annotations

import argparse
import http.server
import json
import os
import socket
import statistics
import sys
import threading
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
PAGE = os.path.join(HERE, "browser", "dom_heavy.html")
SCRIPT = os.path.join(ROOT, "server", "pyfriction_server", "static", "pyfriction.js")
CHROMIUM = os.environ.get("PYFRICTION_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--no-first-run"]  # fmt: skip


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _sidecar() -> tuple[str, Any]:
    from pyfriction_server import Server, Settings, create_app, server_config

    port = _free_port()
    settings = Settings(host="127.0.0.1", port=port, state_dir="", write_keys=["wk_bench"], cors_origins=["*"])
    server = Server(server_config(create_app(settings), settings, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    return f"http://127.0.0.1:{port}", server


def _pages(sidecar: str, script: bytes) -> tuple[str, http.server.ThreadingHTTPServer]:
    with open(PAGE, encoding="utf-8") as f:
        html = f.read()
    tag = f'<script src="/pyfriction.js" data-host="{sidecar}" data-write-key="wk_bench" data-user-id="bench"></script>'
    with_script = html.replace("{{SCRIPT}}", tag).encode()
    without = html.replace("{{SCRIPT}}", "").encode()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body, ctype = {"/with": (with_script, "text/html"), "/without": (without, "text/html"),
                           "/pyfriction.js": (script, "text/javascript")}.get(self.path, (b"", "text/plain"))  # fmt: skip
            self.send_response(200 if body else 404)
            self.send_header("Content-Type", ctype + "; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    port = _free_port()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{port}", httpd


def measure(rounds: int, repeat: int, script_path: str) -> dict[str, Any]:
    """Median workload milliseconds with and without the script, and the overhead."""
    from playwright.sync_api import sync_playwright

    with open(script_path, "rb") as f:
        script = f.read()
    sidecar, server = _sidecar()
    origin, httpd = _pages(sidecar, script)
    times: dict[str, list[float]] = {"without": [], "with": []}
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
            try:
                for i in range(repeat + 1):  # the first pair warms the browser up: not counted
                    for variant in ("without", "with") if i % 2 else ("with", "without"):
                        page = browser.new_page()
                        page.goto(f"{origin}/{variant}")
                        if variant == "with":
                            page.wait_for_function("window.pyfriction && window.pyfriction.version")
                        ms = page.evaluate("r => window.runWorkload(r)", rounds)
                        page.close()
                        if i:
                            times[variant].append(float(ms))
            finally:
                browser.close()
    finally:
        httpd.shutdown()
        server.should_exit = True
    base, withs = statistics.median(times["without"]), statistics.median(times["with"])
    return {"rounds": rounds, "repeat": repeat, "script": os.path.relpath(script_path, ROOT),
            "script_bytes": len(script), "median_ms_without": round(base, 1), "median_ms_with": round(withs, 1),
            "overhead": round(withs / base - 1.0, 4), "ms_without": times["without"], "ms_with": times["with"]}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--script", default=SCRIPT)
    parser.add_argument("--json", dest="json_out")
    args = parser.parse_args(argv)
    sys.path.insert(0, os.path.join(ROOT, "server"))
    result = measure(args.rounds, args.repeat, args.script)
    print(f"{result['script']} ({result['script_bytes']:,} bytes): workload median "
          f"{result['median_ms_without']} ms without, {result['median_ms_with']} ms with -> "
          f"overhead {result['overhead'] * 100:+.1f}% (bound: +5%)")  # fmt: skip
    if args.json_out:
        with open(args.json_out, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
