"""Cluster-wide gauges, read from the database and exported by the leader only.

:class:`ClusterMetrics` is a prometheus-client collector. A refresher on an asyncio task
(:meth:`ClusterMetrics.run`) reads the database every ``interval_s`` while this instance leads
and keeps the result as a ready-made list of metric families; a scrape only hands that list
out, so it never waits for the database. Every refresh rebuilds every family from scratch, so a
label set that no longer exists (a dead instance, a finished scan) disappears with it.

**Once per cluster.** Only the current leader exports these families (``is_leader()`` is
checked on every scrape); the others export nothing for them, so a Prometheus scraping every
instance does not count anything twice, and when the leader dies its series go stale with its
target while the new leader starts exporting within one refresh. A snapshot taken under an
earlier leadership, or older than :data:`MAX_AGE_INTERVALS` refreshes (the database did not
answer), is never exported.

Cost of one refresh, bounded by the application, not by the data:

* per tasks collection, one aggregation ``$group`` by ``{reactor, status}`` on the
  ``reactgen_status`` index (covered: no document is fetched);
* per reactor, one aggregation over at most :data:`LAG_SAMPLE` due pending tasks in
  ``nextRunAt`` order on the ``reactgen_claim`` index (the oldest ``dueAt`` among them);
* one read of ``reactgen_meta`` (a handful of small documents: leader, planner positions,
  reactor states, scan queues, instance heartbeats), projected to the fields used here.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from pymongo import AsyncMongoClient
from pymongo.errors import OperationFailure, PyMongoError

from runtime.cancellation import raise_if_cancelled, within
from runtime.heartbeat import STALE_AFTER_S
from runtime.meta import (
    INSTANCE_PREFIX,
    LEADER_ID,
    META_COLLECTION,
    REACTOR_PREFIX,
    SCAN_PREFIX,
    planner_id,
    reactor_id,
    scan_id,
)
from runtime.reactor import ReactorSpec
from runtime.structured_logging import log_event

log = logging.getLogger("runtime.metrics")
TASK_STATUSES = ("pending", "processing", "processing_dirty", "completed", "failed", "skipped")
LAG_SAMPLE = 1000
"""The oldest pending lag looks at this many due tasks (in ``nextRunAt`` order) per reactor."""
DEFAULT_INTERVAL_S = 5.0
MAX_AGE_INTERVALS = 3
"""A snapshot older than this many refresh intervals (at least :data:`MIN_MAX_AGE_S`) is not
exported: the database has not answered, and old values would pass for current ones."""
MIN_MAX_AGE_S = 30.0
EPOCH = datetime.datetime(1970, 1, 1)
META_FIELDS = ("owner", "token", "expiresAt", "resumeToken", "updatedAt", "paused", "database",
               "collection", "passes.scanned", "passes.expected", "passes.startedAt",
               "lastFinished.finishedAt", "lastFinished.seconds", "heartbeatAt", "instance",
               "running", "concurrency")

FAMILIES: dict[str, tuple[str, tuple[str, ...]]] = {
    "reactgen_tasks": (
        "Tasks by reactor and status (cluster-wide, from the tasks collections).",
        ("reactor", "status")),
    "reactgen_pending_lag_seconds": (
        "How long the longest-due pending task has been due (now - dueAt; 0 when none is "
        "due), by reactor.", ("reactor",)),
    "reactgen_tasks_due": (
        f"Pending tasks that are due now, by reactor (counted up to {LAG_SAMPLE}).",
        ("reactor",)),
    "reactgen_change_stream_lag_seconds": (
        "Now minus the cluster time of the planner's saved change-stream position, by "
        "database.", ("database",)),
    "reactgen_planner_position_age_seconds": (
        "Seconds since the planner last saved its change-stream position (planner:<db> "
        "updatedAt), by database.", ("database",)),
    "reactgen_reconciliation_last_finished_timestamp_seconds": (
        "When the last reconciliation pass of a source collection finished (Unix time).",
        ("database", "collection")),
    "reactgen_reconciliation_last_duration_seconds": (
        "Duration of the last finished reconciliation pass of a source collection.",
        ("database", "collection")),
    "reactgen_reconciliation_queued_passes": (
        "Reconciliation passes queued for a source collection (the running one included).",
        ("database", "collection")),
    "reactgen_reconciliation_scanned_documents": (
        "Documents planned so far by the running reconciliation pass (0 when none runs).",
        ("database", "collection")),
    "reactgen_reconciliation_expected_documents": (
        "Estimated documents of the collection when the running pass started (0 when none "
        "runs).", ("database", "collection")),
    "reactgen_live_instances": (
        f"Runtime instances whose heartbeat is at most {STALE_AFTER_S:g} s old.", ()),
    "reactgen_instance_running_tasks": (
        "Handlers running on each live instance (from its heartbeat).", ("instance_id",)),
    "reactgen_instance_heartbeat_age_seconds": (
        "Age of each live instance's last heartbeat.", ("instance_id",)),
    "reactgen_leader_info": (
        "1 for the instance that holds the leader lease.", ("instance_id",)),
    "reactgen_leader_token": (
        "Fencing token of the current leadership (increases on every change of leader).", ()),
    "reactgen_reactor_paused": (
        "1 while a reactor is paused cluster-wide, else 0.", ("reactor",)),
    "reactgen_cluster_metrics_refreshed_timestamp_seconds": (
        "When these cluster-wide gauges were read from the database (Unix time).", ()),
    "reactgen_cluster_metrics_refresh_duration_seconds": (
        "How long the last read of the cluster-wide gauges took.", ()),
}


def unix_seconds(value: datetime.datetime) -> float:
    """A BSON date (naive UTC, or aware) as Unix time."""
    if value.tzinfo is not None:
        value = value.astimezone(datetime.UTC).replace(tzinfo=None)
    return (value - EPOCH).total_seconds()


def resume_token_time(token: Any) -> datetime.datetime | None:
    """The cluster time (whole seconds, naive UTC) a change-stream resume token stands for, or
    ``None`` when its format is unknown.

    Two formats are read. MongoDB (4.2 and later) encodes ``_data`` as hex of a KeyString whose
    first value is the event's cluster time: type byte ``0x82`` (Timestamp), then 8 bytes
    big-endian, seconds in the high half. The embedded server writes fixed-width hex (42 digits)
    that starts with the seconds. An embedded token cannot start with ``82`` before 2039.
    """
    data = token.get("_data") if isinstance(token, Mapping) else None
    if not isinstance(data, str):
        return None
    try:
        if data[:2] == "82" and len(data) >= 18:
            seconds = int(data[2:10], 16)
        elif len(data) == 42:
            seconds = int(data[0:8], 16)
        else:
            return None
    except ValueError:
        return None
    return EPOCH + datetime.timedelta(seconds=seconds)


@dataclass(frozen=True)
class Sources:
    """What the application is made of: the label values the gauges may carry."""

    database: str
    reactors: tuple[str, ...]
    tasks_collections: dict[tuple[str, str], tuple[str, ...]]
    """(database, tasks collection) -> reactors whose tasks live there"""
    databases: tuple[str, ...]
    collections: tuple[tuple[str, str], ...]
    """(database, source collection)"""

    @classmethod
    def of(cls, reactors: Sequence[ReactorSpec], database: str) -> Sources:
        """The sources of ``reactors``, whose default database is ``database``."""
        tasks: dict[tuple[str, str], list[str]] = {}
        collections: list[tuple[str, str]] = []
        databases: list[str] = []
        for reactor in reactors:
            db = reactor.database or database
            tasks.setdefault((db, reactor.tasks_collection), []).append(reactor.name)
            if (db, reactor.collection) not in collections:
                collections.append((db, reactor.collection))
            if db not in databases:
                databases.append(db)
        return cls(database, tuple(r.name for r in reactors),
                   {key: tuple(names) for key, names in tasks.items()}, tuple(databases),
                   tuple(collections))


@dataclass
class Readings:
    """Raw results of one refresh, before they become metric families."""

    counts: dict[tuple[str, str], int] = field(default_factory=dict)
    """(reactor, status) -> tasks"""
    oldest_due: dict[str, datetime.datetime | None] = field(default_factory=dict)
    due: dict[str, int] = field(default_factory=dict)
    meta: dict[str, dict[str, Any]] = field(default_factory=dict)
    """``reactgen_meta`` documents by ``_id``"""


def _family(name: str) -> GaugeMetricFamily:
    help_text, labels = FAMILIES[name]
    return GaugeMetricFamily(name, help_text, labels=list(labels))


def build_families(sources: Sources, readings: Readings, now: datetime.datetime,
                   refresh_s: float) -> list[Metric]:
    """The cluster families from one refresh's readings (``now``: the server's clock)."""
    families = {name: _family(name) for name in FAMILIES}

    def add(name: str, labels: Sequence[str], value: float) -> None:
        families[name].add_metric(list(labels), value)

    for reactor in sources.reactors:
        for status in TASK_STATUSES:
            add("reactgen_tasks", [reactor, status], readings.counts.get((reactor, status), 0))
        if reactor in readings.oldest_due:
            oldest = readings.oldest_due[reactor]
            lag = max(0.0, (now - oldest).total_seconds()) if oldest is not None else 0.0
            add("reactgen_pending_lag_seconds", [reactor], lag)
            add("reactgen_tasks_due", [reactor], readings.due.get(reactor, 0))
        state = readings.meta.get(reactor_id(reactor)) or {}
        add("reactgen_reactor_paused", [reactor], 1 if state.get("paused") else 0)
    for database in sources.databases:
        planner = readings.meta.get(planner_id(database)) or {}
        position = resume_token_time(planner.get("resumeToken"))
        if position is not None:
            add("reactgen_change_stream_lag_seconds", [database],
                max(0.0, (now - position).total_seconds()))
        saved = planner.get("updatedAt")
        if isinstance(saved, datetime.datetime):
            add("reactgen_planner_position_age_seconds", [database],
                max(0.0, (now - _naive(saved)).total_seconds()))
    for database, collection in sources.collections:
        scans = readings.meta.get(scan_id(database, collection)) or {}
        finished = scans.get("lastFinished") or {}
        if isinstance(finished.get("finishedAt"), datetime.datetime):
            add("reactgen_reconciliation_last_finished_timestamp_seconds",
                [database, collection], unix_seconds(finished["finishedAt"]))
            add("reactgen_reconciliation_last_duration_seconds", [database, collection],
                float(finished.get("seconds") or 0))
        passes = [p for p in scans.get("passes") or [] if isinstance(p, Mapping)]
        running = next((p for p in passes if p.get("startedAt") is not None), None) or {}
        add("reactgen_reconciliation_queued_passes", [database, collection], len(passes))
        add("reactgen_reconciliation_scanned_documents", [database, collection],
            float(running.get("scanned") or 0))
        add("reactgen_reconciliation_expected_documents", [database, collection],
            float(running.get("expected") or 0))
    live = 0
    for doc_id, doc in sorted(readings.meta.items()):
        if not doc_id.startswith(INSTANCE_PREFIX):
            continue
        beat = doc.get("heartbeatAt")
        if not isinstance(beat, datetime.datetime):
            continue
        age = max(0.0, (now - _naive(beat)).total_seconds())
        if age > STALE_AFTER_S:
            continue
        live += 1
        instance = str(doc.get("instance") or doc_id[len(INSTANCE_PREFIX):])
        add("reactgen_instance_running_tasks", [instance], float(doc.get("running") or 0))
        add("reactgen_instance_heartbeat_age_seconds", [instance], age)
    add("reactgen_live_instances", [], live)
    leader = readings.meta.get(LEADER_ID) or {}
    expires = leader.get("expiresAt")
    if leader.get("owner") and isinstance(expires, datetime.datetime) \
            and _naive(expires) > now:
        add("reactgen_leader_info", [str(leader["owner"])], 1)
    if isinstance(leader.get("token"), int):
        add("reactgen_leader_token", [], leader["token"])
    add("reactgen_cluster_metrics_refreshed_timestamp_seconds", [], unix_seconds(now))
    add("reactgen_cluster_metrics_refresh_duration_seconds", [], refresh_s)
    return list(families.values())


def _naive(value: datetime.datetime) -> datetime.datetime:
    if value.tzinfo is None:
        return value
    return value.astimezone(datetime.UTC).replace(tzinfo=None)


@dataclass(frozen=True)
class Snapshot:
    """The families of one refresh, and when (monotonic) it was taken."""

    families: list[Metric]
    taken: float


class ClusterMetrics(Collector):
    """Cluster-wide gauges: refreshed on an asyncio task, exported by the leader only."""

    def __init__(self, client: AsyncMongoClient[dict[str, Any]], database: str,
                 reactors: Sequence[ReactorSpec], is_leader: Callable[[], bool],
                 now: Callable[[], datetime.datetime],
                 interval_s: float = DEFAULT_INTERVAL_S) -> None:
        self.client = client
        self.sources = Sources.of(reactors, database)
        self.is_leader = is_leader
        self.now = now
        self.interval_s = interval_s
        self.timeout_s = max(1.0, interval_s)
        self.max_age_s = max(MIN_MAX_AGE_S, MAX_AGE_INTERVALS * interval_s)
        self._snapshot: Snapshot | None = None
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._unhinted: set[tuple[str, str]] = set()
        """(namespace, index) whose hint failed: the index is missing."""

    # ------------------------------------------------------------------ collector

    def describe(self) -> Iterable[Metric]:
        """The families this collector may export (for the registry's name checks)."""
        return [_family(name) for name in FAMILIES]

    def collect(self) -> Iterator[Metric]:
        """The last refresh's families, while this instance leads (never waits)."""
        snapshot = self._snapshot
        if snapshot is None or time.monotonic() - snapshot.taken > self.max_age_s:
            return
        if not self.is_leader():
            return
        yield from snapshot.families

    # ------------------------------------------------------------------ refresher

    def start(self) -> None:
        """Run :meth:`run` on the current event loop."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self.run())

    def cancel(self) -> None:
        """Stop refreshing (without waiting)."""
        if self._task is not None:
            self._task.cancel()

    async def stop(self) -> None:
        """Stop refreshing and forget the values."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._snapshot = None

    def leadership_changed(self, leader: bool) -> None:
        """Called from the event loop when leadership changes: forget the values of an
        earlier leadership and refresh at once."""
        self._snapshot = None
        self._wake.set()

    async def run(self) -> None:
        """Refresh every ``interval_s`` while leading; forget the values otherwise."""
        while True:
            if self.is_leader():
                await self._refresh_logged()
            else:
                self._snapshot = None
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.interval_s)

    async def _refresh_logged(self) -> None:
        try:
            snapshot = await within(self.refresh(), self.timeout_s)
        except (PyMongoError, TimeoutError) as exc:
            raise_if_cancelled()
            log_event(log, logging.DEBUG, "reading the cluster metrics failed",
                      event="metrics.refresh_failed", error=str(exc) or type(exc).__name__)
            return
        except Exception:  # a bug must not end the refresher
            log.exception("reading the cluster metrics failed")
            return
        if self.is_leader():
            self._snapshot = snapshot

    async def refresh(self) -> Snapshot:
        """Read the database once and build the families (also used by tests)."""
        started = time.perf_counter()
        now = self.now()
        readings = Readings()
        max_ms = int(self.timeout_s * 1000)
        for (database, collection), names in self.sources.tasks_collections.items():
            tasks = self.client[database][collection]
            rows = await self._aggregate(tasks, [
                {"$match": {"reactor": {"$in": list(names)}}},
                {"$group": {"_id": {"reactor": "$reactor", "status": "$status"},
                            "n": {"$sum": 1}}}], "reactgen_status", max_ms)
            for row in rows:
                key = row.get("_id") or {}
                readings.counts[(str(key.get("reactor")), str(key.get("status")))] = \
                    int(row.get("n", 0))
            for name in names:
                rows = await self._aggregate(tasks, [
                    {"$match": {"reactor": name, "nextRunAt": {"$lte": now}}},
                    {"$sort": {"nextRunAt": 1}},
                    {"$limit": LAG_SAMPLE},
                    {"$match": {"status": "pending"}},
                    {"$group": {"_id": None, "due": {"$sum": 1},
                                "oldest": {"$min": {"$ifNull": ["$dueAt", "$nextRunAt"]}}}}],
                    "reactgen_claim", max_ms)
                oldest = rows[0].get("oldest") if rows else None
                readings.oldest_due[name] = _naive(oldest) \
                    if isinstance(oldest, datetime.datetime) else None
                readings.due[name] = int(rows[0].get("due", 0)) if rows else 0
        meta = self.client[self.sources.database][META_COLLECTION]
        wanted = [LEADER_ID, *(planner_id(db) for db in self.sources.databases)]
        prefixes = [INSTANCE_PREFIX, REACTOR_PREFIX, SCAN_PREFIX]
        query = {"$or": [{"_id": {"$in": wanted}},
                         *({"_id": {"$gte": p, "$lt": p + "\uffff"}} for p in prefixes)]}
        cursor = meta.find(query, {name: 1 for name in META_FIELDS}, max_time_ms=max_ms)
        async for doc in cursor:
            readings.meta[str(doc["_id"])] = doc
        families = build_families(self.sources, readings, now, time.perf_counter() - started)
        return Snapshot(families, time.monotonic())

    async def _aggregate(self, collection: Any, pipeline: list[dict[str, Any]], hint: str,
                         max_ms: int) -> list[dict[str, Any]]:
        """Run ``pipeline`` with the index ``hint`` (without it if the index is missing)."""
        options: dict[str, Any] = {"maxTimeMS": max_ms}
        key = (collection.full_name, hint)
        if key not in self._unhinted:
            options["hint"] = hint
        try:
            cursor = await collection.aggregate(pipeline, **options)
        except OperationFailure as exc:
            if "hint" not in options or exc.code not in (2, 27):
                raise
            # Index missing (not created yet, or dropped by an operator): correct, just slower.
            self._unhinted.add(key)
            cursor = await collection.aggregate(pipeline, maxTimeMS=max_ms)
        rows: list[dict[str, Any]] = await cursor.to_list(None)
        return rows
