"""Aggregation stages and the pipeline runner.

mongomock-ng's stage table is used, with the stages it gets wrong replaced (``$sort``,
``$count``, ``$unwind``, ``$limit``, ``$skip``, ``$sortByCount``, ``$lookup`` with a dotted
``as``, ``$addFields``/``$set`` removing a field set to a missing value) and MongoDB's error
codes. :func:`run_pipeline` runs a pipeline over documents; :data:`SUPPORTED_STAGES` lists the
stages it implements.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any, Protocol

from bson.int64 import Int64
from pymongo.errors import OperationFailure

from runtime.embedded.engine_support import (
    EVALUATION_ERRORS,
    NOTHING,
    direct_get,
    mm_aggregate,
    set_path,
    translate,
    unset_path,
)
from runtime.embedded.errors import CommandError, ErrorCode
from runtime.embedded.ordering import MISSING, document_sort_key
from runtime.embedded.query_operators import matches

# -- aggregation stages that mongomock-ng gets wrong ---------------------------------------------


def _count_stage(docs: list[dict[str, Any]], database: Any, options: Any,
                 variables: Any) -> list[dict[str, Any]]:
    if not isinstance(options, str) or not options or options.startswith("$") or "." in options:
        raise OperationFailure("the count field must be a non-empty string without '$' or '.'",
                               code=ErrorCode.Location40156)
    return [{options: len(docs)}] if docs else []


def _unwind_stage(docs: list[dict[str, Any]], database: Any, options: Any,
                  variables: Any) -> list[dict[str, Any]]:
    spec = options if isinstance(options, dict) else {"path": options}
    path = spec.get("path")
    if not isinstance(path, str) or not path.startswith("$") or len(path) < 2:
        raise OperationFailure("$unwind path must be a field path prefixed with '$'",
                               code=ErrorCode.Location28818)
    path = path[1:]
    index_field = spec.get("includeArrayIndex")
    preserve = bool(spec.get("preserveNullAndEmptyArrays"))
    out: list[dict[str, Any]] = []
    for doc in docs:
        value = direct_get(doc, path)
        if isinstance(value, list) and value:
            for position, item in enumerate(value):
                new = copy.deepcopy(doc)
                set_path(new, path, item)
                if index_field:
                    set_path(new, index_field, Int64(position))
                out.append(new)
            continue
        if isinstance(value, list) or value is MISSING or value is None:
            if preserve:
                new = copy.deepcopy(doc)
                if isinstance(value, list):
                    unset_path(new, path)
                if index_field:
                    set_path(new, index_field, None)
                out.append(new)
            continue
        new = copy.deepcopy(doc)
        if index_field:
            set_path(new, index_field, None)
        out.append(new)
    return out


def _sort_stage(docs: list[dict[str, Any]], database: Any, options: Any,
                variables: Any) -> list[dict[str, Any]]:
    if not isinstance(options, dict) or not options:
        raise OperationFailure("the $sort key specification must be an object",
                               code=ErrorCode.Location15973)
    spec: list[tuple[str, int]] = []
    for path, direction in options.items():
        if isinstance(direction, dict):
            spec.append((path, -1))
        elif direction in (1, -1):
            spec.append((path, int(direction)))
        else:
            raise OperationFailure("$sort key ordering must be 1 (for ascending) or -1 (for "
                                   "descending)", code=ErrorCode.Location15975)
    return sorted(docs, key=lambda d: document_sort_key(d, spec))


def _positive_integer(value: Any) -> bool:
    return (isinstance(value, int | float | Int64) and not isinstance(value, bool)
            and float(value).is_integer())


def _limit_stage(docs: list[dict[str, Any]], database: Any, options: Any,
                 variables: Any) -> list[dict[str, Any]]:
    if not _positive_integer(options) or options <= 0:
        raise OperationFailure(f"invalid argument to $limit stage: the limit must be positive "
                               f"(got {options!r})", code=ErrorCode.Location15958)
    return docs[: int(options)]


def _skip_stage(docs: list[dict[str, Any]], database: Any, options: Any,
                variables: Any) -> list[dict[str, Any]]:
    if not _positive_integer(options) or options < 0:
        raise OperationFailure(f"invalid argument to $skip stage: the number to skip cannot be "
                               f"negative (got {options!r})", code=ErrorCode.Location15956)
    return docs[int(options):]


def _sort_by_count_stage(docs: list[dict[str, Any]], database: Any, options: Any,
                         variables: Any) -> list[dict[str, Any]]:
    if not (isinstance(options, str) and options.startswith("$")) and not (
        isinstance(options, dict) and len(options) == 1 and next(iter(options)).startswith("$")
    ):
        raise OperationFailure("the sortByCount field must be defined as a $-prefixed path or "
                               "an expression inside an object", code=ErrorCode.Location40148)
    grouped = _original_group(docs, database, {"_id": options, "count": {"$sum": 1}}, variables)
    return _sort_stage(grouped, database, {"count": -1}, variables)


class _RedactAction:
    """The value of ``$$KEEP``, ``$$PRUNE`` or ``$$DESCEND`` (distinct from any BSON value)."""

    def __init__(self, name: str) -> None:
        self.name = name


_KEEP, _PRUNE, _DESCEND = (_RedactAction(n) for n in ("KEEP", "PRUNE", "DESCEND"))


def _redacted(doc: dict[str, Any], expression: Any, variables: dict[str, Any]) -> Any:
    """``doc`` as ``$redact`` leaves it, None if pruned."""
    action = mm_aggregate._parse_expression(expression, doc, user_vars=variables)
    if action is _PRUNE:
        return None
    if action is _KEEP:
        return doc
    if action is not _DESCEND:
        raise CommandError(ErrorCode.Location17053,
                           "$redact's expression should not return anything aside from the "
                           "variables $$KEEP, $$DESCEND, and $$PRUNE")
    out: dict[str, Any] = {}
    for key, value in doc.items():
        if isinstance(value, dict):
            value = _redacted(value, expression, variables)
            if value is None:
                continue
        elif isinstance(value, list):
            value = [_redacted(v, expression, variables) if isinstance(v, dict) else v
                     for v in value]
            value = [v for v in value if v is not None]
        out[key] = value
    return out


def _redact_stage(docs: list[dict[str, Any]], database: Any, options: Any,
                  variables: Any) -> list[dict[str, Any]]:
    """``$redact`` with the command's variables (``$$NOW``, ``let``) next to its own."""
    scope = {**(variables or {}), "KEEP": _KEEP, "PRUNE": _PRUNE, "DESCEND": _DESCEND}
    kept = (_redacted(doc, options, scope) for doc in docs)
    return [doc for doc in kept if doc is not None]


def _lookup_stage(docs: list[dict[str, Any]], database: Any, options: Any,
                  variables: Any) -> list[dict[str, Any]]:
    target = options.get("as") if isinstance(options, dict) else None
    if not isinstance(target, str) or "." not in target:
        return list(_original_lookup(docs, database, options, variables))
    temporary = "__embedded_lookup_as__"
    out = _original_lookup(docs, database, {**options, "as": temporary}, variables)
    for doc in out:
        set_path(doc, target, doc.pop(temporary))
    return list(out)


def _add_fields_stage(in_collection: list[dict[str, Any]], database: Any,
                      options: dict[str, Any], user_vars: Any) -> list[dict[str, Any]]:
    """``$addFields``/``$set`` where a missing value (``$$REMOVE``, an absent path) removes
    the field, as MongoDB does; the library kept the old value instead."""
    if not options:
        raise OperationFailure("Invalid $addFields :: caused by :: specification must have "
                               "at least one field")
    out_collection = [dict(doc) for doc in in_collection]
    for field, value in options.items():
        parts = field.split(".")
        for in_doc, out_doc in zip(in_collection, out_collection, strict=True):
            out_value = mm_aggregate._parse_expression(value, in_doc, user_vars=user_vars)
            target = out_doc
            for part in parts[:-1]:
                child = target.get(part)
                if not isinstance(child, dict):
                    if out_value is NOTHING:
                        break
                    child = {}
                else:
                    child = dict(child)
                target[part] = child
                target = child
            else:
                if out_value is NOTHING:
                    target.pop(parts[-1], None)
                else:
                    target[parts[-1]] = out_value
    return out_collection


mm_aggregate._PIPELINE_HANDLERS["$addFields"] = _add_fields_stage
mm_aggregate._PIPELINE_HANDLERS["$set"] = _add_fields_stage

_original_group = mm_aggregate._PIPELINE_HANDLERS["$group"]
_original_lookup = mm_aggregate._PIPELINE_HANDLERS["$lookup"]

mm_aggregate._PIPELINE_HANDLERS["$count"] = _count_stage
mm_aggregate._PIPELINE_HANDLERS["$unwind"] = _unwind_stage
mm_aggregate._PIPELINE_HANDLERS["$sort"] = _sort_stage
mm_aggregate._PIPELINE_HANDLERS["$limit"] = _limit_stage
mm_aggregate._PIPELINE_HANDLERS["$skip"] = _skip_stage
mm_aggregate._PIPELINE_HANDLERS["$sortByCount"] = _sort_by_count_stage
mm_aggregate._PIPELINE_HANDLERS["$lookup"] = _lookup_stage
mm_aggregate._PIPELINE_HANDLERS["$redact"] = _redact_stage

class ForeignCollections(Protocol):
    """What ``$lookup``, ``$unionWith`` and ``$graphLookup`` need: other collections' documents."""

    def documents(self, collection: str) -> list[dict[str, Any]]:
        """Copies of every document of a collection of the same database."""
        ...


class _ForeignCollection:
    def __init__(self, docs: list[dict[str, Any]], database: _DatabaseAdapter) -> None:
        self._docs = docs
        self._database = database

    def find(self, query: dict[str, Any] | None = None, *args: Any, **kwargs: Any) -> Any:
        variables = self._database.variables
        return [d for d in self._docs if matches(query or {}, d, variables)]

    def aggregate(self, pipeline: list[dict[str, Any]], *args: Any, **kwargs: Any) -> Any:
        return list(mm_aggregate.process_pipeline(list(self._docs), self._database, pipeline,
                                                  None, user_vars=self._database.variables))


class _DatabaseAdapter:
    """The database object mongomock-ng's stages expect (``$lookup`` reads collections)."""

    name = "embedded"

    def __init__(self, source: ForeignCollections, variables: dict[str, Any]) -> None:
        self._source = source
        self.variables = variables

    def get_collection(self, name: str) -> _ForeignCollection:
        return _ForeignCollection(self._source.documents(name), self)

    def __getitem__(self, name: str) -> _ForeignCollection:
        return self.get_collection(name)


def run_pipeline(
    docs: Iterable[dict[str, Any]],
    pipeline: list[dict[str, Any]],
    foreign: ForeignCollections,
    variables: dict[str, Any],
) -> list[dict[str, Any]]:
    """Run aggregation stages over ``docs`` (copied first unless every stage leaves its input
    documents untouched)."""
    inputs = list(docs) if _leaves_inputs_alone(pipeline) else [copy.deepcopy(d) for d in docs]
    for stage in pipeline:
        if not isinstance(stage, dict) or len(stage) != 1:
            raise CommandError(ErrorCode.Location40323,
                               "A pipeline stage specification object must contain "
                               "exactly one field.")
        name = next(iter(stage))
        if name not in mm_aggregate._PIPELINE_HANDLERS:
            raise CommandError(ErrorCode.Location40324,
                               f"Unrecognized pipeline stage name: '{name}'")
        if mm_aggregate._PIPELINE_HANDLERS[name] is None:
            raise CommandError(ErrorCode.Location40324,
                               f"Pipeline stage {name} is not supported by the embedded "
                               "server")
    pipeline = [_nest_dotted_projection(stage) for stage in pipeline]
    try:
        out = mm_aggregate.process_pipeline(inputs, _DatabaseAdapter(foreign, variables),
                                            pipeline, None, user_vars=variables)
        return [_id_first(dict(d)) for d in out]
    except CommandError:
        raise
    except EVALUATION_ERRORS as exc:
        raise translate(exc) from exc


# Stages whose implementation builds new documents (or filters/reorders them) and never
# writes into its input documents. Stored documents are never mutated in place, so a pipeline
# made only of these can read them directly instead of deep-copying every input.
_NON_MUTATING_STAGES = frozenset({"$match", "$project", "$group", "$sort", "$skip", "$limit",
                                  "$count", "$sortByCount", "$addFields", "$set",
                                  "$replaceRoot", "$replaceWith"})


def _leaves_inputs_alone(pipeline: list[dict[str, Any]]) -> bool:
    for stage in pipeline:
        if not isinstance(stage, dict) or len(stage) != 1:
            return False
        name, spec = next(iter(stage.items()))
        if name == "$facet":
            if not isinstance(spec, dict) or not all(
                    isinstance(p, list) and _leaves_inputs_alone(p) for p in spec.values()):
                return False
        elif name not in _NON_MUTATING_STAGES:
            return False
    return True


def _nest_dotted_projection(stage: dict[str, Any]) -> dict[str, Any]:
    """``{$project: {"a.b": <expression>}}`` as ``{$project: {a: {b: <expression>}}}``.

    mongomock-ng would create a top-level field literally named "a.b"; MongoDB treats a dotted
    key as a path. Inclusion/exclusion flags (0/1/true/false) are left dotted, which it handles.
    """
    spec = stage.get("$project")
    if not isinstance(spec, dict) or not any(
            "." in k and not _is_flag(v) for k, v in spec.items()):
        return stage
    nested: dict[str, Any] = {}
    for key, value in spec.items():
        if "." not in key or _is_flag(value):
            nested[key] = value
            continue
        *parents, leaf = key.split(".")
        target = nested
        for part in parents:
            child = target.get(part)
            if not isinstance(child, dict):
                child = {}
                target[part] = child
            target = child
        target[leaf] = value
    return {"$project": nested}


def _is_flag(value: Any) -> bool:
    return isinstance(value, bool | int | float) and not isinstance(value, str) and value in (
        0, 1)


def _id_first(doc: dict[str, Any]) -> dict[str, Any]:
    if "_id" in doc and next(iter(doc)) != "_id":
        return {"_id": doc.pop("_id"), **doc}
    return doc


def known_stage(name: str) -> bool:
    """Whether the aggregation engine implements a stage."""
    return mm_aggregate._PIPELINE_HANDLERS.get(name) is not None



#: Every aggregation stage the engine runs (the stage table's entries with an implementation).
SUPPORTED_STAGES: frozenset[str] = frozenset(
    name for name, handler in mm_aggregate._PIPELINE_HANDLERS.items() if handler is not None)
