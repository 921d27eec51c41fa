"""A runtime instance: every instance runs workers; the elected one also plans."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
from typing import Any

from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import PyMongoError

from runtime.app_loader import LoadedApp
from runtime.command_stats import CommandCounter
from runtime.hooks import Hooks
from runtime.leader import LeaderElector
from runtime.meta import META_COLLECTION, throttle_id
from runtime.planner import DatabasePlanner, Planner
from runtime.reactor import ReactorSpec
from runtime.scheduler import Scheduler
from runtime.server_time import ServerClock
from runtime.settings import RuntimeSettings
from runtime.structured_logging import log_event
from runtime.task_store import TaskStore
from runtime.wakeup import WakeupListener
from runtime.worker import WorkerPool

log = logging.getLogger("runtime")
CLOCK_SYNC_S = 60.0
SHUTDOWN_STEP_S = 5.0


class Runtime:
    """Owns the client, the elector, the planner, the wake-up listeners and the workers."""

    def __init__(self, settings: RuntimeSettings, app: LoadedApp,
                 hooks: Hooks | None = None) -> None:
        self.settings = settings
        self.app = app
        self.hooks = hooks or Hooks()
        self.command_counter = CommandCounter() if settings.command_stats_file else None
        self.client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
            settings.mongodb_uri, appname=f"reactgen-{settings.instance_id}",
            tz_aware=False,
            event_listeners=[self.command_counter] if self.command_counter else [])
        self.clock = ServerClock()
        self._background: list[asyncio.Task[None]] = []
        runnable = [r for r in app.reactors if self.hooks.task_filter(r)]
        self.scheduler = Scheduler(runnable, settings.idle_poll_ms)
        self.elector: LeaderElector | None = None
        self.planner: Planner | None = None
        self.workers: WorkerPool | None = None

    def database(self, reactor: ReactorSpec | None = None) -> AsyncDatabase[dict[str, Any]]:
        """The database of a reactor (or the default one)."""
        name = (reactor.database if reactor is not None else None) or self.settings.database
        return self.client[name]

    async def ensure_indexes(self) -> None:
        """Create the generated indexes (idempotent)."""
        for database, collection, keys, options in self.app.indexes:
            db = self.client[database or self.settings.database]
            await db[collection].create_index(keys, **options)

    def _due_hint(self, reactor: str, delay_ms: int) -> None:
        self.scheduler.note_due(reactor, self.clock.now() + datetime.timedelta(
            milliseconds=delay_ms))

    def _on_due(self, reactor: str, at: datetime.datetime | None) -> None:
        self.scheduler.note_due(reactor, at or self.clock.now())

    async def _throttle(self, reactor: ReactorSpec, duration_ms: int) -> None:
        until = self.clock.now() + datetime.timedelta(milliseconds=duration_ms)
        self.scheduler.throttle(reactor.name, until)
        await self.database()[META_COLLECTION].update_one(
            {"_id": throttle_id(reactor.name)},
            {"$max": {"until": until}, "$set": {"by": self.settings.instance_id}}, upsert=True)

    async def _load_throttles(self) -> None:
        cursor = self.database()[META_COLLECTION].find({"_id": {"$regex": "^throttle:"}})
        async for doc in cursor:
            if isinstance(doc.get("until"), datetime.datetime):
                self.scheduler.throttle(str(doc["_id"]).split(":", 1)[1], doc["until"])

    def _planner_factories(self) -> list[Any]:
        by_db: dict[str | None, list[ReactorSpec]] = {}
        for reactor in self.app.reactors:
            by_db.setdefault(reactor.database, []).append(reactor)
        factories = []
        for database, reactors in by_db.items():
            pipeline = self.app.pipelines.get(database)
            if pipeline is None:
                pipeline = [{"$match": {"$or": [r.pipeline[0]["$match"] for r in reactors]}}]
            db = self.client[database or self.settings.database]

            def factory(token: int, db: Any = db, reactors: list[ReactorSpec] = reactors,
                        pipeline: list[dict[str, Any]] = pipeline) -> DatabasePlanner:
                return DatabasePlanner(db, self.database(), reactors, pipeline,
                                       self.settings.batch_max, token, self._due_hint)

            factories.append(factory)
        return factories

    async def start(self) -> None:
        """Connect, ensure indexes, then start leader election, listeners and workers."""
        settings = self.settings
        await self.clock.sync(self.database())
        await self.ensure_indexes()
        await self._load_throttles()
        stores = {r.name: TaskStore(self.database(r)[r.tasks_collection], settings.task_lease_ms,
                                    settings.instance_id) for r in self.app.reactors}
        sources = {r.name: self.database(r)[r.collection] for r in self.app.reactors}
        self.planner = Planner(self._planner_factories())
        self.elector = LeaderElector(self.database(), settings.instance_id,
                                     settings.leader_ttl_ms, settings.leader_renew_ms,
                                     self.planner.start, self.planner.stop)
        tasks_by_db: dict[str, list[str]] = {}
        for reactor in self.app.reactors:
            db_name = reactor.database or settings.database
            tasks_by_db.setdefault(db_name, [])
            if reactor.tasks_collection not in tasks_by_db[db_name]:
                tasks_by_db[db_name].append(reactor.tasks_collection)
        tasks_by_db.setdefault(settings.database, [])
        elector = self.elector
        for db_name, collections in tasks_by_db.items():
            listener = WakeupListener(self.client[db_name], collections,
                                      db_name == settings.database, self._on_due,
                                      self.scheduler.throttle, elector.nudge)
            self._background.append(asyncio.create_task(listener.run()))
        self.scheduler.start(self.clock.now())
        self.workers = WorkerPool(
            {r.name: r for r in self.app.reactors}, self.app.handlers, stores, sources,
            self.scheduler, self.clock, self.hooks, settings.concurrency,
            settings.task_renew_ms, settings.instance_id, self._throttle)
        self.workers.start()
        self._background.append(asyncio.create_task(elector.run()))
        self._background.append(asyncio.create_task(self._resync_clock()))
        log_event(log, logging.INFO, "runtime started", event="runtime.started",
                  instance=settings.instance_id, reactors=len(self.app.reactors),
                  concurrency=settings.concurrency)

    async def _resync_clock(self) -> None:
        while True:
            await asyncio.sleep(CLOCK_SYNC_S)
            with contextlib.suppress(PyMongoError):
                await self.clock.sync(self.database())

    async def shutdown(self) -> None:
        """Graceful stop: stop claiming, let handlers finish (bounded), release leases and
        leadership, close."""
        log_event(log, logging.INFO, "shutting down", event="runtime.stopping",
                  instance=self.settings.instance_id)
        if self.workers is not None:
            unfinished = await self.workers.drain(self.settings.shutdown_timeout_ms / 1000)
            for reactor, held in unfinished:
                with contextlib.suppress(PyMongoError, TimeoutError):
                    await asyncio.wait_for(self.workers.stores[reactor.name].release(held),
                                           SHUTDOWN_STEP_S)
                log_event(log, logging.WARNING, "handler did not finish in time; task released",
                          event="task.released", reactor=reactor.name, task_id=held.task_id)
        if self.elector is not None:
            await self.elector.stop()
        for task in self._background:
            task.cancel()
        for task in self._background:
            with contextlib.suppress(asyncio.CancelledError, PyMongoError):
                await task
        await self.client.close()
        if self.command_counter is not None and self.settings.command_stats_file:
            self.command_counter.write(self.settings.command_stats_file)
        log_event(log, logging.INFO, "runtime stopped", event="runtime.stopped",
                  instance=self.settings.instance_id)
