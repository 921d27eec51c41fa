"""Many clients at once: 50 connections writing and reading concurrently.

Each worker has its own ``MongoClient`` (so its own connection). The counts must come out exact:
no lost update, no duplicate claim, every acknowledged insert readable by its writer at once.
Tests marked ``embedded_only`` rely on the embedded server running each *command* atomically
(``update_many``/``insert_many`` as one unit), which a real MongoDB does not promise.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

import pytest
from pymongo import AsyncMongoClient, MongoClient, ReturnDocument
from pymongo.database import Database

Db = Database[dict[str, Any]]
CLIENTS = 50
JOIN_TIMEOUT = 120


def _run_workers(count: int, work: Callable[[int], None]) -> None:
    """Run ``work(i)`` in ``count`` threads at once; re-raise the first failure."""
    errors: list[BaseException] = []
    start = threading.Barrier(count)

    def run(i: int) -> None:
        try:
            start.wait(timeout=JOIN_TIMEOUT)
            work(i)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(JOIN_TIMEOUT)
    assert not any(t.is_alive() for t in threads), "a worker hung"
    if errors:
        raise errors[0]


def _client(uri: str) -> MongoClient[dict[str, Any]]:
    return MongoClient(uri, maxPoolSize=1, serverSelectionTimeoutMS=30_000)


def test_fifty_clients_write_and_read_concurrently(mongodb_uri: str, db: Db) -> None:
    db.counters.insert_one({"_id": "total", "n": 0})
    connected = threading.Barrier(CLIENTS + 1)
    release = threading.Event()
    per_worker = 20

    def work(i: int) -> None:
        client = _client(mongodb_uri)
        try:
            coll = client[db.name].items
            client.admin.command("ping")
            connected.wait(timeout=JOIN_TIMEOUT)
            assert release.wait(timeout=JOIN_TIMEOUT)
            for j in range(per_worker):
                coll.insert_one({"_id": f"{i}-{j}", "worker": i, "j": j})
                # Read-your-writes on the same connection, with others writing meanwhile.
                assert coll.find_one({"_id": f"{i}-{j}"}) == {"_id": f"{i}-{j}", "worker": i,
                                                              "j": j}
                client[db.name].counters.update_one({"_id": "total"}, {"$inc": {"n": 1}})
            coll.update_many({"worker": i}, {"$set": {"done": True}})
            assert coll.count_documents({"worker": i, "done": True}) == per_worker
        finally:
            client.close()

    waiter = threading.Thread(target=lambda: _run_workers(CLIENTS, work), daemon=True)
    waiter.start()
    connected.wait(timeout=JOIN_TIMEOUT)
    # All workers hold an open connection now.
    status = db.client.admin.command("serverStatus")
    assert status["connections"]["current"] >= CLIENTS
    release.set()
    waiter.join(JOIN_TIMEOUT)
    assert not waiter.is_alive()

    assert db.items.count_documents({}) == CLIENTS * per_worker
    assert db.items.count_documents({"done": True}) == CLIENTS * per_worker
    assert db.counters.find_one({"_id": "total"}) == {"_id": "total", "n": CLIENTS * per_worker}


def test_concurrent_claims_never_hand_out_a_job_twice(mongodb_uri: str, db: Db) -> None:
    jobs = 300
    db.jobs.insert_many([{"_id": n, "state": "ready", "prio": n % 7} for n in range(jobs)])
    claimed: dict[int, list[Any]] = {i: [] for i in range(CLIENTS)}

    def work(i: int) -> None:
        client = _client(mongodb_uri)
        try:
            coll = client[db.name].jobs
            while True:
                job = coll.find_one_and_update(
                    {"state": "ready"}, {"$set": {"state": "taken", "by": i}},
                    sort=[("prio", 1), ("_id", 1)], return_document=ReturnDocument.AFTER)
                if job is None:
                    return
                assert job["by"] == i
                claimed[i].append(job["_id"])
        finally:
            client.close()

    _run_workers(CLIENTS, work)
    every = [job for ids in claimed.values() for job in ids]
    assert sorted(every) == list(range(jobs)), "each job exactly once"
    for i, ids in claimed.items():
        assert db.jobs.count_documents({"by": i}) == len(ids)


def test_unique_index_under_concurrent_inserts(mongodb_uri: str, db: Db) -> None:
    db.users.create_index("email", unique=True)
    winners: list[int] = []

    def work(i: int) -> None:
        client = _client(mongodb_uri)
        try:
            coll = client[db.name].users
            for n in range(10):
                try:
                    coll.insert_one({"email": f"user{n}@example.com", "by": i})
                    winners.append(n)
                except Exception as exc:
                    assert "E11000" in str(exc)
        finally:
            client.close()

    _run_workers(CLIENTS, work)
    assert sorted(winners) == list(range(10))
    assert db.users.count_documents({}) == 10


async def test_fifty_async_clients(mongodb_uri: str, db: Db) -> None:
    clients: list[AsyncMongoClient[dict[str, Any]]] = [
        AsyncMongoClient(mongodb_uri, maxPoolSize=1) for _ in range(CLIENTS)]
    try:
        async def work(i: int, client: AsyncMongoClient[dict[str, Any]]) -> None:
            coll = client[db.name].async_items
            for j in range(10):
                await coll.insert_one({"worker": i, "j": j})
                await client[db.name].async_counter.update_one(
                    {"_id": 1}, {"$inc": {"n": 1}, "$push": {"seen": [i, j]}}, upsert=False)
            assert await coll.count_documents({"worker": i}) == 10

        await clients[0][db.name].async_counter.insert_one({"_id": 1, "n": 0, "seen": []})
        await asyncio.wait_for(asyncio.gather(*(work(i, c) for i, c in enumerate(clients))),
                               JOIN_TIMEOUT)
    finally:
        await asyncio.gather(*(c.close() for c in clients))
    counter = db.async_counter.find_one({"_id": 1})
    assert counter is not None and counter["n"] == CLIENTS * 10
    assert len(counter["seen"]) == CLIENTS * 10
    assert db.async_items.count_documents({}) == CLIENTS * 10


# -- command atomicity (embedded server guarantees) -------------------------------------------


@pytest.mark.embedded_only
def test_update_many_is_atomic_for_concurrent_readers(mongodb_uri: str, db: Db) -> None:
    docs = 100
    db.grid.insert_many([{"_id": n, "v": 0} for n in range(docs)])
    writers, readers, rounds = 10, 40, 15
    seen: list[set[int]] = []

    def work(i: int) -> None:
        client = _client(mongodb_uri)
        try:
            coll = client[db.name].grid
            if i < writers:
                for _ in range(rounds):
                    assert coll.update_many({}, {"$inc": {"v": 1}}).modified_count == docs
            else:
                for _ in range(rounds):
                    # 100 documents fit in the first batch: one command, one view.
                    values = {d["v"] for d in coll.find({}, batch_size=docs + 1)}
                    seen.append(values)
        finally:
            client.close()

    _run_workers(writers + readers, work)
    torn = [values for values in seen if len(values) != 1]
    assert not torn, f"a reader saw a half-applied update_many: {torn[:3]}"
    assert {d["v"] for d in db.grid.find()} == {writers * rounds}


@pytest.mark.embedded_only
def test_insert_many_is_atomic_for_concurrent_counters(mongodb_uri: str, db: Db) -> None:
    batch, writers, readers = 25, 10, 20
    counts: list[int] = []

    def work(i: int) -> None:
        client = _client(mongodb_uri)
        try:
            coll = client[db.name].batches
            if i < writers:
                for b in range(8):
                    coll.insert_many([{"w": i, "b": b, "k": k} for k in range(batch)])
            else:
                for _ in range(5):
                    counts.append(coll.count_documents({}))
        finally:
            client.close()

    _run_workers(writers + readers, work)
    assert all(c % batch == 0 for c in counts), sorted(set(counts))
    assert db.batches.count_documents({}) == writers * 8 * batch


@pytest.mark.embedded_only
def test_server_keeps_serving_after_many_abrupt_disconnects(mongodb_uri: str, db: Db) -> None:
    # Clients that vanish mid-conversation must not disturb the others.
    def work(i: int) -> None:
        client = _client(mongodb_uri)
        client[db.name].abrupt.insert_one({"i": i})
        client.close()

    for _ in range(3):
        _run_workers(CLIENTS, work)
    assert db.abrupt.count_documents({}) == 3 * CLIENTS
    assert db.client.admin.command("ping")["ok"] == 1
