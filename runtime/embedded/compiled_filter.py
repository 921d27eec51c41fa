"""Query filters compiled once per command into Python closures (the hot path's matcher).

A filter of plain conditions (equality, ``$ne``, ``$gt``/``$gte``/``$lt``/``$lte``, ``$in``,
``$nin``, ``$exists``, ``$type``, ``$not`` of those, ``$and``/``$or``/``$nor`` of such filters and
``$expr`` over the operators :mod:`runtime.embedded.compiled` evaluates) becomes one function;
each condition calls the engine's own operator primitive, so the answer is the same as the general
matcher's. Any other filter is not compiled (:func:`filter_matcher` returns None), and a document
whose filtered paths cross an array raises :class:`~runtime.embedded.compiled.Unsupported`, so
the caller asks the general matcher for that document.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from bson import Regex

from runtime.embedded import compiled, engine
from runtime.embedded.ordering import value_key

Matcher = Callable[[dict[str, Any], dict[str, Any]], bool]
Test = Callable[[Any], bool]
NOTHING: Any = engine.mm_helpers.NOTHING  # not compiled.NOTHING: import order (engine loads us)


def _path_value(doc: dict[str, Any], parts: list[str]) -> Any:
    """The value at a dotted path for the compiled matcher (Unsupported through an array)."""
    current: Any = doc
    for part in parts:
        if isinstance(current, dict):
            current = current.get(part, NOTHING)
            if current is NOTHING:
                return NOTHING
        elif isinstance(current, list):
            raise compiled.Unsupported("path through an array")
        else:
            return NOTHING
    if isinstance(current, list):
        raise compiled.Unsupported("array value")
    return current


def _leaf(path: str) -> Callable[[dict[str, Any]], Any]:
    parts = path.split(".")
    if len(parts) == 1:
        def get_one(doc: dict[str, Any]) -> Any:
            value = doc.get(path, NOTHING)
            if isinstance(value, list):
                raise compiled.Unsupported("array value")
            return value

        return get_one

    return lambda doc: _path_value(doc, parts)


def _plain(value: Any) -> bool:
    return not isinstance(value, list | Regex | re.Pattern)


def _membership(values: list[Any]) -> Test:
    """``$in`` over a list of plain values, with the list's keys computed once."""
    try:
        keys = frozenset(value_key(v) for v in values)
    except TypeError:
        return lambda value: engine.in_operator(value, values)
    strings = frozenset(v for v in values if type(v) is str)
    with_null = any(v is None for v in values)

    def test(value: Any) -> bool:
        if type(value) is str:
            return value in strings
        if value is NOTHING:
            return with_null
        return value_key(value) in keys

    return test


def _operator_test(op: str, operand: Any) -> Test:
    if op == "$eq" and _plain(operand):
        return lambda value: engine.equality_operator(value, operand)
    if op == "$ne" and _plain(operand):
        return lambda value: not engine.equality_operator(value, operand)
    if op in ("$in", "$nin") and isinstance(operand, list) and all(_plain(v) for v in operand):
        inside = _membership(operand)
        if op == "$in":
            return inside
        return lambda value: not inside(value)
    if op in engine.EXPRESSION_ORDERINGS and _plain(operand):
        compare = engine.query_comparison(op)
        return lambda value: compare(value, operand)
    if op == "$exists":
        wanted = bool(operand) if not isinstance(operand, dict | list) else True
        return lambda value: (value is not NOTHING) is wanted
    if op == "$type" and _plain(operand):
        return lambda value: engine.type_operator(value, operand)
    if op == "$not" and isinstance(operand, dict) and operand and all(
            k.startswith("$") for k in operand):
        inner = _all(operand)
        return lambda value: not inner(value)
    raise compiled.Unsupported(op)


def _all(conditions: dict[str, Any]) -> Test:
    tests = [_operator_test(op, operand) for op, operand in conditions.items()]
    if len(tests) == 1:
        return tests[0]
    return lambda value: all(test(value) for test in tests)


def _clause(path: str, condition: Any) -> Matcher:
    get = _leaf(path)
    if isinstance(condition, dict) and condition and next(iter(condition)).startswith("$"):
        test = _all(condition)
    elif _plain(condition):
        test = _operator_test("$eq", condition)
    else:
        raise compiled.Unsupported("array equality")
    return lambda doc, variables: test(get(doc))


def _expr(spec: Any) -> Matcher:
    truthy = compiled.to_bool
    return lambda doc, variables: truthy(compiled.evaluate(spec, doc, variables))


def _combined(kind: str, subs: list[Matcher]) -> Matcher:
    def all_of(doc: dict[str, Any], variables: dict[str, Any]) -> bool:
        return all(sub(doc, variables) for sub in subs)

    def any_of(doc: dict[str, Any], variables: dict[str, Any]) -> bool:
        return any(sub(doc, variables) for sub in subs)

    def none_of(doc: dict[str, Any], variables: dict[str, Any]) -> bool:
        return not any(sub(doc, variables) for sub in subs)

    return {"$and": all_of, "$or": any_of}.get(kind, none_of)


def compile_filter(query: dict[str, Any]) -> Matcher:
    """One function matching documents against ``query`` (raises Unsupported if it can't)."""
    parts: list[Matcher] = []
    for key, value in query.items():
        if key in ("$and", "$or", "$nor"):
            if not isinstance(value, list) or not value or not all(
                    isinstance(v, dict) for v in value):
                raise compiled.Unsupported(key)
            parts.append(_combined(key, [compile_filter(v) for v in value]))
        elif key == "$expr":
            parts.append(_expr(value))
        elif key.startswith("$"):
            raise compiled.Unsupported(key)
        else:
            parts.append(_clause(key, value))
    if len(parts) == 1:
        return parts[0]
    return lambda doc, variables: all(p(doc, variables) for p in parts)


_FILTERS: dict[int, tuple[dict[str, Any], Matcher | None]] = {}


def filter_matcher(query: dict[str, Any]) -> Matcher | None:
    """The compiled form of ``query`` (cached for this filter object), or None."""
    cached = _FILTERS.get(id(query))
    if cached is not None and cached[0] is query:
        return cached[1]
    try:
        matcher: Matcher | None = compile_filter(query)
    except compiled.Unsupported:
        matcher = None
    if len(_FILTERS) >= 1024:
        _FILTERS.clear()
    _FILTERS[id(query)] = (query, matcher)
    return matcher


# -- one-shot matching --------------------------------------------------------------------------

#: The operators :func:`quick_match` evaluates in place (each with the engine's primitive).
_QUICK_TESTS: dict[str, Callable[[Any, Any], bool]] = {
    "$eq": lambda value, operand: engine.equality_operator(value, operand),
    "$ne": lambda value, operand: not engine.equality_operator(value, operand),
    **{op: engine.query_comparison(op) for op in engine.EXPRESSION_ORDERINGS},
}


def _quick_conditions(value: Any, conditions: dict[str, Any]) -> bool:
    # Every condition is looked at (no short cut): a filter part that compile_filter would
    # refuse must send the whole filter to the general matcher, whatever the other parts say.
    matched = True
    for op, operand in conditions.items():
        if op == "$not" and isinstance(operand, dict) and operand and all(
                k.startswith("$") for k in operand):
            if _quick_conditions(value, operand):
                matched = False
        elif op == "$exists":
            wanted = bool(operand) if not isinstance(operand, dict | list) else True
            if (value is not NOTHING) is not wanted:
                matched = False
        else:
            test = _QUICK_TESTS.get(op)
            if test is None or not _plain(operand):
                raise compiled.Unsupported(op)
            if not test(value, operand):
                matched = False
    return matched


def quick_match(query: dict[str, Any], doc: dict[str, Any], variables: dict[str, Any]) -> bool:
    """Whether ``doc`` matches ``query``, evaluated in place without compiling a matcher: for a
    filter that is read once (an update's point lookup), building closures costs more than the
    match. The same subset and primitives as :func:`compile_filter` (fields compared with
    ``$eq``, ``$ne``, the orderings, ``$exists`` and ``$not`` of those, and a top-level
    ``$expr`` over the compiled operators, evaluated with ``variables``); raises
    :class:`~runtime.embedded.compiled.Unsupported` for anything else, or a document whose
    filtered paths cross an array, and the caller then asks :func:`engine.matches`.
    """
    matched = True
    for key, condition in query.items():
        if key == "$expr":
            if not compiled.to_bool(compiled.evaluate(condition, doc, variables)):
                matched = False
            continue
        if key[:1] == "$":
            raise compiled.Unsupported(key)
        value = doc.get(key, NOTHING) if "." not in key else _path_value(doc, key.split("."))
        if isinstance(value, list):
            raise compiled.Unsupported("array value")
        if isinstance(condition, dict) and condition and next(iter(condition)).startswith("$"):
            if not _quick_conditions(value, condition):
                matched = False
        elif _plain(condition):
            if not engine.equality_operator(value, condition):
                matched = False
        else:
            raise compiled.Unsupported("array equality")
    return matched
