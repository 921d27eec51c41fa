"""Document schemas: resolving a definition's ``schema`` and reading types at dotted paths."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from generator.errors import BuildError, Problem
from generator.loader import parse_yaml_with_lines, yaml_problem


def resolve_schema(definition_file: Path, spec: dict[str, Any], pointer: str,
                   line_of: Callable[[str], int | None]) -> tuple[dict[str, Any], Path | None]:
    """The document schema of a definition and the file it came from (None when inline).

    ``{"$ref": "order.schema.json"}`` is resolved relative to the definition file; the
    referenced file must be a JSON (or YAML) object and a valid draft 2020-12 schema.
    ``line_of`` gives the line of a JSON pointer in the definition file (for inline schemas).
    """
    source: Path | None = None
    schema = spec
    file_lines: dict[str, int] = {}
    if set(spec) == {"$ref"} and isinstance(spec["$ref"], str) and not spec["$ref"].startswith(
            "#"):
        ref = spec["$ref"]
        source = (definition_file.parent / ref).resolve()
        if not source.is_file():
            raise BuildError([Problem(definition_file, f"{pointer}/$ref",
                                      f"schema file {ref!r} not found (looked at {source})",
                                      "fix the path (it is relative to the definition file) "
                                      "or inline the schema", line_of(f"{pointer}/$ref"))])
        schema, file_lines = _read_schema_file(source)
    try:
        jsonschema.Draft202012Validator.check_schema(schema)
    except jsonschema.SchemaError as exc:
        inner = "".join(pointer_token(p) for p in exc.absolute_path)
        hint = "see https://json-schema.org/draft/2020-12/json-schema-validation"
        message = f"invalid JSON Schema: {exc.message}"
        if source is not None:
            raise BuildError([Problem(source, inner or "", message, hint,
                                      _closest_line(file_lines, inner))]) from exc
        raise BuildError([Problem(definition_file, f"{pointer}{inner}", message, hint,
                                  line_of(f"{pointer}{inner}"))]) from exc
    if schema.get("type", "object") != "object":
        hint = 'set "type": "object" (a MongoDB document is always an object)'
        if source is not None:
            raise BuildError([Problem(source, "/type", "a document schema must describe an "
                                      f"object, not {schema.get('type')!r}", hint,
                                      _closest_line(file_lines, "/type"))])
        raise BuildError([Problem(definition_file, f"{pointer}/type",
                                  "a document schema must describe an object, not "
                                  f"{schema.get('type')!r}", hint, line_of(f"{pointer}/type"))])
    return schema, source


def pointer_token(key: Any) -> str:
    """``/key`` escaped per RFC 6901."""
    return "/" + str(key).replace("~", "~0").replace("/", "~1")


def _closest_line(lines: dict[str, int], pointer: str) -> int | None:
    while True:
        if pointer in lines:
            return lines[pointer]
        if not pointer:
            return None
        pointer = pointer.rsplit("/", 1)[0]


def _read_schema_file(source: Path) -> tuple[dict[str, Any], dict[str, int]]:
    """A referenced schema file (JSON or YAML) and, for YAML, the line of each pointer."""
    try:
        text = source.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise BuildError([Problem(source, "", f"cannot read schema file: {exc}")]) from exc
    lines: dict[str, int] = {}
    try:
        if source.suffix in (".yaml", ".yml"):
            schema, lines = parse_yaml_with_lines(text)
        else:
            schema = json.loads(text)
    except json.JSONDecodeError as exc:
        raise BuildError([Problem(source, "", f"invalid JSON in schema file: {exc.msg} "
                                  f"(column {exc.colno})", "fix the JSON syntax",
                                  exc.lineno)]) from exc
    except yaml.YAMLError as exc:
        raise BuildError([yaml_problem(source, exc, "YAML in schema file")]) from exc
    if not isinstance(schema, dict):
        raise BuildError([Problem(source, "", "a JSON Schema must be an object, not "
                                  f"{type(schema).__name__}",
                                  'start it with {"type": "object", "properties": ...}', 1)])
    return schema, lines


def _deref(schema: dict[str, Any], root: dict[str, Any]) -> dict[str, Any]:
    seen = 0
    while "$ref" in schema and isinstance(schema["$ref"], str) and schema["$ref"].startswith(
            "#/") and seen < 32:
        target: Any = root
        for token in schema["$ref"][2:].split("/"):
            token = token.replace("~1", "/").replace("~0", "~")
            if not isinstance(target, dict) or token not in target:
                return {}
            target = target[token]
        schema = target if isinstance(target, dict) else {}
        seen += 1
    return schema


def _is_array(schema: dict[str, Any]) -> bool:
    kind = schema.get("type")
    return kind == "array" or (isinstance(kind, list) and "array" in kind)


def schema_at_path(root: dict[str, Any], path: str) -> tuple[dict[str, Any] | None, bool]:
    """Subschema of the value at a dotted path and whether an array was crossed on the way.

    Returns ``(None, crossed)`` when the schema does not declare the path.
    """
    current = _deref(root, root)
    crossed = False
    parts = path.split(".")
    position = 0
    while position < len(parts):
        part = parts[position]
        if _is_array(current):
            items = current.get("items")
            if not isinstance(items, dict):
                return None, crossed
            current = _deref(items, root)
            crossed = True
            if part.isdigit():
                position += 1
            continue
        properties = current.get("properties")
        if not isinstance(properties, dict) or part not in properties:
            return None, crossed
        current = _deref(properties[part], root)
        position += 1
    return current, crossed


_SCALARS = {"string": "str", "integer": "int", "number": "float", "boolean": "bool",
            "null": "None"}


def python_type(schema: dict[str, Any] | None) -> str:
    """A Python annotation for a simple subschema (``Any`` for anything complex)."""
    if not schema:
        return "Any"
    kind = schema.get("type")
    if isinstance(kind, list):
        parts = [_SCALARS[k] for k in kind if k in _SCALARS]
        if len(parts) == len(kind):
            return " | ".join(parts)
        return "Any"
    if kind == "string" and schema.get("format") == "date-time":
        return "datetime.datetime"
    if kind in _SCALARS:
        return _SCALARS[kind]
    if kind == "array":
        items = schema.get("items")
        return f"list[{python_type(items if isinstance(items, dict) else None)}]"
    if kind == "object":
        return "dict[str, Any]"
    return "Any"
