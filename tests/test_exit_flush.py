"""Callbacks still queued when the interpreter exits are delivered (issue 13 point 4).

``on_friction`` callbacks run on a daemon thread; before, a script that observed and exited lost
its last episodes without a word. The tracker module's atexit hook now flushes every open
tracker, bounded by ``$PYFRICTION_SHUTDOWN_TIMEOUT`` (default 2 s) in all. Each case runs a
script in a fresh interpreter, on both engines.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from pyfriction.tracker import compiled_available

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENGINES = ["reference"] + (["compiled"] if compiled_available() else [])


def run(script: str, engine: str, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("PYFRICTION_")}
    if engine == "reference":
        environ["PYFRICTION_NO_EXTENSIONS"] = "1"
    environ.update(env)
    environ["PYTHONPATH"] = ROOT + os.pathsep + environ.get("PYTHONPATH", "")
    # The timeout only keeps a hung exit from hanging the suite; nothing is asserted on time.
    return subprocess.run([sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True,
                          timeout=120, env=environ)  # fmt: skip


EPISODES = """
    import time
    import pyfriction

    tracker = pyfriction.Tracker()

    @tracker.on_friction
    def slow(episode):
        time.sleep(0.05)  # slower than the script: episodes are still queued at exit
        print(episode.user_id, [r.detector for r in episode.reasons], flush=True)

    for i in range(8):
        for k in range(3):
            tracker.observe({"user_id": f"u{i}", "type": "form_error", "target": "#f", "ts": 1.7e9 + 20 * k})
    print("engine", tracker.engine, flush=True)
"""


@pytest.mark.parametrize("engine", ENGINES)
def test_queued_episodes_are_delivered_at_exit(engine: str) -> None:
    r = run(EPISODES, engine)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == f"engine {engine}"
    assert sorted(lines[1:]) == sorted(f"u{i} ['repeat_failure', 'error_burst']" for i in range(8))


@pytest.mark.parametrize("engine", ENGINES)
def test_a_stuck_callback_does_not_hang_the_exit(engine: str) -> None:
    r = run(
        """
        import threading
        import pyfriction

        tracker = pyfriction.Tracker()
        tracker.on_friction(lambda episode: threading.Event().wait())  # never returns
        for k in range(3):
            tracker.observe({"user_id": "u1", "type": "form_error", "target": "#f", "ts": 1.7e9 + 20 * k})
        print("observed", flush=True)
        """,
        engine,
        PYFRICTION_SHUTDOWN_TIMEOUT="0.2",
    )
    assert r.returncode == 0 and r.stdout == "observed\n", r.stderr


@pytest.mark.parametrize("engine", ENGINES)
def test_without_a_budget_the_queue_dies_with_the_process(engine: str) -> None:
    """The control: what delivers them is the exit flush (a budget of 0 skips it, and episodes
    that take 4 s of callbacks are cut off), and close() before exit delivers them too."""
    slow = EPISODES.replace("time.sleep(0.05)", "time.sleep(0.5)")
    r = run(slow, engine, PYFRICTION_SHUTDOWN_TIMEOUT="0")
    assert r.returncode == 0, r.stderr
    assert len(r.stdout.splitlines()) < 1 + 8
    r = run(EPISODES.replace('print("engine"', 'tracker.close(); print("engine"'), engine,
            PYFRICTION_SHUTDOWN_TIMEOUT="0")  # fmt: skip
    assert sorted(r.stdout.splitlines()[:-1]) == sorted(f"u{i} ['repeat_failure', 'error_burst']" for i in range(8))
