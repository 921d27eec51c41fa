"""Leader election: a lease document with a fencing token that increases with every new owner.

The acquisition is one ``findOneAndUpdate`` whose update pipeline decides on the server, with
the server's ``$$NOW``: the lease is taken if it is free, expired or already ours, and the token
is incremented when the owner changes. Renewal runs on its own task, so no planning or
reconciliation work can delay it.

Followers do not poll blindly: each failed attempt returns the current lease, and the next
attempt is timed for its expiry (server time, estimated with :class:`ServerClock`), so a crashed
leader is replaced right after its lease runs out. The wake-up stream on the meta collection
reports a graceful release (``expiresAt`` set to the epoch), which followers take over at once.

A leader steps down on its own when it cannot renew in time: every attempt is bounded, and once
the lease it last obtained has run out (measured from when that request was sent) it stops
planning, even if the database never answered.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError, PyMongoError

from runtime.cancellation import raise_if_cancelled, within
from runtime.meta import MetaStore
from runtime.server_time import utcnow
from runtime.structured_logging import log_event

log = logging.getLogger("runtime.leader")
RELEASE_TIMEOUT_S = 5.0
EXPIRY_MARGIN_S = 0.005
"""Followers try this long after the lease's expiry (covers clock-estimate rounding)."""
MIN_WAIT_S = 0.01


def _describe(error: Exception) -> str:
    if isinstance(error, TimeoutError):
        return str(error) or "the database did not answer in time"
    return str(error) or type(error).__name__


class LeaderElector:
    """Keeps trying to hold the lease; calls back when leadership is gained or lost."""

    def __init__(self, db: AsyncDatabase[Any], instance_id: str, ttl_ms: int, renew_ms: int,
                 on_gain: Callable[[int], Awaitable[None]],
                 on_loss: Callable[[], Awaitable[None]],
                 now: Callable[[], datetime.datetime] = utcnow) -> None:
        self.meta = MetaStore(db)
        self.instance_id = instance_id
        self.ttl_ms = ttl_ms
        self.renew_ms = renew_ms
        self.on_gain = on_gain
        self.on_loss = on_loss
        self.now = now
        self.is_leader = False
        self.token = 0
        self.lease_expires: datetime.datetime | None = None
        """Expiry of the lease as last seen (ours or another owner's), server time."""
        self._valid_until = 0.0  # event-loop time until which our last renewal is certainly valid
        self._wake = asyncio.Event()
        self._stopping = False
        self._task: asyncio.Task[None] | None = None

    async def try_acquire(self) -> bool:
        """One acquisition or renewal attempt; returns whether we now hold the lease."""
        me = self.instance_id
        sent = asyncio.get_running_loop().time()
        try:
            doc = await within(self.meta.acquire_lease(me, self.ttl_ms),
                               self._attempt_timeout(sent))
        except DuplicateKeyError:
            return False  # two first-time upserts raced; the next attempt reads the winner
        if doc is None:
            return False
        expires = doc.get("expiresAt")
        self.lease_expires = expires if isinstance(expires, datetime.datetime) else None
        held: bool = doc.get("owner") == me
        if held:
            self.token = int(doc["token"])
            self._valid_until = sent + self.ttl_ms / 1000
        return held

    def _attempt_timeout(self, now: float) -> float:
        """A renewal is useless once the lease it renews has run out; an acquisition is
        bounded by the TTL."""
        if self.is_leader:
            return max(MIN_WAIT_S, self._valid_until - now)
        return self.ttl_ms / 1000

    def start(self) -> asyncio.Task[None]:
        """Run :meth:`run` on its own task (stopped by :meth:`stop`)."""
        self._task = asyncio.create_task(self.run(), name=f"leader-{self.instance_id}")
        return self._task

    async def run(self) -> None:
        """Acquire/renew until :meth:`stop`."""
        loop = asyncio.get_running_loop()
        while not self._stopping:
            # Cleared before the attempt: a release reported while it is in flight must still
            # trigger another attempt.
            self._wake.clear()
            error: Exception | None = None
            try:
                held = await self.try_acquire()
            except (PyMongoError, TimeoutError) as exc:
                raise_if_cancelled()
                error = exc
                held = False
            if self._stopping:
                break
            if error is not None and self.is_leader and loop.time() < self._valid_until:
                # A failed renewal does not end leadership while the lease certainly holds.
                log_event(log, logging.WARNING, "leader lease renewal failed; retrying",
                          event="leader.error", instance=self.instance_id,
                          error=_describe(error))
                await self._sleep(min(self.renew_ms / 2000,
                                      max(MIN_WAIT_S, self._valid_until - loop.time())))
                continue
            if error is not None:
                log_event(log, logging.WARNING, "leader lease check failed",
                          event="leader.error", instance=self.instance_id,
                          error=_describe(error))
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
            await self._sleep(self._next_wait(held, error is not None))

    def _next_wait(self, held: bool, failed: bool) -> float:
        renew_s = self.renew_ms / 1000
        if held or failed or self.lease_expires is None:
            return renew_s
        until_expiry = (self.lease_expires - self.now()).total_seconds() + EXPIRY_MARGIN_S
        return min(renew_s, max(MIN_WAIT_S, until_expiry))

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), seconds)

    def observe(self, owner: Any, expires_at: Any) -> None:
        """The lease document changed (reported by the wake-up stream).

        Followers try at once when the lease is free (a graceful release sets ``expiresAt`` to
        the epoch); the leader ignores its own renewals, but checks at once when another
        instance holds the lease (it was paused or cut off past its lease).
        """
        if self._stopping or owner == self.instance_id:
            return
        if (self.is_leader or not isinstance(expires_at, datetime.datetime)
                or expires_at <= self.now()):
            self._wake.set()
            return
        self.lease_expires = expires_at

    def nudge(self) -> None:
        """Try again now."""
        self._wake.set()

    async def stop(self) -> None:
        """Stop renewing, stop planning, and hand leadership over at once if we hold it."""
        self._stopping = True
        self._wake.set()
        task, self._task = self._task, None
        if task is not None and task is not asyncio.current_task():
            # Let an attempt in flight finish (bounded), so it cannot renew after the release.
            done, _ = await asyncio.wait([task], timeout=min(RELEASE_TIMEOUT_S,
                                                             self.ttl_ms / 1000))
            if not done:
                task.cancel()
                await asyncio.wait([task], timeout=RELEASE_TIMEOUT_S)
        if self.is_leader:
            self.is_leader = False
            await self.on_loss()
        # Unconditional (fenced by owner): an attempt that raced the stop may have taken the
        # lease without this instance acting as leader.
        released = False
        with contextlib.suppress(PyMongoError, TimeoutError):
            released = await within(self.meta.release_lease(self.instance_id),
                                    RELEASE_TIMEOUT_S)
        if released:
            log_event(log, logging.INFO, "released leadership", event="leader.released",
                      instance=self.instance_id, token=self.token)
