"""Prometheus metrics (prometheus-client): the families of one runtime instance, the HTTP
endpoint, and :func:`start_metrics`, which puts them together for ``runtime serve``.

Two scopes (``--metrics-scope``, docs/operations.md#metrics):

* **instance** families (every instance, always): executions, durations, retries, claims,
  leases, planning, leadership, due-to-start latency. :class:`runtime.metrics_middleware.
  MetricsMiddleware` feeds most of them from the middleware hooks; reconciliation feeds the
  ``reactgen_scan_*`` ones directly.
* **cluster** families (``runtime/cluster_metrics.py``): gauges read from the database by a
  background refresher and exported by the current leader only, so that a Prometheus scraping
  every instance counts them once.

Names follow Prometheus conventions: ``reactgen_`` prefix, base units (seconds), ``_total``
counters (the client library appends it). Label values are bounded: reactors and databases
are those of the application, outcomes and statuses fixed sets.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from runtime.cluster_metrics import ClusterMetrics
from runtime.heartbeat import runtime_version
from runtime.server_time import utcnow
from runtime.structured_logging import log_event

if TYPE_CHECKING:
    from pymongo import AsyncMongoClient

    from runtime.metrics_middleware import MetricsMiddleware
    from runtime.reactor import ReactorSpec
    from runtime.settings import RuntimeSettings

log = logging.getLogger("runtime.metrics")
REGISTRY = CollectorRegistry(auto_describe=True)

MetricsScope = Literal["local", "cluster"]
SCOPES: tuple[MetricsScope, ...] = ("local", "cluster")
OUTCOMES = ("completed", "failed", "skipped", "deferred", "lease_lost")
"""Values of the ``outcome`` label (``OutcomeKind.metric_label``: a retry is ``failed``)."""

DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
DELAY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900,
                 3600)
FAST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)

# ---------------------------------------------------------------- executions (per instance)

EXECUTIONS = Counter(
    "reactgen_task_executions",
    "Task executions by reactor and outcome (completed, failed, skipped, deferred, "
    "lease_lost); a failure that will be retried counts as failed.",
    ["reactor", "outcome"], registry=REGISTRY)
DURATION = Histogram(
    "reactgen_task_duration_seconds", "Handler duration by reactor and outcome.",
    ["reactor", "outcome"], registry=REGISTRY, buckets=DURATION_BUCKETS)
RETRIES = Counter(
    "reactgen_task_retries",
    "Failed executions that the retry policy runs again, by reactor.",
    ["reactor"], registry=REGISTRY)
IN_PROGRESS = Gauge(
    "reactgen_task_executions_in_progress",
    "Handlers running on this instance, by reactor.",
    ["reactor"], registry=REGISTRY)
START_DELAY = Histogram(
    "reactgen_task_start_delay_seconds",
    "Due-to-start latency: from when a task became due (its nextRunAt) to its claim.",
    ["reactor"], registry=REGISTRY, buckets=DELAY_BUCKETS)

# ---------------------------------------------------------------- claims and leases

CLAIMS = Counter(
    "reactgen_claim_attempts",
    "Claims: one per task a claim round took, plus one per round that took none, by reactor.",
    ["reactor"], registry=REGISTRY)
CLAIMS_LIMITED = Counter(
    "reactgen_claims_limited",
    "Claim rounds that left due work waiting for flow control (limit: concurrency slots "
    "held, or an empty rate-limit bucket), by reactor.",
    ["reactor", "limit"], registry=REGISTRY)
CLAIM_MISSES = Counter(
    "reactgen_claim_misses",
    "Claim attempts that found nothing due (another instance was faster, or a stale hint).",
    ["reactor"], registry=REGISTRY)
CLAIM_DURATION = Histogram(
    "reactgen_claim_duration_seconds", "Duration of claim attempts, by reactor.",
    ["reactor"], registry=REGISTRY, buckets=FAST_BUCKETS)
LEASE_RENEWALS = Counter(
    "reactgen_lease_renewals",
    "Task lease renewals while handlers run, by reactor.",
    ["reactor"], registry=REGISTRY)
LEASES_LOST = Counter(
    "reactgen_leases_lost",
    "Running tasks whose lease another execution took over (found by a renewal), by reactor.",
    ["reactor"], registry=REGISTRY)

# ---------------------------------------------------------------- planning (leader)

PLANNED = Counter(
    "reactgen_tasks_planned",
    "Task upserts written by the planner (change streams, scans, time triggers), by reactor.",
    ["reactor"], registry=REGISTRY)
PLANNING_FAILURES = Counter(
    "reactgen_planning_failures",
    "Source documents that could not be planned (poison documents), by reactor.",
    ["reactor"], registry=REGISTRY)
CHANGE_EVENTS = Counter(
    "reactgen_change_events",
    "Change-stream events planned by this instance (as leader), by database.",
    ["database"], registry=REGISTRY)
PLANNING_DURATION = Histogram(
    "reactgen_planning_duration_seconds",
    "Duration of planning one change-stream batch, by database.",
    ["database"], registry=REGISTRY, buckets=FAST_BUCKETS + (10, 30))
LEADER = Gauge(
    "reactgen_leader", "1 while this instance is the elected leader (plans), else 0.",
    registry=REGISTRY)
LEADER_CHANGES = Counter(
    "reactgen_leadership_changes",
    "Times this instance became or stopped being the leader.", registry=REGISTRY)
INSTANCE_INFO = Gauge(
    "reactgen_instance_info", "Always 1; identifies this instance and its version.",
    ["instance_id", "version"], registry=REGISTRY)

# ---------------------------------------------------------------- reconciliation (leader)

SCANNED = Counter(
    "reactgen_scan_documents",
    "Source documents planned by reconciliation scans.",
    ["database", "collection"], registry=REGISTRY)
SCAN_DOCUMENTS = Gauge(
    "reactgen_scan_progress_documents",
    "Documents planned so far by the current (or last) scan pass of a collection.",
    ["database", "collection"], registry=REGISTRY)
SCAN_EXPECTED = Gauge(
    "reactgen_scan_expected_documents",
    "Estimated documents of the collection when its current scan pass started.",
    ["database", "collection"], registry=REGISTRY)
SCAN_RUNNING = Gauge(
    "reactgen_scan_running",
    "1 while this instance (the leader) runs a reconciliation scan of the database.",
    ["database"], registry=REGISTRY)


def record_execution(reactor: str, outcome: str, duration_s: float) -> None:
    """Count one finished execution (``outcome``: one of :data:`OUTCOMES`)."""
    EXECUTIONS.labels(reactor=reactor, outcome=outcome).inc()
    DURATION.labels(reactor=reactor, outcome=outcome).observe(duration_s)


# ---------------------------------------------------------------- HTTP endpoint

_servers: dict[tuple[str, int], Any] = {}
_servers_lock = threading.Lock()


def metrics_url(port: int, host: str) -> str:
    """Where the metrics of ``host:port`` are scraped."""
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/metrics"


def serve_metrics(port: int, host: str) -> str:
    """Expose :data:`REGISTRY` over HTTP on a daemon thread; returns the URL. Serving the same
    address twice is a no-op. Raises ``OSError`` when the address cannot be bound."""
    with _servers_lock:
        if (host, port) not in _servers:
            server, _thread = start_http_server(port, addr=host, registry=REGISTRY)
            _servers[(host, port)] = server
    return metrics_url(port, host)


def stop_serving(port: int, host: str) -> None:
    """Stop the endpoint started by :func:`serve_metrics` (if any)."""
    with _servers_lock:
        server = _servers.pop((host, port), None)
    if server is not None:
        server.shutdown()
        server.server_close()


# ---------------------------------------------------------------- assembly for runtime serve

_registered: dict[str, ClusterMetrics] = {}
"""The cluster collector in :data:`REGISTRY` (one per process: a runtime started again in
the same process replaces the earlier one, which would otherwise export twice)."""


def _replace_cluster(cluster: ClusterMetrics | None) -> None:
    earlier = _registered.pop("cluster", None)
    if earlier is not None:
        earlier.cancel()
        with contextlib.suppress(KeyError):
            REGISTRY.unregister(earlier)
    if cluster is not None:
        REGISTRY.register(cluster)
        _registered["cluster"] = cluster


@dataclass
class RunningMetrics:
    """What :func:`start_metrics` started; :meth:`stop` undoes it."""

    scope: MetricsScope
    url: str | None
    cluster: ClusterMetrics | None
    host: str
    port: int | None

    async def stop(self) -> None:
        """Stop the cluster refresher and the HTTP endpoint."""
        if self.cluster is not None:
            await self.cluster.stop()
            if _registered.get("cluster") is self.cluster:
                _replace_cluster(None)
        if self.port is not None:  # shutdown() waits for the server's poll loop
            await asyncio.to_thread(stop_serving, self.port, self.host)


def start_metrics(settings: RuntimeSettings, client: AsyncMongoClient[dict[str, Any]],
                  reactors: Sequence[ReactorSpec], is_leader: Callable[[], bool],
                  middleware: MetricsMiddleware | None = None,
                  now: Callable[[], datetime.datetime] = utcnow) -> RunningMetrics:
    """Start the metrics of one instance (call it on the running event loop, once the
    client exists; ``is_leader`` is read on every scrape and refresh, so it may look at an
    elector that is created later).

    * serves ``/metrics`` on ``settings.metrics_host:metrics_port`` (nothing without a port)
      and logs ``event=metrics.started url=...``;
    * with ``settings.metrics_scope == "cluster"``, registers a :class:`ClusterMetrics`
      collector refreshed every ``settings.metrics_refresh_ms`` on an asyncio task, exported
      while ``is_leader()``; ``middleware.on_leadership`` then refreshes it at once;
    * ``now`` is the server's clock (``Runtime.clock.now``), used for lags and liveness.
    """
    scope: MetricsScope = "cluster" if settings.metrics_scope == "cluster" else "local"
    INSTANCE_INFO.labels(instance_id=settings.instance_id, version=runtime_version()).set(1)
    LEADER.set(1 if is_leader() else 0)
    if settings.metrics_port is None:
        return RunningMetrics(scope, None, None, settings.metrics_host, None)
    cluster = None
    if scope == "cluster":
        cluster = ClusterMetrics(client, settings.database, reactors, is_leader, now,
                                 interval_s=settings.metrics_refresh_ms / 1000)
        _replace_cluster(cluster)
        cluster.start()
        if middleware is not None:
            middleware.cluster = cluster
    try:
        url = serve_metrics(settings.metrics_port, settings.metrics_host)
    except OSError as exc:
        if cluster is not None:
            _replace_cluster(None)
            cluster.cancel()
        raise OSError(f"--metrics-port {settings.metrics_port}: cannot listen on "
                      f"{settings.metrics_host}: {exc}") from exc
    log_event(log, logging.INFO, f"Prometheus metrics at {url} (scope {scope})",
              event="metrics.started", url=url, scope=scope,
              instance=settings.instance_id)
    return RunningMetrics(scope, url, cluster, settings.metrics_host, settings.metrics_port)
