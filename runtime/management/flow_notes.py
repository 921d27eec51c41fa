"""What flow control says about a pending task, for ``runtime explain``: taken concurrency
slots (cluster-wide and per key), an empty rate-limit bucket, higher-priority work ahead."""

from __future__ import annotations

import datetime
from typing import Any

from runtime.management.scope import Scope
from runtime.rate_limit import COLLECTION as RATE_LIMITS
from runtime.reactor import ReactorSpec
from runtime.task_status import RUNNING


async def flow_notes(scope: Scope, spec: ReactorSpec, task: dict[str, Any],
                     now: datetime.datetime) -> list[str]:
    """Notes on the limits that may hold ``task`` (a pending task document) back now."""
    policies = spec.policies
    tasks = scope.tasks_of(spec)
    notes: list[str] = []
    if policies.cluster_concurrency is not None:
        running = await tasks.count_documents({"reactor": spec.name, "status": {"$in": RUNNING},
                                               "slot": {"$exists": True}})
        if running >= policies.cluster_concurrency:
            notes.append(f"waits for a cluster-wide concurrency slot: {running} of "
                         f"{policies.cluster_concurrency} executions are running "
                         "(concurrency.max); it is claimed when one ends")
    key = policies.key_concurrency
    if key is not None and "concurrencyKey" in task:
        running = await tasks.count_documents({
            "reactor": spec.name, "status": {"$in": RUNNING},
            "concurrencyKey": task["concurrencyKey"], "keySlot": {"$exists": True}})
        if running >= key.max:
            notes.append(f"waits for its key {task.get('concurrencyKeyValue')!r}: {running} of "
                         f"{key.max} executions with that key are running (concurrency.key)")
    rate = policies.rate_limit
    if rate is not None:
        bucket = await scope.db[RATE_LIMITS].find_one({"_id": spec.name})
        if bucket is not None and isinstance(bucket.get("refilledAt"), datetime.datetime):
            elapsed = max(0.0, (now - _naive(bucket["refilledAt"])).total_seconds() * 1000)
            tokens = min(rate.max, float(bucket.get("tokens", 0)) + elapsed * rate.max
                         / rate.per_ms)
            if tokens < 1:
                wait = (1 - tokens) * rate.per_ms / rate.max
                notes.append(f"rate limit {rate.max} per {rate.per_ms} ms: the bucket is "
                             f"empty, the next start is possible in {wait:.0f} ms")
    if "priority" in task:
        ahead = await tasks.count_documents({
            "reactor": spec.name, "nextRunAt": {"$lte": now},
            "priority": {"$gt": task["priority"]}})
        if ahead:
            notes.append(f"priority {task['priority']}: {ahead} due task(s) with a higher "
                         "priority go first (every fourth claim round takes the oldest due "
                         "task whatever its priority)")
    return notes


def _naive(value: datetime.datetime) -> datetime.datetime:
    return value.replace(tzinfo=None) if value.tzinfo is not None else value
