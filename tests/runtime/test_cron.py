"""Cron jobs end to end: real ``runtime serve`` processes on the test database.

Every handler records its execution in ``cron_runs`` *in the same transaction* that marks the
occurrence completed, so a count of ``cron_runs`` per scheduled time is the number of
executions that took effect: exactly one per occurrence, however instances start, stop or die.
"""

from __future__ import annotations

import datetime
import itertools
import subprocess
import sys
import textwrap
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

from pymongo.database import Database
from runtime_harness import App, _env
from scenario import leader, server_now, start
from support import wait_until

from runtime.management import ManagementSync, TaskStatus

Doc = dict[str, Any]
RuntimeFactory = Any  # conftest.RuntimeFactory: ``start_runtime(app, instance_id=..., ...)``
SECOND = datetime.timedelta(seconds=1)
FAST = ["--task-lease-ms", "3000", "--leader-ttl-ms", "2000"]

RECORDING_HANDLER = """
    import os

    from {package}.crons.JOB import Context


    async def handle(ctx: Context) -> None:
        db = ctx.database
        async with db.client.start_session() as session, await session.start_transaction():
            await db["cron_runs"].insert_one(
                {"job": "JOB", "scheduledFor": ctx.scheduled_for, "attempt": ctx.attempt,
                 "trigger": ctx.trigger.value,
                 "instance": os.environ.get("TEST_INSTANCE", "?")}, session=session)
            await ctx.mark_completed(session=session)
"""

FLAKY_HANDLER = """
    from {package}.crons.flaky import Context


    async def handle(ctx: Context) -> None:
        await ctx.database["flaky_attempts"].insert_one(
            {"scheduledFor": ctx.scheduled_for, "attempt": ctx.attempt})
        if ctx.attempt < 3:
            raise RuntimeError(f"attempt {ctx.attempt} fails")
"""


def build_cron_app(tmp_path: Path, crons: dict[str, str], handlers: dict[str, str]) -> App:
    """Write ``*.cron.yaml`` definitions, build them with ``reactgen build`` (a real process)
    and write the handlers (``{package}`` and ``JOB`` replaced)."""
    package = f"cronapp_{uuid.uuid4().hex[:8]}"
    root = tmp_path / "cronapp"
    (root / "defs").mkdir(parents=True)
    for name, text in crons.items():
        (root / "defs" / f"{name}.cron.yaml").write_text(textwrap.dedent(text), "utf-8")
    result = subprocess.run([sys.executable, "-m", "generator", "build", "defs", "--out",
                             package], cwd=root, capture_output=True, text=True,
                            env=_env(root), check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    app = App(root, package)
    for name, source in handlers.items():
        code = textwrap.dedent(source).replace("{package}", package).replace("JOB", name)
        app.handler_path(name).write_text(code, encoding="utf-8")
    return app


def runs(db: Database[Doc], job: str) -> Counter[datetime.datetime]:
    """Effective executions per scheduled time (naive UTC)."""
    return Counter(doc["scheduledFor"] for doc in db.cron_runs.find({"job": job}))


def contiguous(times: list[datetime.datetime], step: datetime.timedelta) -> list[str]:
    """Gaps in a sorted list of occurrences one ``step`` apart."""
    return [f"{a.isoformat()} -> {b.isoformat()}" for a, b in itertools.pairwise(times)
            if b - a != step]


def test_every_second_job_runs_each_occurrence_once_on_three_instances_across_a_leader_kill(
        tmp_path: Path, db: Database[Doc], start_runtime: RuntimeFactory) -> None:
    app = build_cron_app(tmp_path, {"tick": "schedule: {every: 1s}\n"},
                         {"tick": RECORDING_HANDLER})
    processes = {name: start(start_runtime, app, name, *FAST) for name in "abc"}
    wait_until(lambda: len(runs(db, "tick")) >= 5, timeout=30, message="5 occurrences ran")
    owner = wait_until(lambda: (leader(db) or {}).get("owner"), message="a leader")
    killed_at = server_now(db)
    processes[owner].kill()
    wait_until(lambda: (leader(db) or {}).get("owner") not in (None, owner), timeout=20,
               message="another instance leads")
    wait_until(lambda: sum(1 for t in runs(db, "tick") if t > killed_at + 6 * SECOND) >= 3,
               timeout=40, message="occurrences run after the failover")
    counted = runs(db, "tick")
    times = sorted(counted)
    assert not [t for t, n in counted.items() if n != 1], f"duplicates: {counted}"
    assert not contiguous(times, SECOND), "lost occurrences (leader SIGKILLed at " \
        f"{killed_at.isoformat()}): {contiguous(times, SECOND)}"
    tasks = list(db.reactgen_cron_tasks.find({"reactor": "tick"}))
    assert len(tasks) == len({t["sourceId"] for t in tasks})
    assert all(t["scheduledFor"] == t["sourceId"] for t in tasks)
    assert {r["instance"] for r in db.cron_runs.find()} - {owner}, "survivors ran occurrences"


def test_failing_run_is_retried_per_policy_and_run_now_and_listing_work(
        tmp_path: Path, db: Database[Doc], mongodb_uri: str,
        start_runtime: RuntimeFactory) -> None:
    app = build_cron_app(tmp_path, {"flaky": """
        schedule: '0 3 1 1 *'
        timezone: Europe/Berlin
        policies:
          retry: {strategy: fixed, interval: 200ms, maxAttempts: 3}
          history: 10
    """}, {"flaky": FLAKY_HANDLER})
    start(start_runtime, app, "a", *FAST)
    env = _env(app.root)
    cli = [sys.executable, "-m", "runtime", "cron"]
    common = ["--app", app.package, "--mongodb-uri", mongodb_uri, "--database", db.name]
    queued = subprocess.run([*cli, "run-now", "flaky", "--by", "tester", *common],
                            cwd=app.root, env=env, capture_output=True, text=True, check=False)
    assert queued.returncode == 0, queued.stderr
    assert "queued a run of flaky" in queued.stdout

    def finished() -> Doc | None:
        return db.reactgen_cron_tasks.find_one({"reactor": "flaky",
                                                "status": TaskStatus.COMPLETED.value})

    task = wait_until(finished, timeout=30, message="the manual run completed")
    assert task["attempts"] == 3 and task["trigger"] == "manual"
    assert task["requestedBy"] == "tester"
    assert [h["status"] for h in task["history"]] == ["failed", "failed", "completed"]
    assert "attempt 2 fails" in task["history"][1]["error"]
    attempts = list(db.flaky_attempts.find().sort("attempt", 1))
    assert [a["attempt"] for a in attempts] == [1, 2, 3]
    assert {a["scheduledFor"] for a in attempts} == {task["sourceId"]}
    listing = subprocess.run([*cli, "list", *common], cwd=app.root, env=env,
                             capture_output=True, text=True, check=False)
    assert listing.returncode == 0, listing.stderr
    assert "flaky" in listing.stdout and "0 3 1 1 * (Europe/Berlin)" in listing.stdout
    with ManagementSync(mongodb_uri, db.name, [*load(app).crons]) as management:
        (job,) = management.cron_jobs()
        assert job.counts["completed"] == 1 and job.last_run is not None
        assert job.next_run.month == 12 or job.next_run.month == 1
        listed = management.list_tasks()
        assert [t.reactor for t in listed.tasks] == ["flaky"]


def load(app: App) -> Any:
    """The built application, imported in this process (like the management CLI does)."""
    from runtime.app_loader import load_app

    sys.path.insert(0, str(app.root))
    try:
        return load_app(app.package)
    finally:
        sys.path.remove(str(app.root))


CATCH_UP_JOBS = {
    "skip_missed": "schedule: {every: 1s}\ncatchUp: none\nstartingDeadline: 1500ms\n",
    "run_latest": "schedule: {every: 1s}\ncatchUp: latest\nstartingDeadline: 1500ms\n",
    "run_all": "schedule: {every: 1s}\ncatchUp: all\nmaxCatchUp: 3\nstartingDeadline: 1500ms\n",
}


def test_catch_up_after_downtime_follows_each_policy(
        tmp_path: Path, db: Database[Doc], start_runtime: RuntimeFactory) -> None:
    app = build_cron_app(tmp_path, CATCH_UP_JOBS, {name: RECORDING_HANDLER
                                                   for name in CATCH_UP_JOBS})
    first = start(start_runtime, app, "a", *FAST)
    wait_until(lambda: all(len(runs(db, job)) >= 2 for job in CATCH_UP_JOBS), timeout=30,
               message="every job ran")
    assert first.stop() == 0
    stopped = server_now(db)
    wait_until(lambda: server_now(db) >= stopped + 7 * SECOND, timeout=20,
               message="7 occurrences pass while nothing runs")
    restarted = server_now(db)
    start(start_runtime, app, "b", *FAST)
    for job in CATCH_UP_JOBS:
        wait_until(lambda job=job: any(t > restarted + 2 * SECOND for t in runs(db, job)),
                   timeout=30, message=f"{job} runs on time again")
    states = {doc["_id"][len("cron:"):]: doc for doc in db.reactgen_meta.find(
        {"_id": {"$regex": "^cron:"}})}
    for job, policy_runs in (("skip_missed", 0), ("run_latest", 1), ("run_all", 3)):
        missed = states[job]["lastMissed"]
        assert missed["count"] >= 5, missed
        counted = runs(db, job)
        assert all(n == 1 for n in counted.values()), counted
        in_gap = sorted(t for t in counted if missed["first"] <= t <= missed["last"])
        assert len(in_gap) == policy_runs == missed["caughtUp"], (job, missed, in_gap)
        if policy_runs:
            assert in_gap[-1] == missed["last"], "the newest missed occurrences run"
            assert contiguous(in_gap, SECOND) == []
            triggers = {d["trigger"] for d in db.cron_runs.find(
                {"job": job, "scheduledFor": {"$in": in_gap}})}
            assert triggers == {"catchUp"}
        after = sorted(t for t in counted if t > missed["last"])
        assert after and after[0] == missed["last"] + SECOND, (job, missed, after[:3])
        assert contiguous(after, SECOND) == []
        before = sorted(t for t in counted if t < missed["first"])
        assert before and before[-1] + SECOND == missed["first"]


def ensure_task_indexes(db: Database[Doc]) -> None:
    """The indexes ``runtime serve`` creates on ``reactgen_cron_tasks`` (from the registry)."""
    from generator.indexes import task_indexes
    from runtime.cron_spec import CRON_TASKS_COLLECTION

    for plan in task_indexes(None, CRON_TASKS_COLLECTION):
        db[plan.collection].create_index(plan.keys, **plan.options)


def _spec(keep_last: int = 2, keep_for_ms: int = 60_000) -> Any:
    from runtime.cron_spec import CronSpec, Schedule, ScheduleKind
    from runtime.reactor import CleanupPolicy, Policies

    return CronSpec(name="job", schedule=Schedule(ScheduleKind.EVERY, every_ms=1000),
                    keep_last=keep_last,
                    policies=Policies(cleanup=CleanupPolicy(when="never",
                                                            keep_for_ms=keep_for_ms)))


async def test_occurrence_upserts_are_fenced_and_never_reset_a_task(
        async_client: Any, db: Database[Doc]) -> None:
    from runtime.cron import CronPlanner
    from runtime.cron_spec import CronTrigger
    from runtime.meta import Deposed

    spec = _spec()
    ensure_task_indexes(db)
    planner = CronPlanner(async_client[db.name], [spec], datetime.datetime.now)
    at = datetime.datetime(2026, 1, 1, 12, 0, 0)
    await planner._upsert(spec, at, CronTrigger.SCHEDULE, 5)
    db.reactgen_cron_tasks.update_one({"sourceId": at}, {"$set": {"status": "completed",
                                                                  "nextRunAt": None}})
    await planner._upsert(spec, at, CronTrigger.CATCH_UP, 6)  # a new leader re-plans it
    (task,) = db.reactgen_cron_tasks.find({"reactor": "job"})
    assert (task["status"], task["nextRunAt"], task["trigger"], task["plannerToken"]) == (
        "completed", None, "schedule", 6)
    try:
        await planner._upsert(spec, at, CronTrigger.SCHEDULE, 5)  # the deposed leader
    except Deposed:
        pass
    else:
        raise AssertionError("a write of an older leader must be refused")


async def test_finished_occurrences_beyond_keep_last_expire_after_keep_for(
        async_client: Any, db: Database[Doc]) -> None:
    from runtime.cron import CronPlanner

    spec = _spec(keep_last=2, keep_for_ms=60_000)
    finished = datetime.datetime(2026, 1, 1, 13, 0, 0)
    db.reactgen_cron_tasks.insert_many([
        {"reactor": "job", "sourceId": datetime.datetime(2026, 1, 1, 12, 0, n),
         "status": status, "lastFinalizedAt": finished}
        for n, status in enumerate(["completed", "pending", "failed", "completed", "skipped"])])
    planner = CronPlanner(async_client[db.name], [spec], datetime.datetime.now)
    assert await planner.sweep(spec) == 2
    expiring = {doc["sourceId"].second: doc.get("expiresAt")
                for doc in db.reactgen_cron_tasks.find()}
    assert expiring == {0: finished + datetime.timedelta(minutes=1), 1: None,
                        2: finished + datetime.timedelta(minutes=1), 3: None, 4: None}
    assert await planner.sweep(spec) == 0
