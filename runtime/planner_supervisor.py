"""The leader's planning supervisor: runs every database planner and the leader's one-off jobs
while this instance leads, restarts what crashes, stops when deposed."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from runtime.cancellation import consume_outcome, raise_if_cancelled
from runtime.meta import Deposed
from runtime.planner import MAX_BACKOFF_S, DatabasePlanner
from runtime.structured_logging import log_event

log = logging.getLogger("runtime.planner")
STOP_WAIT_S = 2.0

LeaderJob = Callable[[int], Awaitable[None]]


class Planner:
    """Runs one :class:`DatabasePlanner` per database, and the leader's one-off jobs, while
    this instance leads."""

    def __init__(self, factories: list[Callable[[int], DatabasePlanner]],
                 jobs: list[LeaderJob] | None = None,
                 on_deposed: Callable[[], None] | None = None) -> None:
        self.factories = factories
        self.jobs = jobs or []
        self.on_deposed = on_deposed
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self, leader_token: int) -> None:
        """Start planning (called when leadership is gained)."""
        await self.stop()
        self._tasks = [asyncio.create_task(self._supervise(_runner(f, leader_token)))
                       for f in self.factories]
        self._tasks += [asyncio.create_task(self._supervise(_job(job, leader_token)))
                        for job in self.jobs]

    async def _supervise(self, run: Callable[[], Awaitable[None]]) -> None:
        delay = 0.2
        while True:
            try:
                await run()
                return
            except Exception as exc:
                raise_if_cancelled()
                errors = [exc]
                deposed = [e for e in errors if isinstance(e, Deposed)]
                if deposed:
                    log_event(log, logging.WARNING,
                              "a newer leader took over; this planner stops",
                              event="planner.deposed", error=str(deposed[0]))
                    if self.on_deposed is not None:
                        self.on_deposed()
                    return
                log_event(log, logging.ERROR, "planner crashed; restarting",
                          event="planner.crashed", error="; ".join(repr(e) for e in errors))
            await asyncio.sleep(delay)
            delay = min(MAX_BACKOFF_S, delay * 2)

    async def stop(self) -> None:
        """Stop planning (leadership lost or shutdown)."""
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        # Bounded: a planner cancelled inside a getMore whose server is gone honours the
        # cancellation only at the driver's server selection timeout; it is left to end alone
        # (its writes are fenced by the leadership token anyway).
        if tasks:
            _, stuck = await asyncio.wait(tasks, timeout=STOP_WAIT_S)
            for task in stuck:
                task.add_done_callback(consume_outcome)


def _runner(factory: Callable[[int], DatabasePlanner],
            token: int) -> Callable[[], Awaitable[None]]:
    async def run() -> None:
        await factory(token).run()
    return run


def _job(job: LeaderJob, token: int) -> Callable[[], Awaitable[None]]:
    async def run() -> None:
        await job(token)
    return run
