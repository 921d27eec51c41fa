"""The handler's side of an execution: ``TaskContext`` (async and ``*_sync``), validation,
exactly-once completion inside a transaction, and the log lines handlers and workers write."""

from __future__ import annotations

import re
from typing import Any

from conftest import AppBuilder, RuntimeFactory
from pymongo.database import Database
from reactive_support import GATE_CODE, definition, planned_up_to, wait_task
from support import wait_until

Db = Database[dict[str, Any]]

STRICT_SCHEMA = {"type": "object", "title": "Thing", "required": ["n"],
                 "properties": {"_id": {"type": "string"}, "n": {"type": "integer"},
                                "label": {"type": "string"}}}


def test_context_attributes_and_logger(make_app: AppBuilder, start_runtime: RuntimeFactory,
                                       db: Db) -> None:
    handler = GATE_CODE + '''

async def handle(ctx):
    thing = await ctx.get_document()
    partial = await ctx.get_document(projection={"n": 1})
    ctx.logger.info("handling %s", ctx.doc_id)
    await record(ctx, doc_id=ctx.doc_id, watched=ctx.watched_values.model_dump(),
                 watched_type=type(ctx.watched_values).__name__, model=type(thing).__name__,
                 n=thing.n, label=thing.label, partial_n=partial["n"],
                 partial_type=type(partial).__name__, partial_fields=sorted(partial),
                 database=ctx.database.name)
'''
    app = make_app({"react": definition(watch={"n": 1, "double": {"$multiply": ["$n", 2]}})},
                   {"react": handler})
    runtime = start_runtime(app)
    db.things.insert_one({"_id": "x", "n": 21, "label": "hello"})
    task = wait_task(db, "x", status="completed")
    run = db.runs.find_one({"source": "x"})
    assert run is not None
    assert run["doc_id"] == "x" and run["attempt"] == 1 and run["database"] == db.name
    assert run["watched"] == {"n": 21, "double": 42}
    assert run["watched_type"] == "ReactWatched" and run["model"] == "Thing"
    assert (run["n"], run["label"]) == (21, "hello")
    # A projection gives the projected fields as a dict (not a half-empty model).
    assert run["partial_n"] == 21 and run["partial_type"] == "dict"
    assert run["partial_fields"] == ["_id", "n"]
    line = runtime.wait_for_log(r".*handling x.*")
    assert f"task_id={task['_id']}" in line.group(0)
    assert "reactor=react" in line.group(0) and "source_id=x" in line.group(0)
    assert "attempt=1" in line.group(0)
    finished = runtime.wait_for_log(r".*event=task\.finished.*source_id=x.*").group(0)
    for fieldname in ("reactor=react", f"task_id={task['_id']}", "attempt=1",
                      "outcome=completed", "instance=a"):
        assert fieldname in finished
    assert re.search(r"duration_ms=\d+(\.\d+)?", finished)


def test_invalid_document_fails_its_task_and_the_worker_goes_on(
        make_app: AppBuilder, start_runtime: RuntimeFactory, db: Db) -> None:
    """A document that violates the schema fails its task with the validation error in
    ``lastError``; other tasks keep running. A ValidationError of the handler's own models is
    an ordinary failure."""
    handler = GATE_CODE + '''

async def handle(ctx):
    thing = await ctx.get_document()
    await record(ctx, n=thing.n)
'''
    own = GATE_CODE + '''
from pydantic import BaseModel


class Reply(BaseModel):
    code: int


async def handle(ctx):
    await ctx.get_document()
    Reply.model_validate({"code": "not a number"})
'''
    app = make_app({"react": definition(schema=STRICT_SCHEMA, watch=["n", "label"],
                                        policies={"retry": {"maxAttempts": 1}}),
                    "own": definition(collection="others", schema=STRICT_SCHEMA,
                                      policies={"retry": {"maxAttempts": 1}})},
                   {"react": handler, "own": own})
    start_runtime(app, args=["--concurrency", "1"])
    db.things.insert_one({"_id": "bad", "n": "not a number"})
    db.things.insert_one({"_id": "missing", "label": "no n"})
    bad = wait_task(db, "bad", status="failed")
    assert bad["lastError"].startswith("source document failed validation: 1 validation error")
    assert "n\n  Input should be a valid integer" in bad["lastError"]
    missing = wait_task(db, "missing", status="failed")
    assert "n\n  Field required" in missing["lastError"]
    db.things.insert_one({"_id": "good", "n": 1})
    wait_task(db, "good", status="completed")
    assert [r["source"] for r in db.runs.find()] == ["good"]
    # Fixing the document revives the task.
    db.things.update_one({"_id": "bad"}, {"$set": {"n": 2}})
    wait_task(db, "bad", status="completed")
    db.others.insert_one({"_id": "y", "n": 1})
    other = wait_task(db, "y", tasks="others_tasks", status="failed")
    assert other["lastError"].startswith("pydantic_core._pydantic_core.ValidationError: "
                                         "1 validation error for Reply")


TRANSACTION_HANDLER = GATE_CODE + '''
from pymongo.errors import PyMongoError


async def handle(ctx):
    thing = await ctx.get_document()
    outbox = ctx.database["outbox"]
    if thing.label == "with_transaction":
        calls = []

        async def callback(session):
            calls.append(1)
            await outbox.insert_one({"source": ctx.doc_id, "attempt": ctx.attempt,
                                     "call": len(calls)}, session=session)
            await ctx.mark_completed(session=session)
            await ctx.mark_completed(session=session)  # twice in one transaction: harmless
            if len(calls) == 1:  # as if the commit had hit a write conflict
                raise PyMongoError("simulated conflict", error_labels=["TransientTransactionError"])

        async with ctx.database.client.start_session() as session:
            await session.with_transaction(callback)
        return
    async with ctx.database.client.start_session() as session:
        async with await session.start_transaction():
            await outbox.insert_one({"source": ctx.doc_id, "attempt": ctx.attempt},
                                    session=session)
            await ctx.mark_completed(session=session)
            if thing.label == "abort" and ctx.attempt == 1:
                raise RuntimeError("failed after the write, before the commit")
    if thing.label == "raise-after-commit":
        raise RuntimeError("failed after the commit")
'''


def test_mark_completed_in_a_transaction_is_exactly_once(
        make_app: AppBuilder, start_runtime: RuntimeFactory, db: Db) -> None:
    """The business write and the completion commit or abort together: an aborted
    transaction leaves no write and the task is retried; a committed one is final even if
    the handler raises afterwards; a retried ``with_transaction`` callback completes it."""
    app = make_app({"react": definition(watch=["n", "label"], policies={
        "retry": {"strategy": "fixed", "interval": "50ms", "maxAttempts": 3}})},
        {"react": TRANSACTION_HANDLER})
    start_runtime(app)
    for label in ("commit", "abort", "raise-after-commit", "with_transaction"):
        db.things.insert_one({"_id": label, "n": 1, "label": label})

    commit = wait_task(db, "commit", status="completed")
    assert commit["attempts"] == 1 and [h["status"] for h in commit["history"]] == [
        "completed"]
    assert db.outbox.count_documents({"source": "commit"}) == 1

    abort = wait_task(db, "abort", status="completed")
    assert [h["status"] for h in abort["history"]] == ["failed", "completed"]
    assert "failed after the write" in abort["history"][0]["error"]
    assert abort["attempts"] == 2 and abort["lastError"] is None
    assert [o["attempt"] for o in db.outbox.find({"source": "abort"})] == [2]

    after = wait_task(db, "raise-after-commit", status="completed")
    assert after["attempts"] == 1 and after["lastError"] is None
    assert [h["status"] for h in after["history"]] == ["completed"]
    assert after["nextRunAt"] is None and after["lease"] is None

    retried = wait_task(db, "with_transaction", status="completed")
    assert [o["call"] for o in db.outbox.find({"source": "with_transaction"})] == [2]
    assert retried["attempts"] == 1 and len(retried["history"]) == 1

    # Nothing runs again later: every task is terminal, and later work is processed.
    planned_up_to(db, "marker", n=0, label="commit")
    wait_task(db, "marker", status="completed")
    assert db.outbox.count_documents({"source": "raise-after-commit"}) == 1
    assert db.outbox.count_documents({}) == 5


SYNC_HANDLER = '''
import os

from pymongo import MongoClient

client = MongoClient(os.environ["TEST_MONGODB_URI"])


def handle(ctx):
    db = client[ctx.database.name]
    thing = ctx.get_document_sync()
    runs = db["runs"].count_documents({"source": ctx.doc_id})
    db["runs"].insert_one({"source": ctx.doc_id, "attempt": ctx.attempt, "n": thing.n})
    if thing.label == "defer" and runs == 0:
        ctx.defer_sync(200)
        return
    if thing.label == "throttle":
        ctx.throttle_sync(1000)
    if thing.label == "plain":
        ctx.mark_completed_sync()
        return
    with client.start_session() as session:
        with session.start_transaction():
            again = ctx.get_document_sync(session=session)
            db["outbox"].insert_one({"source": ctx.doc_id, "n": again.n}, session=session)
            ctx.mark_completed_sync(session=session)
            if thing.label == "abort" and ctx.attempt == 1:
                raise RuntimeError("failed before the commit")
'''


def test_sync_handlers_use_the_sync_context_methods(
        make_app: AppBuilder, start_runtime: RuntimeFactory, db: Db, mongodb_uri: str) -> None:
    """A plain ``def`` handler runs in a thread; ``*_sync`` methods block until done, and a
    synchronous client's session makes ``get_document_sync``/``mark_completed_sync`` part of
    its transaction."""
    app = make_app({"react": definition(watch=["n", "label"], policies={
        "retry": {"strategy": "fixed", "interval": "50ms", "maxAttempts": 3}})},
        {"react": SYNC_HANDLER})
    start_runtime(app, env={"TEST_MONGODB_URI": mongodb_uri})
    for label in ("tx", "abort", "plain", "defer", "throttle"):
        db.things.insert_one({"_id": label, "n": 1, "label": label})

    tx = wait_task(db, "tx", status="completed")
    assert [h["status"] for h in tx["history"]] == ["completed"]
    assert db.outbox.count_documents({"source": "tx"}) == 1
    aborted = wait_task(db, "abort", status="completed")
    assert [h["status"] for h in aborted["history"]] == ["failed", "completed"]
    assert db.outbox.count_documents({"source": "abort"}) == 1
    plain = wait_task(db, "plain", status="completed")
    assert [h["status"] for h in plain["history"]] == ["completed"]
    assert db.outbox.count_documents({"source": "plain"}) == 0
    deferred = wait_task(db, "defer", status="completed")
    assert [(h["status"], h["attempt"]) for h in deferred["history"]] == [
        ("deferred", 1), ("completed", 1)]
    wait_task(db, "throttle", status="completed")
    pause = wait_until(lambda: db.reactgen_meta.find_one({"_id": "throttle:react"}))
    assert pause["by"] == "a"


BLOCKING_SYNC_HANDLER = '''
import os
import time

from pymongo import MongoClient

client = MongoClient(os.environ["TEST_MONGODB_URI"])


def handle(ctx):
    db = client[ctx.database.name]
    ctx.get_document_sync()
    db["waiting"].update_one({"_id": "sync"}, {"$inc": {"count": 1}}, upsert=True)
    while db["gates"].find_one({"_id": "sync"}) is None:
        time.sleep(0.01)
    db["runs"].insert_one({"source": ctx.doc_id})
'''


def test_sync_handlers_run_in_parallel_and_cannot_hold_the_process(
        make_app: AppBuilder, start_runtime: RuntimeFactory, db: Db, mongodb_uri: str) -> None:
    """Up to ``--concurrency`` plain handlers block at once (each has a thread); one that
    outlives its timeout fails the task and does not keep ``runtime serve`` from exiting."""
    app = make_app({"react": definition(watch=["n"]),
                    "stuck": definition(collection="others", watch=["n"], policies={
                        "timeout": "300ms", "retry": {"maxAttempts": 1}})},
                   {"react": BLOCKING_SYNC_HANDLER, "stuck": BLOCKING_SYNC_HANDLER})
    runtime = start_runtime(app, args=["--concurrency", "9"],
                            env={"TEST_MONGODB_URI": mongodb_uri})
    db.things.insert_many([{"_id": f"t{i}", "n": i} for i in range(8)])
    wait_until(lambda: (db.waiting.find_one({"_id": "sync"}) or {}).get("count") == 8,
               message="8 sync handlers blocked at once")
    db.gates.insert_one({"_id": "sync"})
    wait_until(lambda: db.things_tasks.count_documents({"status": "completed"}) == 8)
    db.gates.delete_one({"_id": "sync"})

    db.others.insert_one({"_id": "y", "n": 1})
    task = wait_task(db, "y", tasks="others_tasks", status="failed")
    assert task["lastError"] == "handler timed out after 300 ms"
    assert runtime.stop() == 0  # the stuck handler's thread does not hold the process
    assert db.runs.count_documents({"source": "y"}) == 0
