"""The claim protocol's guarantees, through PyMongo against the embedded server (no runtime
process): batch claims are compare-and-set per task, every claim has its own id, finalizes
batched into one bulk write detect a lost lease per task, and concurrency slots collide."""

from __future__ import annotations

import asyncio
import datetime
from collections.abc import Awaitable, Callable
from typing import Any

from pymongo import AsyncMongoClient
from pymongo.database import Database
from support import reactor_spec

from runtime.claims import Claimer
from runtime.reactor import KeyConcurrency
from runtime.task_store import DUE_ORDER, PENDING, PRIORITY_ORDER, TaskStore

Db = Database[dict[str, Any]]
LATER = datetime.timedelta(hours=1)


def _run(db: Db, body: Callable[[Any], Awaitable[Any]]) -> Any:
    async def main() -> Any:
        host, port = db.client.address
        client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(host, port)
        try:
            return await body(client[db.name])
        finally:
            await client.close()
    return asyncio.run(main())


def _due_tasks(db: Db, count: int, **fields: Any) -> None:
    past = datetime.datetime.now(datetime.UTC) - datetime.timedelta(seconds=5)
    db.src_tasks.insert_many([{"_id": i, "reactor": "r", "sourceId": i, "status": PENDING,
                               "nextRunAt": past + datetime.timedelta(milliseconds=i),
                               "snapshotHash": "h", "attempts": 0, **fields}
                              for i in range(count)])


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC) + LATER  # every task above is due


def test_batch_claim_is_compare_and_set_per_task(db: Db) -> None:
    _due_tasks(db, 6)

    async def body(adb: Any) -> tuple[list[Any], list[Any]]:
        store = TaskStore(adb.src_tasks, 30_000, "me")
        candidates = await store.due_candidates("r", _now(), 6)
        # Between the find and the claim: one task changes, one is claimed by another
        # instance; neither may be taken by this round.
        await adb.src_tasks.update_one({"_id": 1}, {"$set": {"snapshotHash": "new"}})
        other = TaskStore(adb.src_tasks, 30_000, "other")
        taken = await other.claim_candidates([c for c in candidates if c["_id"] == 2], _now())
        assert [t.task_id for t in taken] == [2]
        held = await store.claim_candidates(candidates, _now())
        return [h.task_id for h in held], [h.claim for h in held]

    ids, claims = _run(db, body)
    assert ids == [0, 3, 4, 5]
    assert len(set(claims)) == 4  # each execution is fenced by its own claim id
    for task_id, claim in zip(ids, claims, strict=True):
        doc = db.src_tasks.find_one({"_id": task_id})
        assert doc is not None and doc["lease"]["claim"] == claim and doc["attempts"] == 1
    assert db.src_tasks.find_one({"_id": 1})["status"] == PENDING  # type: ignore[index]
    assert db.src_tasks.find_one({"_id": 2})["lease"]["owner"] == "other"  # type: ignore[index]


def test_batched_finalize_detects_each_lost_lease(db: Db) -> None:
    _due_tasks(db, 5)

    async def body(adb: Any) -> list[bool]:
        store = TaskStore(adb.src_tasks, 30_000, "me")
        held = await store.claim_candidates(await store.due_candidates("r", _now(), 5), _now())
        # Task 3's lease was lost (another instance took it over after an expiry).
        await adb.src_tasks.update_one({"_id": 3}, {"$set": {"lease.claim": "someone else"}})
        results = await asyncio.gather(*(
            store.finalize(h, "completed", error=None, history_limit=5, duration_ms=1.0,
                           debounce="$$NOW") for h in held))
        return list(results)

    assert _run(db, body) == [True, True, True, False, True]
    assert db.src_tasks.count_documents({"status": "completed", "lastOwner": "me"}) == 4
    assert db.src_tasks.find_one({"_id": 3})["status"] == "processing"  # type: ignore[index]


def test_a_slot_taken_concurrently_fails_only_that_claim(db: Db) -> None:
    db.src_tasks.create_index("slot", unique=True,
                              partialFilterExpression={"slot": {"$exists": True}})
    _due_tasks(db, 3)

    async def body(adb: Any) -> list[Any]:
        store = TaskStore(adb.src_tasks, 30_000, "me")
        candidates = await store.due_candidates("r", _now(), 3)
        # Two claim rounds (two instances) picked the same free slot for tasks 0 and 1.
        slots = {0: {"slot": "r#0"}, 1: {"slot": "r#0"}, 2: {"slot": "r#1"}}
        held = await store.claim_candidates(candidates, _now(), slots)
        return [h.task_id for h in held]

    assert _run(db, body) == [0, 2]
    assert db.src_tasks.find_one({"_id": 1})["status"] == PENDING  # type: ignore[index]


def test_two_instances_racing_for_one_key_run_it_once(db: Db) -> None:
    db.src_tasks.create_index("keySlot", unique=True,
                              partialFilterExpression={"keySlot": {"$exists": True}})
    _due_tasks(db, 4, concurrencyKey="acme")
    spec = reactor_spec(collection="src", key_concurrency=KeyConcurrency("$customer", 1))

    async def body(adb: Any) -> tuple[int, int]:
        mine = Claimer({"r": spec}, {"r": TaskStore(adb.src_tasks, 30_000, "me")}, None)
        theirs = Claimer({"r": spec}, {"r": TaskStore(adb.src_tasks, 30_000, "other")}, None)
        # Both read the same free slot and race for it: exactly one execution of the key.
        first, second = await asyncio.gather(mine.claim("r", _now(), 4),
                                             theirs.claim("r", _now(), 4))
        return len(first.claimed), len(second.claimed)

    assert sorted(_run(db, body)) == [0, 1]
    assert db.src_tasks.count_documents({"keySlot": {"$exists": True}}) == 1


def _keys_examined(db: Db) -> int:
    status = db.client.admin.command("serverStatus")
    return int(status["metrics"]["queryExecutor"]["scanned"])


def test_claims_examine_the_same_keys_whatever_the_number_of_finished_tasks(db: Db) -> None:
    """Claims are index-served: finished tasks (``nextRunAt: null``) and tasks due later are
    outside the claim's index range, so keys examined per claim do not grow with them
    (priority order: plus at most one key per distinct priority, the bounds checker's seeks).
    """
    db.src_tasks.create_index([("reactor", 1), ("nextRunAt", 1)], name="reactgen_claim")
    db.src_tasks.create_index([("reactor", 1), ("priority", -1), ("nextRunAt", 1)],
                              name="reactgen_priority_claim")
    past = datetime.datetime.now(datetime.UTC) - datetime.timedelta(seconds=5)
    db.src_tasks.insert_many([{"_id": f"due{i}", "reactor": "r", "sourceId": i,
                               "status": PENDING, "priority": (0, 5, 9)[i % 3],
                               "nextRunAt": past + datetime.timedelta(milliseconds=i),
                               "snapshotHash": "h"} for i in range(20)])
    examined: dict[int, list[int]] = {}
    for finished in (100, 5_000):
        db.src_tasks.insert_many([{"reactor": "r", "sourceId": f"x{finished}-{i}",
                                   "status": "completed", "nextRunAt": None, "priority": i % 7}
                                  for i in range(finished - len(examined) * 100)])

        async def body(adb: Any) -> list[int]:
            store = TaskStore(adb.src_tasks, 30_000, "me")
            counts = []
            for order in (DUE_ORDER, PRIORITY_ORDER):
                before = _keys_examined(db)
                found = await store.due_candidates("r", _now(), 10, order)
                counts.append(_keys_examined(db) - before)
                assert len(found) == 10
            return counts

        examined[finished] = _run(db, body)
    assert examined[100] == examined[5_000], examined
    due_order, priority_order = examined[5_000]
    assert due_order <= 11 and priority_order <= 10 + 3 + 7 + 2, examined
