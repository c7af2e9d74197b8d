"""gateway.build: which modules run compiled, and which of them are stale."""

from __future__ import annotations

import os
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path

import pytest

from gateway import build

SUFFIX = EXTENSION_SUFFIXES[0]  # e.g. .cpython-311-x86_64-linux-gnu.so


def package(root: Path) -> Path:
    """A fake gateway package: one compiled module, one pure, and the shared library."""
    pkg = root / "gateway"
    (pkg / "transport").mkdir(parents=True)
    for name in ("routing.py", "chain.py", "transport/native.py"):
        (pkg / name).write_text("")
    for name in ("routing", "transport/native", build.LIBRARY_STEM):
        (pkg / (name + SUFFIX)).write_bytes(b"")
    old = 1_600_000_000
    os.utime(pkg / "routing.py", (old, old))
    os.utime(pkg / "transport/native.py", (old, old))
    return pkg


def test_compiled_and_stale_modules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pkg = package(tmp_path)
    monkeypatch.setattr(build, "PACKAGE", pkg)
    assert build.compiled_modules() == ["gateway.routing", "gateway.transport.native"]
    assert build.stale_modules() == []
    assert build.describe() == "compiled with mypyc (2 modules)"

    os.utime(pkg / "routing.py")  # edited after the build
    assert build.stale_modules() == ["gateway.routing"]
    assert "OLDER THAN THEIR SOURCE" in build.describe()
    assert "gateway.routing" in build.describe()


def test_an_incremental_build_that_left_the_stubs_is_not_stale(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # ``setup.py build_ext --inplace`` rebuilds the shared library (the code) and leaves
    # a module's own stub as it was when the stub's inputs did not change.
    pkg = package(tmp_path)
    monkeypatch.setattr(build, "PACKAGE", pkg)
    old, edited, rebuilt = 1_600_000_000, 1_700_000_000, 1_700_000_100
    os.utime(pkg / ("routing" + SUFFIX), (old, old))
    os.utime(pkg / "routing.py", (edited, edited))
    os.utime(pkg / (build.LIBRARY_STEM + SUFFIX), (rebuilt, rebuilt))
    assert build.stale_modules() == []
    os.utime(pkg / "routing.py")  # edited after that build
    assert build.stale_modules() == ["gateway.routing"]


def test_installed_packages_are_never_stale(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pkg = package(tmp_path / "lib" / "site-packages")
    os.utime(pkg / "routing.py")
    monkeypatch.setattr(build, "PACKAGE", pkg)
    assert build.stale_modules() == []


def test_pure_build(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pkg = tmp_path / "gateway"
    pkg.mkdir()
    (pkg / "routing.py").write_text("")
    monkeypatch.setattr(build, "PACKAGE", pkg)
    assert build.compiled_modules() == []
    assert build.describe() == "pure Python"


def test_every_listed_module_exists() -> None:
    root = Path(build.__file__).resolve().parent.parent
    for name in build.COMPILED:
        assert (root / (name.replace(".", "/") + ".py")).is_file(), name
