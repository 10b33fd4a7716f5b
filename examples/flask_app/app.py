"""A minimal Flask app with pyfriction: a sign-up form whose email check trips people up.

Run it (one command, from the repository root)::

    python examples/flask_app/app.py        # http://127.0.0.1:5000/signup

The user comes from ``get_user`` (here an ``X-User`` header or ``?user=`` so you can try it
with curl; with Flask-Login installed and set up, ``current_user`` is used by default).

Submit a bad address three times and the third answer shows help: each bad address is a
``form_error`` on the email field, which the handler observes *before* it renders the page,
so the episode of the third one (three errors in a minute, the same field failing again) has
picked its guidance by the time ``g.pyfriction.pending()`` is read. (A handler that just
answered 422 would leave the event to the integration, which observes it after the response
is built: the help would then appear on the next page, not this one.)
"""

from __future__ import annotations

import html
import re
from typing import Any

from flask import Flask, g, request

import pyfriction
from pyfriction.integrations.flask import PyFriction

CONFIG = {
    "guidance": {
        "holdout": {"share": 0.0},
        "items": [{"id": "signup-email", "kind": "banner", "title": "Use an address like name@example.com",
                   "body": "We send a confirmation link there."}],
        "rules": [{"step": "/signup", "guidance": "signup-email"}],
    }
}  # fmt: skip
EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[a-z]{2,}$", re.I)


def current_user() -> str | None:
    return request.headers.get("X-User") or request.args.get("user")


def create_app() -> Flask:
    pyfriction.init(CONFIG)
    app = Flask(__name__)
    PyFriction(app, get_user=current_user)

    def form(error: str = "") -> str:
        help_ = "".join(f'<div class="guidance"><b>{html.escape(x.title)}</b> {html.escape(x.body)}</div>'
                        for x in g.pyfriction.pending())  # fmt: skip
        err = f'<p class="error">{html.escape(error)}</p>' if error else ""
        return f"""<!doctype html><title>Sign up</title>{help_}<h1>Sign up</h1>{err}
<form method="post"><input name="email" placeholder="Email"><button>Sign up</button></form>"""

    @app.get("/signup")
    def signup_form() -> Any:
        return form()

    @app.post("/signup")
    def signup() -> Any:
        email = request.form.get("email", "")
        if not EMAIL.match(email):
            # Observed here, not left to the integration's 4xx mapping: the page below must
            # already see the guidance this failure may bring. Re-rendering the form with 200
            # keeps the integration from counting the same failure a second time.
            g.pyfriction.observe({"type": "form_error", "target": "email"})
            return form("That email address is not valid.")
        pyfriction.observe({"type": "success", "target": "signup"})
        return f"<!doctype html><p>Welcome, {html.escape(email)}!</p>"

    return app


if __name__ == "__main__":
    create_app().run(port=5000)
