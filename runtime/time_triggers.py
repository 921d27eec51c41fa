"""Time-driven triggers: plan documents whose filter verdict changed because time passed.

A filter such as ``{$lte: ["$dueAt", "$$NOW"]}`` starts matching at ``dueAt`` without any write,
so no change event reports it. The generator recognises such comparisons and compiles each into a
:class:`~runtime.reactor.TimeTrigger` (a field, an offset and an index on the field). The leader
keeps, per reactor, the server time up to which crossings were planned (``timePassAt`` in
``reactor:<name>``) and every :data:`PASS_INTERVAL_S` plans the documents whose moment
(``field + offset``) fell into ``(timePassAt, now]``: one index-served range query per trigger.

Windows are contiguous, so every crossing falls into exactly one window; a leader that dies
before recording a window makes its successor plan it again, which is a no-op for tasks already
planned. The upper bound stays :data:`SAFETY_MARGIN` behind the estimated server clock, so the
server's own ``$$NOW`` (which decides the match) has certainly passed the moment when the
document is planned. A new reactor starts its windows when it is first recorded; the documents
that already matched then are planned by its backfill scan.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import PyMongoError

from runtime.cancellation import raise_if_cancelled
from runtime.reactor import ReactorSpec
from runtime.structured_logging import log_event

log = logging.getLogger("runtime.time_triggers")
PASS_INTERVAL_S = 0.25
SAFETY_MARGIN = datetime.timedelta(milliseconds=100)
SAVE_EVERY = datetime.timedelta(seconds=2)
PLAN_BATCH = 500
MAX_BACKOFF_S = 5.0

PlanIds = Callable[[str, list[Any], list[ReactorSpec]], Awaitable[None]]


class PassStore(Protocol):
    """Where the time passes are recorded (``planning_state.py``: the reactor documents, or a
    partition's own document)."""

    async def time_passes(self) -> dict[str, datetime.datetime]:
        """Reactor -> server time up to which crossings were planned."""
        ...

    async def save_time_pass(self, reactor: str, at: datetime.datetime) -> None:
        """Record a pass (fenced)."""
        ...


class TimeTriggerPlanner:
    """The time windows of one database's reactors that have time triggers (leader only)."""

    def __init__(self, db: AsyncDatabase[Any], store: PassStore, reactors: list[ReactorSpec],
                 plan_ids: PlanIds, now: Callable[[], datetime.datetime],
                 only: dict[str, Any] | None = None) -> None:
        self.db = db
        self.store = store
        self.reactors = [r for r in reactors if r.time_triggers]
        self.plan_ids = plan_ids
        self.now = now
        self.only = only or {}
        """Extra query condition: the documents of this planner's partition."""
        self.passed: dict[str, datetime.datetime] = {}
        self._saved: dict[str, datetime.datetime] = {}

    async def run(self) -> None:
        """Plan crossings until cancelled."""
        if not self.reactors:
            return
        passes = await self.store.time_passes()
        start = self.now() - SAFETY_MARGIN
        for reactor in self.reactors:
            self.passed[reactor.name] = passes.get(reactor.name, start)
            self._saved[reactor.name] = self.passed[reactor.name]
        delay = PASS_INTERVAL_S
        while True:
            try:
                await self.run_once()
                delay = PASS_INTERVAL_S
            except PyMongoError as exc:
                raise_if_cancelled()
                log_event(log, logging.WARNING, "time-driven pass failed; retrying",
                          event="planner.time_pass_failed", database=self.db.name,
                          error=str(exc))
                delay = min(MAX_BACKOFF_S, delay * 2)
            await asyncio.sleep(delay)

    async def run_once(self) -> int:
        """One pass over every reactor's window; returns how many documents were planned."""
        upper = self.now() - SAFETY_MARGIN
        planned = 0
        for reactor in self.reactors:
            lower = self.passed[reactor.name]
            if upper <= lower:
                continue
            found = 0
            for trigger in reactor.time_triggers:
                offset = datetime.timedelta(milliseconds=trigger.offset_ms)
                cursor = self.db[reactor.collection].find(
                    {trigger.path: {"$gt": lower - offset, "$lte": upper - offset},
                     **self.only}, {"_id": 1})
                ids: list[Any] = []
                async for doc in cursor:
                    ids.append(doc["_id"])
                    if len(ids) >= PLAN_BATCH:
                        await self.plan_ids(reactor.collection, ids, [reactor])
                        found, ids = found + len(ids), []
                if ids:
                    await self.plan_ids(reactor.collection, ids, [reactor])
                    found += len(ids)
            self.passed[reactor.name] = upper
            if found:
                log_event(log, logging.DEBUG, "time-driven crossings planned",
                          event="planner.time_crossings", reactor=reactor.name,
                          documents=found, window_end=upper.isoformat())
            if found or upper - self._saved[reactor.name] >= SAVE_EVERY:
                await self.store.save_time_pass(reactor.name, upper)
                self._saved[reactor.name] = upper
            planned += found
        return planned
