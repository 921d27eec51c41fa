"""One bulk write for the fenced updates that end executions close together.

Every execution ends with one update of its task, fenced by its claim id (``{_id, lease.claim}``).
Executions that end while a previous batch is on its way to the database are sent together
in one unordered ``bulk_write``: at load, one command finalizes many tasks; at low load the
first update goes out at once, so nobody waits for a batch to fill.

A bulk write reports how many updates matched, not which. When all matched (the usual case)
every execution is recorded. Otherwise one ``find`` tells which tasks carry their execution's
claim id in ``lastClaim`` (written by the same update): those were recorded, the others had
lost their lease (their result is discarded; docs/architecture.md, "Claims").
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from bson import ObjectId
from pymongo import UpdateOne
from pymongo.asynchronous.collection import AsyncCollection

MAX_BATCH = 500


@dataclass
class _Pending:
    task_id: Any
    claim: ObjectId
    update: UpdateOne
    done: asyncio.Future[bool] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future())


class FencedWriteBatcher:
    """Batches the execution-ending updates of one tasks collection."""

    def __init__(self, collection: AsyncCollection[dict[str, Any]]) -> None:
        self.collection = collection
        self._queue: list[_Pending] = []
        self._sender: asyncio.Task[None] | None = None

    async def write(self, task_id: Any, claim: ObjectId, query: dict[str, Any],
                    update: list[dict[str, Any]]) -> bool:
        """Apply ``update`` to the task if ``query`` (which must fence on ``claim``) still
        matches; True if it did. The update must set ``lastClaim`` to ``claim``."""
        pending = _Pending(task_id, claim, UpdateOne(query, update))
        self._queue.append(pending)
        if self._sender is None or self._sender.done():
            self._sender = asyncio.create_task(self._send())
        return await asyncio.shield(pending.done)

    async def _send(self) -> None:
        while self._queue:
            batch, self._queue = self._queue[:MAX_BATCH], self._queue[MAX_BATCH:]
            try:
                recorded = await self._write(batch)
            except Exception as exc:  # each waiting execution handles it (lease lost)
                for pending in batch:
                    if not pending.done.done():
                        pending.done.set_exception(exc)
                continue
            for pending, ok in zip(batch, recorded, strict=True):
                if not pending.done.done():
                    pending.done.set_result(ok)

    async def _write(self, batch: list[_Pending]) -> list[bool]:
        result = await self.collection.bulk_write([p.update for p in batch], ordered=False)
        if result.matched_count == len(batch):
            return [True] * len(batch)
        found = await self.collection.find(
            {"_id": {"$in": [p.task_id for p in batch]},
             "lastClaim": {"$in": [p.claim for p in batch]}}, {"lastClaim": 1}).to_list(None)
        recorded = {(repr(doc["_id"]), doc["lastClaim"]) for doc in found}
        return [(repr(p.task_id), p.claim) in recorded for p in batch]
