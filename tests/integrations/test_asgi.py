"""The ASGI middleware with FastAPI/Starlette's own test client."""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import pytest

fastapi = pytest.importorskip("fastapi")
from fastapi import FastAPI, HTTPException, Request, WebSocket  # noqa: E402
from fastapi.responses import HTMLResponse  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402
from pydantic import BaseModel  # noqa: E402
from starlette.authentication import AuthCredentials, AuthenticationBackend, SimpleUser  # noqa: E402
from starlette.middleware.authentication import AuthenticationMiddleware  # noqa: E402

import pyfriction  # noqa: E402
from pyfriction import sdk  # noqa: E402
from pyfriction.integrations.asgi import FrictionMiddleware, StarletteIntegration, guidance_app  # noqa: E402

from friction_helpers import FakeGuidance, Friction, friction  # noqa: E402,F401


class HeaderAuth(AuthenticationBackend):
    """``X-User: u42`` signs in as u42."""

    async def authenticate(self, conn: Any) -> Any:
        user = conn.headers.get("x-user")
        if not user:
            return None
        return AuthCredentials(["authenticated"]), SimpleUser(user)


class Card(BaseModel):
    number: str
    expiry: str


def make_app(auth: bool = True, middleware: bool = True, **options: Any) -> FastAPI:
    app = FastAPI()

    @app.get("/items/{item_id}")
    async def item(item_id: int) -> Any:
        if item_id == 404:
            raise HTTPException(404, "no such item")
        return {"id": item_id}

    @app.post("/billing")
    async def billing(card: Card) -> Any:
        if not card.number.isdigit():
            raise HTTPException(400, "card number must be digits")
        return {"ok": True}

    @app.get("/boom")
    async def boom() -> Any:
        raise RuntimeError("kaboom")

    @app.get("/page", response_class=HTMLResponse)
    async def page() -> str:
        return "<h1>hello</h1>"

    @app.get("/slow")
    async def slow() -> Any:
        return {"slow": True}

    @app.get("/guidance", response_class=HTMLResponse)
    async def guidance(request: Request) -> str:
        items = request.state.pyfriction.pending()
        return "".join(f"<p class=g>{g.title}</p>" for g in items) or "<p>none</p>"

    @app.post("/import")
    async def do_import(request: Request) -> Any:
        # deep inside the handler: no user passed around
        pyfriction.observe({"type": "form_error", "target": "#date-format"})
        return {"ok": False}

    @app.get("/sync/{n}")
    def sync_handler(n: int) -> Any:  # runs in the threadpool, with a copy of the context
        pyfriction.observe({"type": "search", "properties": {"results": 0}})
        return {"n": n}

    @app.post("/login/{user}")
    async def login(user: str) -> Any:
        pyfriction.set_user(user, account_id="acme")
        raise HTTPException(401, "bad password")

    app.mount("/_pyfriction", guidance_app())
    if middleware:
        app.add_middleware(FrictionMiddleware, **options)
    if auth:
        app.add_middleware(AuthenticationMiddleware, backend=HeaderAuth())
    return app


def client(app: FastAPI) -> TestClient:
    return TestClient(app, raise_server_exceptions=False)


U = {"x-user": "u42"}


def test_route_template_and_status_mapping(friction: Friction) -> None:
    friction.init()
    c = client(make_app())
    assert c.get("/items/7", headers=U).status_code == 200
    assert friction.events == []  # success: nothing to observe
    assert c.get("/items/404", headers=U).status_code == 404
    assert c.post("/billing", json={"number": "4242"}, headers=U).status_code == 422  # missing field
    assert c.post("/billing", json={"number": "42x", "expiry": "12/30"}, headers=U).status_code == 400
    assert c.get("/boom", headers=U).status_code == 500
    kinds = [(e["type"], e["step"], e.get("properties", {}).get("status")) for e in friction.events]
    assert kinds == [
        ("api_error", "/items/{item_id}", 404),
        ("form_error", "/billing", 422),
        ("form_error", "/billing", 400),
        ("error", "/boom", 500),
    ]
    assert all(e["user_id"] == "u42" for e in friction.events)
    assert friction.events[1]["target"] == "POST /billing"
    assert friction.events[3]["properties"]["exception"] == "RuntimeError"


def test_exception_is_reraised(friction: Friction) -> None:
    friction.init()
    with pytest.raises(RuntimeError, match="kaboom"):
        TestClient(make_app()).get("/boom", headers=U)
    assert [e["type"] for e in friction.events] == ["error"]


def test_outcome_observed_before_the_last_byte_is_sent(friction: Friction) -> None:
    """A 4xx or a page is observed before the final body message goes out (another worker may
    serve the user's next request the moment it arrives); a 5xx waits for the exception."""
    import asyncio

    friction.init()
    seen_at_end: list[list[str]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        status = int(scope["path"].strip("/"))
        await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", b"text/html")]})
        await send({"type": "http.response.body", "body": b"<p>", "more_body": True})
        await send({"type": "http.response.body", "body": b"</p>"})

    mw = FrictionMiddleware(app, get_user=lambda scope: "u42")

    async def call(path: str) -> None:
        async def receive() -> Any:
            return {"type": "http.request", "body": b""}

        async def send(message: Any) -> None:
            if message["type"] == "http.response.body" and not message.get("more_body"):
                seen_at_end.append([e["type"] for e in friction.events])

        await mw({"type": "http", "method": "GET", "path": path, "headers": []}, receive, send)

    for path in ("/422", "/200", "/503"):
        asyncio.run(call(path))
    assert seen_at_end == [["form_error"], ["form_error", "page"], ["form_error", "page"]]
    assert [e["type"] for e in friction.events] == ["form_error", "page", "api_error"]


def test_anonymous_requests_observe_nothing(friction: Friction) -> None:
    friction.init()
    c = client(make_app())
    assert c.get("/items/404").status_code == 404
    assert c.get("/boom").status_code == 500
    assert friction.events == []


def test_get_user_callable_and_account(friction: Friction) -> None:
    friction.init()
    seen: list[Any] = []

    def get_user(scope: Any) -> Any:
        seen.append(scope["path"])
        cookie = dict(scope["headers"]).get(b"cookie", b"").decode()
        return ("u7", "acct-1") if "sid=7" in cookie else None

    c = client(make_app(auth=False, get_user=get_user))
    assert c.get("/items/1", headers={"cookie": "sid=7"}).status_code == 200
    assert seen == []  # a success resolves no user at all
    c.get("/items/404", headers={"cookie": "sid=7"})
    c.get("/items/404")
    assert [(e["user_id"], e["account_id"]) for e in friction.events] == [("u7", "acct-1")]


def test_pages_and_slow_responses(friction: Friction) -> None:
    friction.init()
    c = client(make_app(slow_after=0.0))
    c.get("/page", headers=U)
    c.get("/slow", headers=U)
    kinds = [(e["type"], e["step"]) for e in friction.events]
    assert kinds == [("page", "/page"), ("slow_response", "/page"), ("slow_response", "/slow")]
    assert friction.events[1]["properties"]["duration_ms"] >= 0
    friction.events.clear()
    c = client(make_app(pages=False, slow_after=None))
    c.get("/page", headers=U)
    c.get("/slow", headers=U)
    assert friction.events == []


def test_context_user_and_step_inside_handlers(friction: Friction) -> None:
    friction.init()
    c = client(make_app())
    c.post("/import", headers=U)
    c.get("/sync/3", headers=U)
    assert [(e["user_id"], e["type"], e["step"]) for e in friction.events] == [
        ("u42", "form_error", "/import"),
        ("u42", "search", "/sync/{n}"),
    ]
    assert friction.events[0]["target"] == "#date-format"
    assert pyfriction.current_user() is None  # nothing leaks out of the request


def test_set_user_in_handler_is_used_for_the_response(friction: Friction) -> None:
    friction.init()
    c = client(make_app(auth=False))
    assert c.post("/login/u9").status_code == 401
    assert [(e["user_id"], e["account_id"], e["type"], e["step"]) for e in friction.events] == [
        ("u9", "acme", "api_error", "/login/{user}")
    ]


def test_guidance_on_request_state_and_header(friction: Friction) -> None:
    friction.init()
    friction.stub_guidance("u42", FakeGuidance(id="g1", title="Dates are DD/MM/YYYY"))
    c = client(make_app())
    assert "Dates are DD/MM/YYYY" in c.get("/guidance", headers=U).text
    assert "none" in c.get("/guidance", headers=U).text  # delivered once
    assert "none" in c.get("/guidance").text  # anonymous: no guidance, no error

    c = client(make_app(guidance_header=True))
    assert "x-pyfriction-guidance" not in c.get("/items/1", headers=U).headers
    friction.stub_guidance("u42", FakeGuidance(id="g2", title="Hé, need help?"))
    r = c.get("/items/1", headers=U)
    payload = json.loads(r.headers["x-pyfriction-guidance"])
    assert [(g["id"], g["title"]) for g in payload] == [("g2", "Hé, need help?")]


def test_guidance_endpoint(friction: Friction) -> None:
    friction.init()
    friction.stub_guidance("u42", FakeGuidance(id="g1"))
    c = client(make_app())
    assert c.get("/_pyfriction/guidance").status_code == 401
    r = c.get("/_pyfriction/guidance", headers=U)
    assert r.json()["user_id"] == "u42" and [g["id"] for g in r.json()["guidance"]] == ["g1"]
    assert c.post("/_pyfriction/ack", json={"id": "g1", "outcome": "shown"}, headers=U).json() == {"ok": True}
    assert c.post("/_pyfriction/ack", json={"id": "x", "outcome": "clicked"}, headers=U).json() == {"ok": False}
    assert c.post("/_pyfriction/ack", json={"id": "g1", "outcome": "nope"}, headers=U).status_code == 400
    assert friction.acks == [("u42", "g1", "shown"), ("u42", "x", "clicked")]
    events = [
        {"type": "click", "step": "/import", "target": "#go", "user_id": "someone-else"},
        {"type": "ticket"},
        {"type": "search", "properties": {"results": 0, "q": "secret"}},
    ]
    r = c.post("/_pyfriction/events", json={"events": events}, headers=U)
    assert r.json() == {"accepted": 2}
    assert [(e["user_id"], e["type"]) for e in friction.events] == [("u42", "click"), ("u42", "search")]
    assert friction.events[1]["properties"] == {"results": 0}
    assert c.post("/_pyfriction/events", content=b"{not json", headers=U).status_code == 400


def test_pyfriction_failures_never_fail_the_request(friction: Friction, caplog: pytest.LogCaptureFixture) -> None:
    tracker = friction.init()
    friction.stub_guidance("u42", FakeGuidance(id="g1"))

    def broken(event: Any) -> float:
        raise RuntimeError("engine down")

    tracker.observe = broken  # type: ignore[method-assign]
    tracker.pending = broken  # type: ignore[attr-defined]
    c = client(make_app(guidance_header=True))
    caplog.set_level(logging.WARNING, logger="pyfriction")
    assert c.get("/items/404", headers=U).status_code == 404
    assert c.post("/billing", json={}, headers=U).status_code == 422
    assert c.get("/items/1", headers=U).status_code == 200
    assert c.post("/import", headers=U).status_code == 500  # the handler's own observe raises: the app's call
    assert c.get("/guidance", headers=U).status_code == 200
    assert sdk.counters()["integration_errors"] >= 3
    assert "the request goes on unaffected" in caplog.text


def test_bad_config_at_runtime_and_a_failing_hook(
    friction: Friction, monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    bad = tmp_path / "friction.toml"
    bad.write_text("[scoring]\nthreshold = 7\n")
    monkeypatch.setenv("PYFRICTION_CONFIG", str(bad))
    c = client(make_app())  # no init(): the lazy default tracker fails to load its config
    assert c.get("/items/404", headers=U).status_code == 404
    assert c.get("/items/1", headers=U).status_code == 200
    assert c.post("/import", headers=U).status_code == 500  # the handler's own observe raises
    assert c.get("/_pyfriction/guidance", headers=U).status_code == 503  # its own endpoint says so
    assert pyfriction._default is None
    monkeypatch.delenv("PYFRICTION_CONFIG")

    def hook(event: Any) -> Any:
        raise ValueError("redaction bug")

    friction.init(before_observe=hook)
    assert c.get("/items/404", headers=U).status_code == 404
    assert friction.events == [] and sdk.counters()["hook_errors"] == 1


def test_full_queue_is_not_the_request_s_problem(friction: Friction) -> None:
    tracker = friction.init(queue_size=1, scoring={"threshold": 0.2, "rearm": 0.1})
    tracker.on_friction(lambda episode: time.sleep(0.2))
    c = client(make_app())
    for i in range(8):
        assert c.get("/items/404", headers={"x-user": f"u{i}"}).status_code == 404
        assert c.post("/billing", json={}, headers={"x-user": f"u{i}"}).status_code == 422
        assert c.post("/billing", json={}, headers={"x-user": f"u{i}"}).status_code == 422
    assert tracker.stats().callbacks_dropped >= 1


def test_disabled_is_a_no_op(friction: Friction) -> None:
    friction.init(enabled=False)
    c = client(make_app())
    assert c.get("/items/404", headers=U).status_code == 404
    assert c.post("/import", headers=U).json() == {"ok": False}
    assert friction.events == []


def test_auto_instrumentation_by_init(friction: Friction) -> None:
    friction.init(default_integrations=True)
    assert "starlette" in sdk.options.integrations
    c = client(make_app(middleware=False))
    c.get("/items/404", headers=U)
    c.get("/boom", headers=U)
    assert [(e["type"], e["step"]) for e in friction.events] == [("api_error", "/items/{item_id}"), ("error", "/boom")]
    friction.events.clear()
    c = client(make_app(middleware=True))  # added by hand: not wrapped twice
    c.get("/items/404", headers=U)
    assert len(friction.events) == 1
    friction.events.clear()
    friction.init(default_integrations=False)  # auto-added middleware goes quiet
    assert StarletteIntegration.active is None
    c = client(make_app(middleware=False))
    c.get("/items/404", headers=U)
    assert friction.events == []


def test_websockets_and_lifespan_pass_through(friction: Friction) -> None:
    friction.init()
    app = make_app()

    @app.websocket("/ws")
    async def ws(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.send_text("hi")
        await websocket.close()

    with TestClient(app) as c:  # runs lifespan
        with c.websocket_connect("/ws") as w:
            assert w.receive_text() == "hi"
    assert friction.events == []
