"""Build the gateway, compiling its request path to C with mypyc when it can.

The modules below are plain, type-checked Python (``mypy --strict``); mypyc turns each
into a C extension that runs the same code with less interpreter work per request.
See docs/architecture.md ("The compiled request path") and bench/README.md for what it
buys.

- It needs mypy and the gateway's dependencies in the build environment, so build
  with ``pip install --no-build-isolation`` (``scripts/setup`` and the Dockerfile
  do); pip's default isolated build has no mypy and builds pure Python.
- ``GATEWAY_COMPILE=0`` builds pure Python and removes the compiled modules an
  editable install left beside the sources.
- A compiled module shadows its ``.py`` file: after editing one, build again
  (``scripts/setup``); the test suite refuses to run against stale builds.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

from setuptools import setup

ROOT = Path(__file__).resolve().parent


def _build_module() -> ModuleType:
    """gateway/build.py, loaded by path: it names the modules to compile."""
    spec = importlib.util.spec_from_file_location("_gateway_build", ROOT / "gateway/build.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _remove_inplace_builds(keep: frozenset[str] = frozenset()) -> None:
    """Delete compiled files an earlier editable build left beside the sources, except
    those of the modules in ``keep`` (and their shared library)."""
    for path in (ROOT / "gateway").rglob("*.so"):
        module = ".".join(path.relative_to(ROOT).with_name(path.name.split(".")[0]).parts)
        if module not in keep:
            path.unlink()


#: The setup.py commands that build code (metadata-only commands skip the compiler).
BUILDS = {"build", "build_ext", "bdist_wheel", "editable_wheel", "develop", "install"}


def ext_modules() -> list[object]:
    if not BUILDS.intersection(sys.argv[1:]):
        return []
    if os.environ.get("GATEWAY_COMPILE", "1") == "0":
        _remove_inplace_builds()
        print("gateway: GATEWAY_COMPILE=0: pure Python build", file=sys.stderr)
        return []
    try:
        from mypyc.build import mypycify
    except ImportError:  # e.g. pip's isolated build environment
        print("gateway: mypy is not installed here: pure Python build", file=sys.stderr)
        return []
    build = _build_module()
    # A module taken off the list must not keep running from an old build.
    _remove_inplace_builds(keep=frozenset([*build.COMPILED, build.LIBRARY + "__mypyc"]))
    os.chdir(ROOT)  # mypyc takes the mypy settings from pyproject.toml
    paths = [name.replace(".", "/") + ".py" for name in build.COMPILED]
    return list(mypycify(paths, opt_level="3", group_name=build.LIBRARY))


setup(ext_modules=ext_modules())
