"""Reads and writes of ``<collection>_tasks`` documents (shape: docs/architecture.md).

Every write of an execution after its claim is *fenced*: it matches the task only while
``lease.claim`` still equals the claim id handed out by :meth:`TaskStore.claim`. A worker that
lost its lease (paused, partitioned, slow) can therefore never overwrite its successor, and a
renewal can never revive a finished task. Times written by the runtime come from the server's
``$$NOW``, so instances with skewed clocks agree on when a lease expires.
"""

from __future__ import annotations

import datetime
import hashlib
from dataclasses import dataclass
from typing import Any

import bson
from bson import ObjectId
from pymongo import ReturnDocument, UpdateOne
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.collection import AsyncCollection

from runtime.reactor import ReactorSpec

PENDING = "pending"
PROCESSING = "processing"
PROCESSING_DIRTY = "processing_dirty"
COMPLETED = "completed"
FAILED = "failed"
SKIPPED = "skipped"
RUNNING = [PROCESSING, PROCESSING_DIRTY]


def snapshot_hash(snapshot: Any) -> str:
    """Stable digest of a watched-values snapshot (BSON bytes, so types and order count)."""
    return hashlib.sha256(bson.encode({"s": snapshot})).hexdigest()[:32]


def _debounced(reactor: ReactorSpec, anchor: Any) -> Any:
    """Server-side due time: ``$$NOW + delay``, capped at ``anchor + maxWait``."""
    debounce = reactor.policies.debounce
    due: Any = {"$add": ["$$NOW", debounce.delay_ms]} if debounce.delay_ms else "$$NOW"
    if debounce.max_wait_ms is not None:
        due = {"$min": [due, {"$add": [anchor, debounce.max_wait_ms]}]}
    return due


def debounce_expression(reactor: ReactorSpec) -> Any:
    """When a task that got new data while running becomes due again."""
    return _debounced(reactor, {"$ifNull": ["$firstChangeAt", "$$NOW"]})


def task_key(reactor: ReactorSpec, source_id: Any, leader_token: int) -> dict[str, Any]:
    """The planner's filter for one task: its key, fenced by the leadership token.

    ``plannerToken`` records the token of the leader that planned the task last. A deposed
    planner's filter does not match a task a newer leader planned; as an upsert it then tries
    to insert, collides with the unique task key and is refused (``DuplicateKeyError``).
    """
    return {"reactor": reactor.name, "sourceId": source_id,
            "plannerToken": {"$not": {"$gt": leader_token}}}


def plan_update(reactor: ReactorSpec, source_id: Any, snapshot: Any,
                leader_token: int) -> UpdateOne:
    """Upsert of one task after its source changed: a no-op unless the snapshot changed.

    Changed: a pending/completed/failed/skipped task becomes pending (debounced); a running one
    becomes ``processing_dirty`` and keeps its lease. Unchanged: nothing is written at all,
    except the leadership token the first time a new leader plans the task (fencing).
    """
    digest = snapshot_hash(snapshot)
    status = {"$ifNull": ["$status", "none"]}
    running = {"$in": [status, RUNNING]}
    reset = reactor.policies.retry.reset_on_data_change
    # A task scheduled for expiry (its source was deleted or stopped matching) whose source
    # is back is a new task even if the watched values are the same as before.
    changed = {"$or": [{"$ne": [{"$ifNull": ["$snapshotHash", None]}, digest]},
                       {"$ne": [{"$type": "$expiresAt"}, "missing"]}]}
    pipeline: list[dict[str, Any]] = [
        {"$set": {"_changed": changed}},
        {"$set": {"_anchor": {"$cond": [
            {"$and": ["$_changed", {"$not": [{"$in": [status, [PENDING, PROCESSING_DIRTY]]}]}]},
            "$$NOW", "$firstChangeAt"]}}},
        {"$set": {
            "reactor": reactor.name,
            "sourceId": {"$literal": source_id},
            "snapshot": {"$cond": ["$_changed", {"$literal": snapshot}, "$snapshot"]},
            "snapshotHash": digest,
            "status": {"$cond": ["$_changed", {"$cond": [running, PROCESSING_DIRTY, PENDING]},
                                 "$status"]},
            "firstChangeAt": "$_anchor",
            "nextRunAt": {"$cond": ["$_changed",
                                    {"$cond": [running, "$nextRunAt",
                                               _debounced(reactor, "$_anchor")]},
                                    "$nextRunAt"]},
            "dueAt": {"$cond": ["$_changed", {"$cond": [running, "$dueAt",
                                                        _debounced(reactor, "$_anchor")]},
                                "$dueAt"]},
            "attempts": {"$cond": [{"$and": ["$_changed", reset, {"$not": [running]}]}, 0,
                                   {"$ifNull": ["$attempts", 0]}]},
            "firstErrorAt": {"$cond": [{"$and": ["$_changed", reset]}, None,
                                       {"$ifNull": ["$firstErrorAt", None]}]},
            "lastError": {"$cond": [{"$and": ["$_changed", reset]}, None,
                                    {"$ifNull": ["$lastError", None]}]},
            "createdAt": {"$ifNull": ["$createdAt", "$$NOW"]},
            "updatedAt": {"$cond": ["$_changed", "$$NOW", "$updatedAt"]},
            "skipReason": {"$cond": ["$_changed", None, "$skipReason"]},
            "planningError": {"$cond": ["$_changed", "$$REMOVE", "$planningError"]},
            "plannerToken": leader_token,
        }},
        {"$unset": ["_changed", "_anchor", "expiresAt"]},
    ]
    return UpdateOne(task_key(reactor, source_id, leader_token), pipeline, upsert=True)


def poison_update(reactor: ReactorSpec, source_id: Any, error: str,
                  leader_token: int) -> UpdateOne:
    """Record that a source document could not be planned (a poison document).

    The task becomes ``failed`` with the error in ``lastError`` and ``planningError`` and is
    not due; its snapshot hash is cleared, so the next change of the document that plans
    cleanly makes it pending again. A running task keeps running (its late-binding check
    decides), but carries the error.
    """
    running = {"$in": [{"$ifNull": ["$status", "none"]}, RUNNING]}
    message = f"planning failed: {error}"
    return UpdateOne(task_key(reactor, source_id, leader_token), [{"$set": {
        "reactor": reactor.name,
        "sourceId": {"$literal": source_id},
        "status": {"$cond": [running, "$status", FAILED]},
        "nextRunAt": {"$cond": [running, "$nextRunAt", None]},
        "snapshotHash": None,
        "lastError": {"$literal": message},
        "planningError": {"at": "$$NOW", "error": {"$literal": error}},
        "firstErrorAt": {"$ifNull": ["$firstErrorAt", "$$NOW"]},
        "attempts": {"$ifNull": ["$attempts", 0]},
        "createdAt": {"$ifNull": ["$createdAt", "$$NOW"]},
        "updatedAt": "$$NOW",
        "plannerToken": leader_token,
    }}], upsert=True)


def source_gone_update(reactor: ReactorSpec, source_id: Any, leader_token: int) -> UpdateOne:
    """Apply the cleanup policy to the task of a deleted (or no longer matching) source.

    A pending task stops being due (``skipped``); every task gets ``expiresAt`` (now +
    ``keepFor``), after which the TTL index on it deletes the task. A running task is left to
    finish (its late-binding check skips it) and expires no earlier than its lease, which its
    renewals extend. Applying it again changes nothing, so ``expiresAt`` is not pushed back by
    later changes of a document that no longer matches.
    """
    return UpdateOne(task_key(reactor, source_id, leader_token),
                     source_gone_pipeline(reactor, leader_token))


def source_gone_pipeline(reactor: ReactorSpec, leader_token: int) -> list[dict[str, Any]]:
    """The update applied to tasks whose source is gone (see :func:`source_gone_update`)."""
    running = {"$in": ["$status", RUNNING]}
    pending = {"$eq": ["$status", PENDING]}
    expires: Any = {"$add": ["$$NOW", reactor.policies.cleanup.keep_for_ms]}
    return [{"$set": {
        "status": {"$cond": [pending, SKIPPED, "$status"]},
        "nextRunAt": {"$cond": [running, "$nextRunAt", None]},
        "skipReason": {"$cond": [pending, "source deleted or no longer matching",
                                 "$skipReason"]},
        "expiresAt": {"$ifNull": ["$expiresAt", {"$cond": [
            running, {"$max": [expires, "$lease.expiresAt"]}, expires]}]},
        "plannerToken": leader_token,
    }}]


def _history(entry: dict[str, Any], limit: int) -> Any:
    """The history with ``entry`` appended, keeping the last ``limit`` (0: none)."""
    if not limit:
        return []
    return {"$slice": [{"$concatArrays": [{"$ifNull": ["$history", []]}, [entry]]}, -limit]}


@dataclass
class Claimed:
    """A task this worker holds, and the claim id that fences every later write."""

    doc: dict[str, Any]
    claim: ObjectId

    @property
    def task_id(self) -> Any:
        """The task document's ``_id``."""
        return self.doc["_id"]


class TaskStore:
    """Operations on one tasks collection."""

    def __init__(self, collection: AsyncCollection[dict[str, Any]], lease_ms: int,
                 instance_id: str) -> None:
        self.collection = collection
        self.lease_ms = lease_ms
        self.instance_id = instance_id

    async def claim(self, reactor: str, now: datetime.datetime) -> Claimed | None:
        """Atomically take the most overdue task of ``reactor``.

        Index-served (``{reactor: 1, nextRunAt: 1}``): equality on reactor, range and sort on
        nextRunAt, so neither a collection scan nor a sort stage is involved. Terminal tasks
        have ``nextRunAt: null`` and are outside the date range.
        """
        claim = ObjectId()
        doc = await self.collection.find_one_and_update(
            # The index range uses this instance's estimate of the server clock; $expr makes
            # the server's own clock the judge, so no instance claims early whatever its skew.
            {"reactor": reactor, "nextRunAt": {"$lte": now},
             "$expr": {"$lte": ["$nextRunAt", "$$NOW"]}},
            [{"$set": {
                "status": PROCESSING,
                "claimedDue": "$nextRunAt",
                "attempts": {"$add": [{"$ifNull": ["$attempts", 0]}, 1]},
                "nextRunAt": {"$add": ["$$NOW", self.lease_ms]},
                "startedAt": "$$NOW",
                "lease": {"owner": self.instance_id, "claim": claim,
                          "expiresAt": {"$add": ["$$NOW", self.lease_ms]}},
            }}],
            sort=[("nextRunAt", 1)],
            return_document=ReturnDocument.AFTER,
        )
        return Claimed(doc, claim) if doc is not None else None

    async def next_due(self, reactor: str, after: datetime.datetime) -> tuple[Any, Any] | None:
        """``(_id, nextRunAt)`` of the task of ``reactor`` due next after ``after`` (pending
        or running: a lease expiry), from the claim index; None if nothing is scheduled."""
        doc = await self.collection.find_one(
            {"reactor": reactor, "nextRunAt": {"$gt": after}}, {"nextRunAt": 1},
            sort=[("nextRunAt", 1)])
        return (doc["_id"], doc["nextRunAt"]) if doc is not None else None

    async def renew(self, held: Claimed) -> bool:
        """Extend the lease; False if this claim no longer holds the task."""
        result = await self.collection.update_one(
            {"_id": held.task_id, "lease.claim": held.claim, "status": {"$in": RUNNING}},
            [{"$set": {"nextRunAt": {"$add": ["$$NOW", self.lease_ms]},
                       "lease.expiresAt": {"$add": ["$$NOW", self.lease_ms]},
                       # a task whose source is gone must not expire under a live lease
                       "expiresAt": {"$cond": [
                           {"$eq": [{"$type": "$expiresAt"}, "date"]},
                           {"$max": ["$expiresAt", {"$add": ["$$NOW", self.lease_ms]}]},
                           "$$REMOVE"]}}}])
        return result.matched_count == 1

    def finalize_update(self, held: Claimed, outcome: str, *, error: str | None,
                        traceback: str | None = None,
                        retry_in_ms: int | None = None,
                        retry_at: datetime.datetime | None = None, history_limit: int,
                        duration_ms: float, debounce: Any, reset_on_data_change: bool = True,
                        ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """Filter and update of :meth:`finalize` (for callers that run it themselves, such as
        ``mark_completed_sync`` inside a synchronous client's transaction)."""
        dirty = {"$eq": ["$status", PROCESSING_DIRTY]}
        failed = outcome == FAILED
        next_run: Any = None
        if failed and retry_at is not None:
            next_run = retry_at
        elif failed and retry_in_ms is not None:
            next_run = {"$add": ["$$NOW", retry_in_ms]}
        status: Any = (PENDING if next_run is not None else FAILED) if failed else outcome
        entry: dict[str, Any] = {"at": "$$NOW", "status": outcome, "attempt": "$attempts",
                                 "by": "$lease.owner",
                                 "durationMs": round(duration_ms, 3)}
        if error is not None:
            entry["error"] = {"$literal": error}
        if traceback is not None:
            entry["traceback"] = {"$literal": traceback}
        if outcome == COMPLETED:
            errors: dict[str, Any] = {"lastError": None, "lastTraceback": None,
                                      "firstErrorAt": None, "completedAt": "$$NOW"}
        elif failed:
            errors = {"lastError": {"$literal": error},
                      "lastTraceback": {"$literal": traceback},
                      "firstErrorAt": {"$ifNull": ["$firstErrorAt", "$$NOW"]}}
        else:
            errors = {"skipReason": "late-binding check failed"}
        if reset_on_data_change:
            # Newer data is waiting: its executions are counted (and timed) afresh.
            errors["firstErrorAt"] = {"$cond": [dirty, None, errors.get(
                "firstErrorAt", {"$ifNull": ["$firstErrorAt", None]})]}
        update: list[dict[str, Any]] = [{"$set": {
            "status": {"$cond": [dirty, PENDING, status]},
            "nextRunAt": {"$cond": [dirty, debounce, next_run]},
            "dueAt": {"$cond": [dirty, debounce, "$dueAt"]},
            "lastFinalizedAt": "$$NOW",
            **errors,
            "attempts": {"$cond": [dirty, 0, "$attempts"]} if reset_on_data_change
            else "$attempts",
            "history": _history(entry, history_limit),
            "lease": None,
            "lastClaim": held.claim,
        }}]
        return {"_id": held.task_id, "lease.claim": held.claim}, update

    async def finalize(self, held: Claimed, outcome: str, *, error: str | None,
                       traceback: str | None = None, retry_in_ms: int | None = None,
                       retry_at: datetime.datetime | None = None,
                       history_limit: int, duration_ms: float, debounce: Any,
                       reset_on_data_change: bool = True,
                       session: AsyncClientSession | None = None) -> bool:
        """Record the end of an execution (fenced); returns False if the claim was lost.

        ``outcome``: completed, failed, skipped. A failure is retried ``retry_in_ms`` from the
        server's now, or at ``retry_at``; with neither it is final (``failed``). A task that
        became ``processing_dirty`` meanwhile goes back to pending (debounced) whatever the
        outcome, because newer data is waiting. ``lastClaim`` keeps the claim id, so that
        :meth:`finalized_by` can tell "already finalized by this execution" from "lost".
        """
        query, update = self.finalize_update(
            held, outcome, error=error, traceback=traceback, retry_in_ms=retry_in_ms,
            retry_at=retry_at,
            history_limit=history_limit, duration_ms=duration_ms, debounce=debounce,
            reset_on_data_change=reset_on_data_change)
        result = await self.collection.update_one(query, update, session=session)
        return result.matched_count == 1

    async def finalized_by(self, held: Claimed,
                           session: AsyncClientSession | None = None) -> bool:
        """Whether this claim's execution is the one that finalized the task last."""
        found = await self.collection.find_one(
            {"_id": held.task_id, "lastClaim": held.claim, "lease": None}, {"_id": 1},
            session=session)
        return found is not None

    async def defer(self, held: Claimed, delay_ms: int, debounce: Any, *,
                    history_limit: int = 0, duration_ms: float = 0.0,
                    reset_on_data_change: bool = True) -> bool:
        """Put the task back to pending after ``delay_ms`` without counting the attempt.

        Newer data that arrived meanwhile (``processing_dirty``) is due after the debounce
        instead. The execution is recorded in the history as ``deferred``.
        """
        dirty = {"$eq": ["$status", PROCESSING_DIRTY]}
        entry = {"at": "$$NOW", "status": "deferred", "attempt": "$attempts", "by": "$lease.owner",
                 "durationMs": round(duration_ms, 3)}
        uncounted: Any = {"$max": [0, {"$subtract": ["$attempts", 1]}]}
        result = await self.collection.update_one(
            {"_id": held.task_id, "lease.claim": held.claim},
            [{"$set": {
                "status": PENDING,
                "nextRunAt": {"$cond": [dirty, debounce, {"$add": ["$$NOW", delay_ms]}]},
                "dueAt": {"$cond": [dirty, debounce, "$dueAt"]},
                "attempts": {"$cond": [dirty, 0, uncounted]} if reset_on_data_change
                else uncounted,
                "lastFinalizedAt": "$$NOW",
                "history": _history(entry, history_limit),
                "lease": None,
                "lastClaim": held.claim,
            }}])
        return result.matched_count == 1

    async def release(self, held: Claimed) -> bool:
        """Give an unfinished task back (shutdown): due now, attempt not counted."""
        result = await self.collection.update_one(
            {"_id": held.task_id, "lease.claim": held.claim},
            [{"$set": {"status": PENDING, "nextRunAt": "$$NOW", "lease": None,
                       "attempts": {"$max": [0, {"$subtract": ["$attempts", 1]}]}}}])
        return result.matched_count == 1
