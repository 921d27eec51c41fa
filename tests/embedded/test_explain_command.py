"""``explain`` through PyMongo: the winning plan (index scan or collection scan, in-memory sort
or not) and execution statistics of reads and (unapplied) writes."""

from __future__ import annotations

import datetime
from typing import Any

import pytest
from pymongo.collection import Collection
from pymongo.database import Database
from pymongo.errors import OperationFailure

Db = Database[dict[str, Any]]
Coll = Collection[dict[str, Any]]
BASE = datetime.datetime(2024, 1, 1)


def _stages(plan: dict[str, Any]) -> list[dict[str, Any]]:
    """The stages of a plan tree, top first."""
    found = [plan]
    while "inputStage" in plan:
        plan = plan["inputStage"]
        found.append(plan)
    return found


def _names(plan: dict[str, Any]) -> list[str]:
    return [stage["stage"] for stage in _stages(plan)]


@pytest.fixture
def tasks(db: Db) -> Coll:
    db.tasks.create_index([("reactor", 1), ("nextRunAt", 1)], name="reactgen_claim")
    db.tasks.insert_many([{"_id": i, "reactor": f"r{i % 2}", "n": i,
                           "nextRunAt": BASE + datetime.timedelta(seconds=i)}
                          for i in range(100)])
    return db.tasks


def test_find_served_by_an_index_in_order(db: Db, tasks: Coll) -> None:
    reply = db.command("explain", {"find": "tasks", "filter": {
        "reactor": "r1", "nextRunAt": {"$lte": BASE + datetime.timedelta(seconds=30)}},
        "sort": {"nextRunAt": 1}, "limit": 3}, verbosity="executionStats")
    plan = reply["queryPlanner"]["winningPlan"]
    assert "SORT" not in _names(plan) and "COLLSCAN" not in _names(plan)
    scan = _stages(plan)[-1]
    assert scan["stage"] == "IXSCAN" and scan["indexName"] == "reactgen_claim"
    assert scan["keyPattern"] == {"reactor": 1, "nextRunAt": 1}
    stats = reply["executionStats"]
    assert stats["nReturned"] == 3
    assert stats["totalKeysExamined"] == 3 and stats["totalDocsExamined"] == 3


def test_cursor_explain_shows_collection_scan_and_sort(tasks: Coll) -> None:
    reply = tasks.find({"n": {"$gte": 90}}).sort("n", -1).explain()
    names = _names(reply["queryPlanner"]["winningPlan"])
    assert names[0] == "SORT" and names[-1] == "COLLSCAN"
    assert reply["executionStats"]["nReturned"] == 10
    assert reply["executionStats"]["totalKeysExamined"] == 0
    assert reply["executionStats"]["totalDocsExamined"] == 100


def test_writes_are_explained_without_being_applied(db: Db, tasks: Coll) -> None:
    update = db.command("explain", {"update": "tasks", "updates": [
        {"q": {"reactor": "r0", "nextRunAt": {"$lte": BASE}}, "u": {"$set": {"x": 1}}}]})
    names = _names(update["queryPlanner"]["winningPlan"])
    assert names[0] == "UPDATE" and names[-1] == "IXSCAN"
    assert update["executionStats"]["nReturned"] == 1
    remove = db.command("explain", {"delete": "tasks", "deletes": [{"q": {"n": 5}, "limit": 1}]})
    names = _names(remove["queryPlanner"]["winningPlan"])
    assert names[0] == "DELETE" and names[-1] == "COLLSCAN"
    modify = db.command("explain", {"findAndModify": "tasks", "query": {"_id": 7},
                                    "update": {"$set": {"x": 1}}})
    assert _names(modify["queryPlanner"]["winningPlan"])[0] == "UPDATE"
    assert tasks.count_documents({"x": 1}) == 0
    assert tasks.count_documents({"n": 5}) == 1


@pytest.mark.embedded_only
def test_count_and_aggregate(db: Db, tasks: Coll) -> None:
    """Embedded only: mongod may answer these with COUNT_SCAN or a slot-based plan instead."""
    count = db.command("explain", {"count": "tasks", "query": {"reactor": "r0"}})
    assert _names(count["queryPlanner"]["winningPlan"])[0] == "COUNT"
    assert count["executionStats"]["totalKeysExamined"] == 50
    aggregate = db.command("explain", {"aggregate": "tasks", "pipeline": [
        {"$match": {"reactor": "r1"}}, {"$group": {"_id": None, "n": {"$sum": 1}}}],
        "cursor": {}}, verbosity="queryPlanner")
    assert "executionStats" not in aggregate
    assert _stages(aggregate["queryPlanner"]["winningPlan"])[-1]["indexName"] == \
        "reactgen_claim"


def test_bad_verbosity_is_refused(db: Db, tasks: Coll) -> None:
    with pytest.raises(OperationFailure):
        db.command("explain", {"find": "tasks"}, verbosity="everything")


def test_aggregate_with_explain_true_answers_the_plan(db: Database[dict[str, Any]]) -> None:
    """``aggregate`` with ``explain: true`` (no ``cursor`` needed) answers the query plan, as
    the explain command at queryPlanner verbosity (manual: "aggregate", field explain)."""
    db.items.insert_many([{"_id": i, "a": i} for i in range(5)])
    db.items.create_index("a")
    reply = db.command({"aggregate": "items", "pipeline": [{"$match": {"a": 3}}],
                        "explain": True})
    plan = reply["queryPlanner"]["winningPlan"]
    assert "IXSCAN" in str(plan) and "a_1" in str(plan)
    assert "executionStats" not in reply
