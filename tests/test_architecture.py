"""The engine as one specification (issue 14): one source of constants, one engine interface,
one public ``__all__``, no import cycles among the engine's modules.

* ``_core/consts.pxi`` is generated from ``pyfriction/_constants.py`` and regenerating it
  changes nothing; the compiled core was built with exactly those values;
* both engines implement :class:`pyfriction._engine.Engine` member for member, with the same
  parameters, and ``pyfriction/_core.pyi`` describes the compiled module as built;
* the detector parameters travel as one record (``Rules.params``) that the core copies
  byte for byte, and the reference reads the same numbers;
* ``pyfriction.__all__`` is the public API, the SDK's included.
"""

from __future__ import annotations

import ast
import inspect
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import pyfriction
from pyfriction import _constants, _gen_consts, sdk
from pyfriction._engine import Engine
from pyfriction._layout import PARAMS_DTYPE
from pyfriction._reference import ReferenceCore
from pyfriction._rules import Rules
from pyfriction.config import Config

from helpers import T0, ev

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "pyfriction"


# -- constants -------------------------------------------------------------------------------------
def test_regenerating_the_constants_changes_nothing(tmp_path: Path) -> None:
    assert _gen_consts.main(["--check"]) == 0, "run python -m pyfriction._gen_consts"
    out = tmp_path / "consts.pxi"
    assert _gen_consts.main(["--output", str(out)]) == 0
    assert out.read_text() == (ROOT / "_core" / "consts.pxi").read_text()
    assert out.read_text().startswith("# GENERATED")


def test_the_check_notices_a_stale_file(tmp_path: Path) -> None:
    stale = tmp_path / "consts.pxi"
    stale.write_text(_gen_consts.render().replace("DEF RING = 4", "DEF RING = 5"))
    assert _gen_consts.main(["--check", "--output", str(stale)]) == 1
    assert "DEF RING = 5" in stale.read_text()  # --check writes nothing


def test_every_shared_constant_is_generated() -> None:
    generated = _gen_consts.expected_values()
    shared = {
        name
        for name, value in vars(_constants).items()
        if name.isupper() and isinstance(value, (int, float)) and not isinstance(value, bool)
    }
    # U32_MAX alone is not generated: the core has it as a C constant (a DEF that large
    # would be a Python int where no GIL is held).
    assert shared - set(generated) == {"U32_MAX"}


@pytest.mark.compiled
def test_the_core_was_built_with_these_constants() -> None:
    from pyfriction import _core

    assert _core.compiled_constants() == _gen_consts.expected_values()
    assert tuple(_core.COUNTER_NAMES) == _constants.COUNTER_NAMES


def test_the_public_modules_show_the_same_constants() -> None:
    from pyfriction import _layout, events

    assert events.TYPE_CODES is _constants.TYPE_CODES
    assert events.MAX_TEXT == _constants.MAX_TEXT and events.CUSTOM_BASE == _constants.CUSTOM_BASE
    assert _layout.DETECTOR_NAMES == _constants.DETECTOR_NAMES
    assert _layout.N_DETECTORS == len(_constants.DETECTOR_NAMES)
    assert pyfriction.config.RING_SIZE == _constants.RING_SIZE
    assert tuple(ReferenceCore(Rules(Config()), 1, None, float, None, print, print).counters) == (  # type: ignore[arg-type]
        _constants.COUNTER_NAMES
    )


# -- parameters ------------------------------------------------------------------------------------
def test_params_are_one_record_with_the_config_values() -> None:
    cfg = Config()
    rules = Rules(cfg)
    assert rules.params.dtype == PARAMS_DTYPE and rules.params.shape == (1,)
    p = rules.p
    assert p.rage_w == cfg.detectors.rage_click.weight and p.rage_need == cfg.detectors.rage_click.min_clicks
    assert p.stall_q == cfg.detectors.stall.quantile and p.decay_rate == rules.decay_rate
    assert p.keep_after_success == 1.0 - cfg.scoring.success_relief
    assert p.rage_on is True and isinstance(p.rage_need, int)
    off = Rules(pyfriction.load_config({"detectors": {"uturn": {"enabled": False}}}))
    assert off.p.uturn_on is False and off.params[0]["uturn_on"] == 0


@pytest.mark.compiled
def test_the_core_params_struct_matches_the_dtype() -> None:
    from pyfriction import _core

    size, offsets = _core.params_layout()
    assert size == PARAMS_DTYPE.itemsize
    assert offsets == {name: PARAMS_DTYPE.fields[name][1] for name in PARAMS_DTYPE.names}


def test_a_disabled_detector_is_off_on_both_engines(engine: str) -> None:
    t = pyfriction.Tracker({"detectors": {"rage_click": {"enabled": False}}}, engine=engine)
    for i in range(6):
        t.observe(ev("u1", "click", T0 + i * 0.1, "billing", "#pay"))
    assert t.score("u1") == 0.0
    on = pyfriction.Tracker(engine=engine)
    for i in range(6):
        on.observe(ev("u1", "click", T0 + i * 0.1, "billing", "#pay"))
    assert on.score("u1") > 0.0


# -- the engine interface --------------------------------------------------------------------------
def _members() -> list[str]:
    return [
        name
        for name in dir(Engine)
        if (not name.startswith("_") or name == "__len__")
        and name not in ("_is_protocol", "_is_runtime_protocol")
        and not name.startswith("_abc")
    ] + [name for name in Engine.__annotations__ if name not in dir(Engine)]


def _params(fn: Any) -> list[str]:
    return [p.name for p in inspect.signature(fn).parameters.values() if p.name != "self"]


def test_both_engines_satisfy_the_protocol(engine: str) -> None:
    tracker = pyfriction.Tracker(engine=engine)
    core = tracker._core
    assert isinstance(core, Engine)
    for name in _members():
        assert hasattr(core, name), f"{engine} engine has no {name}"
    for name in _members():
        spec = getattr(Engine, name, None)
        if callable(spec) and not isinstance(spec, property) and name != "__len__":
            assert _params(getattr(core, name)) == _params(spec), f"{engine}.{name}"
    assert core.engine == engine
    tracker.close()


@pytest.mark.compiled
def test_the_stub_describes_the_compiled_module() -> None:
    from pyfriction import _core

    stub = ast.parse((PACKAGE / "_core.pyi").read_text())
    declared: dict[str, set[str]] = {}
    top: set[str] = set()
    for node in stub.body:
        if isinstance(node, ast.ClassDef):
            declared[node.name] = {
                n.name if isinstance(n, ast.FunctionDef) else n.target.id  # type: ignore[union-attr]
                for n in node.body
                if isinstance(n, ast.FunctionDef) or (isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name))
            }
            top.add(node.name)
        elif isinstance(node, ast.FunctionDef):
            top.add(node.name)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            top.add(node.target.id)
    public = {n for n in dir(_core) if not n.startswith("_")} - {"Mapping", "math", "np", "os"}
    public -= {"PARAMS_DTYPE", "SLOT_DTYPE", "STEP_DTYPE"}  # imported from _layout
    assert top == public
    for cls, members in declared.items():
        real = getattr(_core, cls)
        inherited = set(dir(real.__base__)) if real.__base__ is not object else set()
        actual = {n for n in dir(real) if not n.startswith("_") and n not in inherited}
        assert {m for m in members if not m.startswith("_")} == actual, cls


# -- the public API ---------------------------------------------------------------------------------
def test_one_public_all() -> None:
    assert set(sdk.__all__) <= set(pyfriction.__all__)
    for name in pyfriction.__all__:
        assert getattr(pyfriction, name) is not None
    assert sorted(pyfriction.__all__) == pyfriction.__all__


# -- imports ---------------------------------------------------------------------------------------
def _module_name(path: Path) -> str:
    parts = path.with_suffix("").relative_to(ROOT).parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(toplevel_only: bool) -> dict[str, set[str]]:
    """pyfriction module -> the pyfriction modules it imports (at the top only, or anywhere)."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text())
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        nodes = tree.body if toplevel_only else list(ast.walk(tree))
        out: set[str] = set()
        for node in nodes:
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    base = ".".join(parts + ([node.module] if node.module else []))
                for alias in node.names:
                    full = f"{base}.{alias.name}"
                    out.add(full if full in modules else base)
            elif isinstance(node, ast.Import):
                out.update(a.name for a in node.names)
        graph[name] = {m for m in out if m in modules and m not in (name, "pyfriction")}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycle_at_module_level() -> None:
    assert cycles(import_graph(toplevel_only=True)) == []


ENGINE_LAYER = {
    "pyfriction._constants",
    "pyfriction._gen_consts",
    "pyfriction.events",
    "pyfriction._layout",
    "pyfriction._hashing",
    "pyfriction.config",
    "pyfriction._rules",
    "pyfriction._engine",
    "pyfriction._reference",
    "pyfriction._episodes",
}


def test_the_engine_layer_has_no_cycle_even_in_local_imports() -> None:
    graph = import_graph(toplevel_only=False)
    layer = {m: {d for d in deps if d in ENGINE_LAYER} for m, deps in graph.items() if m in ENGINE_LAYER}
    assert cycles(layer) == []
    assert graph["pyfriction._constants"] == set()  # the leaf


def test_no_import_cycle_even_in_local_imports() -> None:
    """Not even a function-level import closes a cycle (the store's offline tools, which need
    the tracker, live in store_admin; the CLI's error type in _cli_error; the report's shared
    parts in _report_model)."""
    assert cycles(import_graph(toplevel_only=False)) == []


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


@pytest.mark.parametrize("module", sorted(ENGINE_LAYER))
def test_each_engine_module_imports_alone(module: str) -> None:
    r = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr


def test_the_core_imports_nothing_of_the_reference() -> None:
    sources = "".join(p.read_text() for p in sorted((ROOT / "_core").glob("*.p*")))
    imports = [line for line in sources.splitlines() if line.lstrip().startswith(("import ", "from "))]
    assert not [line for line in imports if "_reference" in line]
    assert "text_ok" not in sources and "nonempty" not in sources  # dead code, gone
    # One backward-shift deletion, used by the user index, RecentIds and the facts tables alike.
    assert sources.count("cdef inline void index_delete(") == 1
    assert sources.count("index_delete(") == 4


def _setup_check() -> Any:
    """``check_generated_constants`` of setup.py (setup.py itself runs setup() on import)."""
    source = (ROOT / "setup.py").read_text()
    fn = next(
        n for n in ast.parse(source).body if isinstance(n, ast.FunctionDef) and n.name == "check_generated_constants"
    )
    namespace: dict[str, Any] = {}
    exec("import importlib.util, os, sys, types\n" + (ast.get_source_segment(source, fn) or ""), namespace)
    return namespace["check_generated_constants"]


@pytest.mark.parametrize("stale", [False, True])
def test_the_build_refuses_stale_constants(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stale: bool) -> None:
    (tmp_path / "pyfriction").mkdir()
    (tmp_path / "_core").mkdir()
    for name in ("_constants.py", "_gen_consts.py"):
        (tmp_path / "pyfriction" / name).write_text((PACKAGE / name).read_text())
    text = (ROOT / "_core" / "consts.pxi").read_text()
    (tmp_path / "_core" / "consts.pxi").write_text(text.replace("DEF NDET = 10", "DEF NDET = 8") if stale else text)
    monkeypatch.chdir(tmp_path)
    check = _setup_check()
    if stale:
        with pytest.raises(SystemExit, match="out of date"):
            check()
    else:
        check()
