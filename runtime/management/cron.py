"""Cron jobs in the management API and CLI: ``runtime cron list`` and ``runtime cron run-now``.

A cron job is a :class:`~runtime.cron_spec.CronSpec` (a reactor without a source collection),
so everything else works on it by name too: ``runtime tasks list --reactor <job>`` lists its
occurrences, ``tasks retry --reactor <job> --source-id '{"$date": ...}'`` re-runs one,
``runtime reactors``, ``pause`` and ``resume`` take job names. Reference: docs/cron.md.
"""

from __future__ import annotations

import argparse
import datetime
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pymongo.errors import DuplicateKeyError

from runtime.cron import manual_task
from runtime.cron_schedule import next_after
from runtime.cron_spec import CronSpec
from runtime.management.errors import UnknownReactor
from runtime.management.scope import Scope, naive_utc
from runtime.management.status import TaskStatus
from runtime.management.tasks import TaskRecord
from runtime.meta import CRON_PREFIX, reactor_id

if TYPE_CHECKING:
    from runtime.management.facade import Management

Doc = dict[str, Any]


@dataclass(frozen=True)
class MissedRuns:
    """The last time a leader found occurrences missed (later than the starting deadline)."""

    count: int
    caught_up: int
    first: datetime.datetime | None
    last: datetime.datetime | None
    policy: str
    at: datetime.datetime | None


@dataclass(frozen=True)
class CronJobInfo:
    """One cron job: its definition, its planning state and its occurrences' counts."""

    name: str
    schedule: str
    catch_up: str
    starting_deadline_ms: int
    last_planned: datetime.datetime | None
    """The newest occurrence the leader has decided (planned, or skipped as missed)."""
    next_run: datetime.datetime
    """The next occurrence after the server's now."""
    counts: dict[str, int]
    """Occurrences kept, by status."""
    last_run: TaskRecord | None
    """The occurrence finished last."""
    last_missed: MissedRuns | None
    paused: bool
    server_time: datetime.datetime


def cron_specs(scope: Scope) -> dict[str, CronSpec]:
    """The application's cron jobs, by name."""
    return {name: spec for name, spec in scope.reactors.items() if isinstance(spec, CronSpec)}


def cron_spec(scope: Scope, name: str) -> CronSpec:
    """One cron job; raises :class:`UnknownReactor` naming the jobs there are."""
    specs = cron_specs(scope)
    if name not in specs:
        raise UnknownReactor(name, sorted(specs))
    return specs[name]


def _missed(value: Any) -> MissedRuns | None:
    if not isinstance(value, dict):
        return None
    return MissedRuns(int(value.get("count") or 0), int(value.get("caughtUp") or 0),
                      naive_utc(value.get("first")), naive_utc(value.get("last")),
                      str(value.get("policy") or ""), naive_utc(value.get("at")))


async def describe(scope: Scope, spec: CronSpec, now: datetime.datetime) -> CronJobInfo:
    """The :class:`CronJobInfo` of one job (three reads, index-served)."""
    tasks = scope.tasks_of(spec)
    counts = {status.value: 0 for status in TaskStatus}
    cursor = await tasks.aggregate([{"$match": {"reactor": spec.name}},
                                    {"$group": {"_id": "$status", "n": {"$sum": 1}}}])
    async for row in cursor:
        counts[str(row["_id"])] = int(row["n"])
    last = await tasks.find_one({"reactor": spec.name, "lastFinalizedAt": {"$type": "date"}},
                                sort=[("lastFinalizedAt", -1)])
    meta = {doc["_id"]: doc async for doc in scope.meta.find(
        {"_id": {"$in": [f"{CRON_PREFIX}{spec.name}", reactor_id(spec.name)]}})}
    state = meta.get(f"{CRON_PREFIX}{spec.name}") or {}
    planned = naive_utc(state.get("lastPlanned"))
    return CronJobInfo(
        name=spec.name, schedule=spec.schedule.describe(), catch_up=spec.catch_up.value,
        starting_deadline_ms=spec.starting_deadline_ms,
        last_planned=planned if isinstance(planned, datetime.datetime) else None,
        next_run=next_after(spec.schedule, now), counts=counts,
        last_run=TaskRecord.from_document(last, scope.database_name(spec),
                                          spec.tasks_collection) if last else None,
        last_missed=_missed(state.get("lastMissed")),
        paused=bool((meta.get(reactor_id(spec.name)) or {}).get("paused")), server_time=now)


async def list_cron_jobs(scope: Scope, names: list[str] | None = None) -> list[CronJobInfo]:
    """Every cron job of the application (or those named), by name."""
    now = await scope.server_now()
    specs = [cron_spec(scope, name) for name in names] if names else \
        [spec for _, spec in sorted(cron_specs(scope).items())]
    return [await describe(scope, spec, now) for spec in specs]


async def run_now(scope: Scope, name: str, by: str | None = None) -> TaskRecord:
    """Queue a manual run of a job, due at once: a task whose ``sourceId`` (and the handler's
    ``scheduled_for``) is the server's now, with ``trigger: manual``. Scheduled occurrences
    are not affected."""
    spec = cron_spec(scope, name)
    tasks = scope.tasks_of(spec)
    at = await scope.server_now()
    for _ in range(10):
        doc = manual_task(spec, at, by or scope.actor)
        try:
            result = await tasks.insert_one(doc)
        except DuplicateKeyError:  # an occurrence at this very millisecond: take the next one
            at += datetime.timedelta(milliseconds=1)
            continue
        return TaskRecord.from_document({**doc, "_id": result.inserted_id},
                                        scope.database_name(spec), spec.tasks_collection)
    raise RuntimeError(f"could not queue a run of {name}: its task keys kept colliding")


# ----------------------------------------------------------------------------- command line

Handler = Callable[["Management", argparse.Namespace], Awaitable[int]]


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser],
                 add_common: Callable[[argparse.ArgumentParser, bool], None],
                 epilog: str) -> None:
    """Register ``runtime cron list|run-now`` (``add_common`` adds the connection flags)."""
    cron = commands.add_parser("cron", help="list cron jobs, run one now", epilog=epilog,
                               description="Cron jobs (*.cron.yaml): their schedule, planning "
                               "state and occurrences; queue a run now.")
    sub = cron.add_subparsers(dest="tasks_command", required=True)
    listing = sub.add_parser("list", help="every cron job with its next and last run",
                             epilog=epilog, description="Schedule, catch-up policy, next run, "
                             "the last finished occurrence, counts by status and the last "
                             "missed occurrences of each job.")
    listing.add_argument("names", nargs="*", metavar="JOB", help="only these jobs")
    add_common(listing, True)
    listing.set_defaults(handler=_list)
    now = sub.add_parser("run-now", help="queue a run of a job, due at once", epilog=epilog,
                         description="Insert a task for the job due now (trigger: manual; "
                         "its scheduled_for is the request time). Any instance runs it within "
                         "milliseconds, with the job's retries, timeout and history.")
    now.add_argument("job", metavar="JOB")
    now.add_argument("--by", help="who asks (default user@host)")
    add_common(now, True)
    now.set_defaults(handler=_run_now)


def _row(job: CronJobInfo) -> list[str]:
    from runtime.management.formatting import iso, relative

    last = job.last_run
    missed = job.last_missed
    return [job.name + (" (paused)" if job.paused else ""), job.schedule, job.catch_up,
            f"{iso(job.next_run)} ({relative(job.next_run, job.server_time)})",
            f"{iso(last.source_id)} {last.status}" if last is not None else "-",
            str(job.counts.get("pending", 0)),
            str(job.counts.get("processing", 0) + job.counts.get("processing_dirty", 0)),
            str(job.counts.get("failed", 0)),
            f"{missed.count} ({missed.caught_up} caught up) at {iso(missed.at)}"
            if missed is not None else "-"]


async def _list(management: Management, args: argparse.Namespace) -> int:
    from runtime.management.cli import ExitCode, _print
    from runtime.management.formatting import json_line, table

    jobs = await management.cron_jobs(args.names or None)
    if args.json:
        for job in jobs:
            _print(json_line(job))
    else:
        _print(table(["JOB", "SCHEDULE", "CATCH-UP", "NEXT RUN", "LAST RUN", "PENDING",
                      "RUNNING", "FAILED", "LAST MISSED"], [_row(job) for job in jobs]))
    return ExitCode.OK


async def _run_now(management: Management, args: argparse.Namespace) -> int:
    from runtime.management.cli import ExitCode, _print
    from runtime.management.formatting import display_id, iso, json_line

    task = await management.run_cron_now(args.job, args.by)
    if args.json:
        _print(json_line(task))
    else:
        _print(f"queued a run of {args.job} (task {display_id(task.id)}, scheduled for "
               f"{iso(task.source_id)}); follow it with `runtime tasks show "
               f"{display_id(task.id)}`")
    return ExitCode.OK
