"""Bounds on what one expression may cost, and MongoDB's errors for malformed ones.

The engine evaluates every expression node through one hook
(:func:`runtime.embedded.engine._parse_expression`); it asks :func:`check_shape` whether the
operator's argument has a shape MongoDB accepts (its parse-time errors: arity 16020, "only
supports an object" ...) and :func:`check_result` whether a string or array it built stays within
MongoDB's limits. Operators whose cost grows with an argument's *value* are bounded before they
run: powers fall back to double exactly where MongoDB's int64 arithmetic would overflow (so
``$pow: [3, NumberLong(30000000)]`` is an instant ``inf``), and ``$range`` refuses an output over
``internalQueryMaxRangeBytes`` (ExceededMemoryLimit 146) before allocating it; any other string
or array an expression builds is held to the same 100 MiB (146): ``$concat``,
``$concatArrays`` and ``$split`` are checked from their evaluated arguments before they build
anything (:func:`check_operands`), the others once built (:func:`check_result`).
"""

from __future__ import annotations

import enum
import math
from typing import Any

from runtime.embedded.errors import CommandError, ErrorCode

#: MongoDB's ``internalQueryMaxRangeBytes`` (100 MiB) and the bytes it counts per element.
MAX_RANGE_BYTES = 100 * 1024 * 1024
_RANGE_ELEMENT_BYTES = 16
_RANGE_ARRAY_BYTES = 24
#: What a string or array built by one expression may hold (the same 100 MiB as ``$range``).
#: A stored document is held to 16 MiB separately (:mod:`runtime.embedded.document_rules`).
MAX_BUILT_BYTES = 100 * 1024 * 1024
#: Nesting MongoDB accepts in any BSON it receives (``BSONDepth::kDefaultMaxAllowableDepth``).
MAX_BSON_DEPTH = 200


class Code(enum.IntEnum):
    """MongoDB's codes for malformed or too costly expressions."""

    BAD_VALUE = 2
    OVERFLOW = 15
    EXCEEDED_MEMORY_LIMIT = 146
    WRONG_ARITY = 16020
    LET_NOT_OBJECT = 16874
    MAP_NOT_OBJECT = 16878
    DATE_TO_STRING_NOT_OBJECT = 18629
    FILTER_NOT_OBJECT = 28646
    REDUCE_NOT_OBJECT = 40075
    SWITCH_NOT_OBJECT = 40060
    IN_NOT_ARRAY = 40081
    SIZE_NOT_ARRAY = 17124


# Operators taking a fixed number of arguments: (fewest, most). MongoDB's parser refuses any
# other count with 16020 "Expression $op takes exactly N arguments. M were passed in."
_ARITY: dict[str, tuple[int, int]] = {
    **{op: (2, 2) for op in ("$eq", "$ne", "$gt", "$gte", "$lt", "$lte", "$cmp", "$in",
                             "$arrayElemAt", "$setDifference", "$setIsSubset", "$pow",
                             "$divide", "$mod", "$subtract", "$strcasecmp", "$split",
                             "$log")},
    **{op: (1, 1) for op in ("$size", "$not", "$abs", "$ceil", "$floor", "$exp", "$ln",
                             "$log10", "$sqrt", "$isArray", "$toUpper", "$toLower",
                             "$strLenBytes", "$strLenCP", "$objectToArray",
                             "$arrayToObject", "$reverseArray", "$toString", "$toInt",
                             "$toLong", "$toDouble", "$toDecimal", "$toBool", "$toDate",
                             "$toObjectId", "$type", "$anyElementTrue", "$allElementsTrue")},
    "$cond": (3, 3),
    "$ifNull": (2, 1 << 30),
    "$slice": (2, 3),
    "$substr": (3, 3),
    "$substrCP": (3, 3),
    "$substrBytes": (3, 3),
    "$indexOfArray": (2, 4),
    "$indexOfCP": (2, 4),
    "$indexOfBytes": (2, 4),
}
# Operators whose argument must be an object, with the code MongoDB refuses anything else with.
_OBJECT_ONLY: dict[str, Code] = {
    "$let": Code.LET_NOT_OBJECT,
    "$map": Code.MAP_NOT_OBJECT,
    "$filter": Code.FILTER_NOT_OBJECT,
    "$reduce": Code.REDUCE_NOT_OBJECT,
    "$switch": Code.SWITCH_NOT_OBJECT,
    "$dateToString": Code.DATE_TO_STRING_NOT_OBJECT,
}
# Operators allowed to take a single non-array argument as their one argument.
_SINGLE_ALLOWED = frozenset(op for op, (low, _) in _ARITY.items() if low == 1)
_CONDITIONAL_FIELDS = ("if", "then", "else")


def check_shape(name: str, operand: Any) -> None:
    """Raise MongoDB's parse error if ``operand`` cannot be the argument of ``name``."""
    code = _OBJECT_ONLY.get(name)
    if code is not None:
        if not isinstance(operand, dict):
            raise CommandError(code, f"{name} only supports an object as its argument")
        return
    bounds = _ARITY.get(name)
    if bounds is None:
        return
    if name == "$cond" and isinstance(operand, dict):
        missing = [f for f in _CONDITIONAL_FIELDS if f not in operand]
        if missing:
            raise CommandError(ErrorCode.Location17080,
                               f"Missing '{missing[0]}' parameter to $cond")
        return
    count = len(operand) if isinstance(operand, list) else 1
    if not isinstance(operand, list) and name not in _SINGLE_ALLOWED:
        count = 1
    low, high = bounds
    if not low <= count <= high:
        if low == high:
            wanted = f"exactly {low} argument{'s' if low != 1 else ''}"
        else:
            wanted = f"at least {low} and at most {high} arguments"
        raise CommandError(Code.WRONG_ARITY, f"Expression {name} takes {wanted}. {count} were "
                           "passed in.")


def check_result(name: str, value: Any) -> None:
    """ExceededMemoryLimit (146) for a built string or array over :data:`MAX_BUILT_BYTES`."""
    if isinstance(value, str):
        if len(value) > MAX_BUILT_BYTES // 4 and len(value.encode("utf-8", "surrogatepass")) \
                > MAX_BUILT_BYTES:
            raise CommandError(Code.EXCEEDED_MEMORY_LIMIT, f"{name} would produce a string over "
                               f"the memory limit of {MAX_BUILT_BYTES} bytes")
    elif isinstance(value, list) and len(value) > MAX_BUILT_BYTES // _RANGE_ELEMENT_BYTES:
        raise CommandError(Code.EXCEEDED_MEMORY_LIMIT, f"{name} would produce an array over "
                           f"the memory limit of {MAX_BUILT_BYTES} bytes")


#: Builders whose result size follows from their evaluated arguments: checked before building.
PRECHECKED = frozenset({"$concat", "$concatArrays", "$split"})
_MAX_ELEMENTS = MAX_BUILT_BYTES // _RANGE_ELEMENT_BYTES


def check_operands(name: str, values: list[Any]) -> None:
    """ExceededMemoryLimit (146) before ``name`` (one of :data:`PRECHECKED`) builds a string or
    array over the limit from the evaluated ``values`` (``$concat`` of a 16 MB string 1,000
    times must not allocate 16 GB first). Wrong types are left to the operator itself."""
    if name == "$concat":
        strings = [v for v in values if isinstance(v, str)]
        if sum(len(s) for s in strings) * 4 > MAX_BUILT_BYTES \
                and _utf8_length(strings) > MAX_BUILT_BYTES:
            _too_big(name, "a string")
    elif name == "$concatArrays":
        if sum(len(v) for v in values if isinstance(v, list)) > _MAX_ELEMENTS:
            _too_big(name, "an array")
    elif name == "$split" and len(values) == 2:
        text, separator = values
        if isinstance(text, str) and isinstance(separator, str) and separator \
                and len(text) // len(separator) >= _MAX_ELEMENTS \
                and text.count(separator) >= _MAX_ELEMENTS:
            _too_big(name, "an array")


def _utf8_length(strings: list[str]) -> int:
    """The UTF-8 size of ``strings`` together, stopping as soon as it is over the limit."""
    total = 0
    for s in strings:
        # Code points are a lower bound on bytes; encoding is needed only for non-ASCII text.
        total += len(s) if s.isascii() else len(s.encode("utf-8", "surrogatepass"))
        if total > MAX_BUILT_BYTES:
            break
    return total


def _too_big(name: str, what: str) -> None:
    raise CommandError(Code.EXCEEDED_MEMORY_LIMIT, f"{name} would produce {what} over the "
                       f"memory limit of {MAX_BUILT_BYTES} bytes")


def check_range(start: Any, end: Any, step: Any) -> None:
    """ExceededMemoryLimit (146) before a ``$range`` builds more than MongoDB allows."""
    if not all(isinstance(v, int | float) and not isinstance(v, bool)
               for v in (start, end, step)) or not step:
        return  # the engine reports the type errors
    steps = math.floor((end - start) / step) if math.isfinite((end - start) / step) else 0
    length = max(0, steps + 1)
    needed = _RANGE_ARRAY_BYTES + length * _RANGE_ELEMENT_BYTES
    if needed >= MAX_RANGE_BYTES:
        raise CommandError(Code.EXCEEDED_MEMORY_LIMIT, f"$range would use too much memory "
                           f"({needed} bytes) and cannot spill to disk. Memory limit: "
                           f"{MAX_RANGE_BYTES} bytes")


def int_power(base: int, exponent: int) -> int | float:
    """``base ** exponent`` for integers with ``exponent >= 0``, as MongoDB computes it: exact
    while the result fits in 64 bits, a double (possibly infinite) beyond, never a huge int."""
    if base in (0, 1) or exponent == 0:
        return base**exponent if exponent else 1
    if base == -1:
        return 1 if exponent % 2 == 0 else -1
    # |base| >= 2: a result within int64 needs exponent < 64.
    if exponent < 64:
        exact = int(base**exponent)
        if -(2**63) <= exact < 2**63:
            return exact
    return float_power(float(base), float(exponent))


def float_power(base: float, exponent: float) -> float:
    """``base ** exponent`` in doubles: infinite (not an error) when it overflows, NaN where
    there is no real result."""
    try:
        return math.pow(base, exponent)
    except OverflowError:
        negative = base < 0 and exponent.is_integer() and int(exponent) % 2 == 1
        return -math.inf if negative else math.inf
    except ValueError:
        if base == 0 and exponent < 0:
            return math.inf
        return math.nan


def to_double(value: int) -> float:
    """An integer as a double; one beyond the double range is infinite (as in C++)."""
    try:
        return float(value)
    except OverflowError:
        return math.inf if value > 0 else -math.inf
