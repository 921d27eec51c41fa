"""The planner (leader only): change events in, one task per (reactor, source document) out.

Per database it reads the compiled change-stream pipeline batch by batch. A batch is reduced to
the set of (collection, ``_id``) it touched; the current documents are re-read in one
aggregation per collection, each reactor's filter and watched snapshot evaluated on the server,
and all task upserts of a tasks collection go out in one unordered bulk write. Only then is the
batch's resume token saved, so the token never moves past a batch that failed to plan; the
batch is retried until it succeeds (a poison document is isolated and recorded as a failed
task instead of wedging the stream).

Beside the stream, the same planner runs the reconciliation scans (``reconciliation.py``), the
time-driven windows (``time_triggers.py``) and picks up scan requests. Every write is fenced by
the leadership token (``plannerToken`` on tasks, ``leaderToken`` on meta documents): a planner
that finds a newer leader's mark raises :class:`~runtime.meta.Deposed` and stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import functools
import logging
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from pymongo import UpdateOne
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import BulkWriteError, OperationFailure, PyMongoError

from runtime import evolution
from runtime.cancellation import raise_if_cancelled, run_together
from runtime.change_feed import ChangeFeed, HistoryLost, is_resumable
from runtime.eager_dispatch import (
    EagerDispatch,
    NewTask,
    PlannedChange,
    insert_new,
    plan_upserts,
)
from runtime.meta import Deposed, MetaStore
from runtime.middleware import Middleware
from runtime.partitions import Partition
from runtime.planning_explain import id_key, log_planned, tasks_before
from runtime.planning_state import LeaderState, PlanningState, Request
from runtime.reactor import ReactorSpec
from runtime.reconciliation import ScanReason, ScanRunner
from runtime.structured_logging import log_event
from runtime.task_context import watch_expression
from runtime.task_plans import can_insert_new, new_task, plan_update
from runtime.task_store import (
    claim_fields,
    poison_update,
    source_gone_pipeline,
    source_gone_update,
)
from runtime.time_triggers import TimeTriggerPlanner

log = logging.getLogger("runtime.planner")
MAX_BACKOFF_S = 5.0
REQUEST_POLL_S = 1.0
DUPLICATE_KEY = 11000
# Errors that say nothing about the document: the batch is retried, never marked as poison.
TRANSIENT_CODES = frozenset({6, 7, 50, 89, 91, 112, 189, 251, 260, 262, 280, 286, 9001,
                             10107, 11600, 11602, 13435, 13436})
DueHint = Callable[[str, int], None]
Clock = Callable[[], datetime.datetime]
Dispatcher = Callable[[], EagerDispatch | None]


def _is_poison(exc: OperationFailure) -> bool:
    """An evaluation error caused by the documents (not by the server or the network)."""
    return exc.code not in TRANSIENT_CODES and not exc.has_error_label(
        "RetryableWriteError") and not exc.has_error_label("TransientTransactionError")


class DatabasePlanner:
    """Plans the reactors of one database."""

    def __init__(self, db: AsyncDatabase[Any], meta_db: AsyncDatabase[Any],
                 reactors: list[ReactorSpec], pipeline: list[dict[str, Any]],
                 batch_max: int, leader_token: int, due_hint: DueHint,
                 now: Clock, middleware: Middleware | None = None,
                 partition: Partition | None = None, state: PlanningState | None = None,
                 client: Any = None, reached: Clock | None = None,
                 dispatch: Dispatcher | None = None) -> None:
        self.db = db
        self.meta = MetaStore(meta_db)
        self.partition = partition
        """With partitioned planning: the share of the documents this planner plans (its
        stream, scans and time windows see only them); None: all (the leader's planning)."""
        self.state: PlanningState = state or LeaderState(self.meta, db.name, leader_token)
        self.client = client if client is not None else db.client
        self.reactors = reactors
        self.by_collection: dict[str, list[ReactorSpec]] = {}
        for reactor in reactors:
            self.by_collection.setdefault(reactor.collection, []).append(reactor)
        self.pipeline = pipeline
        self.batch_max = batch_max
        self.leader_token = leader_token
        self.due_hint = due_hint
        self.now = now
        self.reached = reached or now
        """A time the server's clock has certainly reached: the "now" of inserted tasks."""
        self.dispatch = dispatch or (lambda: None)
        """This instance's workers, to which new tasks go at once when they have room
        (:mod:`runtime.eager_dispatch`); None: every task waits for a claim round."""
        self.middleware = middleware or Middleware()
        # The partition's stage last: the database hashes only the events that the compiled
        # pipeline kept (the source collections' relevant changes).
        stream = [*pipeline, partition.stream_stage()] if partition else pipeline
        self.feed = ChangeFeed(db, stream, batch_size=batch_max, max_await_ms=500)
        self.scans = ScanRunner(db, self.meta, self.by_collection, self.plan_ids,
                                self.sweep_orphans, leader_token, partition)
        self.time = TimeTriggerPlanner(db, self.state, reactors, self.plan_ids, now,
                                       partition.query("$_id") if partition else None)
        self._saved_token: dict[str, Any] | None = None
        self._last_save = 0.0
        self._reset_requested: Request | None = None

    def _all(self, reason: str) -> dict[str, dict[str, str]]:
        return {coll: {r.name: reason for r in reactors}
                for coll, reactors in self.by_collection.items()}

    async def run(self) -> None:
        """Start (evolution, scans, opening position), then plan until cancelled."""
        token = await self.state.position()
        states = await self.state.reactor_states()
        plan = evolution.decide(self.reactors, states, self.db.name, self.now())
        needs = plan.scans
        # Changes since the saved position are unknown (history lost, or no position): a pass
        # already under way is not enough (documents behind its cursor may have changed), so
        # these scans go into a pass of their own.
        rescan: dict[str, dict[str, str]] = {}
        try:
            await self.feed.open(token)
        except HistoryLost as exc:
            log_event(log, logging.ERROR, "change-stream history lost; reconciling",
                      event="planner.history_lost", database=self.db.name, error=str(exc),
                      partition=self.state.label)
            await self.feed.open(None)
            rescan = self._all(ScanReason.HISTORY_LOST)
        if token is None:
            first = not any(r.name in states for r in self.reactors)
            rescan = _merge(rescan, self._all(self.state.no_position_reason(first)))
        # Order matters for crash safety: scans are queued (and stored) before the new reactor
        # state is recorded and before the opening stream position is saved, so a leader that
        # dies anywhere in between leaves the same or more work queued for its successor.
        await self.scans.load()
        if rescan:
            await self.scans.register(_merge(needs, rescan), restart=True)
        await self.scans.register(needs)
        await self.state.apply(plan, self.reactors, self.db, self.client)
        self._saved_token = token
        await self._save_token(self.feed.resume_token, force=True)
        log_event(log, logging.INFO, "planner started", event="planner.started",
                  database=self.db.name, resumed=token is not None,
                  leader_token=self.leader_token, partition=self.state.label)
        try:
            await run_together([self._loop(), self.scans.run(), self.time.run(),
                                 self._watch_requests()])
        finally:
            await self.feed.close()

    async def _loop(self) -> None:
        backoff = 0.1
        while True:
            if self._reset_requested is not None:
                await self._reset_position()
            try:
                batch = await self.feed.next_batch()
            except HistoryLost as exc:
                log_event(log, logging.ERROR, "change-stream history lost; reconciling",
                          event="planner.history_lost", database=self.db.name, error=str(exc))
                await self.feed.open(None)
                await self.scans.register(self._all(ScanReason.HISTORY_LOST), restart=True)
                await self._save_token(self.feed.resume_token, force=True)
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
                log_event(log, logging.DEBUG, "batch planned", event="planner.batch",
                          database=self.db.name, partition=self.state.label,
                          events=len(batch.events))
            await self._save_token(batch.resume_token, force=bool(batch.events))

    async def _plan_until_done(self, events: list[dict[str, Any]]) -> None:
        delay = 0.1
        while True:
            try:
                await self.middleware.around_planning(
                    self.db.name, len(events), lambda: self.plan_events(events))
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
        await self.state.save_position(token)
        self._saved_token = token
        self._last_save = loop_time

    async def _reset_position(self) -> None:
        """An operator reset the stream position: restart at now and scan everything."""
        requested, self._reset_requested = self._reset_requested, None
        log_event(log, logging.WARNING, "stream position reset; reconciling",
                  event="planner.position_reset", database=self.db.name)
        await self.feed.open(None)
        await self.scans.register(self._all(ScanReason.POSITION_RESET), restart=True)
        await self._save_token(self.feed.resume_token, force=True)
        if requested is not None:
            await self.state.handled(requested)

    async def _watch_requests(self) -> None:
        """Pick up operators' requests: scans (``reconciliation.request_scan``) and stream
        position resets, with one read per second."""
        by_name = {r.name: r for r in self.reactors}
        while True:
            try:
                for request in await self.state.requests(list(by_name)):
                    if request.reactor is None:
                        if self._reset_requested is None:
                            self._reset_requested = request
                        continue
                    name = request.reactor
                    reason = f"{ScanReason.REQUESTED}: {request.reason}".rstrip(": ")
                    await self.scans.register({by_name[name].collection: {name: reason}},
                                              restart=True)
                    await self.state.handled(request)
            except PyMongoError as exc:
                raise_if_cancelled()
                log_event(log, logging.WARNING, "reading scan requests failed",
                          event="planner.error", database=self.db.name, error=str(exc))
            await asyncio.sleep(REQUEST_POLL_S)

    async def plan_events(self, events: list[dict[str, Any]]) -> None:
        """Plan one batch of change events."""
        touched: dict[str, dict[bytes, Any]] = {}
        inserted: set[bytes] = set()
        dropped: set[str] = set()
        for event in events:
            op = event.get("operationType")
            ns = event.get("ns") or {}
            coll = ns.get("coll")
            if op in ("insert", "update", "replace", "delete") and coll in self.by_collection:
                source_id = event["documentKey"]["_id"]
                key = id_key(source_id)
                touched.setdefault(coll, {})[key] = source_id
                if op == "insert":
                    inserted.add(key)
            elif op in ("drop", "rename") and coll in self.by_collection:
                dropped.add(coll)
            elif op == "dropDatabase":
                dropped.update(self.by_collection)
        for coll in dropped:
            await self._collection_gone(coll)
        for coll, ids in touched.items():
            await self.plan_ids(coll, list(ids.values()), inserted=inserted)

    async def plan_ids(self, collection: str, ids: list[Any],
                       reactors: list[ReactorSpec] | None = None,
                       inserted: set[bytes] | None = None) -> None:
        """Re-read ``ids`` of one source collection and upsert the tasks of ``reactors``
        (default: every reactor of the collection). ``inserted``: keys (:func:`id_key`) of the
        ids whose change was an insert, whose tasks are most likely new: they are inserted
        (:func:`~runtime.task_plans.new_task`), and upserted only if they exist."""
        reactors = reactors if reactors is not None else self.by_collection[collection]
        try:
            found = await self._evaluate(collection, reactors, ids)
        except OperationFailure as exc:
            if not _is_poison(exc):
                raise
            if len(ids) == 1:
                await self._plan_poison(collection, reactors, ids[0])
                return
            middle = len(ids) // 2
            await self.plan_ids(collection, ids[:middle], reactors)
            await self.plan_ids(collection, ids[middle:], reactors)
            return
        ops: dict[str, list[UpdateOne]] = {}
        news: dict[str, list[NewTask]] = {}
        upserting: dict[str, tuple[ReactorSpec, list[PlannedChange]]] = {}
        planned: Counter[str] = Counter()
        token = self.leader_token
        inserted = inserted or set()
        reached = self.reached() if inserted else None
        # Decided once per batch: at DEBUG each change is explained (one extra read of the
        # tasks' previous state); otherwise the loop below does no logging work at all.
        debug = log.isEnabledFor(logging.DEBUG)
        before = await tasks_before(self.db, reactors, ids) if debug else {}
        for source_id in ids:
            key = id_key(source_id)
            verdicts = found.get(key)
            for reactor in reactors:
                target = ops.setdefault(reactor.tasks_collection, [])
                cleanup = reactor.policies.cleanup.when
                if verdicts is not None and reactor.name in verdicts:
                    snapshot, fields = verdicts[reactor.name]
                    if reached is not None and can_insert_new(reactor) and \
                            key in inserted:
                        news.setdefault(reactor.tasks_collection, []).append(NewTask(
                            reactor, new_task(reactor, source_id, snapshot, token, reached,
                                              fields),
                            functools.partial(plan_update, reactor, source_id, snapshot,
                                              token, fields)))
                    else:
                        upserting.setdefault(reactor.name, (reactor, []))[1].append(
                            (source_id, snapshot, fields))
                    planned[reactor.name] += 1
                    if debug:
                        log_planned(collection, reactor, source_id, snapshot,
                                     before.get((reactor.name, key)))
                    continue
                retire = (verdicts is None and cleanup != "never") or (
                    verdicts is not None and cleanup == "sourceDeletedOrUnmatched")
                if retire:
                    target.append(source_gone_update(reactor, source_id, token))
                if debug:
                    why = "document deleted" if verdicts is None else "filter not matched"
                    log_event(log, logging.DEBUG, f"change ignored by {reactor.name}: {why}",
                              event="change.ignored", reactor=reactor.name,
                              collection=collection, source_id=source_id, reason=why,
                              task="retired" if retire else "kept")
        started: Counter[str] = Counter()
        dispatch = self.dispatch()
        for tasks_collection, tasks in news.items():
            assert reached is not None
            upserts, here = await insert_new(self.db[tasks_collection], tasks, dispatch,
                                             reached)
            ops.setdefault(tasks_collection, []).extend(upserts)
            started.update(here)
        eager = plan_upserts(dispatch, upserting.values(), token, ops)
        began = time.perf_counter()
        # Whether the database answered the write (some upserts may have claimed their task
        # even if others failed); not after a lost connection or a cancellation.
        answered = False
        try:
            await self._write(ops)
            answered = True
        except OperationFailure:
            answered = True
            raise
        finally:
            if dispatch is not None:
                for tasks_collection, claims in eager.items():
                    started.update(await claims.settle(
                        self.db[tasks_collection], dispatch, answered,
                        time.perf_counter() - began))
        # Hints only after the write: a worker woken earlier would find nothing and park the
        # reactor until the idle poll. A debounced task's exact due time also reaches every
        # instance through the wake-up stream; this local hint is never earlier than it.
        # Tasks already started here (eager dispatch) need no claim round.
        for reactor in reactors:
            if reactor.name in planned:
                self.middleware.on_planned(reactor.name, planned[reactor.name])
                if planned[reactor.name] > started[reactor.name]:
                    self.due_hint(reactor.name, reactor.policies.debounce.delay_ms)

    async def _write(self, ops: dict[str, list[UpdateOne]]) -> None:
        """Unordered bulk writes of task updates, one per tasks collection (fenced)."""
        for tasks_collection, updates in ops.items():
            for attempt in range(3):
                if not updates:
                    break
                log_event(log, logging.DEBUG, "writing task updates", event="planner.writing",
                          collection=tasks_collection, updates=len(updates),
                          leader_token=self.leader_token)
                try:
                    await self.db[tasks_collection].bulk_write(updates, ordered=False)
                    break
                except BulkWriteError as exc:
                    errors = exc.details.get("writeErrors", [])
                    if not errors or any(e.get("code") != DUPLICATE_KEY for e in errors):
                        raise
                    updates = [updates[int(e["index"])] for e in errors]
                    await self._check_fence(tasks_collection, updates)
                    if attempt == 2:
                        raise

    async def _check_fence(self, tasks_collection: str, updates: list[UpdateOne]) -> None:
        """After upserts collided on the task key: a newer leader's mark means we are deposed;
        otherwise two plannings of this leader raced to insert and a retry will match."""
        keys = [{"reactor": u._filter["reactor"], "sourceId": u._filter["sourceId"]}
                for u in updates]
        newer = await self.db[tasks_collection].find_one(
            {"$or": keys, "plannerToken": {"$gt": self.leader_token}}, {"_id": 1})
        if newer is not None:
            raise Deposed(f"tasks in {tasks_collection} were planned by a newer leader")

    async def _plan_poison(self, collection: str, reactors: list[ReactorSpec],
                           source_id: Any) -> None:
        """One document failed to evaluate: find the reactors it fails for, record a failed
        task for each of them, and plan the others normally."""
        healthy: list[ReactorSpec] = []
        poisoned: dict[str, list[UpdateOne]] = {}
        for reactor in reactors:
            try:
                await self._evaluate(collection, [reactor], [source_id])
            except OperationFailure as exc:
                if not _is_poison(exc):
                    raise
                error = str(exc.details.get("errmsg") if exc.details else exc) or str(exc)
                poisoned.setdefault(reactor.tasks_collection, []).append(
                    poison_update(reactor, source_id, error, self.leader_token))
                self.middleware.on_poison(reactor.name, source_id, error)
                log_event(log, logging.ERROR,
                          "cannot plan document; its task is marked failed",
                          event="planner.poison_document", reactor=reactor.name,
                          collection=collection, source_id=source_id, error=error)
            else:
                healthy.append(reactor)
        await self._write(poisoned)
        if healthy:
            await self.plan_ids(collection, [source_id], healthy)

    async def _evaluate(self, collection: str, reactors: list[ReactorSpec],
                        ids: list[Any]) -> dict[bytes, dict[str, Any]]:
        """For each existing id: reactor name -> (snapshot, claim fields), for the reactors
        whose filter it matches. Missing ids (deleted) are absent from the result."""
        projection: dict[str, Any] = {}
        for i, reactor in enumerate(reactors):
            projection[f"s{i}"] = watch_expression(reactor)
            if reactor.policies.priority.expression is not None:
                projection[f"p{i}"] = reactor.policies.priority.expression
            if reactor.policies.key_concurrency is not None:
                projection[f"k{i}"] = reactor.policies.key_concurrency.expression
        facets: dict[str, list[dict[str, Any]]] = {"snapshots": [{"$project": projection}]}
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
        matching = {f"m{i}": {id_key(d["_id"]) for d in row.get(f"m{i}", [])}
                    for i, reactor in enumerate(reactors) if reactor.filter}
        for doc in row["snapshots"]:
            key = id_key(doc["_id"])
            verdict: dict[str, Any] = {}
            for i, reactor in enumerate(reactors):
                if reactor.filter and key not in matching[f"m{i}"]:
                    continue
                verdict[reactor.name] = (
                    doc.get(f"s{i}", {} if reactor.watch == {} else None),
                    claim_fields(reactor, doc.get(f"p{i}"), doc.get(f"k{i}")))
            result[key] = verdict
        return result

    async def sweep_orphans(self, reactor: ReactorSpec, source_ids: list[Any]) -> int:
        """Apply the cleanup policy to the tasks of ``source_ids`` whose source is gone;
        returns how many were orphans."""
        present = {id_key(doc["_id"]) async for doc in self.db[reactor.collection].find(
            {"_id": {"$in": source_ids}}, {"_id": 1})}
        gone = [sid for sid in source_ids if id_key(sid) not in present]
        if gone:
            await self._write({reactor.tasks_collection: [
                source_gone_update(reactor, sid, self.leader_token) for sid in gone]})
        return len(gone)

    async def _collection_gone(self, collection: str) -> None:
        for reactor in self.by_collection[collection]:
            if reactor.policies.cleanup.when == "never":
                continue
            owned = self.partition.query("$sourceId") if self.partition else {}
            await self.db[reactor.tasks_collection].update_many(
                {"reactor": reactor.name, "plannerToken": {"$not": {"$gt": self.leader_token}},
                 **owned},
                source_gone_pipeline(reactor, self.leader_token))


def _merge(a: dict[str, dict[str, str]], b: dict[str, dict[str, str]]
           ) -> dict[str, dict[str, str]]:
    """Scan needs of ``a`` and ``b`` (a reason in ``a`` wins)."""
    merged = {coll: dict(reactors) for coll, reactors in a.items()}
    for coll, reactors in b.items():
        for name, reason in reactors.items():
            merged.setdefault(coll, {}).setdefault(name, reason)
    return merged
