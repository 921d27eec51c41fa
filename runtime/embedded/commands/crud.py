"""Write commands: insert, update, delete and findAndModify, with the matching they share with
the read commands (``reads.py``)."""

from __future__ import annotations

import functools
import heapq
import itertools
from collections.abc import Iterator
from typing import Any

from bson import ObjectId

from runtime.embedded import (
    collation,
    compiled_filter,
    engine,
    field_names,
    planner,
    views,
)
from runtime.embedded.commands import arguments
from runtime.embedded.commands.arguments import Fields
from runtime.embedded.commands.registry import (
    CommandContext,
    sort_option,
)
from runtime.embedded.errors import CommandError, ErrorCode, WriteError
from runtime.embedded.ordering import MISSING, document_sort_key
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
    default = coll.options.get("collation")
    if collation_spec is None and not default:
        chosen = None  # (what collation.resolve answers, without its calls: the usual case)
        bounds_query = query
    else:
        chosen = collation.resolve(collation_spec, default)
        collated = collation.CollatedFilter(query, chosen)
        bounds_query = collated.bounds_query
    with planner.collation_scope(chosen, bounds_query):
        docs, ordered = ctx.access.candidates(coll, query, sort)
    variables = ctx.variables
    if chosen is None and limit == 1 and query:
        matched = (d for d in docs if _matches_once(query, d, variables))
    elif chosen is None:
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


def _matches_once(query: dict[str, Any], doc: dict[str, Any], variables: dict[str, Any]) -> bool:
    """:func:`engine.matches` for a filter read for one document (most updates and deletes):
    simple filters are evaluated in place instead of being compiled first."""
    try:
        return compiled_filter.quick_match(query, doc, variables)
    except Exception:  # the general matcher answers, or raises the right error
        return engine.matches(query, doc, variables)


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
    multi = stmt.get("multi", False)
    if type(multi) is not bool:
        multi = Fields(stmt, "update.updates").boolean("multi")
    is_replacement = isinstance(update, dict) and not engine.is_operator_update(update)
    if is_replacement and multi:
        raise WriteError(ErrorCode.FailedToParse,
                         "multi update is not supported for replacement-style update")
    if isinstance(update, dict) and not is_replacement:
        field_names.check_update_paths(update)
    array_filters = stmt.get("arrayFilters")
    sort = sort_option(stmt, "sort") if "sort" in stmt else None
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
