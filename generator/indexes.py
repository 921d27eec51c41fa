"""Indexes reactgen needs: on every ``<collection>_tasks`` collection, for trigger filters, and
on the source fields of time-driven triggers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from generator.definitions import CompiledReactor


@dataclass(frozen=True)
class IndexPlan:
    """One index to create."""

    database: str | None
    collection: str
    keys: list[tuple[str, int]]
    options: dict[str, Any]

    def as_json(self) -> dict[str, Any]:
        """The shape the mongosh script uses."""
        return {"database": self.database, "collection": self.collection,
                "keys": dict(self.keys), "options": self.options}


def task_indexes(database: str | None, tasks_collection: str) -> list[IndexPlan]:
    """The unique task key, the claim index and the status index of one tasks collection."""
    return [
        IndexPlan(database, tasks_collection, [("reactor", 1), ("sourceId", 1)],
                  {"name": "reactgen_task_key", "unique": True}),
        IndexPlan(database, tasks_collection, [("reactor", 1), ("nextRunAt", 1)],
                  {"name": "reactgen_claim"}),
        IndexPlan(database, tasks_collection, [("reactor", 1), ("status", 1)],
                  {"name": "reactgen_status"}),
        IndexPlan(database, tasks_collection, [("expiresAt", 1)],
                  {"name": "reactgen_expiry", "expireAfterSeconds": 0}),
    ]


def flow_control_indexes(reactor: CompiledReactor) -> list[IndexPlan]:
    """The task-collection indexes a reactor's flow-control policies need.

    A priority (static or per task) needs the claim index in priority order; cluster-wide and
    per-key concurrency need a unique index over the slot a running task holds (only tasks
    holding one are indexed, so uniqueness is over held slots).
    """
    tasks = f"{reactor.collection}_tasks"
    policies = reactor.policies
    plans: list[IndexPlan] = []
    if policies.priority.static != 0 or policies.priority.expression is not None:
        plans.append(IndexPlan(reactor.database, tasks,
                               [("reactor", 1), ("priority", -1), ("nextRunAt", 1)],
                               {"name": "reactgen_priority_claim"}))
    if policies.cluster_concurrency is not None:
        plans.append(IndexPlan(reactor.database, tasks, [("slot", 1)], {
            "name": "reactgen_slot", "unique": True,
            "partialFilterExpression": {"slot": {"$exists": True}}}))
    if policies.key_concurrency is not None:
        plans.append(IndexPlan(reactor.database, tasks, [("keySlot", 1)], {
            "name": "reactgen_key_slot", "unique": True,
            "partialFilterExpression": {"keySlot": {"$exists": True}}}))
    return plans


def filter_index(reactor: CompiledReactor) -> IndexPlan | None:
    """An index over the filter's top-level fields, for reconciliation scans of the source."""
    fields = [k for k in reactor.filter if not k.startswith("$") and k != "_id"]
    if not fields:
        return None
    return IndexPlan(reactor.database, reactor.collection, [(f, 1) for f in fields[:8]],
                     {"name": f"reactgen_filter_{reactor.module}"[:120]})


def time_indexes(reactor: CompiledReactor) -> list[IndexPlan]:
    """An ascending index on the source collection per time-trigger path (named as the
    trigger's ``index``), for the runtime's window query over moments that passed.

    ``_id`` needs none: MongoDB always indexes it.
    """
    plans: dict[str, IndexPlan] = {}
    for trigger in reactor.time_triggers:
        if trigger.path != "_id":
            plans.setdefault(trigger.path, IndexPlan(
                reactor.database, reactor.collection, [(trigger.path, 1)],
                {"name": trigger.index}))
    return list(plans.values())


def _key(plan: IndexPlan) -> tuple[Any, ...]:
    return plan.database or "", plan.collection, tuple(plan.keys)


def plan_indexes(reactors: list[CompiledReactor]) -> list[IndexPlan]:
    """Every index, deduplicated by key pattern, in a stable order.

    A key pattern gets one name only (MongoDB refuses a second index with the same keys): a
    time index wins over a filter index with the same keys, because the runtime's time triggers
    name their index.
    """
    ordered = sorted(reactors, key=lambda r: r.name)
    timed = {_key(plan): plan for reactor in ordered for plan in time_indexes(reactor)}
    plans: dict[tuple[Any, ...], IndexPlan] = {}
    for reactor in ordered:
        candidates = task_indexes(reactor.database, f"{reactor.collection}_tasks")
        candidates += flow_control_indexes(reactor)
        extra = filter_index(reactor)
        if extra is not None:
            candidates.append(timed.get(_key(extra), extra))
        candidates += time_indexes(reactor)
        for plan in candidates:
            plans.setdefault(_key(plan), plan)
    return list(plans.values())
