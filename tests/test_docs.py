"""The docs: ``mkdocs build --strict`` passes, the generated reference pages cover the code,
and every Python code block in the docs runs (each page's blocks in order, in one namespace,
like a reader pasting them into a fresh interpreter). TOML blocks must load as a config.

Needs the ``docs`` extra (mkdocs-material): skips locally without it, FAILS under ``CI=true``.
"""

from __future__ import annotations

import glob
import importlib.util
import os
import re
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from typing import Any

import msgspec
import pytest

import pyfriction
from pyfriction import sdk
from pyfriction.integrations import _all_classes

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = os.path.join(ROOT, "docs")
PAGES = sorted(glob.glob(os.path.join(DOCS, "**", "*.md"), recursive=True))
FENCE = re.compile(r"^```(\w+)[^\n]*\n(.*?)^```", re.M | re.S)


def _blocks(page: str, languages: tuple[str, ...]) -> list[str]:
    with open(page, encoding="utf-8") as fh:
        text = fh.read()
    return [m.group(2) for m in FENCE.finditer(text) if m.group(1) in languages]


def _require(module: str) -> None:
    if importlib.util.find_spec(module) is None:
        message = f"{module} is not installed (pip install -e '.[test]')"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(message, pytrace=False)
        pytest.skip(message)


def _reset() -> None:
    if pyfriction._default is not None:
        pyfriction._default.close(timeout=5)
    pyfriction._default = None
    sdk._options.__init__()  # type: ignore[misc]
    for cls in _all_classes():
        cls.active = None
    sdk._user.set(None)


@pytest.fixture
def fresh(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> Iterator[None]:
    for name in list(os.environ):
        if name.startswith("PYFRICTION_") and name != "PYFRICTION_NO_EXTENSIONS":
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    _reset()
    yield
    _reset()


def test_mkdocs_build_strict(tmp_path: Any) -> None:
    _require("mkdocs")
    _require("material")
    r = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", os.path.join(ROOT, "mkdocs.yml"),
                        "-d", str(tmp_path / "site")], cwd=ROOT, capture_output=True, text=True, timeout=240,
                       env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    assert (tmp_path / "site" / "reference" / "configuration" / "index.html").exists()
    assert (tmp_path / "site" / "reference" / "sidecar-api" / "index.html").exists()


def test_configuration_reference_covers_every_key() -> None:
    sys.path.insert(0, os.path.join(DOCS, "hooks"))
    try:
        import generate
    finally:
        sys.path.remove(os.path.join(DOCS, "hooks"))
    page = generate.config_reference()
    seen: set[type] = set()
    for path, cls in generate._walk(pyfriction.Config, "", seen):
        assert f"## `{path or '(top level)'}`" in page
        for field in msgspec.inspect.type_info(cls).fields:  # type: ignore[attr-defined]
            assert f"| `{field.encode_name}` |" in page, f"{path}.{field.encode_name} missing"
    assert "| `threshold` | number | `0.6` | > `0`, < `1` |" in page
    api = generate.sidecar_reference()
    if generate.sidecar_document() is not None:
        for path in generate.sidecar_document()["paths"]:  # type: ignore[index]
            assert path in api


@pytest.mark.parametrize("page", PAGES, ids=[os.path.relpath(p, DOCS) for p in PAGES])
def test_python_blocks_run(page: str, fresh: None) -> None:
    blocks = _blocks(page, ("python", "py"))
    if not blocks:
        pytest.skip("no Python blocks")
    if any("fastapi" in b for b in blocks):
        pytest.importorskip("fastapi")
    if any("flask" in b for b in blocks):
        pytest.importorskip("flask")
    namespace: dict[str, Any] = {"__name__": "__docs__"}
    for i, block in enumerate(blocks):
        try:
            exec(compile(block, f"{os.path.relpath(page, ROOT)}[python block {i + 1}]", "exec"), namespace)
        except Exception as exc:
            raise AssertionError(
                f"{os.path.relpath(page, ROOT)}, Python block {i + 1} failed: {exc!r}\n{block}"
            ) from exc
    pyfriction.flush(timeout=5)


@pytest.mark.parametrize("page", PAGES, ids=[os.path.relpath(p, DOCS) for p in PAGES])
def test_toml_blocks_are_valid_configs(page: str) -> None:
    blocks = _blocks(page, ("toml",))
    if not blocks:
        pytest.skip("no TOML blocks")
    for block in blocks:
        pyfriction.load_config(tomllib.loads(block))
