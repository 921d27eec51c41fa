"""The Prometheus metrics: the middleware's families (hooks called directly), the cluster-wide
collector against a real database, and ``runtime serve --metrics-port`` end to end (families
and label values after known activity; cluster gauges exported by the leader only, and by the
next leader after a crash)."""

from __future__ import annotations

import argparse
import asyncio
import datetime
import logging
import uuid
from typing import Any

import pytest
from bson.timestamp import Timestamp
from conftest import AppBuilder, RuntimeFactory
from metrics_support import (
    ACTIVITY,
    COMPLETED,
    FAILED_EXECUTIONS,
    RETRIES,
    activity_done,
    build_flaky,
    free_port,
    names,
    scrape,
    value,
    write_activity,
)
from pydantic import BaseModel
from pymongo import AsyncMongoClient
from pymongo.database import Database
from scenario import start
from support import wait_until

from runtime import metrics
from runtime.claims import FlowLimit
from runtime.cluster_metrics import FAMILIES, TASK_STATUSES, ClusterMetrics, resume_token_time
from runtime.embedded.changelog import encode_token
from runtime.meta import META_COLLECTION
from runtime.metrics import start_metrics
from runtime.metrics_middleware import MetricsMiddleware
from runtime.middleware import MiddlewareStack
from runtime.outcome import Outcome, OutcomeKind
from runtime.reactor import Policies, ReactorSpec
from runtime.serve_cli import SettingsError, add_arguments, settings_from
from runtime.settings import RuntimeSettings

Db = Database[dict[str, Any]]
CLUSTER_ONLY = "reactgen_tasks"
"""A family only the cluster collector exports."""


class _Model(BaseModel):
    pass


def spec(name: str, collection: str = "things", database: str | None = None) -> ReactorSpec:
    """A reactor as the runtime sees it (only the names matter here)."""
    return ReactorSpec(name=name, collection=collection, database=database, model=_Model,
                       watched_model=_Model, filter={}, watch=None, pipeline=[],
                       policies=Policies(), handler="", trigger_fingerprint="", source="")


def sample(name: str, **labels: str) -> float:
    """A sample of the process-wide registry (0 when absent)."""
    found = metrics.REGISTRY.get_sample_value(name, labels)
    return 0.0 if found is None else found


# ---------------------------------------------------------------------------- middleware


async def test_middleware_hooks_feed_the_instance_families() -> None:
    name = f"r_{uuid.uuid4().hex[:8]}"
    reactor = spec(name)
    middleware = MiddlewareStack([MetricsMiddleware([reactor], "app")])
    # Every per-reactor counter exists (at zero) before anything happened.
    for family in ("reactgen_task_retries_total", "reactgen_claim_attempts_total",
                   "reactgen_claim_misses_total", "reactgen_lease_renewals_total",
                   "reactgen_leases_lost_total", "reactgen_tasks_planned_total",
                   "reactgen_planning_failures_total"):
        assert metrics.REGISTRY.get_sample_value(family, {"reactor": name}) == 0.0, family
    for outcome in metrics.OUTCOMES:
        assert metrics.REGISTRY.get_sample_value(
            "reactgen_task_executions_total", {"reactor": name, "outcome": outcome}) == 0.0
    task: dict[str, Any] = {"_id": 1}
    for kind, seconds in ((OutcomeKind.COMPLETED, 0.2), (OutcomeKind.RETRY, 0.01),
                          (OutcomeKind.FAILED, 0.02), (OutcomeKind.SKIPPED, 0.0),
                          (OutcomeKind.DEFERRED, 0.0), (OutcomeKind.LEASE_LOST, 1.0)):
        middleware.before_execution(reactor, task)
        assert sample("reactgen_task_executions_in_progress", reactor=name) == 1
        middleware.after_execution(reactor, task, Outcome(kind, seconds))
    assert sample("reactgen_task_executions_in_progress", reactor=name) == 0
    executions = {outcome: sample("reactgen_task_executions_total", reactor=name,
                                  outcome=outcome) for outcome in metrics.OUTCOMES}
    # A retried failure is a failure (and a retry); a skip is never a success.
    assert executions == {"completed": 1, "failed": 2, "skipped": 1, "deferred": 1,
                          "lease_lost": 1}
    assert sample("reactgen_task_retries_total", reactor=name) == 1
    assert sample("reactgen_task_duration_seconds_count", reactor=name, outcome="failed") == 2
    assert sample("reactgen_task_duration_seconds_sum", reactor=name,
                  outcome="completed") == pytest.approx(0.2)
    assert sample("reactgen_task_duration_seconds_bucket", reactor=name, outcome="completed",
                  le="0.25") == 1
    assert sample("reactgen_task_duration_seconds_bucket", reactor=name, outcome="completed",
                  le="0.1") == 0

    middleware.on_claim(name, True, 0.003)
    middleware.on_claim(name, False, 0.002)
    middleware.on_claim(name, False, 0.002)
    assert sample("reactgen_claim_attempts_total", reactor=name) == 3
    assert sample("reactgen_claim_misses_total", reactor=name) == 2
    assert sample("reactgen_claim_duration_seconds_count", reactor=name) == 3
    middleware.on_start_delay(name, 0.04)
    assert sample("reactgen_task_start_delay_seconds_bucket", reactor=name, le="0.05") == 1
    assert sample("reactgen_task_start_delay_seconds_bucket", reactor=name, le="0.025") == 0
    middleware.on_lease_renewed(name)
    middleware.on_lease_renewed(name)
    middleware.on_lease_lost(name)
    middleware.on_claim_limited(name, FlowLimit.RATE)
    middleware.on_claim_limited(name, FlowLimit.CONCURRENCY)
    middleware.on_claim_limited(name, FlowLimit.CONCURRENCY)
    assert sample("reactgen_claims_limited_total", reactor=name, limit="rate") == 1
    assert sample("reactgen_claims_limited_total", reactor=name, limit="concurrency") == 2
    assert sample("reactgen_lease_renewals_total", reactor=name) == 2
    assert sample("reactgen_leases_lost_total", reactor=name) == 1
    middleware.on_planned(name, 7)
    middleware.on_poison(name, "doc", "boom")
    assert sample("reactgen_tasks_planned_total", reactor=name) == 7
    assert sample("reactgen_planning_failures_total", reactor=name) == 1

    before = sample("reactgen_change_events_total", database="app")

    async def plan() -> None:
        await asyncio.sleep(0.01)

    await middleware.around_planning("app", 5, plan)
    assert sample("reactgen_change_events_total", database="app") == before + 5
    assert sample("reactgen_planning_duration_seconds_count", database="app") >= 1

    async def fail() -> None:
        raise RuntimeError("planning failed")

    with pytest.raises(RuntimeError):  # the wrapper lets the failure through, uncounted
        await middleware.around_planning("app", 3, fail)
    assert sample("reactgen_change_events_total", database="app") == before + 5

    middleware.on_leadership(True, 4)
    assert sample("reactgen_leader") == 1
    middleware.on_leadership(False, 4)
    assert sample("reactgen_leader") == 0


def test_middleware_ignores_what_the_application_does_not_define() -> None:
    known = f"r_{uuid.uuid4().hex[:8]}"
    stranger = f"x_{uuid.uuid4().hex[:8]}"
    middleware = MetricsMiddleware([spec(known)], "app")
    middleware.on_claim(stranger, True, 0.01)
    middleware.on_planned(stranger, 3)
    middleware.after_execution(spec(stranger), {}, Outcome(OutcomeKind.COMPLETED, 0.1))
    exported = {m.name for m in metrics.REGISTRY.collect() for s in m.samples
                if stranger in s.labels.values()}
    assert exported == set()


# ---------------------------------------------------------------------------- resume tokens


def test_resume_token_times_of_mongodb_and_of_the_embedded_server() -> None:
    at = datetime.datetime(2026, 3, 1, 12, 30, 5)
    seconds = int((at - datetime.datetime(1970, 1, 1)).total_seconds())
    # MongoDB: KeyString, type byte 0x82 (Timestamp) then seconds and increment, big-endian.
    event = {"_data": f"82{seconds:08X}{7:08X}2B022C0100296E5A1004AB46461E"}
    high_water = {"_data": f"82{seconds:08X}{1:08X}2B0229296E04"}
    assert resume_token_time(event) == at
    assert resume_token_time(high_water) == at
    assert resume_token_time(encode_token(Timestamp(seconds, 3), 0, 42, 0)) == at
    for unknown in (None, {}, {"_data": b"\x82"}, {"_data": "zz"}, {"_data": "82XYZ0000000000"}):
        assert resume_token_time(unknown) is None


# ---------------------------------------------------------------------------- cluster collector


def _by_name(collector: ClusterMetrics) -> dict[str, list[tuple[dict[str, str], float]]]:
    found: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in collector.collect():
        for s in family.samples:
            found.setdefault(s.name, []).append((dict(s.labels), s.value))
    return found


async def test_cluster_collector_reads_the_database_and_exports_only_while_leading(
        db: Db, mongodb_uri: str) -> None:
    now = datetime.datetime.now(datetime.UTC).replace(tzinfo=None, microsecond=0)
    ago = lambda seconds: now - datetime.timedelta(seconds=seconds)  # noqa: E731
    tasks = db.things_tasks
    tasks.insert_many(
        [{"reactor": "a", "sourceId": i, "status": "completed", "nextRunAt": None}
         for i in range(3)]
        + [{"reactor": "a", "sourceId": 10, "status": "pending", "nextRunAt": ago(5),
            "dueAt": ago(40)},  # a retry: due again for 5 s, its data for 40 s
           {"reactor": "a", "sourceId": 11, "status": "pending", "nextRunAt": ago(2),
            "dueAt": ago(2)},
           {"reactor": "a", "sourceId": 12, "status": "pending", "nextRunAt": ago(-60),
            "dueAt": ago(90)},  # not due yet (debounced): not lag
           {"reactor": "a", "sourceId": 13, "status": "processing", "nextRunAt": ago(1),
            "dueAt": ago(300)},  # running (lease expired): not pending
           {"reactor": "b", "sourceId": 1, "status": "failed", "nextRunAt": None},
           {"reactor": "gone", "sourceId": 1, "status": "pending", "nextRunAt": ago(9)}])
    db.other_tasks.insert_one({"reactor": "c", "sourceId": 1, "status": "skipped"})
    token = encode_token(Timestamp(int((ago(12) - datetime.datetime(1970, 1, 1))
                                       .total_seconds()), 1), 0, 5, 2)
    db[META_COLLECTION].insert_many([
        {"_id": "leader", "owner": "i-1", "token": 7, "expiresAt": ago(-3)},
        {"_id": f"planner:{db.name}", "resumeToken": token, "updatedAt": ago(1)},
        {"_id": "reactor:b", "paused": {"at": ago(10), "by": "ops"}},
        {"_id": f"scan:{db.name}.things", "database": db.name, "collection": "things",
         "passes": [{"reactors": {"a": "new"}, "phase": "documents", "scanned": 500,
                     "expected": 2000, "startedAt": ago(3)},
                    {"reactors": {"b": "request"}, "phase": "orphans", "scanned": 0,
                     "expected": 0, "startedAt": None}],
         "lastFinished": {"finishedAt": ago(60), "seconds": 1.5}},
        {"_id": "instance:i-1", "instance": "i-1", "heartbeatAt": ago(1), "running": 2},
        {"_id": "instance:i-2", "instance": "i-2", "heartbeatAt": ago(4), "running": 0},
        {"_id": "instance:dead", "instance": "dead", "heartbeatAt": ago(30), "running": 5}])
    leading = True
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongodb_uri, tz_aware=False)
    try:
        collector = ClusterMetrics(client, db.name,
                                   [spec("a"), spec("b"), spec("c", collection="other")],
                                   lambda: leading, lambda: now, interval_s=0.2)
        assert list(collector.collect()) == []  # nothing read yet
        collector.start()
        found = await _wait_exported(collector)
    finally:
        await collector.stop()
        await client.close()
    values = {(name, tuple(sorted(labels.items()))): v
              for name, rows in found.items() for labels, v in rows}

    def get(name: str, **labels: str) -> float | None:
        return values.get((name, tuple(sorted(labels.items()))))

    # Every (known reactor, status) pair, zero included; unknown reactors never.
    assert len(found["reactgen_tasks"]) == 3 * len(TASK_STATUSES)
    assert get("reactgen_tasks", reactor="a", status="completed") == 3
    assert get("reactgen_tasks", reactor="a", status="pending") == 3
    assert get("reactgen_tasks", reactor="a", status="processing") == 1
    assert get("reactgen_tasks", reactor="a", status="failed") == 0
    assert get("reactgen_tasks", reactor="b", status="failed") == 1
    assert get("reactgen_tasks", reactor="c", status="skipped") == 1
    assert not [labels for labels, _ in found["reactgen_tasks"] if labels["reactor"] == "gone"]
    # Oldest due pending task, measured from dueAt: 40 s (not the debounced or running ones).
    assert get("reactgen_pending_lag_seconds", reactor="a") == pytest.approx(40)
    assert get("reactgen_tasks_due", reactor="a") == 2
    assert get("reactgen_pending_lag_seconds", reactor="b") == 0
    assert get("reactgen_change_stream_lag_seconds", database=db.name) == pytest.approx(12)
    assert get("reactgen_planner_position_age_seconds", database=db.name) == pytest.approx(1)
    epoch = datetime.datetime(1970, 1, 1)
    assert get("reactgen_reconciliation_last_finished_timestamp_seconds", database=db.name,
               collection="things") == (ago(60) - epoch).total_seconds()
    assert get("reactgen_reconciliation_last_duration_seconds", database=db.name,
               collection="things") == 1.5
    assert get("reactgen_reconciliation_queued_passes", database=db.name,
               collection="things") == 2
    assert get("reactgen_reconciliation_scanned_documents", database=db.name,
               collection="things") == 500
    assert get("reactgen_reconciliation_expected_documents", database=db.name,
               collection="things") == 2000
    assert get("reactgen_reconciliation_queued_passes", database=db.name,
               collection="other") == 0
    assert get("reactgen_live_instances") == 2
    assert {labels["instance_id"] for labels, _ in found["reactgen_instance_running_tasks"]} \
        == {"i-1", "i-2"}
    assert get("reactgen_instance_running_tasks", instance_id="i-1") == 2
    assert get("reactgen_leader_info", instance_id="i-1") == 1
    assert get("reactgen_leader_token") == 7
    assert get("reactgen_reactor_paused", reactor="b") == 1
    assert get("reactgen_reactor_paused", reactor="a") == 0
    leading = False  # a follower exports none of it, at once
    assert list(collector.collect()) == []


async def test_cluster_collector_rebuilds_label_sets_and_forgets_old_leaderships(
        db: Db, mongodb_uri: str) -> None:
    now = datetime.datetime.now(datetime.UTC).replace(tzinfo=None)
    meta = db[META_COLLECTION]
    meta.insert_many([{"_id": f"instance:{name}", "instance": name, "heartbeatAt": now,
                       "running": 0} for name in ("x", "y")])
    leading = True
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongodb_uri, tz_aware=False)
    collector = ClusterMetrics(client, db.name, [spec("a")], lambda: leading,
                               lambda: datetime.datetime.now(datetime.UTC).replace(
                                   tzinfo=None), interval_s=0.1)
    try:
        collector.start()
        found = await _wait_exported(collector)
        assert {labels["instance_id"] for labels, _ in
                found["reactgen_instance_running_tasks"]} == {"x", "y"}
        meta.delete_one({"_id": "instance:y"})  # stopped gracefully

        async def y_gone() -> bool:
            rows = _by_name(collector).get("reactgen_instance_running_tasks", [])
            return {labels["instance_id"] for labels, _ in rows} == {"x"}

        await _poll(y_gone)
        # Leadership lost and regained: nothing from the earlier leadership is exported
        # until the next refresh.
        collector.leadership_changed(False)
        assert list(collector.collect()) == []
        await _wait_exported(collector)
    finally:
        await collector.stop()
        await client.close()


async def _wait_exported(collector: ClusterMetrics,
                         ) -> dict[str, list[tuple[dict[str, str], float]]]:
    async def exported() -> dict[str, list[tuple[dict[str, str], float]]]:
        return _by_name(collector)

    return await _poll(exported)


async def _poll(predicate: Any, timeout: float = 10) -> Any:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        result = await predicate()
        if result:
            return result
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


# ---------------------------------------------------------------------------- start_metrics


async def test_start_metrics_serves_and_scopes_in_process(
        db: Db, mongodb_uri: str, caplog: pytest.LogCaptureFixture) -> None:
    db.things_tasks.insert_one({"reactor": "a", "sourceId": 1, "status": "completed"})
    leading = False
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongodb_uri, tz_aware=False)
    reactors = [spec("a")]
    middleware = MetricsMiddleware(reactors, db.name)
    port = free_port()
    settings = RuntimeSettings(instance_id="in-process", database=db.name, metrics_port=port,
                               metrics_refresh_ms=100)
    caplog.set_level(logging.INFO, logger="runtime.metrics")
    running = start_metrics(settings, client, reactors, lambda: leading, middleware)
    try:
        assert running.url == f"http://127.0.0.1:{port}/metrics"
        assert [r for r in caplog.records if getattr(r, "fields", {}).get("event")
                == "metrics.started" and r.fields["url"] == running.url]  # type: ignore[attr-defined]
        text = await asyncio.to_thread(scrape, port)
        assert value(text, "reactgen_instance_info", instance_id="in-process") == 1
        assert not names(text) & set(FAMILIES)  # a follower
        leading = True
        middleware.on_leadership(True, 1)  # refreshes at once

        async def exported() -> str | None:
            text = await asyncio.to_thread(scrape, port)
            return text if value(text, "reactgen_tasks", reactor="a",
                                 status="completed") == 1 else None

        text = await _poll(exported)
        assert value(text, "reactgen_leader") == 1
    finally:
        await running.stop()
        await client.close()
    assert await asyncio.to_thread(scrape, port) == ""  # the endpoint is closed


def test_metrics_scope_setting_is_validated(monkeypatch: pytest.MonkeyPatch) -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert settings_from(parser.parse_args([])).metrics_scope == "cluster"
    assert settings_from(parser.parse_args(["--metrics-scope", "LOCAL"])).metrics_scope \
        == "local"
    monkeypatch.setenv("REACTGEN_METRICS_SCOPE", "everything")
    with pytest.raises(SettingsError, match=r"REACTGEN_METRICS_SCOPE .*local, cluster"):
        settings_from(parser.parse_args([]))
    with pytest.raises(SettingsError, match="--metrics-refresh-ms"):
        settings_from(parser.parse_args(["--metrics-scope", "local",
                                         "--metrics-refresh-ms", "0"]))


# ---------------------------------------------------------------------------- end to end


def test_serve_exports_instance_and_cluster_families_after_known_activity(
        make_app: AppBuilder, start_runtime: RuntimeFactory, db: Db) -> None:
    app = build_flaky(make_app)
    port = free_port()
    runtime = start(start_runtime, app, "a", "--metrics-port", str(port),
                    "--metrics-refresh-ms", "300", "--task-lease-ms", "500")
    runtime.wait_for_log(rf"event=metrics\.started .*url=http://127\.0\.0\.1:{port}/metrics")
    write_activity(db)
    wait_until(lambda: activity_done(db), timeout=30, message="every task final")

    def settled() -> str | None:
        text = scrape(port)
        done = (value(text, "reactgen_task_executions_total", reactor="flaky",
                      outcome="completed") == COMPLETED
                and value(text, "reactgen_tasks", reactor="flaky", status="completed")
                == COMPLETED)
        return text if done else None

    text = wait_until(settled, timeout=20, message="metrics after the activity")
    total = sum(ACTIVITY.values())
    assert value(text, "reactgen_task_executions_total", reactor="flaky",
                 outcome="failed") == FAILED_EXECUTIONS
    assert value(text, "reactgen_task_retries_total", reactor="flaky") == RETRIES
    assert value(text, "reactgen_task_duration_seconds_count", reactor="flaky",
                 outcome="completed") == COMPLETED
    assert value(text, "reactgen_tasks_planned_total", reactor="flaky") >= total  # type: ignore[operator]
    attempts = value(text, "reactgen_claim_attempts_total", reactor="flaky")
    misses = value(text, "reactgen_claim_misses_total", reactor="flaky")
    assert attempts is not None and misses is not None
    assert attempts - misses == COMPLETED + FAILED_EXECUTIONS  # one claim per execution
    assert value(text, "reactgen_task_start_delay_seconds_count", reactor="flaky") \
        == COMPLETED + FAILED_EXECUTIONS
    assert value(text, "reactgen_lease_renewals_total", reactor="flaky") >= 1  # type: ignore[operator]
    assert value(text, "reactgen_leases_lost_total", reactor="flaky") == 0
    assert value(text, "reactgen_planning_failures_total", reactor="flaky") == 0
    assert value(text, "reactgen_leader") == 1
    assert value(text, "reactgen_instance_info", instance_id="a") == 1
    assert value(text, "reactgen_task_executions_in_progress", reactor="flaky") == 0
    # Cluster-wide, from the database (this instance leads).
    assert value(text, "reactgen_tasks", reactor="flaky", status="failed") == ACTIVITY["bad"]
    assert value(text, "reactgen_tasks", reactor="flaky", status="pending") == 0
    assert value(text, "reactgen_pending_lag_seconds", reactor="flaky") == 0
    assert value(text, "reactgen_live_instances") == 1
    assert value(text, "reactgen_leader_info", instance_id="a") == 1
    assert value(text, "reactgen_reactor_paused", reactor="flaky") == 0
    assert value(text, "reactgen_reconciliation_last_finished_timestamp_seconds",
                 database=db.name, collection="things") is not None  # the first-start scan
    lag = value(text, "reactgen_change_stream_lag_seconds", database=db.name)
    assert lag is not None and lag < 30
    assert value(text, "reactgen_planner_position_age_seconds", database=db.name) is not None


def test_local_scope_exports_no_cluster_family(make_app: AppBuilder,
                                               start_runtime: RuntimeFactory, db: Db) -> None:
    app = build_flaky(make_app)
    port = free_port()
    runtime = start(start_runtime, app, "a", "--metrics-port", str(port),
                    "--metrics-refresh-ms", "200", env={"REACTGEN_METRICS_SCOPE": "local"})
    runtime.wait_for_log(r"event=metrics\.started .*scope=local")
    db.things.insert_one({"_id": "ok0", "kind": "ok", "n": 1})
    text = wait_until(lambda: (t := scrape(port)) and value(
        t, "reactgen_task_executions_total", reactor="flaky", outcome="completed") and t,
        timeout=20)
    assert value(text, "reactgen_leader") == 1
    assert not names(text) & set(FAMILIES)


def test_cluster_gauges_come_from_the_leader_only_and_follow_it(
        make_app: AppBuilder, start_runtime: RuntimeFactory, db: Db) -> None:
    app = build_flaky(make_app)
    ports = {"a": free_port(), "b": free_port()}
    processes = {}
    for name in ("a", "b"):
        processes[name] = start(start_runtime, app, name, "--metrics-port", str(ports[name]),
                                "--metrics-refresh-ms", "200", "--leader-ttl-ms", "1000")
    db.things.insert_many([{"_id": f"ok{i}", "kind": "ok", "n": 1} for i in range(3)])

    def exporters() -> dict[str, str]:
        return {name: text for name, port in ports.items()
                if CLUSTER_ONLY in names(text := scrape(port))}

    def one_exporter() -> str | None:
        found = exporters()
        if len(found) != 1:
            return None
        leader, text = next(iter(found.items()))
        other = "b" if leader == "a" else "a"
        other_text = scrape(ports[other])
        if value(text, "reactgen_leader") == 1 and value(other_text, "reactgen_leader") == 0 \
                and value(text, "reactgen_live_instances") == 2 \
                and value(text, "reactgen_tasks", reactor="flaky", status="completed") == 3:
            return leader
        return None

    leader = wait_until(one_exporter, timeout=30, message="exactly one exporter, the leader")
    text = scrape(ports[leader])
    assert value(text, "reactgen_leader_info", instance_id=leader) == 1
    follower = "b" if leader == "a" else "a"
    # The follower exports its own families, none of the cluster's.
    follower_text = scrape(ports[follower])
    assert "reactgen_claim_attempts_total" in names(follower_text)
    assert not names(follower_text) & set(FAMILIES)

    processes[leader].kill()  # a crash: no graceful handover

    def taken_over() -> str | None:
        text = scrape(ports[follower])
        if CLUSTER_ONLY in names(text) \
                and value(text, "reactgen_leader_info", instance_id=follower) == 1 \
                and value(text, "reactgen_live_instances") == 1:
            return text
        return None

    text = wait_until(taken_over, timeout=30, message="the new leader exports the gauges")
    assert value(text, "reactgen_leader") == 1
    assert value(text, "reactgen_tasks", reactor="flaky", status="completed") == 3
