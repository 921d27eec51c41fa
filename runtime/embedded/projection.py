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


def project(doc: dict[str, Any], projection: dict[str, Any] | None,
            variables: dict[str, Any], query: dict[str, Any] | None = None) -> dict[str, Any]:
    """Apply a find-style projection to one document (``query`` serves ``"a.$"``)."""
    if not projection:
        return doc
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


