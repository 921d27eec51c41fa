"""Index commands and index behaviour through PyMongo: compound, unique, partial, sparse, TTL,
plus query results that must not depend on whether an index serves them.

Valid against a real MongoDB 7.0 replica set as well as the embedded server, except the tests
marked ``embedded_only``, which read the embedded server's ``scannedObjects`` counter.
"""

from __future__ import annotations

import datetime
import random
from typing import Any

import pytest
from bson import Int64
from pymongo import ASCENDING, DESCENDING, IndexModel, MongoClient, ReturnDocument
from pymongo.collection import Collection
from pymongo.database import Database
from pymongo.errors import BulkWriteError, DuplicateKeyError, OperationFailure
from support import wait_until

Db = Database[dict[str, Any]]
Coll = Collection[dict[str, Any]]


def _utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC).replace(tzinfo=None)


# -- createIndexes / listIndexes / dropIndexes ---------------------------------------------


def test_create_list_and_drop_indexes(db: Db) -> None:
    names = db.items.create_indexes([
        IndexModel([("a", ASCENDING), ("b", DESCENDING)]),
        IndexModel([("c", ASCENDING)], name="by_c", unique=True),
    ])
    assert names == ["a_1_b_-1", "by_c"]
    info = db.items.index_information()
    assert info["_id_"]["key"] == [("_id", 1)]
    assert info["a_1_b_-1"]["key"] == [("a", 1), ("b", -1)]
    assert info["by_c"]["unique"] is True
    listed = list(db.items.list_indexes())
    assert [i["name"] for i in listed] == ["_id_", "a_1_b_-1", "by_c"]
    db.items.drop_index("by_c")
    db.items.drop_index([("a", ASCENDING), ("b", DESCENDING)])
    assert list(db.items.index_information()) == ["_id_"]


def test_create_index_reply_and_idempotence(db: Db) -> None:
    reply = db.command("createIndexes", "fresh", indexes=[{"key": {"x": 1}, "name": "x_1"}])
    assert reply["createdCollectionAutomatically"] is True
    assert (reply["numIndexesBefore"], reply["numIndexesAfter"]) == (1, 2)
    again = db.command("createIndexes", "fresh", indexes=[{"key": {"x": 1}, "name": "x_1"}])
    assert (again["numIndexesBefore"], again["numIndexesAfter"]) == (2, 2)


def test_conflicting_index_definitions(db: Db) -> None:
    db.items.create_index("x", name="x_idx")
    with pytest.raises(OperationFailure) as info:
        db.items.create_index("y", name="x_idx")
    assert info.value.code == 86  # same name, other key
    with pytest.raises(OperationFailure) as info:
        db.items.create_index("x", name="other", unique=True)
    assert info.value.code in (85, 86)  # same key, other options


def test_drop_all_indexes_and_errors(db: Db) -> None:
    db.items.create_index("a")
    db.items.create_index("b")
    db.items.drop_indexes()
    assert list(db.items.index_information()) == ["_id_"]
    with pytest.raises(OperationFailure) as info:
        db.items.drop_index("nope_1")
    assert info.value.code == 27
    with pytest.raises(OperationFailure) as info:
        db.items.drop_index("_id_")
    assert info.value.code == 72
    with pytest.raises(OperationFailure) as info:
        db.command("listIndexes", "missing_collection")
    assert info.value.code == 26


# -- unique --------------------------------------------------------------------------------


def test_unique_index_rejects_duplicates_with_details(db: Db) -> None:
    db.users.create_index("email", unique=True)
    db.users.insert_one({"_id": 1, "email": "a@x"})
    with pytest.raises(DuplicateKeyError) as info:
        db.users.insert_one({"_id": 2, "email": "a@x"})
    assert info.value.code == 11000
    details = info.value.details
    assert details is not None
    assert details["keyPattern"] == {"email": 1}
    assert details["keyValue"] == {"email": "a@x"}
    assert "E11000" in details["errmsg"]
    assert db.users.count_documents({}) == 1


def test_unique_index_checked_on_update_and_upsert(db: Db) -> None:
    db.users.create_index("email", unique=True)
    db.users.insert_many([{"_id": 1, "email": "a"}, {"_id": 2, "email": "b"}])
    with pytest.raises(DuplicateKeyError):
        db.users.update_one({"_id": 2}, {"$set": {"email": "a"}})
    assert db.users.find_one({"_id": 2}) == {"_id": 2, "email": "b"}
    with pytest.raises(DuplicateKeyError):
        db.users.update_one({"_id": 3}, {"$set": {"email": "b"}}, upsert=True)
    with pytest.raises(DuplicateKeyError):
        db.users.find_one_and_update({"_id": 1}, {"$set": {"email": "b"}})
    # Updating a document to keep its own key is fine.
    db.users.update_one({"_id": 1}, {"$set": {"email": "a", "x": 1}})
    assert db.users.count_documents({}) == 2


def test_unique_compound_index(db: Db) -> None:
    db.c.create_index([("tenant", 1), ("key", 1)], unique=True)
    db.c.insert_many([{"tenant": 1, "key": "a"}, {"tenant": 2, "key": "a"},
                      {"tenant": 1, "key": "b"}])
    with pytest.raises(DuplicateKeyError) as info:
        db.c.insert_one({"tenant": 1, "key": "a"})
    assert info.value.details is not None
    assert info.value.details["keyPattern"] == {"tenant": 1, "key": 1}
    assert info.value.details["keyValue"] == {"tenant": 1, "key": "a"}


def test_unique_index_numbers_compare_by_value(db: Db) -> None:
    db.n.create_index("v", unique=True)
    db.n.insert_one({"v": 1})
    with pytest.raises(DuplicateKeyError):
        db.n.insert_one({"v": Int64(1)})
    with pytest.raises(DuplicateKeyError):
        db.n.insert_one({"v": 1.0})
    db.n.insert_one({"v": "1"})


def test_unique_index_treats_missing_as_null(db: Db) -> None:
    db.u.create_index("k", unique=True)
    db.u.insert_one({"_id": 1})
    with pytest.raises(DuplicateKeyError):
        db.u.insert_one({"_id": 2})
    with pytest.raises(DuplicateKeyError):
        db.u.insert_one({"_id": 3, "k": None})


def test_unique_multikey_index(db: Db) -> None:
    db.m.create_index("tags", unique=True)
    db.m.insert_one({"_id": 1, "tags": ["a", "b"]})
    db.m.insert_one({"_id": 2, "tags": ["c", "c"]})  # duplicates within one document are fine
    with pytest.raises(DuplicateKeyError):
        db.m.insert_one({"_id": 3, "tags": ["x", "b"]})


def test_building_unique_index_over_duplicates_fails(db: Db) -> None:
    db.d.insert_many([{"k": 1}, {"k": 1}])
    with pytest.raises(OperationFailure) as info:
        db.d.create_index("k", unique=True)
    assert info.value.code == 11000
    assert list(db.d.index_information()) == ["_id_"]


def test_bulk_insert_reports_duplicate_in_write_errors(db: Db) -> None:
    db.b.create_index("k", unique=True)
    with pytest.raises(BulkWriteError) as info:
        db.b.insert_many([{"k": 1}, {"k": 2}, {"k": 1}], ordered=False)
    [error] = info.value.details["writeErrors"]
    assert error["index"] == 2 and error["code"] == 11000
    assert error["keyPattern"] == {"k": 1} and error["keyValue"] == {"k": 1}


# -- partial and sparse --------------------------------------------------------------------


def test_partial_unique_index_only_covers_matching_documents(db: Db) -> None:
    db.p.create_index("email", unique=True,
                      partialFilterExpression={"active": True})
    db.p.insert_many([{"email": "a", "active": True}, {"email": "a", "active": False},
                      {"email": "a"}])
    with pytest.raises(DuplicateKeyError):
        db.p.insert_one({"email": "a", "active": True})
    info = db.p.index_information()["email_1"]
    assert info["partialFilterExpression"] == {"active": True}
    # Queries give the same answer whether or not the partial index could serve them.
    assert db.p.count_documents({"email": "a"}) == 3
    assert db.p.count_documents({"email": "a", "active": True}) == 1


def test_sparse_unique_index_allows_many_missing(db: Db) -> None:
    db.s.create_index("code", unique=True, sparse=True)
    db.s.insert_many([{"_id": 1}, {"_id": 2}, {"_id": 3, "code": "x"}])
    with pytest.raises(DuplicateKeyError):
        db.s.insert_one({"_id": 4, "code": "x"})
    assert db.s.index_information()["code_1"]["sparse"] is True
    assert db.s.count_documents({"code": None}) == 2
    assert [d["_id"] for d in db.s.find({}, sort=[("code", 1), ("_id", 1)])] == [1, 2, 3]


# -- queries served by indexes return the same results -------------------------------------


def _index_query_cases() -> list[tuple[dict[str, Any], list[tuple[str, int]] | None]]:
    return [
        ({"a": 3}, None),
        ({"a": {"$gte": 2, "$lt": 5}}, [("a", 1), ("_id", 1)]),
        ({"a": {"$in": [1, 4, "x"]}}, [("_id", 1)]),
        ({"a": {"$gt": 2}}, [("a", -1), ("_id", 1)]),
        ({"a": {"$lte": "m"}}, [("_id", 1)]),
        ({"a": 3, "b": {"$gt": 2}}, [("b", 1), ("_id", 1)]),
        ({"a": {"$in": [2, 3]}, "b": {"$lte": 4}}, [("b", -1), ("_id", 1)]),
        ({"a": None}, [("_id", 1)]),
        ({"a": {"$gt": None}}, [("_id", 1)]),
        ({"b": 2}, [("a", 1), ("_id", 1)]),
        ({"tags": "t1"}, [("_id", 1)]),
        ({"tags": {"$gt": "t2"}}, [("_id", 1)]),
        ({}, [("a", 1), ("b", 1), ("_id", 1)]),
        ({"a": {"$gte": 2}, "$or": [{"b": 1}, {"b": 3}]}, [("_id", 1)]),
        ({"a": {"$ne": 3}}, [("_id", 1)]),
        ({"a": {"$gt": 1.5, "$lt": 3.5}}, [("a", 1), ("_id", 1)]),
        ({"a": {"$gte": datetime.datetime(2020, 1, 1)}}, [("_id", 1)]),
    ]


def _query_answers(coll: Coll) -> list[list[Any]]:
    answers = []
    for query, sort in _index_query_cases():
        docs = coll.find(query, sort=sort) if sort else coll.find(query)
        got = [d["_id"] for d in docs]
        answers.append(got if sort else sorted(got))
        if sort:
            answers.append([d["_id"] for d in coll.find(query, sort=sort, limit=3)])
    return answers


def test_index_does_not_change_query_results(db: Db) -> None:
    rng = random.Random(7)
    values: list[Any] = [1, 2, 3, 4, 5, 2.5, Int64(3), "a", "x", "z", None,
                         datetime.datetime(2021, 5, 1), [1, 3], True]
    docs = []
    for i in range(300):
        doc: dict[str, Any] = {"_id": i, "b": rng.randint(0, 5),
                               "tags": [f"t{rng.randint(0, 4)}" for _ in range(rng.randint(0, 3))]}
        if rng.random() > 0.1:
            doc["a"] = rng.choice(values)
        docs.append(doc)
    db.plain.insert_many(docs)
    db.indexed.insert_many(docs)
    db.indexed.create_index([("a", 1), ("b", -1)])
    db.indexed.create_index("b")
    db.indexed.create_index("tags")
    assert _query_answers(db.indexed) == _query_answers(db.plain)


def test_compound_index_serves_sort_with_equality_prefix(db: Db) -> None:
    db.jobs.create_index([("queue", 1), ("at", 1)])
    base = datetime.datetime(2024, 1, 1)
    db.jobs.insert_many([{"_id": i, "queue": "q" + str(i % 3), "at": base +
                          datetime.timedelta(minutes=(i * 37) % 100)} for i in range(60)])
    got = [d["_id"] for d in db.jobs.find({"queue": "q1"}, sort=[("at", 1)], limit=5)]
    expected = sorted((d for d in db.jobs.find({"queue": "q1"})), key=lambda d: d["at"])[:5]
    assert got == [d["_id"] for d in expected]
    got_desc = [d["_id"] for d in db.jobs.find({"queue": "q1"}, sort=[("at", -1)], limit=5)]
    expected_desc = sorted((d for d in db.jobs.find({"queue": "q1"})),
                           key=lambda d: d["at"], reverse=True)[:5]
    assert got_desc == [d["_id"] for d in expected_desc]


def test_in_on_prefix_with_sort_on_next_field_is_globally_sorted(db: Db) -> None:
    db.ev.create_index([("kind", 1), ("at", 1)])
    rng = random.Random(3)
    ats = rng.sample(range(10_000), 90)
    db.ev.insert_many([{"_id": i, "kind": ["a", "b", "c"][i % 3], "at": at}
                       for i, at in enumerate(ats)])
    query = {"kind": {"$in": ["a", "c"]}}
    expected = sorted(at for i, at in enumerate(ats) if i % 3 != 1)
    assert [d["at"] for d in db.ev.find(query, sort=[("at", 1)])] == expected
    assert [d["at"] for d in db.ev.find(query, sort=[("at", -1)], limit=7)] == \
        expected[::-1][:7]


def test_bad_index_specifications(db: Db) -> None:
    with pytest.raises(OperationFailure) as info:
        db.items.create_index([("a", "bogus")])
    assert info.value.code == 67
    with pytest.raises(OperationFailure):
        db.command("createIndexes", "items", indexes=[{"key": {}, "name": "empty"}])


def test_hint_must_name_an_index(db: Db) -> None:
    db.items.create_index("a")
    db.items.insert_many([{"a": i} for i in range(5)])
    assert len(list(db.items.find({"a": {"$gt": 1}}).hint("a_1"))) == 3
    assert len(list(db.items.find({"a": {"$gt": 1}}).hint([("a", 1)]))) == 3
    assert db.items.count_documents({"a": 1}, hint="a_1") == 1
    with pytest.raises(OperationFailure) as info:
        list(db.items.find({"a": 1}).hint("nope_1"))
    assert info.value.code == 2


def test_index_tracks_updates_and_deletes(db: Db) -> None:
    db.t.create_index("state")
    db.t.insert_many([{"_id": i, "state": "new"} for i in range(10)])
    db.t.update_many({"_id": {"$lt": 4}}, {"$set": {"state": "done"}})
    db.t.delete_many({"_id": {"$in": [0, 9]}})
    assert sorted(d["_id"] for d in db.t.find({"state": "done"})) == [1, 2, 3]
    assert sorted(d["_id"] for d in db.t.find({"state": "new"})) == [4, 5, 6, 7, 8]


# -- TTL -----------------------------------------------------------------------------------


def test_ttl_index_deletes_expired_documents(db: Db) -> None:
    db.sessions.create_index("expiresAt", expireAfterSeconds=0)
    now = _utcnow()
    db.sessions.insert_many([
        {"_id": "old", "expiresAt": now - datetime.timedelta(minutes=5)},
        {"_id": "old-array", "expiresAt": [now + datetime.timedelta(days=1),
                                           now - datetime.timedelta(minutes=1)]},
        {"_id": "future", "expiresAt": now + datetime.timedelta(days=1)},
        {"_id": "not-a-date", "expiresAt": "yesterday"},
        {"_id": "missing"},
    ])
    assert db.sessions.index_information()["expiresAt_1"]["expireAfterSeconds"] == 0
    # Real MongoDB runs its TTL monitor every 60 s; the embedded one runs every second.
    wait_until(lambda: db.sessions.count_documents({}) == 3, timeout=90, interval=0.1,
               message="expired documents were not deleted")
    assert sorted(d["_id"] for d in db.sessions.find()) == ["future", "missing", "not-a-date"]


@pytest.mark.embedded_only
def test_ttl_monitor_deletes_within_a_couple_of_seconds(db: Db) -> None:
    db.ttl.create_index("at", expireAfterSeconds=1)
    db.ttl.insert_one({"_id": 1, "at": _utcnow()})
    db.ttl.insert_one({"_id": 2, "at": _utcnow() + datetime.timedelta(hours=1)})
    wait_until(lambda: db.ttl.find_one({"_id": 1}) is None, timeout=5, interval=0.05,
               message="the TTL monitor did not delete the expired document")
    assert db.ttl.find_one({"_id": 2}) is not None


# -- index use, checked through the scannedObjects counter -----------------------------------


def _scanned(client: MongoClient[dict[str, Any]]) -> int:
    status = client.admin.command("serverStatus")
    return int(status["metrics"]["queryExecutor"]["scannedObjects"])


@pytest.fixture
def jobs_20k(db: Db) -> Coll:
    base = datetime.datetime(2024, 1, 1)
    db.jobs.create_index([("task", 1), ("nextRunAt", 1)])
    db.jobs.insert_many([
        {"_id": i, "task": f"task{i % 10}", "nextRunAt": base + datetime.timedelta(
            seconds=(i * 7919) % 20_000), "payload": i}
        for i in range(20_000)
    ])
    return db.jobs


@pytest.mark.embedded_only
def test_claim_is_served_by_index_without_collection_scan(
    client: MongoClient[dict[str, Any]], jobs_20k: Coll
) -> None:
    now = datetime.datetime(2030, 1, 1)
    earliest = jobs_20k.find_one({"task": "task3"}, sort=[("nextRunAt", 1), ("_id", 1)])
    assert earliest is not None
    before = _scanned(client)
    claimed = jobs_20k.find_one_and_update(
        {"task": "task3", "nextRunAt": {"$lte": now}},
        {"$set": {"nextRunAt": now + datetime.timedelta(days=1), "owner": "me"}},
        sort=[("nextRunAt", 1)], return_document=ReturnDocument.AFTER)
    examined = _scanned(client) - before
    assert claimed is not None and claimed["owner"] == "me"
    assert claimed["_id"] == earliest["_id"]  # the earliest due job of that task
    assert examined <= 5, f"the claim examined {examined} documents"


@pytest.mark.embedded_only
def test_scanned_objects_counts_collection_scans(
    client: MongoClient[dict[str, Any]], jobs_20k: Coll
) -> None:
    before = _scanned(client)
    assert jobs_20k.find_one({"payload": 19_999}) is not None  # no index on payload
    assert _scanned(client) - before >= 19_000
    before = _scanned(client)
    found = list(jobs_20k.find({"task": "task1"}, sort=[("nextRunAt", 1)], limit=3))
    assert len(found) == 3
    assert _scanned(client) - before <= 5
    before = _scanned(client)  # $in on the prefix: the index scans are merged in sort order
    found = list(jobs_20k.find({"task": {"$in": ["task1", "task2"]}}, sort=[("nextRunAt", 1)],
                               limit=3))
    assert len(found) == 3
    assert _scanned(client) - before <= 8


@pytest.mark.embedded_only
def test_repeated_claims_stay_cheap(client: MongoClient[dict[str, Any]], jobs_20k: Coll) -> None:
    now = datetime.datetime(2030, 1, 1)
    before = _scanned(client)
    seen = set()
    for _ in range(50):
        doc = jobs_20k.find_one_and_update(
            {"task": "task7", "nextRunAt": {"$lte": now}},
            {"$set": {"nextRunAt": now + datetime.timedelta(days=1)}},
            sort=[("nextRunAt", 1)])
        assert doc is not None
        seen.add(doc["_id"])
    assert len(seen) == 50
    assert _scanned(client) - before <= 50 * 5
