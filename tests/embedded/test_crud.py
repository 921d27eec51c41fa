"""Document and catalog commands through PyMongo over TCP.

Every test here is valid against a real MongoDB 7.0 replica set (``MONGODB_URI``) as well as the
embedded server the fixtures start as a separate process.
"""

from __future__ import annotations

import datetime
from typing import Any

import pytest
from bson import Int64, ObjectId
from pymongo import ASCENDING, DESCENDING, MongoClient, ReturnDocument
from pymongo.database import Database
from pymongo.errors import BulkWriteError, DuplicateKeyError, OperationFailure, WriteError
from pymongo.monitoring import CommandListener, CommandStartedEvent, CommandSucceededEvent

Db = Database[dict[str, Any]]


def _utcnow() -> datetime.datetime:
    # BSON dates have millisecond precision and come back naive (UTC).
    now = datetime.datetime.now(datetime.UTC).replace(tzinfo=None)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


# -- insert ----------------------------------------------------------------------------------


def test_insert_generates_object_id_and_keeps_given_ids(db: Db) -> None:
    result = db.items.insert_one({"name": "a"})
    assert isinstance(result.inserted_id, ObjectId)
    db.items.insert_one({"_id": "b", "name": "b"})
    docs = list(db.items.find({}, sort=[("name", ASCENDING)]))
    assert docs == [{"_id": result.inserted_id, "name": "a"}, {"_id": "b", "name": "b"}]


def test_insert_moves_id_first(db: Db) -> None:
    db.items.insert_one({"x": 1, "_id": 7})
    raw = db.items.find_one({"_id": 7})
    assert raw is not None and next(iter(raw)) == "_id"


def test_ordered_insert_stops_at_first_duplicate(db: Db) -> None:
    with pytest.raises(BulkWriteError) as info:
        db.items.insert_many([{"_id": 1}, {"_id": 1}, {"_id": 2}])
    details = info.value.details
    assert details["nInserted"] == 1
    assert [(e["index"], e["code"]) for e in details["writeErrors"]] == [(1, 11000)]
    assert sorted(d["_id"] for d in db.items.find()) == [1]


def test_unordered_insert_continues_after_duplicate(db: Db) -> None:
    with pytest.raises(BulkWriteError) as info:
        db.items.insert_many([{"_id": 1}, {"_id": 1}, {"_id": 2}, {"_id": 2}, {"_id": 3}],
                             ordered=False)
    details = info.value.details
    assert details["nInserted"] == 3
    assert sorted(e["index"] for e in details["writeErrors"]) == [1, 3]
    assert sorted(d["_id"] for d in db.items.find()) == [1, 2, 3]


def test_insert_duplicate_id_is_duplicate_key_error(db: Db) -> None:
    db.items.insert_one({"_id": 1})
    with pytest.raises(DuplicateKeyError) as info:
        db.items.insert_one({"_id": 1.0})  # equal as numbers, so the same _id
    assert info.value.code == 11000


# -- update ----------------------------------------------------------------------------------


def test_update_one_and_many(db: Db) -> None:
    db.items.insert_many([{"_id": i, "kind": "a" if i < 3 else "b", "n": i} for i in range(5)])
    one = db.items.update_one({"kind": "a"}, {"$inc": {"n": 100}})
    assert (one.matched_count, one.modified_count) == (1, 1)
    many = db.items.update_many({"kind": "a"}, {"$set": {"seen": True}})
    assert (many.matched_count, many.modified_count) == (3, 3)
    assert db.items.count_documents({"seen": True}) == 3
    assert db.items.count_documents({"n": {"$gte": 100}}) == 1


def test_update_reports_unmodified_documents(db: Db) -> None:
    db.items.insert_many([{"_id": 1, "x": 1}, {"_id": 2, "x": 2}])
    result = db.items.update_many({}, {"$set": {"x": 1}})
    assert (result.matched_count, result.modified_count) == (2, 1)


def test_update_no_match_without_upsert_changes_nothing(db: Db) -> None:
    db.items.insert_one({"_id": 1})
    result = db.items.update_one({"_id": 2}, {"$set": {"x": 1}})
    assert (result.matched_count, result.modified_count, result.upserted_id) == (0, 0, None)
    assert db.items.count_documents({}) == 1


def test_upsert_inserts_query_equalities_and_set_on_insert(db: Db) -> None:
    result = db.items.update_one(
        {"tenant": "t1", "key": {"$eq": "k"}, "n": {"$gt": 5}},
        {"$set": {"value": 1}, "$setOnInsert": {"created": True}},
        upsert=True,
    )
    assert result.upserted_id is not None and result.matched_count == 0
    doc = db.items.find_one({"_id": result.upserted_id}, {"_id": 0})
    assert doc == {"tenant": "t1", "key": "k", "value": 1, "created": True}
    again = db.items.update_one({"tenant": "t1", "key": "k"},
                                {"$set": {"value": 2}, "$setOnInsert": {"created": False}},
                                upsert=True)
    assert again.upserted_id is None and again.modified_count == 1
    assert db.items.find_one({}, {"_id": 0}) == {"tenant": "t1", "key": "k", "value": 2,
                                                 "created": True}


def test_upsert_with_dotted_query_and_id(db: Db) -> None:
    db.items.update_one({"_id": "x", "a.b": 1}, {"$set": {"a.c": 2}}, upsert=True)
    assert db.items.find_one({"_id": "x"}) == {"_id": "x", "a": {"b": 1, "c": 2}}


def test_replace_one_with_upsert(db: Db) -> None:
    result = db.items.replace_one({"_id": 3}, {"name": "three"}, upsert=True)
    assert result.upserted_id == 3
    db.items.replace_one({"_id": 3}, {"other": True})
    assert db.items.find_one({"_id": 3}) == {"_id": 3, "other": True}


def test_update_with_array_filters(db: Db) -> None:
    db.items.insert_one({"_id": 1, "grades": [{"g": 80, "ok": False}, {"g": 95, "ok": False},
                                              {"g": 91, "ok": False}]})
    db.items.update_one({"_id": 1}, {"$set": {"grades.$[high].ok": True}},
                        array_filters=[{"high.g": {"$gte": 90}}])
    doc = db.items.find_one({"_id": 1})
    assert doc is not None
    assert [g["ok"] for g in doc["grades"]] == [False, True, True]


def test_update_all_positional_and_first_match_positional(db: Db) -> None:
    db.items.insert_one({"_id": 1, "xs": [1, 2, 3], "ys": [{"k": "a", "v": 0},
                                                           {"k": "b", "v": 0}]})
    db.items.update_one({"_id": 1}, {"$inc": {"xs.$[]": 10}})
    db.items.update_one({"_id": 1, "ys.k": "b"}, {"$set": {"ys.$.v": 5}})
    assert db.items.find_one({"_id": 1}) == {
        "_id": 1, "xs": [11, 12, 13], "ys": [{"k": "a", "v": 0}, {"k": "b", "v": 5}]}


def test_nested_array_filters(db: Db) -> None:
    db.items.insert_one({"_id": 1, "rows": [{"k": 1, "v": [1, 5, 9]}, {"k": 2, "v": [2, 6]}]})
    db.items.update_one({"_id": 1}, {"$inc": {"rows.$[r].v.$[big]": 100}},
                        array_filters=[{"r.k": 1}, {"big": {"$gte": 5}}])
    assert db.items.find_one({"_id": 1}) == {
        "_id": 1, "rows": [{"k": 1, "v": [1, 105, 109]}, {"k": 2, "v": [2, 6]}]}
    db.items.update_one({"_id": 1}, {"$set": {"rows.$[].seen": True}})
    doc = db.items.find_one({"_id": 1})
    assert doc is not None and [r["seen"] for r in doc["rows"]] == [True, True]


def test_array_filter_errors(db: Db) -> None:
    db.items.insert_one({"_id": 1, "xs": [1, 2], "n": 5})
    with pytest.raises(WriteError) as info:
        db.items.update_one({"_id": 1}, {"$set": {"xs.$[a]": 0}})
    assert info.value.code == 2  # no filter for identifier a
    with pytest.raises(WriteError) as info:
        db.items.update_one({"_id": 1}, {"$set": {"xs.$[a]": 0}},
                            array_filters=[{"a": 1}, {"b": 2}])
    assert info.value.code == 9  # filter b unused
    with pytest.raises(WriteError) as info:
        db.items.update_one({"_id": 1}, {"$set": {"n.$[]": 0}})
    assert info.value.code == 2  # not an array
    assert db.items.find_one({"_id": 1}) == {"_id": 1, "xs": [1, 2], "n": 5}


def test_find_and_modify_with_array_filters(db: Db) -> None:
    db.items.insert_one({"_id": 1, "xs": [{"id": "a", "n": 0}, {"id": "b", "n": 0}]})
    doc = db.items.find_one_and_update({"_id": 1}, {"$inc": {"xs.$[x].n": 1}},
                                       array_filters=[{"x.id": "b"}],
                                       return_document=ReturnDocument.AFTER)
    assert doc == {"_id": 1, "xs": [{"id": "a", "n": 0}, {"id": "b", "n": 1}]}


def test_pipeline_update_uses_fields_and_now(db: Db) -> None:
    before = _utcnow() - datetime.timedelta(seconds=1)
    db.items.insert_many([{"_id": 1, "a": 2, "b": 3}, {"_id": 2, "a": 10, "b": 1}])
    db.items.update_many({}, [
        {"$set": {"sum": {"$add": ["$a", "$b"]}, "touched": "$$NOW"}},
        {"$unset": "b"},
    ])
    docs = list(db.items.find({}, sort=[("_id", 1)]))
    assert [(d["sum"], "b" in d) for d in docs] == [(5, False), (11, False)]
    assert all(before <= d["touched"] <= _utcnow() + datetime.timedelta(seconds=1)
               for d in docs)
    assert docs[0]["touched"] == docs[1]["touched"]  # one $$NOW per command


def test_pipeline_update_upsert(db: Db) -> None:
    result = db.items.update_one({"_id": "u"}, [{"$set": {"n": {"$literal": "$notAField"}}}],
                                 upsert=True)
    assert result.upserted_id == "u"
    assert db.items.find_one({"_id": "u"}) == {"_id": "u", "n": "$notAField"}


def test_update_rejects_unknown_operator_and_mixed_document(db: Db) -> None:
    db.items.insert_one({"_id": 1})
    with pytest.raises(WriteError) as info:
        db.items.update_one({"_id": 1}, {"$frobnicate": {"a": 1}})
    assert info.value.code == 9
    with pytest.raises(OperationFailure):
        db.items.update_one({"_id": 1}, {"$set": {"a": 1}, "b": 2})


# -- delete ----------------------------------------------------------------------------------


def test_delete_one_and_many(db: Db) -> None:
    db.items.insert_many([{"_id": i, "even": i % 2 == 0} for i in range(6)])
    assert db.items.delete_one({"even": True}).deleted_count == 1
    assert db.items.count_documents({"even": True}) == 2
    assert db.items.delete_many({"even": False}).deleted_count == 3
    assert sorted(d["_id"] for d in db.items.find()) in ([2, 4], [0, 4], [0, 2])
    assert db.items.delete_many({}).deleted_count == 2
    assert db.items.count_documents({}) == 0


def test_delete_on_missing_collection_deletes_nothing(db: Db) -> None:
    assert db.nothing.delete_many({"x": 1}).deleted_count == 0


# -- find ------------------------------------------------------------------------------------


def test_find_filter_projection_sort_skip_limit(db: Db) -> None:
    db.items.insert_many([{"_id": i, "n": i, "group": i % 3, "extra": {"a": i, "b": -i}}
                          for i in range(20)])
    docs = list(db.items.find({"group": {"$in": [0, 1]}}, {"n": 1, "extra.a": 1},
                              sort=[("group", DESCENDING), ("n", ASCENDING)], skip=2, limit=4))
    assert docs == [
        {"_id": 7, "n": 7, "extra": {"a": 7}},
        {"_id": 10, "n": 10, "extra": {"a": 10}},
        {"_id": 13, "n": 13, "extra": {"a": 13}},
        {"_id": 16, "n": 16, "extra": {"a": 16}},
    ]


def test_find_exclusion_projection_and_id_suppression(db: Db) -> None:
    db.items.insert_one({"_id": 1, "a": 1, "b": {"c": 1, "d": 2}, "e": 3})
    assert db.items.find_one({}, {"b.c": 0, "e": 0}) == {"_id": 1, "a": 1, "b": {"d": 2}}
    assert db.items.find_one({}, {"_id": 0, "a": 1}) == {"a": 1}


def test_find_projection_operators(db: Db) -> None:
    db.items.insert_one({"_id": 1, "xs": [1, 2, 3, 4, 5], "ys": [{"k": 1}, {"k": 2}]})
    assert db.items.find_one({}, {"xs": {"$slice": 2}, "ys": 0}) == {"_id": 1, "xs": [1, 2]}
    assert db.items.find_one({}, {"ys": {"$elemMatch": {"k": 2}}}) == {"_id": 1,
                                                                       "ys": [{"k": 2}]}
    assert db.items.find_one({"xs": 3}, {"xs.$": 1}) == {"_id": 1, "xs": [3]}


def test_find_projection_with_expressions(db: Db) -> None:
    db.items.insert_one({"_id": 1, "first": "Ada", "last": "Lovelace", "n": 4})
    doc = db.items.find_one({}, {"name": {"$concat": ["$first", " ", "$last"]}, "n": 1,
                                 "twice": {"$multiply": ["$n", 2]}, "tag": {"$literal": "$x"},
                                 "_id": 0})
    assert doc == {"name": "Ada Lovelace", "n": 4, "twice": 8, "tag": "$x"}


def test_find_positional_projection_uses_the_query(db: Db) -> None:
    db.items.insert_one({"_id": 1, "state": "a", "ys": [{"k": 1, "v": "one"},
                                                        {"k": 2, "v": "two"}]})
    doc = db.items.find_one({"state": "a", "ys.k": 2}, {"ys.$": 1})
    assert doc == {"_id": 1, "ys": [{"k": 2, "v": "two"}]}


def test_documents_near_the_size_limit_come_back_in_several_batches(db: Db) -> None:
    blob = "x" * (3 * 1024 * 1024)
    db.big.insert_many([{"_id": i, "blob": blob} for i in range(8)])  # 24 MiB in all
    assert [d["_id"] for d in db.big.find({}, sort=[("_id", 1)])] == list(range(8))
    assert [d["_id"] for d in db.big.aggregate([{"$sort": {"_id": -1}}])] == list(range(7, -1,
                                                                                        -1))


def test_find_negative_limit_returns_single_batch(db: Db) -> None:
    db.items.insert_many([{"_id": i} for i in range(10)])
    reply = db.command("find", "items", sort={"_id": 1}, limit=-3)
    assert [d["_id"] for d in reply["cursor"]["firstBatch"]] == [0, 1, 2]
    assert reply["cursor"]["id"] == 0


class _Events(CommandListener):
    def __init__(self) -> None:
        self.names: list[str] = []

    def started(self, event: CommandStartedEvent) -> None:
        self.names.append(event.command_name)

    def succeeded(self, event: CommandSucceededEvent) -> None:
        pass

    def failed(self, event: Any) -> None:
        pass


def test_find_batch_size_and_get_more_across_batches(mongodb_uri: str, db: Db) -> None:
    db.items.insert_many([{"_id": i} for i in range(25)])
    events = _Events()
    listening: MongoClient[dict[str, Any]] = MongoClient(mongodb_uri, event_listeners=[events])
    try:
        cursor = listening[db.name].items.find({}, sort=[("_id", 1)], batch_size=7)
        assert [d["_id"] for d in cursor] == list(range(25))
    finally:
        listening.close()
    assert events.names.count("find") == 1
    assert events.names.count("getMore") == 3  # 7 + 7 + 7 + 4


def test_get_more_command_directly(db: Db) -> None:
    db.items.insert_many([{"_id": i} for i in range(5)])
    first = db.command("find", "items", sort={"_id": 1}, batchSize=2)
    cursor_id = first["cursor"]["id"]
    assert cursor_id != 0 and isinstance(cursor_id, Int64)
    assert first["cursor"]["ns"] == f"{db.name}.items"
    assert [d["_id"] for d in first["cursor"]["firstBatch"]] == [0, 1]
    second = db.command("getMore", cursor_id, collection="items", batchSize=2)
    assert [d["_id"] for d in second["cursor"]["nextBatch"]] == [2, 3]
    assert second["cursor"]["id"] == cursor_id
    last = db.command("getMore", cursor_id, collection="items", batchSize=2)
    assert [d["_id"] for d in last["cursor"]["nextBatch"]] == [4]
    assert last["cursor"]["id"] == 0
    with pytest.raises(OperationFailure) as info:
        db.command("getMore", cursor_id, collection="items")
    assert info.value.code == 43


def test_cursor_with_limit_stops_at_limit_across_batches(db: Db) -> None:
    db.items.insert_many([{"_id": i} for i in range(30)])
    docs = list(db.items.find({}, sort=[("_id", -1)], batch_size=4, limit=10))
    assert [d["_id"] for d in docs] == list(range(29, 19, -1))


def test_kill_cursors(db: Db) -> None:
    db.items.insert_many([{"_id": i} for i in range(5)])
    first = db.command("find", "items", batchSize=1)
    cursor_id = first["cursor"]["id"]
    reply = db.command("killCursors", "items", cursors=[cursor_id, Int64(123456789)])
    assert reply["cursorsKilled"] == [cursor_id]
    assert reply["cursorsNotFound"] == [Int64(123456789)]
    with pytest.raises(OperationFailure) as info:
        db.command("getMore", cursor_id, collection="items")
    assert info.value.code == 43


def test_find_on_missing_collection_is_empty(db: Db) -> None:
    assert list(db.nothing.find({"x": 1})) == []


def test_find_with_expr_and_now(db: Db) -> None:
    past = _utcnow() - datetime.timedelta(hours=1)
    future = _utcnow() + datetime.timedelta(hours=1)
    db.items.insert_many([
        {"_id": 1, "due": past, "spent": 5, "budget": 10},
        {"_id": 2, "due": future, "spent": 15, "budget": 10},
    ])
    assert [d["_id"] for d in db.items.find({"$expr": {"$lt": ["$due", "$$NOW"]}})] == [1]
    assert [d["_id"] for d in db.items.find({"$expr": {"$gt": ["$spent", "$budget"]}})] == [2]


# -- findAndModify ---------------------------------------------------------------------------


def test_find_and_modify_sort_and_return_document(db: Db) -> None:
    db.items.insert_many([{"_id": i, "prio": p, "state": "ready"}
                          for i, p in enumerate([5, 1, 3])])
    before = db.items.find_one_and_update({"state": "ready"}, {"$set": {"state": "taken"}},
                                          sort=[("prio", ASCENDING)])
    assert before == {"_id": 1, "prio": 1, "state": "ready"}
    after = db.items.find_one_and_update({"state": "ready"}, {"$set": {"state": "taken"}},
                                         sort=[("prio", DESCENDING)],
                                         return_document=ReturnDocument.AFTER,
                                         projection={"state": 1, "_id": 0})
    assert after == {"state": "taken"}
    assert db.items.find_one({"_id": 0}) == {"_id": 0, "prio": 5, "state": "taken"}
    assert db.items.find_one({"state": "ready"}) == {"_id": 2, "prio": 3, "state": "ready"}


def test_find_and_modify_no_match(db: Db) -> None:
    db.items.insert_one({"_id": 1})
    assert db.items.find_one_and_update({"_id": 2}, {"$set": {"a": 1}}) is None
    assert db.items.find_one_and_delete({"_id": 2}) is None


def test_find_and_modify_upsert(db: Db) -> None:
    result = db.items.find_one_and_update({"key": "k"}, {"$inc": {"n": 1}}, upsert=True,
                                          return_document=ReturnDocument.AFTER)
    assert result is not None and result["key"] == "k" and result["n"] == 1
    missing = db.items.find_one_and_update({"key": "j"}, {"$inc": {"n": 1}}, upsert=True)
    assert missing is None  # the document before the upsert did not exist
    raw = db.command("findAndModify", "items", query={"key": "k"}, update={"$inc": {"n": 1}},
                     upsert=True, new=True)
    assert raw["lastErrorObject"] == {"n": 1, "updatedExisting": True}
    assert raw["value"]["n"] == 2
    raw = db.command("findAndModify", "items", query={"key": "z"}, update={"$inc": {"n": 1}},
                     upsert=True)
    assert raw["lastErrorObject"]["updatedExisting"] is False
    assert "upserted" in raw["lastErrorObject"]


def test_find_and_modify_replacement(db: Db) -> None:
    db.items.insert_one({"_id": 1, "a": 1, "b": 2})
    result = db.items.find_one_and_replace({"_id": 1}, {"c": 3},
                                           return_document=ReturnDocument.AFTER)
    assert result == {"_id": 1, "c": 3}


def test_find_and_modify_remove(db: Db) -> None:
    db.items.insert_many([{"_id": i, "n": i} for i in range(3)])
    removed = db.items.find_one_and_delete({}, sort=[("n", DESCENDING)], projection={"n": 1})
    assert removed == {"_id": 2, "n": 2}
    assert sorted(d["_id"] for d in db.items.find()) == [0, 1]


def test_find_and_modify_pipeline_update(db: Db) -> None:
    db.items.insert_one({"_id": 1, "a": 4, "b": 5})
    result = db.items.find_one_and_update(
        {"_id": 1}, [{"$set": {"total": {"$add": ["$a", "$b"]}, "at": "$$NOW"}},
                     {"$unset": ["a"]}],
        return_document=ReturnDocument.AFTER)
    assert result is not None
    assert result["total"] == 9 and "a" not in result and isinstance(result["at"],
                                                                    datetime.datetime)


def test_find_and_modify_rejects_remove_with_update(db: Db) -> None:
    db.items.insert_one({"_id": 1})
    with pytest.raises(OperationFailure):
        db.command("findAndModify", "items", query={}, remove=True, update={"$set": {"a": 1}})


def test_find_and_modify_failed_update_reports_error_and_keeps_document(db: Db) -> None:
    db.items.insert_one({"_id": 1, "s": "x"})
    with pytest.raises(OperationFailure) as info:
        db.items.find_one_and_update({"_id": 1}, {"$set": {"a": 1}, "$inc": {"s": 1}})
    assert info.value.code == 14
    assert db.items.find_one({"_id": 1}) == {"_id": 1, "s": "x"}


# -- count / distinct ------------------------------------------------------------------------


def test_count_command(db: Db) -> None:
    db.items.insert_many([{"_id": i, "n": i} for i in range(10)])
    assert db.command("count", "items")["n"] == 10
    assert db.command("count", "items", query={"n": {"$gte": 4}})["n"] == 6
    assert db.command("count", "items", query={"n": {"$gte": 4}}, skip=1, limit=3)["n"] == 3
    assert db.command("count", "nothing")["n"] == 0
    assert db.items.count_documents({"n": {"$lt": 3}}) == 3
    assert db.items.estimated_document_count() == 10


def test_distinct(db: Db) -> None:
    db.items.insert_many([
        {"_id": 1, "tag": "a", "tags": ["x", "y"], "n": 1},
        {"_id": 2, "tag": "b", "tags": ["y", "z"], "n": 1.0},
        {"_id": 3, "tag": "a", "tags": [], "n": 2},
        {"_id": 4},
    ])
    assert sorted(db.items.distinct("tag")) == ["a", "b"]
    assert sorted(db.items.distinct("tags")) == ["x", "y", "z"]
    assert sorted(db.items.distinct("n")) == [1, 2]
    assert db.items.distinct("tag", {"tags": "z"}) == ["b"]


# -- catalog ---------------------------------------------------------------------------------


def test_create_list_and_drop_collections(db: Db) -> None:
    db.create_collection("alpha")
    db.beta.insert_one({"x": 1})  # implicit creation
    assert sorted(db.list_collection_names()) == ["alpha", "beta"]
    with pytest.raises(OperationFailure) as info:
        db.command("create", "alpha")
    assert info.value.code == 48
    infos = {c["name"]: c for c in db.list_collections()}
    assert infos["alpha"]["type"] == "collection"
    assert "uuid" in infos["alpha"]["info"]
    assert [c["name"] for c in db.list_collections(filter={"name": "beta"})] == ["beta"]
    reply = db.command("drop", "alpha")
    assert reply["nIndexesWas"] == 1 and reply["ns"] == f"{db.name}.alpha"
    assert db.list_collection_names() == ["beta"]
    db.drop_collection("alpha")  # dropping a missing collection is not an error for PyMongo
    assert db.list_collection_names() == ["beta"]


def test_list_collections_and_indexes_in_batches(db: Db) -> None:
    for name in ("c1", "c2", "c3"):
        db.create_collection(name)
    reply = db.command("listCollections", cursor={"batchSize": 1})
    assert len(reply["cursor"]["firstBatch"]) == 1 and reply["cursor"]["id"] != 0
    assert sorted(c["name"] for c in db.list_collections(batchSize=1)) == ["c1", "c2", "c3"]
    for key in ("a", "b", "c"):
        db.c1.create_index(key)
    reply = db.command("listIndexes", "c1", cursor={"batchSize": 2})
    assert len(reply["cursor"]["firstBatch"]) == 2
    assert reply["cursor"]["ns"] == f"{db.name}.$cmd.listIndexes.c1"
    collection = reply["cursor"]["ns"].split(".", 1)[1]
    more = db.command("getMore", reply["cursor"]["id"], collection=collection, batchSize=10)
    assert [i["name"] for i in more["cursor"]["nextBatch"]] == ["b_1", "c_1"]


def test_list_collections_name_only(db: Db) -> None:
    db.create_collection("one")
    reply = db.command("listCollections", nameOnly=True)
    assert [c["name"] for c in reply["cursor"]["firstBatch"]] == ["one"]


def test_create_with_options_and_coll_mod(db: Db) -> None:
    db.create_collection("events", changeStreamPreAndPostImages={"enabled": False})
    db.command("collMod", "events", changeStreamPreAndPostImages={"enabled": True})
    [info] = list(db.list_collections(filter={"name": "events"}))
    assert info["options"]["changeStreamPreAndPostImages"] == {"enabled": True}
    with pytest.raises(OperationFailure) as exc:
        db.command("collMod", "missing", changeStreamPreAndPostImages={"enabled": True})
    assert exc.value.code == 26


def test_create_and_coll_mod_reject_unknown_fields(db: Db) -> None:
    with pytest.raises(OperationFailure) as info:
        db.command("create", "c1", notAnOption=True)
    assert info.value.code == 40415
    db.create_collection("c2")
    with pytest.raises(OperationFailure) as info:
        db.command("collMod", "c2", notAnOption=True)
    assert info.value.code == 40415


def test_coll_mod_changes_ttl_of_index(db: Db) -> None:
    db.events.create_index("at", expireAfterSeconds=3600)
    reply = db.command("collMod", "events", index={"keyPattern": {"at": 1},
                                                   "expireAfterSeconds": 60})
    assert reply["expireAfterSeconds_old"] == 3600
    assert reply["expireAfterSeconds_new"] == 60
    info = db.events.index_information()
    assert info["at_1"]["expireAfterSeconds"] == 60


def test_drop_database_and_list_databases(client: MongoClient[dict[str, Any]], db: Db) -> None:
    db.items.insert_one({"x": 1})
    assert db.name in client.list_database_names()
    listed = client.admin.command("listDatabases")
    assert db.name in [d["name"] for d in listed["databases"]]
    filtered = client.admin.command("listDatabases", nameOnly=True, filter={"name": db.name})
    assert filtered["databases"] == [{"name": db.name}]
    client.drop_database(db.name)
    assert db.name not in client.list_database_names()
    assert db.list_collection_names() == []


def test_update_and_delete_with_let(db: Db) -> None:
    db.items.insert_many([{"_id": i, "n": i} for i in range(5)])
    result = db.items.update_many({"$expr": {"$gte": ["$n", "$$from"]}},
                                  [{"$set": {"tag": "$$label"}}], let={"from": 3, "label": "hi"})
    assert result.modified_count == 2
    assert db.items.count_documents({"tag": "hi"}) == 2
    deleted = db.items.delete_many({"$expr": {"$lt": ["$n", "$$below"]}}, let={"below": 2})
    assert deleted.deleted_count == 2


def test_unknown_find_option_is_rejected(db: Db) -> None:
    db.items.insert_one({"_id": 1})
    with pytest.raises(OperationFailure) as info:
        db.command("find", "items", notAnOption=1)
    assert info.value.code == 40415


def test_non_simple_collation_is_applied_not_ignored(db: Db) -> None:
    """Strength 2 ignores case (manual "Collation"); more in test_collation.py."""
    db.items.insert_many([{"_id": 1, "s": "a"}, {"_id": 2, "s": "A"}])
    assert len(list(db.items.find({"s": "a"}, collation={"locale": "en", "strength": 2}))) == 2
    assert len(list(db.items.find({"s": "a"}, collation={"locale": "simple"}))) == 1


def test_unknown_command_answers_59_naming_it(db: Db) -> None:
    with pytest.raises(OperationFailure) as info:
        db.command("frobnicateTheWidgets", 1)
    assert info.value.code == 59
    assert info.value.details is not None
    assert info.value.details["codeName"] == "CommandNotFound"
    assert "frobnicateTheWidgets" in info.value.details["errmsg"]
