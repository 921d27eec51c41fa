"""Document schemas: resolving a definition's ``schema`` and reading types at dotted paths."""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema

from generator.errors import BuildError, Problem
from generator.loader import read_data_file
from generator.schema_refs import RefError, external_ref, resolve_ref


def resolve_schema(definition_file: Path, spec: dict[str, Any], pointer: str,
                   line_of: Callable[[str], int | None],
                   roots: Sequence[Path] = ()) -> tuple[dict[str, Any], Path | None]:
    """The document schema of a definition and the file it came from (None when inline).

    ``{"$ref": "order.schema.json"}`` is resolved relative to the definition file and must
    stay inside one of ``roots`` (default: the definition's folder); the referenced file must
    be a JSON (or YAML) object and a valid draft 2020-12 schema with only local ``$ref``s.
    ``line_of`` gives the line of a JSON pointer in the definition file (for inline schemas).
    """
    source: Path | None = None
    schema = spec
    file_lines: dict[str, int] = {}
    if set(spec) == {"$ref"} and isinstance(spec["$ref"], str) and not spec["$ref"].startswith(
            "#"):
        ref = spec["$ref"]
        here = f"{pointer}/$ref"
        try:
            source = resolve_ref(definition_file, ref, roots or (definition_file.parent,))
        except RefError as exc:
            raise BuildError([Problem(definition_file, here, exc.message, exc.hint,
                                      line_of(here))]) from exc
        if not source.is_file():
            raise BuildError([Problem(definition_file, here,
                                      f"schema file {ref!r} not found (looked at {source})",
                                      "fix the path (it is relative to the definition file) "
                                      "or inline the schema", line_of(here))])
        schema, file_lines = _read_schema_file(source)
    external = external_ref(schema)
    if external is not None:
        inner, ref = external
        message = (f"reference {ref!r} to another file inside a document schema; only local "
                   "references (#/$defs/...) are followed")
        hint = "move the referenced schema under $defs and refer to it as #/$defs/<name>"
        if source is not None:
            raise BuildError([Problem(source, inner, message, hint,
                                      _closest_line(file_lines, inner))])
        raise BuildError([Problem(definition_file, f"{pointer}{inner}", message, hint,
                                  line_of(f"{pointer}{inner}"))])
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
    schema, lines = read_data_file(source, "schema file")
    if not isinstance(schema, dict):
        raise BuildError([Problem(source, "", "a JSON Schema must be an object, not "
                                  f"{type(schema).__name__}",
                                  'start it with {"type": "object", "properties": ...}', 1)])
    return schema, lines


def _deref(schema: Any, root: dict[str, Any]) -> dict[str, Any]:
    """The subschema ``schema`` refers to; a boolean schema ``true`` is the empty schema (and
    ``false``, which allows nothing, is treated alike: it declares no type)."""
    if not isinstance(schema, dict):
        return {}
    current: dict[str, Any] = schema
    seen = 0
    while "$ref" in current and isinstance(current["$ref"], str) and current[
            "$ref"].startswith("#/") and seen < 32:
        target: Any = root
        for token in current["$ref"][2:].split("/"):
            token = token.replace("~1", "/").replace("~0", "~")
            if not isinstance(target, dict) or token not in target:
                return {}
            target = target[token]
        current = target if isinstance(target, dict) else {}
        seen += 1
    return current


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


@dataclass(frozen=True)
class UndeclaredPath:
    """Where a dotted path leaves what a document schema allows."""

    parent: str
    """The declared part of the path before the offending field ("" at the top level)."""
    field: str
    """The field the schema rules out."""
    known: tuple[str, ...]
    """The field names the schema declares next to it (sorted)."""
    scalar: str | None = None
    """When the parent holds a scalar (so has no fields at all): its JSON Schema type."""
    closed: bool = True
    """True when the schema forbids the field (``additionalProperties: false`` or a scalar
    parent); False when it only does not declare it (an object open to other fields)."""

    def suggestion(self) -> str | None:
        """The closest declared path, as a dotted path, or None."""
        close = difflib.get_close_matches(self.field, self.known, n=1, cutoff=0.6)
        if not close:
            lowered = {name.lower(): name for name in self.known}
            if self.field.lower() not in lowered:
                return None
            close = [lowered[self.field.lower()]]
        return f"{self.parent}.{close[0]}" if self.parent else close[0]


# Keywords that make a subschema's fields depend on more than its own ``properties``.
_UNDECIDABLE = ("allOf", "anyOf", "oneOf", "if", "then", "else", "$ref", "$dynamicRef",
                "dependentSchemas", "unevaluatedProperties")
_SCALAR_TYPES = frozenset({"string", "number", "integer", "boolean", "null"})


def undeclared_path(root: dict[str, Any], path: str) -> UndeclaredPath | None:
    """Why the document schema ``root`` rules out the dotted ``path``, or None if it allows it.

    Stricter than JSON Schema on purpose: an object schema that lists ``properties`` is taken
    as the whole list of its fields unless it opens itself explicitly
    (``additionalProperties: true`` or a schema, or a matching ``patternProperties``).
    Objects without ``properties``, composed schemas (``allOf``, ``anyOf``, ...) and array items
    without a schema allow anything below them; ``_id`` is always allowed at the top level;
    numeric segments index arrays.
    """
    current: Any = _deref(root, root)
    parts = path.split(".")
    done: list[str] = []
    position = 0
    while position < len(parts):
        part = parts[position]
        if not isinstance(current, dict) or not current or any(
                key in current for key in _UNDECIDABLE):
            return None
        if _is_array(current):
            items = current.get("items")
            if not isinstance(items, dict):
                return None
            current = _deref(items, root)
            if part.isdigit():
                done.append(part)
                position += 1
            continue
        kind = current.get("type")
        kinds = {kind} if isinstance(kind, str) else set(kind) if isinstance(kind, list) else set()
        if kinds and kinds <= _SCALAR_TYPES:
            return UndeclaredPath(".".join(done), part, (), " or ".join(sorted(kinds)))
        properties = current.get("properties")
        if isinstance(properties, dict) and part in properties:
            nested = properties[part]
            current = _deref(nested, root) if isinstance(nested, dict) else None
            done.append(part)
            position += 1
            continue
        if part == "_id" and not done:
            return None
        patterns = current.get("patternProperties")
        if isinstance(patterns, dict) and any(_search(pattern, part) for pattern in patterns):
            return None
        additional = current.get("additionalProperties")
        if isinstance(additional, dict):
            current = _deref(additional, root)
            done.append(part)
            position += 1
            continue
        if additional is True or (not isinstance(properties, dict) and additional is None):
            return None
        return UndeclaredPath(".".join(done), part,
                              tuple(sorted(properties)) if isinstance(properties, dict) else (),
                              closed=additional is False)
    return None


def _search(pattern: str, text: str) -> bool:
    try:
        return re.search(pattern, text) is not None
    except re.error:
        return True  # an ECMA-only pattern: assume it may match


_SCALARS = {"string": "str", "integer": "int", "number": "float", "boolean": "bool",
            "null": "None"}


_ID_SCALARS = {"string": "str", "integer": "int"}
OBJECT_ID = "ObjectId"
"""``id_type`` of an ``_id`` marked ``bsonType: objectId`` (imported from ``bson``)."""


def id_type(schema: dict[str, Any]) -> str:
    """The type of a document's ``_id`` as stored (``ctx.doc_id``): ``ObjectId`` when the
    schema marks it ``bsonType: objectId`` (MongoDB's ``$jsonSchema`` keyword), ``str`` or
    ``int`` (or both) when it declares that JSON type, else ``Any``."""
    node, _ = schema_at_path(schema, "_id")
    if not node:
        return "Any"
    bson_type = node.get("bsonType")
    if bson_type == "objectId" or bson_type == ["objectId"]:
        return OBJECT_ID
    if bson_type is not None:
        return "Any"
    kind = node.get("type")
    kinds = [k for k in (kind if isinstance(kind, list) else [kind]) if isinstance(k, str)]
    if kinds and len(kinds) == (len(kind) if isinstance(kind, list) else 1) \
            and all(k in _ID_SCALARS for k in kinds):
        return " | ".join(dict.fromkeys(_ID_SCALARS[k] for k in kinds))
    return "Any"


_LITERAL_TEXT = re.compile(r"[A-Za-z0-9_ .:/@+-]{0,64}")


def _literal_type(schema: dict[str, Any]) -> str | None:
    """``Literal['a', 'b']`` for a string ``enum`` (or ``const``) of plain words, so that
    watched values keep the precision of the model's enum (a ``StrEnum`` member equals its
    value); None for anything else."""
    values = schema.get("enum") if "enum" in schema else (
        [schema["const"]] if "const" in schema else None)
    if (not isinstance(values, list) or not values or schema.get("type", "string") != "string"
            or not all(isinstance(v, str) and _LITERAL_TEXT.fullmatch(v) for v in values)):
        return None
    return "Literal[" + ", ".join(repr(v) for v in dict.fromkeys(values)) + "]"


def python_type(schema: dict[str, Any] | None) -> str:
    """A Python annotation for a simple subschema (``Any`` for anything complex)."""
    if not schema:
        return "Any"
    kind = schema.get("type")
    literal = _literal_type(schema)
    if literal is not None:
        return literal
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
