"""Change-stream pipelines compiled from triggers.

The pre-filter runs on the server: it keeps only the reactors' collections and the operation
types the planner needs, and passes an update only when its ``updateDescription`` touches a
watched or filtered path (the path itself, one of its ancestors or one of its descendants), so
updates of unrelated fields never leave the database. Array indexes in update paths
(``items.3.sku``) are ignored when comparing, matching the path ``items.sku``. Inserts, replaces
and deletes always pass: the planner decides what they mean, and a delete is never filtered by
document content.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

DOCUMENT_EVENTS = ["insert", "replace", "delete"]
LIFECYCLE_EVENTS = ["drop", "rename"]


def normalise_path(path: str) -> str:
    """A dotted path without numeric (array index) segments."""
    return ".".join(part for part in path.split(".") if not part.isdigit())


def _normalise_expression(value: str) -> dict[str, Any]:
    return {
        "$reduce": {
            "input": {"$filter": {
                "input": {"$split": [value, "."]},
                "as": "segment",
                "cond": {"$not": {"$regexMatch": {"input": "$$segment", "regex": "^[0-9]+$"}}},
            }},
            "initialValue": "",
            "in": {"$cond": [{"$eq": ["$$value", ""]}, "$$this",
                             {"$concat": ["$$value", ".", "$$this"]}]},
        }
    }


def touches_expression(paths: Iterable[str]) -> dict[str, Any]:
    """An aggregation expression true when an update event touches any of ``paths``."""
    watched = sorted({normalise_path(p) for p in paths if normalise_path(p)})
    exact: set[str] = set()
    for path in watched:
        parts = path.split(".")
        for end in range(1, len(parts) + 1):
            exact.add(".".join(parts[:end]))
    descendants = "^(?:" + "|".join(re.escape(p) for p in watched) + ")\\."
    tests: list[Any] = [{"$in": ["$$path", sorted(exact)]},
                        {"$regexMatch": {"input": "$$path", "regex": descendants}}]
    return {
        "$let": {
            "vars": {"changed": {"$concatArrays": [
                {"$map": {"input": {"$objectToArray": {
                    "$ifNull": ["$updateDescription.updatedFields", {}]}},
                    "as": "field", "in": "$$field.k"}},
                {"$ifNull": ["$updateDescription.removedFields", []]},
                {"$map": {"input": {"$ifNull": ["$updateDescription.truncatedArrays", []]},
                          "as": "array", "in": "$$array.field"}},
            ]}},
            "in": {"$anyElementTrue": [{"$map": {
                "input": "$$changed",
                "as": "raw",
                "in": {"$let": {"vars": {"path": _normalise_expression("$$raw")},
                                "in": {"$or": tests}}},
            }}]},
        }
    }


def collection_clause(collection: str, paths: set[str] | None) -> dict[str, Any]:
    """Events of one collection that the planner needs; ``paths=None`` = every update.

    With no paths at all (``watch: []`` and no filter) no update can matter, so none passes.
    """
    events = {"operationType": {"$in": DOCUMENT_EVENTS + LIFECYCLE_EVENTS}}
    if paths is not None and not {normalise_path(p) for p in paths} - {""}:
        return {"ns.coll": collection, **events}
    update: dict[str, Any] = {"operationType": "update"}
    if paths is not None:
        update["$expr"] = touches_expression(paths)
    return {
        "ns.coll": collection,
        "$or": [events, update],
    }


def pipeline_for(clauses: list[dict[str, Any]], database_events: bool) -> list[dict[str, Any]]:
    """A ``$match`` stage over collection clauses (plus ``dropDatabase`` for database streams)."""
    alternatives = list(clauses)
    if database_events:
        alternatives.append({"operationType": {"$in": ["dropDatabase", "invalidate"]}})
    match = alternatives[0] if len(alternatives) == 1 else {"$or": alternatives}
    return [{"$match": match}]


def merge_paths(existing: set[str] | None, added: set[str] | None,
                first: bool) -> set[str] | None:
    """Union of watched paths of reactors sharing a collection (None = whole document)."""
    if added is None or (existing is None and not first):
        return None
    return set(added) if first else (existing or set()) | added
