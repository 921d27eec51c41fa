"""Name rules for databases, collections, namespaces and indexes, as MongoDB 7.0 applies them.

Two levels apply to collections. :func:`check_collection` holds for every collection the server
keeps (stored data included): a valid database name and a non-empty collection name without
``$`` or NUL that does not start with a dot. :func:`check_new_collection` adds what a client may
*create* (explicitly, implicitly by a write, or as a rename target): no ``system.`` collection
outside the few MongoDB lets clients create, and a namespace of at most 255 bytes. Violations are
``InvalidNamespace`` (73), as in mongod; the index name rules use mongod's index codes.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Any

from runtime.embedded.errors import CommandError

#: A database name is at most 63 bytes (mongod: shorter than 64).
MAX_DATABASE_NAME_BYTES = 63
#: ``db.collection`` of an unsharded collection is at most 255 bytes.
MAX_NAMESPACE_BYTES = 255
#: Characters no database name may contain (mongod's rule on Linux and macOS).
DATABASE_FORBIDDEN = '/\\. "$\x00'

#: ``system.`` collections a client may create in any database.
_CLIENT_SYSTEM_COLLECTIONS = frozenset({"system.js", "system.views", "system.profile"})
#: ... and in one database only.
_CLIENT_SYSTEM_COLLECTIONS_IN = {
    "admin": frozenset({"system.users", "system.roles", "system.version", "system.new_users",
                        "system.backup_users", "system.keys"}),
    "config": frozenset({"system.sessions"}),
    "local": frozenset({"system.replset", "system.healthlog"}),
}
_BUCKETS_PREFIX = "system.buckets."


class NameCode(IntEnum):
    """The error codes of name violations."""

    BAD_VALUE = 2
    TYPE_MISMATCH = 14
    CANNOT_CREATE_INDEX = 67
    INVALID_NAMESPACE = 73


def _shown(name: str) -> str:
    return name.replace("\x00", "\\0")


def check_database(db: str) -> None:
    """Raise InvalidNamespace (73) unless ``db`` is a valid database name."""
    if not db:
        raise CommandError(NameCode.INVALID_NAMESPACE,
                           "Invalid database name: '' (a database name must not be empty)")
    bad = sorted({c for c in db if c in DATABASE_FORBIDDEN})
    if bad:
        listed = " ".join(repr(c) for c in bad)
        raise CommandError(NameCode.INVALID_NAMESPACE,
                           f"Invalid database name: '{_shown(db)}' (contains {listed}; database "
                           "names may not contain / \\ . space \" $ or NUL)")
    if len(db.encode("utf-8", "surrogatepass")) > MAX_DATABASE_NAME_BYTES:
        raise CommandError(NameCode.INVALID_NAMESPACE,
                           f"Invalid database name: '{_shown(db[:80])}...' is longer than "
                           f"{MAX_DATABASE_NAME_BYTES} bytes")


def check_collection(db: str, name: str) -> None:
    """Raise InvalidNamespace (73) unless ``db.name`` may exist at all."""
    check_database(db)
    if not name or name.startswith(".") or "$" in name or "\x00" in name:
        raise CommandError(NameCode.INVALID_NAMESPACE,
                           f"Invalid collection name: '{_shown(name)}' in database '{db}' (a "
                           "collection name must be non-empty, must not start with '.' and "
                           "must not contain '$' or NUL)")


def _client_may_create_system(db: str, name: str) -> bool:
    if name in _CLIENT_SYSTEM_COLLECTIONS or name in _CLIENT_SYSTEM_COLLECTIONS_IN.get(db, ()):
        return True
    return name.startswith(_BUCKETS_PREFIX) and len(name) > len(_BUCKETS_PREFIX)


def check_new_collection(db: str, name: str) -> None:
    """Raise InvalidNamespace (73) unless a client may create ``db.name``."""
    check_collection(db, name)
    if name.startswith("system.") and not _client_may_create_system(db, name):
        raise CommandError(NameCode.INVALID_NAMESPACE,
                           f"Invalid system namespace: {db}.{name} (clients may not create "
                           "system collections; choose a name not starting with 'system.')")
    size = len(db.encode("utf-8", "surrogatepass")) + 1 + len(
        name.encode("utf-8", "surrogatepass"))
    if size > MAX_NAMESPACE_BYTES:
        raise CommandError(NameCode.INVALID_NAMESPACE,
                           f"Fully qualified namespace is too long. Namespace: "
                           f"{_shown(db)}.{_shown(name[:60])}... is {size} bytes, "
                           f"Max: {MAX_NAMESPACE_BYTES}")


def split_namespace(value: Any, field: str) -> tuple[str, str]:
    """``"db.coll"`` given in ``field`` as ``(db, coll)``; TypeMismatch or InvalidNamespace."""
    if type(value) is not str:  # (bson Code is a str subclass, not a string)
        raise CommandError(NameCode.TYPE_MISMATCH,
                           f"BSON field '{field}' is the wrong type '{type(value).__name__}', "
                           "expected type 'string' (a namespace 'db.collection')")
    db, dot, name = value.partition(".")
    if not dot:
        raise CommandError(NameCode.INVALID_NAMESPACE,
                           f"Invalid namespace specified '{_shown(value)}' in '{field}': "
                           "expected 'db.collection'")
    check_collection(db, name)
    return db, name


def check_index_name(name: Any) -> str:
    """An index name as ``createIndexes`` accepts it (TypeMismatch, CannotCreateIndex, BadValue)."""
    if type(name) is not str:
        raise CommandError(NameCode.TYPE_MISMATCH,
                           f"The field 'name' must be a string, but got {type(name).__name__}")
    if not name:
        raise CommandError(NameCode.CANNOT_CREATE_INDEX, "The index name cannot be empty")
    if name == "*":
        raise CommandError(NameCode.BAD_VALUE, "The index name '*' is not valid: '*' means "
                           "'all indexes' to dropIndexes; choose another name")
    if "\x00" in name:
        raise CommandError(NameCode.CANNOT_CREATE_INDEX,
                           f"The index name '{_shown(name)}' cannot contain NUL bytes")
    return name
