"""Array expressions that mongomock-ng lacks or gets wrong.

``$filter`` (with MongoDB truthiness and ``limit``), ``$allElementsTrue``/``$anyElementTrue``,
``$slice``, the array forms of ``$firstN``/``$lastN``/``$maxN``/``$minN``, ``$sortArray``,
``$range``, ``$reverseArray``, ``$zip``, ``$arrayToObject`` and the expression forms of
``$median`` and ``$percentile`` (MongoDB 7.0). Every handler takes the expression parser and
the operand.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from bson.decimal128 import Decimal128
from bson.int64 import Int64
from pymongo.errors import OperationFailure

from runtime.embedded.comparison import bson_type_name, ordering_key, to_bool
from runtime.embedded.engine_support import NOTHING, mm_aggregate
from runtime.embedded.errors import ErrorCode
from runtime.embedded.ordering import document_sort_key


def _nullish(value: Any) -> bool:
    return value is None or value is NOTHING


def _with_variable(parser: Any, name: str, value: Any) -> Any:
    """A parser over the same document with one more variable bound."""
    return mm_aggregate._Parser(parser._doc_dict, user_vars={**parser._user_vars, name: value})


def _object_operand(operand: Any, name: str, required: tuple[str, ...],
                    allowed: frozenset[str]) -> dict[str, Any]:
    if not isinstance(operand, dict):
        raise OperationFailure(f"{name} only supports an object as its argument",
                               code=ErrorCode.Location28646)
    for key in operand:
        if key not in allowed:
            raise OperationFailure(f"Unrecognized parameter to {name}: {key}",
                                   code=ErrorCode.FailedToParse)
    for key in required:
        if key not in operand:
            raise OperationFailure(f"Missing '{key}' parameter to {name}",
                                   code=ErrorCode.FailedToParse)
    return operand


def _filter_expression(parser: Any, operand: Any) -> Any:
    spec = _object_operand(operand, "$filter", ("input", "cond"),
                           frozenset({"input", "cond", "as", "limit"}))
    name = spec.get("as", "this")
    values = parser.parse(spec["input"])
    limit: Any = parser.parse(spec["limit"]) if "limit" in spec else None
    if _nullish(values):
        return None
    if not isinstance(values, list):
        raise OperationFailure(f"input to $filter must be an array not {bson_type_name(values)}",
                               code=ErrorCode.Location28651)
    if not _nullish(limit) and (not _integral(limit) or int(limit) < 1):
        raise OperationFailure("$filter: limit must be greater than 0",
                               code=ErrorCode.Location327391)
    wanted = len(values) if _nullish(limit) else int(limit)
    kept: list[Any] = []
    for item in values:
        if len(kept) >= wanted:
            break
        if to_bool(_with_variable(parser, name, item).parse(spec["cond"])):
            kept.append(item)
    return kept


def _single_array(parser: Any, operand: Any, name: str, code: ErrorCode) -> list[Any]:
    args = operand if isinstance(operand, list) else [operand]
    if len(args) != 1:
        raise OperationFailure(f"Expression {name} takes exactly 1 arguments. {len(args)} were "
                               "passed in.", code=ErrorCode.Location16020)
    value = parser.parse(args[0])
    if not isinstance(value, list):
        raise OperationFailure(f"{name}'s argument must be an array, but is "
                               f"{bson_type_name(value)}", code=code)
    return value


def _all_elements_true(parser: Any, operand: Any) -> Any:
    values = _single_array(parser, operand, "$allElementsTrue", ErrorCode.Location17040)
    return all(to_bool(v) for v in values)


def _any_element_true(parser: Any, operand: Any) -> Any:
    values = _single_array(parser, operand, "$anyElementTrue", ErrorCode.Location17041)
    return any(to_bool(v) for v in values)


def _integral(value: Any) -> bool:
    if isinstance(value, bool) or not isinstance(value, int | float | Decimal128):
        return False
    number = value.to_decimal() if isinstance(value, Decimal128) else value
    return bool(math.isfinite(number) and number == int(number))


def _n_input(parser: Any, operand: Any, name: str) -> tuple[int, list[Any] | None]:
    spec = _object_operand(operand, name, ("n", "input"), frozenset({"n", "input"}))
    n = parser.parse(spec["n"])
    if not _integral(n) or int(n) < 1:
        raise OperationFailure(f"Value for 'n' must be a positive integral value, got {n!r} "
                               f"in {name}", code=ErrorCode.Location5787908)
    values = parser.parse(spec["input"])
    if _nullish(values):
        return int(n), None
    if not isinstance(values, list):
        raise OperationFailure(f"Input to {name} must be an array, not "
                               f"{bson_type_name(values)}", code=ErrorCode.Location5788200)
    return int(n), values


def _first_n(parser: Any, operand: Any) -> Any:
    n, values = _n_input(parser, operand, "$firstN")
    return None if values is None else values[:n]


def _last_n(parser: Any, operand: Any) -> Any:
    n, values = _n_input(parser, operand, "$lastN")
    return None if values is None else values[-n:]


def _extreme_n(name: str, largest: bool) -> Callable[[Any, Any], Any]:
    def evaluate(parser: Any, operand: Any) -> Any:
        n, values = _n_input(parser, operand, name)
        if values is None:
            return None
        present = [v for v in values if not _nullish(v)]
        return sorted(present, key=ordering_key, reverse=largest)[:n]

    return evaluate


def _sort_array(parser: Any, operand: Any) -> Any:
    spec = _object_operand(operand, "$sortArray", ("input", "sortBy"),
                           frozenset({"input", "sortBy"}))
    values = parser.parse(spec["input"])
    sort_by = spec["sortBy"]
    if _nullish(values):
        return None
    if not isinstance(values, list):
        raise OperationFailure("The input argument to $sortArray must be an array, but was "
                               f"of type: {bson_type_name(values)}",
                               code=ErrorCode.Location2942504)
    if sort_by in (1, -1) and not isinstance(sort_by, bool):
        return sorted(values, key=ordering_key, reverse=sort_by == -1)
    if not isinstance(sort_by, dict) or not sort_by or any(
            d not in (1, -1) or isinstance(d, bool) for d in sort_by.values()):
        raise OperationFailure("$sortArray sortBy must be either 1, -1, or a document of "
                               "field paths and directions", code=ErrorCode.Location2942505)
    spec_list = [(path, int(direction)) for path, direction in sort_by.items()]
    return sorted(values, key=lambda v: document_sort_key(v if isinstance(v, dict) else {},
                                                          spec_list))


def _int32(value: Any, what: str, code: ErrorCode) -> int:
    if not _integral(value) or not -(2**31) <= int(value) < 2**31:
        raise OperationFailure(f"$range requires a{what} that can be represented as a 32-bit "
                               f"integer, found value: {value!r}", code=code)
    return int(value)


def _range_expression(parser: Any, operand: Any) -> Any:
    if not isinstance(operand, list) or not 2 <= len(operand) <= 3:
        raise OperationFailure("Expression $range takes at least 2 arguments, and at most 3",
                               code=ErrorCode.Location16020)
    values = [parser.parse(a) for a in operand]
    start = _int32(values[0], " starting value", ErrorCode.Location34444)
    end = _int32(values[1], "n ending value", ErrorCode.Location34446)
    step = _int32(values[2], " step value", ErrorCode.Location34448) if len(values) == 3 else 1
    if step == 0:
        raise OperationFailure("$range requires a non-zero step value",
                               code=ErrorCode.Location34449)
    return list(range(start, end, step))


def _size_expression(parser: Any, operand: Any) -> Any:
    args = operand if isinstance(operand, list) else [operand]
    if len(args) != 1:
        raise OperationFailure(f"Expression $size takes exactly 1 arguments. {len(args)} were "
                               "passed in.", code=ErrorCode.Location16020)
    value = parser.parse(args[0])
    if not isinstance(value, list):
        raise OperationFailure("The argument to $size must be an array. Type of argument: "
                               f"{bson_type_name(value)}", code=ErrorCode.Location17124)
    return len(value)


def _reverse_array(parser: Any, operand: Any) -> Any:
    args = operand if isinstance(operand, list) and len(operand) == 1 else [operand]
    value = parser.parse(args[0])
    if _nullish(value):
        return None
    if not isinstance(value, list):
        raise OperationFailure("The argument to $reverseArray must be an array, but was of "
                               f"type: {bson_type_name(value)}", code=ErrorCode.Location34435)
    return list(reversed(value))


def _zip_expression(parser: Any, operand: Any) -> Any:
    spec = _object_operand(operand, "$zip", ("inputs",),
                           frozenset({"inputs", "useLongestLength", "defaults"}))
    if not isinstance(spec["inputs"], list):
        raise OperationFailure("inputs must be an array of expressions",
                               code=ErrorCode.Location34460)
    arrays = [parser.parse(a) for a in spec["inputs"]]
    if any(_nullish(a) for a in arrays):
        return None
    if not all(isinstance(a, list) for a in arrays):
        raise OperationFailure("$zip found a non-array expression in input",
                               code=ErrorCode.Location34468)
    longest = to_bool(parser.parse(spec.get("useLongestLength", False)))
    defaults = parser.parse(spec["defaults"]) if "defaults" in spec else [None] * len(arrays)
    if not isinstance(defaults, list) or len(defaults) != len(arrays):
        raise OperationFailure("defaults and inputs must have the same length",
                               code=ErrorCode.Location34465)
    length = max(map(len, arrays), default=0) if longest else min(map(len, arrays), default=0)
    return [[a[i] if i < len(a) else defaults[j] for j, a in enumerate(arrays)]
            for i in range(length)]


def _array_to_object(parser: Any, operand: Any) -> Any:
    args = operand if isinstance(operand, list) and len(operand) == 1 else [operand]
    value = parser.parse(args[0])
    if _nullish(value):
        return None
    if not isinstance(value, list):
        raise OperationFailure("$arrayToObject requires an array input, found: "
                               f"{bson_type_name(value)}", code=ErrorCode.Location40386)
    out: dict[str, Any] = {}
    for item in value:
        if isinstance(item, list) and len(item) == 2 and isinstance(item[0], str):
            key, val = item
        elif isinstance(item, dict) and set(item) == {"k", "v"} and isinstance(item["k"], str):
            key, val = item["k"], item["v"]
        else:
            raise OperationFailure("$arrayToObject requires an array of key-value pairs, where "
                                   "each pair is an array of two elements or a document with "
                                   "k and v fields", code=ErrorCode.Location40398)
        out.pop(key, None)  # a repeated key takes the last value, in the last position
        out[key] = val
    return out


def _numbers(value: Any) -> list[float]:
    items = value if isinstance(value, list) else [value]
    return [float(v.to_decimal()) if isinstance(v, Decimal128) else float(v) for v in items
            if isinstance(v, int | float | Int64 | Decimal128) and not isinstance(v, bool)]


def _percentiles(parser: Any, operand: Any, name: str, single: bool) -> Any:
    required = ("input", "method") if single else ("input", "p", "method")
    allowed = frozenset(required)
    spec = _object_operand(operand, name, required, allowed)
    if spec["method"] != "approximate":
        raise OperationFailure(f"Currently only 'approximate' can be used as percentile "
                               f"'method' in {name}", code=ErrorCode.BadValue)
    ps = [0.5] if single else parser.parse(spec["p"])
    if not isinstance(ps, list) or not ps or not all(
            isinstance(p, int | float) and not isinstance(p, bool) and 0 <= p <= 1 for p in ps):
        raise OperationFailure("The 'p' field must be an array of numbers from [0.0, 1.0]",
                               code=ErrorCode.Location7750301)
    values = sorted(_numbers(parser.parse(spec["input"])))
    if not values:
        return None if single else [None] * len(ps)
    picked = [values[max(0, math.ceil(p * len(values)) - 1)] for p in ps]
    return picked[0] if single else picked


def _slice_int(value: Any, which: str, numeric: str, codes: tuple[ErrorCode, ErrorCode]) -> int:
    """A ``$slice`` position or count: a number representable as a 32-bit integer."""
    if isinstance(value, bool) or not isinstance(value, int | float | Decimal128):
        raise OperationFailure(f"{which} argument to $slice must be {numeric}, but is of type: "
                               f"{bson_type_name(value)}", code=codes[0])
    number = value.to_decimal() if isinstance(value, Decimal128) else value
    if not _integral(value) or not -(2**31) <= int(number) < 2**31:
        raise OperationFailure(f"{which} argument to $slice can't be represented as a 32-bit "
                               f"integer: {value!r}", code=codes[1])
    return int(number)


def _slice_expression(parser: Any, operand: Any) -> Any:
    """``$slice: [array, n]`` (the first ``n``, or the last ``-n``) or ``[array, position,
    n]`` (``n > 0`` from ``position``; a negative position counts from the end and stops at
    the start). Null when the array, the position or the count is null or missing."""
    args = operand if isinstance(operand, list) else [operand]
    if not 2 <= len(args) <= 3:
        raise OperationFailure("Expression $slice takes at least 2 arguments, and at most 3, "
                               f"but {len(args)} were passed in.", code=ErrorCode.Location28667)
    array, first = parser.parse(args[0]), parser.parse(args[1])
    if _nullish(array) or _nullish(first):
        return None
    if not isinstance(array, list):
        raise OperationFailure("First argument to $slice must be an array, but is of type: "
                               f"{bson_type_name(array)}", code=ErrorCode.Location28724)
    first_int = _slice_int(first, "Second", "a numeric value",
                           (ErrorCode.Location28725, ErrorCode.Location28726))
    if len(args) == 2:
        return array[:first_int] if first_int >= 0 else array[max(len(array) + first_int, 0):]
    start = max(len(array) + first_int, 0) if first_int < 0 else first_int
    count = parser.parse(args[2])
    if _nullish(count):
        return None
    count_int = _slice_int(count, "Third", "numeric",
                           (ErrorCode.Location28727, ErrorCode.Location28728))
    if count_int <= 0:
        raise OperationFailure(f"Third argument to $slice must be positive: {count_int}",
                               code=ErrorCode.Location28729)
    return array[start:start + count_int]


#: The array expression operators this module implements, by name.
HANDLERS: dict[str, Callable[[Any, Any], Any]] = {
    "$filter": _filter_expression,
    "$allElementsTrue": _all_elements_true,
    "$anyElementTrue": _any_element_true,
    "$firstN": _first_n,
    "$lastN": _last_n,
    "$maxN": _extreme_n("$maxN", largest=True),
    "$minN": _extreme_n("$minN", largest=False),
    "$sortArray": _sort_array,
    "$range": _range_expression,
    "$reverseArray": _reverse_array,
    "$size": _size_expression,
    "$slice": _slice_expression,
    "$zip": _zip_expression,
    "$arrayToObject": _array_to_object,
    "$median": lambda parser, operand: _percentiles(parser, operand, "$median", True),
    "$percentile": lambda parser, operand: _percentiles(parser, operand, "$percentile", False),
}
