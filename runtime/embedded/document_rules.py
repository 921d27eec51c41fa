"""What a document must satisfy before it is stored: MongoDB's storage rules.

Every write checks the document it is about to store *before* anything changes (the collection,
its indexes, the change log, the write-ahead log), so a write that breaks a rule fails as a whole
with MongoDB's error and leaves no trace:

* it must be BSON-encodable (no NUL byte in a field name, integers within 64 bits, ...);
* it must fit in 16 MiB (BadValue "object to insert too large" for an insert,
  BSONObjectTooLarge 10334 "Resulting document after update is larger than 16777216" for the
  result of an update);
* it may nest at most 180 levels (``BSONDepth::getMaxDepthForUserStorage()``: the 200 levels
  MongoDB accepts in a message, less 20 kept for its own envelopes), Overflow 15.

The size comes from :func:`runtime.embedded.wire.encoded_size`, which remembers the document it
sized last: the change log then accounts for the same document without encoding it again.
"""

from __future__ import annotations

import enum
from typing import Any

from bson.errors import InvalidDocument

from runtime.embedded.errors import WriteError
from runtime.embedded.wire import MAX_BSON_SIZE, encoded_size

#: Levels of nesting a stored document may have (the top-level document is level 1).
MAX_STORAGE_DEPTH = 180
#: The fewest bytes one level of nesting costs in BSON (type, empty name, length, terminator):
#: a document smaller than this many bytes per allowed level cannot be too deep.
_MIN_BYTES_PER_LEVEL = 7


class Code(enum.IntEnum):
    """The error codes of a document that cannot be stored."""

    BAD_VALUE = 2
    OVERFLOW = 15
    BSON_OBJECT_TOO_LARGE = 10334


class Write(enum.Enum):
    """Which kind of write stores the document (MongoDB words the errors differently)."""

    INSERT = "insert"
    UPDATE = "update"


def check_storable(doc: dict[str, Any], write: Write) -> int:
    """Raise :class:`WriteError` unless ``doc`` may be stored; returns its BSON size."""
    try:
        size = encoded_size(doc)
    except InvalidDocument as exc:
        raise WriteError(Code.BAD_VALUE, _unencodable_message(doc, str(exc))) from exc
    except OverflowError as exc:
        raise WriteError(Code.OVERFLOW, f"document cannot be stored: {exc}") from exc
    except (TypeError, ValueError, RecursionError) as exc:
        raise WriteError(Code.BAD_VALUE, f"document cannot be stored: {exc}") from exc
    if size > MAX_BSON_SIZE:
        if write is Write.INSERT:
            raise WriteError(Code.BAD_VALUE, f"object to insert too large. size in bytes: "
                             f"{size}, max size: {MAX_BSON_SIZE}")
        raise WriteError(Code.BSON_OBJECT_TOO_LARGE, "Resulting document after update is larger "
                         f"than {MAX_BSON_SIZE}")
    if size >= _MIN_BYTES_PER_LEVEL * MAX_STORAGE_DEPTH and too_deep(doc, MAX_STORAGE_DEPTH):
        if write is Write.INSERT:
            raise WriteError(Code.OVERFLOW, "cannot insert document because it exceeds "
                             f"{MAX_STORAGE_DEPTH} levels of nesting")
        raise WriteError(Code.OVERFLOW, "Document exceeds maximum nesting depth of "
                         f"{MAX_STORAGE_DEPTH}")
    return size


def too_deep(value: Any, limit: int) -> bool:
    """Whether ``value`` nests more than ``limit`` levels of non-empty documents and arrays
    (``value`` itself is level 1). Iterative, so any depth is safe to ask about."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, level = stack.pop()
        children = node.values() if isinstance(node, dict) else node
        for child in children:
            if isinstance(child, dict | list) and child:
                if level >= limit:
                    return True
                stack.append((child, level + 1))
    return False


def _unencodable_message(doc: dict[str, Any], reason: str) -> str:
    name = _name_with_nul(doc)
    if name is not None:
        return f"Field names may not contain a NUL byte: {name!r}"
    return f"document cannot be stored: {reason}"


def _name_with_nul(value: Any) -> str | None:
    """The first field name containing a NUL byte (a BSON name is a C string), if any."""
    stack: list[Any] = [value]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            for key, child in node.items():
                if isinstance(key, str) and "\x00" in key:
                    return key
                stack.append(child)
        elif isinstance(node, list):
            stack.extend(node)
    return None
