"""The ``reactgen_meta`` collection: one small document per concern, addressed by ``_id``.

:class:`MetaStore` is the one place that reads and writes the planner's documents in it
(the leader lease, stream positions, per-reactor state, scan checkpoints, throttles, pauses,
requests, heartbeats); ``runtime/leader.py`` decides *when* to take or give up the lease.
Document shapes are listed in docs/architecture.md.

Planner documents are *fenced* by the leadership token: every write matches only while the
stored ``leaderToken`` is not newer than the writer's, and is an upsert, so a write of a
deposed leader finds no match, tries to insert, collides on ``_id`` and is refused
(:class:`Deposed`). A newer leader therefore can never be overwritten by an older one.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from typing import Any

from pymongo import ReturnDocument
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from runtime.server_time import EPOCH

META_COLLECTION = "reactgen_meta"
LEADER_ID = "leader"
REACTOR_PREFIX = "reactor:"
SCAN_PREFIX = "scan:"
INSTANCE_PREFIX = "instance:"
CRON_PREFIX = "cron:"
PARTITION_PREFIX = "partition:"
PARTITIONING_ID = "partitioning"
EPOCH_SHIFT = 32
"""Fencing tokens of partitioned planning carry the partitioning epoch above this bit."""


class Deposed(Exception):
    """A newer leader owns the state this planner tried to write: it must stop planning."""


def planner_id(database: str) -> str:
    """Resume position of the planner of one database."""
    return f"planner:{database}"


def throttle_id(reactor: str) -> str:
    """Cluster-wide pause of one reactor."""
    return f"throttle:{reactor}"


def reactor_id(reactor: str) -> str:
    """Per-reactor state: trigger fingerprint, handler version, time-trigger pass."""
    return f"{REACTOR_PREFIX}{reactor}"


def instance_id(instance: str) -> str:
    """Heartbeat of one runtime instance."""
    return f"{INSTANCE_PREFIX}{instance}"


def scan_id(database: str, collection: str) -> str:
    """Reconciliation scans (passes and their checkpoints) of one source collection."""
    return f"{SCAN_PREFIX}{database}.{collection}"


def partition_id(database: str, index: int, count: int) -> str:
    """Lease, resume position and reactor record of partition ``index`` of ``count`` of a
    database's planning."""
    return f"{PARTITION_PREFIX}{database}:{index}/{count}"


def epoch_base(epoch: int) -> int:
    """The smallest token of a partitioning epoch: every token of a later epoch (and of the
    leader of a later epoch) is larger than any token of an earlier one."""
    return epoch << EPOCH_SHIFT


def _utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC).replace(tzinfo=None)


def cron_id(name: str) -> str:
    """Planning state of one cron job (the last decided occurrence, missed runs)."""
    return f"{CRON_PREFIX}{name}"


def not_newer_than(token: int) -> dict[str, Any]:
    """Query condition: the stored fencing token is missing or not newer than ``token``."""
    return {"$not": {"$gt": token}}


def scan_request(reactor: str, reason: str, by: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Filter and update that record a request to reconcile ``reactor`` (an upsert)."""
    return ({"_id": reactor_id(reactor)},
            {"$set": {"scanRequest.reason": reason, "scanRequest.by": by},
             "$currentDate": {"scanRequest.at": True}})


class MetaStore:
    """Reads and fenced writes of the planner's documents in ``reactgen_meta``."""

    def __init__(self, db: AsyncDatabase[Any]) -> None:
        self.collection = db[META_COLLECTION]

    async def get(self, doc_id: str) -> dict[str, Any] | None:
        """One document by ``_id``."""
        found: dict[str, Any] | None = await self.collection.find_one({"_id": doc_id})
        return found

    async def with_prefix(self, prefix: str) -> list[dict[str, Any]]:
        """Every document whose ``_id`` starts with ``prefix`` (an index-served range)."""
        cursor = self.collection.find({"_id": {"$gte": prefix, "$lt": prefix + "\uffff"}})
        return [doc async for doc in cursor]

    async def fenced_update(self, doc_id: str, update: Mapping[str, Any],
                            leader_token: int) -> None:
        """Apply ``update`` (operators, no pipeline) unless a newer leader wrote the document.

        Raises :class:`Deposed` when refused. ``leaderToken`` and ``updatedAt`` are set too.
        """
        body: dict[str, Any] = {key: dict(value) for key, value in update.items()}
        body.setdefault("$set", {})["leaderToken"] = leader_token
        body.setdefault("$currentDate", {})["updatedAt"] = True
        try:
            await self.collection.update_one(
                {"_id": doc_id, "leaderToken": not_newer_than(leader_token)}, body, upsert=True)
        except DuplicateKeyError:
            raise Deposed(f"{doc_id} is owned by a newer leader") from None

    # ------------------------------------------------------------------ leader lease

    async def acquire_lease(self, instance: str, ttl_ms: int) -> dict[str, Any] | None:
        """One acquisition or renewal of the leader lease, decided on the server with its
        ``$$NOW``: taken if free, expired or already ours; ``token`` increases when the owner
        changes. Returns the lease document after the attempt (ours or not).

        Raises ``DuplicateKeyError`` when two first-time upserts raced (try again)."""
        take = {"$or": [{"$eq": ["$owner", instance]},
                        {"$lte": [{"$ifNull": ["$expiresAt", EPOCH]}, "$$NOW"]}]}
        changes_owner = {"$and": ["$_take", {"$ne": ["$owner", instance]}]}
        doc: dict[str, Any] | None = await self.collection.find_one_and_update(
            {"_id": LEADER_ID},
            [
                {"$set": {"_take": take}},
                {"$set": {
                    "token": {"$cond": [changes_owner,
                                        {"$add": [{"$ifNull": ["$token", 0]}, 1]}, "$token"]},
                    "acquiredAt": {"$cond": [changes_owner, "$$NOW", "$acquiredAt"]},
                    "renewedAt": {"$cond": ["$_take", "$$NOW", "$renewedAt"]},
                    "owner": {"$cond": ["$_take", instance, "$owner"]},
                    "expiresAt": {"$cond": ["$_take", {"$add": ["$$NOW", ttl_ms]},
                                            "$expiresAt"]},
                }},
                {"$unset": "_take"},
            ],
            upsert=True, return_document=ReturnDocument.AFTER)
        return doc

    async def release_lease(self, instance: str) -> bool:
        """Hand the lease over at once (fenced by owner); whether we held it."""
        result = await self.collection.update_one(
            {"_id": LEADER_ID, "owner": instance},
            {"$set": {"expiresAt": EPOCH}, "$currentDate": {"releasedAt": True}})
        return result.modified_count == 1

    # ------------------------------------------------------------------ stream positions

    async def position(self, database: str) -> dict[str, Any] | None:
        """The saved change-stream resume token of a database's planner."""
        state = await self.get(planner_id(database))
        token = state.get("resumeToken") if state else None
        return token if isinstance(token, dict) else None

    async def save_position(self, database: str, token: dict[str, Any],
                            leader_token: int) -> None:
        """Save a resume token (fenced)."""
        await self.fenced_update(planner_id(database), {"$set": {"resumeToken": token}},
                                 leader_token)

    # ------------------------------------------------------------------ reactor state

    async def reactors(self) -> dict[str, dict[str, Any]]:
        """Every ``reactor:<name>`` document, by reactor name."""
        return {str(doc["_id"])[len(REACTOR_PREFIX):]: doc
                for doc in await self.with_prefix(REACTOR_PREFIX)}

    async def save_reactor(self, name: str, fields: Mapping[str, Any], leader_token: int,
                           unset: tuple[str, ...] = ()) -> None:
        """Set fields of a reactor's state document (fenced)."""
        update: dict[str, Any] = {"$set": dict(fields)}
        if unset:
            update["$unset"] = {field: "" for field in unset}
        await self.fenced_update(reactor_id(name), update, leader_token)

    async def clear_scan_request(self, name: str, requested_at: Any, leader_token: int) -> None:
        """Forget a scan request once it is registered (only the one that was read: a newer
        request made meanwhile stays)."""
        result = await self.collection.update_one(
            {"_id": reactor_id(name), "scanRequest.at": requested_at,
             "leaderToken": not_newer_than(leader_token)},
            {"$unset": {"scanRequest": ""}})
        if result.matched_count == 0 and await self.collection.count_documents(
                {"_id": reactor_id(name), "leaderToken": {"$gt": leader_token}}, limit=1):
            raise Deposed(f"{reactor_id(name)} is owned by a newer leader")

    async def requests(self, position_id: str, reactors: list[str]) -> list[dict[str, Any]]:
        """Pending operator requests in one read: the planner document ``position_id`` when it
        carries a ``resetRequest``, and the ``reactor:`` documents with a ``scanRequest``."""
        cursor = self.collection.find({"$or": [
            {"_id": position_id, "resetRequest": {"$type": "object"}},
            {"_id": {"$in": [reactor_id(name) for name in reactors]},
             "scanRequest": {"$exists": True}}]})
        return [doc async for doc in cursor]

    async def request_scan(self, reactor: str, reason: str, by: str) -> None:
        """Ask the leader to reconcile a reactor (not fenced: anyone may ask)."""
        await self.collection.update_one(*scan_request(reactor, reason, by), upsert=True)

    async def pause(self, reactor: str, by: str, reason: str | None) -> dict[str, Any] | None:
        """Pause a reactor on every instance (they learn it from their wake-up stream);
        returns the reactor document after the write."""
        doc: dict[str, Any] | None = await self.collection.find_one_and_update(
            {"_id": reactor_id(reactor)},
            [{"$set": {"paused": {"at": "$$NOW", "by": {"$literal": by},
                                  "reason": {"$literal": reason}}}}],
            upsert=True, return_document=ReturnDocument.AFTER)
        return doc

    async def resume(self, reactor: str) -> dict[str, Any] | None:
        """Lift a pause; returns the reactor document as it was (None: it was not paused)."""
        doc: dict[str, Any] | None = await self.collection.find_one_and_update(
            {"_id": reactor_id(reactor), "paused": {"$exists": True}},
            {"$unset": {"paused": ""}}, return_document=ReturnDocument.BEFORE)
        return doc

    async def request_position_reset(self, database: str, by: str) -> dict[str, Any] | None:
        """Ask the leader to restart a database's stream at now and scan it (None: no planner
        state exists for that database)."""
        doc: dict[str, Any] | None = await self.collection.find_one_and_update(
            {"_id": planner_id(database)},
            [{"$set": {"resetRequest": {"at": "$$NOW", "by": {"$literal": by}}}}],
            return_document=ReturnDocument.AFTER)
        return doc

    # ------------------------------------------------------------------ scans

    async def scans(self, database: str) -> list[dict[str, Any]]:
        """The scan documents of one database's source collections."""
        return await self.with_prefix(f"{SCAN_PREFIX}{database}.")

    async def clear_position_reset(self, database: str, requested_at: Any,
                                   leader_token: int) -> None:
        """Forget a handled stream-position reset request (only the one that was read)."""
        await self.collection.update_one(
            {"_id": planner_id(database), "resetRequest.at": requested_at,
             "leaderToken": not_newer_than(leader_token)}, {"$unset": {"resetRequest": ""}})

    # ------------------------------------------------------------------ instances

    async def heartbeat(self, instance: str, fields: Mapping[str, Any]) -> None:
        """Record that ``instance`` is alive (``heartbeatAt`` by the server's clock)."""
        await self.collection.update_one(
            {"_id": instance_id(instance)},
            {"$set": {"instance": instance, **fields}, "$currentDate": {"heartbeatAt": True},
             "$setOnInsert": {"startedAt": datetime.datetime.now(datetime.UTC)
                              .replace(tzinfo=None)}},
            upsert=True)

    async def remove_instance(self, instance: str) -> None:
        """Forget an instance that stopped gracefully."""
        await self.collection.delete_one({"_id": instance_id(instance)})

    async def paused_reactors(self) -> set[str]:
        """Reactors paused cluster-wide (``paused`` set on ``reactor:<name>``)."""
        return {name for name, doc in (await self.reactors()).items() if doc.get("paused")}

    # ------------------------------------------------------------------ cron jobs

    async def cron_states(self) -> dict[str, dict[str, Any]]:
        """Every ``cron:<name>`` document, by job name."""
        return {str(doc["_id"])[len(CRON_PREFIX):]: doc
                for doc in await self.with_prefix(CRON_PREFIX)}

    async def save_cron(self, name: str, fields: Mapping[str, Any], leader_token: int) -> None:
        """Set fields of a cron job's planning state (fenced)."""
        await self.fenced_update(cron_id(name), {"$set": dict(fields)}, leader_token)

    # ------------------------------------------------------------------ throttles

    async def throttle(self, reactor: str, until: datetime.datetime, by: str) -> None:
        """Pause a reactor on every instance until ``until`` (a later pause wins)."""
        await self.collection.update_one(
            {"_id": throttle_id(reactor)},
            {"$max": {"until": until}, "$set": {"by": by}}, upsert=True)

    async def throttles(self) -> dict[str, datetime.datetime]:
        """Every stored throttle: reactor name -> until."""
        return {str(doc["_id"]).split(":", 1)[1]: doc["until"]
                for doc in await self.with_prefix("throttle:")
                if isinstance(doc.get("until"), datetime.datetime)}

    # ------------------------------------------------------------------ partitioned planning
    # Shapes and the protocol: docs/architecture.md ("Partitioned planning"); the decisions
    # (when to take, renew or give up a partition) are runtime/partitions.py's.

    async def partitioning(self) -> dict[str, Any] | None:
        """The ``partitioning`` document: the partition count every instance must use."""
        return await self.get(PARTITIONING_ID)

    async def switch_partitioning(self, expected_epoch: int | None, count: int, by: str,
                                  baseline: Mapping[str, Any]) -> bool:
        """Record a new partition count (a new epoch), unless another instance changed the
        document since it was read (``expected_epoch``: None when it did not exist). The
        reactor states as recorded so far (``baseline``) become every new partition's
        starting record. Returns whether this call made the switch."""
        fields = {"count": count, "epoch": (expected_epoch or 0) + 1, "by": by,
                  "baseline": dict(baseline)}
        if expected_epoch is None:
            try:
                await self.collection.insert_one(
                    {"_id": PARTITIONING_ID, **fields, "changedAt": _utcnow()})
            except DuplicateKeyError:
                return False
            return True
        result = await self.collection.update_one(
            {"_id": PARTITIONING_ID, "epoch": expected_epoch},
            {"$set": fields, "$currentDate": {"changedAt": True}})
        return result.modified_count == 1

    async def live_instances(self, stale_after_ms: int) -> list[dict[str, Any]]:
        """``instance:`` heartbeats younger than ``stale_after_ms`` by the server's clock."""
        cursor = self.collection.find(
            {"_id": {"$gte": INSTANCE_PREFIX, "$lt": INSTANCE_PREFIX + "\uffff"},
             "$expr": {"$gte": ["$heartbeatAt", {"$subtract": ["$$NOW", stale_after_ms]}]}})
        return [doc async for doc in cursor]

    async def partition_leases(self, database: str, count: int) -> dict[str, dict[str, Any]]:
        """The lease documents of ``database``'s partitions under a count of ``count``."""
        prefix = f"{PARTITION_PREFIX}{database}:"
        return {str(doc["_id"]): doc for doc in await self.with_prefix(prefix)
                if str(doc["_id"]).endswith(f"/{count}")}

    async def acquire_partition(self, doc_id: str, instance: str, ttl_ms: int, epoch: int,
                                take: bool) -> dict[str, Any] | None:
        """One renewal (or, with ``take``, acquisition) of a partition lease, decided on the
        server with its ``$$NOW``. A lease is renewed while ``instance`` owns it and taken when
        it is free (released, expired or new). A change of owner gives a new ``token``: one
        more than the last, and at least ``epoch_base(epoch) + 1``, so tokens grow within a
        partition and across changes of the partition count. Returns the document after the
        attempt (None: it does not exist and ``take`` is off).

        Raises ``DuplicateKeyError`` when two first-time upserts raced (try again)."""
        mine = {"$eq": ["$owner", instance]}
        free = {"$lte": [{"$ifNull": ["$expiresAt", EPOCH]}, "$$NOW"]}
        take_expr: Any = {"$or": [mine, free]} if take else mine
        changes_owner = {"$and": ["$_take", {"$ne": ["$owner", instance]}]}
        next_token = {"$max": [epoch_base(epoch) + 1, {"$add": [{"$ifNull": ["$token", 0]}, 1]}]}
        doc: dict[str, Any] | None = await self.collection.find_one_and_update(
            {"_id": doc_id},
            [
                {"$set": {"_take": take_expr}},
                {"$set": {
                    "token": {"$cond": [changes_owner, next_token, "$token"]},
                    "epoch": {"$cond": [changes_owner, epoch, "$epoch"]},
                    "acquiredAt": {"$cond": [changes_owner, "$$NOW", "$acquiredAt"]},
                    "renewedAt": {"$cond": ["$_take", "$$NOW", "$renewedAt"]},
                    "owner": {"$cond": ["$_take", instance, "$owner"]},
                    "expiresAt": {"$cond": ["$_take", {"$add": ["$$NOW", ttl_ms]},
                                            "$expiresAt"]},
                    # Taken from an owner whose lease ran out (not released): it is dead or
                    # stalled, which the balancing must know (see runtime/partitions.py).
                    "tookOverFrom": {"$cond": [{"$and": [changes_owner, {"$gt": [
                        {"$ifNull": ["$owner", None]}, None]}]}, "$owner", "$tookOverFrom"]},
                    "tookOverAt": {"$cond": [{"$and": [changes_owner, {"$gt": [
                        {"$ifNull": ["$owner", None]}, None]}]}, "$$NOW", "$tookOverAt"]},
                }},
                {"$unset": "_take"},
            ],
            upsert=take, return_document=ReturnDocument.AFTER)
        return doc

    async def release_partition(self, doc_id: str, instance: str) -> bool:
        """Give a partition lease up at once (fenced by owner): the next taker gets a new
        token. Returns whether ``instance`` held it."""
        result = await self.collection.update_one(
            {"_id": doc_id, "owner": instance},
            {"$set": {"expiresAt": EPOCH, "owner": None, "releasedBy": instance},
             "$currentDate": {"releasedAt": True}})
        return result.modified_count == 1

    async def partition_update(self, doc_id: str, update: Mapping[str, Any],
                               token: int) -> None:
        """Apply ``update`` to a partition document while its lease ``token`` is still
        ``token``: a holder that was replaced (a newer token) is refused with
        :class:`Deposed`."""
        result = await self.collection.update_one({"_id": doc_id, "token": token},
                                                  dict(update))
        if result.matched_count == 0:
            raise Deposed(f"{doc_id} was taken over by a newer holder")
