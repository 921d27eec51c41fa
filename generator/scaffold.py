"""``reactgen new``: a starting definition (and document schema) for a new reactor."""

from __future__ import annotations

import json
import re
from pathlib import Path

from generator.errors import BuildError, Problem
from generator.identifiers import class_name

_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_.-]*")  # used with fullmatch


def scaffold(name: str, collection: str, directory: Path) -> list[Path]:
    """Write ``<name>.reactor.yaml`` (and ``<collection>.schema.json`` if missing)."""
    definition = directory / f"{name}.reactor.yaml"
    if not _NAME.fullmatch(name):
        raise BuildError([Problem(definition, "/name", f"invalid reactor name {name!r}",
                                  "start with a letter; use letters, digits, _ . -")])
    if not collection or "$" in collection or "\x00" in collection:
        raise BuildError([Problem(definition, "/collection",
                                  f"invalid collection name {collection!r}",
                                  "collection names cannot be empty or contain $")])
    if definition.exists():
        raise BuildError([Problem(definition, "", "already exists; not overwriting it",
                                  "pick another name or edit the existing file")])
    created: list[Path] = []
    directory.mkdir(parents=True, exist_ok=True)
    schema_file = directory / f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', collection)}.schema.json"
    if not schema_file.exists():
        schema = {
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "title": class_name(collection),
            "type": "object",
            "properties": {"_id": {"type": "string"}},
            "required": ["_id"],
        }
        schema_file.write_text(json.dumps(schema, indent=2) + "\n", encoding="utf-8")
        created.append(schema_file)
    definition.write_text(
        f"# Reactor definition; format: generator/reactor-definition.schema.json\n"
        f"name: {json.dumps(name)}\n"
        f"collection: {json.dumps(collection)}\n"
        f"schema:\n  $ref: {json.dumps(schema_file.name)}\n"
        "trigger:\n"
        "  # Documents this reactor applies to (a MongoDB query); {} = every document.\n"
        "  filter: {}\n"
        "  # Paths whose changes re-trigger it; leave it out to react to any change,\n"
        "  # [] to run once per document.\n"
        "  # watch: [status]\n"
        "policies:\n"
        "  retry: {strategy: exponential, min: 1s, max: 1h, maxAttempts: 5}\n",
        encoding="utf-8")
    created.append(definition)
    return created
