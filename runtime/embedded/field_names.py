"""Where ``$``-prefixed, dotted and empty field names may appear, as MongoDB 7.0 decides.

The manual ("Field Names with Periods and Dollar Signs", MongoDB 5.0+) gives different rules to
different writes; the checks here run in the command handlers before a document changes:

* **Inserts** (and the document an upsert creates) may hold ``$``-prefixed and dotted field
  names at any level, empty names too. Only ``_id`` is restricted (``storageValidIdField``): not
  a regex or an array (InvalidIdField 53, "The '_id' value cannot be of type array"), and an
  ``_id`` document holds no ``$``-prefixed names except a DBRef's ``$ref``/``$id``/``$db``
  (DollarPrefixedFieldName 52).
* **Replacements** of an existing document may not have top-level ``$``-prefixed fields (52,
  "... is not allowed in the context of an update's replacement document ..."); nested ones are
  fine. A replacement (or an upsert's replacement) cannot change ``_id``: ImmutableField 66,
  "After applying the update, the (immutable) field '_id' was found to have been altered to
  _id: 2".
* **Update operators** name paths: a dot separates path components, so an empty component
  (``a..b``, ``a.``, ``.a``) is EmptyFieldName 56; a path whose first component is
  ``$``-prefixed may create a top-level ``$`` field only when the update inserts (an upsert),
  otherwise 52 with the replacement-document message (``$setField`` in a pipeline is the way).
* **Upserts** insert: top-level ``$`` fields are allowed, but ``_id`` is checked as an update
  checks it (``storage_validation::scanDocument``), and a replacement's ``_id`` must equal the
  one the query seeds (66).
"""

from __future__ import annotations

import re
from typing import Any

from bson import ObjectId, Regex

from runtime.embedded.errors import ErrorCode, WriteError

#: Operators whose paths may create fields (the result is validated for storage).
CREATING_OPERATORS = frozenset({"$set", "$setOnInsert", "$inc", "$mul", "$min", "$max",
                                "$push", "$addToSet", "$currentDate", "$bit"})
#: Every update operator; paths of others are left to the update engine's own errors.
UPDATE_OPERATORS = CREATING_OPERATORS | {"$unset", "$rename", "$pop", "$pull", "$pullAll"}
#: Positional path components (``$``, ``$[]``, ``$[name]``): not field names.
_POSITIONAL = re.compile(r"\$(\[[^\]]*\])?")


def _replacement_dollar(name: str, full_name: str) -> WriteError:
    return WriteError(ErrorCode.DollarPrefixedFieldName,
                      f"The dollar ($) prefixed field '{name}' in '{full_name}' is not allowed "
                      "in the context of an update's replacement document. Consider using an "
                      "aggregation pipeline with $replaceWith.")


def shown(value: Any) -> str:
    """A value as mongod prints a BSON element's value in messages (common types)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, str):
        return '"' + value.replace('"', '\\"') + '"'
    if isinstance(value, ObjectId):
        return f"ObjectId('{value}')"
    if isinstance(value, dict):
        inner = ", ".join(f"{k}: {shown(v)}" for k, v in value.items())
        return "{ " + inner + " }" if inner else "{}"
    if isinstance(value, list):
        return "[ " + ", ".join(shown(v) for v in value) + " ]" if value else "[]"
    return str(value)


def _dollar_name_for_storage(doc: dict[str, Any]) -> str | None:
    """The first ``$``-prefixed name in ``doc`` or below it that is not part of a DBRef
    (``{$ref: <string>, $id: ..., $db: <string>}`` first), as ``storageValidEmbedded``."""
    stack: list[Any] = [doc]
    while stack:
        node = stack.pop()
        if isinstance(node, list):
            stack.extend(reversed(node))
            continue
        if not isinstance(node, dict):
            continue
        keys = list(node)
        start = 0
        if keys[:2] == ["$ref", "$id"] and isinstance(node["$ref"], str):
            start = 2
            if keys[2:3] == ["$db"] and isinstance(node["$db"], str):
                start = 3
        for key in keys[start:]:
            if key.startswith("$"):
                return str(key)
        stack.extend(reversed(list(node.values())))
    return None


def _invalid_id_type(value: Any) -> WriteError | None:
    if isinstance(value, Regex | re.Pattern):
        return WriteError(ErrorCode.InvalidIdField, "The '_id' value cannot be of type regex")
    if isinstance(value, list):
        return WriteError(ErrorCode.InvalidIdField, "The '_id' value cannot be of type array")
    return None


def _checked_id(doc: dict[str, Any]) -> Any:
    """The document's ``_id`` (None when it has none), refused when of a type ``_id`` may not
    have (array, regex, undefined: 53)."""
    value = doc.get("_id")
    error = _invalid_id_type(value) if "_id" in doc else None
    if error is not None:
        raise error
    return value


def check_insert(doc: dict[str, Any]) -> None:
    """A document to insert (``fixDocumentForInsert``, ``storageValidIdField``): only its
    ``_id`` is restricted; ``$``-prefixed, dotted and empty names are stored as given."""
    value = _checked_id(doc)
    if isinstance(value, dict):
        name = _dollar_name_for_storage(value)
        if name is not None:
            raise WriteError(ErrorCode.DollarPrefixedFieldName,
                             f"_id fields may not contain '$'-prefixed fields: {name} is not "
                             "valid for storage.")


def check_upsert(doc: dict[str, Any]) -> None:
    """The document an upsert inserts (``storage_validation::scanDocument`` allowing top-level
    ``$`` fields): ``_id`` not a regex or an array (53), and no ``$``-prefixed field directly
    in an ``_id`` document (52)."""
    value = _checked_id(doc)
    if isinstance(value, dict):
        keys = list(value)
        start = 2 if keys[:2] == ["$ref", "$id"] and isinstance(value["$ref"], str) else 0
        for key in keys[start:]:
            if key.startswith("$") and not (start and key == "$db"):
                raise _replacement_dollar(key, f"_id.{key}")


def check_replacement(replacement: dict[str, Any], inserting: bool) -> None:
    """A replacement document: no top-level ``$``-prefixed field unless it is inserted."""
    if inserting:
        return
    for key in replacement:
        if key.startswith("$"):
            raise _replacement_dollar(key, key)


def altered_id(new_id: Any) -> WriteError:
    """ImmutableField 66 for a replacement whose ``_id`` differs from the document's."""
    return WriteError(ErrorCode.ImmutableField, "After applying the update, the (immutable) "
                      f"field '_id' was found to have been altered to _id: {shown(new_id)}")


def check_update_paths(update: dict[str, Any]) -> None:
    """The paths of an operator update, as mongod parses them (before any document is looked
    at): a dot separates components, none of which may be empty (EmptyFieldName 56)."""
    for operator, fields in update.items():
        if operator not in UPDATE_OPERATORS or not isinstance(fields, dict):
            continue  # the update engine reports unknown operators and malformed arguments
        paths = [path for path in fields if isinstance(path, str)]
        if operator == "$rename":
            paths += [target for target in fields.values() if isinstance(target, str)]
        for path in paths:
            if path and "" in path.split("."):
                raise WriteError(ErrorCode.EmptyFieldName, f"The update path '{path}' contains "
                                 "an empty field name, which is not allowed.")


def check_created_names(update: dict[str, Any]) -> None:
    """An operator update of an existing document may not create a top-level ``$``-prefixed
    field (the result is validated like a replacement document): DollarPrefixedFieldName 52.
    Nested ones (``a.$b``) are allowed; an upsert that inserts may create them too."""
    for operator, fields in update.items():
        if not isinstance(fields, dict):
            continue
        if operator in CREATING_OPERATORS and operator != "$setOnInsert":  # no-op here
            created = [path for path in fields if isinstance(path, str)]
        elif operator == "$rename":
            created = [target for target in fields.values() if isinstance(target, str)]
        else:
            continue
        for path in created:
            head = path.split(".", 1)[0]
            if head.startswith("$") and not _POSITIONAL.fullmatch(head):
                raise _replacement_dollar(head, head)
