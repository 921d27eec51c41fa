"""Live instances and the leader (``runtime instances``), and stream-position resets
(``runtime reset-stream``)."""

from __future__ import annotations

import datetime

import pytest
from conftest import AppBuilder, RuntimeFactory
from management_support import Doc, heartbeat, json_lines, management, run_cli
from pymongo.database import Database
from scenario import build, leader, server_now, start
from support import wait_until

from runtime.management import NotFound


def test_instances_from_heartbeats(mongodb_uri: str, db: Database[Doc]) -> None:
    heartbeat(db, "web-1", 1, running=3, leader=True)
    heartbeat(db, "web-2", 4, reactors=["record", "other"])
    heartbeat(db, "dead", 60)
    now = server_now(db)
    db.reactgen_meta.insert_one({"_id": "leader", "owner": "web-1", "token": 7,
                                 "expiresAt": now + datetime.timedelta(seconds=3),
                                 "acquiredAt": now - datetime.timedelta(minutes=1)})
    with management(mongodb_uri, db) as api:
        state = api.instances()
        assert [i.instance for i in state.instances] == ["web-1", "web-2"]
        web1, web2 = state.instances
        assert web1.leader and not web2.leader and web1.live and web1.running == 3
        assert web2.reactors == ["record", "other"] and web2.concurrency == 10
        assert web2.heartbeat_age_seconds is not None and 4 <= web2.heartbeat_age_seconds < 9
        assert state.leader is not None and state.leader.valid and state.leader.token == 7
        stale = api.instances(include_stale=True)
        assert [(i.instance, i.live) for i in stale.instances] == [
            ("dead", False), ("web-1", True), ("web-2", True)]
        assert [i.instance for i in stale.running_reactor("other")] == ["web-2"]

    table = run_cli(["instances"], None, mongodb_uri, db.name)
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split()[:4] == ["INSTANCE", "HOST", "PID", "VERSION"]
    assert lines[1].split()[:6] == ["web-1", "h", "1", "0.1.0", "yes", "3/10"]
    assert lines[2].startswith("web-2") and "live" in lines[2]
    assert lines[-1].startswith("leader: web-1 (token 7, lease until ")
    rows = json_lines(run_cli(["instances", "--json", "--all"], None, mongodb_uri, db.name))
    assert [(r["instance"], r["live"], r["leader"]) for r in rows] == [
        ("dead", False, False), ("web-1", True, True), ("web-2", True, False)]
    assert rows[0]["heartbeat_at"].endswith("Z")

    db.reactgen_meta.update_one({"_id": "leader"}, {"$set": {"expiresAt": now - datetime.
                                                             timedelta(seconds=1)}})
    expired = run_cli(["instances"], None, mongodb_uri, db.name)
    assert "leader: none" in expired.stdout and " yes " not in expired.stdout


def test_instances_of_running_runtimes(mongodb_uri: str, db: Database[Doc],
                                       make_app: AppBuilder,
                                       start_runtime: RuntimeFactory) -> None:
    """Needs the runtime's heartbeat writer (``instance:<id>`` documents)."""
    app = build(make_app)
    a = start(start_runtime, app, "a")
    start(start_runtime, app, "b")

    def listed() -> list[Doc] | None:
        rows = json_lines(run_cli(["instances", "--json"], None, mongodb_uri, db.name))
        lead = leader(db)
        ready = (sorted(r["instance"] for r in rows) == ["a", "b"] and lead is not None
                 and any(r["leader"] for r in rows))
        return rows if ready else None

    rows = wait_until(listed, timeout=30, message="both instances and a leader are listed")
    lead = leader(db)
    assert lead is not None
    assert [r["instance"] for r in rows if r["leader"]] == [lead["owner"]]
    assert all(r["reactors"] == ["record"] and r["live"] for r in rows)
    a.stop()
    wait_until(lambda: [r["instance"] for r in json_lines(run_cli(
        ["instances", "--json"], None, mongodb_uri, db.name))] == ["b"], timeout=30,
        message="a stopped instance is no longer listed")


def test_reset_stream(mongodb_uri: str, db: Database[Doc], make_app: AppBuilder,
                      start_runtime: RuntimeFactory) -> None:
    app = build(make_app)
    missing = run_cli(["reset-stream"], None, mongodb_uri, db.name)
    assert missing.returncode == 3 and f"no planner state for database '{db.name}'" in (
        missing.stderr)
    with management(mongodb_uri, db) as api, pytest.raises(NotFound):
        api.reset_stream("elsewhere")
    db.reactgen_meta.insert_one({"_id": f"planner:{db.name}", "resumeToken": {"_data": "x"}})
    with management(mongodb_uri, db) as api:
        state = api.reset_stream(by="ops")
        assert state.database == db.name and state.reset_requested_by == "ops"
        assert state.reset_requested_at is not None and state.has_position
    doc = db.reactgen_meta.find_one({"_id": f"planner:{db.name}"})
    assert doc is not None and doc["resetRequest"]["by"] == "ops"
    db.reactgen_meta.delete_one({"_id": f"planner:{db.name}"})

    runtime = start(start_runtime, app, "a")
    wait_until(lambda: db.reactgen_meta.find_one({"_id": f"planner:{db.name}"}), timeout=20,
               message="the leader saves a stream position")
    [line] = json_lines(run_cli(["reset-stream", db.name, "--json", "--by", "bob"], None,
                                mongodb_uri, db.name))
    assert line["database"] == db.name and line["reset_requested_by"] == "bob"
    # the leader's side: it reopens the stream and rescans the database's reactors
    runtime.wait_for_log(r"event=planner\.position_reset")
    wait_until(lambda: "resetRequest" not in (
        db.reactgen_meta.find_one({"_id": f"planner:{db.name}"}) or {"resetRequest": 1}),
        timeout=20, message="the leader clears the handled request")
