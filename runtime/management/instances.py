"""Runtime instances (from their heartbeats) and the leader (from its lease).

Each ``runtime serve`` instance writes ``reactgen_meta`` document ``instance:<id>`` every 2 s
(``heartbeatAt`` by the server's clock) and deletes it when it stops gracefully. An instance is
*live* while its last heartbeat is at most :data:`LIVE_WINDOW` old by the server's clock. The
leader is the ``owner`` of the lease document ``leader`` while its ``expiresAt`` is in the
future (server time).
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from typing import Any

from runtime.management.scope import Doc, Scope, naive_utc
from runtime.meta import INSTANCE_PREFIX, LEADER_ID
from runtime.meta import instance_id as instance_doc_id

LIVE_WINDOW = datetime.timedelta(seconds=10)
"""How recent a heartbeat must be for its instance to count as live."""


def _date(value: Any) -> datetime.datetime | None:
    value = naive_utc(value)
    return value if isinstance(value, datetime.datetime) else None


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


@dataclass(frozen=True)
class LeaderInfo:
    """The leader lease (``reactgen_meta`` document ``leader``)."""

    owner: str | None
    token: int | None
    """The fencing token: it increases with every change of owner."""
    expires_at: datetime.datetime | None
    acquired_at: datetime.datetime | None
    renewed_at: datetime.datetime | None
    valid: bool
    """Whether the lease is held now (``expiresAt`` after the server's now)."""

    @classmethod
    def from_document(cls, doc: Doc, now: datetime.datetime) -> LeaderInfo:
        """The lease in a ``leader`` document, judged at server time ``now``."""
        expires = _date(doc.get("expiresAt"))
        owner = doc.get("owner")
        return cls(None if owner is None else str(owner), _int(doc.get("token")), expires,
                   _date(doc.get("acquiredAt")), _date(doc.get("renewedAt")),
                   valid=owner is not None and expires is not None and expires > now)


@dataclass(frozen=True)
class InstanceInfo:
    """One instance's last heartbeat."""

    instance: str
    host: str | None
    pid: int | None
    version: str | None
    reactors: list[str]
    """The reactors it executes."""
    concurrency: int | None
    running: int | None
    """Executions running at its last heartbeat."""
    paused: list[str]
    """Reactors it knew to be paused at its last heartbeat."""
    leader: bool
    """Whether it holds the leader lease now (from the lease, not only its own claim)."""
    started_at: datetime.datetime | None
    heartbeat_at: datetime.datetime | None
    live: bool
    heartbeat_age_seconds: float | None
    """Server now minus ``heartbeatAt``."""
    partitions: list[str] = field(default_factory=list)
    """Planner partitions it held at its last heartbeat (``<db>:<k>/<N>``; only with
    ``--planner-partitions`` > 1)."""

    @classmethod
    def from_document(cls, doc: Doc, now: datetime.datetime,
                      leader: LeaderInfo | None) -> InstanceInfo:
        """The instance described by a heartbeat document, judged at server time ``now``."""
        name = str(doc.get("instance") or str(doc["_id"])[len(INSTANCE_PREFIX):])
        heartbeat = _date(doc.get("heartbeatAt"))
        age = (now - heartbeat).total_seconds() if heartbeat else None
        leads = leader.valid and leader.owner == name if leader is not None else bool(
            doc.get("leader"))
        return cls(name, None if doc.get("host") is None else str(doc.get("host")),
                   _int(doc.get("pid")),
                   None if doc.get("version") is None else str(doc.get("version")),
                   [str(r) for r in doc.get("reactors") or []], _int(doc.get("concurrency")),
                   _int(doc.get("running")), [str(r) for r in doc.get("paused") or []],
                   leads, _date(doc.get("startedAt")), heartbeat,
                   live=age is not None and age <= LIVE_WINDOW.total_seconds(),
                   heartbeat_age_seconds=age,
                   partitions=[str(p) for p in doc.get("partitions") or []])


@dataclass(frozen=True)
class ClusterState:
    """The instances of a deployment and its leader, at one server time."""

    server_time: datetime.datetime
    instances: list[InstanceInfo] = field(default_factory=list)
    leader: LeaderInfo | None = None

    @property
    def live(self) -> list[InstanceInfo]:
        """The live instances."""
        return [instance for instance in self.instances if instance.live]

    def running_reactor(self, name: str) -> list[InstanceInfo]:
        """The live instances that execute reactor ``name``."""
        return [instance for instance in self.live if name in instance.reactors]


async def leader(scope: Scope, now: datetime.datetime | None = None) -> LeaderInfo | None:
    """The leader lease, or None if no instance ever led."""
    now = now or await scope.server_now()
    doc = await scope.meta.find_one({"_id": LEADER_ID})
    return LeaderInfo.from_document(doc, now) if doc is not None else None


async def cluster(scope: Scope, include_stale: bool = False) -> ClusterState:
    """The live instances (every heartbeat document with ``include_stale``), by instance id,
    and the leader lease."""
    now = await scope.server_now()
    lease = await leader(scope, now)
    cursor = scope.meta.find({"_id": {"$gte": INSTANCE_PREFIX,
                                      "$lt": INSTANCE_PREFIX + "\uffff"}})
    instances = [InstanceInfo.from_document(doc, now, lease) async for doc in cursor]
    if not include_stale:
        instances = [instance for instance in instances if instance.live]
    instances.sort(key=lambda instance: instance.instance)
    return ClusterState(now, instances, lease)


__all__ = ["INSTANCE_PREFIX", "LIVE_WINDOW", "ClusterState", "InstanceInfo", "LeaderInfo",
           "cluster", "instance_doc_id", "leader"]
