"""Per-reactor concurrency limit, and outcomes in the Prometheus metrics."""

from __future__ import annotations

import socket
import urllib.request
import uuid
from typing import Any

from conftest import AppBuilder, RuntimeFactory
from pymongo import MongoClient
from pymongo.database import Database
from reactive_support import (
    GATE_CODE,
    definition,
    open_gate,
    task_of,
    wait_task,
    wait_waiting,
)
from scenario import fail_point
from support import wait_until

Doc = dict[str, Any]
Db = Database[Doc]

GATED = GATE_CODE + '''

async def handle(ctx):
    await wait_gate(ctx, "gate")
    await record(ctx)
'''


def test_per_reactor_concurrency_limit(make_app: AppBuilder, start_runtime: RuntimeFactory,
                                       db: Db) -> None:
    app = make_app({"limited": definition(watch=["n"], policies={"concurrency": 2})},
                   {"limited": GATED})
    start_runtime(app, args=["--concurrency", "10"])
    db.things.insert_many([{"_id": f"d{i}", "n": 1} for i in range(6)])
    wait_waiting(db, "gate", count=2)  # two executions hold the reactor's two slots ...
    running = wait_until(lambda: db.things_tasks.count_documents({"status": "processing"}) == 2
                         and db.things_tasks.count_documents({"status": "pending"}) == 4)
    assert running  # ... and the other four wait although eight workers are idle
    open_gate(db, "gate")
    for i in range(6):
        wait_task(db, f"d{i}", status="completed")
    assert db.runs.count_documents({}) == 6


def test_work_held_back_by_the_per_reactor_limit_starts_when_a_slot_frees(
        make_app: AppBuilder, start_runtime: RuntimeFactory, db: Db) -> None:
    # No idle poll (10 minutes): only the end of the first execution can start the second.
    app = make_app({"limited": definition(watch=["n"], policies={"concurrency": 1})},
                   {"limited": GATED})
    start_runtime(app, args=["--concurrency", "10", "--idle-poll-ms", "600000"])
    db.things.insert_many([{"_id": f"d{i}", "n": 1} for i in range(2)])
    wait_waiting(db, "gate")
    wait_until(lambda: db.things_tasks.count_documents({"status": "pending"}) == 1)
    open_gate(db, "gate")
    for i in range(2):
        wait_task(db, f"d{i}", timeout=10, status="completed")



X_WAITS = GATE_CODE + '''

async def handle(ctx):
    if ctx.doc_id == "x":
        await wait_gate(ctx, "gate")
    await record(ctx)
'''


def test_a_slot_is_free_when_the_handler_returns_while_its_outcome_is_written(
        make_app: AppBuilder, start_runtime: RuntimeFactory, client: MongoClient[Doc],
        db: Db) -> None:
    # One slot: x's handler waits at a gate, y waits for the slot. While the server holds
    # this instance's `update` commands (the finalize is one; the claim is a findAndModify
    # and the handler's record an insert), x's handler returns: y must run at once, while
    # x's outcome is still on its way.
    name = f"slot-{uuid.uuid4().hex[:8]}"
    app = make_app({"gated": definition(watch=["n"])}, {"gated": X_WAITS})
    start_runtime(app, instance_id=name, args=["--concurrency", "1"])
    db.things.insert_one({"_id": "x", "n": 1})
    wait_waiting(db, "gate")
    db.things.insert_one({"_id": "y", "n": 1})
    with fail_point(client, {"failCommands": ["update"], "appName": f"reactgen-{name}",
                             "blockConnection": True, "blockTimeMS": 4000}):
        open_gate(db, "gate")
        wait_until(lambda: db.runs.count_documents({"source": "y"}) == 1, timeout=3,
                   message="y runs while x's outcome is held")
        assert (task_of(db, "x") or {}).get("status") == "processing"
    wait_task(db, "x", status="completed")
    wait_task(db, "y", status="completed")


SKIPPING = GATE_CODE + '''

async def handle(ctx):
    await wait_gate(ctx, "gate")
    await ctx.get_document()  # the source was deleted meanwhile: the task ends "skipped"
'''


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_metrics_count_skips_apart_from_successes(make_app: AppBuilder,
                                                  start_runtime: RuntimeFactory,
                                                  db: Db) -> None:
    app = make_app({"skippy": definition(watch=["n"],
                                         policies={"cleanup": {"when": "never"}})},
                   {"skippy": SKIPPING})
    port = _free_port()
    start_runtime(app, args=["--metrics-port", str(port)])
    db.things.insert_one({"_id": "gone", "n": 1})
    wait_waiting(db, "gate")
    db.things.delete_one({"_id": "gone"})
    open_gate(db, "gate")
    wait_task(db, "gone", status="skipped")

    def scrape() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
            return str(reply.read().decode())

    skipped = 'reactgen_task_executions_total{outcome="skipped",reactor="skippy"} 1.0'
    text = wait_until(lambda: (body := scrape()) and skipped in body and body)
    # Series start at zero; a skip never counts as a completion.
    assert 'reactgen_task_executions_total{outcome="completed",reactor="skippy"} 0.0' in text
