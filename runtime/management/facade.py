"""The management API in one object: :class:`Management` (asyncio) and :class:`ManagementSync`
(blocking; it runs a :class:`Management` on an event loop thread of its own)."""

from __future__ import annotations

import asyncio
import datetime
import threading
from collections.abc import Coroutine, Iterable
from types import TracebackType
from typing import Any, Self, TypeVar

from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase

from runtime.management import cron as cron_module
from runtime.management import explain as explain_module
from runtime.management import instances, reactors, streams, tasks
from runtime.management.cron import CronJobInfo
from runtime.management.explain import Explanation
from runtime.management.instances import ClusterState, LeaderInfo
from runtime.management.reactors import PauseState, ReactorSummary
from runtime.management.scope import Scope
from runtime.management.streams import StreamState
from runtime.management.tasks import (
    DEFAULT_LIMIT,
    RETRY_BATCH,
    ProgressCallback,
    RetryResult,
    TaskPage,
    TaskRecord,
    TaskSelection,
    TaskSort,
)
from runtime.reactor import ReactorSpec
from runtime.settings import DEFAULT_DATABASE

T = TypeVar("T")
EVERYTHING = TaskSelection()


class Management:
    """Inspect and operate a reactgen deployment (asyncio, PyMongo only: any MongoDB).

    ``db`` is the runtime's database (``runtime serve --database``: ``reactgen_meta`` and the
    default database of reactors); ``reactors`` are the application's reactors
    (``runtime.app_loader.load_app(package).reactors``). Operations on tasks, summaries,
    ``explain``, ``pause``/``resume`` and ``request_reconcile`` need the reactors; ``instances``
    and ``reset_stream`` do not. ``actor`` is recorded as ``by`` in pauses and requests
    (default ``user@host``).
    """

    def __init__(self, db: AsyncDatabase[Any], reactors: Iterable[ReactorSpec] = (), *,
                 actor: str | None = None) -> None:
        self.scope = Scope(db, reactors, actor)
        self._owned_client: AsyncMongoClient[Any] | None = None

    @classmethod
    def connect(cls, uri: str, database: str = DEFAULT_DATABASE,
                reactors: Iterable[ReactorSpec] = (), *, actor: str | None = None,
                **client_options: Any) -> Management:
        """A :class:`Management` with a client of its own (closed by :meth:`close`)."""
        client: AsyncMongoClient[Any] = AsyncMongoClient(uri, **client_options)
        management = cls(client[database], reactors, actor=actor)
        management._owned_client = client
        return management

    async def close(self) -> None:
        """Close the client if :meth:`connect` created it."""
        if self._owned_client is not None:
            await self._owned_client.close()
            self._owned_client = None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, traceback: TracebackType | None) -> None:
        await self.close()

    @property
    def reactor_names(self) -> list[str]:
        """The application's reactors, by name."""
        return sorted(self.scope.reactors)

    async def server_time(self) -> datetime.datetime:
        """The database server's clock (naive UTC)."""
        return await self.scope.server_now()

    # -- tasks

    async def count_tasks(self, selection: TaskSelection = EVERYTHING) -> int:
        """How many tasks match ``selection``."""
        return await tasks.count_tasks(self.scope, selection)

    async def list_tasks(self, selection: TaskSelection = EVERYTHING, *,
                         sort: TaskSort = TaskSort.NEXT_RUN_AT, descending: bool = False,
                         limit: int = DEFAULT_LIMIT, skip: int = 0) -> TaskPage:
        """One page of the tasks matching ``selection`` (see
        :func:`runtime.management.tasks.list_tasks`)."""
        return await tasks.list_tasks(self.scope, selection, sort=sort, descending=descending,
                                      limit=limit, skip=skip)

    async def show_task(self, task_id: Any) -> TaskRecord:
        """One task, with its history, by task ``_id``; raises ``NotFound``."""
        return await tasks.show_task(self.scope, task_id)

    async def show_task_of(self, reactor: str, source_id: Any) -> TaskRecord:
        """The task of ``reactor`` for a source document, with its history; raises
        ``NotFound`` (``UnknownReactor`` for a reactor the application does not define)."""
        return await tasks.show_task_of(self.scope, reactor, source_id)

    async def retry_tasks(self, selection: TaskSelection, *, batch_size: int = RETRY_BATCH,
                          progress: ProgressCallback | None = None) -> RetryResult:
        """Retry the tasks matching ``selection`` in bulk (see
        :func:`runtime.management.tasks.retry_tasks`). An empty selection retries every
        task: check ``selection.is_empty`` first if that is not what you mean."""
        return await tasks.retry_tasks(self.scope, selection, batch_size=batch_size,
                                       progress=progress)

    # -- cron jobs

    async def cron_jobs(self, names: list[str] | None = None) -> list[CronJobInfo]:
        """Every cron job (or those named): schedule, next and last run, counts, missed runs.
        Cron jobs are passed in ``reactors`` (``load_app(...).crons``)."""
        return await cron_module.list_cron_jobs(self.scope, names)

    async def run_cron_now(self, name: str, by: str | None = None) -> TaskRecord:
        """Queue a run of cron job ``name`` due at once (``trigger: manual``)."""
        return await cron_module.run_now(self.scope, name, by)

    # -- reactors

    async def reactor_summary(self, name: str) -> ReactorSummary:
        """How one reactor is doing: counts by status, due work and lag, pause, throttle,
        last error, scans."""
        return await reactors.summarize(self.scope, name)

    async def reactor_summaries(self) -> list[ReactorSummary]:
        """:meth:`reactor_summary` of every reactor, by name."""
        return await reactors.summarize_all(self.scope)

    async def pause(self, name: str, reason: str | None = None,
                    by: str | None = None) -> PauseState:
        """Pause a reactor on every instance (no execution starts until :meth:`resume`)."""
        return await reactors.pause(self.scope, name, reason, by)

    async def resume(self, name: str) -> PauseState | None:
        """Resume a paused reactor; returns the lifted pause (None: it was not paused)."""
        return await reactors.resume(self.scope, name)

    async def paused(self, name: str) -> PauseState | None:
        """The pause of a reactor, or None."""
        return await reactors.paused_state(self.scope, name)

    async def request_reconcile(self, name: str, reason: str | None = None,
                                by: str | None = None) -> None:
        """Ask the leader to reconcile a reactor (re-plan every source document, clean up
        orphaned tasks)."""
        await reactors.request_reconcile(self.scope, name, reason, by)

    # -- instances and streams

    async def instances(self, include_stale: bool = False) -> ClusterState:
        """Live instances (from heartbeats; every recorded one with ``include_stale``) and
        the leader lease."""
        return await instances.cluster(self.scope, include_stale)

    async def leader(self) -> LeaderInfo | None:
        """The leader lease (``valid`` says whether it is held now), or None."""
        return await instances.leader(self.scope)

    async def stream_state(self, database: str | None = None) -> StreamState:
        """The saved change-stream state of a database's planner; raises ``NotFound``."""
        return await streams.stream_state(self.scope, database)

    async def reset_stream(self, database: str | None = None,
                           by: str | None = None) -> StreamState:
        """Request that the leader reopen a database's change stream at "now" and rescan every
        reactor of it; raises ``NotFound`` if no planner ever ran on the database."""
        return await streams.reset_stream(self.scope, database, by)

    # -- explain

    async def explain(self, reactor: str, source_id: Any) -> Explanation:
        """Whether the document exists and matches, its watched values now vs the task's,
        the task's state, and when it will run and why."""
        return await explain_module.explain(self.scope, reactor, source_id)


class ManagementSync:
    """The blocking form of :class:`Management`: the same methods, for scripts and
    synchronous applications.

    It owns a private event loop on a daemon thread and an ``AsyncMongoClient`` bound to it;
    every method runs the asynchronous one there and waits for its result (progress
    callbacks are called on that thread). Use it as a context manager, or call :meth:`close`.
    """

    def __init__(self, uri: str, database: str = DEFAULT_DATABASE,
                 reactors: Iterable[ReactorSpec] = (), *, actor: str | None = None,
                 **client_options: Any) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever,
                                        name="reactgen-management", daemon=True)
        self._thread.start()
        specs = list(reactors)

        async def build() -> Management:
            return Management.connect(uri, database, specs, actor=actor, **client_options)

        self._async = self._run(build())

    def _run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    def close(self) -> None:
        """Close the client and stop the loop thread."""
        if self._loop.is_closed():
            return
        try:
            self._run(self._async.close())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
            self._loop.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()

    @property
    def management(self) -> Management:
        """The asynchronous object it runs (use it only on its loop)."""
        return self._async

    @property
    def reactor_names(self) -> list[str]:
        """The application's reactors, by name."""
        return self._async.reactor_names

    def server_time(self) -> datetime.datetime:
        """See :meth:`Management.server_time`."""
        return self._run(self._async.server_time())

    def count_tasks(self, selection: TaskSelection = EVERYTHING) -> int:
        """See :meth:`Management.count_tasks`."""
        return self._run(self._async.count_tasks(selection))

    def list_tasks(self, selection: TaskSelection = EVERYTHING, *,
                   sort: TaskSort = TaskSort.NEXT_RUN_AT, descending: bool = False,
                   limit: int = DEFAULT_LIMIT, skip: int = 0) -> TaskPage:
        """See :meth:`Management.list_tasks`."""
        return self._run(self._async.list_tasks(selection, sort=sort, descending=descending,
                                                limit=limit, skip=skip))

    def show_task(self, task_id: Any) -> TaskRecord:
        """See :meth:`Management.show_task`."""
        return self._run(self._async.show_task(task_id))

    def show_task_of(self, reactor: str, source_id: Any) -> TaskRecord:
        """See :meth:`Management.show_task_of`."""
        return self._run(self._async.show_task_of(reactor, source_id))

    def retry_tasks(self, selection: TaskSelection, *, batch_size: int = RETRY_BATCH,
                    progress: ProgressCallback | None = None) -> RetryResult:
        """See :meth:`Management.retry_tasks`."""
        return self._run(self._async.retry_tasks(selection, batch_size=batch_size,
                                                 progress=progress))

    def cron_jobs(self, names: list[str] | None = None) -> list[CronJobInfo]:
        """Blocking :meth:`Management.cron_jobs`."""
        return self._run(self._async.cron_jobs(names))

    def run_cron_now(self, name: str, by: str | None = None) -> TaskRecord:
        """Blocking :meth:`Management.run_cron_now`."""
        return self._run(self._async.run_cron_now(name, by))

    def reactor_summary(self, name: str) -> ReactorSummary:
        """See :meth:`Management.reactor_summary`."""
        return self._run(self._async.reactor_summary(name))

    def reactor_summaries(self) -> list[ReactorSummary]:
        """See :meth:`Management.reactor_summaries`."""
        return self._run(self._async.reactor_summaries())

    def pause(self, name: str, reason: str | None = None, by: str | None = None) -> PauseState:
        """See :meth:`Management.pause`."""
        return self._run(self._async.pause(name, reason, by))

    def resume(self, name: str) -> PauseState | None:
        """See :meth:`Management.resume`."""
        return self._run(self._async.resume(name))

    def paused(self, name: str) -> PauseState | None:
        """See :meth:`Management.paused`."""
        return self._run(self._async.paused(name))

    def request_reconcile(self, name: str, reason: str | None = None,
                          by: str | None = None) -> None:
        """See :meth:`Management.request_reconcile`."""
        self._run(self._async.request_reconcile(name, reason, by))

    def instances(self, include_stale: bool = False) -> ClusterState:
        """See :meth:`Management.instances`."""
        return self._run(self._async.instances(include_stale))

    def leader(self) -> LeaderInfo | None:
        """See :meth:`Management.leader`."""
        return self._run(self._async.leader())

    def stream_state(self, database: str | None = None) -> StreamState:
        """See :meth:`Management.stream_state`."""
        return self._run(self._async.stream_state(database))

    def reset_stream(self, database: str | None = None, by: str | None = None) -> StreamState:
        """See :meth:`Management.reset_stream`."""
        return self._run(self._async.reset_stream(database, by))

    def explain(self, reactor: str, source_id: Any) -> Explanation:
        """See :meth:`Management.explain`."""
        return self._run(self._async.explain(reactor, source_id))


__all__ = ["Management", "ManagementSync"]
