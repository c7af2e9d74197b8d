"""The JSON Schema of the policy file, with every registered policy's config.

It accepts what ``gateway check`` accepts: a policy written without a value (``noop:``)
takes its defaults, and any value may be a ``${VAR}`` or ``${VAR:-default}`` string,
which the loader fills from the environment before validating (so ``port: ${PORT}``
is not an error in an editor that checks the file against this schema).
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from gateway.config.models import GatewayConfig

#: A value filled from the environment when the file is loaded (gateway.config.loader).
ENV_VALUE: dict[str, Any] = {
    "type": "string",
    "pattern": r"\$\{[A-Za-z_][A-Za-z0-9_]*(:-[^}]*)?\}",
    "description": "`${VAR}` or `${VAR:-default}`: filled from the environment when the "
    "file is loaded, then checked as the value it stands for.",
}
#: Keys that describe a value rather than constrain it: they stay on the outer schema.
_ANNOTATIONS = ("title", "description", "default", "examples", "deprecated")
#: Keys whose value is a schema, or a list or map of schemas.
_SUBSCHEMAS = ("items", "additionalProperties", "not", "if", "then", "else", "contains")
_SUBSCHEMA_LISTS = ("anyOf", "oneOf", "allOf", "prefixItems")
_SUBSCHEMA_MAPS = ("properties", "$defs", "patternProperties")


def policy_file_schema() -> dict[str, Any]:
    from gateway.policies import ORDER, REGISTRY

    schema = GatewayConfig.model_json_schema()
    defs = schema.setdefault("$defs", {})
    properties: dict[str, Any] = {}
    for name in sorted(REGISTRY, key=ORDER.index):
        model = REGISTRY[name].config_model
        sub = model.model_json_schema(ref_template="#/$defs/{model}")
        defs.update(sub.pop("$defs", {}))
        try:
            model.model_validate({})  # written without a value, the loader validates {}
        except ValidationError:
            properties[name] = sub
        else:
            outer = {k: sub.pop(k) for k in _ANNOTATIONS if k in sub}
            properties[name] = {**outer, "anyOf": [sub, {"type": "null"}]}
    route = defs["Route"]["properties"]["policies"]
    route.update(
        {
            "type": ["object", "null"],  # `policies:` alone: none
            "properties": properties,
            "additionalProperties": False,
        }
    )
    stores = schema["properties"]["stores"]
    stores["additionalProperties"] = {
        "anyOf": [
            {"type": "string", "description": "the store URL, with every other setting default"},
            {"$ref": "#/$defs/StoreSpec"},
        ]
    }
    _allow_env(schema)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "Policy gateway configuration"
    return schema


def _allow_env(node: Any) -> None:
    """Let every constrained value (a number, a boolean, an enum or const, a pattern) be
    written as a ``${VAR}`` string too, in place. Plain strings already are."""
    if isinstance(node, list):
        for item in node:
            _allow_env(item)
        return
    if not isinstance(node, dict):
        return
    for key in _SUBSCHEMA_MAPS:
        children = node.get(key)
        if isinstance(children, dict):
            for child in children.values():
                _allow_env(child)
    for key in (*_SUBSCHEMAS, *_SUBSCHEMA_LISTS):
        if key in node:
            _allow_env(node[key])
    kind = node.get("type")
    constrained = kind in ("integer", "number", "boolean") or any(
        k in node for k in ("enum", "const", "pattern")
    )
    if constrained and "$ref" not in node and node is not ENV_VALUE:
        value = {k: node.pop(k) for k in list(node) if k not in _ANNOTATIONS}
        node["anyOf"] = [value, ENV_VALUE]
