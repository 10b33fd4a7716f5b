"""The Django middleware with Django's test clients, on the sync (WSGI) and async (ASGI) stacks."""

from __future__ import annotations

import json
from typing import Any

import pytest

django = pytest.importorskip("django")

from django.conf import settings  # noqa: E402

if not settings.configured:
    settings.configure(
        DEBUG=False,
        SECRET_KEY="test",
        ALLOWED_HOSTS=["testserver"],
        ROOT_URLCONF=__name__,
        MIDDLEWARE=[f"{__name__}.HeaderAuthMiddleware", "pyfriction.integrations.django.FrictionMiddleware"],
        INSTALLED_APPS=[],
        DATABASES={},
        LOGGING_CONFIG=None,
    )
    django.setup()

from django.http import HttpResponse, JsonResponse  # noqa: E402
from django.test import AsyncClient, Client  # noqa: E402
from django.urls import path  # noqa: E402
from django.utils.asyncio import async_unsafe  # noqa: E402
from django.utils.functional import SimpleLazyObject  # noqa: E402

import pyfriction  # noqa: E402
from pyfriction import sdk  # noqa: E402

from friction_helpers import FakeGuidance, Friction, friction  # noqa: E402,F401

LAZY_EVALUATIONS: list[str] = []


class User:
    is_authenticated = True

    def __init__(self, pk: str) -> None:
        self.pk = pk


class Anonymous:
    is_authenticated = False
    pk = None


class HeaderAuthMiddleware:
    """Stands in for AuthenticationMiddleware: a lazy ``request.user`` that, like a real one,
    must not be evaluated in async code (it is ``async_unsafe``), and ``request.auser()``."""

    sync_capable = True
    async_capable = False

    def __init__(self, get_response: Any) -> None:
        self.get_response = get_response

    def __call__(self, request: Any) -> Any:
        uid = request.headers.get("X-User")

        @async_unsafe
        def load() -> Any:
            LAZY_EVALUATIONS.append(uid or "")
            return User(uid) if uid else Anonymous()

        async def auser() -> Any:  # cached on the request, like Django's
            if not hasattr(request, "_acached_user"):
                request._acached_user = User(uid) if uid else Anonymous()
            return request._acached_user

        request.user = SimpleLazyObject(load)
        request.auser = auser
        return self.get_response(request)


def item(request: Any, item_id: int) -> Any:
    if item_id == 404:
        return JsonResponse({"error": "no such item"}, status=404)
    return JsonResponse({"id": item_id})


def billing(request: Any) -> Any:
    data = json.loads(request.body or b"{}")
    if "number" not in data:
        return JsonResponse({"error": "number required"}, status=422)
    return JsonResponse({"ok": True})


def boom(request: Any) -> Any:
    raise RuntimeError("kaboom")


def page(request: Any) -> Any:
    return HttpResponse("<h1>hi</h1>")


def guidance(request: Any) -> Any:
    items = request.pyfriction.pending()
    return HttpResponse("".join(f"<p>{g.title}</p>" for g in items) or "<p>none</p>")


def do_import(request: Any) -> Any:
    pyfriction.observe({"type": "form_error", "target": "#date-format"})
    return JsonResponse({"ok": False})


async def async_item(request: Any, item_id: int) -> Any:
    if item_id == 404:
        return JsonResponse({"error": "no such item"}, status=404)
    return JsonResponse({"id": item_id})


async def async_import(request: Any) -> Any:
    await request.auser()  # the view loads the user itself: observe() can use it
    pyfriction.observe({"type": "form_error", "target": "#date-format"})
    return JsonResponse({"ok": False})


urlpatterns = [
    path("items/<int:item_id>/", item),
    path("billing/", billing),
    path("boom/", boom),
    path("page/", page),
    path("guidance/", guidance),
    path("import/", do_import),
    path("async/items/<int:item_id>/", async_item),
    path("async/import/", async_import),
]

U = {"X-User": "u42"}


@pytest.fixture(autouse=True)
def _reset() -> None:
    LAZY_EVALUATIONS.clear()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _got(friction: Friction) -> list[Any]:
    return [(e["user_id"], e["type"], e["step"], e.get("properties", {}).get("status")) for e in friction.events]


def test_sync_stack(friction: Friction) -> None:
    friction.init()
    c = Client(raise_request_exception=False)
    assert c.get("/items/1/", headers=U).status_code == 200
    assert friction.events == [] and LAZY_EVALUATIONS == []  # nothing to observe: user never loaded
    c.get("/items/404/", headers=U)
    c.post("/billing/", data="{}", content_type="application/json", headers=U)
    assert c.get("/boom/", headers=U).status_code == 500
    c.get("/page/", headers=U)
    c.post("/import/", headers=U)
    c.get("/items/404/")  # anonymous
    assert _got(friction) == [
        ("u42", "api_error", "/items/<int:item_id>/", 404),
        ("u42", "form_error", "/billing/", 422),
        ("u42", "error", "/boom/", 500),
        ("u42", "page", "/page/", None),
        ("u42", "form_error", "/import/", None),
    ]
    assert pyfriction.current_user() is None


@pytest.mark.anyio
async def test_async_stack_never_evaluates_the_lazy_user(friction: Friction) -> None:
    friction.init()
    c = AsyncClient(raise_request_exception=False)
    assert (await c.get("/async/items/1/", headers=U)).status_code == 200
    await c.get("/async/items/404/", headers=U)
    await c.post("/async/import/", headers=U)
    await c.get("/items/404/", headers=U)  # a sync view in the async stack
    assert (await c.get("/boom/", headers=U)).status_code == 500
    assert _got(friction) == [
        ("u42", "api_error", "/async/items/<int:item_id>/", 404),
        ("u42", "form_error", "/async/import/", None),
        ("u42", "api_error", "/items/<int:item_id>/", 404),
        ("u42", "error", "/boom/", 500),
    ]
    assert LAZY_EVALUATIONS == []
    assert sdk.counters()["integration_errors"] == 0


def test_guidance_on_the_request_and_header(friction: Friction) -> None:
    friction.init()
    friction.stub_guidance("u42", FakeGuidance(id="g1", title="Dates are DD/MM/YYYY"))
    c = Client()
    assert "DD/MM/YYYY" in c.get("/guidance/", headers=U).content.decode()
    assert "none" in c.get("/guidance/", headers=U).content.decode()
    from django.test import override_settings

    with override_settings(PYFRICTION={"guidance_header": True, "slow_after": None}):
        friction.stub_guidance("u42", FakeGuidance(id="g2"))
        r = Client().get("/items/1/", headers=U)
        assert [g["id"] for g in json.loads(r["X-Pyfriction-Guidance"])] == ["g2"]


def test_get_user_setting(friction: Friction) -> None:
    friction.init()
    from django.test import override_settings

    with override_settings(PYFRICTION={"get_user": lambda request: ("u7", "acme")}):
        Client().get("/items/404/")
    assert [(e["user_id"], e["account_id"]) for e in friction.events] == [("u7", "acme")]


def test_failures_never_fail_the_request(friction: Friction) -> None:
    tracker = friction.init()

    def broken(*args: Any) -> Any:
        raise RuntimeError("engine down")

    tracker.observe = broken  # type: ignore[method-assign]
    c = Client()
    assert c.get("/items/404/", headers=U).status_code == 404
    assert c.post("/billing/", data="{}", content_type="application/json", headers=U).status_code == 422
    assert sdk.counters()["integration_errors"] >= 2


def test_disabled(friction: Friction) -> None:
    friction.init(enabled=False)
    Client().get("/items/404/", headers=U)
    assert friction.events == []
