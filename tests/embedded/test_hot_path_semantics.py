"""Semantics of the shapes the runtime's hot path sends (pipeline updates, plain filters,
``$expr``, inclusion projections of change events), checked against MongoDB's answers.

The embedded server evaluates these shapes on a compiled fast path and falls back to its general
engine for anything else (arrays on a filtered path, unknown operators); both must give MongoDB's
results, so each case here also has a twin that takes the fallback. Valid against MongoDB 7.0.
"""

from __future__ import annotations

import datetime
from typing import Any

import pytest
from bson import Int64
from change_stream_support import AWAIT_MS, next_change
from pymongo.database import Database

Db = Database[dict[str, Any]]
NOW = datetime.datetime(2024, 5, 1, 12, 0, 0)


def _updated(db: Db, doc: dict[str, Any], pipeline: list[dict[str, Any]]) -> dict[str, Any]:
    db.h.insert_one(doc)
    db.h.update_one({"_id": doc["_id"]}, pipeline)
    found = db.h.find_one({"_id": doc["_id"]})
    assert found is not None
    return found


def test_pipeline_set_with_conditions_and_missing_values(db: Db) -> None:
    status = {"$ifNull": ["$status", "none"]}
    got = _updated(db, {"_id": 1, "attempts": 2}, [
        {"$set": {"_changed": {"$ne": [{"$ifNull": ["$hash", None]}, "h1"]}}},
        {"$set": {
            "status": {"$cond": ["$_changed", {"$cond": [{"$in": [status, ["running"]]},
                                                         "dirty", "pending"]}, "$status"]},
            "kind": {"$type": "$expiresAt"},
            "gone": "$$REMOVE",
            "copy": "$missing",
            "attempts": {"$cond": {"if": "$_changed", "then": 0, "else": "$attempts"}},
            "nested.x": {"$literal": "$notAPath"},
            "both": {"$and": ["$_changed", {"$not": [{"$eq": ["$attempts", 5]}]}]},
            "either": {"$or": [False, None, 0]},
        }},
        {"$unset": ["_changed"]},
    ])
    assert got == {"_id": 1, "attempts": 0, "status": "pending",
                   "kind": "missing", "nested": {"x": "$notAPath"}, "both": True,
                   "either": False}


def test_pipeline_arrays_numbers_and_dates(db: Db) -> None:
    got = _updated(db, {"_id": 2, "history": [1, 2, 3], "n": Int64(5), "at": NOW}, [
        {"$set": {
            "history": {"$slice": [{"$concatArrays": [{"$ifNull": ["$history", []]}, [4]]}, -3]},
            "none": {"$concatArrays": ["$missing", [1]]},
            "n": {"$add": ["$n", 1]},
            "later": {"$add": ["$at", 1500]},
            "low": {"$min": ["$n", 3, None]},
            "high": {"$max": ["$at", "$missing"]},
            "cmp": {"$lte": ["$missing", "$at"]},
            "abs": {"$abs": -4},
        }},
    ])
    assert got["history"] == [2, 3, 4]
    assert got["none"] is None
    assert got["n"] == 6 and isinstance(got["n"], Int64)
    assert got["later"] == NOW + datetime.timedelta(milliseconds=1500)
    assert got["low"] == 3 and got["high"] == NOW and got["cmp"] is True and got["abs"] == 4


def test_pipeline_set_through_an_array_path(db: Db) -> None:
    got = _updated(db, {"_id": 3, "items": [{"a": 1}, {"a": 2}]},
                   [{"$set": {"total": {"$add": [1, 1]}, "firsts": "$items.a"}}])
    assert got["firsts"] == [1, 2] and got["total"] == 2


@pytest.mark.parametrize(("query", "expected"), [
    ({"token": {"$not": {"$gt": 7}}}, [1, 2, 4, 5]),
    ({"token": None}, [4, 5]),
    ({"token": {"$in": [None, 8]}}, [3, 4, 5]),
    ({"token": {"$nin": [None, 8]}}, [1, 2]),
    ({"token": {"$exists": False}}, [5]),
    ({"token": {"$type": "number"}}, [1, 2, 3]),
    ({"token": {"$gte": 7}}, [2, 3]),
    ({"$or": [{"token": 1}, {"tag": "x"}]}, [1, 3]),
    ({"$nor": [{"token": 1}, {"tag": "x"}]}, [2, 4, 5]),
    ({"sub.k": "v"}, [2]),
    ({"sub": {"k": "v"}}, [2]),
    ({"$expr": {"$lte": ["$token", 7]}}, [1, 2, 4, 5]),
    ({"list": 2}, [1]),
    ({"list": {"$gt": 2}}, [1]),
    ({"list.b": 1}, [3]),
])
def test_plain_filters(db: Db, query: dict[str, Any], expected: list[int]) -> None:
    db.f.insert_many([
        {"_id": 1, "token": 1, "list": [1, 2, 3]},
        {"_id": 2, "token": 7, "sub": {"k": "v"}},
        {"_id": 3, "token": 8, "tag": "x", "list": [{"b": 1}]},
        {"_id": 4, "token": None},
        {"_id": 5},
    ])
    assert sorted(d["_id"] for d in db.f.find(query)) == expected


def test_change_event_projection_keeps_document_order(db: Db) -> None:
    db.create_collection("ev")
    pipeline = [{"$match": {"operationType": {"$in": ["insert", "update"]}}},
                {"$project": {"documentKey": 1, "fullDocument.b": 1, "fullDocument.a": 1,
                              "ns.coll": 1}}]
    with db.ev.watch(pipeline, full_document="updateLookup",
                     max_await_time_ms=AWAIT_MS) as stream:
        db.ev.insert_one({"_id": 1, "a": 1, "z": 0, "b": {"c": 2}})
        db.ev.update_one({"_id": 1}, {"$set": {"a": 5}})
        inserted = next_change(stream)
        updated = next_change(stream)
    for event in (inserted, updated):
        assert list(event) == ["_id", "fullDocument", "ns", "documentKey"]
        assert event["ns"] == {"coll": "ev"}
        assert list(event["fullDocument"]) == ["a", "b"]
    assert "updateDescription" not in updated and updated["fullDocument"]["a"] == 5
