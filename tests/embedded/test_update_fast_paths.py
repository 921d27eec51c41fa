"""Update statements on the server's fast paths give the general path's (MongoDB's) results.

A one-document update evaluates simple filters in place instead of compiling them, pipeline
expressions take shortcuts for their common forms, an upsert shares the query's immutable values
with the document it inserts, and index maintenance compares top-level fields directly. Each
case pairs a statement on a fast path with one that cannot take it (an ``$and`` wrapper, an
array value, a collation) or checks what MongoDB answers. Valid against MongoDB 7.0.
"""

from __future__ import annotations

import datetime
from typing import Any

import pytest
from bson import Int64, ObjectId
from pymongo import ASCENDING, UpdateOne
from pymongo.database import Database
from pymongo.errors import BulkWriteError, DuplicateKeyError, OperationFailure

Db = Database[dict[str, Any]]
NOW = datetime.datetime(2024, 5, 1, 12, 0, 0)


def _tasks(db: Db) -> Any:
    tasks = db.fast_tasks
    tasks.create_index([("reactor", ASCENDING), ("sourceId", ASCENDING)], unique=True,
                       name="key")
    tasks.create_index([("reactor", ASCENDING), ("status", ASCENDING)], name="status")
    tasks.create_index([("expiresAt", ASCENDING)], expireAfterSeconds=3600, name="expiry")
    return tasks


def _plan(source: ObjectId, token: int, digest: str) -> list[dict[str, Any]]:
    changed = {"$ne": [{"$ifNull": ["$hash", None]}, digest]}
    return [
        {"$set": {"_changed": changed}},
        {"$set": {
            "reactor": "r1", "sourceId": {"$literal": source}, "hash": digest,
            "status": {"$cond": ["$_changed", {"$cond": [
                {"$in": [{"$ifNull": ["$status", "none"]}, ["running"]]}, "dirty", "pending"]},
                "$status"]},
            "createdAt": {"$ifNull": ["$createdAt", "$$NOW"]},
            "token": token,
        }},
        {"$unset": ["_changed"]},
    ]


@pytest.mark.parametrize("wrapped", [False, True])
def test_planner_style_upserts_match_the_general_path(db: Db, wrapped: bool) -> None:
    tasks = _tasks(db)
    sources = [ObjectId() for _ in range(4)]

    def query(source: ObjectId, token: int) -> dict[str, Any]:
        q = {"reactor": "r1", "sourceId": source, "token": {"$not": {"$gt": token}}}
        return {"$and": [q]} if wrapped else q  # $and: the compiled matcher, not in place

    first = tasks.bulk_write([UpdateOne(query(s, 3), _plan(s, 3, "h1"), upsert=True)
                              for s in sources], ordered=False)
    assert first.upserted_count == 4 and first.matched_count == 0
    assert {first.upserted_ids[i] for i in range(4)} == {d["_id"] for d in tasks.find()}
    same = tasks.bulk_write([UpdateOne(query(s, 3), _plan(s, 3, "h1"), upsert=True)
                             for s in sources], ordered=False)
    assert (same.matched_count, same.modified_count, same.upserted_count) == (4, 0, 0)
    changed = tasks.bulk_write([UpdateOne(query(s, 4), _plan(s, 4, "h2"), upsert=True)
                                for s in sources[:2]], ordered=False)
    assert (changed.matched_count, changed.modified_count) == (2, 2)
    # An older token does not match the newer document: its upsert collides on the unique key.
    with pytest.raises(BulkWriteError) as raised:
        tasks.bulk_write([UpdateOne(query(sources[0], 3), _plan(sources[0], 3, "h3"),
                                    upsert=True)])
    assert raised.value.details["writeErrors"][0]["code"] == 11000
    docs = {d["sourceId"]: d for d in tasks.find({}, {"_id": 0, "createdAt": 0})}
    assert docs[sources[0]] == {"reactor": "r1", "sourceId": sources[0], "hash": "h2",
                                "status": "pending", "token": 4}
    assert docs[sources[3]]["hash"] == "h1"
    assert tasks.count_documents({"reactor": "r1", "status": "pending"}) == 4


def test_index_lookups_follow_pipeline_updates(db: Db) -> None:
    tasks = _tasks(db)
    tasks.insert_many([{"_id": i, "reactor": "r1", "sourceId": i, "status": "pending",
                        "expiresAt": NOW} for i in range(6)])
    for i in range(3):  # changes one indexed field, keeps the others
        tasks.update_one({"_id": i, "status": "pending"},
                         [{"$set": {"status": "running", "n": i}}])
    tasks.update_one({"_id": 3}, [{"$unset": ["expiresAt"]}])
    tasks.update_one({"_id": 4}, [{"$set": {"sourceId": 40, "note": "moved"}}])

    def ids(query: dict[str, Any], hint: str) -> list[Any]:
        return sorted(d["_id"] for d in tasks.find(query).hint(hint))

    assert ids({"reactor": "r1", "status": "running"}, "status") == [0, 1, 2]
    assert ids({"reactor": "r1", "status": "pending"}, "status") == [3, 4, 5]
    assert ids({"expiresAt": NOW}, "expiry") == [0, 1, 2, 4, 5]
    assert ids({"reactor": "r1", "sourceId": 4}, "key") == []
    assert ids({"reactor": "r1", "sourceId": 40}, "key") == [4]
    assert ids({"reactor": "r1", "sourceId": {"$gte": 0}}, "key") == [0, 1, 2, 3, 4, 5]
    with pytest.raises(DuplicateKeyError):
        tasks.update_one({"_id": 5}, [{"$set": {"sourceId": 40}}])
    assert tasks.find_one({"_id": 5}, {"_id": 0, "sourceId": 1}) == {"sourceId": 5}


def test_in_place_filters_answer_like_the_compiled_ones(db: Db) -> None:
    coll = db.fast_filters
    coll.insert_many([
        {"_id": 1, "a": 1, "lease": {"claim": "c1"}, "tags": ["x", "y"], "n": None},
        {"_id": 2, "a": 2, "lease": [{"claim": "c2"}], "items": [{"k": 1}]},
        {"_id": 3, "a": 3.0, "lease": None},
    ])
    cases: list[tuple[dict[str, Any], list[int]]] = [
        ({"lease.claim": "c1"}, [1]),
        ({"lease.claim": "c2"}, [2]),  # through an array: the general matcher
        ({"tags": "y"}, [1]),  # an array value: the general matcher
        ({"items.k": 1}, [2]),
        ({"a": 3}, [3]),  # numbers compare by value across types
        ({"a": {"$gte": 2, "$lt": 3}}, [2]),
        ({"a": {"$not": {"$gt": 1}}}, [1]),
        ({"a": {"$ne": 2}, "lease": {"$ne": None}}, [1]),
        ({"n": None}, [1, 2, 3]),  # null matches a missing field
        ({"n": {"$exists": True}}, [1]),
        ({"lease.claim": {"$exists": False}}, [3]),
        ({"a": "1"}, []),  # no comparison across types
    ]
    for query, expected in cases:
        # {_id, ...}: evaluated in place; {$and: [...]}: the compiled matcher.
        for form in ({"_id": 0, **query}, {"$and": [{"_id": 0}, query]}):
            touched = []
            for i in (1, 2, 3):
                selector = {**form, "_id": i} if "$and" not in form else \
                    {"$and": [{"_id": i}, query]}
                if coll.update_one(selector, {"$inc": {"hits": 1}}).modified_count:
                    touched.append(i)
            assert touched == expected, (form, touched)
    hits = sum(d.get("hits", 0) for d in coll.find())
    assert hits == 2 * sum(len(expected) for _, expected in cases)


def test_unknown_query_operator_is_an_error(db: Db) -> None:
    coll = db.fast_errors
    coll.insert_one({"_id": 1, "a": 1})
    for query in ({"_id": 1, "a": 1, "b": {"$foo": 1}}, {"_id": 1, "b": {"$foo": 1}, "a": 1},
                  {"$and": [{"_id": 1}, {"a": 1, "b": {"$foo": 1}}]}):
        with pytest.raises(OperationFailure) as raised:
            coll.update_one(query, {"$set": {"x": 1}})
        assert raised.value.code == 2, query
    assert coll.find_one({"_id": 1}) == {"_id": 1, "a": 1}


def test_upsert_seeds_from_equality_values(db: Db) -> None:
    coll = db.fast_seeds
    when, oid = NOW, ObjectId()
    sub = {"k": [1, {"m": 2}]}
    result = coll.update_one({"t": when, "o": oid, "s": {"$eq": sub}, "n": 1.5, "b": True,
                              "x": {"$gt": 1}}, [{"$set": {"created": True}}], upsert=True)
    assert result.upserted_id is not None
    assert coll.find_one({"_id": result.upserted_id}, {"_id": 0}) == {
        "t": when, "o": oid, "s": sub, "n": 1.5, "b": True, "created": True}
    again = coll.update_one({"_id": "given", "s.k": 1}, {"$set": {"y": 1}}, upsert=True)
    assert again.upserted_id == "given"
    assert coll.find_one({"_id": "given"}) == {"_id": "given", "s": {"k": 1}, "y": 1}


def test_pipeline_expression_forms(db: Db) -> None:
    coll = db.fast_exprs
    coll.insert_one({"_id": 1, "a": None, "b": 0, "s": "x", "arr": [1, 2]})
    coll.update_one({"_id": 1}, [{"$set": {
        "first": {"$ifNull": ["$a", "$missing", "$b"]},
        "fallback": {"$ifNull": ["$a", "$missing"]},
        "kind": {"$type": ["$s"]},
        "notb": {"$not": "$b"},
        "member": {"$in": ["$s", ["y", "x"]]},
        "nothing": {"$in": [None, ["$missing"]]},
        "all": {"$and": []},
        "any": {"$or": []},
        "cond": {"$cond": {"if": "$b", "then": "yes", "else": "no"}},
        "lit": {"$literal": {"$cond": 1}},
    }}])
    got = coll.find_one({"_id": 1}, {"_id": 0, "a": 0, "b": 0, "s": 0, "arr": 0})
    assert got == {"first": 0, "kind": "string", "notb": True, "member": True,
                   "nothing": True, "all": True, "any": False, "cond": "no",
                   "lit": {"$cond": 1}}
    with pytest.raises(OperationFailure):
        coll.update_one({"_id": 1}, [{"$set": {"bad": {"$not": [1, 2]}}}])


def test_updates_by_id_find_the_document_whatever_its_id_type(db: Db) -> None:
    coll = db.fast_ids
    oid = ObjectId()
    coll.insert_many([{"_id": oid}, {"_id": 2.0}, {"_id": Int64(3)}, {"_id": "a"},
                      {"_id": {"k": 1}}, {"_id": NOW}])
    for selector in (oid, 2, 3, "a", {"k": 1}, NOW):
        assert coll.update_one({"_id": selector}, {"$inc": {"n": 1}}).modified_count == 1
        assert coll.update_one({"_id": selector, "n": 2}, {"$inc": {"n": 1}}).matched_count == 0
        assert coll.update_one({"$and": [{"_id": selector}], "_id": selector},
                               [{"$set": {"n": {"$add": ["$n", 1]}}}]).modified_count == 1
    assert coll.count_documents({"n": 2}) == 6
    assert coll.update_one({"_id": "A"}, {"$set": {"m": 1}}).matched_count == 0
    caseless = {"locale": "en", "strength": 2}
    assert coll.update_one({"_id": "A"}, {"$set": {"m": 1}},
                           collation=caseless).modified_count == 1
    assert coll.update_one({"_id": 4}, {"$set": {"m": 1}}).matched_count == 0


def test_point_lookups_on_compound_indexes(db: Db) -> None:
    coll = db.fast_points
    coll.create_index([("a", ASCENDING), ("b", -1)], unique=True, name="ab")
    coll.create_index([("a", ASCENDING), ("c", ASCENDING)], name="ac")
    coll.insert_many([{"_id": i, "a": i % 3, "b": i, "c": "x" if i % 2 else "y"}
                      for i in range(12)])
    coll.insert_one({"_id": 12, "a": 1.0, "b": 13.0, "c": ["x", "z"]})
    assert [d["_id"] for d in coll.find({"a": 1, "b": 4}).hint("ab")] == [4]
    assert [d["_id"] for d in coll.find({"a": 1, "b": 13}).hint("ab")] == [12]
    assert [d["_id"] for d in coll.find({"a": 2, "b": 4}).hint("ab")] == []
    assert sorted(d["_id"] for d in coll.find({"a": 1, "c": "x"}).hint("ac")) == [1, 7, 12]
    assert sorted(d["_id"] for d in coll.find({"a": 1, "c": "z"}).hint("ac")) == [12]
    result = coll.update_one({"a": 1, "b": 13, "c": "z"}, [{"$set": {"b": 14}}])
    assert (result.matched_count, result.modified_count) == (1, 1)
    assert [d["_id"] for d in coll.find({"a": 1, "b": 14}).hint("ab")] == [12]
    assert [d["_id"] for d in coll.find({"a": 1, "b": 13}).hint("ab")] == []
    upserted = coll.update_one({"a": 1, "b": 13}, {"$set": {"c": "new"}}, upsert=True)
    assert upserted.upserted_id is not None
    with pytest.raises(DuplicateKeyError):
        coll.update_one({"_id": 0}, {"$set": {"a": 1, "b": 13}})


def test_claim_style_expr_filters_judge_by_the_servers_clock(db: Db) -> None:
    # A claim's compare-and-set: equality on the fields read, plus $expr against $$NOW. Wrapped
    # in $and it takes the compiled matcher; bare, the in-place one: both must agree.
    tasks = db.claim_expr
    past = datetime.datetime.now(datetime.UTC).replace(tzinfo=None) - datetime.timedelta(
        minutes=5)
    future = past + datetime.timedelta(hours=1)
    tasks.insert_many([{"_id": 1, "due": past, "status": "pending"},
                       {"_id": 2, "due": future, "status": "pending"},
                       {"_id": 3, "status": "pending"},
                       {"_id": 4, "due": past, "status": "pending"},
                       {"_id": 5, "due": future, "status": "pending"},
                       {"_id": 6, "status": "pending"}])

    def claim(task_id: int, wrapped: bool) -> int:
        q: dict[str, Any] = {"_id": task_id, "status": "pending",
                             "$expr": {"$lte": ["$due", "$$NOW"]}}
        query = {"$and": [q]} if wrapped else q
        return tasks.update_one(query, [{"$set": {"status": "processing"}}]).modified_count

    assert [claim(i, False) for i in (1, 2, 3)] == [1, 0, 1]  # missing < any date
    assert [claim(i, True) for i in (4, 5, 6)] == [1, 0, 1]
    with pytest.raises(OperationFailure) as failure:
        tasks.update_one({"_id": 2, "$expr": {"$add": ["$due", "$due"]}},
                         [{"$set": {"x": 1}}])
    assert failure.value.code == 16612  # only one date allowed in an $add expression


@pytest.mark.parametrize(("left", "right", "expected"), [
    (1, 2, 3),
    (2147483647, 1, Int64(2147483648)),  # an int overflowing 32 bits becomes a long
    (Int64(5), 1, Int64(6)),
    (1.5, 1, 2.5),
    (NOW, 1500, NOW + datetime.timedelta(milliseconds=1500)),
    (-250, NOW, NOW - datetime.timedelta(milliseconds=250)),
    (NOW, Int64(2000), NOW + datetime.timedelta(seconds=2)),
    (NOW, 1.4, NOW + datetime.timedelta(milliseconds=1)),  # a double is rounded to whole ms
    (None, 1, None),
], ids=["ints", "int-overflow", "long", "double", "date-ms", "ms-date", "date-long",
        "date-double", "null"])
def test_add_of_the_runtimes_shapes_and_the_others(db: Db, left: Any, right: Any,
                                                  expected: Any) -> None:
    coll = db.add_shapes
    coll.insert_one({"_id": 1, "a": left, "b": right})
    coll.update_one({"_id": 1}, [{"$set": {"sum": {"$add": ["$a", "$b"]},
                                           "missing": {"$add": ["$a", "$nothing"]}}}])
    doc = coll.find_one({"_id": 1})
    assert doc is not None
    assert doc["sum"] == expected and type(doc["sum"]) is type(expected)
    assert doc["missing"] is None
