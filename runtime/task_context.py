"""The runtime's implementation of :class:`runtime.context.TaskContext`."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from pydantic import BaseModel
from pymongo.asynchronous.collection import AsyncCollection

from runtime.context import TaskContext
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


class RuntimeTaskContext(TaskContext[Any, Any]):
    """One execution's context; built by the worker."""

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
        self.finalized = False
        self.deferred_ms: int | None = None
        self.throttle_ms: int | None = None
        self._debounce = debounce
        self._loop = loop
        self.started = time.perf_counter()

    def _watched(self, snapshot: Any) -> Any:
        if not isinstance(snapshot, dict):
            return snapshot
        try:
            return self.reactor.watched_model.model_validate(snapshot)
        except ValueError:
            return snapshot

    async def get_document(self, projection: dict[str, Any] | None = None,
                           session: Any = None) -> Any:
        """The current source document, validated; raises TaskSkipped if the check fails."""
        pipeline: list[dict[str, Any]] = [
            {"$match": {"$and": [{"_id": self.doc_id}, self.reactor.filter]}
             if self.reactor.filter else {"_id": self.doc_id}},
            {"$addFields": {SNAPSHOT_FIELD: watch_expression(self.reactor)}},
        ]
        if projection:
            included = any(v not in (0, False) for k, v in projection.items() if k != "_id")
            pipeline.append({"$project": {**projection, SNAPSHOT_FIELD: 1} if included
                             else dict(projection)})
        cursor = await self.source.aggregate(pipeline, session=session)
        docs = await cursor.to_list(1)
        if not docs:
            raise TaskSkipped("source document deleted or no longer matches the filter")
        doc = docs[0]
        snapshot = doc.pop(SNAPSHOT_FIELD, None)
        if snapshot_hash(snapshot) != self.held.doc.get("snapshotHash"):
            raise TaskSkipped("watched values changed since the task was planned")
        model: type[BaseModel] = self.reactor.model
        if projection:
            return model.model_construct(**doc)
        return model.model_validate(doc)

    async def mark_completed(self, session: Any = None) -> None:
        """Finalize as completed now, inside ``session``'s transaction if given."""
        if self.finalized:
            return
        held = await self.store.finalize(
            self.held, COMPLETED, error=None, retry_at_ms=None,
            history_limit=self.reactor.policies.history_limit,
            duration_ms=(time.perf_counter() - self.started) * 1000,
            debounce=self._debounce, session=session)
        if not held:
            raise LeaseLost("the task was taken over by another worker; not completing it")
        self.finalized = True

    async def defer(self, delay_ms: int) -> None:
        """Re-queue after ``delay_ms`` when the handler returns (the attempt is not counted)."""
        self.deferred_ms = max(0, int(delay_ms))

    async def throttle(self, duration_ms: int) -> None:
        """Pause the whole reactor on every instance for ``duration_ms``."""
        self.throttle_ms = max(0, int(duration_ms))

    # Plain ``def`` handlers run in a worker thread; these block until the loop has done it.

    def get_document_sync(self, projection: dict[str, Any] | None = None,
                          session: Any = None) -> Any:
        """:meth:`get_document` for handlers written as plain functions."""
        return asyncio.run_coroutine_threadsafe(
            self.get_document(projection, session), self._loop).result()

    def mark_completed_sync(self, session: Any = None) -> None:
        """:meth:`mark_completed` for handlers written as plain functions."""
        asyncio.run_coroutine_threadsafe(self.mark_completed(session), self._loop).result()

    def defer_sync(self, delay_ms: int) -> None:
        """:meth:`defer` for handlers written as plain functions."""
        self.deferred_ms = max(0, int(delay_ms))

    def throttle_sync(self, duration_ms: int) -> None:
        """:meth:`throttle` for handlers written as plain functions."""
        self.throttle_ms = max(0, int(duration_ms))
