"""The ``aggregate`` command: pipelines over a collection, ``$out``/``$merge``, change streams."""

from __future__ import annotations

import functools
from typing import Any

from runtime.embedded import (
    change_streams,
    collation,
    collectionless,
    engine,
    scans,
    stats_stages,
    views,
)
from runtime.embedded.commands import arguments
from runtime.embedded.commands.arguments import Fields
from runtime.embedded.commands.crud import check_collation, check_hint, matching
from runtime.embedded.commands.explain import explain as explain_command
from runtime.embedded.commands.registry import GENERIC_FIELDS, CommandContext
from runtime.embedded.cursors import first_batch_reply
from runtime.embedded.errors import CommandError, ErrorCode, WriteError
from runtime.embedded.ordering import id_key, value_key

_AGGREGATE_FIELDS = frozenset({"aggregate", "pipeline", "cursor", "explain", "allowDiskUse",
                               "collation", "hint", "let", "fromMongos", "needsMerge",
                               "isMapReduceCommand", "$_requestReshardingResumeToken"})


class _CollectionsOf:
    """Lets ``$lookup``/``$unionWith`` read the other collections (and views) of one database."""

    def __init__(self, ctx: CommandContext) -> None:
        self._ctx = ctx

    def documents(self, collection: str) -> list[dict[str, Any]]:
        if views.definition(self._ctx.state.store.catalog, self._ctx.db, collection):
            return views.run(self._ctx, collection, [])
        coll = self._ctx.access.collection(self._ctx.db, collection)
        return list(matching(self._ctx, coll, {}, None)) if coll is not None else []


def _pipeline(ctx: CommandContext) -> list[dict[str, Any]]:
    pipeline = Fields(ctx.body, "aggregate").array("pipeline", required=True)
    assert pipeline is not None
    if not all(isinstance(s, dict) for s in pipeline):
        raise CommandError(ErrorCode.TypeMismatch,
                           "Each element of the 'pipeline' array must be an object")
    for stage in pipeline:
        if len(stage) != 1:
            raise CommandError(ErrorCode.Location40323,
                               "A pipeline stage specification object must contain "
                               "exactly one field.")
    return pipeline


async def aggregate(ctx: CommandContext) -> dict[str, Any]:
    """Run a pipeline; a leading ``$changeStream`` opens a change stream instead."""
    pipeline = _pipeline(ctx)
    target = ctx.body.get("aggregate")
    fields = Fields(ctx.body, "aggregate")
    for flag in ("explain", "allowDiskUse", "bypassDocumentValidation"):
        fields.boolean(flag)
    fields.document("let")
    fields.document("collation")
    arguments.hint(fields)
    if fields.boolean("explain"):
        # aggregate {explain: true} is the explain command at queryPlanner verbosity.
        inner = {k: v for k, v in ctx.body.items()
                 if k not in ("explain", "cursor") and k not in GENERIC_FIELDS}
        ctx.body = {"explain": inner, "verbosity": "queryPlanner", "$db": ctx.db}
        return await explain_command(ctx)
    for key in ctx.body:
        if key not in _AGGREGATE_FIELDS and key not in GENERIC_FIELDS:
            raise CommandError(ErrorCode.Location40415,
                               f"BSON field 'aggregate.{key}' is an unknown field.")
    check_collation(ctx.body.get("collation"))
    ctx.variables = engine.let_variables(ctx.body.get("let"), ctx.variables)
    cursor_opts = ctx.body.get("cursor")
    if cursor_opts is None:
        raise CommandError(ErrorCode.FailedToParse,
                           "The 'cursor' option is required, except for aggregate with the "
                           "explain argument")
    batch_size = arguments.cursor_batch_size(ctx.body)
    if pipeline and "$changeStream" in pipeline[0]:
        if ctx.transaction is not None:
            raise CommandError(ErrorCode.OperationNotSupportedInTransaction,
                               "Cannot run a $changeStream in a transaction")
        views.refuse(ctx.state.store.catalog, ctx.db, target)
        return _open_change_stream(ctx, target, pipeline, batch_size)
    for stage in pipeline[1:]:
        if "$changeStream" in stage:
            raise CommandError(ErrorCode.Location40602,
                               "$changeStream is only valid as the first stage in a "
                               "pipeline.")
    if type(target) is not str:
        if target == 1:
            results = collectionless.run(ctx, pipeline)
            return first_batch_reply(ctx.state.cursors, ctx.namespace("$cmd.aggregate"),
                                     iter(results), batch_size)
        raise CommandError(ErrorCode.InvalidNamespace, "'aggregate' needs a collection name or 1")
    collectionless.check_collection_pipeline(pipeline)
    stats_stages.check_placement(pipeline)
    if pipeline and next(iter(pipeline[0])) in stats_stages.STAGES:
        results = stats_stages.run(ctx, target, pipeline, ctx.access.collection(ctx.db, target),
                                   _CollectionsOf(ctx))
        return first_batch_reply(ctx.state.cursors, ctx.namespace(target), iter(results),
                                 batch_size)
    writer = None
    if pipeline and next(iter(pipeline[-1])) in ("$out", "$merge"):
        writer = pipeline[-1]
        pipeline = pipeline[:-1]
        if ctx.transaction is not None:
            raise CommandError(ErrorCode.OperationNotSupportedInTransaction,
                               f"{next(iter(writer))} cannot be used in a transaction")
    coll = ctx.access.collection(ctx.db, target)
    check_hint(coll, ctx.body.get("hint"))
    query: dict[str, Any] = {}
    rest = pipeline
    if pipeline and "$match" in pipeline[0] and isinstance(pipeline[0]["$match"], dict):
        query, rest = pipeline[0]["$match"], pipeline[1:]
        if "$text" in query or "$where" in query:
            query, rest = {}, pipeline
    if coll is None and views.definition(ctx.state.store.catalog, ctx.db, target) is not None:
        results = views.run(ctx, target, pipeline)
    else:
        spec = ctx.body.get("collation")  # the leading $match and $sort follow the collation
        sort, rest = collation.leading_sort(rest) if coll is not None and collation.resolve(
            spec, coll.options.get("collation")) is not None else (None, rest)
        if coll is not None and scans.sliced(coll):  # a long read: let other clients in
            results = await scans.pipeline(ctx, coll, query, sort, rest, _CollectionsOf(ctx),
                                           functools.partial(matching, collation_spec=spec))
        else:
            source = list(matching(ctx, coll, query, sort, None, spec)) \
                if coll is not None else []
            results = engine.run_pipeline(source, rest, _CollectionsOf(ctx), ctx.variables)
    if writer is not None:
        _write_results(ctx, writer, results)
        results = []
    return first_batch_reply(ctx.state.cursors, ctx.namespace(target), iter(results), batch_size)


def _open_change_stream(ctx: CommandContext, target: Any, pipeline: list[dict[str, Any]],
                        batch_size: int | None) -> dict[str, Any]:
    if target == 1:
        coll = None
    elif type(target) is str:
        coll = target
    else:
        raise CommandError(ErrorCode.InvalidNamespace, "'aggregate' needs a collection name or 1")
    state = ctx.state
    stream = change_streams.open_stream(state.cursors.new_id(), ctx.db, coll, pipeline,
                                        state.store.changelog)
    batch = change_streams.collect(stream, state.store.changelog, state.store.catalog,
                                   batch_size if batch_size is not None else None, ctx.variables)
    if not stream.closed:
        state.cursors.add(stream)
    return change_streams.cursor_reply(stream, batch, True, stream.cursor_id)


def _write_results(ctx: CommandContext, writer: dict[str, Any],
                   results: list[dict[str, Any]]) -> None:
    name, spec = next(iter(writer.items()))
    access = ctx.access
    target = spec.get("into", spec.get("coll")) if isinstance(spec, dict) else spec
    target_db = ctx.db
    if isinstance(target, dict):
        target_db, target = target.get("db", ctx.db), target.get("coll")
    elif isinstance(spec, dict) and name == "$out":
        target_db = spec.get("db", ctx.db)
    if type(target_db) is str:
        views.refuse(ctx.state.store.catalog, target_db, target)
    try:
        if name == "$out":
            target_db, target_coll = ctx.db, spec
            if isinstance(spec, dict):
                target_db, target_coll = spec.get("db", ctx.db), spec.get("coll")
            if type(target_coll) is not str or type(target_db) is not str:
                raise CommandError(ErrorCode.TypeMismatch,
                                   "$out needs a collection name (and a database name)")
            store = ctx.state.store
            existing = store.catalog.get(target_db, target_coll)
            if existing is not None:
                for doc in list(existing.docs.values()):
                    access.delete(existing, doc)
            coll = access.ensure(target_db, target_coll)
            for doc in results:
                access.insert(coll, doc if "_id" in doc else {"_id": _new_id(), **doc})
            return
        _merge(ctx, spec, results)
    except WriteError as exc:
        raise exc.as_command_error() from exc


def _new_id() -> Any:
    from bson import ObjectId

    return ObjectId()


def _merge(ctx: CommandContext, spec: Any, results: list[dict[str, Any]]) -> None:
    if type(spec) is str:
        spec = {"into": spec}
    if not isinstance(spec, dict):
        raise CommandError(ErrorCode.TypeMismatch,
                           "$merge needs a collection name or a specification object")
    into = spec.get("into")
    target_db, target_coll = ctx.db, into
    if isinstance(into, dict):
        target_db, target_coll = into.get("db", ctx.db), into.get("coll")
    if type(target_coll) is not str or type(target_db) is not str:
        raise CommandError(ErrorCode.TypeMismatch,
                           "$merge 'into' must name a collection (and a database)")
    on = spec.get("on", "_id")
    on_fields = [on] if isinstance(on, str) else list(on) if isinstance(on, list) else []
    if not on_fields or not all(isinstance(f, str) and f for f in on_fields):
        raise CommandError(ErrorCode.Location51186,
                           "$merge 'on' must be a field name or an array of field names")
    when_matched = spec.get("whenMatched", "merge")
    when_not_matched = spec.get("whenNotMatched", "insert")
    access = ctx.access
    if on_fields != ["_id"]:
        # As in MongoDB, custom 'on' fields need a unique index that makes the match unique.
        existing_coll = access.collection(target_db, target_coll)
        if existing_coll is None or not any(
            index.spec.unique and set(index.spec.fields) == set(on_fields)
            and index.spec.partial_filter is None
            for index in existing_coll.indexes.values()
        ):
            raise CommandError(ErrorCode.Location51183,
                               "Cannot find index to verify that join fields will be "
                               "unique")
    coll = access.ensure(target_db, target_coll)
    for doc in results:
        query = {}
        for field in on_fields:
            if field not in doc:
                if field == "_id":
                    doc = {"_id": _new_id(), **doc}
                else:
                    raise CommandError(ErrorCode.Location51132,
                                       f"$merge write error: 'on' field '{field}' cannot "
                                       "be missing")
            query[field] = doc[field]
        existing = next(matching(ctx, coll, query, None), None)
        if existing is None:
            if when_not_matched == "insert":
                access.insert(coll, doc if "_id" in doc else {"_id": _new_id(), **doc})
            elif when_not_matched == "fail":
                raise CommandError(ErrorCode.Location13113,
                                   "$merge could not find a matching document in the "
                                   "target collection")
            continue
        if when_matched == "keepExisting":
            continue
        if when_matched == "fail":
            raise CommandError(ErrorCode.DuplicateKey,
                               "$merge found a matching document with whenMatched: fail")
        if when_matched == "replace":
            new = {"_id": existing["_id"], **{k: v for k, v in doc.items() if k != "_id"}}
        elif when_matched == "merge":
            new = {**existing, **{k: v for k, v in doc.items() if k != "_id"}}
        elif isinstance(when_matched, list):
            variables = dict(ctx.variables)
            variables["new"] = doc
            new = engine.apply_update(existing, when_matched, {}, None, False, variables)
        else:
            raise CommandError(ErrorCode.BadValue,
                               f"unsupported $merge whenMatched {when_matched!r}")
        if id_key(new["_id"]) != id_key(existing["_id"]) or value_key(new) != value_key(existing):
            access.replace(coll, existing, new, True)
