"""Server CPU per statement for each write the runtime sends, on the embedded server.

Usage::

    python bench/statement_costs.py                 # 3,000 statements per shape
    python bench/statement_costs.py --count 10000

It starts a fresh in-memory embedded server and, through PyMongo, sends each shape of statement
the runtime uses against a tasks collection with the runtime's four indexes (``reactgen_task_key``
unique, ``reactgen_claim``, ``reactgen_status``, ``reactgen_expiry``), built by the runtime's own
functions (``runtime.task_plans``, ``runtime.task_store``):

* the planner's write of a new task: the fenced pipeline upsert, and the plain insert of
  ``task_plans.new_task`` that replaces it for inserted sources;
* the planner's upsert of a task whose snapshot did not change (a replayed event);
* a claim's compare-and-set (bulks of 10, as claim rounds send them);
* a completed execution's finalize (bulks of 10);
* a ``ping``: the server's fixed cost of one command.

Prints a markdown table: µs of server CPU (utime + stime of the server process from
``/proc/<pid>/stat``) and of wall time per statement. Runs move by 10-20% with the load of the
machine: compare two versions by alternating runs.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bson import ObjectId
from pymongo import ASCENDING, MongoClient, UpdateOne
from pymongo.collection import Collection

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pydantic import BaseModel

from runtime.embedded.process import EmbeddedServer
from runtime.reactor import Policies, ReactorSpec
from runtime.task_plans import new_task, plan_update
from runtime.task_store import Claimed, TaskStore

Coll = Collection[dict[str, Any]]
BULK = 10
LEASE_MS = 30_000


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tasks_collection(client: MongoClient[dict[str, Any]], name: str) -> Coll:
    """A fresh tasks collection with the runtime's indexes."""
    coll = client.bench[name]
    coll.create_index([("reactor", ASCENDING), ("sourceId", ASCENDING)],
                      name="reactgen_task_key", unique=True)
    coll.create_index([("reactor", ASCENDING), ("nextRunAt", ASCENDING)], name="reactgen_claim")
    coll.create_index([("reactor", ASCENDING), ("status", ASCENDING)], name="reactgen_status")
    coll.create_index([("expiresAt", ASCENDING)], name="reactgen_expiry", expireAfterSeconds=0)
    return coll


def no_op_reactor() -> ReactorSpec:
    """The benchmarks' reactor: on ``items``, default policies (no debounce)."""
    return ReactorSpec(name="noop", collection="items", database=None, model=BaseModel,
                       watched_model=BaseModel, filter={}, watch=None, pipeline=[],
                       policies=Policies(), handler="h", trigger_fingerprint="", source="")


def main() -> int:
    """Measure every shape and print the table."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=3000, help="statements per shape")
    count = parser.parse_args().count
    reactor = no_op_reactor()
    store = TaskStore(None, LEASE_MS, "bench-0")  # type: ignore[arg-type]  # builders only
    rows: list[tuple[str, float, float]] = []
    with EmbeddedServer() as server:
        client: MongoClient[dict[str, Any]] = MongoClient(server.uri)
        pid = server.pid
        assert pid is not None

        def measure(name: str, send: Callable[[], Any], statements: int) -> None:
            cpu, began = cpu_seconds(pid), time.perf_counter()
            send()
            wall = time.perf_counter() - began
            rows.append((name, (cpu_seconds(pid) - cpu) / statements * 1e6,
                         wall / statements * 1e6))

        sources = [ObjectId() for _ in range(count)]

        def snapshot(i: int) -> dict[str, Any]:
            return {"n": i}

        upserted = tasks_collection(client, "upserted")

        def upsert_all() -> None:
            for first in range(0, count, 1000):
                upserted.bulk_write([plan_update(reactor, sources[i], snapshot(i), 3)
                                     for i in range(first, min(count, first + 1000))],
                                    ordered=False)

        measure("planner: new task, pipeline upsert", upsert_all, count)
        measure("planner: unchanged task, pipeline upsert", upsert_all, count)
        inserted = tasks_collection(client, "inserted")
        now = datetime.datetime.now(datetime.UTC).replace(tzinfo=None)
        measure("planner: new task, insert (new_task)", lambda: [
            inserted.insert_many([new_task(reactor, sources[i], snapshot(i), 3, now)
                                  for i in range(first, min(count, first + 1000))],
                                 ordered=False)
            for first in range(0, count, 1000)], count)

        due = list(inserted.find({}, {"history": 0}))

        def claim_all() -> None:
            for first in range(0, len(due), BULK):
                inserted.bulk_write([UpdateOne(
                    {"_id": d["_id"], "nextRunAt": d["nextRunAt"], "status": d["status"],
                     "snapshotHash": d["snapshotHash"],
                     "$expr": {"$lte": ["$nextRunAt", "$$NOW"]}},
                    store._claim_pipeline(ObjectId())) for d in due[first:first + BULK]],
                    ordered=False)

        measure(f"claim compare-and-set (bulks of {BULK})", claim_all, len(due))
        held = list(inserted.find({}, {"_id": 1, "lease": 1}))

        def finalize_all() -> None:
            for first in range(0, len(held), BULK):
                ops = []
                for doc in held[first:first + BULK]:
                    query, update = store.finalize_update(
                        Claimed(doc, doc["lease"]["claim"]), "completed", error=None,
                        history_limit=10, duration_ms=1.0, debounce="$$NOW")
                    ops.append(UpdateOne(query, update))
                inserted.bulk_write(ops, ordered=False)

        measure(f"finalize, completed (bulks of {BULK})", finalize_all, len(held))
        measure("ping (one command)", lambda: [client.admin.command("ping")
                                               for _ in range(count)], count)
    print(f"{count:,} statements per shape; µs per statement\n")
    print("| statement | server CPU µs | wall µs |")
    print("|---|---:|---:|")
    for name, cpu, wall in rows:
        print(f"| {name} | {cpu:,.0f} | {wall:,.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
