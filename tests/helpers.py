"""Small helpers shared by the tests: import them from ``helpers`` (several test folders have
a conftest.py of their own, so ``import conftest`` would be ambiguous)."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import math
import os
import subprocess
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import msgspec
import pytest

if TYPE_CHECKING:
    import pyfriction

#: A round epoch time to start event streams at (2023-11-14T22:13:20Z).
T0 = 1_700_000_000.0


def ev(
    user: str,
    type: str,
    ts: float | None = None,
    step: str | None = None,
    target: str | None = None,
    **props: Any,
) -> dict[str, Any]:
    """An event mapping: ``ev("u1", "click", T0 + 1, "billing", "#pay", status=503)``.

    ``ts``, ``step`` and ``target`` are left out when None; extra keyword arguments become
    ``properties`` (e.g. ``status=``, ``results=``), except ``account_id=`` which is a field.
    """
    event: dict[str, Any] = {"user_id": user, "type": type}
    if ts is not None:
        event["ts"] = ts
    if step is not None:
        event["step"] = step
    if target is not None:
        event["target"] = target
    if "account_id" in props:
        event["account_id"] = props.pop("account_id")
    if props:
        event["properties"] = props
    return event


ENGINES = ["compiled", "reference"]


def compiled_core_error() -> str | None:
    """None when the compiled core imports with a ``CompiledCore``, else why not."""
    try:
        from pyfriction import _core

        _core.CompiledCore  # noqa: B018
    except (ImportError, AttributeError) as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def require_engine(name: str) -> None:
    """Skip (locally) or fail (under CI) when ``name`` is the compiled engine and it is not built."""
    if name != "compiled":
        return
    error = compiled_core_error()
    if error is None:
        return
    if os.environ.get("CI"):
        pytest.fail(
            "compiled core not built: `from pyfriction import _core; _core.CompiledCore` failed "
            f"({error}). CI must build the extension (pip install . or "
            "python setup.py build_ext --inplace) before running the tests.",
            pytrace=False,
        )
    pytest.skip("compiled core not built")


def reset_sdk() -> None:
    """Put the SDK back as a fresh import leaves it: no default tracker (the old one closed),
    default options, no active integration, no current user, zero counters."""
    import pyfriction
    from pyfriction import sdk
    from pyfriction.integrations import _all_classes

    tracker = pyfriction._default
    if tracker is not None:
        tracker.close(timeout=5.0)
    pyfriction._default = None
    sdk.options.__init__()  # type: ignore[misc]
    for cls in _all_classes():
        cls.active = None
    sdk.user_var.set(None)
    for key in sdk._counters:
        sdk._counters[key] = 0


def legacy_snapshot(doc: dict[str, Any], version: int, drop: tuple[str, ...] = ()) -> bytes:
    """The file snapshot version 1 or 2 would have written for the state of ``doc`` (a decoded
    current snapshot): a BLAKE2b digest of one payload holding everything, ``drop`` left out."""
    state = msgspec.msgpack.decode(doc["state"])
    for key in drop:
        del state[key]
    payload = msgspec.msgpack.encode({**state, "slots": b"".join(doc["slots"]), "steps": doc["steps"]})
    return msgspec.msgpack.encode({"format": doc["format"], "version": version, "layout": doc["layout"],
                                   "digest": hashlib.blake2b(payload, digest_size=16).hexdigest(),
                                   "payload": payload})  # fmt: skip


# --- pressures and scores as the specification computes them -----------------------------------
#: The default ``scoring.half_life``.
HALF_LIFE = 180.0


def score_of(total: float) -> float:
    """The score of a sum of pressures: ``1 - exp(-total)``."""
    return 1.0 - math.exp(-total)


def accumulate(*activations: tuple[float, float], at: float | None = None, half_life: float = HALF_LIFE) -> float:
    """A float32 pressure from ``(seconds, weight)`` activations in time order, each decayed to
    the next and added (as the engines do), valued at the last one (or at ``at``)."""
    from pyfriction._layout import f32

    rate = math.log(2.0) / half_life
    p, last = 0.0, activations[0][0]
    for t, w in activations:
        p = f32(f32(p * math.exp(-(t - last) * rate)) + w)
        last = t
    if at is not None:
        p = f32(p * math.exp(-(at - last) * rate))
    return p


def approx32(x: float) -> Any:
    """A pressure the engines reach by float32 steps: equal up to float32 rounding."""
    return pytest.approx(x, rel=1e-6)


def feed(tracker: pyfriction.Tracker, *events: dict[str, Any]) -> list[float]:
    """Observe ``events`` in order; their scores."""
    return [tracker.observe(e) for e in events]


def active(tracker: pyfriction.Tracker, user: str) -> dict[str, float]:
    """The pressure of each active detector of ``user`` (who must be tracked)."""
    state = tracker.state(user)
    assert state is not None, f"{user} is not tracked"
    return state.detectors


def load_module(name: str, path: str) -> Any:
    """Import the file ``path`` as module ``name`` (the examples are scripts, not packages)."""
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


# -- a small disk to fill -----------------------------------------------------------------------
@contextlib.contextmanager
def tmpfs(path: Any, size: str = "8m") -> Iterator[str]:
    """A tmpfs of ``size`` mounted at ``path`` (created) for the block: a small disk to fill."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs (the disk-full test) needs root; CI runs as root")
    os.makedirs(path, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)
    try:
        yield str(path)
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill_disk(path: str) -> int:
    """Fill the file system of ``path`` with one file; returns how many bytes it took."""
    written = 0
    with open(path, "wb", buffering=0) as fh:
        chunk = b"\xff" * 65536
        while True:
            try:
                written += fh.write(chunk)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
                break
        for size in (4096, 512, 1):  # the last scraps too
            while True:
                try:
                    written += fh.write(chunk[:size])
                except OSError:
                    break
    return written
