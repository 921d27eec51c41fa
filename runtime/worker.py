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
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import replace
from typing import Any, Protocol

from pydantic import ValidationError
from pymongo.errors import PyMongoError

from runtime.cancellation import consume_outcome, raise_if_cancelled
from runtime.claims import Claimer, FlowLimit, is_limited
from runtime.eager_dispatch import Reservation, can_dispatch_eagerly
from runtime.middleware import Middleware
from runtime.outcome import Outcome, OutcomeKind
from runtime.rate_limit import RateLimiter
from runtime.reactor import ReactorSpec
from runtime.retry_policies import cron_next, gives_up, retry_delay_ms
from runtime.scheduler import Scheduler
from runtime.server_time import ServerClock
from runtime.structured_logging import log_event
from runtime.task_context import RuntimeTaskContext, TaskSkipped
from runtime.task_store import FAILED, Claimed, TaskStore, debounce_expression
from runtime.tracebacks import user_traceback

log = logging.getLogger("runtime.worker")
LOOP_STOP_S = 2.0
FINALIZING_PER_SLOT = 2
"""In-flight executions (running or being recorded) per slot of ``concurrency``."""
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


class ExecutionState(Protocol):
    """What :func:`decide_outcome` reads from an execution's context."""

    @property
    def deferred_ms(self) -> int | None:
        """Set by ``ctx.defer()``."""

    @property
    def finalized(self) -> bool:
        """True once ``ctx.mark_completed()`` wrote the completion."""

    @property
    def invalid_document(self) -> bool:
        """True when ``ctx.get_document()`` failed the model's validation."""


def decide_outcome(reactor: ReactorSpec, task: Mapping[str, Any], ctx: ExecutionState,
                   failure: BaseException | None, timed_out: bool, duration_s: float,
                   now: datetime.datetime) -> Outcome:
    """The outcome of one execution of ``task`` (pure: the retry policy decides, nothing is
    written). ``now`` is the server's time, naive UTC. Shared by the worker and
    :mod:`runtime.testing`, so a handler test sees exactly what the worker would apply."""
    policies = reactor.policies
    if failure is None:
        if ctx.deferred_ms is not None and not ctx.finalized:
            return Outcome(OutcomeKind.DEFERRED, duration_s, defer_ms=ctx.deferred_ms)
        return Outcome(OutcomeKind.COMPLETED, duration_s)
    if isinstance(failure, TaskSkipped):
        return Outcome(OutcomeKind.SKIPPED, duration_s, error=str(failure))
    if timed_out:
        error = f"handler timed out after {policies.timeout_ms} ms"
    elif isinstance(failure, ValidationError) and ctx.invalid_document:
        error = f"source document failed validation: {failure}"
    else:
        error = _describe(failure)
    trace = user_traceback(failure)
    attempts = int(task.get("attempts", 1))
    first_error = task.get("firstErrorAt") or now
    if gives_up(policies.retry, attempts, first_error, now):
        return Outcome(OutcomeKind.FAILED, duration_s, error=error, traceback=trace)
    if policies.retry.strategy == "cron":
        return Outcome(OutcomeKind.RETRY, duration_s, error=error, traceback=trace,
                       retry_at=cron_next(policies.retry, now))
    return Outcome(OutcomeKind.RETRY, duration_s, error=error, traceback=trace,
                   retry_in_ms=retry_delay_ms(policies.retry, attempts, now))



class WorkerPool:
    """Up to ``concurrency`` executions at once, started by one dispatcher that claims due
    tasks in rounds (:mod:`runtime.claims`) when the scheduler says a reactor is due."""

    def __init__(self, reactors: dict[str, ReactorSpec], handlers: dict[str, Handler],
                 stores: dict[str, TaskStore], sources: dict[str, Any], scheduler: Scheduler,
                 clock: ServerClock, middleware: Middleware, concurrency: int, renew_ms: int,
                 instance_id: str, throttle_sink: ThrottleSink,
                 limiter: RateLimiter | None = None) -> None:
        self.reactors = reactors
        self.handlers = handlers
        self.stores = stores
        self.sources = sources
        self.scheduler = scheduler
        self.clock = clock
        self.middleware = middleware
        self.concurrency = concurrency
        self.renew_ms = renew_ms
        self.instance_id = instance_id
        self.throttle_sink = throttle_sink
        self.in_flight: dict[asyncio.Task[None], tuple[ReactorSpec, Claimed]] = {}
        """Every execution until its outcome is recorded."""
        self.handling: set[asyncio.Task[None]] = set()
        """The executions whose handler is still running: what ``concurrency`` counts."""
        self.claimer = Claimer(reactors, stores, limiter)
        self.reserved: Counter[str] = Counter()
        """Slots promised to tasks the local planner's write is claiming (eager dispatch)."""
        self._draining = False
        self._releases: set[asyncio.Task[bool]] = set()
        self._slot_freed = asyncio.Event()
        self._loops: list[asyncio.Task[None]] = []

    def start(self) -> None:
        """Start claiming (one dispatcher: it claims in rounds and starts the executions)."""
        self._loops = [asyncio.create_task(self._dispatch(), name="worker-dispatch")]

    def _capacity(self) -> int:
        """Executions this instance may start now: ``concurrency`` handlers at once. A slot is
        free again when the handler returns, while its outcome is still being written (the
        next claim round overlaps that write); at most ``concurrency`` outcomes wait to be
        written, so a slow database slows the claims down too."""
        reserved = self.reserved.total()
        return min(self.concurrency - len(self.handling) - reserved,
                   FINALIZING_PER_SLOT * self.concurrency - len(self.in_flight) - reserved)

    def _free(self, name: str) -> int:
        """Executions of ``name`` this instance may start now (per-instance limits)."""
        free = self._capacity()
        limit = self.reactors[name].policies.concurrency
        if limit is not None:
            free = min(free, limit - self.scheduler.running[name])
        return free

    # -- eager dispatch (runtime.eager_dispatch): the local planner's new tasks ------------

    def reserve(self, reactor: ReactorSpec, wanted: int) -> Reservation | None:
        """Promise up to ``wanted`` free slots to tasks of ``reactor`` that the local planner is
        about to write claimed, if the reactor has no known due work here (they would overtake
        it) and may run now."""
        name = reactor.name
        if not (not self._draining and can_dispatch_eagerly(reactor)
                and name in self.handlers and name in self.stores
                and self.scheduler.idle(name, self.clock.now())):
            return None
        slots = min(wanted, self._free(name))
        if slots <= 0:
            return None
        # Counted as running at once, so that the scheduler's per-instance limit holds while
        # the planner's write is on its way.
        self.reserved[name] += slots
        self.scheduler.running[name] += slots
        return Reservation(self.stores[name], slots)

    def give_back(self, reactor: ReactorSpec, slots: int) -> None:
        """Reserved slots whose tasks were not claimed are free again."""
        self.reserved[reactor.name] -= slots
        self.scheduler.running[reactor.name] -= slots
        self.scheduler.execution_ended(reactor.name)
        self._slot_freed.set()

    def run_reserved(self, reactor: ReactorSpec, held: list[Claimed], seconds: float) -> None:
        """Run reserved tasks, claimed by a write that took ``seconds``. Once draining has begun
        they are given back instead (due at once, for any instance)."""
        self.reserved[reactor.name] -= len(held)
        self.scheduler.running[reactor.name] -= len(held)  # _start counts each again
        for task in held:
            if self._draining:
                release = asyncio.create_task(self.stores[reactor.name].release(task))
                self._releases.add(release)
                release.add_done_callback(self._releases.discard)
                release.add_done_callback(consume_outcome)
                continue
            self.middleware.on_claim(reactor.name, True, seconds)
            self._start(reactor, task)

    async def _dispatch(self) -> None:
        scheduler = self.scheduler
        while not scheduler.stopping:
            if self._capacity() <= 0:
                self._slot_freed.clear()
                await self._slot_freed.wait()
                # Executions finalized by the same bulk write end together: let their done
                # callbacks run, so the next round claims for all the slots they freed.
                for _ in range(2):
                    await asyncio.sleep(0)
                continue
            now = self.clock.now()
            name = scheduler.next_reactor(now)
            if name is None:
                await scheduler.sleep(now)
                continue
            wanted = max(1, min(self._free(name), self.claimer.batch_size(name)))
            asked = time.perf_counter()
            try:
                result = await self.claimer.claim(name, now, wanted)
            except PyMongoError as exc:
                log_event(log, logging.WARNING, "claim failed", event="task.claim_error",
                          reactor=name, error=str(exc))
                scheduler.missed(name, now)
                await scheduler.wait(0.5)
                continue
            took = time.perf_counter() - asked
            for _ in range(len(result.claimed) or 1):
                self.middleware.on_claim(name, bool(result.claimed), took)
            for held in result.claimed:
                self._start(self.reactors[name], held)
            if result.blocked:
                self.middleware.on_claim_limited(name, FlowLimit.CONCURRENCY)
            if result.retry_after_ms:
                self.middleware.on_claim_limited(name, FlowLimit.RATE)
                scheduler.throttle(
                    name, now + datetime.timedelta(milliseconds=result.retry_after_ms))
            if result.blocked:
                scheduler.blocked(name, now)
            elif result.contended or (len(result.claimed) == result.wanted
                                      and not result.exhausted):
                scheduler.claimed(name, now)
            else:
                scheduler.missed(name, now)

    def _start(self, reactor: ReactorSpec, held: Claimed) -> None:
        self.scheduler.running[reactor.name] += 1
        execution = asyncio.create_task(self._execute(reactor, held))
        self.in_flight[execution] = (reactor, held)
        self.handling.add(execution)
        execution.add_done_callback(functools.partial(self._ended, reactor))

    def _handler_returned(self, reactor: ReactorSpec, execution: asyncio.Task[Any] | None
                          ) -> None:
        """The handler of ``execution`` is no longer running: its slot is free."""
        if execution in self.handling:
            self.handling.discard(execution)
            self.scheduler.running[reactor.name] -= 1
            self.scheduler.execution_ended(reactor.name)
            self._slot_freed.set()

    def _ended(self, reactor: ReactorSpec, execution: asyncio.Task[None]) -> None:
        self.in_flight.pop(execution, None)
        self._handler_returned(reactor, execution)
        if not execution.cancelled() and execution.exception() is not None:
            log.error("execution of %s failed unexpectedly", reactor.name,
                      exc_info=execution.exception())
        if is_limited(reactor):
            # Its slots are free now: due work that waited for them may go.
            self.scheduler.slot_freed(reactor.name)
        self._slot_freed.set()

    async def _renew(self, store: TaskStore, held: Claimed, ctx: RuntimeTaskContext,
                     reactor: str) -> None:
        """Renew the lease every ``renew_ms`` until the execution ends; started by the timer of
        :meth:`_execute` once the first interval has passed (the first wait is behind us)."""
        while not ctx.finalized:
            try:
                if await store.renew(held):
                    self.middleware.on_lease_renewed(reactor)
                else:
                    self.middleware.on_lease_lost(reactor)
                    if not ctx.finalized:
                        ctx.logger.warning("lease lost; this execution's results will be "
                                           "discarded")
                    return
            except PyMongoError as exc:
                raise_if_cancelled()
                ctx.logger.warning("lease renewal failed: %s", exc)
            await asyncio.sleep(self.renew_ms / 1000)

    async def _call_handler(self, reactor: ReactorSpec, ctx: RuntimeTaskContext) -> None:
        handler = self.handlers[reactor.name]

        async def call_next() -> None:
            if inspect.iscoroutinefunction(handler):
                await handler(ctx)
            else:
                result = await _in_thread(handler, ctx, f"reactgen-{reactor.name}")
                if inspect.isawaitable(result):
                    await result

        await self.middleware.around_execution(reactor, ctx, call_next)

    async def _execute(self, reactor: ReactorSpec, held: Claimed) -> None:
        """Run the handler, decide the outcome, apply it, tell the middleware."""
        store = self.stores[reactor.name]
        debounce = debounce_expression(reactor)
        loop = asyncio.get_running_loop()
        ctx = RuntimeTaskContext(reactor, held, store, self.sources[reactor.name], log,
                                 debounce, loop)
        self.middleware.before_execution(reactor, held.doc)
        self._report_start_delay(reactor, held)
        # Most handlers end well within the first renewal interval: a timer, not a task,
        # waits for it, and the renewal task is started only when it fires.
        renewal: list[asyncio.Task[None]] = []

        def start_renewal() -> None:
            if not ctx.finalized:
                renewal.append(loop.create_task(self._renew(store, held, ctx, reactor.name)))

        timer = loop.call_later(self.renew_ms / 1000, start_renewal)
        started = time.perf_counter()
        failure: BaseException | None = None
        timed_out = False
        timeout = reactor.policies.timeout_ms
        try:
            if timeout is None:
                await self._call_handler(reactor, ctx)
            else:
                deadline = asyncio.timeout(timeout / 1000)
                try:
                    async with deadline:
                        await self._call_handler(reactor, ctx)
                except TimeoutError:
                    timed_out = deadline.expired()
                    raise
        except Exception as exc:  # the handler's failure is the task's, never the worker's
            failure = exc
        finally:
            timer.cancel()
            for task in renewal:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        outcome = self._decide(reactor, held, ctx, failure, timed_out,
                               time.perf_counter() - started)
        self._handler_returned(reactor, asyncio.current_task())
        outcome = await self._apply(reactor, store, held, ctx, debounce, outcome)
        self.middleware.after_execution(reactor, held.doc, outcome)

    def _report_start_delay(self, reactor: ReactorSpec, held: Claimed) -> None:
        due, started = held.doc.get("claimedDue"), held.doc.get("startedAt")
        if isinstance(due, datetime.datetime) and isinstance(started, datetime.datetime):
            self.middleware.on_start_delay(reactor.name,
                                           max(0.0, (started - due).total_seconds()))

    def _decide(self, reactor: ReactorSpec, held: Claimed, ctx: RuntimeTaskContext,
                failure: BaseException | None, timed_out: bool, duration_s: float) -> Outcome:
        """The outcome of an execution (pure: the retry policy decides, nothing is written)."""
        return decide_outcome(reactor, held.doc, ctx, failure, timed_out, duration_s,
                              self.clock.now())

    async def _apply(self, reactor: ReactorSpec, store: TaskStore, held: Claimed,
                     ctx: RuntimeTaskContext, debounce: Any, outcome: Outcome) -> Outcome:
        """Record ``outcome`` on the task (fenced): the one place an execution's end is
        written. Returns the outcome as recorded (``LEASE_LOST`` if it could not be)."""
        policies = reactor.policies
        kind = outcome.kind
        duration_ms = outcome.duration_s * 1000
        try:
            if ctx.completed and kind is OutcomeKind.COMPLETED:
                recorded = True  # mark_completed() already wrote it
            elif kind is OutcomeKind.DEFERRED:
                recorded = await store.defer(
                    held, outcome.defer_ms or 0, debounce, history_limit=policies.history_limit,
                    duration_ms=duration_ms,
                    reset_on_data_change=policies.retry.reset_on_data_change)
            else:
                status = FAILED if kind in (OutcomeKind.RETRY, OutcomeKind.FAILED) else kind.value
                recorded = await store.finalize(
                    held, status, error=outcome.error, traceback=outcome.traceback,
                    retry_in_ms=outcome.retry_in_ms, retry_at=outcome.retry_at,
                    history_limit=policies.history_limit, duration_ms=duration_ms,
                    debounce=debounce,
                    reset_on_data_change=policies.retry.reset_on_data_change)
                if not recorded and ctx.finalized and await store.finalized_by(held):
                    # mark_completed(session) committed: the execution completed, whatever
                    # happened after it.
                    recorded = True
                    if kind is not OutcomeKind.COMPLETED:
                        outcome = replace(outcome, kind=OutcomeKind.COMPLETED,
                                          error=f"after mark_completed(): {outcome.error}")
            if ctx.throttle_ms is not None:
                await self.throttle_sink(reactor, ctx.throttle_ms)
        except PyMongoError as exc:
            return outcome.lost(f"finalize failed: {exc}")
        return outcome if recorded else outcome.lost()

    async def drain(self, timeout_s: float) -> list[tuple[ReactorSpec, Claimed]]:
        """Stop claiming and wait for running handlers; returns the ones that did not finish."""
        self.scheduler.stopping = True
        self._draining = True
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
