"""Reconciliation as a checkpointed process (``reactgen_meta`` ``scan:<db>.<collection>``):
first start, crash mid-scan, backfill of a new reactor, trigger changes, history loss, orphan
cleanup, removed reactors and explicit requests, all through real ``runtime serve`` processes."""

from __future__ import annotations

import datetime
import json
import uuid
from typing import Any

import pytest
from bson import ObjectId
from conftest import AppBuilder, RuntimeFactory
from pymongo import MongoClient
from pymongo.database import Database
from runtime_harness import App
from scenario import build, build_many, count, fail_point, runs_of, start, stays
from support import wait_until

from runtime.reconciliation import request_scan_sync

Doc = dict[str, Any]
HOUR = "      debounce: 1h\n"
"""Keeps workers out of the way: tasks are planned but not due for an hour."""


def _scan(db: Database[Doc], collection: str = "things") -> Doc | None:
    return db.reactgen_meta.find_one({"_id": f"scan:{db.name}.{collection}"})


def _scanned(db: Database[Doc]) -> int:
    """Documents planned by the running pass (0 when none runs)."""
    scan = _scan(db)
    passes = (scan or {}).get("passes") or []
    return int(passes[0].get("scanned", 0)) if passes else 0


def _fingerprint(app: App) -> str:
    manifest = json.loads((app.root / app.package / "manifest.json").read_text())
    return str(manifest["reactors"]["record"]["triggerFingerprint"])


def _finished(db: Database[Doc]) -> Doc | None:
    scan = _scan(db)
    return scan.get("lastFinished") if scan and not scan.get("passes") else None


def test_first_start_plans_existing_documents_and_records_the_scan(
        make_app: AppBuilder, start_runtime: RuntimeFactory, db: Database[Doc]) -> None:
    db.things.insert_many([{"_id": f"d{i:03}", "n": i} for i in range(300)])
    app = build(make_app)
    a = start(start_runtime, app, "a")
    wait_until(lambda: db.things_tasks.count_documents({"status": "completed"}) == 300,
               timeout=60)
    finished = wait_until(lambda: _finished(db))
    assert finished["scanned"] == 300 and finished["reactors"] == {"record": "new reactor"}
    a.wait_for_log(r"event=scan\.finished collection=things .*documents=300\b")
    state = db.reactgen_meta.find_one({"_id": "reactor:record"})
    assert state is not None and state["handlerVersion"] == 1 and state["fingerprint"]
    assert state["collection"] == "things" and state["leaderToken"] == 1


def test_ids_of_every_type_are_scanned_in_bson_order(
        make_app: AppBuilder, start_runtime: RuntimeFactory, db: Database[Doc]) -> None:
    # $gt does not cross BSON type brackets: a scan walking only one type would skip the rest.
    ids: list[Any] = [None, -3, 2.5, 7, "a", "b", {"k": 1}, ObjectId(), True,
                      datetime.datetime(2020, 1, 1)]
    db.things.insert_many([{"_id": i, "n": 1} for i in ids])
    app = make_app({"record": """
        collection: things
        schema: {type: object, title: Thing, properties: {n: {type: integer}}}
        trigger:
          watch: [n]
        policies:
          debounce: 1h
    """}, {})
    start(start_runtime, app, "a")
    finished = wait_until(lambda: _finished(db), timeout=30)
    assert finished["scanned"] == len(ids)
    assert db.things_tasks.count_documents({}) == len(ids)


def test_live_changes_are_planned_while_a_long_scan_runs(
        make_app: AppBuilder, start_runtime: RuntimeFactory, db: Database[Doc]) -> None:
    documents = 8000
    db.things.insert_many([{"_id": f"d{i:05}", "n": i} for i in range(documents)])
    app = build(make_app, policies=HOUR)
    start(start_runtime, app, "a")
    wait_until(lambda: _scanned(db) > 0, timeout=30, message="the scan is under way")
    db.things.insert_one({"_id": "fresh", "n": 1})
    wait_until(lambda: db.things_tasks.find_one({"sourceId": "fresh"}), timeout=10)
    assert _finished(db) is None, "the new document waited for the scan"
    wait_until(lambda: _finished(db), timeout=90)
    assert db.things_tasks.count_documents({}) == documents + 1


@pytest.mark.parametrize("kill_at", [0, 2000, 5500])
def test_leader_killed_mid_scan_leaves_it_to_its_successor(
        make_app: AppBuilder, start_runtime: RuntimeFactory, db: Database[Doc],
        kill_at: int) -> None:
    # 6,000 documents exist before the first start. The first leader is SIGKILLed once its
    # checkpoint passed ``kill_at`` (0: as soon as the scan is queued); the second continues
    # from the checkpoint. Every document gets its task; the pass is not restarted.
    documents = 6000
    db.things.insert_many([{"_id": f"d{i:05}", "n": i} for i in range(documents)])
    app = build(make_app, policies=HOUR)
    a = start(start_runtime, app, "a")
    a.wait_for_log(r"event=leader\.gained instance=a")
    b = start(start_runtime, app, "b")
    wait_until(lambda: _scan(db) is not None and _scanned(db) >= kill_at, timeout=60,
               message=f"the scan checkpoint passed {kill_at}")
    a.kill()
    checkpoint = _scanned(db)
    assert checkpoint < documents, "the scan finished before the kill; nothing was shown"
    b.wait_for_log(r"event=leader\.gained instance=b", timeout=15)
    b.wait_for_log(r"event=scan\.started collection=things .*resumed=(True|False)")
    finished = wait_until(lambda: _finished(db), timeout=90, message="the scan finished")
    assert db.things_tasks.count_documents({}) == documents
    assert db.things_tasks.count_documents({"status": "pending"}) == documents
    # One pass, continued: its count is the documents, not documents + what A did again.
    assert finished["scanned"] == documents
    if checkpoint > 0:
        assert count(b, r"event=scan\.started .*resumed=True") == 1


def test_backfill_of_a_new_reactor_leaves_the_others_alone(
        make_app: AppBuilder, start_runtime: RuntimeFactory, db: Database[Doc]) -> None:
    db.things.insert_many([{"_id": f"d{i:03}", "n": i} for i in range(500)])
    first = build_many(make_app, {"record": ("", "")})
    a = start(start_runtime, first, "a")
    wait_until(lambda: db.runs.count_documents({"reactor": "record"}) == 500, timeout=60)
    a.stop()
    # A new version of the application adds a reactor to the same collection.
    second = build_many(make_app, {"record": ("", ""), "audit": ("", "")})
    b = start(start_runtime, second, "b")
    wait_until(lambda: db.runs.count_documents({"reactor": "audit"}) == 500, timeout=60,
               message="the new reactor ran for every existing document")
    b.wait_for_log(r"event=scan\.finished collection=things .*reactors=audit\b")
    assert db.runs.count_documents({"reactor": "record"}) == 500, "old reactor re-ran"
    assert count(b, r"event=scan\.queued .*reactors=audit reasons='new reactor'") == 1


@pytest.mark.parametrize("reconcile", [True, False])
def test_trigger_change_reconciles_when_the_policy_says_so(
        make_app: AppBuilder, start_runtime: RuntimeFactory, db: Database[Doc],
        reconcile: bool) -> None:
    db.things.insert_many([{"_id": f"d{i:03}", "n": i} for i in range(400)])
    evolution = "" if reconcile else "      evolution: {reconcileOnTriggerChange: false}\n"
    narrow = "    trigger:\n      filter: {n: {$lt: 100}}\n      watch: [n]\n"
    wide = "    trigger:\n      filter: {n: {$lt: 400}}\n      watch: [n]\n"
    first = build_many(make_app, {"record": (narrow, evolution)})
    a = start(start_runtime, first, "a")
    wait_until(lambda: db.runs.count_documents({}) == 100, timeout=60)
    a.stop()
    second = build_many(make_app, {"record": (wide, evolution)})
    b = start(start_runtime, second, "b")
    b.wait_for_log(r"event=evolution\.trigger_changed reactor=record")
    if reconcile:
        wait_until(lambda: db.runs.count_documents({}) == 400, timeout=60,
                   message="the 300 documents that match now ran")
        assert len({r["source"] for r in db.runs.find()}) == 400
    else:
        b.wait_for_log(r"event=planner\.started")
        stays(lambda: db.runs.count_documents({}) == 100, 2.0,
              "reconcileOnTriggerChange: false must not scan")
        assert count(b, r"event=scan\.queued") == 0
    state = db.reactgen_meta.find_one({"_id": "reactor:record"})
    assert state is not None and state["fingerprint"] == _fingerprint(second)
    assert _fingerprint(first) != _fingerprint(second)


@pytest.mark.parametrize("code", [286, 280, 260])
@pytest.mark.parametrize("command", ["aggregate", "getMore"])
def test_each_history_loss_code_starts_a_scan(
        make_app: AppBuilder, start_runtime: RuntimeFactory, client: MongoClient[Doc],
        db: Database[Doc], code: int, command: str) -> None:
    # A leads; B follows with a fail point on its own commands: when B takes over, opening
    # (aggregate) or reading (getMore) the stream at A's saved position fails with ``code``.
    app = build(make_app)
    a = start(start_runtime, app, "a")
    db.things.insert_one({"_id": "before", "n": 1})
    wait_until(lambda: runs_of(db, "before"))
    b_id = f"hl-{uuid.uuid4().hex[:8]}"
    b = start(start_runtime, app, b_id)
    # The planner has a client of its own (application name ``...-planner``), idle until B
    # leads: its first aggregate or getMore is the planner's open or first read.
    with fail_point(client, {"failCommands": [command], "appName": f"reactgen-{b_id}-planner",
                              "errorCode": code}, mode={"times": 1}):
        a.kill()
        # Written while nobody leads: only the stream (whose history is "lost") or a
        # scan can find it.
        db.things.insert_one({"_id": "while-down", "n": 1})
        b.wait_for_log(r"event=planner\.history_lost", timeout=20)
    b.wait_for_log(r"event=scan\.queued .*reasons='change-stream history lost'")
    b.wait_for_log(r"event=scan\.finished collection=things")
    wait_until(lambda: runs_of(db, "while-down"), timeout=30)
    assert len(runs_of(db, "before")) == 1, "an up-to-date task ran again"


def test_orphaned_tasks_are_cleaned_up_and_never_claimed(
        make_app: AppBuilder, start_runtime: RuntimeFactory, client: MongoClient[Doc],
        db: Database[Doc]) -> None:
    # Tasks exist whose sources were deleted while no leader ran, and the stream's history
    # of those deletes is gone: the scan after the history loss applies the cleanup policy.
    app = build(make_app, policies=HOUR + "      cleanup: {when: sourceDeleted, keepFor: 1h}\n")
    db.things.insert_many([{"_id": f"d{i:02}", "n": i} for i in range(40)])
    a = start(start_runtime, app, "a")
    wait_until(lambda: db.things_tasks.count_documents({"status": "pending"}) == 40,
               timeout=30, message="tasks planned (pending: debounced by an hour)")
    wait_until(lambda: _finished(db))
    b_id = f"or-{uuid.uuid4().hex[:8]}"
    b = start(start_runtime, app, b_id)
    deleted = [f"d{i:02}" for i in range(20)]
    with fail_point(client, {"failCommands": ["aggregate"],
                              "appName": f"reactgen-{b_id}-planner", "errorCode": 286},
                     mode={"times": 1}):
        a.kill()
        db.things.delete_many({"_id": {"$in": deleted}})
        b.wait_for_log(r"event=planner\.history_lost", timeout=20)
    b.wait_for_log(r"event=scan\.finished collection=things .*orphans=20\b", timeout=30)
    gone = list(db.things_tasks.find({"sourceId": {"$in": deleted}}))
    assert len(gone) == 20
    assert all(t["status"] == "skipped" and t["expiresAt"] and t["nextRunAt"] is None
               for t in gone)
    assert db.things_tasks.count_documents({"status": "pending"}) == 20
    assert db.runs.count_documents({}) == 0


def test_removed_reactor_tasks_are_retired_and_never_claimed(
        make_app: AppBuilder, start_runtime: RuntimeFactory, db: Database[Doc]) -> None:
    db.things.insert_many([{"_id": f"d{i:02}", "n": i} for i in range(30)])
    first = build_many(make_app, {"record": ("", ""), "audit": ("", HOUR)})
    a = start(start_runtime, first, "a")
    wait_until(lambda: db.things_tasks.count_documents({"reactor": "audit",
                                                        "status": "pending"}) == 30)
    a.stop()
    second = build_many(make_app, {"record": ("", "")})
    b = start(start_runtime, second, "b")
    b.wait_for_log(r"event=evolution\.reactor_removed reactor=audit .*tasks=30\b")
    retired = list(db.things_tasks.find({"reactor": "audit"}))
    assert len(retired) == 30
    assert all(t["status"] == "skipped" and t["nextRunAt"] is None and t["expiresAt"]
               for t in retired)
    state = db.reactgen_meta.find_one({"_id": "reactor:audit"})
    assert state is not None and state.get("removedAt")
    # Even an instance that still defines the reactor never claims them.
    c = start(start_runtime, first, "c")
    c.wait_started()
    stays(lambda: db.runs.count_documents({"reactor": "audit"}) == 0, 1.5,
          "a retired task was claimed")


def test_explicit_request_scans_and_reports_progress(
        make_app: AppBuilder, start_runtime: RuntimeFactory, db: Database[Doc]) -> None:
    db.things.insert_many([{"_id": f"d{i:03}", "n": i} for i in range(200)])
    app = build(make_app)
    a = start(start_runtime, app, "a")
    wait_until(lambda: db.runs.count_documents({}) == 200, timeout=60)
    first = wait_until(lambda: _finished(db))
    # A task deleted by hand (an operator mistake) is recreated by the requested scan.
    db.things_tasks.delete_one({"sourceId": "d007"})
    request_scan_sync(db, "record", reason="operator check")
    a.wait_for_log(r"event=scan\.queued .*reasons='requested: operator check'")
    wait_until(lambda: (_finished(db) or first)["startedAt"] != first["startedAt"],
               timeout=30, message="the requested pass finished")
    wait_until(lambda: len(runs_of(db, "d007")) == 2)
    assert db.runs.count_documents({}) == 201, "only the missing task ran again"
    assert db.reactgen_meta.find_one({"_id": "reactor:record"}).get("scanRequest") is None
