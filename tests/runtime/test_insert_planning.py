"""New tasks are inserted, not upserted, when their source's change was an insert.

The planner writes the task of a freshly inserted source document with a plain insert
(:func:`runtime.task_plans.new_task`), a fraction of the pipeline upsert's cost on the
database; when the task exists after all, the unique task key refuses the insert and the
planner writes the upsert instead. These tests check that the inserted document is the one the
upsert would have created, that the insert path is the one taken, and that the fallback keeps
every planning rule (a re-inserted source revives its task).
"""

from __future__ import annotations

import datetime
import json
from pathlib import Path
from typing import Any

import pytest
from conftest import AppBuilder, RuntimeFactory
from pymongo import ASCENDING
from pymongo.database import Database
from reactive_support import GATE_CODE, definition, server_now, task_of, wait_task
from support import reactor_spec, wait_until

from runtime.reactor import DebouncePolicy, KeyConcurrency, PriorityPolicy, RetryPolicy
from runtime.task_plans import can_insert_new, claim_fields, new_task, plan_update

Db = Database[dict[str, Any]]
TIMES = ("firstChangeAt", "nextRunAt", "dueAt", "createdAt", "updatedAt")

HANDLER = GATE_CODE + '''

async def handle(ctx):
    await record(ctx)
'''


@pytest.mark.parametrize("policies", [
    {},
    {"retry": RetryPolicy(reset_on_data_change=False)},
    {"priority": PriorityPolicy(static=3),
     "key_concurrency": KeyConcurrency(expression="$customer", max=1)},
], ids=["default", "no-reset", "claim-fields"])
def test_the_inserted_task_is_the_one_the_upsert_creates(db: Db,
                                                        policies: dict[str, Any]) -> None:
    reactor = reactor_spec("r", "things", **policies)
    assert can_insert_new(reactor)
    fields = claim_fields(reactor, 7, "c-1")
    snapshot = {"n": 1, "nested": {"$odd": "value"}}
    for name in ("upserted", "inserted"):
        db[name].create_index([("reactor", ASCENDING), ("sourceId", ASCENDING)], unique=True)
    before = server_now(db)
    db.upserted.bulk_write([plan_update(reactor, "s1", snapshot, 4, fields)])
    db.inserted.insert_one(new_task(reactor, "s1", snapshot, 4, server_now(db), fields))
    after = server_now(db)
    upserted = db.upserted.find_one({}, {"_id": 0})
    inserted = db.inserted.find_one({}, {"_id": 0})
    assert upserted is not None and inserted is not None
    for doc in (upserted, inserted):
        for name in TIMES:
            assert before <= doc.pop(name) <= after + datetime.timedelta(milliseconds=5)
    assert inserted == upserted


def test_a_debounced_reactor_keeps_the_upsert() -> None:
    # Its due time is $$NOW + delay on the server: no insert guesses it.
    reactor = reactor_spec("r", "things", debounce=DebouncePolicy(delay_ms=500))
    assert not can_insert_new(reactor)


def test_inserted_sources_are_planned_with_inserts_and_a_reinserted_source_runs_again(
        make_app: AppBuilder, start_runtime: RuntimeFactory, db: Db, tmp_path: Path) -> None:
    """The runtime's commands show the insert path; deleting a source and inserting it again
    with the same ``_id`` (its task still exists, kept for an hour) is refused by the task key
    and upserted instead, which makes the task due again."""
    app = make_app({"react": definition(watch=["n"],
                                        policies={"cleanup": {"keepFor": "1h"}})},
                   {"react": HANDLER})
    stats = tmp_path / "commands.json"
    runtime = start_runtime(app, env={"REACTGEN_COMMAND_STATS": str(stats)})
    db.things.insert_many([{"_id": i, "n": i} for i in range(20)])
    wait_until(lambda: db.things_tasks.count_documents({"status": "completed"}) == 20)

    db.things.delete_one({"_id": 3})
    wait_until(lambda: task_of(db, 3) is not None and "expiresAt" in task_of(db, 3))
    db.things.insert_one({"_id": 3, "n": 3})
    task = wait_until(lambda: (t := task_of(db, 3)) is not None and
                      len(t.get("history") or []) == 2 and t)
    assert task["status"] == "completed" and "expiresAt" not in task
    wait_task(db, 3, status="completed")
    assert db.runs.count_documents({"source": 3}) == 2
    assert db.things_tasks.count_documents({"sourceId": 3}) == 1

    runtime.stop()
    commands = json.loads(stats.read_text(encoding="utf-8"))
    assert commands.get("insert", 0) >= 1, commands
