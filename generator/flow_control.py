"""Flow-control policies of a definition: ``concurrency``, ``rateLimit`` and ``priority``.

The definition format (``reactor-definition.schema.json``) has already checked the shapes;
this module turns them into the runtime's dataclasses and checks what a JSON Schema cannot:
that the key and priority expressions are expressions the runtime evaluates faithfully, read
document fields the document schema declares, and do not read the clock (both are computed
once, when a task is planned, so they must not depend on when that happens).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

from generator import extended_json, filters
from generator.durations import parse_duration
from generator.errors import BuildError, Problem
from generator.loader import RawDefinition
from generator.render import ConstantName
from generator.schemas import undeclared_path
from generator.time_triggers import clock_reference
from runtime.reactor import KeyConcurrency, Policies, PriorityPolicy, RateLimit

PRIORITY_MIN = -1000
PRIORITY_MAX = 1000
"""The range of a static priority (the definition format enforces it)."""

KEY_CONSTANT = "CONCURRENCY_KEY"
PRIORITY_CONSTANT = "PRIORITY_EXPRESSION"
"""Names of the generated module's constants holding the expressions."""

_CONSTANT_DOCS = {
    KEY_CONSTANT: "Concurrency key: evaluated on the source document when a task is planned.",
    PRIORITY_CONSTANT: "Task priority: evaluated on the source document when a task is planned.",
}


@dataclass(frozen=True)
class FlowControl:
    """The flow-control fields of :class:`runtime.reactor.Policies` for one definition."""

    concurrency: int | None = None
    cluster_concurrency: int | None = None
    key_concurrency: KeyConcurrency | None = None
    rate_limit: RateLimit | None = None
    priority: PriorityPolicy = dataclasses.field(default_factory=PriorityPolicy)


@dataclass(frozen=True)
class _Purpose:
    """What an expression is for, in the words of its error messages."""

    name: str
    missing: str
    example: str


_KEY = _Purpose("concurrency key", "every task would get the same key (null) and wait for "
                "the others", "'$customerId' or {$concat: ['$region', '-', '$customerId']}")
_PRIORITY = _Purpose("priority expression", "every task would fall back to the static "
                     "priority", "{$cond: [{$gt: ['$total', 1000]}, 100, 0]}")


def parse_flow_control(raw: RawDefinition, schema: dict[str, Any],
                       schema_label: str) -> FlowControl:
    """The flow-control policies of a definition already validated against the format.

    ``schema`` is the document schema (field paths in expressions are checked against it) and
    ``schema_label`` how messages name it. Raises :class:`BuildError` with every problem found.
    """
    spec = raw.data.get("policies") or {}
    problems: list[Problem] = []
    concurrency, cluster, keyed = _concurrency(raw, spec.get("concurrency"), schema,
                                               schema_label, problems)
    rate = _rate_limit(raw, spec.get("rateLimit"), problems)
    priority = _priority(raw, spec.get("priority"), schema, schema_label, problems)
    if problems:
        raise BuildError(problems)
    return FlowControl(concurrency, cluster, keyed, rate, priority)


def _concurrency(raw: RawDefinition, value: Any, schema: dict[str, Any], schema_label: str,
                 problems: list[Problem]) -> tuple[int | None, int | None, KeyConcurrency | None]:
    if value is None:
        return None, None, None
    if isinstance(value, int):
        return value, None, None
    base = "/policies/concurrency"
    per_instance = value.get("perInstance")
    if "key" not in value:
        return per_instance, value.get("max"), None
    key = _expression(raw, f"{base}/key", value["key"], schema, schema_label, _KEY, problems)
    return per_instance, None, KeyConcurrency(expression=key, max=int(value.get("max", 1)))


def _rate_limit(raw: RawDefinition, value: Any, problems: list[Problem]) -> RateLimit | None:
    if value is None:
        return None
    pointer = "/policies/rateLimit/per"
    try:
        per_ms = parse_duration(str(value["per"]))
    except ValueError as exc:
        problems.append(raw.problem(pointer, str(exc)))
        return None
    if per_ms <= 0:
        problems.append(raw.problem(pointer, f"rate limit period {value['per']!r} is zero",
                                    "use a period of at least 1ms, e.g. per: 1s"))
        return None
    return RateLimit(max=int(value["max"]), per_ms=per_ms)


def _priority(raw: RawDefinition, value: Any, schema: dict[str, Any], schema_label: str,
              problems: list[Problem]) -> PriorityPolicy:
    if value is None:
        return PriorityPolicy()
    if isinstance(value, int):
        return PriorityPolicy(static=value)
    expression = None
    if "expression" in value:
        expression = _expression(raw, "/policies/priority/expression", value["expression"],
                                 schema, schema_label, _PRIORITY, problems)
    return PriorityPolicy(static=int(value.get("static", 0)), expression=expression)


def _expression(raw: RawDefinition, pointer: str, value: Any, schema: dict[str, Any],
                schema_label: str, purpose: _Purpose, problems: list[Problem]) -> Any:
    """A checked key or priority expression, decoded from Extended JSON (None if it failed)."""
    paths: set[str] = set()
    where: dict[str, str] = {}
    try:
        filters.check_expression(value, pointer, paths, where)
    except filters.FilterError as exc:
        problems.append(raw.problem(exc.pointer, exc.message, exc.hint))
        return None
    clock = clock_reference(value, pointer)
    if clock is not None:
        variable, at = clock
        problems.append(raw.problem(
            at, f"{variable} in the {purpose.name}: it is computed once, when a task is "
            "planned, so a value read from the clock would depend on when planning happened",
            f"compute it from document fields only, e.g. {purpose.example}"))
        return None
    if not paths:
        problems.append(raw.problem(pointer, _constant_message(value, purpose),
                                    _constant_hint(value, schema, purpose)))
        return None
    found = False
    for path in sorted(paths, key=lambda p: where.get(p, "")):
        if path == filters.WHOLE_DOCUMENT:
            continue
        ruled_out = undeclared_path(schema, path)
        if ruled_out is None:
            continue
        found = True
        if ruled_out.scalar is not None:
            detail = (f"'{ruled_out.parent}' is a {ruled_out.scalar} in the document schema "
                      f"({schema_label}), so it has no field '{ruled_out.field}'")
        else:
            inside = f" in '{ruled_out.parent}'" if ruled_out.parent else ""
            detail = (f"the document schema ({schema_label}) declares no field "
                      f"'{ruled_out.field}'{inside}")
        hint = "read a field the schema declares, or declare this one in the schema"
        if ruled_out.known:
            shown = ", ".join(ruled_out.known[:12]) + (", ..." if len(ruled_out.known) > 12
                                                       else "")
            hint += f" (fields there: {shown})"
        suggestion = ruled_out.suggestion()
        if suggestion is not None:
            hint = f"did you mean '${suggestion}'? " + hint
        problems.append(raw.problem(
            where.get(path, pointer), f"the {purpose.name} reads '${path}', but {detail}: "
            f"{purpose.missing}", hint))
    if found:
        return None
    return _decode(raw, pointer, value, problems)


def _constant_message(value: Any, purpose: _Purpose) -> str:
    if isinstance(value, str):
        shown = f" {value!r}"
    elif value is None or isinstance(value, int | float):
        shown = f" {json.dumps(value)}"
    else:
        shown = ""
    return (f"the {purpose.name}{shown} reads no document field, so it is the same for every "
            "task")


def _constant_hint(value: Any, schema: dict[str, Any], purpose: _Purpose) -> str:
    if isinstance(value, str) and value and undeclared_path(schema, value) is None:
        return f"write '${value}' (with a $) to read the field {value!r}"
    if purpose is _KEY:
        return (f"read a field, e.g. {purpose.example}; for one limit over all tasks, use "
                "max without key")
    return f"read a field, e.g. {purpose.example}, or use static: <n> for a constant priority"


def _decode(raw: RawDefinition, pointer: str, value: Any, problems: list[Problem]) -> Any:
    """Extended JSON literals (``{$date: ...}``) in an expression as BSON values."""
    try:
        return extended_json.decode(value, pointer)
    except extended_json.ExtendedJsonError as exc:
        problems.append(raw.problem(exc.pointer, exc.message, exc.hint))
        return None


def expression_constants(policies: Policies) -> tuple[Policies, list[tuple[str, Any, str]]]:
    """``policies`` with its expressions replaced by the names of module constants, and those
    constants as (name, value, docstring), so that each value is rendered once as data (never
    as code)."""
    constants: list[tuple[str, Any, str]] = []
    keyed = policies.key_concurrency
    if keyed is not None:
        constants.append((KEY_CONSTANT, keyed.expression, _CONSTANT_DOCS[KEY_CONSTANT]))
        keyed = dataclasses.replace(keyed, expression=ConstantName(KEY_CONSTANT))
    priority = policies.priority
    if priority.expression is not None:
        constants.append((PRIORITY_CONSTANT, priority.expression,
                          _CONSTANT_DOCS[PRIORITY_CONSTANT]))
        priority = dataclasses.replace(priority, expression=ConstantName(PRIORITY_CONSTANT))
    return dataclasses.replace(policies, key_concurrency=keyed, priority=priority), constants


def runtime_imports(policies: Policies) -> list[str]:
    """The flow-control classes of ``runtime.reactor`` a reactor module constructs."""
    names = ["PriorityPolicy"]
    if policies.key_concurrency is not None:
        names.append("KeyConcurrency")
    if policies.rate_limit is not None:
        names.append("RateLimit")
    return names
