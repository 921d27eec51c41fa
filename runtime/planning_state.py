"""Where a database planner keeps its state, and how it is fenced.

* :class:`LeaderState` (one partition, the default): the leader's documents, as without
  partitions: ``planner:<db>`` (resume position), ``reactor:<name>`` (recorded reactor state,
  time passes, scan requests), all fenced by ``leaderToken``.
* :class:`PartitionState` (``--planner-partitions N`` > 1): the partition's own lease document
  ``partition:<db>:<k>/<N>``, whose ``planning`` field holds the resume position, the reactor
  record of this partition (what it has planned for: fingerprints, handler versions), its time
  passes and the scan requests it has handled. Every write matches the lease's current
  ``token``, so a replaced holder is refused (:class:`~runtime.meta.Deposed`). ``planning``
  belongs to one partitioning epoch; a partition that finds another epoch's (or none) starts
  afresh from the baseline recorded when the count changed, without a position, and scans.

The planner (``planner.py``) asks the state, never ``reactgen_meta`` directly, for these.
"""

from __future__ import annotations

import datetime
import logging
from dataclasses import dataclass
from typing import Any, Protocol

from pymongo.asynchronous.database import AsyncDatabase

from runtime import evolution
from runtime.meta import MetaStore, planner_id
from runtime.partitions import Partition
from runtime.reactor import ReactorSpec
from runtime.reconciliation import ScanReason
from runtime.structured_logging import log_event

log = logging.getLogger("runtime.planner")


@dataclass(frozen=True)
class Request:
    """An operator's request the planner picked up: a scan of a reactor, or a reset of the
    stream position (``reactor`` is None)."""

    reactor: str | None
    at: Any
    reason: str = ""


class PlanningState(Protocol):
    """What a database planner reads and writes about itself."""

    label: str
    """How logs name this planner's share (``all`` or ``k/N``)."""

    async def position(self) -> dict[str, Any] | None:
        """The saved resume token (None: start at now and scan)."""
        ...

    async def save_position(self, token: dict[str, Any]) -> None:
        """Save a resume token (fenced)."""
        ...

    async def reactor_states(self) -> dict[str, dict[str, Any]]:
        """Reactor states to compare the definitions with (``evolution.decide``)."""
        ...

    def no_position_reason(self, first: bool) -> str:
        """Why everything is scanned when no position is saved."""
        ...

    async def apply(self, plan: evolution.EvolutionPlan, reactors: list[ReactorSpec],
                    db: AsyncDatabase[Any], client: Any) -> None:
        """Reprocess and record what ``plan`` says (after its scans were queued)."""
        ...

    async def requests(self, reactors: list[str]) -> list[Request]:
        """Pending operator requests not handled yet."""
        ...

    async def handled(self, request: Request) -> None:
        """A request was registered (its scans queued): forget it."""
        ...

    async def time_passes(self) -> dict[str, datetime.datetime]:
        """Reactor -> server time up to which time-driven crossings were planned."""
        ...

    async def save_time_pass(self, reactor: str, at: datetime.datetime) -> None:
        """Record a time pass (fenced)."""
        ...


class LeaderState:
    """The leader plans every document: its state is in ``planner:<db>`` and ``reactor:``."""

    label = "all"

    def __init__(self, meta: MetaStore, database: str, token: int) -> None:
        self.meta = meta
        self.database = database
        self.token = token

    async def position(self) -> dict[str, Any] | None:
        """See :class:`PlanningState`."""
        return await self.meta.position(self.database)

    async def save_position(self, token: dict[str, Any]) -> None:
        """See :class:`PlanningState`."""
        await self.meta.save_position(self.database, token, self.token)

    async def reactor_states(self) -> dict[str, dict[str, Any]]:
        """See :class:`PlanningState`."""
        return await self.meta.reactors()

    def no_position_reason(self, first: bool) -> str:
        """See :class:`PlanningState`."""
        return ScanReason.FIRST_START if first else ScanReason.NO_POSITION

    async def apply(self, plan: evolution.EvolutionPlan, reactors: list[ReactorSpec],
                    db: AsyncDatabase[Any], client: Any) -> None:
        """See :class:`PlanningState`."""
        await evolution.apply(plan, reactors, db, self.meta, self.token)

    async def requests(self, reactors: list[str]) -> list[Request]:
        """See :class:`PlanningState`."""
        position = planner_id(self.database)
        found: list[Request] = []
        for doc in await self.meta.requests(position, reactors):
            if doc["_id"] == position:
                found.append(Request(None, (doc.get("resetRequest") or {}).get("at")))
                continue
            request = doc.get("scanRequest") or {}
            found.append(Request(str(doc["_id"]).split(":", 1)[1], request.get("at"),
                                 str(request.get("reason", ""))))
        return found

    async def handled(self, request: Request) -> None:
        """See :class:`PlanningState`."""
        if request.reactor is None:
            await self.meta.clear_position_reset(self.database, request.at, self.token)
        else:
            await self.meta.clear_scan_request(request.reactor, request.at, self.token)

    async def time_passes(self) -> dict[str, datetime.datetime]:
        """See :class:`PlanningState`."""
        return {name: state["timePassAt"] for name, state in (await self.meta.reactors()).items()
                if isinstance(state.get("timePassAt"), datetime.datetime)}

    async def save_time_pass(self, reactor: str, at: datetime.datetime) -> None:
        """See :class:`PlanningState`."""
        await self.meta.save_reactor(reactor, {"timePassAt": at}, self.token)


class PartitionState:
    """A partition's state, in its lease document (fenced by the lease token)."""

    def __init__(self, meta: MetaStore, partition: Partition, token: int, epoch: int,
                 baseline: dict[str, dict[str, Any]]) -> None:
        self.meta = meta
        self.partition = partition
        self.token = token
        self.epoch = epoch
        self.baseline = baseline
        self.label = partition.label
        self._planning: dict[str, Any] = {}

    async def _update(self, fields: dict[str, Any], unset: tuple[str, ...] = ()) -> None:
        update: dict[str, Any] = {"$set": {f"planning.{k}": v for k, v in fields.items()}}
        if unset:
            update["$unset"] = {f"planning.{k}": "" for k in unset}
        await self.meta.partition_update(self.partition.lease_id, update, self.token)

    async def load(self) -> None:
        """Read ``planning``; another epoch's (or none) is replaced by a fresh one."""
        doc = await self.meta.get(self.partition.lease_id) or {}
        planning = doc.get("planning")
        if isinstance(planning, dict) and planning.get("epoch") == self.epoch:
            self._planning = planning
            return
        mine = {name: state for name, state in self.baseline.items()
                if state.get("database") == self.partition.database}
        self._planning = {"epoch": self.epoch, "reactors": mine}
        await self.meta.partition_update(self.partition.lease_id,
                                         {"$set": {"planning": self._planning}}, self.token)

    async def position(self) -> dict[str, Any] | None:
        """See :class:`PlanningState`."""
        if not self._planning:
            await self.load()
        token = self._planning.get("resumeToken")
        return token if isinstance(token, dict) else None

    async def save_position(self, token: dict[str, Any]) -> None:
        """See :class:`PlanningState`."""
        await self._update({"resumeToken": token})

    async def reactor_states(self) -> dict[str, dict[str, Any]]:
        """See :class:`PlanningState`."""
        if not self._planning:
            await self.load()
        return dict(self._planning.get("reactors") or {})

    def no_position_reason(self, first: bool) -> str:
        """See :class:`PlanningState`."""
        return ScanReason.FIRST_START if first else ScanReason.PARTITIONED

    async def apply(self, plan: evolution.EvolutionPlan, reactors: list[ReactorSpec],
                    db: AsyncDatabase[Any], client: Any) -> None:
        """Reprocess this partition's tasks, retire the tasks of reactors it recorded that are
        no longer defined, then record the reactors (see :class:`PlanningState`)."""
        by_name = {r.name: r for r in reactors}
        owned = self.partition.query("$sourceId")
        for name, mode in plan.reprocess.items():
            condition, update = evolution.reprocess_update(mode, self.token)
            result = await db[by_name[name].tasks_collection].update_many(
                {"reactor": name, **condition, **owned}, update)
            log_event(log, logging.INFO, "tasks reprocessed for the new handler version",
                      event="evolution.reprocessed", reactor=name, mode=mode,
                      tasks=result.modified_count, partition=self.label)
        recorded = await self.reactor_states()
        for name, state in recorded.items():
            if name in by_name or state.get("removedAt") is not None:
                continue
            await evolution.retire_tasks(client, self.partition.database, name, state,
                                         self.token, owned)
            await self._update({f"reactors.{name}.removedAt": datetime.datetime.now(
                datetime.UTC).replace(tzinfo=None)})
        for name, fields in plan.states.items():
            await self._update({f"reactors.{name}.{k}": v for k, v in fields.items()},
                               tuple(f"reactors.{name}.{k}" for k in plan.unset.get(name, ())))

    async def requests(self, reactors: list[str]) -> list[Request]:
        """Scan requests (on ``reactor:`` documents) this partition has not handled yet; they
        stay on the reactor documents, each partition records the ones it handled."""
        handled = self._planning.get("handled") or {}
        found = []
        for doc in await self.meta.requests("", reactors):
            name = str(doc["_id"]).split(":", 1)[1]
            request = doc.get("scanRequest") or {}
            if request.get("at") is not None and handled.get(name) != request.get("at"):
                found.append(Request(name, request.get("at"), str(request.get("reason", ""))))
        return found

    async def handled(self, request: Request) -> None:
        """See :class:`PlanningState`."""
        if request.reactor is not None:
            self._planning.setdefault("handled", {})[request.reactor] = request.at
            await self._update({f"handled.{request.reactor}": request.at})

    async def time_passes(self) -> dict[str, datetime.datetime]:
        """See :class:`PlanningState`."""
        passes = self._planning.get("timePassAt") or {}
        return {k: v for k, v in passes.items() if isinstance(v, datetime.datetime)}

    async def save_time_pass(self, reactor: str, at: datetime.datetime) -> None:
        """See :class:`PlanningState`."""
        await self._update({f"timePassAt.{reactor}": at})

