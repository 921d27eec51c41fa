"""Retry, timeout, history, defer and throttle policies, end to end.

Retry delays are read from the task document's own writes: every finalization sets
``lastFinalizedAt`` and ``nextRunAt`` from the same server ``$$NOW``, so their difference is
exactly the delay the policy chose. The test records those writes with a change stream on
the tasks collection (:func:`watch_task_writes`), so even 50 ms retries cannot be missed.
"""

from __future__ import annotations

from typing import Any

import pytest
from conftest import AppBuilder, RuntimeFactory
from pymongo.database import Database
from reactive_support import (
    CLOCK_TOLERANCE_MS,
    GATE_CODE,
    TaskWrites,
    definition,
    ms,
    open_gate,
    task_of,
    wait_task,
    wait_waiting,
    watch_task_writes,
)
from support import wait_until

Db = Database[dict[str, Any]]

FAILING_HANDLER = GATE_CODE + '''

async def handle(ctx):
    thing = await ctx.get_document()
    await record(ctx, n=thing.n)
    raise RuntimeError(f"boom on attempt {ctx.attempt}")
'''


def retry_delays(writes: TaskWrites, task_id: Any) -> list[float]:
    """``nextRunAt - lastFinalizedAt`` of every finalization that scheduled a retry."""
    return [ms(u["nextRunAt"] - u["lastFinalizedAt"]) for u in writes.finalizations(task_id)
            if u.get("nextRunAt") is not None]


def fail_until_given_up(make_app: AppBuilder, start_runtime: RuntimeFactory, db: Db,
                        retry: dict[str, Any], **policies: Any) -> tuple[dict[str, Any],
                                                                         TaskWrites]:
    """Run a handler that always fails under ``retry`` until the task is ``failed``."""
    app = make_app({"react": definition(watch=["n"], policies={"retry": retry, **policies})},
                   {"react": FAILING_HANDLER})
    start_runtime(app)
    with watch_task_writes(db) as writes:
        db.things.insert_one({"_id": "x", "n": 1})
        task = wait_task(db, "x", timeout=60, status="failed")
    return task, writes


@pytest.mark.parametrize(("retry", "expected"), [
    ({"strategy": "fixed", "interval": "100ms", "maxAttempts": 4}, [100, 100, 100]),
    ({"strategy": "linear", "interval": "50ms", "maxAttempts": 4}, [50, 100, 150]),
    ({"strategy": "exponential", "min": "50ms", "max": "300ms", "maxAttempts": 5},
     [50, 100, 200, 300]),
    ({"strategy": "exponential", "min": "40ms", "max": "1s", "factor": 3, "maxAttempts": 4},
     [40, 120, 360]),
    ({"strategy": "series", "delays": ["50ms", "200ms", "100ms"], "maxAttempts": 5},
     [50, 200, 100, 100]),
], ids=["fixed", "linear", "exponential", "exponential-factor-3", "series"])
def test_retry_delays_follow_the_strategy_until_max_attempts(
        make_app: AppBuilder, start_runtime: RuntimeFactory, db: Db, retry: dict[str, Any],
        expected: list[int]) -> None:
    task, writes = fail_until_given_up(make_app, start_runtime, db, retry)
    assert retry_delays(writes, task["_id"]) == expected
    attempts = retry["maxAttempts"]
    assert task["attempts"] == attempts and task["nextRunAt"] is None
    assert task["lastError"] == f"RuntimeError: boom on attempt {attempts}"
    assert [h["attempt"] for h in task["history"]] == list(range(1, attempts + 1))[-5:]
    assert {h["status"] for h in task["history"]} == {"failed"}
    assert sorted(r["attempt"] for r in db.runs.find()) == list(range(1, attempts + 1))
    # The retry window is measured from the first failure of this data version.
    assert task["firstErrorAt"] == writes.finalizations(task["_id"])[0]["firstErrorAt"]


def test_exponential_jitter_stays_within_bounds(
        make_app: AppBuilder, start_runtime: RuntimeFactory, db: Db) -> None:
    """jitter 0.5 moves each delay by up to ±50 %, never above max."""
    retry = {"strategy": "exponential", "min": "100ms", "max": "400ms", "factor": 2,
             "jitter": 0.5, "maxAttempts": 6}
    task, writes = fail_until_given_up(make_app, start_runtime, db, retry)
    delays = retry_delays(writes, task["_id"])
    bases = [100, 200, 400, 400, 400]
    assert len(delays) == len(bases)
    for delay, base in zip(delays, bases, strict=True):
        assert base * 0.5 <= delay <= min(base * 1.5, 400), (delays, bases)
    assert delays != bases, "no jitter was applied"


def test_cron_retry_is_scheduled_at_the_next_cron_time(
        make_app: AppBuilder, start_runtime: RuntimeFactory, db: Db) -> None:
    """``* * * * *``: the retry is due exactly at the next minute (UTC), at most 60 s on."""
    app = make_app({"react": definition(watch=["n"], policies={
        "retry": {"strategy": "cron", "cron": "* * * * *", "maxAttempts": 3}})},
        {"react": FAILING_HANDLER})
    start_runtime(app)
    db.things.insert_one({"_id": "x", "n": 1})
    task = wait_task(db, "x", status="pending", attempts=1)
    retry_at = task["nextRunAt"]
    assert retry_at.second == 0 and retry_at.microsecond == 0
    assert 0 < ms(retry_at - task["lastFinalizedAt"]) <= 60_000 + CLOCK_TOLERANCE_MS
    assert task["lastError"] == "RuntimeError: boom on attempt 1"


def test_max_duration_gives_up_once_the_window_has_passed(
        make_app: AppBuilder, start_runtime: RuntimeFactory, db: Db) -> None:
    retry = {"strategy": "fixed", "interval": "100ms", "maxAttempts": None,
             "maxDuration": "450ms"}
    task, writes = fail_until_given_up(make_app, start_runtime, db, retry)
    finals = writes.finalizations(task["_id"])
    first_error = task["firstErrorAt"]
    assert task["attempts"] == len(finals) >= 2
    assert ms(task["lastFinalizedAt"] - first_error) >= 450 - CLOCK_TOLERANCE_MS
    assert ms(finals[-2]["lastFinalizedAt"] - first_error) < 450 + CLOCK_TOLERANCE_MS
    assert all(u["nextRunAt"] is not None for u in finals[:-1])


@pytest.mark.parametrize("reset", [True, False])
def test_reset_on_data_change_while_waiting_for_a_retry(
        make_app: AppBuilder, start_runtime: RuntimeFactory, db: Db, reset: bool) -> None:
    """A watched change of a task waiting for its retry makes it due at once; with
    ``resetOnDataChange: false`` attempts and the retry window carry on."""
    app = make_app({"react": definition(watch=["n"], policies={"retry": {
        "strategy": "fixed", "interval": "1h", "maxAttempts": 2,
        "resetOnDataChange": reset}})}, {"react": FAILING_HANDLER})
    start_runtime(app)
    db.things.insert_one({"_id": "x", "n": 1})
    waiting = wait_task(db, "x", status="pending", attempts=1)
    assert waiting["lastError"] == "RuntimeError: boom on attempt 1"
    db.things.update_one({"_id": "x"}, {"$set": {"n": 2}})
    wait_until(lambda: db.runs.count_documents({"n": 2}) == 1)
    run = db.runs.find_one({"n": 2})
    assert run is not None
    if reset:
        task = wait_until(lambda: db.things_tasks.find_one(
            {"sourceId": "x", "status": "pending", "history.1": {"$exists": True}}))
        assert run["attempt"] == 1
        assert task["attempts"] == 1 and task["firstErrorAt"] > waiting["firstErrorAt"]
    else:
        task = wait_task(db, "x", status="failed")
        assert run["attempt"] == 2
        assert task["attempts"] == 2 and task["firstErrorAt"] == waiting["firstErrorAt"]
    assert task["lastError"] == f"RuntimeError: boom on attempt {run['attempt']}"


@pytest.mark.parametrize("reset", [True, False])
def test_reset_on_data_change_while_running(
        make_app: AppBuilder, start_runtime: RuntimeFactory, db: Db, reset: bool) -> None:
    """A watched change during a failing execution: the re-run of the new data counts its
    attempts afresh, or (``resetOnDataChange: false``) continues the count."""
    handler = GATE_CODE + '''

async def handle(ctx):
    thing = await ctx.get_document()
    await record(ctx, n=thing.n)
    if thing.n == 1:
        await wait_gate(ctx, "running")
    raise RuntimeError(f"boom on attempt {ctx.attempt}")
'''
    app = make_app({"react": definition(watch=["n"], policies={"retry": {
        "strategy": "fixed", "interval": "1h", "maxAttempts": 2,
        "resetOnDataChange": reset}})}, {"react": handler})
    start_runtime(app)
    db.things.insert_one({"_id": "x", "n": 1})
    wait_waiting(db, "running")
    db.things.update_one({"_id": "x"}, {"$set": {"n": 2}})
    wait_task(db, "x", status="processing_dirty")
    open_gate(db, "running")
    wait_until(lambda: db.runs.count_documents({"n": 2}) == 1)
    run = db.runs.find_one({"n": 2})
    assert run is not None
    if reset:
        assert run["attempt"] == 1
        task = wait_until(lambda: db.things_tasks.find_one(
            {"sourceId": "x", "status": "pending", "history.1": {"$exists": True}}))
        assert task["attempts"] == 1
    else:
        assert run["attempt"] == 2
        task = wait_task(db, "x", status="failed")
        assert task["attempts"] == 2
    assert [h["status"] for h in task["history"]] == ["failed", "failed"]


def test_timeout_fails_the_execution(make_app: AppBuilder, start_runtime: RuntimeFactory,
                                     db: Db) -> None:
    """A handler running longer than ``timeout`` is cancelled and the execution fails; a
    TimeoutError the handler raises itself is an ordinary failure."""
    slow = GATE_CODE + '''

async def handle(ctx):
    await ctx.get_document()
    await record(ctx, phase="started")
    await asyncio.sleep(30)
    await record(ctx, phase="finished")
'''
    own = GATE_CODE + '''

async def handle(ctx):
    await ctx.get_document()
    raise TimeoutError("the remote service did not answer")
'''
    app = make_app({"slow": definition(watch=["n"], policies={
        "timeout": "300ms", "retry": {"maxAttempts": 1}}),
        "own": definition(collection="others", watch=["n"], policies={
            "retry": {"maxAttempts": 1}})},
        {"slow": slow, "own": own})
    start_runtime(app)
    db.things.insert_one({"_id": "x", "n": 1})
    db.others.insert_one({"_id": "y", "n": 1})
    task = wait_task(db, "x", status="failed")
    assert task["lastError"] == "handler timed out after 300 ms"
    assert 300 <= task["history"][-1]["durationMs"] < 5000
    assert db.runs.count_documents({"phase": "started"}) == 1
    assert db.runs.count_documents({"phase": "finished"}) == 0
    other = wait_task(db, "y", tasks="others_tasks", status="failed")
    assert other["lastError"] == "TimeoutError: the remote service did not answer"


def test_history_keeps_the_last_executions(make_app: AppBuilder,
                                           start_runtime: RuntimeFactory, db: Db) -> None:
    retry = {"strategy": "fixed", "interval": "50ms", "maxAttempts": 5}
    app = make_app({"capped": definition(watch=["n"], policies={"retry": retry,
                                                                "history": 3}),
                    "none": definition(collection="others", watch=["n"],
                                       policies={"retry": retry, "history": 0})},
                   {"capped": FAILING_HANDLER, "none": FAILING_HANDLER})
    start_runtime(app)
    db.things.insert_one({"_id": "x", "n": 1})
    db.others.insert_one({"_id": "x", "n": 1})
    task = wait_task(db, "x", timeout=30, status="failed")
    assert [h["attempt"] for h in task["history"]] == [3, 4, 5]
    for entry in task["history"]:
        assert entry["status"] == "failed" and entry["durationMs"] >= 0
        assert entry["error"] == f"RuntimeError: boom on attempt {entry['attempt']}"
    other = wait_task(db, "x", tasks="others_tasks", timeout=30, status="failed")
    assert other["history"] == [] and other["attempts"] == 5


def test_defer_requeues_without_counting_an_attempt(
        make_app: AppBuilder, start_runtime: RuntimeFactory, db: Db) -> None:
    handler = GATE_CODE + '''

async def handle(ctx):
    thing = await ctx.get_document()
    if await ctx.database["runs"].count_documents({"source": ctx.doc_id}) == 0:
        await record(ctx, n=thing.n, action="defer")
        await ctx.defer(300)
        return
    await record(ctx, n=thing.n, action="done")
'''
    app = make_app({"react": definition(watch=["n"])}, {"react": handler})
    start_runtime(app)
    with watch_task_writes(db) as writes:
        db.things.insert_one({"_id": "x", "n": 1})
        task = wait_task(db, "x", status="completed")
    assert [(r["action"], r["attempt"]) for r in db.runs.find().sort("_id", 1)] == [
        ("defer", 1), ("done", 1)]
    assert task["attempts"] == 1
    assert [(h["status"], h["attempt"]) for h in task["history"]] == [
        ("deferred", 1), ("completed", 1)]
    deferral = writes.finalizations(task["_id"])[0]
    assert deferral["status"] == "pending" and deferral["attempts"] == 0
    assert ms(deferral["nextRunAt"] - deferral["lastFinalizedAt"]) == 300
    assert ms(task["startedAt"] - deferral["nextRunAt"]) >= -CLOCK_TOLERANCE_MS


THROTTLE_HANDLER = GATE_CODE + '''

async def handle(ctx):
    thing = await ctx.get_document()
    await record(ctx, label=thing.label)
    if thing.label == "throttle":
        await ctx.throttle(int(thing.n))
'''


def test_throttle_pauses_the_whole_reactor(make_app: AppBuilder,
                                           start_runtime: RuntimeFactory, db: Db) -> None:
    """After ``throttle(1500)`` no task of the reactor starts for 1.5 s, although another
    task is due and workers are free. The pause is cluster-wide: it is recorded in
    ``reactgen_meta`` (``throttle:<reactor>``), where every instance reads it."""
    app = make_app({"react": definition(watch=["n", "label"])}, {"react": THROTTLE_HANDLER})
    start_runtime(app)
    db.things.insert_one({"_id": "a", "n": 1500, "label": "throttle"})
    wait_task(db, "a", status="completed")
    pause = wait_until(lambda: db.reactgen_meta.find_one({"_id": "throttle:react"}))
    assert pause["by"] == "a"
    db.things.insert_one({"_id": "b", "n": 0, "label": "next"})
    waiting = wait_task(db, "b", status="pending")
    assert waiting["dueAt"] < pause["until"], "b was not due during the pause"
    task = wait_task(db, "b", status="completed")
    assert ms(task["startedAt"] - pause["until"]) >= -CLOCK_TOLERANCE_MS
    first = task_of(db, "a")
    assert first is not None and ms(pause["until"] - first["lastFinalizedAt"]) <= 1500 + 50


def test_throttle_applies_to_an_instance_started_later(
        make_app: AppBuilder, start_runtime: RuntimeFactory, db: Db) -> None:
    """Another instance (started after the pause began) honours it from ``reactgen_meta``."""
    app = make_app({"react": definition(watch=["n", "label"])}, {"react": THROTTLE_HANDLER})
    first = start_runtime(app, instance_id="a")
    db.things.insert_one({"_id": "a", "n": 6000, "label": "throttle"})
    pause = wait_until(lambda: db.reactgen_meta.find_one({"_id": "throttle:react"}))
    assert first.stop() == 0
    start_runtime(app, instance_id="b")
    db.things.insert_one({"_id": "b", "n": 0, "label": "next"})
    waiting = wait_task(db, "b", status="pending")
    assert waiting["dueAt"] < pause["until"], "instance b started after the pause ended"
    task = wait_task(db, "b", status="completed")
    assert task["lease"] is None and task["history"][-1]["status"] == "completed"
    assert ms(task["startedAt"] - pause["until"]) >= -CLOCK_TOLERANCE_MS
    assert db.runs.count_documents({"source": "b"}) == 1
