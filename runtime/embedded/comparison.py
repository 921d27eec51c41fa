"""BSON comparison, type names and truthiness.

mongomock-ng compares with Python's operators, which gets BSON wrong in several ways: True == 1,
Decimal128 never equals (or fails to compare with) an int, embedded documents compare without
regard to field order, Int64 reports $type "int". These primitives are built on
:mod:`runtime.embedded.ordering`, the same keys that indexes and sorts use.
"""

from __future__ import annotations

import datetime
import operator
import re
from collections.abc import Callable
from typing import Any

from bson import ObjectId, Regex
from bson.binary import Binary
from bson.decimal128 import Decimal128
from bson.int64 import Int64
from bson.max_key import MaxKey
from bson.min_key import MinKey
from bson.timestamp import Timestamp

from runtime.embedded.engine_support import INT32_MAX, INT32_MIN, NOTHING
from runtime.embedded.ordering import Key, value_key


def to_bool(value: Any) -> bool:
    """MongoDB truthiness: only false, null, missing (undefined) and numeric zero of any type
    (int, long, double, decimal; -0 too) are false; ``""``, ``{}``, ``[]`` and NaN are true."""
    if value is True:
        return True
    if value is False or value is None or value is NOTHING:
        return False
    kind = type(value)
    if kind is int or kind is float or kind is Int64:
        return bool(value != 0)
    if kind is Decimal128:
        return not value.to_decimal().is_zero()
    return True


#: The ordering operators, by name (the same in queries and expressions; BSON order).
COMPARISONS: dict[str, Callable[[Any, Any], bool]] = {
    "$gt": operator.gt, "$gte": operator.ge, "$lt": operator.lt, "$lte": operator.le,
}


def _key(value: Any) -> Key:
    return value_key(None if value is NOTHING else value)


# Types whose Python equality is MongoDB's equality between two values of that same type.
_PLAIN_EQUALITY = frozenset({str, int, bool, ObjectId, type(None)})


def bson_equal(a: Any, b: Any) -> bool:
    """MongoDB equality of two values (numbers by value across types, field order matters)."""
    kind = type(a)
    if kind is type(b) and kind in _PLAIN_EQUALITY:
        return bool(a == b)
    if a is NOTHING or b is NOTHING:
        return (a is NOTHING or a is None) and (b is NOTHING or b is None)
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
    if value is NOTHING:
        return "missing"
    for name, test in TYPE_TESTS.items():
        if test(value):
            return name
    return "object" if isinstance(value, dict) else "unknown"


TYPE_TESTS: dict[str, Callable[[Any], bool]] = {
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
TYPE_CODES = {1: "double", 2: "string", 3: "object", 4: "array", 5: "binData", 7: "objectId",
               8: "bool", 9: "date", 10: "null", 11: "regex", 16: "int", 17: "timestamp",
               18: "long", 19: "decimal", -1: "minKey", 127: "maxKey"}


def ordering_key(value: Any) -> Key:
    """The BSON ordering key of a value (a missing value orders like null)."""
    return _key(value)


