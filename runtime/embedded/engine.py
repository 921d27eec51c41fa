"""Query, update, projection and aggregation semantics, delegated to mongomock-ng.

The server owns storage, indexes, the change log and transactions; what a filter matches, what an
update operator does to one document and what a pipeline stage computes comes from mongomock-ng,
used as a library of primitives (never as storage). This module is the only place that touches it,
so the engine can be swapped. It also covers the library's known gaps: ``$mod``, ``$mul``, BSON
numeric types under ``$inc``, per-document atomicity of a failed update, ``$$NOW`` and error codes.
"""

from __future__ import annotations

import copy
import datetime
import operator
from collections.abc import Callable, Iterable
from decimal import Decimal
from typing import Any, Protocol

import mongomock_ng
from bson.decimal128 import Decimal128
from bson.int64 import Int64
from bson.timestamp import Timestamp
from mongomock_ng import aggregate as mm_aggregate
from mongomock_ng import collection as mm_collection
from mongomock_ng import filtering as mm_filtering
from pymongo.errors import OperationFailure, PyMongoError

from runtime.embedded.errors import CommandError, WriteError

UPDATE_OPERATORS = frozenset(
    {"$set", "$unset", "$inc", "$mul", "$min", "$max", "$rename", "$setOnInsert", "$push",
     "$addToSet", "$pull", "$pullAll", "$pop", "$currentDate", "$bit"}
)
UPDATE_PIPELINE_STAGES = frozenset(
    {"$addFields", "$set", "$project", "$unset", "$replaceRoot", "$replaceWith"}
)
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1


def _numeric_result(a: Any, b: Any, op: Callable[[Any, Any], Any]) -> Any:
    """Apply ``op`` keeping MongoDB's result type (int32 -> int64 on overflow, double wins)."""
    for value in (a, b):
        if isinstance(value, bool) or not isinstance(value, int | float | Decimal128):
            raise WriteError(14, f"Cannot apply arithmetic to non-numeric value {value!r}")
    if isinstance(a, Decimal128) or isinstance(b, Decimal128):
        da = a.to_decimal() if isinstance(a, Decimal128) else Decimal(str(a))
        db = b.to_decimal() if isinstance(b, Decimal128) else Decimal(str(b))
        return Decimal128(op(da, db))
    if isinstance(a, float) or isinstance(b, float):
        return float(op(a, b))
    result = op(int(a), int(b))
    if isinstance(a, Int64) or isinstance(b, Int64) or not INT32_MIN <= result <= INT32_MAX:
        if not -(2**63) <= result < 2**63:
            raise WriteError(2, "integer overflow")
        return Int64(result)
    return int(result)


def _arith_updater(op: Callable[[Any, Any], Any], missing: Callable[[Any], Any]) -> Any:
    def updater(doc: Any, field_name: str, value: Any, codec_options: Any = None) -> None:
        if isinstance(doc, dict):
            if field_name in doc:
                doc[field_name] = _numeric_result(doc[field_name], value, op)
            else:
                _numeric_result(0, value, op)  # validates the operand
                doc[field_name] = missing(value)
        elif isinstance(doc, list):
            index = int(field_name)
            if index < len(doc):
                doc[index] = _numeric_result(doc[index], value, op)
            else:
                doc.extend([None] * (index + 1 - len(doc)))
                doc[index] = missing(value)

    return updater


def _zero_like(value: Any) -> Any:
    if isinstance(value, Decimal128):
        return Decimal128("0")
    if isinstance(value, float):
        return 0.0
    if isinstance(value, Int64):
        return Int64(0)
    return 0


def _mod_operator(doc_value: Any, spec: Any) -> bool:
    if not isinstance(spec, list) or len(spec) != 2:
        raise OperationFailure("malformed mod, needs to be an array of two numbers", code=2)
    divisor, remainder = spec
    if not isinstance(divisor, int | float) or not isinstance(remainder, int | float):
        raise OperationFailure("malformed mod, divisor and remainder must be numbers", code=2)
    if int(divisor) == 0:
        raise OperationFailure("divisor cannot be 0", code=2)
    if isinstance(doc_value, bool) or not isinstance(doc_value, int | float):
        return False
    value = int(doc_value)
    result = abs(value) % abs(int(divisor))
    return (result if value >= 0 else -result) == int(remainder)


# mongomock-ng keeps its operators in tables; the gaps are filled by registering in them.
mm_collection._updaters["$inc"] = _arith_updater(operator.add, lambda v: v)
mm_collection._updaters["$mul"] = _arith_updater(operator.mul, _zero_like)
mm_filtering._filterer_inst._operator_map["$mod"] = mm_filtering._list_expand(_mod_operator)

_UPDATER = mongomock_ng.MongoClient().get_database("reactgen_engine").get_collection("updater")


class ForeignCollections(Protocol):
    """What ``$lookup``, ``$unionWith`` and ``$graphLookup`` need: another collection's documents."""

    def documents(self, collection: str) -> list[dict[str, Any]]:
        """Copies of every document of a collection of the same database."""
        ...


class _ForeignCollection:
    def __init__(self, docs: list[dict[str, Any]], variables: dict[str, Any]) -> None:
        self._docs = docs
        self._variables = variables

    def find(self, query: dict[str, Any] | None = None, *args: Any, **kwargs: Any) -> Any:
        return [d for d in self._docs if matches(query or {}, d, self._variables)]

    def aggregate(self, pipeline: list[dict[str, Any]], *args: Any, **kwargs: Any) -> Any:
        return list(mm_aggregate.process_pipeline(list(self._docs), None, pipeline, None,
                                                  user_vars=self._variables))


class _DatabaseAdapter:
    def __init__(self, source: ForeignCollections, variables: dict[str, Any]) -> None:
        self._source = source
        self._variables = variables

    def get_collection(self, name: str) -> _ForeignCollection:
        return _ForeignCollection(self._source.documents(name), self._variables)

    def __getitem__(self, name: str) -> _ForeignCollection:
        return self.get_collection(name)


def system_variables(now: datetime.datetime, cluster_time: Timestamp) -> dict[str, Any]:
    """``$$NOW`` and ``$$CLUSTER_TIME`` for one command (the same value for all its documents)."""
    return {"NOW": now, "CLUSTER_TIME": cluster_time}


def _translate(exc: Exception, default_code: int = 2) -> CommandError:
    if isinstance(exc, CommandError):
        return exc
    if isinstance(exc, WriteError):
        return exc.as_command_error()
    if isinstance(exc, OperationFailure):
        return CommandError(exc.code or default_code, str(exc.details.get("errmsg", exc))
                            if exc.details else str(exc))
    if isinstance(exc, NotImplementedError):
        return CommandError(2, f"not supported by the embedded server: {exc}")
    return CommandError(default_code, f"{type(exc).__name__}: {exc}")


def matches(query: dict[str, Any], doc: dict[str, Any], variables: dict[str, Any]) -> bool:
    """Whether ``doc`` matches the query filter ``query``."""
    if not query:
        return True
    try:
        return bool(mm_filtering.filter_applies(query, doc, user_vars=variables))
    except (PyMongoError, NotImplementedError, TypeError, ValueError, KeyError) as exc:
        raise _translate(exc) from exc


def validate_filter(query: Any) -> dict[str, Any]:
    """Reject filters that are not documents (answered as BadValue / TypeMismatch)."""
    if query is None:
        return {}
    if not isinstance(query, dict):
        raise CommandError(14, "filter must be an object")
    return query


def _paths_conflict(a: str, b: str) -> bool:
    return a == b or a.startswith(b + ".") or b.startswith(a + ".")


def validate_update_document(update: dict[str, Any]) -> None:
    """Check an operator update before applying it: known operators, no conflicting paths."""
    seen: list[str] = []
    for op_name, fields in update.items():
        if not op_name.startswith("$"):
            raise WriteError(9, "Unknown modifier: cannot mix update operators and plain fields")
        if op_name not in UPDATE_OPERATORS:
            raise WriteError(9, f"Unknown modifier: {op_name}. Expected a valid update modifier")
        if not isinstance(fields, dict):
            raise WriteError(9, f"Modifiers operate on fields but we found type "
                             f"{type(fields).__name__} instead: {{{op_name}: {fields!r}}}")
        paths = list(fields)
        if op_name == "$rename":
            paths += [v for v in fields.values() if isinstance(v, str)]
        for path in paths:
            if path == "":
                raise WriteError(56, "An empty update path is not valid.")
            for other in seen:
                if _paths_conflict(path, other):
                    raise WriteError(40, f"Updating the path '{path}' would create a conflict "
                                     f"at '{other}'")
            seen.append(path)


def is_operator_update(update: dict[str, Any]) -> bool:
    """An update document made of ``$`` operators (as opposed to a replacement)."""
    return bool(update) and next(iter(update)).startswith("$")


def validate_replacement(doc: dict[str, Any]) -> None:
    """A replacement document may not contain update operators."""
    for key in doc:
        if key.startswith("$"):
            raise WriteError(9, f"Unknown modifier: {key}; a replacement document cannot "
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
    new_doc = copy.deepcopy(doc)
    try:
        if isinstance(update, list):
            for stage in update:
                if not isinstance(stage, dict) or len(stage) != 1:
                    raise WriteError(9, "each update pipeline stage must be a single-key object")
                name = next(iter(stage))
                if name not in UPDATE_PIPELINE_STAGES:
                    raise WriteError(72, f"{name} is not allowed to be used within an update")
            [result] = mm_aggregate.process_pipeline([new_doc], None, update, None,
                                                     user_vars=variables)
            new_doc = dict(result)
        else:
            validate_update_document(update)
            _UPDATER._current_array_filters = array_filters or []
            try:
                _UPDATER._apply_update_document(new_doc, query, update, is_insert)
            finally:
                _UPDATER._current_array_filters = None
    except WriteError:
        raise
    except (PyMongoError, NotImplementedError, TypeError, ValueError, KeyError, IndexError,
            AttributeError) as exc:
        error = _translate(exc, default_code=14)
        raise WriteError(error.code, error.message) from exc
    if "_id" in doc and ("_id" not in new_doc or new_doc["_id"] != doc["_id"]):
        raise WriteError(66, "Performing an update on the path '_id' would modify the immutable "
                         "field '_id'")
    if "_id" in new_doc and new_doc["_id"] != next(iter(new_doc.values())):
        new_doc = {"_id": new_doc["_id"], **{k: v for k, v in new_doc.items() if k != "_id"}}
    return new_doc


def upsert_seed(query: dict[str, Any]) -> dict[str, Any]:
    """The document an upsert starts from: the query's equality fields."""
    seed: dict[str, Any] = {}

    def take(q: dict[str, Any]) -> None:
        for key, value in q.items():
            if key == "$and" and isinstance(value, list):
                for part in value:
                    if isinstance(part, dict):
                        take(part)
                continue
            if key.startswith("$"):
                continue
            if isinstance(value, dict) and value and next(iter(value)).startswith("$"):
                if "$eq" in value:
                    _set_path(seed, key, copy.deepcopy(value["$eq"]))
                continue
            _set_path(seed, key, copy.deepcopy(value))

    take(query)
    return seed


def _set_path(doc: dict[str, Any], path: str, value: Any) -> None:
    parts = path.split(".")
    target = doc
    for part in parts[:-1]:
        nxt = target.get(part)
        if not isinstance(nxt, dict):
            nxt = {}
            target[part] = nxt
        target = nxt
    target[parts[-1]] = value


def _positional_filter(query: dict[str, Any] | None,
                       projection: dict[str, Any]) -> dict[str, Any] | None:
    """The query clauses on the arrays a positional projection (``"a.$": 1``) names."""
    arrays = [key[: -len(".$")] for key in projection if key.endswith(".$")]
    if not arrays or not query:
        return None
    clauses: dict[str, Any] = {}
    for key, value in query.items():
        if any(key == a or key.startswith(a + ".") for a in arrays):
            clauses[key] = value
    return clauses or None


def project(doc: dict[str, Any], projection: dict[str, Any] | None,
            variables: dict[str, Any], query: dict[str, Any] | None = None) -> dict[str, Any]:
    """Apply a find-style projection to one document (``query`` serves ``"a.$"``)."""
    if not projection:
        return doc
    positional = _positional_filter(query, projection)
    if positional is None and any(key.endswith(".$") for key in projection):
        raise CommandError(51246, "Executor error during find command :: caused by :: "
                           "positional operator '.$' couldn't find a matching element in the "
                           "array")
    try:
        result = dict(_UPDATER._copy_only_fields(doc, dict(projection), dict, positional))
    except (PyMongoError, NotImplementedError, TypeError, ValueError, KeyError) as exc:
        raise _translate(exc) from exc
    if "_id" in result:
        return {"_id": result.pop("_id"), **result}
    return result


def run_pipeline(
    docs: Iterable[dict[str, Any]],
    pipeline: list[dict[str, Any]],
    foreign: ForeignCollections,
    variables: dict[str, Any],
) -> list[dict[str, Any]]:
    """Run aggregation stages over copies of ``docs``."""
    inputs = [copy.deepcopy(d) for d in docs]
    for stage in pipeline:
        if not isinstance(stage, dict) or len(stage) != 1:
            raise CommandError(40323, "A pipeline stage specification object must contain "
                               "exactly one field.")
        name = next(iter(stage))
        if name not in mm_aggregate._PIPELINE_HANDLERS:
            raise CommandError(40324, f"Unrecognized pipeline stage name: '{name}'")
        if mm_aggregate._PIPELINE_HANDLERS[name] is None:
            raise CommandError(40324, f"Pipeline stage {name} is not supported by the embedded "
                               "server")
    try:
        out = mm_aggregate.process_pipeline(inputs, _DatabaseAdapter(foreign, variables),
                                            pipeline, None, user_vars=variables)
        return [_id_first(dict(d)) for d in out]
    except CommandError:
        raise
    except (PyMongoError, NotImplementedError, TypeError, ValueError, KeyError, IndexError,
            AttributeError, ZeroDivisionError) as exc:
        raise _translate(exc) from exc


def _id_first(doc: dict[str, Any]) -> dict[str, Any]:
    if "_id" in doc and next(iter(doc)) != "_id":
        return {"_id": doc.pop("_id"), **doc}
    return doc


def known_stage(name: str) -> bool:
    """Whether the aggregation engine implements a stage."""
    return mm_aggregate._PIPELINE_HANDLERS.get(name) is not None
