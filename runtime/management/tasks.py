"""Tasks: list, count, show and retry the tasks of the application's reactors.

A :class:`TaskSelection` says which tasks: by reactor, status (one or several), error text,
source ids and a filter on the *source* documents. Every operation reads the tasks
collections (``<collection>_tasks``) of the selected reactors through PyMongo only, so it works
against any MongoDB.

Cost of ``source_filter``: the filter is a MongoDB query on the source collection, evaluated by
the server (``$match``, so ``$expr`` and ``$$NOW`` work). The matching source ``_id``\\ s are
read in batches (one aggregation on the source collection, which uses the filter's own indexes
if there are any) and the tasks are then looked up by ``sourceId: {$in: batch}`` on the task key
index, one query per batch. The cost therefore grows with the number of matching *source*
documents, not with the number of tasks: prefer a selective filter on an indexed field, and
combine it with a status or reactor. Listing with a source filter reads only ``_id`` and the
sort field of the candidates, keeps the best ``skip + limit`` of them, and fetches the page.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from bson import ObjectId
from bson.decimal128 import Decimal128

from runtime.management.errors import InvalidSelection, NotFound
from runtime.management.scope import Doc, Scope, TaskCollection, naive_utc
from runtime.management.status import (
    FINISHED_STATUSES,
    RUNNING_STATUSES,
    TaskStatus,
    parse_status,
)

DEFAULT_LIMIT = 50
RETRY_BATCH = 5_000
"""Tasks per ``update_many`` of a bulk retry (``_id`` ranges, so progress can be shown)."""
SOURCE_BATCH = 1_000
"""Source ``_id``\\ s per task query when a source filter is used (list and count)."""

ProgressCallback = Callable[[int, int], None]
"""``progress(done, total)``: called by :func:`retry_tasks` after each batch."""


class TaskSort(StrEnum):
    """Fields tasks can be listed by (ties are broken by ``_id`` in the same direction)."""

    NEXT_RUN_AT = "nextRunAt"
    """When a pending task is due, or a running task's lease expires (null when finished)."""
    DUE_AT = "dueAt"
    """When the current data version became due."""
    UPDATED_AT = "updatedAt"
    """The last change of the watched values."""
    CREATED_AT = "createdAt"
    """When the task was first planned."""
    LAST_FINALIZED_AT = "lastFinalizedAt"
    """The end of the last execution."""
    ID = "_id"
    """The task ``_id`` (creation order)."""


@dataclass(frozen=True)
class TaskSelection:
    """Which tasks an operation applies to; every criterion given must hold (AND).

    ``reactor``: one reactor (default: every reactor of the application). ``statuses``: any of
    these. ``error_text``: ``lastError`` contains this text, case-insensitively (it is matched
    literally: regular-expression characters are escaped). ``source_ids``: any of these source
    document ``_id``\\ s. ``source_filter``: a MongoDB query on the source collection; only tasks
    whose source document exists and matches it (see the module docstring for its cost).
    Strings are accepted for statuses and converted to :class:`TaskStatus`.
    """

    reactor: str | None = None
    statuses: tuple[TaskStatus, ...] = ()
    error_text: str | None = None
    source_ids: tuple[Any, ...] = ()
    source_filter: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        statuses: Iterable[TaskStatus | str] = self.statuses
        try:
            object.__setattr__(self, "statuses", tuple(parse_status(s) for s in statuses))
        except ValueError as exc:
            raise InvalidSelection(str(exc)) from None
        object.__setattr__(self, "source_ids", tuple(self.source_ids))
        if self.source_filter is not None and not isinstance(self.source_filter, Mapping):
            raise InvalidSelection("source_filter must be a query document (a mapping), got "
                                   f"{type(self.source_filter).__name__}")
        if self.error_text is not None and not self.error_text:
            raise InvalidSelection("error_text must not be empty")

    @property
    def is_empty(self) -> bool:
        """True if no criterion is given: the selection is every task of every reactor."""
        return (self.reactor is None and not self.statuses and self.error_text is None
                and not self.source_ids and self.source_filter is None)


@dataclass(frozen=True)
class Lease:
    """The lease of a running task."""

    owner: str | None
    """The instance id that runs it."""
    claim: Any
    """The claim id that fences every write of this execution."""
    expires_at: datetime.datetime | None
    """When another instance may take the task over (server time)."""


@dataclass(frozen=True)
class HistoryEntry:
    """One recorded execution (``history`` keeps the last N, per the reactor's policy)."""

    at: datetime.datetime | None
    status: str
    """``completed``, ``failed``, ``skipped`` or ``deferred``."""
    attempt: int | None
    duration_ms: float | None
    error: str | None = None
    by: str | None = None
    """The instance that ran it."""
    traceback: str | None = None
    """The failure's traceback, trimmed to the handler's frames."""


@dataclass(frozen=True)
class PlanningError:
    """The source document could not be planned (a poison document)."""

    at: datetime.datetime | None
    error: str


def _status(value: Any) -> TaskStatus | str:
    try:
        return TaskStatus(value)
    except ValueError:
        return str(value)


def _date(value: Any) -> datetime.datetime | None:
    return naive_utc(value) if isinstance(value, datetime.datetime) else None


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


@dataclass(frozen=True)
class TaskRecord:
    """One task document, typed (fields: docs/architecture.md, ``<collection>_tasks``)."""

    id: Any
    reactor: str
    source_id: Any
    status: TaskStatus | str
    """A :class:`TaskStatus` (a plain string only for a status this version does not know)."""
    database: str
    collection: str
    """The tasks collection it lives in."""
    attempts: int = 0
    next_run_at: datetime.datetime | None = None
    due_at: datetime.datetime | None = None
    first_change_at: datetime.datetime | None = None
    created_at: datetime.datetime | None = None
    updated_at: datetime.datetime | None = None
    started_at: datetime.datetime | None = None
    last_finalized_at: datetime.datetime | None = None
    completed_at: datetime.datetime | None = None
    retried_at: datetime.datetime | None = None
    """The last operator retry (:func:`retry_tasks`)."""
    reprocessed_at: datetime.datetime | None = None
    expires_at: datetime.datetime | None = None
    last_error: str | None = None
    last_traceback: str | None = None
    """The last failure's traceback, trimmed to the handler's frames."""
    first_error_at: datetime.datetime | None = None
    skip_reason: str | None = None
    lease: Lease | None = None
    snapshot: Any = None
    snapshot_hash: str | None = None
    planning_error: PlanningError | None = None
    history: tuple[HistoryEntry, ...] = field(default_factory=tuple)

    @classmethod
    def from_document(cls, doc: Doc, database: str, collection: str) -> TaskRecord:
        """The record of a stored task document."""
        lease = doc.get("lease")
        planning = doc.get("planningError")
        history = [entry for entry in doc.get("history") or [] if isinstance(entry, dict)]
        return cls(
            id=doc.get("_id"), reactor=str(doc.get("reactor")), source_id=doc.get("sourceId"),
            status=_status(doc.get("status")), database=database, collection=collection,
            attempts=int(doc.get("attempts") or 0),
            next_run_at=_date(doc.get("nextRunAt")), due_at=_date(doc.get("dueAt")),
            first_change_at=_date(doc.get("firstChangeAt")),
            created_at=_date(doc.get("createdAt")), updated_at=_date(doc.get("updatedAt")),
            started_at=_date(doc.get("startedAt")),
            last_finalized_at=_date(doc.get("lastFinalizedAt")),
            completed_at=_date(doc.get("completedAt")),
            retried_at=_date(doc.get("retriedAt")),
            reprocessed_at=_date(doc.get("reprocessedAt")),
            expires_at=_date(doc.get("expiresAt")),
            last_error=_text(doc.get("lastError")),
            last_traceback=_text(doc.get("lastTraceback")),
            first_error_at=_date(doc.get("firstErrorAt")),
            skip_reason=_text(doc.get("skipReason")),
            lease=Lease(_text(lease.get("owner")), lease.get("claim"),
                        _date(lease.get("expiresAt"))) if isinstance(lease, dict) else None,
            snapshot=doc.get("snapshot"), snapshot_hash=_text(doc.get("snapshotHash")),
            planning_error=PlanningError(_date(planning.get("at")),
                                         str(planning.get("error")))
            if isinstance(planning, dict) else None,
            history=tuple(HistoryEntry(
                at=_date(entry.get("at")), status=str(entry.get("status")),
                attempt=entry.get("attempt") if isinstance(entry.get("attempt"), int) else None,
                duration_ms=float(entry["durationMs"])
                if isinstance(entry.get("durationMs"), int | float) else None,
                error=_text(entry.get("error")), by=_text(entry.get("by")),
                traceback=_text(entry.get("traceback")))
                for entry in history))


@dataclass(frozen=True)
class TaskPage:
    """One page of :func:`list_tasks`."""

    tasks: list[TaskRecord]
    skip: int
    limit: int
    has_more: bool
    """Whether more tasks follow this page."""

    @property
    def next_skip(self) -> int | None:
        """The ``skip`` of the next page, or None on the last page."""
        return self.skip + len(self.tasks) if self.has_more else None


@dataclass(frozen=True)
class RetryResult:
    """What :func:`retry_tasks` did."""

    selected: int
    """Tasks matching the selection when the retry started (counted first)."""
    matched: int
    """Tasks the updates matched (differs from ``selected`` if tasks changed meanwhile)."""
    modified: int
    """Tasks changed."""
    batches: int
    """``update_many`` commands sent."""


# ------------------------------------------------------------------------------- filters


def task_filter(selection: TaskSelection, group: TaskCollection,
                retryable: bool = False) -> Doc:
    """The query on one tasks collection for ``selection`` (without the source filter).

    Served by the task indexes: ``{reactor, status}`` (``reactgen_status``), ``{reactor,
    sourceId}`` (``reactgen_task_key``). ``retryable`` leaves out tasks scheduled for expiry
    (their source is gone: there is nothing to run).
    """
    query: Doc = {"reactor": selection.reactor if selection.reactor is not None
                  else {"$in": group.reactor_names}}
    if selection.statuses:
        query["status"] = {"$in": [status.value for status in selection.statuses]}
    if selection.error_text is not None:
        query["lastError"] = {"$regex": re.escape(selection.error_text), "$options": "i"}
    if selection.source_ids:
        query["sourceId"] = {"$in": list(selection.source_ids)}
    if retryable:
        query["expiresAt"] = {"$exists": False}
    return query


async def source_id_batches(scope: Scope, group: TaskCollection, selection: TaskSelection,
                            size: int) -> AsyncIterator[list[Any]]:
    """The ``_id``\\ s of the source documents matching ``selection.source_filter`` (and
    ``selection.source_ids``, if given), in batches of ``size``."""
    pipeline: list[Doc] = []
    if selection.source_ids:
        pipeline.append({"$match": {"_id": {"$in": list(selection.source_ids)}}})
    # A stage of its own (not $and): the filter stays a top-level query, as the planner
    # evaluates trigger filters.
    pipeline.append({"$match": dict(selection.source_filter or {})})
    pipeline.append({"$project": {"_id": 1}})
    cursor = await scope.source_collection(group).aggregate(pipeline, batchSize=size)
    batch: list[Any] = []
    async for doc in cursor:
        batch.append(doc["_id"])
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def retry_update() -> list[Doc]:
    """The update pipeline of a retry, evaluated per task on the server (concurrency-safe).

    Running tasks (``processing``, ``processing_dirty``) become ``processing_dirty``: the
    running execution goes on and the task runs again right after it. Finished ones
    (``failed``, ``completed``, ``skipped``) become ``pending`` and due now, with ``attempts``
    0, ``firstErrorAt`` and ``skipReason`` cleared and ``dueAt`` now. Pending ones become due
    now (their attempts are kept). Every retried task gets ``retriedAt``.
    """
    running = {"$in": ["$status", [s.value for s in RUNNING_STATUSES]]}
    finished = {"$in": ["$status", [s.value for s in FINISHED_STATUSES]]}
    return [{"$set": {
        "status": {"$cond": [running, TaskStatus.PROCESSING_DIRTY.value,
                             TaskStatus.PENDING.value]},
        "nextRunAt": {"$cond": [running, "$nextRunAt", "$$NOW"]},
        "dueAt": {"$cond": [running, "$dueAt", {"$cond": [
            finished, "$$NOW", {"$min": [{"$ifNull": ["$dueAt", "$$NOW"]}, "$$NOW"]}]}]},
        "attempts": {"$cond": [finished, 0, {"$ifNull": ["$attempts", 0]}]},
        "firstErrorAt": {"$cond": [finished, None, {"$ifNull": ["$firstErrorAt", None]}]},
        "skipReason": {"$cond": [finished, None, {"$ifNull": ["$skipReason", None]}]},
        "retriedAt": "$$NOW",
    }}]


# ------------------------------------------------------------------------------- ordering

_NUMBERS = (int, float, Decimal128)


def bson_order(value: Any) -> tuple[int, Any]:
    """A Python sort key that orders values like MongoDB sorts them (null/missing first,
    then numbers, strings, objects, arrays, binary, ObjectIds, booleans, dates)."""
    if value is None:
        return (0, 0)
    if isinstance(value, bool):
        return (8, value)
    if isinstance(value, _NUMBERS):
        number = value.to_decimal() if isinstance(value, Decimal128) else value
        return (1, float(number))
    if isinstance(value, str):
        return (2, value)
    if isinstance(value, ObjectId):
        return (7, value.binary)
    if isinstance(value, datetime.datetime):
        return (9, naive_utc(value))
    if isinstance(value, dict):
        return (3, repr(value))
    if isinstance(value, list):
        return (4, repr(value))
    if isinstance(value, bytes):
        return (5, value)
    return (6, repr(value))


def _order_key(doc: Doc, sort: TaskSort) -> tuple[tuple[int, Any], tuple[int, Any]]:
    return (bson_order(doc.get(sort.value)), bson_order(doc.get("_id")))


def _sort_spec(sort: TaskSort, descending: bool) -> list[tuple[str, int]]:
    direction = -1 if descending else 1
    if sort is TaskSort.ID:
        return [("_id", direction)]
    return [(sort.value, direction), ("_id", direction)]


# ------------------------------------------------------------------------------- operations


async def count_tasks(scope: Scope, selection: TaskSelection) -> int:
    """How many tasks match ``selection``."""
    return await _count(scope, selection, retryable=False)


async def _count(scope: Scope, selection: TaskSelection, retryable: bool) -> int:
    total = 0
    for group in scope.task_collections(selection.reactor):
        collection = scope.collection(group)
        query = task_filter(selection, group, retryable)
        if selection.source_filter is None:
            total += await collection.count_documents(query)
            continue
        async for ids in source_id_batches(scope, group, selection, SOURCE_BATCH):
            total += await collection.count_documents({**query, "sourceId": {"$in": ids}})
    return total


async def list_tasks(scope: Scope, selection: TaskSelection, *,
                     sort: TaskSort = TaskSort.NEXT_RUN_AT, descending: bool = False,
                     limit: int = DEFAULT_LIMIT, skip: int = 0) -> TaskPage:
    """One page of the tasks matching ``selection``, ordered by ``sort`` then ``_id``.

    Pagination is ``skip`` + ``limit`` (``TaskPage.next_skip`` gives the next page); the server
    walks the skipped tasks, so deep pages of a huge selection cost more than the first. Tasks
    of several tasks collections (no ``reactor`` given, reactors on different collections) are
    merged in the order MongoDB sorts them.
    """
    if limit < 1:
        raise InvalidSelection(f"limit must be at least 1, got {limit}")
    if skip < 0:
        raise InvalidSelection(f"skip must not be negative, got {skip}")
    groups = scope.task_collections(selection.reactor)
    spec = _sort_spec(sort, descending)
    found: list[tuple[Doc, TaskCollection]] = []
    if selection.source_filter is None:
        for group in groups:
            cursor = scope.collection(group).find(task_filter(selection, group)).sort(spec)
            if len(groups) == 1:
                cursor = cursor.skip(skip).limit(limit + 1)
            else:
                cursor = cursor.limit(skip + limit + 1)
            found.extend([(doc, group) async for doc in cursor])
        if len(groups) > 1:
            found.sort(key=lambda item: _order_key(item[0], sort), reverse=descending)
            found = found[skip:skip + limit + 1]
    else:
        found = await _list_by_source(scope, groups, selection, sort, descending,
                                      skip + limit + 1)
        found = found[skip:]
    tasks = [TaskRecord.from_document(doc, group.database, group.name)
             for doc, group in found[:limit]]
    return TaskPage(tasks, skip, limit, has_more=len(found) > limit)


async def _list_by_source(scope: Scope, groups: list[TaskCollection], selection: TaskSelection,
                          sort: TaskSort, descending: bool,
                          wanted: int) -> list[tuple[Doc, TaskCollection]]:
    """The first ``wanted`` tasks (in order) whose source matches the source filter."""
    best: list[tuple[Doc, int]] = []  # (projected candidate, group index)
    projection = {"_id": 1, sort.value: 1}

    def key(item: tuple[Doc, int]) -> Any:
        return _order_key(item[0], sort)

    for index, group in enumerate(groups):
        collection = scope.collection(group)
        query = task_filter(selection, group)
        async for ids in source_id_batches(scope, group, selection, SOURCE_BATCH):
            cursor = collection.find({**query, "sourceId": {"$in": ids}}, projection)
            best.extend([(doc, index) async for doc in cursor])
            best.sort(key=key, reverse=descending)
            del best[wanted:]
    chosen: dict[int, list[Any]] = {}
    for doc, index in best:
        chosen.setdefault(index, []).append(doc["_id"])
    full: dict[tuple[int, Any], Doc] = {}
    for index, ids in chosen.items():
        async for doc in scope.collection(groups[index]).find({"_id": {"$in": ids}}):
            full[(index, bson_order(doc["_id"]))] = doc
    return [(full[(index, bson_order(doc["_id"]))], groups[index]) for doc, index in best
            if (index, bson_order(doc["_id"])) in full]


async def show_task(scope: Scope, task_id: Any) -> TaskRecord:
    """One task by its ``_id`` (searched in every tasks collection of the application);
    raises :class:`NotFound`."""
    for group in scope.task_collections():
        doc = await scope.collection(group).find_one({"_id": task_id})
        if doc is not None:
            return TaskRecord.from_document(doc, group.database, group.name)
    raise NotFound(f"no task with _id {task_id!r} in the tasks collections of the "
                   "application's reactors")


async def show_task_of(scope: Scope, reactor: str, source_id: Any) -> TaskRecord:
    """The task of ``reactor`` for one source document; raises :class:`NotFound`."""
    spec = scope.reactor(reactor)
    doc = await scope.tasks_of(spec).find_one({"reactor": reactor, "sourceId": source_id})
    if doc is None:
        raise NotFound(f"reactor {reactor!r} has no task for source id {source_id!r} "
                       "(`runtime explain` says why)")
    return TaskRecord.from_document(doc, scope.database_name(spec), spec.tasks_collection)


async def retry_tasks(scope: Scope, selection: TaskSelection, *, batch_size: int = RETRY_BATCH,
                      progress: ProgressCallback | None = None) -> RetryResult:
    """Retry every task matching ``selection`` (see :func:`retry_update` for what happens to
    each status). An empty selection retries every task of every reactor.

    The matching tasks are counted first, then updated by ``update_many`` commands on ranges
    of ``batch_size`` tasks in ``_id`` order (with a source filter: batches of source ids), so
    ``progress(done, total)`` can report after each one. Each command re-checks the selection
    on the server, so a task that changed meanwhile is updated only if it still matches. Tasks
    whose source is gone (``expiresAt`` set) are left alone.
    """
    if batch_size < 1:
        raise InvalidSelection(f"batch_size must be at least 1, got {batch_size}")
    total = await _count(scope, selection, retryable=True)
    update = retry_update()
    matched = modified = batches = 0
    if progress is not None:
        progress(0, total)
    for group in scope.task_collections(selection.reactor):
        collection = scope.collection(group)
        query = task_filter(selection, group, retryable=True)
        if selection.source_filter is not None:
            async for ids in source_id_batches(scope, group, selection, batch_size):
                result = await collection.update_many({**query, "sourceId": {"$in": ids}},
                                                      update)
                batches += 1
                matched += result.matched_count
                modified += result.modified_count
                if progress is not None:
                    progress(matched, total)
            continue
        lower: Any = None
        has_lower = False
        while True:
            remaining = {**query, "_id": {"$gt": lower}} if has_lower else query
            boundary = await collection.find(remaining, {"_id": 1}).sort("_id", 1).skip(
                batch_size - 1).limit(1).to_list(1)
            if boundary:
                upper = boundary[0]["_id"]
                id_range: Doc = {"$lte": upper}
                if has_lower:
                    id_range["$gt"] = lower
                batch = {**query, "_id": id_range}
            else:
                batch = remaining
            result = await collection.update_many(batch, update)
            batches += 1
            matched += result.matched_count
            modified += result.modified_count
            if progress is not None:
                progress(matched, total)
            if not boundary:
                break
            lower, has_lower = upper, True
    return RetryResult(total, matched, modified, batches)
