"""A small SaaS app with pyfriction: sign in, a CSV import whose date format trips people up,
a billing form with card validation, settings, help and contact pages.

Run it (one command, from the repository root)::

    python examples/fastapi_saas/app.py            # http://127.0.0.1:8000, sign in with any email

pyfriction's part is four lines: ``pyfriction.init(config)`` (the bundled browser config,
``pyfriction/data/browser.toml``, plus ``friction.toml``), the middleware (which knows the
signed-in user from ``get_user``), the guidance endpoint mounted at ``/_pyfriction``, and
pyfriction.js in the page layout (in-process mode, ``data-mount``) that shows the user's guidance. Fail the import a few
times with US dates (``03/15/2024``) and help appears before you reach for the contact page.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import hashlib
import hmac
import html
import io
import os
import tomllib
from importlib import resources
from typing import Any
from urllib.parse import quote

from fastapi import FastAPI, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse

import pyfriction
from pyfriction.integrations.asgi import FrictionMiddleware, guidance_app

HERE = os.path.dirname(os.path.abspath(__file__))
SECRET = os.environ.get("EXAMPLE_SECRET", "change-me").encode()
COOKIE = "session"

# -- sessions: a signed cookie holding the user id ---------------------------------------------


def sign(user_id: str) -> str:
    mac = hmac.new(SECRET, user_id.encode(), hashlib.sha256).hexdigest()[:32]
    return f"{user_id}.{mac}"


def session_user(cookie: str | None) -> str | None:
    if not cookie or "." not in cookie:
        return None
    user_id, _, mac = cookie.rpartition(".")
    return user_id if hmac.compare_digest(sign(user_id), cookie) and mac else None


def get_user(scope: Any) -> Any:
    """The middleware's user resolver: the signed-in user from the session cookie."""
    return session_user(Request(scope).cookies.get(COOKIE)), "acme"


# -- the page layout, with the guidance script -------------------------------------------------


def script_tag() -> str:
    """pyfriction.js, the sidecar's browser script, in-process: it sends the page's clicks, dead
    clicks and JS errors to ``/_pyfriction/events``, polls ``/_pyfriction/guidance`` and shows
    the items (tooltips next to their anchor, banners at the top of ``<main>``), reporting
    shown / clicked / dismissed / completed to ``/_pyfriction/ack``."""
    return (
        f'<script src="/_static/pyfriction.{_script().version}.js" data-mount="/_pyfriction" '
        'data-banner-container="main" data-poll-ms="1500"></script>'
    )


def _script() -> Any:
    """The packaged browser script (pyfriction-server), served with its ETag and compression."""
    from pyfriction_server.script import Script

    return Script.load()


def browser_config() -> dict[str, Any]:
    """The bundled browser config (steps are URL paths, targets ``#ids`` and ``METHOD /path``,
    as the middleware and pyfriction.js send them), plus this app's ``friction.toml``."""
    with resources.files("pyfriction.data").joinpath("browser.toml").open("rb") as f:
        config = tomllib.load(f)
    with open(os.path.join(HERE, "friction.toml"), "rb") as f:
        own = tomllib.load(f)
    config["event_map"] = own.get("event_map", {})
    config["guidance"].update(own.get("guidance", {}))
    return config


STYLE = """
<style>
body { font: 15px/1.5 system-ui, sans-serif; margin: 0; color: #1f2937; background: #f9fafb; }
header { background: #111827; color: #fff; padding: 10px 24px; display: flex; gap: 18px; align-items: center; }
header a { color: #d1d5db; text-decoration: none; } header strong { margin-right: auto; }
main { max-width: 720px; margin: 24px auto; background: #fff; padding: 24px 32px; border-radius: 8px;
       box-shadow: 0 1px 3px rgba(0,0,0,.1); }
label { display: block; margin: 12px 0 4px; font-weight: 600; }
input, textarea, select { width: 100%; padding: 8px; box-sizing: border-box; border: 1px solid #d1d5db; border-radius: 6px; }
button { margin-top: 16px; padding: 8px 18px; border: 0; border-radius: 6px; background: #2563eb; color: #fff; cursor: pointer; }
.error { background: #fee2e2; color: #991b1b; padding: 10px 14px; border-radius: 6px; }
.ok { background: #dcfce7; color: #166534; padding: 10px 14px; border-radius: 6px; }
.hint { color: #6b7280; font-size: 13px; }
/* pyfriction.js's guidance, themed with its custom properties */
.pf-guidance { --pf-accent: #1d4ed8; --pf-radius: 8px; }
.pf-guidance button.pf-close { margin: 0; background: transparent; color: inherit; }
</style>
"""


def page(request: Request, title: str, body: str, status: int = 200) -> HTMLResponse:
    user = session_user(request.cookies.get(COOKIE))
    nav = (
        '<a href="/dashboard">Dashboard</a><a href="/import">Import</a><a href="/billing">Billing</a>'
        '<a href="/settings">Settings</a><a href="/help">Help</a><a id="contact-link" href="/contact">Contact</a>'
        f'<span>{html.escape(user)}</span><a href="/logout">Sign out</a>'
        if user
        else '<a href="/login">Sign in</a>'
    )
    doc = f"""<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)} · Ledgerly</title>
{STYLE}</head><body><header><strong>Ledgerly</strong>{nav}</header><main><h1>{html.escape(title)}</h1>{body}</main>
{script_tag() if user else ""}</body></html>"""
    return HTMLResponse(doc, status_code=status)


# -- the domain: CSV import, card validation ---------------------------------------------------

DATE_FORMAT = "%d/%m/%Y"


def parse_import(text: str) -> list[dict[str, Any]]:
    """Rows of ``date,description,amount``; the date must be DD/MM/YYYY. Raises ValueError."""
    rows = []
    reader = csv.DictReader(io.StringIO(text.strip()))
    if reader.fieldnames is None or [f.strip() for f in reader.fieldnames] != ["date", "description", "amount"]:
        raise ValueError("The first line must be the header: date,description,amount")
    for n, row in enumerate(reader, start=2):
        raw = (row.get("date") or "").strip()
        try:
            date = dt.datetime.strptime(raw, DATE_FORMAT).date()
        except ValueError:
            raise ValueError(f"Line {n}: invalid date {raw!r}") from None
        try:
            amount = float((row.get("amount") or "").strip())
        except ValueError:
            raise ValueError(f"Line {n}: invalid amount {row.get('amount')!r}") from None
        rows.append({"date": date.isoformat(), "description": (row.get("description") or "").strip(), "amount": amount})
    if not rows:
        raise ValueError("The file has no rows")
    return rows


def luhn_ok(number: str) -> bool:
    if not number.isdigit() or not 13 <= len(number) <= 19:
        return False
    total = 0
    for i, ch in enumerate(reversed(number)):
        d = int(ch)
        if i % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def check_card(number: str, expiry: str, today: dt.date | None = None) -> str | None:
    """An error message, or None when the card looks valid."""
    if not luhn_ok(number):
        return "The card number is not valid."
    try:
        month, year = expiry.split("/")
        month_i, year_i = int(month), 2000 + int(year)
        if not 1 <= month_i <= 12 or len(year) != 2:
            raise ValueError
    except ValueError:
        return "The expiry must be MM/YY."
    today = today or dt.date.today()
    if (year_i, month_i) < (today.year, today.month):
        return "The card has expired."
    return None


# -- the app -----------------------------------------------------------------------------------


def create_app(config: str | None = None) -> FastAPI:
    pyfriction.init(config or browser_config())

    app = FastAPI(title="Ledgerly (pyfriction example)")
    app.add_middleware(FrictionMiddleware, get_user=get_user)
    app.mount("/_pyfriction", guidance_app(get_user=get_user))
    script = _script()
    app.add_api_route("/_static/pyfriction.{version}.js", script.versioned, include_in_schema=False)
    settings: dict[str, dict[str, str]] = {}

    def signed_in(request: Request) -> str | None:
        return session_user(request.cookies.get(COOKIE))

    @app.get("/", include_in_schema=False)
    async def root(request: Request) -> Any:
        return RedirectResponse("/dashboard" if signed_in(request) else "/login", status_code=303)

    @app.get("/login", response_class=HTMLResponse)
    async def login_form(request: Request, error: str = "") -> Any:
        err = f'<p class="error">{html.escape(error)}</p>' if error else ""
        return page(
            request,
            "Sign in",
            f"""{err}
<form method="post" action="/login"><label for="email">Email</label><input id="email" name="email" type="email" required>
<label for="password">Password</label><input id="password" name="password" type="password" required>
<p class="hint">Demo: any email, password <code>demo</code>.</p><button id="sign-in" type="submit">Sign in</button></form>""",
        )

    @app.post("/login")
    async def login(request: Request, email: str = Form(...), password: str = Form(...)) -> Any:
        if password != "demo":
            return RedirectResponse("/login?error=" + quote("Wrong password"), status_code=303)
        user_id = email.strip().lower()
        response = RedirectResponse("/dashboard", status_code=303)
        response.set_cookie(COOKIE, sign(user_id), httponly=True, samesite="lax")
        return response

    @app.get("/logout")
    async def logout() -> Any:
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(COOKIE)
        return response

    @app.get("/dashboard", response_class=HTMLResponse)
    async def dashboard(request: Request) -> Any:
        if not signed_in(request):
            return RedirectResponse("/login", status_code=303)
        return page(
            request,
            "Dashboard",
            """<p>Welcome to Ledgerly. Start by importing your transactions.</p>
<p><a id="start-import" href="/import">Import transactions</a> · <a href="/billing">Add a card</a> · <a href="/settings">Settings</a></p>""",
        )

    def import_form(error: str = "", csv_text: str = "") -> str:
        err = f'<p class="error" id="import-error">{html.escape(error)}</p>' if error else ""
        return f"""{err}<form method="post" action="/import">
<label for="csv">Transactions (CSV)</label>
<textarea id="csv" name="csv" rows="8" placeholder="date,description,amount">{html.escape(csv_text)}</textarea>
<p class="hint">Columns: date, description, amount.</p>
<button id="import-submit" type="submit">Import</button></form>"""

    @app.get("/import", response_class=HTMLResponse)
    async def import_page(request: Request) -> Any:
        if not signed_in(request):
            return RedirectResponse("/login", status_code=303)
        return page(request, "Import transactions", import_form())

    @app.post("/import", response_class=HTMLResponse)
    async def do_import(request: Request, csv_text: str = Form("", alias="csv")) -> Any:
        if not signed_in(request):
            return RedirectResponse("/login", status_code=303)
        try:
            rows = parse_import(csv_text)
        except ValueError as exc:
            # 422: the middleware observes a form_error for this user at step /import
            return page(request, "Import transactions", import_form(str(exc), csv_text), status=422)
        pyfriction.observe({"type": "success", "target": "import"})  # the user from the request context
        return page(request, "Import transactions",
                    f'<p class="ok" id="import-ok">Imported {len(rows)} transactions.</p>' + import_form())  # fmt: skip

    def billing_form(error: str = "") -> str:
        err = f'<p class="error" id="billing-error">{html.escape(error)}</p>' if error else ""
        return f"""{err}<form method="post" action="/billing">
<label for="card-number">Card number</label><input id="card-number" name="number" autocomplete="cc-number">
<label for="expiry">Expiry</label><input id="expiry" name="expiry" placeholder="MM/YY">
<button id="billing-submit" type="submit">Save card</button></form>"""

    @app.get("/billing", response_class=HTMLResponse)
    async def billing_page(request: Request) -> Any:
        if not signed_in(request):
            return RedirectResponse("/login", status_code=303)
        return page(request, "Billing", billing_form())

    @app.post("/billing", response_class=HTMLResponse)
    async def billing(request: Request, number: str = Form(""), expiry: str = Form("")) -> Any:
        if not signed_in(request):
            return RedirectResponse("/login", status_code=303)
        error = check_card(number.strip(), expiry.strip())
        if error:
            return page(request, "Billing", billing_form(error), status=400)
        pyfriction.observe({"type": "success", "target": "billing"})
        return page(request, "Billing", '<p class="ok" id="billing-ok">Card saved.</p>' + billing_form())

    @app.get("/settings", response_class=HTMLResponse)
    async def settings_page(request: Request, saved: int = 0) -> Any:
        user = signed_in(request)
        if not user:
            return RedirectResponse("/login", status_code=303)
        mine = settings.get(user, {"name": "", "timezone": "Europe/London"})
        ok = '<p class="ok" id="settings-ok">Saved.</p>' if saved else ""
        zones = "".join(f"<option{' selected' if z == mine['timezone'] else ''}>{z}</option>"
                        for z in ("Europe/London", "Europe/Paris", "America/New_York", "Asia/Tokyo"))  # fmt: skip
        return page(
            request,
            "Settings",
            f"""{ok}<form method="post" action="/settings">
<label for="name">Display name</label><input id="name" name="name" value="{html.escape(mine["name"])}">
<label for="timezone">Time zone</label><select id="timezone" name="timezone">{zones}</select>
<button id="settings-submit" type="submit">Save</button></form>""",
        )

    @app.post("/settings")
    async def save_settings(request: Request, name: str = Form(""), timezone: str = Form("Europe/London")) -> Any:
        user = signed_in(request)
        if not user:
            return RedirectResponse("/login", status_code=303)
        settings[user] = {"name": name[:100], "timezone": timezone}
        return RedirectResponse("/settings?saved=1", status_code=303)

    @app.get("/help", response_class=HTMLResponse)
    async def help_page(request: Request) -> Any:
        if signed_in(request):
            pyfriction.observe({"type": "help"})
        return page(
            request,
            "Help",
            """<h2 id="dates">Importing transactions</h2>
<p>Dates are day first, <code>DD/MM/YYYY</code>: <code>15/03/2024</code>. Amounts use a dot: <code>12.50</code>.</p>
<pre>date,description,amount
15/03/2024,Coffee,3.20</pre>
<h2 id="billing">Billing</h2><p>Card numbers are digits only; the expiry is <code>MM/YY</code>.</p>""",
        )

    @app.get("/contact", response_class=HTMLResponse)
    async def contact(request: Request) -> Any:
        if signed_in(request):
            pyfriction.observe({"type": "contact"})  # the last moment to help before a ticket
        return page(
            request,
            "Contact support",
            """<form><label for="message">How can we help?</label>
<textarea id="message" rows="5"></textarea><button id="send-ticket" type="button">Send</button></form>""",
        )

    @app.get("/api/status")
    async def status() -> Any:
        stats = pyfriction.get_tracker().stats()
        return {"users": stats.users, "events": stats.events, "episodes": stats.episodes}

    return app


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args(argv)
    uvicorn.run(create_app(), host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
