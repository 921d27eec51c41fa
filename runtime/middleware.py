"""Middleware: the one extension point of the runtime.

Cross-cutting concerns (metrics, logs, tracing, your own code) subclass :class:`Middleware` and
override the hooks they need; every hook is a no-op by default. The runtime calls them through
a :class:`MiddlewareStack` in the order given (``around_*`` hooks nest: the first is outermost).
Hooks must be quick and must not raise: an exception in a hook is logged and ignored, never the
task's failure (``around_execution`` is the exception: it wraps the handler and must let the
handler's exceptions through).

``runtime serve --middleware MODULE:ATTR`` adds yours (an instance, a class, or a function
returning one or a list); the older ``--hooks`` (``runtime.hooks.Hooks``) keep working through
:class:`HooksMiddleware`.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from runtime.hooks import Hooks
from runtime.outcome import Outcome
from runtime.reactor import ReactorSpec

log = logging.getLogger("runtime.middleware")
CallNext = Callable[[], Awaitable[None]]


class Middleware:
    """No-op hooks around everything the runtime does; subclass and override."""

    def accepts(self, reactor: ReactorSpec) -> bool:
        """Whether this instance executes ``reactor`` (it still plans it when leader)."""
        return True

    async def around_execution(self, reactor: ReactorSpec, ctx: Any, call_next: CallNext) -> None:
        """Wrap a handler call; await ``call_next()`` exactly once and let exceptions through."""
        await call_next()

    def before_execution(self, reactor: ReactorSpec, task: dict[str, Any]) -> None:
        """A claimed task is about to run (``task`` is the claimed document, without its
        ``history`` and ``lastTraceback``)."""

    def after_execution(self, reactor: ReactorSpec, task: dict[str, Any],
                        outcome: Outcome) -> None:
        """An execution ended and its outcome was applied (or found its lease lost)."""

    def on_claim(self, reactor: str, claimed: bool, seconds: float) -> None:
        """A claim attempt took ``seconds``; ``claimed`` False is a miss (nothing due).

        Claims come in rounds: a round that took N tasks calls this N times (with the
        round's duration), a round that took none once."""

    def on_start_delay(self, reactor: str, seconds: float) -> None:
        """A claimed task started ``seconds`` after it became due (its ``nextRunAt``)."""

    def on_lease_renewed(self, reactor: str) -> None:
        """A running task's lease was extended."""

    def on_lease_lost(self, reactor: str) -> None:
        """A running task's lease was found taken by another execution."""

    def on_claim_limited(self, reactor: str, limit: str) -> None:
        """A claim round left due work waiting because of ``limit`` (a
        :class:`runtime.claims.FlowLimit`: ``concurrency`` or ``rate``)."""

    async def around_planning(self, database: str, events: int, call_next: CallNext) -> None:
        """Wrap the planning of one change-stream batch (leader only)."""
        await call_next()

    def on_planned(self, reactor: str, tasks: int) -> None:
        """``tasks`` task upserts of ``reactor`` were written (leader only)."""

    def on_poison(self, reactor: str, source_id: Any, error: str) -> None:
        """A source document could not be planned for ``reactor`` (leader only)."""

    def on_leadership(self, leader: bool, token: int) -> None:
        """This instance became (True) or stopped being (False) the leader."""


class HooksMiddleware(Middleware):
    """The ``--hooks`` object (``runtime.hooks.Hooks``) as middleware."""

    def __init__(self, hooks: Hooks) -> None:
        self.hooks = hooks

    def accepts(self, reactor: ReactorSpec) -> bool:
        """The hooks' task filter."""
        return self.hooks.task_filter(reactor)

    async def around_execution(self, reactor: ReactorSpec, ctx: Any, call_next: CallNext) -> None:
        """The hooks' execution wrapper."""
        await self.hooks.execution_wrapper(reactor, ctx, call_next)


class MiddlewareStack(Middleware):
    """Several middleware called as one, in order; a failing hook is logged, not raised."""

    def __init__(self, items: Sequence[Middleware]) -> None:
        self.items = list(items)
        self._overriding: dict[str, tuple[list[Middleware], tuple[Middleware, ...]]] = {}

    def _implementing(self, hook: str) -> list[Middleware]:
        """The items whose ``hook`` is not :class:`Middleware`'s no-op (calling those changes
        nothing), recomputed whenever ``items`` changed."""
        current = tuple(self.items)
        cached = self._overriding.get(hook)
        if cached is not None and cached[1] == current:
            return cached[0]
        default = getattr(Middleware, hook)
        chosen = [item for item in current
                  if getattr(getattr(item, hook, None), "__func__", None) is not default]
        self._overriding[hook] = (chosen, current)
        return chosen

    def _each(self, hook: str, *args: Any) -> None:
        for item in self._implementing(hook):
            try:
                getattr(item, hook)(*args)
            except Exception:  # a broken hook must not break the runtime
                log.exception("middleware %s.%s failed", type(item).__name__, hook)

    def accepts(self, reactor: ReactorSpec) -> bool:
        """True when every middleware accepts ``reactor``."""
        return all(item.accepts(reactor) for item in self.items)

    async def around_execution(self, reactor: ReactorSpec, ctx: Any, call_next: CallNext) -> None:
        """Nest every middleware's wrapper around the handler (the first is outermost)."""
        wrappers: list[Wrapper] = [functools.partial(_execution, item, reactor, ctx)
                                   for item in self._implementing("around_execution")]
        await _nest(wrappers, call_next)

    async def around_planning(self, database: str, events: int, call_next: CallNext) -> None:
        """Nest every middleware's planning wrapper."""
        wrappers: list[Wrapper] = [functools.partial(_planning, item, database, events)
                                   for item in self.items]
        await _nest(wrappers, call_next)

    def before_execution(self, reactor: ReactorSpec, task: dict[str, Any]) -> None:
        """Fan out."""
        self._each("before_execution", reactor, task)

    def after_execution(self, reactor: ReactorSpec, task: dict[str, Any],
                        outcome: Outcome) -> None:
        """Fan out."""
        self._each("after_execution", reactor, task, outcome)

    def on_claim(self, reactor: str, claimed: bool, seconds: float) -> None:
        """Fan out."""
        self._each("on_claim", reactor, claimed, seconds)

    def on_start_delay(self, reactor: str, seconds: float) -> None:
        """Fan out."""
        self._each("on_start_delay", reactor, seconds)

    def on_lease_renewed(self, reactor: str) -> None:
        """Fan out."""
        self._each("on_lease_renewed", reactor)

    def on_lease_lost(self, reactor: str) -> None:
        """Fan out."""
        self._each("on_lease_lost", reactor)

    def on_claim_limited(self, reactor: str, limit: str) -> None:
        """Fan out."""
        self._each("on_claim_limited", reactor, limit)

    def on_planned(self, reactor: str, tasks: int) -> None:
        """Fan out."""
        self._each("on_planned", reactor, tasks)

    def on_poison(self, reactor: str, source_id: Any, error: str) -> None:
        """Fan out."""
        self._each("on_poison", reactor, source_id, error)

    def on_leadership(self, leader: bool, token: int) -> None:
        """Fan out."""
        self._each("on_leadership", leader, token)


Wrapper = Callable[[CallNext], Awaitable[None]]


async def _execution(item: Middleware, reactor: ReactorSpec, ctx: Any,
                     call_next: CallNext) -> None:
    await item.around_execution(reactor, ctx, call_next)


async def _planning(item: Middleware, database: str, events: int, call_next: CallNext) -> None:
    await item.around_planning(database, events, call_next)


async def _nest(wrappers: list[Wrapper], innermost: CallNext) -> None:
    """Call ``wrappers[0](wrappers[1](... innermost))``."""
    call: CallNext = innermost
    for wrapper in reversed(wrappers):
        call = functools.partial(wrapper, call)
    await call()
