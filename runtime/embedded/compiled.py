"""Compiled expressions and filters for the hot path (update pipelines' stages:
:mod:`runtime.embedded.compiled_stages`).

mongomock-ng interprets an expression afresh for every document, walking the specification
each time. The runtime's writes (planner upserts, claims, finalizations) and change-stream
filters use a small set of operators over plain fields, so those are compiled here once per
command into Python closures. Anything outside that set raises :class:`Unsupported` at compile
time, and a document whose paths cross an array raises it at evaluation time: the caller then
falls back to the general engine for that statement or document, so results never depend on
which path ran. The operator semantics are the engine's own (the same BSON comparison,
truthiness and arithmetic functions), only without the per-document interpretation.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable
from typing import Any

from bson import ObjectId

from runtime.embedded import engine, expression_limits

NOTHING: Any = engine.mm_helpers.NOTHING


#: MongoDB truthiness (false, null, missing and numeric zero are false), the engine's own.
_to_bool = engine.to_bool
#: MongoDB truthiness, for the compiled matcher's ``$expr``.
to_bool = _to_bool
_bson_equal = engine.bson_equal

Matcher = Callable[[dict[str, Any], dict[str, Any]], bool]


class Unsupported(Exception):
    """This expression, filter or document needs the general engine."""


def _get_path(doc: Any, path: str) -> Any:
    if "." not in path and type(doc) is dict:
        return doc.get(path, NOTHING)
    current = doc
    for part in path.split("."):
        if isinstance(current, dict):
            current = current.get(part, NOTHING)
            if current is NOTHING:
                return NOTHING
        elif isinstance(current, list):
            raise Unsupported("path through an array")
        else:
            return NOTHING
    return current


#: Variables :func:`_variable` answers itself, whatever ``variables`` holds.
_SYSTEM_NAMES = frozenset({"REMOVE", "ROOT", "CURRENT"})


def _variable(spec: str, doc: dict[str, Any], variables: dict[str, Any]) -> Any:
    name, _, rest = spec[2:].partition(".")
    if name == "REMOVE" and not rest:
        return NOTHING
    if name in ("ROOT", "CURRENT"):
        return _get_path(doc, rest) if rest else doc
    if name not in variables:
        raise Unsupported(f"unknown variable {name}")
    found = variables[name]
    return _get_path(found, rest) if rest else found


def _values(operand: Any, doc: dict[str, Any], variables: dict[str, Any]) -> list[Any]:
    if type(operand) is list:
        return [evaluate(item, doc, variables) for item in operand]
    return [evaluate(operand, doc, variables)]


def _pair(operand: Any, doc: dict[str, Any], variables: dict[str, Any]) -> tuple[Any, Any]:
    if type(operand) is not list or len(operand) != 2:
        raise Unsupported("argument count")
    first, second = operand
    return evaluate(first, doc, variables), evaluate(second, doc, variables)


Op = Callable[[Any, dict[str, Any], dict[str, Any]], Any]


def _cond(operand: Any, d: dict[str, Any], v: dict[str, Any]) -> Any:
    if type(operand) is list and len(operand) == 3:
        test, then, other = operand
    elif isinstance(operand, dict):
        if len(operand) != 3 or not {"if", "then", "else"} <= operand.keys():
            raise Unsupported("$cond")
        test, then, other = operand["if"], operand["then"], operand["else"]
    elif isinstance(operand, list) and len(operand) == 3:
        test, then, other = operand
    else:
        raise Unsupported("$cond")
    value = evaluate(test, d, v)
    if value is True or (value is not False and _to_bool(value)):
        return evaluate(then, d, v)
    return evaluate(other, d, v)


def _if_null(operand: Any, d: dict[str, Any], v: dict[str, Any]) -> Any:
    if not isinstance(operand, list) or len(operand) < 2:
        raise Unsupported("$ifNull")
    if len(operand) == 2:  # the common form, without slicing
        value = evaluate(operand[0], d, v)
        if value is not None and value is not NOTHING:
            return value
        return evaluate(operand[1], d, v)
    for part in operand[:-1]:
        value = evaluate(part, d, v)
        if value is not None and value is not NOTHING:
            return value
    return evaluate(operand[-1], d, v)


def _in(operand: Any, d: dict[str, Any], v: dict[str, Any]) -> Any:
    value, values = _pair(operand, d, v)
    if not isinstance(values, list):
        raise Unsupported("$in needs an array")
    return any(engine.bson_equal(value, item) for item in values)


def _eq(operand: Any, d: dict[str, Any], v: dict[str, Any]) -> Any:
    if type(operand) is not list or len(operand) != 2:
        raise Unsupported("argument count")
    a, b = operand
    return _bson_equal(evaluate(a, d, v), evaluate(b, d, v))


def _ne(operand: Any, d: dict[str, Any], v: dict[str, Any]) -> Any:
    if type(operand) is not list or len(operand) != 2:
        raise Unsupported("argument count")
    a, b = operand
    return not _bson_equal(evaluate(a, d, v), evaluate(b, d, v))


def _ordering(op: Callable[[Any, Any], bool]) -> Op:
    def compare(operand: Any, d: dict[str, Any], v: dict[str, Any]) -> Any:
        a, b = _pair(operand, d, v)
        return engine.bson_compare(op, a, b)

    return compare


def _and(operand: Any, d: dict[str, Any], v: dict[str, Any]) -> Any:
    for part in operand if isinstance(operand, list) else [operand]:
        if not _to_bool(evaluate(part, d, v)):
            return False
    return True


def _or(operand: Any, d: dict[str, Any], v: dict[str, Any]) -> Any:
    for part in operand if isinstance(operand, list) else [operand]:
        if _to_bool(evaluate(part, d, v)):
            return True
    return False


def _single(operand: Any, d: dict[str, Any], v: dict[str, Any]) -> Any:
    """The value of a one-argument operator's operand (``[x]`` or ``x``)."""
    if type(operand) is list:
        if len(operand) != 1:
            raise Unsupported("argument count")
        operand = operand[0]
    return evaluate(operand, d, v)


def _not(operand: Any, d: dict[str, Any], v: dict[str, Any]) -> Any:
    return not _to_bool(_single(operand, d, v))


def _type(operand: Any, d: dict[str, Any], v: dict[str, Any]) -> Any:
    return engine.bson_type_name(_single(operand, d, v))


def _extreme(pick: Callable[..., Any]) -> Op:
    def choose(operand: Any, d: dict[str, Any], v: dict[str, Any]) -> Any:
        if not isinstance(operand, list) or len(operand) < 2:
            raise Unsupported("one-argument $min/$max reads an array")
        present = [x for x in _values(operand, d, v) if x is not None and x is not NOTHING]
        return pick(present, key=engine.ordering_key) if present else None

    return choose


def _is_count(value: Any) -> bool:
    """An integer argument of ``$slice`` (Int64 too, not a boolean)."""
    return isinstance(value, int) and not isinstance(value, bool)


def _slice(operand: Any, d: dict[str, Any], v: dict[str, Any]) -> Any:
    if not isinstance(operand, list) or len(operand) not in (2, 3):
        raise Unsupported("$slice")
    # Every argument is evaluated before any is judged, so errors come in the same order.
    array = evaluate(operand[0], d, v)
    n = position = evaluate(operand[1], d, v)
    counted = len(operand) == 3
    if counted:
        n = evaluate(operand[2], d, v)
    if array is None or array is NOTHING:
        return None
    if not isinstance(array, list) or not _is_count(position) or not _is_count(n):
        raise Unsupported("$slice arguments")
    if not counted:
        return array[:n] if n >= 0 else array[max(len(array) + n, 0):]
    if n <= 0:
        raise Unsupported("$slice count")
    start = position if position >= 0 else max(len(array) + position, 0)
    return array[start:start + n]


def _concat_arrays(operand: Any, d: dict[str, Any], v: dict[str, Any]) -> Any:
    values = _values(operand, d, v)
    for value in values:
        if value is None or value is NOTHING:
            return None
        if not isinstance(value, list):
            raise Unsupported("$concatArrays needs arrays")
    expression_limits.check_operands("$concatArrays", values)
    out: list[Any] = []
    for value in values:
        out.extend(value)
    return out


class _Evaluated:
    """A stand-in parser for the engine's expression handlers: arguments arrive evaluated."""

    @staticmethod
    def parse(expression: Any) -> Any:
        return expression[0]


def _delegate(name: str) -> Op:
    """An engine-implemented operator, called with arguments evaluated here."""
    handler = engine.expression_handler(name)

    def call(operand: Any, d: dict[str, Any], v: dict[str, Any]) -> Any:
        boxed = [(value,) for value in _values(operand, d, v)]
        return handler(_Evaluated, boxed if isinstance(operand, list) else boxed[0])

    return call


_engine_add = engine.expression_handler("$add")


_INT32 = range(-(2**31), 2**31)
_EXACT_MS = range(-(2**53) + 1, 2**53)
#: ``timedelta(milliseconds=n)`` by ``n``: a lease or a retry delay recurs in every statement.
_DELTAS: dict[int, datetime.timedelta] = {}


def _milliseconds(n: int) -> datetime.timedelta:
    delta = _DELTAS.get(n)
    if delta is None:
        if len(_DELTAS) >= 256:
            _DELTAS.clear()
        delta = _DELTAS[n] = datetime.timedelta(milliseconds=n)
    return delta


def _add(operand: Any, d: dict[str, Any], v: dict[str, Any]) -> Any:
    """``$add`` of the two shapes the runtime's writes use: two 32-bit ints (``attempts + 1``)
    and a date plus whole milliseconds (``$$NOW + lease``). Every other combination (longs,
    doubles, decimals, nulls, overflow, errors) goes to the engine's own ``$add``."""
    if type(operand) is list and len(operand) == 2:
        a, b = evaluate(operand[0], d, v), evaluate(operand[1], d, v)
        kind_a, kind_b = type(a), type(b)
        if kind_b is int:
            if kind_a is int and a in _INT32 and b in _INT32 and a + b in _INT32:
                return a + b
            if kind_a is datetime.datetime and b in _EXACT_MS:
                try:
                    return a + _milliseconds(b)
                except OverflowError:
                    pass
        elif kind_a is int and kind_b is datetime.datetime and a in _EXACT_MS:
            try:
                return b + _milliseconds(a)
            except OverflowError:
                pass
        return _engine_add(_Evaluated, [(a,), (b,)])
    return _engine_add(_Evaluated, [(value,) for value in _values(operand, d, v)]
                       if isinstance(operand, list) else (evaluate(operand, d, v),))


_OPERATORS: dict[str, Op] = {
    "$cond": _cond,
    "$ifNull": _if_null,
    "$in": _in,
    "$eq": _eq,
    "$ne": _ne,
    "$and": _and,
    "$or": _or,
    "$not": _not,
    "$type": _type,
    "$min": _extreme(min),
    "$max": _extreme(max),
    "$slice": _slice,
    "$concatArrays": _concat_arrays,
    **{name: _ordering(op) for name, op in engine.EXPRESSION_ORDERINGS.items()},
    "$add": _add,
    **{name: _delegate(name) for name in ("$subtract", "$multiply", "$divide", "$mod",
                                          "$abs", "$ceil", "$floor", "$toHashedIndexKey")},
}

#: Types whose values are their own value as expressions (checked before the rarer ones).
_CONSTANT_TYPES = frozenset({type(None), bool, int, float, datetime.datetime, ObjectId})


def evaluate(spec: Any, doc: dict[str, Any], variables: dict[str, Any]) -> Any:
    """The value of an aggregation expression for ``doc`` (``NOTHING`` when missing)."""
    kind = type(spec)
    if kind is str:
        if spec[:1] != "$":
            return spec
        if spec[1:2] == "$":
            name = spec[2:]
            found = variables.get(name, NOTHING)  # $$NOW: no dots in a variable's name
            if found is not NOTHING and name not in _SYSTEM_NAMES:
                return found
            return _variable(spec, doc, variables)
        if "." not in spec and type(doc) is dict:  # a top-level field: the common case
            return doc.get(spec[1:], NOTHING)
        return _get_path(doc, spec[1:])
    if kind is dict:
        if len(spec) == 1:
            for name in spec:  # the one key, without unpacking items()
                op = _OPERATORS.get(name)
                if op is not None:
                    return op(spec[name], doc, variables)
                if name == "$literal":
                    return spec[name]
                if name[:1] == "$":
                    raise Unsupported(name)
        out = {}
        for key, part in spec.items():
            if key[:1] == "$" or "." in key:
                raise Unsupported("expression object")
            value = evaluate(part, doc, variables)
            if value is not NOTHING:
                out[key] = value
        return out
    if kind in _CONSTANT_TYPES:
        return spec
    if kind is list:
        return [None if (x := evaluate(e, doc, variables)) is NOTHING else x for e in spec]
    if isinstance(spec, dict | list):
        raise Unsupported("subclassed container")
    return spec


# -- inclusion projections --------------------------------------------------------------------

Projection = Callable[[dict[str, Any]], dict[str, Any]]


def inclusion_tree(spec: Any) -> dict[str, Any]:
    """The paths an inclusion ``$project`` keeps, as a tree (raises Unsupported otherwise)."""
    if not isinstance(spec, dict) or not spec:
        raise Unsupported("$project")
    tree: dict[str, Any] = {}
    for path, flag in spec.items():
        if not (flag is True or (type(flag) in (int, float) and flag == 1)):
            raise Unsupported("not an inclusion projection")
        if not path or path.startswith("$") or ".." in path or path.endswith("."):
            raise Unsupported(path)
        parts = path.split(".")
        node = tree
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise Unsupported("overlapping paths")
            node = child
        if parts[-1] in node:
            raise Unsupported("overlapping paths")
        node[parts[-1]] = True
    tree.setdefault("_id", True)
    return tree


def _project(doc: dict[str, Any], tree: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in doc.items():
        wanted = tree.get(key)
        if wanted is None:
            continue
        if wanted is True:
            out[key] = value
        elif isinstance(value, dict):
            out[key] = _project(value, wanted)
        elif isinstance(value, list):
            raise Unsupported("projection through an array")
    return out


def inclusion_projection(spec: Any) -> Projection:
    """A function applying a ``$project`` stage made only of inclusions (dotted paths too):
    fields keep the document's order, as in MongoDB."""
    tree = inclusion_tree(spec)
    return lambda doc: _project(doc, tree)
