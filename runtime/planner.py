"""The planner (leader only): change events in, one task per (reactor, source document) out.

Per database it reads the compiled change-stream pipeline batch by batch. A batch is reduced to
the set of (collection, ``_id``) it touched; the current documents are re-read in one
aggregation per collection, each reactor's filter and watched snapshot evaluated on the server,
and all task upserts of a tasks collection go out in one unordered bulk write. Only then is the
batch's resume token saved, so the token never moves past a batch that failed to plan; the
batch is retried until it succeeds (a poison document is isolated and recorded instead of
wedging the stream).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

import bson
from pymongo import UpdateOne
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError, OperationFailure, PyMongoError

from runtime.cancellation import consume_outcome, raise_if_cancelled
from runtime.change_feed import ChangeFeed, HistoryLost, is_resumable
from runtime.meta import META_COLLECTION, planner_id
from runtime.reactor import ReactorSpec
from runtime.structured_logging import log_event
from runtime.task_context import watch_expression
from runtime.task_store import plan_update, source_gone_pipeline, source_gone_update

log = logging.getLogger("runtime.planner")
MAX_BACKOFF_S = 5.0
STOP_WAIT_S = 2.0
RECONCILE_BATCH = 500
DueHint = Callable[[str, int], None]


def _id_key(value: Any) -> bytes:
    return bson.encode({"v": value})


class DatabasePlanner:
    """Plans the reactors of one database."""

    def __init__(self, db: AsyncDatabase[Any], meta_db: AsyncDatabase[Any],
                 reactors: list[ReactorSpec], pipeline: list[dict[str, Any]],
                 batch_max: int, leader_token: int, due_hint: DueHint) -> None:
        self.db = db
        self.meta = meta_db[META_COLLECTION]
        self.reactors = reactors
        self.by_collection: dict[str, list[ReactorSpec]] = {}
        for reactor in reactors:
            self.by_collection.setdefault(reactor.collection, []).append(reactor)
        self.pipeline = pipeline
        self.batch_max = batch_max
        self.leader_token = leader_token
        self.due_hint = due_hint
        self.feed = ChangeFeed(db, pipeline, batch_size=batch_max, max_await_ms=500)
        self._saved_token: dict[str, Any] | None = None
        self._reconcilers: set[asyncio.Task[None]] = set()
        self._last_save = 0.0

    async def run(self) -> None:
        """Plan until cancelled."""
        state = await self.meta.find_one({"_id": planner_id(self.db.name)})
        token = state.get("resumeToken") if state else None
        reconcile = token is None
        try:
            await self.feed.open(token)
        except HistoryLost as exc:
            log_event(log, logging.ERROR, "change-stream history lost; reconciling",
                      event="planner.history_lost", database=self.db.name, error=str(exc))
            await self.feed.open(None)
            reconcile = True
        self._saved_token = token
        if reconcile:
            # Record the opening position at once: a planner stopped before its first batch
            # must not make the next one reconcile everything again.
            await self._save_token(self.feed.resume_token, force=True)
        reconciler = asyncio.create_task(self.reconcile()) if reconcile else None
        log_event(log, logging.INFO, "planner started", event="planner.started",
                  database=self.db.name, resumed=not reconcile)
        try:
            await self._loop()
        finally:
            for task in [reconciler, *self._reconcilers]:
                if task is not None:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError, PyMongoError):
                        await task
            await self.feed.close()

    async def _loop(self) -> None:
        backoff = 0.1
        while True:
            try:
                batch = await self.feed.next_batch()
            except HistoryLost as exc:
                log_event(log, logging.ERROR, "change-stream history lost; reconciling",
                          event="planner.history_lost", database=self.db.name, error=str(exc))
                await self.feed.open(None)
                self._reconcilers.add(asyncio.create_task(self.reconcile()))
                continue
            except PyMongoError as exc:
                raise_if_cancelled()
                if not is_resumable(exc):
                    log_event(log, logging.ERROR, "change stream failed", event="planner.error",
                              database=self.db.name, error=str(exc))
                await asyncio.sleep(backoff)
                backoff = min(MAX_BACKOFF_S, backoff * 2)
                with contextlib.suppress(PyMongoError):
                    await self.feed.open(self.feed.resume_token or self._saved_token)
                continue
            backoff = 0.1
            if batch.events:
                await self._plan_until_done(batch.events)
            await self._save_token(batch.resume_token, force=bool(batch.events))

    async def _plan_until_done(self, events: list[dict[str, Any]]) -> None:
        delay = 0.1
        while True:
            try:
                await self.plan_events(events)
                return
            except PyMongoError as exc:
                raise_if_cancelled()
                log_event(log, logging.WARNING, "planning a batch failed; retrying",
                          event="planner.batch_failed", database=self.db.name,
                          events=len(events), error=str(exc))
                await asyncio.sleep(delay)
                delay = min(MAX_BACKOFF_S, delay * 2)

    async def _save_token(self, token: dict[str, Any] | None, force: bool) -> None:
        if token is None or token == self._saved_token:
            return
        loop_time = asyncio.get_running_loop().time()
        if not force and loop_time - self._last_save < 1.0:
            return
        # Fenced by the leadership token: a deposed leader cannot move the position back.
        # One upsert: when a newer leader owns the document the filter does not match and the
        # upsert's insert collides on _id, which is exactly "refused".
        with contextlib.suppress(DuplicateKeyError):
            await self.meta.update_one(
                {"_id": planner_id(self.db.name),
                 "$or": [{"leaderToken": {"$lte": self.leader_token}},
                         {"leaderToken": {"$exists": False}}]},
                {"$set": {"resumeToken": token, "leaderToken": self.leader_token},
                 "$currentDate": {"updatedAt": True}},
                upsert=True)
        self._saved_token = token
        self._last_save = loop_time

    async def plan_events(self, events: list[dict[str, Any]]) -> None:
        """Plan one batch of change events."""
        touched: dict[str, dict[bytes, Any]] = {}
        dropped: set[str] = set()
        for event in events:
            op = event.get("operationType")
            ns = event.get("ns") or {}
            coll = ns.get("coll")
            if op in ("insert", "update", "replace", "delete") and coll in self.by_collection:
                source_id = event["documentKey"]["_id"]
                touched.setdefault(coll, {})[_id_key(source_id)] = source_id
            elif op in ("drop", "rename") and coll in self.by_collection:
                dropped.add(coll)
            elif op == "dropDatabase":
                dropped.update(self.by_collection)
        for coll in dropped:
            await self._collection_gone(coll)
        for coll, ids in touched.items():
            await self.plan_ids(coll, list(ids.values()))

    async def plan_ids(self, collection: str, ids: list[Any]) -> None:
        """Re-read ``ids`` of one source collection and upsert their tasks."""
        reactors = self.by_collection[collection]
        try:
            found = await self._evaluate(collection, reactors, ids)
        except OperationFailure as exc:
            if len(ids) == 1:
                log_event(log, logging.ERROR, "cannot evaluate document; skipped",
                          event="planner.poison_document", collection=collection,
                          source_id=ids[0], error=str(exc))
                return
            middle = len(ids) // 2
            await self.plan_ids(collection, ids[:middle])
            await self.plan_ids(collection, ids[middle:])
            return
        ops: dict[str, list[UpdateOne]] = {}
        planned: set[str] = set()
        for source_id in ids:
            verdicts = found.get(_id_key(source_id))
            for reactor in reactors:
                target = ops.setdefault(reactor.tasks_collection, [])
                snapshot = verdicts.get(reactor.name) if verdicts is not None else None
                cleanup = reactor.policies.cleanup.when
                if verdicts is not None and reactor.name in verdicts:
                    target.append(plan_update(reactor, source_id, snapshot))
                    planned.add(reactor.name)
                elif (verdicts is None and cleanup != "never") or (
                        verdicts is not None and cleanup == "sourceDeletedOrUnmatched"):
                    target.append(source_gone_update(reactor, source_id))
        for tasks_collection, updates in ops.items():
            if updates:
                await self.db[tasks_collection].bulk_write(updates, ordered=False)
        # Hints only after the write: a worker woken earlier would find nothing and park the
        # reactor until the idle poll. A debounced task's exact due time also reaches every
        # instance through the wake-up stream; this local hint is never earlier than it.
        for reactor in reactors:
            if reactor.name in planned:
                self.due_hint(reactor.name, reactor.policies.debounce.delay_ms)

    async def _evaluate(self, collection: str, reactors: list[ReactorSpec],
                        ids: list[Any]) -> dict[bytes, dict[str, Any]]:
        """For each existing id: reactor name -> snapshot, for the reactors whose filter it
        matches. Missing ids (deleted) are absent from the result."""
        facets: dict[str, list[dict[str, Any]]] = {
            "snapshots": [{"$project": {f"s{i}": watch_expression(r)
                                        for i, r in enumerate(reactors)}}]}
        for i, reactor in enumerate(reactors):
            if reactor.filter:
                facets[f"m{i}"] = [{"$match": reactor.filter}, {"$project": {"_id": 1}}]
        cursor = await self.db[collection].aggregate(
            [{"$match": {"_id": {"$in": ids}}}, {"$facet": facets}])
        rows = await cursor.to_list(None)
        result: dict[bytes, dict[str, Any]] = {}
        if not rows:
            return result
        row = rows[0]
        matching = {f"m{i}": {_id_key(d["_id"]) for d in row.get(f"m{i}", [])}
                    for i, reactor in enumerate(reactors) if reactor.filter}
        for doc in row["snapshots"]:
            key = _id_key(doc["_id"])
            verdict: dict[str, Any] = {}
            for i, reactor in enumerate(reactors):
                if reactor.filter and key not in matching[f"m{i}"]:
                    continue
                verdict[reactor.name] = doc.get(f"s{i}", {} if reactor.watch == {} else None)
            result[key] = verdict
        return result

    async def _collection_gone(self, collection: str) -> None:
        for reactor in self.by_collection[collection]:
            if reactor.policies.cleanup.when == "never":
                continue
            await self.db[reactor.tasks_collection].update_many(
                {"reactor": reactor.name}, source_gone_pipeline(reactor))

    async def reconcile(self) -> None:
        """Plan every existing source document (first start, or after history loss)."""
        for collection in self.by_collection:
            last: Any = None
            count = 0
            while True:
                query = {"_id": {"$gt": last}} if last is not None else {}
                cursor = self.db[collection].find(query, {"_id": 1}).sort("_id", 1).limit(
                    RECONCILE_BATCH)
                ids = [d["_id"] async for d in cursor]
                if not ids:
                    break
                await self.plan_ids(collection, ids)
                count += len(ids)
                last = ids[-1]
            log_event(log, logging.INFO, "reconciled collection", event="planner.reconciled",
                      database=self.db.name, collection=collection, documents=count)


class Planner:
    """Runs one :class:`DatabasePlanner` per database while this instance leads."""

    def __init__(self, factories: list[Callable[[int], DatabasePlanner]]) -> None:
        self.factories = factories
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self, leader_token: int) -> None:
        """Start planning (called when leadership is gained)."""
        await self.stop()
        self._tasks = [asyncio.create_task(self._supervise(f, leader_token))
                       for f in self.factories]

    async def _supervise(self, factory: Callable[[int], DatabasePlanner], token: int) -> None:
        delay = 0.2
        while True:
            try:
                await factory(token).run()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                raise_if_cancelled()
                log_event(log, logging.ERROR, "planner crashed; restarting",
                          event="planner.crashed", error=repr(exc))
                await asyncio.sleep(delay)
                delay = min(MAX_BACKOFF_S, delay * 2)

    async def stop(self) -> None:
        """Stop planning (leadership lost or shutdown)."""
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        # Bounded: a planner cancelled inside a getMore whose server is gone honours the
        # cancellation only at the driver's server selection timeout; it is left to end alone
        # (its writes are fenced by the leadership token anyway).
        if tasks:
            _, stuck = await asyncio.wait(tasks, timeout=STOP_WAIT_S)
            for task in stuck:
                task.add_done_callback(consume_outcome)
