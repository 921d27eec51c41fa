"""Trigger paths and values checked against the document schema, so typos do not pass.

A filter or watch path that the document schema rules out (a closed object,
``additionalProperties: false``, or a field below a scalar) is an error; a path the schema
allows but does not declare (an object open to other fields, the JSON Schema default) is a
warning. Filter values compared with a field are checked against its ``enum``, ``const`` and
``type``: a value the schema rules out would make the reactor never fire.
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass, field
from typing import Any

import jsonschema

from generator import filters
from generator.errors import Problem
from generator.loader import RawDefinition, pointer_join
from generator.schemas import schema_at_path, undeclared_path

# Keywords that make a subschema's allowed values depend on more than its own keywords.
_COMPOSED = ("allOf", "anyOf", "oneOf", "if", "not", "$ref", "$dynamicRef")
# Operators whose operand is a value of the field (lists: one value per item).
_VALUE_OPERATORS = frozenset({"$eq", "$ne"})
_LIST_OPERATORS = frozenset({"$in", "$nin", "$all"})
_JSON_KINDS = {str: "the string", int: "the integer", float: "the number", bool: "the boolean"}
_TYPE_NAMES = {"integer": "an integer", "number": "a number", "string": "a string",
               "boolean": "a boolean", "object": "an object", "array": "an array",
               "null": "null"}


@dataclass
class PathFindings:
    """Errors (the schema rules it out) and warnings (the schema does not declare it)."""

    errors: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)


def check_trigger(raw: RawDefinition, schema: dict[str, Any], schema_label: str,
                  trigger: dict[str, Any]) -> PathFindings:
    """Check the paths and compared values of ``trigger`` (already validated as filters)."""
    findings = PathFindings()
    checker = _Checker(raw, schema, schema_label, findings)
    spec = trigger.get("filter")
    if isinstance(spec, dict):
        if filters.is_expression_filter(spec):
            checker.expression(spec, "/trigger/filter", "filter")
        else:
            checker.query(spec, "/trigger/filter", "")
    watch = trigger.get("watch")
    if isinstance(watch, list):
        for index, path in enumerate(watch):
            if isinstance(path, str):
                checker.path(path, pointer_join("/trigger/watch", index), "watch")
    elif isinstance(watch, dict):
        for key, value in watch.items():
            here = pointer_join("/trigger/watch", key)
            if value in (1, True):
                checker.path(key, here, "watch")
            else:
                checker.expression(value, here, "watch")
    return findings


@dataclass
class _Checker:
    raw: RawDefinition
    schema: dict[str, Any]
    label: str
    findings: PathFindings

    def query(self, query: Any, pointer: str, prefix: str) -> None:
        if not isinstance(query, dict):
            return
        for key, value in query.items():
            here = pointer_join(pointer, key)
            if key in ("$and", "$or", "$nor") and isinstance(value, list):
                for index, part in enumerate(value):
                    self.query(part, pointer_join(here, index), prefix)
            elif key == "$expr":
                self.expression(value, here, "filter")
            elif not key.startswith("$"):
                path = f"{prefix}{key}"
                if self.path(path, here, "filter"):
                    self.condition(value, here, path)

    def condition(self, value: Any, pointer: str, path: str) -> None:
        if filters.is_extended_json(value):
            return
        if not (isinstance(value, dict) and value and str(next(iter(value))).startswith("$")):
            self.value(value, pointer, path)
            return
        for op, operand in value.items():
            here = pointer_join(pointer, op)
            if op in _VALUE_OPERATORS:
                self.value(operand, here, path)
            elif op in _LIST_OPERATORS and isinstance(operand, list):
                for index, item in enumerate(operand):
                    self.value(item, pointer_join(here, index), path)
            elif op == "$not" and isinstance(operand, dict):
                self.condition(operand, here, path)
            elif op == "$elemMatch" and isinstance(operand, dict) and operand:
                if str(next(iter(operand))).startswith("$"):
                    self.condition(operand, here, path)
                else:
                    self.query(operand, here, f"{path}.")

    def expression(self, expr: Any, pointer: str, purpose: str) -> None:
        paths: set[str] = set()
        where: dict[str, str] = {}
        filters.check_expression(expr, pointer, paths, where)
        for path in sorted(paths, key=lambda p: where.get(p, "")):
            if path != filters.WHOLE_DOCUMENT:
                self.path(path, where.get(path, pointer), purpose, dollar=True)

    def path(self, path: str, pointer: str, purpose: str, dollar: bool = False) -> bool:
        """Report ``path`` if the schema rules it out or does not declare it; True if declared
        (so that values compared with it can be checked)."""
        found = undeclared_path(self.schema, path)
        if found is None:
            return True
        shown = f"'${path}'" if dollar else f"'{path}'"
        inside = f" in '{found.parent}'" if found.parent else ""
        suggestion = found.suggestion()
        did_you_mean = (f"did you mean '{'$' if dollar else ''}{suggestion}'? "
                        if suggestion is not None else "")
        known = ""
        if found.known:
            known = " (fields there: " + ", ".join(found.known[:12]) + (
                ", ..." if len(found.known) > 12 else "") + ")"
        if found.scalar is not None:
            message = (f"the {purpose} reads {shown}, but '{found.parent}' is declared as "
                       f"{found.scalar} in the document schema ({self.label}), so it has no "
                       f"field '{found.field}'")
            self.findings.errors.append(self.raw.problem(
                pointer, message, f"{did_you_mean}read a field the schema declares"))
        elif found.closed:
            message = (f"the {purpose} reads {shown}, but the document schema ({self.label}) "
                       f"declares no field '{found.field}'{inside} and allows no other "
                       "(additionalProperties: false)")
            self.findings.errors.append(self.raw.problem(
                pointer, message, f"{did_you_mean}read a field the schema declares, or "
                f"declare this one in the schema{known}"))
        else:
            message = (f"the {purpose} reads {shown}, which the document schema ({self.label}) "
                       f"does not declare{inside} (it allows other fields, so this is only a "
                       "warning)")
            self.findings.warnings.append(self.raw.problem(
                pointer, message, f"{did_you_mean}declare the field in the schema, or set "
                f"additionalProperties: false to make undeclared paths errors{known}"))
        return False

    def value(self, value: Any, pointer: str, path: str) -> None:
        """Report a compared value that the field's schema rules out."""
        if value is None or isinstance(value, dict):
            return  # null matches a missing field; documents / Extended JSON are not checked
        node, _ = schema_at_path(self.schema, path)
        if not node or any(key in node for key in _COMPOSED):
            return
        if isinstance(value, list):
            return  # compared with a whole array: its items are not checked here
        kind = node.get("type")
        if kind == "array" or (isinstance(kind, list) and "array" in kind):
            items = node.get("items")
            if not isinstance(items, dict) or any(key in items for key in _COMPOSED):
                return
            node = items  # a scalar compared with an array matches its items
        rules = {key: node[key] for key in ("type", "enum", "const") if key in node}
        if not rules:
            return
        error = jsonschema.exceptions.best_match(
            jsonschema.Draft202012Validator(rules).iter_errors(value))
        if error is None:
            return
        shown = json.dumps(value, ensure_ascii=False)
        if error.validator in ("enum", "const"):
            options = list(rules["enum"]) if "enum" in rules else [rules["const"]]
            listed = ", ".join(json.dumps(o, ensure_ascii=False) for o in options[:12])
            close = difflib.get_close_matches(str(value), [str(o) for o in options], n=1,
                                              cutoff=0.6)
            hint = (f"did you mean {close[0]!r}? " if close else "") + f"one of: {listed}"
            message = (f"the filter compares '{path}' with {shown}, which the document "
                       f"schema ({self.label}) rules out, so the reactor would never fire")
        else:
            expected = rules["type"]
            kinds = " or ".join(_TYPE_NAMES.get(str(k), str(k)) for k in (
                expected if isinstance(expected, list) else [expected]))
            given = _JSON_KINDS.get(type(value), "the value")
            message = (f"the filter compares '{path}', {kinds} in the document schema "
                       f"({self.label}), with {given} {shown}, so the reactor would never fire")
            hint = ("write the number without quotes" if isinstance(value, str)
                    and _is_number(value) else f"compare it with {kinds}")
        self.findings.errors.append(self.raw.problem(pointer, message, hint))


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
