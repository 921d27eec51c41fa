"""Time-driven triggers: a filter comparing a field with ``$$NOW`` fires when time passes, with
no write, within a second of the moment, once per crossing, across a change of leader."""

from __future__ import annotations

import datetime
from typing import Any

from conftest import AppBuilder, RuntimeFactory
from pymongo.database import Database
from scenario import build_many, ms, runs_of, server_now, start, stays
from support import wait_until

Doc = dict[str, Any]
DUE = '    trigger:\n      filter: {$lte: ["$dueAt", "$$NOW"]}\n      watch: [n]\n'
REMIND = ('    trigger:\n      filter: {$expr: {$lte: ["$dueAt", {$dateSubtract: '
          '{startDate: "$$NOW", unit: "second", amount: 2}}]}}\n      watch: [n]\n')


def _in(db: Database[Doc], seconds: float) -> datetime.datetime:
    return server_now(db) + datetime.timedelta(seconds=seconds)


def test_documents_become_due_with_no_write(
        make_app: AppBuilder, start_runtime: RuntimeFactory, db: Database[Doc]) -> None:
    db.things.insert_one({"_id": "past", "n": 1, "dueAt": _in(db, -60)})
    app = build_many(make_app, {"record": (DUE, "")})
    start(start_runtime, app, "a")
    wait_until(lambda: runs_of(db, "past"), message="already due at start: the backfill")
    due = {f"t{i}": _in(db, 1.5 + i * 0.5) for i in range(4)}
    db.things.insert_many([{"_id": key, "n": 1, "dueAt": at} for key, at in due.items()])
    db.things.insert_one({"_id": "later", "n": 1, "dueAt": _in(db, 3600)})
    for key, at in due.items():
        run = wait_until(lambda key=key: runs_of(db, key), timeout=15)[0]
        late = ms(run["startedAt"] - at)
        assert 0 <= late < 1000, f"{key} started {late:.0f} ms after its moment"
    # Each crossing once; nothing that is not due yet.
    stays(lambda: all(len(runs_of(db, key)) == 1 for key in due), 1.0, "a crossing ran twice")
    assert not runs_of(db, "later")
    assert len(runs_of(db, "past")) == 1


def test_offset_forms_fire_at_field_plus_offset(
        make_app: AppBuilder, start_runtime: RuntimeFactory, db: Database[Doc]) -> None:
    app = build_many(make_app, {"record": (REMIND, "")})
    start(start_runtime, app, "a")
    at = _in(db, 0.5)
    db.things.insert_one({"_id": "r", "n": 1, "dueAt": at})
    run = wait_until(lambda: runs_of(db, "r"), timeout=15)[0]
    late = ms(run["startedAt"] - (at + datetime.timedelta(seconds=2)))
    assert 0 <= late < 1000, late


def test_crossings_while_no_leader_runs_are_planned_by_the_next(
        make_app: AppBuilder, start_runtime: RuntimeFactory, db: Database[Doc]) -> None:
    app = build_many(make_app, {"record": (DUE, "")})
    a = start(start_runtime, app, "a")
    a.wait_for_log(r"event=planner\.started")
    b = start(start_runtime, app, "b")
    # Due while A is dead and B has not taken over yet (the lease runs ~3 s).
    db.things.insert_one({"_id": "gap", "n": 1, "dueAt": _in(db, 0.8)})
    a.kill()
    b.wait_for_log(r"event=planner\.started", timeout=15)
    wait_until(lambda: runs_of(db, "gap"), timeout=15)
    stays(lambda: len(runs_of(db, "gap")) == 1, 1.0, "the crossing ran twice")
