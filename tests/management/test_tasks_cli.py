"""``runtime tasks list|count|show|retry`` as subprocesses, and retries end to end with
``runtime serve``."""

from __future__ import annotations

import datetime
import json

from bson import ObjectId
from conftest import AppBuilder, RuntimeFactory
from management_support import Doc, json_lines, run_cli, task_doc
from pymongo.database import Database
from runtime_harness import App
from scenario import build, definition, handler, release, runs_of, start, task_of
from support import wait_until

T0 = datetime.datetime(2030, 1, 1)

FAILING = """
    from {package}.reactors.record import Context


    async def handle(ctx: Context) -> None:
        thing = await ctx.get_document()
        await ctx.database["runs"].insert_one({"source": thing.id, "attempt": ctx.attempt})
        if await ctx.database["control"].find_one({"_id": "fail"}):
            raise RuntimeError("boom (x.y)* [1]")
"""


def test_list_and_count(mongodb_uri: str, db: Database[Doc], make_app: AppBuilder) -> None:
    app = build(make_app)
    oid = ObjectId()
    ids: list[object] = ["abc", "42", 42, oid, {"k": 1}]
    db.things.insert_many([{"_id": source, "n": i} for i, source in enumerate(ids)])
    db.things_tasks.insert_many([
        task_doc(source, "failed" if i % 2 else "pending", lastError="Boom (x.y)*",
                 nextRunAt=T0 + datetime.timedelta(minutes=i)) for i, source in enumerate(ids)])

    def lines(*args: str) -> list[Doc]:
        return json_lines(run_cli(["tasks", "list", *args, "--json"], app, mongodb_uri,
                                  db.name))

    everything = lines()
    assert [t["source_id"] for t in everything] == ["abc", "42", 42, str(oid), {"k": 1}]
    first = everything[0]
    assert first["status"] == "pending" and first["reactor"] == "record"
    assert first["next_run_at"] == "2030-01-01T00:00:00.000Z"
    assert isinstance(first["id"], str) and ObjectId.is_valid(first["id"])
    # source ids: JSON if it parses, else a string
    assert [t["source_id"] for t in lines("--source-id", "abc")] == ["abc"]
    assert [t["source_id"] for t in lines("--source-id", '"42"')] == ["42"]
    assert [t["source_id"] for t in lines("--source-id", "42")] == [42]
    assert [t["source_id"] for t in lines("--source-id", json.dumps({"$oid": str(oid)}))] == [
        str(oid)]
    assert len(lines("--source-id", "abc", "--source-id", "42")) == 2
    assert [t["source_id"] for t in lines("--status", "failed")] == ["42", str(oid)]
    assert len(lines("--status", "failed,pending", "--error", "BOOM (X.Y)*")) == 5
    assert lines("--error", "boom x") == []
    assert [t["source_id"] for t in lines("--source-filter", '{"n": {"$gte": 3}}')] == [
        str(oid), {"k": 1}]
    assert [t["source_id"] for t in lines("--sort", "nextRunAt", "--desc", "--limit",
                                          "2")] == [{"k": 1}, str(oid)]
    page = run_cli(["tasks", "list", "--limit", "2", "--skip", "1"], app, mongodb_uri, db.name)
    assert page.returncode == 0, page.stderr
    assert "more tasks follow: --skip 3" in page.stderr
    header, *rows = page.stdout.splitlines()
    assert header.split()[:4] == ["ID", "REACTOR", "SOURCE", "STATUS"]
    assert len(rows) == 2 and '"42"' in rows[0] and "Boom (x.y)*" in rows[0]
    assert header.index("STATUS") == rows[0].index("failed")  # aligned columns

    count = run_cli(["tasks", "count", "--status", "failed"], app, mongodb_uri, db.name)
    assert (count.returncode, count.stdout.strip()) == (0, "2")
    assert json_lines(run_cli(["tasks", "count", "--json", "--source-filter", '{"n": 0}'],
                              app, mongodb_uri, db.name)) == [{"count": 1}]


def test_show(mongodb_uri: str, db: Database[Doc], make_app: AppBuilder) -> None:
    app = build(make_app)
    doc = task_doc("s1", "failed", attempts=2, lastError="boom",
                   lastTraceback='  File "handlers/record.py", line 9\nRuntimeError: boom',
                   history=[
        {"at": T0, "status": "failed", "attempt": 1, "durationMs": 5.0, "error": "boom",
         "by": "a"}])
    db.things_tasks.insert_one(doc)
    shown = run_cli(["tasks", "show", str(doc["_id"])], app, mongodb_uri, db.name)
    assert shown.returncode == 0, shown.stderr
    assert "last error" in shown.stdout and "boom" in shown.stdout
    assert "2030-01-01T00:00:00.000Z  failed  1" in shown.stdout
    assert shown.stdout.rstrip().endswith('last traceback:\n  File "handlers/record.py", '
                                          'line 9\nRuntimeError: boom')
    by_source = json_lines(run_cli(["tasks", "show", "--reactor", "record", "--source-id",
                                    "s1", "--json"], app, mongodb_uri, db.name))
    assert by_source[0]["id"] == str(doc["_id"])
    assert by_source[0]["history"][0]["error"] == "boom"
    missing = run_cli(["tasks", "show", str(ObjectId())], app, mongodb_uri, db.name)
    assert missing.returncode == 3 and "no task with _id" in missing.stderr
    neither = run_cli(["tasks", "show"], app, mongodb_uri, db.name)
    assert neither.returncode == 2 and "give TASK_ID" in neither.stderr


def _failing_app(make_app: AppBuilder) -> App:
    return make_app({"record": definition("      retry: {maxAttempts: 1}\n")},
                    {"record": FAILING})


def test_retry_failed_task_runs_again_from_attempt_1(
        mongodb_uri: str, db: Database[Doc], make_app: AppBuilder,
        start_runtime: RuntimeFactory) -> None:
    app = _failing_app(make_app)
    db.control.insert_one({"_id": "fail"})
    start(start_runtime, app, "a")
    db.things.insert_many([{"_id": "x", "n": 1}, {"_id": "y", "n": 2}])
    wait_until(lambda: db.things_tasks.count_documents({"status": "failed"}) == 2,
               timeout=20, message="both tasks fail")
    failed = task_of(db, "x")
    assert failed is not None and failed["lastError"] == "RuntimeError: boom (x.y)* [1]"
    db.control.delete_one({"_id": "fail"})
    retried = run_cli(["tasks", "retry", "--status", "failed", "--error", "(X.Y)* [1]",
                       "--source-id", "x", "--json"], app, mongodb_uri, db.name)
    assert json_lines(retried) == [{"selected": 1, "matched": 1, "modified": 1, "batches": 1}]
    wait_until(lambda: (task_of(db, "x") or {}).get("status") == "completed", timeout=20,
               message="the retried task completes")
    assert [run["attempt"] for run in runs_of_plain(db, "x")] == [1, 1]
    assert (task_of(db, "y") or {}).get("status") == "failed"
    assert len(runs_of_plain(db, "y")) == 1


def runs_of_plain(db: Database[Doc], source: str) -> list[Doc]:
    """Executions recorded by the failing handler (no startedAt: insertion order)."""
    return list(db.runs.find({"source": source}).sort("_id", 1))


def test_retry_running_task_runs_again_after_it_finishes(
        mongodb_uri: str, db: Database[Doc], make_app: AppBuilder,
        start_runtime: RuntimeFactory) -> None:
    app = make_app({"record": definition()}, {"record": handler()})
    start(start_runtime, app, "a")
    db.things.insert_one({"_id": "b", "n": 1, "block": True})
    wait_until(lambda: len(runs_of(db, "b")) == 1, timeout=20, message="the handler starts")
    retried = run_cli(["tasks", "retry", "--reactor", "record", "--source-id", "b"], app,
                      mongodb_uri, db.name)
    assert retried.returncode == 0, retried.stderr
    assert retried.stdout.startswith("retried 1 task(s)")
    assert (task_of(db, "b") or {}).get("status") == "processing_dirty"
    release(db)
    wait_until(lambda: len(runs_of(db, "b")) == 2
               and (task_of(db, "b") or {}).get("status") == "completed", timeout=20,
               message="it runs once more after the first execution")


def test_retry_needs_a_selection_and_shows_progress(mongodb_uri: str, db: Database[Doc],
                                                    make_app: AppBuilder) -> None:
    app = build(make_app)
    db.things_tasks.insert_many([task_doc(i, "failed") for i in range(12_000)])
    refused = run_cli(["tasks", "retry"], app, mongodb_uri, db.name)
    assert refused.returncode == 2 and "--all" in refused.stderr
    assert db.things_tasks.count_documents({"status": "failed"}) == 12_000
    done = run_cli(["tasks", "retry", "--all", "--progress"], app, mongodb_uri, db.name)
    assert done.returncode == 0, done.stderr
    assert "12,000/12,000" in done.stderr and "[#####" in done.stderr
    assert "0/12,000" in done.stderr.splitlines()[0]
    assert done.stdout.strip() == ("retried 12000 task(s): 12000 matched of 12000 selected, "
                                   "3 update command(s)")
    assert db.things_tasks.count_documents({"status": "pending"}) == 12_000
