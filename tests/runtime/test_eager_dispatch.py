"""Eager dispatch: the planner hands new tasks straight to its own instance's free slots.

The task is inserted already claimed (one write fewer, no claim round) when the planning
instance has room and knows of no due work of the reactor; otherwise it is inserted pending and
claimed as usual. These tests check the write sequence a task goes through, that a crash of
the instance running an eagerly dispatched task hands it to another instance when its lease
expires, that new work never overtakes known due work, and the rules of
:meth:`runtime.worker.WorkerPool.reserve` in process.
"""

from __future__ import annotations

import datetime
from typing import Any

import pytest
from bson import ObjectId
from conftest import AppBuilder, RuntimeFactory
from pymongo import AsyncMongoClient, MongoClient
from pymongo.database import Database
from reactive_support import watch_task_writes
from scenario import build, fail_point, release, runs_of, start, task_of
from support import reactor_spec, wait_until

from runtime.middleware import Middleware
from runtime.reactor import DebouncePolicy, KeyConcurrency, RateLimit
from runtime.scheduler import Scheduler
from runtime.server_time import ServerClock
from runtime.task_plans import EagerClaim, new_task, plan_update, snapshot_hash
from runtime.task_store import TaskStore
from runtime.worker import WorkerPool

Db = Database[dict[str, Any]]


@pytest.mark.parametrize("eager", [True, False], ids=["eager", "claim-rounds"])
def test_a_due_task_is_claimed_by_the_planners_own_write(
        make_app: AppBuilder, start_runtime: RuntimeFactory, db: Db, eager: bool) -> None:
    """Idle instance, one change at a time. With eager dispatch the planner's write claims the
    task: an inserted source's task is inserted claimed, a changed source's task is claimed by
    its upsert, and each execution costs that write and its finalization. Without, the task
    is written pending and a claim round claims it (a third write)."""
    app = build(make_app)
    # No idle poll: a claim round in flight (as the idle poll starts one every 5 s) would
    # rightly make the planner write the task pending.
    runtime = start(start_runtime, app, "a", "--eager-dispatch", "on" if eager else "off",
                    "--idle-poll-ms", "600000")
    runtime.wait_for_log(r"event=leader\.gained instance=a")
    sources = [f"s{i}" for i in range(4)]

    def ran(source: str, times: int) -> None:
        wait_until(lambda: (t := task_of(db, source)) is not None and t["status"] == "completed"
                   and len(t.get("history") or []) == times, message=f"{source} ran {times}x")

    with watch_task_writes(db) as writes:
        for source in sources:
            db.things.insert_one({"_id": source, "n": 1})
            ran(source, 1)
        for source in sources:  # a watched value changes: the completed task is due again
            db.things.update_one({"_id": source}, {"$set": {"n": 2}})
            ran(source, 2)
        wait_until(lambda: len(writes.inserts) == len(sources) and all(
            len(writes.finalizations(t["_id"])) == 2 for t in writes.inserts))
    runtime.stop()
    for inserted in writes.inserts:
        updates = writes.updates_of(inserted["_id"])
        statuses = [u.get("status") for u in updates]
        if eager:
            assert inserted["status"] == "processing", inserted
            assert inserted["lease"]["owner"] == "a" and inserted["attempts"] == 1
            assert inserted["nextRunAt"] == inserted["lease"]["expiresAt"]
            # finalized; planned and claimed in one upsert; finalized
            assert statuses == ["completed", "processing", "completed"], updates
            assert updates[1]["lease"]["owner"] == "a"
        else:
            assert inserted["status"] == "pending", inserted
            assert statuses == ["processing", "completed", "pending", "processing",
                                "completed"], updates
    for source in sources:
        task = task_of(db, source)
        assert task is not None and task["attempts"] == 1 and task["lease"] is None
        assert [h["by"] for h in task["history"]] == ["a", "a"]
        assert task["claimedDue"] <= task["startedAt"] < task["completedAt"]


def test_an_eagerly_dispatched_task_of_a_dead_instance_runs_elsewhere_after_its_lease(
        make_app: AppBuilder, start_runtime: RuntimeFactory, db: Db) -> None:
    app = build(make_app)
    short = ["--task-lease-ms", "1500", "--leader-ttl-ms", "1000"]
    a = start(start_runtime, app, "a", *short)
    a.wait_for_log(r"event=leader\.gained instance=a")
    b = start(start_runtime, app, "b", *short)
    db.things.insert_one({"_id": "held", "n": 1, "block": True})
    first = wait_until(lambda: runs_of(db, "held"), message="first execution started")[0]
    assert first["instance"] == "a"  # the planner's own instance took it at once
    task = task_of(db, "held")
    assert task is not None and task["lease"]["owner"] == "a" and task["attempts"] == 1
    a.kill()
    second = wait_until(lambda: len(runs_of(db, "held")) == 2 and runs_of(db, "held")[1],
                        timeout=30, message="the task ran again after the lease expired")
    assert second["instance"] == "b" and second["attempt"] == 2
    release(db)
    done = wait_until(lambda: (t := task_of(db, "held")) and t["status"] == "completed" and t,
                      timeout=20)
    assert [h["by"] for h in done["history"]] == ["b"]
    b.stop()


@pytest.mark.parametrize("command", ["insert", "update"])
def test_a_failed_planner_write_gives_its_reserved_slots_back(
        make_app: AppBuilder, start_runtime: RuntimeFactory, client: MongoClient[dict[str, Any]],
        db: Db, command: str) -> None:
    """One slot. The planner's write (the insert of a new task, or the upsert of a changed
    one) fails once; the planner retries it, the task runs, and so does later work: the slot
    reserved for the failed write came back (a leaked one would stop this instance)."""
    app = build(make_app)
    a = start(start_runtime, app, "a", "--concurrency", "1", "--idle-poll-ms", "600000")
    # The start-up scan's own writes are done: the planner's next write is the task's.
    a.wait_for_log(r"event=scan\.finished")

    def completed(source: str, runs: int) -> None:
        wait_until(lambda: (t := task_of(db, source)) is not None and t["status"] == "completed"
                   and len(t.get("history") or []) == runs, message=f"{source} ran {runs}x")

    if command == "update":
        db.things.insert_one({"_id": "s", "n": 1})
        completed("s", 1)
    # BadValue: not an error the driver retries by itself.
    with fail_point(client, {"failCommands": [command], "appName": "reactgen-a-planner",
                             "errorCode": 2}, mode={"times": 1}):
        if command == "insert":
            db.things.insert_one({"_id": "s", "n": 1})
        else:
            db.things.update_one({"_id": "s"}, {"$set": {"n": 2}})
        a.wait_for_log(r"event=planner\.batch_failed")
        completed("s", 1 if command == "insert" else 2)
    for later in ("t", "u"):
        db.things.insert_one({"_id": later, "n": 1})
        completed(later, 1)
    a.stop()


def test_new_work_never_overtakes_known_due_work(
        make_app: AppBuilder, start_runtime: RuntimeFactory, db: Db) -> None:
    """One slot, busy: later documents are inserted pending; when the slot frees, they run
    in due order, and work planned while they wait joins the queue behind them."""
    app = build(make_app)
    a = start(start_runtime, app, "a", "--concurrency", "1")
    a.wait_for_log(r"event=leader\.gained instance=a")
    db.things.insert_one({"_id": "first", "n": 0, "block": True})
    wait_until(lambda: runs_of(db, "first"), message="first execution started")
    for i in range(3):
        db.things.insert_one({"_id": f"queued{i}", "n": i, "hold_ms": 30})
    wait_until(lambda: all((task_of(db, f"queued{i}") or {}).get("status") == "pending"
                           for i in range(3)), message="queued tasks pending")
    release(db)
    for i in range(3):
        db.things.insert_one({"_id": f"late{i}", "n": i})
    wait_until(lambda: db.things_tasks.count_documents({"status": "completed"}) == 7,
               timeout=30)
    order = [r["source"] for r in db.runs.find().sort("startedAt", 1)]
    assert order[:4] == ["first", "queued0", "queued1", "queued2"], order
    a.stop()


CLAIM_TIMES = ("claimedDue", "startedAt", "nextRunAt", "firstChangeAt", "dueAt", "createdAt",
               "updatedAt")


@pytest.mark.parametrize("before", [
    None,
    {"status": "completed", "attempts": 2, "snapshotHash": "old", "lease": None,
     "history": [{"status": "completed"}]},
    {"status": "failed", "attempts": 5, "snapshotHash": "old", "lastError": "boom",
     "lease": None},
    {"status": "pending", "attempts": 1, "snapshotHash": "old"},
], ids=["new", "completed", "failed", "pending"])
def test_an_upsert_claims_a_task_it_makes_due_as_a_claim_round_would(
        db: Db, before: dict[str, Any] | None) -> None:
    """The planner's upsert with a claim gives the task what the plain upsert followed by a
    claim round's compare-and-set gives it (times aside: both are the server's now)."""
    reactor = reactor_spec("r", "things")
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(connect=False)
    store = TaskStore(client.app.tasks, 30_000, "me")
    claim = EagerClaim(ObjectId(), "me", 30_000)
    for name in ("eager", "rounds"):
        db[name].create_index([("reactor", 1), ("sourceId", 1)], unique=True)
        if before is not None:
            db[name].insert_one({"_id": 1, "reactor": "r", "sourceId": "s", **before})
    db.eager.bulk_write([plan_update(reactor, "s", {"n": 1}, 1, None, claim)])
    db.rounds.bulk_write([plan_update(reactor, "s", {"n": 1}, 1)])
    db.rounds.update_one({"sourceId": "s"}, store._claim_pipeline(claim.claim))
    eager, rounds = db.eager.find_one({}, {"_id": 0}), db.rounds.find_one({}, {"_id": 0})
    assert eager is not None and rounds is not None
    assert eager["status"] == "processing" and eager["lease"]["claim"] == claim.claim
    for name in CLAIM_TIMES:
        ours, theirs = eager.pop(name, None), rounds.pop(name, None)
        assert type(ours) is type(theirs), name
    assert isinstance(eager["lease"].pop("expiresAt"), datetime.datetime)
    assert isinstance(rounds["lease"].pop("expiresAt"), datetime.datetime)
    assert eager == rounds


@pytest.mark.parametrize("before", [
    {"status": "processing", "attempts": 1, "snapshotHash": "old",
     "lease": {"owner": "other", "claim": "theirs"}},
    {"status": "completed", "attempts": 1, "lease": None},
], ids=["running", "unchanged"])
def test_an_upsert_leaves_a_running_or_unchanged_task_unclaimed(
        db: Db, before: dict[str, Any]) -> None:
    reactor = reactor_spec("r", "things")
    claim = EagerClaim(ObjectId(), "me", 30_000)
    db.tasks.create_index([("reactor", 1), ("sourceId", 1)], unique=True)
    if "snapshotHash" not in before:
        before = {**before, "snapshotHash": snapshot_hash({"n": 1}), "snapshot": {"n": 1}}
    db.tasks.insert_one({"_id": 1, "reactor": "r", "sourceId": "s", **before})
    db.tasks.bulk_write([plan_update(reactor, "s", {"n": 1}, 1, None, claim)])
    task = db.tasks.find_one({"_id": 1})
    assert task is not None
    assert task["status"] == ("processing_dirty" if before["status"] == "processing"
                              else "completed")
    assert task["lease"] == before["lease"] and task["attempts"] == 1


# -- in process: what WorkerPool.reserve hands out ---------------------------------------


def _pool(reactors: list[Any], concurrency: int) -> tuple[WorkerPool, Scheduler]:
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(connect=False)
    stores = {r.name: TaskStore(client.app[f"{r.collection}_tasks"], 30_000, "me")
              for r in reactors}
    scheduler = Scheduler(reactors, idle_poll_ms=5_000)

    async def no_throttle(*_: Any) -> None:
        return None

    pool = WorkerPool({r.name: r for r in reactors}, {r.name: print for r in reactors},
                      stores, {}, scheduler, ServerClock(), Middleware(), concurrency, 6_000,
                      "me", no_throttle)
    return pool, scheduler


def _idle(scheduler: Scheduler, name: str) -> None:
    """Run the start-up claim round of ``name`` and let it miss twice (the GRACE retry)."""
    now = ServerClock().now()
    assert scheduler.next_reactor(now) == name
    scheduler.missed(name, now)
    scheduler.missed(name, now + datetime.timedelta(seconds=1))


def test_reserve_promises_only_free_slots_of_an_idle_reactor() -> None:
    plain = reactor_spec("plain", "things")
    pool, scheduler = _pool([plain], concurrency=3)
    # Start-up: every reactor is tried once, so nothing is handed out before that round.
    scheduler.start(ServerClock().now())
    assert pool.reserve(plain, 5) is None
    _idle(scheduler, "plain")
    reservation = pool.reserve(plain, 5)
    assert reservation is not None and reservation.slots == 3
    assert reservation.store is pool.stores["plain"]
    assert pool.reserve(plain, 1) is None  # every slot is promised
    pool.give_back(plain, 1)
    again = pool.reserve(plain, 2)
    assert again is not None and again.slots == 1
    # Known due work of the reactor: new work waits behind it.
    pool.give_back(plain, 3)
    scheduler.note_due("plain", ServerClock().now() - datetime.timedelta(seconds=1))
    assert pool.reserve(plain, 1) is None


def test_a_new_task_is_claimed_with_the_fields_of_a_claim_round() -> None:
    plain = reactor_spec("plain", "things")
    pool, _ = _pool([plain], concurrency=3)
    now = datetime.datetime(2030, 1, 1)
    doc = new_task(plain, "s1", {"n": 1}, 1, now)
    held = pool.stores["plain"].claim_new(doc, now)
    assert held.doc is doc and held.task_id == doc["_id"]
    assert doc["status"] == "processing" and doc["attempts"] == 1
    assert doc["lease"] == {"owner": "me", "claim": held.claim,
                            "expiresAt": now + datetime.timedelta(seconds=30)}
    assert doc["nextRunAt"] == doc["lease"]["expiresAt"]
    assert doc["claimedDue"] == now and doc["startedAt"] == now


@pytest.mark.parametrize("policies", [
    {"cluster_concurrency": 2},
    {"key_concurrency": KeyConcurrency(expression="$customer", max=1)},
    {"rate_limit": RateLimit(max=5, per_ms=1000)},
    {"debounce": DebouncePolicy(delay_ms=200)},
], ids=["cluster-concurrency", "key-concurrency", "rate-limit", "debounce"])
def test_reactors_whose_claims_consult_the_database_are_never_dispatched_eagerly(
        policies: dict[str, Any]) -> None:
    limited = reactor_spec("limited", "things", **policies)
    pool, scheduler = _pool([limited], concurrency=3)
    assert scheduler.idle("limited", ServerClock().now())
    assert pool.reserve(limited, 1) is None


def test_a_paused_reactor_or_a_draining_pool_gets_nothing() -> None:
    plain = reactor_spec("plain", "things")
    pool, scheduler = _pool([plain], concurrency=3)
    scheduler.pause("plain", True)
    assert pool.reserve(plain, 1) is None
    scheduler.pause("plain", False)
    assert not scheduler.idle("plain", ServerClock().now())  # resumed: due at once
    _idle(scheduler, "plain")
    assert pool.reserve(plain, 1) is not None
    scheduler.stopping = True
    assert pool.reserve(plain, 1) is None
