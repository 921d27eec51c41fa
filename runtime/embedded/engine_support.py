"""Shared plumbing of the engine modules: mongomock-ng handles, error translation, paths.

mongomock-ng is used through its internals (which carry no useful types); every engine module
reaches it through the handles defined here. Python failures while evaluating a client's query,
update or expression are translated into MongoDB's typed errors here too.
"""

from __future__ import annotations

import re
from decimal import InvalidOperation
from typing import Any

import mongomock_ng as _mongomock_ng
from bson.errors import BSONError
from mongomock_ng import aggregate as _mm_aggregate
from mongomock_ng import collection as _mm_collection
from mongomock_ng import filtering as _mm_filtering
from mongomock_ng import helpers as _mm_helpers
from pymongo.errors import OperationFailure, PyMongoError

from runtime.embedded.errors import CommandError, ErrorCode, WriteError
from runtime.embedded.ordering import MISSING

# The library is used through its internals, which carry no useful types.
mongomock_ng: Any = _mongomock_ng
mm_aggregate: Any = _mm_aggregate
mm_collection: Any = _mm_collection
mm_filtering: Any = _mm_filtering
mm_helpers: Any = _mm_helpers
#: mongomock-ng's marker for a missing value.
NOTHING: Any = mm_helpers.NOTHING

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1

#: A mongomock-ng collection, used only for its update and projection primitives.
UPDATER: Any = mongomock_ng.MongoClient().get_database("reactgen_engine").get_collection("updater")


def direct_get(doc: dict[str, Any], path: str) -> Any:
    """The value at a dotted path through embedded documents only (arrays are not traversed)."""
    current: Any = doc
    for part in path.split("."):
        if not isinstance(current, dict) or part not in current:
            return MISSING
        current = current[part]
    return current


def unset_path(doc: dict[str, Any], path: str) -> None:
    """Remove the field at a dotted path through embedded documents (if it is there)."""
    parts = path.split(".")
    target: Any = doc
    for part in parts[:-1]:
        target = target.get(part) if isinstance(target, dict) else None
    if isinstance(target, dict):
        target.pop(parts[-1], None)


def set_path(doc: dict[str, Any], path: str, value: Any) -> None:
    """Set the field at a dotted path, creating embedded documents on the way."""
    parts = path.split(".")
    target = doc
    for part in parts[:-1]:
        nxt = target.get(part)
        if not isinstance(nxt, dict):
            nxt = {}
            target[part] = nxt
        target = nxt
    target[parts[-1]] = value


def translate(exc: Exception, default_code: int = 2) -> CommandError:
    """The :class:`CommandError` answering an exception raised by an evaluation."""
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
EVALUATION_ERRORS = (PyMongoError, NotImplementedError, TypeError, ValueError, KeyError,
                      IndexError, AttributeError, ArithmeticError, RecursionError,
                      AssertionError, NameError, BSONError, re.error, UnicodeError)

