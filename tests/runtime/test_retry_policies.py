"""The retry-delay arithmetic of ``runtime.retry_policies`` (the end-to-end behaviour of each
strategy is in test_policies.py; these cover cases too long or too random to run there)."""

from __future__ import annotations

import datetime
import random

from runtime.reactor import RetryPolicy
from runtime.retry_policies import cron_next, gives_up, retry_delay_ms

NOW = datetime.datetime(2024, 5, 17, 10, 42, 13, 250000)


def test_exponential_is_capped_for_any_number_of_attempts() -> None:
    policy = RetryPolicy(strategy="exponential", min_ms=1000, max_ms=3_600_000, factor=2.0,
                         max_attempts=None)
    assert [retry_delay_ms(policy, n, NOW) for n in (1, 2, 3, 12, 13)] == [
        1000, 2000, 4000, 2_048_000, 3_600_000]
    # 2.0 ** 5000 overflows a float: a task failing for weeks must still be rescheduled.
    assert retry_delay_ms(policy, 5000, NOW) == 3_600_000
    assert retry_delay_ms(RetryPolicy(strategy="exponential", min_ms=10, max_ms=10**12,
                                      factor=10.0), 10_000, NOW) == 10**12


def test_jitter_bounds_for_every_strategy() -> None:
    rng = random.Random(7)
    for strategy, base in (("fixed", 1000), ("linear", 3000), ("series", 500),
                           ("exponential", 4000)):
        policy = RetryPolicy(strategy=strategy, interval_ms=1000,  # type: ignore[arg-type]
                             min_ms=1000, max_ms=5000, delays_ms=(250, 500), jitter=0.25)
        delays = {retry_delay_ms(policy, 3, NOW, rng) for _ in range(200)}
        upper = min(base * 1.25, 5000) if strategy in ("linear", "exponential") \
            else base * 1.25
        assert base * 0.75 <= min(delays) and max(delays) <= upper, strategy
        assert len(delays) > 100, strategy


def test_linear_is_capped_at_max() -> None:
    policy = RetryPolicy(strategy="linear", interval_ms=400, max_ms=1000)
    assert [retry_delay_ms(policy, n, NOW) for n in (1, 2, 3, 4)] == [400, 800, 1000, 1000]


def test_cron_next_is_on_the_schedule() -> None:
    hourly = RetryPolicy(strategy="cron", cron="0 * * * *")
    assert cron_next(hourly, NOW) == datetime.datetime(2024, 5, 17, 11, 0)
    assert retry_delay_ms(hourly, 1, NOW) == 1_066_750
    every_15 = RetryPolicy(strategy="cron", cron="*/15 * * * *")
    assert cron_next(every_15, datetime.datetime(2024, 5, 17, 10, 45)) == \
        datetime.datetime(2024, 5, 17, 11, 0)


def test_gives_up_on_attempts_or_duration() -> None:
    policy = RetryPolicy(max_attempts=3, max_duration_ms=60_000)
    assert not gives_up(policy, 2, NOW, NOW)
    assert gives_up(policy, 3, NOW, NOW)
    assert gives_up(policy, 1, NOW - datetime.timedelta(minutes=1), NOW)
    unlimited = RetryPolicy(max_attempts=None, max_duration_ms=None)
    assert not gives_up(unlimited, 10_000, NOW - datetime.timedelta(days=30), NOW)
