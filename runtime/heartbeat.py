"""Instance heartbeats: every instance records in ``reactgen_meta`` (``instance:<id>``) that it is
alive, what it runs and whether it leads, so that operators (``runtime instances``, the
dashboard, cluster metrics) can list live instances without asking them.

Written every :data:`HEARTBEAT_INTERVAL_S` with the server's clock; an instance whose
``heartbeatAt`` is older than :data:`STALE_AFTER_S` is considered gone. A graceful stop removes
the document.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Callable
from importlib import metadata
from typing import Any

from pymongo.errors import PyMongoError

from runtime.cancellation import raise_if_cancelled
from runtime.meta import MetaStore
from runtime.structured_logging import log_event

log = logging.getLogger("runtime.heartbeat")
HEARTBEAT_INTERVAL_S = 2.0
STALE_AFTER_S = 10.0


def runtime_version() -> str:
    """The installed reactgen version (``0+unknown`` when not installed as a package)."""
    try:
        return metadata.version("reactgen")
    except metadata.PackageNotFoundError:
        return "0+unknown"


class Heartbeat:
    """Writes this instance's heartbeat until cancelled."""

    def __init__(self, meta: MetaStore, instance: str, reactors: list[str], concurrency: int,
                 status: Callable[[], dict[str, Any]]) -> None:
        self.meta = meta
        self.instance = instance
        self.static = {"host": socket.gethostname(), "pid": os.getpid(),
                       "version": runtime_version(), "reactors": reactors,
                       "concurrency": concurrency}
        self.status = status

    async def beat(self) -> None:
        """Write one heartbeat."""
        await self.meta.heartbeat(self.instance, {**self.static, **self.status()})

    async def run(self) -> None:
        """Beat every :data:`HEARTBEAT_INTERVAL_S` (failures are retried at the next beat)."""
        while True:
            try:
                await self.beat()
            except PyMongoError as exc:
                raise_if_cancelled()
                log_event(log, logging.DEBUG, "heartbeat failed", event="heartbeat.error",
                          instance=self.instance, error=str(exc))
            await asyncio.sleep(HEARTBEAT_INTERVAL_S)
