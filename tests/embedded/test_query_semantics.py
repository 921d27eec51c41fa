"""MongoDB query and update semantics through PyMongo: array traversal, type bracketing, dotted
paths, BSON numeric types, per-document atomicity and update error codes.

Valid against a real MongoDB 7.0 replica set as well as the embedded server.
"""

from __future__ import annotations

import datetime
import re
from typing import Any

import pytest
from bson import Decimal128, Int64, ObjectId, Regex
from bson.raw_bson import RawBSONDocument
from pymongo import ASCENDING, DESCENDING
from pymongo.collection import Collection
from pymongo.database import Database
from pymongo.errors import OperationFailure, WriteError

Db = Database[dict[str, Any]]


def ids(cursor: Any) -> list[Any]:
    return sorted(d["_id"] for d in cursor)


def _bson_type(coll: Collection[dict[str, Any]], doc_id: Any, field: str) -> str:
    """The BSON type alias MongoDB stores for a field (``int``, ``long``, ``double``, ...)."""
    found = coll.aggregate([{"$match": {"_id": doc_id}},
                            {"$project": {"t": {"$type": f"${field}"}}}])
    return str(next(found)["t"])


@pytest.fixture
def mixed(db: Db) -> Collection[dict[str, Any]]:
    coll = db.mixed
    coll.insert_many([
        {"_id": 1, "v": 5},
        {"_id": 2, "v": 5.5},
        {"_id": 3, "v": Int64(7)},
        {"_id": 4, "v": Decimal128("8.25")},
        {"_id": 5, "v": "9"},
        {"_id": 6, "v": "abc"},
        {"_id": 7, "v": None},
        {"_id": 8},
        {"_id": 9, "v": [1, 10]},
        {"_id": 10, "v": True},
        {"_id": 11, "v": datetime.datetime(2024, 1, 1)},
        {"_id": 12, "v": {"x": 1}},
        {"_id": 13, "v": ObjectId("650000000000000000000000")},
    ])
    return coll


# -- type bracketing ------------------------------------------------------------------------


def test_numeric_comparison_does_not_match_other_types(mixed: Collection[dict[str, Any]]) -> None:
    assert ids(mixed.find({"v": {"$gt": 4}})) == [1, 2, 3, 4, 9]
    assert ids(mixed.find({"v": {"$lt": 6}})) == [1, 2, 9]
    assert ids(mixed.find({"v": {"$gte": 0, "$lte": 100}})) == [1, 2, 3, 4, 9]


def test_string_comparison_does_not_match_numbers(mixed: Collection[dict[str, Any]]) -> None:
    assert ids(mixed.find({"v": {"$gt": ""}})) == [5, 6]
    assert ids(mixed.find({"v": {"$lt": "b"}})) == [5, 6]


def test_date_and_bool_brackets(mixed: Collection[dict[str, Any]]) -> None:
    assert ids(mixed.find({"v": {"$gt": datetime.datetime(2000, 1, 1)}})) == [11]
    assert ids(mixed.find({"v": {"$gte": False}})) == [10]


def test_numbers_equal_across_types(mixed: Collection[dict[str, Any]]) -> None:
    assert ids(mixed.find({"v": 5.0})) == [1]
    assert ids(mixed.find({"v": Int64(5)})) == [1]
    assert ids(mixed.find({"v": Decimal128("5")})) == [1]
    assert ids(mixed.find({"v": 7})) == [3]
    assert ids(mixed.find({"v": Decimal128("8.25")})) == [4]
    assert ids(mixed.find({"v": 8.25})) == [4]
    assert ids(mixed.find({"v": {"$in": [5, 7.0]}})) == [1, 3]


def test_null_matches_missing_and_null(mixed: Collection[dict[str, Any]]) -> None:
    assert ids(mixed.find({"v": None})) == [7, 8]
    assert ids(mixed.find({"v": {"$exists": False}})) == [8]
    assert ids(mixed.find({"v": {"$ne": None}})) == [1, 2, 3, 4, 5, 6, 9, 10, 11, 12, 13]


def test_type_operator(mixed: Collection[dict[str, Any]]) -> None:
    assert ids(mixed.find({"v": {"$type": "string"}})) == [5, 6]
    assert ids(mixed.find({"v": {"$type": "number"}})) == [1, 2, 3, 4, 9]
    assert ids(mixed.find({"v": {"$type": "long"}})) == [3]
    assert ids(mixed.find({"v": {"$type": "array"}})) == [9]
    assert ids(mixed.find({"v": {"$type": ["objectId", "bool"]}})) == [10, 13]
    assert ids(mixed.find({"v": {"$type": 16}})) == [1, 9]  # int
    assert ids(mixed.find({"v": {"$type": "decimal"}})) == [4]
    assert ids(mixed.find({"v": {"$type": "null"}})) == [7]
    assert ids(mixed.find({"v": {"$type": "date"}})) == [11]


def test_sort_orders_across_type_brackets(mixed: Collection[dict[str, Any]]) -> None:
    ordered = [d["_id"] for d in mixed.find({"_id": {"$ne": 9}}, sort=[("v", ASCENDING),
                                                                       ("_id", ASCENDING)])]
    # null/missing < numbers < strings < objects < ObjectId < bool < date
    assert ordered == [7, 8, 1, 2, 3, 4, 5, 6, 12, 13, 10, 11]
    descending = [d["_id"] for d in mixed.find({"_id": {"$ne": 9}},
                                               sort=[("v", DESCENDING), ("_id", ASCENDING)])]
    assert descending == [11, 10, 13, 12, 6, 5, 4, 3, 2, 1, 7, 8]


def test_sort_by_array_uses_min_ascending_max_descending(db: Db) -> None:
    db.s.insert_many([{"_id": 1, "a": [3, 9]}, {"_id": 2, "a": 5}, {"_id": 3, "a": [1, 4]}])
    assert [d["_id"] for d in db.s.find(sort=[("a", 1)])] == [3, 1, 2]
    assert [d["_id"] for d in db.s.find(sort=[("a", -1)])] == [1, 2, 3]


# -- arrays and dotted paths ---------------------------------------------------------------


def test_array_traversal(db: Db) -> None:
    db.a.insert_many([
        {"_id": 1, "tags": ["red", "blue"], "nums": [1, 5, 9]},
        {"_id": 2, "tags": ["green"], "nums": [4]},
        {"_id": 3, "tags": "red", "nums": []},
        {"_id": 4, "tags": [["red"]], "nums": 2},
    ])
    assert ids(db.a.find({"tags": "red"})) == [1, 3]
    assert ids(db.a.find({"tags": ["red"]})) == [4]
    assert ids(db.a.find({"tags": ["red", "blue"]})) == [1]
    assert ids(db.a.find({"tags": ["blue", "red"]})) == []
    # Each condition may be met by a different element ...
    assert ids(db.a.find({"nums": {"$gt": 4, "$lt": 6}})) == [1]
    assert ids(db.a.find({"nums": {"$gt": 6, "$lt": 2}})) == [1]  # 9 > 6 and 1 < 2
    assert ids(db.a.find({"nums": {"$gt": 3, "$lt": 5}})) == [1, 2]
    # ... while $elemMatch needs one element meeting all.
    assert ids(db.a.find({"nums": {"$elemMatch": {"$gt": 3, "$lt": 5}}})) == [2]
    assert ids(db.a.find({"nums": {"$size": 0}})) == [3]
    assert ids(db.a.find({"nums": {"$all": [1, 9]}})) == [1]
    assert ids(db.a.find({"tags": {"$nin": ["red"]}})) == [2, 4]
    assert ids(db.a.find({"tags": {"$ne": "red"}})) == [2, 4]
    assert ids(db.a.find({"nums.1": 5})) == [1]
    assert ids(db.a.find({"tags": {"$eq": ["red"]}})) == [4]
    assert ids(db.a.find({"tags": {"$eq": "red"}})) == [1, 3]
    assert ids(db.a.find({"tags": {"$ne": ["red"]}})) == [1, 2, 3]
    assert ids(db.a.find({"tags": {"$in": [["red"], "green"]}})) == [2, 4]


def test_dotted_paths_through_embedded_documents_and_arrays(db: Db) -> None:
    db.d.insert_many([
        {"_id": 1, "a": {"b": {"c": 1}}},
        {"_id": 2, "a": [{"b": {"c": 2}}, {"b": {"c": 3}}]},
        {"_id": 3, "a": [{"b": [{"c": 4}, {"c": 1}]}]},
        {"_id": 4, "a": {"b": 5}},
        {"_id": 5, "a": [{"x": 1, "y": 2}, {"x": 2, "y": 1}]},
    ])
    assert ids(db.d.find({"a.b.c": 1})) == [1, 3]
    assert ids(db.d.find({"a.b.c": {"$gte": 3}})) == [2, 3]
    assert ids(db.d.find({"a.b": {"c": 2}})) == [2]
    assert ids(db.d.find({"a.b.c": {"$exists": True}})) == [1, 2, 3]
    assert ids(db.d.find({"a.0.b.c": 2})) == [2]
    assert ids(db.d.find({"a.x": 1, "a.y": 1})) == [5]
    assert ids(db.d.find({"a": {"$elemMatch": {"x": 1, "y": 1}}})) == []
    assert ids(db.d.find({"a": {"$elemMatch": {"x": 1, "y": 2}}})) == [5]


def test_logical_operators_regex_and_mod(db: Db) -> None:
    db.l.insert_many([{"_id": i, "n": i, "s": f"item-{i}"} for i in range(1, 11)])
    assert ids(db.l.find({"$or": [{"n": 1}, {"n": {"$gt": 9}}]})) == [1, 10]
    assert ids(db.l.find({"$and": [{"n": {"$gt": 2}}, {"n": {"$lt": 5}}]})) == [3, 4]
    assert ids(db.l.find({"$nor": [{"n": {"$lt": 9}}]})) == [9, 10]
    assert ids(db.l.find({"n": {"$not": {"$lt": 9}}})) == [9, 10]
    assert ids(db.l.find({"s": {"$regex": "^item-1"}})) == [1, 10]
    assert ids(db.l.find({"s": re.compile(r"-[23]$")})) == [2, 3]
    assert ids(db.l.find({"s": Regex("ITEM-5", "i")})) == [5]
    assert ids(db.l.find({"n": {"$mod": [4, 1]}})) == [1, 5, 9]
    assert ids(db.l.find({"n": {"$mod": [3, 0]}})) == [3, 6, 9]


def test_mod_operator_rejects_bad_arguments(db: Db) -> None:
    db.l.insert_one({"n": 1})
    with pytest.raises(OperationFailure) as info:
        list(db.l.find({"n": {"$mod": [0, 1]}}))
    assert info.value.code == 2
    with pytest.raises(OperationFailure):
        list(db.l.find({"n": {"$mod": [4]}}))


def test_unknown_query_operators_are_bad_value(db: Db) -> None:
    db.l.insert_one({"n": 1})
    with pytest.raises(OperationFailure) as info:
        list(db.l.find({"n": {"$frobnicate": 1}}))
    assert info.value.code == 2
    with pytest.raises(OperationFailure) as info:
        list(db.l.find({"$frobnicate": [{"n": 1}]}))
    assert info.value.code == 2


def test_expr_with_literal_and_dollar_strings(db: Db) -> None:
    db.e.insert_many([{"_id": 1, "price": "$5"}, {"_id": 2, "price": 5}])
    assert ids(db.e.find({"$expr": {"$eq": ["$price", {"$literal": "$5"}]}})) == [1]
    assert ids(db.e.find({"price": "$5"})) == [1]


def test_expr_combined_with_regular_filter(db: Db) -> None:
    db.e.insert_many([{"_id": i, "a": i, "b": 10 - i, "k": i % 2} for i in range(10)])
    found = ids(db.e.find({"k": 0, "$expr": {"$gt": ["$a", "$b"]}}))
    assert found == [6, 8]


# -- update semantics ----------------------------------------------------------------------


def test_failed_update_leaves_document_unchanged(db: Db) -> None:
    db.u.insert_one({"_id": 1, "s": "x", "keep": True})
    with pytest.raises(WriteError) as info:
        db.u.update_one({"_id": 1}, {"$set": {"a": 1}, "$inc": {"s": 1}})
    assert info.value.code == 14
    assert db.u.find_one({"_id": 1}) == {"_id": 1, "s": "x", "keep": True}


def test_failed_multi_update_keeps_failing_document_whole(db: Db) -> None:
    db.u.insert_many([{"_id": 1, "n": 1}, {"_id": 2, "n": "bad"}, {"_id": 3, "n": 3}])
    with pytest.raises(WriteError) as info:
        db.u.update_many({}, {"$set": {"touched": True}, "$inc": {"n": 1}})
    assert info.value.code == 14
    bad = db.u.find_one({"_id": 2})
    assert bad == {"_id": 2, "n": "bad"}


def test_int64_stays_int64_after_inc(db: Db) -> None:
    db.u.insert_one({"_id": 1, "n": Int64(5), "i": 5, "f": 5.0})
    db.u.update_one({"_id": 1}, {"$inc": {"n": 1, "i": 1, "f": 1}})
    doc = db.u.find_one({"_id": 1})
    assert doc is not None
    assert doc["n"] == 6 and isinstance(doc["n"], Int64)
    assert _bson_type(db.u, 1, "n") == "long"
    assert _bson_type(db.u, 1, "i") == "int"
    assert _bson_type(db.u, 1, "f") == "double"


def test_int32_overflow_becomes_int64(db: Db) -> None:
    db.u.insert_one({"_id": 1, "n": 2**31 - 1, "m": 2**30})
    db.u.update_one({"_id": 1}, {"$inc": {"n": 1}, "$mul": {"m": 4}})
    doc = db.u.find_one({"_id": 1})
    assert doc is not None
    assert doc["n"] == 2**31 and isinstance(doc["n"], Int64)
    assert doc["m"] == 2**32 and isinstance(doc["m"], Int64)


def test_inc_mixing_int_and_double_gives_double(db: Db) -> None:
    db.u.insert_one({"_id": 1, "n": 1})
    db.u.update_one({"_id": 1}, {"$inc": {"n": 0.5}})
    assert _bson_type(db.u, 1, "n") == "double"
    assert db.u.find_one({"_id": 1}) == {"_id": 1, "n": 1.5}


def test_decimal128_arithmetic(db: Db) -> None:
    db.u.insert_one({"_id": 1, "d": Decimal128("0.1"), "i": 2})
    db.u.update_one({"_id": 1}, {"$inc": {"d": Decimal128("0.2"), "i": Decimal128("0.5")}})
    doc = db.u.find_one({"_id": 1})
    assert doc is not None
    assert doc["d"] == Decimal128("0.3")
    assert doc["i"] == Decimal128("2.5")
    db.u.update_one({"_id": 1}, {"$mul": {"d": 2}})
    doc = db.u.find_one({"_id": 1})
    assert doc is not None and doc["d"] == Decimal128("0.6")


def test_inc_and_mul_on_missing_fields(db: Db) -> None:
    db.u.insert_one({"_id": 1})
    db.u.update_one({"_id": 1}, {"$inc": {"a": Int64(3), "x.y": 2}, "$mul": {"b": 5, "c": 2.5}})
    doc = db.u.find_one({"_id": 1})
    assert doc == {"_id": 1, "a": 3, "x": {"y": 2}, "b": 0, "c": 0.0}
    assert isinstance(doc["a"], Int64)
    assert _bson_type(db.u, 1, "c") == "double"


def test_mul_multiplies(db: Db) -> None:
    db.u.insert_one({"_id": 1, "price": 10, "qty": Int64(3)})
    db.u.update_one({"_id": 1}, {"$mul": {"price": 1.5, "qty": 2}})
    doc = db.u.find_one({"_id": 1})
    assert doc == {"_id": 1, "price": 15.0, "qty": 6}
    assert doc is not None and isinstance(doc["qty"], Int64)


def test_inc_with_non_numeric_operand_fails(db: Db) -> None:
    db.u.insert_one({"_id": 1, "n": 1})
    with pytest.raises(WriteError) as info:
        db.u.update_one({"_id": 1}, {"$inc": {"n": "1"}})
    assert info.value.code == 14
    assert db.u.find_one({"_id": 1}) == {"_id": 1, "n": 1}


def test_conflicting_update_paths_code_40(db: Db) -> None:
    db.u.insert_one({"_id": 1, "a": {"b": 1}})
    with pytest.raises(WriteError) as info:
        db.u.update_one({"_id": 1}, {"$set": {"a": 1}, "$inc": {"a": 1}})
    assert info.value.code == 40
    with pytest.raises(WriteError) as info:
        db.u.update_one({"_id": 1}, {"$set": {"a.b": 2}, "$unset": {"a": ""}})
    assert info.value.code == 40
    assert db.u.find_one({"_id": 1}) == {"_id": 1, "a": {"b": 1}}


def test_modifying_id_code_66(db: Db) -> None:
    db.u.insert_one({"_id": 1, "a": 1})
    with pytest.raises(WriteError) as info:
        db.u.update_one({"_id": 1}, {"$set": {"_id": 2}})
    assert info.value.code == 66
    with pytest.raises(WriteError) as info:
        db.u.replace_one({"_id": 1}, {"_id": 3, "a": 2})
    assert info.value.code == 66
    with pytest.raises(WriteError) as info:
        db.u.update_one({"_id": 1}, [{"$set": {"_id": 4}}])
    assert info.value.code == 66
    # Setting _id to its current value is allowed.
    db.u.update_one({"_id": 1}, {"$set": {"_id": 1, "a": 5}})
    assert db.u.find_one({}) == {"_id": 1, "a": 5}


def test_array_update_operators(db: Db) -> None:
    db.u.insert_one({"_id": 1, "xs": [3, 1], "set": ["a"], "objs": [{"k": 1}, {"k": 5}]})
    db.u.update_one({"_id": 1}, {"$push": {"xs": {"$each": [7, 2], "$sort": 1, "$slice": 3}},
                                 "$addToSet": {"set": {"$each": ["a", "b"]}},
                                 "$pull": {"objs": {"k": {"$gt": 3}}}})
    assert db.u.find_one({"_id": 1}) == {"_id": 1, "xs": [1, 2, 3], "set": ["a", "b"],
                                         "objs": [{"k": 1}]}
    db.u.update_one({"_id": 1}, {"$pop": {"xs": -1}, "$pullAll": {"set": ["a"]}})
    assert db.u.find_one({"_id": 1}) == {"_id": 1, "xs": [2, 3], "set": ["b"],
                                         "objs": [{"k": 1}]}


def test_field_update_operators(db: Db) -> None:
    db.u.insert_one({"_id": 1, "lo": 5, "hi": 5, "old": "x", "gone": 1})
    db.u.update_one({"_id": 1}, {"$min": {"lo": 2}, "$max": {"hi": 9}, "$rename": {"old": "new"},
                                 "$unset": {"gone": ""}, "$currentDate": {"at": True}})
    doc = db.u.find_one({"_id": 1})
    assert doc is not None
    assert {k: v for k, v in doc.items() if k != "at"} == {"_id": 1, "lo": 2, "hi": 9,
                                                           "new": "x"}
    assert isinstance(doc["at"], datetime.datetime)


def test_array_operator_on_non_array_fails_whole(db: Db) -> None:
    db.u.insert_one({"_id": 1, "a": 5, "b": []})
    with pytest.raises(WriteError) as info:
        db.u.update_one({"_id": 1}, {"$push": {"b": 1, "a": 1}})
    assert info.value.code == 2
    with pytest.raises(WriteError) as info:
        db.u.update_one({"_id": 1}, {"$addToSet": {"a": 1}})
    assert info.value.code == 2
    assert db.u.find_one({"_id": 1}) == {"_id": 1, "a": 5, "b": []}


def test_rename_rules(db: Db) -> None:
    db.u.insert_one({"_id": 1, "a": 1})
    with pytest.raises(WriteError) as info:
        db.u.update_one({"_id": 1}, {"$rename": {"a": "a"}})
    assert info.value.code == 2
    db.u.update_one({"_id": 1}, {"$rename": {"a": "x.y", "missing": "z"}})
    assert db.u.find_one({"_id": 1}) == {"_id": 1, "x": {"y": 1}}


def test_array_operators_through_arrays_and_positional_paths(db: Db) -> None:
    db.u.insert_one({"_id": 1, "rows": [{"k": 1, "tags": ["a", "b"]}, {"k": 2, "tags": ["b"]}]})
    db.u.update_one({"_id": 1}, {"$addToSet": {"rows.$[].tags": "c"}})
    db.u.update_one({"_id": 1, "rows.k": 2}, {"$pull": {"rows.$.tags": "b"}})
    db.u.update_one({"_id": 1}, {"$pullAll": {"rows.0.tags": ["a", "c"]}})
    assert db.u.find_one({"_id": 1}) == {"_id": 1, "rows": [{"k": 1, "tags": ["b"]},
                                                            {"k": 2, "tags": ["c"]}]}
    db.u.update_one({"_id": 1}, {"$pull": {"rows": {"k": {"$gte": 2}}}})
    assert db.u.find_one({"_id": 1}) == {"_id": 1, "rows": [{"k": 1, "tags": ["b"]}]}


def test_positional_update_without_a_match_fails(db: Db) -> None:
    db.u.insert_one({"_id": 1, "xs": [1, 2]})
    with pytest.raises(WriteError) as info:
        db.u.update_one({"_id": 1}, {"$set": {"xs.$": 5}})
    assert info.value.code == 2
    db.u.update_one({"_id": 1, "xs": 2}, {"$set": {"xs.$": 5}})
    assert db.u.find_one({"_id": 1}) == {"_id": 1, "xs": [1, 5]}


def test_server_generated_dates_can_be_queried_back(db: Db) -> None:
    db.u.insert_many([{"_id": 1}, {"_id": 2}])
    db.u.update_one({"_id": 1}, {"$currentDate": {"at": True}})
    db.u.update_one({"_id": 2}, [{"$set": {"at": "$$NOW"}}])
    for doc_id in (1, 2):
        doc = db.u.find_one({"_id": doc_id})
        assert doc is not None and isinstance(doc["at"], datetime.datetime)
        assert db.u.count_documents({"_id": doc_id, "at": doc["at"]}) == 1


def test_set_creates_nested_paths_and_array_elements(db: Db) -> None:
    db.u.insert_one({"_id": 1, "arr": [0]})
    db.u.update_one({"_id": 1}, {"$set": {"a.b.c": 1, "arr.2": 9}})
    assert db.u.find_one({"_id": 1}) == {"_id": 1, "a": {"b": {"c": 1}}, "arr": [0, None, 9]}


def test_set_through_scalar_fails_with_path_error(db: Db) -> None:
    db.u.insert_one({"_id": 1, "a": 5})
    with pytest.raises(WriteError) as info:
        db.u.update_one({"_id": 1}, {"$set": {"a.b": 1}})
    assert info.value.code == 28
    assert db.u.find_one({"_id": 1}) == {"_id": 1, "a": 5}


def test_empty_array_filters_identifier_must_be_used(db: Db) -> None:
    db.u.insert_one({"_id": 1, "xs": [1, 2, 3]})
    db.u.update_one({"_id": 1}, {"$set": {"xs.$[big]": 0}}, array_filters=[{"big": {"$gt": 1}}])
    assert db.u.find_one({"_id": 1}) == {"_id": 1, "xs": [1, 0, 0]}


def test_raw_bson_round_trip_keeps_types(db: Db) -> None:
    db.u.insert_one({"_id": 1, "i": 1, "l": Int64(1), "d": 1.0, "m": Decimal128("1")})
    raw = db.u.with_options(codec_options=db.u.codec_options.with_options(
        document_class=RawBSONDocument)).find_one({"_id": 1})
    assert raw is not None
    assert {k: type(raw[k]).__name__ for k in ("i", "l", "d", "m")} == {
        "i": "int", "l": "Int64", "d": "float", "m": "Decimal128"}
