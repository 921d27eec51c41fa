"""Prometheus metrics of one runtime instance (prometheus-client).

Served on ``--metrics-port`` (bound to 127.0.0.1 unless ``--metrics-host`` says otherwise).
This is the first set; queue gauges, lag and per-instance federation come with the metrics
issue. Skips, deferrals and lost leases are outcomes of their own, never counted as success.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

REGISTRY = CollectorRegistry(auto_describe=True)

EXECUTIONS = Counter(
    "reactgen_task_executions",
    "Task executions by reactor and outcome "
    "(completed, failed, skipped, deferred, lease_lost).",
    ["reactor", "outcome"], registry=REGISTRY)
DURATION = Histogram(
    "reactgen_task_duration_seconds", "Handler duration by reactor and outcome.",
    ["reactor", "outcome"], registry=REGISTRY,
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300))

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
PLANNING_FAILURES = Counter(
    "reactgen_planning_failures",
    "Source documents that could not be planned (poison documents), by reactor.",
    ["reactor"], registry=REGISTRY)


def record_execution(reactor: str, outcome: str, duration_s: float) -> None:
    """Count one finished execution."""
    EXECUTIONS.labels(reactor=reactor, outcome=outcome).inc()
    DURATION.labels(reactor=reactor, outcome=outcome).observe(duration_s)


def serve_metrics(port: int, host: str) -> None:
    """Expose the registry over HTTP (a daemon thread)."""
    start_http_server(port, addr=host, registry=REGISTRY)
