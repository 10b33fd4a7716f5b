"""Helpers of the sidecar tests: real uvicorn servers on loopback, in a thread or a subprocess.

* :class:`ThreadServer` runs :func:`pyfriction_server.create_app` under
  :class:`pyfriction_server.Server` (uvicorn, httptools/uvloop when installed) on a free
  port of 127.0.0.1, in a thread of the test process.
* :class:`ProcessServer` runs ``python -m pyfriction_server`` in a subprocess (for kill -9,
  SIGTERM and the 10,000-stream test, which needs its own file-descriptor budget).

Nothing here listens on or sends to anything but 127.0.0.1.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Any

import httpx
import msgspec

from pyfriction_server import Server, Settings, create_app, server_config

HOST = "127.0.0.1"
WRITE_KEY = "wk_test_publishable"
ADMIN_KEY = "sk_test_secret"
SECRET = "identity-secret-for-tests"
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

#: A guidance catalog for the tests: a tooltip on #pay for any episode there.
GUIDANCE_CONFIG: dict[str, Any] = {
    "guidance": {
        "items": [
            {"id": "pay-help", "kind": "tooltip", "anchor": "#pay", "title": "Payment is on its way",
             "body": "No need to click **Pay** again: the receipt appears here.", "url": "/help/payments"},
        ],
        "rules": [{"guidance": "pay-help", "target": "#pay"}],
        "holdout": {"share": 0.0},
        "caps": {"per_day": 100, "item_cooldown": 0.0},
    },
    "event_map": {"Payment Failed": "api_error"},
}  # fmt: skip
#: The sidecar's own per-event mapping in the tests ([server.events]).
EVENT_RULES: dict[str, Any] = {
    "Import Failed": {"type": "api_error", "step": "import", "target_from": "properties.endpoint",
                      "status_from": "properties.code"},
}  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def wait_ready(url: str, timeout: float = 30.0, proc: subprocess.Popen[bytes] | None = None) -> None:
    """Poll ``/readyz`` until 200 (fails if ``proc`` exits first)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"sidecar exited with {proc.returncode}")
        try:
            if httpx.get(url + "/readyz", timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise TimeoutError(f"sidecar at {url} not ready within {timeout} s")


class ThreadServer:
    """The sidecar on a free loopback port, served by uvicorn in a thread."""

    def __init__(self, **settings: Any) -> None:
        settings.setdefault("host", HOST)
        settings.setdefault("port", free_port())
        settings.setdefault("state_dir", "")
        self.settings = msgspec.convert(settings, Settings)
        self.app = create_app(self.settings)
        self.server = Server(server_config(self.app, self.settings, log_level="warning"))
        self.url = f"http://{HOST}:{self.settings.port}"
        self.thread = threading.Thread(target=self.server.run, name="sidecar", daemon=True)

    @property
    def sidecar(self) -> Any:
        return self.app.state.sidecar

    @property
    def tracker(self) -> Any:
        return self.sidecar.state.tracker

    def __enter__(self) -> ThreadServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("sidecar did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(30)


class ProcessServer:
    """``python -m pyfriction_server`` in a subprocess, on a free loopback port."""

    def __init__(self, state_dir: str, *args: str, port: int | None = None, env: dict[str, str] | None = None,
                 config: str | None = None, workers: int | None = 1) -> None:  # fmt: skip
        self.port = port or free_port()
        self.url = f"http://{HOST}:{self.port}"
        self.argv = [sys.executable, "-m", "pyfriction_server", "--host", HOST, "--port", str(self.port),
                     "--state-dir", state_dir, "--write-key", WRITE_KEY, "--admin-key", ADMIN_KEY,
                     "--log-level", "warning", *args]  # fmt: skip
        if workers is not None:  # one process unless a test asks for workers (None: the default, one per core)
            self.argv += ["--workers", str(workers)]
        if "--live-dir" not in args:  # the workers' live files beside the state directory, not in /dev/shm
            self.live_dir = os.path.join(os.path.dirname(os.path.abspath(state_dir)), "live")
            os.makedirs(self.live_dir, exist_ok=True)
            self.argv += ["--live-dir", self.live_dir]
        else:
            self.live_dir = args[args.index("--live-dir") + 1]
        if config:
            self.argv += ["--config", config]
        self.env = dict(os.environ)
        self.env["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, self.env.get("PYTHONPATH", "")) if p)
        self.env.update(env or {})
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = os.path.join(os.path.dirname(os.path.abspath(state_dir)), f"sidecar-{self.port}.log")

    def start(self, timeout: float = 60.0) -> ProcessServer:
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.argv, env=self.env, stdout=self.log, stderr=self.log, cwd=ROOT)
        try:
            wait_ready(self.url, timeout, self.proc)
        except Exception:
            self.stop()
            raise RuntimeError(f"sidecar failed to start; log:\n{self.read_log()}") from None
        return self

    def read_log(self) -> str:
        with open(self.log_path, "rb") as fh:
            return fh.read().decode(errors="replace")[-5000:]

    def kill(self) -> None:
        """kill -9."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)
        self.log.close()

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM and wait (graceful shutdown); returns the exit status."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.log.close()
        return int(self.proc.returncode)

    def __enter__(self) -> ProcessServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.stop()


def user_events(url: str, user_id: str) -> int:
    """Events the sidecar has scored for ``user_id`` (0 when unknown)."""
    r = httpx.get(f"{url}/v1/users/{user_id}", headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=10)
    if r.status_code == 404:
        return 0
    r.raise_for_status()
    return int(r.json()["events"])


def wait_for(predicate: Any, timeout: float = 15.0, interval: float = 0.05) -> Any:
    """Poll ``predicate()`` until truthy; returns its value (fails on timeout)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s (last value {value!r})")
        time.sleep(interval)


USERS = 50
BATCH = 50


class Loader:
    """Sends numbered batches of native events (unique ids) from a few threads and remembers
    which ones the sidecar accepted (answered 200)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.sent: dict[int, list[dict[str, Any]]] = {}
        self.accepted: set[int] = set()
        self.stop = threading.Event()
        self._next = 0
        self._lock = threading.Lock()

    def batch(self, n: int) -> list[dict[str, Any]]:
        return [{"id": f"b{n}-{i}", "user_id": f"user-{(n * BATCH + i) % USERS}", "type": "click",
                 "target": f"#t{i % 7}", "ts": 1_700_000_000.0 + n} for i in range(BATCH)]  # fmt: skip

    def _worker(self) -> None:
        with httpx.Client(headers={"X-Write-Key": WRITE_KEY}, timeout=5) as client:
            while not self.stop.is_set():
                with self._lock:
                    n = self._next
                    self._next += 1
                events = self.sent.setdefault(n, self.batch(n))
                try:
                    r = client.post(self.url + "/v1/events", json=events)
                except httpx.HTTPError:
                    time.sleep(0.01)
                    continue
                if r.status_code == 200:
                    with self._lock:
                        self.accepted.add(n)

    def run(self, threads: int = 4) -> list[threading.Thread]:
        ts = [threading.Thread(target=self._worker, daemon=True) for _ in range(threads)]
        for t in ts:
            t.start()
        return ts

    def expected(self, batches: Any) -> dict[str, int]:
        counts: dict[str, int] = {}
        for n in batches:
            for e in self.sent[n]:
                counts[e["user_id"]] = counts.get(e["user_id"], 0) + 1
        return counts


def events_by_user(url: str) -> dict[str, int]:
    """Events scored per user of the :class:`Loader`'s users (admin endpoint)."""
    out = {}
    with httpx.Client(headers={"Authorization": f"Bearer {ADMIN_KEY}"}) as c:
        for u in range(USERS):
            r = c.get(f"{url}/v1/users/user-{u}")
            out[f"user-{u}"] = r.json()["events"] if r.status_code == 200 else 0
    return out
