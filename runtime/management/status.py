"""Task statuses as an enum (the stored values are the strings of ``runtime.task_store``)."""

from __future__ import annotations

from enum import StrEnum

from runtime import task_store


class TaskStatus(StrEnum):
    """The ``status`` of a task document (see docs/runtime.md, "Task lifecycle")."""

    PENDING = task_store.PENDING
    """Waiting to run: new, changed, retrying or deferred; due at ``nextRunAt``."""
    PROCESSING = task_store.PROCESSING
    """A worker runs it; ``nextRunAt`` is its lease expiry."""
    PROCESSING_DIRTY = task_store.PROCESSING_DIRTY
    """Running, and its data changed meanwhile (or a retry was requested): it runs again after
    this execution."""
    COMPLETED = task_store.COMPLETED
    """The handler returned (or ``mark_completed`` committed)."""
    FAILED = task_store.FAILED
    """The retry policy gave up (or the document could not be planned: a poison document)."""
    SKIPPED = task_store.SKIPPED
    """The late-binding check failed, or the source went away before it ran."""

    @property
    def running(self) -> bool:
        """Whether a worker holds the task (``processing`` or ``processing_dirty``)."""
        return self in RUNNING_STATUSES

    @property
    def finished(self) -> bool:
        """Whether the task is in a terminal state (``completed``, ``failed``, ``skipped``)."""
        return self in FINISHED_STATUSES


RUNNING_STATUSES = frozenset({TaskStatus.PROCESSING, TaskStatus.PROCESSING_DIRTY})
"""Statuses of a task a worker holds."""
FINISHED_STATUSES = frozenset({TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.SKIPPED})
"""Terminal statuses: ``nextRunAt`` is null, nothing runs until the data changes or a retry."""


def parse_status(value: str | TaskStatus) -> TaskStatus:
    """A status from its stored name; raises ``ValueError`` naming the valid ones."""
    try:
        return TaskStatus(value)
    except ValueError:
        names = ", ".join(status.value for status in TaskStatus)
        raise ValueError(f"unknown task status {value!r} (one of {names})") from None
