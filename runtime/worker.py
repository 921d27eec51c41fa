"""Workers: claim due tasks, run handlers with a renewed lease, and finalize (fenced)."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import datetime
import functools
import inspect
import logging
import threading
import time
import traceback
from collections.abc import Awaitable, Callable
from typing import Any

from pydantic import ValidationError
from pymongo.errors import PyMongoError

from runtime.cancellation import consume_outcome, raise_if_cancelled
from runtime.hooks import Hooks
from runtime.metrics import record_execution
from runtime.reactor import ReactorSpec
from runtime.retry_policies import cron_next, gives_up, retry_delay_ms
from runtime.scheduler import Scheduler
from runtime.server_time import ServerClock
from runtime.structured_logging import log_event
from runtime.task_context import RuntimeTaskContext, TaskSkipped
from runtime.task_store import COMPLETED, FAILED, SKIPPED, Claimed, TaskStore, debounce_expression

log = logging.getLogger("runtime.worker")
LOOP_STOP_S = 2.0
Handler = Callable[[Any], Any]
ThrottleSink = Callable[[ReactorSpec, int], Awaitable[None]]


def _describe(exc: BaseException) -> str:
    """``Type: message``, the way the handler's failure is recorded in ``lastError``."""
    return "".join(traceback.format_exception_only(exc)).strip()


def _in_thread(function: Handler, ctx: Any, name: str) -> asyncio.Future[Any]:
    """Run a plain ``def`` handler on a thread of its own.

    One daemon thread per execution rather than the loop's default executor: that pool is
    sized by CPU count (fewer threads than ``--concurrency``) and a handler stuck after a
    timeout or at shutdown would block the process from exiting.
    """
    loop = asyncio.get_running_loop()
    future: asyncio.Future[Any] = loop.create_future()
    context = contextvars.copy_context()

    def settle(outcome: Callable[[], None]) -> None:
        if not future.done():  # not cancelled by a timeout meanwhile
            outcome()

    def target() -> None:
        try:
            result = context.run(function, ctx)
        except BaseException as exc:  # handed to the awaiting worker
            if isinstance(exc, StopIteration):  # futures refuse it
                exc = RuntimeError(f"handler raised {exc!r}")
            outcome = functools.partial(future.set_exception, exc)
        else:
            outcome = functools.partial(future.set_result, result)
        with contextlib.suppress(RuntimeError):  # the loop is gone: nobody waits any more
            loop.call_soon_threadsafe(settle, outcome)

    threading.Thread(target=target, name=name, daemon=True).start()
    return future


class WorkerPool:
    """``concurrency`` workers sharing one scheduler."""

    def __init__(self, reactors: dict[str, ReactorSpec], handlers: dict[str, Handler],
                 stores: dict[str, TaskStore], sources: dict[str, Any], scheduler: Scheduler,
                 clock: ServerClock, hooks: Hooks, concurrency: int, renew_ms: int,
                 instance_id: str, throttle_sink: ThrottleSink) -> None:
        self.reactors = reactors
        self.handlers = handlers
        self.stores = stores
        self.sources = sources
        self.scheduler = scheduler
        self.clock = clock
        self.hooks = hooks
        self.concurrency = concurrency
        self.renew_ms = renew_ms
        self.instance_id = instance_id
        self.throttle_sink = throttle_sink
        self.in_flight: dict[asyncio.Task[None], tuple[ReactorSpec, Claimed]] = {}
        self._loops: list[asyncio.Task[None]] = []

    def start(self) -> None:
        """Start the worker loops."""
        self._loops = [asyncio.create_task(self._loop(i), name=f"worker-{i}")
                       for i in range(self.concurrency)]

    async def _loop(self, index: int) -> None:
        scheduler = self.scheduler
        while not scheduler.stopping:
            now = self.clock.now()
            name = scheduler.next_reactor(now)
            if name is None:
                await scheduler.sleep(now)
                continue
            reactor = self.reactors[name]
            scheduler.running[name] += 1
            try:
                try:
                    held = await self.stores[name].claim(name, now)
                except PyMongoError as exc:
                    log_event(log, logging.WARNING, "claim failed", event="task.claim_error",
                              reactor=name, error=str(exc))
                    scheduler.missed(name, now)
                    await scheduler.wait(0.5)
                    continue
                if held is None:
                    scheduler.missed(name, now)
                    continue
                scheduler.claimed(name, now)
                execution = asyncio.create_task(self._execute(reactor, held))
                self.in_flight[execution] = (reactor, held)
                try:
                    await asyncio.shield(execution)
                finally:
                    self.in_flight.pop(execution, None)
            finally:
                scheduler.running[name] -= 1

    async def _renew(self, store: TaskStore, held: Claimed, ctx: RuntimeTaskContext) -> None:
        while not ctx.finalized:
            await asyncio.sleep(self.renew_ms / 1000)
            if ctx.finalized:
                return  # completed inside the handler's transaction: nothing left to hold
            try:
                if not await store.renew(held):
                    if not ctx.finalized:
                        ctx.logger.warning("lease lost; this execution's results will be "
                                           "discarded")
                    return
            except PyMongoError as exc:
                raise_if_cancelled()
                ctx.logger.warning("lease renewal failed: %s", exc)

    async def _call_handler(self, reactor: ReactorSpec, ctx: RuntimeTaskContext) -> None:
        handler = self.handlers[reactor.name]

        async def call_next() -> None:
            if inspect.iscoroutinefunction(handler):
                await handler(ctx)
            else:
                result = await _in_thread(handler, ctx, f"reactgen-{reactor.name}")
                if inspect.isawaitable(result):
                    await result

        await self.hooks.execution_wrapper(reactor, ctx, call_next)

    async def _execute(self, reactor: ReactorSpec, held: Claimed) -> None:
        store = self.stores[reactor.name]
        policies = reactor.policies
        debounce = debounce_expression(reactor)
        ctx = RuntimeTaskContext(reactor, held, store, self.sources[reactor.name], log,
                                 debounce, asyncio.get_running_loop())
        renewal = asyncio.create_task(self._renew(store, held, ctx))
        started = time.perf_counter()
        outcome, error = COMPLETED, None
        timeout = policies.timeout_ms
        deadline = asyncio.timeout(timeout / 1000 if timeout is not None else None)
        try:
            async with deadline:
                await self._call_handler(reactor, ctx)
        except TaskSkipped as exc:
            outcome, error = SKIPPED, str(exc)
        except TimeoutError as exc:
            outcome = FAILED
            error = (f"handler timed out after {timeout} ms" if deadline.expired()
                     else _describe(exc))
        except ValidationError as exc:
            outcome = FAILED
            error = (f"source document failed validation: {exc}" if ctx.invalid_document
                     else _describe(exc))
        except Exception as exc:  # the handler's failure is the task's, never the worker's
            outcome, error = FAILED, _describe(exc)
        finally:
            renewal.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewal
        duration_ms = (time.perf_counter() - started) * 1000
        recorded = True
        retry_in_ms: int | None = None
        retry_at: datetime.datetime | None = None
        try:
            if ctx.completed and outcome == COMPLETED:
                pass  # mark_completed() already wrote it, outside any transaction
            elif ctx.deferred_ms is not None and outcome == COMPLETED and not ctx.finalized:
                recorded = await store.defer(
                    held, ctx.deferred_ms, debounce, history_limit=policies.history_limit,
                    duration_ms=duration_ms,
                    reset_on_data_change=policies.retry.reset_on_data_change)
                outcome = "deferred"
            else:
                if outcome == FAILED:
                    attempts = int(held.doc.get("attempts", 1))
                    now = self.clock.now()
                    first_error = held.doc.get("firstErrorAt") or now
                    if not gives_up(policies.retry, attempts, first_error, now):
                        if policies.retry.strategy == "cron":
                            retry_at = cron_next(policies.retry, now)
                        else:
                            retry_in_ms = retry_delay_ms(policies.retry, attempts, now)
                # Fenced: if mark_completed()'s transaction committed, this matches nothing.
                recorded = await store.finalize(
                    held, outcome, error=error, retry_in_ms=retry_in_ms, retry_at=retry_at,
                    history_limit=policies.history_limit, duration_ms=duration_ms,
                    debounce=debounce,
                    reset_on_data_change=policies.retry.reset_on_data_change)
                if not recorded and ctx.finalized and await store.finalized_by(held):
                    recorded = True
                    if outcome != COMPLETED:
                        error = f"after mark_completed(): {error}"
                        outcome = COMPLETED
            if ctx.throttle_ms is not None:
                await self.throttle_sink(reactor, ctx.throttle_ms)
        except PyMongoError as exc:
            recorded = False
            error = f"{error or ''} (finalize failed: {exc})"
        fields: dict[str, Any] = {}
        if error and outcome == SKIPPED:
            fields["reason"] = error
        elif error:
            fields["error"] = error
        if outcome == FAILED and recorded:
            if retry_in_ms is not None:
                fields["retry_in_ms"] = retry_in_ms
            elif retry_at is not None:
                fields["retry_at"] = retry_at.isoformat()
            else:
                fields["final"] = True
        record_execution(reactor.name, outcome if recorded else "lease_lost", duration_ms / 1000)
        quiet = recorded and outcome in (COMPLETED, SKIPPED, "deferred") and "error" not in fields
        log_event(log, logging.INFO if quiet else logging.WARNING,
                  f"task {outcome}" if recorded else "task result discarded (lease lost)",
                  event="task.finished", reactor=reactor.name, task_id=held.task_id,
                  source_id=held.doc.get("sourceId"), attempt=held.doc.get("attempts"),
                  outcome=outcome if recorded else "lease_lost",
                  duration_ms=round(duration_ms, 1), instance=self.instance_id, **fields)

    async def drain(self, timeout_s: float) -> list[tuple[ReactorSpec, Claimed]]:
        """Stop claiming and wait for running handlers; returns the ones that did not finish."""
        self.scheduler.stopping = True
        self.scheduler.wake_all()
        running = list(self.in_flight)
        if running:
            await asyncio.wait(running, timeout=timeout_s)
        unfinished = [self.in_flight[t] for t in running if not t.done()]
        for task in running:
            if not task.done():
                task.cancel()
        for loop in self._loops:
            loop.cancel()
        # Bounded: a loop cancelled inside a claim whose server is gone honours the
        # cancellation only at the driver's server selection timeout.
        if self._loops:
            _, stuck = await asyncio.wait(self._loops, timeout=LOOP_STOP_S)
            for loop in stuck:
                loop.add_done_callback(consume_outcome)
        return unfinished
