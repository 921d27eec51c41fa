"""Integration tests of an application: the embedded server and one runtime, in this process.

:class:`RuntimeHarness` starts a real embedded server (a child process, in memory) unless a
``mongodb_uri`` is given, and one real :class:`runtime.serve.Runtime` on an event loop of its
own in a background thread, so handlers run in the test's process (monkeypatching works) while
the test itself stays synchronous::

    with RuntimeHarness("generated") as harness:
        harness.db.users.insert_one({"_id": "u1", "email": "ada@example.com"})
        harness.wait_until_idle()
        assert harness.db.outbox.count_documents({}) == 1

:meth:`RuntimeHarness.wait_until_idle` waits on the runtime's own records, never on a fixed
sleep: the planner's saved change-stream position must have passed a probe write made after
the test's writes (so every change before it is planned), and no task may be running or due
soon, twice in a row with no task changing in between.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import datetime
import threading
import time
import uuid
from types import TracebackType
from typing import Any, Final

from bson.timestamp import Timestamp
from pymongo import MongoClient
from pymongo.database import Database

from runtime.app_loader import LoadedApp, load_app
from runtime.cron_spec import CRON_TASKS_COLLECTION
from runtime.embedded.process import EmbeddedServer
from runtime.meta import META_COLLECTION, planner_id
from runtime.middleware import Middleware
from runtime.settings import RuntimeSettings
from runtime.task_status import PENDING, RUNNING

__all__ = ["NotIdleError", "RuntimeHarness"]

PROBE_COLLECTION: Final = "reactgen_testing_probe"
"""A write here (after the test's writes) marks the point the planner must have passed."""
POLL_S: Final = 0.02
START_TIMEOUT_S: Final = 30.0
STOP_TIMEOUT_S: Final = 30.0


class NotIdleError(TimeoutError, AssertionError):
    """:meth:`RuntimeHarness.wait_until_idle` ran out of time; the message says what was
    still going on (the planner behind, tasks running or due)."""


def token_time(token: Any) -> Timestamp | None:
    """The cluster time of a change-stream resume token (the embedded server's tokens and
    MongoDB's ``82``-prefixed KeyString tokens); None if it cannot be read."""
    data = token.get("_data") if isinstance(token, dict) else None
    if not isinstance(data, str):
        return None
    try:
        if len(data) == 42:  # the embedded server: time, increment, ... in hex
            return Timestamp(int(data[0:8], 16), int(data[8:16], 16))
        if data[:2] == "82" and len(data) >= 18:  # MongoDB: a KeyString timestamp first
            return Timestamp(int(data[2:10], 16), int(data[10:18], 16))
    except ValueError:
        return None
    return None


class RuntimeHarness:
    """An embedded server (unless ``mongodb_uri`` is given) and one runtime running ``app``.

    ``app``: the generated package's name (as ``runtime serve --app``) or a loaded app.
    ``database``: the runtime's database (default ``app``; with your own ``mongodb_uri`` a
    fresh ``test_<random>`` one). ``settings``: further :class:`RuntimeSettings` fields
    (e.g. ``concurrency``). ``middleware`` goes to the runtime as ``--middleware`` would.
    Use it as a context manager, or call :meth:`start` and :meth:`stop`.
    """

    def __init__(self, app: str | LoadedApp = "generated", *, mongodb_uri: str | None = None,
                 database: str | None = None, middleware: list[Middleware] | None = None,
                 **settings: Any) -> None:
        self.app = load_app(app) if isinstance(app, str) else app
        self._external_uri = mongodb_uri
        name = database or ("app" if mongodb_uri is None else f"test_{uuid.uuid4().hex[:10]}")
        options: dict[str, Any] = {"shutdown_timeout_ms": 2_000, "concurrency": 4,
                                   "leader_ttl_ms": 1_000, "log_level": "INFO"}
        options.update(settings)
        self.settings = RuntimeSettings(app="<harness>", database=name, **options)
        self._middleware = middleware or []
        self.server: EmbeddedServer | None = None
        self.client: MongoClient[dict[str, Any]] | None = None
        self.runtime: Any = None
        """The :class:`runtime.serve.Runtime` (while started)."""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stop: asyncio.Event | None = None
        self._started: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._finished: concurrent.futures.Future[None] = concurrent.futures.Future()

    # ------------------------------------------------------------------ life cycle

    @property
    def uri(self) -> str:
        """The MongoDB URI the runtime uses (the embedded server's, or yours)."""
        if self.settings.mongodb_uri is None:
            raise RuntimeError("the harness is not started")
        return self.settings.mongodb_uri

    @property
    def db(self) -> Database[dict[str, Any]]:
        """The runtime's database, through a synchronous PyMongo client."""
        if self.client is None:
            raise RuntimeError("the harness is not started")
        return self.client[self.settings.database]

    def start(self, timeout: float = START_TIMEOUT_S) -> RuntimeHarness:
        """Start the server (if needed) and the runtime; returns once the runtime leads and
        its planner has opened the change stream of every database it plans."""
        if self.settings.mongodb_uri is None:
            if self._external_uri is not None:
                self.settings.mongodb_uri = self._external_uri
            else:
                self.server = EmbeddedServer()
                self.settings.mongodb_uri = self.server.start()
        self.client = MongoClient(self.settings.mongodb_uri, tz_aware=False)
        self._thread = threading.Thread(target=self._run, name="reactgen-test-runtime",
                                        daemon=True)
        self._thread.start()
        try:
            self._started.result(timeout)
            self._wait(lambda: self._planned_databases_ready(), timeout,
                       "the runtime's planner to start")
        except BaseException:
            self.stop()
            raise
        return self

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._main())
        except BaseException as exc:  # reported to start() or stop()
            if not self._started.done():
                self._started.set_exception(exc)
            self._finished.set_exception(exc)
        else:
            self._finished.set_result(None)
        finally:
            _cancel_leftovers(loop)
            loop.close()

    async def _main(self) -> None:
        from runtime.serve import Runtime

        self._stop = asyncio.Event()
        runtime = Runtime(self.settings, self.app, None, self._middleware)
        self.runtime = runtime
        try:
            await runtime.start()
            self._started.set_result(None)
            await self._stop.wait()
        finally:
            await runtime.shutdown()

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> None:
        """Stop the runtime (gracefully, like SIGTERM) and the embedded server."""
        try:
            if self._loop is not None and self._stop is not None and not self._loop.is_closed():
                stop = self._stop
                with contextlib.suppress(RuntimeError):  # the loop ended already
                    self._loop.call_soon_threadsafe(stop.set)
            if self._thread is not None:
                self._thread.join(timeout)
                if self._thread.is_alive():
                    raise RuntimeError(f"the runtime did not stop within {timeout} s")
            if self._finished.done() and self._finished.exception() is not None:
                exc = self._finished.exception()
                if self._started.done() and self._started.exception() is None:
                    raise RuntimeError("the runtime failed") from exc
        finally:
            if self.client is not None:
                self.client.close()
                self.client = None
            if self.server is not None:
                self.server.stop()
                self.server = None

    def __enter__(self) -> RuntimeHarness:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # ------------------------------------------------------------------ reading state

    def _databases(self) -> list[str]:
        return sorted({r.database or self.settings.database for r in self.app.reactors})

    def _tasks_collections(self) -> list[tuple[str, str]]:
        found = {(r.database or self.settings.database, r.tasks_collection)
                 for r in self.app.reactors}
        if self.app.crons:
            found.add((self.settings.database, CRON_TASKS_COLLECTION))
        return sorted(found)

    def _position(self, database: str) -> Timestamp | None:
        doc = self.db[META_COLLECTION].find_one({"_id": planner_id(database)},
                                                {"resumeToken": 1})
        return token_time(doc.get("resumeToken")) if doc else None

    def _planned_databases_ready(self) -> bool:
        return all(self._position(name) is not None for name in self._databases())

    def tasks(self, reactor: str | None = None) -> list[dict[str, Any]]:
        """Task documents (with their ``history``) of ``reactor``, or of every reactor and
        cron job, sorted by reactor and source id."""
        assert self.client is not None
        found: list[dict[str, Any]] = []
        for database, collection in self._tasks_collections():
            query = {} if reactor is None else {"reactor": reactor}
            found += list(self.client[database][collection].find(query))
        return sorted(found, key=lambda t: (str(t.get("reactor")), str(t.get("sourceId"))))

    def task(self, reactor: str, source_id: Any) -> dict[str, Any] | None:
        """The task of ``reactor`` for one source document (None if none was planned)."""
        for task in self.tasks(reactor):
            if task.get("sourceId") == source_id:
                return task
        return None

    def run_cron_now(self, job: str, by: str = "test") -> None:
        """Request a run of cron job ``job`` now (``runtime cron run-now``)."""
        from runtime.management import ManagementSync

        with ManagementSync(self.uri, self.settings.database, self.app.crons) as management:
            management.run_cron_now(job, by)

    # ------------------------------------------------------------------ waiting

    def _probe(self) -> dict[str, Timestamp]:
        """One write per planned database; the cluster time each planner must pass."""
        assert self.client is not None
        times: dict[str, Timestamp] = {}
        for name in self._databases():
            with self.client.start_session() as session:
                self.client[name][PROBE_COLLECTION].update_one(
                    {"_id": "probe"}, {"$inc": {"n": 1}}, upsert=True, session=session)
                assert isinstance(session.operation_time, Timestamp)
                times[name] = session.operation_time
        return times

    def _behind(self, targets: dict[str, Timestamp]) -> list[str]:
        behind = []
        for name, target in targets.items():
            position = self._position(name)
            if position is None or position < target:
                behind.append(f"planner of database {name!r} at {position}, not yet past "
                              f"{target}")
        return behind

    def _busy(self, within_ms: int, retries: bool) -> tuple[list[dict[str, Any]], str]:
        """Tasks running or due within ``within_ms`` (retries only if ``retries``), and a
        fingerprint of every task's state."""
        assert self.client is not None
        due: dict[str, Any] = {"status": PENDING, "$expr": {
            "$lte": ["$nextRunAt", {"$add": ["$$NOW", within_ms]}]}}
        if not retries:
            due["lastError"] = None
        busy: list[dict[str, Any]] = []
        states: list[str] = []
        for database, collection in self._tasks_collections():
            tasks = self.client[database][collection]
            busy += list(tasks.find({"$or": [{"status": {"$in": RUNNING}}, due]},
                                    {"history": 0, "lastTraceback": 0}))
            states += [repr(sorted(doc.items())) for doc in tasks.find(
                {}, {"status": 1, "nextRunAt": 1, "lastClaim": 1, "attempts": 1,
                     "snapshotHash": 1, "lastFinalizedAt": 1})]
        return busy, "\n".join(sorted(states))

    def wait_until_idle(self, timeout: float = 10.0, *, within: float | None = None,
                        retries: bool = False) -> None:
        """Return once everything the test wrote has been planned and handled.

        Idle means: each database's planner has saved a change-stream position past a probe
        write made after the test's writes (every change before it is planned), no task is
        running, and no pending task is due within ``within`` seconds (default: ``timeout``;
        a debounced or deferred task that soon is waited for, a cron occurrence tomorrow is
        not). Pending retries of failed executions count only with ``retries=True``. This
        holds twice in a row with no task changing in between (so the effects of a handler
        that just finished are planned too). Raises :class:`NotIdleError` after ``timeout``
        seconds, saying what was still going on.
        """
        deadline = time.monotonic() + timeout
        within_ms = int((timeout if within is None else within) * 1000)
        while True:
            _, before = self._busy(within_ms, retries)
            targets = self._probe()
            while self._behind(targets) and time.monotonic() < deadline:
                self._check_running()
                time.sleep(POLL_S)
            behind = self._behind(targets)
            busy, after = self._busy(within_ms, retries)
            if not behind and not busy and before == after:
                return
            if time.monotonic() >= deadline:
                raise NotIdleError(self._not_idle(timeout, behind, busy))
            self._check_running()
            time.sleep(POLL_S)

    def _check_running(self) -> None:
        if self._finished.done():
            raise RuntimeError("the runtime stopped") from self._finished.exception()

    @staticmethod
    def _not_idle(timeout: float, behind: list[str], busy: list[dict[str, Any]]) -> str:
        lines = [f"not idle after {timeout} s:", *(f"  {b}" for b in behind)]
        for task in busy[:20]:
            state = task.get("status")
            detail = (f"running since {_iso(task.get('startedAt'))}" if state in RUNNING
                      else f"due {_iso(task.get('nextRunAt'))}")
            error = f", last error: {task['lastError']}" if task.get("lastError") else ""
            lines.append(f"  task {task.get('reactor')} for {task.get('sourceId')!r}: {state}, "
                         f"{detail}, attempt {task.get('attempts')}{error}")
        if len(busy) > 20:
            lines.append(f"  ... and {len(busy) - 20} more")
        return "\n".join(lines)

    def _wait(self, check: Any, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            self._check_running()
            if time.monotonic() >= deadline:
                raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
            time.sleep(POLL_S)


def _iso(value: Any) -> str:
    return value.isoformat() if isinstance(value, datetime.datetime) else str(value)


def _cancel_leftovers(loop: asyncio.AbstractEventLoop) -> None:
    """Cancel what the runtime left running (bounded, as ``runtime serve`` does at exit)."""
    pending = [task for task in asyncio.all_tasks(loop) if not task.done()]
    for task in pending:
        task.cancel()
    if pending:
        loop.run_until_complete(asyncio.wait(pending, timeout=1.0))

