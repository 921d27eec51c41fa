"""Typed access to command fields, with mongod's errors for values of the wrong type.

mongod parses every command with generated (IDL) parsers that name the offending field and
the types it accepts, e.g. TypeMismatch (14) "BSON field 'find.limit' is the wrong type
'string', expected types '[long, int, decimal, double]'". :class:`Fields` gives handlers the
same checks in one line per field, so a wrong type is a typed error, never a Python exception
that ends as "internal error".
"""

from __future__ import annotations

import datetime
import math
import re
import uuid
from collections.abc import Sequence
from typing import Any

from bson import DBRef, ObjectId, Regex
from bson.binary import Binary
from bson.code import Code
from bson.decimal128 import Decimal128
from bson.int64 import Int64
from bson.max_key import MaxKey
from bson.min_key import MinKey
from bson.timestamp import Timestamp

from runtime.embedded.errors import CommandError, ErrorCode

INT32_MAX = 2**31 - 1
INT64_MAX = 2**63 - 1
INT64_MIN = -(2**63)

NUMBER_TYPES = ("long", "int", "decimal", "double")
BOOL_TYPES = ("bool", "long", "int", "decimal", "double")


def type_name(value: Any) -> str:
    """mongod's alias of the BSON type ``value`` was decoded from ("string", "object", ...)."""
    if value is None:
        return "null"
    if isinstance(value, Code):  # a str subclass
        return "javascriptWithScope" if value.scope is not None else "javascript"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, Int64):
        return "long"
    if isinstance(value, int):
        return "int" if -(2**31) <= value <= INT32_MAX else "long"
    simple: list[tuple[type | tuple[type, ...], str]] = [
        (float, "double"), (str, "string"), ((dict, DBRef), "object"), (list, "array"),
        ((bytes, Binary, uuid.UUID), "binData"), (ObjectId, "objectId"),
        (datetime.datetime, "date"), ((Regex, re.Pattern), "regex"),
        (Timestamp, "timestamp"), (Decimal128, "decimal"), (MinKey, "minKey"),
        (MaxKey, "maxKey"),
    ]
    for kind, name in simple:
        if isinstance(value, kind):
            return name
    return type(value).__name__


def wrong_type(field: str, value: Any, expected: Sequence[str]) -> CommandError:
    """TypeMismatch naming ``field`` as mongod does."""
    if len(expected) == 1:
        wanted = f"expected type '{expected[0]}'"
    else:
        wanted = f"expected types '[{', '.join(expected)}]'"
    return CommandError(ErrorCode.TypeMismatch, f"BSON field '{field}' is the wrong type "
                        f"'{type_name(value)}', {wanted}")


def missing(field: str) -> CommandError:
    """The error for a required field that is absent."""
    return CommandError(ErrorCode.Location40414, f"BSON field '{field}' is missing but a required "
                        "field")


def is_number(value: Any) -> bool:
    """Whether ``value`` is a BSON number (int, long, double, decimal; not bool)."""
    return isinstance(value, int | float | Decimal128) and not isinstance(value, bool)


def safe_long(value: Any) -> int:
    """mongod's ``safeNumberLong``: truncates, NaN is 0, out-of-range saturates."""
    if isinstance(value, Decimal128):
        value = value.to_decimal()
        if value.is_nan():
            return 0
        if value.is_infinite():
            return INT64_MAX if value > 0 else INT64_MIN
    if isinstance(value, float):
        if math.isnan(value):
            return 0
        if math.isinf(value):
            return INT64_MAX if value > 0 else INT64_MIN
    return max(INT64_MIN, min(INT64_MAX, int(value)))


class Fields:
    """The fields of one command (or of one statement of it), read with mongod's checks.

    ``prefix`` is how mongod names the enclosing object in errors: ``find`` for a find
    command, ``update.updates`` for an update statement.
    """

    def __init__(self, doc: dict[str, Any], prefix: str) -> None:
        self.doc = doc
        self.prefix = prefix

    def name(self, field: str) -> str:
        """The dotted name of ``field`` in errors."""
        return f"{self.prefix}.{field}"

    def _get(self, field: str, required: bool) -> Any:
        value = self.doc.get(field)
        if value is None and required:
            raise missing(self.name(field))
        return value

    def document(self, field: str, required: bool = False) -> dict[str, Any] | None:
        """An object field (None when absent or null)."""
        value = self._get(field, required)
        if value is not None and not isinstance(value, dict):
            raise wrong_type(self.name(field), value, ("object",))
        return value

    def array(self, field: str, required: bool = False) -> list[Any] | None:
        """An array field (None when absent or null)."""
        value = self._get(field, required)
        if value is not None and not isinstance(value, list):
            raise wrong_type(self.name(field), value, ("array",))
        return value

    def documents(self, field: str, required: bool = False) -> list[dict[str, Any]] | None:
        """An array of objects (``insert.documents``, ``update.updates``)."""
        items = self.array(field, required)
        if items is None:
            return None
        for index, item in enumerate(items):
            if not isinstance(item, dict):
                raise wrong_type(f"{self.name(field)}.{index}", item, ("object",))
        return items

    def string(self, field: str, required: bool = False) -> str | None:
        """A string field (None when absent or null)."""
        value = self._get(field, required)
        if value is not None and type(value) is not str:  # not Code, a str subclass
            raise wrong_type(self.name(field), value, ("string",))
        return value

    def boolean(self, field: str, default: bool = False) -> bool:
        """mongod's ``safeBool``: a bool or a number (non-zero is true)."""
        value = self.doc.get(field)
        if value is None:
            return default
        if isinstance(value, bool):
            return value
        if isinstance(value, Decimal128):
            return bool(value.to_decimal() != 0)
        if is_number(value):
            return bool(value)
        raise wrong_type(self.name(field), value, BOOL_TYPES)

    def integer(self, field: str, default: int | None = None, minimum: int | None = 0,
                short_name: bool = True) -> int | None:
        """mongod's ``safeInt64`` (any number, truncated and saturated) with a ``gte``
        validator; the validator names the field without its prefix, as mongod does."""
        value = self.doc.get(field)
        if value is None:
            return default
        if not is_number(value):
            raise wrong_type(self.name(field), value, NUMBER_TYPES)
        number = safe_long(value)
        if minimum is not None and number < minimum:
            shown = field if short_name else self.name(field)
            raise CommandError(ErrorCode.Location51024, f"BSON field '{shown}' value must be >= "
                               f"{minimum}, actual value '{number}'")
        return number

    def long(self, field: str, required: bool = False) -> int | None:
        """An integer field of BSON type long (or int): cursor ids, ``txnNumber``."""
        value = self._get(field, required)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise wrong_type(self.name(field), value, ("long",))
        return value


def max_time_ms(command: str, body: dict[str, Any]) -> int | None:
    """The command's ``maxTimeMS`` validated as mongod does (``parseMaxTimeMS``); None if
    absent. 0 means no limit."""
    if "maxTimeMS" not in body:
        return None
    value = body["maxTimeMS"]
    if value is None:
        raise CommandError(ErrorCode.BadValue, "maxTimeMS must be a number")
    if not is_number(value):
        raise wrong_type(f"{command}.maxTimeMS", value, NUMBER_TYPES)
    number = safe_long(value)
    if number < 0:
        raise CommandError(ErrorCode.Location51024, "BSON field 'maxTimeMS' value must be >= 0, "
                           f"actual value '{number}'")
    if number > INT32_MAX:
        raise CommandError(ErrorCode.BadValue, f"{number} value for maxTimeMS is out of range")
    if isinstance(value, float) and not value.is_integer():  # NaN included
        raise CommandError(ErrorCode.BadValue, "maxTimeMS has non-integral value")
    return number


UPDATE_ARGUMENT_ERROR = "Update argument must be either an object or an array"


def update_argument(value: Any) -> dict[str, Any] | list[dict[str, Any]]:
    """An update (``u``, findAndModify's ``update``): operators, replacement or pipeline."""
    if not isinstance(value, dict | list):
        raise CommandError(ErrorCode.FailedToParse, UPDATE_ARGUMENT_ERROR)
    if isinstance(value, list) and not all(isinstance(stage, dict) for stage in value):
        raise CommandError(ErrorCode.TypeMismatch, "Each element of the 'pipeline' array must be "
                           "an object")
    return value


def hint(fields: Fields, field: str = "hint") -> None:
    """An index hint: a name or a key pattern."""
    value = fields.doc.get(field)
    if value is not None and not isinstance(value, str | dict):
        raise CommandError(ErrorCode.FailedToParse, "hint must be either a string or nested "
                           "object")


#: The fields of the usual update statement, with types that need no further checks.
_PLAIN_STATEMENT_TYPES: dict[str, tuple[type, ...]] = {
    "q": (dict,), "u": (dict, list), "multi": (bool,), "upsert": (bool,)}


def _plainly_typed(statement: dict[str, Any]) -> bool:
    """Whether an update statement has only ``q``/``u``/``multi``/``upsert`` of their usual
    types (and ``u``): such a statement passes :func:`check_update_statements` unchanged."""
    if "u" not in statement:
        return False
    for name, value in statement.items():
        types = _PLAIN_STATEMENT_TYPES.get(name)
        if types is None or type(value) not in types:
            return False
    update = statement["u"]
    return type(update) is dict or all(type(stage) is dict for stage in update)


def check_update_statements(statements: list[dict[str, Any]]) -> None:
    """Every statement of an ``update`` well typed, before any of them runs."""
    for statement in statements:
        if _plainly_typed(statement):
            continue
        fields = Fields(statement, "update.updates")
        fields.document("q")
        if "u" not in statement:
            raise missing("update.updates.u")
        update_argument(statement["u"])
        fields.boolean("multi")
        fields.boolean("upsert")
        fields.documents("arrayFilters")
        fields.document("sort")
        fields.document("collation")
        fields.document("c")
        hint(fields)


def check_delete_statements(statements: list[dict[str, Any]]) -> None:
    """Every statement of a ``delete`` well typed, before any of them runs."""
    for statement in statements:
        fields = Fields(statement, "delete.deletes")
        fields.document("q")
        limit = fields.integer("limit", 0, minimum=None)
        if limit not in (0, 1):
            raise CommandError(ErrorCode.FailedToParse, "The limit field in delete objects must "
                               f"be 0 or 1. Got {limit}")
        fields.document("sort")
        fields.document("collation")
        hint(fields)


_FIND_DOCUMENTS = ("filter", "sort", "projection", "let", "collation", "min", "max")
_FIND_FLAGS = ("singleBatch", "noCursorTimeout", "allowPartialResults", "allowDiskUse",
               "tailable", "awaitData", "returnKey", "showRecordId", "readOnce")


def check_find(body: dict[str, Any]) -> Fields:
    """The typed fields of ``find`` (and of ``explain: {find}``).

    Checked in a fixed order (the first wrong field is the one named); a field that is absent
    or null passes every check, so it is not looked at further."""
    fields = Fields(body, "find")
    get = body.get
    for name in _FIND_DOCUMENTS:
        value = get(name)
        if value is not None and not isinstance(value, dict):
            raise wrong_type(fields.name(name), value, ("object",))
    for flag in _FIND_FLAGS:
        value = get(flag)
        if value is not None and type(value) is not bool:
            fields.boolean(flag)
    if get("skip") is not None:
        fields.integer("skip", 0)
    if get("limit") is not None:
        fields.integer("limit", 0, minimum=None)  # negative: a single batch (legacy semantics)
    if get("batchSize") is not None:
        fields.integer("batchSize")
    hint(fields)
    return fields


def count_number(body: dict[str, Any], field: str) -> int:
    """``count``'s ``skip``/``limit``: any number (mongod's own messages)."""
    value = body.get(field)
    if value is None:
        return 0
    if not is_number(value):
        raise CommandError(ErrorCode.BadValue, f"{field} value is not a valid number")
    number = safe_long(value)
    if field == "skip" and number < 0:
        raise CommandError(ErrorCode.BadValue, "skip value is negative in count query")
    return number


def cursor_batch_size(body: dict[str, Any]) -> int | None:
    """``cursor: {batchSize}`` of aggregate, listCollections and listIndexes."""
    cursor = body.get("cursor")
    if cursor is None:
        return None
    if not isinstance(cursor, dict):
        raise CommandError(ErrorCode.TypeMismatch, "cursor field must be missing or an object")
    return Fields(cursor, "cursor").integer("batchSize")
