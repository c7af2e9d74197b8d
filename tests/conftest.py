"""Checks before any test runs: the tests must exercise the code in this checkout."""

from __future__ import annotations

import os

import pytest

from gateway import build


def pytest_configure(config: pytest.Config) -> None:
    stale = build.stale_modules()
    if stale:
        pytest.exit(
            "compiled modules older than their source would be tested instead of it: "
            f"{', '.join(stale)}. Rebuild with scripts/setup (or GATEWAY_COMPILE=0 "
            "scripts/setup for pure Python).",
            returncode=4,
        )
    # scripts/test sets this: CI tests the compiled build, which is what ships.
    if os.environ.get("GATEWAY_EXPECT_COMPILED") == "1":
        missing = sorted(set(build.COMPILED) - set(build.compiled_modules()))
        if missing:
            pytest.exit(f"these modules should be compiled but are not: {missing}", 4)


def pytest_report_header(config: pytest.Config) -> str:
    return f"gateway: {build.describe()}"
