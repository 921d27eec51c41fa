"""``serverStatus.metrics.queryExecutor``: index keys (``scanned``) and documents
(``scannedObjects``) examined, counted by every read and write path like MongoDB does.

Embedded only: the exact numbers describe the embedded server's plans (a real server may choose
other plans); the session server is shared, so each check reads the counters before and after.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from pymongo import MongoClient, UpdateOne
from pymongo.collection import Collection
from pymongo.database import Database

Db = Database[dict[str, Any]]
Coll = Collection[dict[str, Any]]
Client = MongoClient[dict[str, Any]]

pytestmark = pytest.mark.embedded_only

N = 200


def examined(client: Client, action: Callable[[], Any]) -> tuple[int, int]:
    """(index keys, documents) examined while ``action`` ran."""
    def read() -> tuple[int, int]:
        counters = client.admin.command("serverStatus")["metrics"]["queryExecutor"]
        return int(counters["scanned"]), int(counters["scannedObjects"])

    keys, docs = read()
    action()
    keys_after, docs_after = read()
    return keys_after - keys, docs_after - docs


@pytest.fixture
def items(db: Db) -> Coll:
    db.items.create_index("code", unique=True)
    db.items.insert_many([{"_id": i, "code": f"c{i}", "n": i % 10} for i in range(N)])
    return db.items


def test_indexed_equality_find_examines_one_key_and_one_document(
        client: Client, items: Coll) -> None:
    assert examined(client, lambda: list(items.find({"code": "c7"}))) == (1, 1)
    assert examined(client, lambda: list(items.find({"_id": 7}))) == (1, 1)


def test_collection_scan_examines_every_document_and_no_key(client: Client, items: Coll) -> None:
    assert examined(client, lambda: list(items.find({"n": 3}))) == (0, N)


def test_get_more_counts_what_later_batches_read(client: Client, items: Coll) -> None:
    cursor = items.find({"n": {"$gte": 0}}, batch_size=10)
    keys, docs = examined(client, lambda: list(cursor))
    assert (keys, docs) == (0, N)


def test_aggregate_match_count_and_distinct(client: Client, items: Coll) -> None:
    assert examined(client, lambda: list(items.aggregate([{"$match": {"code": "c3"}}]))) == (1, 1)
    assert examined(client, lambda: list(items.aggregate([{"$match": {"n": 3}}]))) == (0, N)
    with_expr = [{"$match": {"code": "c3", "$expr": {"$eq": ["$n", 3]}}}]
    assert examined(client, lambda: list(items.aggregate(with_expr))) == (1, 1)
    assert [d["_id"] for d in items.aggregate(with_expr)] == [3]
    assert examined(client, lambda: items.count_documents({"code": {"$in": ["c1", "c2"]}})) == (
        2, 2)
    assert examined(client, lambda: items.distinct("n", {"code": "c4"})) == (1, 1)


def test_writes_count_the_documents_they_look_at(client: Client, items: Coll) -> None:
    assert examined(client, lambda: items.update_one({"code": "c5"}, {"$inc": {"n": 1}})) == (1, 1)
    assert examined(client, lambda: items.update_many({"n": 100}, {"$set": {"x": 1}})) == (0, N)
    assert examined(client, lambda: items.find_one_and_update(
        {"_id": 9}, {"$set": {"x": 2}})) == (1, 1)
    assert examined(client, lambda: items.bulk_write([
        UpdateOne({"_id": i}, {"$set": {"y": 1}}) for i in range(5)])) == (5, 5)
    assert examined(client, lambda: items.delete_one({"code": "c6"})) == (1, 1)
    assert examined(client, lambda: items.delete_many({"_id": {"$in": [1, 2, 3]}})) == (3, 3)
