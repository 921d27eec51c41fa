"""Index bounds through PyMongo: partial indexes used when the query implies their filter,
compound bounds that seek past out-of-bound keys, and results that never depend on the plan.

The counts of examined keys/documents (``serverStatus.metrics.queryExecutor``) describe the
embedded server's plans, so those tests are embedded only; the result checks hold anywhere.
"""

from __future__ import annotations

import datetime
import random
from collections.abc import Callable
from typing import Any

import pytest
from pymongo import ASCENDING, DESCENDING, MongoClient, ReturnDocument
from pymongo.collection import Collection
from pymongo.database import Database

Db = Database[dict[str, Any]]
Coll = Collection[dict[str, Any]]
Client = MongoClient[dict[str, Any]]

BASE = datetime.datetime(2024, 1, 1)
NOW = BASE + datetime.timedelta(hours=1)


def examined(client: Client, action: Callable[[], Any]) -> tuple[int, int, Any]:
    """(index keys, documents) examined while ``action`` ran, and its result."""
    def read() -> tuple[int, int]:
        counters = client.admin.command("serverStatus")["metrics"]["queryExecutor"]
        return int(counters["scanned"]), int(counters["scannedObjects"])

    keys, docs = read()
    result = action()
    keys_after, docs_after = read()
    return keys_after - keys, docs_after - docs, result


# -- partial indexes ------------------------------------------------------------------------


@pytest.fixture
def partial_tasks(db: Db) -> Coll:
    """2,000 tasks, 40 pending; finished ones keep a date too (an index must not lose them)."""
    db.tasks.create_index([("reactor", 1), ("nextRunAt", 1)], name="claim_pending",
                          partialFilterExpression={"status": "pending"})
    db.tasks.insert_many([
        {"_id": i, "reactor": "r", "status": "pending" if i % 50 == 0 else "completed",
         "nextRunAt": BASE + datetime.timedelta(seconds=i), "n": i}
        for i in range(2_000)])
    return db.tasks


@pytest.mark.embedded_only
def test_claim_on_a_partial_index_examines_only_its_keys(
        client: Client, partial_tasks: Coll) -> None:
    claim = {"reactor": "r", "status": "pending", "nextRunAt": {"$lte": NOW}}
    keys, docs, found = examined(client, lambda: list(partial_tasks.find(claim)))
    assert len(found) == 40 and keys == 40 and docs == 40
    keys, docs, claimed = examined(client, lambda: partial_tasks.find_one_and_update(
        claim, {"$set": {"status": "processing"}}, sort=[("nextRunAt", 1)],
        return_document=ReturnDocument.AFTER))
    assert claimed is not None and claimed["_id"] == 0
    assert keys <= 2 and docs == 1
    keys, docs, found = examined(client, lambda: list(partial_tasks.find(
        {"$and": [{"status": "pending"}, {"reactor": "r"}]})))
    assert len(found) == 39 and keys == 39


@pytest.mark.embedded_only
def test_query_not_implying_the_filter_does_not_use_the_partial_index(
        client: Client, partial_tasks: Coll) -> None:
    keys, docs, found = examined(client, lambda: list(partial_tasks.find(
        {"reactor": "r", "nextRunAt": {"$lte": BASE + datetime.timedelta(seconds=99)}})))
    assert len(found) == 100  # completed tasks too: the partial index does not hold them
    assert keys == 0 and docs == 2_000
    keys, docs, found = examined(client, lambda: list(partial_tasks.find(
        {"reactor": "r", "status": {"$in": ["pending", "completed"]}})))
    assert len(found) == 2_000 and keys == 0


@pytest.mark.embedded_only
@pytest.mark.parametrize(("partial", "query", "used"), [
    ({"n": {"$gt": 5}}, {"n": {"$gt": 10}}, True),
    ({"n": {"$gt": 5}}, {"n": {"$gte": 6}}, True),
    ({"n": {"$gt": 5}}, {"n": {"$gt": 3}}, False),
    ({"n": {"$gte": 5}}, {"n": 7}, True),
    ({"n": {"$gte": 5}}, {"n": {"$in": [5, 9]}}, True),
    ({"n": {"$gte": 5}}, {"n": {"$in": [4, 9]}}, False),
    ({"n": {"$lt": 100}}, {"n": {"$lte": 50}}, True),
    ({"n": {"$lt": 100}}, {"n": {"$lte": 100}}, False),
    ({"tag": {"$exists": True}}, {"tag": "x", "n": {"$lt": 50}}, True),
    ({"tag": {"$exists": True}}, {"tag": None, "n": {"$lt": 50}}, False),
    ({"tag": "x", "n": {"$gt": 1}}, {"n": 5, "tag": "x"}, True),
    ({"tag": "x", "n": {"$gt": 1}}, {"n": 5}, False),
    ({"$and": [{"tag": "x"}, {"n": {"$gt": 1}}]}, {"$and": [{"n": 5}, {"tag": "x"}]}, True),
])
def test_partial_index_use_follows_implication(
        client: Client, db: Db, partial: dict[str, Any], query: dict[str, Any],
        used: bool) -> None:
    db.p.create_index([("n", 1)], partialFilterExpression=partial)
    db.p.insert_many([{"_id": i, "n": i, **({"tag": "x"} if i % 2 else {})} for i in range(200)])
    expected = {d["_id"] for d in db.p.find(query, hint={"$natural": 1})}
    keys, docs, found = examined(client, lambda: list(db.p.find(query)))
    assert {d["_id"] for d in found} == expected
    assert (keys > 0) is used, (keys, docs)
    if not used:
        assert docs == 200


# -- compound bounds with seeking -------------------------------------------------------------


@pytest.fixture
def prioritised(db: Db) -> Coll:
    """3 reactors x 3,000 tasks over three priorities; a third finished (no due time)."""
    rng = random.Random(7)
    db.tasks.create_index([("reactor", 1), ("priority", -1), ("nextRunAt", 1)])
    docs = []
    for i in range(9_000):
        due = BASE + datetime.timedelta(seconds=rng.randrange(-3_600, 3_600 * 3))
        docs.append({"_id": i, "reactor": f"r{i % 3}", "priority": rng.choice([0, 5, 10]),
                     "nextRunAt": None if i % 3 == 1 else due})
    db.tasks.insert_many(docs)
    return db.tasks


def _expected(coll: Coll, query: dict[str, Any], limit: int) -> list[Any]:
    rows = [d for d in coll.find(query, hint={"$natural": 1})]
    rows.sort(key=lambda d: (-d["priority"], d["nextRunAt"], d["_id"]))
    return [(d["priority"], d["nextRunAt"]) for d in rows[:limit]]


@pytest.mark.embedded_only
def test_priority_claim_seeks_past_future_keys(client: Client, prioritised: Coll) -> None:
    query = {"reactor": "r0", "nextRunAt": {"$lte": NOW}}
    for limit in (1, 10, 50):
        keys, docs, found = examined(client, lambda limit=limit: list(prioritised.find(query).sort(
            [("priority", DESCENDING), ("nextRunAt", ASCENDING)]).limit(limit)))
        assert [(d["priority"], d["nextRunAt"]) for d in found] == _expected(
            prioritised, query, limit)
        assert docs == limit
        assert keys <= limit + 3 + 1, f"limit {limit}: examined {keys} keys"


@pytest.mark.embedded_only
def test_range_on_the_second_field_excludes_nulls(client: Client, db: Db) -> None:
    db.tasks.create_index([("reactor", 1), ("nextRunAt", 1)])
    db.tasks.insert_many([{"_id": i, "reactor": "r", "nextRunAt": None if i % 10 else
                           BASE + datetime.timedelta(seconds=i)} for i in range(5_000)])
    later = BASE + datetime.timedelta(days=1)
    keys, docs, found = examined(client, lambda: list(db.tasks.find(
        {"reactor": "r", "nextRunAt": {"$lte": later}})))
    assert len(found) == 500 and keys == 500 and docs == 500
    keys, docs, found = examined(client, lambda: list(db.tasks.find(
        {"reactor": "r", "nextRunAt": {"$lte": later}}).sort("nextRunAt", -1).limit(5)))
    assert [d["_id"] for d in found] == [4990, 4980, 4970, 4960, 4950]
    assert keys == 5 and docs == 5


@pytest.mark.embedded_only
def test_id_in_list_examines_one_key_per_value(client: Client, db: Db) -> None:
    db.items.insert_many([{"_id": i} for i in range(3_000)])
    ids = [5, 17, 2_500, 99_999]
    keys, docs, found = examined(client, lambda: list(db.items.find({"_id": {"$in": ids}})))
    assert sorted(d["_id"] for d in found) == [5, 17, 2_500]
    assert keys == 4 and docs <= 4
    keys, docs, found = examined(client, lambda: list(
        db.items.find({"_id": {"$in": ids}}).sort("_id", -1)))
    assert [d["_id"] for d in found] == [2_500, 17, 5]
    assert keys <= 4 + 4 and docs == 3


def test_results_never_depend_on_the_plan(db: Db) -> None:
    """Random filters and sorts against mixed-direction compound indexes and a twin without."""
    rng = random.Random(11)
    values: list[Any] = [None, 1, 2, 2.5, 3, "a", "b", BASE, True]
    docs = []
    for i in range(600):
        doc: dict[str, Any] = {"_id": i}
        for field in ("a", "b", "c"):
            if rng.random() < 0.9:
                doc[field] = rng.choice(values)
        docs.append(doc)
    db.indexed.create_index([("a", 1), ("b", -1), ("c", 1)])
    db.indexed.create_index([("b", 1), ("c", -1)])
    db.indexed.insert_many(docs)
    db.plain.insert_many(docs)
    ops = ["$eq", "$in", "$gt", "$gte", "$lt", "$lte"]
    for _ in range(150):
        query: dict[str, Any] = {}
        for field in rng.sample(["a", "b", "c"], rng.randint(1, 3)):
            op = rng.choice(ops)
            operand: Any = rng.sample(values, 3) if op == "$in" else rng.choice(values[1:])
            query[field] = {op: operand}
            if op in ("$gt", "$gte") and rng.random() < 0.5:
                query[field]["$lt"] = operand if not isinstance(operand, int) else operand + 2
        sort = rng.choice([None, [("a", 1)], [("b", -1), ("c", 1)], [("b", 1), ("c", -1)],
                           [("a", -1), ("b", 1), ("c", -1)]])
        got = list(db.indexed.find(query, sort=sort))
        want = list(db.plain.find(query, sort=sort))
        assert sorted(d["_id"] for d in got) == sorted(d["_id"] for d in want), query
        if sort:
            keys = [tuple(repr(d.get(f)) for f, _ in sort) for d in got]
            assert keys == [tuple(repr(d.get(f)) for f, _ in sort) for d in want], (query, sort)
