"""Helpers shared by the tests (import as ``from support import ...``).

Tests must not use fixed sleeps to wait for something to happen: poll a condition
with a deadline instead, using :func:`wait_until` or :func:`wait_until_async`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

from runtime.embedded.process import EmbeddedServer
from runtime.reactor import Policies, ReactorSpec

__all__ = ["ServerFactory", "wait_until", "wait_until_async"]

T = TypeVar("T")


def wait_until(
    predicate: Callable[[], T | None],
    timeout: float = 10,
    interval: float = 0.01,
    message: str | None = None,
) -> T:
    """Call ``predicate`` until it returns a truthy value, and return that value.

    The predicate is polled every ``interval`` seconds; if it is still falsy after
    ``timeout`` seconds an :class:`AssertionError` is raised (with ``message`` and the
    last value seen). Exceptions raised by the predicate propagate immediately.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            what = message or getattr(predicate, "__name__", repr(predicate))
            raise AssertionError(
                f"condition not met within {timeout:g}s: {what} (last value: {value!r})"
            )
        time.sleep(interval)


async def wait_until_async(
    predicate: Callable[[], Awaitable[T | None]],
    timeout: float = 10,
    interval: float = 0.01,
    message: str | None = None,
) -> T:
    """Async form of :func:`wait_until`: ``predicate`` is a coroutine function."""
    deadline = time.monotonic() + timeout
    while True:
        value = await predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            what = message or getattr(predicate, "__name__", repr(predicate))
            raise AssertionError(
                f"condition not met within {timeout:g}s: {what} (last value: {value!r})"
            )
        await asyncio.sleep(interval)


class ServerFactory(Protocol):
    """Type of the ``fresh_server`` fixture (see ``conftest.py``)."""

    def __call__(self, *, in_memory: bool = False, **options: Any) -> EmbeddedServer:
        """Start a new server; ``options`` are passed to :class:`EmbeddedServer`."""
        ...


def reactor_spec(name: str = "r", collection: str = "things", **policies: Any) -> ReactorSpec:
    """A reactor as the scheduler, claims and metrics see it: a name, a collection and
    ``policies`` (keyword arguments of :class:`runtime.reactor.Policies`); no model or trigger."""
    from pydantic import BaseModel

    return ReactorSpec(name=name, collection=collection, database=None, model=BaseModel,
                       watched_model=BaseModel, filter={}, watch=None, pipeline=[],
                       policies=Policies(**policies), handler="h", trigger_fingerprint="",
                       source="")
