"""The cluster clock: strictly increasing BSON Timestamps for writes and replies."""

from __future__ import annotations

import time

from bson.timestamp import Timestamp


class ClusterClock:
    """Hands out ``Timestamp(seconds, increment)`` values that never repeat or go backwards."""

    def __init__(self) -> None:
        self._seconds = 0
        self._increment = 0

    def advance_to(self, ts: Timestamp) -> None:
        """Make sure later ticks come after ``ts`` (used when replaying the log at start-up)."""
        if (ts.time, ts.inc) > (self._seconds, self._increment):
            self._seconds, self._increment = ts.time, ts.inc

    def tick(self) -> Timestamp:
        """A new timestamp, later than every one handed out before."""
        now = int(time.time())
        if now > self._seconds:
            self._seconds, self._increment = now, 1
        else:
            self._increment += 1
        return Timestamp(self._seconds, self._increment)

    def follow(self) -> Timestamp:
        """The timestamp right after the latest one (same second): for the later changes of
        one commit, after one :meth:`tick` (cheaper than ticking again)."""
        self._increment += 1
        return Timestamp(self._seconds, self._increment)

    def now(self) -> Timestamp:
        """The latest timestamp handed out (the cluster's operation time)."""
        if self._seconds == 0:
            return self.tick()
        return Timestamp(self._seconds, self._increment)

    def latest(self) -> Timestamp:
        """The latest timestamp handed out, without handing out one (``Timestamp(0, 0)``
        before the first)."""
        return Timestamp(self._seconds, self._increment)
