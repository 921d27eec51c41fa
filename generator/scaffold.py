"""``reactgen new``: a starting definition (and document schema) for a new reactor."""

from __future__ import annotations

import json
import os
import re
from importlib import resources
from pathlib import Path

from generator.errors import BuildError, Problem
from generator.identifiers import class_name

_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_.-]*")  # used with fullmatch


# Plural endings and their singular (checked in order); words ending in "ss", "us" or "is"
# (address, status, analysis) are left alone.
_PLURALS = (("ies", "y"), ("sses", "ss"), ("shes", "sh"), ("ches", "ch"), ("xes", "x"),
            ("zes", "z"))
_IRREGULAR = {"people": "person", "children": "child", "men": "man", "women": "woman",
              "data": "data", "news": "news", "series": "series", "species": "species"}


def singular(word: str) -> str:
    """The English singular of a common plural (``invoices`` -> ``invoice``, ``categories``
    -> ``category``, ``boxes`` -> ``box``); other words are returned unchanged."""
    lowered = word.lower()
    if lowered in _IRREGULAR:
        return word[:1] + _IRREGULAR[lowered][1:]
    for plural, one in _PLURALS:
        if lowered.endswith(plural) and len(word) > len(plural) + 1:
            return word[: -len(plural)] + one
    if lowered.endswith("s") and not lowered.endswith(("ss", "us", "is")) and len(word) > 3:
        return word[:-1]
    return word


def model_title(collection: str) -> str:
    """The model class name for a collection: its last word made singular, CamelCase
    (``invoices`` -> ``Invoice``, ``order_items`` -> ``OrderItem``)."""
    words = [w for w in re.split(r"([^0-9A-Za-z]+)", collection)]
    for index in range(len(words) - 1, -1, -1):
        if words[index][:1].isalpha():
            words[index] = singular(words[index])
            break
    return class_name("".join(words))


def definition_format_reference(directory: Path) -> str:
    """Where editors find the definition format's JSON Schema (shipped in this package): a
    path relative to ``directory`` when both are below the current folder (e.g. a project's
    own ``.venv``), else a ``file://`` URI of the installed file."""
    shipped = Path(str(resources.files("generator").joinpath("reactor-definition.schema.json")))
    shipped = shipped.resolve()
    here = Path.cwd().resolve()
    if shipped.is_relative_to(here) and directory.resolve().is_relative_to(here):
        return Path(os.path.relpath(shipped, directory.resolve())).as_posix()
    return shipped.as_uri()


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
            "title": model_title(collection),
            "type": "object",
            "properties": {"_id": {"type": "string"}},
            "required": ["_id"],
        }
        schema_file.write_text(json.dumps(schema, indent=2) + "\n", encoding="utf-8")
        created.append(schema_file)
    definition.write_text(
        f"# yaml-language-server: $schema={definition_format_reference(directory)}\n"
        "# Reactor definition: see docs/reactor-definitions.md of reactgen for the format.\n"
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
