"""Read commands: find, getMore, killCursors, count and distinct (long ones in slices that
let other clients in, ``scans.py``)."""

from __future__ import annotations

import functools
import itertools
import sys
from collections.abc import Iterator
from typing import Any

from bson.int64 import Int64

from runtime.embedded import (
    change_streams,
    collation,
    engine,
    scans,
    views,
)
from runtime.embedded.commands import arguments
from runtime.embedded.commands.arguments import Fields
from runtime.embedded.commands.crud import check_collation, check_hint, matching
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
from runtime.embedded.errors import CommandError, ErrorCode
from runtime.embedded.ordering import MISSING, document_sort_key, get_path, value_key
from runtime.embedded.storage import Collection

_FIND_FIELDS = frozenset({"find", "filter", "sort", "projection", "hint", "skip", "limit",
                          "batchSize", "singleBatch", "collation", "let", "noCursorTimeout",
                          "allowPartialResults", "allowDiskUse", "oplogReplay", "readOnce",
                          "term"})
# Valid find options whose effect is not implemented: refused rather than ignored.
_FIND_UNSUPPORTED = frozenset({"tailable", "awaitData", "min", "max", "returnKey",
                               "showRecordId", "requestResumeToken", "resumeAfter"})


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
