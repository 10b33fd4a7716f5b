"""The FastAPI and Flask examples as ``tests/test_examples_workers.py`` serves them under gunicorn::

    PYFRICTION_STORE=file://$TMP/friction.state PYTHONPATH=.:server:tests \\
        gunicorn 'gunicorn_app:app("fastapi")' -w 4 -k uvicorn.workers.UvicornWorker [--preload]
    PYFRICTION_STORE=file://$TMP/friction.state PYTHONPATH=.:server:tests \\
        gunicorn 'gunicorn_app:app("flask")' -w 4 -k gthread [--preload]

``app(kind)`` is the example's own ``create_app()`` (its items, rules, caps, middleware and
routes, on the store of ``$PYFRICTION_STORE``) with three test-only additions:

* the scoring cooldown at 0 (the example's config otherwise), so that one user can have several
  episodes within a test;
* a route ``/_test/user?id=...``: the user's episode count from the shared store, to tell "no
  episode" from "an episode the caps held back";
* an ``X-Worker-Pid`` header on every response: the pid of the worker process that served it
  (read when the request is served, so it is the worker's and not the gunicorn master's under
  ``--preload``). The kernel, not the test, picks the worker of each new connection; this header
  is how the test knows which one it picked.
"""

from __future__ import annotations

import os
from typing import Any

from helpers import load_module

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(ROOT, "examples")
PID_HEADER = "X-Worker-Pid"


def _episodes(user_id: str) -> dict[str, Any]:
    import pyfriction

    state = pyfriction.get_tracker().state(user_id)
    return {"pid": os.getpid(), "episodes": 0 if state is None else state.episodes}


def _fastapi() -> Any:
    module = load_module("example_fastapi_saas", os.path.join(EXAMPLES, "fastapi_saas", "app.py"))
    own = module.browser_config

    def config() -> dict[str, Any]:
        cfg: dict[str, Any] = own()
        cfg.setdefault("scoring", {})["cooldown"] = 0.0
        return cfg

    module.browser_config = config  # create_app() reads it at call time
    app = module.create_app()

    async def user(id: str) -> dict[str, Any]:
        return _episodes(id)

    app.add_api_route("/_test/user", user)
    name = PID_HEADER.lower().encode()

    async def with_pid(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":  # lifespan
            await app(scope, receive, send)
            return

        async def send_with_pid(message: Any) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), (name, str(os.getpid()).encode())]}
            await send(message)

        await app(scope, receive, send_with_pid)

    return with_pid


def _flask() -> Any:
    from flask import Flask, Response, request

    module = load_module("example_flask_app", os.path.join(EXAMPLES, "flask_app", "app.py"))
    module.CONFIG = {**module.CONFIG, "scoring": {"cooldown": 0.0}}
    app: Flask = module.create_app()

    def user() -> dict[str, Any]:
        return _episodes(request.args["id"])

    app.add_url_rule("/_test/user", "test_user", user)

    @app.after_request
    def pid(response: Response) -> Response:
        response.headers[PID_HEADER] = str(os.getpid())
        return response

    return app


def app(kind: str) -> Any:
    """The example's app, ``"fastapi"`` (ASGI) or ``"flask"`` (WSGI), with the additions above."""
    if kind == "fastapi":
        return _fastapi()
    if kind == "flask":
        return _flask()
    raise ValueError(f"unknown example {kind!r}")
