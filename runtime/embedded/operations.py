"""The open connections and the command each one is running, for ``$currentOp``.

The TCP server registers every connection when it is accepted and forgets it when it closes; the
dispatcher marks the command a connection runs from the moment it is received until its reply is
ready (a change-stream getMore that waits for events, or a command held by a fail point, is
running all that time). Nothing here is durable or affects how commands run.
"""

from __future__ import annotations

import datetime
import itertools
import time
from dataclasses import dataclass
from typing import Any


@dataclass
class Operation:
    """One command in progress on one connection."""

    opid: int
    body: dict[str, Any]
    started: float  # time.monotonic()
    started_at: datetime.datetime  # wall clock (UTC, naive, as BSON dates decode)


class Operations:
    """Connections by id, and the operation each one is running (if any)."""

    def __init__(self) -> None:
        self.connections: dict[int, dict[str, Any]] = {}
        self.running: dict[int, Operation] = {}
        self._opids = itertools.count(1)

    @staticmethod
    def _key(connection: dict[str, Any]) -> int:
        value = connection.get("id")
        return value if isinstance(value, int) else id(connection)

    def connected(self, connection: dict[str, Any]) -> None:
        """A client connected (the server calls this once per accepted socket)."""
        self.connections[self._key(connection)] = connection

    def disconnected(self, connection: dict[str, Any]) -> None:
        """A client's connection closed."""
        key = self._key(connection)
        self.connections.pop(key, None)
        self.running.pop(key, None)

    def begin(self, connection: dict[str, Any], body: dict[str, Any]) -> None:
        """The connection starts running the command ``body``."""
        key = self._key(connection)
        self.connections.setdefault(key, connection)
        now = datetime.datetime.now(datetime.UTC).replace(tzinfo=None)
        self.running[key] = Operation(next(self._opids), body, time.monotonic(), now)

    def end(self, connection: dict[str, Any]) -> None:
        """The connection's command has its reply."""
        self.running.pop(self._key(connection), None)

    def snapshot(self) -> list[tuple[int, dict[str, Any], Operation | None]]:
        """``(connection id, connection, its operation or None)`` for every connection."""
        return [(key, conn, self.running.get(key))
                for key, conn in sorted(self.connections.items())]
