"""When a failed execution runs again, and when it stops trying.

``attempts`` counts executions of the current data version including the one that just failed,
so the first failure uses ``attempts == 1``.
"""

from __future__ import annotations

import datetime
import random

from croniter import croniter

from runtime.reactor import RetryPolicy


def retry_delay_ms(policy: RetryPolicy, attempts: int, now: datetime.datetime,
                   rng: random.Random | None = None) -> int:
    """Milliseconds to wait before the next attempt."""
    n = max(1, attempts)
    if policy.strategy == "fixed":
        delay = float(policy.interval_ms)
    elif policy.strategy == "linear":
        delay = float(policy.interval_ms * n)
    elif policy.strategy == "series":
        delays = policy.delays_ms or (policy.interval_ms,)
        delay = float(delays[min(n - 1, len(delays) - 1)])
    elif policy.strategy == "cron":
        assert policy.cron is not None
        following = croniter(policy.cron, now).get_next(datetime.datetime)
        return max(0, int((following - now).total_seconds() * 1000))
    else:
        delay = min(float(policy.max_ms), policy.min_ms * policy.factor ** (n - 1))
    if policy.jitter:
        spread = delay * policy.jitter
        delay += (rng or random).uniform(-spread, spread)
    if policy.strategy == "exponential":
        delay = min(delay, float(policy.max_ms))
    return max(0, round(delay))


def gives_up(policy: RetryPolicy, attempts: int, first_error_at: datetime.datetime | None,
             now: datetime.datetime) -> bool:
    """True when this failure is the last: attempts or the retry window are used up."""
    if policy.max_attempts is not None and attempts >= policy.max_attempts:
        return True
    if policy.max_duration_ms is not None and first_error_at is not None:
        elapsed_ms = (now - first_error_at).total_seconds() * 1000
        return elapsed_ms >= policy.max_duration_ms
    return False
