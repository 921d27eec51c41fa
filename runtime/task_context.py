"""The runtime's implementation of :class:`runtime.context.TaskContext`."""

from __future__ import annotations

import asyncio
import datetime
import logging
import time
from typing import Any
from zoneinfo import ZoneInfo

from pydantic import BaseModel, ValidationError
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.client_session import ClientSession

from runtime.context import TaskContext
from runtime.cron_spec import CronContext, CronSpec, CronTrigger
from runtime.reactor import ReactorSpec
from runtime.task_store import COMPLETED, Claimed, TaskStore, snapshot_hash

SNAPSHOT_FIELD = "__reactgen_snapshot"


class TaskSkipped(Exception):
    """The late-binding check failed: the source is gone, no longer matches, or changed."""


class LeaseLost(Exception):
    """This execution no longer holds its task (another worker took over after a timeout)."""


def watch_expression(reactor: ReactorSpec) -> Any:
    """The expression computing a reactor's watched-values snapshot from a source document."""
    if reactor.watch is None:
        return "$$ROOT"
    if not reactor.watch:
        return {"$literal": {}}
    return reactor.watch


def document_pipeline(reactor: ReactorSpec, doc_id: Any,
                      projection: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The late-binding read of ``get_document()``: the source document if it still matches
    the filter, with its current watched values in :data:`SNAPSHOT_FIELD`."""
    # Two stages rather than one $and: the filter stays a top-level query, exactly as the
    # planner evaluates it (the embedded server loses $$NOW inside $and, issue 12).
    pipeline: list[dict[str, Any]] = [{"$match": {"_id": doc_id}}]
    if reactor.filter:
        pipeline.append({"$match": reactor.filter})
    pipeline.append({"$addFields": {SNAPSHOT_FIELD: watch_expression(reactor)}})
    if projection:
        included = any(v not in (0, False) for k, v in projection.items() if k != "_id")
        pipeline.append({"$project": {**projection, SNAPSHOT_FIELD: 1} if included
                         else dict(projection)})
    return pipeline


class RuntimeTaskContext(TaskContext[Any, Any]):
    """One execution's context; built by the worker.

    Completion bookkeeping, read by the worker once the handler has returned or raised:
    ``completed`` is set when :meth:`mark_completed` wrote outside any transaction (the
    completion is durable); ``completed_in_session`` when it wrote inside a caller's session,
    whose transaction may still have been aborted, so the worker re-checks.

    The context of a cron job's task (a :class:`~runtime.cron_spec.CronSpec`) is a
    :class:`CronTaskContext`: constructing this class for one returns that subclass.
    """

    def __new__(cls, reactor: ReactorSpec, *args: Any, **kwargs: Any) -> RuntimeTaskContext:
        """A :class:`CronTaskContext` for a cron job, else an instance of ``cls``."""
        if cls is RuntimeTaskContext and isinstance(reactor, CronSpec):
            cls = CronTaskContext
        return super().__new__(cls)

    def __init__(self, reactor: ReactorSpec, held: Claimed, store: TaskStore,
                 source: AsyncCollection[dict[str, Any]], logger: logging.Logger,
                 debounce: Any, loop: asyncio.AbstractEventLoop) -> None:
        self.reactor = reactor
        self.held = held
        self.store = store
        self.source = source
        self.database = source.database
        self.doc_id = held.doc["sourceId"]
        self.attempt = int(held.doc.get("attempts", 1))
        snapshot = held.doc.get("snapshot")
        self.watched_values = self._watched(snapshot)
        self.logger = logging.LoggerAdapter(logger, {"fields": {
            "reactor": reactor.name, "task_id": held.task_id, "source_id": self.doc_id,
            "attempt": self.attempt}})
        self.completed = False
        self.completed_in_session = False
        self.invalid_document = False
        self.deferred_ms: int | None = None
        self.throttle_ms: int | None = None
        self._debounce = debounce
        self._loop = loop
        self.started = time.perf_counter()

    @property
    def finalized(self) -> bool:
        """True once :meth:`mark_completed` has written the completion somewhere."""
        return self.completed or self.completed_in_session

    def _watched(self, snapshot: Any) -> Any:
        if not isinstance(snapshot, dict):
            return snapshot
        try:
            return self.reactor.watched_model.model_validate(snapshot)
        except ValueError:
            return snapshot

    # The late-binding check.

    def _document_pipeline(self, projection: dict[str, Any] | None) -> list[dict[str, Any]]:
        return document_pipeline(self.reactor, self.doc_id, projection)

    def _checked(self, docs: list[dict[str, Any]], projection: dict[str, Any] | None) -> Any:
        if not docs:
            raise TaskSkipped("source document deleted or no longer matches the filter")
        doc = docs[0]
        snapshot = doc.pop(SNAPSHOT_FIELD, None)
        if snapshot_hash(snapshot) != self.held.doc.get("snapshotHash"):
            raise TaskSkipped("watched values changed since the task was planned")
        if projection is not None:
            return doc
        model: type[BaseModel] = self.reactor.model
        try:
            return model.model_validate(doc)
        except ValidationError:
            self.invalid_document = True
            raise

    async def get_document(self, projection: dict[str, Any] | None = None,
                           session: Any = None) -> Any:
        """The current source document, validated (with a ``projection``: the projected
        fields as a ``dict``, not validated); raises TaskSkipped if the check fails."""
        cursor = await self.source.aggregate(self._document_pipeline(projection),
                                             session=session)
        return self._checked(await cursor.to_list(1), projection)

    # Completion inside the caller's transaction.

    async def mark_completed(self, session: Any = None) -> None:
        """Finalize as completed now, inside ``session``'s transaction if given.

        Calling it again is harmless: in the same transaction it changes nothing, and in a new
        transaction after the previous one was aborted (a retried ``with_transaction``
        callback) it writes the completion again.
        """
        if self.completed:
            return
        query, update = self._completion()
        result = await self.store.collection.update_one(query, update, session=session)
        if result.matched_count != 1 and not await self.store.finalized_by(self.held, session):
            raise LeaseLost("the task was taken over by another worker; not completing it")
        self._mark(session)

    def _completion(self) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        policies = self.reactor.policies
        return self.store.finalize_update(
            self.held, COMPLETED, error=None, history_limit=policies.history_limit,
            duration_ms=(time.perf_counter() - self.started) * 1000, debounce=self._debounce,
            reset_on_data_change=policies.retry.reset_on_data_change)

    def _mark(self, session: Any) -> None:
        if session is None:
            self.completed = True
        else:
            self.completed_in_session = True

    async def defer(self, delay_ms: int) -> None:
        """Re-queue after ``delay_ms`` when the handler returns (the attempt is not counted)."""
        self.deferred_ms = max(0, int(delay_ms))

    async def throttle(self, duration_ms: int) -> None:
        """Pause the whole reactor on every instance for ``duration_ms``."""
        self.throttle_ms = max(0, int(duration_ms))

    # Plain ``def`` handlers run in a worker thread; these block until the work is done. A
    # ``session`` of a synchronous ``pymongo.MongoClient`` is used from this thread directly
    # (it cannot be used from the event loop); anything else goes through the runtime's loop.

    @staticmethod
    def _sync_collection(session: ClientSession, collection: AsyncCollection[Any]) -> Any:
        return session.client[collection.database.name][collection.name]

    def get_document_sync(self, projection: dict[str, Any] | None = None,
                          session: Any = None) -> Any:
        """:meth:`get_document` for handlers written as plain functions."""
        if isinstance(session, ClientSession):
            collection = self._sync_collection(session, self.source)
            docs = list(collection.aggregate(self._document_pipeline(projection),
                                             session=session))
            return self._checked(docs[:1], projection)
        return asyncio.run_coroutine_threadsafe(
            self.get_document(projection, session), self._loop).result()

    def mark_completed_sync(self, session: Any = None) -> None:
        """:meth:`mark_completed` for handlers written as plain functions."""
        if not isinstance(session, ClientSession):
            asyncio.run_coroutine_threadsafe(self.mark_completed(session), self._loop).result()
            return
        if self.completed:
            return
        collection = self._sync_collection(session, self.store.collection)
        query, update = self._completion()
        result = collection.update_one(query, update, session=session)
        if result.matched_count != 1 and collection.find_one(
                {"_id": self.held.task_id, "lastClaim": self.held.claim, "lease": None},
                {"_id": 1}, session=session) is None:
            raise LeaseLost("the task was taken over by another worker; not completing it")
        self._mark(session)

    def defer_sync(self, delay_ms: int) -> None:
        """:meth:`defer` for handlers written as plain functions."""
        self.deferred_ms = max(0, int(delay_ms))

    def throttle_sync(self, duration_ms: int) -> None:
        """:meth:`throttle` for handlers written as plain functions."""
        self.throttle_ms = max(0, int(duration_ms))


class CronTaskContext(RuntimeTaskContext, CronContext):
    """One execution of a cron job's occurrence: no source document, so no late binding."""

    def __init__(self, reactor: ReactorSpec, held: Claimed, store: TaskStore,
                 source: AsyncCollection[dict[str, Any]], logger: logging.Logger,
                 debounce: Any, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(reactor, held, store, source, logger, debounce, loop)
        assert isinstance(reactor, CronSpec)
        self.cron = reactor
        scheduled = held.doc.get("scheduledFor", held.doc.get("sourceId"))
        if not isinstance(scheduled, datetime.datetime):
            scheduled = datetime.datetime.now(datetime.UTC)
        self.scheduled_for = (scheduled.replace(tzinfo=datetime.UTC) if scheduled.tzinfo is None
                              else scheduled.astimezone(datetime.UTC))
        try:
            self.trigger = CronTrigger(held.doc.get("trigger", CronTrigger.SCHEDULE.value))
        except ValueError:
            self.trigger = CronTrigger.SCHEDULE
        self.logger = logging.LoggerAdapter(logger, {"fields": {
            "reactor": reactor.name, "task_id": held.task_id,
            "scheduled_for": self.scheduled_for.isoformat(), "attempt": self.attempt}})

    @property
    def local_time(self) -> datetime.datetime:
        """The scheduled time in the job's time zone."""
        return self.scheduled_for.astimezone(ZoneInfo(self.cron.schedule.timezone))

    async def get_document(self, projection: dict[str, Any] | None = None,
                           session: Any = None) -> Any:
        """Cron jobs have no source document."""
        raise TypeError(f"cron job {self.reactor.name!r} has no source document; use "
                        "ctx.scheduled_for")

    def get_document_sync(self, projection: dict[str, Any] | None = None,
                          session: Any = None) -> Any:
        """Cron jobs have no source document."""
        raise TypeError(f"cron job {self.reactor.name!r} has no source document; use "
                        "ctx.scheduled_for")
