"""Evolution: what a leader does when the set of reactors, a trigger or a handler version
changed since the state recorded in ``reactgen_meta`` (``reactor:<name>``).

Run by each database's planner when it starts, before it saves any stream position:

* a reactor with no state (or one marked removed) is **new**: its collection is scanned
  (backfill);
* a changed trigger fingerprint (filter or watched values) is scanned when
  ``evolution.reconcileOnTriggerChange`` is on (the default);
* a higher ``handlerVersion`` applies ``onVersionIncrease``: ``reprocessFailed`` makes failed
  tasks due now with attempts reset, ``reprocessAll`` does the same for completed ones too and
  marks running ones to run again when they finish; ``none`` only records the version. A lower
  version (a rollback) is logged and not recorded.

The scans are queued (and saved) before the new state is recorded, so a leader that dies in
between queues them again on the next start. Reactors that are no longer defined are retired by
:func:`retire_removed`: their tasks stop being due (pending ones become ``skipped``) and expire
after the reactor's ``keepFor`` (never, with cleanup ``never``); they are never claimed. A
reactor that comes back is new again.
"""

from __future__ import annotations

import datetime
import logging
from dataclasses import dataclass, field
from typing import Any

from pymongo.asynchronous.database import AsyncDatabase

from runtime.meta import MetaStore, not_newer_than
from runtime.reactor import ReactorSpec
from runtime.reconciliation import ScanReason
from runtime.structured_logging import log_event
from runtime.task_store import COMPLETED, FAILED, PENDING, PROCESSING, PROCESSING_DIRTY, SKIPPED

log = logging.getLogger("runtime.evolution")
REMOVED_REASON = "reactor removed from the application"


@dataclass
class EvolutionPlan:
    """What the start of a database's planner must do for its reactors."""

    scans: dict[str, dict[str, str]] = field(default_factory=dict)
    """collection -> {reactor: reason}"""
    reprocess: dict[str, str] = field(default_factory=dict)
    """reactor -> reprocessFailed | reprocessAll"""
    states: dict[str, dict[str, Any]] = field(default_factory=dict)
    """reactor -> fields of its ``reactor:<name>`` document to record"""
    unset: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def scan(self, reactor: ReactorSpec, reason: str) -> None:
        """Queue a scan of ``reactor`` (the first reason given wins)."""
        self.scans.setdefault(reactor.collection, {}).setdefault(reactor.name, reason)


def reactor_state(reactor: ReactorSpec, database: str) -> dict[str, Any]:
    """The fields recorded for a defined reactor (shape: docs/architecture.md)."""
    return {"database": database, "collection": reactor.collection,
            "tasksCollection": reactor.tasks_collection,
            "fingerprint": reactor.trigger_fingerprint,
            "cleanup": reactor.policies.cleanup.when,
            "keepForMs": reactor.policies.cleanup.keep_for_ms}


def decide(reactors: list[ReactorSpec], states: dict[str, dict[str, Any]], database: str,
           now: datetime.datetime) -> EvolutionPlan:
    """Compare the defined reactors with their recorded state (pure: no I/O)."""
    plan = EvolutionPlan()
    for reactor in reactors:
        state = states.get(reactor.name)
        version = reactor.policies.evolution.handler_version
        fields = reactor_state(reactor, database)
        unset: tuple[str, ...] = ()
        if state is None or "fingerprint" not in state or state.get("removedAt") is not None:
            readded = state is not None and state.get("removedAt") is not None
            plan.scan(reactor, ScanReason.READDED if readded else ScanReason.NEW_REACTOR)
            fields["handlerVersion"] = version
            fields["firstSeenAt"] = (state or {}).get("firstSeenAt") or now
            unset = ("removedAt",)
            if reactor.time_triggers:
                fields["timePassAt"] = now
        else:
            if state.get("fingerprint") != reactor.trigger_fingerprint:
                if reactor.policies.evolution.reconcile_on_trigger_change:
                    plan.scan(reactor, ScanReason.TRIGGER_CHANGED)
                log_event(log, logging.INFO, "trigger changed", event="evolution.trigger_changed",
                          reactor=reactor.name, previous=state.get("fingerprint"),
                          current=reactor.trigger_fingerprint,
                          reconcile=reactor.policies.evolution.reconcile_on_trigger_change)
            if reactor.time_triggers and not isinstance(state.get("timePassAt"),
                                                        datetime.datetime):
                fields["timePassAt"] = now
            stored = int(state.get("handlerVersion") or 1)
            if version > stored:
                mode = reactor.policies.evolution.on_version_increase
                if mode != "none":
                    plan.reprocess[reactor.name] = mode
                fields["handlerVersion"] = version
                log_event(log, logging.INFO, "handler version increased",
                          event="evolution.version_increased", reactor=reactor.name,
                          previous=stored, current=version, on_version_increase=mode)
            elif version < stored:
                log_event(log, logging.WARNING,
                          "handler version is lower than recorded (rollback?); nothing is "
                          "reprocessed and the recorded version is kept",
                          event="evolution.version_lower", reactor=reactor.name,
                          recorded=stored, current=version)
        plan.states[reactor.name] = fields
        plan.unset[reactor.name] = unset
    return plan


def reprocess_update(mode: str, leader_token: int) -> tuple[dict[str, Any],
                                                            list[dict[str, Any]]]:
    """Filter condition and update pipeline that make a reactor's finished tasks due now
    (attempts reset) and mark its running ones to run again after they finish."""
    statuses = [FAILED] if mode == "reprocessFailed" else [FAILED, COMPLETED]
    rerun = statuses + ([PROCESSING] if mode == "reprocessAll" else [])
    finished = {"$in": ["$status", statuses]}
    update = [{"$set": {
        "status": {"$cond": [finished, PENDING, PROCESSING_DIRTY]},
        "nextRunAt": {"$cond": [finished, "$$NOW", "$nextRunAt"]},
        "dueAt": {"$cond": [finished, "$$NOW", "$dueAt"]},
        "attempts": {"$cond": [finished, 0, "$attempts"]},
        "firstErrorAt": None,
        "reprocessedAt": "$$NOW",
        "plannerToken": leader_token,
    }}]
    return {"status": {"$in": rerun}, "expiresAt": {"$exists": False},
            "plannerToken": not_newer_than(leader_token)}, update


async def apply(plan: EvolutionPlan, reactors: list[ReactorSpec], db: AsyncDatabase[Any],
                meta: MetaStore, leader_token: int) -> None:
    """Reprocess what the plan says, then record the new states (after the scans of the plan
    were queued by the caller)."""
    by_name = {r.name: r for r in reactors}
    for name, mode in plan.reprocess.items():
        reactor = by_name[name]
        condition, update = reprocess_update(mode, leader_token)
        result = await db[reactor.tasks_collection].update_many(
            {"reactor": name, **condition}, update)
        log_event(log, logging.INFO, "tasks reprocessed for the new handler version",
                  event="evolution.reprocessed", reactor=name, mode=mode,
                  tasks=result.modified_count)
    for name, fields in plan.states.items():
        await meta.save_reactor(name, fields, leader_token, unset=plan.unset.get(name, ()))


async def retire_removed(client: Any, default_database: str, defined: set[str],
                         meta: MetaStore, leader_token: int, now: datetime.datetime,
                         tasks: bool = True) -> None:
    """Retire the reactors recorded in ``reactgen_meta`` that the application no longer
    defines (see the module docstring). With ``tasks`` off (partitioned planning, where each
    partition retires the tasks of its own documents) only the reactor state is marked."""
    for name, state in (await meta.reactors()).items():
        if name in defined or state.get("removedAt") is not None or "fingerprint" not in state:
            continue
        retired = await retire_tasks(client, default_database, name, state,
                                     leader_token) if tasks else None
        await meta.save_reactor(name, {"removedAt": now}, leader_token)
        never = state.get("cleanup") == "never"
        log_event(log, logging.WARNING,
                  "reactor no longer defined; its tasks are retired and never claimed",
                  event="evolution.reactor_removed", reactor=name, tasks=retired,
                  keep_for_ms=None if never else int(state.get("keepForMs") or 0))


async def retire_tasks(client: Any, default_database: str, name: str, state: dict[str, Any],
                       token: int, only: dict[str, Any] | None = None) -> int:
    """Retire the tasks of a removed reactor (``state``: its recorded state), those matching
    ``only`` if given; returns how many were changed."""
    db = client[state.get("database") or default_database]
    tasks = db[str(state.get("tasksCollection") or f"{state.get('collection')}_tasks")]
    keep_for = int(state.get("keepForMs") or 0)
    never = state.get("cleanup") == "never"
    pending = {"$eq": ["$status", PENDING]}
    expires: Any = "$expiresAt" if never else {
        "$ifNull": ["$expiresAt", {"$add": ["$$NOW", keep_for]}]}
    # Running tasks keep their status (their execution may still finalize them) but are
    # no longer due when their lease runs out.
    result = await tasks.update_many(
        {"reactor": name, "plannerToken": not_newer_than(token), **(only or {})},
        [{"$set": {"status": {"$cond": [pending, SKIPPED, "$status"]},
                   "skipReason": {"$cond": [pending, REMOVED_REASON, "$skipReason"]},
                   "nextRunAt": None, "expiresAt": expires,
                   "plannerToken": token}}])
    return int(result.modified_count)
