"""``explain``: how a find, aggregate, count, distinct, update, delete or findAndModify would run.

The answer has MongoDB's shape: ``queryPlanner.winningPlan`` is a tree of stages (``COLLSCAN``,
or ``IXSCAN`` with ``indexName``/``keyPattern`` under ``FETCH``; ``SORT`` when no index gives the
order; ``SKIP``/``LIMIT``; ``COUNT``/``UPDATE``/``DELETE`` on top), and with the default verbosity
``executionStats`` reports what running the plan read (``totalKeysExamined``,
``totalDocsExamined``) and returned (``nReturned``). Writes are planned and read, never applied.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from bson.int64 import Int64

from runtime.embedded import collation, engine, planner
from runtime.embedded.commands import arguments
from runtime.embedded.commands.registry import CommandContext, sort_option
from runtime.embedded.errors import CommandError, ErrorCode
from runtime.embedded.storage import Collection


class Verbosity(StrEnum):
    """How much ``explain`` reports."""

    QUERY_PLANNER = "queryPlanner"
    EXECUTION_STATS = "executionStats"
    ALL_PLANS = "allPlansExecution"


@dataclass
class _Query:
    """What an explained command reads, and the stage it puts on top of the read."""

    collection: str
    query: dict[str, Any]
    sort: list[tuple[str, int]] | None = None
    skip: int = 0
    limit: int = 0
    top: str | None = None  # COUNT, UPDATE, DELETE, DISTINCT_SCAN...


def _number(body: dict[str, Any], name: str) -> int:
    value = arguments.Fields(body, "explain").integer(name, 0, minimum=None) or 0
    return min(abs(value), arguments.INT64_MAX)


def _first(body: dict[str, Any], field: str, kind: str) -> dict[str, Any]:
    statements = body.get(field)
    if not isinstance(statements, list) or not statements or not isinstance(statements[0], dict):
        raise CommandError(ErrorCode.FailedToParse,
                           f"explain of {kind} needs at least one statement in '{field}'")
    statement: dict[str, Any] = statements[0]
    return statement


def _describe(name: str, body: dict[str, Any]) -> _Query:
    """The read an explainable command performs."""
    target = body.get(name)
    if type(target) is not str or not target:
        raise CommandError(ErrorCode.InvalidNamespace, f"'{name}' needs a collection name string")
    if name == "find":
        return _Query(target, engine.validate_filter(body.get("filter")), sort_option(body),
                      _number(body, "skip"), _number(body, "limit"))
    if name == "count":
        return _Query(target, engine.validate_filter(body.get("query")), None,
                      _number(body, "skip"), _number(body, "limit"), "COUNT")
    if name == "distinct":
        return _Query(target, engine.validate_filter(body.get("query")), top="DISTINCT")
    if name == "update":
        statement = _first(body, "updates", "update")
        return _Query(target, engine.validate_filter(statement.get("q")),
                      sort_option(statement, "sort"), 0,
                      0 if statement.get("multi") else 1, "UPDATE")
    if name == "delete":
        statement = _first(body, "deletes", "delete")
        return _Query(target, engine.validate_filter(statement.get("q")),
                      sort_option(statement, "sort"), 0, _number(statement, "limit"), "DELETE")
    if name in ("findAndModify", "findandmodify"):
        return _Query(target, engine.validate_filter(body.get("query")), sort_option(body), 0,
                      1, "DELETE" if body.get("remove") else "UPDATE")
    if name == "aggregate":
        pipeline = body.get("pipeline")
        query: dict[str, Any] = {}
        if isinstance(pipeline, list) and pipeline and isinstance(pipeline[0], dict) and \
                isinstance(pipeline[0].get("$match"), dict):
            query = pipeline[0]["$match"]
        return _Query(target, query)
    raise CommandError(ErrorCode.BadValue,
                       f"explain of '{name}' is not supported by the embedded server")


def _winning_plan(coll: Collection | None, read: _Query, chosen: planner.Plan) -> dict[str, Any]:
    stage: dict[str, Any]
    if chosen.index is None or coll is None:
        stage = {"stage": "COLLSCAN", "filter": read.query, "direction": "forward"}
    else:
        index = coll.indexes[chosen.index]
        scan = {"stage": "IXSCAN", "keyPattern": dict(index.spec.key),
                "indexName": chosen.index, "isMultiKey": index.multikey,
                "isUnique": index.spec.unique, "isSparse": index.spec.sparse,
                "isPartial": index.spec.partial_filter is not None,
                "direction": "backward" if chosen.reverse else "forward"}
        stage = {"stage": "FETCH", "inputStage": scan}
        if read.query:
            stage["filter"] = read.query
    if read.sort and not chosen.sorted_by_index:
        stage = {"stage": "SORT", "sortPattern": dict(read.sort),
                 "memLimit": 104857600, "type": "simple", "inputStage": stage}
        if read.limit:
            stage["limitAmount"] = read.limit + read.skip
    if read.skip:
        stage = {"stage": "SKIP", "skipAmount": read.skip, "inputStage": stage}
    if read.limit and read.top in (None, "COUNT"):
        stage = {"stage": "LIMIT", "limitAmount": read.limit, "inputStage": stage}
    if read.top is not None:
        stage = {"stage": read.top, "inputStage": stage}
    return stage


def _collation_spec(name: str, inner: dict[str, Any]) -> Any:
    """The ``collation`` of the explained command (of its first statement for writes)."""
    statements = inner.get({"update": "updates", "delete": "deletes"}.get(name, ""))
    if isinstance(statements, list) and statements and isinstance(statements[0], dict):
        return statements[0].get("collation")
    return inner.get("collation")


def _execute(coll: Collection, collated: collation.CollatedFilter, chosen: planner.Plan,
             read: _Query, variables: dict[str, Any]) -> int:
    """Run the read; returns how many documents it produces (after skip and limit)."""
    docs = coll.docs
    matched: Iterator[dict[str, Any]] = (
        doc for doc in (docs.get(key) for key in chosen.ids)
        if doc is not None and collated.matches(doc, variables))
    wanted = read.skip + read.limit if read.limit else None
    if read.sort and not chosen.sorted_by_index:
        produced = sum(1 for _ in matched)  # an in-memory sort reads everything
        if wanted is not None:
            produced = min(produced, wanted)
    else:
        produced = 0
        for _ in matched:
            produced += 1
            if wanted is not None and produced >= wanted:
                break
    return max(0, produced - read.skip)


async def explain(ctx: CommandContext) -> dict[str, Any]:
    """Describe (and, unless ``verbosity`` is queryPlanner, run) the plan of a command."""
    inner = ctx.body.get("explain")
    if not isinstance(inner, dict) or not inner:
        raise CommandError(ErrorCode.TypeMismatch, "explain command requires a nested object")
    raw_verbosity = ctx.body.get("verbosity")
    if raw_verbosity is None:  # IDL: an optional field holding null is absent
        raw_verbosity = Verbosity.ALL_PLANS.value
    try:
        verbosity = Verbosity(raw_verbosity)
    except ValueError:
        raise CommandError(ErrorCode.BadValue,
                           f"verbosity string must be one of {[v.value for v in Verbosity]}"
                           ) from None
    name = next(iter(inner))
    read = _describe(name, inner)
    coll = ctx.access.collection(ctx.db, read.collection)
    started = time.monotonic()
    counters = planner.QUERY_EXECUTOR
    keys_before, docs_before = counters["scanned"], counters["scannedObjects"]
    default = coll.options.get("collation") if coll is not None else None
    collated = collation.CollatedFilter(
        read.query, collation.resolve(_collation_spec(name, inner), default))
    with planner.collation_scope(collated.collation, collated.bounds_query):
        chosen = planner.plan(coll, read.query, read.sort) if coll is not None else \
            planner.Plan(None, False, iter(()))
    reply: dict[str, Any] = {
        "explainVersion": "1",
        "queryPlanner": {
            "namespace": ctx.namespace(read.collection),
            "parsedQuery": read.query,
            "winningPlan": _winning_plan(coll, read, chosen),
            "rejectedPlans": [],
        },
    }
    if verbosity is not Verbosity.QUERY_PLANNER:
        returned = _execute(coll, collated, chosen, read, ctx.variables) \
            if coll is not None else 0
        reply["executionStats"] = {
            "executionSuccess": True,
            "nReturned": returned,
            "executionTimeMillis": Int64(int((time.monotonic() - started) * 1000)),
            "totalKeysExamined": counters["scanned"] - keys_before,
            "totalDocsExamined": counters["scannedObjects"] - docs_before,
        }
    reply["command"] = inner
    reply["ok"] = 1.0
    return reply
