"""How the planner writes tasks: the upserts of changed, poisoned and gone sources.

Pure builders of fenced bulk-write operations (``UpdateOne``); the planner sends them. Every
filter carries the leadership token (:func:`task_key`), so a deposed planner's write is refused.
Task statuses and the document shape: docs/architecture.md.
"""

from __future__ import annotations

import datetime
import hashlib
import math
from dataclasses import dataclass
from typing import Any

import bson
from bson import ObjectId
from pymongo import UpdateOne

from runtime.reactor import ReactorSpec
from runtime.task_status import FAILED, PENDING, PROCESSING, PROCESSING_DIRTY, RUNNING, SKIPPED


def snapshot_hash(snapshot: Any) -> str:
    """Stable digest of a watched-values snapshot (BSON bytes, so types and order count)."""
    return hashlib.sha256(bson.encode({"s": snapshot})).hexdigest()[:32]


def _debounced(reactor: ReactorSpec, anchor: Any) -> Any:
    """Server-side due time: ``$$NOW + delay``, capped at ``anchor + maxWait``."""
    debounce = reactor.policies.debounce
    due: Any = {"$add": ["$$NOW", debounce.delay_ms]} if debounce.delay_ms else "$$NOW"
    if debounce.max_wait_ms is not None:
        due = {"$min": [due, {"$add": [anchor, debounce.max_wait_ms]}]}
    return due


def debounce_expression(reactor: ReactorSpec) -> Any:
    """When a task that got new data while running becomes due again."""
    return _debounced(reactor, {"$ifNull": ["$firstChangeAt", "$$NOW"]})


def task_key(reactor: ReactorSpec, source_id: Any, leader_token: int) -> dict[str, Any]:
    """The planner's filter for one task: its key, fenced by the leadership token.

    ``plannerToken`` records the token of the leader that planned the task last. A deposed
    planner's filter does not match a task a newer leader planned; as an upsert it then tries
    to insert, collides with the unique task key and is refused (``DuplicateKeyError``).
    """
    return {"reactor": reactor.name, "sourceId": source_id,
            "plannerToken": {"$not": {"$gt": leader_token}}}


_TEMPLATES: dict[tuple[Any, ...],
                 tuple[list[dict[str, Any]], dict[str, Any], dict[str, Any]]] = {}


def _plan_template(reactor: ReactorSpec
                   ) -> tuple[list[dict[str, Any]], dict[str, Any], dict[str, Any]]:
    """The parts of :func:`plan_update`'s pipeline that do not depend on the document (built
    once per reactor policy: planning builds one pipeline per changed document).

    Facts used more than once are computed once into temporary fields (``_running``,
    ``_fresh``, ``_next``), and the retry policy's ``resetOnDataChange`` is folded in here:
    every statement of a planner's bulk write carries this pipeline, so its size is what the
    database decodes and evaluates per planned document.
    """
    debounce = reactor.policies.debounce
    reset = reactor.policies.retry.reset_on_data_change
    key = (reactor.name, debounce.delay_ms, debounce.max_wait_ms, reset)
    cached = _TEMPLATES.get(key)
    if cached is not None:
        return cached
    status = {"$ifNull": ["$status", "none"]}
    facts: list[dict[str, Any]] = [
        {"$set": {"_running": {"$in": [status, RUNNING]},
                  "_waiting": {"$in": [status, [PENDING, PROCESSING_DIRTY]]}}},
        # _fresh: changed and not running, so due again (a running task becomes dirty and
        # keeps its lease and due time); _anchor: the first unprocessed change.
        {"$set": {"_fresh": {"$and": ["$_changed", {"$not": ["$_running"]}]},
                  "_anchor": {"$cond": [{"$and": ["$_changed", {"$not": ["$_waiting"]}]},
                                        "$$NOW", "$firstChangeAt"]}}},
        {"$set": {"_next": _debounced(reactor, "$_anchor")}},
    ]
    kept_or_reset: dict[str, Any] = {
        "attempts": {"$cond": ["$_fresh", 0, {"$ifNull": ["$attempts", 0]}]},
        "firstErrorAt": {"$cond": ["$_changed", None, {"$ifNull": ["$firstErrorAt", None]}]},
        "lastError": {"$cond": ["$_changed", None, {"$ifNull": ["$lastError", None]}]},
    } if reset else {
        "attempts": {"$ifNull": ["$attempts", 0]},
        "firstErrorAt": {"$ifNull": ["$firstErrorAt", None]},
        "lastError": {"$ifNull": ["$lastError", None]},
    }
    fields: dict[str, Any] = {
        "reactor": reactor.name,
        "status": {"$cond": ["$_changed", {"$cond": ["$_running", PROCESSING_DIRTY, PENDING]},
                             "$status"]},
        "firstChangeAt": "$_anchor",
        "nextRunAt": {"$cond": ["$_fresh", "$_next", "$nextRunAt"]},
        "dueAt": {"$cond": ["$_fresh", "$_next", "$dueAt"]},
        **kept_or_reset,
        "createdAt": {"$ifNull": ["$createdAt", "$$NOW"]},
        "updatedAt": {"$cond": ["$_changed", "$$NOW", "$updatedAt"]},
        "skipReason": {"$cond": ["$_changed", None, "$skipReason"]},
        "planningError": {"$cond": ["$_changed", "$$REMOVE", "$planningError"]},
    }
    unset = {"$unset": ["_changed", "_running", "_waiting", "_fresh", "_anchor", "_next",
                        "expiresAt"]}
    template = (facts, fields, unset)
    _TEMPLATES[key] = template
    return template


@dataclass(frozen=True)
class EagerClaim:
    """A claim the planner's upsert takes for its own instance if the task becomes due at once
    (eager dispatch, :mod:`runtime.eager_dispatch`)."""

    claim: ObjectId
    owner: str
    lease_ms: int


def _claim_stage(eager: EagerClaim) -> dict[str, Any]:
    """Claim the task as a claim round would, if the plan made it due now (``_fresh``: changed
    and not running; only for reactors without a debounce delay, where that means due now)."""
    fresh = "$_fresh"
    expires = {"$add": ["$$NOW", eager.lease_ms]}
    return {"$set": {
        "status": {"$cond": [fresh, PROCESSING, "$status"]},
        "claimedDue": {"$cond": [fresh, "$nextRunAt", "$claimedDue"]},
        "attempts": {"$cond": [fresh, {"$add": ["$attempts", 1]}, "$attempts"]},
        "startedAt": {"$cond": [fresh, "$$NOW", "$startedAt"]},
        "lease": {"$cond": [fresh, {"owner": {"$literal": eager.owner}, "claim": eager.claim,
                                    "expiresAt": expires}, "$lease"]},
        "nextRunAt": {"$cond": [fresh, expires, "$nextRunAt"]},
    }}


def plan_update(reactor: ReactorSpec, source_id: Any, snapshot: Any,
                leader_token: int, claim_fields: dict[str, Any] | None = None,
                eager: EagerClaim | None = None) -> UpdateOne:
    """Upsert of one task after its source changed: a no-op unless the snapshot changed.

    Changed: a pending/completed/failed/skipped task becomes pending (debounced); a running one
    becomes ``processing_dirty`` and keeps its lease. Unchanged: nothing is written at all,
    except the leadership token the first time a new leader plans the task (fencing).
    ``claim_fields`` (``priority``, ``concurrencyKey``: see :func:`claim_fields`) are written
    with every plan, so they follow the source document. ``eager``: a task that becomes due
    at once is claimed for the planner's own instance in the same write (reactors without a
    debounce delay only: :func:`can_insert_new`).
    """
    digest = snapshot_hash(snapshot)
    facts, fields, unset_stage = _plan_template(reactor)
    # A task scheduled for expiry (its source was deleted or stopped matching) whose source
    # is back is a new task even if the watched values are the same as before.
    changed = {"$or": [{"$ne": [{"$ifNull": ["$snapshotHash", None]}, digest]},
                       {"$ne": [{"$type": "$expiresAt"}, "missing"]}]}
    pipeline: list[dict[str, Any]] = [
        {"$set": {"_changed": changed}},
        *facts,
        {"$set": {
            **fields,
            "sourceId": {"$literal": source_id},
            "snapshot": {"$cond": ["$_changed", {"$literal": snapshot}, "$snapshot"]},
            "snapshotHash": digest,
            "plannerToken": leader_token,
            **{name: {"$literal": value} for name, value in (claim_fields or {}).items()},
        }},
        *([_claim_stage(eager)] if eager is not None else []),
        unset_stage,
    ]
    return UpdateOne(task_key(reactor, source_id, leader_token), pipeline, upsert=True)


def can_insert_new(reactor: ReactorSpec) -> bool:
    """Whether a new task of ``reactor`` may be written with a plain insert (see
    :func:`new_task`): only when it is due at once (no debounce delay), so that no due time
    depends on the server's clock beyond "now"."""
    return reactor.policies.debounce.delay_ms == 0


def new_task(reactor: ReactorSpec, source_id: Any, snapshot: Any, leader_token: int,
             now: datetime.datetime, claim_fields: dict[str, Any] | None = None
             ) -> dict[str, Any]:
    """The document :func:`plan_update` creates for a source that has no task yet, for a plain
    insert (a fraction of the upsert's cost on the database: no pipeline to decode, evaluate
    and diff). The planner inserts it for sources whose change event was an insert; if the
    task exists after all (a replayed event, a re-inserted ``_id``), the unique task key
    refuses the insert and the planner falls back to :func:`plan_update`.

    ``now`` is the server's clock as estimated by the instance
    (:class:`~runtime.server_time.ServerClock`, already lowered by its uncertainty), where the
    upsert uses ``$$NOW``: the task is due at once either way.
    """
    return {
        "_id": ObjectId(),
        "reactor": reactor.name,
        "sourceId": source_id,
        "status": PENDING,
        "firstChangeAt": now,
        "nextRunAt": now,
        "dueAt": now,
        "attempts": 0,
        "firstErrorAt": None,
        "lastError": None,
        "createdAt": now,
        "updatedAt": now,
        "skipReason": None,
        "snapshot": snapshot,
        "snapshotHash": snapshot_hash(snapshot),
        "plannerToken": leader_token,
        **(claim_fields or {}),
    }


def poison_update(reactor: ReactorSpec, source_id: Any, error: str,
                  leader_token: int) -> UpdateOne:
    """Record that a source document could not be planned (a poison document).

    The task becomes ``failed`` with the error in ``lastError`` and ``planningError`` and is
    not due; its snapshot hash is cleared, so the next change of the document that plans
    cleanly makes it pending again. A running task keeps running (its late-binding check
    decides), but carries the error.
    """
    running = {"$in": [{"$ifNull": ["$status", "none"]}, RUNNING]}
    message = f"planning failed: {error}"
    return UpdateOne(task_key(reactor, source_id, leader_token), [{"$set": {
        "reactor": reactor.name,
        "sourceId": {"$literal": source_id},
        "status": {"$cond": [running, "$status", FAILED]},
        "nextRunAt": {"$cond": [running, "$nextRunAt", None]},
        "snapshotHash": None,
        "lastError": {"$literal": message},
        "planningError": {"at": "$$NOW", "error": {"$literal": error}},
        "firstErrorAt": {"$ifNull": ["$firstErrorAt", "$$NOW"]},
        "attempts": {"$ifNull": ["$attempts", 0]},
        "createdAt": {"$ifNull": ["$createdAt", "$$NOW"]},
        "updatedAt": "$$NOW",
        "plannerToken": leader_token,
    }}], upsert=True)


def source_gone_update(reactor: ReactorSpec, source_id: Any, leader_token: int) -> UpdateOne:
    """Apply the cleanup policy to the task of a deleted (or no longer matching) source.

    A pending task stops being due (``skipped``); every task gets ``expiresAt`` (now +
    ``keepFor``), after which the TTL index on it deletes the task. A running task is left to
    finish (its late-binding check skips it) and expires no earlier than its lease, which its
    renewals extend. Applying it again changes nothing, so ``expiresAt`` is not pushed back by
    later changes of a document that no longer matches.
    """
    return UpdateOne(task_key(reactor, source_id, leader_token),
                     source_gone_pipeline(reactor, leader_token))


def source_gone_pipeline(reactor: ReactorSpec, leader_token: int) -> list[dict[str, Any]]:
    """The update applied to tasks whose source is gone (see :func:`source_gone_update`)."""
    running = {"$in": ["$status", RUNNING]}
    pending = {"$eq": ["$status", PENDING]}
    expires: Any = {"$add": ["$$NOW", reactor.policies.cleanup.keep_for_ms]}
    return [{"$set": {
        "status": {"$cond": [pending, SKIPPED, "$status"]},
        "nextRunAt": {"$cond": [running, "$nextRunAt", None]},
        "skipReason": {"$cond": [pending, "source deleted or no longer matching",
                                 "$skipReason"]},
        "expiresAt": {"$ifNull": ["$expiresAt", {"$cond": [
            running, {"$max": [expires, "$lease.expiresAt"]}, expires]}]},
        "plannerToken": leader_token,
    }}]


def key_digest(value: Any) -> str:
    """The per-key concurrency key of a task: a digest of the key value's BSON (so values of
    different types are different keys, and any value fits a short string)."""
    return hashlib.sha256(bson.encode({"k": value})).hexdigest()[:24]


def claim_fields(reactor: ReactorSpec, priority: Any, key: Any) -> dict[str, Any]:
    """Task fields that claims order and limit by, from the values the planner evaluated on
    the source document: ``priority`` (a number; else the reactor's static priority) and
    ``concurrencyKey`` (digest) with ``concurrencyKeyValue`` (the value, for people)."""
    fields: dict[str, Any] = {}
    policy = reactor.policies.priority
    if policy.static or policy.expression is not None:
        usable = (isinstance(priority, int | float) and not isinstance(priority, bool)
                  and math.isfinite(priority))
        fields["priority"] = priority if usable else policy.static
    if reactor.policies.key_concurrency is not None:
        fields["concurrencyKey"] = key_digest(key)
        fields["concurrencyKeyValue"] = key
    return fields
