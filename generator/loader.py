"""Finding, parsing and validating reactor definition files.

YAML is parsed with line information so that every problem can point at ``file:line``.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from generator.bounded_load import (
    LoadLimitError,
    check_values,
    load_json,
    load_yaml,
    read_bounded,
)
from generator.errors import BuildError, Problem

DEFINITION_SUFFIXES = (".reactor.yaml", ".reactor.yml", ".reactor.json")


@dataclass
class RawDefinition:
    """A parsed definition file and the source line of each JSON pointer in it."""

    path: Path
    data: dict[str, Any]
    lines: dict[str, int]
    reference_roots: tuple[Path, ...] = ()
    """Folders a ``schema: {$ref: ...}`` may point into (empty: the definition's folder)."""

    def line_of(self, pointer: str) -> int | None:
        """The line of the closest enclosing node of ``pointer``."""
        while True:
            if pointer in self.lines:
                return self.lines[pointer]
            if not pointer:
                return None
            pointer = pointer.rsplit("/", 1)[0]

    def problem(self, pointer: str, message: str, hint: str = "") -> Problem:
        """A problem located at ``pointer`` in this file."""
        return Problem(self.path, pointer, message, hint, self.line_of(pointer))


def pointer_join(pointer: str, key: str | int) -> str:
    """Append one reference token (escaped per RFC 6901)."""
    token = str(key).replace("~", "~0").replace("/", "~1")
    return f"{pointer}/{token}"


def find_definitions(root: Path) -> list[Path]:
    """Every ``*.reactor.{yaml,yml,json}`` below ``root``, sorted."""
    if root.is_file():
        return [root]
    found = [p for p in root.rglob("*") if p.is_file() and p.name.endswith(DEFINITION_SUFFIXES)]
    return sorted(found)


def definition_stem(path: Path) -> str:
    """``orders/sync.reactor.yaml`` -> ``sync``."""
    for suffix in DEFINITION_SUFFIXES:
        if path.name.endswith(suffix):
            return path.name[: -len(suffix)]
    return path.stem


def parse_yaml_with_lines(text: str) -> tuple[Any, dict[str, int]]:
    """YAML data (duplicate and non-string keys rejected, timestamps kept as strings) and
    each pointer's line, within the bounds of :mod:`generator.bounded_load`.

    Raises ``yaml.YAMLError`` and :class:`generator.bounded_load.LoadLimitError`.
    """
    data, lines = load_yaml(text)
    check_values(data, lines)
    return data, lines


def limit_problem(path: Path, exc: LoadLimitError, kind: str = "") -> Problem:
    """A broken loading bound (size, nesting, aliases, keys, numbers) as a problem."""
    prefix = f"{kind}: " if kind else ""
    return Problem(path, exc.pointer, f"{prefix}{exc.message}", exc.hint, exc.line)


def read_data_file(path: Path, kind: str = "") -> tuple[Any, dict[str, int]]:
    """Data of a JSON or YAML file and each pointer's line (YAML only), within the bounds.

    Every failure (unreadable, too large, bad syntax, beyond a bound) is a
    :class:`BuildError` naming the file and line; ``kind`` names the file in messages
    (e.g. "schema file").
    """
    inside = f" in {kind}" if kind else ""
    try:
        text = read_bounded(path)
    except (OSError, UnicodeDecodeError) as exc:
        raise BuildError([Problem(path, "", f"cannot read {kind or 'file'}: {exc}")]) from exc
    except LoadLimitError as exc:
        raise BuildError([limit_problem(path, exc, kind)]) from exc
    lines: dict[str, int] = {}
    try:
        if path.suffix == ".json":
            data = load_json(text)
            check_values(data)
        else:
            data, lines = parse_yaml_with_lines(text)
    except json.JSONDecodeError as exc:
        raise BuildError([Problem(path, "", f"invalid JSON{inside}: {exc.msg} (column "
                                  f"{exc.colno})", "fix the JSON syntax (no trailing commas, "
                                  "keys in double quotes)", exc.lineno)]) from exc
    except yaml.YAMLError as exc:
        raise BuildError([yaml_problem(path, exc, f"YAML{inside}")]) from exc
    except LoadLimitError as exc:
        raise BuildError([limit_problem(path, exc, kind)]) from exc
    return data, lines


# PyYAML contexts that start where the user's mistake is (the problem is found later).
_OPENED_ON_A_LINE = ("while scanning a simple key", "while scanning a quoted scalar",
                     "while parsing a flow", "while scanning a block scalar")


def yaml_problem(path: Path, exc: yaml.YAMLError, what: str = "YAML") -> Problem:
    """A YAML syntax error as a problem with its line."""
    problem_mark = getattr(exc, "problem_mark", None)
    context_mark = getattr(exc, "context_mark", None)
    mark = problem_mark or context_mark
    noticed = ""
    if (problem_mark is not None and context_mark is not None
            and context_mark.line < problem_mark.line
            and str(getattr(exc, "context", "")).startswith(_OPENED_ON_A_LINE)):
        # An unclosed quote or bracket, or a key without ':', is only noticed on a later line
        # (often the end of the file): point at the line where it starts.
        mark = context_mark
        noticed = f"; noticed on line {problem_mark.line + 1}"
    line = mark.line + 1 if mark is not None else None  # marks count lines from 0
    parts = [str(getattr(exc, name)) for name in ("context", "problem")
             if getattr(exc, name, None)]
    detail = ", ".join(parts) if parts else str(exc).splitlines()[0]
    if mark is not None:
        detail += f" (column {mark.column + 1}{noticed})"
    return Problem(path, "", f"invalid {what}: {detail}",
                   "check the indentation, quoting and brackets on that line (a value "
                   "starting with $, @, *, &, { or [ may need quotes)", line)


def parse_file(path: Path) -> RawDefinition:
    """Parse a YAML or JSON definition; syntax errors and broken bounds become a
    :class:`BuildError`."""
    data, lines = read_data_file(path)
    if not isinstance(data, dict):
        raise BuildError([Problem(path, "", "a reactor definition must be a mapping, not "
                                  f"{type(data).__name__}",
                                  "start the file with 'collection: <name>'", 1)])
    return RawDefinition(path, data, lines)


@cache
def definition_schema() -> dict[str, Any]:
    """The JSON Schema of the definition format (shipped as package data)."""
    text = resources.files("generator").joinpath("reactor-definition.schema.json").read_text(
        encoding="utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema


def _is_duration(schema: Any) -> bool:
    return isinstance(schema, dict) and schema == definition_schema()["$defs"]["duration"]


DURATION_HINT = "write a duration such as 500ms, 10s, 5m, 1h, 7d or 1h30m (a quoted string)"


def _options(error: jsonschema.ValidationError) -> list[Any]:
    """The allowed values of an ``enum`` error."""
    value = error.validator_value
    return list(value) if isinstance(value, list | tuple) else []


def _schema_of(error: jsonschema.ValidationError) -> Mapping[str, Any]:
    """The subschema an error is about (jsonschema types it loosely)."""
    return error.schema if isinstance(error.schema, Mapping) else {}


def _describe(error: jsonschema.ValidationError) -> tuple[str, str, list[str | int]]:
    """Message, hint and extra path tokens (for unknown keys) of one schema violation."""
    path: list[str | int] = []
    schema = _schema_of(error)
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        allowed = sorted(schema.get("properties", {}))
        unknown = sorted(k for k in error.instance if k not in allowed)
        path = [unknown[0]] if unknown else []
        names = ", ".join(repr(k) for k in unknown)
        hint = f"allowed keys here: {', '.join(allowed)}"
        close = difflib.get_close_matches(str(unknown[0]), allowed, n=1) if unknown else []
        if close:
            hint = f"did you mean {close[0]!r}? " + hint
        return f"unknown key {names}", hint, path
    if _is_duration(error.schema):
        return f"invalid duration {error.instance!r}", DURATION_HINT, path
    if error.validator == "enum":
        return (f"invalid value {error.instance!r}",
                "one of: " + ", ".join(json.dumps(v) for v in _options(error)), path)
    if error.validator == "required":
        return error.message, "add the missing key", path
    if error.validator == "oneOf" and error.context:
        durations = [e for e in error.context if _is_duration(e.schema)]
        if durations and isinstance(error.instance, str | int | float):
            return f"invalid duration {error.instance!r}", DURATION_HINT, path
        # Errors of the branches whose type fits the value (a branch of another type only
        # says so); with none, no branch has the value's type.
        depth = len(list(error.absolute_path))
        fitting = [e for e in error.context
                   if not (e.validator == "type" and len(list(e.absolute_path)) == depth)]
        if not fitting:
            kinds = [_TYPE_NAMES.get(str(e.validator_value), str(e.validator_value))
                     for e in error.context]
            return (f"expected {_either(list(dict.fromkeys(kinds)))}, not "
                    f"{_kind_of(error.instance)} {_short(error.instance)}",
                    str(schema.get("x-hint") or ""), path)
        best = max(fitting, key=lambda e: len(list(e.absolute_path)))
        message, hint, extra = _describe(best)
        return (message, hint or str(schema.get("x-hint") or ""),
                [*list(best.absolute_path)[depth:], *extra])
    if error.validator == "pattern":
        hint = schema.get("x-hint") or schema.get("description") or ""
        return f"{error.instance!r} does not match the required form", str(hint), path
    if error.validator == "minProperties" and error.instance == {}:
        return "an empty mapping is not allowed here", str(schema.get("x-hint") or ""), path
    if error.validator == "type":
        return _type_message(error), str(schema.get("x-hint") or ""), path
    return error.message, str(schema.get("x-hint") or ""), path


def _type_message(error: jsonschema.ValidationError) -> str:
    """``expected an integer, not a string '4'``."""
    value = error.validator_value
    kinds: list[Any] = value if isinstance(value, list) else [value]
    names = [_TYPE_NAMES.get(str(k), str(k)) for k in kinds]
    return f"expected {_either(names)}, not {_kind_of(error.instance)} {_short(error.instance)}"


_TYPE_NAMES = {"integer": "an integer", "number": "a number", "string": "a string",
               "object": "a mapping", "array": "a list", "boolean": "true or false",
               "null": "null"}


def _either(names: list[str]) -> str:
    """``a``, ``a or b``, ``a, b or c``."""
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"


def _kind_of(value: Any) -> str:
    """How an error message names the JSON type of a YAML/JSON value."""
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return "null" if value is None else type(value).__name__


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


@cache
def python_pattern(pattern: str) -> re.Pattern[str]:
    """A JSON Schema (ECMA-262) ``pattern`` compiled for Python with ECMA's meaning of ``$``.

    In Python ``$`` also matches before a final newline, so ``^[a-z]+$`` would accept
    ``"orders\\n"``; every ``$`` outside a character class becomes ``\\Z`` (the very end).
    """
    converted: list[str] = []
    escaped = in_class = False
    for char in pattern:
        if escaped:
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == "[":
            in_class = True
        elif char == "]":
            in_class = False
        elif char == "$" and not in_class:
            char = "\\Z"
        converted.append(char)
    return re.compile("".join(converted))


def _ecma_pattern(validator: Any, pattern: str, instance: Any,
                  schema: Mapping[str, Any]) -> Iterator[jsonschema.ValidationError]:
    if isinstance(instance, str) and not python_pattern(pattern).search(instance):
        yield jsonschema.ValidationError(f"{instance!r} does not match {pattern!r}")


FormatValidator = jsonschema.validators.extend(  # type: ignore[no-untyped-call]
    jsonschema.Draft202012Validator, {"pattern": _ecma_pattern})
"""Draft 2020-12 validation of the definition formats, with ECMA-262 ``pattern`` anchors."""


def validate_definition(raw: RawDefinition) -> list[Problem]:
    """Check a parsed definition against the definition format's JSON Schema."""
    validator = FormatValidator(definition_schema())
    problems = []
    for error in sorted(validator.iter_errors(raw.data), key=lambda e: list(map(str, e.path))):
        message, hint, extra = _describe(error)
        pointer = ""
        for token in [*error.absolute_path, *extra]:
            pointer = pointer_join(pointer, token)
        problems.append(raw.problem(pointer, message, hint))
    return problems
