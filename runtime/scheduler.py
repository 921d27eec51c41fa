"""Which reactor a free worker should claim from next, on this instance.

The scheduler keeps, per reactor, the earliest time work is known to be due. It learns it from
the local planner, from the change stream on the tasks collections (so every instance hears of
new work within milliseconds, not only the leader), and from claims: a successful claim keeps
the reactor "due now" so other workers try too; a miss parks it until the next hint or the
idle poll. It also applies cluster-wide throttles and per-reactor concurrency limits.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
from collections import Counter

from runtime.reactor import ReactorSpec
from runtime.structured_logging import log_event

GRACE = datetime.timedelta(milliseconds=25)
log = logging.getLogger("runtime.scheduler")


class Scheduler:
    """Due hints, throttles and concurrency for the reactors this instance executes."""

    def __init__(self, reactors: list[ReactorSpec], idle_poll_ms: int) -> None:
        self.reactors = {r.name: r for r in reactors}
        self.idle_poll = datetime.timedelta(milliseconds=idle_poll_ms)
        self.due_at: dict[str, datetime.datetime] = {}
        self.throttled_until: dict[str, datetime.datetime] = {}
        self.running: Counter[str] = Counter()
        self.stopping = False
        self._wakeup_waiters: list[asyncio.Future[None]] = []
        self._order = list(self.reactors)
        self._pending_wakes = 0
        # Earliest due time among hints received since a claim of the reactor last started:
        # a claim already in flight may have run its query before that work existed.
        self._fresh_hints: dict[str, datetime.datetime] = {}
        self._graced: set[str] = set()

    def start(self, now: datetime.datetime) -> None:
        """Everything may be due at start-up: try each reactor once."""
        for name in self.reactors:
            self.due_at[name] = now

    def note_due(self, reactor: str, at: datetime.datetime) -> None:
        """Work of ``reactor`` becomes due at ``at`` (earlier hints win)."""
        if reactor not in self.reactors:
            return
        current = self.due_at.get(reactor)
        if current is None or at < current:
            self.due_at[reactor] = at
        fresh = self._fresh_hints.get(reactor)
        if fresh is None or at < fresh:
            self._fresh_hints[reactor] = at
        self._graced.discard(reactor)
        self._wake(1)

    def claimed(self, reactor: str, now: datetime.datetime) -> None:
        """A claim succeeded: more may be waiting, let the next free worker try too."""
        self._graced.discard(reactor)
        self.due_at[reactor] = now
        self._wake(1)

    def missed(self, reactor: str, now: datetime.datetime) -> None:
        """A claim found nothing: wait for a hint, or poll again after the idle interval.

        A hint that arrived while the claim was in flight is not lost: the reactor stays due
        at that hint's time instead of being parked for the idle interval.
        """
        current = self.due_at.get(reactor)
        if current is None or current > now:
            return
        fresh = self._fresh_hints.pop(reactor, None)
        if fresh is not None and fresh < now + self.idle_poll:
            self.due_at[reactor] = max(fresh, now)
            return
        if current >= now - GRACE and reactor not in self._graced:
            # The claim is judged by the server's clock, ours is an estimate: a task due
            # "just now" may be a millisecond early for the server. Try once more shortly.
            self._graced.add(reactor)
            self.due_at[reactor] = now + GRACE
            return
        self.due_at[reactor] = now + self.idle_poll
        log_event(log, logging.DEBUG, "no due task; waiting for a hint or the idle poll",
                  event="scheduler.idle", reactor=reactor,
                  next_poll_s=self.idle_poll.total_seconds())

    def throttle(self, reactor: str, until: datetime.datetime) -> None:
        """Pause a reactor (all instances learn it through the meta collection)."""
        self.throttled_until[reactor] = until
        self.note_due(reactor, until)

    def _available(self, name: str, now: datetime.datetime) -> bool:
        until = self.throttled_until.get(name)
        if until is not None and until > now:
            return False
        limit = self.reactors[name].policies.concurrency
        return limit is None or self.running[name] < limit

    def next_reactor(self, now: datetime.datetime) -> str | None:
        """The reactor with the most overdue known work that may run now, rotating ties."""
        if self.stopping:
            return None
        best: str | None = None
        for name in self._order:
            due = self.due_at.get(name)
            if due is None or due > now or not self._available(name, now):
                continue
            if best is None or due < self.due_at[best]:
                best = name
        if best is not None:
            self._order.remove(best)
            self._order.append(best)
            self._fresh_hints.pop(best, None)  # the claim about to start covers them
        return best

    def seconds_until_next(self, now: datetime.datetime) -> float:
        """How long an idle worker may sleep before something is due (at most the idle poll)."""
        horizon = now + self.idle_poll
        for name, due in self.due_at.items():
            if self._available(name, now) or name in self.throttled_until:
                moment = max(due, self.throttled_until.get(name, due))
                horizon = min(horizon, moment)
        return max(0.0, (horizon - now).total_seconds())

    def _wake(self, count: int) -> None:
        # One hint wakes one sleeping worker; a successful claim wakes the next one, so a
        # burst of work fans out without every idle worker racing for the same task. A hint
        # that finds nobody asleep is kept (once) for the next worker about to sleep.
        while count and self._wakeup_waiters:
            future = self._wakeup_waiters.pop(0)
            if not future.done():
                future.set_result(None)
                count -= 1
        if count:
            self._pending_wakes = 1

    async def wait(self, timeout: float) -> None:
        """Sleep until a hint arrives for this worker or ``timeout`` seconds pass."""
        if self._pending_wakes:
            self._pending_wakes -= 1
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._wakeup_waiters.append(future)
        try:
            await asyncio.wait_for(future, timeout)
        except TimeoutError:
            pass
        finally:
            if future in self._wakeup_waiters:
                self._wakeup_waiters.remove(future)

    def wake_all(self) -> None:
        """Wake every sleeping worker (shutdown, throttle changes)."""
        for future in self._wakeup_waiters:
            if not future.done():
                future.set_result(None)
        self._wakeup_waiters.clear()
