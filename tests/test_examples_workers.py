"""The FastAPI and Flask examples behind 4 worker processes on one ``file://`` store (issue 18,
point 6): requests go round-robin over the workers, and

* guidance reaches the user on the very next request, whichever worker serves it, once: the
  episode's crossing request is served by one worker, the user's next request by another;
* the caps hold across workers: ``per_day = 3`` and the item cooldown count what every worker
  delivered, although the episodes that would offer more fire in different workers.

gunicorn is not installed here (it is not pinned in constraints.txt), so this file is its own
pre-fork host, the part of gunicorn these tests depend on: run as a script, it builds the
example's app in the parent and forks the workers (``--start fork``, as gunicorn
``--preload``), or builds one app per worker in a fresh interpreter (``--start spawn``, as
gunicorn without ``--preload``); each worker serves the app with uvicorn (FastAPI: what
gunicorn's uvicorn worker class runs) or werkzeug's threaded server (Flask). Each worker
listens on a port of its own so that the test, not the kernel, decides which worker serves
each request: that is what makes "the next request lands on another worker" certain rather
than likely. SIGTERM to the host stops its workers.

The host adds one route of its own to the app, ``/_test/user?id=...``: the user's episode
count from the shared store, to tell "no episode" from "an episode the caps held back". It
also sets the scoring cooldown to 0 (the example's config otherwise: its items, rules and
caps), so that one user can have several episodes within a test.

No assertion on time: every wait is for a condition (a worker answering), with a generous
deadline that only turns a hang into a failure.
"""

from __future__ import annotations

import argparse
import importlib.util
import multiprocessing as mp
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(ROOT, "examples")
WORKERS = 4
#: Deadlines that only turn a hang into a failure (a loaded 2-core machine starts 4 workers slowly).
READY_TIMEOUT = 180.0
REQUEST_TIMEOUT = 60.0
STOP_TIMEOUT = 60.0
BAD_CSV = "date,description,amount\n03/15/2024,Coffee,3.20\n03/16/2024,Train,12.00\n"
GOOD_CSV = "date,description,amount\n15/03/2024,Coffee,3.20\n16/03/2024,Train,12.00\n"
HELP = "Use an address like"  # the Flask example's guidance title


# -- the host (this file run as a script) -------------------------------------------------------------


def _load(name: str, path: str) -> Any:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _episodes(user_id: str) -> dict[str, Any]:
    import pyfriction

    state = pyfriction.get_tracker().state(user_id)
    return {"pid": os.getpid(), "episodes": 0 if state is None else state.episodes}


def build(kind: str) -> Any:
    """The example's app (on the store of ``$PYFRICTION_STORE``), with the host's test route and
    the scoring cooldown at 0."""
    if kind == "fastapi":
        module = _load("example_fastapi_saas", os.path.join(EXAMPLES, "fastapi_saas", "app.py"))
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
        return app
    module = _load("example_flask_app", os.path.join(EXAMPLES, "flask_app", "app.py"))
    module.CONFIG = {**module.CONFIG, "scoring": {"cooldown": 0.0}}
    app = module.create_app()

    def flask_user() -> dict[str, Any]:
        from flask import request

        return _episodes(request.args["id"])

    app.add_url_rule("/_test/user", "test_user", flask_user)
    return app


def serve(kind: str, app: Any, port: int) -> None:
    """One worker: ``app`` on ``port`` until SIGTERM."""
    if kind == "fastapi":
        import uvicorn

        uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")
        return
    from werkzeug.serving import make_server

    make_server("127.0.0.1", port, app, threaded=True).serve_forever()  # SIGTERM ends it


def build_and_serve(kind: str, port: int) -> None:
    """A worker that builds its own app (``spawn``: gunicorn without ``--preload``)."""
    serve(kind, build(kind), port)


def host(argv: list[str]) -> int:
    """Run the example's workers until SIGTERM, then stop them and exit."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--app", choices=["fastapi", "flask"], required=True)
    parser.add_argument("--ports", required=True, help="comma-separated, one per worker")
    parser.add_argument("--start", choices=["fork", "spawn"], required=True)
    args = parser.parse_args(argv)
    ports = [int(p) for p in args.ports.split(",")]
    ctx = mp.get_context(args.start)
    if args.start == "fork":
        app = build(args.app)  # before the fork, as gunicorn --preload
        procs = [ctx.Process(target=serve, args=(args.app, app, port)) for port in ports]
    else:
        procs = [ctx.Process(target=build_and_serve, args=(args.app, port)) for port in ports]
    for p in procs:
        p.start()
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))  # after the fork: the workers keep theirs
    while not stop and all(p.is_alive() for p in procs):
        time.sleep(0.2)
    for p in procs:
        if p.is_alive():
            p.terminate()
    for p in procs:
        p.join(STOP_TIMEOUT)
        if p.is_alive():
            p.kill()
            p.join()
    return 0 if stop else 1  # a worker that died on its own is a failure


# -- the tests ---------------------------------------------------------------------------------------


def _free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


class Workers:
    """The client side: requests round-robin over the workers' ports (or to one of them)."""

    def __init__(self, ports: list[int]) -> None:
        import httpx

        self.ports = ports
        self.next = 0
        self.client = httpx.Client(timeout=REQUEST_TIMEOUT, follow_redirects=False)
        self.served: list[int] = []  # the worker index of every request, in order

    def start_at(self, worker: int) -> None:
        self.next = worker % len(self.ports)

    def __call__(self, method: str, path: str, **kwargs: Any) -> Any:
        """The request, sent to the next worker in turn."""
        w = self.next
        self.next = (w + 1) % len(self.ports)
        self.served.append(w)
        return self.at(w, method, path, **kwargs)

    def at(self, worker: int, method: str, path: str, **kwargs: Any) -> Any:
        return self.client.request(method, f"http://127.0.0.1:{self.ports[worker]}{path}", **kwargs)

    def episodes(self, user_id: str, worker: int = 0) -> int:
        r = self.at(worker, "GET", "/_test/user", params={"id": user_id})
        assert r.status_code == 200, r.text
        return int(r.json()["episodes"])


def _env(store: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYFRICTION_") or k == "PYFRICTION_NO_EXTENSIONS"}
    env["PYTHONPATH"] = os.pathsep.join([ROOT, os.path.join(ROOT, "server"), env.get("PYTHONPATH", "")])
    env["PYFRICTION_STORE"] = store
    return env


def _wait_ready(proc: subprocess.Popen[bytes], workers: Workers, log: str) -> None:
    """Every worker answers its test route (not just accepts a connection: the app is built)."""
    import httpx

    deadline = time.monotonic() + READY_TIMEOUT
    pids = set()
    for w in range(len(workers.ports)):
        while True:
            try:
                r = workers.at(w, "GET", "/_test/user", params={"id": "nobody"}, timeout=5.0)
                if r.status_code == 200:
                    pids.add(r.json()["pid"])
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                with open(log, errors="replace") as fh:
                    raise RuntimeError(f"worker {w} did not start:\n{fh.read()}")
            time.sleep(0.2)
    assert len(pids) == len(workers.ports), "each port must be served by a process of its own"


@pytest.fixture(scope="module", params=[("fastapi", "fork"), ("fastapi", "spawn"), ("flask", "fork"), ("flask", "spawn")],
                ids=["fastapi-fork", "fastapi-spawn", "flask-fork", "flask-spawn"])  # fmt: skip
def workers(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Workers]]:
    """The example behind 4 workers on one fresh ``file://`` store."""
    from helpers import require_engine

    kind, start = request.param
    pytest.importorskip("httpx")
    pytest.importorskip(kind)
    if kind == "fastapi":
        pytest.importorskip("uvicorn")
        pytest.importorskip("pyfriction_server")  # the example serves the sidecar's browser script
    require_engine("compiled")  # the file store
    tmp = tmp_path_factory.mktemp(f"{kind}-{start}")
    ports = _free_ports(WORKERS)
    log = str(tmp / "host.log")
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--app", kind, "--start", start,
                                 "--ports", ",".join(map(str, ports))],
                                cwd=ROOT, env=_env(f"file://{tmp / 'friction.state'}"), stdout=out,
                                stderr=subprocess.STDOUT)  # fmt: skip
    client = Workers(ports)
    try:
        _wait_ready(proc, client, log)
        yield kind, client
    finally:
        client.client.close()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    with open(log, errors="replace") as fh:
        assert proc.returncode == 0, f"the host failed ({proc.returncode}):\n{fh.read()}"


# FastAPI: the middleware observes the failed import (422) before its last byte is sent, and
# the guidance endpoint (GET /_pyfriction/guidance) returns what is pending and marks it delivered.


def _sign_in(w: Workers, email: str) -> dict[str, str]:
    """The signed-in user's session cookie, as a header (the same on every worker's port)."""
    r = w("POST", "/login", data={"email": email, "password": "demo"})
    assert r.status_code == 303, r.text
    return {"Cookie": f"session={r.cookies['session']}"}


def _guidance(w: Workers, cookies: dict[str, str]) -> list[str]:
    r = w("GET", "/_pyfriction/guidance", headers=cookies)
    assert r.status_code == 200, r.text
    return [g["id"] for g in r.json()["guidance"]]


def _fastapi_struggle(w: Workers, cookies: dict[str, str], form: str) -> int:
    """Three rejected submissions (import or billing), round-robin; the worker of the last."""
    for _ in range(3):
        if form == "import":
            r = w("POST", "/import", data={"csv": BAD_CSV}, headers=cookies)
            assert r.status_code == 422 and "invalid date" in r.text
        else:
            r = w("POST", "/billing", data={"number": "4242 4242", "expiry": "13/99"}, headers=cookies)
            assert r.status_code == 400 and "not valid" in r.text
    return w.served[-1]


def _fastapi_success(w: Workers, cookies: dict[str, str], form: str) -> None:
    if form == "import":
        r = w("POST", "/import", data={"csv": GOOD_CSV}, headers=cookies)
        assert r.status_code == 200 and "Imported 2 transactions" in r.text
    else:
        r = w("POST", "/billing", data={"number": "4242424242424242", "expiry": "12/39"}, headers=cookies)
        assert r.status_code == 200 and "Card saved" in r.text


# Flask: the handler observes each bad address before it renders the form, and the form shows
# (and marks delivered) what is pending: the crossing request's own page shows the help.


def _flask_fail(w: Workers, user: str) -> str:
    r = w("POST", "/signup", data={"email": "nope"}, headers={"X-User": user})
    assert r.status_code == 200 and "not valid" in r.text
    return str(r.text)


def test_guidance_reaches_the_next_request_on_any_worker(workers: tuple[str, Workers]) -> None:
    kind, w = workers
    for first in range(WORKERS):  # the crossing lands on each worker in turn
        user = f"next-{first}@acme.test"
        w.start_at(first)
        if kind == "fastapi":
            cookies = _sign_in(w, user)
            crossing = _fastapi_struggle(w, cookies, "import")
            assert _guidance(w, cookies) == ["import-dates"], "the very next request, on the next worker"
            assert w.served[-1] != crossing
            assert w.episodes(user) == 1
            # delivered once: no other worker returns it again
            assert [_guidance(w, cookies) for _ in range(WORKERS)] == [[]] * WORKERS
        else:
            pages = [_flask_fail(w, user) for _ in range(3)]
            crossing = w.served[-1]
            # the third failure crosses in its worker: its own page shows the help, once
            assert [HELP in p for p in pages] == [False, False, True]
            assert w.episodes(user, (crossing + 1) % WORKERS) == 1
            for _ in range(WORKERS):  # then no worker shows it again
                r = w("GET", "/signup", headers={"X-User": user})
                assert r.status_code == 200 and HELP not in r.text
        assert len({w.served[-k] for k in range(1, WORKERS + 1)}) == WORKERS  # every worker took a turn


def test_caps_hold_across_workers(workers: tuple[str, Workers]) -> None:
    kind, w = workers
    user = "caps@acme.test"
    if kind == "fastapi":
        # per_day = 3 and item_cooldown = 1 h (pyfriction/data/browser.toml): six episodes of one
        # user, alternating the import and billing forms, each crossing in another worker
        cookies = _sign_in(w, user)
        delivered: list[str] = []
        crossings = []
        for n in range(6):
            form = ("import", "billing")[n % 2]
            w.start_at(n)
            crossings.append(_fastapi_struggle(w, cookies, form))
            delivered += _guidance(w, cookies)
            _fastapi_success(w, cookies, form)  # relief: the next struggle is a new episode
        assert len(set(crossings)) == WORKERS
        assert w.episodes(user) == 6
        assert len(delivered) == 3 and len(set(delivered)) == 3, delivered  # per_day, each item once
        assert delivered[:2] == ["import-dates", "billing-card"]
        assert [_guidance(w, cookies) for _ in range(WORKERS)] == [[]] * WORKERS
    else:
        # one item, item_cooldown = 1 h (the default): shown once, whichever worker sees the
        # next episodes
        shown = 0
        crossings = []
        for n in range(WORKERS + 1):
            w.start_at(n)
            pages = [_flask_fail(w, user) for _ in range(3)]
            crossings.append(w.served[-1])
            shown += sum(HELP in p for p in pages)
            assert w.episodes(user) == n + 1
            r = w("POST", "/signup", data={"email": "bo@example.com"}, headers={"X-User": user})
            assert r.status_code == 200 and "Welcome" in r.text  # relief: the next struggle is a new episode
        assert len(set(crossings)) == WORKERS
        assert shown == 1


if __name__ == "__main__":
    sys.exit(host(sys.argv[1:]))
