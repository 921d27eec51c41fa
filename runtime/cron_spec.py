"""What a cron job is at run time: its schedule, catch-up policy, policies and handler.

``reactgen build`` compiles every ``*.cron.yaml`` into a module that constructs a
:class:`CronSpec`; the generated registry lists them in ``CRONS``. A :class:`CronSpec` *is* a
:class:`~runtime.reactor.ReactorSpec` whose tasks live in ``reactgen_cron_tasks`` of the
runtime's database and which has no source collection: the workers claim, run, retry, time out
and record its executions exactly like a reactor's (see docs/cron.md). Durations are
milliseconds.
"""

from __future__ import annotations

import abc
import datetime
import logging
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from pydantic import BaseModel
from pymongo.asynchronous.database import AsyncDatabase

from runtime.reactor import Policies, ReactorSpec

CRON_COLLECTION = "reactgen_cron"
"""The (never written) pseudo source collection of cron jobs; their tasks live in
``reactgen_cron_tasks`` (``<collection>_tasks``) in the runtime's database."""
CRON_TASKS_COLLECTION = f"{CRON_COLLECTION}_tasks"
DEFAULT_STARTING_DEADLINE_MS = 10_000
DEFAULT_MAX_CATCH_UP = 10
DEFAULT_KEEP_LAST = 100


class ScheduleKind(StrEnum):
    """How a schedule is written."""

    CRON = "cron"
    """A five-field cron expression, evaluated in the job's time zone."""
    EVERY = "every"
    """A fixed interval, counted from the Unix epoch (UTC)."""


class CatchUp(StrEnum):
    """What happens to occurrences missed while no leader could plan them (downtime)."""

    NONE = "none"
    """Skip every missed occurrence; the next one runs as scheduled."""
    LATEST = "latest"
    """Run once, for the most recent missed occurrence (the default)."""
    ALL = "all"
    """Run every missed occurrence, oldest first, at most ``maxCatchUp`` (the newest ones)."""


class CronTrigger(StrEnum):
    """Why a cron task exists (``trigger`` in its task document)."""

    SCHEDULE = "schedule"
    """Planned for its scheduled time (possibly late, within the starting deadline)."""
    CATCH_UP = "catchUp"
    """A missed occurrence re-planned by the catch-up policy."""
    MANUAL = "manual"
    """``runtime cron run-now`` / ``Management.run_cron_now``."""


@dataclass(frozen=True)
class Schedule:
    """When a job runs: a cron expression in ``timezone``, or every ``every_ms``."""

    kind: ScheduleKind
    expression: str | None = None
    every_ms: int | None = None
    timezone: str = "UTC"

    def describe(self) -> str:
        """``0 2 * * * (Europe/Berlin)`` or ``every 30000 ms``, for logs and listings."""
        if self.kind is ScheduleKind.EVERY:
            return f"every {self.every_ms} ms"
        return f"{self.expression} ({self.timezone})"

    @property
    def fingerprint(self) -> str:
        """Identity of the schedule: when it changes, planning restarts at now."""
        if self.kind is ScheduleKind.EVERY:
            return f"every:{self.every_ms}"
        return f"cron:{self.expression}@{self.timezone}"


class NoDocument(BaseModel):
    """Cron jobs have no source document; this stands in for the reactor's models."""


@dataclass(frozen=True)
class CronSpec(ReactorSpec):
    """One compiled cron definition (a reactor without a source collection)."""

    collection: str = CRON_COLLECTION
    database: str | None = None
    model: type[BaseModel] = NoDocument
    watched_model: type[BaseModel] = NoDocument
    filter: dict[str, Any] = field(default_factory=dict)
    watch: dict[str, Any] | None = None
    pipeline: list[dict[str, Any]] = field(default_factory=list)
    policies: Policies = field(default_factory=Policies)
    handler: str = ""
    trigger_fingerprint: str = ""
    source: str = ""
    schedule: Schedule = field(default_factory=lambda: Schedule(ScheduleKind.EVERY, None, 60_000))
    catch_up: CatchUp = CatchUp.LATEST
    max_catch_up: int = DEFAULT_MAX_CATCH_UP
    starting_deadline_ms: int = DEFAULT_STARTING_DEADLINE_MS
    keep_last: int = DEFAULT_KEEP_LAST
    description: str = ""

    @property
    def keep_for_ms(self) -> int:
        """How long a finished occurrence beyond ``keep_last`` is kept (``cleanup.keepFor``)."""
        return self.policies.cleanup.keep_for_ms


class CronContext(abc.ABC):
    """What a cron job's handler gets for one execution of one occurrence."""

    scheduled_for: datetime.datetime
    """The occurrence this execution is for (timezone-aware, UTC); for a manual run, when it
    was requested. Retries of an occurrence keep it."""

    trigger: CronTrigger
    """Why the occurrence runs: on schedule, caught up after downtime, or manually."""

    attempt: int
    """1 for the first execution of this occurrence, 2 for the first retry, ..."""

    logger: logging.LoggerAdapter[logging.Logger]
    """A logger that tags every line with the job and the task."""

    database: AsyncDatabase[dict[str, Any]]
    """The runtime's database (its ``client`` starts sessions for transactions)."""

    @property
    @abc.abstractmethod
    def local_time(self) -> datetime.datetime:
        """:attr:`scheduled_for` in the job's time zone."""

    @abc.abstractmethod
    async def mark_completed(self, session: Any = None) -> None:
        """Record completion inside the caller's transaction (exactly-once side effects)."""

    @abc.abstractmethod
    async def defer(self, delay_ms: int) -> None:
        """Run this occurrence again after ``delay_ms`` without counting an attempt."""

    @abc.abstractmethod
    async def throttle(self, duration_ms: int) -> None:
        """Pause this job, on every instance, for ``duration_ms``."""

    @abc.abstractmethod
    def mark_completed_sync(self, session: Any = None) -> None:
        """Blocking :meth:`mark_completed`, for handlers written as plain functions."""

    @abc.abstractmethod
    def defer_sync(self, delay_ms: int) -> None:
        """Blocking :meth:`defer`."""

    @abc.abstractmethod
    def throttle_sync(self, duration_ms: int) -> None:
        """Blocking :meth:`throttle`."""
