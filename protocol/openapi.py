"""JSON Schema of a request body for OpenAPI documents, with its ``$defs`` inlined."""

from typing import Any

from pydantic import BaseModel


def inline_schema(model: type[BaseModel]) -> dict[str, Any]:
    schema = model.model_json_schema()
    defs: dict[str, Any] = schema.pop("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return resolve(defs[ref.removeprefix("#/$defs/")])
            return {key: resolve(value) for key, value in node.items()}
        if isinstance(node, list):
            return [resolve(item) for item in node]
        return node

    resolved: dict[str, Any] = resolve(schema)
    return resolved


def json_body(model: type[BaseModel], required: bool = True) -> dict[str, Any]:
    """An OpenAPI ``requestBody`` of ``model`` as JSON."""
    return {
        "required": required,
        "content": {"application/json": {"schema": inline_schema(model)}},
    }
