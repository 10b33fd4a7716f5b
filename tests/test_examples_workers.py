"""The FastAPI and Flask examples under gunicorn, 4 workers on one ``file://`` store (issue 18,
point 6), as customers deploy them: FastAPI with ``-k uvicorn.workers.UvicornWorker``, Flask
with ``-k gthread``, each both with ``--preload`` (the app, and its tracker on the store, built
in the master before the fork) and without (each worker imports and builds the app). Then

* guidance reaches the user on the very next request, whichever worker serves it, once: the
  episode's crossing request is served by one worker, the user's next request by another;
* the caps hold across workers: ``per_day = 3`` and the item cooldown count what every worker
  delivered, although the episodes that would offer more fire in different workers.

The app is ``tests/gunicorn_app.py``: the example's own ``create_app()`` with the scoring
cooldown at 0 (so that one user can have several episodes within a test), a route
``/_test/user?id=...`` (the user's episode count from the shared store, to tell "no episode"
from "an episode the caps held back") and an ``X-Worker-Pid`` header on every response, naming
the worker that served it.

gunicorn's workers all accept on one listening socket, so the kernel, not the test, picks the
worker of each new connection; a keep-alive connection then stays with the worker that accepted
it. The tests use both:

* ``Pinned``: one keep-alive connection to each of the 4 workers (opened until each worker
  holds one; a worker's pid is checked on every response), as a reverse proxy's upstream pool
  holds them. Requests go round-robin over the workers in an order the test chooses, so "the
  crossing on worker i, the next request on worker i+1" is certain, for every i.
* ``Fresh``: a new connection per request (``Connection: close``), the kernel's choice each
  time. Users are tried until at least ``CROSS_CASES`` of them had the request after their
  crossing served by another worker than the crossing; every case is checked, whichever
  worker served the next request, and then every worker (pinned) is asked again: none returns
  the item a second time.

No assertion on time: every wait is for a condition (a worker answering), with a generous
deadline that only turns a hang into a failure. gunicorn runs in a session of its own; at the
end it gets SIGTERM (graceful: it stops its workers and must exit 0 with no error logged), and
SIGKILL for its process group if it is still there after ``STOP_TIMEOUT``.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = os.path.join(ROOT, "tests")
WORKERS = 4
#: How many users must have had the request after their crossing served by another worker.
CROSS_CASES = 3
#: Users tried before giving up on seeing ``CROSS_CASES`` of them (the kernel would have to send
#: almost every next request to the crossing's worker).
MAX_USERS = 200
#: Deadlines that only turn a hang into a failure (a loaded 2-core machine starts 4 workers slowly).
READY_TIMEOUT = 180.0
REQUEST_TIMEOUT = 60.0
STOP_TIMEOUT = 60.0
PID_HEADER = "X-Worker-Pid"  # set by tests/gunicorn_app.py
BAD_CSV = "date,description,amount\n03/15/2024,Coffee,3.20\n03/16/2024,Train,12.00\n"
GOOD_CSV = "date,description,amount\n15/03/2024,Coffee,3.20\n16/03/2024,Train,12.00\n"
HELP = "Use an address like"  # the Flask example's guidance title
WORKER_CLASS = {"fastapi": ["-k", "uvicorn.workers.UvicornWorker"], "flask": ["-k", "gthread", "--threads", "4"]}


# -- the clients ---------------------------------------------------------------------------------------


class Client:
    """Requests to the server; ``served`` is the pid of the worker that served each, in order."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.served: list[int] = []

    def _send(self, client: Any, method: str, path: str, **kwargs: Any) -> Any:
        r = client.request(method, f"http://127.0.0.1:{self.port}{path}", **kwargs)
        self.served.append(int(r.headers[PID_HEADER]))
        return r

    def __call__(self, method: str, path: str, **kwargs: Any) -> Any:
        raise NotImplementedError

    def episodes(self, user_id: str) -> int:
        r = self("GET", "/_test/user", params={"id": user_id})
        assert r.status_code == 200, r.text
        return int(r.json()["episodes"])


class Fresh(Client):
    """A new connection per request: the kernel picks the worker that accepts it."""

    def __init__(self, port: int) -> None:
        import httpx

        super().__init__(port)
        self.client = httpx.Client(timeout=REQUEST_TIMEOUT, follow_redirects=False, headers={"Connection": "close"},
                                   limits=httpx.Limits(max_keepalive_connections=0))  # fmt: skip

    def __call__(self, method: str, path: str, **kwargs: Any) -> Any:
        return self._send(self.client, method, path, **kwargs)

    def close(self) -> None:
        self.client.close()


class Pinned(Client):
    """One keep-alive connection to each worker: requests round-robin over the workers (or to one)."""

    def __init__(self, port: int) -> None:
        super().__init__(port)
        self.clients: list[Any] = []  # httpx.Client, one connection each
        self.pids: list[int] = []  # the worker of each
        self.next = 0

    def connect(self, proc: subprocess.Popen[bytes], log: str) -> None:
        """Open connections until each of the ``WORKERS`` workers has accepted one (and so has
        built the app): the kernel picks the worker of each, the ones to a worker already held
        are closed."""
        import httpx

        deadline = time.monotonic() + READY_TIMEOUT
        seen: set[int] = set()
        while len(self.pids) < WORKERS:
            # one connection, never expired on the client's side (httpx drops one idle for 5 s)
            limits = httpx.Limits(max_connections=1, max_keepalive_connections=1, keepalive_expiry=None)
            client = httpx.Client(timeout=10.0, follow_redirects=False, limits=limits)
            pid = None
            try:
                r = client.get(f"http://127.0.0.1:{self.port}/_test/user", params={"id": "nobody"})
                if r.status_code == 200:
                    pid = int(r.headers[PID_HEADER])
                    assert r.json()["pid"] == pid
            except httpx.HTTPError:
                pass
            if pid is not None:
                seen.add(pid)
            if pid is not None and pid not in self.pids:
                client.timeout = httpx.Timeout(REQUEST_TIMEOUT)
                self.clients.append(client)
                self.pids.append(pid)
            else:
                client.close()
            if proc.poll() is not None or time.monotonic() > deadline:
                with open(log, errors="replace") as fh:
                    raise RuntimeError(f"{len(self.pids)} of {WORKERS} workers answered:\n{fh.read()}")
        assert len(seen) == WORKERS and proc.pid not in seen, seen  # the workers, not the master

    def start_at(self, worker: int) -> None:
        self.next = worker % WORKERS

    def __call__(self, method: str, path: str, **kwargs: Any) -> Any:
        """The request, sent to the next worker in turn."""
        w = self.next
        self.next = (w + 1) % WORKERS
        return self.at(w, method, path, **kwargs)

    def at(self, worker: int, method: str, path: str, **kwargs: Any) -> Any:
        r = self._send(self.clients[worker], method, path, **kwargs)
        assert self.served[-1] == self.pids[worker], "the connection to this worker was replaced"
        return r

    def close(self) -> None:
        for client in self.clients:
            client.close()


# -- gunicorn ------------------------------------------------------------------------------------------


@dataclass
class Server:
    kind: str
    port: int
    pinned: Pinned


def _env(store: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if (not k.startswith("PYFRICTION_") or k == "PYFRICTION_NO_EXTENSIONS") and k != "GUNICORN_CMD_ARGS"}  # fmt: skip
    env["PYTHONPATH"] = os.pathsep.join([ROOT, os.path.join(ROOT, "server"), TESTS, env.get("PYTHONPATH", "")])
    env["PYFRICTION_STORE"] = store
    return env


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the master (it stops its workers); SIGKILL to its process group if it is still
    there after ``STOP_TIMEOUT``, or if it died before (a worker may have outlived it)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(STOP_TIMEOUT)
            return
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # the group of the session gunicorn leads
    except ProcessLookupError:
        pass
    proc.wait()


@pytest.fixture(scope="module", params=[("fastapi", True), ("fastapi", False), ("flask", True), ("flask", False)],
                ids=["fastapi-preload", "fastapi", "flask-preload", "flask"])  # fmt: skip
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The example under gunicorn, 4 workers on one fresh ``file://`` store."""
    from helpers import require_engine

    kind, preload = request.param
    pytest.importorskip("gunicorn")
    pytest.importorskip("httpx")
    pytest.importorskip(kind)
    if kind == "fastapi":
        pytest.importorskip("uvicorn")
        pytest.importorskip("pyfriction_server")  # the example serves the sidecar's browser script
    require_engine("compiled")  # the file store
    tmp = tmp_path_factory.mktemp(f"{kind}-preload" if preload else kind)
    log = str(tmp / "gunicorn.log")
    # The listening socket is the test's, handed to gunicorn (--bind fd://): no port to race for.
    listener = socket.socket()
    try:
        listener.bind(("127.0.0.1", 0))
        listener.listen(128)
        port = int(listener.getsockname()[1])
        cmd = [sys.executable, "-m", "gunicorn", f'gunicorn_app:app("{kind}")', "--workers", str(WORKERS),
               *WORKER_CLASS[kind], *(["--preload"] if preload else []), "--bind", f"fd://{listener.fileno()}",
               "--keep-alive", "3600",  # the pinned connections stay open through the module's tests
               "--timeout", "600",  # a worker slow to import on a loaded machine is not killed
               "--no-control-socket", "--error-logfile", "-"]  # fmt: skip
        with open(log, "wb") as out:
            proc = subprocess.Popen(cmd, cwd=tmp, env=_env(f"file://{tmp / 'friction.state'}"), stdout=out,
                                    stderr=subprocess.STDOUT, pass_fds=[listener.fileno()], start_new_session=True)  # fmt: skip
    finally:
        listener.close()  # gunicorn has its copy
    pinned = Pinned(port)
    try:
        pinned.connect(proc, log)
        yield Server(kind, port, pinned)
    finally:
        pinned.close()
        _stop(proc)
    with open(log, errors="replace") as fh:
        text = fh.read()
    assert proc.returncode == 0, f"gunicorn failed ({proc.returncode}):\n{text}"
    errors = [line for line in text.splitlines() if "[ERROR]" in line or "[CRITICAL]" in line or "Traceback" in line]
    assert not errors, text  # no worker died, timed out or failed a request on its own


@pytest.fixture
def fresh(server: Server) -> Iterator[Fresh]:
    client = Fresh(server.port)
    yield client
    client.close()


# -- the examples' flows -------------------------------------------------------------------------------

# FastAPI: the middleware observes the failed import (422) before its last byte is sent, and
# the guidance endpoint (GET /_pyfriction/guidance) returns what is pending and marks it delivered.


def _sign_in(w: Client, email: str) -> dict[str, str]:
    """The signed-in user's session cookie, as a header (valid on every worker)."""
    r = w("POST", "/login", data={"email": email, "password": "demo"})
    assert r.status_code == 303, r.text
    return {"Cookie": f"session={r.cookies['session']}"}


def _guidance(w: Client, cookies: dict[str, str]) -> list[str]:
    r = w("GET", "/_pyfriction/guidance", headers=cookies)
    assert r.status_code == 200, r.text
    return [g["id"] for g in r.json()["guidance"]]


def _fastapi_struggle(w: Client, cookies: dict[str, str], form: str) -> int:
    """Three rejected submissions (import or billing); the worker of the last."""
    for _ in range(3):
        if form == "import":
            r = w("POST", "/import", data={"csv": BAD_CSV}, headers=cookies)
            assert r.status_code == 422 and "invalid date" in r.text
        else:
            r = w("POST", "/billing", data={"number": "4242 4242", "expiry": "13/99"}, headers=cookies)
            assert r.status_code == 400 and "not valid" in r.text
    return w.served[-1]


def _fastapi_success(w: Client, cookies: dict[str, str], form: str) -> None:
    if form == "import":
        r = w("POST", "/import", data={"csv": GOOD_CSV}, headers=cookies)
        assert r.status_code == 200 and "Imported 2 transactions" in r.text
    else:
        r = w("POST", "/billing", data={"number": "4242424242424242", "expiry": "12/39"}, headers=cookies)
        assert r.status_code == 200 and "Card saved" in r.text


# Flask: the handler observes each bad address before it renders the form, and the form shows
# (and marks delivered) what is pending: the crossing request's own page shows the help, and
# the user's next request, on any worker, must not show it again.


def _flask_fail(w: Client, user: str) -> str:
    r = w("POST", "/signup", data={"email": "nope"}, headers={"X-User": user})
    assert r.status_code == 200 and "not valid" in r.text
    return str(r.text)


def _flask_form(w: Client, user: str) -> str:
    r = w("GET", "/signup", headers={"X-User": user})
    assert r.status_code == 200
    return str(r.text)


def _episode(w: Client, pinned: Pinned, kind: str, user: str) -> tuple[int, int]:
    """One user's first episode, through ``w``, and the user's very next request, through ``w``
    too: the guidance is there, once (then no worker returns it). The workers of the crossing
    and of the next request."""
    if kind == "fastapi":
        cookies = _sign_in(w, user)
        crossing = _fastapi_struggle(w, cookies, "import")
        assert _guidance(w, cookies) == ["import-dates"], "the very next request"
        nxt = w.served[-1]
        assert pinned.episodes(user) == 1
        # no worker returns it again (WORKERS requests in a row on the pinned ones: each worker once)
        assert [_guidance(pinned, cookies) for _ in range(WORKERS)] == [[]] * WORKERS
    else:
        pages = [_flask_fail(w, user) for _ in range(3)]
        crossing = w.served[-1]
        # the third failure crosses in its worker: its own page shows the help, once
        assert [HELP in p for p in pages] == [False, False, True]
        assert HELP not in _flask_form(w, user), "the very next request"
        nxt = w.served[-1]
        assert pinned.episodes(user) == 1
        assert [HELP in _flask_form(pinned, user) for _ in range(WORKERS)] == [False] * WORKERS
    return crossing, nxt


# -- the tests -----------------------------------------------------------------------------------------


def test_guidance_reaches_the_next_request_on_the_next_worker(server: Server) -> None:
    """Pinned round-robin: the crossing lands on each worker in turn, the next request on the next one."""
    w = server.pinned
    crossings = set()
    for first in range(WORKERS):
        w.start_at(first)
        crossing, nxt = _episode(w, w, server.kind, f"next-{first}@acme.test")
        assert nxt == w.pids[(w.pids.index(crossing) + 1) % WORKERS]
        crossings.add(crossing)
    assert len(crossings) == WORKERS


def test_guidance_reaches_the_next_request_whichever_worker_the_kernel_picks(server: Server, fresh: Fresh) -> None:
    """A new connection per request: users until ``CROSS_CASES`` of them had the request after
    their crossing on another worker; every one of them (same worker or not) got the guidance."""
    cases: list[tuple[int, int]] = []
    while sum(c != n for c, n in cases) < CROSS_CASES:
        assert len(cases) < MAX_USERS, f"the kernel sent the next request to the crossing's worker in {cases}"
        cases.append(_episode(fresh, server.pinned, server.kind, f"kernel-{len(cases)}@acme.test"))
    assert set(fresh.served) <= set(server.pinned.pids)


def test_caps_hold_across_workers(server: Server) -> None:
    w = server.pinned
    user = "caps@acme.test"
    if server.kind == "fastapi":
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
