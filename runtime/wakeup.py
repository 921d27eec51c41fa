"""Change streams every instance keeps open so that it hears about new work at once.

One stream per database with tasks collections reports tasks that become pending (with their
due time), so idle workers on every instance wake within milliseconds instead of waiting for a
polling back-off. It also reports tasks running on *other* instances (claims and lease
renewals, with the lease expiry: if that instance dies, the task is due again then) and tasks
that finish (a tracked lease no longer applies). The meta collection's stream reports changes
of the leader lease (followers take over a released lease at once) and cluster-wide throttles.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
from collections.abc import Callable, Iterable
from typing import Any

from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import PyMongoError

from runtime.cancellation import raise_if_cancelled
from runtime.change_feed import ChangeFeed, HistoryLost
from runtime.meta import LEADER_ID, META_COLLECTION, REACTOR_PREFIX
from runtime.structured_logging import log_event
from runtime.task_store import COMPLETED, FAILED, PENDING, RUNNING, SKIPPED

log = logging.getLogger("runtime.wakeup")
FINISHED = [COMPLETED, FAILED, SKIPPED]
COALESCE_S = 0.005
"""After a batch of several events, wait this long before the next getMore."""


class WakeupListener:
    """Feeds due-work hints, lease expiries, throttles and leader changes from change streams."""

    def __init__(self, db: AsyncDatabase[Any], tasks_collections: list[str], watch_meta: bool,
                 on_due: Callable[[str, datetime.datetime | None, Any], None],
                 on_throttle: Callable[[str, datetime.datetime], None],
                 on_leader_change: Callable[[Any, Any], None], *, instance_id: str,
                 on_lease: Callable[[str, Any, datetime.datetime], None],
                 on_finished: Callable[[str, Any], None],
                 on_pause: Callable[[str, bool], None] | None = None,
                 reactors: Iterable[str] = ()) -> None:
        self.db = db
        self.instance_id = instance_id
        # Filtered on the server (this stream runs on every instance): tasks that are pending,
        # tasks finished by another instance, tasks running under another instance's lease
        # (not this instance's own claims, renewals and finishes), and meta documents other
        # than the planners' resume positions.
        tasks = {"$in": list(tasks_collections)}
        wanted: list[dict[str, Any]] = [
            {"ns.coll": tasks, "fullDocument.status": PENDING},
            # Finishes of this instance's own executions: it knows them already.
            {"ns.coll": tasks, "fullDocument.status": {"$in": FINISHED},
             "fullDocument.lastOwner": {"$ne": instance_id}},
            {"ns.coll": tasks, "fullDocument.status": {"$in": RUNNING},
             "fullDocument.lease.owner": {"$ne": instance_id}},
        ]
        if watch_meta:
            # The lease, throttles and reactor states (pauses); not the planners' positions,
            # scan checkpoints or instance heartbeats, which change all the time.
            names = sorted(reactors)
            # Named ids rather than a prefix regex: an exact filter the server evaluates
            # cheaply for every entry of its change log.
            ids: Any = ([f"throttle:{n}" for n in names] + [f"{REACTOR_PREFIX}{n}" for n in names]
                        if names else None)
            wanted += [{"ns.coll": META_COLLECTION, "documentKey._id": LEADER_ID},
                       {"ns.coll": META_COLLECTION,
                        "documentKey._id": {"$in": ids} if ids is not None else
                        {"$regex": f"^(throttle|{REACTOR_PREFIX[:-1]}):"}}]
        pipeline: list[dict[str, Any]] = [
            {"$match": {"operationType": {"$in": ["insert", "update", "replace"]},
                        "$or": wanted}},
            # Only what _handle reads (while running, nextRunAt is the lease expiry).
            {"$project": {"ns.coll": 1, "documentKey": 1, "fullDocument.reactor": 1,
                          "fullDocument.status": 1, "fullDocument.nextRunAt": 1,
                          "fullDocument.lease.owner": 1, "fullDocument.until": 1,
                          "fullDocument.owner": 1, "fullDocument.expiresAt": 1,
                          "fullDocument.paused": 1}},
        ]
        self.feed = ChangeFeed(db, pipeline, full_document="updateLookup", max_await_ms=1000)
        self.on_due = on_due
        self.on_throttle = on_throttle
        self.on_leader_change = on_leader_change
        self.on_lease = on_lease
        self.on_finished = on_finished
        self.on_pause = on_pause
        self._opened = False

    async def open(self) -> None:
        """Open the stream at now, before the instance reports itself started, so that it hears
        every change from then on (a leader's release right after the start included). A
        failure is logged and left to :meth:`run`, which opens again."""
        try:
            await self.feed.open(None)
            self._opened = True
        except PyMongoError as exc:
            raise_if_cancelled()
            log_event(log, logging.WARNING, "wake-up stream not opened yet",
                      event="wakeup.error", database=self.db.name, error=str(exc))

    def _handle(self, event: dict[str, Any]) -> None:
        doc = event.get("fullDocument") or {}
        key = (event.get("documentKey") or {}).get("_id")
        if (event.get("ns") or {}).get("coll") == META_COLLECTION:
            if key == LEADER_ID:
                self.on_leader_change(doc.get("owner"), doc.get("expiresAt"))
            elif isinstance(key, str) and key.startswith("throttle:") and isinstance(
                    doc.get("until"), datetime.datetime):
                self.on_throttle(key.split(":", 1)[1], doc["until"])
            elif isinstance(key, str) and key.startswith(REACTOR_PREFIX) and self.on_pause:
                self.on_pause(key[len(REACTOR_PREFIX):], bool(doc.get("paused")))
            return
        reactor, status, due = doc.get("reactor"), doc.get("status"), doc.get("nextRunAt")
        if not isinstance(reactor, str) or key is None:
            return
        if status == PENDING:
            self.on_due(reactor, due if isinstance(due, datetime.datetime) else None, key)
        elif status in RUNNING:
            owner = (doc.get("lease") or {}).get("owner")
            if owner != self.instance_id and isinstance(due, datetime.datetime):
                self.on_lease(reactor, key, due)
            else:
                self.on_finished(reactor, key)  # ours: nothing to watch for here
        elif status in FINISHED:
            self.on_finished(reactor, key)

    async def run(self) -> None:
        """Listen until cancelled (reopening on errors; missed hints are covered by polling)."""
        delay = 0.2
        while True:
            try:
                if self._opened:
                    self._opened = False  # opened by open(): read on from there
                else:
                    await self.feed.open(self.feed.resume_token)
                delay = 0.2
                while True:
                    batch = await self.feed.next_batch()
                    for event in batch.events:
                        self._handle(event)
                    if len(batch.events) > 1:
                        # Busy: let events gather a moment, so that one getMore carries many
                        # (a lone event, the low-load case, is passed on at once).
                        await asyncio.sleep(COALESCE_S)
            except HistoryLost:
                self.feed.resume_token = None
            except PyMongoError as exc:
                raise_if_cancelled()
                log_event(log, logging.WARNING, "wake-up stream interrupted",
                          event="wakeup.error", database=self.db.name, error=str(exc))
                await asyncio.sleep(delay)
                delay = min(5.0, delay * 2)
