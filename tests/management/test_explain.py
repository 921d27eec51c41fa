"""``explain``: the API and ``runtime explain`` in each main state."""

from __future__ import annotations

import datetime

from conftest import AppBuilder, RuntimeFactory
from management_support import Doc, json_lines, management, run_cli, task_doc
from pymongo.database import Database
from runtime_harness import App
from scenario import SCHEMA_HEAD, handler, release, runs_of, server_now, start
from support import wait_until

from runtime.management import ExplainState, ManagementSync
from runtime.task_store import snapshot_hash

FILTERED = "    trigger:\n      filter: {note: go}\n      watch: [n]\n"

FAILING = """
    from {package}.reactors.NAME import Context


    async def handle(ctx: Context) -> None:
        thing = await ctx.get_document()
        await ctx.database["attempts"].insert_one({"source": thing.id, "reactor": "NAME"})
        if thing.n is not None and thing.n < 0:
            raise RuntimeError(f"negative n: {thing.n}")
"""


def definition(policies: str = "") -> str:
    return SCHEMA_HEAD + FILTERED + (f"    policies:\n{policies}" if policies else "")


def filtered_app(make_app: AppBuilder) -> App:
    """``record``: filter ``note: go``, watch ``n``, the blocking recorder; ``retrying``
    (retry in an hour, 2 attempts) and ``once`` (1 attempt) fail for a negative ``n``."""
    return make_app(
        {"record": definition(),
         "retrying": definition("      retry: {strategy: fixed, interval: 1h, "
                                "maxAttempts: 2}\n"),
         "once": definition("      retry: {maxAttempts: 1}\n")},
        {"record": handler("record"),
         "retrying": FAILING.replace("NAME", "retrying"),
         "once": FAILING.replace("NAME", "once")})


def explain_cli(app: App, uri: str, db: Database[Doc], reactor: str, source: str) -> str:
    result = run_cli(["explain", reactor, source], app, uri, db.name)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_explain_without_a_runtime(mongodb_uri: str, db: Database[Doc],
                                   make_app: AppBuilder) -> None:
    app = filtered_app(make_app)
    now = server_now(db)
    db.things.insert_many([{"_id": "stop", "note": "stop", "n": 1},
                           {"_id": "go", "note": "go", "n": 1},
                           {"_id": "skip", "note": "go", "n": 2},
                           {"_id": "poison", "note": "go", "n": 3},
                           {"_id": "waiting", "note": "go", "n": 4},
                           {"_id": "42", "note": "go", "n": 5}])
    db.things_tasks.insert_many([
        task_doc("skip", "skipped", skipReason="late-binding check failed",
                 snapshot={"n": 2}, snapshotHash=snapshot_hash({"n": 2})),
        task_doc("poison", "failed", planningError={"at": now, "error": "bad $toInt"},
                 lastError="planning failed: bad $toInt"),
        task_doc("waiting", "pending", nextRunAt=now - datetime.timedelta(seconds=5),
                 snapshot={"n": 4}, snapshotHash=snapshot_hash({"n": 4})),
        task_doc("42", "pending", nextRunAt=now + datetime.timedelta(hours=1),
                 snapshot={"n": 5}, snapshotHash=snapshot_hash({"n": 5}),
                 history=[{"at": now, "status": "deferred", "attempt": 1}],
                 lastFinalizedAt=now, updatedAt=now - datetime.timedelta(minutes=1)),
    ])
    with management(mongodb_uri, db, app) as api:
        missing = api.explain("record", "missing")
        assert missing.state is ExplainState.NO_DOCUMENT and not missing.document_exists
        assert missing.summary == "no task: the document does not exist"
        stop = api.explain("record", "stop")
        assert stop.state is ExplainState.NOT_MATCHING and stop.matches_filter is False
        go = api.explain("record", "go")
        assert go.state is ExplainState.NOT_PLANNED and go.matches_filter is True
        assert go.watched_now == {"n": 1}
        assert "no leader is running" in go.notes[-1]
        skipped = api.explain("record", "skip")
        assert skipped.state is ExplainState.SKIPPED and skipped.snapshot_changed is False
        assert skipped.summary.startswith("skipped: late-binding check failed; runs again")
        assert "runtime tasks retry --reactor record --source-id skip" in skipped.summary
        poison = api.explain("record", "poison")
        assert poison.state is ExplainState.POISON and "bad $toInt" in poison.summary
        waiting = api.explain("record", "waiting")
        assert waiting.state is ExplainState.PENDING and waiting.runs_at is not None
        assert waiting.summary.startswith("pending, due now (overdue by ")
        assert any("no runtime instance reported a heartbeat" in n for n in waiting.notes)
        deferred = api.explain("record", "42")
        assert "deferred by the handler" in deferred.summary
        assert deferred.runs_at is not None and deferred.runs_at > now
        api.pause("record", "maintenance")
        paused = api.explain("record", "waiting")
        assert paused.summary.startswith("paused: pending, due now")
        assert paused.runs_at is None and paused.paused is not None
        assert any("runtime resume record" in n for n in paused.notes)

    text = explain_cli(app, mongodb_uri, db, "record", "stop")
    assert "document  exists, does not match the filter" in text
    assert "state     no task: the document does not match the filter" in text
    assert 'filter: {"note": "go"}' in text
    # a string id that reads as JSON: quoted on the command line
    assert "deferred by the handler" in explain_cli(app, mongodb_uri, db, "record", '"42"')
    assert "no task: the document does not exist" in explain_cli(app, mongodb_uri, db,
                                                                 "record", "42")
    [line] = json_lines(run_cli(["explain", "record", "waiting", "--json"], app, mongodb_uri,
                                db.name))
    assert line["state"] == "pending" and line["task"]["source_id"] == "waiting"
    assert line["paused"]["reason"] == "maintenance" and line["runs_at"] is None
    assert line["server_time"].endswith("Z")
    unknown = run_cli(["explain", "nope", "x"], app, mongodb_uri, db.name)
    assert unknown.returncode == 3


def test_explain_with_a_runtime(mongodb_uri: str, db: Database[Doc], make_app: AppBuilder,
                                start_runtime: RuntimeFactory) -> None:
    app = filtered_app(make_app)
    runtime = start(start_runtime, app, "a")
    db.things.insert_many([{"_id": "ok", "note": "go", "n": 1},
                           {"_id": "bad", "note": "go", "n": -1},
                           {"_id": "busy", "note": "go", "n": 2, "block": True}])
    wait_until(lambda: db.things_tasks.count_documents({"sourceId": "ok",
                                                        "status": "completed"}) == 3
               and len(runs_of(db, "busy")) == 1
               and db.things_tasks.count_documents({"sourceId": "bad", "attempts": 1,
                                                    "lastError": {"$ne": None}}) == 2,
               timeout=30, message="tasks ran")
    api: ManagementSync
    with management(mongodb_uri, db, app) as api:
        completed = api.explain("record", "ok")
        assert completed.state is ExplainState.COMPLETED and completed.snapshot_changed is False
        assert "runs again when a watched value changes" in completed.summary
        retrying = api.explain("retrying", "bad")
        assert retrying.state is ExplainState.PENDING
        assert "(retry 2 after error: RuntimeError: negative n: -1)" in retrying.summary
        assert retrying.runs_at is not None and retrying.runs_at > retrying.server_time
        failed = api.explain("once", "bad")
        assert failed.state is ExplainState.FAILED
        assert failed.summary.startswith("failed for good after 1 attempt(s): RuntimeError: "
                                         "negative n: -1; retry with `runtime tasks retry "
                                         "--reactor once --source-id bad`")
        running = api.explain("record", "busy")
        assert running.state is ExplainState.RUNNING
        assert running.summary.startswith("running on instance a since ")
        release(db)
        wait_until(lambda: db.things_tasks.count_documents(
            {"reactor": "record", "sourceId": "busy", "status": "completed"}) == 1,
                   timeout=20, message="the blocked handler finishes")
        runtime.stop()
        db.things.update_one({"_id": "ok"}, {"$set": {"n": 10}})
        changed = api.explain("record", "ok")
        assert changed.snapshot_changed is True and changed.watched_now == {"n": 10}
        assert any("watched values changed since the task was planned" in n
                   for n in changed.notes)
        db.things.update_one({"_id": "ok"}, {"$set": {"note": "stop"}})
        unmatched = api.explain("record", "ok")
        assert unmatched.matches_filter is False and any(
            "no longer matches the filter" in n for n in unmatched.notes)
    text = explain_cli(app, mongodb_uri, db, "once", "bad")
    assert "task " in text and "failed, attempts 1" in text
    assert "state     failed for good after 1 attempt(s)" in text


def test_explain_names_the_flow_control_that_holds_a_task(mongodb_uri: str, db: Database[Doc],
                                                          make_app: AppBuilder) -> None:
    app = make_app(
        {"record": definition("      concurrency: {max: 1}\n"),
         "keyed": definition("      concurrency: {key: '$note', max: 1}\n"
                             "      rateLimit: {max: 2, per: 1h}\n"
                             "      priority: {expression: '$n'}\n")},
        {"record": handler("record"), "keyed": handler("keyed")})
    now = server_now(db)
    due = now - datetime.timedelta(seconds=5)
    db.things.insert_many([{"_id": "a", "note": "go", "n": 1}, {"_id": "b", "note": "go", "n": 2},
                           {"_id": "c", "note": "go", "n": 9}])
    db.things_tasks.insert_many([
        task_doc("a", "processing", slot="record#0", nextRunAt=now),
        task_doc("b", "pending", nextRunAt=due),
        task_doc("a", "processing", reactor="keyed", keySlot="keyed#k#0",
                 concurrencyKey="k", concurrencyKeyValue="go", priority=1, nextRunAt=now),
        task_doc("b", "pending", reactor="keyed", concurrencyKey="k",
                 concurrencyKeyValue="go", priority=2, nextRunAt=due),
        task_doc("c", "pending", reactor="keyed", concurrencyKey="k2",
                 concurrencyKeyValue="other", priority=9, nextRunAt=due),
    ])
    db.reactgen_rate_limits.insert_one({"_id": "keyed", "tokens": 0.0, "refilledAt": now,
                                        "max": 2, "perMs": 3_600_000})
    with management(mongodb_uri, db, app) as api:
        held = api.explain("record", "b")
        assert any("1 of 1 executions are running (concurrency.max)" in n for n in held.notes)
        keyed = api.explain("keyed", "b")
        text = "\n".join(keyed.notes)
        assert "waits for its key 'go': 1 of 1" in text
        assert "rate limit 2 per 3600000 ms: the bucket is empty" in text
        assert "priority 2: 1 due task(s) with a higher priority go first" in text
