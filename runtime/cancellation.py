"""Cancellation that survives PyMongo.

A task cancelled while the driver is connecting can see the cancellation come out as a network
error (``AutoReconnect``, a ``PyMongoError``) instead of ``CancelledError``. A loop that
retries on ``PyMongoError`` would then carry on as if nothing happened, and a stop would wait
for it in vain. Such loops call :func:`raise_if_cancelled` before retrying.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def raise_if_cancelled() -> None:
    """Raise ``CancelledError`` if the current task has been asked to stop."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


async def within(awaitable: Awaitable[T], timeout: float) -> T:
    """``awaitable``'s result, or ``TimeoutError`` after ``timeout`` seconds.

    Unlike :func:`asyncio.wait_for`, it does not wait for the abandoned operation to honour
    its cancellation, which a driver operation stuck in server selection does only at the
    server selection timeout. The operation is cancelled and left to finish on its own.
    """
    task = asyncio.ensure_future(awaitable)
    try:
        done, _ = await asyncio.wait([task], timeout=timeout)
    except asyncio.CancelledError:
        task.cancel()
        task.add_done_callback(consume_outcome)
        raise
    if not done:
        task.cancel()
        task.add_done_callback(consume_outcome)
        raise TimeoutError
    return task.result()


def consume_outcome(task: asyncio.Future[Any]) -> None:
    """Retrieve an abandoned operation's outcome, so that it is not reported as unhandled."""
    if not task.cancelled():
        task.exception()


async def run_together(coroutines: list[Coroutine[Any, Any, None]]) -> None:
    """Run ``coroutines`` side by side until one fails (or all end); the first failure
    cancels the others and is raised.

    Not ``asyncio.TaskGroup``: on Python 3.11 a child failing while the group waits leaves a
    cancellation request on the parent task, which the supervisor would take for a stop.
    """
    tasks = [asyncio.create_task(c) for c in coroutines]
    try:
        pending: set[asyncio.Task[None]] = set(tasks)
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                error = None if task.cancelled() else task.exception()
                if error is not None:
                    raise error
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
