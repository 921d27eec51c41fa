"""OpenTelemetry spans (the ``reactgen[otel]`` extra): one span per execution and one per
planning batch, as middleware.

Installed automatically when ``opentelemetry`` is importable; spans go wherever the process's
tracer provider sends them (configure the SDK and an exporter as usual, e.g. with
``opentelemetry-instrument`` or in a ``--middleware`` factory). Without an SDK the API's no-op
tracer makes them free.

Execution span ``reactgen.execute``: attributes ``reactgen.reactor``, ``reactgen.task_id``,
``reactgen.source_id``, ``reactgen.attempt``, ``reactgen.outcome`` (and ``reactgen.error``); the
handler's own spans are its children. Planning span ``reactgen.plan``: ``reactgen.database``,
``reactgen.events``.
"""

from __future__ import annotations

from typing import Any

from opentelemetry import trace
from opentelemetry.trace import Span, Status, StatusCode, Tracer

from runtime.middleware import CallNext, Middleware
from runtime.outcome import Outcome, OutcomeKind
from runtime.reactor import ReactorSpec

FAILURES = (OutcomeKind.RETRY, OutcomeKind.FAILED, OutcomeKind.LEASE_LOST)


class TracingMiddleware(Middleware):
    """Spans around executions and planning batches."""

    def __init__(self, tracer: Tracer | None = None) -> None:
        self.tracer = tracer or trace.get_tracer("reactgen")
        self._open: dict[Any, Span] = {}

    def before_execution(self, reactor: ReactorSpec, task: dict[str, Any]) -> None:
        """Open the execution span (ended in :meth:`after_execution`, when the outcome is
        known)."""
        span = self.tracer.start_span(f"reactgen.execute {reactor.name}", attributes={
            "reactgen.reactor": reactor.name, "reactgen.task_id": str(task.get("_id")),
            "reactgen.source_id": str(task.get("sourceId")),
            "reactgen.attempt": int(task.get("attempts") or 0)})
        self._open[task.get("_id")] = span

    async def around_execution(self, reactor: ReactorSpec, ctx: Any, call_next: CallNext) -> None:
        """Make the execution span current while the handler runs."""
        span = self._open.get(getattr(getattr(ctx, "held", None), "task_id", None))
        if span is None:
            await call_next()
            return
        with trace.use_span(span, end_on_exit=False, record_exception=True,
                            set_status_on_exception=False):
            await call_next()

    def after_execution(self, reactor: ReactorSpec, task: dict[str, Any],
                        outcome: Outcome) -> None:
        """Record the outcome and end the span."""
        span = self._open.pop(task.get("_id"), None)
        if span is None:
            return
        span.set_attribute("reactgen.outcome", outcome.kind.value)
        if outcome.error:
            span.set_attribute("reactgen.error", outcome.error)
        if outcome.kind in FAILURES:
            span.set_status(Status(StatusCode.ERROR, outcome.error or outcome.kind.value))
        span.end()

    async def around_planning(self, database: str, events: int, call_next: CallNext) -> None:
        """A span per planned change-stream batch."""
        with self.tracer.start_as_current_span("reactgen.plan", attributes={
                "reactgen.database": database, "reactgen.events": events}):
            await call_next()

