"""Leader election between real runtime processes.

Timings are measured with the server's clock, from the lease document itself: ``acquiredAt``
(when the current owner took the lease), ``renewedAt`` (its last renewal) and ``releasedAt``
(a graceful release), all written with ``$$NOW``.
"""

from __future__ import annotations

import datetime
import itertools
import re
import signal
from typing import Any

from conftest import AppBuilder, RuntimeFactory
from pymongo import MongoClient
from pymongo.database import Database
from runtime_harness import RuntimeProcess
from scenario import build, count, fail_point, leader, ms, runs_of, server_now, start, stays
from support import wait_until

TTL_MS = 1500
MARGIN_MS = 500
"""Slack for the follower's reaction: its clock estimate, one round trip, log lines."""
Doc = dict[str, Any]


def _logged_at(process: RuntimeProcess, pattern: str) -> datetime.datetime:
    """When a process first logged ``pattern`` (its own clock)."""
    match = re.search(r"^(\S+ \S+) .*" + pattern, process.log(), re.MULTILINE)
    assert match, pattern
    return datetime.datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f")


def test_sigkill_of_the_leader_is_taken_over_within_the_ttl(
        make_app: AppBuilder, start_runtime: RuntimeFactory,
        db: Database[dict[str, Any]]) -> None:
    app = build(make_app)
    ttl = ["--leader-ttl-ms", str(TTL_MS)]
    a = start(start_runtime, app, "a", *ttl)
    a.wait_for_log(r"event=leader\.gained instance=a token=1\b")
    b = start(start_runtime, app, "b", *ttl)
    # B has tried and failed at least once, so it knows the lease it is waiting for.
    wait_until(lambda: (leader(db) or {}).get("renewedAt") != (leader(db) or {}).get(
        "acquiredAt"), message="A renews its lease")
    assert count(b, r"event=leader\.gained") == 0

    a.kill()
    last = leader(db)  # A is dead: this is its last renewal, which happened before the kill
    assert last is not None and last["owner"] == "a"
    b.wait_for_log(r"event=leader\.gained instance=b token=2\b", timeout=TTL_MS / 1000 + 10)
    taken = leader(db)
    assert taken is not None and taken["owner"] == "b" and taken["token"] > last["token"]
    # The lease was respected: B took it only after it had run out ...
    assert taken["acquiredAt"] >= last["expiresAt"]
    # ... and at once: less than TTL + margin after the kill (the kill came after A's last
    # renewal, so measuring from that renewal over-estimates the delay).
    delay_ms = ms(taken["acquiredAt"] - last["renewedAt"])
    assert TTL_MS <= delay_ms <= TTL_MS + MARGIN_MS, delay_ms
    # The new leader plans: new work is executed.
    db.things.insert_one({"_id": "after", "n": 1})
    wait_until(lambda: runs_of(db, "after"), timeout=10)


def test_graceful_stop_hands_leadership_over_at_once(
        make_app: AppBuilder, start_runtime: RuntimeFactory,
        db: Database[dict[str, Any]]) -> None:
    app = build(make_app)
    ttl_ms = 10_000
    ttl = ["--leader-ttl-ms", str(ttl_ms)]
    a = start(start_runtime, app, "a", *ttl)
    a.wait_for_log(r"event=leader\.gained instance=a token=1\b")
    b = start(start_runtime, app, "b", *ttl)
    held = leader(db)
    assert held is not None and held["owner"] == "a"

    assert a.stop() == 0
    a.wait_for_log(r"event=leader\.released instance=a")
    b.wait_for_log(r"event=leader\.gained instance=b token=2\b", timeout=5)
    taken = leader(db)
    assert taken is not None and taken["owner"] == "b"
    # Taken over long before A's lease would have run out, right after the release.
    assert taken["acquiredAt"] < held["expiresAt"]
    handover_ms = ms(taken["acquiredAt"] - taken["releasedAt"])
    assert 0 <= handover_ms < 500, handover_ms
    db.things.insert_one({"_id": "after", "n": 1})
    wait_until(lambda: runs_of(db, "after"), timeout=10)
    assert runs_of(db, "after")[0]["instance"] == "b"


def test_an_instance_hears_changes_from_the_moment_it_reports_started(
        make_app: AppBuilder, start_runtime: RuntimeFactory, client: MongoClient[Doc],
        db: Database[Doc]) -> None:
    # B's wake-up stream is slow to open (the server holds B's aggregate commands). B must not
    # report itself started before its stream is open: a release by A right after B started
    # would be missed, and B would take over only at its next periodic attempt (TTL / 3).
    app = build(make_app)
    ttl = ["--leader-ttl-ms", "10000"]
    a = start(start_runtime, app, "a", *ttl)
    a.wait_for_log(r"event=leader\.gained instance=a token=1\b")
    with fail_point(client, {"failCommands": ["aggregate"], "appName": "reactgen-b",
                             "blockConnection": True, "blockTimeMS": 1500}):
        b = start(start_runtime, app, "b", *ttl)
    assert a.stop() == 0
    b.wait_for_log(r"event=leader\.gained instance=b token=2\b", timeout=15)
    taken = leader(db)
    assert taken is not None and taken["owner"] == "b"
    handover_ms = ms(taken["acquiredAt"] - taken["releasedAt"])
    assert 0 <= handover_ms < 1000, handover_ms


def test_renewal_is_not_blocked_by_a_long_reconciliation(
        make_app: AppBuilder, start_runtime: RuntimeFactory,
        db: Database[dict[str, Any]]) -> None:
    # Many source documents exist before the first start, so the first leader reconciles
    # them all (a debounce of an hour keeps the workers out of it). Throughout, the lease is
    # renewed on time: the token never changes and the follower never takes over.
    # The TTL leaves room for the embedded server, which answers nothing else while it runs
    # one of the planner's 500-document commands (up to about a second each).
    documents = 12000
    app = build(make_app, policies="      debounce: 1h\n")
    db.things.insert_many([{"_id": f"d{i:05}", "n": i} for i in range(documents)])
    ttl_ms = 4000
    ttl = ["--leader-ttl-ms", str(ttl_ms)]
    renewals: list[Any] = []
    with db.reactgen_meta.watch([{"$match": {"documentKey._id": "leader"}}],
                                full_document="updateLookup") as stream:
        a = start(start_runtime, app, "a", *ttl)
        a.wait_for_log(r"event=leader\.gained instance=a token=1\b")
        b = start(start_runtime, app, "b", *ttl)
        while not count(a, r"event=scan\.finished"):
            change = stream.try_next()
            if change is not None and change.get("fullDocument"):
                renewals.append(change["fullDocument"])
            assert count(a, r"event=leader\.lost") == 0, a.log()[-3000:]
            assert count(b, r"event=leader\.gained") == 0, b.log()[-3000:]
    a.wait_for_log(rf"event=scan\.finished collection=things .*documents={documents}\b")
    assert db.things_tasks.count_documents({}) == documents
    final = leader(db)
    assert final is not None and final["owner"] == "a" and final["token"] == 1
    assert {r["owner"] for r in renewals} == {"a"} and {r["token"] for r in renewals} == {1}
    # Renewal blocked behind the reconciliation would show as one gap as long as the whole
    # reconciliation: meaningful only if that lasts longer than the TTL.
    started = _logged_at(a, r"event=planner\.started")
    finished = _logged_at(a, r"event=scan\.finished")
    duration_ms = ms(finished - started)
    assert duration_ms > ttl_ms, f"reconciliation too short to show anything ({duration_ms} ms)"
    times = sorted(r["renewedAt"] for r in renewals)
    assert len(times) >= duration_ms / ttl_ms
    gaps = [ms(later - earlier) for earlier, later in itertools.pairwise(times)]
    assert max(gaps) < ttl_ms, gaps


def test_a_paused_leader_is_replaced_and_steps_down_when_it_resumes(
        make_app: AppBuilder, start_runtime: RuntimeFactory,
        db: Database[dict[str, Any]]) -> None:
    app = build(make_app)
    ttl = ["--leader-ttl-ms", str(TTL_MS)]
    a = start(start_runtime, app, "a", *ttl)
    a.wait_for_log(r"event=leader\.gained instance=a token=1\b")
    b = start(start_runtime, app, "b", *ttl)
    a.signal(signal.SIGSTOP)
    b.wait_for_log(r"event=leader\.gained instance=b token=2\b", timeout=TTL_MS / 1000 + 10)
    db.things.insert_one({"_id": "while-paused", "n": 1})
    wait_until(lambda: runs_of(db, "while-paused"), timeout=10)
    position = f"planner:{db.name}"
    wait_until(lambda: (db.reactgen_meta.find_one({"_id": position}) or {}).get(
        "leaderToken") == 2)

    a.signal(signal.SIGCONT)
    a.wait_for_log(r"event=leader\.lost instance=a")
    db.things.insert_one({"_id": "after", "n": 1})
    wait_until(lambda: runs_of(db, "after"), timeout=10)
    lease = leader(db)
    assert lease is not None and lease["owner"] == "b" and lease["token"] == 2
    # The deposed leader's planner could not move the saved position back.
    state = db.reactgen_meta.find_one({"_id": position})
    assert state is not None and state["leaderToken"] == 2
    assert count(b, r"event=leader\.lost") == 0
    for source in ("while-paused", "after"):
        wait_until(lambda s=source: "finishedAt" in runs_of(db, s)[0])
        assert len(runs_of(db, source)) == 1


def test_sigkill_failover_with_the_default_lease_is_within_five_seconds(
        make_app: AppBuilder, start_runtime: RuntimeFactory,
        db: Database[dict[str, Any]]) -> None:
    app = build(make_app)
    a = start(start_runtime, app, "a")
    a.wait_for_log(r"event=leader\.gained instance=a token=1\b")
    b = start(start_runtime, app, "b")
    wait_until(lambda: (leader(db) or {}).get("renewedAt") != (leader(db) or {}).get(
        "acquiredAt"), message="A renews its lease")
    killed_at = server_now(db)
    a.kill()
    b.wait_for_log(r"event=planner\.started", timeout=15)
    taken = leader(db)
    assert taken is not None and taken["owner"] == "b" and taken["token"] == 2
    failover_ms = ms(taken["acquiredAt"] - killed_at)
    assert failover_ms <= 5000, failover_ms
    db.things.insert_one({"_id": "after", "n": 1})
    wait_until(lambda: runs_of(db, "after"), timeout=10)
    # No flapping: the new leader keeps its lease under the test's load.
    stays(lambda: (leader(db) or {}).get("token") == 2, 2.0, "leadership changed again")
