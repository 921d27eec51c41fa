"""Document commands: insert, update, delete, find, getMore, killCursors, findAndModify, count,
distinct."""

from __future__ import annotations

import functools
import heapq
import itertools
import sys
from collections.abc import Iterator
from typing import Any

from bson import ObjectId
from bson.int64 import Int64

from runtime.embedded import (
    change_streams,
    collation,
    engine,
    field_names,
    planner,
    scans,
    views,
)
from runtime.embedded.commands import arguments
from runtime.embedded.commands.arguments import Fields
from runtime.embedded.commands.registry import (
    GENERIC_FIELDS,
    CommandContext,
    sort_option,
)
from runtime.embedded.cursors import (
    QueryCursor,
    ScanCursor,
    first_batch_reply,
    scan_first_batch_reply,
)
from runtime.embedded.errors import CommandError, ErrorCode, WriteError
from runtime.embedded.ordering import MISSING, document_sort_key, get_path, value_key
from runtime.embedded.storage import Collection
from runtime.embedded.update_description import same_value

MAX_ID_RETRIES = 3


def matching(ctx: CommandContext, coll: Collection, query: dict[str, Any],
             sort: list[tuple[str, int]] | None,
             limit: int | None = None, collation_spec: Any = None) -> Iterator[dict[str, Any]]:
    """Documents matching ``query`` in ``sort`` order (index order when an index gives it),
    comparing strings by the command's collation (``collation_spec``, else the collection's).

    ``limit`` (when the caller needs no more than that many) lets an in-memory sort keep only
    the first ones instead of sorting every match.
    """
    chosen = collation.resolve(collation_spec, coll.options.get("collation"))
    collated = collation.CollatedFilter(query, chosen)
    with planner.collation_scope(chosen, collated.bounds_query):
        docs, ordered = ctx.access.candidates(coll, query, sort)
    variables = ctx.variables
    if chosen is None:
        matched = (d for d in docs if engine.matches(query, d, variables))
    else:
        matched = (d for d in docs if collated.matches(d, variables))
    if sort and not ordered:
        key = functools.partial(document_sort_key, sort=sort,
                                collate=chosen.transform if chosen is not None else None)
        if limit:
            return iter(heapq.nsmallest(limit, matched, key=key))
        return iter(sorted(matched, key=key))
    return matched


def check_hint(coll: Collection | None, hint: Any) -> None:
    """Reject a ``hint`` naming no index (the planner chooses on its own either way)."""
    if hint is None or coll is None or hint == {"$natural": 1} or hint == {"$natural": -1}:
        return
    if type(hint) is str:  # bson's Code is an (unhashable) str subclass
        found = hint in coll.indexes
    elif isinstance(hint, dict) and hint:
        found = any(dict(i.spec.key) == hint for i in coll.indexes.values())
    else:
        raise CommandError(ErrorCode.FailedToParse, "hint must be a string or an object")
    if not found:
        raise CommandError(ErrorCode.BadValue,
                           "error processing query: planner returned error :: caused by :: "
                           "hint provided does not correspond to an existing index")


_FIND_FIELDS = frozenset({"find", "filter", "sort", "projection", "hint", "skip", "limit",
                          "batchSize", "singleBatch", "collation", "let", "noCursorTimeout",
                          "allowPartialResults", "allowDiskUse", "oplogReplay", "readOnce",
                          "term"})
# Valid find options whose effect is not implemented: refused rather than ignored.
_FIND_UNSUPPORTED = frozenset({"tailable", "awaitData", "min", "max", "returnKey",
                               "showRecordId", "requestResumeToken", "resumeAfter"})


def check_collation(spec: Any) -> None:
    """Validate a command's ``collation`` as mongod does (see :func:`collation.parse`)."""
    if collation.given(spec):
        collation.parse(spec)


def _prepare_insert(raw: Any, upsert: bool = False) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise WriteError(ErrorCode.TypeMismatch, "document to insert must be an object")
    doc: dict[str, Any] = raw
    if "_id" not in doc:
        doc = {"_id": ObjectId(), **doc}
    elif next(iter(doc)) != "_id":
        doc = {"_id": doc["_id"], **{k: v for k, v in doc.items() if k != "_id"}}
    if upsert:
        field_names.check_upsert(doc)
    else:
        field_names.check_insert(doc)
    return doc


def _statements(ctx: CommandContext, field: str) -> list[dict[str, Any]]:
    statements = Fields(ctx.body, ctx.name).documents(field, required=True)
    assert statements is not None
    return statements


def _write_reply(n: int, errors: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    reply: dict[str, Any] = {"n": n, **extra}
    if errors:
        reply["writeErrors"] = errors
    reply["ok"] = 1.0
    return reply


def _raise_in_transaction(ctx: CommandContext, exc: WriteError) -> None:
    if ctx.transaction is not None:
        raise exc.as_command_error()


async def insert(ctx: CommandContext) -> dict[str, Any]:
    """Insert documents; ordered batches stop at the first error."""
    name = ctx.collection_name()
    docs = _statements(ctx, "documents")
    ordered = Fields(ctx.body, ctx.name).boolean("ordered", True)
    refused = views.refused_writes(ctx, name, len(docs), ordered)
    if refused is not None:
        return refused
    coll = ctx.access.ensure(ctx.db, name)
    n = 0
    errors: list[dict[str, Any]] = []
    for index, raw in enumerate(docs):
        try:
            ctx.access.insert(coll, _prepare_insert(raw))
            n += 1
        except WriteError as exc:
            _raise_in_transaction(ctx, exc)
            errors.append(exc.to_document(index))
            if ordered:
                break
    return _write_reply(n, errors)


def _replacement(old: dict[str, Any] | None, replacement: dict[str, Any]) -> dict[str, Any]:
    field_names.check_replacement(replacement, inserting=old is None)
    if old is None:
        return _prepare_insert(replacement, upsert=True)
    if "_id" in replacement and not same_value(replacement["_id"], old["_id"]) and (
        replacement["_id"] != old["_id"]
    ):
        raise field_names.altered_id(replacement["_id"])
    return {"_id": old["_id"], **{k: v for k, v in replacement.items() if k != "_id"}}


def _upsert_document(query: dict[str, Any], update: dict[str, Any] | list[dict[str, Any]],
                     array_filters: list[dict[str, Any]] | None,
                     variables: dict[str, Any]) -> dict[str, Any]:
    if isinstance(update, dict) and not engine.is_operator_update(update):
        doc = dict(update)
        seed_id = engine.upsert_seed(query).get("_id", MISSING)
        if "_id" not in doc and seed_id is not MISSING:
            doc = {"_id": seed_id, **doc}
        elif seed_id is not MISSING and not same_value(doc["_id"], seed_id) \
                and doc["_id"] != seed_id:
            raise field_names.altered_id(doc["_id"])
        return _replacement(None, doc)
    seed = engine.upsert_seed(query)
    new = engine.apply_update(seed, update, query, array_filters, True, variables)
    return _prepare_insert(new, upsert=True)


def _update_one_statement(ctx: CommandContext, coll: Collection, stmt: Any,
                          index: int, upserted: list[dict[str, Any]]) -> tuple[int, int]:
    if not isinstance(stmt, dict):
        raise WriteError(ErrorCode.TypeMismatch, "update statement must be an object")
    query = engine.validate_filter(stmt.get("q"))
    update = stmt.get("u")
    if not isinstance(update, dict | list):
        raise WriteError(ErrorCode.TypeMismatch,
                         "BSON field 'update.updates.u' must be an object or an array")
    multi = Fields(stmt, "update.updates").boolean("multi")
    is_replacement = isinstance(update, dict) and not engine.is_operator_update(update)
    if is_replacement and multi:
        raise WriteError(ErrorCode.FailedToParse,
                         "multi update is not supported for replacement-style update")
    if isinstance(update, dict) and not is_replacement:
        field_names.check_update_paths(update)
    array_filters = stmt.get("arrayFilters")
    sort = sort_option(stmt, "sort")
    check_hint(coll, stmt.get("hint"))
    check_collation(stmt.get("collation"))
    found = matching(ctx, coll, query, sort, None if multi else 1, stmt.get("collation"))
    targets = list(found) if multi else list(itertools.islice(found, 1))
    matched = modified = 0
    for old in targets:
        if is_replacement:
            assert isinstance(update, dict)
            new = _replacement(old, update)
        else:
            if isinstance(update, dict):
                field_names.check_created_names(update)
            new = engine.apply_update(old, update, query, array_filters, False, ctx.variables)
        matched += 1
        if not same_value(old, new):
            ctx.access.replace(coll, old, new, is_replacement)
            modified += 1
    if not targets and Fields(stmt, "update.updates").boolean("upsert"):
        doc = _upsert_document(query, update, array_filters, ctx.variables)
        ctx.access.insert(coll, doc)
        upserted.append({"index": index, "_id": doc["_id"]})
    return matched, modified


async def update(ctx: CommandContext) -> dict[str, Any]:
    """Apply update statements (operators, replacements or pipelines; multi; upsert)."""
    ctx.variables = engine.let_variables(ctx.body.get("let"), ctx.variables)
    name = ctx.collection_name()
    statements = _statements(ctx, "updates")
    arguments.check_update_statements(statements)
    ordered = Fields(ctx.body, ctx.name).boolean("ordered", True)
    refused = views.refused_writes(ctx, name, len(statements), ordered, nModified=0)
    if refused is not None:
        return refused
    coll = ctx.access.ensure(ctx.db, name)
    matched = modified = 0
    upserted: list[dict[str, Any]] = []
    errors: list[dict[str, Any]] = []
    for index, stmt in enumerate(statements):
        try:
            m, mod = _update_one_statement(ctx, coll, stmt, index, upserted)
            matched += m
            modified += mod
        except WriteError as exc:
            _raise_in_transaction(ctx, exc)
            errors.append(exc.to_document(index))
            if ordered:
                break
    extra: dict[str, Any] = {"nModified": modified}
    if upserted:
        extra["upserted"] = upserted
    return _write_reply(matched + len(upserted), errors, **extra)


async def delete(ctx: CommandContext) -> dict[str, Any]:
    """Delete the documents matching each statement (``limit`` 1 or 0 = all)."""
    ctx.variables = engine.let_variables(ctx.body.get("let"), ctx.variables)
    name = ctx.collection_name()
    statements = _statements(ctx, "deletes")
    arguments.check_delete_statements(statements)
    ordered = Fields(ctx.body, ctx.name).boolean("ordered", True)
    refused = views.refused_writes(ctx, name, len(statements), ordered)
    if refused is not None:
        return refused
    coll = ctx.access.collection(ctx.db, name)
    n = 0
    errors: list[dict[str, Any]] = []
    for index, stmt in enumerate(statements):
        try:
            if not isinstance(stmt, dict):
                raise WriteError(ErrorCode.TypeMismatch, "delete statement must be an object")
            query = engine.validate_filter(stmt.get("q"))
            limit = arguments.safe_long(stmt.get("limit") or 0)
            if limit not in (0, 1):
                raise WriteError(ErrorCode.FailedToParse,
                                 "The limit field in delete objects must be 0 or 1")
            if coll is None:
                continue
            check_hint(coll, stmt.get("hint"))
            check_collation(stmt.get("collation"))
            found = matching(ctx, coll, query, sort_option(stmt, "sort"), limit or None,
                             stmt.get("collation"))
            targets = list(itertools.islice(found, 1)) if limit == 1 else list(found)
            for doc in targets:
                ctx.access.delete(coll, doc)
                n += 1
        except WriteError as exc:
            _raise_in_transaction(ctx, exc)
            errors.append(exc.to_document(index))
            if ordered:
                break
    return _write_reply(n, errors)


def _results(ctx: CommandContext, coll: Collection | None, query: dict[str, Any],
             sort: list[tuple[str, int]] | None, skip: int, limit: int | None,
             projection: dict[str, Any] | None,
             collation_spec: Any = None) -> Iterator[dict[str, Any]]:
    if coll is None:
        return iter(())
    docs: Iterator[dict[str, Any]] = matching(ctx, coll, query, sort,
                                              skip + limit if limit else None, collation_spec)
    if skip or limit:
        # islice takes at most sys.maxsize (mongod's limits are 64-bit: they can add up past it)
        stop = min(skip + limit, sys.maxsize) if limit else None
        docs = itertools.islice(docs, min(skip, sys.maxsize), stop)
    if projection:
        variables = ctx.variables
        docs = (engine.project(d, projection, variables, query) for d in docs)
    return docs


def _scan(ctx: CommandContext, coll: Collection, query: dict[str, Any],
          sort: list[tuple[str, int]] | None, skip: int, limit: int | None,
          projection: dict[str, Any] | None, collation_spec: Any) -> scans.Scan:
    """:func:`_results` as a :class:`~runtime.embedded.scans.Scan`: read slice by slice,
    letting other clients in between (for collections large enough to need it). A sort that
    no index gives is done by the scan, slice by slice, with the key :func:`matching` sorts by."""
    key = None
    if sort:
        chosen = collation.resolve(collation_spec, coll.options.get("collation"))
        key = functools.partial(document_sort_key, sort=sort,
                                collate=chosen.transform if chosen is not None else None)
    return scans.Scan(ctx, coll, query, sort, skip, limit, projection,
                      functools.partial(matching, collation_spec=collation_spec), key)


class _Materialising:
    """Evaluates lazily for the first batch, then fixes the rest so later writes can't
    disturb it."""

    def __init__(self, results: Iterator[dict[str, Any]]) -> None:
        self._results = results
        self._rest: Iterator[dict[str, Any]] | None = None

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return self

    def __next__(self) -> dict[str, Any]:
        if self._rest is not None:
            return next(self._rest)
        return next(self._results)

    def settle(self) -> None:
        if self._rest is None:
            self._rest = iter(list(self._results))


async def find(ctx: CommandContext) -> dict[str, Any]:
    """Query a collection; returns a cursor."""
    for key, value in ctx.body.items():
        if key in _FIND_UNSUPPORTED and value:
            raise CommandError(ErrorCode.BadValue,
                               f"find option '{key}' is not supported by the embedded server")
        if key not in _FIND_FIELDS and key not in _FIND_UNSUPPORTED and key not in GENERIC_FIELDS:
            raise CommandError(ErrorCode.Location40415,
                               f"BSON field 'find.{key}' is an unknown field.")
    fields = arguments.check_find(ctx.body)
    ctx.variables = engine.let_variables(ctx.body.get("let"), ctx.variables)
    check_collation(ctx.body.get("collation"))
    name = ctx.collection_name()
    query = engine.validate_filter(ctx.body.get("filter"))
    sort = sort_option(ctx.body)
    projection = fields.document("projection")
    skip = fields.integer("skip", 0) or 0
    raw_limit = fields.integer("limit", 0, minimum=None) or 0
    single_batch = fields.boolean("singleBatch") or raw_limit < 0
    limit = min(abs(raw_limit), arguments.INT64_MAX)
    batch_size = fields.integer("batchSize")
    coll = ctx.access.collection(ctx.db, name)
    check_hint(coll, ctx.body.get("hint"))
    if limit and (batch_size is None or batch_size > limit):
        batch_size = limit
    results: _Materialising | None = None
    if coll is not None and scans.sliced(coll):
        scan = _scan(ctx, coll, query, sort, skip, limit or None, projection,
                     ctx.body.get("collation"))
        reply = await scan_first_batch_reply(ctx.state.cursors, ctx.namespace(name), scan,
                                             batch_size, single_batch)
    else:
        results = _Materialising(_results(ctx, coll, query, sort, skip, limit or None,
                                          projection, ctx.body.get("collation")))
        if coll is None and views.definition(ctx.state.store.catalog, ctx.db, name) is not None:
            results = _Materialising(views.find(ctx, name, query, sort, skip, limit or None,
                                                projection))
        reply = first_batch_reply(ctx.state.cursors, ctx.namespace(name), results, batch_size,
                                  single_batch)
    cursor = reply["cursor"]
    if cursor["id"] and limit and len(cursor["firstBatch"]) >= limit:
        # the limit is reached: like MongoDB, close the cursor (no getMore/killCursors needed)
        ctx.state.cursors.remove(cursor["id"])
        cursor["id"] = Int64(0)
    elif cursor["id"] and results is not None:
        results.settle()
    return reply


async def get_more(ctx: CommandContext) -> dict[str, Any]:
    """Next batch of a find, aggregate or change-stream cursor."""
    fields = Fields(ctx.body, "getMore")
    cursor_id = fields.long("getMore", required=True)
    coll = fields.string("collection", required=True)
    assert coll is not None
    cursor = ctx.state.cursors.get(cursor_id, ctx.namespace(coll))
    batch_size = fields.integer("batchSize")
    if isinstance(cursor, change_streams.ChangeStreamCursor):
        try:
            batch = await change_streams.next_batch(
                cursor, ctx.state.store.changelog, ctx.state.store.catalog, batch_size,
                arguments.max_time_ms("getMore", ctx.body), ctx.variables)
        except CommandError:
            # A stream that failed (history lost, missing image, modified _id) is dead, as on
            # a real server; the client resumes with a new aggregate if it can.
            ctx.state.cursors.remove(cursor.cursor_id)
            raise
        if cursor.closed:
            ctx.state.cursors.remove(cursor.cursor_id)
        return change_streams.cursor_reply(cursor, batch, False, cursor.cursor_id)
    if isinstance(cursor, ScanCursor):
        batch = await cursor.next_batch(batch_size)  # may yield to other clients
    else:
        assert isinstance(cursor, QueryCursor)
        batch = cursor.next_batch(batch_size)
    if cursor.exhausted:
        ctx.state.cursors.remove(cursor.cursor_id)
    return {"cursor": {"nextBatch": batch, "id": Int64(0 if cursor.exhausted else
                                                       cursor.cursor_id), "ns": cursor.ns},
            "ok": 1.0}


async def kill_cursors(ctx: CommandContext) -> dict[str, Any]:
    """Close cursors (under ``--auth``, the caller's own only, unless it may kill any)."""
    fields = Fields(ctx.body, "killCursors")
    fields.string("killCursors")
    ids = fields.array("cursors", required=True) or []
    for index, cursor_id in enumerate(ids):
        if isinstance(cursor_id, bool) or not isinstance(cursor_id, int):
            raise arguments.wrong_type(f"killCursors.cursors.{index}", cursor_id, ("long",))
    # As on mongod, every cursor is checked before any is killed: one refusal kills none.
    kill_any = ctx.state.auth.may_kill_any_cursor(ctx.connection)
    for cursor_id in ids:
        ctx.state.cursors.check_kill(cursor_id, ctx.db, kill_any)
    killed: list[Any] = []
    missing: list[Any] = []
    for cursor_id in ids:
        (killed if ctx.state.cursors.remove(cursor_id) else missing).append(cursor_id)
    return {"cursorsKilled": killed, "cursorsNotFound": missing, "cursorsAlive": [],
            "cursorsUnknown": [], "ok": 1.0}


async def find_and_modify(ctx: CommandContext) -> dict[str, Any]:
    """Atomically find one document and update, replace or remove it."""
    ctx.variables = engine.let_variables(ctx.body.get("let"), ctx.variables)
    check_collation(ctx.body.get("collation"))
    name = ctx.collection_name()
    body = ctx.body
    args = Fields(body, ctx.name)
    query = args.document("query") or {}
    sort = sort_option(body)
    remove = args.boolean("remove")
    update = body.get("update")
    if update is not None:
        update = arguments.update_argument(update)
    fields = args.document("fields")
    return_new = args.boolean("new")
    upsert = args.boolean("upsert")
    args.documents("arrayFilters")
    arguments.hint(args)
    if remove and (update is not None or upsert or return_new):
        raise CommandError(ErrorCode.FailedToParse,
                           "Cannot specify remove together with update, upsert or new")
    if not remove and not isinstance(update, dict | list):
        raise CommandError(ErrorCode.FailedToParse,
                           "Either an update or remove=true must be specified")
    views.refuse(ctx.state.store.catalog, ctx.db, name)
    coll = ctx.access.collection(ctx.db, name)
    check_hint(coll, body.get("hint"))
    old = next(matching(ctx, coll, query, sort, 1, body.get("collation")), None) \
        if coll is not None else None
    last_error: dict[str, Any] = {"n": 0}
    value: dict[str, Any] | None = None
    try:
        if isinstance(update, dict) and engine.is_operator_update(update):
            field_names.check_update_paths(update)
        if remove:
            if old is not None and coll is not None:
                ctx.access.delete(coll, old)
                last_error = {"n": 1}
                value = old
        elif old is not None and coll is not None:
            assert update is not None
            is_replacement = isinstance(update, dict) and not engine.is_operator_update(update)
            if is_replacement:
                assert isinstance(update, dict)
                new = _replacement(old, update)
            else:
                if isinstance(update, dict):
                    field_names.check_created_names(update)
                new = engine.apply_update(old, update, query, body.get("arrayFilters"), False,
                                          ctx.variables)
            if not same_value(old, new):
                ctx.access.replace(coll, old, new, is_replacement)
            last_error = {"n": 1, "updatedExisting": True}
            value = new if return_new else old
        elif upsert:
            assert update is not None
            coll = ctx.access.ensure(ctx.db, name)
            doc = _upsert_document(query, update, body.get("arrayFilters"), ctx.variables)
            ctx.access.insert(coll, doc)
            last_error = {"n": 1, "updatedExisting": False, "upserted": doc["_id"]}
            value = doc if return_new else None
        else:
            last_error = {"n": 0, "updatedExisting": False}
    except WriteError as exc:
        raise exc.as_command_error() from exc
    if value is not None and fields:
        value = engine.project(value, fields, ctx.variables, query)
    return {"lastErrorObject": last_error, "value": value, "ok": 1.0}


async def count(ctx: CommandContext) -> dict[str, Any]:
    """Count matching documents (``skip``/``limit`` honoured)."""
    check_collation(ctx.body.get("collation"))
    name = ctx.collection_name()
    query = Fields(ctx.body, "count").document("query") or {}
    skip = arguments.count_number(ctx.body, "skip")
    limit = min(abs(arguments.count_number(ctx.body, "limit")), arguments.INT64_MAX)
    coll = ctx.access.collection(ctx.db, name)
    check_hint(coll, ctx.body.get("hint"))
    if coll is None and views.definition(ctx.state.store.catalog, ctx.db, name) is not None:
        return views.count(ctx, name, query, skip, limit or None)
    if coll is None:
        return {"n": 0, "ok": 1.0}
    if not query and not skip and not limit:
        return {"n": len(coll.docs), "ok": 1.0}
    spec = ctx.body.get("collation")
    if scans.sliced(coll):
        n = await _scan(ctx, coll, query, None, skip, limit or None, None, spec).count()
    else:
        n = sum(1 for _ in _results(ctx, coll, query, None, skip, limit or None, None, spec))
    return {"n": n, "ok": 1.0}


async def distinct(ctx: CommandContext) -> dict[str, Any]:
    """Distinct values of a field (array elements counted individually)."""
    check_collation(ctx.body.get("collation"))
    name = ctx.collection_name()
    fields = Fields(ctx.body, "distinct")
    key = fields.string("key", required=True)
    assert key is not None
    query = fields.document("query") or {}
    coll = ctx.access.collection(ctx.db, name)
    if coll is None and views.definition(ctx.state.store.catalog, ctx.db, name) is not None:
        return views.distinct(ctx, name, key, query)
    values: dict[Any, Any] = {}
    if coll is not None:
        spec = ctx.body.get("collation")
        chosen = collation.resolve(spec, coll.options.get("collation"))

        def add(doc: dict[str, Any]) -> None:
            value = get_path(doc, key)
            if value is MISSING:
                return
            for item in value if isinstance(value, list) else [value]:
                # under a collation, values equal by it count once (the first one found)
                values.setdefault(value_key(chosen.transform(item) if chosen else item), item)

        if scans.sliced(coll):
            await _scan(ctx, coll, query, None, 0, None, None, spec).each(add)
        else:
            for doc in matching(ctx, coll, query, None, None, spec):
                add(doc)
    return {"values": [values[k] for k in sorted(values)], "ok": 1.0}
