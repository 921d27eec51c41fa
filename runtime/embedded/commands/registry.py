"""What every command handler receives (``CommandContext``) and the table row type."""

from __future__ import annotations

import datetime
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from runtime.embedded.access import Access, Transaction
from runtime.embedded.datastore import WriteUnit
from runtime.embedded.errors import CommandError, ErrorCode

if TYPE_CHECKING:
    from runtime.embedded.sessions import Session
    from runtime.embedded.state import ServerState


# Fields every command may carry that are about the request, not the command itself.
GENERIC_FIELDS = frozenset({"$db", "lsid", "$clusterTime", "$readPreference", "txnNumber",
                            "autocommit", "startTransaction", "readConcern", "writeConcern",
                            "comment", "maxTimeMS", "apiVersion", "apiStrict",
                            "apiDeprecationErrors", "$audit", "bypassDocumentValidation"})


@dataclass(slots=True)
class CommandContext:
    """Everything a handler needs about the request it serves."""

    state: ServerState
    name: str
    body: dict[str, Any]
    db: str
    access: Access
    unit: WriteUnit
    session: Session | None
    transaction: Transaction | None
    variables: dict[str, Any]
    now: datetime.datetime
    connection: dict[str, Any] = field(default_factory=dict)

    def collection_name(self) -> str:
        """The collection named by the command's first field, validated."""
        value = self.body.get(self.name)
        if type(value) is not str or not value:  # bson's Code is a str subclass
            raise CommandError(ErrorCode.InvalidNamespace,
                               f"collection name has invalid type {type(value).__name__}; "
                               f"'{self.name}' needs a collection name string")
        return value

    def namespace(self, coll: str) -> str:
        """``db.collection``."""
        return f"{self.db}.{coll}"


Handler = Callable[[CommandContext], Awaitable[dict[str, Any]]]


@dataclass(frozen=True)
class CommandInfo:
    """One row of the command table (``commands/table.py``): a handler and its properties."""

    handler: Handler
    in_transaction: bool = False
    retryable_write: bool = False
    admin_only: bool = False
    test_only: bool = False


def int_option(body: dict[str, Any], name: str, default: int | None = None) -> int | None:
    """A non-negative integer option, or a TypeMismatch/BadValue error naming it."""
    value = body.get(name, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise CommandError(ErrorCode.TypeMismatch,
                           f"BSON field '{name}' is the wrong type, expected a number")
    if value < 0:
        raise CommandError(ErrorCode.BadValue,
                           f"BSON field '{name}' value must be >= 0, actual value '{value}'")
    return int(value)


def doc_option(body: dict[str, Any], name: str) -> dict[str, Any] | None:
    """An optional document option, or a TypeMismatch error naming it."""
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, dict):
        raise CommandError(ErrorCode.TypeMismatch, f"BSON field '{name}' is the wrong type "
                           f"'{type(value).__name__}', expected type 'object'")
    return value


def sort_option(body: dict[str, Any], name: str = "sort") -> list[tuple[str, int]] | None:
    """A sort specification as ``[(path, 1 | -1)]``."""
    spec = doc_option(body, name)
    if not spec:
        return None
    result: list[tuple[str, int]] = []
    for path, direction in spec.items():
        if isinstance(direction, dict):
            result.append((path, -1))  # {$meta: ...}: no text scores here, keep order stable
            continue
        if direction not in (1, -1):
            raise CommandError(ErrorCode.Location15974,
                               f"Illegal key in $sort specification: {path}: "
                               f"{direction!r}; use 1 or -1")
        result.append((path, int(direction)))
    return result
