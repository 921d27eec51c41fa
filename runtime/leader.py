"""Leader election: a lease document with a fencing token that increases with every new owner.

The acquisition is one ``findOneAndUpdate`` whose update pipeline decides on the server, with
the server's ``$$NOW``: the lease is taken if it is free, expired or already ours, and the token
is incremented when the owner changes. Renewal runs on its own task, so no planning or
reconciliation work can delay it. Followers also watch the lease document, so a graceful
release is taken over at once instead of at the next renewal tick.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from pymongo import ReturnDocument
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError, PyMongoError

from runtime.meta import LEADER_ID, META_COLLECTION
from runtime.server_time import EPOCH
from runtime.structured_logging import log_event

log = logging.getLogger("runtime.leader")
RELEASE_TIMEOUT_S = 5.0


class LeaderElector:
    """Keeps trying to hold the lease; calls back when leadership is gained or lost."""

    def __init__(self, db: AsyncDatabase[Any], instance_id: str, ttl_ms: int, renew_ms: int,
                 on_gain: Callable[[int], Awaitable[None]],
                 on_loss: Callable[[], Awaitable[None]]) -> None:
        self.meta = db[META_COLLECTION]
        self.instance_id = instance_id
        self.ttl_ms = ttl_ms
        self.renew_ms = renew_ms
        self.on_gain = on_gain
        self.on_loss = on_loss
        self.is_leader = False
        self.token = 0
        self._wake = asyncio.Event()
        self._stopping = False

    async def try_acquire(self) -> bool:
        """One acquisition or renewal attempt; returns whether we now hold the lease."""
        me = self.instance_id
        takeover = {"$or": [{"$eq": ["$owner", me]},
                            {"$lte": [{"$ifNull": ["$expiresAt", EPOCH]}, "$$NOW"]}]}
        try:
            doc = await self.meta.find_one_and_update(
                {"_id": LEADER_ID},
                [
                    {"$set": {"_take": takeover}},
                    {"$set": {
                        "token": {"$cond": [{"$and": ["$_take", {"$ne": ["$owner", me]}]},
                                            {"$add": [{"$ifNull": ["$token", 0]}, 1]},
                                            "$token"]},
                        "owner": {"$cond": ["$_take", me, "$owner"]},
                        "expiresAt": {"$cond": ["$_take", {"$add": ["$$NOW", self.ttl_ms]},
                                                "$expiresAt"]},
                    }},
                    {"$unset": "_take"},
                ],
                upsert=True,
                return_document=ReturnDocument.AFTER,
            )
        except DuplicateKeyError:
            return False  # two first-time upserts raced; the next attempt reads the winner
        held = doc is not None and doc.get("owner") == me
        if held and doc is not None:
            self.token = int(doc["token"])
        return held

    async def run(self) -> None:
        """Acquire/renew forever (until :meth:`stop`)."""
        while not self._stopping:
            try:
                held = await self.try_acquire()
            except PyMongoError as exc:
                log_event(log, logging.WARNING, "leader lease check failed", event="leader.error",
                          error=str(exc))
                held = False
            if held and not self.is_leader:
                self.is_leader = True
                log_event(log, logging.INFO, "became leader", event="leader.gained",
                          instance=self.instance_id, token=self.token)
                await self.on_gain(self.token)
            elif not held and self.is_leader:
                self.is_leader = False
                log_event(log, logging.WARNING, "lost leadership", event="leader.lost",
                          instance=self.instance_id)
                await self.on_loss()
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.renew_ms / 1000)

    def nudge(self) -> None:
        """Try again now (the lease document changed, e.g. a graceful release)."""
        self._wake.set()

    async def stop(self) -> None:
        """Stop renewing and hand leadership over at once if we hold it."""
        self._stopping = True
        self._wake.set()
        if self.is_leader:
            self.is_leader = False
            await self.on_loss()
            with contextlib.suppress(PyMongoError, TimeoutError):
                await asyncio.wait_for(
                    self.meta.update_one({"_id": LEADER_ID, "owner": self.instance_id,
                                          "token": self.token},
                                         {"$set": {"expiresAt": EPOCH}}), RELEASE_TIMEOUT_S)
            log_event(log, logging.INFO, "released leadership", event="leader.released",
                      instance=self.instance_id)
