"""``$toHashedIndexKey``: the 64-bit hash a hashed index stores for a value (MongoDB 7.0).

The hash is MongoDB's: the first eight bytes (little-endian) of an MD5 digest over a seed of 0,
the value's *canonical* type and its bytes, where every number (int, long, double, decimal) is
first squashed to a 64-bit integer, so ``1``, ``1.0`` and ``Int64(1)`` hash alike (as they
compare equal) while ``"1"`` does not; embedded documents and arrays hash their elements with
their field names. Null and a missing value hash like null. The result depends only on the value,
so it is the same in every process and across restarts, which partitioned planning relies on.
"""

from __future__ import annotations

import hashlib
import math
import struct
from decimal import Decimal, InvalidOperation
from enum import IntEnum

import bson
from bson.decimal128 import Decimal128
from bson.int64 import Int64

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_SEED = struct.pack("<i", 0)


class BsonType(IntEnum):
    """BSON element type bytes."""

    DOUBLE = 0x01
    STRING = 0x02
    OBJECT = 0x03
    ARRAY = 0x04
    BINARY = 0x05
    UNDEFINED = 0x06
    OBJECT_ID = 0x07
    BOOLEAN = 0x08
    DATE = 0x09
    NULL = 0x0A
    REGEX = 0x0B
    DB_POINTER = 0x0C
    CODE = 0x0D
    SYMBOL = 0x0E
    CODE_WITH_SCOPE = 0x0F
    INT32 = 0x10
    TIMESTAMP = 0x11
    INT64 = 0x12
    DECIMAL128 = 0x13
    MIN_KEY = 0xFF
    MAX_KEY = 0x7F


# MongoDB's canonical type per BSON type: types that compare as one bracket share a number.
_CANONICAL: dict[int, int] = {
    BsonType.MIN_KEY: -1, BsonType.UNDEFINED: 0, BsonType.NULL: 5,
    BsonType.DOUBLE: 10, BsonType.INT32: 10, BsonType.INT64: 10, BsonType.DECIMAL128: 10,
    BsonType.STRING: 15, BsonType.SYMBOL: 15, BsonType.OBJECT: 20, BsonType.ARRAY: 25,
    BsonType.BINARY: 30, BsonType.OBJECT_ID: 35, BsonType.BOOLEAN: 40, BsonType.DATE: 45,
    BsonType.TIMESTAMP: 47, BsonType.REGEX: 50, BsonType.DB_POINTER: 55, BsonType.CODE: 60,
    BsonType.CODE_WITH_SCOPE: 65, BsonType.MAX_KEY: 127,
}
_FIXED_SIZE: dict[int, int] = {
    BsonType.DOUBLE: 8, BsonType.UNDEFINED: 0, BsonType.OBJECT_ID: 12, BsonType.BOOLEAN: 1,
    BsonType.DATE: 8, BsonType.NULL: 0, BsonType.INT32: 4, BsonType.TIMESTAMP: 8,
    BsonType.INT64: 8, BsonType.DECIMAL128: 16, BsonType.MIN_KEY: 0, BsonType.MAX_KEY: 0,
}
_STRING_LIKE = frozenset({BsonType.STRING, BsonType.CODE, BsonType.SYMBOL})
_EMBEDDED = frozenset({BsonType.OBJECT, BsonType.ARRAY})


def _cstring_end(data: bytes, start: int) -> int:
    return data.index(b"\x00", start) + 1


def _value_size(data: bytes, kind: int, start: int) -> int:
    fixed = _FIXED_SIZE.get(kind)
    if fixed is not None:
        return fixed
    if kind in _STRING_LIKE:
        return 4 + int(struct.unpack_from("<i", data, start)[0])
    if kind in _EMBEDDED or kind == BsonType.CODE_WITH_SCOPE:
        return int(struct.unpack_from("<i", data, start)[0])
    if kind == BsonType.BINARY:
        return 5 + int(struct.unpack_from("<i", data, start)[0])
    if kind == BsonType.REGEX:
        return _cstring_end(data, _cstring_end(data, start)) - start
    if kind == BsonType.DB_POINTER:
        return 4 + int(struct.unpack_from("<i", data, start)[0]) + 12
    raise ValueError(f"unknown BSON type {kind:#x}")


def _clamped(value: float | Decimal) -> int:
    """A double or decimal as a 64-bit integer: truncated, NaN as 0, saturated at the ends."""
    if isinstance(value, float) and math.isnan(value):
        return 0
    if isinstance(value, Decimal) and value.is_nan():
        return 0
    if value >= 2**63:
        return _INT64_MAX
    if value <= _INT64_MIN:
        return _INT64_MIN
    return int(value)


def _number_as_long(data: bytes, kind: int, start: int) -> int:
    if kind == BsonType.INT32:
        return int(struct.unpack_from("<i", data, start)[0])
    if kind == BsonType.INT64:
        return int(struct.unpack_from("<q", data, start)[0])
    if kind == BsonType.DOUBLE:
        return _clamped(float(struct.unpack_from("<d", data, start)[0]))
    decimal = Decimal128.from_bid(data[start:start + 16])
    try:
        return _clamped(decimal.to_decimal())
    except InvalidOperation:
        return 0


def _hash_element(md5: hashlib._Hash, data: bytes, at: int, with_name: bool) -> int:
    """Feed the element at ``at`` into ``md5``; returns the offset after it."""
    kind = data[at]
    name_end = _cstring_end(data, at + 1)
    md5.update(struct.pack("<i", _CANONICAL[kind]))
    if with_name:
        md5.update(data[at + 1:name_end])
    size = _value_size(data, kind, name_end)
    if kind in _EMBEDDED:
        _hash_elements(md5, data, name_end)
    elif kind in (BsonType.INT32, BsonType.INT64, BsonType.DOUBLE, BsonType.DECIMAL128):
        md5.update(struct.pack("<q", _number_as_long(data, kind, name_end)))
    else:
        md5.update(data[name_end:name_end + size])
    return name_end + size


def _hash_elements(md5: hashlib._Hash, data: bytes, start: int) -> None:
    """Every element of the embedded document at ``start``, then its terminator."""
    at = start + 4
    while data[at] != 0:
        at = _hash_element(md5, data, at, True)
    md5.update(struct.pack("<i", 0))  # the end-of-object marker: canonical type 0, no name


def hashed_index_key(value: object) -> Int64:
    """The hashed-index key of ``value`` (``None`` for null or missing)."""
    encoded = bson.encode({"": value})
    md5 = hashlib.md5(_SEED, usedforsecurity=False)
    _hash_element(md5, encoded, 4, False)
    return Int64(struct.unpack("<q", md5.digest()[:8])[0])
