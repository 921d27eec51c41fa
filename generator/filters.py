"""Trigger filters: build-time validation and the document paths they read.

The runtime evaluates filters on the database itself (so semantics are MongoDB's), but only
operators that the embedded server and MongoDB evaluate identically, and that are deterministic
over time and across evaluations, are accepted. Anything else is rejected here, naming the
operator, instead of being mis-evaluated later.
"""

from __future__ import annotations

import difflib
from typing import Any

QUERY_OPERATORS = frozenset({
    "$eq", "$ne", "$gt", "$gte", "$lt", "$lte", "$in", "$nin", "$and", "$or", "$nor", "$not",
    "$exists", "$type", "$regex", "$options", "$all", "$elemMatch", "$size", "$mod", "$expr",
    "$comment",
})
EXPRESSION_OPERATORS = frozenset({
    # arithmetic
    "$add", "$subtract", "$multiply", "$divide", "$mod", "$abs", "$ceil", "$floor", "$round",
    "$trunc", "$pow", "$sqrt", "$max", "$min", "$sum", "$avg",
    # comparison and boolean
    "$eq", "$ne", "$gt", "$gte", "$lt", "$lte", "$cmp", "$and", "$or", "$not",
    # conditional
    "$cond", "$ifNull", "$switch",
    # strings
    "$concat", "$toLower", "$toUpper", "$substr",
    "$split", "$trim", "$ltrim", "$rtrim", "$regexMatch", "$strcasecmp",
    # arrays and sets
    "$size", "$in", "$arrayElemAt", "$filter", "$map", "$reduce", "$slice", "$isArray",
    "$concatArrays", "$anyElementTrue", "$allElementsTrue", "$first", "$last",
    "$indexOfArray", "$setUnion", "$setIntersection", "$setDifference",
    "$setEquals", "$setIsSubset", "$objectToArray", "$arrayToObject", "$mergeObjects",
    # types and literals
    "$type", "$toString", "$toInt", "$toLong", "$toDouble", "$toDecimal", "$toDate",
    "$toObjectId", "$convert", "$literal", "$isNumber",
    # dates
    "$dateAdd", "$dateSubtract", "$dateDiff", "$year", "$month", "$dayOfMonth", "$dayOfWeek",
    "$dayOfYear", "$hour", "$minute", "$second", "$millisecond", "$week", "$dateToString",
    "$dateFromString", "$dateTrunc",
})
# Known MongoDB operators that are rejected, with the reason shown to the user.
REJECTED = {
    "$where": "runs JavaScript, which the runtime does not evaluate",
    "$function": "runs JavaScript, which the runtime does not evaluate",
    "$accumulator": "runs JavaScript, which the runtime does not evaluate",
    "$text": "needs a text index and scores, which a per-document trigger cannot use",
    "$near": "is a sorting geo operator, not a per-document condition",
    "$nearSphere": "is a sorting geo operator, not a per-document condition",
    "$geoWithin": "is not evaluated by the embedded development server",
    "$geoIntersects": "is not evaluated by the embedded development server",
    "$jsonSchema": "is not evaluated by the embedded development server",
    "$rand": "is random: the planner and the late-binding check would disagree",
    "$sampleRate": "is random: the planner and the late-binding check would disagree",
    "$bitsAllSet": "is not evaluated by the embedded development server",
    "$bitsAnySet": "is not evaluated by the embedded development server",
    "$bitsAllClear": "is not evaluated by the embedded development server",
    "$bitsAnyClear": "is not evaluated by the embedded development server",
    "$getField": "is not evaluated by the embedded development server",
}
for _op in ("$indexOfCP", "$range", "$reverseArray", "$strLenBytes", "$strLenCP", "$substrBytes",
            "$substrCP", "$toBool"):
    REJECTED[_op] = "is not evaluated by the embedded development server"
ALLOWED_VARIABLES = frozenset({"NOW", "CLUSTER_TIME", "ROOT", "CURRENT", "REMOVE", "this", "value"})
WHOLE_DOCUMENT = "$$ROOT"


# MongoDB Extended JSON type wrappers ({$date: ...}, {$oid: ...}): literals, not operators.
EXTENDED_JSON_KEYS = frozenset({
    "$date", "$oid", "$numberInt", "$numberLong", "$numberDouble", "$numberDecimal", "$binary",
    "$uuid", "$timestamp", "$regularExpression", "$minKey", "$maxKey", "$symbol", "$code",
    "$scope", "$undefined", "$dbPointer", "$type", "$subType",
})
_EXTENDED_JSON_FORMS = (
    frozenset({"$date"}), frozenset({"$oid"}), frozenset({"$numberInt"}),
    frozenset({"$numberLong"}), frozenset({"$numberDouble"}), frozenset({"$numberDecimal"}),
    frozenset({"$binary"}), frozenset({"$binary", "$type"}), frozenset({"$uuid"}),
    frozenset({"$timestamp"}), frozenset({"$regularExpression"}), frozenset({"$minKey"}),
    frozenset({"$maxKey"}), frozenset({"$symbol"}), frozenset({"$code"}),
    frozenset({"$code", "$scope"}), frozenset({"$undefined"}), frozenset({"$dbPointer"}),
)


def is_extended_json(value: Any) -> bool:
    """True for an Extended JSON type wrapper such as ``{$date: '2024-01-01T00:00:00Z'}``."""
    return isinstance(value, dict) and frozenset(value) in _EXTENDED_JSON_FORMS


class FilterError(Exception):
    """A filter or watch expression uses something that cannot be evaluated faithfully."""

    def __init__(self, pointer: str, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.pointer = pointer
        self.message = message
        self.hint = hint


def _join(pointer: str, key: str | int) -> str:
    return f"{pointer}/{str(key).replace('~', '~0').replace('/', '~1')}"


def _reject(op: str, pointer: str, kind: str) -> FilterError:
    if op in REJECTED:
        return FilterError(pointer, f"operator {op} {REJECTED[op]}",
                           "express the condition with supported query or expression operators")
    known = QUERY_OPERATORS if kind == "query" else EXPRESSION_OPERATORS | {"$let"}
    close = difflib.get_close_matches(op, sorted(known), n=1, cutoff=0.6)
    hint = "check the spelling; see docs/reactor-definitions.md for the supported list"
    if close:
        hint = f"did you mean {close[0]!r}? " + hint
    return FilterError(pointer, f"unknown {kind} operator {op}", hint)


# Operators that may appear at the top level of a query document (the others, such as $gt,
# only inside a field condition: ``{total: {$gt: 100}}``).
TOP_LEVEL_QUERY_OPERATORS = frozenset({"$and", "$or", "$nor", "$expr", "$comment"})


def is_expression_filter(spec: dict[str, Any]) -> bool:
    """True when a filter is an aggregation expression rather than a query document.

    ``{$gt: ['$total', 100]}`` is an expression (``$gt`` is not a top-level query operator);
    ``{$or: [{status: 'paid'}, ...]}`` and ``{$expr: ...}`` are queries. Rejected operators
    (``$where``, ``$text``, ...) stay queries so that the error names them as such.
    """
    keys = list(spec)
    if not keys or not all(isinstance(k, str) and k.startswith("$") for k in keys):
        return False
    for key in keys:
        if key in ("$and", "$or"):
            # {$and: [{$lt: ['$dueAt', '$$NOW']}, ...]} is an expression when its parts are.
            parts = spec[key]
            if not isinstance(parts, list) or not parts or not all(
                    not isinstance(p, dict) or is_expression_filter(p) for p in parts):
                return False
        elif key in TOP_LEVEL_QUERY_OPERATORS or key in REJECTED:
            return False
    return True


def normalise_filter(spec: dict[str, Any]) -> dict[str, Any]:
    """The filter as a query document (an expression filter is wrapped in ``$expr``)."""
    return {"$expr": spec} if is_expression_filter(spec) else spec


def check_query(query: Any, pointer: str, paths: set[str], prefix: str = "") -> None:
    """Validate a query document and collect the document paths it reads into ``paths``."""
    if not isinstance(query, dict):
        raise FilterError(pointer, "a query must be a mapping of fields to conditions")
    for key, value in query.items():
        here = _join(pointer, key)
        if key.startswith("$"):
            if key not in QUERY_OPERATORS:
                raise _reject(key, here, "query")
            if key in ("$and", "$or", "$nor"):
                if not isinstance(value, list) or not value:
                    raise FilterError(here, f"{key} needs a non-empty list of queries")
                for index, part in enumerate(value):
                    check_query(part, _join(here, index), paths, prefix)
            elif key == "$expr":
                check_expression(value, here, paths)
            elif key != "$comment":
                raise FilterError(here, f"{key} must be used inside a field condition",
                                  f"write {{field: {{{key}: value}}}}, or wrap an aggregation "
                                  f"expression in $expr: {{$expr: {{{key}: [...]}}}}")
            continue
        path = f"{prefix}{key}"
        paths.add(path)
        _check_condition(value, here, paths, path)


def _check_literal(value: Any, pointer: str) -> None:
    """Query values are literals: ``$$NOW`` there would be compared as the string '$$NOW'."""
    if isinstance(value, str) and value.startswith("$$"):
        raise FilterError(pointer, f"{value} is not evaluated in a query condition (it would be "
                          "compared as a literal string)",
                          "use an expression filter, e.g. {$lt: ['$dueAt', '$$NOW']}, or "
                          "{$expr: ...} inside the query")
    if isinstance(value, list):
        for index, item in enumerate(value):
            _check_literal(item, _join(pointer, index))
    elif isinstance(value, dict):
        if is_extended_json(value):
            return
        for key, item in value.items():
            _check_literal(item, _join(pointer, key))


def _check_condition(value: Any, pointer: str, paths: set[str], path: str) -> None:
    if not (isinstance(value, dict) and value and next(iter(value)).startswith("$")):
        _check_literal(value, pointer)
        return
    if is_extended_json(value):
        return
    for op, operand in value.items():
        here = _join(pointer, op)
        if op not in QUERY_OPERATORS or op in ("$and", "$or", "$nor", "$expr", "$comment"):
            raise _reject(op, here, "query")
        if op == "$elemMatch":
            if isinstance(operand, dict) and operand and not next(iter(operand)).startswith("$"):
                check_query(operand, here, paths, prefix=f"{path}.")
            else:
                _check_condition(operand, here, paths, path)
        elif op == "$not":
            if not isinstance(operand, dict):
                if isinstance(operand, str):
                    raise FilterError(here, "$not needs an operator expression or a regex")
                continue
            _check_condition(operand, here, paths, path)
        elif op in ("$in", "$nin", "$all") and not isinstance(operand, list):
            raise FilterError(here, f"{op} needs a list")
        else:
            _check_literal(operand, here)


def check_expression(expr: Any, pointer: str, paths: set[str],
                     where: dict[str, str] | None = None) -> None:
    """Validate an aggregation expression and collect the field paths it reads.

    ``where``, if given, receives the JSON pointer of the first place each path is read.
    """
    if isinstance(expr, str):
        path: str | None = None
        if expr.startswith("$$"):
            variable = expr[2:].split(".", 1)[0]
            if variable in ("ROOT", "CURRENT"):
                rest = expr[2:].split(".", 1)
                path = rest[1] if len(rest) > 1 else WHOLE_DOCUMENT
            elif variable not in ALLOWED_VARIABLES and not variable[:1].islower():
                raise FilterError(pointer, f"unknown system variable $${variable}",
                                  "supported: $$NOW, $$ROOT, $$CURRENT, $$REMOVE and your own "
                                  "$let / $map / $filter variables")
        elif expr.startswith("$"):
            path = expr[1:]
        if path is not None:
            paths.add(path)
            if where is not None:
                where.setdefault(path, pointer)
        return
    if isinstance(expr, list):
        for index, item in enumerate(expr):
            check_expression(item, _join(pointer, index), paths, where)
        return
    if not isinstance(expr, dict) or is_extended_json(expr):
        return
    for key, value in expr.items():
        here = _join(pointer, key)
        if key.startswith("$"):
            if key not in EXPRESSION_OPERATORS and key != "$let":
                raise _reject(key, here, "expression")
            if key == "$literal":
                continue
            if key == "$let" and isinstance(value, dict):
                check_expression(value.get("vars", {}), _join(here, "vars"), paths, where)
                check_expression(value.get("in"), _join(here, "in"), paths, where)
                continue
        check_expression(value, here, paths, where)


def check_watch_projection(watch: dict[str, Any], pointer: str, paths: set[str]) -> None:
    """Validate a watch projection (inclusion only, values may be expressions)."""
    for key, value in watch.items():
        here = _join(pointer, key)
        if key.startswith("$") or not key:
            raise FilterError(here, f"watched value name {key!r} may not start with $",
                              "name the computed value, e.g. itemCount: {$size: '$items'}")
        if value in (0, False):
            raise FilterError(here, "watch projections include values; exclusion (0/false) is "
                              "not allowed", "list the fields to watch instead")
        if value in (1, True):
            paths.add(key)
            continue
        if isinstance(value, dict) and not is_extended_json(value) and any(
                not str(k).startswith("$") for k in value):
            raise FilterError(here, "nested projections are not supported in watch",
                              f"watch dotted paths instead, e.g. '{key}.<field>': 1, or compute "
                              "the value with an expression such as {$ifNull: [...]}")
        check_expression(value, here, paths)
