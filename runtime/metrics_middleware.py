"""The per-instance Prometheus metrics, fed by the middleware hooks (``runtime/middleware.py``).

Add one :class:`MetricsMiddleware` to the runtime's middleware stack; the families it updates
are defined in ``runtime/metrics.py``. Label values are limited to the application's reactors
and databases (a hook about anything else is ignored), and every series of a known label set
exists from the start, at zero: a series that appeared only with its first event would hide
that event from ``rate()`` and ``increase()``, and dashboards would show "no data" for zero.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from runtime import metrics
from runtime.cluster_metrics import ClusterMetrics
from runtime.middleware import CallNext, Middleware
from runtime.outcome import Outcome, OutcomeKind
from runtime.reactor import ReactorSpec


class MetricsMiddleware(Middleware):
    """Counts what the runtime reports through the hooks (quick, never raises)."""

    def __init__(self, reactors: Sequence[ReactorSpec] | None = None,
                 database: str | None = None) -> None:
        """``reactors`` (and the default ``database``) bound the label values; without them
        any value is accepted."""
        self.reactors: frozenset[str] | None = None
        self.databases: frozenset[str] | None = None
        self.cluster: ClusterMetrics | None = None
        """Told of leadership changes (set by ``metrics.start_metrics``)."""
        # Labelled children by (family, label values): ``labels()`` on every hook call costs
        # more than the update itself. Children are created on first use, as before.
        self._children: dict[tuple[Any, ...], Any] = {}
        if reactors is None:
            return
        self.reactors = frozenset(r.name for r in reactors)
        for name in sorted(self.reactors):  # every series starts at zero
            for family in (metrics.RETRIES, metrics.CLAIMS, metrics.CLAIM_MISSES,
                           metrics.LEASE_RENEWALS, metrics.LEASES_LOST, metrics.PLANNED,
                           metrics.PLANNING_FAILURES):
                family.labels(reactor=name)
            metrics.IN_PROGRESS.labels(reactor=name)
            for outcome in metrics.OUTCOMES:
                metrics.EXECUTIONS.labels(reactor=name, outcome=outcome)
                metrics.DURATION.labels(reactor=name, outcome=outcome)
        if database is None:
            return
        self.databases = frozenset({database, *(r.database or database for r in reactors)})
        for db in sorted(self.databases):
            metrics.CHANGE_EVENTS.labels(database=db)
        for db, collection in sorted({(r.database or database, r.collection)
                                      for r in reactors}):
            metrics.SCANNED.labels(database=db, collection=collection)

    def _known(self, reactor: str) -> bool:
        return self.reactors is None or reactor in self.reactors

    def _child(self, family: Any, reactor: str) -> Any:
        """``family.labels(reactor=reactor)``, looked up once."""
        key = (family, reactor)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = family.labels(reactor=reactor)
        return child

    def _outcome_children(self, reactor: str, outcome: str) -> tuple[Any, Any]:
        """The executions counter and duration histogram of ``reactor`` and ``outcome``."""
        key = (metrics.EXECUTIONS, reactor, outcome)
        children = self._children.get(key)
        if children is None:
            children = self._children[key] = (
                metrics.EXECUTIONS.labels(reactor=reactor, outcome=outcome),
                metrics.DURATION.labels(reactor=reactor, outcome=outcome))
        return children

    # ------------------------------------------------------------------ executions

    def before_execution(self, reactor: ReactorSpec, task: dict[str, Any]) -> None:
        """A handler starts: one more in progress."""
        if self._known(reactor.name):
            self._child(metrics.IN_PROGRESS, reactor.name).inc()

    def after_execution(self, reactor: ReactorSpec, task: dict[str, Any],
                        outcome: Outcome) -> None:
        """Count the execution by outcome (a retry is a failure, and a retry)."""
        name = reactor.name
        if not self._known(name):
            return
        self._child(metrics.IN_PROGRESS, name).dec()
        # metrics.record_execution, through the cached children
        executions, duration = self._outcome_children(name, outcome.kind.metric_label)
        executions.inc()
        duration.observe(outcome.duration_s)
        if outcome.kind is OutcomeKind.RETRY:
            self._child(metrics.RETRIES, name).inc()

    def on_start_delay(self, reactor: str, seconds: float) -> None:
        """Due-to-start latency."""
        if self._known(reactor):
            self._child(metrics.START_DELAY, reactor).observe(max(0.0, seconds))

    # ------------------------------------------------------------------ claims and leases

    def on_claim(self, reactor: str, claimed: bool, seconds: float) -> None:
        """A claim attempt, and whether it missed."""
        if not self._known(reactor):
            return
        self._child(metrics.CLAIMS, reactor).inc()
        self._child(metrics.CLAIM_DURATION, reactor).observe(max(0.0, seconds))
        if not claimed:
            self._child(metrics.CLAIM_MISSES, reactor).inc()

    def on_lease_renewed(self, reactor: str) -> None:
        """A lease renewal."""
        if self._known(reactor):
            self._child(metrics.LEASE_RENEWALS, reactor).inc()

    def on_lease_lost(self, reactor: str) -> None:
        """A lost lease."""
        if self._known(reactor):
            metrics.LEASES_LOST.labels(reactor=reactor).inc()

    def on_claim_limited(self, reactor: str, limit: str) -> None:
        """A claim round held back by flow control."""
        if self._known(reactor):
            metrics.CLAIMS_LIMITED.labels(reactor=reactor, limit=limit).inc()

    # ------------------------------------------------------------------ planning (leader)

    async def around_planning(self, database: str, events: int, call_next: CallNext) -> None:
        """Time the planning of a change-stream batch; count its events once planned."""
        known = self.databases is None or database in self.databases
        started = time.perf_counter()
        try:
            await call_next()
        finally:
            if known:
                metrics.PLANNING_DURATION.labels(database=database).observe(
                    time.perf_counter() - started)
        if known:  # a failed batch is planned again: its events count once, when planned
            metrics.CHANGE_EVENTS.labels(database=database).inc(max(0, events))

    def on_planned(self, reactor: str, tasks: int) -> None:
        """Task upserts written."""
        if self._known(reactor) and tasks > 0:
            metrics.PLANNED.labels(reactor=reactor).inc(tasks)

    def on_poison(self, reactor: str, source_id: Any, error: str) -> None:
        """A poison document (``reactgen_planning_failures_total``)."""
        if self._known(reactor):
            metrics.PLANNING_FAILURES.labels(reactor=reactor).inc()

    def on_leadership(self, leader: bool, token: int) -> None:
        """Leader gauge; the cluster gauges follow the leadership."""
        metrics.LEADER.set(1 if leader else 0)
        metrics.LEADER_CHANGES.inc()
        if self.cluster is not None:
            self.cluster.leadership_changed(leader)
