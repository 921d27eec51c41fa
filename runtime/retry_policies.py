"""When a failed execution runs again, and when it stops trying.

``attempts`` counts executions of the current data version including the one that just failed,
so the first failure uses ``attempts == 1``.
"""

from __future__ import annotations

import datetime
import math
import random

from croniter import croniter

from runtime.reactor import RetryPolicy


def retry_delay_ms(policy: RetryPolicy, attempts: int, now: datetime.datetime,
                   rng: random.Random | None = None) -> int:
    """Milliseconds to wait before the next attempt.

    fixed: ``interval``; linear: ``interval * attempts``, capped at ``max``; exponential:
    ``min * factor ** (attempts - 1)``, capped at ``max``; series: ``delays[attempts - 1]``,
    the last one repeating; cron: until the expression's next time after ``now`` (see
    :func:`cron_next`). ``jitter`` then moves the delay by up to ``± jitter * delay`` (never
    above ``max`` for linear and exponential).
    """
    n = max(1, attempts)
    if policy.strategy == "fixed":
        delay = float(policy.interval_ms)
    elif policy.strategy == "linear":
        delay = min(float(policy.interval_ms) * n, float(policy.max_ms))
    elif policy.strategy == "series":
        delays = policy.delays_ms or (policy.interval_ms,)
        delay = float(delays[min(n - 1, len(delays) - 1)])
    elif policy.strategy == "cron":
        following = cron_next(policy, now)
        return max(0, int((following - now).total_seconds() * 1000))
    else:
        delay = _exponential(policy, n)
    if policy.jitter:
        spread = delay * policy.jitter
        delay += (rng or random).uniform(-spread, spread)
    if policy.strategy in ("linear", "exponential"):
        delay = min(delay, float(policy.max_ms))
    return max(0, round(delay))


def _exponential(policy: RetryPolicy, n: int) -> float:
    # factor ** (n - 1) overflows a float after ~1000 attempts; past max it no longer matters.
    if policy.min_ms <= 0:
        return 0.0
    if policy.factor <= 1:
        return float(min(policy.min_ms, policy.max_ms))
    limit = math.log(max(policy.max_ms, policy.min_ms) / policy.min_ms, policy.factor)
    if n - 1 > limit:
        return float(policy.max_ms)
    return min(float(policy.max_ms), policy.min_ms * policy.factor ** (n - 1))


def cron_next(policy: RetryPolicy, now: datetime.datetime) -> datetime.datetime:
    """The cron strategy's next time strictly after ``now`` (naive UTC, like BSON dates).

    The retry is scheduled at exactly this time rather than at a delay from the moment the
    failure is recorded, so ``0 * * * *`` really means "on the hour".
    """
    assert policy.cron is not None
    following: datetime.datetime = croniter(policy.cron, now).get_next(datetime.datetime)
    return following


def gives_up(policy: RetryPolicy, attempts: int, first_error_at: datetime.datetime | None,
             now: datetime.datetime) -> bool:
    """True when this failure is the last: attempts or the retry window are used up."""
    if policy.max_attempts is not None and attempts >= policy.max_attempts:
        return True
    if policy.max_duration_ms is not None and first_error_at is not None:
        elapsed_ms = (now - first_error_at).total_seconds() * 1000
        return elapsed_ms >= policy.max_duration_ms
    return False
