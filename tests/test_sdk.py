"""pyfriction.init() and the SDK contract: options, environment, hooks, sampling, user
context, exit flush, fork safety, the integration registry."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

import pyfriction
from pyfriction import sdk
from pyfriction.integrations import DidNotEnable, Integration

from helpers import T0, ev, reset_sdk

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


_reset = reset_sdk


@pytest.fixture
def seen(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Any]]:
    """A clean SDK; ``seen`` collects the events the default tracker receives (after init)."""
    for name in list(os.environ):
        if name.startswith("PYFRICTION_") and name != "PYFRICTION_NO_EXTENSIONS":
            monkeypatch.delenv(name)
    _reset()
    events: list[Any] = []
    real_init = sdk.init

    def init(*args: Any, **kwargs: Any) -> pyfriction.Tracker:
        kwargs.setdefault("engine", "reference")
        kwargs.setdefault("default_integrations", False)
        tracker = real_init(*args, **kwargs)
        original, original_many = tracker.observe, tracker.observe_many

        def spy(event: Any) -> float:
            score = original(event)
            events.append(event)
            return score

        def spy_many(batch: Any) -> Any:
            scores = original_many(batch)
            events.extend(batch)
            return scores

        tracker.observe = spy  # type: ignore[method-assign]
        tracker.observe_many = spy_many  # type: ignore[method-assign]
        return tracker

    monkeypatch.setattr(pyfriction, "init", init)
    yield events
    _reset()


def rage(user: str, t0: float = T0) -> list[dict[str, Any]]:
    return [ev(user, "click", t0 + 0.1 * i, "s", "#b") for i in range(3)]


# -- options and environment --------------------------------------------------------------------


def test_init_defaults(seen: list[Any]) -> None:
    tracker = pyfriction.init()
    assert pyfriction.get_tracker() is tracker
    assert sdk.is_enabled() and sdk.options.sample_rate == 1.0 and sdk.options.shutdown_timeout == 2.0
    assert sdk.options.store == "memory://" and sdk.options.fast
    assert pyfriction.observe(ev("u1", "page", T0, "a")) == 0.0
    assert len(seen) == 1


def test_environment_fallbacks(seen: list[Any], monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    cfg = tmp_path / "friction.toml"
    cfg.write_text("[scoring]\nthreshold = 0.5\n")
    monkeypatch.setenv("PYFRICTION_CONFIG", str(cfg))
    monkeypatch.setenv("PYFRICTION_ENABLED", "off")
    monkeypatch.setenv("PYFRICTION_SAMPLE_RATE", "0.25")
    monkeypatch.setenv("PYFRICTION_DEBUG", "1")
    monkeypatch.setenv("PYFRICTION_SHUTDOWN_TIMEOUT", "0.5")
    tracker = pyfriction.init()
    assert tracker.config.scoring.threshold == 0.5
    assert not sdk.is_enabled() and sdk.options.sample_rate == 0.25
    assert sdk.options.debug and logging.getLogger("pyfriction").level == logging.DEBUG
    assert sdk.options.shutdown_timeout == 0.5
    # explicit arguments win over the environment
    tracker = pyfriction.init({"scoring": {"threshold": 0.7}}, enabled=True, sample_rate=1.0, debug=False)
    assert tracker.config.scoring.threshold == 0.7 and sdk.is_enabled() and sdk.options.fast
    logging.getLogger("pyfriction").setLevel(logging.NOTSET)


@pytest.mark.parametrize(
    ("name", "value", "match"),
    [("PYFRICTION_ENABLED", "maybe", "PYFRICTION_ENABLED"), ("PYFRICTION_SAMPLE_RATE", "half", "PYFRICTION_SAMPLE_RATE"),
     ("PYFRICTION_SAMPLE_RATE", "1.5", "sample_rate")],
)  # fmt: skip
def test_bad_environment_is_a_clear_error(
    seen: list[Any], monkeypatch: pytest.MonkeyPatch, name: str, value: str, match: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(pyfriction.ConfigError, match=match):
        pyfriction.init()


def test_bad_arguments(seen: list[Any]) -> None:
    with pytest.raises(pyfriction.ConfigError, match="sample_rate"):
        pyfriction.init(sample_rate=-0.1)
    with pytest.raises(TypeError, match="before_observe"):
        pyfriction.init(before_observe="redact")  # type: ignore[arg-type]
    with pytest.raises(pyfriction.ConfigError, match="threshold"):
        pyfriction.init(scoring={"threshold": 2})
    assert pyfriction._default is None  # a failed init leaves nothing behind


def test_store(seen: list[Any], tmp_path: Any) -> None:
    pyfriction.init(store="memory://")
    assert sdk.options.store == "memory://"
    # the tracker's own store: init() hands the URL on
    with pytest.raises(Exception, match="memcached"):  # the store's own StoreError
        pyfriction.init(store="memcached://localhost/0")


def test_enabled_false_is_a_no_op(seen: list[Any]) -> None:
    got: list[Any] = []
    tracker = pyfriction.init(enabled=False)
    pyfriction.on_friction(got.append, sync=True)
    assert [pyfriction.observe(e) for e in rage("u1")] == [0.0, 0.0, 0.0]
    out = pyfriction.observe_many(rage("u2"))
    assert out.tolist() == [0.0, 0.0, 0.0]
    with pyfriction.user_context("u3"):
        assert pyfriction.observe({"type": "error"}) == 0.0
    assert seen == [] and got == [] and tracker.stats().events == 0


# -- before_observe and sampling ------------------------------------------------------------------


def test_before_observe_redacts_and_drops(seen: list[Any], caplog: pytest.LogCaptureFixture) -> None:
    def hook(event: Any) -> Any:
        if event.get("step") == "secret":
            return None
        if event.get("step") == "crash":
            raise KeyError("bug in the hook")
        return {**event, "target": "[redacted]"}

    pyfriction.init(before_observe=hook)
    pyfriction.observe(ev("u1", "click", T0, "a", "#email"))
    pyfriction.observe(ev("u1", "click", T0, "secret", "#pw"))
    pyfriction.observe(ev("u1", "click", T0, "crash", "#x"))
    scores = pyfriction.observe_many([ev("u2", "click", T0, "a", "#y"), ev("u2", "click", T0, "secret", "#z")])
    assert scores.shape == (2,)
    assert [(e["user_id"], e["target"]) for e in seen] == [("u1", "[redacted]"), ("u2", "[redacted]")]
    assert sdk.counters() == {"sampled_out": 0, "dropped_by_hook": 2, "hook_errors": 1, "integration_errors": 0}
    assert "before_observe failed" in caplog.text


def test_sampling_is_deterministic_by_user(seen: list[Any]) -> None:
    pyfriction.init(sample_rate=0.3)
    users = [f"user-{i}" for i in range(4000)]
    kept = {u for u in users if sdk.sampled(u)}
    assert 0.26 < len(kept) / len(users) < 0.34
    for u in users[:200]:
        for e in rage(u):
            pyfriction.observe(e)
    assert {e["user_id"] for e in seen} == kept & set(users[:200])
    assert all(sum(e["user_id"] == u for e in seen) in (0, 3) for u in users[:200])  # all or nothing
    # the same users in another process (hash-seed independent), and at a higher rate a superset
    code = "import pyfriction; from pyfriction import sdk; pyfriction.init(sample_rate=0.3, engine='reference');" \
           "print(sum(sdk.sampled(f'user-{i}') for i in range(4000)))"  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         env={**os.environ, "PYTHONHASHSEED": "123"}, check=True)  # fmt: skip
    assert int(out.stdout) == len(kept)
    pyfriction.init(sample_rate=0.6)
    assert kept <= {u for u in users if sdk.sampled(u)}
    pyfriction.init(sample_rate=0.0)
    assert pyfriction.observe(ev("anyone", "page", T0, "a")) == 0.0
    assert sdk.counters()["sampled_out"] >= 1


def test_observe_many_columns_with_options(seen: list[Any]) -> None:
    pyfriction.init(sample_rate=0.5, before_observe=lambda e: e)
    users = [f"c{i}" for i in range(40)]
    columns = {
        "user_id": users,
        "type": ["search"] * 40,
        "ts": np.full(40, T0),
        "results": np.zeros(40, dtype=np.int64),
    }
    out = pyfriction.observe_many(columns)
    assert out.shape == (40,)
    assert sorted(e["user_id"] for e in seen) == sorted(u for u in users if sdk.sampled(u))
    assert all(e["properties"] == {"results": 0} for e in seen)


# -- the user context -----------------------------------------------------------------------------


def test_set_user_and_user_context(seen: list[Any]) -> None:
    pyfriction.init()
    with pytest.raises(pyfriction.InvalidEvent, match="user_id"):
        pyfriction.observe({"type": "error"})  # no user anywhere
    with pyfriction.user_context("u1", account_id="acme", step="/import") as ctx:
        assert pyfriction.current_user() is ctx and ctx.user_id == "u1"
        pyfriction.observe({"type": "form_error", "target": "#date"})
        with pyfriction.user_context("u2"):
            pyfriction.observe({"type": "error", "step": "/billing"})
        pyfriction.observe({"user_id": "u9", "type": "page", "step": "x"})  # explicit user: untouched
    assert pyfriction.current_user() is None
    pyfriction.set_user("u3", account_id="beta")
    pyfriction.observe_many([{"type": "page", "step": "/a"}])
    pyfriction.set_user(None)
    assert pyfriction.current_user() is None
    got = [(e["user_id"], e.get("account_id"), e["type"], e.get("step")) for e in seen]
    assert got == [("u1", "acme", "form_error", "/import"), ("u2", None, "error", "/billing"),
                   ("u9", None, "page", "x"), ("u3", "beta", "page", "/a")]  # fmt: skip


def test_set_user_traits_reach_identify(seen: list[Any]) -> None:
    tracker = pyfriction.init()
    calls: list[Any] = []
    tracker.identify = lambda uid, traits: calls.append((uid, traits))  # type: ignore[attr-defined]
    pyfriction.set_user("u1", traits={"plan": "pro"})
    with pyfriction.user_context("u2", traits={"locale": "fr"}):
        pass
    pyfriction.set_user("u3")
    assert calls == [("u1", {"plan": "pro"}), ("u2", {"locale": "fr"})]
    assert pyfriction.current_user().traits is None  # type: ignore[union-attr]
    pyfriction.set_user(None)


def test_context_is_per_task_and_per_thread(seen: list[Any]) -> None:
    pyfriction.init()

    async def request(user: str) -> None:
        pyfriction.set_user(user)
        await asyncio.sleep(0.01)
        pyfriction.observe({"type": "page", "step": user})

    async def main() -> None:
        await asyncio.gather(*(request(f"t{i}") for i in range(5)))

    asyncio.run(main())

    def worker(user: str) -> None:
        with pyfriction.user_context(user):
            time.sleep(0.01)
            pyfriction.observe({"type": "page", "step": user})

    threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted((e["user_id"], e["step"]) for e in seen) == sorted(
        [(f"t{i}", f"t{i}") for i in range(5)] + [(f"w{i}", f"w{i}") for i in range(5)]
    )
    assert pyfriction.current_user() is None


# -- process life -----------------------------------------------------------------------------------


def _run(code: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYFRICTION_") or k == "PYFRICTION_NO_EXTENSIONS"}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env=env)  # fmt: skip


def test_exit_flushes_queued_callbacks(tmp_path: Any) -> None:
    out = tmp_path / "episodes.txt"
    r = _run(f"""
        import time, pyfriction
        pyfriction.init(engine="reference", shutdown_timeout=5)
        def slow(ep):
            time.sleep(0.3)
            open({str(out)!r}, "a").write(ep.user_id + "\\n")
        pyfriction.on_friction(slow)
        for u in ("a", "b"):
            for i in range(3):
                pyfriction.observe({{"user_id": u, "type": "click", "target": "#x", "ts": 1e9 + i * 0.1}})
    """)
    assert r.returncode == 0, r.stderr
    assert out.read_text().split() == ["a", "b"]


def test_shutdown_timeout_bounds_the_exit() -> None:
    # The callback would keep the interpreter for an hour; _run's timeout (60 s) fails the test
    # if the exit waits for it rather than for shutdown_timeout.
    r = _run("""
        import time, pyfriction
        pyfriction.init(engine="reference", shutdown_timeout=0.3)
        pyfriction.on_friction(lambda ep: time.sleep(3600))
        for i in range(3):
            pyfriction.observe({"user_id": "a", "type": "click", "target": "#x", "ts": 1e9 + i * 0.1})
        time.sleep(0.1)
    """)
    assert r.returncode == 0, r.stderr


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_fork_safety() -> None:
    r = _run("""
        import os, sys, threading, pyfriction
        pyfriction.init(engine="reference")
        got = []
        pyfriction.on_friction(lambda ep: got.append(ep.user_id))
        for i in range(3):  # the parent's dispatcher thread is running
            pyfriction.observe({"user_id": "parent", "type": "click", "target": "#x", "ts": 1e9 + i * 0.1})
        assert pyfriction.flush(5) and got == ["parent"]
        # fork while another thread holds the SDK lock
        held = threading.Event(); release = threading.Event()
        def hold():
            with pyfriction.sdk._lock:
                held.set(); release.wait(5)
        threading.Thread(target=hold, daemon=True).start(); held.wait(5)
        pid = os.fork()
        if pid == 0:
            got.clear()
            pyfriction.init(engine="reference")  # needs the lock: a fresh one in the child
            for i in range(3):
                pyfriction.observe({"user_id": "child", "type": "click", "target": "#x", "ts": 1e9 + i * 0.1})
            ok = pyfriction.flush(5) and got == ["child"]
            os._exit(0 if ok else 3)
        release.set()
        _, status = os.waitpid(pid, 0)
        print(os.waitstatus_to_exitcode(status))
    """)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "0"


# -- integrations -----------------------------------------------------------------------------------


class Missing(Integration):
    identifier = "missing-framework"
    requires = ("no_such_framework_pyfriction_test",)

    def setup_once(self) -> None:  # pragma: no cover - never reached
        raise AssertionError("set up without its framework")


class Counting(Integration):
    identifier = "counting"
    calls = 0

    def setup_once(self) -> None:
        Counting.calls += 1


def test_integration_registry(seen: list[Any], monkeypatch: pytest.MonkeyPatch) -> None:
    import pyfriction.integrations as registry

    defaults = registry.default_integrations
    monkeypatch.setattr(registry, "default_integrations", lambda: [*defaults(), Missing()])
    pyfriction.init(default_integrations=True)  # skipped quietly
    assert "missing-framework" not in sdk.options.integrations
    assert {"logging"} <= set(sdk.options.integrations)
    with pytest.raises(DidNotEnable, match="no_such_framework"):
        pyfriction.init(integrations=[Missing()])
    pyfriction.init(integrations=[Counting()])
    pyfriction.init(integrations=[Counting()])
    assert Counting.calls == 1 and isinstance(Counting.active, Counting)
    pyfriction.init()
    assert Counting.active is None and sdk.options.integrations == {}
    with pytest.raises(TypeError, match="Integration instances"):
        pyfriction.init(integrations=["flask"])


def test_integrations_skip_quietly_without_their_frameworks(tmp_path: Any) -> None:
    # a process where flask, starlette and django cannot be imported
    r = _run("""
        import sys, logging
        for name in ("flask", "starlette", "fastapi", "django"):
            sys.modules[name] = None
        logging.basicConfig(level=logging.DEBUG)
        import pyfriction
        pyfriction.init(engine="reference")
        print(sorted(pyfriction.sdk.options.integrations))
    """)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "['logging']"
    assert "Traceback" not in r.stderr and "WARNING" not in r.stderr
