"""Update documents: validation, array filters and application to one document.

:func:`apply_update` applies an operator update, a replacement-free update pipeline or (through
the compiled fast path) a simple pipeline to a copy of one document; any failure raises
:class:`~runtime.embedded.errors.WriteError` and leaves nothing half-applied. Operator updates
are validated first (known operators, no conflicting paths), ``$[]``/``$[id]`` paths are
expanded with the array filters and ``$`` with the query's match.
"""

from __future__ import annotations

import copy
import functools
import re
from typing import Any

from bson import ObjectId

from runtime.embedded.comparison import bson_type_name
from runtime.embedded.engine_support import (
    EVALUATION_ERRORS,
    UPDATER,
    direct_get,
    mm_aggregate,
    translate,
)
from runtime.embedded.errors import CommandError, ErrorCode, WriteError
from runtime.embedded.ordering import MISSING
from runtime.embedded.query_operators import matches
from runtime.embedded.update_operators import OWN_OPERATORS, resolve_positional

UPDATE_OPERATORS = frozenset(
    {"$set", "$unset", "$inc", "$mul", "$min", "$max", "$rename", "$setOnInsert", "$push",
     "$addToSet", "$pull", "$pullAll", "$pop", "$currentDate", "$bit"}
)
UPDATE_PIPELINE_STAGES = frozenset(
    {"$addFields", "$set", "$project", "$unset", "$replaceRoot", "$replaceWith"}
)

def _paths_conflict(a: str, b: str) -> bool:
    return a == b or a.startswith(b + ".") or b.startswith(a + ".")


def validate_update_document(update: dict[str, Any]) -> None:
    """Check an operator update before applying it: known operators, no conflicting paths."""
    seen: list[str] = []
    for op_name, fields in update.items():
        if not op_name.startswith("$"):
            raise WriteError(ErrorCode.FailedToParse,
                             "Unknown modifier: cannot mix update operators and plain fields")
        if op_name not in UPDATE_OPERATORS:
            raise WriteError(ErrorCode.FailedToParse,
                             f"Unknown modifier: {op_name}. Expected a valid update modifier")
        if not isinstance(fields, dict):
            raise WriteError(ErrorCode.FailedToParse,
                             f"Modifiers operate on fields but we found type "
                             f"{type(fields).__name__} instead: {{{op_name}: {fields!r}}}")
        paths = list(fields)
        if op_name == "$rename":
            for source, target in fields.items():
                if not isinstance(target, str):
                    raise WriteError(ErrorCode.BadValue,
                                     f"The 'to' field for $rename must be a string: "
                                     f"{source}: {target!r}")
                if source == target:
                    raise WriteError(ErrorCode.BadValue,
                                     f"The source and target field for $rename must differ: "
                                     f"{source}: {target!r}")
            paths += list(fields.values())
        for path in paths:
            if path == "":
                raise WriteError(ErrorCode.EmptyFieldName, "An empty update path is not valid.")
            for other in seen:
                if _paths_conflict(path, other):
                    raise WriteError(ErrorCode.ConflictingUpdateOperators,
                                     f"Updating the path '{path}' would create a conflict "
                                     f"at '{other}'")
            seen.append(path)


_CREATING_OPERATORS = ("$set", "$setOnInsert", "$inc", "$mul", "$min", "$max", "$push",
                       "$addToSet", "$currentDate", "$bit")


def _check_path_viable(doc: dict[str, Any], path: str) -> None:
    """PathNotViable (28) if ``path`` would have to descend into a scalar (or a non-index field
    of an array); MongoDB refuses such an update instead of ignoring it."""
    current: Any = doc
    parts = path.split(".")
    for depth, part in enumerate(parts):
        if part.startswith("$"):
            return  # positional: checked where the array elements are known
        if isinstance(current, dict):
            if part not in current:
                return
            current = current[part]
        elif isinstance(current, list) and part.isdigit():
            if int(part) >= len(current):
                return
            current = current[int(part)]
        else:
            shown = ".".join(parts[:depth])
            raise WriteError(ErrorCode.PathNotViable, f"Cannot create field '{part}' in element "
                             f"{{{shown}: {current!r}}}")


def _check_paths_viable(doc: dict[str, Any], update: dict[str, Any]) -> None:
    for op_name, fields in update.items():
        if op_name in _CREATING_OPERATORS:
            for path in fields:
                _check_path_viable(doc, path)
        elif op_name == "$rename":
            for target in fields.values():
                if isinstance(target, str):
                    _check_path_viable(doc, target)


_ARRAY_OPERATORS = ("$push", "$addToSet", "$pull", "$pullAll", "$pop")
_FILTERED_POSITIONAL = re.compile(r"^\$\[([a-z][A-Za-z0-9]*)?\]$")


def _check_array_targets(doc: dict[str, Any], update: dict[str, Any]) -> None:
    """Array operators on an existing non-array field fail (BadValue) instead of half-working."""
    for op_name in _ARRAY_OPERATORS:
        for path in update.get(op_name, {}):
            if "$" in path:
                continue
            value = direct_get(doc, path)
            if value is not MISSING and not isinstance(value, list):
                raise WriteError(ErrorCode.BadValue,
                                 f"The field '{path}' must be an array but is of type "
                                 f"{bson_type_name(value)} in document {{_id: {doc.get('_id')!r}}}")


def _array_filter_table(array_filters: list[dict[str, Any]] | None) -> dict[str, dict[str, Any]]:
    table: dict[str, dict[str, Any]] = {}
    for flt in array_filters or []:
        if not isinstance(flt, dict) or not flt:
            raise WriteError(ErrorCode.BadValue,
                             "Cannot use an expression without a top-level field name in "
                             "arrayFilters")
        names: set[str] = set()
        for key, value in flt.items():
            if key in ("$and", "$or", "$nor") and isinstance(value, list):
                names.update(k.split(".")[0] for part in value if isinstance(part, dict)
                             for k in part if not k.startswith("$"))
            elif not key.startswith("$"):
                names.add(key.split(".")[0])
        if len(names) != 1:
            raise WriteError(ErrorCode.FailedToParse,
                             "Error parsing array filter :: caused by :: Expected a single "
                             "top-level field name, found " + ", ".join(sorted(names)))
        [name] = names
        if name in table:
            raise WriteError(ErrorCode.FailedToParse,
                             f"Found multiple array filters with the same top-level field "
                             f"name {name}")
        table[name] = flt
    return table


def _expand_path(node: Any, parts: list[str], done: list[str], table: dict[str, dict[str, Any]],
                 used: set[str], variables: dict[str, Any], original: str) -> list[str]:
    """Concrete paths for an update path with ``$[]`` / ``$[id]`` parts."""
    for position in range(len(parts)):
        part = parts[position]
        found = _FILTERED_POSITIONAL.match(part)
        if found is None:
            if isinstance(node, dict):
                node = node.get(part, MISSING)
            elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
            else:
                node = MISSING
            done = [*done, part]
            continue
        name = found.group(1)
        if name is not None and name not in table:
            raise WriteError(ErrorCode.BadValue,
                             f"No array filter found for identifier '{name}' in path "
                             f"'{original}'")
        if not isinstance(node, list):
            if node is MISSING:
                raise WriteError(ErrorCode.BadValue,
                                 f"The path '{'.'.join(done)}' must exist in the document "
                                 "in order to apply array updates.")
            raise WriteError(ErrorCode.BadValue, f"Cannot apply array updates to non-array element "
                             f"{done[-1] if done else ''}: {node!r}")
        rest = parts[position + 1:]
        paths: list[str] = []
        if name is not None:
            used.add(name)
        for index, element in enumerate(node):
            if name is not None and not matches(table[name], {name: element}, variables):
                continue
            paths += _expand_path(element, rest, [*done, str(index)], table, used, variables,
                                  original)
        return paths
    return [".".join(done)]


def _expand_array_filters(doc: dict[str, Any], update: dict[str, Any],
                          array_filters: list[dict[str, Any]] | None,
                          variables: dict[str, Any]) -> dict[str, Any]:
    """Rewrite ``$[]`` and ``$[id]`` paths into the concrete paths they select in ``doc``."""
    table = _array_filter_table(array_filters)
    used: set[str] = set()
    expanded: dict[str, Any] = {}
    for op_name, fields in update.items():
        new_fields: dict[str, Any] = {}
        for path, value in fields.items():
            if "$[" not in path:
                new_fields[path] = value
                continue
            for concrete in _expand_path(doc, path.split("."), [], table, used, variables, path):
                new_fields[concrete] = value
        if new_fields:
            expanded[op_name] = new_fields
    unused = set(table) - used
    if unused:
        raise WriteError(ErrorCode.FailedToParse,
                         f"The array filter for identifier '{sorted(unused)[0]}' was not "
                         "used in the update")
    _check_array_targets(doc, expanded)
    return expanded


def is_operator_update(update: dict[str, Any]) -> bool:
    """An update document made of ``$`` operators (as opposed to a replacement)."""
    return bool(update) and next(iter(update)).startswith("$")


def validate_replacement(doc: dict[str, Any]) -> None:
    """A replacement document may not contain update operators."""
    for key in doc:
        if key.startswith("$"):
            raise WriteError(ErrorCode.FailedToParse,
                             f"Unknown modifier: {key}; a replacement document cannot "
                             "contain update operators")


def apply_update(
    doc: dict[str, Any],
    update: dict[str, Any] | list[dict[str, Any]],
    query: dict[str, Any],
    array_filters: list[dict[str, Any]] | None,
    is_insert: bool,
    variables: dict[str, Any],
) -> dict[str, Any]:
    """Return a new document: ``update`` applied to a copy of ``doc`` (``doc`` is never changed).

    Any failure raises :class:`WriteError` and leaves nothing half-applied, which gives the
    per-document atomicity MongoDB guarantees.
    """
    if isinstance(update, list):
        stages = _compiled_stages()
        fast = stages.pipeline_update(update)
        if fast is not None:
            try:
                new_doc = fast(doc, variables)
            except stages.Unsupported:
                pass  # this document needs the general engine
            except WriteError:
                raise
            except (CommandError, *EVALUATION_ERRORS) as exc:
                raise _as_write_error(exc) from exc
            else:
                return _checked_result(doc, new_doc)
    new_doc = copy.deepcopy(doc)
    try:
        if isinstance(update, list):
            for stage in update:
                if not isinstance(stage, dict) or len(stage) != 1:
                    raise WriteError(ErrorCode.FailedToParse,
                                     "each update pipeline stage must be a single-key object")
                name = next(iter(stage))
                if name not in UPDATE_PIPELINE_STAGES:
                    raise WriteError(ErrorCode.InvalidOptions,
                                     f"{name} is not allowed to be used within an update")
            [result] = mm_aggregate.process_pipeline([new_doc], None, update, None,
                                                     user_vars=variables)
            new_doc = dict(result)
        else:
            validate_update_document(update)
            update = _expand_array_filters(new_doc, update, array_filters, variables)
            update = resolve_positional(new_doc, update, query, variables)
            _check_paths_viable(new_doc, update)
            own = {name: update.pop(name) for name in list(update) if name in OWN_OPERATORS}
            if update:
                UPDATER._current_array_filters = []
                try:
                    UPDATER._apply_update_document(new_doc, query, update, is_insert)
                finally:
                    UPDATER._current_array_filters = None
            for name, fields in own.items():
                for path, value in fields.items():
                    OWN_OPERATORS[name](new_doc, path, value, variables)
    except WriteError:
        raise
    except (CommandError, *EVALUATION_ERRORS) as exc:
        raise _as_write_error(exc) from exc
    return _checked_result(doc, new_doc)


def _as_write_error(exc: Exception) -> WriteError:
    """A failed update of one document, as the statement's write error (TypeMismatch when the
    library's exception names no code)."""
    if isinstance(exc, CommandError):
        return WriteError(exc.code, exc.message)
    error = translate(exc, default_code=ErrorCode.TypeMismatch)
    return WriteError(error.code, error.message)


def _checked_result(doc: dict[str, Any], new_doc: dict[str, Any]) -> dict[str, Any]:
    """``new_doc`` with ``_id`` first, after checking that the update kept ``_id``."""
    if "_id" in doc and ("_id" not in new_doc or _changed_id(doc["_id"], new_doc["_id"])):
        raise WriteError(ErrorCode.ImmutableField,
                         "Performing an update on the path '_id' would modify the immutable "
                         "field '_id'")
    # (When _id is the first field, putting it first again would change nothing.)
    if "_id" in new_doc and next(iter(new_doc)) != "_id" \
            and new_doc["_id"] != next(iter(new_doc.values())):
        new_doc = {"_id": new_doc["_id"], **{k: v for k, v in new_doc.items() if k != "_id"}}
    return new_doc


def _changed_id(old: Any, new: Any) -> bool:
    """``new != old``, without ObjectId's Python-level comparison when the compiled path kept
    the very same ObjectId (an ObjectId always equals itself; a NaN does not)."""
    if new is old and type(old) is ObjectId:
        return False
    return bool(new != old)


@functools.cache
def _compiled_stages() -> Any:
    """The compiled fast path (imported late: it imports the engine, which imports us)."""
    from runtime.embedded import compiled_stages

    return compiled_stages
