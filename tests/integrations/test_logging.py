"""The logging handler and integration."""

from __future__ import annotations

import logging

import pytest

import pyfriction
from pyfriction.integrations.logging import FrictionHandler, LoggingIntegration

from friction_helpers import Friction, friction  # noqa: F401


@pytest.fixture
def app_logger() -> logging.Logger:
    logger = logging.getLogger("tests.app")
    yield logger
    for h in list(logger.handlers):
        logger.removeHandler(h)


def test_handler_turns_error_records_of_a_user_into_error_events(
    friction: Friction, app_logger: logging.Logger
) -> None:
    friction.init()
    app_logger.addHandler(FrictionHandler())
    app_logger.error("no user: ignored")
    app_logger.warning("below the level", extra={"user_id": "u1"})
    app_logger.error("import failed", extra={"user_id": "u1", "account_id": "acme", "step": "/import"})
    with pyfriction.user_context("u2", step="/billing"):
        try:
            raise ValueError("card declined")
        except ValueError:
            app_logger.exception("payment failed")
    got = [(e["user_id"], e["type"], e["step"], e["target"], e["properties"]) for e in friction.events]
    assert got == [
        ("u1", "error", "/import", "tests.app", {"logger": "tests.app", "level": "ERROR"}),
        ("u2", "error", "/billing", "tests.app", {"logger": "tests.app", "level": "ERROR", "exception": "ValueError"}),
    ]
    assert friction.events[0]["account_id"] == "acme"


def test_pyfriction_s_own_records_never_loop(friction: Friction) -> None:
    friction.init()
    own = logging.getLogger("pyfriction")
    handler = FrictionHandler()
    own.addHandler(handler)
    try:
        with pyfriction.user_context("u1"):
            own.error("pyfriction: something failed")
    finally:
        own.removeHandler(handler)
    assert friction.events == []


def test_integration_on_the_root_logger(friction: Friction, app_logger: logging.Logger) -> None:
    friction.init(default_integrations=False, integrations=[LoggingIntegration(level=logging.WARNING)])
    with pyfriction.user_context("u1"):
        app_logger.warning("disk almost full")
        app_logger.info("fine")
    assert [e["properties"]["level"] for e in friction.events] == ["WARNING"]
    friction.init(default_integrations=False)  # off again: the handler stays, inert
    with pyfriction.user_context("u1"):
        app_logger.error("boom")
    assert len(friction.events) == 1


def test_a_request_s_failure_is_not_counted_twice(friction: Friction) -> None:
    flask = pytest.importorskip("flask")
    friction.init(default_integrations=True)  # logging + flask
    app = flask.Flask("tests.flaskapp")

    @app.get("/boom")
    def boom() -> str:
        raise RuntimeError("kaboom")

    from pyfriction.integrations.flask import PyFriction

    PyFriction(app, get_user=lambda: "u1")
    assert app.test_client().get("/boom").status_code == 500  # Flask logs it at ERROR too
    assert [e["type"] for e in friction.events] == ["error"]
