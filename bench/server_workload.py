"""Server CPU per task on the runtime's hot path, replayed against the embedded server.

Usage::

    python bench/server_workload.py                 # 10,000 tasks
    python bench/server_workload.py --tasks 2000    # quicker
    python bench/server_workload.py --profile out.prof   # also cProfile the server

It starts a fresh in-memory embedded server process
(:class:`runtime.embedded.process.EmbeddedServer`) and replays through PyMongo the commands the
runtime sends for each task, in rounds of 1,000 source documents:

* **source writes**: ``insert_many`` of 1,000 small documents into ``app.items``;
* **planner**: a change stream on ``items`` (``$match`` on the operation type, ``$project``)
  read to the end, then one unordered ``bulk_write`` of 1,000 upserts into ``items_tasks`` with
  the planner's filter ``{reactor, sourceId, plannerToken: {$not: {$gt: 7}}}`` and its
  three-stage pipeline update (the shape of ``runtime/task_store.py::plan_update``);
* **claim rounds** of up to 10 tasks: a bounded ``find`` of due candidates (index-served by
  ``reactgen_claim``), a fenced ``update_many`` claiming them with a pipeline update, a ``find``
  of the claimed documents by ``lease.claim``;
* **finalize**: one ``bulk_write`` of up to 10 fenced pipeline ``UpdateOne`` (the shape of
  ``TaskStore.finalize_update``);
* **wake-up stream**: a change stream on ``items_tasks`` (the shape of ``runtime/wakeup.py``,
  ``fullDocument: updateLookup``) drained after every claim round.

It prints markdown tables: server CPU seconds per 1,000 tasks (utime + stime of the server
process from ``/proc/<pid>/stat``, before and after the replay, and split by workload phase),
commands per second, and per command type the count and the mean round trip in µs
(client-side, from PyMongo's command monitoring: it includes the server's work and the loopback
transport). ``--profile FILE`` runs the server under cProfile (CPU time) and writes its
statistics to FILE on shutdown.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from bson import ObjectId
from pymongo import ASCENDING, IndexModel, MongoClient, UpdateOne
from pymongo.monitoring import (
    CommandFailedEvent,
    CommandListener,
    CommandStartedEvent,
    CommandSucceededEvent,
)

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from runtime.embedded.process import EmbeddedServer

REACTOR = "r1"
TOKEN = 7
LEASE_MS = 30_000
ROUND = 1_000
CLAIM_BATCH = 10
PENDING, PROCESSING, DIRTY, COMPLETED = "pending", "processing", "processing_dirty", "completed"
RUNNING = [PROCESSING, DIRTY]


class Commands(CommandListener):
    """Counts commands and sums their round trips by command name."""

    def __init__(self) -> None:
        self.count: dict[str, int] = defaultdict(int)
        self.micros: dict[str, int] = defaultdict(int)
        self.enabled = False

    def started(self, event: CommandStartedEvent) -> None:
        """Nothing to do when a command starts."""

    def succeeded(self, event: CommandSucceededEvent) -> None:
        """Record one finished command."""
        if self.enabled:
            self.count[event.command_name] += 1
            self.micros[event.command_name] += event.duration_micros

    def failed(self, event: CommandFailedEvent) -> None:
        """Record a failed command like a successful one."""
        if self.enabled:
            self.count[event.command_name] += 1
            self.micros[event.command_name] += event.duration_micros


def cpu_times(pid: int) -> tuple[float, float]:
    """(utime, stime) of a process, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def plan_update(source_id: Any, snapshot: Any, digest: str) -> UpdateOne:
    """The planner's upsert (shape of ``runtime/task_store.py::plan_update``, debounce 0)."""
    status = {"$ifNull": ["$status", "none"]}
    running = {"$in": [status, RUNNING]}
    changed = {"$or": [{"$ne": [{"$ifNull": ["$snapshotHash", None]}, digest]},
                       {"$ne": [{"$type": "$expiresAt"}, "missing"]}]}
    pipeline: list[dict[str, Any]] = [
        {"$set": {"_changed": changed}},
        {"$set": {"_anchor": {"$cond": [
            {"$and": ["$_changed", {"$not": [{"$in": [status, [PENDING, DIRTY]]}]}]},
            "$$NOW", "$firstChangeAt"]}}},
        {"$set": {
            "reactor": REACTOR,
            "sourceId": {"$literal": source_id},
            "snapshot": {"$cond": ["$_changed", {"$literal": snapshot}, "$snapshot"]},
            "snapshotHash": digest,
            "status": {"$cond": ["$_changed", {"$cond": [running, DIRTY, PENDING]}, "$status"]},
            "firstChangeAt": "$_anchor",
            "nextRunAt": {"$cond": ["$_changed", {"$cond": [running, "$nextRunAt", "$$NOW"]},
                                    "$nextRunAt"]},
            "dueAt": {"$cond": ["$_changed", {"$cond": [running, "$dueAt", "$$NOW"]},
                                "$dueAt"]},
            "attempts": {"$cond": [{"$and": ["$_changed", True, {"$not": [running]}]}, 0,
                                   {"$ifNull": ["$attempts", 0]}]},
            "firstErrorAt": {"$cond": [{"$and": ["$_changed", True]}, None,
                                       {"$ifNull": ["$firstErrorAt", None]}]},
            "lastError": {"$cond": [{"$and": ["$_changed", True]}, None,
                                    {"$ifNull": ["$lastError", None]}]},
            "createdAt": {"$ifNull": ["$createdAt", "$$NOW"]},
            "updatedAt": {"$cond": ["$_changed", "$$NOW", "$updatedAt"]},
            "skipReason": {"$cond": ["$_changed", None, "$skipReason"]},
            "planningError": {"$cond": ["$_changed", "$$REMOVE", "$planningError"]},
            "plannerToken": TOKEN,
        }},
        {"$unset": ["_changed", "_anchor", "expiresAt"]},
    ]
    return UpdateOne({"reactor": REACTOR, "sourceId": source_id,
                      "plannerToken": {"$not": {"$gt": TOKEN}}}, pipeline, upsert=True)


def finalize_update(task_id: Any, claim: ObjectId) -> UpdateOne:
    """A completed execution (shape of ``TaskStore.finalize_update``, history of 10)."""
    dirty = {"$eq": ["$status", DIRTY]}
    entry = {"at": "$$NOW", "status": COMPLETED, "attempt": "$attempts", "by": "$lease.owner",
             "durationMs": 0.123}
    return UpdateOne({"_id": task_id, "lease.claim": claim}, [{"$set": {
        "status": {"$cond": [dirty, PENDING, COMPLETED]},
        "nextRunAt": {"$cond": [dirty, "$$NOW", None]},
        "dueAt": {"$cond": [dirty, "$$NOW", "$dueAt"]},
        "lastFinalizedAt": "$$NOW",
        "lastError": None, "lastTraceback": None, "completedAt": "$$NOW",
        "firstErrorAt": {"$cond": [dirty, None, None]},
        "attempts": {"$cond": [dirty, 0, "$attempts"]},
        "history": {"$slice": [{"$concatArrays": [{"$ifNull": ["$history", []]}, [entry]]}, -10]},
        "lease": None,
        "lastClaim": claim,
    }}])


def wakeup_pipeline(instance: str) -> list[dict[str, Any]]:
    """The wake-up stream's server-side filter and projection (shape of ``runtime/wakeup.py``)."""
    tasks = {"$in": ["items_tasks"]}
    return [
        {"$match": {"operationType": {"$in": ["insert", "update", "replace"]}, "$or": [
            {"ns.coll": tasks, "fullDocument.status": {"$in": [PENDING, COMPLETED, "failed",
                                                               "skipped"]}},
            {"ns.coll": tasks, "fullDocument.status": {"$in": RUNNING},
             "fullDocument.lease.owner": {"$ne": instance}},
        ]}},
        {"$project": {"ns.coll": 1, "documentKey": 1, "fullDocument.reactor": 1,
                      "fullDocument.status": 1, "fullDocument.nextRunAt": 1,
                      "fullDocument.lease.owner": 1, "fullDocument.expiresAt": 1}},
    ]


def claim_round(tasks: Any, instance: str) -> int:
    """Claim up to 10 due tasks, read them back, finalize them; returns how many."""
    now = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=1)
    due = {"reactor": REACTOR, "nextRunAt": {"$lte": now},
           "$expr": {"$lte": ["$nextRunAt", "$$NOW"]}}
    ids = [d["_id"] for d in tasks.find(due, {"_id": 1}).sort("nextRunAt", 1).limit(CLAIM_BATCH)]
    if not ids:
        return 0
    claim = ObjectId()
    tasks.update_many({"_id": {"$in": ids}, **due}, [{"$set": {
        "status": PROCESSING,
        "claimedDue": "$nextRunAt",
        "attempts": {"$add": [{"$ifNull": ["$attempts", 0]}, 1]},
        "nextRunAt": {"$add": ["$$NOW", LEASE_MS]},
        "startedAt": "$$NOW",
        "lease": {"owner": instance, "claim": claim,
                  "expiresAt": {"$add": ["$$NOW", LEASE_MS]}},
    }}])
    held = list(tasks.find({"_id": {"$in": ids}, "lease.claim": claim}))
    tasks.bulk_write([finalize_update(d["_id"], claim) for d in held], ordered=False)
    return len(held)


def drain(stream: Any) -> int:
    """Read the events a stream has now (the last getMore waits at most its await time)."""
    n = 0
    while stream.try_next() is not None:
        n += 1
    return n


class Phases:
    """Server CPU seconds by workload phase (read from ``/proc`` around each phase: 10 ms
    ticks, so single phases are coarse but the sums over a run are not biased)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.seconds: dict[str, float] = defaultdict(float)
        self._last = sum(cpu_times(pid))

    def mark(self, phase: str) -> None:
        """Charge the server CPU used since the previous mark to ``phase``."""
        now = sum(cpu_times(self.pid))
        self.seconds[phase] += now - self._last
        self._last = now


def replay(uri: str, total: int, listener: Commands, phases: Phases) -> tuple[int, int]:
    """Run the workload for ``total`` tasks; returns (tasks completed, wake-up events)."""
    client: MongoClient[dict[str, Any]] = MongoClient(uri, event_listeners=[listener])
    db = client.app
    db.items.drop()
    db.items_tasks.drop()
    db.items_tasks.create_indexes([
        IndexModel([("reactor", ASCENDING), ("nextRunAt", ASCENDING)], name="reactgen_claim"),
        IndexModel([("reactor", ASCENDING), ("sourceId", ASCENDING)], unique=True),
        IndexModel([("expiresAt", ASCENDING)], expireAfterSeconds=0),
    ])
    db.create_collection("items")
    instance = "bench-1"
    source = db.items.watch([{"$match": {"operationType": {"$in": ["insert", "update",
                                                                     "replace", "delete"]}}},
                             {"$project": {"documentKey": 1, "operationType": 1,
                                           "fullDocument": 1}}],
                            max_await_time_ms=1, batch_size=ROUND)
    wakeup = db.items_tasks.watch(wakeup_pipeline(instance), full_document="updateLookup",
                                  max_await_time_ms=1)
    listener.enabled = True
    done = events = 0
    next_id = 0
    phases.mark("setup")
    while done < total:
        db.items.insert_many([{"_id": next_id + i, "n": 1} for i in range(ROUND)])
        next_id += ROUND
        phases.mark("source insert_many")
        planned: list[UpdateOne] = []
        while len(planned) < ROUND:
            change = source.try_next()
            if change is None:
                continue
            source_id = change["documentKey"]["_id"]
            planned.append(plan_update(source_id, {"n": 1}, f"h{source_id}"))
        phases.mark("planner stream getMore")
        db.items_tasks.bulk_write(planned, ordered=False)
        phases.mark("planner upsert bulk_write")
        events += drain(wakeup)
        phases.mark("wake-up stream getMore")
        while (claimed := claim_round(db.items_tasks, instance)):
            done += claimed
            phases.mark("claim + finalize")
            events += drain(wakeup)
            phases.mark("wake-up stream getMore")
    listener.enabled = False
    source.close()
    wakeup.close()
    client.close()
    return done, events


def cpu_model() -> str:
    """The processor model from ``/proc/cpuinfo``."""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def main() -> None:
    """Parse arguments, run the replay against a fresh server, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--profile", help="write a cProfile of the server to this file")
    args = parser.parse_args()
    env = {}
    extra: list[str] = []
    if args.profile:
        env["REACTGEN_EMBEDDED_PROFILE"] = str(Path(args.profile).resolve())
    listener = Commands()
    with EmbeddedServer(extra_args=extra, env=env) as server:
        assert server.pid is not None and server.uri is not None
        user_before, system_before = cpu_times(server.pid)
        started = time.perf_counter()
        phases = Phases(server.pid)
        done, events = replay(server.uri, args.tasks, listener, phases)
        elapsed = time.perf_counter() - started
        user_after, system_after = cpu_times(server.pid)
        user, system = user_after - user_before, system_after - system_before
        cpu = user + system
    commands = sum(listener.count.values())
    print(f"Machine: {cpu_model()}, {os.cpu_count()} cores, Python "
          f"{platform.python_version()}; {done} tasks, {events} wake-up events\n")
    print("| metric | value |\n|---|---|")
    print(f"| server CPU s per 1,000 tasks | {cpu / done * 1000:.3f} |")
    print(f"| of which kernel (stime) | {system / done * 1000:.3f} |")
    print(f"| commands per task | {commands / done:.2f} |")
    print(f"| commands/s | {commands / elapsed:,.0f} |")
    print(f"| wall s per 1,000 tasks | {elapsed / done * 1000:.3f} |\n")
    print("| phase | server CPU s per 1,000 tasks |\n|---|---|")
    for phase, seconds in phases.seconds.items():
        if phase != "setup":
            print(f"| {phase} | {seconds / done * 1000:.3f} |")
    print()
    print("| command | count | mean µs |\n|---|---|---|")
    for name in sorted(listener.count, key=lambda n: -listener.micros[n]):
        count = listener.count[name]
        print(f"| {name} | {count:,} | {listener.micros[name] / count:,.0f} |")


if __name__ == "__main__":
    main()
