"""Reads and writes of ``<collection>_tasks`` documents (shape: docs/architecture.md).

Every write of an execution after its claim is *fenced*: it matches the task only while
``lease.claim`` still equals the claim id handed out when it was claimed. A worker that lost
its lease (paused, partitioned, slow) can therefore never overwrite its successor, and a
renewal can never revive a finished task. Times written by the runtime come from the server's
``$$NOW``, so instances with skewed clocks agree on when a lease expires.

Claims come in rounds (:mod:`runtime.claims` has the protocol): one ``find`` of due
candidates, then one unordered bulk write of per-task compare-and-set claims. Finalizations
of executions that end close together share one bulk write (:class:`FencedWriteBatcher`).
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from bson import ObjectId
from pymongo import ReturnDocument, UpdateOne
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import BulkWriteError

from runtime.fenced_writes import FencedWriteBatcher
from runtime.task_plans import (
    claim_fields,
    debounce_expression,
    plan_update,
    poison_update,
    snapshot_hash,
    source_gone_pipeline,
    source_gone_update,
    task_key,
)
from runtime.task_status import (
    COMPLETED,
    FAILED,
    PENDING,
    PROCESSING,
    PROCESSING_DIRTY,
    RUNNING,
    SKIPPED,
)

__all__ = ["COMPLETED", "FAILED", "PENDING", "PROCESSING", "PROCESSING_DIRTY", "RUNNING",
           "SKIPPED", "Claimed", "FencedWriteBatcher", "TaskStore", "claim_fields",
           "debounce_expression",
           "plan_update", "poison_update", "snapshot_hash", "source_gone_pipeline",
           "source_gone_update", "task_key"]

DUPLICATE_KEY = 11000
MAX_FINALIZE_BATCH = 500
SLOT_FIELDS = {"slot": "$$REMOVE", "keySlot": "$$REMOVE"}
"""Set by every write that ends an execution: the concurrency slots (docs/architecture.md)
are held exactly while the task runs."""
CLAIMED_FIELDS = {"history": 0, "lastTraceback": 0}
"""What a claim reads back: the task without its execution history (never needed to run it)."""
Sort = Sequence[tuple[str, int]]
DUE_ORDER: Sort = (("nextRunAt", 1),)
PRIORITY_ORDER: Sort = (("priority", -1), ("nextRunAt", 1))


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
        self.batcher = FencedWriteBatcher(collection)

    def _claim_pipeline(self, claim: ObjectId,
                        extra: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
        return [{"$set": {
            "status": PROCESSING,
            "claimedDue": "$nextRunAt",
            "attempts": {"$add": [{"$ifNull": ["$attempts", 0]}, 1]},
            "nextRunAt": {"$add": ["$$NOW", self.lease_ms]},
            "startedAt": "$$NOW",
            "lease": {"owner": self.instance_id, "claim": claim,
                      "expiresAt": {"$add": ["$$NOW", self.lease_ms]}},
            **(extra or {}),
        }}]

    @staticmethod
    def _due(reactor: str, now: datetime.datetime) -> dict[str, Any]:
        # The index range uses this instance's estimate of the server clock; $expr makes
        # the server's own clock the judge, so no instance claims early whatever its skew.
        return {"reactor": reactor, "nextRunAt": {"$lte": now},
                "$expr": {"$lte": ["$nextRunAt", "$$NOW"]}}

    async def claim(self, reactor: str, now: datetime.datetime,
                    order: Sort = DUE_ORDER) -> Claimed | None:
        """Atomically take the first due task of ``reactor`` in ``order`` (one command).

        Index-served (``reactgen_claim`` ``{reactor: 1, nextRunAt: 1}``, or
        ``reactgen_priority_claim`` for :data:`PRIORITY_ORDER`): equality on reactor, range
        on nextRunAt, so neither a collection scan nor a sort stage is involved. Terminal
        tasks have ``nextRunAt: null`` and are outside the date range.
        """
        claim = ObjectId()
        doc = await self.collection.find_one_and_update(
            self._due(reactor, now), self._claim_pipeline(claim), sort=list(order),
            projection=CLAIMED_FIELDS, return_document=ReturnDocument.AFTER)
        return Claimed(doc, claim) if doc is not None else None

    def claim_new(self, doc: dict[str, Any], now: datetime.datetime) -> Claimed:
        """``doc``, a new task not yet written (:func:`~runtime.task_plans.new_task`), made
        claimed by this instance: what the planner inserts when it hands the task straight to
        this instance's workers (:mod:`runtime.eager_dispatch`). The fields are those of a
        claim round's compare-and-set; the times come from ``now``, the server's clock as this
        instance estimates it, lowered by its uncertainty (where a claim uses ``$$NOW``), so
        the lease expires no later than a claim's would."""
        claim = ObjectId()
        expires = now + datetime.timedelta(milliseconds=self.lease_ms)
        doc.update(status=PROCESSING, claimedDue=doc.get("nextRunAt"),
                   attempts=int(doc.get("attempts") or 0) + 1, nextRunAt=expires,
                   startedAt=now, lease={"owner": self.instance_id, "claim": claim,
                                         "expiresAt": expires})
        return Claimed(doc, claim)

    async def due_candidates(self, reactor: str, now: datetime.datetime, limit: int,
                             order: Sort = DUE_ORDER,
                             exclude: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
        """Up to ``limit`` due tasks of ``reactor`` in ``order`` (first step of a claim round;
        index-served like :meth:`claim`). ``exclude``: extra filter terms (e.g. keys whose
        concurrency slots are all taken)."""
        query = self._due(reactor, now)
        if exclude:
            query.update(exclude)
        cursor = self.collection.find(query, CLAIMED_FIELDS, sort=list(order), limit=limit)
        return await cursor.to_list(None)

    async def running(self, reactor: str) -> list[dict[str, Any]]:
        """The slot fields of ``reactor``'s running tasks (index ``reactgen_status``)."""
        cursor = self.collection.find({"reactor": reactor, "status": {"$in": RUNNING}},
                                      {"slot": 1, "keySlot": 1, "concurrencyKey": 1})
        return await cursor.to_list(None)

    async def claim_candidates(self, candidates: Sequence[dict[str, Any]],
                               now: datetime.datetime,
                               slots: Mapping[Any, Mapping[str, Any]] | None = None,
                               ) -> list[Claimed]:
        """Claim ``candidates`` (documents read by :meth:`due_candidates`) in one unordered
        bulk write of compare-and-set updates; returns the ones this instance now holds.

        Each update matches its task only if it is still due and unchanged since it was
        read (same ``nextRunAt``, ``status`` and ``snapshotHash``), so a candidate that
        another instance claimed, or that changed, is simply not taken. Each task gets its
        own claim id (the fence of every later write). ``slots``: concurrency-slot fields
        per task ``_id``; a slot another claim took first fails on its unique index and that
        task is not taken. The claimed documents are the candidates as the update changed
        them; the server-side times (``startedAt``, lease expiry) are this instance's
        estimate ``now`` of them, the database holds the exact ones.
        """
        claims = [ObjectId() for _ in candidates]
        ops = []
        for doc, claim in zip(candidates, claims, strict=True):
            extra = dict((slots or {}).get(doc["_id"], {}))
            cas = {"_id": doc["_id"], "nextRunAt": doc.get("nextRunAt"),
                   "status": doc.get("status"), "snapshotHash": doc.get("snapshotHash"),
                   "$expr": {"$lte": ["$nextRunAt", "$$NOW"]}}
            ops.append(UpdateOne(cas, self._claim_pipeline(claim, extra)))
        if not ops:
            return []
        failed: set[int] = set()
        try:
            result = await self.collection.bulk_write(ops, ordered=False)
            modified = result.modified_count
        except BulkWriteError as exc:
            errors = exc.details.get("writeErrors", [])
            if any(e.get("code") != DUPLICATE_KEY for e in errors):
                raise
            failed = {int(e["index"]) for e in errors}
            modified = int(exc.details.get("nModified", 0))
        taken = [i for i in range(len(ops)) if i not in failed]
        if modified != len(taken):
            # Some lost the race: ask which ones this round holds.
            held = await self.collection.find(
                {"_id": {"$in": [candidates[i]["_id"] for i in taken]},
                 "lease.claim": {"$in": [claims[i] for i in taken]}}, {"lease.claim": 1}
            ).to_list(None)
            mine = {doc["lease"]["claim"] for doc in held}
            taken = [i for i in taken if claims[i] in mine]
        expires = now + datetime.timedelta(milliseconds=self.lease_ms)
        claimed = []
        for i in taken:
            doc = dict(candidates[i])
            doc.update(status=PROCESSING, claimedDue=doc.get("nextRunAt"),
                       attempts=int(doc.get("attempts") or 0) + 1, nextRunAt=expires,
                       startedAt=now, lease={"owner": self.instance_id, "claim": claims[i],
                                             "expiresAt": expires},
                       **(slots or {}).get(doc["_id"], {}))
            claimed.append(Claimed(doc, claims[i]))
        return claimed

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
        return self.fenced(held, {
            "status": {"$cond": [dirty, PENDING, status]},
            "nextRunAt": {"$cond": [dirty, debounce, next_run]},
            "dueAt": {"$cond": [dirty, debounce, "$dueAt"]},
            "lastFinalizedAt": "$$NOW",
            **errors,
            "attempts": {"$cond": [dirty, 0, "$attempts"]} if reset_on_data_change
            else "$attempts",
            "history": _history(entry, history_limit),
        })

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
        if session is None:
            return await self.batcher.write(held.task_id, held.claim, query, update)
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
        return await self.batcher.write(held.task_id, held.claim, *self.fenced(held, {
                "status": PENDING,
                "nextRunAt": {"$cond": [dirty, debounce, {"$add": ["$$NOW", delay_ms]}]},
                "dueAt": {"$cond": [dirty, debounce, "$dueAt"]},
                "attempts": {"$cond": [dirty, 0, uncounted]} if reset_on_data_change
                else uncounted,
                "lastFinalizedAt": "$$NOW",
                "history": _history(entry, history_limit),
        }))

    @staticmethod
    def fenced(held: Claimed, fields: dict[str, Any]
               ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """Filter and update that end ``held``'s execution with ``fields`` (fenced by its
        claim): the lease and the concurrency slots are given up, ``lastClaim`` and
        ``lastOwner`` record whose execution it was."""
        return ({"_id": held.task_id, "lease.claim": held.claim},
                [{"$set": {**fields, "lease": None, "lastClaim": held.claim,
                           "lastOwner": "$lease.owner", **SLOT_FIELDS}}])

    async def release(self, held: Claimed) -> bool:
        """Give an unfinished task back (shutdown): due now, attempt not counted."""
        result = await self.collection.update_one(
            {"_id": held.task_id, "lease.claim": held.claim},
            [{"$set": {"status": PENDING, "nextRunAt": "$$NOW", "lease": None,
                       "attempts": {"$max": [0, {"$subtract": ["$attempts", 1]}]},
                       **SLOT_FIELDS}}])
        return result.matched_count == 1
