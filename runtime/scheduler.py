"""Which reactor a free worker should claim from next, on this instance, and when.

The scheduler keeps, per reactor, every future time work is known to become due (a sorted
list, bounded), and a *poll time*: when to try the reactor regardless of known due times. Due
times come from the local planner, from the change stream on the tasks collections (so every
instance hears of new work, retries, defers, debounced changes and the lease expiries of tasks
running on other instances within milliseconds), and from cluster-wide throttles. A due time
that belongs to one task (its ``nextRunAt``, or the lease expiry of a task running elsewhere)
is keyed by the task: a later event of the task replaces it, and a finished task drops it.

A claim covers every due time that had passed when it started: those are removed, later ones
stay, so after the claim an idle worker sleeps exactly until the next one (the idle poll is
only a safety net). A successful claim keeps the reactor due now so the next free worker tries
too; a miss parks the poll time until the idle interval (after one short GRACE retry, because
claims are judged by the server's clock and ours is an estimate), unless a hint arrived while
the claim was in flight. The scheduler also applies throttles and per-reactor concurrency
limits.
"""

from __future__ import annotations

import asyncio
import datetime
import itertools
import logging
from collections import Counter
from collections.abc import Hashable
from dataclasses import dataclass, field

from sortedcontainers import SortedList

from runtime.reactor import ReactorSpec
from runtime.structured_logging import log_event

GRACE = datetime.timedelta(milliseconds=25)
FAIRNESS_EVERY = 4
"""Every this many picks, the most overdue reactor goes first whatever its priority."""
MAX_DUE_TIMES = 10_000
"""Known future due times kept per reactor; beyond it the latest are dropped (the idle poll
finds their work)."""
log = logging.getLogger("runtime.scheduler")

_SLOT_KEY = ("slot freed",)
Entry = tuple[datetime.datetime, int, Hashable | None]
"""A known due time: ``(at, sequence, key)``; the unique sequence keeps keys out of sorting."""


@dataclass
class _Reactor:
    """What the scheduler knows about one reactor."""

    poll_at: datetime.datetime | None = None
    """When to try the reactor whatever the known due times say (start-up, after a successful
    claim, the GRACE retry, the idle poll); None: only when a due time comes."""
    due: SortedList[Entry] = field(default_factory=SortedList)
    """Known due times (:data:`Entry`), earliest first."""
    fresh: datetime.datetime | None = None
    """Earliest due time among hints received since a claim of the reactor last started: a
    claim already in flight may have run its query before that work existed."""
    graced: bool = False


class Scheduler:
    """Due times, throttles and concurrency for the reactors this instance executes."""

    def __init__(self, reactors: list[ReactorSpec], idle_poll_ms: int,
                 max_due_times: int = MAX_DUE_TIMES) -> None:
        self.reactors = {r.name: r for r in reactors}
        self.idle_poll = datetime.timedelta(milliseconds=idle_poll_ms)
        self.max_due_times = max_due_times
        self.throttled_until: dict[str, datetime.datetime] = {}
        self.blocked_until: dict[str, datetime.datetime] = {}
        self.paused: set[str] = set()
        self.running: Counter[str] = Counter()
        self.stopping = False
        self._state = {name: _Reactor() for name in self.reactors}
        self._keyed: dict[tuple[str, Hashable], Entry] = {}
        self._sequence = itertools.count()
        # Sleeping workers: their wake-up future and the (server-clock) moment they wake
        # anyway; None when unknown.
        self._waiters: list[tuple[asyncio.Future[None], datetime.datetime | None]] = []
        self._order = list(self.reactors)
        self._pending_wakes = 0
        self._picks = 0

    # -- what is known ---------------------------------------------------------------------

    def start(self, now: datetime.datetime) -> None:
        """Everything may be due at start-up: try each reactor once."""
        for state in self._state.values():
            state.poll_at = now

    def note_due(self, reactor: str, at: datetime.datetime, key: Hashable | None = None,
                 fresh: bool = True) -> None:
        """Work of ``reactor`` becomes due at ``at``.

        ``key`` names what the due time belongs to (a task ``_id``, the local planner): a
        later hint with the same key replaces it. ``fresh`` hints are new work: one that
        arrives while a claim is in flight keeps the reactor due after that claim misses.
        """
        state = self._state.get(reactor)
        if state is None:
            return
        if key is not None:
            self._discard(reactor, key)
        entry: Entry = (at, next(self._sequence), key)
        state.due.add(entry)
        if key is not None:
            self._keyed[(reactor, key)] = entry
        if len(state.due) > self.max_due_times:
            # The latest are the least urgent; the idle poll finds their work.
            dropped: Entry = state.due.pop(-1)
            if dropped[2] is not None and self._keyed.get((reactor, dropped[2])) is dropped:
                del self._keyed[(reactor, dropped[2])]
            if dropped is entry:
                return
        if fresh:
            if state.fresh is None or at < state.fresh:
                state.fresh = at
            state.graced = False
        self._wake_for(at)

    def note_lease(self, reactor: str, task_id: Hashable, expires_at: datetime.datetime) -> None:
        """A task of ``reactor`` runs on another instance until ``expires_at`` unless renewed:
        then it is due again (its worker died). A renewal replaces the expiry."""
        self.note_due(reactor, expires_at, key=task_id, fresh=False)

    def forget(self, reactor: str, key: Hashable) -> None:
        """The due time of ``key`` (a task that finished) no longer applies."""
        if reactor in self._state:
            self._discard(reactor, key)

    def _discard(self, reactor: str, key: Hashable) -> None:
        entry = self._keyed.pop((reactor, key), None)
        if entry is not None:
            self._state[reactor].due.discard(entry)

    def throttle(self, reactor: str, until: datetime.datetime) -> None:
        """Pause a reactor (all instances learn it through the meta collection); its end is a
        due time, so a worker wakes then."""
        self.throttled_until[reactor] = until
        self.note_due(reactor, until, fresh=False)

    def pause(self, reactor: str, paused: bool) -> None:
        """Pause or resume a reactor cluster-wide (``runtime pause``; every instance learns it
        from the meta collection): a paused reactor is never claimed."""
        if reactor not in self._state:
            return
        if paused:
            self.paused.add(reactor)
        elif reactor in self.paused:
            self.paused.discard(reactor)
            self._state[reactor].poll_at = None
            self.note_due(reactor, datetime.datetime.min, fresh=False)

    def due_times(self, reactor: str) -> list[datetime.datetime]:
        """The known due times of ``reactor``, earliest first (not the poll time)."""
        state = self._state.get(reactor)
        return [entry[0] for entry in state.due] if state is not None else []

    def _earliest(self, state: _Reactor) -> datetime.datetime | None:
        first = state.due[0][0] if state.due else None
        if state.poll_at is None or (first is not None and first < state.poll_at):
            return first
        return state.poll_at

    @property
    def due_at(self) -> dict[str, datetime.datetime]:
        """When each reactor is next to be tried: its earliest due time or its poll time."""
        result = {}
        for name, state in self._state.items():
            earliest = self._earliest(state)
            if earliest is not None:
                result[name] = earliest
        return result

    # -- claims ----------------------------------------------------------------------------

    def _limited(self, name: str) -> bool:
        limit = self.reactors[name].policies.concurrency
        return limit is not None and self.running[name] >= limit

    def _available(self, name: str, now: datetime.datetime) -> bool:
        if name in self.paused:
            return False
        until = self.throttled_until.get(name)
        if until is not None and until > now:
            return False
        blocked = self.blocked_until.get(name)
        if blocked is not None and blocked > now:
            return False
        return not self._limited(name)

    def idle(self, name: str, now: datetime.datetime) -> bool:
        """Whether ``name`` may run and has no known due work: no due time has passed, no
        claim round is in flight or called for (a claim that got all it asked for keeps the
        reactor due until a round misses). New work of an idle reactor jumps no queue, so the
        local planner may hand it to this instance's workers at once
        (:meth:`runtime.worker.WorkerPool.reserve`)."""
        state = self._state.get(name)
        if state is None or self.stopping or not self._available(name, now):
            return False
        earliest = self._earliest(state)
        return earliest is None or earliest > now

    def next_reactor(self, now: datetime.datetime) -> str | None:
        """The reactor with the most overdue known work that may run now, rotating ties.

        The claim about to start covers every due time of that reactor that has passed: they
        are removed (the earliest becomes the poll time, for the GRACE retry), later ones stay.
        """
        if self.stopping:
            return None
        due_now: list[tuple[str, datetime.datetime]] = []
        for name in self._order:
            due = self._earliest(self._state[name])
            if due is None or due > now or not self._available(name, now):
                continue
            due_now.append((name, due))
        if not due_now:
            return None
        self._picks += 1
        if self._picks % FAIRNESS_EVERY:
            # Higher static priority first (ties: the most overdue); every FAIRNESS_EVERY-th
            # pick goes to the most overdue whatever its priority, so none starves.
            top = max(self.reactors[name].policies.priority.static for name, _ in due_now)
            due_now = [(n, d) for n, d in due_now
                       if self.reactors[n].policies.priority.static == top]
        best, best_due = min(due_now, key=lambda item: item[1])
        self._order.remove(best)
        self._order.append(best)
        state = self._state[best]
        if self._pop_passed(best, state, now):
            state.graced = False  # a due time of its own: it may need the GRACE retry
        state.poll_at = best_due
        state.fresh = None
        return best

    def _pop_passed(self, name: str, state: _Reactor, now: datetime.datetime) -> bool:
        due = state.due
        popped = False
        while due and due[0][0] <= now:
            entry: Entry = due.pop(0)
            popped = True
            key = entry[2]
            if key is not None and self._keyed.get((name, key)) is entry:
                del self._keyed[(name, key)]
        return popped

    def claimed(self, reactor: str, now: datetime.datetime) -> None:
        """A claim succeeded: more may be waiting, let the next free worker try too."""
        state = self._state[reactor]
        state.graced = False
        state.poll_at = now
        self._wake(1)

    def blocked(self, reactor: str, now: datetime.datetime) -> None:
        """Due work of ``reactor`` waits for a cluster-wide concurrency slot: try again when a
        slot is freed (:meth:`slot_freed`, here or on another instance), or at the idle poll.
        Hints of new work meanwhile do not start rounds that would find the slots taken."""
        state = self._state[reactor]
        state.fresh = None
        state.poll_at = now + self.idle_poll
        self.blocked_until[reactor] = now + self.idle_poll

    def execution_ended(self, reactor: str) -> None:
        """A slot of ``reactor`` on this instance is free again (a handler returned, or a
        reserved slot was given back): if the per-instance limit held its due work back, a
        sleeping worker looks again now rather than at the idle poll."""
        spec = self.reactors.get(reactor)
        limit = spec.policies.concurrency if spec is not None else None
        if limit is not None and self.running[reactor] < limit:
            self._wake(1)

    def slot_freed(self, reactor: str) -> None:
        """An execution of a reactor with cluster-wide limits ended: its work may go now."""
        self.blocked_until.pop(reactor, None)
        self.note_due(reactor, datetime.datetime.min, key=_SLOT_KEY, fresh=False)

    def missed(self, reactor: str, now: datetime.datetime) -> None:
        """A claim found nothing: wait for the next known due time, or poll again after the
        idle interval.

        A hint that arrived while the claim was in flight is not lost: it is still among the
        due times, and the reactor is not given a GRACE retry (the hint is the next reason to
        try).
        """
        state = self._state[reactor]
        current = self._earliest(state)
        if current is None or current > now:
            return  # already rescheduled (another worker's miss, a newer hint)
        fresh, state.fresh = state.fresh, None
        if fresh is not None and fresh < now + self.idle_poll:
            state.poll_at = now + self.idle_poll
            return
        if state.poll_at is not None and state.poll_at >= now - GRACE and not state.graced:
            # The claim is judged by the server's clock, ours is an estimate: a task due
            # "just now" may be a millisecond early for the server. Try once more shortly.
            state.graced = True
            state.poll_at = now + GRACE
            return
        state.poll_at = now + self.idle_poll
        log_event(log, logging.DEBUG, "no due task; waiting for a hint or the idle poll",
                  event="scheduler.idle", reactor=reactor,
                  next_poll_s=self.idle_poll.total_seconds())

    def next_moment(self, now: datetime.datetime) -> datetime.datetime:
        """When an idle worker must look again: the earliest due time of a reactor that can
        run then (the end of a throttle counts), at most the idle poll away."""
        horizon = now + self.idle_poll
        for name, state in self._state.items():
            blocked = self.blocked_until.get(name)
            if self._limited(name) or name in self.paused or (blocked is not None
                                                              and blocked > now):
                continue  # a finished execution, or the resume, makes a worker look again
            due = self._earliest(state)
            if due is None:
                continue
            until = self.throttled_until.get(name)
            if until is not None and until > due:
                due = until
            if due < horizon:
                horizon = due
        return max(horizon, now)

    def seconds_until_next(self, now: datetime.datetime) -> float:
        """How long an idle worker may sleep before something is due (at most the idle poll)."""
        return (self.next_moment(now) - now).total_seconds()

    # -- sleeping workers ------------------------------------------------------------------

    def _wake(self, count: int) -> None:
        # One hint wakes one sleeping worker; a successful claim wakes the next one, so a
        # burst of work fans out without every idle worker racing for the same task. A hint
        # that finds nobody asleep is kept (once) for the next worker about to sleep.
        while count and self._waiters:
            future, _ = self._waiters.pop(0)
            if not future.done():
                future.set_result(None)
                count -= 1
        if count:
            self._pending_wakes = 1

    def _wake_for(self, at: datetime.datetime) -> None:
        """Wake one sleeping worker unless one already wakes by ``at``.

        Each sleeper wakes at the earliest due time it knew of, so a later one (a renewed
        lease, a far retry) wakes no one. A worker that is not asleep looks at the due times
        before it next sleeps, so nothing needs to be kept for it.
        """
        if self._waiters and not any(until is not None and until <= at
                                     for _, until in self._waiters):
            self._wake(1)

    async def sleep(self, now: datetime.datetime) -> None:
        """Sleep until the next due time (:meth:`next_moment`) or a hint that is earlier."""
        moment = self.next_moment(now)
        await self.wait((moment - now).total_seconds(), moment)

    async def wait(self, timeout: float, until: datetime.datetime | None = None) -> None:
        """Sleep until a hint arrives for this worker or ``timeout`` seconds pass (``until``:
        that moment on the server's clock, if known)."""
        if self._pending_wakes:
            self._pending_wakes -= 1
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiter = (future, until)
        self._waiters.append(waiter)
        try:
            await asyncio.wait_for(future, timeout)
        except TimeoutError:
            pass
        finally:
            if waiter in self._waiters:
                self._waiters.remove(waiter)

    def wake_all(self) -> None:
        """Wake every sleeping worker (shutdown, throttle changes)."""
        for future, _ in self._waiters:
            if not future.done():
                future.set_result(None)
        self._waiters.clear()
