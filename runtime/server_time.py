"""The database server's clock, estimated on every instance.

Lease expiry and due times are judged against one clock, the server's, so clock skew between
instances cannot make two of them believe a lease has expired at different moments. Writes use
``$$NOW`` directly; queries that need a time value use :meth:`ServerClock.now`, the local clock
corrected by the offset measured from ``hello.localTime``. The one write that cannot use
``$$NOW``, the planner's insert of a new task, uses :meth:`ServerClock.reached`.

One ``hello`` can be off by up to half its round trip (the reply may have waited in a queue
on either side), so :meth:`ServerClock.sync` takes several samples and keeps the one with the
shortest round trip, as NTP does.
"""

from __future__ import annotations

import datetime
import time
from typing import Any

from pymongo.asynchronous.database import AsyncDatabase

EPOCH = datetime.datetime(1970, 1, 1)
SAMPLES = 5


def utcnow() -> datetime.datetime:
    """Naive UTC now (PyMongo's convention for BSON dates)."""
    return datetime.datetime.now(datetime.UTC).replace(tzinfo=None)


class ServerClock:
    """Offset between this process's clock and the server's."""

    def __init__(self) -> None:
        self.offset = datetime.timedelta(0)
        self.uncertainty = datetime.timedelta(0)
        """Half the round trip of the sample the offset comes from: the most it can be off."""

    async def sync(self, db: AsyncDatabase[Any], samples: int = SAMPLES) -> None:
        """Measure the offset with a few ``hello`` commands; the fastest one counts."""
        best: tuple[float, datetime.timedelta] | None = None
        for _ in range(max(1, samples)):
            local_sent = utcnow()
            sent = time.perf_counter()
            reply = await db.client.admin.command("hello")
            round_trip = time.perf_counter() - sent
            server_time = reply.get("localTime")
            if not isinstance(server_time, datetime.datetime):
                return  # a server without localTime: trust the local clock
            if server_time.tzinfo is not None:
                server_time = server_time.astimezone(datetime.UTC).replace(tzinfo=None)
            # The server read its clock at some point during the round trip; assume the middle.
            midpoint = local_sent + datetime.timedelta(seconds=round_trip / 2)
            if best is None or round_trip < best[0]:
                best = (round_trip, server_time - midpoint)
        if best is not None:
            self.offset = best[1]
            self.uncertainty = datetime.timedelta(seconds=best[0] / 2)

    def now(self) -> datetime.datetime:
        """The server's current time, as estimated here."""
        return utcnow() + self.offset

    def reached(self) -> datetime.datetime:
        """A time the server's clock has certainly reached: :meth:`now` less the estimate's
        uncertainty (written as "due now" where ``$$NOW`` cannot be used, so that the server
        never finds it in its future)."""
        return utcnow() + self.offset - self.uncertainty
