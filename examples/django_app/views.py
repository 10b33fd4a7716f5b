"""Views and URLs of the minimal Django example; pyfriction.init() runs at import."""

from __future__ import annotations

import html
import re
from typing import Any

from django.http import HttpResponse
from django.urls import path

import pyfriction

pyfriction.init({
    "guidance": {
        "holdout": {"share": 0.0},
        "items": [{"id": "signup-email", "kind": "banner", "title": "Use an address like name@example.com"}],
        "rules": [{"step": "/signup/", "guidance": "signup-email"}],
    }
})  # fmt: skip
EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[a-z]{2,}$", re.I)


def demo_user(request: Any) -> str | None:
    """The demo's user: ``X-User`` header or ``?user=`` (a real app signs users in)."""
    return request.headers.get("X-User") or request.GET.get("user")


def signup(request: Any) -> HttpResponse:
    error, status = "", 200
    if request.method == "POST":
        email = request.POST.get("email", "")
        if EMAIL.match(email):
            pyfriction.observe({"type": "success", "target": "signup"})
            return HttpResponse(f"<p>Welcome, {html.escape(email)}!</p>")
        error, status = "That email address is not valid.", 422  # -> form_error at /signup/
    help_ = "".join(f'<div data-guidance="{g.id}"><b>{html.escape(g.title)}</b></div>'
                    for g in request.pyfriction.pending())  # fmt: skip
    err = f"<p>{html.escape(error)}</p>" if error else ""
    return HttpResponse(
        f"""<!doctype html><title>Sign up</title>{help_}<h1>Sign up</h1>{err}
<form method="post"><input name="email"><button>Sign up</button></form>""",
        status=status,
    )


urlpatterns = [path("signup/", signup)]
