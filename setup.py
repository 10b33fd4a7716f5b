"""Build the compiled core ``pyfriction._core`` from ``_core/core.pyx``.

All metadata lives in pyproject.toml; this file only declares the extension. Set
``PYFRICTION_NO_EXTENSIONS=1`` to skip it and install the pure-Python reference engine alone.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import types
from glob import glob

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

CYTHON_DIRECTIVES = {
    "language_level": 3,
    "boundscheck": False,
    "wraparound": False,
    "cdivision": True,
    "initializedcheck": False,
}


def check_generated_constants() -> None:
    """Refuse to build from a stale ``_core/consts.pxi`` (generated from
    ``pyfriction/_constants.py``). The generator is loaded by path: the package itself may not
    be importable where the build runs (no numpy in an isolated build environment)."""
    pkg = types.ModuleType("_pyfriction_build")
    pkg.__path__ = [os.path.abspath("pyfriction")]
    sys.modules[pkg.__name__] = pkg
    gen = None
    for name in ("_constants", "_gen_consts"):
        spec = importlib.util.spec_from_file_location(
            f"{pkg.__name__}.{name}", os.path.join("pyfriction", f"{name}.py")
        )
        assert spec is not None and spec.loader is not None
        gen = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = gen
        spec.loader.exec_module(gen)
    assert gen is not None
    if gen.main(["--check"]) != 0:
        raise SystemExit("_core/consts.pxi is out of date: run `python -m pyfriction._gen_consts`, then build again")


class CythonBuildExt(build_ext):
    """Cythonize at build time, so that sdists carry the .pyx sources rather than generated C
    and the generated C stays out of the source tree (in ``build/cython``)."""

    def finalize_options(self) -> None:
        from Cython.Build import cythonize

        modules = self.distribution.ext_modules or []
        if any(src.endswith(".pyx") for ext in modules for src in ext.sources):  # not yet done
            check_generated_constants()
            self.distribution.ext_modules = cythonize(
                modules,
                compiler_directives=CYTHON_DIRECTIVES,
                include_path=["_core"],
                build_dir=os.path.join("build", "cython"),
                force=True,  # never reuse C generated with other directives or another Cython
                quiet=True,
            )
        super().finalize_options()


def extensions() -> list[Extension]:
    """The compiled core, or nothing when ``PYFRICTION_NO_EXTENSIONS`` is set (to anything but
    ``0``, as at run time)."""
    if os.environ.get("PYFRICTION_NO_EXTENSIONS", "") not in ("", "0"):
        return []
    return [
        Extension(
            "pyfriction._core",
            sources=["_core/core.pyx"],
            include_dirs=["_core"],
            depends=sorted(glob("_core/*.pxd") + glob("_core/*.pxi") + glob("_core/*.h")),
            extra_compile_args=["-O3"],
        )
    ]


setup(ext_modules=extensions(), cmdclass={"build_ext": CythonBuildExt})
