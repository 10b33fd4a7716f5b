"""The docs: ``mkdocs build --strict`` passes, the generated reference pages cover the code,
and every snippet of README.md and docs/ runs exactly as printed and shows what the text says.

Each page runs in a fresh directory, its blocks in order, like a reader following it:

* ``python`` blocks run in one namespace per page (like pasting them into one interpreter);
* ``sh`` blocks run in ``bash -e``; a ``text`` block whose lines start with ``$ `` is a terminal
  session: its commands run (stderr with stdout, as a terminal shows them) and the other lines
  are their output, shortened where a line says only ``...``;
* a ``text`` block after ``<!-- docs: output -->`` is the stdout of the Python block before it,
  which is also run alone as a script in a fresh interpreter when it needs nothing from the
  blocks before it (so callbacks still queued at exit must be delivered);
* ``<!-- docs: not run (REASON) -->`` before a block says why it cannot run here (an install,
  a server that runs until stopped): the reason is required, and the marker is the only way to
  leave a Python or shell block out;
* ``toml`` blocks load as a config (the sidecar's, with a ``[server]`` table), or, after
  ``<!-- docs: excerpt of PATH -->``, every table and value they show is in that file.

Needs the ``docs`` extra (mkdocs-material) for the build: skips locally without it, FAILS
under ``CI=true``.
"""

from __future__ import annotations

import contextlib
import glob
import importlib.util
import io
import os
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import msgspec
import pytest

import pyfriction
from pyfriction import tracker

from helpers import reset_sdk

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = os.path.join(ROOT, "docs")
PAGES = sorted(glob.glob(os.path.join(DOCS, "**", "*.md"), recursive=True))
README = os.path.join(ROOT, "README.md")
SOURCES = [README, *PAGES]
SOURCE_IDS = [os.path.relpath(p, ROOT) for p in SOURCES]
FENCE = re.compile(r"^```(\w+)[^\n]*\n(.*?)^```", re.M | re.S)
MARKER = re.compile(r"<!--\s*docs:(.*?)-->\s*\Z", re.S)
SHELLS = ("sh", "bash", "shell", "console")
RUNNABLE = ("python", "py", *SHELLS)


@dataclass
class Block:
    lang: str
    code: str
    line: int
    #: The ``<!-- docs: ... -->`` marker right before the fence, without ``docs:``; or None.
    marker: str | None
    where: str

    @property
    def session(self) -> bool:
        return self.lang == "text" and self.code.startswith("$ ")

    def not_run(self) -> str | None:
        """The reason given for not running this block, or None."""
        m = re.fullmatch(r"not run \((.+)\)", self.marker or "", re.S)
        return m.group(1).strip() if m else None


def page_blocks(page: str) -> list[Block]:
    with open(page, encoding="utf-8") as fh:
        text = fh.read()
    blocks, end = [], 0
    for m in FENCE.finditer(text):
        before = text[end : m.start()]
        mark = MARKER.search(before)
        line = text.count("\n", 0, m.start()) + 1
        where = f"{os.path.relpath(page, ROOT)}:{line}"
        blocks.append(Block(m.group(1), m.group(2), line, mark.group(1).strip() if mark else None, where))
        end = m.end()
    return blocks


def _require(module: str) -> None:
    if importlib.util.find_spec(module) is None:
        message = f"{module} is not installed (pip install -e '.[test]')"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(message, pytrace=False)
        pytest.skip(message)


_reset = reset_sdk


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


# --- running the pages ---------------------------------------------------------------------------


def _lines(text: str) -> list[str]:
    lines = [line.rstrip() for line in text.rstrip("\n").split("\n")]
    return lines if lines != [""] else []


def shows(expected: str, actual: str) -> str | None:
    """None when ``actual`` is what ``expected`` shows: the same lines, where a line that says
    only ``...`` stands for any number of lines. Otherwise a description of the difference."""
    want, got = _lines(expected), _lines(actual)
    segments: list[list[str]] = [[]]
    for line in want:
        if line.strip() == "...":
            segments.append([])
        else:
            segments[-1].append(line)
    pos = 0
    for i, seg in enumerate(segments):
        if not seg:
            continue
        anchored = i == 0  # no "..." before it: it starts the output
        starts = [pos] if anchored else range(pos, len(got) - len(seg) + 1)
        for start in starts:
            if got[start : start + len(seg)] == seg:
                pos = start + len(seg)
                break
        else:
            return f"these lines are not in the output (in this order):\n{chr(10).join(seg)}"
    if segments[-1] and pos != len(got):
        return f"the output goes on after what the text shows:\n{chr(10).join(got[pos : pos + 5])}"
    return None


def _env() -> dict[str, str]:
    """What a reader's shell has: none of the test run's PYFRICTION_* settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYFRICTION_")}
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    # The console scripts (`pyfriction`) sit next to this interpreter, as in an activated venv.
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    return env


def _shell(command: str, cwd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", "-e", "-o", "pipefail", "-c", command], cwd=cwd, env=_env(), text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=600)  # fmt: skip


def _requirements(blocks: list[Block]) -> None:
    code = "\n".join(b.code for b in blocks if b.lang in RUNNABLE and b.not_run() is None)
    for module in ("fastapi", "flask", "django"):
        if re.search(rf"^\s*(from|import) {module}\b", code, re.M):
            pytest.importorskip(module)
    if re.search(r"^\$? ?pyfriction\b", code, re.M) and shutil.which("pyfriction", path=_env()["PATH"]) is None:
        pytest.fail("the `pyfriction` command is not on PATH (pip install -e .)")


def _flush_all() -> None:
    """What a script's exit delivers: every open tracker's queued callbacks."""
    for t in list(tracker._live_trackers):
        t.flush(10)


def run_page(page: str, cwd: str) -> list[str]:
    """Run every block of ``page`` in order in ``cwd``; returns what was checked (for the log)."""
    blocks = page_blocks(page)
    _requirements(blocks)
    namespace: dict[str, Any] = {"__name__": "__docs__"}
    open_before = {id(t) for t in tracker._live_trackers}
    checked: list[str] = []
    last_python: tuple[Block, str] | None = None  # the block and its stdout
    # The commands run without PYFRICTION_* in their environment: compiled whenever it is built.
    compiled = importlib.util.find_spec("pyfriction._core") is not None
    try:
        for block in blocks:
            reason = block.not_run()
            if block.marker is not None and reason is None and block.marker != "output" and not (
                    block.marker.startswith("excerpt of ")):  # fmt: skip
                pytest.fail(f"{block.where}: unknown marker <!-- docs: {block.marker} -->")
            if block.marker is not None and block.marker.startswith("not run") and not reason:
                pytest.fail(f"{block.where}: `not run` needs a reason: <!-- docs: not run (why) -->")
            if reason is not None:
                assert block.lang in RUNNABLE or block.session, f"{block.where}: `not run` on a {block.lang} block"
                checked.append(f"{block.where}: not run ({reason})")
                continue
            if block.lang in ("python", "py"):
                out = io.StringIO()
                with contextlib.redirect_stdout(out):
                    try:
                        exec(compile(block.code, block.where, "exec"), namespace)
                    except Exception as exc:
                        raise AssertionError(f"{block.where}: Python block failed: {exc!r}\n{block.code}") from exc
                    _flush_all()  # (the exit itself is checked in a subprocess below)
                last_python = (block, out.getvalue())
                checked.append(f"{block.where}: python ran")
            elif block.lang in SHELLS:
                r = _shell(block.code, cwd)
                assert r.returncode == 0, f"{block.where}: shell block failed ({r.returncode}):\n{r.stdout}"
                checked.append(f"{block.where}: {block.lang} ran")
            elif block.session:
                _check_session(block, cwd, compiled)
                checked.append(f"{block.where}: session ran and shows its output")
            elif block.marker == "output":
                assert block.lang == "text", f"{block.where}: an output block is a text block"
                assert last_python is not None, f"{block.where}: output of which Python block?"
                source, stdout = last_python
                problem = shows(block.code, stdout)
                assert problem is None, (
                    f"{block.where}: the Python block at line {source.line} printed\n{stdout}\n{problem}"
                )
                if standalone(source.code):
                    _check_script(source, block, cwd)
                    checked.append(f"{block.where}: output matches, also as a script")
                else:
                    checked.append(f"{block.where}: output matches")
                last_python = None
    finally:
        for t in list(tracker._live_trackers):
            if id(t) not in open_before:
                t.close(5)
    return checked


def standalone(code: str) -> bool:
    """Whether a block uses no name that an earlier block of its page defined (so a reader can
    run it alone as a script)."""
    import ast
    import builtins

    tree = ast.parse(code)
    bound, used = set(dir(builtins)), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            (used if isinstance(node.ctx, ast.Load) else bound).add(node.id)
        elif isinstance(node, ast.alias):
            bound.add((node.asname or node.name).split(".")[0])
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            bound.add(node.name)
        elif isinstance(node, ast.arg):
            bound.add(node.arg)
        elif isinstance(node, ast.ExceptHandler) and node.name:
            bound.add(node.name)
    return not used - bound


def _check_session(block: Block, cwd: str, compiled: bool) -> None:
    """Run the ``$ `` commands of a terminal session; their output must be what follows them."""
    steps: list[tuple[str, list[str]]] = []
    for line in block.code.rstrip("\n").split("\n"):
        if line.startswith("$ "):
            steps.append((line[2:], []))
        else:
            steps[-1][1].append(line)
    for command, expected in steps:
        r = _shell(command, cwd)
        assert r.returncode == 0, f"{block.where}: `{command}` failed ({r.returncode}):\n{r.stdout}"
        text = "\n".join(expected)
        if "compiled engine" in text and not compiled:
            continue  # a pure-Python install: the same figures, but "reference engine" in the header
        problem = shows(text, r.stdout)
        assert problem is None, f"{block.where}: `{command}` printed\n{r.stdout}\n{problem}"


def _check_script(source: Block, output: Block, cwd: str) -> None:
    """The block alone, as a script in a fresh interpreter, prints what the text shows: what
    its callbacks print before the interpreter exits included."""
    env = _env()
    if os.environ.get("PYFRICTION_NO_EXTENSIONS"):
        env["PYFRICTION_NO_EXTENSIONS"] = os.environ["PYFRICTION_NO_EXTENSIONS"]
    r = subprocess.run([sys.executable, "-c", source.code], cwd=cwd, env=env, capture_output=True, text=True,
                       timeout=300)  # fmt: skip
    assert r.returncode == 0, f"{source.where} as a script failed:\n{r.stderr}"
    problem = shows(output.code, r.stdout)
    assert problem is None, f"{source.where} as a script printed\n{r.stdout}\n{problem}"


@pytest.mark.parametrize("page", SOURCES, ids=SOURCE_IDS)
def test_page_runs_as_printed(page: str, fresh: None, tmp_path: Any) -> None:
    blocks = page_blocks(page)
    if not any(b.lang in RUNNABLE or b.session or b.marker for b in blocks):
        pytest.skip("no code to run")
    for line in run_page(page, str(tmp_path)):
        print(line)
    pyfriction.flush(timeout=5)


@pytest.mark.parametrize("page", SOURCES, ids=SOURCE_IDS)
def test_toml_blocks_are_valid_configs(page: str, tmp_path: Any) -> None:
    blocks = [b for b in page_blocks(page) if b.lang == "toml"]
    if not blocks:
        pytest.skip("no TOML blocks")
    for block in blocks:
        data = tomllib.loads(block.code)
        if block.marker and block.marker.startswith("excerpt of "):
            _check_excerpt(block, os.path.join(ROOT, block.marker[len("excerpt of ") :].strip()))
        elif "server" in data:
            settings = pytest.importorskip("pyfriction_server.settings")
            path = tmp_path / "server.toml"
            path.write_text(block.code, encoding="utf-8")
            settings.load_settings(environ={"PYFRICTION_SERVER_CONFIG": str(path)})
        else:
            pyfriction.load_config(data)


def _check_excerpt(block: Block, path: str) -> None:
    """Every table and value of the excerpt is in the file: plain tables key by key, items by
    id, rules whole (a rule is its conditions: a shortened one would be another rule)."""
    with open(path, "rb") as fh:
        full = tomllib.load(fh)
    part = tomllib.loads(block.code)

    def within(shown: Any, real: Any, at: str) -> None:
        if isinstance(shown, dict):
            assert isinstance(real, dict), f"{block.where}: {at} is not a table in {path}"
            for key, value in shown.items():
                assert key in real, f"{block.where}: {at}.{key} is not in {path}"
                if key == "items" and at == "guidance":
                    ids = {item["id"]: item for item in real["items"]}
                    for item in value:
                        assert item["id"] in ids, f"{block.where}: item {item['id']} is not in {path}"
                        within(item, ids[item["id"]], f"guidance.items[{item['id']}]")
                elif key == "rules" and at == "guidance":
                    for rule in value:
                        assert rule in real["rules"], f"{block.where}: rule {rule} is not in {path}"
                else:
                    within(value, real[key], f"{at}.{key}" if at else key)
        else:
            assert shown == real, f"{block.where}: {at} is {shown!r} here, {real!r} in {path}"

    within(part, full, "")


def test_unrunnable_blocks_are_marked() -> None:
    """The marker is what leaves a block out, and it says why; a marker stands on the line
    right before a fence (or it would not apply to anything)."""
    for page in SOURCES:
        text = open(page, encoding="utf-8").read()
        for m in re.finditer(r"<!--\s*docs:(.*?)-->", text, re.S):
            rest = text[m.end() :]
            assert re.match(r"\s*\n```\w+", rest), f"{os.path.relpath(page, ROOT)}: {m.group(0)} is not before a fence"
        for block in page_blocks(page):
            if block.marker is not None and block.marker.startswith("not run"):
                assert block.not_run(), f"{block.where}: `not run` without a reason"
                assert block.lang in RUNNABLE or block.session, f"{block.where}: nothing to leave out"


def test_shows() -> None:
    assert shows("a\nb\n", "a\nb") is None
    assert shows("a\n...\nd", "a\nb\nc\nd") is None
    assert shows("a\n  ...\nc", "a\nb\nc\nd") is not None  # the output goes on
    assert shows("a\n...\nc\n...", "a\nb\nc\nd") is None
    assert shows("b", "a\nb") is not None  # not anchored at the start
    assert shows("a\n...\nx", "a\nb") is not None
