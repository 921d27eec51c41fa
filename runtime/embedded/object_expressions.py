"""Field, object, type and miscellaneous expressions that mongomock-ng lacks or gets wrong.

``$getField`` (the full ``{field, input}`` form too, field names with dots or ``$``),
``$setField``, ``$unsetField``, ``$rand``, ``$toBool``, ``$bsonSize`` and ``$binarySize``.
Every handler takes the expression parser and the operand.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import bson
from bson.binary import Binary
from bson.int64 import Int64
from pymongo.errors import OperationFailure

from runtime.embedded.comparison import bson_type_name, to_bool
from runtime.embedded.engine_support import NOTHING
from runtime.embedded.errors import ErrorCode

_random = random.SystemRandom()


def _nullish(value: Any) -> bool:
    return value is None or value is NOTHING


def _field_name(parser: Any, spec: Any, name: str) -> str:
    """The ``field`` argument: a constant string (``$``-prefixed only through ``$literal``)."""
    if isinstance(spec, str) and spec.startswith("$"):
        raise OperationFailure(f"{name} requires 'field' to evaluate to a constant, but got a "
                               "non-constant argument", code=ErrorCode.Location4161106)
    field = parser.parse(spec)
    if not isinstance(field, str):
        raise OperationFailure(f"{name} requires 'field' to evaluate to type String, but got "
                               f"{bson_type_name(field)}", code=ErrorCode.Location5654602)
    return field


def _full_form(operand: Any, name: str, allowed: frozenset[str],
               required: tuple[str, ...]) -> dict[str, Any]:
    for key in operand:
        if key not in allowed:
            raise OperationFailure(f"{name} found an unknown argument: {key}",
                                   code=ErrorCode.Location3041701)
    for key in required:
        if key not in operand:
            raise OperationFailure(f"{name} requires '{key}' to be specified",
                                   code=ErrorCode.Location3041702)
    return dict(operand)


def _get_field(parser: Any, operand: Any) -> Any:
    if isinstance(operand, dict) and "field" in operand:
        spec = _full_form(operand, "$getField", frozenset({"field", "input"}), ("field",))
        field = _field_name(parser, spec["field"], "$getField")
        source = parser.parse(spec.get("input", "$$CURRENT"))
    else:
        field = _field_name(parser, operand, "$getField")
        source = parser.parse("$$CURRENT")
    if not isinstance(source, dict):
        return NOTHING  # mongod treats every non-object input like null (SERVER-94854)
    return source.get(field, NOTHING)


def _changed_object(parser: Any, spec: dict[str, Any], name: str, value: Any) -> Any:
    field = _field_name(parser, spec["field"], name)
    source = parser.parse(spec["input"])
    if _nullish(source):
        return None
    if not isinstance(source, dict):
        raise OperationFailure(f"{name} requires 'input' to evaluate to type Object, but got "
                               f"{bson_type_name(source)}", code=ErrorCode.Location4161105)
    out = dict(source)
    if value is NOTHING:
        out.pop(field, None)
    else:
        out[field] = value
    return out


def _set_field(parser: Any, operand: Any) -> Any:
    if not isinstance(operand, dict):
        raise OperationFailure("$setField only supports an object as its argument",
                               code=ErrorCode.Location4161100)
    spec = _full_form(operand, "$setField", frozenset({"field", "input", "value"}),
                      ("field", "input", "value"))
    return _changed_object(parser, spec, "$setField", parser.parse(spec["value"]))


def _unset_field(parser: Any, operand: Any) -> Any:
    if not isinstance(operand, dict):
        raise OperationFailure("$unsetField only supports an object as its argument",
                               code=ErrorCode.Location4161100)
    spec = _full_form(operand, "$unsetField", frozenset({"field", "input"}), ("field", "input"))
    return _changed_object(parser, spec, "$unsetField", NOTHING)


def _rand(parser: Any, operand: Any) -> Any:
    if operand != {}:
        raise OperationFailure("$rand does not currently accept arguments",
                               code=ErrorCode.Location3040500)
    return _random.random()


def _single(parser: Any, operand: Any, name: str) -> Any:
    args = operand if isinstance(operand, list) else [operand]
    if len(args) != 1:
        raise OperationFailure(f"Expression {name} takes exactly 1 arguments. {len(args)} were "
                               "passed in.", code=ErrorCode.Location16020)
    return parser.parse(args[0])


def _to_bool(parser: Any, operand: Any) -> Any:
    value = _single(parser, operand, "$toBool")
    return None if _nullish(value) else to_bool(value)


def _bson_size(parser: Any, operand: Any) -> Any:
    value = _single(parser, operand, "$bsonSize")
    if _nullish(value):
        return None
    if not isinstance(value, dict):
        raise OperationFailure(f"$bsonSize requires a document input, found: "
                               f"{bson_type_name(value)}", code=ErrorCode.Location31393)
    return len(bson.encode(value))


def _binary_size(parser: Any, operand: Any) -> Any:
    value = _single(parser, operand, "$binarySize")
    if _nullish(value):
        return None
    if isinstance(value, str):
        size = len(value.encode("utf-8"))
    elif isinstance(value, bytes | Binary):
        size = len(value)
    else:
        raise OperationFailure(f"$binarySize requires a string or BinData argument, found: "
                               f"{bson_type_name(value)}", code=ErrorCode.Location51276)
    return size if size < 2**31 else Int64(size)


#: The expression operators this module implements, by name.
HANDLERS: dict[str, Callable[[Any, Any], Any]] = {
    "$getField": _get_field,
    "$setField": _set_field,
    "$unsetField": _unset_field,
    "$rand": _rand,
    "$toBool": _to_bool,
    "$bsonSize": _bson_size,
    "$binarySize": _binary_size,
}
