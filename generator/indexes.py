"""Indexes reactgen needs: on every ``<collection>_tasks`` collection, and for trigger filters."""

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


def filter_index(reactor: CompiledReactor) -> IndexPlan | None:
    """An index over the filter's top-level fields, for reconciliation scans of the source."""
    fields = [k for k in reactor.filter if not k.startswith("$") and k != "_id"]
    if not fields:
        return None
    return IndexPlan(reactor.database, reactor.collection, [(f, 1) for f in fields[:8]],
                     {"name": f"reactgen_filter_{reactor.module}"[:120]})


def plan_indexes(reactors: list[CompiledReactor]) -> list[IndexPlan]:
    """Every index, deduplicated, in a stable order."""
    plans: dict[tuple[Any, ...], IndexPlan] = {}
    for reactor in sorted(reactors, key=lambda r: r.name):
        candidates = task_indexes(reactor.database, f"{reactor.collection}_tasks")
        extra = filter_index(reactor)
        if extra is not None:
            candidates.append(extra)
        for plan in candidates:
            key = (plan.database or "", plan.collection, tuple(plan.keys))
            plans.setdefault(key, plan)
    return list(plans.values())
