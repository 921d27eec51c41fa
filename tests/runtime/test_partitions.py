"""Partitioned planning (``--planner-partitions N``) between real ``runtime serve`` processes.

Partition ``k`` of ``N`` plans the documents whose ``_id`` hashes (``$toHashedIndexKey``, on
the server) to ``k``; each has its own lease ``partition:<db>:<k>/<N>`` in ``reactgen_meta``
with a fencing token, its own change stream, position and scans. Which partition a document
belongs to is computed by the tests on the server too, never locally.
"""

from __future__ import annotations

import datetime
import re
import signal
import subprocess
import time
import uuid
from typing import Any

from conftest import AppBuilder, RuntimeFactory
from pymongo import MongoClient
from pymongo.database import Database
from runtime_harness import RuntimeProcess
from scenario import (
    build,
    build_many,
    count,
    fail_point,
    ms,
    runs_of,
    server_now,
    start,
    stays,
    task_of,
)
from support import wait_until

from runtime.management import ManagementSync
from runtime.meta import epoch_base

Doc = dict[str, Any]
N = 3
TTL_MS = 1500
ROUND_MS = TTL_MS // 3
MARGIN_MS = 700
"""Slack for a takeover: one balancing round, the clock estimate, a round trip, log lines."""
FLAGS = ["--planner-partitions", str(N), "--leader-ttl-ms", str(TTL_MS),
         "--task-lease-ms", "3000"]
HOUR = "      debounce: 1h\n"


def _partition_of(db: Database[Doc], ids: list[Any] | None = None) -> dict[Any, int]:
    """Source ``_id`` -> partition, computed by the database."""
    match = [{"$match": {"_id": {"$in": ids}}}] if ids is not None else []
    rows = db.things.aggregate([*match, {"$project": {"p": {"$abs": {"$mod": [
        {"$toHashedIndexKey": "$_id"}, N]}}}}])
    return {row["_id"]: int(row["p"]) for row in rows}


def _ids_in(db: Database[Doc], partition: int, how_many: int, prefix: str) -> list[str]:
    """``how_many`` fresh string ids that fall into ``partition`` (asked of the server through
    a scratch collection)."""
    candidates = [f"{prefix}{i:04}" for i in range(how_many * N * 8)]
    scratch = db[f"scratch_{uuid.uuid4().hex[:6]}"]
    scratch.insert_many([{"_id": c} for c in candidates])
    rows = scratch.aggregate([{"$project": {"p": {"$abs": {"$mod": [
        {"$toHashedIndexKey": "$_id"}, N]}}}}, {"$match": {"p": partition}}])
    found = sorted(row["_id"] for row in rows)[:how_many]
    scratch.drop()
    assert len(found) == how_many
    return found


def _leases(db: Database[Doc]) -> dict[int, Doc]:
    """Partition -> lease document."""
    docs = db.reactgen_meta.find({"_id": {"$regex": f"^partition:{db.name}:\\d+/{N}$"}})
    return {int(str(d["_id"]).rsplit(":", 1)[1].split("/")[0]): d for d in docs}


def _held(db: Database[Doc]) -> dict[int, str]:
    """Partition -> owner, for leases that have not run out (by the server's clock)."""
    docs = db.reactgen_meta.find({"_id": {"$regex": f"^partition:{db.name}:\\d+/{N}$"},
                                  "owner": {"$ne": None},
                                  "$expr": {"$gt": ["$expiresAt", "$$NOW"]}})
    return {int(str(d["_id"]).rsplit(":", 1)[1].split("/")[0]): str(d["owner"]) for d in docs}


def _spread(db: Database[Doc], instances: list[str]) -> dict[int, str] | None:
    """The assignment, once every partition is held and the instances hold
    ``ceil(N / len(instances))`` or ``floor(...)`` each."""
    held = _held(db)
    if len(held) != N or set(held.values()) - set(instances):
        return None
    counts = [list(held.values()).count(name) for name in instances]
    return held if max(counts) - min(counts) <= 1 else None


def _planning(process: RuntimeProcess, partition: int) -> bool:
    """Whether ``process`` logged that its planner of ``partition`` started (since it last
    gained it)."""
    log = process.log()
    gained = [m.end() for m in re.finditer(
        rf"event=partitions\.gained .*partition=partition:\S+:{partition}/{N}\b", log)]
    return bool(gained) and re.search(rf"event=planner\.started .*partition={partition}/{N}\b",
                                      log[gained[-1]:]) is not None


def _stable(db: Database[Doc], processes: dict[str, RuntimeProcess]) -> dict[int, str]:
    """Waits until the partitions are spread over ``processes`` and each holder plans."""
    def settled() -> dict[int, str] | None:
        held = _spread(db, list(processes))
        if held is None or not all(_planning(processes[o], k) for k, o in held.items()):
            return None
        return held
    return wait_until(settled, timeout=30, message="partitions spread over the instances")


def _events(processes: list[RuntimeProcess]) -> dict[int, int]:
    """Change events planned per partition, from the planners' DEBUG lines."""
    totals = {k: 0 for k in range(N)}
    for process in processes:
        for events, k in re.findall(rf"event=planner\.batch .*events=(\d+) partition=(\d+)/{N}",
                                    process.log()):
            totals[int(k)] += int(events)
    return totals


def _runs_once(db: Database[Doc], ids: list[str]) -> bool:
    per_source = {row["_id"]: row["n"] for row in db.runs.aggregate(
        [{"$match": {"source": {"$in": ids}}}, {"$group": {"_id": "$source", "n": {"$sum": 1}}}])}
    assert all(n == 1 for n in per_source.values()), \
        {k: n for k, n in per_source.items() if n != 1}
    return len(per_source) == len(ids)


def test_three_instances_each_plan_one_partition_and_every_document_once(
        make_app: AppBuilder, start_runtime: RuntimeFactory, db: Database[Doc]) -> None:
    app = build(make_app)
    processes = {name: start(start_runtime, app, name, *FLAGS) for name in ("a", "b", "c")}
    held = _stable(db, processes)
    assert sorted(held.values()) == ["a", "b", "c"]
    # `runtime instances` shows who holds which partition (from the heartbeats).
    host, port = db.client.address
    with ManagementSync(f"mongodb://{host}:{port}", db.name) as api:

        def one_each() -> dict[str, list[str]] | None:
            shown = {i.instance: i.partitions for i in api.instances().instances
                     if len(i.partitions) == 1}
            return shown if len(shown) == 3 else None

        shown = wait_until(one_each, timeout=10, message="each instance shows one partition")
    assert sorted(p for held in shown.values() for p in held) == [
        f"{db.name}:{k}/{N}" for k in range(N)], shown
    ids = [f"d{i:03}" for i in range(300)]
    for chunk in range(0, len(ids), 50):
        db.things.insert_many([{"_id": i, "n": 1} for i in ids[chunk:chunk + 50]])
    wait_until(lambda: _runs_once(db, ids), timeout=60, message="every document ran once")
    assert db.things_tasks.count_documents({}) == len(ids)
    sizes = {k: 0 for k in range(N)}
    for k in _partition_of(db).values():
        sizes[k] += 1
    assert all(sizes.values()), sizes
    # Each partition's stream delivered exactly its own documents' inserts (filtered on the
    # server: no partition saw another's).
    wait_until(lambda: _events(list(processes.values())) == sizes, timeout=10,
               message=f"events per partition {_events(list(processes.values()))} == {sizes}")
    # Each task was planned by its partition's holder, fenced with that partition's token.
    leases = _leases(db)
    partition_of = _partition_of(db)
    for task in db.things_tasks.find({}, {"sourceId": 1, "plannerToken": 1}):
        assert task["plannerToken"] == leases[partition_of[task["sourceId"]]]["token"]
    assert all(doc["token"] > epoch_base(1) for doc in leases.values())
    # The leader still plans nothing itself, but keeps the reactor's record.
    assert db.reactgen_meta.find_one({"_id": "reactor:record"})["fingerprint"]
    assert db.reactgen_meta.find_one({"_id": f"planner:{db.name}"}) is None


def test_sigkill_moves_the_partition_within_the_ttl_without_loss_or_repeat(
        make_app: AppBuilder, start_runtime: RuntimeFactory, db: Database[Doc]) -> None:
    app = build(make_app)
    processes = {name: start(start_runtime, app, name, *FLAGS) for name in ("a", "b", "c")}
    held = _stable(db, processes)
    victim = next(k for k, owner in held.items() if owner == "c")
    before = [f"b{i:03}" for i in range(60)]
    db.things.insert_many([{"_id": i, "n": 1} for i in before])
    wait_until(lambda: _runs_once(db, before), timeout=60)
    wait_until(lambda: db.runs.count_documents({"finishedAt": {"$exists": True}}) == 60)

    processes["c"].kill()
    last = _leases(db)[victim]  # c is dead: its last renewal happened before the kill
    assert last["owner"] == "c"
    after = [f"a{i:03}" for i in range(60)]
    db.things.insert_many([{"_id": i, "n": 1} for i in after])
    taken = wait_until(lambda: (lambda d: d if d.get("owner") in ("a", "b") else None)(
        _leases(db)[victim]), timeout=TTL_MS / 1000 + 10, message="a survivor takes it over")
    assert taken["acquiredAt"] >= last["expiresAt"], "taken before the lease ran out"
    delay_ms = ms(taken["acquiredAt"] - last["renewedAt"])
    assert TTL_MS <= delay_ms <= TTL_MS + ROUND_MS + MARGIN_MS, delay_ms
    assert taken["token"] > last["token"] and taken["tookOverFrom"] == "c"
    # The new holder continues from the saved position: nothing missed, nothing run twice.
    wait_until(lambda: _runs_once(db, before + after), timeout=60)
    in_victim = [i for i, k in _partition_of(db, after).items() if k == victim]
    assert in_victim, "some documents written after the kill belong to the dead partition"
    for source in in_victim:
        assert task_of(db, source)["plannerToken"] == taken["token"]
    stays(lambda: db.runs.count_documents({}) == 120, 1.0, "a document ran twice")


def test_instances_joining_and_leaving_rebalance(
        make_app: AppBuilder, start_runtime: RuntimeFactory, db: Database[Doc]) -> None:
    app = build(make_app)
    processes = {name: start(start_runtime, app, name, *FLAGS) for name in ("a", "b")}
    held = _stable(db, processes)
    assert sorted(list(held.values()).count(n) for n in ("a", "b")) == [1, 2]
    # A third instance joins: the one holding two gives one up, and the newcomer takes it.
    processes["c"] = start(start_runtime, app, "c", *FLAGS)
    held = _stable(db, processes)
    assert sorted(held.values()) == ["a", "b", "c"]
    assert count(processes["a"], r"event=partitions\.released") + count(
        processes["b"], r"event=partitions\.released") >= 1
    # A fourth joins: still one each (nobody holds more than its share, ceil(3/4) = 1).
    processes["d"] = start(start_runtime, app, "d", *FLAGS)
    stays(lambda: sorted(_held(db).values()) == ["a", "b", "c"], 2 * ROUND_MS / 1000 + 0.5,
          "a balanced assignment changed when a fourth instance joined")
    # One leaves gracefully: its partition is handed over at once, not after the TTL.
    leaving = _held(db)
    gone = next(k for k, owner in leaving.items() if owner == "c")
    assert processes.pop("c").stop() == 0
    taken = wait_until(lambda: (lambda d: d if d.get("owner") in ("a", "b", "d") and _valid(
        db, gone) else None)(_leases(db)[gone]), timeout=10)
    assert ms(taken["acquiredAt"] - taken["releasedAt"]) < TTL_MS
    _stable(db, processes)
    ids = [f"j{i:03}" for i in range(60)]
    db.things.insert_many([{"_id": i, "n": 1} for i in ids])
    wait_until(lambda: _runs_once(db, ids), timeout=60)


def _valid(db: Database[Doc], partition: int) -> bool:
    return partition in _held(db)


def test_each_partition_reconciles_after_history_loss(
        make_app: AppBuilder, start_runtime: RuntimeFactory, db: Database[Doc]) -> None:
    app = build(make_app, policies=HOUR)
    a = start(start_runtime, app, "a", *FLAGS)
    wait_until(lambda: all(_planning(a, k) for k in range(N)), timeout=30)
    db.things.insert_many([{"_id": f"d{i:03}", "n": 1} for i in range(90)])
    wait_until(lambda: db.things_tasks.count_documents({}) == 90, timeout=30)
    wait_until(lambda: count(a, r"event=scan\.finished collection=things") == N, timeout=30)
    assert a.stop() == 0
    # While nobody plans, documents change, and the saved positions become useless (as when
    # the oplog has rolled over): every partition must find the changes by scanning.
    db.things.update_many({}, {"$set": {"n": 2}})
    db.things.insert_many([{"_id": f"w{i:03}", "n": 1} for i in range(30)])
    for lease in _leases(db).values():
        db.reactgen_meta.update_one({"_id": lease["_id"]},
                                    {"$set": {"planning.resumeToken": {"_data": "00"}}})
    b = start(start_runtime, app, "b", *FLAGS)
    wait_until(lambda: count(b, r"event=planner\.history_lost") >= N, timeout=30)
    wait_until(lambda: count(b, r"event=scan\.finished collection=things") >= N, timeout=30)
    assert count(b, r"event=scan\.queued .*reasons='change-stream history lost'") >= N
    wait_until(lambda: db.things_tasks.count_documents({"snapshot": {"n": 2}}) == 90
               and db.things_tasks.count_documents({}) == 120, timeout=30)
    scans = list(db.reactgen_meta.find({"_id": {"$regex": f"^scan:{db.name}\\.things@"}}))
    assert sorted(s["partition"] for s in scans) == [f"{k}/{N}" for k in range(N)]
    sizes = {k: 0 for k in range(N)}
    for k in _partition_of(db).values():
        sizes[k] += 1
    finished = {s["partition"]: s["lastFinished"]["scanned"] for s in scans}
    assert finished == {f"{k}/{N}": sizes[k] for k in range(N)}, (finished, sizes)


def test_a_different_partition_count_is_refused_while_others_run(
        make_app: AppBuilder, start_runtime: RuntimeFactory, db: Database[Doc]) -> None:
    app = build(make_app)
    start(start_runtime, app, "a", *FLAGS)
    for other in (["--planner-partitions", "2"], []):
        b = start(start_runtime, app, f"b{len(other)}", *other, wait=False)
        assert b.process is not None
        try:
            code = b.process.wait(30)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"started with {other}:\n{b.log()[-3000:]}") from None
        assert code == 2
        assert re.search(r"--planner-partitions \d differs from live instance\(s\) a \(3\)",
                         b.log()), b.log()[-3000:]
    assert db.reactgen_meta.find_one({"_id": "partitioning"})["count"] == N


def test_changing_the_count_hands_over_with_a_scan(
        make_app: AppBuilder, start_runtime: RuntimeFactory, db: Database[Doc]) -> None:
    app = build(make_app)
    a = start(start_runtime, app, "a")
    ids = [f"d{i:03}" for i in range(60)]
    db.things.insert_many([{"_id": i, "n": 1} for i in ids])
    wait_until(lambda: _runs_once(db, ids), timeout=60)
    assert db.reactgen_meta.find_one({"_id": "partitioning"}) is None  # one: as before
    assert a.stop() == 0
    b = start(start_runtime, app, "b", *FLAGS)
    b.wait_for_log(r"event=partitions\.switched .*count=3 .*epoch=1 .*previous=1")
    wait_until(lambda: count(b, r"event=scan\.finished collection=things") >= N, timeout=30)
    assert count(b, r"event=scan\.queued .*reasons='planner partitions changed'") == N
    # Every task now carries a token of the new epoch (the scan stamped it; nothing ran
    # again because nothing changed).
    wait_until(lambda: db.things_tasks.count_documents(
        {"plannerToken": {"$gt": epoch_base(1)}}) == len(ids), timeout=10)
    assert db.runs.count_documents({}) == len(ids)
    db.things.insert_one({"_id": "new", "n": 1})
    wait_until(lambda: runs_of(db, "new"), timeout=30)
    # Back to one partition: a new epoch, and the leader's tokens beat the partitions'.
    assert b.stop() == 0
    c = start(start_runtime, app, "c")
    c.wait_for_log(r"event=partitions\.switched .*count=1 .*epoch=2 .*previous=3")
    db.things.update_one({"_id": "new"}, {"$set": {"n": 2}})
    wait_until(lambda: len(runs_of(db, "new")) == 2, timeout=30)
    assert task_of(db, "new")["plannerToken"] > epoch_base(2)


def test_a_deposed_partition_holder_cannot_overwrite_its_successor(
        make_app: AppBuilder, start_runtime: RuntimeFactory, client: MongoClient[Doc],
        db: Database[Doc]) -> None:
    # A holds partitions and is frozen while one of its task upserts is on its way (the server
    # holds A's planner updates for BLOCK_MS): the write lands after B took the partition over
    # and planned newer data, and is refused by the partition's token.
    block_ms = 7000
    app = build(make_app, policies=HOUR)
    a_id = f"pa-{uuid.uuid4().hex[:8]}"
    a = start(start_runtime, app, a_id, *FLAGS)
    wait_until(lambda: all(_planning(a, k) for k in range(N)), timeout=30)
    b = start(start_runtime, app, "b", *FLAGS)
    held = _stable(db, {a_id: a, "b": b})
    mine = next(k for k, owner in held.items() if owner == a_id)
    x = _ids_in(db, mine, 1, "x")[0]
    db.things.insert_one({"_id": x, "n": 1})
    first = wait_until(lambda: (lambda t: t if (t or {}).get("snapshot") == {"n": 1} else None)(
        task_of(db, x)))
    assert first["plannerToken"] == _leases(db)[mine]["token"]
    writes = count(a, r"event=planner\.writing")
    with fail_point(client, {"failCommands": ["update"], "appName": f"reactgen-{a_id}-planner",
                             "blockConnection": True, "blockTimeMS": block_ms}):
        db.things.update_one({"_id": x}, {"$set": {"n": 2}})
        a.wait_for_log(r"(?s)" + r"event=planner\.writing.*" * (writes + 1), timeout=15)
        sent = time.monotonic()
        a.signal(signal.SIGSTOP)
        wait_until(lambda: _held(db).get(mine) == "b", timeout=15,
                   message="B takes the frozen holder's partition over")
    db.things.update_one({"_id": x}, {"$set": {"n": 3}})
    token = _leases(db)[mine]["token"]
    wait_until(lambda: (task_of(db, x) or {}).get("snapshot") == {"n": 3}, timeout=10)
    remaining = block_ms / 1000 + 1.0 - (time.monotonic() - sent)
    assert remaining > 0.5, "B took too long to show anything"
    stays(lambda: (task_of(db, x) or {}).get("snapshot") == {"n": 3}
          and task_of(db, x)["plannerToken"] == token, remaining,
          "the deposed holder's write overwrote its successor's task")
    a.signal(signal.SIGCONT)
    a.wait_for_log(r"event=(planner\.deposed|partitions\.lost)", timeout=10)
    final = task_of(db, x)
    assert final is not None and final["snapshot"] == {"n": 3} and final["plannerToken"] == token


def test_time_driven_crossings_are_planned_by_each_documents_partition(
        make_app: AppBuilder, start_runtime: RuntimeFactory, db: Database[Doc]) -> None:
    # Crossings of a ``$$NOW`` filter are planned by the partition owning the document (so its
    # task carries that partition's token), within a second, once, and the pass is recorded
    # in the partition's document.
    due = '    trigger:\n      filter: {$lte: ["$dueAt", "$$NOW"]}\n      watch: [n]\n'
    app = build_many(make_app, {"record": (due, "")})
    processes = {name: start(start_runtime, app, name, *FLAGS) for name in ("a", "b", "c")}
    _stable(db, processes)
    now = server_now(db)
    ids = [f"t{i}" for i in range(12)]
    db.things.insert_many([{"_id": key, "n": 1, "dueAt": now + datetime.timedelta(seconds=2)}
                           for key in ids])
    wait_until(lambda: _runs_once(db, ids), timeout=20)
    for key, run in ((key, runs_of(db, key)[0]) for key in ids):
        late = ms(run["startedAt"] - (now + datetime.timedelta(seconds=2)))
        assert 0 <= late < 1000, f"{key} started {late:.0f} ms after its moment"
    leases, partition_of = _leases(db), _partition_of(db)
    assert len(set(partition_of.values())) > 1
    for key in ids:
        assert task_of(db, key)["plannerToken"] == leases[partition_of[key]]["token"]
    wait_until(lambda: all("record" in ((d.get("planning") or {}).get("timePassAt") or {})
                           for d in _leases(db).values()), timeout=10)
    stays(lambda: db.runs.count_documents({}) == len(ids), 1.0, "a crossing ran twice")
