"""Reactors: a per-reactor summary, cluster-wide pause and resume, reconciliation requests.

Pause state lives in the reactor's meta document (``reactgen_meta``, ``_id``
``reactor:<name>``, field ``paused: {at, by, reason}``); instances stop *starting* executions of
a paused reactor (running ones finish) until the field is removed. A reconciliation request is
``runtime.reconciliation.request_scan``.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from typing import Any

from runtime.management.scope import Doc, Scope, naive_utc
from runtime.management.status import TaskStatus
from runtime.meta import MetaStore, reactor_id, scan_id, throttle_id
from runtime.reactor import ReactorSpec
from runtime.reconciliation import request_scan


@dataclass(frozen=True)
class PauseState:
    """A cluster-wide pause of a reactor, as stored in ``reactor:<name>.paused``."""

    at: datetime.datetime | None
    by: str | None
    reason: str | None

    @classmethod
    def from_document(cls, value: Any) -> PauseState | None:
        """The pause recorded in a reactor meta document's ``paused`` field, if any."""
        if not isinstance(value, dict):
            return None
        at = value.get("at")
        return cls(naive_utc(at) if isinstance(at, datetime.datetime) else None,
                   None if value.get("by") is None else str(value.get("by")),
                   None if value.get("reason") is None else str(value.get("reason")))


@dataclass(frozen=True)
class LastError:
    """The most recent final failure of a reactor."""

    at: datetime.datetime | None
    """``lastFinalizedAt`` of the failed task."""
    error: str | None
    task_id: Any
    source_id: Any


@dataclass(frozen=True)
class ScanState:
    """A reconciliation pass that includes the reactor (queued or running)."""

    pass_id: Any
    reason: str
    phase: str
    """``orphans`` (cleaning tasks whose source is gone) or ``documents``."""
    scanned: int
    expected: int
    started_at: datetime.datetime | None
    """None while the pass waits behind another one."""


@dataclass(frozen=True)
class ReactorSummary:
    """How a reactor is doing, from its tasks and its meta documents."""

    name: str
    database: str
    collection: str
    tasks_collection: str
    counts: dict[str, int]
    """Tasks by status (every :class:`TaskStatus`, 0 when none)."""
    total: int
    due: int
    """Pending tasks whose ``nextRunAt`` has passed (waiting for a worker)."""
    oldest_due_at: datetime.datetime | None
    """The smallest ``dueAt`` among the due tasks."""
    lag_seconds: float | None
    """Server now minus ``oldest_due_at``: how long the oldest due work has waited."""
    paused: PauseState | None
    throttled_until: datetime.datetime | None
    """A throttle (``ctx.throttle``) still in force, by server time."""
    last_error: LastError | None
    scans: list[ScanState] = field(default_factory=list)
    scan_requested_at: datetime.datetime | None = None
    """A reconciliation request the leader has not picked up yet."""
    last_scan_finished_at: datetime.datetime | None = None
    """The end of the last finished pass of its collection that included it."""
    server_time: datetime.datetime | None = None

    @property
    def running(self) -> int:
        """Tasks a worker holds (``processing`` + ``processing_dirty``)."""
        return (self.counts.get(TaskStatus.PROCESSING.value, 0)
                + self.counts.get(TaskStatus.PROCESSING_DIRTY.value, 0))


async def summarize(scope: Scope, name: str,
                    now: datetime.datetime | None = None) -> ReactorSummary:
    """The summary of one reactor: counts by status (one aggregation on the
    ``{reactor, status}`` index), due work and its lag, pause, throttle, last error, scans."""
    spec = scope.reactor(name)
    now = now or await scope.server_now()
    tasks = scope.tasks_of(spec)
    counts = {status.value: 0 for status in TaskStatus}
    cursor = await tasks.aggregate([{"$match": {"reactor": name}},
                                    {"$group": {"_id": "$status", "n": {"$sum": 1}}}])
    async for row in cursor:
        counts[str(row["_id"])] = int(row["n"])
    due_cursor = await tasks.aggregate([
        {"$match": {"reactor": name, "nextRunAt": {"$lte": now},
                    "status": TaskStatus.PENDING.value}},
        {"$group": {"_id": None, "n": {"$sum": 1}, "oldest": {"$min": "$dueAt"}}}])
    due_rows = await due_cursor.to_list(1)
    due = int(due_rows[0]["n"]) if due_rows else 0
    oldest = naive_utc(due_rows[0].get("oldest")) if due_rows else None
    if not isinstance(oldest, datetime.datetime):
        oldest = None
    failed = await tasks.find_one({"reactor": name, "status": TaskStatus.FAILED.value},
                                  {"lastFinalizedAt": 1, "lastError": 1, "sourceId": 1},
                                  sort=[("lastFinalizedAt", -1)])
    meta = {doc["_id"]: doc async for doc in scope.meta.find(
        {"_id": {"$in": [reactor_id(name), throttle_id(name),
                         scan_id(scope.database_name(spec), spec.collection)]}})}
    state = meta.get(reactor_id(name)) or {}
    throttle = meta.get(throttle_id(name)) or {}
    until = naive_utc(throttle.get("until"))
    request = state.get("scanRequest")
    return ReactorSummary(
        name=name, database=scope.database_name(spec), collection=spec.collection,
        tasks_collection=spec.tasks_collection, counts=counts, total=sum(counts.values()),
        due=due, oldest_due_at=oldest,
        lag_seconds=max(0.0, (now - oldest).total_seconds()) if oldest else None,
        paused=PauseState.from_document(state.get("paused")),
        throttled_until=until if isinstance(until, datetime.datetime) and until > now else None,
        last_error=LastError(naive_utc(failed.get("lastFinalizedAt")), failed.get("lastError"),
                             failed["_id"], failed.get("sourceId")) if failed else None,
        scans=_scans(meta.get(scan_id(scope.database_name(spec), spec.collection)), name),
        scan_requested_at=naive_utc(request.get("at")) if isinstance(request, dict) else None,
        last_scan_finished_at=_last_finished(
            meta.get(scan_id(scope.database_name(spec), spec.collection)), name),
        server_time=now)


def _scans(doc: Doc | None, name: str) -> list[ScanState]:
    if not doc:
        return []
    states = []
    for entry in doc.get("passes") or []:
        reactors = entry.get("reactors") or {}
        if name not in reactors:
            continue
        started = naive_utc(entry.get("startedAt"))
        states.append(ScanState(entry.get("id"), str(reactors[name]),
                                str(entry.get("phase", "orphans")),
                                int(entry.get("scanned") or 0), int(entry.get("expected") or 0),
                                started if isinstance(started, datetime.datetime) else None))
    return states


def _last_finished(doc: Doc | None, name: str) -> datetime.datetime | None:
    finished = (doc or {}).get("lastFinished")
    if not isinstance(finished, dict) or name not in (finished.get("reactors") or {}):
        return None
    at = naive_utc(finished.get("finishedAt"))
    return at if isinstance(at, datetime.datetime) else None


async def summarize_all(scope: Scope) -> list[ReactorSummary]:
    """The summary of every reactor of the application, by name."""
    now = await scope.server_now()
    return [await summarize(scope, name, now) for name in sorted(scope.reactors)]


async def pause(scope: Scope, name: str, reason: str | None = None,
                by: str | None = None) -> PauseState:
    """Pause a reactor on every instance: no execution of it starts until :func:`resume`
    (running ones finish; tasks are still planned). Pausing again replaces the reason."""
    scope.reactor(name)
    doc = await MetaStore(scope.db).pause(name, by or scope.actor, reason)
    state = PauseState.from_document((doc or {}).get("paused"))
    assert state is not None
    return state


async def resume(scope: Scope, name: str) -> PauseState | None:
    """Lift a pause; returns the pause that was lifted, or None if it was not paused."""
    scope.reactor(name)
    doc = await MetaStore(scope.db).resume(name)
    return PauseState.from_document((doc or {}).get("paused"))


async def paused_state(scope: Scope, name: str) -> PauseState | None:
    """The pause of a reactor, or None."""
    doc = await scope.meta.find_one({"_id": reactor_id(name)}, {"paused": 1})
    return PauseState.from_document((doc or {}).get("paused"))


async def request_reconcile(scope: Scope, name: str, reason: str | None = None,
                            by: str | None = None) -> ReactorSpec:
    """Ask the leader to reconcile a reactor (``runtime.reconciliation.request_scan``): every
    existing source document is planned again (a no-op where its task is up to date) and
    orphaned tasks are cleaned up. The leader picks it up within about a second."""
    spec = scope.reactor(name)
    await request_scan(scope.db, name, reason or "operator request", by or scope.actor)
    return spec


__all__ = ["LastError", "PauseState", "ReactorSummary", "ScanState", "pause",
           "paused_state", "request_reconcile", "resume", "summarize", "summarize_all"]
