"""Cluster-wide rate limits: one token bucket per reactor, shared through the database.

Owner of the ``reactgen_rate_limits`` collection. A bucket document is
``{_id: <reactor>, tokens: <float>, refilledAt: <date>, max, perMs}``: it holds at most ``max``
tokens and refills continuously at ``max / perMs`` tokens per millisecond. A claim round takes
tokens with one atomic update (refill to the server's ``$$NOW``, then take), so instances never
hand out more than the bucket holds, whatever their clocks say. When the bucket is empty the
instance does not poll: the answer says how long until enough tokens have accumulated, and the
reactor is throttled locally until then (docs/architecture.md, "Flow control").
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from pymongo import ReturnDocument
from pymongo.asynchronous.database import AsyncDatabase

from runtime.reactor import RateLimit

COLLECTION = "reactgen_rate_limits"


@dataclass(frozen=True)
class Grant:
    """Tokens granted to one claim round, and when to ask again if fewer than wanted."""

    granted: int
    retry_after_ms: int


def _refilled(limit: RateLimit) -> dict[str, Any]:
    rate = limit.max / limit.per_ms
    elapsed = {"$max": [0, {"$subtract": ["$$NOW", {"$ifNull": ["$refilledAt", "$$NOW"]}]}]}
    return {"$min": [limit.max, {"$add": [{"$ifNull": ["$tokens", limit.max]},
                                          {"$multiply": [elapsed, rate]}]}]}


class RateLimiter:
    """Takes and returns tokens of the reactors' buckets."""

    def __init__(self, db: AsyncDatabase[dict[str, Any]]) -> None:
        self.collection = db[COLLECTION]

    async def take(self, reactor: str, limit: RateLimit, wanted: int) -> Grant:
        """Take up to ``wanted`` whole tokens from ``reactor``'s bucket (one command)."""
        doc = await self.collection.find_one_and_update(
            {"_id": reactor},
            [{"$set": {"tokens": _refilled(limit), "refilledAt": "$$NOW", "max": limit.max,
                       "perMs": limit.per_ms}},
             {"$set": {"granted": {"$max": [0, {"$min": [wanted, {"$floor": "$tokens"}]}]}}},
             {"$set": {"tokens": {"$subtract": ["$tokens", "$granted"]}}}],
            upsert=True, return_document=ReturnDocument.AFTER,
            projection={"granted": 1, "tokens": 1})
        granted = int(doc["granted"]) if doc else 0
        left = float(doc["tokens"]) if doc else 0.0
        if granted >= wanted:
            return Grant(granted, 0)
        # Wait until a batch (up to what was wanted) has accumulated, not for each token: at
        # high rates that keeps instances from asking once per token.
        target = min(max(wanted - granted, 1), limit.max)
        wait = (target - left) * limit.per_ms / limit.max
        return Grant(granted, max(1, math.ceil(wait)))

    async def give_back(self, reactor: str, limit: RateLimit, count: int) -> None:
        """Return ``count`` tokens a claim round took but did not use."""
        if count > 0:
            await self.collection.update_one(
                {"_id": reactor},
                [{"$set": {"tokens": {"$min": [limit.max, {"$add": ["$tokens", count]}]}}}])
