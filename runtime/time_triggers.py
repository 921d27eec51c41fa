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
from typing import Any

from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import PyMongoError

from runtime.cancellation import raise_if_cancelled
from runtime.meta import MetaStore
from runtime.reactor import ReactorSpec
from runtime.structured_logging import log_event

log = logging.getLogger("runtime.time_triggers")
PASS_INTERVAL_S = 0.25
SAFETY_MARGIN = datetime.timedelta(milliseconds=100)
SAVE_EVERY = datetime.timedelta(seconds=2)
PLAN_BATCH = 500
MAX_BACKOFF_S = 5.0

PlanIds = Callable[[str, list[Any], list[ReactorSpec]], Awaitable[None]]


class TimeTriggerPlanner:
    """The time windows of one database's reactors that have time triggers (leader only)."""

    def __init__(self, db: AsyncDatabase[Any], meta: MetaStore, reactors: list[ReactorSpec],
                 plan_ids: PlanIds, now: Callable[[], datetime.datetime],
                 leader_token: int) -> None:
        self.db = db
        self.meta = meta
        self.reactors = [r for r in reactors if r.time_triggers]
        self.plan_ids = plan_ids
        self.now = now
        self.leader_token = leader_token
        self.passed: dict[str, datetime.datetime] = {}
        self._saved: dict[str, datetime.datetime] = {}

    async def run(self) -> None:
        """Plan crossings until cancelled."""
        if not self.reactors:
            return
        states = await self.meta.reactors()
        start = self.now() - SAFETY_MARGIN
        for reactor in self.reactors:
            passed = (states.get(reactor.name) or {}).get("timePassAt")
            self.passed[reactor.name] = passed if isinstance(passed, datetime.datetime) else start
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
                    {trigger.path: {"$gt": lower - offset, "$lte": upper - offset}}, {"_id": 1})
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
                await self.meta.save_reactor(reactor.name, {"timePassAt": upper},
                                             self.leader_token)
                self._saved[reactor.name] = upper
            planned += found
        return planned
