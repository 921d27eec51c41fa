"""The runtime side of operators' controls, driven through ``reactgen_meta`` documents:
instance heartbeats, a cluster-wide pause, and a stream-position reset request."""

from __future__ import annotations

from typing import Any

from conftest import AppBuilder, RuntimeFactory
from pymongo.database import Database
from scenario import build, count, runs_of, start, stays
from support import wait_until

Doc = dict[str, Any]


def test_heartbeats_report_live_instances_and_the_leader(
        make_app: AppBuilder, start_runtime: RuntimeFactory, db: Database[Doc]) -> None:
    app = build(make_app)
    a = start(start_runtime, app, "a")
    a.wait_for_log(r"event=leader\.gained")
    start(start_runtime, app, "b")
    beats = wait_until(lambda: (lambda docs: docs if len(docs) == 2 and any(
        d.get("leader") for d in docs) else None)(
        list(db.reactgen_meta.find({"_id": {"$regex": "^instance:"}}))))
    by_name = {d["instance"]: d for d in beats}
    assert by_name["a"]["leader"] is True and by_name["b"]["leader"] is False
    assert by_name["a"]["reactors"] == ["record"] and by_name["a"]["heartbeatAt"]
    assert by_name["a"]["pid"] and by_name["a"]["version"]
    a.stop()
    wait_until(lambda: db.reactgen_meta.find_one({"_id": "instance:a"}) is None,
               message="a graceful stop removes the heartbeat")


def test_a_paused_reactor_is_not_claimed_on_any_instance_until_resumed(
        make_app: AppBuilder, start_runtime: RuntimeFactory, db: Database[Doc]) -> None:
    app = build(make_app)
    start(start_runtime, app, "a")
    start(start_runtime, app, "b")
    db.things.insert_one({"_id": "before", "n": 1})
    wait_until(lambda: runs_of(db, "before"))
    db.reactgen_meta.update_one({"_id": "reactor:record"},
                                [{"$set": {"paused": {"at": "$$NOW", "by": "test"}}}])
    wait_until(lambda: all((d.get("paused") or []) == ["record"] for d in db.reactgen_meta.find(
        {"_id": {"$regex": "^instance:"}})), message="both instances report the pause")
    db.things.insert_one({"_id": "while-paused", "n": 1})
    wait_until(lambda: db.things_tasks.find_one({"sourceId": "while-paused"}))
    stays(lambda: not runs_of(db, "while-paused"), 1.5, "a paused reactor ran")
    db.reactgen_meta.update_one({"_id": "reactor:record"}, {"$unset": {"paused": ""}})
    wait_until(lambda: runs_of(db, "while-paused"), timeout=5, message="resumed at once")


def test_stream_position_reset_restarts_at_now_and_scans(
        make_app: AppBuilder, start_runtime: RuntimeFactory, db: Database[Doc]) -> None:
    app = build(make_app)
    a = start(start_runtime, app, "a")
    a.wait_for_log(r"event=scan\.finished")
    db.things.insert_one({"_id": "x", "n": 1})
    wait_until(lambda: runs_of(db, "x"))
    db.reactgen_meta.update_one({"_id": f"planner:{db.name}"},
                                [{"$set": {"resetRequest": {"at": "$$NOW", "by": "test"}}}])
    a.wait_for_log(r"event=planner\.position_reset")
    a.wait_for_log(r"event=scan\.queued .*reasons='stream position reset'")
    wait_until(lambda: count(a, r"event=scan\.finished") == 2)
    wait_until(lambda: "resetRequest" not in (db.reactgen_meta.find_one(
        {"_id": f"planner:{db.name}"}) or {"resetRequest": 1}))
    assert len(runs_of(db, "x")) == 1, "the reset re-ran an up-to-date task"
    db.things.insert_one({"_id": "after", "n": 1})
    wait_until(lambda: runs_of(db, "after"))
