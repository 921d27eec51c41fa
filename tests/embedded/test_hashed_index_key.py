"""``$toHashedIndexKey`` through PyMongo: MongoDB's hashed-index hash, in pipelines, in ``$expr``
filters and in change-stream ``$match`` stages (how partitioned planners split source documents).

Valid against a real MongoDB 7.0 replica set too: the expected values are MongoDB's.
"""

from __future__ import annotations

import datetime
import subprocess
import sys
from typing import Any

from bson import Decimal128, Int64, ObjectId
from change_stream_support import AWAIT_MS, next_change
from pymongo.database import Database

Db = Database[dict[str, Any]]

PARTITIONS = 3


def _hash(db: Db, value: Any) -> Any:
    inserted = db.values.insert_one({"v": value}).inserted_id
    docs = list(db.values.aggregate([
        {"$match": {"_id": inserted}},
        {"$project": {"_id": 0, "h": {"$toHashedIndexKey": "$v"}}},
    ]))
    return docs[0]["h"]


def _partition_expr(path: str) -> dict[str, Any]:
    return {"$mod": [{"$abs": {"$toHashedIndexKey": path}}, PARTITIONS]}


def test_known_hash_and_long_result(db: Db) -> None:
    value = _hash(db, "string to hash")
    assert value == 763543691661428748  # MongoDB's documented example
    assert isinstance(value, Int64)


def test_numbers_hash_alike_strings_do_not(db: Db) -> None:
    one = _hash(db, 1)
    assert _hash(db, 1.0) == one
    assert _hash(db, Int64(1)) == one
    assert _hash(db, Decimal128("1")) == one
    assert _hash(db, "1") != one
    assert _hash(db, True) != one
    assert _hash(db, 2) != one


def test_null_and_missing_hash_to_the_same_value(db: Db) -> None:
    db.values.insert_many([{"_id": 1, "v": None}, {"_id": 2}])
    docs = list(db.values.aggregate([
        {"$sort": {"_id": 1}},
        {"$project": {"_id": 0, "h": {"$toHashedIndexKey": "$v"}}},
    ]))
    assert docs[0]["h"] == docs[1]["h"] == 2338878944348059895


def test_documents_arrays_dates_and_object_ids_hash_by_value(db: Db) -> None:
    oid = ObjectId("65a0f0f0f0f0f0f0f0f0f0f0")
    when = datetime.datetime(2024, 1, 2, 3, 4, 5)
    for value in ({"a": 1, "b": "x"}, [1, "x"], oid, when):
        assert _hash(db, value) == _hash(db, value)
    assert _hash(db, {"a": 1, "b": 2}) != _hash(db, {"b": 2, "a": 1})  # field order matters
    assert _hash(db, {"a": 1}) == _hash(db, {"a": 1.0})
    assert _hash(db, [1, 2]) != _hash(db, [2, 1])
    assert _hash(db, oid) != _hash(db, ObjectId("65a0f0f0f0f0f0f0f0f0f0f1"))


def test_hash_is_the_same_in_another_process(db: Db) -> None:
    """Deterministic across processes (no per-process hash seed)."""
    here = _hash(db, "partition me")
    code = ("from runtime.embedded.expressions_hash import hashed_index_key as h;"
            "print(int(h('partition me')))")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                         text=True).stdout
    assert int(out) == here


def test_partitioned_find_with_expr_splits_documents_exactly(db: Db) -> None:
    db.items.insert_many([{"_id": i} for i in range(60)]
                         + [{"_id": f"s{i}"} for i in range(30)]
                         + [{"_id": ObjectId()} for _ in range(30)])
    seen: list[Any] = []
    for partition in range(PARTITIONS):
        found = [d["_id"] for d in db.items.find(
            {"$expr": {"$eq": [_partition_expr("$_id"), partition]}})]
        assert found, f"partition {partition} is empty"
        seen.extend(found)
    assert len(seen) == 120 and len({repr(v) for v in seen}) == 120


def test_change_stream_match_on_hash_partition(db: Db) -> None:
    db.create_collection("items")
    ids = list(range(30))
    expected = {i for i in ids if abs(int(_hash(db, i))) % PARTITIONS == 1}
    pipeline = [{"$match": {"operationType": "insert",
                            "$expr": {"$eq": [_partition_expr("$documentKey._id"), 1]}}}]
    with db.items.watch(pipeline, max_await_time_ms=AWAIT_MS) as stream:
        db.items.insert_many([{"_id": i} for i in ids])
        db.items.insert_one({"_id": "sentinel"})
        got: set[Any] = set()
        while len(got) < len(expected):
            got.add(next_change(stream)["documentKey"]["_id"])
    assert got == expected
