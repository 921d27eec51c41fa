"""Cluster-wide flow control on three ``runtime serve`` instances: concurrency per reactor and
per key, rate limits (a token bucket in the database), and priorities.

Handlers report what they observe through the database: each execution increments a shared
``active`` counter when it starts (recording the highest value seen) and decrements it when it
ends, so the test reads the largest parallelism any moment had, across all processes. Start
times are the server's ``$$NOW``.
"""

from __future__ import annotations

import datetime
import re
import signal
import socket
import urllib.request
from typing import Any

from conftest import AppBuilder, RuntimeFactory
from pymongo.database import Database
from reactive_support import GATE_CODE, definition, open_gate, wait_waiting
from scenario import stays
from support import wait_until

Db = Database[dict[str, Any]]

SCHEMA: dict[str, Any] = {
    "type": "object", "title": "Job",
    "properties": {"_id": {"type": "string"}, "n": {"type": "integer"},
                   "customer": {"type": "string"}, "p": {"type": "integer"}},
}

OBSERVING = '''
import asyncio


async def handle(ctx):
    db = ctx.database
    doc = await ctx.get_document()
    counter = "active:" + (doc.customer or "all")
    for name in ("active:all", counter) if counter != "active:all" else ("active:all",):
        seen = await db["parallel"].find_one_and_update(
            {"_id": name}, {"$inc": {"now": 1}}, upsert=True, return_document=True)
        await db["parallel"].update_one({"_id": name}, {"$max": {"max": seen["now"]}})
    await db["starts"].update_one({"_id": ctx.doc_id}, [{"$set": {"at": "$$NOW",
                                                                    "p": doc.p}}],
                                  upsert=True)
    await asyncio.sleep(0.15)
    for name in ("active:all", counter) if counter != "active:all" else ("active:all",):
        await db["parallel"].update_one({"_id": name}, {"$inc": {"now": -1}})
'''


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _app(make_app: AppBuilder, policies: dict[str, Any], code: str = OBSERVING) -> Any:
    return make_app({"job": definition("jobs", schema=SCHEMA, watch=["n"], policies=policies)},
                    {"job": code})


def _three(start_runtime: RuntimeFactory, app: Any, *extra: str) -> list[Any]:
    return [start_runtime(app, instance_id=name, args=["--concurrency", "10", *extra])
            for name in ("a", "b", "c")]


def _completed(db: Db, count: int, timeout: float = 60) -> None:
    assert wait_until(lambda: db.jobs_tasks.count_documents({"status": "completed"}) >= count,
                      timeout=timeout), list(db.jobs_tasks.find({}, {"status": 1}))


def _max(db: Db, name: str = "active:all") -> int:
    doc = db.parallel.find_one({"_id": name}) or {}
    return int(doc.get("max", 0))


def test_cluster_wide_concurrency_holds_across_three_instances(
        make_app: AppBuilder, start_runtime: RuntimeFactory, db: Db) -> None:
    app = _app(make_app, {"concurrency": {"max": 3}})
    port = _free_port()
    start_runtime(app, instance_id="a", args=["--concurrency", "10", "--metrics-port",
                                              str(port)])
    for name in ("b", "c"):
        start_runtime(app, instance_id=name, args=["--concurrency", "10"])
    db.jobs.insert_many([{"_id": f"j{i}", "n": 1} for i in range(30)])
    _completed(db, 30)
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    # Instance a's claim rounds found every slot held while work waited (and said so).
    assert re.search(r'reactgen_claims_limited_total\{limit="concurrency",reactor="job"\} '
                     r'[1-9]', text), text[-2000:]
    # 30 workers were idle across the three instances; never more than 3 ran at once,
    # and the limit was used (not serialised to one).
    assert _max(db) == 3
    runners = {doc["history"][-1]["by"] for doc in db.jobs_tasks.find({}, {"history": 1})}
    assert len(runners) >= 2, runners  # the slots are shared by the cluster, not one instance
    assert db.jobs_tasks.count_documents({"slot": {"$exists": True}}) == 0


def test_per_key_concurrency_runs_one_per_customer_and_customers_in_parallel(
        make_app: AppBuilder, start_runtime: RuntimeFactory, db: Db) -> None:
    app = _app(make_app, {"concurrency": {"key": "$customer", "max": 1}})
    _three(start_runtime, app)
    customers = ["acme", "globex", "initech"]
    db.jobs.insert_many([{"_id": f"j{i}", "n": 1, "customer": customers[i % 3]}
                         for i in range(18)])
    _completed(db, 18)
    for customer in customers:
        assert _max(db, f"active:{customer}") == 1, customer
    assert _max(db) >= 2  # different customers did run side by side
    assert db.jobs_tasks.count_documents({"keySlot": {"$exists": True}}) == 0


def test_rate_limit_is_a_token_bucket_shared_by_the_cluster(
        make_app: AppBuilder, start_runtime: RuntimeFactory, db: Db) -> None:
    app = _app(make_app, {"rateLimit": {"max": 4, "per": "1s"}})
    _three(start_runtime, app)
    db.jobs.insert_many([{"_id": f"j{i}", "n": 1} for i in range(16)])
    _completed(db, 16)
    starts = sorted(doc["at"] for doc in db.starts.find())
    assert len(starts) == 16
    # A full bucket (4) may go at once, then 4 per second: any window of W seconds holds at
    # most 4 + 4 W starts, whichever instance started them.
    for i, first in enumerate(starts):
        for last in starts[i:]:
            window = (last - first).total_seconds()
            count = sum(1 for at in starts if first <= at <= last)
            assert count <= 4 + 4 * window + 1, (count, window)
    assert (starts[-1] - starts[0]).total_seconds() >= (16 - 4) / 4 - 0.3


def test_slots_of_a_killed_instance_come_back_when_its_leases_expire(
        make_app: AppBuilder, start_runtime: RuntimeFactory, db: Db) -> None:
    gated = GATE_CODE + '''

async def handle(ctx):
    await ctx.database["holders"].update_one({"_id": ctx.doc_id}, {"$inc": {"runs": 1}},
                                             upsert=True)
    if ctx.doc_id.startswith("hold"):
        await wait_gate(ctx, "never")
'''
    app = make_app({"job": definition("jobs", schema=SCHEMA, watch=["n"],
                                      policies={"concurrency": {"max": 2}})}, {"job": gated})
    lease = ["--task-lease-ms", "1500"]
    victim = start_runtime(app, instance_id="victim", args=["--concurrency", "2", *lease])
    db.jobs.insert_many([{"_id": "hold1", "n": 1}, {"_id": "hold2", "n": 1}])
    wait_waiting(db, "never", count=2)  # the victim holds both cluster slots
    survivors = [start_runtime(app, instance_id=name, args=["--concurrency", "5", *lease])
                 for name in ("b", "c")]
    db.jobs.insert_many([{"_id": f"j{i}", "n": 1} for i in range(4)])
    stays(lambda: db.holders.count_documents({"_id": {"$regex": "^j"}}) == 0, 1.0,
          "no slot is free: nobody starts them")
    victim.process.send_signal(signal.SIGKILL)
    victim.process.wait()
    # The held tasks' leases expire; their slots go with them to the survivors that reclaim
    # them (they wait on the gate again), so the four others still wait ...
    assert wait_until(lambda: db.waiting.find_one({"_id": "never"})["count"] >= 4, timeout=15)
    assert db.holders.count_documents({"_id": {"$regex": "^j"}}) == 0
    # ... until the gate opens and the slots are given back for good.
    open_gate(db, "never")
    _completed(db, 6, timeout=30)
    assert all(process.process.poll() is None for process in survivors)


PRIORITY_GATED = GATE_CODE + '''

async def handle(ctx):
    doc = await ctx.get_document()
    if ctx.doc_id == "first":
        await wait_gate(ctx, "go")
    await ctx.database["order"].insert_one({"_id": ctx.doc_id, "p": doc.p,
                                            "seq": await _next(ctx)})


async def _next(ctx):
    counter = await ctx.database["seq"].find_one_and_update(
        {"_id": "seq"}, {"$inc": {"n": 1}}, upsert=True, return_document=True)
    return counter["n"]
'''


def test_priorities_go_first_without_starving_the_oldest(
        make_app: AppBuilder, start_runtime: RuntimeFactory, db: Db) -> None:
    app = _app(make_app, {"priority": {"static": 0, "expression": "$p"}}, PRIORITY_GATED)
    start_runtime(app, args=["--concurrency", "1"])
    db.jobs.insert_one({"_id": "first", "n": 1, "p": 0})
    wait_waiting(db, "go")  # the only worker is busy: everything below queues up
    db.jobs.insert_one({"_id": "old-low", "n": 1, "p": 1})
    for i in range(12):
        db.jobs.insert_one({"_id": f"high{i:02}", "n": 1, "p": 50 + i})
    assert wait_until(lambda: db.jobs_tasks.count_documents({"status": "pending"}) == 13)
    open_gate(db, "go")
    _completed(db, 14)
    order = [doc["_id"] for doc in db.order.find(sort=[("seq", 1)])]
    assert order[0] == "first"
    queued = order[1:]
    highs = [name for name in queued if name.startswith("high")]
    # Highest priority first among the high ones ...
    assert highs[:3] == ["high11", "high10", "high09"], queued
    # ... and the old low-priority task is not starved behind all twelve.
    assert queued.index("old-low") < 4, queued


def test_server_clock_decides_rate_limit_refill(db: Db) -> None:
    """The bucket's refill uses the server's ``$$NOW`` (pinned: a unit check of the pipeline
    through the embedded server, not the runtime)."""
    import asyncio

    from pymongo import AsyncMongoClient

    from runtime.rate_limit import RateLimiter
    from runtime.reactor import RateLimit

    async def scenario() -> list[int]:
        client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
            db.client.address[0], db.client.address[1])
        try:
            limiter = RateLimiter(client[db.name])
            limit = RateLimit(max=3, per_ms=60_000)
            first = await limiter.take("r", limit, 5)
            second = await limiter.take("r", limit, 1)
            await limiter.give_back("r", limit, 2)
            third = await limiter.take("r", limit, 5)
            assert second.retry_after_ms > 0
            return [first.granted, second.granted, third.granted]
        finally:
            await client.close()

    assert asyncio.run(scenario()) == [3, 0, 2]
    bucket = db.reactgen_rate_limits.find_one({"_id": "r"})
    assert bucket is not None and isinstance(bucket["refilledAt"], datetime.datetime)
