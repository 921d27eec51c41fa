"""Concurrent claimers: 20 threads, each with its own MongoClient (so its own connections),
claim jobs with ``findAndModify``; no job may ever be claimed twice and none may be missed.

Valid against a real MongoDB 7.0 replica set as well as the embedded server.
"""

from __future__ import annotations

import datetime
import threading
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from pymongo import ASCENDING, MongoClient, ReturnDocument
from pymongo.database import Database

Db = Database[dict[str, Any]]

CLAIMERS = 20
JOBS = 600
BASE = datetime.datetime(2024, 1, 1)


def _run_claimers(mongodb_uri: str, claim: Callable[[MongoClient[dict[str, Any]], int],
                                                    Any | None]) -> list[list[Any]]:
    """Run ``claim(client, worker)`` in 20 threads until it returns None; claimed ids per worker."""
    barrier = threading.Barrier(CLAIMERS, timeout=60)

    def worker(number: int) -> list[Any]:
        client: MongoClient[dict[str, Any]] = MongoClient(mongodb_uri, maxPoolSize=2)
        try:
            client.admin.command("ping")  # connect before the race starts
            barrier.wait()
            claimed: list[Any] = []
            for _ in range(JOBS + 1):  # bounded: a worker can never claim more than all jobs
                doc_id = claim(client, number)
                if doc_id is None:
                    return claimed
                claimed.append(doc_id)
            raise AssertionError(f"worker {number} claimed more than {JOBS} jobs")
        finally:
            client.close()

    with ThreadPoolExecutor(max_workers=CLAIMERS) as pool:
        futures = [pool.submit(worker, n) for n in range(CLAIMERS)]
        return [f.result(timeout=240) for f in futures]


def _assert_each_claimed_once(per_worker: list[list[Any]]) -> None:
    counts = Counter(doc_id for claimed in per_worker for doc_id in claimed)
    twice = {doc_id: n for doc_id, n in counts.items() if n > 1}
    assert not twice, f"claimed more than once: {twice}"
    assert sorted(counts) == list(range(JOBS))
    # The race was real: more than one worker got work.
    assert sum(1 for claimed in per_worker if claimed) > 1


@pytest.mark.parametrize("indexed", [True, False], ids=["indexed", "unindexed"])
def test_concurrent_claims_take_each_job_exactly_once(mongodb_uri: str, db: Db,
                                                       indexed: bool) -> None:
    if indexed:
        db.jobs.create_index([("state", ASCENDING), ("priority", ASCENDING)])
    db.jobs.insert_many([{"_id": i, "state": "ready", "priority": (i * 37) % 101, "claims": 0}
                         for i in range(JOBS)])

    def claim(client: MongoClient[dict[str, Any]], worker: int) -> Any | None:
        doc = client[db.name].jobs.find_one_and_update(
            {"state": "ready"},
            {"$set": {"state": "claimed", "owner": worker}, "$inc": {"claims": 1}},
            sort=[("priority", ASCENDING)], projection={"_id": 1},
        )
        return None if doc is None else doc["_id"]

    per_worker = _run_claimers(mongodb_uri, claim)
    _assert_each_claimed_once(per_worker)
    assert db.jobs.count_documents({"state": "ready"}) == 0
    assert db.jobs.count_documents({"claims": {"$ne": 1}}) == 0
    for worker, claimed in enumerate(per_worker):
        assert db.jobs.count_documents({"owner": worker}) == len(claimed)


def test_concurrent_lease_claims_with_next_run_at(mongodb_uri: str, db: Db) -> None:
    """The scheduler's claim: due jobs of one task, earliest first, leased by moving nextRunAt."""
    db.jobs.create_index([("task", ASCENDING), ("nextRunAt", ASCENDING)])
    db.jobs.insert_many([
        {"_id": i, "task": "send", "nextRunAt": BASE + datetime.timedelta(seconds=i % 97),
         "runs": 0}
        for i in range(JOBS)
    ])
    db.jobs.insert_many([{"_id": JOBS + i, "task": "other", "nextRunAt": BASE} for i in range(50)])
    now = BASE + datetime.timedelta(days=1)
    lease_until = now + datetime.timedelta(hours=1)

    def claim(client: MongoClient[dict[str, Any]], worker: int) -> Any | None:
        doc = client[db.name].jobs.find_one_and_update(
            {"task": "send", "nextRunAt": {"$lte": now}},
            {"$set": {"nextRunAt": lease_until, "leasedBy": worker}, "$inc": {"runs": 1}},
            sort=[("nextRunAt", ASCENDING)],
            return_document=ReturnDocument.AFTER,
        )
        if doc is None:
            return None
        assert doc["nextRunAt"] == lease_until and doc["leasedBy"] == worker
        return doc["_id"]

    per_worker = _run_claimers(mongodb_uri, claim)
    _assert_each_claimed_once(per_worker)
    assert db.jobs.count_documents({"task": "send", "runs": 1}) == JOBS
    assert db.jobs.count_documents({"task": "other", "leasedBy": {"$exists": True}}) == 0


def test_concurrent_upserts_create_one_document(mongodb_uri: str, db: Db) -> None:
    """Racing upserts on a unique key: one insert, the rest update the same document."""
    db.counters.create_index("key", unique=True)
    barrier = threading.Barrier(CLAIMERS, timeout=60)

    def worker(number: int) -> None:
        client: MongoClient[dict[str, Any]] = MongoClient(mongodb_uri, maxPoolSize=2)
        try:
            client.admin.command("ping")
            barrier.wait()
            for _ in range(10):
                client[db.name].counters.find_one_and_update(
                    {"key": "hits"}, {"$inc": {"n": 1}}, upsert=True)
        finally:
            client.close()

    with ThreadPoolExecutor(max_workers=CLAIMERS) as pool:
        for future in [pool.submit(worker, n) for n in range(CLAIMERS)]:
            future.result(timeout=240)
    docs = list(db.counters.find({}, {"_id": 0}))
    assert docs == [{"key": "hits", "n": CLAIMERS * 10}]
