"""String expressions that mongomock-ng lacks.

``$replaceOne``/``$replaceAll``, ``$strLenBytes``/``$strLenCP``, ``$substrBytes``/``$substrCP``
and ``$indexOfBytes``/``$indexOfCP``: the ``Bytes`` forms count UTF-8 bytes, the ``CP`` forms
code points. Every handler takes the expression parser and the operand.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable
from typing import Any

from bson.decimal128 import Decimal128
from pymongo.errors import OperationFailure

from runtime.embedded.comparison import bson_type_name
from runtime.embedded.engine_support import NOTHING
from runtime.embedded.errors import ErrorCode


def _nullish(value: Any) -> bool:
    return value is None or value is NOTHING


def _replace(name: str, count: int) -> Callable[[Any, Any], Any]:
    def evaluate(parser: Any, operand: Any) -> Any:
        if not isinstance(operand, dict):
            raise OperationFailure(f"{name} requires an object as an argument, found: "
                                   f"{bson_type_name(operand)}", code=ErrorCode.Location51751)
        for key in ("input", "find", "replacement"):
            if key not in operand:
                raise OperationFailure(f"{name} requires '{key}' to be specified",
                                       code=ErrorCode.Location51748)
        for key in operand:
            if key not in ("input", "find", "replacement"):
                raise OperationFailure(f"{name} found an unknown argument: {key}",
                                       code=ErrorCode.Location51750)
        values = [parser.parse(operand[k]) for k in ("input", "find", "replacement")]
        for key, value in zip(("input", "find", "replacement"), values, strict=True):
            if not _nullish(value) and not isinstance(value, str):
                raise OperationFailure(f"{name} requires that '{key}' be a string, found: "
                                       f"{bson_type_name(value)}", code=ErrorCode.Location51746)
        if any(_nullish(v) for v in values):
            return None
        text, find, replacement = values
        return text.replace(find, replacement, count)

    return evaluate


def _length(name: str, code: ErrorCode, measure: Callable[[str], int]) -> Callable[[Any, Any], Any]:
    def evaluate(parser: Any, operand: Any) -> Any:
        args = operand if isinstance(operand, list) else [operand]
        if len(args) != 1:
            raise OperationFailure(f"Expression {name} takes exactly 1 arguments. {len(args)} "
                                   "were passed in.", code=ErrorCode.Location16020)
        value = parser.parse(args[0])
        if not isinstance(value, str):
            raise OperationFailure(f"{name} requires a string argument, found: "
                                   f"{bson_type_name(value)}", code=code)
        return measure(value)

    return evaluate


def _as_string(value: Any) -> str:
    """The string ``$substr*`` works on (null is "", numbers and dates are converted)."""
    if _nullish(value):
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, datetime.datetime):
        return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"
    if isinstance(value, int | float | Decimal128) and not isinstance(value, bool):
        return str(value)
    raise OperationFailure(f"can't convert from BSON type {bson_type_name(value)} to String",
                           code=ErrorCode.Location16007)


def _integer_argument(value: Any, name: str, what: str, code: ErrorCode) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float | Decimal128):
        raise OperationFailure(f"{name}: {what} must be a numeric type (is BSON type "
                               f"{bson_type_name(value)})", code=code)
    number = value.to_decimal() if isinstance(value, Decimal128) else value
    if number != int(number):
        raise OperationFailure(f"{name}: {what} must be an integer", code=code)
    return int(number)


def _substr_cp(parser: Any, operand: Any) -> Any:
    if not isinstance(operand, list) or len(operand) != 3:
        raise OperationFailure("Expression $substrCP takes exactly 3 arguments.",
                               code=ErrorCode.Location16020)
    text, start, count = (parser.parse(a) for a in operand)
    text = _as_string(text)
    first = _integer_argument(start, "$substrCP", "starting index", ErrorCode.Location34450)
    length = _integer_argument(count, "$substrCP", "length", ErrorCode.Location34452)
    if first < 0:
        raise OperationFailure("$substrCP: starting index must be non-negative",
                               code=ErrorCode.Location34455)
    if length < 0:
        raise OperationFailure("$substrCP: length must be a nonnegative integer.",
                               code=ErrorCode.Location34454)
    return text[first:first + length]


def _substr_bytes(parser: Any, operand: Any) -> Any:
    if not isinstance(operand, list) or len(operand) != 3:
        raise OperationFailure("Expression $substrBytes takes exactly 3 arguments.",
                               code=ErrorCode.Location16020)
    text, start, count = (parser.parse(a) for a in operand)
    data = _as_string(text).encode("utf-8")
    first = _integer_argument(start, "$substrBytes", "starting index", ErrorCode.Location16034)
    length = _integer_argument(count, "$substrBytes", "length", ErrorCode.Location16035)
    if first < 0:
        raise OperationFailure("$substrBytes: starting index must be non-negative",
                               code=ErrorCode.Location50752)
    end = len(data) if length < 0 else first + length
    try:
        return data[first:end].decode("utf-8")
    except UnicodeDecodeError as exc:
        raise OperationFailure("$substrBytes: invalid range, starting index or ending index is "
                               "a UTF-8 continuation byte", code=ErrorCode.Location28656) from exc


def _index_of(name: str, codes: tuple[ErrorCode, ErrorCode],
              in_bytes: bool) -> Callable[[Any, Any], Any]:
    def evaluate(parser: Any, operand: Any) -> Any:
        if not isinstance(operand, list) or not 2 <= len(operand) <= 4:
            raise OperationFailure(f"Expression {name} takes at least 2 arguments, and at most "
                                   "4", code=ErrorCode.Location16020)
        values = [parser.parse(a) for a in operand]
        text, token = values[0], values[1]
        if _nullish(text):
            return None
        if not isinstance(text, str):
            raise OperationFailure(f"{name} requires a string as the first argument, found: "
                                   f"{bson_type_name(text)}", code=codes[0])
        if not isinstance(token, str):
            raise OperationFailure(f"{name} requires a string as the second argument, found: "
                                   f"{bson_type_name(token)}", code=codes[1])
        bounds = [_integer_argument(v, name, "index", ErrorCode.Location40096)
                  for v in values[2:]]
        if any(b < 0 for b in bounds):
            raise OperationFailure(f"{name} requires a nonnegative start and end index",
                                   code=ErrorCode.Location40097)
        if in_bytes:
            data = text.encode("utf-8")
            return data.find(token.encode("utf-8"), *bounds)
        return text.find(token, *bounds)

    return evaluate


#: The string expression operators this module implements, by name.
HANDLERS: dict[str, Callable[[Any, Any], Any]] = {
    "$replaceOne": _replace("$replaceOne", 1),
    "$replaceAll": _replace("$replaceAll", -1),
    "$strLenBytes": _length("$strLenBytes", ErrorCode.Location34473,
                            lambda s: len(s.encode("utf-8"))),
    "$strLenCP": _length("$strLenCP", ErrorCode.Location34471, len),
    "$substrCP": _substr_cp,
    "$substrBytes": _substr_bytes,
    "$indexOfBytes": _index_of("$indexOfBytes",
                               (ErrorCode.Location40091, ErrorCode.Location40092), True),
    "$indexOfCP": _index_of("$indexOfCP", (ErrorCode.Location40093, ErrorCode.Location40094),
                            False),
}
