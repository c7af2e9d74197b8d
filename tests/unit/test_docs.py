"""docs/policies.md documents every key of the policy file, and every key has a description.

The schema is the one ``gateway schema`` prints: the core models plus every registered
policy's config model, so a new policy or a new field fails here until it is documented.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.config.schema import policy_file_schema

DOC = Path(__file__).resolve().parents[2] / "docs" / "policies.md"


def properties(node: Any, where: str = "#") -> Iterator[tuple[str, str, Any]]:
    """Every ``(location, property name, property schema)`` at every level, ``$defs`` too."""
    if isinstance(node, dict):
        props = node.get("properties")
        if isinstance(props, dict):
            for name, sub in props.items():
                yield f"{where}/properties", name, sub
        for key, value in node.items():
            yield from properties(value, f"{where}/{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from properties(value, f"{where}/{i}")


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    return policy_file_schema()


def test_the_walk_reaches_defs_and_policies(schema: dict[str, Any]) -> None:
    names = {name for _, name, _ in properties(schema)}
    # top level, a nested model in $defs, and a registered policy's own option
    assert {"routes", "max_connections", "noop", "respond"} <= names


def test_every_key_is_documented(schema: dict[str, Any]) -> None:
    text = DOC.read_text(encoding="utf-8")
    missing = sorted(
        {f"{name} (at {where})" for where, name, _ in properties(schema) if f"`{name}`" not in text}
    )
    assert not missing, f"docs/policies.md does not mention these keys in backticks: {missing}"


def test_every_key_has_a_description(schema: dict[str, Any]) -> None:
    bare = sorted(
        f"{where}/{name}"
        for where, name, sub in properties(schema)
        if not (isinstance(sub, dict) and str(sub.get("description", "")).strip())
    )
    assert not bare, f"schema properties without a description: {bare}"


OPERATIONS = DOC.with_name("operations.md")


def test_operations_names_only_created_series_that_exist() -> None:
    import re

    from gateway.observability.metrics import Metrics

    rendered = Metrics().render().decode()
    named = set(re.findall(r"gateway_\w+_created", OPERATIONS.read_text(encoding="utf-8")))
    assert named, "operations.md gives an example of a _created series"
    missing = sorted(n for n in named if not re.search(rf"^{n}[{{ ]", rendered, re.MULTILINE))
    assert not missing, f"operations.md names series the gateway does not export: {missing}"


def test_operations_says_which_supervisor_series_are_exported() -> None:
    # It said the supervisor's series were not exported, and a refused reload only logged.
    from gateway.frontends.workers_admin import SUPERVISOR_SERIES

    text = OPERATIONS.read_text(encoding="utf-8")
    for family in SUPERVISOR_SERIES:
        assert f'{family.decode()}{{worker="supervisor"' in text, family
    assert "series are not exported" not in text
    assert "a refused reload is only logged" not in text
