"""Partitioned planning (``runtime serve --planner-partitions N``): which instance plans which
share of the source documents.

Partition ``k`` of ``N`` is the set of source documents whose ``_id`` hashes (on the server,
``$toHashedIndexKey``, so a real MongoDB and the embedded server agree) to ``k``:
``abs(hash(_id) mod N) == k`` (the same as ``abs(hash) mod N``, without the overflow of
``abs`` on the smallest long). Each partition of each source database has a lease document
``partition:<db>:<k>/<N>`` with a fencing token, its own change stream filtered on the server,
its own resume position, reactor record and scans (``runtime/partition_state.py``).

:class:`PartitionManager` holds leases for this instance: every round (a third of the TTL) it
renews what it holds, reads the leases and the live instances (``instance:`` heartbeats, minus
owners of leases that ran out: they are dead or stalled), and

* takes free partitions (released, expired or new) while it holds fewer than its share,
  ``ceil(partitions / live instances)``; a partition left free for a whole TTL is taken by
  anyone, so no partition stays unplanned because the live count is off;
* when it holds more than ``floor(partitions / live)`` while a live instance holds fewer, it
  gives one partition up per round (planning stopped first, then the lease released); an
  instance below its share takes it at its next round, never the one that gave it up (unless
  it stays free for a TTL). The holdings converge to at most one apart.

A crashed holder's partition is taken within the TTL plus one round, and the new holder
continues from the partition's saved position. The partition count is cluster-wide: see
:func:`agree_on_partitioning` for how a change is made and a mixed deployment refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from pymongo.errors import DuplicateKeyError, PyMongoError

from runtime.cancellation import raise_if_cancelled, within
from runtime.meta import MetaStore, partition_id
from runtime.server_time import EPOCH
from runtime.structured_logging import log_event

log = logging.getLogger("runtime.partitions")
STALE_AFTER_MS = 10_000
"""An instance whose heartbeat is older than this is not counted (``heartbeat.py``)."""
RELEASE_TIMEOUT_S = 5.0
PARTITIONS_FIELD = "plannerPartitions"
"""Heartbeat field: the partition count an instance runs with (absent: 1)."""


class PartitioningError(Exception):
    """The partition count of this instance disagrees with the cluster's."""


@dataclass(frozen=True)
class Partition:
    """Partition ``index`` of ``count`` of one source database's planning."""

    database: str
    index: int
    count: int

    @property
    def lease_id(self) -> str:
        """``_id`` of its lease (and position, and record) in ``reactgen_meta``."""
        return partition_id(self.database, self.index, self.count)

    @property
    def label(self) -> str:
        """``k/N``, for logs and scan documents."""
        return f"{self.index}/{self.count}"

    def expr(self, path: str) -> dict[str, Any]:
        """Aggregation expression: the value at ``path`` (e.g. ``"$_id"``) is in this
        partition. Evaluated only on the server."""
        hashed = {"$toHashedIndexKey": path}
        return {"$eq": [{"$abs": {"$mod": [hashed, self.count]}}, self.index]}

    def query(self, path: str) -> dict[str, Any]:
        """Query condition (``$expr``) selecting this partition's documents by ``path``."""
        return {"$expr": self.expr(path)}

    def stream_stage(self) -> dict[str, Any]:
        """First stage of this partition's change stream: document events of its documents,
        and every event without a document key (drops, renames), which each partition applies
        to its own tasks."""
        return {"$match": {"$or": [
            {"operationType": {"$nin": ["insert", "update", "replace", "delete"]}},
            {"$expr": self.expr("$documentKey._id")}]}}


def partitions_of(databases: list[str], count: int) -> list[Partition]:
    """Every partition of every source database, in a stable order."""
    return [Partition(db, k, count) for db in databases for k in range(count)]


async def agree_on_partitioning(meta: MetaStore, instance: str, count: int
                                ) -> tuple[int, dict[str, Any]]:
    """Check (and if needed record) the cluster's partition count; returns the epoch and the
    reactor states new partitions start from.

    The rule: every live instance runs with the same count. This instance's heartbeat must be
    written (with its count) before the call, so two instances starting at once with different
    counts both see each other and both refuse. A live instance with another count raises
    :class:`PartitioningError`. Otherwise, if the recorded count differs (or none is recorded
    and ``count`` > 1), the count is switched: a new *epoch* begins, whose fencing tokens are
    larger than every earlier one (``epoch_base``), and each new partition starts with no
    position, so it reconciles its documents with a scan. With one partition and nothing
    recorded, nothing is written (planning is the leader's, exactly as without partitions).
    """
    live = await meta.live_instances(STALE_AFTER_MS)
    others = {str(doc.get("instance")): int(doc.get(PARTITIONS_FIELD) or 1) for doc in live
              if doc.get("instance") != instance}
    disagree = sorted(name for name, theirs in others.items() if theirs != count)
    if disagree:
        shown = ", ".join(f"{name} ({others[name]})" for name in disagree)
        raise PartitioningError(
            f"--planner-partitions {count} differs from live instance(s) {shown}: every "
            f"instance must run with the same partition count; stop them (or use their count) "
            f"and start again")
    while True:
        current = await meta.partitioning()
        if current is None and count == 1:
            return 0, {}
        if current is not None and int(current.get("count") or 1) == count:
            return int(current.get("epoch") or 0), dict(current.get("baseline") or {})
        epoch = int(current["epoch"]) if current is not None else None
        baseline = {name: {key: value for key, value in state.items()
                           if key in ("fingerprint", "handlerVersion", "database", "collection",
                                      "tasksCollection", "cleanup", "keepForMs", "removedAt")}
                    for name, state in (await meta.reactors()).items()}
        if await meta.switch_partitioning(epoch, count, instance, baseline):
            log_event(log, logging.WARNING, "planner partition count changed; every partition "
                      "reconciles its documents", event="partitions.switched",
                      instance=instance, previous=(current or {}).get("count", 1), count=count,
                      epoch=(epoch or 0) + 1)


@dataclass
class _Held:
    partition: Partition
    token: int
    valid_until: float
    """Event-loop time until which the lease certainly holds (from the last renewal sent)."""


Gain = Callable[[Partition, int], Awaitable[None]]
Loss = Callable[[Partition], Awaitable[None]]


class PartitionManager:
    """Takes, renews, balances and releases this instance's partition leases."""

    def __init__(self, meta: MetaStore, instance: str, partitions: list[Partition],
                 epoch: int, ttl_ms: int, renew_ms: int, on_gain: Gain, on_loss: Loss,
                 now: Callable[[], datetime.datetime]) -> None:
        self.meta = meta
        self.instance = instance
        self.partitions = partitions
        self.epoch = epoch
        self.ttl_ms = ttl_ms
        self.renew_ms = renew_ms
        self.on_gain = on_gain
        self.on_loss = on_loss
        self.now = now
        self.held: dict[str, _Held] = {}
        self._wake = asyncio.Event()
        self._stopping = False
        self._forfeited: set[str] = set()
        self._task: asyncio.Task[None] | None = None

    def held_labels(self) -> list[str]:
        """The partitions this instance plans (``db:k/N``), for heartbeats and logs."""
        return sorted(f"{h.partition.database}:{h.partition.label}" for h in self.held.values())

    def start(self) -> asyncio.Task[None]:
        """Run :meth:`run` on its own task (stopped by :meth:`stop`)."""
        self._task = asyncio.create_task(self.run(), name=f"partitions-{self.instance}")
        return self._task

    def nudge(self) -> None:
        """Run a round now."""
        self._wake.set()

    def forfeit(self, partition: Partition) -> None:
        """A partition's planner found a newer holder's mark and stopped: give the partition
        up at the next round (which does nothing if its lease is already gone), so that it is
        never held without being planned; whoever takes it next gets a newer token."""
        self._forfeited.add(partition.lease_id)
        self._wake.set()

    async def run(self) -> None:
        """Rounds until :meth:`stop`."""
        while not self._stopping:
            self._wake.clear()
            try:
                await self.round()
            except (PyMongoError, TimeoutError) as exc:
                raise_if_cancelled()
                log_event(log, logging.WARNING, "partition lease round failed",
                          event="partitions.error", instance=self.instance, error=str(exc))
                await self._drop_expired()
            if self._stopping:
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.renew_ms / 1000)

    async def round(self) -> None:
        """Renew, then read the cluster's leases and instances, then take or give up."""
        forfeited, self._forfeited = self._forfeited, set()
        for lease_id in forfeited:
            if lease_id in self.held:
                await self._release(self.held[lease_id])
        await self._renew()
        leases: dict[str, dict[str, Any]] = {}
        for database in sorted({p.database for p in self.partitions}):
            leases.update(await self.meta.partition_leases(database, self.partitions[0].count))
        now = self.now()
        beats = {str(doc.get("instance")): doc.get("heartbeatAt")
                 for doc in await self.meta.live_instances(STALE_AFTER_MS)}
        live = (set(beats) - _gone(leases, beats, now)) | {self.instance}
        share = math.ceil(len(self.partitions) / len(live))
        fair = len(self.partitions) // len(live)
        holding: dict[str, int] = {}
        for doc in leases.values():
            if doc.get("owner") and _valid(doc, now):
                holding[str(doc["owner"])] = holding.get(str(doc["owner"]), 0) + 1
        for partition in self._by_preference():
            if self._stopping or partition.lease_id in self.held:
                continue
            lease = leases.get(partition.lease_id)
            if lease is not None and _valid(lease, now):
                continue
            long_free = lease is not None and _free_since(lease) + datetime.timedelta(
                milliseconds=self.ttl_ms) <= now
            given_up = lease is not None and lease.get("owner") is None and lease.get(
                "releasedBy") == self.instance
            if (len(self.held) < share and not given_up) or long_free:
                await self._take(partition)
        needy = [name for name in live if name != self.instance and holding.get(name, 0) < fair]
        if len(self.held) > fair and needy and not self._stopping:
            surplus = max(self.held.values(), key=lambda h: h.partition.index)
            log_event(log, logging.INFO, "handing a partition over to balance the load",
                      event="partitions.rebalance", instance=self.instance,
                      partition=surplus.partition.lease_id, share=share, live=len(live),
                      held=len(self.held))
            await self._release(surplus)

    def _by_preference(self) -> list[Partition]:
        """Free partitions are tried in an order of this instance's own, so instances starting
        together tend to take different ones."""
        offset = sum(self.instance.encode()) % max(1, len(self.partitions))
        return self.partitions[offset:] + self.partitions[:offset]

    async def _take(self, partition: Partition) -> None:
        sent = asyncio.get_running_loop().time()
        try:
            doc = await within(self.meta.acquire_partition(
                partition.lease_id, self.instance, self.ttl_ms, self.epoch, take=True),
                self.ttl_ms / 1000)
        except DuplicateKeyError:
            return
        if doc is None or doc.get("owner") != self.instance:
            return
        held = _Held(partition, int(doc["token"]), sent + self.ttl_ms / 1000)
        self.held[partition.lease_id] = held
        log_event(log, logging.INFO, "planning partition", event="partitions.gained",
                  instance=self.instance, partition=partition.lease_id, token=held.token)
        await self.on_gain(partition, held.token)

    async def _renew(self) -> None:
        loop = asyncio.get_running_loop()
        for lease_id, held in list(self.held.items()):
            sent = loop.time()
            try:
                doc = await within(self.meta.acquire_partition(
                    lease_id, self.instance, self.ttl_ms, self.epoch, take=False),
                    max(0.01, held.valid_until - sent))
            except (PyMongoError, TimeoutError) as exc:
                raise_if_cancelled()
                if loop.time() < held.valid_until:
                    continue  # retried next round while the lease certainly holds
                log_event(log, logging.WARNING, "partition lease renewal failed",
                          event="partitions.error", instance=self.instance,
                          partition=lease_id, error=str(exc))
                doc = None
            if doc is not None and doc.get("owner") == self.instance and int(
                    doc.get("token") or 0) == held.token:
                held.valid_until = sent + self.ttl_ms / 1000
                continue
            await self._lose(held)

    async def _drop_expired(self) -> None:
        """After a failed round: stop planning partitions whose lease certainly ran out."""
        loop_time = asyncio.get_running_loop().time()
        for held in list(self.held.values()):
            if loop_time >= held.valid_until:
                await self._lose(held)

    async def _lose(self, held: _Held) -> None:
        self.held.pop(held.partition.lease_id, None)
        log_event(log, logging.WARNING, "lost a partition", event="partitions.lost",
                  instance=self.instance, partition=held.partition.lease_id, token=held.token)
        await self.on_loss(held.partition)

    async def _release(self, held: _Held) -> None:
        """Stop planning the partition, then give its lease up (so nobody plans it twice)."""
        self.held.pop(held.partition.lease_id, None)
        await self.on_loss(held.partition)
        released = False
        with contextlib.suppress(PyMongoError, TimeoutError):
            released = await within(self.meta.release_partition(held.partition.lease_id,
                                                                self.instance),
                                    RELEASE_TIMEOUT_S)
        if released:
            log_event(log, logging.INFO, "released a partition", event="partitions.released",
                      instance=self.instance, partition=held.partition.lease_id,
                      token=held.token)

    async def stop(self) -> None:
        """Stop the rounds and hand every held partition over at once."""
        self._stopping = True
        self._wake.set()
        task, self._task = self._task, None
        if task is not None and task is not asyncio.current_task():
            done, _ = await asyncio.wait([task], timeout=min(RELEASE_TIMEOUT_S,
                                                             self.ttl_ms / 1000))
            if not done:
                task.cancel()
                await asyncio.wait([task], timeout=RELEASE_TIMEOUT_S)
        await asyncio.gather(*(self._release(h) for h in list(self.held.values())))


def _expiry(doc: dict[str, Any]) -> datetime.datetime:
    expires = doc.get("expiresAt")
    return expires if isinstance(expires, datetime.datetime) else EPOCH


def _free_since(doc: dict[str, Any]) -> datetime.datetime:
    """When a free lease became free: released, or run out."""
    released = doc.get("releasedAt")
    if doc.get("owner") is None and isinstance(released, datetime.datetime):
        return released
    return _expiry(doc)


def _gone(leases: dict[str, dict[str, Any]], beats: dict[str, Any],
          now: datetime.datetime) -> set[str]:
    """Instances that still look alive by their heartbeat but are not: they hold a lease that
    ran out, or a lease was taken over from them and they have not beaten since."""
    gone = {str(doc["owner"]) for doc in leases.values()
            if doc.get("owner") and not _valid(doc, now)}
    for doc in leases.values():
        previous, at = doc.get("tookOverFrom"), doc.get("tookOverAt")
        beat = beats.get(str(previous))
        if previous and isinstance(at, datetime.datetime) and isinstance(
                beat, datetime.datetime) and beat <= at:
            gone.add(str(previous))
    return gone


def _valid(doc: dict[str, Any], now: datetime.datetime) -> bool:
    """Held by someone whose lease has not run out (by the estimated server clock)."""
    return doc.get("owner") is not None and _expiry(doc) > now
