"""Planning end to end: which changes create, revive, re-run, skip or clean up a task.

Each test builds a throw-away application with ``reactgen build``, runs ``runtime serve`` on
it as a real process, writes source documents with PyMongo and reads the ``things_tasks``
documents and the ``runs`` the handler recorded. Ordering in time is established through the
database (gates, markers, change streams), never by sleeping.
"""

from __future__ import annotations

import time
from typing import Any

from conftest import AppBuilder, RuntimeFactory
from pymongo.database import Database
from reactive_support import (
    CLOCK_TOLERANCE_MS,
    GATE_CODE,
    definition,
    ms,
    open_gate,
    planned_up_to,
    server_now,
    task_of,
    wait_task,
    wait_waiting,
    watch_task_writes,
)
from support import wait_until

Db = Database[dict[str, Any]]

RECORDING_HANDLER = GATE_CODE + '''

async def handle(ctx):
    thing = await ctx.get_document()
    await record(ctx, n=thing.n, kind=thing.kind)
'''


def runs(db: Db, source: Any) -> list[int]:
    """The ``n`` every recorded run saw, in order."""
    return [r["n"] for r in db.runs.find({"source": source}).sort("_id", 1)]


def test_task_follows_the_filter_entering_and_leaving(
        make_app: AppBuilder, start_runtime: RuntimeFactory, db: Db) -> None:
    """Default cleanup (sourceDeleted): entering the filter creates a task; leaving it writes
    nothing, and a task still pending when its document left is skipped at run time by the
    late-binding check without the handler's work happening."""
    app = make_app({"react": definition(filter={"kind": "a"}, watch=["n"],
                                        policies={"debounce": "1500ms"})},
                   {"react": RECORDING_HANDLER})
    start_runtime(app)
    db.things.insert_one({"_id": "x", "kind": "b", "n": 1})
    planned_up_to(db, "marker-1", kind="a", n=0)
    assert task_of(db, "x") is None, "a document outside the filter got a task"

    db.things.update_one({"_id": "x"}, {"$set": {"kind": "a"}})
    task = wait_task(db, "x", status="completed")
    assert runs(db, "x") == [1]
    assert task["attempts"] == 1 and task["history"][-1]["status"] == "completed"

    # Leaving the filter (even with a watched change) does not touch the task.
    with watch_task_writes(db) as writes:
        db.things.update_one({"_id": "x"}, {"$set": {"kind": "b", "n": 2}})
        planned_up_to(db, "marker-2", kind="a", n=0)
        assert task_of(db, "x") == task
        assert writes.updates_of(task["_id"]) == []

    # Pending when it leaves: the planner leaves the task alone, the execution skips it.
    db.things.update_one({"_id": "x"}, {"$set": {"kind": "a", "n": 3}})
    pending = wait_task(db, "x", status="pending", snapshot={"n": 3})
    db.things.update_one({"_id": "x"}, {"$set": {"kind": "b"}})
    skipped = wait_task(db, "x", status="skipped")
    assert runs(db, "x") == [1], "the handler's work ran for a document outside the filter"
    assert skipped["history"][-1]["status"] == "skipped"
    assert "no longer matches" in skipped["history"][-1]["error"]
    assert skipped["nextRunAt"] is None
    assert ms(skipped["lastFinalizedAt"] - pending["dueAt"]) >= -CLOCK_TOLERANCE_MS


def test_unmatched_cleanup_stops_a_pending_task_and_reentry_revives_it(
        make_app: AppBuilder, start_runtime: RuntimeFactory, db: Db) -> None:
    """cleanup sourceDeletedOrUnmatched: a pending task whose document leaves the filter is
    skipped by the planner at once (no execution) and scheduled for expiry; the same document
    matching again, with the same watched values, is a new task and runs."""
    app = make_app({"react": definition(
        filter={"kind": "a"}, watch=["n"],
        policies={"debounce": "1500ms",
                  "cleanup": {"when": "sourceDeletedOrUnmatched", "keepFor": "1h"}})},
        {"react": RECORDING_HANDLER})
    start_runtime(app)
    db.things.insert_one({"_id": "x", "kind": "a", "n": 1})
    wait_task(db, "x", status="pending")
    before = server_now(db)
    db.things.update_one({"_id": "x"}, {"$set": {"kind": "b"}})
    task = wait_task(db, "x", status="skipped")
    after = server_now(db)
    assert not task.get("history")
    assert task.get("attempts") == 0 and task["nextRunAt"] is None
    assert task["skipReason"] == "source deleted or no longer matching"
    assert 3_600_000 <= ms(task["expiresAt"] - before) <= 3_600_000 + ms(after - before) + 5

    # Nothing ran, even after the debounce delay would have passed.
    planned_up_to(db, "marker", kind="a", n=0)
    wait_task(db, "marker", status="completed")
    assert runs(db, "x") == []

    db.things.update_one({"_id": "x"}, {"$set": {"kind": "a"}})
    revived = wait_task(db, "x", status="completed")
    assert runs(db, "x") == [1]
    assert "expiresAt" not in revived and revived["skipReason"] is None


def test_unwatched_changes_write_nothing(make_app: AppBuilder, start_runtime: RuntimeFactory,
                                         db: Db) -> None:
    """A change that leaves the watched values as they were neither runs the handler nor
    writes to the task document at all, whether the change stream's pre-filter drops it (an
    unwatched field) or the planner compares the snapshot (a field the computed watched value
    reads, a replacement); a watched change runs it again."""
    app = make_app({"react": definition(watch={"big": {"$gt": ["$n", 10]}, "label": 1})},
                   {"react": RECORDING_HANDLER})
    start_runtime(app)
    db.things.insert_one({"_id": "x", "kind": "a", "n": 1, "note": "first"})
    task = wait_task(db, "x", status="completed")
    assert task["snapshot"] == {"big": False}

    with watch_task_writes(db) as writes:
        db.things.update_one({"_id": "x"}, {"$set": {"note": "unwatched field"}})
        db.things.update_one({"_id": "x"}, {"$set": {"n": 2}})  # still not big
        db.things.replace_one({"_id": "x"}, {"kind": "b", "n": 3, "note": "replaced"})
        planned_up_to(db, "marker", n=0)
        assert task_of(db, "x") == task
        assert writes.updates_of(task["_id"]) == []

    db.things.update_one({"_id": "x"}, {"$set": {"n": 11}})
    wait_until(lambda: runs(db, "x") == [1, 11])
    done = wait_task(db, "x", status="completed", snapshot={"big": True})
    assert done["attempts"] == 1
    assert [h["status"] for h in done["history"]] == ["completed", "completed"]
    db.things.update_one({"_id": "x"}, {"$set": {"label": "watched field"}})
    wait_until(lambda: runs(db, "x") == [1, 11, 11])


def test_debounce_runs_a_burst_once_after_the_quiet_period(
        make_app: AppBuilder, start_runtime: RuntimeFactory, db: Db) -> None:
    app = make_app({"react": definition(watch=["n"], policies={"debounce": "1s"})},
                   {"react": RECORDING_HANDLER})
    start_runtime(app)
    db.things.insert_one({"_id": "x", "n": 0})
    for n in range(1, 11):
        db.things.update_one({"_id": "x"}, {"$set": {"n": n}})
    task = wait_task(db, "x", status="completed")
    assert runs(db, "x") == [10]
    assert task["snapshot"] == {"n": 10}
    # Due one delay after the last change (both written by one planner update), and not
    # started before that.
    assert ms(task["dueAt"] - task["updatedAt"]) == 1000
    assert ms(task["startedAt"] - task["dueAt"]) >= -CLOCK_TOLERANCE_MS
    assert len(task["history"]) == 1


def test_debounce_max_wait_runs_during_continuous_changes(
        make_app: AppBuilder, start_runtime: RuntimeFactory, db: Db) -> None:
    """Changes every ~100 ms never leave a 400 ms quiet period, yet the task runs by
    maxWait (1.2 s after the first unprocessed change) while the changes go on."""
    handler = GATE_CODE + '''

async def handle(ctx):
    thing = await ctx.get_document()
    task = await ctx.database["things_tasks"].find_one({"sourceId": ctx.doc_id})
    await record(ctx, n=thing.n, dueAt=task["dueAt"], firstChangeAt=task["firstChangeAt"],
                 startedAt=task["startedAt"])
'''
    app = make_app({"react": definition(watch=["n"],
                                        policies={"debounce": {"delay": "400ms",
                                                               "maxWait": "1200ms"}})},
                   {"react": handler})
    start_runtime(app)
    db.things.insert_one({"_id": "x", "n": 0})
    n = 0
    deadline = time.monotonic() + 15
    while db.runs.count_documents({}) == 0:
        assert time.monotonic() < deadline, "no run within 15 s of continuous changes"
        n += 1
        db.things.update_one({"_id": "x"}, {"$set": {"n": n}})
        time.sleep(0.1)  # pacing of the load (faster than the debounce delay), not a wait
    first_run_seen_at = n
    for _ in range(5):  # the changes continue after the first run
        n += 1
        db.things.update_one({"_id": "x"}, {"$set": {"n": n}})
        time.sleep(0.1)
    first = db.runs.find_one(sort=[("_id", 1)])
    assert first is not None
    assert first["n"] < n, "the run only happened once the changes stopped"
    assert first["n"] <= first_run_seen_at
    assert ms(first["dueAt"] - first["firstChangeAt"]) == 1200
    assert ms(first["startedAt"] - first["dueAt"]) >= -CLOCK_TOLERANCE_MS
    # Once the changes stop, the latest data is processed too.
    wait_until(lambda: runs(db, "x")[-1:] == [n])


def test_change_while_running_marks_dirty_and_reruns_with_new_data(
        make_app: AppBuilder, start_runtime: RuntimeFactory, db: Db) -> None:
    handler = GATE_CODE + '''

async def handle(ctx):
    thing = await ctx.get_document()
    if thing.n == 1:
        await wait_gate(ctx, "first-run")
    await record(ctx, n=thing.n)
'''
    app = make_app({"react": definition(watch=["n"])}, {"react": handler})
    start_runtime(app)
    db.things.insert_one({"_id": "x", "n": 1})
    wait_waiting(db, "first-run")
    db.things.update_one({"_id": "x"}, {"$set": {"n": 2}})
    dirty = wait_task(db, "x", status="processing_dirty")
    assert dirty["snapshot"] == {"n": 2}
    assert dirty["lease"] is not None, "the running execution lost its lease"
    open_gate(db, "first-run")
    wait_until(lambda: runs(db, "x") == [1, 2])
    task = wait_task(db, "x", status="completed")
    second = db.runs.find_one({"n": 2})
    assert second is not None and second["attempt"] == 1
    assert [h["status"] for h in task["history"]] == ["completed", "completed"]


def test_watched_change_revives_completed_and_failed_tasks(
        make_app: AppBuilder, start_runtime: RuntimeFactory, db: Db) -> None:
    handler = GATE_CODE + '''

async def handle(ctx):
    thing = await ctx.get_document()
    if thing.label == "fail":
        raise RuntimeError(f"cannot handle n={thing.n}")
    await record(ctx, n=thing.n)
'''
    app = make_app({"react": definition(watch=["n", "label"],
                                        policies={"retry": {"maxAttempts": 1}})},
                   {"react": handler})
    start_runtime(app)
    db.things.insert_one({"_id": "x", "n": 1, "label": "fail"})
    failed = wait_task(db, "x", status="failed")
    assert "cannot handle n=1" in failed["lastError"]
    assert failed["nextRunAt"] is None and failed["attempts"] == 1

    db.things.update_one({"_id": "x"}, {"$set": {"n": 2, "label": "ok"}})
    completed = wait_task(db, "x", status="completed", snapshot={"n": 2, "label": "ok"})
    assert runs(db, "x") == [2]
    assert completed["lastError"] is None and completed["attempts"] == 1

    db.things.update_one({"_id": "x"}, {"$set": {"n": 3}})
    wait_task(db, "x", status="completed", snapshot={"n": 3, "label": "ok"})
    assert runs(db, "x") == [2, 3]
    history = wait_task(db, "x")["history"]
    assert [h["status"] for h in history] == ["failed", "completed", "completed"]


def test_late_binding_skips_deleted_or_changed_documents(
        make_app: AppBuilder, start_runtime: RuntimeFactory, db: Db) -> None:
    """Between planning and ``get_document()`` the document is deleted (skipped), its watched
    values change (skipped, then re-run with the new data), or only an unwatched field
    changes (not skipped)."""
    handler = GATE_CODE + '''

async def handle(ctx):
    await wait_gate(ctx, str(ctx.doc_id))
    thing = await ctx.get_document()
    await record(ctx, n=thing.n, note=thing.note)
'''
    app = make_app({"react": definition(watch=["n"], policies={"cleanup": {"keepFor": "1h"}})},
                   {"react": handler})
    start_runtime(app, args=["--concurrency", "3"])
    for source in ("deleted", "changed", "unwatched"):
        db.things.insert_one({"_id": source, "n": 1, "note": "old"})
    for source in ("deleted", "changed", "unwatched"):
        wait_waiting(db, source)
    db.things.delete_one({"_id": "deleted"})
    db.things.update_one({"_id": "changed"}, {"$set": {"n": 2}})
    db.things.update_one({"_id": "unwatched"}, {"$set": {"note": "new"}})
    wait_task(db, "changed", status="processing_dirty")
    planned_up_to(db, "marker", n=0)
    open_gate(db, "marker")
    for source in ("deleted", "changed", "unwatched"):
        open_gate(db, source)

    deleted = wait_task(db, "deleted", status="skipped")
    assert deleted["skipReason"] == "late-binding check failed"
    assert "deleted or no longer matches" in deleted["history"][-1]["error"]
    assert runs(db, "deleted") == []

    changed = wait_task(db, "changed", status="completed")
    assert [h["status"] for h in changed["history"]] == ["skipped", "completed"]
    assert "watched values changed" in changed["history"][0]["error"]
    assert runs(db, "changed") == [2]

    unwatched = wait_task(db, "unwatched", status="completed")
    assert [h["status"] for h in unwatched["history"]] == ["completed"]
    assert [r["note"] for r in db.runs.find({"source": "unwatched"})] == ["new"]


def test_dollar_strings_in_watched_values_do_not_skip(
        make_app: AppBuilder, start_runtime: RuntimeFactory, db: Db) -> None:
    """Watched values are data, never expressions: strings that look like field paths or
    variables, and keys of nested values, go through planning and the late-binding check."""
    schema = {"type": "object", "title": "Item",
              "properties": {"_id": {"type": "string"}, "label": {"type": "string"},
                             "tags": {"type": "array", "items": {"type": "string"}},
                             "meta": {"type": "object"}}}
    handler = GATE_CODE + '''

async def handle(ctx):
    item = await ctx.get_document()
    await record(ctx, label=item.label)
'''
    app = make_app({"listed": definition(schema=schema, watch=["label", "tags"]),
                    "whole": definition(collection="items", schema=schema)},
                   {"listed": handler, "whole": handler})
    start_runtime(app)
    values = {"label": "$notAField", "tags": ["$$ROOT", "$literal", "$"],
              "meta": {"price": "$5", "nested": {"ref": "$$NOW"}}}
    db.things.insert_one({"_id": "x", **values})
    db.items.insert_one({"_id": "x", **values})
    for tasks in ("things_tasks", "items_tasks"):
        task = wait_task(db, "x", tasks=tasks, status="completed")
        assert [h["status"] for h in task["history"]] == ["completed"]
    assert db.runs.count_documents({"source": "x", "label": "$notAField"}) == 2
    listed = wait_task(db, "x")
    assert listed["snapshot"] == {"label": "$notAField", "tags": ["$$ROOT", "$literal", "$"]}
    whole = wait_task(db, "x", tasks="items_tasks")
    assert whole["snapshot"] == {"_id": "x", **values}

    db.things.update_one({"_id": "x"}, {"$set": {"label": "$otherPath"}})
    db.items.update_one({"_id": "x"}, {"$set": {"meta.price": "$6"}})
    wait_until(lambda: db.runs.count_documents({"source": "x"}) == 4)
    for tasks in ("things_tasks", "items_tasks"):
        task = wait_task(db, "x", tasks=tasks, status="completed")
        assert [h["status"] for h in task["history"]] == ["completed", "completed"]


def test_source_deletion_applies_each_cleanup_policy(
        make_app: AppBuilder, start_runtime: RuntimeFactory, db: Db) -> None:
    """sourceDeleted with keepFor 0 (deleted by the TTL index on ``expiresAt``), with keepFor
    1h (kept until then), and never (untouched)."""
    app = make_app({"keep0": definition(watch=["n"]),
                    "keep1h": definition(watch=["n"], policies={"cleanup": {"keepFor": "1h"}}),
                    "never": definition(watch=["n"], policies={"cleanup": {"when": "never"}})},
                   {"keep0": RECORDING_HANDLER, "keep1h": RECORDING_HANDLER,
                    "never": RECORDING_HANDLER})
    start_runtime(app)
    ttl = {i["name"]: i for i in db.things_tasks.list_indexes()}["reactgen_expiry"]
    assert ttl["key"] == {"expiresAt": 1} and ttl["expireAfterSeconds"] == 0
    db.things.insert_one({"_id": "x", "n": 1})
    reactors = ("keep0", "keep1h", "never")
    wait_until(lambda: db.things_tasks.count_documents({"status": "completed"}) == 3)
    before_tasks = {t["reactor"]: t for t in db.things_tasks.find()}

    before = server_now(db)
    db.things.delete_one({"_id": "x"})
    kept = wait_until(lambda: db.things_tasks.find_one({"reactor": "keep1h",
                                                         "expiresAt": {"$exists": True}}))
    after = server_now(db)
    assert kept["status"] == "completed" and kept["nextRunAt"] is None
    assert 3_600_000 <= ms(kept["expiresAt"] - before) <= 3_600_000 + ms(after - before) + 5
    # The TTL monitor runs every second on the embedded server, every 60 s on MongoDB.
    wait_until(lambda: db.things_tasks.count_documents({"reactor": "keep0"}) == 0,
               timeout=90, message="keepFor 0 task deleted by the TTL index")
    planned_up_to(db, "marker", n=0)
    wait_until(lambda: db.things_tasks.count_documents({"sourceId": "marker"}) == 3)
    assert db.things_tasks.find_one({"reactor": "never", "sourceId": "x"}) == \
        before_tasks["never"]
    assert db.runs.count_documents({"source": "x"}) == len(reactors)


def test_pending_task_of_a_deleted_source_is_skipped_without_running(
        make_app: AppBuilder, start_runtime: RuntimeFactory, db: Db) -> None:
    app = make_app({"react": definition(watch=["n"], policies={
        "debounce": "1500ms", "cleanup": {"keepFor": "1h"}})}, {"react": RECORDING_HANDLER})
    start_runtime(app)
    db.things.insert_one({"_id": "x", "n": 1})
    wait_task(db, "x", status="pending")
    db.things.delete_one({"_id": "x"})
    task = wait_task(db, "x", status="skipped")
    assert task["skipReason"] == "source deleted or no longer matching"
    assert task["nextRunAt"] is None and "expiresAt" in task
    planned_up_to(db, "marker", n=0)
    wait_task(db, "marker", status="completed")
    assert runs(db, "x") == [] and not task_of(db, "x").get("history")  # type: ignore[union-attr]


def test_source_deleted_while_its_task_runs_expires_after_the_run(
        make_app: AppBuilder, start_runtime: RuntimeFactory, db: Db) -> None:
    """A handler that deletes its own source: the running task keeps its lease (and is not
    expired under it; renewals push ``expiresAt``), then is deleted per keepFor 0."""
    handler = GATE_CODE + '''

async def handle(ctx):
    thing = await ctx.get_document()
    await ctx.database["things"].delete_one({"_id": ctx.doc_id})
    await wait_gate(ctx, "deleted")
    await record(ctx, n=thing.n)
'''
    app = make_app({"react": definition(watch=["n"])}, {"react": handler})
    start_runtime(app, args=["--task-lease-ms", "1000"])
    db.things.insert_one({"_id": "x", "n": 1})
    wait_waiting(db, "deleted")
    first = wait_until(lambda: db.things_tasks.find_one({"sourceId": "x",
                                                          "expiresAt": {"$exists": True}}))
    assert first["status"] == "processing"
    assert first["expiresAt"] >= first["lease"]["expiresAt"]
    wait_until(lambda: db.things_tasks.find_one(
        {"sourceId": "x", "expiresAt": {"$gt": first["expiresAt"]}}),
        message="lease renewal extends expiresAt")
    assert task_of(db, "x")["status"] == "processing"  # type: ignore[index]
    open_gate(db, "deleted")
    wait_until(lambda: runs(db, "x") == [1])
    wait_until(lambda: task_of(db, "x") is None, timeout=90,
               message="the finished task deleted by the TTL index")
