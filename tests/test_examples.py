"""The examples run as tests: each app's flows with its framework's test client, and the
FastAPI example in headless Chromium (a struggling user sees guidance before the contact
page; a smooth user never sees any). The screenshot goes to ``.artifacts/``.

The browser test needs Debian's ``chromium`` (``/usr/bin/chromium``, or ``$CHROMIUM``) and
the ``playwright`` package (its own browser download is not used). Without them it skips
locally and FAILS under ``CI=true``.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

from helpers import load_module

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(ROOT, "examples")
ARTIFACTS = os.path.join(ROOT, ".artifacts")
BAD_CSV = "date,description,amount\n03/15/2024,Coffee,3.20\n03/16/2024,Train,12.00\n"
GOOD_CSV = "date,description,amount\n15/03/2024,Coffee,3.20\n16/03/2024,Train,12.00\n"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run"]  # fmt: skip


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYFRICTION_") or k == "PYFRICTION_NO_EXTENSIONS"}
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    return env


@pytest.fixture
def clean_sdk() -> Iterator[None]:
    import pyfriction
    from pyfriction import sdk
    from pyfriction.integrations import _all_classes

    def reset() -> None:
        if pyfriction._default is not None:
            pyfriction._default.close(timeout=5)
        pyfriction._default = None
        sdk.options.__init__()  # type: ignore[misc]
        for cls in _all_classes():
            cls.active = None

    reset()
    yield
    reset()


# -- FastAPI SaaS, with the test client ------------------------------------------------------------


@pytest.fixture
def saas(clean_sdk: None) -> Any:
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    module = load_module("example_fastapi_saas", os.path.join(EXAMPLES, "fastapi_saas", "app.py"))
    return module, lambda: TestClient(module.create_app())


def _sign_in(c: Any, email: str) -> None:
    r = c.post("/login", data={"email": email, "password": "demo"})
    assert r.status_code == 200 and r.url.path == "/dashboard"


def test_fastapi_saas_struggling_user_gets_guidance(saas: Any) -> None:
    module, make = saas
    c = make()
    assert c.get("/dashboard").url.path == "/login"
    _sign_in(c, "sam@acme.test")
    assert c.get("/_pyfriction/guidance").json()["guidance"] == []
    for _ in range(3):
        r = c.post("/import", data={"csv": BAD_CSV})
        assert r.status_code == 422 and "invalid date" in r.text
    items = c.get("/_pyfriction/guidance").json()["guidance"]
    assert [g["id"] for g in items] == ["import-dates"]
    assert c.post("/_pyfriction/ack", json={"id": "import-dates", "outcome": "shown"}).json() == {"ok": True}
    r = c.post("/billing", data={"number": "4242 4242", "expiry": "13/99"})
    assert r.status_code == 400 and "not valid" in r.text


def test_fastapi_saas_smooth_user_gets_none(saas: Any) -> None:
    module, make = saas
    c = make()
    _sign_in(c, "ada@acme.test")
    assert "Imported 2 transactions" in c.post("/import", data={"csv": GOOD_CSV}).text
    assert "Card saved" in c.post("/billing", data={"number": "4242424242424242", "expiry": "12/39"}).text
    assert "Saved." in c.post("/settings", data={"name": "Ada", "timezone": "Europe/Paris"}).text
    assert c.get("/_pyfriction/guidance").json()["guidance"] == []
    assert c.get("/api/status").json()["episodes"] == 0


def test_fastapi_saas_domain_rules(saas: Any) -> None:
    module, _ = saas
    import datetime as dt

    assert module.luhn_ok("4242424242424242") and not module.luhn_ok("4242424242424241")
    assert module.check_card("4242424242424242", "01/20", dt.date(2024, 1, 1)) == "The card has expired."
    assert module.check_card("4242424242424242", "1/2030", dt.date(2024, 1, 1)) == "The expiry must be MM/YY."
    with pytest.raises(ValueError, match="header"):
        module.parse_import("when,what\n1,2\n")
    assert module.parse_import(GOOD_CSV)[0] == {"date": "2024-03-15", "description": "Coffee", "amount": 3.2}


# -- Flask and Django, minimal ----------------------------------------------------------------------


def test_flask_example(clean_sdk: None) -> None:
    pytest.importorskip("flask")
    import pyfriction

    module = load_module("example_flask_app", os.path.join(EXAMPLES, "flask_app", "app.py"))
    c = module.create_app().test_client()
    assert c.get("/signup").status_code == 200
    # As its docstring says: the third bad submission's own answer shows help, not before.
    pages = [c.post("/signup", data={"email": "nope"}, headers={"X-User": "u1"}) for _ in range(3)]
    assert all(r.status_code == 200 and "not valid" in r.get_data(as_text=True) for r in pages)
    assert ["Use an address like" in r.get_data(as_text=True) for r in pages] == [False, False, True]
    state = pyfriction.get_tracker().state("u1")
    assert state is not None and state.episodes == 1  # each failure counted once
    assert "Use an address like" not in c.get("/signup", headers={"X-User": "u1"}).get_data(as_text=True)
    assert c.post("/signup", data={"email": "bo@example.com"}, headers={"X-User": "u2"}).status_code == 200
    assert "Use an address like" not in c.get("/signup", headers={"X-User": "u2"}).get_data(as_text=True)


def test_django_example() -> None:
    pytest.importorskip("django")
    # Django's settings are per process: the example's own smoke check runs in a fresh one.
    r = subprocess.run([sys.executable, os.path.join(EXAMPLES, "django_app", "manage.py"), "check_friction"],
                       cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=120)  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    assert "struggling user: guidance ['signup-email']" in r.stdout
    assert "smooth user: guidance []" in r.stdout


# -- the browser --------------------------------------------------------------------------------------


def _chromium() -> str:
    path = os.environ.get("CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    missing = []
    if not os.path.exists(path):
        missing.append(f"Debian's chromium ({path})")
    if importlib.util.find_spec("playwright") is None:
        missing.append("the playwright package")
    if missing:
        message = "browser test needs " + " and ".join(missing) + " (.ci/debian-packages.txt, pip install -e '.[test]')"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def server() -> Iterator[str]:
    pytest.importorskip("fastapi")
    pytest.importorskip("uvicorn")
    port = _free_port()
    proc = subprocess.Popen([sys.executable, os.path.join(EXAMPLES, "fastapi_saas", "app.py"), "--port", str(port)],
                            cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    out = proc.stdout.read().decode() if proc.stdout else ""  # type: ignore[union-attr]
                    raise RuntimeError(f"the example did not start: {out}") from None
                time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_fastapi_saas_in_a_browser(server: str) -> None:
    chromium = _chromium()
    from playwright.sync_api import expect, sync_playwright

    os.makedirs(ARTIFACTS, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            # -- a struggling user: the import rejects US dates again and again
            page = browser.new_context(viewport={"width": 1100, "height": 800}).new_page()
            page.goto(server + "/login")
            page.fill("#email", "sam@acme.test")
            page.fill("#password", "demo")
            page.click("#sign-in")
            page.wait_for_url("**/dashboard")
            page.click("#start-import")
            guidance = page.locator("[data-pyfriction-guidance]")
            for attempt in range(2):
                page.fill("#csv", BAD_CSV)
                page.click("#import-submit")
                expect(page.locator("#import-error")).to_contain_text("invalid date")
                if attempt < 1:  # one rejection is normal use
                    assert guidance.count() == 0
            # help appears on the page the user is stuck on, before they go looking for support:
            # the second rejection of the same field, each right after a click on Import
            expect(guidance).to_be_visible(timeout=10_000)
            expect(guidance).to_contain_text("DD/MM/YYYY")
            assert page.url.endswith("/import")
            page.screenshot(path=os.path.join(ARTIFACTS, "fastapi_saas_guidance.png"), full_page=True)
            page.click("#contact-link")
            page.wait_for_url("**/contact")

            # -- a smooth user: right first time everywhere, never sees guidance
            smooth = browser.new_context().new_page()
            smooth.goto(server + "/login")
            smooth.fill("#email", "ada@acme.test")
            smooth.fill("#password", "demo")
            smooth.click("#sign-in")
            smooth.wait_for_url("**/dashboard")
            smooth.click("#start-import")
            smooth.fill("#csv", GOOD_CSV)
            smooth.click("#import-submit")
            expect(smooth.locator("#import-ok")).to_be_visible()
            smooth.goto(server + "/billing")
            smooth.fill("#card-number", "4242424242424242")
            smooth.fill("#expiry", "12/39")
            smooth.click("#billing-submit")
            expect(smooth.locator("#billing-ok")).to_be_visible()
            smooth.goto(server + "/settings")
            smooth.fill("#name", "Ada")
            smooth.click("#settings-submit")
            expect(smooth.locator("#settings-ok")).to_be_visible()
            smooth.wait_for_timeout(2000)  # more than a guidance poll
            assert smooth.locator("[data-pyfriction-guidance]").count() == 0
            smooth.screenshot(path=os.path.join(ARTIFACTS, "fastapi_saas_smooth.png"))
        finally:
            browser.close()


# -- Node.js host with the sidecar ---------------------------------------------------------------------


def _wait_port(port: int, proc: subprocess.Popen[bytes], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                out = proc.stdout.read().decode() if proc.stdout and proc.poll() is not None else ""
                raise RuntimeError(f"{what} did not start: {out}") from None
            time.sleep(0.1)


@pytest.fixture
def node_example() -> Iterator[str]:
    node, npm = shutil.which("node"), shutil.which("npm")
    if not node or not npm:
        pytest.skip("node and npm are needed for the Node.js example")
    if importlib.util.find_spec("pyfriction_server") is None and not os.path.isdir(
        os.path.join(ROOT, "server", "pyfriction_server")
    ):
        pytest.skip("the sidecar (server/) is not available")
    here = os.path.join(EXAMPLES, "node_express")
    if not os.path.isdir(os.path.join(here, "node_modules", "@segment", "analytics-node")):
        r = subprocess.run(
            [npm, "install", "--no-audit", "--no-fund"], cwd=here, capture_output=True, text=True, timeout=300
        )
        assert r.returncode == 0, r.stdout + r.stderr
    sidecar_port, app_port = _free_port(), _free_port()
    env = _env()
    env["PYTHONPATH"] = os.path.join(ROOT, "server") + os.pathsep + env["PYTHONPATH"]
    procs = []
    try:
        sidecar = subprocess.Popen([sys.executable, "-m", "pyfriction_server", "--config", os.path.join(here, "sidecar.toml"),
                                    "--port", str(sidecar_port), "--log-level", "warning"],
                                   cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip
        procs.append(sidecar)
        _wait_port(sidecar_port, sidecar, "the sidecar")
        app = subprocess.Popen([node, "server.js"], cwd=here, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               env={**env, "SIDECAR_URL": f"http://127.0.0.1:{sidecar_port}", "PORT": str(app_port)})  # fmt: skip
        procs.append(app)
        _wait_port(app_port, app, "the Node.js example")
        yield f"http://127.0.0.1:{app_port}"
    finally:
        for proc in reversed(procs):
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()


def _http(method: str, url: str, form: dict[str, str] | None = None) -> tuple[int, str]:
    import urllib.error
    import urllib.parse
    import urllib.request

    data = urllib.parse.urlencode(form).encode() if form is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_node_express_with_the_sidecar(node_example: str) -> None:
    base = node_example
    for _ in range(3):
        status, body = _http("POST", f"{base}/signup?user=struggling", {"email": "nope"})
        assert status == 422 and "not valid" in body
    deadline = time.monotonic() + 15
    while True:  # the SDK delivers in the background: guidance shows up a moment later
        status, body = _http("GET", f"{base}/signup?user=struggling")
        assert status == 200
        if 'data-guidance="signup-email"' in body:
            break
        assert time.monotonic() < deadline, "no guidance for the struggling user"
        time.sleep(0.3)
    assert "/v1/pyfriction.js" in body and "data-user-token=" in body
    status, body = _http("POST", f"{base}/signup?user=smooth", {"email": "ada@example.com"})
    assert status == 200 and "Welcome" in body
    time.sleep(1.0)
    assert "data-guidance=" not in _http("GET", f"{base}/signup?user=smooth")[1]
