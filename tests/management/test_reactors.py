"""Reactor summaries, cluster-wide pause and resume, reconciliation requests: the API and
``runtime reactors|pause|resume|reconcile``."""

from __future__ import annotations

import datetime

import pytest
from conftest import AppBuilder, RuntimeFactory
from management_support import Doc, json_lines, management, run_cli, task_doc
from pymongo.database import Database
from scenario import build, runs_of, server_now, start, stays, task_of
from support import wait_until

from runtime.management import PauseState, UnknownReactor


def test_summary(mongodb_uri: str, db: Database[Doc], make_app: AppBuilder) -> None:
    app = build(make_app)
    now = server_now(db)
    ago = now - datetime.timedelta(minutes=10)
    db.things_tasks.insert_many([
        task_doc("due-old", "pending", nextRunAt=now - datetime.timedelta(minutes=1),
                 dueAt=ago),
        task_doc("due-new", "pending", nextRunAt=now - datetime.timedelta(seconds=1),
                 dueAt=now - datetime.timedelta(seconds=1)),
        task_doc("later", "pending", nextRunAt=now + datetime.timedelta(hours=1),
                 dueAt=ago - datetime.timedelta(hours=1)),
        task_doc("run", "processing", nextRunAt=now + datetime.timedelta(minutes=1)),
        task_doc("dirty", "processing_dirty", nextRunAt=now + datetime.timedelta(minutes=1)),
        task_doc("f1", "failed", lastError="old", lastFinalizedAt=ago),
        task_doc("f2", "failed", lastError="newest", lastFinalizedAt=now),
        task_doc("done", "completed"),
        task_doc("other", "failed", "another_reactor", lastFinalizedAt=now),
    ])
    db.reactgen_meta.insert_many([
        {"_id": "throttle:record", "until": now + datetime.timedelta(minutes=5), "by": "a"},
        {"_id": f"scan:{db.name}.things", "passes": [
            {"id": 1, "reactors": {"record": "requested: test"}, "phase": "documents",
             "scanned": 40, "expected": 100, "startedAt": now},
            {"id": 2, "reactors": {"someone_else": "new reactor"}, "phase": "orphans"}],
         "lastFinished": {"reactors": {"record": "first start"}, "finishedAt": ago}},
    ])
    with management(mongodb_uri, db, app) as api:
        api.pause("record", "maintenance")
        summary = api.reactor_summary("record")
        assert summary.counts == {"pending": 3, "processing": 1, "processing_dirty": 1,
                                  "completed": 1, "failed": 2, "skipped": 0}
        assert summary.total == 8 and summary.running == 2 and summary.due == 2
        assert summary.oldest_due_at == ago
        assert summary.lag_seconds is not None and 600 <= summary.lag_seconds < 660
        assert summary.paused is not None and summary.paused.reason == "maintenance"
        assert summary.throttled_until == now + datetime.timedelta(minutes=5)
        assert summary.last_error is not None and summary.last_error.error == "newest"
        assert [(s.reason, s.phase, s.scanned, s.expected) for s in summary.scans] == [
            ("requested: test", "documents", 40, 100)]
        assert summary.last_scan_finished_at == ago
        assert [s.name for s in api.reactor_summaries()] == ["record"]
        with pytest.raises(UnknownReactor):
            api.reactor_summary("another_reactor")

    table = run_cli(["reactors"], app, mongodb_uri, db.name)
    assert table.returncode == 0, table.stderr
    header, row = table.stdout.splitlines()
    assert header.split()[:8] == ["REACTOR", "PENDING", "DUE", "RUNNING", "COMPLETED",
                                  "FAILED", "SKIPPED", "LAG"]
    assert row.split()[:8] == ["record", "3", "2", "2", "1", "2", "0", "10"]
    assert "paused (maintenance)" in row and "throttled in" in row and "scanning 40%" in row
    assert row.rstrip().endswith("newest")
    [line] = json_lines(run_cli(["reactors", "record", "--json"], app, mongodb_uri, db.name))
    assert line["name"] == "record" and line["running"] == 2 and line["due"] == 2
    assert line["paused"]["reason"] == "maintenance" and line["last_error"]["error"] == "newest"
    unknown = run_cli(["reactors", "nope"], app, mongodb_uri, db.name)
    assert unknown.returncode == 3 and "unknown reactor 'nope'" in unknown.stderr


def test_pause_and_resume_write_the_reactor_document(mongodb_uri: str, db: Database[Doc],
                                                     make_app: AppBuilder) -> None:
    app = build(make_app)
    before = server_now(db)
    with management(mongodb_uri, db, app) as api:
        state = api.pause("record", "deploy", by="ops")
        doc = db.reactgen_meta.find_one({"_id": "reactor:record"})
        assert doc is not None and doc["paused"] == {"at": state.at, "by": "ops",
                                                     "reason": "deploy"}
        assert state.at is not None and state.at >= before
        assert api.paused("record") == state
        assert api.resume("record") == state
        assert "paused" not in (db.reactgen_meta.find_one({"_id": "reactor:record"}) or {})
        assert api.resume("record") is None
        with pytest.raises(UnknownReactor):
            api.pause("nope")

    paused = run_cli(["pause", "record", "--reason", "db migration", "--by", "alice"], app,
                     mongodb_uri, db.name)
    assert paused.returncode == 0, paused.stderr
    assert "paused record" in paused.stdout and "db migration" in paused.stdout
    doc = db.reactgen_meta.find_one({"_id": "reactor:record"})
    assert doc is not None and doc["paused"]["by"] == "alice"
    assert doc["paused"]["reason"] == "db migration"
    [resumed] = json_lines(run_cli(["resume", "record", "--json"], app, mongodb_uri, db.name))
    assert resumed["resumed"] is True and resumed["paused"]["by"] == "alice"
    again = run_cli(["resume", "record"], app, mongodb_uri, db.name)
    assert again.returncode == 0 and "record was not paused" in again.stdout
    assert run_cli(["pause", "nope"], app, mongodb_uri, db.name).returncode == 3


def test_pause_stops_claims(mongodb_uri: str, db: Database[Doc], make_app: AppBuilder,
                            start_runtime: RuntimeFactory) -> None:
    """While paused no task of the reactor starts on any instance; after resume they do."""
    app = build(make_app)
    start(start_runtime, app, "a")
    start(start_runtime, app, "b")
    db.things.insert_one({"_id": "before", "n": 1})
    wait_until(lambda: len(runs_of(db, "before")) == 1, timeout=20, message="it runs")
    assert run_cli(["pause", "record"], app, mongodb_uri, db.name).returncode == 0

    def paused_everywhere() -> bool:
        """Every instance reports the pause in its heartbeat (it learns it within
        milliseconds; heartbeats are written every 2 s)."""
        with management(mongodb_uri, db, app) as api:
            instances = api.instances().instances
        return sorted(i.instance for i in instances if i.paused == ["record"]) == ["a", "b"]

    wait_until(paused_everywhere, timeout=20, interval=0.2,
               message="both instances know of the pause")
    db.things.insert_many([{"_id": "p1", "n": 1}, {"_id": "p2", "n": 2}])
    wait_until(lambda: (task_of(db, "p2") or {}).get("status") == "pending", timeout=20,
               message="tasks are still planned while paused")
    stays(lambda: not runs_of(db, "p1") and not runs_of(db, "p2"), 2.0,
          "a task of a paused reactor started")
    assert run_cli(["resume", "record"], app, mongodb_uri, db.name).returncode == 0
    wait_until(lambda: len(runs_of(db, "p1")) == 1 and len(runs_of(db, "p2")) == 1,
               timeout=20, message="tasks run after resume")


def test_reconcile_request(mongodb_uri: str, db: Database[Doc], make_app: AppBuilder,
                           start_runtime: RuntimeFactory) -> None:
    app = build(make_app)
    with management(mongodb_uri, db, app) as api:
        api.request_reconcile("record", "restored backup")
        doc = db.reactgen_meta.find_one({"_id": "reactor:record"})
        assert doc is not None and doc["scanRequest"]["reason"] == "restored backup"
        assert doc["scanRequest"]["by"] == "tester"
        assert api.reactor_summary("record").scan_requested_at == doc["scanRequest"]["at"]
    runtime = start(start_runtime, app, "a")
    runtime.wait_for_log(r"event=scan\.queued.*requested: restored backup")
    requested = run_cli(["reconcile", "record", "--reason", "fixed data"], app, mongodb_uri,
                        db.name)
    assert requested.returncode == 0, requested.stderr
    assert "requested a reconciliation of record" in requested.stdout
    runtime.wait_for_log(r"event=scan\.queued.*requested: fixed data")
    wait_until(lambda: "scanRequest" not in (
        db.reactgen_meta.find_one({"_id": "reactor:record"}) or {"scanRequest": 1}),
        timeout=20, message="the leader picks the request up")
    assert run_cli(["reconcile", "nope"], app, mongodb_uri, db.name).returncode == 3


def test_pause_state_from_document() -> None:
    assert PauseState.from_document(None) is None
    assert PauseState.from_document({"by": "x"}) == PauseState(None, "x", None)
