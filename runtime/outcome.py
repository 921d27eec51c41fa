"""The outcome of one execution: a single value, decided once and applied by the worker in one
place (``WorkerPool._apply``), then handed to every middleware (metrics, logs, tracing, yours).
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, replace
from enum import StrEnum


class OutcomeKind(StrEnum):
    """What an execution ended as."""

    COMPLETED = "completed"
    RETRY = "retry"
    """The handler failed; the retry policy runs it again (``retry_in_ms`` or ``retry_at``)."""
    FAILED = "failed"
    """The handler failed and the retry policy gave up (the task is ``failed``)."""
    DEFERRED = "deferred"
    SKIPPED = "skipped"
    LEASE_LOST = "lease_lost"
    """The result could not be recorded: another execution holds the task now."""

    @property
    def metric_label(self) -> str:
        """The ``outcome`` label of execution metrics: a retried failure is a failure."""
        return OutcomeKind.FAILED.value if self is OutcomeKind.RETRY else self.value


@dataclass(frozen=True)
class Outcome:
    """One execution's end, as the worker records it."""

    kind: OutcomeKind
    duration_s: float
    error: str | None = None
    """``Type: message`` of a failure, or the reason of a skip."""
    traceback: str | None = None
    """The failure's traceback, trimmed to the user's frames."""
    retry_in_ms: int | None = None
    retry_at: datetime.datetime | None = None
    defer_ms: int | None = None
    intended: OutcomeKind | None = None
    """For ``LEASE_LOST``: what the execution would have recorded."""

    def lost(self, reason: str | None = None) -> Outcome:
        """This outcome, not recorded because the lease was lost."""
        error = self.error if reason is None else f"{self.error or ''} ({reason})".strip()
        return replace(self, kind=OutcomeKind.LEASE_LOST, intended=self.kind, error=error)
