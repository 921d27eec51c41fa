"""The planner's resume token (``reactgen_meta`` ``planner:<db>``): saved after every batch and
while idle, used after a restart, never moved past a batch that failed to plan, and replaced by
a reconciliation when the server no longer has the history it points into."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from conftest import AppBuilder, RuntimeFactory
from pymongo import MongoClient
from pymongo.database import Database
from pymongo.errors import OperationFailure
from runtime_harness import RuntimeProcess
from scenario import build, count, fail_point, runs_of, start, stays, task_of
from support import ServerFactory, wait_until

BAD_VALUE = 2


def _token(db: Database[dict[str, Any]]) -> str | None:
    """The saved resume token's data (hex that sorts like the change log)."""
    state = db.reactgen_meta.find_one({"_id": f"planner:{db.name}"})
    return state["resumeToken"]["_data"] if state and state.get("resumeToken") else None


def _event_token(db: Database[dict[str, Any]], write: Any) -> str:
    """Perform ``write()`` and return the resume token of the change event it caused."""
    with db.watch() as stream:
        write()
        event = wait_until(stream.try_next, message="the write's change event")
        return str(event["_id"]["_data"])


def test_token_is_saved_after_every_batch_and_while_idle(
        make_app: AppBuilder, start_runtime: RuntimeFactory,
        db: Database[dict[str, Any]]) -> None:
    app = build(make_app)
    a = start(start_runtime, app, "a")
    a.wait_for_log(r"event=planner\.started")
    for i in range(3):
        planned = _event_token(db, lambda i=i: db.things.insert_one({"_id": f"d{i}", "n": i}))
        wait_until(lambda i=i: task_of(db, f"d{i}"))
        wait_until(lambda planned=planned: (_token(db) or "") >= planned,
                   message="the token after the planned batch is saved")
    wait_until(lambda: len(runs_of(db, "d2")) == 1)
    # Idle: writes the planner does not care about still move its position, and the position
    # is saved (at most a second later) so a restart does not re-read them.
    before = _token(db)
    unrelated = _event_token(db, lambda: db.elsewhere.insert_one({"x": 1}))
    wait_until(lambda: (_token(db) or "") >= unrelated, timeout=5,
               message="the idle position is saved")
    assert (_token(db) or "") > (before or "")
    assert db.things_tasks.count_documents({}) == 3


def test_changes_made_while_the_runtime_was_down_are_planned_after_a_restart(
        make_app: AppBuilder, start_runtime: RuntimeFactory,
        db: Database[dict[str, Any]]) -> None:
    app = build(make_app)
    first = start(start_runtime, app, "first")
    db.things.insert_one({"_id": "before", "n": 1})
    wait_until(lambda: (task_of(db, "before") or {}).get("status") == "completed")
    saved = wait_until(lambda: _token(db), message="a position is saved")
    first.wait_for_log(r"event=scan\.finished")  # the first start's scan (else resumed below)
    assert first.stop() == 0

    # While nothing runs: a new document, a watched change, an unwatched change.
    db.things.insert_one({"_id": "while-down", "n": 1})
    db.things.update_one({"_id": "before"}, {"$set": {"n": 2}})
    db.things.insert_one({"_id": "quiet", "n": 1})
    db.things.update_one({"_id": "quiet"}, {"$set": {"note": "not watched"}})

    second = start(start_runtime, app, "second")
    second.wait_for_log(r"event=planner\.started .*resumed=True")
    wait_until(lambda: runs_of(db, "while-down") and len(runs_of(db, "before")) == 2
               and runs_of(db, "quiet"), timeout=15)
    for source in ("while-down", "before", "quiet"):
        wait_until(lambda s=source: (task_of(db, s) or {}).get("status") == "completed")
    assert [r["n"] for r in runs_of(db, "before")] == [1, 2]
    assert len(runs_of(db, "while-down")) == 1 and len(runs_of(db, "quiet")) == 1
    assert count(second, r"event=scan\.finished") == 0, "resumed, not reconciled"
    assert (_token(db) or "") > saved


def test_token_never_moves_past_a_batch_that_failed_to_plan(
        make_app: AppBuilder, start_runtime: RuntimeFactory,
        client: MongoClient[dict[str, Any]], db: Database[dict[str, Any]]) -> None:
    app = build(make_app)
    instance = f"fp-{uuid.uuid4().hex[:8]}"  # the fail point hits this runtime's client only
    a = start(start_runtime, app, instance)
    db.things.insert_one({"_id": "ok", "n": 1})
    wait_until(lambda: (task_of(db, "ok") or {}).get("status") == "completed")
    wait_until(lambda: _token(db))
    # insert: new tasks of inserted sources; update: the upserts and the position
    with fail_point(client, {"failCommands": ["insert", "update"],
                             "appName": f"reactgen-{instance}-planner",
                             "errorCode": BAD_VALUE}):
        saved = _token(db)
        assert saved is not None
        failures = count(a, r"event=planner\.batch_failed")
        event = _event_token(db, lambda: db.things.insert_one({"_id": "held-back", "n": 1}))
        db.things.insert_one({"_id": "held-back-2", "n": 1})
        # The planner's bulk write fails and is retried; the position stays before the batch.
        a.wait_for_log(r"(?s)" + r"event=planner\.batch_failed.*" * (failures + 2), timeout=15)
        assert _token(db) == saved
        assert saved < event
        assert task_of(db, "held-back") is None
        stays(lambda: _token(db) == saved, 1.0, "the token moved past the failed batch")
    # Fail point off: the retried batch is planned, then the position moves past it.
    wait_until(lambda: task_of(db, "held-back") and task_of(db, "held-back-2"), timeout=15)
    wait_until(lambda: (_token(db) or "") >= event)
    wait_until(lambda: runs_of(db, "held-back") and runs_of(db, "held-back-2"), timeout=15)
    assert len(runs_of(db, "held-back")) == 1 and len(runs_of(db, "held-back-2")) == 1


@contextmanager
def _runtime_on(uri: str, database: str, app: Any, instance: str) -> Iterator[RuntimeProcess]:
    process = RuntimeProcess(app, uri, database, instance, [], {"TEST_INSTANCE": instance})
    process.start()
    try:
        process.wait_started()
        yield process
    finally:
        try:
            process.stop()
        except AssertionError:
            process.kill()


def test_history_loss_is_reconciled(make_app: AppBuilder, fresh_server: ServerFactory,
                                    tmp_path: Path) -> None:
    # A server whose change log holds ~100 KB: while the runtime is down, more than that is
    # written, so its saved token points into history the server no longer has.
    server = fresh_server(oplog_size_mb=0.1)
    app = build(make_app)
    mongo: MongoClient[dict[str, Any]] = MongoClient(server.uri)
    try:
        db = mongo["history"]
        with _runtime_on(server.uri, db.name, app, "first"):
            db.things.insert_one({"_id": "before", "n": 1})
            wait_until(lambda: (task_of(db, "before") or {}).get("status") == "completed")
            wait_until(lambda: _token(db))
        saved = db.reactgen_meta.find_one({"_id": f"planner:{db.name}"})
        assert saved is not None and saved.get("resumeToken")
        documents = 300
        padding = "x" * 1000
        db.things.insert_many([{"_id": f"m{i:03}", "n": i, "note": padding}
                               for i in range(documents)])
        with pytest.raises(OperationFailure) as lost, \
                db.watch(resume_after=saved["resumeToken"]) as stream:
            stream.try_next()
        assert lost.value.code == 286  # ChangeStreamHistoryLost

        with _runtime_on(server.uri, db.name, app, "second") as second:
            second.wait_for_log(r"event=planner\.history_lost")
            second.wait_for_log(r"event=scan\.finished collection=things")
            wait_until(lambda: db.things_tasks.count_documents({"status": "completed"})
                       == documents + 1, timeout=120, message="every missed document ran")
        runs = list(db.runs.find())
        assert sorted(r["source"] for r in runs) == sorted(
            ["before"] + [f"m{i:03}" for i in range(documents)])
    finally:
        mongo.close()
