"""Evolution of a deployed reactor: ``handlerVersion`` increases with each
``onVersionIncrease`` policy, and a rollback, through real ``runtime serve`` processes."""

from __future__ import annotations

from typing import Any

import pytest
from conftest import AppBuilder, RuntimeFactory
from pymongo.database import Database
from scenario import count, definition, handler, start, stays
from support import wait_until

Doc = dict[str, Any]
FAILING = handler("record").replace(
    "        MARK_COMPLETED_EARLY\n", "").replace(
    '        if thing.block:', '        if (thing.n or 0) % 3 == 0:\n'
    '            raise RuntimeError("version 1 cannot handle this")\n'
    '        if thing.block:')


def _policies(version: int, mode: str) -> str:
    return ("      retry: {strategy: fixed, interval: 1s, maxAttempts: 1}\n"
            f"      evolution: {{handlerVersion: {version}, onVersionIncrease: {mode}}}\n")


@pytest.mark.parametrize(("mode", "reruns"), [("none", 0), ("reprocessFailed", 10),
                                              ("reprocessAll", 30)])
def test_handler_version_increase_applies_the_policy(
        make_app: AppBuilder, start_runtime: RuntimeFactory, db: Database[Doc],
        mode: str, reruns: int) -> None:
    assert "version 1 cannot" in FAILING
    db.things.insert_many([{"_id": f"d{i:02}", "n": i} for i in range(30)])
    first = make_app({"record": definition(_policies(1, mode))}, {"record": FAILING})
    a = start(start_runtime, first, "a")
    wait_until(lambda: db.things_tasks.count_documents(
        {"status": {"$in": ["completed", "failed"]}}) == 30, timeout=60)
    assert db.things_tasks.count_documents({"status": "failed"}) == 10
    a.stop()
    before = db.runs.count_documents({})
    second = make_app({"record": definition(_policies(2, mode))}, {"record": handler("record")})
    b = start(start_runtime, second, "b")
    b.wait_for_log(rf"event=evolution\.version_increased reactor=record .*"
                   rf"on_version_increase={mode}\b")
    if reruns:
        wait_until(lambda: db.runs.count_documents({}) == before + reruns, timeout=60,
                   message=f"{reruns} tasks reprocessed")
        wait_until(lambda: db.things_tasks.count_documents({"status": "completed"}) == 30)
        again = list(db.runs.find().sort("startedAt", 1))[before:]
        assert all(r["attempt"] == 1 for r in again), "attempts were not reset"
        if mode == "reprocessFailed":
            assert {r["source"] for r in again} == {f"d{i:02}" for i in range(0, 30, 3)}
    else:
        b.wait_for_log(r"event=planner\.started")
        stays(lambda: db.runs.count_documents({}) == before, 1.5, "'none' reprocessed")
    state = db.reactgen_meta.find_one({"_id": "reactor:record"})
    assert state is not None and state["handlerVersion"] == 2
    # A restart with the same version reprocesses nothing more.
    b.stop()
    runs = db.runs.count_documents({})
    c = start(start_runtime, second, "c")
    c.wait_for_log(r"event=planner\.started")
    assert count(c, r"event=evolution\.version_increased") == 0
    stays(lambda: db.runs.count_documents({}) == runs, 1.0, "reprocessed twice")


def test_lower_handler_version_is_a_logged_rollback(
        make_app: AppBuilder, start_runtime: RuntimeFactory, db: Database[Doc]) -> None:
    db.things.insert_many([{"_id": f"d{i:02}", "n": 1} for i in range(5)])
    newer = make_app({"record": definition(_policies(3, "reprocessAll"))},
                     {"record": handler("record")})
    a = start(start_runtime, newer, "a")
    wait_until(lambda: db.runs.count_documents({}) == 5, timeout=30)
    a.stop()
    older = make_app({"record": definition(_policies(2, "reprocessAll"))},
                     {"record": handler("record")})
    b = start(start_runtime, older, "b")
    b.wait_for_log(r"event=evolution\.version_lower reactor=record .*recorded=3\b")
    stays(lambda: db.runs.count_documents({}) == 5, 1.0, "a rollback reprocessed")
    state = db.reactgen_meta.find_one({"_id": "reactor:record"})
    assert state is not None and state["handlerVersion"] == 3
