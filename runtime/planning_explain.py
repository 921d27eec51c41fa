"""Why the planner did what it did, for DEBUG logs: each change planned or ignored, per reactor.

Only used when the ``runtime.planner`` logger is at DEBUG: then the planner reads the tasks'
previous state once per batch (:func:`tasks_before`) and explains every decision
(:func:`log_planned`); otherwise none of this runs.
"""

from __future__ import annotations

import logging
from typing import Any

import bson
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import PyMongoError

from runtime.reactor import ReactorSpec
from runtime.structured_logging import log_event
from runtime.task_plans import snapshot_hash
from runtime.task_status import PENDING, PROCESSING_DIRTY, RUNNING

log = logging.getLogger("runtime.planner")


def id_key(value: Any) -> bytes:
    """A source ``_id`` as a dict key (its BSON encoding: ids of any type compare exactly)."""
    return bson.encode({"v": value})


async def tasks_before(db: AsyncDatabase[Any], reactors: list[ReactorSpec], ids: list[Any]
                       ) -> dict[tuple[str, bytes], dict[str, Any]]:
    """For DEBUG logs only: the current task of each (reactor, source id), before the
    plan is written. A failed read only makes the log less precise."""
    found: dict[tuple[str, bytes], dict[str, Any]] = {}
    by_tasks: dict[str, list[str]] = {}
    for reactor in reactors:
        by_tasks.setdefault(reactor.tasks_collection, []).append(reactor.name)
    try:
        for tasks_collection, names in by_tasks.items():
            cursor = db[tasks_collection].find(
                {"reactor": {"$in": names}, "sourceId": {"$in": ids}},
                {"reactor": 1, "sourceId": 1, "status": 1, "snapshotHash": 1, "expiresAt": 1})
            async for task in cursor:
                found[(task["reactor"], id_key(task["sourceId"]))] = task
    except PyMongoError as exc:
        log_event(log, logging.DEBUG, "cannot read tasks to explain planning",
                  event="planner.explain_failed", error=str(exc))
    return found


def log_planned(collection: str, reactor: ReactorSpec, source_id: Any, snapshot: Any,
                task: dict[str, Any] | None) -> None:
    """DEBUG line for a document a reactor's filter matched: a new run planned (new task, or
    watched fields changed) or ignored (watched fields unchanged), as :func:`plan_update`
    decides it."""
    delay_ms = reactor.policies.debounce.delay_ms
    if task is None:
        log_event(log, logging.DEBUG, f"change planned for {reactor.name}: new task",
                  event="change.planned", reactor=reactor.name, collection=collection,
                  source_id=source_id, task_id="new", state=PENDING, due_in_ms=delay_ms)
        return
    if task.get("snapshotHash") == snapshot_hash(snapshot) and "expiresAt" not in task:
        log_event(log, logging.DEBUG, f"change ignored by {reactor.name}: watched fields "
                  "unchanged", event="change.ignored", reactor=reactor.name,
                  collection=collection, source_id=source_id,
                  reason="watched fields unchanged", task_id=task.get("_id"),
                  state=task.get("status"))
        return
    running = task.get("status") in RUNNING
    log_event(log, logging.DEBUG, f"change planned for {reactor.name}: watched fields "
              "changed", event="change.planned", reactor=reactor.name, collection=collection,
              source_id=source_id, task_id=task.get("_id"),
              state=PROCESSING_DIRTY if running else PENDING,
              due_in_ms=None if running else delay_ms)
