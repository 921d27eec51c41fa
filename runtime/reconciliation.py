"""Reconciliation: checkpointed scans of source collections, beside live change planning.

A scan re-plans every existing document of a source collection for some of its reactors, so
that documents the change stream cannot report (they existed before the reactor, the stream's
history was lost, the trigger changed) get their tasks. It is a *process*, not a call:

* Its state is one ``scan:<db>.<collection>`` document in ``reactgen_meta`` holding a queue of
  **passes**. A pass is a set of reactors with reasons, a phase (``orphans`` then
  ``documents``) and a checkpoint (the last task ``_id`` swept; the ``_id`` type bracket and
  last source ``_id`` planned). It is registered *before* the planner saves the stream position
  it opened, and its checkpoint is written after every batch is planned (fenced by the
  leadership token), so a leader that dies at any point leaves a pass that its successor
  continues from the last checkpoint: a batch may be planned twice (planning is idempotent),
  nothing is skipped.
* A change made during a scan is not missed: live planning goes on from the stream position,
  which never moves past an unplanned batch; a document changed behind the scan's cursor is
  planned by the stream, one ahead of it by both (the second plan is a no-op).
* Passes of one collection run one after the other; a reactor that is already in a pass is not
  added again (nothing is scanned twice needlessly), except on an explicit request made after
  its pass started.
* The ``orphans`` phase applies the cleanup policy to tasks whose source document no longer
  exists (deleted while no runtime watched, and the history aged out), before the document
  phase, so those tasks stop being due.

``_id`` values of different BSON types do not compare with ``$gt``, so the document phase walks
the type brackets in BSON order, one index-served range query per batch.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from bson import Binary, ObjectId, Timestamp
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.database import Database
from pymongo.errors import PyMongoError

from runtime.cancellation import raise_if_cancelled
from runtime.meta import META_COLLECTION, MetaStore, scan_id, scan_request
from runtime.metrics import SCAN_DOCUMENTS, SCAN_EXPECTED, SCAN_RUNNING, SCANNED
from runtime.partitions import Partition
from runtime.reactor import ReactorSpec
from runtime.structured_logging import log_event

log = logging.getLogger("runtime.reconciliation")
SCAN_BATCH = 500
PROGRESS_EVERY_S = 2.0
MAX_BACKOFF_S = 5.0

PlanIds = Callable[[str, list[Any], list[ReactorSpec]], Awaitable[None]]
SweepOrphans = Callable[[ReactorSpec, list[Any]], Awaitable[int]]


@dataclass(frozen=True)
class IdBracket:
    """One BSON type bracket of ``_id`` values, in sort order: either a range with a lowest
    value (walked in batches) or a type matched as a whole (at most a handful of ids)."""

    name: str
    lowest: Any = None
    bson_type: str | None = None


ID_BRACKETS: tuple[IdBracket, ...] = (
    IdBracket("minKey", bson_type="minKey"),
    IdBracket("null", bson_type="null"),
    IdBracket("number", lowest=float("-inf")),
    IdBracket("string", lowest=""),
    IdBracket("object", lowest={}),
    IdBracket("binData", lowest=Binary(b"", 0)),
    IdBracket("objectId", lowest=ObjectId("000000000000000000000000")),
    IdBracket("bool", lowest=False),
    IdBracket("date", lowest=datetime.datetime(1, 1, 1)),
    IdBracket("timestamp", lowest=Timestamp(0, 0)),
    IdBracket("regex", bson_type="regex"),
    IdBracket("maxKey", bson_type="maxKey"),
)


class ScanReason:
    """Why a reactor is scanned (shown in logs, scan documents and metrics)."""

    FIRST_START = "first start"
    NEW_REACTOR = "new reactor"
    READDED = "reactor re-added"
    TRIGGER_CHANGED = "trigger changed"
    HISTORY_LOST = "change-stream history lost"
    NO_POSITION = "no saved stream position"
    POSITION_RESET = "stream position reset"
    PARTITIONED = "planner partitions changed"
    REQUESTED = "requested"


@dataclass
class ScanPass:
    """One pass over a collection for a set of reactors (stored in the scan document)."""

    reactors: dict[str, str]
    """reactor name -> reason"""
    pass_id: ObjectId = field(default_factory=ObjectId)
    phase: str = "orphans"
    last_task_id: Any = None
    bracket: int = 0
    last_id: Any = None
    has_last_id: bool = False
    scanned: int = 0
    orphans: int = 0
    expected: int = 0
    started_at: datetime.datetime | None = None

    @property
    def started(self) -> bool:
        """Whether any batch of this pass has been processed."""
        return self.started_at is not None

    def to_doc(self) -> dict[str, Any]:
        """The stored form."""
        doc: dict[str, Any] = {"id": self.pass_id, "reactors": dict(self.reactors),
                               "phase": self.phase, "bracket": self.bracket,
                               "scanned": self.scanned, "orphans": self.orphans,
                               "expected": self.expected, "startedAt": self.started_at}
        if self.last_task_id is not None:
            doc["lastTaskId"] = self.last_task_id
        if self.has_last_id:
            doc["lastId"] = self.last_id
        return doc

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> ScanPass:
        """Read the stored form."""
        return cls(reactors=dict(doc.get("reactors") or {}),
                   pass_id=doc.get("id") or ObjectId(), phase=str(doc.get("phase", "orphans")),
                   last_task_id=doc.get("lastTaskId"), bracket=int(doc.get("bracket", 0)),
                   last_id=doc.get("lastId"), has_last_id="lastId" in doc,
                   scanned=int(doc.get("scanned", 0)), orphans=int(doc.get("orphans", 0)),
                   expected=int(doc.get("expected", 0)), started_at=doc.get("startedAt"))


@dataclass
class CollectionScans:
    """The queue of passes of one source collection."""

    collection: str
    passes: list[ScanPass] = field(default_factory=list)

    def add(self, needs: dict[str, str], *, restart: bool = False) -> bool:
        """Queue ``needs`` (reactor -> reason); returns whether anything changed.

        A reactor already queued is left where it is, unless ``restart`` (an explicit request)
        and its pass has started: then it goes into a pass that has not started.
        """
        changed = False
        for name, reason in needs.items():
            current = next((p for p in self.passes if name in p.reactors), None)
            if current is not None and not (restart and current.started):
                continue
            waiting = next((p for p in self.passes if not p.started), None)
            if waiting is None:
                waiting = ScanPass(reactors={})
                self.passes.append(waiting)
            waiting.reactors[name] = reason
            changed = True
        return changed


class ScanRunner:
    """Runs the queued passes of one database's source collections (leader only)."""

    def __init__(self, db: AsyncDatabase[Any], meta: MetaStore,
                 by_collection: dict[str, list[ReactorSpec]], plan_ids: PlanIds,
                 sweep_orphans: SweepOrphans, leader_token: int,
                 partition: Partition | None = None) -> None:
        self.db = db
        self.meta = meta
        self.by_collection = by_collection
        self.plan_ids = plan_ids
        self.sweep_orphans = sweep_orphans
        self.leader_token = leader_token
        self.partition = partition
        """With partitioned planning: only this partition's documents and tasks are scanned,
        and its passes are kept in ``scan:<db>.<collection>@<k>/<N>``."""
        self.queues: dict[str, CollectionScans] = {}
        self._wake = asyncio.Event()

    async def load(self) -> None:
        """Read the stored passes (left by an earlier leader, or queued at start-up)."""
        for doc in await self.meta.scans(self.db.name):
            collection = str(doc.get("collection", ""))
            if doc.get("_id") != self._doc_id(collection):
                continue  # another partition's (or another partitioning's) passes
            passes = [ScanPass.from_doc(p) for p in doc.get("passes") or []]
            self.queues[collection] = CollectionScans(collection, passes)

    async def register(self, needs: dict[str, dict[str, str]], *, restart: bool = False) -> None:
        """Queue scans: collection -> {reactor: reason}. Saved before it returns (fenced)."""
        for collection, reactors in needs.items():
            if not reactors:
                continue
            queue = self.queues.setdefault(collection, CollectionScans(collection))
            if queue.add(reactors, restart=restart):
                await self._save(queue)
                log_event(log, logging.INFO, "reconciliation scan queued", event="scan.queued",
                          database=self.db.name, collection=collection,
                          reactors=",".join(sorted(reactors)),
                          reasons=",".join(sorted(set(reactors.values()))))
        self._wake.set()

    async def _save(self, queue: CollectionScans,
                    finished: dict[str, Any] | None = None) -> None:
        fields: dict[str, Any] = {"database": self.db.name, "collection": queue.collection,
                                  "passes": [p.to_doc() for p in queue.passes]}
        if finished is not None:
            fields["lastFinished"] = finished
        if self.partition is not None:
            fields["partition"] = self.partition.label
        await self.meta.fenced_update(self._doc_id(queue.collection), {"$set": fields},
                                      self.leader_token)

    def _doc_id(self, collection: str) -> str:
        suffix = f"@{self.partition.label}" if self.partition is not None else ""
        return scan_id(self.db.name, collection) + suffix

    async def run(self) -> None:
        """Run passes until cancelled, waiting for new ones when the queues are empty."""
        delay = 0.1
        while True:
            self._wake.clear()
            queue = next((q for q in self.queues.values() if q.passes), None)
            if queue is None:
                SCAN_RUNNING.labels(database=self.db.name).set(0)
                await self._wake.wait()
                continue
            SCAN_RUNNING.labels(database=self.db.name).set(1)
            try:
                await self._run_pass(queue, queue.passes[0])
                delay = 0.1
            except PyMongoError as exc:
                # Retried from the pass's checkpoint in memory (saved with the next batch).
                raise_if_cancelled()
                log_event(log, logging.WARNING, "reconciliation scan failed; retrying",
                          event="scan.failed", database=self.db.name,
                          collection=queue.collection, error=str(exc))
                await asyncio.sleep(delay)
                delay = min(MAX_BACKOFF_S, delay * 2)

    async def _run_pass(self, queue: CollectionScans, scan: ScanPass) -> None:
        defined = {r.name: r for r in self.by_collection.get(queue.collection, [])}
        reactors = [defined[name] for name in sorted(scan.reactors) if name in defined]
        if not reactors:
            queue.passes.remove(scan)
            await self._save(queue)
            return
        source = self.db[queue.collection]
        if not scan.started:
            scan.started_at = datetime.datetime.now(datetime.UTC).replace(tzinfo=None)
            scan.expected = await source.estimated_document_count() // (
                self.partition.count if self.partition is not None else 1)
            await self._save(queue)
        started = time.monotonic()
        progress = Progress(self.db.name, queue.collection, scan, started)
        log_event(log, logging.INFO, "reconciliation scan started", event="scan.started",
                  database=self.db.name, collection=queue.collection,
                  reactors=",".join(r.name for r in reactors),
                  reasons=",".join(sorted(set(scan.reactors.values()))),
                  resumed=scan.scanned > 0 or scan.last_task_id is not None,
                  expected=scan.expected)
        if scan.phase == "orphans":
            await self._sweep(queue, scan, reactors)
            scan.phase = "documents"
            await self._save(queue)
        while scan.bracket < len(ID_BRACKETS):
            ids = await self._next_ids(source, scan)
            if not ids:
                scan.bracket += 1
                scan.has_last_id, scan.last_id = False, None
                continue
            await self.plan_ids(queue.collection, ids, reactors)
            scan.scanned += len(ids)
            scan.has_last_id, scan.last_id = True, ids[-1]
            if ID_BRACKETS[scan.bracket].bson_type is not None:
                scan.bracket += 1  # a whole-type bracket is planned in one go
                scan.has_last_id, scan.last_id = False, None
            await self._save(queue)
            SCANNED.labels(database=self.db.name, collection=queue.collection).inc(len(ids))
            progress.report()
        seconds = time.monotonic() - started
        queue.passes.remove(scan)
        await self._save(queue, finished={
            "reactors": dict(scan.reactors), "scanned": scan.scanned, "orphans": scan.orphans,
            "startedAt": scan.started_at, "seconds": round(seconds, 3),
            "finishedAt": datetime.datetime.now(datetime.UTC).replace(tzinfo=None)})
        progress.finish(seconds)

    async def _next_ids(self, source: Any, scan: ScanPass) -> list[Any]:
        bracket = ID_BRACKETS[scan.bracket]
        if bracket.bson_type is not None:
            query: dict[str, Any] = {"_id": {"$type": bracket.bson_type}}
            limit = 0
        else:
            bound = {"$gt": scan.last_id} if scan.has_last_id else {"$gte": bracket.lowest}
            query, limit = {"_id": bound}, SCAN_BATCH
        if self.partition is not None:
            query.update(self.partition.query("$_id"))
        cursor = source.find(query, {"_id": 1}).sort("_id", 1).limit(limit)
        return [doc["_id"] async for doc in cursor]

    async def _sweep(self, queue: CollectionScans, scan: ScanPass,
                     reactors: list[ReactorSpec]) -> None:
        """Apply the cleanup policy to tasks whose source document is gone."""
        swept = [r for r in reactors if r.policies.cleanup.when != "never"]
        if not swept:
            return
        tasks = self.db[swept[0].tasks_collection]
        names = [r.name for r in swept]
        by_name = {r.name: r for r in swept}
        while True:
            query: dict[str, Any] = {"reactor": {"$in": names},
                                     "expiresAt": {"$exists": False}}
            if scan.last_task_id is not None:
                query["_id"] = {"$gt": scan.last_task_id}
            if self.partition is not None:
                query.update(self.partition.query("$sourceId"))
            cursor = tasks.find(query, {"reactor": 1, "sourceId": 1}).sort("_id", 1).limit(
                SCAN_BATCH)
            batch = [doc async for doc in cursor]
            if not batch:
                return
            by_reactor: dict[str, list[Any]] = {}
            for doc in batch:
                by_reactor.setdefault(doc["reactor"], []).append(doc.get("sourceId"))
            for name, source_ids in by_reactor.items():
                scan.orphans += await self.sweep_orphans(by_name[name], source_ids)
            scan.last_task_id = batch[-1]["_id"]
            await self._save(queue)


@dataclass
class Progress:
    """Progress lines of one pass (documents, rate, percentage, ETA), at most every 2 s."""

    database: str
    collection: str
    scan: ScanPass
    started: float
    last_report: float = 0.0
    first_count: int = -1

    def report(self) -> None:
        """Log progress if it is time to."""
        now = time.monotonic()
        if self.first_count < 0:
            self.first_count = self.scan.scanned
        SCAN_DOCUMENTS.labels(database=self.database, collection=self.collection).set(
            self.scan.scanned)
        SCAN_EXPECTED.labels(database=self.database, collection=self.collection).set(
            self.scan.expected)
        if now - self.last_report < PROGRESS_EVERY_S:
            return
        self.last_report = now
        elapsed = max(now - self.started, 1e-6)
        rate = (self.scan.scanned - self.first_count) / elapsed
        expected = max(self.scan.expected, self.scan.scanned)
        percent = 100.0 * self.scan.scanned / expected if expected else 100.0
        eta = (expected - self.scan.scanned) / rate if rate > 0 else None
        log_event(log, logging.INFO, "reconciliation scan progress", event="scan.progress",
                  database=self.database, collection=self.collection,
                  documents=self.scan.scanned, expected=expected,
                  percent=round(percent, 1), rate_per_s=round(rate, 1),
                  eta_s=round(eta, 1) if eta is not None else "unknown")

    def finish(self, seconds: float) -> None:
        """Log the end of the pass."""
        SCAN_DOCUMENTS.labels(database=self.database, collection=self.collection).set(
            self.scan.scanned)
        log_event(log, logging.INFO, "reconciliation scan finished", event="scan.finished",
                  database=self.database, collection=self.collection,
                  reactors=",".join(sorted(self.scan.reactors)), documents=self.scan.scanned,
                  orphans=self.scan.orphans, seconds=round(seconds, 3))


async def request_scan(db: AsyncDatabase[Any], reactor: str,
                       reason: str = ScanReason.REQUESTED, by: str = "api") -> None:
    """Ask the leader to reconcile ``reactor``: every existing source document is planned
    again (a no-op where the task is up to date), and orphaned tasks are cleaned up.

    ``db`` is the runtime's database (``--database``, where ``reactgen_meta`` lives). The
    leader picks the request up within about a second; progress is in the logs
    (``event=scan.*``), in metrics and in ``reactgen_meta`` ``scan:<db>.<collection>``.
    """
    await MetaStore(db).request_scan(reactor, reason, by)


def request_scan_sync(db: Database[Any], reactor: str, reason: str = ScanReason.REQUESTED,
                      by: str = "api") -> None:
    """Synchronous form of :func:`request_scan` (a PyMongo ``Database``)."""
    db[META_COLLECTION].update_one(*scan_request(reactor, reason, by), upsert=True)
