"""``$collStats`` and ``$indexStats`` (manual pages of those stages), which Compass reads for a
collection's size and its indexes' usage."""

from __future__ import annotations

from typing import Any

import pytest
from pymongo.database import Database
from pymongo.errors import OperationFailure


def test_coll_stats_reports_count_and_storage(db: Database[dict[str, Any]]) -> None:
    db.items.insert_many([{"_id": i} for i in range(4)])  # 14 BSON bytes each
    db.items.create_index("x")
    [stats] = db.items.aggregate([{"$collStats": {"storageStats": {}, "count": {}}}])
    assert stats["ns"] == f"{db.name}.items" and stats["count"] == 4
    storage = stats["storageStats"]
    assert storage["count"] == 4 and storage["size"] == 56 and storage["avgObjSize"] == 14
    assert storage["nindexes"] == 2 and set(storage["indexSizes"]) == {"_id_", "x_1"}


def test_coll_stats_must_be_first_and_of_an_existing_collection(
        db: Database[dict[str, Any]]) -> None:
    db.items.insert_one({})
    with pytest.raises(OperationFailure) as info:
        list(db.items.aggregate([{"$match": {}}, {"$collStats": {}}]))
    assert info.value.code == 40602
    with pytest.raises(OperationFailure) as info:
        list(db.missing.aggregate([{"$collStats": {"storageStats": {}}}]))
    assert info.value.code == 26


def test_index_stats_lists_every_index_and_later_stages_apply(
        db: Database[dict[str, Any]]) -> None:
    db.items.insert_one({})
    db.items.create_index([("a", 1), ("b", -1)], name="ab")
    stats = list(db.items.aggregate([{"$indexStats": {}}, {"$sort": {"name": 1}}]))
    assert [s["name"] for s in stats] == ["_id_", "ab"]
    assert stats[1]["key"] == {"a": 1, "b": -1} and stats[1]["accesses"]["ops"] == 0
    assert stats[1]["spec"]["name"] == "ab"
