"""The cron planner (leader only): one task document per occurrence of every cron job.

While this instance leads, :class:`CronPlanner` sleeps until the next occurrence of any job,
then upserts one task per due occurrence into ``reactgen_cron_tasks`` (runtime database), keyed
``{reactor: <job>, sourceId: <scheduled time>}`` and due at the scheduled time, and records the
newest decided occurrence in ``reactgen_meta`` (``cron:<job>``, through :class:`MetaStore`).
Workers on every instance then claim, run, retry and time out the task like any reactor task.

Why each occurrence runs once cluster-wide: the unique task key makes an occurrence one
document whoever plans it, however often (a new leader re-plans from the last *saved*
occurrence, and re-planning an existing task changes nothing); the fenced claim makes one
worker run it at a time. Every planner write carries the leadership token, as the reactor
planner's do: a deposed leader's upsert collides with the unique key and raises
:class:`~runtime.meta.Deposed`, and its meta writes are refused.

Occurrences more than ``startingDeadline`` late when a leader looks (the cluster was down) are
*missed*; the job's ``catchUp`` policy decides which of them still run (``runtime.cron_schedule
.plan``). Finished occurrences beyond the newest ``keepLast`` get ``expiresAt`` (finish +
``keepFor``) and the TTL index removes them.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import time
from collections.abc import Callable
from typing import Any

from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from runtime.cron_schedule import latest_at_or_before, next_after, plan
from runtime.cron_spec import CRON_TASKS_COLLECTION, CronSpec, CronTrigger
from runtime.meta import Deposed, MetaStore
from runtime.middleware import Middleware
from runtime.structured_logging import log_event
from runtime.task_store import COMPLETED, FAILED, PENDING, SKIPPED

log = logging.getLogger("runtime.cron")
MAX_SLEEP = datetime.timedelta(seconds=1)
"""The planner looks at least this often (clock resynchronisations, new leaders' state)."""
SWEEP_INTERVAL_S = 5.0
"""How often the finished occurrences of a job are checked for expiry."""
FINISHED = [COMPLETED, FAILED, SKIPPED]
Clock = Callable[[], datetime.datetime]


def occurrence_update(spec: CronSpec, scheduled_for: datetime.datetime, trigger: CronTrigger,
                      leader_token: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Filter and update pipeline that create the task of one occurrence (an upsert).

    Fenced like the reactor planner's task writes: the filter matches only while the stored
    ``plannerToken`` is not newer. An existing task keeps every field but the token, so
    planning an occurrence twice (a new leader re-planning after a crash) changes nothing.
    """
    new = {"$eq": [{"$type": "$status"}, "missing"]}
    query = {"reactor": spec.name, "sourceId": scheduled_for,
             "plannerToken": {"$not": {"$gt": leader_token}}}
    update: list[dict[str, Any]] = [{"$set": {
        "reactor": spec.name,
        "sourceId": {"$literal": scheduled_for},
        "scheduledFor": {"$ifNull": ["$scheduledFor", {"$literal": scheduled_for}]},
        "trigger": {"$ifNull": ["$trigger", trigger.value]},
        "status": {"$ifNull": ["$status", PENDING]},
        "nextRunAt": {"$cond": [new, {"$literal": scheduled_for}, "$nextRunAt"]},
        "dueAt": {"$cond": [new, {"$literal": scheduled_for}, "$dueAt"]},
        "attempts": {"$ifNull": ["$attempts", 0]},
        "createdAt": {"$ifNull": ["$createdAt", "$$NOW"]},
        "updatedAt": {"$ifNull": ["$updatedAt", "$$NOW"]},
        "plannerToken": leader_token,
    }}]
    return query, update


def manual_task(spec: CronSpec, at: datetime.datetime, by: str) -> dict[str, Any]:
    """The task document of a manual run requested at ``at`` (server time): due at once."""
    return {"reactor": spec.name, "sourceId": at, "scheduledFor": at,
            "trigger": CronTrigger.MANUAL.value, "requestedBy": by, "status": PENDING,
            "nextRunAt": at, "dueAt": at, "attempts": 0, "createdAt": at, "updatedAt": at}


def expiry_update(spec: CronSpec) -> list[dict[str, Any]]:
    """``expiresAt`` of a finished occurrence: ``keepFor`` after it finished."""
    return [{"$set": {"expiresAt": {"$add": [{"$ifNull": ["$lastFinalizedAt", "$$NOW"]},
                                             spec.keep_for_ms]}}}]


class CronPlanner:
    """Plans the occurrences of every cron job while this instance leads (a leader job)."""

    def __init__(self, db: AsyncDatabase[Any], crons: list[CronSpec], now: Clock,
                 middleware: Middleware | None = None) -> None:
        self.meta = MetaStore(db)
        self.tasks: AsyncCollection[dict[str, Any]] = db[CRON_TASKS_COLLECTION]
        self.crons = crons
        self.now = now
        self.middleware = middleware
        self._swept: dict[str, float] = {}

    async def run(self, leader_token: int) -> None:
        """Plan until cancelled (leadership lost) or deposed."""
        if not self.crons:
            return
        states = await self.meta.cron_states()
        cursors: dict[str, datetime.datetime] = {}
        for spec in self.crons:
            cursors[spec.name] = await self._start(spec, states.get(spec.name), leader_token)
        while True:
            now = self.now()
            wake = now + MAX_SLEEP
            for spec in self.crons:
                cursors[spec.name] = await self._plan(spec, cursors[spec.name], now,
                                                      leader_token)
                wake = min(wake, next_after(spec.schedule, cursors[spec.name]))
                if time.monotonic() - self._swept.get(spec.name, -SWEEP_INTERVAL_S) \
                        >= SWEEP_INTERVAL_S:
                    await self.sweep(spec)
                    self._swept[spec.name] = time.monotonic()
            await asyncio.sleep(max(0.0, (wake - self.now()).total_seconds()))

    async def _start(self, spec: CronSpec, state: dict[str, Any] | None,
                     leader_token: int) -> datetime.datetime:
        """The newest decided occurrence of a job; a new job (or a changed schedule) starts
        at now: occurrences before it existed are not missed."""
        last = (state or {}).get("lastPlanned")
        if (state is not None and state.get("schedule") == spec.schedule.fingerprint
                and isinstance(last, datetime.datetime)):
            return last
        now = self.now()
        start = latest_at_or_before(spec.schedule, now)
        await self.meta.save_cron(spec.name, {"schedule": spec.schedule.fingerprint,
                                              "describe": spec.schedule.describe(),
                                              "lastPlanned": start, "since": now},
                                  leader_token)
        log_event(log, logging.INFO, "cron job starts planning", event="cron.started",
                  cron=spec.name, schedule=spec.schedule.describe(),
                  first=next_after(spec.schedule, start).isoformat(),
                  changed=state is not None)
        return start

    async def _plan(self, spec: CronSpec, last: datetime.datetime, now: datetime.datetime,
                    leader_token: int) -> datetime.datetime:
        decided = plan(spec.schedule, last, now, spec.catch_up, spec.max_catch_up,
                       spec.starting_deadline_ms)
        if decided.through is None:
            return last
        planned = ([(t, CronTrigger.CATCH_UP) for t in decided.caught_up]
                   + [(t, CronTrigger.SCHEDULE) for t in decided.on_time])
        for scheduled_for, trigger in planned:
            await self._upsert(spec, scheduled_for, trigger, leader_token)
            log_event(log, logging.DEBUG, "cron occurrence planned", event="cron.planned",
                      cron=spec.name, scheduled_for=scheduled_for.isoformat(),
                      trigger=trigger.value, late_ms=round(
                          (now - scheduled_for).total_seconds() * 1000))
        fields: dict[str, Any] = {"lastPlanned": decided.through}
        if decided.missed:
            fields["lastMissed"] = {"count": decided.missed, "caughtUp": len(decided.caught_up),
                                    "first": decided.first_missed, "last": decided.last_missed,
                                    "policy": spec.catch_up.value, "at": now}
            log_event(log, logging.WARNING, "cron occurrences missed", event="cron.missed",
                      cron=spec.name, missed=decided.missed, caught_up=len(decided.caught_up),
                      policy=spec.catch_up.value,
                      first=decided.first_missed.isoformat() if decided.first_missed else None,
                      last=decided.last_missed.isoformat() if decided.last_missed else None)
        await self.meta.save_cron(spec.name, fields, leader_token)
        if planned and self.middleware is not None:
            self.middleware.on_planned(spec.name, len(planned))
        return decided.through

    async def _upsert(self, spec: CronSpec, scheduled_for: datetime.datetime,
                      trigger: CronTrigger, leader_token: int) -> None:
        query, update = occurrence_update(spec, scheduled_for, trigger, leader_token)
        for _ in range(3):
            try:
                await self.tasks.update_one(query, update, upsert=True)
                return
            except DuplicateKeyError:
                # Either a newer leader owns the task (stop), or two upserts of ours raced
                # to insert it (the retry matches).
                newer = await self.tasks.find_one(
                    {"reactor": spec.name, "sourceId": scheduled_for,
                     "plannerToken": {"$gt": leader_token}}, {"_id": 1})
                if newer is not None:
                    raise Deposed(f"cron task {spec.name}@{scheduled_for.isoformat()} is "
                                  "owned by a newer leader") from None
        raise RuntimeError(f"cron task {spec.name}@{scheduled_for.isoformat()} could not be "
                           "planned (its key kept colliding)")

    async def sweep(self, spec: CronSpec) -> int:
        """Give finished occurrences beyond the newest ``keep_last`` their ``expiresAt``;
        returns how many. Not fenced: any leader would decide the same."""
        boundary = await self.tasks.find_one({"reactor": spec.name}, {"sourceId": 1},
                                             sort=[("sourceId", -1)], skip=spec.keep_last)
        if boundary is None:
            return 0
        result = await self.tasks.update_many(
            {"reactor": spec.name, "sourceId": {"$lte": boundary["sourceId"]},
             "status": {"$in": FINISHED}, "expiresAt": {"$exists": False}},
            expiry_update(spec))
        return result.modified_count
