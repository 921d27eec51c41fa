"""Fail points (``configureFailPoint``) for tests, and a command-recording listener.

:func:`fail_point` turns a fail point on for the duration of a ``with`` block and always turns it
off again. A server without test commands answers ``configureFailPoint`` with CommandNotFound
(59); the test is then skipped (a real MongoDB needs ``enableTestCommands``).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from pymongo import MongoClient, monitoring
from pymongo.errors import OperationFailure

COMMAND_NOT_FOUND = 59


@contextmanager
def fail_point(client: MongoClient[Any], name: str, mode: Any,
               data: dict[str, Any] | None = None) -> Iterator[dict[str, Any]]:
    """Enable fail point ``name`` with ``mode`` and ``data`` inside the block."""
    command: dict[str, Any] = {"configureFailPoint": name, "mode": mode}
    if data is not None:
        command["data"] = data
    try:
        reply = client.admin.command(command)
    except OperationFailure as exc:
        if exc.code == COMMAND_NOT_FOUND:
            pytest.skip("configureFailPoint is not enabled on this server")
        raise
    try:
        yield reply
    finally:
        client.admin.command({"configureFailPoint": name, "mode": "off"})


class CommandRecorder(monitoring.CommandListener):
    """Records started commands (name and document) and failed ones, for checking retries."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.commands: list[tuple[str, dict[str, Any]]] = []
        self.failures: list[tuple[str, Any]] = []

    def named(self, name: str) -> list[dict[str, Any]]:
        """Documents of the started commands called ``name``, in order."""
        with self._lock:
            return [cmd for n, cmd in self.commands if n == name]

    def failures_of(self, name: str) -> list[Any]:
        """Failures (exceptions or error documents) of the commands called ``name``."""
        with self._lock:
            return [f for n, f in self.failures if n == name]

    def clear(self) -> None:
        with self._lock:
            self.commands.clear()
            self.failures.clear()

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        with self._lock:
            self.commands.append((event.command_name, dict(event.command)))

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        with self._lock:
            self.failures.append((event.command_name, event.failure))
