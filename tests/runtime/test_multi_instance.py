"""Several runtime instances on one database: shared work, prompt wake-ups, clock skew."""

from __future__ import annotations

import datetime
import glob
import shutil
from collections import Counter
from typing import Any

import pytest
from conftest import AppBuilder, RuntimeFactory
from pymongo.database import Database
from scenario import build, count, leader, ms, release, runs_of, server_now, start
from support import wait_until

from runtime.app_loader import load_app
from runtime.scheduler import Scheduler


def _executions(db: Database[dict[str, Any]]) -> list[dict[str, Any]]:
    return list(db.runs.find({}, {"source": 1, "instance": 1, "attempt": 1, "startedAt": 1,
                                  "localTime": 1}))


def test_two_instances_share_work_without_double_execution(
        make_app: AppBuilder, start_runtime: RuntimeFactory,
        db: Database[dict[str, Any]]) -> None:
    documents = 300
    app = build(make_app)
    a = start(start_runtime, app, "a", "--concurrency", "4")
    a.wait_for_log(r"event=leader\.gained instance=a")
    start(start_runtime, app, "b", "--concurrency", "4")
    # Each handler is kept busy a little, as real handlers are, so that neither instance can
    # drain the queue alone between two wake-ups.
    db.things.insert_many([{"_id": f"d{i:03}", "n": i, "hold_ms": 20} for i in range(documents)])
    wait_until(lambda: db.things_tasks.count_documents({"status": "completed"}) == documents,
               timeout=120, message="every task completed")
    runs = _executions(db)
    per_source = Counter(r["source"] for r in runs)
    assert len(per_source) == documents
    assert [s for s, n in per_source.items() if n != 1] == [], "double executions"
    assert {r["attempt"] for r in runs} == {1}
    per_instance = Counter(r["instance"] for r in runs)
    # Both did a fair part of the work (the follower learns of it only through the wake-up
    # stream, the leader also from its own planner).
    assert min(per_instance["a"], per_instance["b"]) >= documents // 5, per_instance


def test_new_work_wakes_idle_workers_on_every_instance(
        make_app: AppBuilder, start_runtime: RuntimeFactory,
        db: Database[dict[str, Any]]) -> None:
    # Idle polling is turned off in effect (10 minutes), so only the wake-up stream can make
    # the follower start new work. The leader's single worker is kept busy, so new work must
    # be started by the follower.
    app = build(make_app)
    no_polling = ["--idle-poll-ms", "600000", "--concurrency", "1"]
    a = start(start_runtime, app, "a", *no_polling)
    a.wait_for_log(r"event=leader\.gained instance=a")
    db.things.insert_one({"_id": "busy", "n": 0, "block": True})
    wait_until(lambda: runs_of(db, "busy"), timeout=10)
    b = start(start_runtime, app, "b", *no_polling)
    for i in range(3):
        # B's worker found nothing and parked itself until a hint (or the 10-minute poll).
        b.wait_for_log(r"(?s)event=scheduler\.idle" + r".*event=scheduler\.idle" * i)
        before = server_now(db)
        db.things.insert_one({"_id": f"new{i}", "n": i})
        run = wait_until(lambda i=i: runs_of(db, f"new{i}"), timeout=10)[0]
        assert run["instance"] == "b"
        latency_ms = ms(run["startedAt"] - before)
        assert latency_ms < 1500, f"follower started new work {latency_ms:.0f} ms after insert"
        wait_until(lambda i=i: "finishedAt" in runs_of(db, f"new{i}")[0])
    assert count(b, r"event=leader\.gained") == 0
    assert (leader(db) or {}).get("owner") == "a"
    release(db, "busy")
    wait_until(lambda: "finishedAt" in runs_of(db, "busy")[0])


def test_a_hint_that_arrives_during_a_claim_is_not_lost(
        make_app: AppBuilder, monkeypatch: pytest.MonkeyPatch) -> None:
    # The race behind slow pick-ups: a worker's claim query runs just before new work is
    # written; the hint for that work arrives while the claim is still in flight; the claim
    # then reports "nothing found". The reactor must stay due (at the hint's time), not be
    # parked until the idle poll.
    app = build(make_app, policies="      debounce: 2s\n")
    monkeypatch.syspath_prepend(str(app.root))
    reactor = load_app(app.package).reactors[0]
    scheduler = Scheduler([reactor], idle_poll_ms=600_000)
    now = datetime.datetime(2030, 1, 1)
    scheduler.start(now)
    assert scheduler.next_reactor(now) == reactor.name  # a claim starts ...
    scheduler.note_due(reactor.name, now)  # ... work due now is planned meanwhile ...
    scheduler.missed(reactor.name, now)  # ... and the claim comes back empty
    assert scheduler.next_reactor(now) == reactor.name, "the hint was lost"
    scheduler.missed(reactor.name, now)  # nothing new since that claim started ...
    # ... but the claim is judged by the server's clock, of which ours is an estimate: work
    # due "just now" gets one more try shortly after, then the reactor is parked.
    assert scheduler.next_reactor(now) is None
    retry = now + datetime.timedelta(milliseconds=25)
    assert scheduler.due_at[reactor.name] == retry
    assert scheduler.next_reactor(retry) == reactor.name
    scheduler.missed(reactor.name, retry)
    assert scheduler.next_reactor(retry) is None
    assert scheduler.due_at[reactor.name] == retry + datetime.timedelta(minutes=10)

    # A debounced hint (due in 2 s) that arrives during a claim keeps its own due time.
    later = retry + datetime.timedelta(seconds=1)
    scheduler.note_due(reactor.name, later)
    assert scheduler.next_reactor(later) == reactor.name
    soon = later + datetime.timedelta(seconds=2)
    scheduler.note_due(reactor.name, soon)
    scheduler.missed(reactor.name, later)
    assert scheduler.next_reactor(later) is None
    assert scheduler.due_at[reactor.name] == soon
    assert scheduler.next_reactor(soon) == reactor.name


def _libfaketime() -> str | None:
    """libfaketime's multi-threaded variant, preloaded directly rather than through the
    ``faketime`` command: that command forks, and signals sent to it (SIGTERM from the
    harness) do not reach the runtime. The single-threaded variant can deadlock in a
    threaded process (the driver resolves host names on worker threads)."""
    if shutil.which("faketime") is None:
        return None
    for pattern in ("/usr/lib/*/faketime/libfaketimeMT.so.1", "/usr/lib*/faketime/"
                    "libfaketimeMT.so.1", "/usr/local/lib*/faketime/libfaketimeMT.so.1"):
        found = sorted(glob.glob(pattern))
        if found:
            return found[0]
    return None


LIBFAKETIME = _libfaketime()


@pytest.mark.skipif(LIBFAKETIME is None, reason="libfaketime is not installed (Debian package "
                    "`faketime`: the `faketime` command and libfaketimeMT.so.1); it is needed "
                    "to run one instance with a skewed clock")
@pytest.mark.parametrize("offset", ["+1h", "-1h"])
def test_clock_skew_never_causes_double_execution(
        offset: str, make_app: AppBuilder, start_runtime: RuntimeFactory,
        db: Database[dict[str, Any]]) -> None:
    # Instance "skewed" runs with its clock an hour off. Leases and due times are judged by
    # the server's clock, so it neither steals running tasks (handlers outlive the lease, so
    # only renewals keep them) nor starts debounced work early.
    assert LIBFAKETIME is not None
    lease_ms, debounce_ms, hold_ms, documents = 1000, 500, 1500, 24
    app = build(make_app, policies=f"      debounce: {debounce_ms}ms\n")
    args = ["--task-lease-ms", str(lease_ms), "--concurrency", "4"]
    start(start_runtime, app, "normal", *args)
    skewed = start(start_runtime, app, "skewed", *args,
                   env={"LD_PRELOAD": LIBFAKETIME, "FAKETIME": offset,
                        "FAKETIME_DONT_FAKE_MONOTONIC": "1"})
    db.things.insert_many([{"_id": f"d{i:02}", "n": i, "hold_ms": hold_ms}
                           for i in range(documents)])

    def finished_or_doubled() -> bool:
        doubled = list(db.runs.aggregate([{"$group": {"_id": "$source", "n": {"$sum": 1}}},
                                          {"$match": {"n": {"$gt": 1}}}]))
        return bool(doubled) or db.things_tasks.count_documents(
            {"status": "completed"}) == documents

    wait_until(finished_or_doubled, timeout=90, message="every task completed")
    runs = _executions(db)
    doubled = {s: n for s, n in Counter(r["source"] for r in runs).items() if n > 1}
    assert doubled == {}, f"executed more than once: {doubled}"
    assert db.things_tasks.count_documents({"status": "completed"}) == documents
    by_instance = Counter(r["instance"] for r in runs)
    assert by_instance["normal"] > 0 and by_instance["skewed"] > 0, by_instance
    # The skew was real: the skewed handlers saw a clock an hour off the server's.
    hour = datetime.timedelta(hours=1)
    for run in runs:
        skew = run["localTime"] - run["startedAt"]
        if run["instance"] == "skewed":
            assert abs(abs(skew) - hour) < datetime.timedelta(minutes=1), skew
        else:
            assert abs(skew) < datetime.timedelta(minutes=1), skew
    # Debounced work was not started early by either instance (server clock; a few ms of
    # clock-estimate slack).
    for task in db.things_tasks.find():
        assert ms(task["startedAt"] - task["dueAt"]) > -50, task
        assert task["attempts"] == 1 and [h["attempt"] for h in task["history"]] == [1]
    assert count(skewed, r"outcome=lease_lost") == 0
