"""The ``aggregate`` command through PyMongo: stages, expressions, ``$$NOW``, ``$out``/``$merge``.

Valid against a real MongoDB 7.0 replica set as well as the embedded server.
"""

from __future__ import annotations

import datetime
from typing import Any

import pytest
from bson import Decimal128, Int64, ObjectId
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


def test_merge_on_custom_field_without_unique_index_fails(db: Db, orders: Coll) -> None:
    db.no_index.insert_one({"item": "apple"})
    with pytest.raises(OperationFailure) as info:
        run(orders, [{"$project": {"_id": 0, "item": 1}},
                     {"$merge": {"into": "no_index", "on": "item"}}])
    assert info.value.code == 51183


def test_sort_by_count(orders: Coll) -> None:
    out = run(orders, [{"$unwind": "$tags"}, {"$sortByCount": "$tags"}])
    assert out[0] == {"_id": "fruit", "count": 2}
    assert sorted(d["_id"] for d in out[1:]) == ["dairy", "red"]


def test_lookup_into_dotted_field(db: Db, orders: Coll) -> None:
    db.customers.insert_one({"_id": "ann", "city": "Oslo"})
    out = run(orders, [{"$match": {"_id": 1}},
                       {"$lookup": {"from": "customers", "localField": "customer",
                                    "foreignField": "_id", "as": "info.customer"}},
                       {"$project": {"info": 1}}])
    assert out == [{"_id": 1, "info": {"customer": [{"_id": "ann", "city": "Oslo"}]}}]


def test_limit_and_skip_arguments_are_checked(orders: Coll) -> None:
    with pytest.raises(OperationFailure) as info:
        run(orders, [{"$limit": 0}])
    assert info.value.code == 15958
    with pytest.raises(OperationFailure) as info:
        run(orders, [{"$skip": -1}])
    assert info.value.code == 15956


def test_let_variables_in_aggregate_and_find(orders: Coll) -> None:
    out = run(orders, [{"$match": {"$expr": {"$eq": ["$customer", "$$who"]}}},
                       {"$project": {"_id": 1, "tag": "$$label"}}, {"$sort": {"_id": 1}}],
              let={"who": "bob", "label": {"$concat": ["for ", "bob"]}})
    assert out == [{"_id": 2, "tag": "for bob"}, {"_id": 5, "tag": "for bob"}]
    found = list(orders.find({"$expr": {"$gt": ["$qty", "$$min"]}}, let={"min": 2},
                             sort=[("_id", 1)]))
    assert [d["_id"] for d in found] == [4, 5]


def test_unknown_aggregate_option_is_rejected(db: Db, orders: Coll) -> None:
    with pytest.raises(OperationFailure) as info:
        db.command("aggregate", "orders", pipeline=[], cursor={}, notAnOption=1)
    assert info.value.code == 40415


def test_unknown_stage_is_40324(orders: Coll) -> None:
    with pytest.raises(OperationFailure) as info:
        run(orders, [{"$frobnicate": {}}])
    assert info.value.code == 40324


def test_unknown_stage_in_sub_pipeline_is_40324(orders: Coll) -> None:
    with pytest.raises(OperationFailure) as info:
        run(orders, [{"$facet": {"x": [{"$frobnicate": {}}]}}])
    assert info.value.code == 40324


def test_unknown_expression_operator_is_168(orders: Coll) -> None:
    with pytest.raises(OperationFailure) as info:
        run(orders, [{"$project": {"x": {"$frobnicate": 1}}}])
    assert info.value.code == 168


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


_NUMERIC_TYPES: list[tuple[str, Any, str, Any]] = [
    ("add-long", {"$add": ["$l", 1]}, "long", 6),
    ("subtract-long", {"$subtract": ["$l", 1]}, "long", 4),
    ("multiply-long", {"$multiply": ["$l", 2]}, "long", 10),
    ("add-int-overflow", {"$add": ["$big", 1]}, "long", 2**31),
    ("multiply-int", {"$multiply": ["$i", 3]}, "int", 15),
    ("add-decimal", {"$add": ["$d", 1]}, "decimal", Decimal128("2.5")),
    ("multiply-decimal", {"$multiply": ["$d", 2]}, "decimal", Decimal128("3.0")),
    ("add-int-double", {"$add": ["$i", "$f"]}, "double", 6.5),
    ("divide-ints", {"$divide": ["$i", 1]}, "double", 5.0),
    ("mod-long", {"$mod": ["$l", 2]}, "long", 1),
    ("abs-long", {"$abs": {"$subtract": [0, "$l"]}}, "long", 5),
    ("abs-decimal", {"$abs": "$d"}, "decimal", Decimal128("1.5")),
    ("floor-decimal", {"$floor": "$d"}, "decimal", Decimal128("1")),
    ("pow-ints", {"$pow": ["$i", 2]}, "int", 25),
    ("sum-long", {"$sum": ["$l", 1]}, "long", 6),
    ("round-long", {"$round": ["$l", 0]}, "long", 5),
    ("trunc-long", {"$trunc": "$l"}, "long", 5),
    ("add-null", {"$add": ["$i", None]}, "null", None),
]


@pytest.mark.parametrize(("expression", "type_name", "value"),
                         [(e, t, v) for _, e, t, v in _NUMERIC_TYPES],
                         ids=[name for name, _, _, _ in _NUMERIC_TYPES])
def test_arithmetic_keeps_bson_numeric_types(db: Db, expression: Any, type_name: str,
                                             value: Any) -> None:
    db.n.insert_one({"_id": 1, "l": Int64(5), "i": 5, "d": Decimal128("1.5"), "f": 1.5,
                     "big": 2**31 - 1})
    [out] = run(db.n, [{"$project": {"_id": 0, "t": {"$type": expression}, "v": expression}}])
    assert out == {"t": type_name, "v": value}


def test_pipeline_update_keeps_long_counter(db: Db) -> None:
    db.n.insert_one({"_id": 1, "count": Int64(41)})
    db.n.update_one({"_id": 1}, [{"$set": {"count": {"$add": ["$count", 1]}}}])
    [out] = run(db.n, [{"$project": {"t": {"$type": "$count"}, "count": 1}}])
    assert out == {"_id": 1, "count": 42, "t": "long"}


def test_sort_by_multiple_keys_and_types(db: Db) -> None:
    db.s.insert_many([{"_id": 1, "k": "b"}, {"_id": 2, "k": 1}, {"_id": 3},
                      {"_id": 4, "k": "a"}, {"_id": 5, "k": 0.5}])
    out = run(db.s, [{"$sort": {"k": 1, "_id": 1}}])
    assert [d["_id"] for d in out] == [3, 5, 2, 4, 1]


# -- every expression operator the trigger-filter generator accepts ---------------------------

_D = datetime.datetime(2024, 3, 5, 6, 7, 8, 9000)
_EXPRESSION_DOC = {"_id": 1, "a": 7, "b": 2, "neg": -3.7, "s": "  Hello World  ",
                   "arr": [3, 1, 2], "d": _D, "o": {"x": 1, "y": 2}, "t": "a,b,c"}
_EXPRESSIONS: list[tuple[str, Any, Any]] = [
    ("add", {"$add": ["$a", "$b", 1]}, 10),
    ("add-date", {"$add": ["$d", 1000]}, _D + datetime.timedelta(seconds=1)),
    ("subtract", {"$subtract": ["$a", "$b"]}, 5),
    ("subtract-dates", {"$subtract": ["$d", {"$literal": datetime.datetime(2024, 3, 5)}]},
     22_028_009),
    ("multiply", {"$multiply": ["$a", "$b"]}, 14),
    ("divide", {"$divide": ["$a", "$b"]}, 3.5),
    ("mod", {"$mod": ["$a", "$b"]}, 1),
    ("abs", {"$abs": "$neg"}, 3.7),
    ("ceil", {"$ceil": "$neg"}, -3.0),
    ("floor", {"$floor": "$neg"}, -4.0),
    ("round", {"$round": [3.14159, 2]}, 3.14),
    ("round-half-even", {"$round": [2.5, 0]}, 2.0),
    ("trunc", {"$trunc": ["$neg", 0]}, -3.0),
    ("pow", {"$pow": ["$b", 10]}, 1024),
    ("sqrt", {"$sqrt": 16}, 4.0),
    ("max-array", {"$max": "$arr"}, 3),
    ("max-args", {"$max": [1, "$a"]}, 7),
    ("min-array", {"$min": "$arr"}, 1),
    ("sum-array", {"$sum": "$arr"}, 6),
    ("sum-args", {"$sum": ["$a", "$b"]}, 9),
    ("avg", {"$avg": "$arr"}, 2.0),
    ("eq-numbers", {"$eq": ["$a", 7.0]}, True),
    ("eq-bool-number", {"$eq": [True, 1]}, False),
    ("ne", {"$ne": ["$a", "$b"]}, True),
    ("gt-across-types", {"$gt": ["$s", 5]}, True),
    ("gte", {"$gte": ["$a", 7]}, True),
    ("lt-null", {"$lt": [None, 0]}, True),
    ("lte", {"$lte": ["$b", 1]}, False),
    ("cmp", {"$cmp": ["$a", "$b"]}, 1),
    ("cmp-equal", {"$cmp": [1, 1.0]}, 0),
    ("and", {"$and": [True, "$a"]}, True),
    ("or", {"$or": [False, 0]}, False),
    ("not", {"$not": [0]}, True),
    ("cond", {"$cond": {"if": {"$gt": ["$a", 5]}, "then": "big", "else": "small"}}, "big"),
    ("ifNull", {"$ifNull": ["$missing", "dflt"]}, "dflt"),
    ("switch", {"$switch": {"branches": [{"case": {"$lt": ["$a", 0]}, "then": "neg"}],
                            "default": "pos"}}, "pos"),
    ("concat", {"$concat": ["a", "b"]}, "ab"),
    ("concat-null", {"$concat": ["a", None]}, None),
    ("toLower", {"$toLower": "$s"}, "  hello world  "),
    ("toUpper", {"$toUpper": "x"}, "X"),
    ("substr", {"$substr": ["Hello", 1, 3]}, "ell"),
    ("split", {"$split": ["$t", ","]}, ["a", "b", "c"]),
    ("trim", {"$trim": {"input": "$s"}}, "Hello World"),
    ("ltrim", {"$ltrim": {"input": "$s"}}, "Hello World  "),
    ("rtrim", {"$rtrim": {"input": "$s"}}, "  Hello World"),
    ("regexMatch", {"$regexMatch": {"input": "$s", "regex": "world", "options": "i"}}, True),
    ("strcasecmp", {"$strcasecmp": ["abc", "ABD"]}, -1),
    ("size", {"$size": "$arr"}, 3),
    ("in", {"$in": [2, "$arr"]}, True),
    ("arrayElemAt", {"$arrayElemAt": ["$arr", 1]}, 1),
    ("filter", {"$filter": {"input": "$arr", "as": "v", "cond": {"$gte": ["$$v", 2]}}}, [3, 2]),
    ("map", {"$map": {"input": "$arr", "in": {"$multiply": ["$$this", 2]}}}, [6, 2, 4]),
    ("reduce", {"$reduce": {"input": "$arr", "initialValue": 0,
                            "in": {"$add": ["$$value", "$$this"]}}}, 6),
    ("slice", {"$slice": ["$arr", 2]}, [3, 1]),
    ("slice-negative", {"$slice": ["$arr", -1]}, [2]),
    ("slice-position", {"$slice": ["$arr", 1, 1]}, [1]),
    ("isArray", {"$isArray": "$arr"}, True),
    ("concatArrays", {"$concatArrays": ["$arr", [9]]}, [3, 1, 2, 9]),
    ("anyElementTrue", {"$anyElementTrue": [[0, 1]]}, True),
    ("allElementsTrue", {"$allElementsTrue": [[1, 0]]}, False),
    ("first", {"$first": "$arr"}, 3),
    ("last", {"$last": "$arr"}, 2),
    ("indexOfArray", {"$indexOfArray": ["$arr", 2]}, 2),
    ("setUnion-size", {"$size": {"$setUnion": [[1, 2], [2, 3]]}}, 3),
    ("setIntersection", {"$setIntersection": [[1, 2], [2, 3]]}, [2]),
    ("setDifference", {"$setDifference": [[1, 2], [2, 3]]}, [1]),
    ("setEquals", {"$setEquals": [[1, 2], [2, 1, 1]]}, True),
    ("setIsSubset", {"$setIsSubset": [[1], [1, 2]]}, True),
    ("objectToArray", {"$objectToArray": "$o"}, [{"k": "x", "v": 1}, {"k": "y", "v": 2}]),
    ("arrayToObject", {"$arrayToObject": {"$literal": [["a", 1], ["b", 2]]}}, {"a": 1, "b": 2}),
    ("mergeObjects", {"$mergeObjects": ["$o", {"z": 3}]}, {"x": 1, "y": 2, "z": 3}),
    ("type", {"$type": "$a"}, "int"),
    ("type-missing", {"$type": "$nope"}, "missing"),
    ("toString", {"$toString": "$a"}, "7"),
    ("toInt", {"$toInt": "12"}, 12),
    ("toLong-type", {"$type": {"$toLong": "$a"}}, "long"),
    ("toDouble", {"$toDouble": "$a"}, 7.0),
    ("toDecimal-type", {"$type": {"$toDecimal": "$a"}}, "decimal"),
    ("toDate", {"$toDate": 0}, datetime.datetime(1970, 1, 1)),
    ("toObjectId", {"$toObjectId": "650000000000000000000000"},
     ObjectId("650000000000000000000000")),
    ("convert-onError", {"$convert": {"input": "abc", "to": "int", "onError": -1}}, -1),
    ("literal", {"$literal": "$a"}, "$a"),
    ("isNumber", {"$isNumber": "$a"}, True),
    ("isNumber-string", {"$isNumber": "$s"}, False),
    ("year", {"$year": "$d"}, 2024),
    ("month", {"$month": "$d"}, 3),
    ("dayOfMonth", {"$dayOfMonth": "$d"}, 5),
    ("dayOfWeek", {"$dayOfWeek": "$d"}, 3),
    ("dayOfYear", {"$dayOfYear": "$d"}, 65),
    ("hour", {"$hour": "$d"}, 6),
    ("minute", {"$minute": "$d"}, 7),
    ("second", {"$second": "$d"}, 8),
    ("millisecond", {"$millisecond": "$d"}, 9),
    ("week", {"$week": "$d"}, 9),
    ("dateToString", {"$dateToString": {"format": "%Y-%m-%d %H:%M:%S.%L", "date": "$d"}},
     "2024-03-05 06:07:08.009"),
    ("dateFromString", {"$dateFromString": {"dateString": "2024-03-05T06:07:08.009Z"}}, _D),
    ("dateAdd", {"$dateAdd": {"startDate": "$d", "unit": "day", "amount": 2}},
     _D + datetime.timedelta(days=2)),
    ("dateSubtract", {"$dateSubtract": {"startDate": "$d", "unit": "hour", "amount": 1}},
     _D - datetime.timedelta(hours=1)),
    ("dateDiff", {"$dateDiff": {"startDate": {"$literal": datetime.datetime(2024, 1, 1)},
                                "endDate": "$d", "unit": "day"}}, 64),
    ("dateTrunc", {"$dateTrunc": {"date": "$d", "unit": "day"}}, datetime.datetime(2024, 3, 5)),
]


@pytest.mark.parametrize(("expression", "expected"), [(e, r) for _, e, r in _EXPRESSIONS],
                         ids=[name for name, _, _ in _EXPRESSIONS])
def test_expression_operator(db: Db, expression: Any, expected: Any) -> None:
    db.x.insert_one(_EXPRESSION_DOC)
    [out] = run(db.x, [{"$project": {"_id": 0, "v": expression}}])
    assert out == {"v": expected}
    # The same expression inside $expr of a find filter gives the same value.
    assert db.x.count_documents({"$expr": {"$eq": [expression, {"$literal": expected}]}}) == 1
