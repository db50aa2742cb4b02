"""Validate JSON against the schemas of the public OpenAI OpenAPI description.

The description is kept in the repository, `tests/spec_data/openai-openapi.json` (MIT licence beside it; override
with the environment variable `OPENAI_SPEC_PATH`). It still carries OpenAPI 3.0 `nullable: true` flags, which a
JSON Schema 2020-12 validator ignores, so each `{..., nullable: true}` is rewritten as
`{anyOf: [{...}, {type: "null"}]}` before any schema is used.
"""

from __future__ import annotations

import json
import os
from functools import cache
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SPEC_PATH = REPO_ROOT / "tests" / "spec_data" / "openai-openapi.json"
DOCUMENT_URI = "urn:openai-openapi"


def spec_path() -> Path:
    """Where the OpenAPI description is read from."""
    return Path(os.environ.get("OPENAI_SPEC_PATH") or DEFAULT_SPEC_PATH)


def rewrite_nullable(node: Any) -> Any:
    """A copy of `node` with every OpenAPI 3.0 `nullable: true` turned into a JSON Schema `anyOf`."""
    if isinstance(node, list):
        return [rewrite_nullable(item) for item in node]
    if not isinstance(node, dict):
        return node
    rewritten = {key: rewrite_nullable(value) for key, value in node.items() if key != "nullable"}
    if node.get("nullable") is True:
        return {"anyOf": [rewritten, {"type": "null"}]}
    return rewritten


@cache
def document() -> dict[str, Any]:
    """The whole OpenAPI document, nullable flags rewritten."""
    with spec_path().open(encoding="utf-8") as fh:
        return rewrite_nullable(json.load(fh))


@cache
def registry() -> Registry:
    """A registry holding the whole document, so `#/components/schemas/...` references resolve."""
    resource = Resource.from_contents(document(), default_specification=DRAFT202012)
    return Registry().with_resource(DOCUMENT_URI, resource)


@cache
def validator(schema_name: str) -> Draft202012Validator:
    """A validator for `components.schemas[schema_name]`."""
    if schema_name not in document()["components"]["schemas"]:
        raise KeyError(f"no schema named {schema_name!r} in {spec_path()}")
    schema = {"$ref": f"{DOCUMENT_URI}#/components/schemas/{schema_name}"}
    return Draft202012Validator(schema, registry=registry())


def validate(schema_name: str, instance: Any) -> None:
    """Raise `jsonschema.ValidationError` (the most relevant one) unless `instance` matches the schema."""
    validator(schema_name).validate(instance)
