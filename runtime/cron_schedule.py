"""Occurrences of a schedule, and which of them to plan after a gap (pure functions).

All instants are naive UTC datetimes, like BSON dates read by PyMongo, at millisecond
precision.

**Cron expressions** are evaluated on the *wall clock* of the job's time zone, then each local
time is turned into an instant with ``zoneinfo``:

- a local time that does not exist (skipped by a spring-forward transition, e.g. 02:30 on the
  night clocks go from 02:00 to 03:00) runs the length of the gap later (03:30), the way
  ``java.time`` resolves it; if that instant is also an occurrence of its own, it runs once;
- a local time that exists twice (a fall-back transition repeats 02:00-03:00) runs once, at its
  first pass (``fold=0``).

**Intervals** (``every``) are counted from the Unix epoch in UTC: ``every: 1h`` runs on the
hour, ``every: 1d`` at 00:00 UTC, whatever the time zone and DST.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cache
from zoneinfo import ZoneInfo

from croniter import croniter

from runtime.cron_spec import CatchUp, Schedule, ScheduleKind

EPOCH = datetime.datetime(1970, 1, 1)
SHIFT = datetime.timedelta(hours=3)
"""More than any difference of two UTC offsets of one zone around a transition (at most 2 h in
the tz database), plus a margin: the window searched around an instant."""
MAX_COUNT = 1_000
FAST_SPAN = datetime.timedelta(days=7)
"""Missed occurrences of a cron expression are counted up to this many (a longer gap reports
this many): counting walks the occurrences, and the leader should not stall on a long gap."""


@cache
def _zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


def _ms(instant: datetime.datetime) -> int:
    return (instant - EPOCH) // datetime.timedelta(milliseconds=1)


def _from_ms(ms: int) -> datetime.datetime:
    return EPOCH + datetime.timedelta(milliseconds=ms)


def local_to_utc(local: datetime.datetime, zone: str) -> datetime.datetime:
    """A naive wall-clock time of ``zone`` as a naive UTC instant (gaps shift forward, the
    first pass of a repeated hour wins)."""
    aware = local.replace(tzinfo=_zone(zone), fold=0)
    return aware.astimezone(datetime.UTC).replace(tzinfo=None)


def utc_to_local(instant: datetime.datetime, zone: str) -> datetime.datetime:
    """A naive UTC instant as the naive wall-clock time of ``zone``."""
    aware = instant.replace(tzinfo=datetime.UTC).astimezone(_zone(zone))
    return aware.replace(tzinfo=None)


def _local_candidates(schedule: Schedule, start_local: datetime.datetime,
                      forward: bool) -> Iterator[datetime.datetime]:
    assert schedule.expression is not None
    it = croniter(schedule.expression, start_local)
    while True:
        value: datetime.datetime = (it.get_next(datetime.datetime) if forward
                                    else it.get_prev(datetime.datetime))
        yield value


def _offset(instant: datetime.datetime, zone: str) -> datetime.timedelta | None:
    return instant.replace(tzinfo=datetime.UTC).astimezone(_zone(zone)).utcoffset()


def _steady(zone: str, first: datetime.datetime, last: datetime.datetime) -> bool:
    """Whether ``zone`` keeps one UTC offset from ``first`` to ``last`` (with margins): true
    when both ends have the same offset and the span is shorter than any two transitions of
    the tz database are apart (weeks), so local and UTC times are one shift apart there."""
    low, high = first - SHIFT, last + SHIFT
    return high - low < FAST_SPAN and _offset(low, zone) == _offset(high, zone)


def next_after(schedule: Schedule, after: datetime.datetime) -> datetime.datetime:
    """The first occurrence strictly after ``after``."""
    if schedule.kind is ScheduleKind.EVERY:
        assert schedule.every_ms
        step = schedule.every_ms
        return _from_ms((_ms(after) // step + 1) * step)
    candidate = local_to_utc(next(_local_candidates(
        schedule, utc_to_local(after, schedule.timezone), forward=True)), schedule.timezone)
    if candidate > after and _steady(schedule.timezone, after, candidate):
        return candidate  # the fast path: no transition near
    return slow_next_after(schedule, after)


def slow_next_after(schedule: Schedule, after: datetime.datetime) -> datetime.datetime:
    """:func:`next_after` of a cron expression, exact around transitions (searches a window
    of local times SHIFT wide on each side)."""
    # A local time whose instant is after ``after`` is at most SHIFT before after's local time;
    # two local times more than SHIFT apart keep their order as instants.
    start = utc_to_local(after, schedule.timezone) - SHIFT - datetime.timedelta(minutes=1)
    best: tuple[datetime.datetime, datetime.datetime] | None = None
    for local in _local_candidates(schedule, start, forward=True):
        if best is not None and local > best[1] + SHIFT:
            return best[0]
        instant = local_to_utc(local, schedule.timezone)
        if instant > after and (best is None or instant < best[0]):
            best = (instant, local)
    raise AssertionError("unreachable")  # pragma: no cover


def latest_at_or_before(schedule: Schedule, at: datetime.datetime) -> datetime.datetime:
    """The last occurrence at or before ``at``."""
    if schedule.kind is ScheduleKind.EVERY:
        assert schedule.every_ms
        return _from_ms(_ms(at) // schedule.every_ms * schedule.every_ms)
    start = utc_to_local(at, schedule.timezone) + datetime.timedelta(microseconds=1)
    candidate = local_to_utc(next(_local_candidates(schedule, start, forward=False)),
                             schedule.timezone)
    if candidate <= at and _steady(schedule.timezone, candidate, at):
        return candidate
    return slow_latest_at_or_before(schedule, at)


def slow_latest_at_or_before(schedule: Schedule, at: datetime.datetime) -> datetime.datetime:
    """:func:`latest_at_or_before` of a cron expression, exact around transitions."""
    start = utc_to_local(at, schedule.timezone) + SHIFT + datetime.timedelta(minutes=1)
    best: tuple[datetime.datetime, datetime.datetime] | None = None
    for local in _local_candidates(schedule, start, forward=False):
        if best is not None and local < best[1] - SHIFT:
            return best[0]
        instant = local_to_utc(local, schedule.timezone)
        if instant <= at and (best is None or instant > best[0]):
            best = (instant, local)
    raise AssertionError("unreachable")  # pragma: no cover


def _collect(schedule: Schedule, after: datetime.datetime, until: datetime.datetime,
             limit: int | None, newest: bool) -> list[datetime.datetime]:
    """Occurrences of a cron expression in ``(after, until]``: the oldest (or, with
    ``newest``, the newest) ``limit`` of them, oldest first. One pass of croniter over the
    local times of the window (widened by SHIFT), so the cost is linear in the occurrences."""
    zone = schedule.timezone
    margin = SHIFT + datetime.timedelta(minutes=1)
    if newest:
        first, stop = utc_to_local(until, zone) + margin, utc_to_local(after, zone) - SHIFT
    else:
        first, stop = utc_to_local(after, zone) - margin, utc_to_local(until, zone) + SHIFT
    found: set[datetime.datetime] = set()
    reached: datetime.datetime | None = None
    for local in _local_candidates(schedule, first, forward=not newest):
        beyond = local < stop if newest else local > stop
        if beyond or (reached is not None and (local < reached - SHIFT if newest
                                               else local > reached + SHIFT)):
            break
        instant = local_to_utc(local, zone)
        if after < instant <= until:
            found.add(instant)
            if limit is not None and reached is None and len(found) >= limit:
                reached = local  # later candidates cannot displace the ones found so far
    ordered = sorted(found)
    if limit is None:
        return ordered
    return ordered[-limit:] if newest else ordered[:limit]


def between(schedule: Schedule, after: datetime.datetime, until: datetime.datetime,
            limit: int | None = None) -> list[datetime.datetime]:
    """Occurrences in ``(after, until]``, oldest first (the first ``limit`` if given)."""
    if until <= after:
        return []
    if schedule.kind is ScheduleKind.CRON:
        return _collect(schedule, after, until, limit, newest=False)
    found: list[datetime.datetime] = []
    current = after
    while limit is None or len(found) < limit:
        current = next_after(schedule, current)
        if current > until:
            break
        found.append(current)
    return found


def newest_between(schedule: Schedule, after: datetime.datetime, until: datetime.datetime,
                   limit: int) -> list[datetime.datetime]:
    """The newest ``limit`` occurrences in ``(after, until]``, oldest first."""
    if until <= after or limit <= 0:
        return []
    if schedule.kind is ScheduleKind.CRON:
        return _collect(schedule, after, until, limit, newest=True)
    assert schedule.every_ms
    newest_time = latest_at_or_before(schedule, until)
    step = datetime.timedelta(milliseconds=schedule.every_ms)
    found = [newest_time - n * step for n in range(limit)]
    return [t for t in found if t > after][::-1]


def count_between(schedule: Schedule, after: datetime.datetime,
                  until: datetime.datetime) -> int:
    """How many occurrences lie in ``(after, until]`` (for a cron expression at most
    :data:`MAX_COUNT`: a longer gap reports that many, and costs no more)."""
    if until <= after:
        return 0
    if schedule.kind is ScheduleKind.EVERY:
        assert schedule.every_ms
        step = schedule.every_ms
        return _ms(until) // step - _ms(after) // step
    return len(between(schedule, after, until, MAX_COUNT))


@dataclass
class Plan:
    """What to plan at one moment: occurrences on time, occurrences caught up, and the
    missed ones left out."""

    on_time: list[datetime.datetime] = field(default_factory=list)
    """Occurrences at most the starting deadline late: planned as scheduled."""
    caught_up: list[datetime.datetime] = field(default_factory=list)
    """Missed occurrences the catch-up policy runs after all."""
    missed: int = 0
    """Missed occurrences (later than the starting deadline), caught up or not."""
    first_missed: datetime.datetime | None = None
    last_missed: datetime.datetime | None = None
    through: datetime.datetime | None = None
    """The newest occurrence at or before now: everything up to it has been decided."""

    @property
    def skipped(self) -> int:
        """Missed occurrences that do not run."""
        return self.missed - len(self.caught_up)


def plan(schedule: Schedule, last: datetime.datetime, now: datetime.datetime,
         catch_up: CatchUp, max_catch_up: int, starting_deadline_ms: int) -> Plan:
    """Which occurrences after ``last`` (the newest already decided) to plan at ``now``.

    An occurrence is *missed* when it is more than ``starting_deadline_ms`` in the past: no
    leader planned it in time (the cluster was down). ``catch_up`` then decides: ``none``
    plans none of them, ``latest`` the newest, ``all`` the newest ``max_catch_up``.
    Occurrences within the deadline are planned as scheduled, so a leader failover (a few
    seconds) loses nothing.
    """
    result = Plan()
    through = latest_at_or_before(schedule, now)
    if through <= last:
        return result
    result.through = through
    deadline = now - datetime.timedelta(milliseconds=starting_deadline_ms)
    if deadline > last:
        result.missed = count_between(schedule, last, deadline)
        if result.missed:
            missed_until = latest_at_or_before(schedule, deadline)
            result.first_missed = next_after(schedule, last)
            result.last_missed = missed_until
            if catch_up is CatchUp.LATEST:
                result.caught_up = [missed_until]
            elif catch_up is CatchUp.ALL and max_catch_up > 0:
                result.caught_up = newest_between(schedule, last, deadline, max_catch_up)
        result.on_time = between(schedule, max(last, deadline), now)
    else:
        result.on_time = between(schedule, last, now)
    return result
