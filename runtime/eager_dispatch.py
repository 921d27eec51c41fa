"""Eager dispatch: the planner hands tasks that are due at once to its own instance's workers.

Otherwise a task made due by a change is written pending, announced on the wake-up streams,
found by a claim round (a ``find`` and a compare-and-set) and only then started. When the
planning instance's workers have free slots and know of no due work of the reactor (so nothing
is overtaken: :meth:`runtime.scheduler.Scheduler.idle`), the planner's own write claims the task
for this instance, with the fields, claim id and lease a claim round would have given it, and
the task starts as soon as that write is acknowledged:

* a new task of an inserted source is inserted already claimed
  (:meth:`runtime.task_store.TaskStore.claim_new`);
* an upsert (a source that changed, or started matching) claims the task in its pipeline if
  the plan makes it due now (:class:`runtime.task_plans.EagerClaim`); one ``find`` by the claim
  ids then says which tasks it claimed (a running task, or an unchanged one, is not claimed).

That saves a write and a claim round per task, and no wake-up event reaches the instance that
runs it; the handler starts one round trip after the change was read. Temporal's eager
activity dispatch and Celery's prefetch do the same, bounded here by free slots.

Why it stays correct: a claimed task is the same document whoever claimed it. Its claim id
fences every later write; if the instance dies, the lease expires and any instance claims the
task again, as after any claim. A task whose insert is refused (it exists) is upserted instead,
and the slot of any task not claimed is given back. If a write fails without saying what it
wrote (a lost connection), the tasks it claimed wait for their lease to expire and run then:
late, never lost. Reactors whose claims need the database's view (cluster-wide or per-key
concurrency, rate limits) or that have a debounce delay are never dispatched eagerly;
``--eager-dispatch off`` turns it off everywhere.
"""

from __future__ import annotations

import datetime
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from bson import ObjectId
from pymongo import UpdateOne
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import BulkWriteError

from runtime.reactor import ReactorSpec
from runtime.task_plans import EagerClaim, can_insert_new, plan_update
from runtime.task_store import CLAIMED_FIELDS, DUPLICATE_KEY, Claimed, TaskStore


def can_dispatch_eagerly(reactor: ReactorSpec) -> bool:
    """Whether tasks of ``reactor`` may be claimed by the planner's write: not when its claims
    must consult the database (cluster-wide or per-key slots, a rate-limit bucket), nor with a
    debounce delay (the task is not due when it is written)."""
    policies = reactor.policies
    return (policies.cluster_concurrency is None and policies.key_concurrency is None
            and policies.rate_limit is None and can_insert_new(reactor))


@dataclass
class Reservation:
    """Worker slots promised to the planner's next write, and whose claims they are."""

    store: TaskStore
    """The reactor's tasks as this instance's workers hold them (owner, lease)."""
    slots: int


class EagerDispatch(Protocol):
    """What the planner asks of its instance's workers (:class:`runtime.worker.WorkerPool`)."""

    def reserve(self, reactor: ReactorSpec, wanted: int) -> Reservation | None:
        """Promise up to ``wanted`` free slots to tasks of ``reactor`` about to be written
        (None when the reactor has known due work here, or may not run now)."""

    def give_back(self, reactor: ReactorSpec, slots: int) -> None:
        """Reserved slots whose tasks were not claimed are free again."""

    def run_reserved(self, reactor: ReactorSpec, held: list[Claimed], seconds: float) -> None:
        """Run tasks claimed on reserved slots, by a write that took ``seconds``."""


@dataclass
class NewTask:
    """A task the planner inserts, and the upsert it falls back to if the task exists."""

    reactor: ReactorSpec
    doc: dict[str, Any]
    upsert: Callable[[], UpdateOne]


async def insert_new(collection: AsyncCollection[dict[str, Any]], tasks: list[NewTask],
                     dispatch: EagerDispatch | None, now: datetime.datetime
                     ) -> tuple[list[UpdateOne], Counter[str]]:
    """Insert new tasks in one unordered bulk write, the first ones of each reactor claimed for
    this instance's workers if they have room (``dispatch``; ``now``: the tasks' creation
    time). Returns the upserts of the tasks that exist already (the unique task key refused
    them), to be written instead, and how many tasks of each reactor were started here."""
    held: dict[int, tuple[ReactorSpec, Claimed]] = {}
    if dispatch is not None:
        by_reactor: dict[str, list[int]] = {}
        for index, task in enumerate(tasks):
            by_reactor.setdefault(task.reactor.name, []).append(index)
        for indexes in by_reactor.values():
            reactor = tasks[indexes[0]].reactor
            reservation = dispatch.reserve(reactor, len(indexes))
            if reservation is not None:
                for index in indexes[:reservation.slots]:
                    held[index] = (reactor, reservation.store.claim_new(tasks[index].doc, now))
    refused: set[int] = set()
    failure: BulkWriteError | None = None
    began = time.perf_counter()
    try:
        await collection.insert_many([task.doc for task in tasks], ordered=False)
    except BulkWriteError as exc:
        errors = exc.details.get("writeErrors", [])
        refused = {int(e["index"]) for e in errors}
        if not errors or any(e.get("code") != DUPLICATE_KEY for e in errors):
            failure = exc
            if not errors:
                refused = set(range(len(tasks)))
    except BaseException:
        _settle(dispatch, [], [reactor for reactor, _ in held.values()], 0.0)
        raise
    started = _settle(dispatch, [h for i, h in held.items() if i not in refused],
                      [h[0] for i, h in held.items() if i in refused],
                      time.perf_counter() - began)
    if failure is not None:
        raise failure
    return [tasks[i].upsert() for i in sorted(refused)], started


def _settle(dispatch: EagerDispatch | None, run: list[tuple[ReactorSpec, Claimed]],
            back: list[ReactorSpec], seconds: float) -> Counter[str]:
    """Run the reserved tasks that were claimed (``run``), give back the slots reserved for
    tasks that were not (one entry per slot in ``back``)."""
    started: Counter[str] = Counter()
    if dispatch is None:
        return started
    reactors = {reactor.name: reactor for reactor in back}
    for name, count in Counter(reactor.name for reactor in back).items():
        dispatch.give_back(reactors[name], count)
    running: dict[str, tuple[ReactorSpec, list[Claimed]]] = {}
    for reactor, held in run:
        running.setdefault(reactor.name, (reactor, []))[1].append(held)
    for name, (reactor, held_list) in running.items():
        dispatch.run_reserved(reactor, held_list, seconds)
        started[name] += len(held_list)
    return started


@dataclass
class EagerUpserts:
    """The claims a planner's upserts of one tasks collection may take, by claim id."""

    reserved: dict[ObjectId, tuple[ReactorSpec, Any]]
    """claim id -> (reactor, source ``_id``)."""

    async def settle(self, collection: AsyncCollection[dict[str, Any]],
                     dispatch: EagerDispatch, answered: bool, seconds: float) -> Counter[str]:
        """After the upserts (``answered``: the database answered them, even with errors):
        read which tasks they claimed, run those, give back the other slots. Without an
        answer nothing is read and every slot is given back (the tasks claimed meanwhile, if
        any, run when their lease expires)."""
        if not self.reserved:
            return Counter()
        held: dict[ObjectId, Claimed] = {}
        try:
            if answered:
                by_reactor: dict[str, list[Any]] = {}
                for reactor, source_id in self.reserved.values():
                    by_reactor.setdefault(reactor.name, []).append(source_id)
                query = {"$or": [{"reactor": name, "sourceId": {"$in": ids}}
                                 for name, ids in by_reactor.items()],
                         "lease.claim": {"$in": list(self.reserved)}}
                for doc in await collection.find(query, CLAIMED_FIELDS).to_list(None):
                    claim = doc["lease"]["claim"]
                    held[claim] = Claimed(doc, claim)
        finally:
            # Whatever happened, every reserved slot is either running or given back.
            started = _settle(
                dispatch, [(self.reserved[c][0], h) for c, h in held.items()],
                [reactor for c, (reactor, _) in self.reserved.items() if c not in held], seconds)
        return started


PlannedChange = tuple[Any, Any, dict[str, Any]]
"""A task the planner upserts: ``(source _id, snapshot, claim fields)``."""


def plan_upserts(dispatch: EagerDispatch | None,
                 plans: Iterable[tuple[ReactorSpec, list[PlannedChange]]], leader_token: int,
                 ops: dict[str, list[UpdateOne]]) -> dict[str, EagerUpserts]:
    """Add the upserts of ``plans`` to ``ops`` (per tasks collection), the first ones of each
    reactor with a claim for this instance's free slots; returns those claims per tasks
    collection, to be settled after the write (:meth:`EagerUpserts.settle`)."""
    eager: dict[str, EagerUpserts] = {}
    for reactor, changes in plans:
        claims = reserve_upserts(dispatch, reactor, len(changes))
        reserved = eager.setdefault(reactor.tasks_collection, EagerUpserts({})).reserved
        target = ops.setdefault(reactor.tasks_collection, [])
        for index, (source_id, snapshot, fields) in enumerate(changes):
            claim = claims[index] if index < len(claims) else None
            if claim is not None:
                reserved[claim.claim] = (reactor, source_id)
            target.append(plan_update(reactor, source_id, snapshot, leader_token, fields, claim))
    return eager


def reserve_upserts(dispatch: EagerDispatch | None, reactor: ReactorSpec, wanted: int
                    ) -> list[EagerClaim]:
    """Claims for up to ``wanted`` upserts of ``reactor`` (none without room or eligibility)."""
    if dispatch is None or wanted <= 0:
        return []
    reservation = dispatch.reserve(reactor, wanted)
    if reservation is None:
        return []
    store = reservation.store
    return [EagerClaim(ObjectId(), store.instance_id, store.lease_ms)
            for _ in range(reservation.slots)]
