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


def plan_update(reactor: ReactorSpec, source_id: Any, snapshot: Any) -> UpdateOne:
    """Upsert of one task after its source changed: a no-op unless the snapshot changed.

    Changed: a pending/completed/failed/skipped task becomes pending (debounced); a running one
    becomes ``processing_dirty`` and keeps its lease. Unchanged: nothing is written at all.
    """
    digest = snapshot_hash(snapshot)
    status = {"$ifNull": ["$status", "none"]}
    running = {"$in": [status, RUNNING]}
    reset = reactor.policies.retry.reset_on_data_change
    pipeline: list[dict[str, Any]] = [
        {"$set": {"_changed": {"$ne": [{"$ifNull": ["$snapshotHash", None]}, digest]}}},
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
        }},
        {"$unset": ["_changed", "_anchor"]},
    ]
    return UpdateOne({"reactor": reactor.name, "sourceId": source_id}, pipeline, upsert=True)


def source_gone_update(reactor: ReactorSpec, source_id: Any) -> UpdateOne:
    """Apply the cleanup policy to the task of a deleted (or no longer matching) source.

    Running tasks are left to finish (their late-binding check skips them); others stop being
    due and expire after ``keepFor`` through the TTL index on ``expiresAt``.
    """
    return UpdateOne(
        {"reactor": reactor.name, "sourceId": source_id, "status": {"$nin": RUNNING}},
        source_gone_pipeline(reactor))


def source_gone_pipeline(reactor: ReactorSpec) -> list[dict[str, Any]]:
    """The update applied to tasks whose source is gone (see :func:`source_gone_update`)."""
    return [{"$set": {
        "status": {"$cond": [{"$eq": ["$status", PENDING]}, SKIPPED, "$status"]},
        "nextRunAt": None,
        "skipReason": "source deleted or no longer matching",
        "expiresAt": {"$add": ["$$NOW", reactor.policies.cleanup.keep_for_ms]},
    }}]


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
            {"reactor": reactor, "nextRunAt": {"$lte": now}},
            [{"$set": {
                "status": PROCESSING,
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

    async def renew(self, held: Claimed) -> bool:
        """Extend the lease; False if this claim no longer holds the task."""
        result = await self.collection.update_one(
            {"_id": held.task_id, "lease.claim": held.claim, "status": {"$in": RUNNING}},
            [{"$set": {"nextRunAt": {"$add": ["$$NOW", self.lease_ms]},
                       "lease.expiresAt": {"$add": ["$$NOW", self.lease_ms]}}}])
        return result.matched_count == 1

    async def finalize(self, held: Claimed, outcome: str, *, error: str | None,
                       retry_at_ms: int | None, history_limit: int, duration_ms: float,
                       debounce: Any, session: AsyncClientSession | None = None) -> bool:
        """Record the end of an execution (fenced); returns False if the claim was lost.

        ``outcome``: completed, failed (``retry_at_ms`` None = give up), skipped. A task that
        became ``processing_dirty`` meanwhile goes back to pending (debounced) whatever the
        outcome, because newer data is waiting.
        """
        dirty = {"$eq": ["$status", PROCESSING_DIRTY]}
        failed = outcome == FAILED
        if failed:
            status: Any = PENDING if retry_at_ms is not None else FAILED
            next_run: Any = {"$add": ["$$NOW", retry_at_ms]} if retry_at_ms is not None else None
        else:
            status, next_run = outcome, None
        entry = {"at": "$$NOW", "status": outcome, "attempt": "$attempts",
                 "durationMs": round(duration_ms, 3)}
        if error is not None:
            entry["error"] = {"$literal": error}
        if outcome == COMPLETED:
            errors: dict[str, Any] = {"lastError": None, "firstErrorAt": None,
                                      "completedAt": "$$NOW"}
        elif failed:
            errors = {"lastError": {"$literal": error},
                      "firstErrorAt": {"$ifNull": ["$firstErrorAt", "$$NOW"]}}
        else:
            errors = {"skipReason": "late-binding check failed"}
        update: list[dict[str, Any]] = [{"$set": {
            "status": {"$cond": [dirty, PENDING, status]},
            "nextRunAt": {"$cond": [dirty, debounce, next_run]},
            "lastFinalizedAt": "$$NOW",
            **errors,
            "attempts": {"$cond": [dirty, 0, "$attempts"]},
            "history": {"$slice": [{"$concatArrays": [{"$ifNull": ["$history", []]}, [entry]]},
                                   -max(1, history_limit)]} if history_limit else [],
            "lease": None,
        }}]
        result = await self.collection.update_one(
            {"_id": held.task_id, "lease.claim": held.claim}, update, session=session)
        return result.matched_count == 1

    async def defer(self, held: Claimed, delay_ms: int, debounce: Any) -> bool:
        """Put the task back to pending after ``delay_ms`` without counting the attempt."""
        dirty = {"$eq": ["$status", PROCESSING_DIRTY]}
        result = await self.collection.update_one(
            {"_id": held.task_id, "lease.claim": held.claim},
            [{"$set": {
                "status": PENDING,
                "nextRunAt": {"$cond": [dirty, debounce, {"$add": ["$$NOW", delay_ms]}]},
                "attempts": {"$max": [0, {"$subtract": ["$attempts", 1]}]},
                "lease": None,
            }}])
        return result.matched_count == 1

    async def release(self, held: Claimed) -> bool:
        """Give an unfinished task back (shutdown): due now, attempt not counted."""
        result = await self.collection.update_one(
            {"_id": held.task_id, "lease.claim": held.claim},
            [{"$set": {"status": PENDING, "nextRunAt": "$$NOW", "lease": None,
                       "attempts": {"$max": [0, {"$subtract": ["$attempts", 1]}]}}}])
        return result.matched_count == 1
