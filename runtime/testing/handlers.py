"""Run one handler without a runtime: :func:`run_handler` and what it returns.

The handler gets a :class:`HandlerTestContext`, a complete implementation of
:class:`runtime.context.TaskContext` for tests: the typed document, the watched values the
planner would have recorded, the attempt number and a tagged logger, exactly as the worker builds
them. The reactor's filter and watch expressions are evaluated by the embedded server's query
engine (in this process, no server needed), so ``get_document()`` makes the same late-binding
check as in production. The outcome is decided by the worker's own
:func:`runtime.worker.decide_outcome`, with the reactor's retry policy and timeout.

With ``database=...`` the handler's ``ctx.database`` is that database and the source document is
written into the reactor's collection first (``get_document()`` then reads it back with the
worker's own aggregation). Without it, a handler that touches ``ctx.database`` makes
:func:`run_handler` raise :class:`NoDatabaseError`.
"""

from __future__ import annotations

import asyncio
import datetime
import importlib
import inspect
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from types import ModuleType
from typing import Any, Generic, cast, overload

from bson import ObjectId
from bson.timestamp import Timestamp
from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.database import Database

from runtime.context import DocId, Model, Watched
from runtime.cron_spec import CronSpec
from runtime.embedded.engine import matches, run_pipeline, system_variables
from runtime.outcome import Outcome, OutcomeKind
from runtime.reactor import ReactorSpec
from runtime.task_context import SNAPSHOT_FIELD, document_pipeline
from runtime.task_plans import snapshot_hash
from runtime.testing.context import (
    COMPLETIONS_COLLECTION,
    SAME,
    Handler,
    HandlerTestContext,
    NoDatabaseError,
    NoForeignCollections,
    Same,
    Target,
)
from runtime.worker import decide_outcome

__all__ = ["SAME", "HandlerResult", "HandlerTestContext", "NoDatabaseError", "run_handler",
           "run_handler_async", "would_trigger"]



def _naive_utc(moment: datetime.datetime | None) -> datetime.datetime:
    if moment is None:
        return datetime.datetime.now(datetime.UTC).replace(tzinfo=None)
    if moment.tzinfo is not None:
        moment = moment.astimezone(datetime.UTC).replace(tzinfo=None)
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000)


def _variables(now: datetime.datetime) -> dict[str, Any]:
    seconds = int(now.replace(tzinfo=datetime.UTC).timestamp())
    return system_variables(now, Timestamp(seconds, 1))


def would_trigger(target: Target, document: Mapping[str, Any], *,
                  now: datetime.datetime | None = None) -> bool:
    """Whether the reactor plans a task for ``document`` (its trigger filter matches at
    ``now``, default: the current time). ``target``: as for :func:`run_handler`."""
    if isinstance(target, ReactorSpec) or hasattr(target, "REACTOR"):
        reactor = _as_spec(cast(ModuleType | ReactorSpec, target))
    else:
        reactor = _find_reactor(target)
    return matches(reactor.filter, dict(document), _variables(_naive_utc(now)))


@dataclass(frozen=True)
class HandlerResult(Generic[Model, Watched, DocId]):
    """What one execution ended as, and what it asked for.

    ``outcome`` is what the worker would record (:class:`~runtime.outcome.OutcomeKind`);
    ``recorded`` the full :class:`~runtime.outcome.Outcome` value the worker would apply and hand
    to the middleware.
    """

    recorded: Outcome
    context: HandlerTestContext[Model, Watched, DocId]
    now: datetime.datetime
    """The (server) time the execution ran at, naive UTC."""
    exception: BaseException | None = None
    """What the handler raised, if anything."""
    logs: list[str] = field(default_factory=list)
    """The messages the handler logged through ``ctx.logger``."""

    @property
    def outcome(self) -> OutcomeKind:
        """completed, retry, deferred, skipped or failed."""
        return self.recorded.kind

    @property
    def error(self) -> str | None:
        """``Type: message`` of a failure (retry or failed), or the reason of a skip."""
        return self.recorded.error

    @property
    def traceback(self) -> str | None:
        """The failure's traceback, trimmed to the user's frames."""
        return self.recorded.traceback

    @property
    def retry_in(self) -> datetime.timedelta | None:
        """For ``retry``: the delay before the next attempt (the retry policy's)."""
        if self.recorded.retry_in_ms is not None:
            return datetime.timedelta(milliseconds=self.recorded.retry_in_ms)
        if self.recorded.retry_at is not None:
            return self.recorded.retry_at - self.now
        return None

    @property
    def retry_at(self) -> datetime.datetime | None:
        """For ``retry``: when the next attempt is due (naive UTC)."""
        if self.recorded.retry_at is not None:
            return self.recorded.retry_at
        delay = self.retry_in
        return None if delay is None else self.now + delay

    @property
    def deferred_for(self) -> datetime.timedelta | None:
        """For ``deferred``: how long until the task runs again."""
        if self.recorded.defer_ms is None:
            return None
        return datetime.timedelta(milliseconds=self.recorded.defer_ms)

    @property
    def deferred_until(self) -> datetime.datetime | None:
        """For ``deferred``: when the task runs again (naive UTC)."""
        delay = self.deferred_for
        return None if delay is None else self.now + delay

    @property
    def throttled_for(self) -> datetime.timedelta | None:
        """How long the handler paused its reactor with ``ctx.throttle()``, if it did."""
        ms = self.context.throttle_ms
        return None if ms is None else datetime.timedelta(milliseconds=ms)

    @property
    def completed_in_transaction(self) -> bool:
        """True if ``mark_completed(session=...)`` was called inside a transaction that
        committed."""
        return self.context.completed_in_session and self.outcome is OutcomeKind.COMPLETED


def _handler_reference(handler: Callable[..., object]) -> tuple[str, str]:
    return handler.__module__, getattr(handler, "__name__", "handle")


def _find_reactor(handler: Callable[..., object]) -> ReactorSpec:
    """The reactor whose definition names ``handler``, from the generated registry of the
    package the handler module belongs to."""
    module, name = _handler_reference(handler)
    parts = module.split(".")
    references = {f"{module}:{name}"} | ({module} if name == "handle" else set())
    for end in range(len(parts) - 1, 0, -1):
        package = ".".join(parts[:end])
        try:
            registry = importlib.import_module(f"{package}.registry")
        except ImportError:
            continue
        for spec in [*getattr(registry, "REACTORS", ()), *getattr(registry, "CRONS", ())]:
            if spec.handler in references or spec.handler == f"{module}:":
                return cast(ReactorSpec, spec)
    raise LookupError(f"no reactor names {module}:{name} as its handler in a generated "
                      "registry; pass reactor=<the reactor module or REACTOR>")


def _load_handler(reactor: ReactorSpec) -> Callable[..., object]:
    module_name, _, function = reactor.handler.partition(":")
    handler = getattr(importlib.import_module(module_name), function or "handle")
    return cast(Callable[..., object], handler)


def _as_spec(value: ModuleType | ReactorSpec) -> ReactorSpec:
    if isinstance(value, ReactorSpec):
        return value
    spec = getattr(value, "REACTOR", None) or getattr(value, "CRON", None)
    if not isinstance(spec, ReactorSpec):
        raise TypeError(f"{value.__name__} defines no REACTOR: pass a generated reactor module "
                        "(e.g. generated.reactors.<name>), its REACTOR, or the handler function")
    return spec


def _resolve(target: Target, reactor: ModuleType | ReactorSpec | None
             ) -> tuple[ReactorSpec, Callable[..., object]]:
    if isinstance(target, ReactorSpec) or (isinstance(target, ModuleType)
                                           and hasattr(target, "REACTOR")):
        spec = _as_spec(target)
        handler = _load_handler(spec)
    else:
        handler = target.handle if isinstance(target, ModuleType) else target
        spec = _as_spec(reactor) if reactor is not None else _find_reactor(handler)
    if isinstance(spec, CronSpec):
        raise TypeError(f"{spec.name!r} is a cron job; run_handler runs reactor handlers "
                        "(test cron jobs with RuntimeHarness.run_cron_now)")
    return spec, handler


def _task(reactor: ReactorSpec, doc_id: Any, snapshot: Any, attempt: int,
          first_error_at: datetime.datetime | None, now: datetime.datetime) -> dict[str, Any]:
    return {"_id": ObjectId(), "reactor": reactor.name, "sourceId": doc_id,
            "snapshot": snapshot, "snapshotHash": snapshot_hash(snapshot),
            "status": "processing", "attempts": attempt, "startedAt": now,
            "firstErrorAt": first_error_at}


def _watched(reactor: ReactorSpec, snapshot: Any) -> Any:
    """The worker's ``ctx.watched_values`` for a snapshot."""
    if not isinstance(snapshot, dict):
        return snapshot
    try:
        return reactor.watched_model.model_validate(snapshot)
    except ValueError:
        return snapshot


class _Capture(logging.Handler):
    def __init__(self, lines: list[str]) -> None:
        super().__init__(logging.DEBUG)
        self.lines = lines

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def _async_database(database: Database[Any] | AsyncDatabase[Any] | None
                    ) -> tuple[AsyncDatabase[dict[str, Any]] | None,
                               AsyncMongoClient[dict[str, Any]] | None]:
    """An asyncio database for the handler (and the client to close afterwards, if made)."""
    if database is None or isinstance(database, AsyncDatabase):
        return database, None
    kwargs = dict(getattr(database.client, "_init_kwargs", {}))
    if not kwargs:
        kwargs = {"host": [f"{host}:{port}" for host, port in database.client.nodes]}
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(**kwargs)
    return client[database.name], client


@overload
def run_handler(target: Handler[Model, Watched, DocId], document: Mapping[str, Any], *,
                reactor: ModuleType | ReactorSpec | None = None,
                database: Database[Any] | AsyncDatabase[Any] | None = None,
                current: Mapping[str, Any] | Same | None = SAME,
                now: datetime.datetime | None = None, attempt: int = 1,
                first_error_at: datetime.datetime | None = None,
                timeout_ms: int | None = None, store_document: bool = True,
                ) -> HandlerResult[Model, Watched, DocId]: ...


@overload
def run_handler(target: ModuleType | ReactorSpec, document: Mapping[str, Any], *,
                reactor: ModuleType | ReactorSpec | None = None,
                database: Database[Any] | AsyncDatabase[Any] | None = None,
                current: Mapping[str, Any] | Same | None = SAME,
                now: datetime.datetime | None = None, attempt: int = 1,
                first_error_at: datetime.datetime | None = None,
                timeout_ms: int | None = None, store_document: bool = True,
                ) -> HandlerResult[Any, Any]: ...


def run_handler(target: Target, document: Mapping[str, Any], *,
                reactor: ModuleType | ReactorSpec | None = None,
                database: Database[Any] | AsyncDatabase[Any] | None = None,
                current: Mapping[str, Any] | Same | None = SAME,
                now: datetime.datetime | None = None, attempt: int = 1,
                first_error_at: datetime.datetime | None = None,
                timeout_ms: int | None = None, store_document: bool = True,
                ) -> HandlerResult[Any, Any]:
    """Run a reactor's handler once on ``document`` and return what the worker would record.

    ``target``: the handler function (its reactor is found in the generated registry of its
    package, or given as ``reactor=``), a generated reactor module, or its ``REACTOR``.
    ``document``: the source document as the planner saw it (it must match the trigger
    filter, else :class:`ValueError`: the runtime would never run the handler for it).
    ``current``: the document when the handler reads it (default :data:`SAME`; ``None``: deleted
    meanwhile; another document: changed meanwhile); ``get_document()`` skips as the worker
    does. ``database``: a PyMongo database (synchronous or asyncio) the handler gets as
    ``ctx.database``; ``current`` is written into the reactor's collection first unless
    ``store_document=False``. ``now`` (default: now) is ``$$NOW`` for the filter and the time
    the retry policy decides at; ``attempt`` and ``first_error_at`` are the task's attempt
    count and first failure (the retry policy gives up by them). ``timeout_ms`` replaces the
    reactor's timeout policy.

    Blocking; in an ``async def`` test use :func:`run_handler_async`.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        raise RuntimeError("run_handler() blocks; inside a running event loop use "
                           "`await run_handler_async(...)`")
    return asyncio.run(run_handler_async(
        target, document, reactor=reactor, database=database, current=current, now=now,
        attempt=attempt, first_error_at=first_error_at, timeout_ms=timeout_ms,
        store_document=store_document))


@overload
async def run_handler_async(target: Handler[Model, Watched, DocId],
                            document: Mapping[str, Any], *,
                            reactor: ModuleType | ReactorSpec | None = None,
                            database: Database[Any] | AsyncDatabase[Any] | None = None,
                            current: Mapping[str, Any] | Same | None = SAME,
                            now: datetime.datetime | None = None, attempt: int = 1,
                            first_error_at: datetime.datetime | None = None,
                            timeout_ms: int | None = None, store_document: bool = True,
                            ) -> HandlerResult[Model, Watched, DocId]: ...


@overload
async def run_handler_async(target: ModuleType | ReactorSpec, document: Mapping[str, Any], *,
                            reactor: ModuleType | ReactorSpec | None = None,
                            database: Database[Any] | AsyncDatabase[Any] | None = None,
                            current: Mapping[str, Any] | Same | None = SAME,
                            now: datetime.datetime | None = None, attempt: int = 1,
                            first_error_at: datetime.datetime | None = None,
                            timeout_ms: int | None = None, store_document: bool = True,
                            ) -> HandlerResult[Any, Any]: ...


async def run_handler_async(target: Target, document: Mapping[str, Any], *,
                            reactor: ModuleType | ReactorSpec | None = None,
                            database: Database[Any] | AsyncDatabase[Any] | None = None,
                            current: Mapping[str, Any] | Same | None = SAME,
                            now: datetime.datetime | None = None, attempt: int = 1,
                            first_error_at: datetime.datetime | None = None,
                            timeout_ms: int | None = None, store_document: bool = True,
                            ) -> HandlerResult[Any, Any]:
    """:func:`run_handler` for ``async def`` tests (same arguments); an asyncio database
    passed here is used as it is."""
    spec, handler = _resolve(target, reactor)
    at = _naive_utc(now)
    variables = _variables(at)
    planned = {"_id": ObjectId(), **document} if "_id" not in document else dict(document)
    if not matches(spec.filter, planned, variables):
        raise ValueError(f"reactor {spec.name!r} would not run for this document: it does not "
                         f"match the trigger filter {spec.filter!r} (at {at.isoformat()})")
    later: dict[str, Any] | None
    if isinstance(current, Same):
        later = planned
    elif current is None:
        later = None
    else:
        later = {"_id": planned["_id"], **current}
    [evaluated] = run_pipeline([planned], document_pipeline(spec, planned["_id"], None),
                               NoForeignCollections(), variables)
    snapshot = evaluated[SNAPSHOT_FIELD]
    task = _task(spec, planned["_id"], snapshot, attempt, _naive_utc(first_error_at)
                 if first_error_at is not None else None, at)
    db, own_client = _async_database(database)
    if db is not None and spec.database is not None:
        db = db.client[spec.database]
    lines: list[str] = []
    logger = logging.getLogger(f"runtime.testing.{spec.name}")
    capture = _Capture(lines)
    logger.addHandler(capture)
    logger.setLevel(logging.DEBUG)
    try:
        if db is not None and store_document:
            if later is None:
                await db[spec.collection].delete_one({"_id": planned["_id"]})
            else:
                await db[spec.collection].replace_one({"_id": planned["_id"]}, later,
                                                      upsert=True)
        ctx: HandlerTestContext[Any, Any] = HandlerTestContext(
            spec, task, _watched(spec, snapshot), later, db, variables, logger,
            asyncio.get_running_loop())
        return await _execute(spec, handler, ctx, task, at, timeout_ms, lines)
    finally:
        logger.removeHandler(capture)
        if own_client is not None:
            await own_client.close()


async def _call(handler: Callable[..., object], ctx: HandlerTestContext[Any, Any]) -> None:
    """Call the handler the way the worker does (plain functions on a thread of their own)."""
    if inspect.iscoroutinefunction(handler):
        await cast(Callable[..., Awaitable[object]], handler)(ctx)
        return
    result = await asyncio.to_thread(handler, ctx)
    if inspect.isawaitable(result):
        await result


async def _committed(ctx: HandlerTestContext[Any, Any]) -> bool:
    """Whether ``mark_completed(session)`` committed (its marker is there); removes it."""
    if ctx._database is None:
        return True
    markers = ctx._database[COMPLETIONS_COLLECTION]
    found = await markers.find_one_and_delete({"_id": ctx.task["_id"]})
    return found is not None


async def _execute(spec: ReactorSpec, handler: Callable[..., object],
                   ctx: HandlerTestContext[Any, Any], task: dict[str, Any],
                   now: datetime.datetime, timeout_ms: int | None,
                   lines: list[str]) -> HandlerResult[Any, Any]:
    limit = timeout_ms if timeout_ms is not None else spec.policies.timeout_ms
    deadline = asyncio.timeout(limit / 1000 if limit is not None else None)
    failure: BaseException | None = None
    timed_out = False
    started = time.perf_counter()
    try:
        async with deadline:
            await _call(handler, ctx)
    except NoDatabaseError:
        raise
    except Exception as exc:  # the handler's failure is the task's outcome
        failure = exc
        timed_out = isinstance(exc, TimeoutError) and deadline.expired()
    if failure is not None and isinstance(failure.__cause__, NoDatabaseError):
        raise failure.__cause__  # a usage error of the test, not the handler's failure
    if timed_out and limit is not None and limit != spec.policies.timeout_ms:
        # The worker names its policy's timeout; name the one this run used.
        spec = _with_timeout(spec, limit)
    outcome = decide_outcome(spec, task, ctx, failure, timed_out,
                             time.perf_counter() - started, now)
    if ctx.completed_in_session and not await _committed(ctx):
        ctx.completed_in_session = False  # rolled back: as if never called
        if failure is None:
            outcome = decide_outcome(spec, task, ctx, failure, timed_out,
                                     outcome.duration_s, now)
    finalized = ctx.completed or ctx.completed_in_session
    if finalized and outcome.kind not in (OutcomeKind.COMPLETED, OutcomeKind.DEFERRED):
        # As the worker records it: the completion was written, whatever happened after it.
        outcome = Outcome(OutcomeKind.COMPLETED, outcome.duration_s,
                          error=f"after mark_completed(): {outcome.error}")
    return HandlerResult(outcome, ctx, now, failure, lines)


def _with_timeout(spec: ReactorSpec, timeout_ms: int) -> ReactorSpec:
    return replace(spec, policies=replace(spec.policies, timeout_ms=timeout_ms))

