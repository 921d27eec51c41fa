"""The scheduler in-process: due times, claims, misses, throttles, leases (no database).

Times are server-clock datetimes chosen by the test; "a claim" is ``next_reactor`` followed by
``claimed`` or ``missed`` with the same ``now``, as the worker loop calls them.
"""

from __future__ import annotations

import asyncio
import datetime

from support import reactor_spec

from runtime.reactor import PriorityPolicy, ReactorSpec
from runtime.scheduler import GRACE, Scheduler

T0 = datetime.datetime(2030, 1, 1)
IDLE_MS = 600_000
IDLE = datetime.timedelta(milliseconds=IDLE_MS)


def at(ms: float) -> datetime.datetime:
    """``T0`` plus ``ms`` milliseconds."""
    return T0 + datetime.timedelta(milliseconds=ms)


def spec(name: str = "r", concurrency: int | None = None) -> ReactorSpec:
    """A reactor as far as the scheduler cares (name and policies)."""
    return reactor_spec(name, concurrency=concurrency)


def idle_scheduler(*reactors: ReactorSpec, **options: int) -> Scheduler:
    """A scheduler whose reactors were all tried at start-up and found nothing (parked)."""
    scheduler = Scheduler(list(reactors) or [spec()], idle_poll_ms=IDLE_MS, **options)
    scheduler.start(T0)
    for _ in range(len(scheduler.reactors)):
        drain(scheduler, T0)
    drain(scheduler, T0 + GRACE)
    assert scheduler.next_reactor(T0 + GRACE) is None
    return scheduler


def drain(scheduler: Scheduler, now: datetime.datetime, found: int = 0) -> list[str]:
    """Claims at ``now`` until no reactor is due: the first ``found`` succeed, the rest miss.
    Returns the reactors claimed from, in order."""
    picked = []
    while (name := scheduler.next_reactor(now)) is not None:
        picked.append(name)
        if found:
            found -= 1
            scheduler.claimed(name, now)
        else:
            scheduler.missed(name, now)
        assert len(picked) < 100, "the scheduler keeps a reactor due forever"
    return picked


def test_several_future_due_times_survive_claims_and_misses() -> None:
    """The bug: a claim dropped every other known due time, so the second retry waited for
    the idle poll."""
    scheduler = idle_scheduler()
    for ms in (3000, 1000, 2000):
        scheduler.note_due("r", at(ms))
    assert scheduler.seconds_until_next(at(30)) == 0.97
    assert scheduler.next_reactor(at(999)) is None
    # At 1 s: one task found, then misses (with one GRACE retry) ...
    assert drain(scheduler, at(1000), found=1) == ["r", "r"]
    assert scheduler.next_reactor(at(1000) + GRACE) == "r"
    scheduler.missed("r", at(1000) + GRACE)
    # ... and the worker sleeps exactly until the next known due time, not the idle poll.
    assert scheduler.seconds_until_next(at(1100)) == 0.9
    assert drain(scheduler, at(2000)) == ["r"]
    assert scheduler.due_times("r") == [at(3000)]
    assert scheduler.due_at["r"] == at(2000) + GRACE
    drain(scheduler, at(2000) + GRACE)
    assert scheduler.due_at["r"] == at(3000)
    assert drain(scheduler, at(3000), found=1) == ["r", "r"]
    drain(scheduler, at(3000) + GRACE)
    assert scheduler.due_times("r") == []
    assert scheduler.seconds_until_next(at(3100)) == (at(3000) + GRACE + IDLE
                                                      - at(3100)).total_seconds()


def test_a_claim_covers_only_due_times_that_have_passed() -> None:
    scheduler = idle_scheduler()
    scheduler.note_due("r", at(100))
    scheduler.note_due("r", at(100.5))
    scheduler.note_due("r", at(150))
    assert scheduler.next_reactor(at(120)) == "r"
    assert scheduler.due_times("r") == [at(150)]
    scheduler.claimed("r", at(120))
    assert scheduler.next_reactor(at(121)) == "r", "a successful claim keeps it due now"
    assert scheduler.due_times("r") == [at(150)]


def test_a_hint_during_an_in_flight_claim_is_not_lost() -> None:
    scheduler = idle_scheduler()
    scheduler.note_due("r", at(100))
    assert scheduler.next_reactor(at(100)) == "r"  # the claim starts ...
    scheduler.note_due("r", at(100))  # ... new work is written meanwhile ...
    scheduler.note_due("r", at(900))  # ... and a retry of another task is scheduled
    scheduler.missed("r", at(100))  # the claim had run its query before: nothing found
    assert scheduler.next_reactor(at(100)) == "r", "the hint was lost"
    scheduler.claimed("r", at(100))
    assert drain(scheduler, at(101)) == ["r"]
    drain(scheduler, at(101) + GRACE)
    assert scheduler.due_times("r") == [at(900)]
    assert scheduler.seconds_until_next(at(200)) == 0.7


def test_a_missed_claim_is_retried_once_after_grace() -> None:
    """Claims are judged by the server's clock; ours is an estimate, so a task due "just
    now" may not be due yet for the server."""
    scheduler = idle_scheduler()
    scheduler.note_due("r", at(1000))
    scheduler.note_due("r", at(5000))
    assert scheduler.next_reactor(at(1000)) == "r"
    scheduler.missed("r", at(1000))
    assert scheduler.due_at["r"] == at(1000) + GRACE
    assert scheduler.next_reactor(at(1000) + GRACE) == "r"
    scheduler.missed("r", at(1000) + GRACE)
    assert scheduler.due_at["r"] == at(5000)


def test_the_end_of_a_throttle_is_a_due_time() -> None:
    scheduler = idle_scheduler()
    scheduler.throttle("r", at(1500))
    scheduler.note_due("r", at(100))  # due during the pause
    scheduler.note_due("r", at(3000))  # due after it
    assert scheduler.next_reactor(at(100)) is None
    assert scheduler.seconds_until_next(at(100)) == 1.4
    assert scheduler.next_reactor(at(1499)) is None
    assert scheduler.next_reactor(at(1500)) == "r"
    scheduler.claimed("r", at(1500))
    drain(scheduler, at(1500))
    drain(scheduler, at(1500) + GRACE)
    assert scheduler.due_at["r"] == at(3000)


def test_lease_expiries_of_other_instances_are_due_times() -> None:
    """A task running elsewhere is due again when its lease expires (its worker died); a
    renewal replaces the expiry, and the end of the execution drops it."""
    scheduler = idle_scheduler()
    scheduler.note_lease("r", "task-1", at(30_000))
    scheduler.note_lease("r", "task-2", at(31_000))
    assert scheduler.due_times("r") == [at(30_000), at(31_000)]
    scheduler.note_lease("r", "task-1", at(36_000))  # renewed
    assert scheduler.due_times("r") == [at(31_000), at(36_000)]
    scheduler.forget("r", "task-2")  # finished
    scheduler.forget("r", "task-3")  # never seen: nothing happens
    assert scheduler.due_times("r") == [at(36_000)]
    assert scheduler.next_reactor(at(35_999)) is None
    assert scheduler.next_reactor(at(36_000)) == "r"
    scheduler.claimed("r", at(36_000))  # taken over
    # The same key for a pending task: its due time replaces the lease.
    scheduler.note_lease("r", "task-4", at(40_000))
    scheduler.note_due("r", at(50_000), key="task-4")
    assert scheduler.due_times("r") == [at(50_000)]
    # Unknown reactors (not executed here) are ignored.
    scheduler.note_lease("other", "task-5", at(1))
    scheduler.forget("other", "task-5")
    assert scheduler.due_times("other") == []


def test_a_lease_expiry_after_a_miss_is_not_lost() -> None:
    scheduler = idle_scheduler()
    scheduler.note_lease("r", "task-1", at(2000))
    scheduler.note_due("r", at(500))
    drain(scheduler, at(500))
    drain(scheduler, at(500) + GRACE)
    assert scheduler.due_at["r"] == at(2000)


def test_due_times_are_bounded_per_reactor() -> None:
    scheduler = idle_scheduler(max_due_times=3)
    for ms in (400, 100, 300, 200):
        scheduler.note_due("r", at(ms))
    assert scheduler.due_times("r") == [at(100), at(200), at(300)]  # the latest is dropped
    scheduler.note_lease("r", "late", at(900))  # beyond the bound and the latest: dropped
    assert scheduler.due_times("r") == [at(100), at(200), at(300)]
    scheduler.note_lease("r", "early", at(50))
    assert scheduler.due_times("r") == [at(50), at(100), at(200)]
    scheduler.forget("r", "late")
    scheduler.forget("r", "early")
    assert scheduler.due_times("r") == [at(100), at(200)]


def test_reactors_are_picked_most_overdue_first_within_their_limits() -> None:
    scheduler = idle_scheduler(spec("a"), spec("b", concurrency=1))
    scheduler.note_due("a", at(200))
    scheduler.note_due("b", at(100))
    assert scheduler.next_reactor(at(300)) == "b"
    scheduler.claimed("b", at(300))
    scheduler.running["b"] += 1  # at its limit while the execution runs
    assert scheduler.next_reactor(at(300)) == "a"
    scheduler.claimed("a", at(300))
    drain(scheduler, at(300))
    drain(scheduler, at(300) + GRACE)
    # b is due (claimed keeps it so) but at its limit: no busy loop for idle workers.
    assert scheduler.next_reactor(at(400)) is None
    assert scheduler.seconds_until_next(at(400)) > 1
    scheduler.running["b"] -= 1
    assert scheduler.next_reactor(at(400)) == "b"


def test_stopping_claims_nothing() -> None:
    scheduler = idle_scheduler()
    scheduler.note_due("r", at(0))
    scheduler.stopping = True
    assert scheduler.next_reactor(at(100)) is None


async def test_sleeping_workers_wake_for_earlier_due_times_only() -> None:
    scheduler = idle_scheduler()
    scheduler.note_lease("r", "task-1", at(30_000))
    now = at(1000)
    sleeper = asyncio.create_task(scheduler.sleep(now))
    await asyncio.sleep(0)  # let it start waiting
    assert not sleeper.done()
    scheduler.note_lease("r", "task-1", at(36_000))  # a renewal: nothing earlier
    scheduler.note_due("r", at(40_000))
    await asyncio.sleep(0)
    assert not sleeper.done()
    scheduler.note_due("r", at(2000))  # a retry due before the sleeper would wake
    await asyncio.wait_for(sleeper, 5)
    # A throttle end before the next wake-up wakes a worker too.
    sleeper = asyncio.create_task(scheduler.sleep(now))
    await asyncio.sleep(0)
    scheduler.throttle("r", at(1500))
    await asyncio.wait_for(sleeper, 5)


async def test_claimed_wakes_the_next_worker_and_wake_all_wakes_every_one() -> None:
    scheduler = idle_scheduler()
    now = at(1000)
    sleepers = [asyncio.create_task(scheduler.sleep(now)) for _ in range(3)]
    await asyncio.sleep(0)
    scheduler.claimed("r", now)
    done, pending = await asyncio.wait(sleepers, timeout=5,
                                       return_when=asyncio.FIRST_COMPLETED)
    assert len(done) == 1 and len(pending) == 2
    scheduler.stopping = True
    scheduler.wake_all()
    await asyncio.wait_for(asyncio.gather(*pending), 5)


def test_a_reactor_waiting_for_slots_ignores_new_work_until_a_slot_is_freed() -> None:
    scheduler = idle_scheduler()
    scheduler.note_due("r", at(100), key="t1")
    assert scheduler.next_reactor(at(100)) == "r"
    scheduler.blocked("r", at(100))  # every cluster-wide slot is held elsewhere
    scheduler.note_due("r", at(110), key="t2")  # more work: it could not run either
    assert scheduler.next_reactor(at(120)) is None
    scheduler.slot_freed("r")  # an execution ended (here or on another instance)
    assert scheduler.next_reactor(at(130)) == "r"


def test_static_priority_orders_reactors_and_every_fourth_pick_goes_to_the_oldest() -> None:
    scheduler = idle_scheduler(reactor_spec("low"),
                               reactor_spec("high", priority=PriorityPolicy(static=5)))
    picks = []
    for i in range(8):
        scheduler.note_due("low", at(100 + i), key=f"l{i}")  # older work of the low one
        scheduler.note_due("high", at(200 + i), key=f"h{i}")
        name = scheduler.next_reactor(at(1000 + i))
        assert name is not None
        picks.append(name)
        scheduler.claimed(name, at(1000 + i))
    assert picks.count("high") == 6 and picks.count("low") == 2, picks
