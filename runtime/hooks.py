"""User hooks: which reactors an instance runs, and a wrapper around every execution."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from runtime.reactor import ReactorSpec

TaskFilter = Callable[[ReactorSpec], bool]
"""Return False for reactors this instance must not execute (it still plans them if leader)."""

ExecutionWrapper = Callable[[ReactorSpec, Any, Callable[[], Awaitable[None]]], Awaitable[None]]
"""``await wrapper(reactor, ctx, call_next)``: run code around a handler (correlation ids,
tracing spans); it must await ``call_next()`` exactly once and let exceptions propagate."""


async def _no_wrapper(reactor: ReactorSpec, ctx: Any,
                      call_next: Callable[[], Awaitable[None]]) -> None:
    await call_next()


@dataclass
class Hooks:
    """The hooks of one runtime instance."""

    task_filter: TaskFilter = lambda reactor: True
    execution_wrapper: ExecutionWrapper = _no_wrapper
