"""Explain one (reactor, source document) pair: does a task exist, when will it run, and why.

Everything is judged on the server: the document's presence and the trigger filter are one
aggregation on the source collection (``[{$match: {_id}}, {$match: filter}]``, two stages as the
planner evaluates it), its watched values now are the reactor's watch expression evaluated by
the server, and times are compared with the server's clock.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from pymongo.errors import OperationFailure

from runtime.management.flow_notes import flow_notes
from runtime.management.formatting import (
    compact,
    display_id,
    duration,
    iso,
    relative,
    source_id_argument,
)
from runtime.management.instances import ClusterState, LeaderInfo, cluster
from runtime.management.reactors import PauseState
from runtime.management.scope import Scope, naive_utc
from runtime.management.status import TaskStatus
from runtime.management.tasks import TaskRecord
from runtime.meta import reactor_id, throttle_id
from runtime.reactor import ReactorSpec
from runtime.task_context import watch_expression
from runtime.task_store import snapshot_hash


class ExplainState(StrEnum):
    """Where a (reactor, source document) pair stands."""

    NO_DOCUMENT = "no_document"
    """No task, and no source document with this ``_id``."""
    NOT_MATCHING = "not_matching"
    """No task: the document does not match the trigger filter."""
    NOT_PLANNED = "not_planned"
    """The document matches but has no task: the planner has not seen it (yet)."""
    PENDING = "pending"
    """Waiting to run."""
    RUNNING = "running"
    """A worker runs it."""
    COMPLETED = "completed"
    FAILED = "failed"
    """Failed for good: the retry policy gave up."""
    POISON = "poison"
    """The document could not be planned (its filter or watch expression fails on it)."""
    SKIPPED = "skipped"


@dataclass(frozen=True)
class Explanation:
    """The answer of :func:`explain`: the facts, the state, when it runs and why."""

    reactor: str
    database: str
    collection: str
    tasks_collection: str
    source_id: Any
    server_time: datetime.datetime
    document_exists: bool
    matches_filter: bool | None
    """None when the document does not exist (or the filter cannot be evaluated on it)."""
    watched_now: Any
    """The watched values the planner would compute now (None without a document)."""
    evaluation_error: str | None
    """The server's error evaluating the filter or the watch expression on the document."""
    task: TaskRecord | None
    snapshot_changed: bool | None
    """Whether the watched values now differ from the task's stored snapshot (its hash): a
    change the planner has not planned yet. None when it cannot be compared."""
    paused: PauseState | None
    throttled_until: datetime.datetime | None
    leader: LeaderInfo | None
    executing_instances: list[str]
    """Live instances that execute this reactor."""
    live_instances: int
    state: ExplainState
    summary: str
    """One line: the state, when it runs and why."""
    runs_at: datetime.datetime | None
    """When the task will start next, if known (None: not scheduled, paused, or running)."""
    notes: list[str] = field(default_factory=list)
    """Further facts that matter for when it runs."""

    def render(self) -> str:
        """A readable multi-line explanation."""
        now = self.server_time
        lines = [f"reactor   {self.reactor} ({self.database}.{self.collection} -> "
                 f"{self.tasks_collection})",
                 f"source    {display_id(self.source_id)}"]
        if not self.document_exists:
            document = "does not exist"
        elif self.matches_filter is None:
            document = "exists; the filter cannot be evaluated on it"
        else:
            document = "exists, " + ("matches the filter" if self.matches_filter
                                     else "does not match the filter")
        lines.append(f"document  {document}")
        if self.evaluation_error:
            lines.append(f"error     {self.evaluation_error}")
        if self.document_exists and self.evaluation_error is None:
            lines.append(f"watched   {compact(self.watched_now, 100)} (now)")
        task = self.task
        if task is not None:
            if self.snapshot_changed is None:
                change = ""
            else:
                change = " (changed since: not planned yet)" if self.snapshot_changed \
                    else " (unchanged)"
            lines.append(f"planned   {compact(task.snapshot, 100)}{change}")
            lines.append(f"task      {display_id(task.id)}: {task.status}, attempts {task.attempts}"
                         f", next run {iso(task.next_run_at)}"
                         + (f" ({relative(task.next_run_at, now)})" if task.next_run_at
                            else "") + f", updated {iso(task.updated_at)}")
        lines.append(f"state     {self.summary}")
        lines.extend(f"          - {note}" for note in self.notes)
        return "\n".join(lines)


async def _evaluate(scope: Scope, spec: ReactorSpec,
                    source_id: Any) -> tuple[bool, bool | None, Any, str | None]:
    """(exists, matches, watched values, evaluation error) of the source document."""
    source = scope.source_of(spec)
    exists = await source.count_documents({"_id": source_id}, limit=1) > 0
    if not exists:
        return False, None, None, None
    matches: bool | None = True
    error = None
    if spec.filter:
        try:
            cursor = await source.aggregate([{"$match": {"_id": source_id}},
                                             {"$match": spec.filter}, {"$project": {"_id": 1}}])
            matches = bool(await cursor.to_list(1))
        except OperationFailure as exc:
            matches, error = None, f"filter: {exc}"
    watched: Any = None
    try:
        cursor = await source.aggregate([{"$match": {"_id": source_id}},
                                         {"$project": {"s": watch_expression(spec)}}])
        rows = await cursor.to_list(1)
        if rows:
            watched = rows[0].get("s", {} if spec.watch == {} else None)
    except OperationFailure as exc:
        error = (error + "; " if error else "") + f"watch: {exc}"
    return True, matches, watched, error


async def explain(scope: Scope, reactor: str, source_id: Any) -> Explanation:
    """Explain the task of ``reactor`` for the source document ``source_id``."""
    spec = scope.reactor(reactor)
    now = await scope.server_now()
    exists, matches, watched, error = await _evaluate(scope, spec, source_id)
    doc = await scope.tasks_of(spec).find_one({"reactor": reactor, "sourceId": source_id})
    task = TaskRecord.from_document(doc, scope.database_name(spec), spec.tasks_collection) \
        if doc is not None else None
    meta = {d["_id"]: d async for d in scope.meta.find(
        {"_id": {"$in": [reactor_id(reactor), throttle_id(reactor)]}})}
    paused = PauseState.from_document((meta.get(reactor_id(reactor)) or {}).get("paused"))
    until = naive_utc((meta.get(throttle_id(reactor)) or {}).get("until"))
    throttled = until if isinstance(until, datetime.datetime) and until > now else None
    state = await cluster(scope)
    changed = None
    if task is not None and exists and matches and error is None:
        changed = snapshot_hash(watched) != task.snapshot_hash
    flow = (await flow_notes(scope, spec, doc, now)
            if doc is not None and doc.get("status") == "pending" else [])
    facts = _Facts(spec, source_id, now, exists, matches, error, task, changed, paused,
                   throttled, state, flow)
    status, summary, runs_at, notes = facts.judge()
    return Explanation(
        reactor=reactor, database=scope.database_name(spec), collection=spec.collection,
        tasks_collection=spec.tasks_collection, source_id=source_id, server_time=now,
        document_exists=exists, matches_filter=matches, watched_now=watched,
        evaluation_error=error, task=task, snapshot_changed=changed, paused=paused,
        throttled_until=throttled, leader=state.leader,
        executing_instances=[i.instance for i in state.running_reactor(reactor)],
        live_instances=len(state.live), state=status, summary=summary, runs_at=runs_at,
        notes=notes)


@dataclass
class _Facts:
    """The inputs of the verdict (kept together so the rules read top to bottom)."""

    spec: ReactorSpec
    source_id: Any
    now: datetime.datetime
    exists: bool
    matches: bool | None
    error: str | None
    task: TaskRecord | None
    changed: bool | None
    paused: PauseState | None
    throttled: datetime.datetime | None
    cluster: ClusterState
    flow: list[str]
    """Flow-control notes (slots, rate limit, priority) for a pending task."""

    def judge(self) -> tuple[ExplainState, str, datetime.datetime | None, list[str]]:
        """(state, summary, runs at, notes)."""
        if self.task is None:
            return self._no_task()
        task = self.task
        if task.planning_error is not None:
            return (ExplainState.POISON,
                    f"failed: the document could not be planned (a poison document) at "
                    f"{iso(task.planning_error.at)}: {task.planning_error.error}", None,
                    ["fix the document (its next change is planned normally) or the "
                     "reactor's filter/watch expressions; then request a scan with "
                     f"`runtime reconcile {self.spec.name}` if the document does not change",
                     *self._data_notes()])
        if task.status == TaskStatus.PENDING:
            return self._pending(task)
        if task.status in (TaskStatus.PROCESSING, TaskStatus.PROCESSING_DIRTY):
            return self._running(task)
        retry = (f"`runtime tasks retry --reactor {self.spec.name} --source-id "
                 f"{source_id_argument(self.source_id)}`")
        if task.status == TaskStatus.COMPLETED:
            return (ExplainState.COMPLETED,
                    f"completed at {iso(task.completed_at or task.last_finalized_at)}; "
                    f"{self._rerun()}", None, self._data_notes())
        if task.status == TaskStatus.FAILED:
            return (ExplainState.FAILED,
                    f"failed for good after {task.attempts} attempt(s): "
                    f"{task.last_error or 'no error recorded'}; retry with {retry}", None,
                    self._data_notes())
        return (ExplainState.SKIPPED,
                f"skipped: {task.skip_reason or 'no reason recorded'}; {self._rerun()}, or "
                f"retry with {retry}", None, self._data_notes())

    def _rerun(self) -> str:
        """What makes a finished task run again."""
        if self.spec.watch is None:
            return "runs again when the document changes"
        if not self.spec.watch:
            return "runs once per document (nothing is watched)"
        return "runs again when a watched value changes"

    # -- no task

    def _no_task(self) -> tuple[ExplainState, str, datetime.datetime | None, list[str]]:
        if not self.exists:
            return (ExplainState.NO_DOCUMENT,
                    "no task: the document does not exist", None,
                    [f"no document with _id {display_id(self.source_id)} in "
                     f"{self.spec.collection}; a task is planned when one is inserted that "
                     "matches the filter"])
        if self.matches is False:
            return (ExplainState.NOT_MATCHING,
                    "no task: the document does not match the filter", None,
                    [f"filter: {compact(self.spec.filter)}"])
        notes = []
        if self.error:
            notes.append("the planner fails on this document the same way: it is recorded as "
                         "a poison document once planned")
        notes.append(self._leader_note())
        return (ExplainState.NOT_PLANNED,
                "no task yet: the planner has not seen it (is a leader running?)", None, notes)

    def _leader_note(self) -> str:
        lease = self.cluster.leader
        if lease is None or not lease.valid:
            return ("no leader is running: nothing is planned until a `runtime serve` "
                    "instance starts")
        return (f"leader {lease.owner} is running: the change may be in flight; if this "
                f"lasts, request a scan with `runtime reconcile {self.spec.name}`")

    # -- pending

    def _why_pending(self, task: TaskRecord) -> str:
        last = task.history[-1] if task.history else None
        finalized = task.last_finalized_at
        if task.retried_at is not None and (finalized is None or task.retried_at >= finalized):
            return f"retried by an operator at {iso(task.retried_at)}"
        if (last is not None and last.status == "deferred" and finalized is not None
                and (task.updated_at is None or finalized >= task.updated_at)):
            return "deferred by the handler (ctx.defer)"
        if task.last_error and task.attempts > 0:
            return (f"retry {task.attempts + 1} after error: {task.last_error}")
        if task.reprocessed_at is not None and (finalized is None
                                                or task.reprocessed_at >= finalized):
            return f"reprocessed for a new handler version at {iso(task.reprocessed_at)}"
        delay = self.spec.policies.debounce.delay_ms
        if delay and task.next_run_at is not None and task.next_run_at > self.now:
            return f"debounce: due {duration(delay / 1000)} after the last change"
        return f"new data, planned at {iso(task.updated_at or task.created_at)}"

    def _pending(self, task: TaskRecord) -> tuple[ExplainState, str, datetime.datetime | None,
                                                  list[str]]:
        why = self._why_pending(task)
        notes: list[str] = []
        due = task.next_run_at
        if due is None:
            when = "not scheduled (no nextRunAt)"
            runs_at = None
        elif due <= self.now:
            when = f"due now (overdue by {duration((self.now - due).total_seconds())})"
            runs_at = self.now
        else:
            when = f"due at {iso(due)} ({relative(due, self.now)})"
            runs_at = due
        summary = f"pending, {when} ({why})"
        if self.paused is not None:
            summary = f"paused: {summary}"
            notes.append(self._paused_note())
            runs_at = None
        if self.throttled is not None:
            notes.append(f"the reactor is throttled until {iso(self.throttled)} "
                         f"({relative(self.throttled, self.now)}): nothing starts before")
            if runs_at is not None:
                runs_at = max(runs_at, self.throttled)
        if runs_at is not None:
            notes.extend(self._executor_notes())
        notes.extend(self.flow)
        notes.extend(self._data_notes())
        return ExplainState.PENDING, summary, runs_at, notes

    def _paused_note(self) -> str:
        assert self.paused is not None
        reason = f" ({self.paused.reason})" if self.paused.reason else ""
        return (f"the reactor is paused since {iso(self.paused.at)} by "
                f"{self.paused.by or '?'}{reason}: no instance starts it until "
                f"`runtime resume {self.spec.name}`")

    def _executor_notes(self) -> list[str]:
        if not self.cluster.live:
            return ["no runtime instance reported a heartbeat in the last 10 s: it runs once "
                    "one is started"]
        if not self.cluster.running_reactor(self.spec.name):
            return [f"no live instance executes reactor {self.spec.name} (see "
                    "`runtime instances`)"]
        return []

    # -- running

    def _running(self, task: TaskRecord) -> tuple[ExplainState, str, datetime.datetime | None,
                                                  list[str]]:
        lease = task.lease
        owner = lease.owner if lease else None
        expires = lease.expires_at if lease else task.next_run_at
        summary = (f"running on instance {owner or '?'} since {iso(task.started_at)} "
                   f"(attempt {task.attempts}), lease until {iso(expires)}")
        notes: list[str] = []
        runs_at = None
        if expires is not None and expires <= self.now:
            notes.append(f"the lease expired {relative(expires, self.now)}: its instance "
                         f"probably died; another instance takes it over (attempt "
                         f"{task.attempts + 1})")
            runs_at = self.now
        elif owner and self.cluster.instances and owner not in {
                i.instance for i in self.cluster.live}:
            notes.append(f"instance {owner} has no recent heartbeat: if it died, the task is "
                         f"taken over when the lease expires ({relative(expires, self.now)})")
        if task.status == TaskStatus.PROCESSING_DIRTY:
            notes.append("its data changed (or a retry was requested) meanwhile: it runs "
                         "again right after this execution")
        if self.paused is not None:
            notes.append(self._paused_note())
        notes.extend(self._data_notes())
        return ExplainState.RUNNING, summary, runs_at, notes

    # -- the data now

    def _data_notes(self) -> list[str]:
        notes = []
        task = self.task
        assert task is not None
        if not self.exists:
            notes.append("the document no longer exists" + (
                f"; the task is deleted after {iso(task.expires_at)} (cleanup policy)"
                if task.expires_at else "; a pending execution is skipped"))
        elif self.matches is False:
            notes.append("the document no longer matches the filter: a pending execution is "
                         "skipped (late-binding check)")
        elif self.changed:
            notes.append("its watched values changed since the task was planned: the planner "
                         "plans it again when it reads the change. "
                         + self._leader_note())
        if self.error and task.planning_error is None:
            notes.append(f"evaluating the document fails: {self.error}")
        return notes
