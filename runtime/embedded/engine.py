"""Query, update, projection and aggregation semantics, delegated to mongomock-ng.

The server owns storage, indexes, the change log and transactions; what a filter matches, what an
update operator does to one document and what a pipeline stage computes comes from mongomock-ng,
used as a library of primitives (never as storage). This module is the only place that touches it,
so the engine can be swapped. It also covers the library's known gaps, by registering replacements
in its operator tables:

* BSON comparison (type bracketing, numbers equal across int/long/double/decimal, field order
  in embedded documents) for ``$eq``/``$ne``/``$gt``.../``$in``/``$nin``/``$type``, expression
  comparisons and sorting, all built on :mod:`runtime.embedded.ordering`;
* BSON numeric result types in ``$inc``/``$mul`` and arithmetic expressions (long stays long,
  int overflow widens, Decimal128 arithmetic);
* ``$mod``, ``$[]``/``$[id]`` array filters (nested too), PathNotViable, positional and
  expression projections, per-document atomicity of a failed update, ``$$NOW`` and ``let``;
* stages ``$sort``, ``$count``, ``$unwind``, ``$limit``, ``$skip``, ``$sortByCount``,
  ``$lookup`` (dotted ``as``) and MongoDB's error codes.
"""

from __future__ import annotations

import contextlib
import copy
import datetime
import math
import operator
import re
from collections.abc import Callable, Iterable
from decimal import Decimal, InvalidOperation
from typing import Any, Protocol

import mongomock_ng as _mongomock_ng
from bson import ObjectId, Regex
from bson.binary import Binary
from bson.decimal128 import Decimal128
from bson.errors import BSONError
from bson.int64 import Int64
from bson.max_key import MaxKey
from bson.min_key import MinKey
from bson.timestamp import Timestamp
from mongomock_ng import aggregate as _mm_aggregate
from mongomock_ng import collection as _mm_collection
from mongomock_ng import filtering as _mm_filtering
from mongomock_ng import helpers as _mm_helpers
from pymongo.errors import OperationFailure, PyMongoError

from runtime.embedded import deadlines, regex_expressions, regex_limits
from runtime.embedded import expression_limits as limits
from runtime.embedded.errors import CommandError, ErrorCode, WriteError
from runtime.embedded.expressions_hash import hashed_index_key
from runtime.embedded.ordering import MISSING, Key, document_sort_key, value_key

# The library is used through its internals, which carry no useful types.
mongomock_ng: Any = _mongomock_ng
mm_aggregate: Any = _mm_aggregate
mm_collection: Any = _mm_collection
mm_filtering: Any = _mm_filtering
mm_helpers: Any = _mm_helpers

UPDATE_OPERATORS = frozenset(
    {"$set", "$unset", "$inc", "$mul", "$min", "$max", "$rename", "$setOnInsert", "$push",
     "$addToSet", "$pull", "$pullAll", "$pop", "$currentDate", "$bit"}
)
UPDATE_PIPELINE_STAGES = frozenset(
    {"$addFields", "$set", "$project", "$unset", "$replaceRoot", "$replaceWith"}
)
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1


def _numeric_result(a: Any, b: Any, op: Callable[[Any, Any], Any]) -> Any:
    """Apply ``op`` keeping MongoDB's result type (int32 -> int64 on overflow, double wins)."""
    for value in (a, b):
        if isinstance(value, bool) or not isinstance(value, int | float | Decimal128):
            raise WriteError(ErrorCode.TypeMismatch,
                             f"Cannot apply arithmetic to non-numeric value {value!r}")
    if isinstance(a, Decimal128) or isinstance(b, Decimal128):
        da = a.to_decimal() if isinstance(a, Decimal128) else Decimal(str(a))
        db = b.to_decimal() if isinstance(b, Decimal128) else Decimal(str(b))
        return Decimal128(op(da, db))
    if isinstance(a, float) or isinstance(b, float):
        return float(op(a, b))
    result = op(int(a), int(b))
    if isinstance(a, Int64) or isinstance(b, Int64) or not INT32_MIN <= result <= INT32_MAX:
        if not -(2**63) <= result < 2**63:
            raise WriteError(ErrorCode.BadValue, "integer overflow")
        return Int64(result)
    return int(result)


_ARITH_VERBS = {"$inc": "increment", "$mul": "multiply"}


def _arith_updater(name: str, op: Callable[[Any, Any], Any],
                   missing: Callable[[Any], Any]) -> Any:
    def updater(doc: Any, field_name: str, value: Any, codec_options: Any = None) -> None:
        if _rank(value) is None:
            raise WriteError(ErrorCode.TypeMismatch,
                             f"Cannot {_ARITH_VERBS[name]} with non-numeric argument: "
                             f"{{{field_name}: {value!r}}}")
        current = doc.get(field_name, MISSING) if isinstance(doc, dict) else MISSING
        if current is not MISSING and _rank(current) is None:
            raise WriteError(ErrorCode.TypeMismatch,
                             f"Cannot apply {name} to a value of non-numeric type. The "
                             f"field '{field_name}' has non-numeric type "
                             f"{bson_type_name(current)}")
        if isinstance(doc, dict):
            if field_name in doc:
                doc[field_name] = _numeric_result(doc[field_name], value, op)
            else:
                _numeric_result(0, value, op)  # validates the operand
                doc[field_name] = missing(value)
        elif isinstance(doc, list):
            index = int(field_name)
            if index < len(doc):
                doc[index] = _numeric_result(doc[index], value, op)
            else:
                doc.extend([None] * (index + 1 - len(doc)))
                doc[index] = missing(value)

    return updater


def _zero_like(value: Any) -> Any:
    if isinstance(value, Decimal128):
        return Decimal128("0")
    if isinstance(value, float):
        return 0.0
    if isinstance(value, Int64):
        return Int64(0)
    return 0


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


# -- BSON comparison semantics -----------------------------------------------------------------
# mongomock-ng compares with Python's operators, which gets BSON wrong in several ways: True == 1,
# Decimal128 never equals (or, worse, fails to compare with) an int, embedded documents compare
# without regard to field order, Int64 reports $type "int". These replace its primitives with
# ones built on :mod:`runtime.embedded.ordering`, the same keys that indexes and sorts use.

_NOTHING = mm_helpers.NOTHING
_COMPARISONS: dict[str, Callable[[Any, Any], bool]] = {
    "$gt": operator.gt, "$gte": operator.ge, "$lt": operator.lt, "$lte": operator.le,
}


def _key(value: Any) -> Key:
    return value_key(None if value is _NOTHING else value)


# Types whose Python equality is MongoDB's equality between two values of that same type.
_PLAIN_EQUALITY = frozenset({str, int, bool, ObjectId, type(None)})


def bson_equal(a: Any, b: Any) -> bool:
    """MongoDB equality of two values (numbers by value across types, field order matters)."""
    kind = type(a)
    if kind is type(b) and kind in _PLAIN_EQUALITY:
        return bool(a == b)
    if a is _NOTHING or b is _NOTHING:
        return (a is _NOTHING or a is None) and (b is _NOTHING or b is None)
    try:
        return _key(a) == _key(b)
    except TypeError:
        return bool(a == b)


def bson_compare(op: Callable[[Any, Any], bool], a: Any, b: Any,
                 can_compare_types: bool = True) -> bool:
    """``op`` over BSON order; values of different types compare only if ``can_compare_types``."""
    kind = type(a)
    if kind is type(b) and (kind is int or kind is str or (
            kind is datetime.datetime and a.tzinfo is None and b.tzinfo is None)):
        return bool(op(a, b))  # same plain type: Python's order is BSON's
    key_a, key_b = _key(a), _key(b)
    if key_a[0] != key_b[0]:
        return can_compare_types and bool(op(key_a[0], key_b[0]))
    try:
        return bool(op(key_a, key_b))
    except TypeError:
        return False


def _eq_operator(doc_value: Any, query_value: Any) -> bool:
    """``$eq``: the value itself, or (for an array) one of its elements, equals the operand."""
    if bson_equal(doc_value, query_value):
        return True
    return isinstance(doc_value, list) and any(bson_equal(v, query_value) for v in doc_value)


def _in_operator(doc_value: Any, values: Any) -> bool:
    """``$in``: equality (or a regex match) with one of the listed values."""
    if not isinstance(values, list | tuple):
        raise OperationFailure("$in needs an array", code=ErrorCode.BadValue)
    if doc_value is _NOTHING:
        return any(v is None for v in values)
    candidates = [doc_value, *doc_value] if isinstance(doc_value, list) else [doc_value]
    keys, patterns = _in_lookup(values)
    for candidate in candidates:
        try:
            if _key(candidate) in keys:
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
                    keys.add(_key(value))
        _in_cache[:] = [values, frozenset(keys), tuple(patterns)]
    return _in_cache[1], _in_cache[2]


def _query_comparison(op: Callable[[Any, Any], bool]) -> Callable[[Any, Any], bool]:
    inclusive = op(0, 0)

    def compare(doc_value: Any, query_value: Any) -> bool:
        if doc_value is _NOTHING:
            # {$gte: null} and {$lte: null} match missing fields, like {$eq: null}.
            return query_value is None and bool(inclusive)
        return bson_compare(op, doc_value, query_value, can_compare_types=False)

    return compare


def _is_int32(value: Any) -> bool:
    return (isinstance(value, int) and not isinstance(value, bool | Int64)
            and INT32_MIN <= value <= INT32_MAX)


def _is_int64(value: Any) -> bool:
    if isinstance(value, Int64):
        return True
    return (isinstance(value, int) and not isinstance(value, bool)
            and not INT32_MIN <= value <= INT32_MAX)


def bson_type_name(value: Any) -> str:
    """The ``$type`` alias of a value, as the aggregation ``$type`` operator answers it."""
    if value is _NOTHING:
        return "missing"
    for name, test in _TYPE_TESTS.items():
        if test(value):
            return name
    return "object" if isinstance(value, dict) else "unknown"


_TYPE_TESTS: dict[str, Callable[[Any], bool]] = {
    "null": lambda v: v is None,
    "bool": lambda v: isinstance(v, bool),
    "int": _is_int32,
    "long": _is_int64,
    "double": lambda v: isinstance(v, float),
    "decimal": lambda v: isinstance(v, Decimal128),
    "string": lambda v: isinstance(v, str),
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list | tuple),
    "binData": lambda v: isinstance(v, bytes | Binary),
    "objectId": lambda v: isinstance(v, ObjectId),
    "date": lambda v: isinstance(v, datetime.datetime),
    "timestamp": lambda v: isinstance(v, Timestamp),
    "regex": lambda v: isinstance(v, Regex | re.Pattern),
    "minKey": lambda v: isinstance(v, MinKey),
    "maxKey": lambda v: isinstance(v, MaxKey),
}
_TYPE_CODES = {1: "double", 2: "string", 3: "object", 4: "array", 5: "binData", 7: "objectId",
               8: "bool", 9: "date", 10: "null", 11: "regex", 16: "int", 17: "timestamp",
               18: "long", 19: "decimal", -1: "minKey", 127: "maxKey"}


def _type_matches(value: Any, alias: Any) -> bool:
    if isinstance(alias, int | float) and not isinstance(alias, bool):
        alias = _TYPE_CODES.get(int(alias), alias)
    if alias == "number":
        return any(_TYPE_TESTS[n](value) for n in ("int", "long", "double", "decimal"))
    test = _TYPE_TESTS.get(alias) if isinstance(alias, str) else None
    if test is None:
        raise OperationFailure(f"Unknown type name alias: {alias}", code=ErrorCode.BadValue)
    return test(value)


def _type_operator(doc_value: Any, spec: Any) -> bool:
    aliases = spec if isinstance(spec, list) else [spec]
    if not aliases:
        raise OperationFailure("$type must match at least one type", code=ErrorCode.BadValue)
    if doc_value is _NOTHING:
        return False
    if any(_type_matches(doc_value, a) for a in aliases):
        return True
    if isinstance(doc_value, list):
        return any(_type_matches(v, a) for v in doc_value for a in aliases)
    return False


_original_comparison = mm_aggregate._Parser._handle_comparison_operator
_original_type_operator = mm_aggregate._Parser._handle_type_operator


def _expression_comparison(self: Any, op: str, values: Any) -> Any:
    if op in ("$eq", "$ne", "$cmp") and isinstance(values, list) and len(values) == 2:
        a, b = self.parse(values[0]), self.parse(values[1])
        if op == "$cmp":
            return 0 if bson_equal(a, b) else (-1 if bson_compare(operator.lt, a, b) else 1)
        return bson_equal(a, b) if op == "$eq" else not bson_equal(a, b)
    return _original_comparison(self, op, values)


def _expression_type(self: Any, op: str, values: Any) -> Any:
    if op == "$type":
        return bson_type_name(self.parse(values))
    return _original_type_operator(self, op, values)


def _expression_operand(parser: Any, operand: Any) -> Any:
    """The single argument of an operator written ``{$op: x}`` or ``{$op: [x]}``."""
    if isinstance(operand, list):
        if len(operand) != 1:
            raise OperationFailure("Expression takes exactly 1 argument",
                                   code=ErrorCode.Location16020)
        operand = operand[0]
    return parser.parse(operand)


def _not_expression(parser: Any, operand: Any) -> Any:
    return not mm_helpers.mongodb_to_bool(_expression_operand(parser, operand))


def _trunc_expression(parser: Any, operand: Any) -> Any:
    args = operand if isinstance(operand, list) else [operand]
    if not 1 <= len(args) <= 2:
        raise OperationFailure("$trunc takes 1 or 2 arguments", code=ErrorCode.Location28667)
    value = parser.parse(args[0])
    place = parser.parse(args[1]) if len(args) == 2 else 0
    if value is _NOTHING or value is None:
        return None
    if isinstance(place, bool) or not isinstance(place, int | float | Decimal128):
        raise OperationFailure("$trunc requires \"place\" argument to be a number",
                               code=ErrorCode.Location51082)
    if not -20 <= _exact(place) <= 100:
        raise OperationFailure(f"cannot apply $trunc with precision value {place} value must "
                               "be in [-20, 100]", code=ErrorCode.Location51083)
    if isinstance(value, bool) or not isinstance(value, int | float | Decimal128):
        raise OperationFailure(f"$trunc only supports numeric types, not {bson_type_name(value)}",
                               code=ErrorCode.Location51081)
    exact = value.to_decimal() if isinstance(value, Decimal128) else Decimal(str(value))
    quantum = Decimal(1).scaleb(-int(_exact(place)))
    try:
        truncated = (exact / quantum).to_integral_value(rounding="ROUND_DOWN") * quantum
    except InvalidOperation:
        return value
    if isinstance(value, Decimal128):
        return Decimal128(truncated)
    if isinstance(value, float):
        return float(truncated)
    return type(value)(int(truncated)) if isinstance(value, Int64) else int(truncated)


def _strcasecmp_expression(parser: Any, operand: Any) -> Any:
    if not isinstance(operand, list) or len(operand) != 2:
        raise OperationFailure("Expression $strcasecmp takes exactly 2 arguments",
                               code=ErrorCode.Location16020)
    a, b = (parser.parse(x) for x in operand)
    a = "" if a is None or a is _NOTHING else str(a).upper()
    b = "" if b is None or b is _NOTHING else str(b).upper()
    return (a > b) - (a < b)


def _to_long_expression(parser: Any, operand: Any) -> Any:
    value = _original_parse(parser, {"$toLong": operand})
    return Int64(value) if isinstance(value, int) and not isinstance(value, bool) else value


def _convert_expression(parser: Any, operand: Any) -> Any:
    value = _original_parse(parser, {"$convert": operand})
    target = operand.get("to") if isinstance(operand, dict) else None
    if target in ("long", 18) and isinstance(value, int) and not isinstance(value, bool):
        return Int64(value)
    return value


_DATE_FORMATS: dict[str, Callable[[datetime.datetime], str]] = {
    "Y": lambda d: f"{d.year:04d}",
    "m": lambda d: f"{d.month:02d}",
    "d": lambda d: f"{d.day:02d}",
    "H": lambda d: f"{d.hour:02d}",
    "M": lambda d: f"{d.minute:02d}",
    "S": lambda d: f"{d.second:02d}",
    "L": lambda d: f"{d.microsecond // 1000:03d}",
    "j": lambda d: f"{d.timetuple().tm_yday:03d}",
    "w": lambda d: str(d.isoweekday() % 7 + 1),
    "u": lambda d: str(d.isoweekday()),
    "U": lambda d: d.strftime("%U"),
    "V": lambda d: f"{d.isocalendar()[1]:02d}",
    "G": lambda d: f"{d.isocalendar()[0]:04d}",
    "b": lambda d: d.strftime("%b"),
    "B": lambda d: d.strftime("%B"),
    "z": lambda d: d.strftime("%z") or "+0000",
    "Z": lambda d: str(int((d.utcoffset() or datetime.timedelta()).total_seconds() // 60)),
    "%": lambda d: "%",
}


def _in_timezone(date: datetime.datetime, zone: Any) -> datetime.datetime:
    import zoneinfo

    utc = date.replace(tzinfo=datetime.UTC) if date.tzinfo is None else date
    if zone is None or zone is _NOTHING:
        return utc
    if not isinstance(zone, str):
        raise OperationFailure("timezone must evaluate to a string", code=ErrorCode.Location40517)
    offset = re.fullmatch(r"([+-])(\d{2}):?(\d{2})?", zone)
    if offset:
        minutes = int(offset.group(2)) * 60 + int(offset.group(3) or 0)
        sign = -1 if offset.group(1) == "-" else 1
        return utc.astimezone(datetime.timezone(datetime.timedelta(minutes=sign * minutes)))
    try:
        return utc.astimezone(zoneinfo.ZoneInfo(zone))
    except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
        raise OperationFailure(f"unrecognized time zone identifier: \"{zone}\"",
                               code=ErrorCode.Location40485) from exc


def _date_to_string_expression(parser: Any, operand: Any) -> Any:
    if not isinstance(operand, dict) or "date" not in operand:
        raise OperationFailure("Missing 'date' parameter to $dateToString",
                               code=ErrorCode.Location18628)
    date = parser.parse(operand["date"])
    if date is None or date is _NOTHING:
        return parser.parse(operand["onNull"]) if "onNull" in operand else None
    if not isinstance(date, datetime.datetime):
        raise OperationFailure("can't convert from BSON type "
                               f"{bson_type_name(date)} to Date", code=ErrorCode.Location16006)
    fmt = parser.parse(operand.get("format", "%Y-%m-%dT%H:%M:%S.%LZ"))
    if not isinstance(fmt, str):
        raise OperationFailure("$dateToString requires that 'format' be a string",
                               code=ErrorCode.Location18533)
    local = _in_timezone(date, parser.parse(operand["timezone"]) if "timezone" in operand
                         else None)
    out: list[str] = []
    position = 0
    while position < len(fmt):
        char = fmt[position]
        if char != "%":
            out.append(char)
            position += 1
            continue
        spec = fmt[position + 1: position + 2]
        if spec not in _DATE_FORMATS:
            raise OperationFailure(f"Invalid format character '%{spec}' in format string",
                                   code=ErrorCode.Location18536)
        out.append(_DATE_FORMATS[spec](local))
        position += 2
    return "".join(out)


# -- arithmetic expressions with BSON numeric types ------------------------------------------------
# MongoDB's result type is the widest operand type (int < long < double < decimal), an int
# result that overflows widens to long and a long one to double; Python ints alone lose "long".

_INT, _LONG, _DOUBLE, _DECIMAL = range(4)


def _rank(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, Decimal128):
        return _DECIMAL
    if isinstance(value, float):
        return _DOUBLE
    if isinstance(value, Int64):
        return _LONG
    if isinstance(value, int):
        return _INT if INT32_MIN <= value <= INT32_MAX else _LONG
    return None


def _exact(value: Any) -> int | float | Decimal:
    if isinstance(value, Decimal128):
        return value.to_decimal()
    if isinstance(value, float):
        return value
    return int(value)


def _as_decimal(value: int | float | Decimal) -> Decimal:
    return value if isinstance(value, Decimal) else Decimal(repr(value))


def _typed_number(value: int | float | Decimal, rank: int) -> Any:
    """``value`` as the BSON type of ``rank`` (widened on integer overflow)."""
    if rank == _DECIMAL:
        return Decimal128(_as_decimal(value))
    if rank == _DOUBLE:
        return float(value)
    if isinstance(value, float) and not math.isfinite(value):
        return value  # an overflowed power stays a double
    integer = int(value)
    if rank == _INT and INT32_MIN <= integer <= INT32_MAX:
        return integer
    if -(2**63) <= integer < 2**63:
        return Int64(integer)
    return limits.to_double(integer)


def _numeric_args(parser: Any, name: str, operand: Any, count: int | None) -> list[Any] | None:
    """Evaluated numeric arguments, or None if one is null/missing (the result is then null)."""
    args = operand if isinstance(operand, list) else [operand]
    if count is not None and len(args) != count:
        raise OperationFailure(f"Expression {name} takes exactly {count} arguments. "
                               f"{len(args)} were passed in.", code=ErrorCode.Location16020)
    values = [parser.parse(a) for a in args]
    if any(v is None or v is _NOTHING for v in values):
        return None
    for value in values:
        if _rank(value) is None and not (name in ("$add", "$subtract")
                                          and isinstance(value, datetime.datetime)):
            raise OperationFailure(f"{name} only supports numeric types, not "
                                   f"{bson_type_name(value)}", code=ErrorCode.TypeMismatch)
    return values


def _combine(values: list[Any], op: Callable[[Any, Any], Any]) -> Any:
    rank = max(r for r in (_rank(v) for v in values) if r is not None)
    exact = [_exact(v) for v in values]
    if rank == _DECIMAL:
        exact = [_as_decimal(v) for v in exact]
    result = exact[0]
    for value in exact[1:]:
        result = op(result, value)
    return _typed_number(result, rank)


def _add_expression(parser: Any, operand: Any) -> Any:
    values = _numeric_args(parser, "$add", operand, None)
    if values is None:
        return None
    dates = [v for v in values if isinstance(v, datetime.datetime)]
    numbers = [v for v in values if not isinstance(v, datetime.datetime)]
    if len(dates) > 1:
        raise OperationFailure("only one date allowed in an $add expression",
                               code=ErrorCode.Location16612)
    total = _combine(numbers, operator.add) if numbers else 0
    if dates:
        return dates[0] + datetime.timedelta(milliseconds=round(float(_exact(total))))
    return total


def _subtract_expression(parser: Any, operand: Any) -> Any:
    values = _numeric_args(parser, "$subtract", operand, 2)
    if values is None:
        return None
    a, b = values
    if isinstance(a, datetime.datetime):
        if isinstance(b, datetime.datetime):
            return Int64(round((a - b).total_seconds() * 1000))
        return a - datetime.timedelta(milliseconds=round(float(_exact(b))))
    if isinstance(b, datetime.datetime):
        raise OperationFailure("can't $subtract a date from a number", code=ErrorCode.Location16556)
    return _combine([a, b], operator.sub)


def _multiply_expression(parser: Any, operand: Any) -> Any:
    values = _numeric_args(parser, "$multiply", operand, None)
    return None if values is None else _combine(values, operator.mul) if values else 1


def _divide_expression(parser: Any, operand: Any) -> Any:
    values = _numeric_args(parser, "$divide", operand, 2)
    if values is None:
        return None
    a, b = values
    if _exact(b) == 0:
        raise OperationFailure("can't $divide by zero", code=ErrorCode.BadValue)
    if _DECIMAL in (_rank(a), _rank(b)):
        return Decimal128(_as_decimal(_exact(a)) / _as_decimal(_exact(b)))
    return float(_exact(a)) / float(_exact(b))


def _mod_expression(parser: Any, operand: Any) -> Any:
    values = _numeric_args(parser, "$mod", operand, 2)
    if values is None:
        return None
    a, b = values
    if _exact(b) == 0:
        raise OperationFailure("can't $mod by zero", code=ErrorCode.Location16610)
    rank = max(_rank(a) or 0, _rank(b) or 0)
    x, y = _exact(a), _exact(b)
    if rank == _DECIMAL:
        return Decimal128(_as_decimal(x) % _as_decimal(y))  # Decimal % keeps the dividend's sign
    if rank == _DOUBLE:
        return math.fmod(float(x), float(y))
    remainder = abs(int(x)) % abs(int(y))
    return _typed_number(remainder if int(x) >= 0 else -remainder, rank)


def _unary_number(name: str, apply: Callable[[Any], Any]) -> Callable[[Any, Any], Any]:
    def evaluate(parser: Any, operand: Any) -> Any:
        values = _numeric_args(parser, name, operand, 1)
        if values is None:
            return None
        [value] = values
        rank = _rank(value)
        assert rank is not None
        result = apply(_as_decimal(_exact(value)) if rank == _DECIMAL else _exact(value))
        if rank == _INT and not INT32_MIN <= int(result) <= INT32_MAX:
            rank = _LONG
        return _typed_number(result, rank)

    return evaluate


def _pow_expression(parser: Any, operand: Any) -> Any:
    values = _numeric_args(parser, "$pow", operand, 2)
    if values is None:
        return None
    base, exponent = values
    ranks = (_rank(base) or 0, _rank(exponent) or 0)
    if _DECIMAL in ranks:
        return Decimal128(_as_decimal(_exact(base)) ** _as_decimal(_exact(exponent)))
    if max(ranks) <= _LONG:
        b, e = int(_exact(base)), int(_exact(exponent))
        if b == 0 and e < 0:
            raise OperationFailure("$pow cannot take a base of 0 and a negative exponent",
                                   code=ErrorCode.Location28764)
        if e >= 0:
            return _typed_number(limits.int_power(b, e), max(ranks))
    return limits.float_power(float(_exact(base)), float(_exact(exponent)))


def _round_expression(parser: Any, operand: Any) -> Any:
    args = operand if isinstance(operand, list) else [operand]
    if not 1 <= len(args) <= 2:
        raise OperationFailure("$round takes 1 or 2 arguments", code=ErrorCode.Location28667)
    values = _numeric_args(parser, "$round", args, len(args))
    if values is None:
        return None
    value, place = values[0], int(_exact(values[1])) if len(values) == 2 else 0
    if not -20 <= place <= 100:
        raise OperationFailure(f"cannot apply $round with precision value {place} value must "
                               "be in [-20, 100]", code=ErrorCode.Location51083)
    rank = _rank(value)
    assert rank is not None
    try:
        rounded = _as_decimal(_exact(value)).quantize(Decimal(1).scaleb(-place),
                                                        rounding="ROUND_HALF_EVEN")
    except InvalidOperation:
        return value  # beyond the precision: nothing to round at that place
    if rank in (_INT, _LONG):
        return _typed_number(int(rounded), rank)
    return _typed_number(rounded if rank == _DECIMAL else float(rounded), rank)


def _sum_expression(parser: Any, operand: Any) -> Any:
    if isinstance(operand, list):
        values = [parser.parse(a) for a in operand]
    else:
        single = parser.parse(operand)
        values = single if isinstance(single, list) else [single]
    numbers = [v for v in values if _rank(v) is not None]
    return _combine(numbers, operator.add) if numbers else 0


def _avg_expression(parser: Any, operand: Any) -> Any:
    if isinstance(operand, list):
        values = [parser.parse(a) for a in operand]
    else:
        single = parser.parse(operand)
        values = single if isinstance(single, list) else [single]
    numbers = [v for v in values if _rank(v) is not None]
    if not numbers:
        return None
    if any(_rank(v) == _DECIMAL for v in numbers):
        return Decimal128(sum(_as_decimal(_exact(v)) for v in numbers) / len(numbers))
    return float(sum(float(_exact(v)) for v in numbers) / len(numbers))


_EXPRESSION_OVERRIDES: dict[str, Callable[[Any, Any], Any]] = {
    "$add": _add_expression,
    "$subtract": _subtract_expression,
    "$multiply": _multiply_expression,
    "$divide": _divide_expression,
    "$mod": _mod_expression,
    "$abs": _unary_number("$abs", abs),
    "$ceil": _unary_number("$ceil", math.ceil),
    "$floor": _unary_number("$floor", math.floor),
    "$pow": _pow_expression,
    "$round": _round_expression,
    "$sum": _sum_expression,
    "$avg": _avg_expression,
    "$not": _not_expression,
    "$trunc": _trunc_expression,
    "$strcasecmp": _strcasecmp_expression,
    "$toLong": _to_long_expression,
    "$convert": _convert_expression,
    "$dateToString": _date_to_string_expression,
}
_original_parse = mm_aggregate._Parser.parse
#: The ordering comparisons of aggregation expressions (BSON order across types).
EXPRESSION_ORDERINGS = _COMPARISONS


def expression_handler(name: str) -> Callable[[Any, Any], Any]:
    """The engine's implementation of an expression operator (see ``_EXPRESSION_OVERRIDES``)."""
    return _EXPRESSION_OVERRIDES[name]


#: The query operator primitives, for the compiled matcher (``runtime.embedded.compiled_filter``).
equality_operator = _eq_operator
in_operator = _in_operator
type_operator = _type_operator
_QUERY_COMPARISONS = {name: _query_comparison(op) for name, op in _COMPARISONS.items()}


def query_comparison(name: str) -> Callable[[Any, Any], bool]:
    """The query form of ``$gt``/``$gte``/``$lt``/``$lte`` (no comparison across types)."""
    return _QUERY_COMPARISONS[name]


def ordering_key(value: Any) -> Key:
    """The BSON ordering key of a value (a missing value orders like null)."""
    return _key(value)


def _to_hashed_index_key_expression(parser: Any, operand: Any) -> Any:
    value = _expression_operand(parser, operand)
    return hashed_index_key(None if value is _NOTHING else value)


_EXPRESSION_OVERRIDES["$toHashedIndexKey"] = _to_hashed_index_key_expression


def _parse_expression(self: Any, expression: Any) -> Any:
    deadlines.tick()
    if isinstance(expression, dict) and len(expression) == 1:
        name = next(iter(expression))
        operand = expression[name]
        limits.check_shape(name, operand)
        handler = _EXPRESSION_OVERRIDES.get(name)
        if handler is not None:
            return handler(self, operand)
        if name in limits.PRECHECKED and isinstance(operand, list):
            # Evaluate once, check the size the result would have, then build from the values.
            values = [self.parse(argument) for argument in operand]
            limits.check_operands(name, values)
            return _original_parse(self, {name: [{"$literal": v} for v in values]})
        if name in _BUILDERS:
            if name == "$range" and isinstance(operand, list) and 2 <= len(operand) <= 3:
                limits.check_range(*(self.parse(a) for a in operand),
                                   *([] if len(operand) == 3 else [1]))
            result = _original_parse(self, expression)
            limits.check_result(name, result)
            return result
    return _original_parse(self, expression)


# Operators whose result may grow far beyond their arguments: checked against the limits.
_BUILDERS = frozenset({"$concat", "$concatArrays", "$range", "$reduce", "$replaceAll",
                       "$replaceOne", "$split", "$zip", "$map", "$substr", "$substrCP",
                       "$substrBytes", "$toUpper", "$toLower", "$setUnion", "$reverseArray"})


# -- aggregation stages that mongomock-ng gets wrong ---------------------------------------------


def _count_stage(docs: list[dict[str, Any]], database: Any, options: Any,
                 variables: Any) -> list[dict[str, Any]]:
    if not isinstance(options, str) or not options or options.startswith("$") or "." in options:
        raise OperationFailure("the count field must be a non-empty string without '$' or '.'",
                               code=ErrorCode.Location40156)
    return [{options: len(docs)}] if docs else []


def _unwind_stage(docs: list[dict[str, Any]], database: Any, options: Any,
                  variables: Any) -> list[dict[str, Any]]:
    spec = options if isinstance(options, dict) else {"path": options}
    path = spec.get("path")
    if not isinstance(path, str) or not path.startswith("$") or len(path) < 2:
        raise OperationFailure("$unwind path must be a field path prefixed with '$'",
                               code=ErrorCode.Location28818)
    path = path[1:]
    index_field = spec.get("includeArrayIndex")
    preserve = bool(spec.get("preserveNullAndEmptyArrays"))
    out: list[dict[str, Any]] = []
    for doc in docs:
        value = _direct_get(doc, path)
        if isinstance(value, list) and value:
            for position, item in enumerate(value):
                new = copy.deepcopy(doc)
                _set_path(new, path, item)
                if index_field:
                    _set_path(new, index_field, Int64(position))
                out.append(new)
            continue
        if isinstance(value, list) or value is MISSING or value is None:
            if preserve:
                new = copy.deepcopy(doc)
                if isinstance(value, list):
                    _unset_path(new, path)
                if index_field:
                    _set_path(new, index_field, None)
                out.append(new)
            continue
        new = copy.deepcopy(doc)
        if index_field:
            _set_path(new, index_field, None)
        out.append(new)
    return out


def _direct_get(doc: dict[str, Any], path: str) -> Any:
    """The value at a dotted path through embedded documents only (arrays are not traversed)."""
    current: Any = doc
    for part in path.split("."):
        if not isinstance(current, dict) or part not in current:
            return MISSING
        current = current[part]
    return current


def _unset_path(doc: dict[str, Any], path: str) -> None:
    parts = path.split(".")
    target: Any = doc
    for part in parts[:-1]:
        target = target.get(part) if isinstance(target, dict) else None
    if isinstance(target, dict):
        target.pop(parts[-1], None)


def _sort_stage(docs: list[dict[str, Any]], database: Any, options: Any,
                variables: Any) -> list[dict[str, Any]]:
    if not isinstance(options, dict) or not options:
        raise OperationFailure("the $sort key specification must be an object",
                               code=ErrorCode.Location15973)
    spec: list[tuple[str, int]] = []
    for path, direction in options.items():
        if isinstance(direction, dict):
            spec.append((path, -1))
        elif direction in (1, -1):
            spec.append((path, int(direction)))
        else:
            raise OperationFailure("$sort key ordering must be 1 (for ascending) or -1 (for "
                                   "descending)", code=ErrorCode.Location15975)
    return sorted(docs, key=lambda d: document_sort_key(d, spec))


def _positive_integer(value: Any) -> bool:
    return (isinstance(value, int | float | Int64) and not isinstance(value, bool)
            and float(value).is_integer())


def _limit_stage(docs: list[dict[str, Any]], database: Any, options: Any,
                 variables: Any) -> list[dict[str, Any]]:
    if not _positive_integer(options) or options <= 0:
        raise OperationFailure(f"invalid argument to $limit stage: the limit must be positive "
                               f"(got {options!r})", code=ErrorCode.Location15958)
    return docs[: int(options)]


def _skip_stage(docs: list[dict[str, Any]], database: Any, options: Any,
                variables: Any) -> list[dict[str, Any]]:
    if not _positive_integer(options) or options < 0:
        raise OperationFailure(f"invalid argument to $skip stage: the number to skip cannot be "
                               f"negative (got {options!r})", code=ErrorCode.Location15956)
    return docs[int(options):]


def _sort_by_count_stage(docs: list[dict[str, Any]], database: Any, options: Any,
                         variables: Any) -> list[dict[str, Any]]:
    if not (isinstance(options, str) and options.startswith("$")) and not (
        isinstance(options, dict) and len(options) == 1 and next(iter(options)).startswith("$")
    ):
        raise OperationFailure("the sortByCount field must be defined as a $-prefixed path or "
                               "an expression inside an object", code=ErrorCode.Location40148)
    grouped = _original_group(docs, database, {"_id": options, "count": {"$sum": 1}}, variables)
    return _sort_stage(grouped, database, {"count": -1}, variables)


def _lookup_stage(docs: list[dict[str, Any]], database: Any, options: Any,
                  variables: Any) -> list[dict[str, Any]]:
    target = options.get("as") if isinstance(options, dict) else None
    if not isinstance(target, str) or "." not in target:
        return list(_original_lookup(docs, database, options, variables))
    temporary = "__embedded_lookup_as__"
    out = _original_lookup(docs, database, {**options, "as": temporary}, variables)
    for doc in out:
        _set_path(doc, target, doc.pop(temporary))
    return list(out)


def let_variables(let: Any, variables: dict[str, Any]) -> dict[str, Any]:
    """System variables plus a command's ``let`` constants (expressions evaluated once)."""
    if let is None:
        return variables
    if not isinstance(let, dict):
        raise CommandError(ErrorCode.TypeMismatch,
                           "BSON field 'let' is the wrong type, expected type 'object'")
    combined = dict(variables)
    for name, expression in let.items():
        if not isinstance(name, str) or not re.fullmatch(r"[a-z][A-Za-z0-9_]*", name):
            raise CommandError(ErrorCode.Location16866,
                               f"'{name}' starts with an invalid character for a user "
                               "variable name")
        try:
            combined[name] = mm_aggregate._Parser({}, user_vars=variables).parse(expression)
        except (PyMongoError, NotImplementedError, TypeError, ValueError, KeyError) as exc:
            raise _translate(exc) from exc
    return combined


def _add_fields_stage(in_collection: list[dict[str, Any]], database: Any,
                      options: dict[str, Any], user_vars: Any) -> list[dict[str, Any]]:
    """``$addFields``/``$set`` where a missing value (``$$REMOVE``, an absent path) removes
    the field, as MongoDB does; the library kept the old value instead."""
    if not options:
        raise OperationFailure("Invalid $addFields :: caused by :: specification must have "
                               "at least one field")
    out_collection = [dict(doc) for doc in in_collection]
    for field, value in options.items():
        parts = field.split(".")
        for in_doc, out_doc in zip(in_collection, out_collection, strict=True):
            out_value = mm_aggregate._parse_expression(value, in_doc, user_vars=user_vars)
            target = out_doc
            for part in parts[:-1]:
                child = target.get(part)
                if not isinstance(child, dict):
                    if out_value is _NOTHING:
                        break
                    child = {}
                else:
                    child = dict(child)
                target[part] = child
                target = child
            else:
                if out_value is _NOTHING:
                    target.pop(parts[-1], None)
                else:
                    target[parts[-1]] = out_value
    return out_collection


mm_aggregate._PIPELINE_HANDLERS["$addFields"] = _add_fields_stage
mm_aggregate._PIPELINE_HANDLERS["$set"] = _add_fields_stage

_original_group = mm_aggregate._PIPELINE_HANDLERS["$group"]
_original_lookup = mm_aggregate._PIPELINE_HANDLERS["$lookup"]

# mongomock-ng keeps its operators in tables; the gaps are filled by registering in them.
mm_collection._updaters["$inc"] = _arith_updater("$inc", operator.add, lambda v: v)
mm_collection._updaters["$mul"] = _arith_updater("$mul", operator.mul, _zero_like)
_OPERATOR_MAP = mm_filtering._filterer_inst._operator_map
_OPERATOR_MAP["$mod"] = mm_filtering._list_expand(_mod_operator)
_OPERATOR_MAP["$eq"] = _eq_operator
_OPERATOR_MAP["$in"] = _in_operator
_OPERATOR_MAP["$nin"] = lambda a, b: not _in_operator(a, b)
_OPERATOR_MAP["$ne"] = lambda a, b: not _eq_operator(a, b)
_OPERATOR_MAP["$type"] = _type_operator
for _name, _op in _COMPARISONS.items():
    _OPERATOR_MAP[_name] = mm_filtering._list_expand(_query_comparison(_op))
mm_filtering.operator_eq = bson_equal
mm_filtering.bson_compare = bson_compare
mm_aggregate._Parser._handle_comparison_operator = _expression_comparison
mm_aggregate._Parser._handle_type_operator = _expression_type
mm_aggregate._Parser.parse = _parse_expression
mm_aggregate._PIPELINE_HANDLERS["$count"] = _count_stage
mm_aggregate._PIPELINE_HANDLERS["$unwind"] = _unwind_stage
mm_aggregate._PIPELINE_HANDLERS["$sort"] = _sort_stage
mm_aggregate._PIPELINE_HANDLERS["$limit"] = _limit_stage
mm_aggregate._PIPELINE_HANDLERS["$skip"] = _skip_stage
mm_aggregate._PIPELINE_HANDLERS["$sortByCount"] = _sort_by_count_stage
mm_aggregate._PIPELINE_HANDLERS["$lookup"] = _lookup_stage

_UPDATER: Any = mongomock_ng.MongoClient().get_database("reactgen_engine").get_collection("updater")


class ForeignCollections(Protocol):
    """What ``$lookup``, ``$unionWith`` and ``$graphLookup`` need: other collections' documents."""

    def documents(self, collection: str) -> list[dict[str, Any]]:
        """Copies of every document of a collection of the same database."""
        ...


class _ForeignCollection:
    def __init__(self, docs: list[dict[str, Any]], database: _DatabaseAdapter) -> None:
        self._docs = docs
        self._database = database

    def find(self, query: dict[str, Any] | None = None, *args: Any, **kwargs: Any) -> Any:
        variables = self._database.variables
        return [d for d in self._docs if matches(query or {}, d, variables)]

    def aggregate(self, pipeline: list[dict[str, Any]], *args: Any, **kwargs: Any) -> Any:
        return list(mm_aggregate.process_pipeline(list(self._docs), self._database, pipeline,
                                                  None, user_vars=self._database.variables))


class _DatabaseAdapter:
    """The database object mongomock-ng's stages expect (``$lookup`` reads collections)."""

    name = "embedded"

    def __init__(self, source: ForeignCollections, variables: dict[str, Any]) -> None:
        self._source = source
        self.variables = variables

    def get_collection(self, name: str) -> _ForeignCollection:
        return _ForeignCollection(self._source.documents(name), self)

    def __getitem__(self, name: str) -> _ForeignCollection:
        return self.get_collection(name)


def system_variables(now: datetime.datetime, cluster_time: Timestamp) -> dict[str, Any]:
    """``$$NOW`` and ``$$CLUSTER_TIME`` for one command (the same value for all its documents).

    ``NOW`` is cut to BSON's millisecond precision, so a stored ``$$NOW`` equals what a client
    reads back and queries with."""
    now = now.replace(microsecond=now.microsecond // 1000 * 1000)
    return {"NOW": now, "CLUSTER_TIME": cluster_time}


def _translate(exc: Exception, default_code: int = 2) -> CommandError:
    if isinstance(exc, CommandError):
        return exc
    if isinstance(exc, WriteError):
        return exc.as_command_error()
    if isinstance(exc, OperationFailure):
        message = str(exc.details.get("errmsg", exc)) if exc.details else str(exc)
        code = exc.code
        if code is None and message.startswith("Unrecognized expression"):
            code = 168  # InvalidPipelineOperator
        return CommandError(code or default_code, message)
    if isinstance(exc, NotImplementedError):
        if "is not a valid operator for the aggregation pipeline" in str(exc):
            stage = str(exc).split(" ", 1)[0]
            return CommandError(ErrorCode.Location40324,
                                f"Unrecognized pipeline stage name: '{stage}'")
        return CommandError(ErrorCode.BadValue, f"not supported by the embedded server: {exc}")
    return evaluation_error(exc, default_code)


def evaluation_error(exc: BaseException, default_code: int = 2) -> CommandError:
    """MongoDB's typed error for a Python failure while evaluating a query or expression.

    Whatever the library raises for an argument it cannot handle answers as a typed error
    (never InternalError): too deep nesting is Overflow, as MongoDB refuses it; arithmetic
    errors are BadValue; wrong types keep ``default_code``."""
    if isinstance(exc, CommandError):
        return exc
    if isinstance(exc, RecursionError):
        return CommandError(ErrorCode.Overflow, "BSONObj exceeds maximum nested object depth")
    if isinstance(exc, AssertionError) and "Comparison requires two expressions" in str(exc):
        return CommandError(ErrorCode.Location16020, "Expression takes exactly 2 arguments.")
    if isinstance(exc, ArithmeticError | InvalidOperation):
        return CommandError(ErrorCode.BadValue, f"{type(exc).__name__}: {exc}")
    return CommandError(default_code, f"{type(exc).__name__}: {exc}")


#: Python exceptions the evaluation of a client's query, update or expression may raise on
#: hostile arguments; each is answered as a typed error (see :func:`evaluation_error`).
_EVALUATION_ERRORS = (PyMongoError, NotImplementedError, TypeError, ValueError, KeyError,
                      IndexError, AttributeError, ArithmeticError, RecursionError,
                      AssertionError, NameError, BSONError, re.error, UnicodeError)


def matches(query: dict[str, Any], doc: dict[str, Any], variables: dict[str, Any]) -> bool:
    """Whether ``doc`` matches the query filter ``query``."""
    if not query:
        return True
    fast = _compiled_filter.filter_matcher(query)
    if fast is not None:
        try:
            return fast(doc, variables)
        except _compiled.Unsupported:
            pass
        except _EVALUATION_ERRORS as exc:
            raise _translate(exc) from exc
    try:
        return bool(mm_filtering.filter_applies(query, doc, user_vars=variables))
    except _EVALUATION_ERRORS as exc:
        raise _translate(exc) from exc


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
    stack: list[tuple[Any, int]] = [(query, 1)]
    while stack:
        node, level = stack.pop()
        if level > limits.MAX_BSON_DEPTH:
            raise CommandError(ErrorCode.Overflow, "BSONObj exceeds maximum nested object depth")
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "$regex":
                    _check_regex_operand(value)
                if isinstance(value, dict | list) and value:
                    stack.append((value, level + 1))
        else:
            stack.extend((value, level + 1) for value in node
                         if isinstance(value, dict | list) and value)


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


_OPERATOR_MAP["$regex"] = mm_filtering._not_nothing_and(_guarded_regex)
mm_filtering._regex = _guarded_regex
_EXPRESSION_OVERRIDES.update(regex_expressions.handlers(_NOTHING))


def _paths_conflict(a: str, b: str) -> bool:
    return a == b or a.startswith(b + ".") or b.startswith(a + ".")


def validate_update_document(update: dict[str, Any]) -> None:
    """Check an operator update before applying it: known operators, no conflicting paths."""
    seen: list[str] = []
    for op_name, fields in update.items():
        if not op_name.startswith("$"):
            raise WriteError(ErrorCode.FailedToParse,
                             "Unknown modifier: cannot mix update operators and plain fields")
        if op_name not in UPDATE_OPERATORS:
            raise WriteError(ErrorCode.FailedToParse,
                             f"Unknown modifier: {op_name}. Expected a valid update modifier")
        if not isinstance(fields, dict):
            raise WriteError(ErrorCode.FailedToParse,
                             f"Modifiers operate on fields but we found type "
                             f"{type(fields).__name__} instead: {{{op_name}: {fields!r}}}")
        paths = list(fields)
        if op_name == "$rename":
            for source, target in fields.items():
                if not isinstance(target, str):
                    raise WriteError(ErrorCode.BadValue,
                                     f"The 'to' field for $rename must be a string: "
                                     f"{source}: {target!r}")
                if source == target:
                    raise WriteError(ErrorCode.BadValue,
                                     f"The source and target field for $rename must differ: "
                                     f"{source}: {target!r}")
            paths += list(fields.values())
        for path in paths:
            if path == "":
                raise WriteError(ErrorCode.EmptyFieldName, "An empty update path is not valid.")
            for other in seen:
                if _paths_conflict(path, other):
                    raise WriteError(ErrorCode.ConflictingUpdateOperators,
                                     f"Updating the path '{path}' would create a conflict "
                                     f"at '{other}'")
            seen.append(path)


_CREATING_OPERATORS = ("$set", "$setOnInsert", "$inc", "$mul", "$min", "$max", "$push",
                       "$addToSet", "$currentDate", "$bit")


def _check_path_viable(doc: dict[str, Any], path: str) -> None:
    """PathNotViable (28) if ``path`` would have to descend into a scalar (or a non-index field
    of an array); MongoDB refuses such an update instead of ignoring it."""
    current: Any = doc
    parts = path.split(".")
    for depth, part in enumerate(parts):
        if part.startswith("$"):
            return  # positional: checked where the array elements are known
        if isinstance(current, dict):
            if part not in current:
                return
            current = current[part]
        elif isinstance(current, list) and part.isdigit():
            if int(part) >= len(current):
                return
            current = current[int(part)]
        else:
            shown = ".".join(parts[:depth])
            raise WriteError(ErrorCode.PathNotViable, f"Cannot create field '{part}' in element "
                             f"{{{shown}: {current!r}}}")


def _check_paths_viable(doc: dict[str, Any], update: dict[str, Any]) -> None:
    for op_name, fields in update.items():
        if op_name in _CREATING_OPERATORS:
            for path in fields:
                _check_path_viable(doc, path)
        elif op_name == "$rename":
            for target in fields.values():
                if isinstance(target, str):
                    _check_path_viable(doc, target)


_ARRAY_OPERATORS = ("$push", "$addToSet", "$pull", "$pullAll", "$pop")
_FILTERED_POSITIONAL = re.compile(r"^\$\[([a-z][A-Za-z0-9]*)?\]$")


def _check_array_targets(doc: dict[str, Any], update: dict[str, Any]) -> None:
    """Array operators on an existing non-array field fail (BadValue) instead of half-working."""
    for op_name in _ARRAY_OPERATORS:
        for path in update.get(op_name, {}):
            if "$" in path:
                continue
            value = _direct_get(doc, path)
            if value is not MISSING and not isinstance(value, list):
                raise WriteError(ErrorCode.BadValue,
                                 f"The field '{path}' must be an array but is of type "
                                 f"{bson_type_name(value)} in document {{_id: {doc.get('_id')!r}}}")


def _array_filter_table(array_filters: list[dict[str, Any]] | None) -> dict[str, dict[str, Any]]:
    table: dict[str, dict[str, Any]] = {}
    for flt in array_filters or []:
        if not isinstance(flt, dict) or not flt:
            raise WriteError(ErrorCode.BadValue,
                             "Cannot use an expression without a top-level field name in "
                             "arrayFilters")
        names: set[str] = set()
        for key, value in flt.items():
            if key in ("$and", "$or", "$nor") and isinstance(value, list):
                names.update(k.split(".")[0] for part in value if isinstance(part, dict)
                             for k in part if not k.startswith("$"))
            elif not key.startswith("$"):
                names.add(key.split(".")[0])
        if len(names) != 1:
            raise WriteError(ErrorCode.FailedToParse,
                             "Error parsing array filter :: caused by :: Expected a single "
                             "top-level field name, found " + ", ".join(sorted(names)))
        [name] = names
        if name in table:
            raise WriteError(ErrorCode.FailedToParse,
                             f"Found multiple array filters with the same top-level field "
                             f"name {name}")
        table[name] = flt
    return table


def _expand_path(node: Any, parts: list[str], done: list[str], table: dict[str, dict[str, Any]],
                 used: set[str], variables: dict[str, Any], original: str) -> list[str]:
    """Concrete paths for an update path with ``$[]`` / ``$[id]`` parts."""
    for position in range(len(parts)):
        part = parts[position]
        found = _FILTERED_POSITIONAL.match(part)
        if found is None:
            if isinstance(node, dict):
                node = node.get(part, MISSING)
            elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
            else:
                node = MISSING
            done = [*done, part]
            continue
        name = found.group(1)
        if name is not None and name not in table:
            raise WriteError(ErrorCode.BadValue,
                             f"No array filter found for identifier '{name}' in path "
                             f"'{original}'")
        if not isinstance(node, list):
            if node is MISSING:
                raise WriteError(ErrorCode.BadValue,
                                 f"The path '{'.'.join(done)}' must exist in the document "
                                 "in order to apply array updates.")
            raise WriteError(ErrorCode.BadValue, f"Cannot apply array updates to non-array element "
                             f"{done[-1] if done else ''}: {node!r}")
        rest = parts[position + 1:]
        paths: list[str] = []
        if name is not None:
            used.add(name)
        for index, element in enumerate(node):
            if name is not None and not matches(table[name], {name: element}, variables):
                continue
            paths += _expand_path(element, rest, [*done, str(index)], table, used, variables,
                                  original)
        return paths
    return [".".join(done)]


def _expand_array_filters(doc: dict[str, Any], update: dict[str, Any],
                          array_filters: list[dict[str, Any]] | None,
                          variables: dict[str, Any]) -> dict[str, Any]:
    """Rewrite ``$[]`` and ``$[id]`` paths into the concrete paths they select in ``doc``."""
    table = _array_filter_table(array_filters)
    used: set[str] = set()
    expanded: dict[str, Any] = {}
    for op_name, fields in update.items():
        new_fields: dict[str, Any] = {}
        for path, value in fields.items():
            if "$[" not in path:
                new_fields[path] = value
                continue
            for concrete in _expand_path(doc, path.split("."), [], table, used, variables, path):
                new_fields[concrete] = value
        if new_fields:
            expanded[op_name] = new_fields
    unused = set(table) - used
    if unused:
        raise WriteError(ErrorCode.FailedToParse,
                         f"The array filter for identifier '{sorted(unused)[0]}' was not "
                         "used in the update")
    _check_array_targets(doc, expanded)
    return expanded


def is_operator_update(update: dict[str, Any]) -> bool:
    """An update document made of ``$`` operators (as opposed to a replacement)."""
    return bool(update) and next(iter(update)).startswith("$")


def validate_replacement(doc: dict[str, Any]) -> None:
    """A replacement document may not contain update operators."""
    for key in doc:
        if key.startswith("$"):
            raise WriteError(ErrorCode.FailedToParse,
                             f"Unknown modifier: {key}; a replacement document cannot "
                             "contain update operators")


def apply_update(
    doc: dict[str, Any],
    update: dict[str, Any] | list[dict[str, Any]],
    query: dict[str, Any],
    array_filters: list[dict[str, Any]] | None,
    is_insert: bool,
    variables: dict[str, Any],
) -> dict[str, Any]:
    """Return a new document: ``update`` applied to a copy of ``doc`` (``doc`` is never changed).

    Any failure raises :class:`WriteError` and leaves nothing half-applied, which gives the
    per-document atomicity MongoDB guarantees.
    """
    if isinstance(update, list):
        fast = _compiled.pipeline_update(update)
        if fast is not None:
            with contextlib.suppress(_compiled.Unsupported):
                return _checked_result(doc, _run_compiled(fast, doc, variables))
    new_doc = copy.deepcopy(doc)
    try:
        if isinstance(update, list):
            for stage in update:
                if not isinstance(stage, dict) or len(stage) != 1:
                    raise WriteError(ErrorCode.FailedToParse,
                                     "each update pipeline stage must be a single-key object")
                name = next(iter(stage))
                if name not in UPDATE_PIPELINE_STAGES:
                    raise WriteError(ErrorCode.InvalidOptions,
                                     f"{name} is not allowed to be used within an update")
            [result] = mm_aggregate.process_pipeline([new_doc], None, update, None,
                                                     user_vars=variables)
            new_doc = dict(result)
        else:
            validate_update_document(update)
            update = _expand_array_filters(new_doc, update, array_filters, variables)
            update = _resolve_positional(new_doc, update, query, variables)
            _check_paths_viable(new_doc, update)
            own = {name: update.pop(name) for name in list(update) if name in _OWN_OPERATORS}
            if update:
                _UPDATER._current_array_filters = []
                try:
                    _UPDATER._apply_update_document(new_doc, query, update, is_insert)
                finally:
                    _UPDATER._current_array_filters = None
            for name, fields in own.items():
                for path, value in fields.items():
                    _OWN_OPERATORS[name](new_doc, path, value, variables)
    except WriteError:
        raise
    except CommandError as exc:
        raise WriteError(exc.code, exc.message) from exc
    except _EVALUATION_ERRORS as exc:
        error = _translate(exc, default_code=14)
        raise WriteError(error.code, error.message) from exc
    return _checked_result(doc, new_doc)


def _run_compiled(fast: Callable[[dict[str, Any], dict[str, Any]], dict[str, Any]],
                  doc: dict[str, Any], variables: dict[str, Any]) -> dict[str, Any]:
    try:
        return fast(doc, variables)
    except (WriteError, _compiled.Unsupported):
        raise
    except CommandError as exc:
        raise WriteError(exc.code, exc.message) from exc
    except _EVALUATION_ERRORS as exc:
        error = _translate(exc, default_code=14)
        raise WriteError(error.code, error.message) from exc


def _checked_result(doc: dict[str, Any], new_doc: dict[str, Any]) -> dict[str, Any]:
    """``new_doc`` with ``_id`` first, after checking that the update kept ``_id``."""
    if "_id" in doc and ("_id" not in new_doc or new_doc["_id"] != doc["_id"]):
        raise WriteError(ErrorCode.ImmutableField,
                         "Performing an update on the path '_id' would modify the immutable "
                         "field '_id'")
    if "_id" in new_doc and new_doc["_id"] != next(iter(new_doc.values())):
        new_doc = {"_id": new_doc["_id"], **{k: v for k, v in new_doc.items() if k != "_id"}}
    return new_doc


# -- update operators implemented here (mongomock-ng mishandles paths through arrays) -----------


def _container(doc: dict[str, Any], path: str, create: bool) -> tuple[Any, str | int] | None:
    """The dict or list holding the last part of ``path`` and that part's key; None if a part
    is missing (and not ``create``d). Array elements are addressed by numeric parts."""
    parts = path.split(".")
    current: Any = doc
    for part in parts[:-1]:
        if isinstance(current, list) and part.isdigit():
            index = int(part)
            if index >= len(current):
                if not create:
                    return None
                current.extend([None] * (index + 1 - len(current)))
                current[index] = {}
            current = current[index]
        elif isinstance(current, dict):
            if part not in current:
                if not create:
                    return None
                current[part] = {}
            current = current[part]
        else:
            return None
    last = parts[-1]
    if isinstance(current, list) and last.isdigit():
        return current, int(last)
    if isinstance(current, dict):
        return current, last
    return None


def _get_in(container: Any, key: str | int) -> Any:
    if isinstance(container, list):
        assert isinstance(key, int)
        return container[key] if key < len(container) else MISSING
    return container.get(key, MISSING)


def _put_in(container: Any, key: str | int, value: Any) -> None:
    if isinstance(container, list):
        assert isinstance(key, int)
        container.extend([None] * (key + 1 - len(container)))
    container[key] = value


def _array_at(doc: dict[str, Any], path: str, operator_name: str,
              create: bool) -> list[Any] | None:
    found = _container(doc, path, create)
    if found is None:
        return None
    container, key = found
    value = _get_in(container, key)
    if value is MISSING:
        if not create:
            return None
        value = []
        _put_in(container, key, value)
    if not isinstance(value, list):
        raise WriteError(ErrorCode.BadValue,
                         f"Cannot apply {operator_name} to non-array field. Field named "
                         f"'{path.rsplit('.', 1)[-1]}' has non-array type "
                         f"{bson_type_name(value)}")
    return value


def _add_to_set(doc: dict[str, Any], path: str, value: Any, variables: dict[str, Any]) -> None:
    values = value["$each"] if isinstance(value, dict) and "$each" in value else [value]
    if not isinstance(values, list):
        raise WriteError(ErrorCode.BadValue, "The argument to $each in $addToSet must be an array")
    array = _array_at(doc, path, "$addToSet", create=True)
    assert array is not None
    for item in values:
        if not any(bson_equal(existing, item) for existing in array):
            array.append(copy.deepcopy(item))


def _pull_condition(condition: Any, variables: dict[str, Any]) -> Callable[[Any], bool]:
    if isinstance(condition, dict) and condition:
        if all(key.startswith("$") for key in condition) and not any(
            key in ("$and", "$or", "$nor", "$expr") for key in condition
        ):
            return lambda element: matches({"v": condition}, {"v": element}, variables)
        return lambda element: isinstance(element, dict) and matches(condition, element,
                                                                      variables)
    return lambda element: bson_equal(element, condition)


def _pull(doc: dict[str, Any], path: str, condition: Any, variables: dict[str, Any]) -> None:
    array = _array_at(doc, path, "$pull", create=False)
    if array is not None:
        remove = _pull_condition(condition, variables)
        array[:] = [element for element in array if not remove(element)]


def _pull_all(doc: dict[str, Any], path: str, values: Any, variables: dict[str, Any]) -> None:
    if not isinstance(values, list):
        raise WriteError(ErrorCode.BadValue, f"$pullAll requires an array argument but was given a "
                         f"{bson_type_name(values)}")
    array = _array_at(doc, path, "$pullAll", create=False)
    if array is not None:
        array[:] = [e for e in array if not any(bson_equal(e, v) for v in values)]


def _current_date(doc: dict[str, Any], path: str, spec: Any, variables: dict[str, Any]) -> None:
    kind = "date"
    if isinstance(spec, dict):
        kind = spec.get("$type", "")
        if kind not in ("date", "timestamp"):
            raise WriteError(ErrorCode.BadValue,
                             "The '$type' string field is required to be 'date' or "
                             "'timestamp': {$currentDate: {field : {$type: 'date'}}}")
    elif not isinstance(spec, bool):
        raise WriteError(ErrorCode.BadValue,
                         f"{spec!r} is not valid type for $currentDate. Please use a "
                         "boolean ('true') or a $type expression ({$type: 'timestamp/date'}).")
    now = variables.get("NOW")
    if not isinstance(now, datetime.datetime):
        now = _millisecond_now()
    value: Any = now
    if kind == "timestamp":
        cluster_time = variables.get("CLUSTER_TIME")
        value = cluster_time if isinstance(cluster_time, Timestamp) else Timestamp(now, 1)
    found = _container(doc, path, create=True)
    if found is not None:
        _put_in(found[0], found[1], value)


def _through_array(doc: dict[str, Any], path: str) -> bool:
    current: Any = doc
    for part in path.split(".")[:-1]:
        if isinstance(current, list):
            return True
        if not isinstance(current, dict) or part not in current:
            return False
        current = current[part]
    return isinstance(current, list)


def _rename(doc: dict[str, Any], source: str, target: Any, variables: dict[str, Any]) -> None:
    if _through_array(doc, source) or _through_array(doc, str(target)):
        raise WriteError(ErrorCode.BadValue,
                         f"The source and target field for $rename must not be array "
                         f"elements: {source}")
    found = _container(doc, source, create=False)
    if found is None:
        return
    container, key = found
    value = _get_in(container, key)
    if value is MISSING:
        return
    del container[key]
    destination = _container(doc, str(target), create=True)
    if destination is not None:
        _put_in(destination[0], destination[1], value)


_OWN_OPERATORS: dict[str, Callable[[dict[str, Any], str, Any, dict[str, Any]], None]] = {
    "$addToSet": _add_to_set,
    "$pull": _pull,
    "$pullAll": _pull_all,
    "$currentDate": _current_date,
    "$rename": _rename,
}


def _resolve_positional(doc: dict[str, Any], update: dict[str, Any], query: dict[str, Any],
                        variables: dict[str, Any]) -> dict[str, Any]:
    """Replace the positional ``$`` part of update paths by the index the query matched."""
    if not any(part == "$" for fields in update.values() for path in fields
               for part in path.split(".")):
        return update
    resolved: dict[str, Any] = {}
    for op_name, fields in update.items():
        new_fields: dict[str, Any] = {}
        for path, value in fields.items():
            parts = path.split(".")
            if "$" in parts:
                at = parts.index("$")
                array_path = ".".join(parts[:at])
                index = _first_matching_index(doc, array_path, query, variables)
                if index is None:
                    raise WriteError(ErrorCode.BadValue,
                                     "The positional operator did not find the match needed "
                                     "from the query.")
                path = ".".join([*parts[:at], str(index), *parts[at + 1:]])
            new_fields[path] = value
        resolved[op_name] = new_fields
    return resolved


def _millisecond_now() -> datetime.datetime:
    now = datetime.datetime.now(datetime.UTC).replace(tzinfo=None)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def upsert_seed(query: dict[str, Any]) -> dict[str, Any]:
    """The document an upsert starts from: the query's equality fields."""
    seed: dict[str, Any] = {}

    def take(q: dict[str, Any]) -> None:
        for key, value in q.items():
            if key == "$and" and isinstance(value, list):
                for part in value:
                    if isinstance(part, dict):
                        take(part)
                continue
            if key.startswith("$"):
                continue
            if isinstance(value, dict) and value and next(iter(value)).startswith("$"):
                if "$eq" in value:
                    _set_path(seed, key, copy.deepcopy(value["$eq"]))
                continue
            _set_path(seed, key, copy.deepcopy(value))

    take(query)
    return seed


def _set_path(doc: dict[str, Any], path: str, value: Any) -> None:
    parts = path.split(".")
    target = doc
    for part in parts[:-1]:
        nxt = target.get(part)
        if not isinstance(nxt, dict):
            nxt = {}
            target[part] = nxt
        target = nxt
    target[parts[-1]] = value


_FIND_PROJECTION_OPERATORS = frozenset({"$slice", "$elemMatch", "$meta"})


def _is_projection_expression(value: Any) -> bool:
    if isinstance(value, bool | int | float | Int64 | Decimal128):
        return False
    if isinstance(value, dict):
        operators = [k for k in value if k.startswith("$")]
        if not operators:
            return any(_is_projection_expression(v) for v in value.values())
        return operators[0] not in _FIND_PROJECTION_OPERATORS
    return True


class _NoForeignCollections:
    def documents(self, collection: str) -> list[dict[str, Any]]:
        raise CommandError(ErrorCode.BadValue, "a find projection cannot read other collections")


_NO_FOREIGN = _NoForeignCollections()


def _first_matching_index(doc: dict[str, Any], path: str, query: dict[str, Any] | None,
                          variables: dict[str, Any]) -> int | None:
    """Index of the first element of the array at ``path`` that the query's conditions on that
    array match (what the positional ``$`` stands for)."""
    array = _direct_get(doc, path)
    clauses = {k: v for k, v in (query or {}).items()
               if k == path or k.startswith(path + ".")}
    if isinstance(array, list) and clauses:
        for index, element in enumerate(array):
            probe: dict[str, Any] = {}
            _set_path(probe, path, [element])
            if matches(clauses, probe, variables):
                return index
    return None


def _positional_element(doc: dict[str, Any], path: str, query: dict[str, Any] | None,
                        variables: dict[str, Any]) -> list[Any]:
    """``[element]`` for a positional projection ``"path.$"``."""
    index = _first_matching_index(doc, path, query, variables)
    if index is None:
        raise CommandError(ErrorCode.Location51246,
                           "Executor error during find command :: caused by :: "
                           "positional operator '.$' couldn't find a matching element in the "
                           "array")
    array = _direct_get(doc, path)
    return [array[index]]


def project(doc: dict[str, Any], projection: dict[str, Any] | None,
            variables: dict[str, Any], query: dict[str, Any] | None = None) -> dict[str, Any]:
    """Apply a find-style projection to one document (``query`` serves ``"a.$"``)."""
    if not projection:
        return doc
    if any(_is_projection_expression(v) for v in projection.values()):
        # MongoDB 4.4+ accepts aggregation expressions in find projections: run them as $project.
        [projected] = run_pipeline([doc], [{"$project": projection}], _NO_FOREIGN, variables)
        return projected
    positional = [key[: -len(".$")] for key in projection if key.endswith(".$")]
    fields = dict(projection)
    if positional:
        if len(positional) > 1:
            raise CommandError(ErrorCode.Location31276,
                               "Cannot specify more than one positional projection per "
                               "query.")
        for path in positional:
            del fields[path + ".$"]
            fields[path] = 1
    try:
        result: dict[str, Any] = dict(_UPDATER._copy_only_fields(doc, fields, dict))
    except _EVALUATION_ERRORS as exc:
        raise _translate(exc) from exc
    for path in positional:
        if _direct_get(doc, path) is not MISSING:
            _set_path(result, path, _positional_element(doc, path, query, variables))
    if "_id" in result:
        return {"_id": result.pop("_id"), **result}
    return result


def run_pipeline(
    docs: Iterable[dict[str, Any]],
    pipeline: list[dict[str, Any]],
    foreign: ForeignCollections,
    variables: dict[str, Any],
) -> list[dict[str, Any]]:
    """Run aggregation stages over ``docs`` (copied first unless every stage leaves its input
    documents untouched)."""
    inputs = list(docs) if _leaves_inputs_alone(pipeline) else [copy.deepcopy(d) for d in docs]
    for stage in pipeline:
        if not isinstance(stage, dict) or len(stage) != 1:
            raise CommandError(ErrorCode.Location40323,
                               "A pipeline stage specification object must contain "
                               "exactly one field.")
        name = next(iter(stage))
        if name not in mm_aggregate._PIPELINE_HANDLERS:
            raise CommandError(ErrorCode.Location40324,
                               f"Unrecognized pipeline stage name: '{name}'")
        if mm_aggregate._PIPELINE_HANDLERS[name] is None:
            raise CommandError(ErrorCode.Location40324,
                               f"Pipeline stage {name} is not supported by the embedded "
                               "server")
    pipeline = [_nest_dotted_projection(stage) for stage in pipeline]
    try:
        out = mm_aggregate.process_pipeline(inputs, _DatabaseAdapter(foreign, variables),
                                            pipeline, None, user_vars=variables)
        return [_id_first(dict(d)) for d in out]
    except CommandError:
        raise
    except _EVALUATION_ERRORS as exc:
        raise _translate(exc) from exc


# Stages whose implementation builds new documents (or filters/reorders them) and never
# writes into its input documents. Stored documents are never mutated in place, so a pipeline
# made only of these can read them directly instead of deep-copying every input.
_NON_MUTATING_STAGES = frozenset({"$match", "$project", "$group", "$sort", "$skip", "$limit",
                                  "$count", "$sortByCount", "$addFields", "$set",
                                  "$replaceRoot", "$replaceWith"})


def _leaves_inputs_alone(pipeline: list[dict[str, Any]]) -> bool:
    for stage in pipeline:
        if not isinstance(stage, dict) or len(stage) != 1:
            return False
        name, spec = next(iter(stage.items()))
        if name == "$facet":
            if not isinstance(spec, dict) or not all(
                    isinstance(p, list) and _leaves_inputs_alone(p) for p in spec.values()):
                return False
        elif name not in _NON_MUTATING_STAGES:
            return False
    return True


def _nest_dotted_projection(stage: dict[str, Any]) -> dict[str, Any]:
    """``{$project: {"a.b": <expression>}}`` as ``{$project: {a: {b: <expression>}}}``.

    mongomock-ng would create a top-level field literally named "a.b"; MongoDB treats a dotted
    key as a path. Inclusion/exclusion flags (0/1/true/false) are left dotted, which it handles.
    """
    spec = stage.get("$project")
    if not isinstance(spec, dict) or not any(
            "." in k and not _is_flag(v) for k, v in spec.items()):
        return stage
    nested: dict[str, Any] = {}
    for key, value in spec.items():
        if "." not in key or _is_flag(value):
            nested[key] = value
            continue
        *parents, leaf = key.split(".")
        target = nested
        for part in parents:
            child = target.get(part)
            if not isinstance(child, dict):
                child = {}
                target[part] = child
            target = child
        target[leaf] = value
    return {"$project": nested}


def _is_flag(value: Any) -> bool:
    return isinstance(value, bool | int | float) and not isinstance(value, str) and value in (
        0, 1)


def _id_first(doc: dict[str, Any]) -> dict[str, Any]:
    if "_id" in doc and next(iter(doc)) != "_id":
        return {"_id": doc.pop("_id"), **doc}
    return doc


def known_stage(name: str) -> bool:
    """Whether the aggregation engine implements a stage."""
    return mm_aggregate._PIPELINE_HANDLERS.get(name) is not None


# The compiled fast path for update pipelines and filters (it builds on this module).
from runtime.embedded import compiled as _compiled  # noqa: E402
from runtime.embedded import compiled_filter as _compiled_filter  # noqa: E402
