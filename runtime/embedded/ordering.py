"""BSON comparison order as hashable, totally ordered Python keys.

MongoDB compares values of different types by a fixed type order (MinKey < null < numbers <
strings < objects < arrays < binary < ObjectId < booleans < dates < timestamps < regex < MaxKey)
and numbers across int32/int64/double/decimal by value. Index entries and sort keys use the
tuples built here, so Python's tuple comparison gives MongoDB's order and equal values (1, 1.0,
Int64(1)) give equal, equally hashed keys, which is what unique indexes need.
"""

from __future__ import annotations

import datetime
import math
import re
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from bson import ObjectId, Regex
from bson.binary import Binary
from bson.decimal128 import Decimal128
from bson.max_key import MaxKey
from bson.min_key import MinKey
from bson.timestamp import Timestamp

MINKEY = 0
UNDEFINED = 5  # the key of an empty array in an index
NULL = 10
NUMBER = 20
STRING = 30
OBJECT = 40
ARRAY = 50
BINARY = 60
OBJECT_ID = 70
BOOLEAN = 80
DATE = 90
TIMESTAMP = 100
REGEX = 110
MAXKEY = 200

Key = tuple[Any, ...]
#: The key of null (and of a missing field in an index); tuples are immutable, so one is shared.
NULL_KEY: Key = (NULL,)


class _Extreme:
    """A value below (or above) every other value; used for open index range bounds."""

    def __init__(self, above: bool) -> None:
        self.above = above

    def __lt__(self, other: object) -> bool:
        return not self.above and other is not self

    def __gt__(self, other: object) -> bool:
        return self.above and other is not self

    def __le__(self, other: object) -> bool:
        return not self.above or other is self

    def __ge__(self, other: object) -> bool:
        return self.above or other is self

    def __eq__(self, other: object) -> bool:
        return other is self

    def __hash__(self) -> int:
        return id(self)

    def __repr__(self) -> str:
        return "TOP" if self.above else "BOTTOM"


TOP = _Extreme(above=True)
BOTTOM = _Extreme(above=False)


def type_bracket(value: Any) -> int:
    """The canonical type bracket of a value (the first element of its key)."""
    bracket = _EXACT_BRACKETS.get(type(value))
    if bracket is not None:
        return bracket
    if value is None:
        return NULL
    if isinstance(value, bool):
        return BOOLEAN
    if isinstance(value, int | float | Decimal128 | Decimal):
        return NUMBER
    if isinstance(value, str):
        return STRING
    if isinstance(value, dict):
        return OBJECT
    if isinstance(value, list | tuple):
        return ARRAY
    if isinstance(value, bytes | Binary):
        return BINARY
    if isinstance(value, ObjectId):
        return OBJECT_ID
    if isinstance(value, datetime.datetime):
        return DATE
    if isinstance(value, Timestamp):
        return TIMESTAMP
    if isinstance(value, Regex | re.Pattern):
        return REGEX
    if isinstance(value, MinKey):
        return MINKEY
    if isinstance(value, MaxKey):
        return MAXKEY
    return STRING


# Brackets of the exact types decoded BSON values have (subclasses take the general path).
_EXACT_BRACKETS: dict[type, int] = {
    type(None): NULL, bool: BOOLEAN, int: NUMBER, float: NUMBER, str: STRING, dict: OBJECT,
    list: ARRAY, datetime.datetime: DATE, ObjectId: OBJECT_ID,
}


def _number(value: Any) -> Key:
    if isinstance(value, Decimal128):
        value = value.to_decimal()
    if isinstance(value, Decimal):
        if value.is_nan():
            return (NUMBER, 0, 0)
        if value.is_infinite():
            return (NUMBER, 1, math.inf if value > 0 else -math.inf)
        if value == value.to_integral_value():
            return (NUMBER, 1, int(value))
        return (NUMBER, 1, value)
    if isinstance(value, float) and math.isnan(value):
        return (NUMBER, 0, 0)
    return (NUMBER, 1, value)


def value_key(value: Any) -> Key:
    """The comparison key of one BSON value (arrays compared element by element)."""
    # The exact types decoded documents hold most often first (subclasses, such as bool of
    # int, take the general path below).
    kind = type(value)
    if kind is str:
        return (STRING, value)
    if kind is int:
        return (NUMBER, 1, value)
    if kind is ObjectId:
        return (OBJECT_ID, value.binary)
    if value is None:
        return NULL_KEY
    if kind is datetime.datetime and value.tzinfo is None:
        return (DATE, value)
    if kind is float and value == value:  # not NaN
        return (NUMBER, 1, value)
    if kind is bool:
        return (BOOLEAN, value)
    bracket = type_bracket(value)
    if bracket == NUMBER:
        return _number(value)
    if bracket in (NULL, MINKEY, MAXKEY):
        return (bracket,)
    if bracket == STRING:
        return (STRING, str(value))
    if bracket == OBJECT:
        return (OBJECT, tuple((type_bracket(v), k, value_key(v)) for k, v in value.items()))
    if bracket == ARRAY:
        return (ARRAY, tuple(value_key(v) for v in value))
    if bracket == BINARY:
        subtype = value.subtype if isinstance(value, Binary) else 0
        return (BINARY, len(value), subtype, bytes(value))
    if bracket == OBJECT_ID:
        return (OBJECT_ID, value.binary)
    if bracket == BOOLEAN:
        return (BOOLEAN, bool(value))
    if bracket == DATE:
        if value.tzinfo is not None:
            value = value.astimezone(datetime.UTC).replace(tzinfo=None)
        return (DATE, value)
    if bracket == TIMESTAMP:
        return (TIMESTAMP, value.time, value.inc)
    pattern = value.pattern if isinstance(value, Regex | re.Pattern) else str(value)
    flags = value.flags if isinstance(value, Regex) else 0
    return (REGEX, str(pattern), str(flags))


def id_key(value: Any) -> Key:
    """Hashable identity of an ``_id`` value; equal ``_id`` values give equal keys."""
    if type(value) is ObjectId:  # the usual _id, without a second call
        return (OBJECT_ID, value.binary)
    return value_key(value)


MISSING = object()


def get_path(doc: Any, path: str) -> Any:
    """Value at a dotted path, descending into arrays of documents; ``MISSING`` if absent.

    When the path crosses an array, the result is the list of the values found in its elements
    (MongoDB's array traversal), flattened one level.
    """
    current: Any = doc
    parts = path.split(".")
    for index, part in enumerate(parts):
        if isinstance(current, dict):
            if part not in current:
                return MISSING
            current = current[part]
        elif isinstance(current, list):
            if part.isdigit() and int(part) < len(current):
                current = current[int(part)]
                continue
            rest = ".".join(parts[index:])
            found = []
            for element in current:
                if isinstance(element, dict):
                    value = get_path(element, rest)
                    if value is not MISSING:
                        found.append(value)
            return found if found else MISSING
        else:
            return MISSING
    return current


def sort_value_key(value: Any, descending: bool) -> Key:
    """Sort key of a field value: an array sorts by its lowest (or highest) element."""
    if value is MISSING:
        return (NULL,)
    if isinstance(value, list):
        if not value:
            return (UNDEFINED,)
        keys = [value_key(v) for v in value]
        return max(keys) if descending else min(keys)
    return value_key(value)


class Reverse:
    """Wraps a key so that it sorts in descending order."""

    __slots__ = ("key",)

    def __init__(self, key: Key) -> None:
        self.key = key

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, Reverse):
            return NotImplemented
        return bool(other.key < self.key)

    def __gt__(self, other: object) -> bool:
        if not isinstance(other, Reverse):
            return NotImplemented
        return bool(self.key < other.key)

    def __le__(self, other: object) -> bool:
        if not isinstance(other, Reverse):
            return NotImplemented
        return bool(not other.key > self.key)

    def __ge__(self, other: object) -> bool:
        if not isinstance(other, Reverse):
            return NotImplemented
        return bool(not self.key > other.key)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Reverse) and other.key == self.key

    def __hash__(self) -> int:
        return hash(self.key)


def document_sort_key(doc: dict[str, Any], sort: list[tuple[str, int]],
                      collate: Callable[[Any], Any] | None = None) -> tuple[Any, ...]:
    """Key that orders documents by a sort specification such as ``[("a", 1), ("b", -1)]``.

    ``collate`` (a collation's value transform) makes strings compare by that collation."""
    parts: list[Any] = []
    for field, direction in sort:
        descending = direction < 0
        value = get_path(doc, field)
        if collate is not None:
            value = collate(value)
        key = sort_value_key(value, descending)
        parts.append(Reverse(key) if descending else key)
    return tuple(parts)
