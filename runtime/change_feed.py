"""A change stream read batch by batch, with the post-batch resume token of every batch.

It speaks the ``aggregate``/``getMore`` commands through PyMongo itself rather than iterating
event by event, because the planner works on whole batches: each ``getMore`` returns everything
that committed since the last one (up to the batch size) together with the token to resume
after it, which is exactly the unit the planner plans and then saves.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

from bson.int64 import Int64
from bson.timestamp import Timestamp
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import ConnectionFailure, OperationFailure

from runtime.cancellation import within

HISTORY_LOST_CODES = frozenset({286, 280, 260})
"""ChangeStreamHistoryLost, ChangeStreamFatalError, InvalidResumeToken: the saved token is
useless; start from now and reconcile."""


CLOSE_TIMEOUT_S = 2.0


class HistoryLost(Exception):
    """The stream cannot resume from the saved position."""


def is_resumable(exc: Exception) -> bool:
    """Network trouble, a lost cursor, or an error the server labels resumable."""
    if isinstance(exc, ConnectionFailure):
        return True
    if isinstance(exc, OperationFailure):
        return exc.code == 43 or exc.has_error_label("ResumableChangeStreamError")
    return False


@dataclass
class Batch:
    """Events of one batch and the token to resume after them."""

    events: list[dict[str, Any]]
    resume_token: dict[str, Any] | None


class ChangeFeed:
    """One database-level (or collection-level) change stream."""

    def __init__(self, db: AsyncDatabase[Any], pipeline: list[dict[str, Any]], *,
                 collection: str | None = None, full_document: str | None = None,
                 batch_size: int = 1000, max_await_ms: int = 1000) -> None:
        self.db = db
        self.pipeline = pipeline
        self.collection = collection
        self.full_document = full_document
        self.batch_size = batch_size
        self.max_await_ms = max_await_ms
        self.resume_token: dict[str, Any] | None = None
        self._cursor_id = 0
        self._cursor_collection = ""
        self._pending: list[dict[str, Any]] = []
        self._after_invalidate = False

    async def open(self, resume_token: dict[str, Any] | None = None,
                   start_at: Timestamp | None = None) -> None:
        """Open at a token (exclusive), an operation time (inclusive) or now."""
        options: dict[str, Any] = {}
        if self.full_document:
            options["fullDocument"] = self.full_document
        if resume_token is not None:
            options["startAfter" if self._after_invalidate else "resumeAfter"] = resume_token
        elif start_at is not None:
            options["startAtOperationTime"] = start_at
        reply = await self._command({
            "aggregate": self.collection if self.collection else 1,
            "pipeline": [{"$changeStream": options}, *self.pipeline],
            "cursor": {"batchSize": self.batch_size},
        })
        cursor = reply["cursor"]
        self._cursor_id = int(cursor["id"])
        self._cursor_collection = str(cursor["ns"]).split(".", 1)[1]
        self._pending = list(cursor.get("firstBatch", []))
        self.resume_token = cursor.get("postBatchResumeToken") or resume_token
        self._after_invalidate = False

    async def next_batch(self) -> Batch:
        """Events that committed since the last batch, waiting up to ``max_await_ms``."""
        if self._pending:
            events, self._pending = self._pending, []
            return self._finish(events)
        if not self._cursor_id:
            await self.open(self.resume_token)
            if self._pending:
                events, self._pending = self._pending, []
                return self._finish(events)
        reply = await self._command({
            "getMore": Int64(self._cursor_id),
            "collection": self._cursor_collection,
            "batchSize": self.batch_size,
            "maxTimeMS": self.max_await_ms,
        })
        cursor = reply["cursor"]
        self._cursor_id = int(cursor["id"])
        events = list(cursor.get("nextBatch", []))
        token = cursor.get("postBatchResumeToken")
        if token is not None:
            self.resume_token = token
        elif events and "_id" in events[-1]:
            self.resume_token = events[-1]["_id"]  # a server without post-batch tokens
        return self._finish(events)

    def _finish(self, events: list[dict[str, Any]]) -> Batch:
        if events and events[-1].get("operationType") == "invalidate":
            self._after_invalidate = True
            self._cursor_id = 0
            self.resume_token = events[-1]["_id"]
        elif events and self.resume_token is None:
            self.resume_token = events[-1]["_id"]
        return Batch(events, self.resume_token)

    async def _command(self, body: dict[str, Any]) -> dict[str, Any]:
        """Run aggregate/getMore; a lost position becomes :class:`HistoryLost`."""
        try:
            reply: dict[str, Any] = await self.db.command(body)
        except OperationFailure as exc:
            if exc.code in HISTORY_LOST_CODES:
                raise HistoryLost(str(exc)) from exc
            raise
        return reply

    async def close(self) -> None:
        """Kill the server cursor (best effort, and bounded: with the server gone, waiting
        for server selection would hold up a stop for half a minute)."""
        if self._cursor_id:
            cursor_id, self._cursor_id = self._cursor_id, 0
            # Closing is best effort: the server reaps cursors of vanished clients anyway.
            with contextlib.suppress(Exception):
                await within(self.db.command({"killCursors": self._cursor_collection,
                                              "cursors": [Int64(cursor_id)]}),
                             CLOSE_TIMEOUT_S)
