"""A runtime instance: every instance runs workers; the elected one also plans."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import importlib.util
import logging
from collections.abc import Callable
from typing import Any

from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import PyMongoError

from runtime.app_loader import LoadedApp
from runtime.cancellation import consume_outcome, raise_if_cancelled, within
from runtime.claims import is_limited
from runtime.command_stats import CommandCounter
from runtime.cron import CronPlanner
from runtime.cron_spec import CRON_TASKS_COLLECTION
from runtime.evolution import apply as apply_evolution
from runtime.evolution import decide, retire_removed
from runtime.heartbeat import Heartbeat
from runtime.hooks import Hooks
from runtime.leader import LeaderElector
from runtime.logging_middleware import LoggingMiddleware
from runtime.meta import MetaStore, epoch_base
from runtime.metrics_middleware import MetricsMiddleware
from runtime.middleware import HooksMiddleware, Middleware, MiddlewareStack
from runtime.partitions import (
    PARTITIONS_FIELD,
    Partition,
    PartitionManager,
    agree_on_partitioning,
    partitions_of,
)
from runtime.planner import DatabasePlanner
from runtime.planner_supervisor import Planner
from runtime.planning_state import PartitionState
from runtime.rate_limit import RateLimiter
from runtime.reactor import ReactorSpec
from runtime.scheduler import Scheduler
from runtime.server_time import ServerClock
from runtime.settings import RuntimeSettings
from runtime.structured_logging import log_event
from runtime.task_store import TaskStore
from runtime.wakeup import WakeupListener
from runtime.worker import WorkerPool

log = logging.getLogger("runtime")
PlannerFactory = Callable[..., DatabasePlanner]
CLOCK_SYNC_S = 60.0
SHUTDOWN_STEP_S = 5.0
CLOSE_STEP_S = 2.0


class Runtime:
    """Owns the client, the elector, the planner, the wake-up listeners and the workers."""

    def __init__(self, settings: RuntimeSettings, app: LoadedApp,
                 hooks: Hooks | None = None,
                 middleware: list[Middleware] | None = None) -> None:
        self.settings = settings
        self.app = app
        items: list[Middleware] = []
        if importlib.util.find_spec("opentelemetry") is not None:
            from runtime.tracing import TracingMiddleware

            items.append(TracingMiddleware())  # outermost: the handler's spans are children
        if hooks is not None:
            items.append(HooksMiddleware(hooks))
        items += middleware or []
        self.metrics = MetricsMiddleware([*app.reactors, *app.crons], settings.database)
        items += [self.metrics, LoggingMiddleware(settings.instance_id)]
        self.middleware = MiddlewareStack(items)
        self.command_counter = CommandCounter() if settings.command_stats_file else None
        listeners = [self.command_counter] if self.command_counter else []
        self.client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
            settings.mongodb_uri, appname=f"reactgen-{settings.instance_id}",
            tz_aware=False, event_listeners=listeners)
        # The leader's planning has a pool of its own: its long change-stream reads and bulk
        # writes never queue behind the workers' claims, and the server (currentOp, logs,
        # fail points) can tell planning from execution by the application name.
        self.planner_client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
            settings.mongodb_uri, appname=f"reactgen-{settings.instance_id}-planner",
            tz_aware=False, event_listeners=listeners)
        self.clock = ServerClock()
        self._background: list[asyncio.Task[None]] = []
        runnable = [r for r in [*app.reactors, *app.crons] if self.middleware.accepts(r)]
        self.scheduler = Scheduler(runnable, settings.idle_poll_ms)
        self.elector: LeaderElector | None = None
        self.planner: Planner | None = None
        self.workers: WorkerPool | None = None
        self.heartbeat: Heartbeat | None = None
        self.partitions: PartitionManager | None = None
        self.partition_planners: dict[str, Planner] = {}
        self.partitioning_epoch = 0
        self.partitioning_baseline: dict[str, dict[str, Any]] = {}

    def database(self, reactor: ReactorSpec | None = None) -> AsyncDatabase[dict[str, Any]]:
        """The database of a reactor (or the default one)."""
        name = (reactor.database if reactor is not None else None) or self.settings.database
        return self.client[name]

    async def ensure_indexes(self) -> None:
        """Create the generated indexes (idempotent)."""
        for database, collection, keys, options in self.app.indexes:
            db = self.client[database or self.settings.database]
            await db[collection].create_index(keys, **options)

    def _finished(self, reactor: str, task_id: Any) -> None:
        """A task finished (heard on the wake-up stream): forget its lease expiry; if its
        reactor has cluster-wide limits, the slot it held is free for waiting work."""
        self.scheduler.forget(reactor, task_id)
        spec = self.scheduler.reactors.get(reactor)
        if spec is not None and is_limited(spec):
            self.scheduler.slot_freed(reactor)

    def _due_hint(self, reactor: str, delay_ms: int) -> None:
        # The local planner's latest hint per reactor (it replaces the previous one): each
        # task's exact due time also reaches every instance through the wake-up stream.
        self.scheduler.note_due(reactor, self.clock.now() + datetime.timedelta(
            milliseconds=delay_ms), key="planner")

    def _on_due(self, reactor: str, at: datetime.datetime | None, task_id: Any = None) -> None:
        self.scheduler.note_due(reactor, at or self.clock.now(), key=task_id)

    async def _throttle(self, reactor: ReactorSpec, duration_ms: int) -> None:
        until = self.clock.now() + datetime.timedelta(milliseconds=duration_ms)
        self.scheduler.throttle(reactor.name, until)
        await MetaStore(self.database()).throttle(reactor.name, until, self.settings.instance_id)

    async def _load_throttles(self) -> None:
        for name, until in (await MetaStore(self.database()).throttles()).items():
            self.scheduler.throttle(name, until)

    async def _retire_removed(self, leader_token: int) -> None:
        """Leader job: retire reactors recorded in the database but no longer defined (with
        partitions, each partition retires the tasks of its own documents)."""
        await retire_removed(self.planner_client, self.settings.database,
                             {r.name for r in self.app.reactors},
                             MetaStore(self.planner_client[self.settings.database]),
                             leader_token, self.clock.now(),
                             tasks=self.settings.planner_partitions == 1)

    async def _record_reactors(self, leader_token: int) -> None:
        """Leader job with partitions: record the reactors' state (``reactor:`` documents);
        scans and reprocessing are each partition's, for its own documents."""
        meta = MetaStore(self.planner_client[self.settings.database])
        for database, reactors in self._by_database().items():
            db = self.planner_client[database]
            plan = decide(reactors, await meta.reactors(), database, self.clock.now())
            plan.reprocess.clear()
            await apply_evolution(plan, reactors, db, meta, leader_token)

    def _by_database(self) -> dict[str, list[ReactorSpec]]:
        by_db: dict[str, list[ReactorSpec]] = {}
        for reactor in self.app.reactors:
            by_db.setdefault(reactor.database or self.settings.database, []).append(reactor)
        return by_db

    def _planner_factory(self, database: str) -> PlannerFactory:
        """Makes the planner of ``database`` (of one of its partitions, with partitions)."""
        reactors = self._by_database()[database]
        pipeline = self.app.pipelines.get(database)
        if database == self.settings.database and pipeline is None:
            pipeline = self.app.pipelines.get(None)
        if pipeline is None:
            pipeline = [{"$match": {"$or": [r.pipeline[0]["$match"] for r in reactors]}}]
        db = self.planner_client[database]
        meta_db = self.planner_client[self.settings.database]

        def factory(token: int, partition: Partition | None = None) -> DatabasePlanner:
            state = None if partition is None else PartitionState(
                MetaStore(meta_db), partition, token, self.partitioning_epoch,
                self.partitioning_baseline)
            return DatabasePlanner(db, meta_db, reactors, list(pipeline or []),
                                   self.settings.batch_max, token, self._due_hint,
                                   self.clock.now, self.middleware, partition, state,
                                   self.planner_client, reached=self.clock.reached,
                                   dispatch=(lambda: self.workers)
                                   if self.settings.eager_dispatch else None)

        return factory

    def _planner_factories(self) -> list[Any]:
        if self.settings.planner_partitions > 1:
            return []  # partitions plan (see _gain_partition); the leader keeps its jobs
        return [self._planner_factory(database) for database in self._by_database()]

    async def _gain_partition(self, partition: Partition, token: int) -> None:
        factory = self._planner_factory(partition.database)
        manager = self.partitions
        planner = Planner([lambda t: factory(t, partition)],
                          on_deposed=(lambda: manager.forfeit(partition))
                          if manager is not None else None)
        self.partition_planners[partition.lease_id] = planner
        await planner.start(token)

    async def _lose_partition(self, partition: Partition) -> None:
        planner = self.partition_planners.pop(partition.lease_id, None)
        if planner is None:
            return
        stopping = asyncio.create_task(planner.stop())
        done, _ = await asyncio.wait([stopping], timeout=SHUTDOWN_STEP_S)
        if not done:
            log_event(log, logging.WARNING, "partition planner did not stop in time",
                      event="planner.stop_timeout", instance=self.settings.instance_id,
                      partition=partition.lease_id)

    async def _agree_on_partitioning(self) -> None:
        """Refuse a partition count that differs from a live instance's; record a change;
        with partitions, prepare this instance's share of the planning."""
        settings = self.settings
        self.heartbeat = Heartbeat(MetaStore(self.database()), settings.instance_id,
                                   [r.name for r in self.app.reactors], settings.concurrency,
                                   self._status)
        await self.heartbeat.beat()  # first: a concurrent start with another count sees it
        self.partitioning_epoch, self.partitioning_baseline = await agree_on_partitioning(
            MetaStore(self.database()), settings.instance_id, settings.planner_partitions)
        if settings.planner_partitions > 1:
            self.partitions = PartitionManager(
                MetaStore(self.database()), settings.instance_id,
                partitions_of(sorted(self._by_database()), settings.planner_partitions),
                self.partitioning_epoch, settings.leader_ttl_ms, settings.leader_renew_ms,
                self._gain_partition, self._lose_partition, self.clock.now)

    async def start(self) -> None:
        """Connect, ensure indexes, then start leader election, listeners and workers."""
        settings = self.settings
        await self.clock.sync(self.database())
        await self.ensure_indexes()
        await self._load_throttles()
        for name in await MetaStore(self.database()).paused_reactors():
            self.scheduler.pause(name, True)
        stores = {r.name: TaskStore(self.database(r)[r.tasks_collection], settings.task_lease_ms,
                                    settings.instance_id) for r in [*self.app.reactors,
                                                                    *self.app.crons]}
        sources = {r.name: self.database(r)[r.collection]
                   for r in [*self.app.reactors, *self.app.crons]}
        cron = CronPlanner(self.planner_client[settings.database], self.app.crons,
                           self.clock.now, self.middleware)
        await self._agree_on_partitioning()
        self.planner = Planner(self._planner_factories(), [self._retire_removed, cron.run],
                               on_deposed=self._deposed)
        if settings.planner_partitions > 1:
            self.planner.jobs.append(self._record_reactors)
        self.elector = LeaderElector(self.database(), settings.instance_id,
                                     settings.leader_ttl_ms, settings.leader_renew_ms,
                                     self._start_planning, self._stop_planning, self.clock.now)
        tasks_by_db: dict[str, list[str]] = {}
        for reactor in self.app.reactors:
            db_name = reactor.database or settings.database
            tasks_by_db.setdefault(db_name, [])
            if reactor.tasks_collection not in tasks_by_db[db_name]:
                tasks_by_db[db_name].append(reactor.tasks_collection)
        tasks_by_db.setdefault(settings.database, [])
        if self.app.crons:
            tasks_by_db[settings.database].append(CRON_TASKS_COLLECTION)
        elector = self.elector
        listeners: list[WakeupListener] = []
        for db_name, collections in tasks_by_db.items():
            listener = WakeupListener(self.client[db_name], collections,
                                      db_name == settings.database, self._on_due,
                                      self.scheduler.throttle, elector.observe,
                                      instance_id=settings.instance_id,
                                      on_lease=self.scheduler.note_lease,
                                      on_finished=self._finished,
                                      on_pause=self.scheduler.pause,
                                      reactors=self.scheduler.reactors)
            listeners.append(listener)
        # Open before "started": from then on this instance hears every change.
        await asyncio.gather(*(listener.open() for listener in listeners))
        for listener in listeners:
            self._background.append(asyncio.create_task(listener.run()))
        self.scheduler.start(self.clock.now())
        await self._learn_next_due(stores)
        self.workers = WorkerPool(
            {r.name: r for r in [*self.app.reactors, *self.app.crons]}, self.app.handlers,
            stores, sources,
            self.scheduler, self.clock, self.middleware, settings.concurrency,
            settings.task_renew_ms, settings.instance_id, self._throttle,
            RateLimiter(self.database()))
        self.workers.start()
        elector.start()
        if self.partitions is not None:
            self.partitions.start()
        self._background.append(asyncio.create_task(self._resync_clock()))
        assert self.heartbeat is not None
        self._background.append(asyncio.create_task(self.heartbeat.run()))
        log_event(log, logging.INFO, "runtime started", event="runtime.started",
                  instance=settings.instance_id, reactors=len(self.app.reactors),
                  concurrency=settings.concurrency,
                  clock_offset_ms=round(self.clock.offset.total_seconds() * 1000, 1),
                  clock_uncertainty_ms=round(self.clock.uncertainty.total_seconds() * 1000, 1))

    def is_leader(self) -> bool:
        """Whether this instance currently leads (and plans)."""
        return bool(self.elector is not None and self.elector.is_leader)

    def _status(self) -> dict[str, Any]:
        """What the heartbeat reports beyond the static facts."""
        elector = self.elector
        status = {"leader": bool(elector and elector.is_leader),
                  "leaderToken": elector.token if elector and elector.is_leader else None,
                  "running": sum(self.scheduler.running.values()),
                  "paused": sorted(self.scheduler.paused)}
        if self.settings.planner_partitions > 1:
            status[PARTITIONS_FIELD] = self.settings.planner_partitions
            status["partitions"] = self.partitions.held_labels() if self.partitions else []
        return status

    async def _learn_next_due(self, stores: dict[str, TaskStore]) -> None:
        """At start-up, the wake-up stream has reported nothing yet: learn each reactor's next
        scheduled time (a retry, a defer, a lease expiry) so it is not left to the idle poll."""
        now = self.clock.now()
        for name, store in stores.items():
            found = await store.next_due(name, now)
            if found is not None:
                task_id, due = found
                self.scheduler.note_due(name, due, key=task_id)

    async def _resync_clock(self) -> None:
        while True:
            await asyncio.sleep(CLOCK_SYNC_S)
            try:
                await self.clock.sync(self.database())
            except PyMongoError:
                raise_if_cancelled()

    def _deposed(self) -> None:
        """A planner found a newer leader's mark: check the lease at once (and step down)."""
        if self.elector is not None:
            self.elector.nudge()

    async def _start_planning(self, leader_token: int) -> None:
        self.middleware.on_leadership(True, leader_token)
        if self.planner is not None:
            # Tokens of a later partitioning epoch beat every earlier one (epoch 0: as is).
            await self.planner.start(epoch_base(self.partitioning_epoch) + leader_token)

    async def _stop_planning(self) -> None:
        self.middleware.on_leadership(False, self.elector.token if self.elector else 0)
        if self.planner is None:
            return
        # Not wait_for: it would wait for the stop to honour its cancellation. Left running,
        # a stop that overruns is cancelled with the other tasks at exit.
        stopping = asyncio.create_task(self.planner.stop())
        done, _ = await asyncio.wait([stopping], timeout=SHUTDOWN_STEP_S)
        if not done:
            log_event(log, logging.WARNING, "planner did not stop in time",
                      event="planner.stop_timeout", instance=self.settings.instance_id)

    async def shutdown(self) -> None:
        """Graceful stop: stop claiming, hand leadership over at once, let handlers finish
        (bounded by ``shutdown_timeout_ms``), give unfinished tasks back, close."""
        log_event(log, logging.INFO, "shutting down", event="runtime.stopping",
                  instance=self.settings.instance_id)
        self.scheduler.stopping = True
        self.scheduler.wake_all()
        if self.elector is not None:
            # Planning does not need this instance's handlers: another instance can take
            # over while they finish.
            await self.elector.stop()
        if self.partitions is not None:
            await self.partitions.stop()
        if self.workers is not None:
            unfinished = await self.workers.drain(self.settings.shutdown_timeout_ms / 1000)
            # All at once, within one bound: a database that does not answer must not hold
            # the exit back by a step per task.
            stores = self.workers.stores
            releases = [asyncio.create_task(stores[reactor.name].release(held))
                        for reactor, held in unfinished]
            if releases:
                await asyncio.wait(releases, timeout=SHUTDOWN_STEP_S)
            for (reactor, held), release in zip(unfinished, releases, strict=True):
                released = (release.done() and not release.cancelled()
                            and release.exception() is None and bool(release.result()))
                if not release.done():
                    release.cancel()
                    release.add_done_callback(consume_outcome)
                log_event(log, logging.WARNING,
                          "handler did not finish in time; task released" if released else
                          "handler did not finish in time; task left to its lease expiry",
                          event="task.released" if released else "task.abandoned",
                          reactor=reactor.name, task_id=held.task_id,
                          source_id=held.doc.get("sourceId"), attempt=held.doc.get("attempts"),
                          instance=self.settings.instance_id)
        for task in self._background:
            task.cancel()
        with contextlib.suppress(PyMongoError, TimeoutError):
            await within(MetaStore(self.database()).remove_instance(self.settings.instance_id),
                         CLOSE_STEP_S)
        # Bounded: with the server unreachable, the driver finishes a cancelled server
        # selection, and the end-sessions of close(), only at its server selection timeout.
        closing = [asyncio.create_task(self.client.close()),
                   asyncio.create_task(self.planner_client.close())]
        await asyncio.wait([*self._background, *closing], timeout=CLOSE_STEP_S)
        if self.command_counter is not None and self.settings.command_stats_file:
            self.command_counter.write(self.settings.command_stats_file)
        log_event(log, logging.INFO, "runtime stopped", event="runtime.stopped",
                  instance=self.settings.instance_id)
