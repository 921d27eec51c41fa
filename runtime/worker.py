"""Workers: claim due tasks, run handlers with a renewed lease, and finalize (fenced)."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
import traceback
from collections.abc import Awaitable, Callable
from typing import Any

from pydantic import ValidationError
from pymongo.errors import PyMongoError

from runtime.hooks import Hooks
from runtime.reactor import ReactorSpec
from runtime.retry_policies import gives_up, retry_delay_ms
from runtime.scheduler import Scheduler
from runtime.server_time import ServerClock
from runtime.structured_logging import log_event
from runtime.task_context import LeaseLost, RuntimeTaskContext, TaskSkipped
from runtime.task_store import COMPLETED, FAILED, SKIPPED, Claimed, TaskStore, debounce_expression

log = logging.getLogger("runtime.worker")
Handler = Callable[[Any], Any]
ThrottleSink = Callable[[ReactorSpec, int], Awaitable[None]]


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
                await scheduler.wait(scheduler.seconds_until_next(now))
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
        while True:
            await asyncio.sleep(self.renew_ms / 1000)
            try:
                if not await store.renew(held):
                    ctx.logger.warning("lease lost; this execution's results will be discarded")
                    return
            except PyMongoError as exc:
                ctx.logger.warning("lease renewal failed: %s", exc)

    async def _call_handler(self, reactor: ReactorSpec, ctx: RuntimeTaskContext) -> None:
        handler = self.handlers[reactor.name]

        async def call_next() -> None:
            if inspect.iscoroutinefunction(handler):
                await handler(ctx)
            else:
                result = await asyncio.to_thread(handler, ctx)
                if inspect.isawaitable(result):
                    await result

        await self.hooks.execution_wrapper(reactor, ctx, call_next)

    async def _execute(self, reactor: ReactorSpec, held: Claimed) -> None:
        store = self.stores[reactor.name]
        debounce = debounce_expression(reactor)
        ctx = RuntimeTaskContext(reactor, held, store, self.sources[reactor.name], log,
                                 debounce, asyncio.get_running_loop())
        renewal = asyncio.create_task(self._renew(store, held, ctx))
        started = time.perf_counter()
        outcome, error = COMPLETED, None
        timeout = reactor.policies.timeout_ms
        try:
            if timeout is not None:
                await asyncio.wait_for(self._call_handler(reactor, ctx), timeout / 1000)
            else:
                await self._call_handler(reactor, ctx)
        except TaskSkipped as exc:
            outcome, error = SKIPPED, str(exc)
        except TimeoutError:
            outcome, error = FAILED, f"handler timed out after {timeout} ms"
        except ValidationError as exc:
            outcome, error = FAILED, f"source document failed validation: {exc}"
        except LeaseLost as exc:
            outcome, error = FAILED, str(exc)
        except Exception as exc:  # the handler's failure is the task's, never the worker's
            outcome = FAILED
            error = "".join(traceback.format_exception_only(exc)).strip()
        finally:
            renewal.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewal
        duration_ms = (time.perf_counter() - started) * 1000
        recorded = True
        try:
            if ctx.finalized:
                pass
            elif ctx.deferred_ms is not None and outcome == COMPLETED:
                recorded = await store.defer(held, ctx.deferred_ms, debounce)
                outcome = "deferred"
            else:
                retry_at = None
                if outcome == FAILED:
                    attempts = int(held.doc.get("attempts", 1))
                    now = self.clock.now()
                    first_error = held.doc.get("firstErrorAt") or now
                    if not gives_up(reactor.policies.retry, attempts, first_error, now):
                        retry_at = retry_delay_ms(reactor.policies.retry, attempts, now)
                recorded = await store.finalize(
                    held, outcome, error=error, retry_at_ms=retry_at,
                    history_limit=reactor.policies.history_limit, duration_ms=duration_ms,
                    debounce=debounce)
            if ctx.throttle_ms is not None:
                await self.throttle_sink(reactor, ctx.throttle_ms)
        except PyMongoError as exc:
            recorded = False
            error = f"{error or ''} (finalize failed: {exc})"
        log_event(log, logging.INFO if outcome in (COMPLETED, SKIPPED, "deferred")
                  else logging.WARNING,
                  f"task {outcome}" if recorded else "task result discarded (lease lost)",
                  event="task.finished", reactor=reactor.name, task_id=held.task_id,
                  source_id=held.doc.get("sourceId"), attempt=held.doc.get("attempts"),
                  outcome=outcome if recorded else "lease_lost",
                  duration_ms=round(duration_ms, 1), instance=self.instance_id,
                  **({"error": error} if error and outcome == FAILED else {}))

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
        for loop in self._loops:
            with contextlib.suppress(asyncio.CancelledError):
                await loop
        return unfinished
