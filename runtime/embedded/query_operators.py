"""Query filter semantics: the query operators and the matcher.

The primitives of ``$eq``/``$ne``/``$gt``.../``$in``/``$nin``/``$type``/``$mod``/``$regex`` are
registered in mongomock-ng's operator table, built on BSON comparison
(:mod:`runtime.embedded.comparison`). The logical operators ``$and``/``$or``/``$nor``,
``$expr`` and ``$sampleRate`` are evaluated here, so that the command's variables (``$$NOW``,
``$$CLUSTER_TIME``, ``let``) reach an ``$expr`` at any depth and its value is judged by MongoDB
truthiness. :func:`matches` tries the compiled matcher first
(:mod:`runtime.embedded.compiled_filter`).
"""

from __future__ import annotations

import contextlib
import math
import random
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from bson import Regex
from bson.binary import Binary
from bson.decimal128 import Decimal128
from bson.int64 import Int64
from pymongo.errors import OperationFailure

from runtime.embedded import expression_limits as limits
from runtime.embedded import json_schema, regex_limits
from runtime.embedded.comparison import (
    COMPARISONS,
    TYPE_CODES,
    TYPE_TESTS,
    bson_compare,
    bson_equal,
    ordering_key,
    to_bool,
)
from runtime.embedded.engine_support import (
    EVALUATION_ERRORS,
    NOTHING,
    direct_get,
    mm_filtering,
    set_path,
    translate,
)
from runtime.embedded.errors import CommandError, ErrorCode


def _mod_operator(doc_value: Any, spec: Any) -> bool:
    if not isinstance(spec, list) or len(spec) != 2:
        raise OperationFailure("malformed mod, needs to be an array of two numbers",
                               code=ErrorCode.BadValue)
    divisor, remainder = spec
    if not isinstance(divisor, int | float) or not isinstance(remainder, int | float):
        raise OperationFailure("malformed mod, divisor and remainder must be numbers",
                               code=ErrorCode.BadValue)
    if int(divisor) == 0:
        raise OperationFailure("divisor cannot be 0", code=ErrorCode.BadValue)
    if isinstance(doc_value, bool) or not isinstance(doc_value, int | float):
        return False
    value = int(doc_value)
    result = abs(value) % abs(int(divisor))
    return (result if value >= 0 else -result) == int(remainder)


def _eq_operator(doc_value: Any, query_value: Any) -> bool:
    """``$eq``: the value itself, or (for an array) one of its elements, equals the operand."""
    if bson_equal(doc_value, query_value):
        return True
    return isinstance(doc_value, list) and any(bson_equal(v, query_value) for v in doc_value)


def _in_operator(doc_value: Any, values: Any) -> bool:
    """``$in``: equality (or a regex match) with one of the listed values."""
    if not isinstance(values, list | tuple):
        raise OperationFailure("$in needs an array", code=ErrorCode.BadValue)
    if doc_value is NOTHING:
        return any(v is None for v in values)
    candidates = [doc_value, *doc_value] if isinstance(doc_value, list) else [doc_value]
    keys, patterns = _in_lookup(values)
    for candidate in candidates:
        try:
            if ordering_key(candidate) in keys:
                return True
        except TypeError:
            if any(bson_equal(candidate, v) for v in values):
                return True
    return any(isinstance(c, str) and regex_limits.query_search(p, c)
               for p in patterns for c in candidates)


# The operand list of the $in being evaluated, as a set of ordering keys: one query checks
# many documents against the same list, so it is built once (the last list is remembered).
_in_cache: list[Any] = [None, frozenset(), ()]


def _in_lookup(values: list[Any] | tuple[Any, ...]) -> tuple[Any, tuple[Any, ...]]:
    if _in_cache[0] is not values:
        keys = set()
        patterns = []
        for value in values:
            if isinstance(value, Regex | re.Pattern):
                patterns.append(regex_limits.query_pattern(value))
            else:
                with contextlib.suppress(TypeError):  # unorderable: the slow path handles it
                    keys.add(ordering_key(value))
        _in_cache[:] = [values, frozenset(keys), tuple(patterns)]
    return _in_cache[1], _in_cache[2]


def _query_comparison(op: Callable[[Any, Any], bool]) -> Callable[[Any, Any], bool]:
    inclusive = op(0, 0)

    def compare(doc_value: Any, query_value: Any) -> bool:
        if doc_value is NOTHING:
            # {$gte: null} and {$lte: null} match missing fields, like {$eq: null}.
            return query_value is None and bool(inclusive)
        return bson_compare(op, doc_value, query_value, can_compare_types=False)

    return compare


def _type_matches(value: Any, alias: Any) -> bool:
    if isinstance(alias, int | float) and not isinstance(alias, bool):
        alias = TYPE_CODES.get(int(alias), alias)
    if alias == "number":
        return any(TYPE_TESTS[n](value) for n in ("int", "long", "double", "decimal"))
    test = TYPE_TESTS.get(alias) if isinstance(alias, str) else None
    if test is None:
        raise OperationFailure(f"Unknown type name alias: {alias}", code=ErrorCode.BadValue)
    return test(value)


def _type_operator(doc_value: Any, spec: Any) -> bool:
    aliases = spec if isinstance(spec, list) else [spec]
    if not aliases:
        raise OperationFailure("$type must match at least one type", code=ErrorCode.BadValue)
    if doc_value is NOTHING:
        return False
    if any(_type_matches(doc_value, a) for a in aliases):
        return True
    if isinstance(doc_value, list):
        return any(_type_matches(v, a) for v in doc_value for a in aliases)
    return False


#: The query operator primitives, for the compiled matcher (``runtime.embedded.compiled_filter``).
equality_operator = _eq_operator
in_operator = _in_operator
type_operator = _type_operator
_QUERY_COMPARISONS = {name: _query_comparison(op) for name, op in COMPARISONS.items()}


def query_comparison(name: str) -> Callable[[Any, Any], bool]:
    """The query form of ``$gt``/``$gte``/``$lt``/``$lte`` (no comparison across types)."""
    return _QUERY_COMPARISONS[name]


def matches(query: dict[str, Any], doc: dict[str, Any], variables: dict[str, Any]) -> bool:
    """Whether ``doc`` matches the query filter ``query``."""
    if not query:
        return True
    fast = _compiled_filter.filter_matcher(query)
    if fast is not None:
        try:
            return bool(fast(doc, variables))
        except _compiled.Unsupported:
            pass
        except EVALUATION_ERRORS as exc:
            raise translate(exc) from exc
    try:
        return bool(mm_filtering.filter_applies(query, doc, user_vars=variables))
    except EVALUATION_ERRORS as exc:
        raise translate(exc) from exc


def validate_filter(query: Any) -> dict[str, Any]:
    """Reject filters that are not documents (answered as BadValue / TypeMismatch), nest deeper
    than MongoDB accepts (Overflow), or give ``$regex`` something other than a pattern."""
    if query is None:
        return {}
    if not isinstance(query, dict):
        raise CommandError(ErrorCode.TypeMismatch, "filter must be an object")
    _check_query_tree(query)
    return query


def _check_query_tree(query: dict[str, Any]) -> None:
    stack: list[tuple[Any, int, bool]] = [(query, 1, False)]
    while stack:
        node, level, in_elem_match = stack.pop()
        if level > limits.MAX_BSON_DEPTH:
            raise CommandError(ErrorCode.Overflow, "BSONObj exceeds maximum nested object depth")
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "$regex":
                    _check_regex_operand(value)
                elif key == "$sampleRate":
                    _sample_rate(value)
                elif key == "$where":
                    raise where_refused()
                elif key == "$jsonSchema":
                    json_schema.compile_schema(value)
                    continue  # a schema is not a filter: its keywords are checked above
                elif key == "$expr" and in_elem_match:
                    raise CommandError(ErrorCode.BadValue,
                                       "$expr can only be applied to the top-level document")
                if isinstance(value, dict | list) and value:
                    stack.append((value, level + 1, in_elem_match or key == "$elemMatch"))
        else:
            stack.extend((value, level + 1, in_elem_match) for value in node
                         if isinstance(value, dict | list) and value)


def _sample_rate(value: Any) -> float:
    """The probability of ``{$sampleRate: p}``: a number in [0, 1] (BadValue otherwise)."""
    if isinstance(value, bool) or not isinstance(value, int | float | Int64 | Decimal128):
        raise CommandError(ErrorCode.BadValue, "argument to $sampleRate must be a numeric type")
    rate = float(value.to_decimal()) if isinstance(value, Decimal128) else float(value)
    if not 0 <= rate <= 1:
        raise CommandError(ErrorCode.BadValue,
                           "numeric argument to $sampleRate must be in [0, 1]")
    return rate


_sampler = random.SystemRandom()
_original_apply = mm_filtering._Filterer.apply
_LOGICAL = frozenset({"$and", "$or", "$nor"})
_OWN_KEYS = _LOGICAL | {"$expr", "$sampleRate", "$where", "$jsonSchema"}
WHERE_REFUSED = ("$where is not supported by the embedded server: it runs no server-side "
                 "JavaScript; express the condition with $expr")


# Operators that only make sense together in one condition object.
_PAIRED_OPERATORS = frozenset({"$regex", "$options", "$near", "$nearSphere", "$maxDistance",
                               "$minDistance", "$geometry"})


def _independent_operators(path: str, condition: Any) -> bool:
    """Whether ``{path: condition}`` is several operators over a dotted path: in MongoDB each
    one is its own predicate (``{"a.b": {$gt: 10, $lte: 20}}`` matches when one array element
    is > 10 and another is <= 20), while the library would want one element to satisfy all."""
    return ("." in path and isinstance(condition, Mapping) and len(condition) > 1
            and all(type(op) is str and op.startswith("$") for op in condition)
            and _PAIRED_OPERATORS.isdisjoint(condition))


def _split_operators(search_filter: Mapping[str, Any]) -> dict[str, Any]:
    parts: list[dict[str, Any]] = []
    for path, condition in search_filter.items():
        if _independent_operators(path, condition):
            parts += [{path: {op: operand}} for op, operand in condition.items()]
        else:
            parts.append({path: condition})
    return {"$and": parts}


def where_refused() -> CommandError:
    """``$where`` anywhere in a filter: refused before any document is read (the library's
    ``$where`` would evaluate the string as Python)."""
    return CommandError(ErrorCode.BadValue, WHERE_REFUSED)


def _apply_filter(self: Any, search_filter: Any, document: Any,
                  user_vars: dict[str, Any] | None = None) -> bool:
    """mongomock-ng's matcher with the logical operators, ``$expr`` and ``$sampleRate``
    evaluated here: variables reach every nested ``$expr``, whose value counts by MongoDB
    truthiness; the other conditions go to the library."""
    if not isinstance(search_filter, Mapping):
        raise OperationFailure("the match filter must be an expression in an object",
                               code=ErrorCode.BadValue)
    if _OWN_KEYS.isdisjoint(search_filter):
        if any(_independent_operators(k, v) for k, v in search_filter.items()):
            search_filter = _split_operators(search_filter)
            return all(_original_apply(self, part, document, user_vars)
                       for part in search_filter["$and"])
        return bool(_original_apply(self, search_filter, document, user_vars))
    if "$where" in search_filter:  # never the library's eval(), whatever path got here
        raise OperationFailure(WHERE_REFUSED, code=ErrorCode.BadValue)
    rest: dict[str, Any] = {}
    for key, search in search_filter.items():
        if key in _LOGICAL:
            if not isinstance(search, list) or not search:
                raise OperationFailure(f"{key} must be a nonempty array", code=ErrorCode.BadValue)
            if not all(isinstance(part, Mapping) for part in search):
                raise OperationFailure(f"{key} entries need to be full objects",
                                       code=ErrorCode.BadValue)
            results = (self.apply(part, document, user_vars) for part in search)
            if key == "$and":
                matched = all(results)
            elif key == "$or":
                matched = any(results)
            else:
                matched = not any(results)
            if not matched:
                return False
        elif key == "$expr":
            value = self.parse_expression[0](search, document, user_vars=user_vars)
            if not to_bool(value):
                return False
        elif key == "$sampleRate":
            if _sampler.random() >= _sample_rate(search):
                return False
        elif key == "$jsonSchema":
            if not json_schema.json_schema_operator(document, search):
                return False
        else:
            rest[key] = search
    return not rest or bool(_original_apply(self, rest, document, user_vars))


def _check_regex_operand(value: Any) -> None:
    """A query's ``$regex`` operand must be a string or a regex that compiles (BadValue 2 /
    51091); JavaScript code (a ``str`` subclass) is not a string here."""
    if not isinstance(value, Regex | re.Pattern) and type(value) is not str:
        raise CommandError(ErrorCode.BadValue, "$regex has to be a string")
    regex_limits.query_pattern(value)


def _guarded_regex(doc_value: Any, operand: Any) -> bool:
    """The query ``$regex`` primitive: a string (or an array's string) matches within the
    match budget of :mod:`runtime.embedded.regex_limits`."""
    _check_regex_operand(operand)
    if isinstance(doc_value, str):
        candidates: Iterable[Any] = (doc_value,)
    elif isinstance(doc_value, list):
        candidates = doc_value
    else:
        return False
    compiled = regex_limits.query_pattern(operand)
    return any(regex_limits.query_search(compiled, item) for item in candidates
               if isinstance(item, str))


def first_matching_index(doc: dict[str, Any], path: str, query: dict[str, Any] | None,
                          variables: dict[str, Any]) -> int | None:
    """Index of the first element of the array at ``path`` that the query's conditions on that
    array match (what the positional ``$`` stands for)."""
    array = direct_get(doc, path)
    clauses = {k: v for k, v in (query or {}).items()
               if k == path or k.startswith(path + ".")}
    if isinstance(array, list) and clauses:
        for index, element in enumerate(array):
            probe: dict[str, Any] = {}
            set_path(probe, path, [element])
            if matches(clauses, probe, variables):
                return index
    return None


def _bit_mask(spec: Any, name: str) -> int:
    """The mask of a bit test: a non-negative integral number, bit positions or BinData."""
    if isinstance(spec, bytes | Binary):
        return int.from_bytes(bytes(spec), "little")
    if isinstance(spec, list):
        if not all(isinstance(p, int) and not isinstance(p, bool) and p >= 0 for p in spec):
            raise OperationFailure(f"bit positions for {name} must be non-negative integers",
                                   code=ErrorCode.BadValue)
        return sum(1 << p for p in set(spec))
    if isinstance(spec, bool) or not isinstance(spec, int | float) or spec != int(spec):
        raise OperationFailure(f"{name} takes an Array, a number, or a BinData but received: "
                               f"{spec!r}", code=ErrorCode.BadValue)
    if spec < 0:
        raise OperationFailure(f"{name} bitmask must be non-negative", code=ErrorCode.BadValue)
    return int(spec)


def _bit_test(name: str, test: Callable[[int, int], bool]) -> Callable[[Any, Any], bool]:
    """``$bitsAllSet``/``$bitsAnySet``/``$bitsAllClear``/``$bitsAnyClear`` on an integral
    number (two's complement) or BinData; other values never match."""
    def operator(doc_value: Any, spec: Any) -> bool:
        mask = _bit_mask(spec, name)
        if isinstance(doc_value, list):
            return any(operator(item, spec) for item in doc_value)
        if isinstance(doc_value, bytes | Binary):
            value = int.from_bytes(bytes(doc_value), "little")
        elif (isinstance(doc_value, int | float) and not isinstance(doc_value, bool)
              and math.isfinite(doc_value) and doc_value == int(doc_value)
              and -(2**63) <= doc_value < 2**63):
            value = int(doc_value)
        else:
            return False
        return test(value & mask, mask)

    return operator


_BIT_TESTS = {
    "$bitsAllSet": _bit_test("$bitsAllSet", lambda bits, mask: bits == mask),
    "$bitsAnySet": _bit_test("$bitsAnySet", lambda bits, mask: bits != 0),
    "$bitsAllClear": _bit_test("$bitsAllClear", lambda bits, mask: bits == 0),
    "$bitsAnyClear": _bit_test("$bitsAnyClear", lambda bits, mask: bits != mask),
}

_OPERATOR_MAP = mm_filtering._filterer_inst._operator_map
for _name, _test in _BIT_TESTS.items():
    _OPERATOR_MAP[_name] = _test
_OPERATOR_MAP["$mod"] = mm_filtering._list_expand(_mod_operator)
_OPERATOR_MAP["$eq"] = _eq_operator
_OPERATOR_MAP["$in"] = _in_operator
_OPERATOR_MAP["$nin"] = lambda a, b: not _in_operator(a, b)
_OPERATOR_MAP["$ne"] = lambda a, b: not _eq_operator(a, b)
_OPERATOR_MAP["$type"] = _type_operator
for _name, _op in COMPARISONS.items():
    _OPERATOR_MAP[_name] = mm_filtering._list_expand(_query_comparison(_op))
mm_filtering.operator_eq = bson_equal
mm_filtering.bson_compare = bson_compare

_OPERATOR_MAP["$regex"] = mm_filtering._not_nothing_and(_guarded_regex)
mm_filtering._regex = _guarded_regex
mm_filtering._Filterer.apply = _apply_filter

#: Every query operator the matcher evaluates (top-level, logical and field operators).
SUPPORTED_QUERY_OPERATORS: frozenset[str] = frozenset(
    {*_OWN_KEYS, "$comment", "$not", "$options", *_OPERATOR_MAP})

# The compiled matcher, bound by the engine facade once every module is loaded (it imports
# the engine itself).
_compiled: Any = None
_compiled_filter: Any = None


def bind_compiled(compiled: Any, compiled_filter: Any) -> None:
    """Give the matcher the compiled fast path (``runtime.embedded.compiled``/``_filter``)."""
    global _compiled, _compiled_filter
    _compiled, _compiled_filter = compiled, compiled_filter

