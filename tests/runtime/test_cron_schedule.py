"""Occurrence arithmetic of cron jobs (``runtime.cron_schedule``): time zones and DST
transitions, intervals, and the catch-up decision after a gap. Pure functions, no database."""

from __future__ import annotations

import datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runtime.cron_schedule import (
    between,
    count_between,
    latest_at_or_before,
    local_to_utc,
    newest_between,
    next_after,
    plan,
    slow_latest_at_or_before,
    slow_next_after,
    utc_to_local,
)
from runtime.cron_spec import CatchUp, Schedule, ScheduleKind

D = datetime.datetime
S = datetime.timedelta(seconds=1)


def cron(expression: str, timezone: str = "UTC") -> Schedule:
    return Schedule(ScheduleKind.CRON, expression=expression, timezone=timezone)


def every(ms: int) -> Schedule:
    return Schedule(ScheduleKind.EVERY, every_ms=ms)


def local(schedule: Schedule, instants: list[D]) -> list[str]:
    return [utc_to_local(t, schedule.timezone).strftime("%m-%d %H:%M") for t in instants]


def test_daily_job_keeps_its_wall_clock_time_across_both_berlin_transitions() -> None:
    berlin = cron("0 6 * * *", "Europe/Berlin")
    spring = between(berlin, D(2026, 3, 27), D(2026, 3, 31))
    assert [t.hour for t in spring] == [5, 5, 4, 4]  # UTC: CET (+1) until 29 March, then CEST
    assert set(local(berlin, spring)) == {"03-27 06:00", "03-28 06:00", "03-29 06:00",
                                          "03-30 06:00"}
    autumn = between(berlin, D(2026, 10, 24), D(2026, 10, 27))
    assert [t.hour for t in autumn] == [4, 5, 5]


def test_time_in_the_spring_gap_runs_the_gap_later_and_only_once() -> None:
    # 29 March 2026, Berlin: 02:00 CET jumps to 03:00 CEST; 02:30 does not exist.
    job = cron("30 2 * * *", "Europe/Berlin")
    assert next_after(job, D(2026, 3, 28, 12)) == D(2026, 3, 29, 1, 30)  # 03:30 CEST
    assert local(job, between(job, D(2026, 3, 28), D(2026, 3, 31))) == [
        "03-28 02:30", "03-29 03:30", "03-30 02:30"]
    # 02:30 (shifted to 03:30) and 03:30 are one instant: it runs once.
    both = cron("30 2,3 * * *", "Europe/Berlin")
    assert local(both, between(both, D(2026, 3, 29), D(2026, 3, 29, 12))) == ["03-29 03:30"]


def test_repeated_autumn_hour_runs_at_its_first_pass_only() -> None:
    # 25 October 2026, Berlin: 03:00 CEST falls back to 02:00 CET; 02:xx happens twice.
    job = cron("*/30 * * * *", "Europe/Berlin")
    instants = between(job, D(2026, 10, 24, 23, 0), D(2026, 10, 25, 2, 0))
    assert instants == [D(2026, 10, 24, 23, 30), D(2026, 10, 25, 0, 0), D(2026, 10, 25, 0, 30),
                        D(2026, 10, 25, 2, 0)]
    assert local_to_utc(D(2026, 10, 25, 2, 30), "Europe/Berlin") == D(2026, 10, 25, 0, 30)


def test_new_york_transitions_and_latest_at_or_before() -> None:
    job = cron("0 * * * *", "America/New_York")
    # 8 March 2026: 02:00 EST -> 03:00 EDT. 02:00 does not exist: shifted to 03:00 = the
    # 03:00 occurrence, so the hour has one run.
    hours = local(job, between(job, D(2026, 3, 8, 5, 30), D(2026, 3, 8, 8, 30)))
    assert hours == ["03-08 01:00", "03-08 03:00", "03-08 04:00"]
    assert latest_at_or_before(job, D(2026, 3, 8, 7, 0)) == D(2026, 3, 8, 7, 0)
    assert latest_at_or_before(job, D(2026, 3, 8, 6, 59)) == D(2026, 3, 8, 6, 0)


def test_intervals_are_counted_from_the_epoch_in_utc() -> None:
    job = every(30_000)
    assert next_after(job, D(2026, 1, 1, 10, 0, 0)) == D(2026, 1, 1, 10, 0, 30)
    assert next_after(job, D(2026, 1, 1, 10, 0, 29, 999000)) == D(2026, 1, 1, 10, 0, 30)
    assert latest_at_or_before(job, D(2026, 1, 1, 10, 0, 59)) == D(2026, 1, 1, 10, 0, 30)
    assert count_between(job, D(2026, 1, 1), D(2026, 1, 2)) == 2880
    assert newest_between(job, D(2026, 1, 1), D(2026, 1, 1, 0, 2), 2) == [
        D(2026, 1, 1, 0, 1, 30), D(2026, 1, 1, 0, 2)]


@pytest.mark.parametrize(("policy", "caught_up"), [
    (CatchUp.NONE, []),
    (CatchUp.LATEST, [D(2026, 1, 1, 0, 0, 50)]),
    (CatchUp.ALL, [D(2026, 1, 1, 0, 0, 48), D(2026, 1, 1, 0, 0, 49), D(2026, 1, 1, 0, 0, 50)]),
])
def test_catch_up_policies_after_a_gap(policy: CatchUp, caught_up: list[D]) -> None:
    # Last decided 00:00:00; now 00:01:00; deadline 10 s: 00:00:01..00:00:50 were missed.
    decided = plan(every(1000), D(2026, 1, 1), D(2026, 1, 1, 0, 1), policy, 3, 10_000)
    assert decided.missed == 50
    assert (decided.first_missed, decided.last_missed) == (D(2026, 1, 1, 0, 0, 1),
                                                           D(2026, 1, 1, 0, 0, 50))
    assert decided.caught_up == caught_up
    assert decided.on_time == [D(2026, 1, 1, 0, 0, 51) + n * S for n in range(10)]
    assert decided.through == D(2026, 1, 1, 0, 1)
    assert decided.skipped == 50 - len(caught_up)


def test_a_failover_shorter_than_the_starting_deadline_misses_nothing() -> None:
    decided = plan(every(1000), D(2026, 1, 1), D(2026, 1, 1, 0, 0, 4), CatchUp.NONE, 3, 10_000)
    assert decided.missed == 0 and decided.caught_up == []
    assert decided.on_time == [D(2026, 1, 1, 0, 0, n) for n in (1, 2, 3, 4)]
    assert plan(every(1000), D(2026, 1, 1, 0, 0, 4), D(2026, 1, 1, 0, 0, 4, 500000),
                CatchUp.ALL, 3, 10_000).through is None


ZONES = st.sampled_from(["UTC", "Europe/Berlin", "America/New_York", "Australia/Lord_Howe",
                         "Asia/Kolkata", "America/Santiago"])
EXPRESSIONS = st.sampled_from(["* * * * *", "*/7 * * * *", "30 2 * * *", "0 */3 * * *",
                               "15 1-3 * * 0", "0 0 1 * *", "45 23 * * 1-5", "0 2 29 2 *"])
INSTANTS = st.datetimes(min_value=D(2024, 1, 1), max_value=D(2030, 12, 31))


@settings(max_examples=150, deadline=None, database=None)
@given(EXPRESSIONS, ZONES, INSTANTS)
def test_next_and_latest_agree_for_any_zone_and_instant(expression: str, zone: str,
                                                        at: D) -> None:
    job = cron(expression, zone)
    following = next_after(job, at)
    assert following > at
    assert latest_at_or_before(job, following) == following
    previous = latest_at_or_before(job, at)
    assert previous <= at
    assert next_after(job, previous) == following or previous == following
    # Nothing lies strictly between the previous and the next occurrence.
    assert next_after(job, previous) >= following or previous > at


TRANSITIONS = st.sampled_from([D(2026, 3, 29, 1), D(2026, 10, 25, 1), D(2026, 3, 8, 7),
                               D(2026, 11, 1, 6), D(2026, 4, 5, 15), D(2026, 4, 4, 13)])


@settings(max_examples=80, deadline=None, database=None)
@given(EXPRESSIONS, ZONES, TRANSITIONS, st.integers(min_value=-6 * 3600, max_value=6 * 3600))
def test_fast_paths_agree_with_the_exhaustive_search_near_transitions(
        expression: str, zone: str, transition: D, offset_s: int) -> None:
    job = cron(expression, zone)
    at = transition + datetime.timedelta(seconds=offset_s)
    assert next_after(job, at) == slow_next_after(job, at)
    assert latest_at_or_before(job, at) == slow_latest_at_or_before(job, at)
    window = at - datetime.timedelta(minutes=40)
    assert between(job, window, at) == _walk(job, window, at)


def _walk(job: Schedule, after: D, until: D) -> list[D]:
    found: list[D] = []
    current = after
    while (current := slow_next_after(job, current)) <= until:
        found.append(current)
    return found


@settings(max_examples=200, deadline=None, database=None)
@given(st.sampled_from([1000, 1500, 30_000, 3_600_000]), INSTANTS,
       st.integers(min_value=0, max_value=400_000), st.sampled_from(list(CatchUp)),
       st.integers(min_value=1, max_value=20), st.sampled_from([0, 1000, 10_000, 60_000]))
def test_plan_decides_every_occurrence_once(step: int, last: D, gap_ms: int, policy: CatchUp,
                                            max_catch_up: int, deadline_ms: int) -> None:
    job = every(step)
    last = latest_at_or_before(job, last)
    now = last + datetime.timedelta(milliseconds=gap_ms)
    decided = plan(job, last, now, policy, max_catch_up, deadline_ms)
    everything = between(job, last, now)
    if not everything:
        assert decided.through is None and not decided.on_time
        return
    assert decided.through == everything[-1]
    deadline = now - datetime.timedelta(milliseconds=deadline_ms)
    assert decided.on_time == [t for t in everything if t > deadline]
    missed = [t for t in everything if t <= deadline]
    assert decided.missed == len(missed)
    expected = {CatchUp.NONE: [], CatchUp.LATEST: missed[-1:],
                CatchUp.ALL: missed[-max_catch_up:]}[policy]
    assert decided.caught_up == expected
    planned = decided.caught_up + decided.on_time
    assert planned == sorted(set(planned))
