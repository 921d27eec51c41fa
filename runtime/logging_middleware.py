"""The ``task.finished`` log line of every execution, as middleware."""

from __future__ import annotations

import logging
from typing import Any

from runtime.middleware import Middleware
from runtime.outcome import Outcome, OutcomeKind
from runtime.reactor import ReactorSpec
from runtime.structured_logging import log_event

log = logging.getLogger("runtime.worker")
QUIET = (OutcomeKind.COMPLETED, OutcomeKind.SKIPPED, OutcomeKind.DEFERRED)


class LoggingMiddleware(Middleware):
    """One line per execution: INFO when it went as planned, WARNING for failures, lost
    leases and completions with an error; failures carry the trimmed traceback."""

    def __init__(self, instance: str) -> None:
        self.instance = instance

    def after_execution(self, reactor: ReactorSpec, task: dict[str, Any],
                        outcome: Outcome) -> None:
        """Log the outcome."""
        kind = outcome.kind
        # Quiet unless it failed or carries an error (a skip's error is its reason).
        quiet = kind in QUIET and not (outcome.error and kind is not OutcomeKind.SKIPPED)
        level = logging.INFO if quiet else logging.WARNING
        if not log.isEnabledFor(level):
            return  # nothing would be emitted: skip building the line
        shown = kind.metric_label
        fields: dict[str, Any] = {}
        if outcome.error and kind is OutcomeKind.SKIPPED:
            fields["reason"] = outcome.error
        elif outcome.error:
            fields["error"] = outcome.error
        if kind is OutcomeKind.RETRY:
            if outcome.retry_in_ms is not None:
                fields["retry_in_ms"] = outcome.retry_in_ms
            elif outcome.retry_at is not None:
                fields["retry_at"] = outcome.retry_at.isoformat()
        elif kind is OutcomeKind.FAILED:
            fields["final"] = True
        if outcome.traceback and kind is not OutcomeKind.SKIPPED:
            fields["traceback"] = outcome.traceback
        message = ("task result discarded (lease lost)" if kind is OutcomeKind.LEASE_LOST
                   else f"task {shown}")
        log_event(log, level, message,
                  event="task.finished", reactor=reactor.name, task_id=task.get("_id"),
                  source_id=task.get("sourceId"), attempt=task.get("attempts"),
                  outcome=shown, duration_ms=round(outcome.duration_s * 1000, 1),
                  instance=self.instance, **fields)
