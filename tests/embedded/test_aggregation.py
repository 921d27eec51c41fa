"""The ``aggregate`` command through PyMongo: stages, expressions, ``$$NOW``, ``$out``/``$merge``.

Valid against a real MongoDB 7.0 replica set as well as the embedded server.
"""

from __future__ import annotations

import datetime
from typing import Any

import pytest
from bson import Int64
from pymongo.collection import Collection
from pymongo.database import Database
from pymongo.errors import OperationFailure

Db = Database[dict[str, Any]]
Coll = Collection[dict[str, Any]]


@pytest.fixture
def orders(db: Db) -> Coll:
    db.orders.insert_many([
        {"_id": 1, "customer": "ann", "item": "apple", "qty": 2, "price": 1.5,
         "tags": ["fruit", "red"]},
        {"_id": 2, "customer": "bob", "item": "pear", "qty": 1, "price": 2.0, "tags": ["fruit"]},
        {"_id": 3, "customer": "ann", "item": "bread", "qty": 1, "price": 3.0, "tags": []},
        {"_id": 4, "customer": "cid", "item": "apple", "qty": 5, "price": 1.5},
        {"_id": 5, "customer": "bob", "item": "milk", "qty": 3, "price": 1.0,
         "tags": ["dairy"]},
    ])
    return db.orders


def run(coll: Coll, pipeline: list[dict[str, Any]], **kwargs: Any) -> list[dict[str, Any]]:
    return list(coll.aggregate(pipeline, **kwargs))


def test_match_project_sort_skip_limit(orders: Coll) -> None:
    out = run(orders, [
        {"$match": {"qty": {"$gte": 1}, "customer": {"$ne": "cid"}}},
        {"$project": {"_id": 0, "item": 1, "total": {"$multiply": ["$qty", "$price"]}}},
        {"$sort": {"total": -1, "item": 1}},
        {"$skip": 1},
        {"$limit": 2},
    ])
    assert out == [{"item": "bread", "total": 3.0}, {"item": "milk", "total": 3.0}]


def test_add_fields_set_and_unset(orders: Coll) -> None:
    out = run(orders, [
        {"$match": {"_id": 1}},
        {"$addFields": {"total": {"$multiply": ["$qty", "$price"]}}},
        {"$set": {"big": {"$gt": ["$total", 2]}, "nested.x": 1}},
        {"$unset": ["tags", "price"]},
    ])
    assert out == [{"_id": 1, "customer": "ann", "item": "apple", "qty": 2, "total": 3.0,
                    "big": True, "nested": {"x": 1}}]


def test_project_exclusion_and_literal(orders: Coll) -> None:
    out = run(orders, [
        {"$match": {"_id": 2}},
        {"$project": {"tags": 0, "price": 0}},
    ])
    assert out == [{"_id": 2, "customer": "bob", "item": "pear", "qty": 1}]
    out = run(orders, [
        {"$match": {"_id": 2}},
        {"$project": {"_id": 0, "cost": {"$literal": "$price"}, "one": {"$literal": 1},
                      "price": "$price"}},
    ])
    assert out == [{"cost": "$price", "one": 1, "price": 2.0}]


def test_group_accumulators(orders: Coll) -> None:
    out = run(orders, [
        {"$sort": {"_id": 1}},
        {"$group": {"_id": "$customer", "orders": {"$sum": 1}, "qty": {"$sum": "$qty"},
                    "avg": {"$avg": "$qty"}, "first": {"$first": "$item"},
                    "last": {"$last": "$item"}, "items": {"$push": "$item"},
                    "distinct": {"$addToSet": "$price"}, "min": {"$min": "$qty"},
                    "max": {"$max": "$qty"}}},
        {"$sort": {"_id": 1}},
    ])
    assert [{k: v for k, v in d.items() if k != "distinct"} for d in out] == [
        {"_id": "ann", "orders": 2, "qty": 3, "avg": 1.5, "first": "apple", "last": "bread",
         "items": ["apple", "bread"], "min": 1, "max": 2},
        {"_id": "bob", "orders": 2, "qty": 4, "avg": 2.0, "first": "pear", "last": "milk",
         "items": ["pear", "milk"], "min": 1, "max": 3},
        {"_id": "cid", "orders": 1, "qty": 5, "avg": 5.0, "first": "apple", "last": "apple",
         "items": ["apple"], "min": 5, "max": 5},
    ]
    assert sorted(out[0]["distinct"]) == [1.5, 3.0]


def test_group_by_null_and_compound_key(orders: Coll) -> None:
    total = run(orders, [{"$group": {"_id": None, "n": {"$sum": "$qty"}}}])
    assert total == [{"_id": None, "n": 12}]
    by_two = run(orders, [
        {"$group": {"_id": {"c": "$customer", "i": "$item"}, "n": {"$sum": 1}}},
        {"$match": {"_id.i": "apple"}},
        {"$sort": {"_id.c": 1}},
    ])
    assert by_two == [{"_id": {"c": "ann", "i": "apple"}, "n": 1},
                      {"_id": {"c": "cid", "i": "apple"}, "n": 1}]


def test_count_stage(orders: Coll) -> None:
    assert run(orders, [{"$match": {"item": "apple"}}, {"$count": "apples"}]) == [{"apples": 2}]
    assert run(orders, [{"$match": {"item": "nothing"}}, {"$count": "n"}]) == []


def test_unwind(orders: Coll) -> None:
    out = run(orders, [{"$unwind": "$tags"}, {"$project": {"tags": 1}}, {"$sort": {"_id": 1}}])
    assert [(d["_id"], d["tags"]) for d in out] == [(1, "fruit"), (1, "red"), (2, "fruit"),
                                                     (5, "dairy")]
    out = run(orders, [
        {"$unwind": {"path": "$tags", "includeArrayIndex": "pos",
                     "preserveNullAndEmptyArrays": True}},
        {"$project": {"tags": 1, "pos": 1}},
        {"$sort": {"_id": 1, "pos": 1}},
    ])
    assert [(d["_id"], d.get("tags"), d["pos"]) for d in out] == [
        (1, "fruit", 0), (1, "red", 1), (2, "fruit", 0), (3, None, None), (4, None, None),
        (5, "dairy", 0)]


def test_lookup_local_foreign(db: Db, orders: Coll) -> None:
    db.customers.insert_many([{"_id": "ann", "city": "Oslo"}, {"_id": "bob", "city": "Rome"}])
    out = run(orders, [
        {"$match": {"_id": {"$in": [1, 4]}}},
        {"$lookup": {"from": "customers", "localField": "customer", "foreignField": "_id",
                     "as": "who"}},
        {"$project": {"who": 1}},
        {"$sort": {"_id": 1}},
    ])
    assert out == [{"_id": 1, "who": [{"_id": "ann", "city": "Oslo"}]}, {"_id": 4, "who": []}]


def test_lookup_with_pipeline_and_let(db: Db, orders: Coll) -> None:
    db.limits.insert_many([{"_id": 1, "item": "apple", "max": 3},
                           {"_id": 2, "item": "apple", "max": 10}])
    out = run(orders, [
        {"$match": {"item": "apple"}},
        {"$lookup": {"from": "limits", "let": {"it": "$item", "q": "$qty"}, "as": "ok",
                     "pipeline": [
                         {"$match": {"$expr": {"$and": [{"$eq": ["$item", "$$it"]},
                                                        {"$gte": ["$max", "$$q"]}]}}},
                         {"$project": {"_id": 1}},
                     ]}},
        {"$project": {"ok": 1}},
        {"$sort": {"_id": 1}},
    ])
    assert out == [{"_id": 1, "ok": [{"_id": 1}, {"_id": 2}]}, {"_id": 4, "ok": [{"_id": 2}]}]


def test_replace_root_and_replace_with(db: Db) -> None:
    db.people.insert_many([{"_id": 1, "profile": {"name": "a", "age": 3}},
                           {"_id": 2, "profile": {"name": "b", "age": 4}}])
    out = run(db.people, [{"$replaceRoot": {"newRoot": "$profile"}}, {"$sort": {"name": 1}}])
    assert out == [{"name": "a", "age": 3}, {"name": "b", "age": 4}]
    out = run(db.people, [
        {"$replaceWith": {"$mergeObjects": [{"id": "$_id"}, "$profile"]}},
        {"$sort": {"id": 1}},
    ])
    assert out == [{"id": 1, "name": "a", "age": 3}, {"id": 2, "name": "b", "age": 4}]


def test_facet(orders: Coll) -> None:
    [out] = run(orders, [{"$facet": {
        "byItem": [{"$group": {"_id": "$item", "n": {"$sum": 1}}}, {"$sort": {"_id": 1}}],
        "count": [{"$count": "n"}],
        "top": [{"$sort": {"qty": -1}}, {"$limit": 1}, {"$project": {"_id": 1}}],
    }}])
    assert out == {
        "byItem": [{"_id": "apple", "n": 2}, {"_id": "bread", "n": 1}, {"_id": "milk", "n": 1},
                   {"_id": "pear", "n": 1}],
        "count": [{"n": 5}],
        "top": [{"_id": 4}],
    }


def test_expressions(db: Db) -> None:
    db.x.insert_one({"_id": 1, "a": 7, "b": 2, "s": "Hello", "arr": [1, 2, 3],
                     "d": datetime.datetime(2024, 3, 5, 6, 7, 8)})
    [out] = run(db.x, [{"$project": {
        "_id": 0,
        "cond": {"$cond": [{"$gt": ["$a", 5]}, "big", "small"]},
        "ifnull": {"$ifNull": ["$missing", "dflt"]},
        "concat": {"$concat": ["$s", "!"]},
        "upper": {"$toUpper": "$s"},
        "size": {"$size": "$arr"},
        "sum": {"$sum": "$arr"},
        "filtered": {"$filter": {"input": "$arr", "as": "v", "cond": {"$gte": ["$$v", 2]}}},
        "mapped": {"$map": {"input": "$arr", "as": "v", "in": {"$multiply": ["$$v", 10]}}},
        "mod": {"$mod": ["$a", "$b"]},
        "year": {"$year": "$d"},
        "in": {"$in": [2, "$arr"]},
        "sub": {"$subtract": ["$a", "$b"]},
        "div": {"$divide": ["$a", "$b"]},
        "elem": {"$arrayElemAt": ["$arr", -1]},
        "switch": {"$switch": {"branches": [{"case": {"$eq": ["$b", 2]}, "then": "two"}],
                               "default": "other"}},
    }}])
    assert out == {"cond": "big", "ifnull": "dflt", "concat": "Hello!", "upper": "HELLO",
                   "size": 3, "sum": 6, "filtered": [2, 3], "mapped": [10, 20, 30], "mod": 1,
                   "year": 2024, "in": True, "sub": 5, "div": 3.5, "elem": 3,
                   "switch": "two"}


def test_now_in_aggregate_is_one_value(db: Db) -> None:
    before = datetime.datetime.now(datetime.UTC).replace(tzinfo=None) - datetime.timedelta(
        seconds=1)
    db.x.insert_many([{"_id": i, "due": before - datetime.timedelta(hours=1 - 2 * i)}
                      for i in range(2)])
    out = run(db.x, [
        {"$match": {"$expr": {"$lt": ["$due", "$$NOW"]}}},
        {"$addFields": {"now": "$$NOW"}},
    ])
    assert [d["_id"] for d in out] == [0]
    after = datetime.datetime.now(datetime.UTC).replace(tzinfo=None) + datetime.timedelta(
        seconds=1)
    assert before <= out[0]["now"] <= after


def test_match_with_expr_as_first_stage(db: Db) -> None:
    db.x.insert_many([{"_id": i, "a": i, "b": 3} for i in range(6)])
    out = run(db.x, [{"$match": {"$expr": {"$gt": ["$a", "$b"]}}}, {"$sort": {"_id": 1}}])
    assert [d["_id"] for d in out] == [4, 5]


def test_out_replaces_target_collection(db: Db, orders: Coll) -> None:
    db.summary.insert_one({"_id": "stale"})
    result = run(orders, [
        {"$group": {"_id": "$customer", "qty": {"$sum": "$qty"}}},
        {"$out": "summary"},
    ])
    assert result == []
    assert sorted((d["_id"], d["qty"]) for d in db.summary.find()) == [
        ("ann", 3), ("bob", 4), ("cid", 5)]


def test_merge_into_existing_collection(db: Db, orders: Coll) -> None:
    db.totals.insert_many([{"_id": "ann", "qty": 100, "note": "keep"},
                           {"_id": "zed", "qty": 1}])
    run(orders, [
        {"$group": {"_id": "$customer", "qty": {"$sum": "$qty"}}},
        {"$merge": {"into": "totals", "whenMatched": "merge", "whenNotMatched": "insert"}},
    ])
    assert sorted(db.totals.find(), key=lambda d: d["_id"]) == [
        {"_id": "ann", "qty": 3, "note": "keep"},
        {"_id": "bob", "qty": 4},
        {"_id": "cid", "qty": 5},
        {"_id": "zed", "qty": 1},
    ]


def test_merge_when_matched_options(db: Db, orders: Coll) -> None:
    db.t.insert_many([{"_id": "ann", "qty": 100, "note": "x"}])
    run(orders, [
        {"$group": {"_id": "$customer", "qty": {"$sum": "$qty"}}},
        {"$merge": {"into": "t", "whenMatched": "keepExisting", "whenNotMatched": "discard"}},
    ])
    assert list(db.t.find()) == [{"_id": "ann", "qty": 100, "note": "x"}]
    run(orders, [
        {"$group": {"_id": "$customer", "qty": {"$sum": "$qty"}}},
        {"$merge": {"into": "t", "whenMatched": "replace", "whenNotMatched": "discard"}},
    ])
    assert list(db.t.find()) == [{"_id": "ann", "qty": 3}]
    run(orders, [
        {"$group": {"_id": "$customer", "qty": {"$sum": "$qty"}}},
        {"$merge": {"into": "t", "whenNotMatched": "discard",
                    "whenMatched": [{"$set": {"qty": {"$add": ["$qty", "$$new.qty"]}}}]}},
    ])
    assert list(db.t.find()) == [{"_id": "ann", "qty": 6}]
    with pytest.raises(OperationFailure):
        run(orders, [
            {"$group": {"_id": "$customer", "qty": {"$sum": "$qty"}}},
            {"$merge": {"into": "t", "whenMatched": "fail", "whenNotMatched": "discard"}},
        ])


def test_merge_on_custom_field_needs_unique_index(db: Db, orders: Coll) -> None:
    db.by_item.create_index("item", unique=True)
    db.by_item.insert_one({"item": "apple", "n": 0, "extra": True})
    run(orders, [
        {"$group": {"_id": "$item", "n": {"$sum": 1}}},
        {"$project": {"_id": 0, "item": "$_id", "n": 1}},
        {"$merge": {"into": "by_item", "on": "item", "whenMatched": "merge"}},
    ])
    docs = {d["item"]: d for d in db.by_item.find({}, {"_id": 0})}
    assert docs["apple"] == {"item": "apple", "n": 2, "extra": True}
    assert docs["milk"] == {"item": "milk", "n": 1}
    assert len(docs) == 4


def test_unknown_stage_is_40324(orders: Coll) -> None:
    with pytest.raises(OperationFailure) as info:
        run(orders, [{"$frobnicate": {}}])
    assert info.value.code == 40324


def test_stage_with_two_fields_is_rejected(orders: Coll) -> None:
    with pytest.raises(OperationFailure) as info:
        run(orders, [{"$match": {}, "$limit": 1}])
    assert info.value.code == 40323


def test_aggregate_batches_with_get_more(db: Db) -> None:
    db.many.insert_many([{"_id": i} for i in range(23)])
    reply = db.command("aggregate", "many", pipeline=[{"$sort": {"_id": 1}}],
                       cursor={"batchSize": 10})
    cursor_id = reply["cursor"]["id"]
    seen = [d["_id"] for d in reply["cursor"]["firstBatch"]]
    assert len(seen) == 10 and cursor_id != 0
    while cursor_id:
        more = db.command("getMore", cursor_id, collection="many", batchSize=10)
        seen += [d["_id"] for d in more["cursor"]["nextBatch"]]
        cursor_id = more["cursor"]["id"]
    assert seen == list(range(23))
    assert [d["_id"] for d in db.many.aggregate([{"$sort": {"_id": -1}}], batchSize=4)] == \
        list(range(22, -1, -1))


def test_aggregate_on_missing_collection_is_empty(db: Db) -> None:
    assert run(db.nothing, [{"$match": {}}]) == []
    assert run(db.nothing, [{"$count": "n"}]) == []


def test_group_sum_keeps_numeric_types(db: Db) -> None:
    db.n.insert_many([{"_id": 1, "v": Int64(2**40)}, {"_id": 2, "v": 1}])
    [out] = run(db.n, [{"$group": {"_id": None, "s": {"$sum": "$v"}}}])
    assert out["s"] == 2**40 + 1 and isinstance(out["s"], Int64)


def test_sort_by_multiple_keys_and_types(db: Db) -> None:
    db.s.insert_many([{"_id": 1, "k": "b"}, {"_id": 2, "k": 1}, {"_id": 3},
                      {"_id": 4, "k": "a"}, {"_id": 5, "k": 0.5}])
    out = run(db.s, [{"$sort": {"k": 1, "_id": 1}}])
    assert [d["_id"] for d in out] == [3, 5, 2, 4, 1]
