"""The JSON Schema of the policy file, with every registered policy's config."""

from __future__ import annotations

from typing import Any

from gateway.config.models import GatewayConfig


def policy_file_schema() -> dict[str, Any]:
    from gateway.policies import ORDER, REGISTRY

    schema = GatewayConfig.model_json_schema()
    defs = schema.setdefault("$defs", {})
    properties: dict[str, Any] = {}
    for name in sorted(REGISTRY, key=ORDER.index):
        sub = REGISTRY[name].config_model.model_json_schema(ref_template="#/$defs/{model}")
        defs.update(sub.pop("$defs", {}))
        properties[name] = sub
    route = defs["Route"]["properties"]["policies"]
    route.update(
        {
            "type": "object",
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
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "Policy gateway configuration"
    return schema
