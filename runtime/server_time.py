"""The database server's clock, estimated on every instance.

Lease expiry and due times are judged against one clock, the server's, so clock skew between
instances cannot make two of them believe a lease has expired at different moments. Writes use
``$$NOW`` directly; queries that need a time value use :meth:`ServerClock.now`, the local clock
corrected by the offset measured from ``hello.localTime`` (half the round trip subtracted).
"""

from __future__ import annotations

import datetime
import time
from typing import Any

from pymongo.asynchronous.database import AsyncDatabase

EPOCH = datetime.datetime(1970, 1, 1)


def utcnow() -> datetime.datetime:
    """Naive UTC now (PyMongo's convention for BSON dates)."""
    return datetime.datetime.now(datetime.UTC).replace(tzinfo=None)


class ServerClock:
    """Offset between this process's clock and the server's."""

    def __init__(self) -> None:
        self.offset = datetime.timedelta(0)

    async def sync(self, db: AsyncDatabase[Any]) -> None:
        """Measure the offset with one ``hello``."""
        sent = time.perf_counter()
        reply = await db.client.admin.command("hello")
        round_trip = time.perf_counter() - sent
        server_time = reply.get("localTime")
        if isinstance(server_time, datetime.datetime):
            if server_time.tzinfo is not None:
                server_time = server_time.astimezone(datetime.UTC).replace(tzinfo=None)
            estimate = server_time + datetime.timedelta(seconds=round_trip / 2)
            self.offset = estimate - utcnow()

    def now(self) -> datetime.datetime:
        """The server's current time, as estimated here."""
        return utcnow() + self.offset
