"""Fenced task writes: a worker that lost its lease can never overwrite its successor.

Every write of an execution after its claim (renewal, finalize, defer, release) is conditioned
on the claim id handed out at claim time (``lease.claim``). These tests freeze a real runtime
process with SIGSTOP while its handler runs, let another instance take the task over, and then
let the frozen one carry on.
"""

from __future__ import annotations

import datetime
import signal
import time
import uuid
from collections.abc import Callable
from typing import Any

from conftest import AppBuilder, RuntimeFactory
from pymongo import MongoClient
from pymongo.database import Database
from runtime_harness import RuntimeProcess
from scenario import (
    build,
    count,
    fail_point,
    lease_expired,
    release,
    runs_of,
    server_now,
    start,
    stays,
    task_of,
)
from support import wait_until

Doc = dict[str, Any]
LEASE_MS = 1000
BLOCK_MS = 7000


def _blocked_on_a(make_app: AppBuilder, start_runtime: RuntimeFactory, db: Database[Doc]
                  ) -> tuple[RuntimeProcess, Callable[[], RuntimeProcess]]:
    """Instance A (short leases, one slot) running task ``x``, whose handler blocks until
    released; and the function that starts instance B the same way."""
    app = build(make_app)
    lease = ["--task-lease-ms", str(LEASE_MS), "--concurrency", "1"]
    a = start(start_runtime, app, "a", *lease)
    db.things.insert_one({"_id": "x", "n": 1, "block": True})
    wait_until(lambda: len(runs_of(db, "x")) == 1, timeout=15)
    return a, lambda: start(start_runtime, app, "b", *lease)


def _freeze_until_taken_over(db: Database[Doc], a: RuntimeProcess,
                             start_b: Callable[[], RuntimeProcess]) -> RuntimeProcess:
    """Freeze A (SIGSTOP) while it runs task ``x``, wait until its lease has expired by the
    server's clock (a frozen A renews nothing), start B and wait until B runs ``x``."""
    a.signal(signal.SIGSTOP)
    wait_until(lambda: lease_expired(db, "x"), timeout=LEASE_MS / 1000 + 5,
               message="A's lease expires while A is frozen")
    b = start_b()
    wait_until(lambda: len(runs_of(db, "x")) == 2, timeout=15,
               message="B takes the expired task over")
    return b


def test_paused_worker_cannot_overwrite_the_new_holder(
        make_app: AppBuilder, start_runtime: RuntimeFactory,
        db: Database[dict[str, Any]]) -> None:
    a, start_b = _blocked_on_a(make_app, start_runtime, db)
    held_by_a = wait_until(lambda: task_of(db, "x"))
    assert held_by_a["status"] == "processing"
    assert held_by_a["lease"]["owner"] == "a"

    b = _freeze_until_taken_over(db, a, start_b)
    taken = task_of(db, "x")
    assert taken is not None
    assert taken["lease"]["owner"] == "b"
    assert taken["lease"]["claim"] != held_by_a["lease"]["claim"]
    assert taken["attempts"] == 2

    release(db, "x")  # both handlers may return now; only B is running
    completed = wait_until(lambda: db.things_tasks.find_one({"sourceId": "x",
                                                             "status": "completed"}))
    assert [h["attempt"] for h in completed["history"]] == [2]
    b.wait_for_log(r"task completed .*source_id=x .*outcome=completed")

    a.signal(signal.SIGCONT)
    # A's handler returns, and its finalize finds its claim gone.
    a.wait_for_log(r"task result discarded \(lease lost\).*source_id=x.*outcome=lease_lost")
    after = task_of(db, "x")
    assert after == completed, "A's late finalize or renewal changed B's result"
    runs = runs_of(db, "x")
    assert [(r["instance"], r["attempt"]) for r in runs] == [("a", 1), ("b", 2)]
    assert all("finishedAt" in r for r in runs)


def test_a_long_handler_keeps_its_lease_and_its_renewal_detects_a_takeover(
        make_app: AppBuilder, start_runtime: RuntimeFactory,
        db: Database[dict[str, Any]]) -> None:
    # Renewal starts only once the first renewal interval has passed (a timer, not a task per
    # execution): a handler running for many lease periods must still be renewed throughout,
    # and a renewal that finds the task taken over must report the loss while the handler
    # is still running, before its finalize.
    a, start_b = _blocked_on_a(make_app, start_runtime, db)
    first = wait_until(lambda: task_of(db, "x"))
    stays(lambda: not lease_expired(db, "x") and len(runs_of(db, "x")) == 1
          and (task_of(db, "x") or {}).get("attempts") == 1, 3 * LEASE_MS / 1000,
          "the running task's lease ran out")
    renewed = task_of(db, "x")
    assert renewed is not None and renewed["lease"]["claim"] == first["lease"]["claim"]
    assert renewed["nextRunAt"] >= first["nextRunAt"] + datetime.timedelta(
        milliseconds=2 * LEASE_MS)

    b = _freeze_until_taken_over(db, a, start_b)
    a.signal(signal.SIGCONT)
    # A's handler is still blocked: only its renewal can notice.
    a.wait_for_log(r"lease lost; this execution's results will be discarded", timeout=10)
    assert "finishedAt" not in runs_of(db, "x")[0]
    release(db, "x")
    b.wait_for_log(r"task completed .*source_id=x .*outcome=completed")
    a.wait_for_log(r"task result discarded \(lease lost\).*source_id=x.*outcome=lease_lost")
    completed = task_of(db, "x")
    assert completed is not None and completed["status"] == "completed"
    assert [h["attempt"] for h in completed["history"]] == [2]


def test_renewal_cannot_revive_a_finished_task(
        make_app: AppBuilder, start_runtime: RuntimeFactory,
        db: Database[dict[str, Any]]) -> None:
    # The handler completes its task (``mark_completed``) and keeps running: nothing that
    # happens afterwards may touch the completed task (mongodash bug: a renewal after
    # markCompleted set nextRunAt again and the task ran a second time). The worker stops
    # renewing once the task is finalized, and any renewal would be fenced out anyway.
    app = build(make_app, mark_completed_early=True)
    a = start(start_runtime, app, "a", "--task-lease-ms", "500")
    db.things.insert_one({"_id": "x", "n": 1, "block": True})
    completed = wait_until(lambda: db.things_tasks.find_one({"sourceId": "x",
                                                             "status": "completed"}),
                           timeout=15)
    assert completed["nextRunAt"] is None and completed["lease"] is None
    # For two more lease periods (by the server's clock) nothing re-runs or changes it.
    two_leases_later = server_now(db) + datetime.timedelta(milliseconds=1000)
    stays(lambda: task_of(db, "x") == completed and len(runs_of(db, "x")) == 1, 1.2,
          "the completed task was changed or executed again")
    assert server_now(db) >= two_leases_later
    release(db, "x")
    wait_until(lambda: "finishedAt" in runs_of(db, "x")[0])
    a.wait_for_log(r"task completed .*source_id=x")
    assert task_of(db, "x") == completed
    assert len(runs_of(db, "x")) == 1


def test_deposed_planner_cannot_overwrite_the_new_leaders_tasks(
        make_app: AppBuilder, start_runtime: RuntimeFactory, client: MongoClient[Doc],
        db: Database[Doc]) -> None:
    # A leads and is frozen (SIGSTOP) while its task upsert is on its way: the server holds
    # A's update commands for BLOCK_MS (a fail point), so the write lands long after B took
    # over and planned newer data. The fence (``plannerToken``) refuses it.
    app = build(make_app, policies="      debounce: 1h\n")
    a_id = f"fa-{uuid.uuid4().hex[:8]}"
    a = start(start_runtime, app, a_id)
    a.wait_for_log(r"event=planner\.started")
    b = start(start_runtime, app, "b")
    db.things.insert_one({"_id": "x", "n": 1})
    wait_until(lambda: (task_of(db, "x") or {}).get("snapshot") == {"n": 1})
    assert task_of(db, "x")["plannerToken"] == 1
    writes = count(a, r"event=planner\.writing")
    with fail_point(client, {"failCommands": ["update"], "appName": f"reactgen-{a_id}-planner",
                             "blockConnection": True, "blockTimeMS": BLOCK_MS}):
        db.things.update_one({"_id": "x"}, {"$set": {"n": 2}})
        a.wait_for_log(r"(?s)" + r"event=planner\.writing.*" * (writes + 1), timeout=15)
        sent = time.monotonic()
        a.signal(signal.SIGSTOP)
        b.wait_for_log(r"event=planner\.started .*leader_token=2\b", timeout=15)
    db.things.update_one({"_id": "x"}, {"$set": {"n": 3}})
    wait_until(lambda: (task_of(db, "x") or {}).get("snapshot") == {"n": 3}, timeout=10)
    # A's held write lands BLOCK_MS after it was sent; it must change nothing.
    remaining = BLOCK_MS / 1000 + 1.0 - (time.monotonic() - sent)
    assert remaining > 0.5, "B took too long to show anything"
    stays(lambda: (task_of(db, "x") or {}).get("snapshot") == {"n": 3}
          and task_of(db, "x")["plannerToken"] == 2, remaining,
          "the deposed planner's write overwrote the new leader's task")
    a.signal(signal.SIGCONT)
    a.wait_for_log(r"event=(planner\.deposed|leader\.lost)", timeout=10)
    final = task_of(db, "x")
    assert final is not None and final["snapshot"] == {"n": 3} and final["plannerToken"] == 2
