"""Find projections: inclusion/exclusion, positional ``"a.$"`` and expression projections.

A projection with aggregation expressions (MongoDB 4.4+) runs as a ``$project`` stage.
"""

from __future__ import annotations

from typing import Any

from bson.decimal128 import Decimal128
from bson.int64 import Int64

from runtime.embedded.engine_support import (
    EVALUATION_ERRORS,
    UPDATER,
    direct_get,
    set_path,
    translate,
)
from runtime.embedded.errors import CommandError, ErrorCode
from runtime.embedded.ordering import MISSING
from runtime.embedded.query_operators import first_matching_index
from runtime.embedded.stages import run_pipeline

_FIND_PROJECTION_OPERATORS = frozenset({"$slice", "$elemMatch", "$meta"})


def _is_projection_expression(value: Any) -> bool:
    if isinstance(value, bool | int | float | Int64 | Decimal128):
        return False
    if isinstance(value, dict):
        operators = [k for k in value if k.startswith("$")]
        if not operators:
            return any(_is_projection_expression(v) for v in value.values())
        return operators[0] not in _FIND_PROJECTION_OPERATORS
    return True


class _NoForeignCollections:
    def documents(self, collection: str) -> list[dict[str, Any]]:
        raise CommandError(ErrorCode.BadValue, "a find projection cannot read other collections")


_NO_FOREIGN = _NoForeignCollections()


def _positional_element(doc: dict[str, Any], path: str, query: dict[str, Any] | None,
                        variables: dict[str, Any]) -> list[Any]:
    """``[element]`` for a positional projection ``"path.$"``."""
    index = first_matching_index(doc, path, query, variables)
    if index is None:
        raise CommandError(ErrorCode.Location51246,
                           "Executor error during find command :: caused by :: "
                           "positional operator '.$' couldn't find a matching element in the "
                           "array")
    array = direct_get(doc, path)
    return [array[index]]


_FLAG_TYPES = (int, float, bool)


def _simple_shape(projection: dict[str, Any]) -> tuple[bool, frozenset[str], bool] | None:
    """``(inclusion, names, keep_id)`` for a projection of plain top-level names whose values
    are all 0 or all 1 (``_id`` aside, either way), or None when it needs the general path:
    dotted or ``$`` names, other values (2, strings, operators, expressions, Int64, Decimal128)
    and mixed inclusion/exclusion, whose error the general path raises."""
    keep_id = True
    inclusion: bool | None = None
    names = []
    for name, flag in projection.items():
        if type(flag) not in _FLAG_TYPES or not (flag == 0 or flag == 1):
            return None
        if name == "_id":
            keep_id = flag != 0
            continue
        if not name or "." in name or "$" in name or inclusion is (flag == 0):
            return None
        inclusion = flag == 1
        names.append(name)
    if inclusion is None:  # only _id: {_id: 1} keeps only _id, {_id: 0} drops only _id
        inclusion = keep_id
    return inclusion, frozenset(names), keep_id


def _project_simple(doc: dict[str, Any], inclusion: bool, names: frozenset[str],
                    keep_id: bool) -> dict[str, Any]:
    """:func:`project` for a :func:`_simple_shape` projection: the document's own field order
    with ``_id`` first, as the general path returns. Nested values are shared with ``doc``
    (the general path copies them): results are only encoded, and a find without a projection
    returns the stored document itself to the same consumers."""
    if inclusion:
        result = {"_id": doc["_id"]} if keep_id and "_id" in doc else {}
        for name, value in doc.items():
            if name in names:
                result[name] = value
        return result
    result = {name: value for name, value in doc.items() if name not in names}
    if not keep_id:
        result.pop("_id", None)
    elif "_id" in result and next(iter(result)) != "_id":
        return {"_id": result.pop("_id"), **result}
    return result


def project(doc: dict[str, Any], projection: dict[str, Any] | None,
            variables: dict[str, Any], query: dict[str, Any] | None = None) -> dict[str, Any]:
    """Apply a find-style projection to one document (``query`` serves ``"a.$"``)."""
    if not projection:
        return doc
    shape = _simple_shape(projection)
    if shape is not None:
        return _project_simple(doc, *shape)
    if any(_is_projection_expression(v) for v in projection.values()):
        # MongoDB 4.4+ accepts aggregation expressions in find projections: run them as $project.
        [projected] = run_pipeline([doc], [{"$project": projection}], _NO_FOREIGN, variables)
        return projected
    positional = [key[: -len(".$")] for key in projection if key.endswith(".$")]
    fields = dict(projection)
    if positional:
        if len(positional) > 1:
            raise CommandError(ErrorCode.Location31276,
                               "Cannot specify more than one positional projection per "
                               "query.")
        for path in positional:
            del fields[path + ".$"]
            fields[path] = 1
    try:
        result: dict[str, Any] = dict(UPDATER._copy_only_fields(doc, fields, dict))
    except EVALUATION_ERRORS as exc:
        raise translate(exc) from exc
    for path in positional:
        if direct_get(doc, path) is not MISSING:
            set_path(result, path, _positional_element(doc, path, query, variables))
    if "_id" in result:
        return {"_id": result.pop("_id"), **result}
    return result


