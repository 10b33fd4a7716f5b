"""The set-up the README promises: pinned dependencies, lint and types clean, no timing in tests.

These guard the project's own reproducibility (issue: a newcomer's first hour). They read the
repository's files and run its linters; they score no events.
"""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent


def _pins() -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"constraints.txt: {line!r} is not an exact pin"
            pins[canonicalize_name(name)] = version
    return pins


def _declared_requirements() -> list[Requirement]:
    """Every requirement the README's install command asks for: both distributions' runtime
    dependencies and their extras (pyfriction's own extras expanded)."""
    reqs: list[Requirement] = []
    for path in (ROOT / "pyproject.toml", ROOT / "server" / "pyproject.toml"):
        project = tomllib.loads(path.read_text())["project"]
        reqs += [Requirement(r) for r in project["dependencies"]]
        for extra in project.get("optional-dependencies", {}).values():
            reqs += [Requirement(r) for r in extra]
    return [r for r in reqs if canonicalize_name(r.name) not in ("pyfriction", "pyfriction-server")]


def test_readme_and_ci_install_with_the_constraints() -> None:
    readme = (ROOT / "README.md").read_text()
    command = "python -m pip install -c constraints.txt -e '.[test]' -e './server[test]' && python -m pyfriction demo"
    assert command in readme
    assert command in (ROOT / ".ci" / "run").read_text()


def test_every_dependency_is_pinned_and_installed_at_its_pin() -> None:
    pins = _pins()
    for req in _declared_requirements():
        if req.marker is not None and not req.marker.evaluate():
            continue
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} is a dependency but constraints.txt does not pin it"
        assert req.specifier.contains(pins[name], prereleases=True), f"{req.name}: pin {pins[name]} outside {req}"
        installed = metadata.version(req.name)
        assert installed == pins[name], f"{req.name} {installed} installed, constraints.txt pins {pins[name]}"


def test_build_requirements_are_exact() -> None:
    for path in (ROOT / "pyproject.toml", ROOT / "server" / "pyproject.toml"):
        for raw in tomllib.loads(path.read_text())["build-system"]["requires"]:
            req = Requirement(raw)
            assert [s.operator for s in req.specifier] == ["=="], f"{path.name}: build requirement {raw} is not pinned"


def test_supported_pythons_are_declared() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["requires-python"] == ">=3.11"
    declared = {c.rsplit(" ", 1)[-1] for c in project["classifiers"] if re.fullmatch(r".*:: 3\.\d+", c)}
    assert {"3.11", "3.13"} <= declared
    assert f"{sys.version_info.major}.{sys.version_info.minor}" in declared


# time.time() is left out: tests compare it with wall-clock stamps (a signature's t=), not durations.
_CLOCKS = {("time", "monotonic"), ("time", "perf_counter")}
_ELAPSED_NAMES = {"elapsed", "started", "latency", "p99"}


def _timing_asserts(tree: ast.AST) -> list[int]:
    """Lines of ``assert`` statements that compare a clock reading or an elapsed-time variable."""

    def clock_call(node: ast.AST) -> bool:
        return any(
            isinstance(sub, ast.Call)
            and isinstance(sub.func, ast.Attribute)
            and isinstance(sub.func.value, ast.Name)
            and (sub.func.value.id, sub.func.attr) in _CLOCKS
            for sub in ast.walk(node)
        )

    def reads_clock(node: ast.AST) -> bool:
        # `clock() - started` or a variable holding such a difference; `clock() < deadline`
        # (waiting for a condition, with a generous deadline) is not a measurement.
        for sub in ast.walk(node):
            if isinstance(sub, ast.BinOp) and isinstance(sub.op, ast.Sub) and clock_call(sub):
                return True
            if isinstance(sub, ast.Name) and sub.id in _ELAPSED_NAMES:
                return True
        return False

    return [n.lineno for n in ast.walk(tree) if isinstance(n, ast.Assert) and reads_clock(n.test)]


def test_no_test_asserts_on_elapsed_time() -> None:
    """Performance lives in benchmarks/: an assertion on elapsed time fails on a loaded machine."""
    found = []
    for path in sorted((ROOT / "tests").rglob("*.py")):
        lines = _timing_asserts(ast.parse(path.read_text(), str(path)))
        found += [f"{path.relative_to(ROOT)}:{line}" for line in lines]
    assert found == []


def test_the_timing_check_sees_an_elapsed_time_assertion() -> None:
    tree = ast.parse("import time\nstarted = time.monotonic()\nassert time.monotonic() - started < 5\n")
    assert _timing_asserts(tree) == [3]


@pytest.mark.parametrize(
    "command",
    [["ruff", "check", "--quiet", "."], ["ruff", "format", "--check", "--quiet", "."], ["mypy"]],
    ids=["ruff-check", "ruff-format", "mypy"],
)
def test_lint_and_types_are_clean(command: list[str]) -> None:
    if shutil.which(command[0]) is None:
        pytest.skip(f"{command[0]} is not installed (the README's install command brings it)")
    r = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
