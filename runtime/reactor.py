"""What a reactor is at run time: its trigger, policies and handler, as generated code binds them.

``reactgen build`` writes one module per reactor that constructs a :class:`ReactorSpec`; the
runtime loads them through the generated registry. Durations are milliseconds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel

RetryStrategy = Literal["fixed", "linear", "exponential", "series", "cron"]
CleanupWhen = Literal["sourceDeleted", "sourceDeletedOrUnmatched", "never"]
OnVersionIncrease = Literal["none", "reprocessFailed", "reprocessAll"]


@dataclass(frozen=True)
class DebouncePolicy:
    """Trailing debounce: run ``delay_ms`` after the last change, but no later than
    ``max_wait_ms`` after the first unprocessed one (so continuous changes cannot starve it)."""

    delay_ms: int = 0
    max_wait_ms: int | None = None


@dataclass(frozen=True)
class RetryPolicy:
    """When a failed execution runs again, and when it stops trying."""

    strategy: RetryStrategy = "exponential"
    interval_ms: int = 1000
    min_ms: int = 1000
    max_ms: int = 3_600_000
    factor: float = 2.0
    jitter: float = 0.0
    delays_ms: tuple[int, ...] = ()
    cron: str | None = None
    max_attempts: int | None = 5
    max_duration_ms: int | None = None
    reset_on_data_change: bool = True


@dataclass(frozen=True)
class CleanupPolicy:
    """What happens to a task when its source document is deleted or stops matching."""

    when: CleanupWhen = "sourceDeleted"
    keep_for_ms: int = 0


@dataclass(frozen=True)
class EvolutionPolicy:
    """How the runtime reacts when the handler version or the trigger changes."""

    handler_version: int = 1
    on_version_increase: OnVersionIncrease = "none"
    reconcile_on_trigger_change: bool = True


@dataclass(frozen=True)
class TimeTrigger:
    """A comparison of a document field with ``$$NOW`` in the trigger filter.

    The filter's verdict for a document can change without a write at the moment
    ``document[path] + offset_ms`` (server time); the leader re-plans the documents whose moment
    passed since its last pass. ``path`` is a dotted field path; the generator ensures an
    ascending index on it (``index``) so the window query is index-served.
    """

    path: str
    offset_ms: int = 0
    index: str = ""


@dataclass(frozen=True)
class KeyConcurrency:
    """At most ``max`` executions at once per value of ``expression`` (evaluated on the source
    document when the task is planned, e.g. ``"$customerId"``), across all instances."""

    expression: Any
    max: int = 1


@dataclass(frozen=True)
class RateLimit:
    """At most ``max`` executions started per ``per_ms``, cluster-wide (a token bucket that
    refills continuously and holds at most ``max`` tokens)."""

    max: int
    per_ms: int


@dataclass(frozen=True)
class PriorityPolicy:
    """Claim order among due tasks: higher first. ``static`` is the reactor's priority (it also
    orders reactors against each other); ``expression``, if given, computes a task's priority
    from its source document when the task is planned (non-numbers fall back to ``static``)."""

    static: int = 0
    expression: Any | None = None


@dataclass(frozen=True)
class Policies:
    """All policies of one reactor, with the defaults documented in docs/reactor-definitions.md."""

    debounce: DebouncePolicy = field(default_factory=DebouncePolicy)
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    timeout_ms: int | None = None
    cleanup: CleanupPolicy = field(default_factory=CleanupPolicy)
    concurrency: int | None = None
    """Most executions at once on one instance (``concurrency: N`` or ``perInstance``)."""
    cluster_concurrency: int | None = None
    """Most executions at once across all instances (``concurrency: {max: N}``)."""
    key_concurrency: KeyConcurrency | None = None
    """Most executions at once per key value (``concurrency: {key: <expression>, max: N}``)."""
    rate_limit: RateLimit | None = None
    """Most executions started per period, cluster-wide (``rateLimit: {max: N, per: 1s}``)."""
    priority: PriorityPolicy = field(default_factory=PriorityPolicy)
    """Claim order among due tasks (``priority: N`` or ``{static: N, expression: ...}``)."""
    history_limit: int = 5
    evolution: EvolutionPolicy = field(default_factory=EvolutionPolicy)


@dataclass(frozen=True)
class ReactorSpec:
    """One compiled reactor definition."""

    name: str
    collection: str
    database: str | None
    model: type[BaseModel]
    watched_model: type[BaseModel]
    filter: dict[str, Any]
    watch: dict[str, Any] | None
    pipeline: list[dict[str, Any]]
    policies: Policies
    handler: str
    trigger_fingerprint: str
    source: str
    time_triggers: tuple[TimeTrigger, ...] = ()

    @property
    def tasks_collection(self) -> str:
        """Where this reactor's tasks live: ``<collection>_tasks``."""
        return f"{self.collection}_tasks"
