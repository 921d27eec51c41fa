"""Decoding MongoDB Extended JSON literals of a definition (``{$date: ...}``, ``{$oid: ...}``)
into BSON values, with a problem that points at the offending literal instead of a traceback.

A decoded value must also survive the trip into generated code and onto the wire: it is
encoded as BSON and rendered as relaxed and canonical Extended JSON before it is accepted.
"""

from __future__ import annotations

import decimal
import json
from typing import Any

import bson
from bson import json_util
from bson.errors import BSONError

from generator.filters import is_extended_json

# What pymongo raises for a malformed literal (an invalid ObjectId, a decimal that is not a
# number, a date out of range, ...): these are the user's mistakes, not the generator's.
DECODE_ERRORS = (TypeError, ValueError, ArithmeticError, OverflowError, BSONError)
DATE_HINT = ("write a valid literal: dates {$date: '2024-01-01T00:00:00Z'}, ObjectIds "
             "{$oid: '<24 hex digits>'}, decimals {$numberDecimal: '12.50'}")


class ExtendedJsonError(Exception):
    """An Extended JSON literal that cannot be decoded or represented."""

    def __init__(self, pointer: str, message: str, hint: str = DATE_HINT) -> None:
        super().__init__(message)
        self.pointer = pointer
        self.message = message
        self.hint = hint


def _decode_one(value: Any) -> Any:
    decoded = json_util.loads(json.dumps(value))
    bson.encode({"value": decoded})
    for options in (json_util.RELAXED_JSON_OPTIONS, json_util.CANONICAL_JSON_OPTIONS):
        json_util.dumps(decoded, json_options=options)
    return decoded


def _first_bad_literal(value: Any, pointer: str) -> tuple[str, Exception] | None:
    """The pointer of the first Extended JSON literal in ``value`` that fails on its own."""
    stack: list[tuple[Any, str]] = [(value, pointer)]
    while stack:
        node, here = stack.pop()
        if is_extended_json(node):
            try:
                _decode_one(node)
            except DECODE_ERRORS as exc:
                return here, exc
            continue
        if isinstance(node, dict):
            stack.extend((item, f"{here}/{str(key).replace('~', '~0').replace('/', '~1')}")
                         for key, item in reversed(list(node.items())))
        elif isinstance(node, list):
            stack.extend((item, f"{here}/{index}")
                         for index, item in reversed(list(enumerate(node))))
    return None


def _reason(exc: Exception) -> str:
    if isinstance(exc, decimal.InvalidOperation):
        return "not a decimal number"
    text = str(exc).split(" (Consider", 1)[0].strip() or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def decode(value: Any, pointer: str) -> Any:
    """``value`` with its Extended JSON literals decoded to BSON values.

    Raises :class:`ExtendedJsonError` naming the pointer of the first bad literal.
    """
    try:
        return _decode_one(value)
    except DECODE_ERRORS as exc:
        found = _first_bad_literal(value, pointer)
        where, cause = found if found is not None else (pointer, exc)
        raise ExtendedJsonError(where, f"invalid MongoDB Extended JSON: {_reason(cause)}"
                                ) from exc
