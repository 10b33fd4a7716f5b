"""The Flask extension / integration with Flask's test client and Flask-Login."""

from __future__ import annotations

import json
from typing import Any

import pytest

flask = pytest.importorskip("flask")
flask_login = pytest.importorskip("flask_login")

import pyfriction  # noqa: E402
from pyfriction import sdk  # noqa: E402
from pyfriction.integrations.flask import FlaskIntegration, PyFriction  # noqa: E402

from friction_helpers import FakeGuidance, Friction, friction  # noqa: E402,F401


class User(flask_login.UserMixin):
    def __init__(self, uid: str) -> None:
        self.id = uid


def make_app(extension: bool = True, login: bool = True, **options: Any) -> flask.Flask:
    app = flask.Flask(__name__)
    app.secret_key = "test"
    if login:
        manager = flask_login.LoginManager(app)
        manager.user_loader(User)

        @manager.request_loader
        def from_header(request: Any) -> Any:
            uid = request.headers.get("X-User")
            return User(uid) if uid else None

    @app.get("/items/<int:item_id>")
    def item(item_id: int) -> Any:
        if item_id == 404:
            flask.abort(404)
        return {"id": item_id}

    @app.post("/billing")
    def billing() -> Any:
        data = flask.request.get_json(silent=True) or {}
        if "number" not in data:
            return {"error": "number required"}, 422
        if not str(data["number"]).isdigit():
            flask.abort(400)
        return {"ok": True}

    @app.get("/boom")
    def boom() -> Any:
        raise RuntimeError("kaboom")

    @app.get("/page")
    def page() -> Any:
        return "<h1>hi</h1>"

    @app.get("/guidance")
    def guidance() -> Any:
        items = flask.g.pyfriction.pending()
        return "".join(f"<p>{g.title}</p>" for g in items) or "<p>none</p>"

    @app.post("/import")
    def do_import() -> Any:
        pyfriction.observe({"type": "form_error", "target": "#date-format"})
        return {"ok": False}

    if extension:
        PyFriction(app, **options)
    return app


U = {"X-User": "u42"}


def test_flask_login_user_rule_and_failure_mapping(friction: Friction) -> None:
    friction.init()
    c = make_app().test_client()
    assert c.get("/items/1", headers=U).status_code == 200
    assert c.get("/page").status_code == 200  # anonymous page view: nothing
    assert friction.events == []
    c.get("/items/404", headers=U)
    c.post("/billing", json={}, headers=U)
    c.post("/billing", json={"number": "4x"}, headers=U)
    assert c.get("/boom", headers=U).status_code == 500
    c.get("/page", headers=U)
    c.post("/import", headers=U)
    got = [(e["type"], e["step"], e.get("properties", {}).get("status")) for e in friction.events]
    assert got == [
        ("api_error", "/items/<int:item_id>", 404),
        ("form_error", "/billing", 422),
        ("form_error", "/billing", 400),
        ("error", "/boom", 500),
        ("page", "/page", None),
        ("form_error", "/import", None),
    ]
    assert {e["user_id"] for e in friction.events} == {"u42"}
    assert pyfriction.current_user() is None


def test_exception_propagating_in_testing_mode(friction: Friction) -> None:
    friction.init()
    app = make_app()
    app.testing = True
    with pytest.raises(RuntimeError):
        app.test_client().get("/boom", headers=U)
    assert [e["type"] for e in friction.events] == ["error"]


def test_get_user_option_and_init_app(friction: Friction) -> None:
    friction.init()
    app = make_app(extension=False, login=False)
    ext = PyFriction(get_user=lambda: ("u5", "acme") if flask.request.args.get("me") else None, slow_after=0.0)
    ext.init_app(app)
    c = app.test_client()
    c.get("/items/404?me=1")
    c.get("/items/404")
    got = [(e["user_id"], e["account_id"], e["type"]) for e in friction.events]
    assert got == [("u5", "acme", "api_error"), ("u5", "acme", "slow_response")]


def test_guidance_on_g_and_header(friction: Friction) -> None:
    friction.init()
    friction.stub_guidance("u42", FakeGuidance(id="g1", title="Dates are DD/MM/YYYY"))
    c = make_app().test_client()
    assert "DD/MM/YYYY" in c.get("/guidance", headers=U).get_data(as_text=True)
    assert "none" in c.get("/guidance", headers=U).get_data(as_text=True)
    c = make_app(guidance_header=True).test_client()
    friction.stub_guidance("u42", FakeGuidance(id="g2"))
    r = c.get("/items/1", headers=U)
    assert [g["id"] for g in json.loads(r.headers["X-Pyfriction-Guidance"])] == ["g2"]


def test_auto_instrumentation_by_init(friction: Friction) -> None:
    friction.init(default_integrations=True)
    assert isinstance(FlaskIntegration.active, FlaskIntegration)
    c = make_app(extension=False).test_client()
    c.get("/items/404", headers=U)
    assert [e["type"] for e in friction.events] == ["api_error"]
    friction.events.clear()
    friction.init(default_integrations=False)
    c.get("/items/404", headers=U)
    assert friction.events == []


def test_failures_never_fail_the_request(friction: Friction) -> None:
    tracker = friction.init()

    def broken(*args: Any) -> Any:
        raise RuntimeError("engine down")

    tracker.observe = broken  # type: ignore[method-assign]
    tracker.pending = broken  # type: ignore[attr-defined]
    c = make_app(guidance_header=True).test_client()
    assert c.get("/items/404", headers=U).status_code == 404
    assert c.post("/billing", json={}, headers=U).status_code == 422
    assert c.get("/items/1", headers=U).status_code == 200
    assert c.get("/guidance", headers=U).status_code == 200
    assert sdk.counters()["integration_errors"] >= 3


def test_disabled(friction: Friction) -> None:
    friction.init(enabled=False)
    c = make_app().test_client()
    c.get("/items/404", headers=U)
    c.get("/boom", headers=U)
    assert friction.events == []
