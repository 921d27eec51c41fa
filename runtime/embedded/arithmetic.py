"""Arithmetic expressions with BSON numeric types.

MongoDB's result type is the widest operand type (int < long < double < decimal), an int result
that overflows widens to long and a long one to double; Python ints alone lose "long". A null or
missing operand makes the result null. Also the trigonometric operators (always a double, or a
decimal for a decimal operand).
"""

from __future__ import annotations

import datetime
import math
import operator
from collections.abc import Callable
from decimal import Decimal, InvalidOperation
from typing import Any

from bson.decimal128 import Decimal128
from bson.int64 import Int64
from pymongo.errors import OperationFailure

from runtime.embedded import expression_limits as limits
from runtime.embedded.comparison import bson_type_name
from runtime.embedded.engine_support import INT32_MAX, INT32_MIN, NOTHING
from runtime.embedded.errors import ErrorCode


def _trunc_expression(parser: Any, operand: Any) -> Any:
    args = operand if isinstance(operand, list) else [operand]
    if not 1 <= len(args) <= 2:
        raise OperationFailure("$trunc takes 1 or 2 arguments", code=ErrorCode.Location28667)
    value = parser.parse(args[0])
    place = parser.parse(args[1]) if len(args) == 2 else 0
    if value is NOTHING or value is None:
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


# -- arithmetic expressions with BSON numeric types ------------------------------------------------
# MongoDB's result type is the widest operand type (int < long < double < decimal), an int
# result that overflows widens to long and a long one to double; Python ints alone lose "long".

_INT, _LONG, _DOUBLE, _DECIMAL = range(4)


def numeric_rank(value: Any) -> int | None:
    """The BSON numeric type of a value (int < long < double < decimal), None if no number."""
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
    if any(v is None or v is NOTHING for v in values):
        return None
    for value in values:
        if numeric_rank(value) is None and not (name in ("$add", "$subtract")
                                          and isinstance(value, datetime.datetime)):
            raise OperationFailure(f"{name} only supports numeric types, not "
                                   f"{bson_type_name(value)}", code=ErrorCode.TypeMismatch)
    return values


def _combine(values: list[Any], op: Callable[[Any, Any], Any]) -> Any:
    rank = max(r for r in (numeric_rank(v) for v in values) if r is not None)
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
    if _DECIMAL in (numeric_rank(a), numeric_rank(b)):
        return Decimal128(_as_decimal(_exact(a)) / _as_decimal(_exact(b)))
    return float(_exact(a)) / float(_exact(b))


def _mod_expression(parser: Any, operand: Any) -> Any:
    values = _numeric_args(parser, "$mod", operand, 2)
    if values is None:
        return None
    a, b = values
    if _exact(b) == 0:
        raise OperationFailure("can't $mod by zero", code=ErrorCode.Location16610)
    rank = max(numeric_rank(a) or 0, numeric_rank(b) or 0)
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
        rank = numeric_rank(value)
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
    ranks = (numeric_rank(base) or 0, numeric_rank(exponent) or 0)
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
    rank = numeric_rank(value)
    assert rank is not None
    try:
        rounded = _as_decimal(_exact(value)).quantize(Decimal(1).scaleb(-place),
                                                        rounding="ROUND_HALF_EVEN")
    except InvalidOperation:
        return value  # beyond the precision: nothing to round at that place
    if rank in (_INT, _LONG):
        return _typed_number(int(rounded), rank)
    return _typed_number(rounded if rank == _DECIMAL else float(rounded), rank)


def sum_values(values: list[Any]) -> Any:
    """``$sum`` of values: the numbers among them added in BSON types (0 if there are none)."""
    numbers = [v for v in values if numeric_rank(v) is not None]
    return _combine(numbers, operator.add) if numbers else 0


def avg_values(values: list[Any]) -> Any:
    """``$avg`` of values: the mean of the numbers among them (a double, or a decimal if one
    is decimal), null if there are none."""
    numbers = [v for v in values if numeric_rank(v) is not None]
    if not numbers:
        return None
    if any(numeric_rank(v) == _DECIMAL for v in numbers):
        return Decimal128(sum(_as_decimal(_exact(v)) for v in numbers) / len(numbers))
    return float(sum(float(_exact(v)) for v in numbers) / len(numbers))


def _operand_values(parser: Any, operand: Any) -> list[Any]:
    if isinstance(operand, list):
        return [parser.parse(a) for a in operand]
    single = parser.parse(operand)
    return single if isinstance(single, list) else [single]


def _sum_expression(parser: Any, operand: Any) -> Any:
    return sum_values(_operand_values(parser, operand))


def _avg_expression(parser: Any, operand: Any) -> Any:
    return avg_values(_operand_values(parser, operand))


def _trigonometric(name: str, apply: Callable[[float], float],
                   domain: tuple[float, float] | None = None) -> Callable[[Any, Any], Any]:
    def evaluate(parser: Any, operand: Any) -> Any:
        values = _numeric_args(parser, name, operand, 1)
        if values is None:
            return None
        [value] = values
        number = float(_exact(value))
        if domain is not None and not domain[0] <= number <= domain[1]:
            raise OperationFailure(f"cannot apply {name} to {value}, value must be in "
                                   f"[{domain[0]},{domain[1]}]", code=ErrorCode.Location50989)
        if math.isinf(number) and name in ("$sin", "$cos", "$tan"):
            raise OperationFailure(f"cannot apply {name} to {value}, value must be in "
                                   "(-inf,inf)", code=ErrorCode.Location50989)
        result = apply(number)
        return Decimal128(_as_decimal(result)) if numeric_rank(value) == _DECIMAL else result

    return evaluate


def _sqrt_expression(parser: Any, operand: Any) -> Any:
    values = _numeric_args(parser, "$sqrt", operand, 1)
    if values is None:
        return None
    [value] = values
    if _exact(value) < 0:
        raise OperationFailure("$sqrt's argument must be greater than or equal to 0",
                               code=ErrorCode.Location28714)
    if numeric_rank(value) == _DECIMAL:
        return Decimal128(_as_decimal(_exact(value)).sqrt())
    return math.sqrt(float(_exact(value)))


def _atan2_expression(parser: Any, operand: Any) -> Any:
    values = _numeric_args(parser, "$atan2", operand, 2)
    if values is None:
        return None
    result = math.atan2(float(_exact(values[0])), float(_exact(values[1])))
    if _DECIMAL in (numeric_rank(values[0]), numeric_rank(values[1])):
        return Decimal128(_as_decimal(result))
    return result


#: The arithmetic expression operators this module implements, by name.
HANDLERS: dict[str, Callable[[Any, Any], Any]] = {
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
    "$trunc": _trunc_expression,
    "$sqrt": _sqrt_expression,
    "$sin": _trigonometric("$sin", math.sin),
    "$cos": _trigonometric("$cos", math.cos),
    "$tan": _trigonometric("$tan", math.tan),
    "$asin": _trigonometric("$asin", math.asin, (-1.0, 1.0)),
    "$acos": _trigonometric("$acos", math.acos, (-1.0, 1.0)),
    "$atan": _trigonometric("$atan", math.atan),
    "$atan2": _atan2_expression,
    "$sinh": _trigonometric("$sinh", math.sinh),
    "$cosh": _trigonometric("$cosh", math.cosh),
    "$tanh": _trigonometric("$tanh", math.tanh),
    "$asinh": _trigonometric("$asinh", math.asinh),
    "$acosh": _trigonometric("$acosh", math.acosh, (1.0, math.inf)),
    "$atanh": _trigonometric("$atanh", math.atanh, (-1.0, 1.0)),
    "$degreesToRadians": _trigonometric("$degreesToRadians", math.radians),
    "$radiansToDegrees": _trigonometric("$radiansToDegrees", math.degrees),
}
