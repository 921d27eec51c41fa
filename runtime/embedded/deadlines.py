"""``maxTimeMS``: the time limit of the command being run, checked inside long loops.

A command that names ``maxTimeMS`` starts a deadline (:func:`start`); the loops that may run long
(the scan of candidate documents, the evaluation of expressions) call :func:`tick`, which looks at
the clock only every :data:`CHECK_EVERY` calls, so the check costs next to nothing on the hot path.
Past the deadline, MaxTimeMSExpired (50, "operation exceeded time limit") ends the command, and
the server goes on serving its other clients.

The deadline lives in a context variable: each connection's task sees only its own command's.
"""

from __future__ import annotations

import contextvars
import time
from typing import Any

from runtime.embedded.errors import CommandError, ErrorCode

MAX_TIME_MS_EXPIRED = ErrorCode.MaxTimeMSExpired
#: How many :func:`tick` calls pass between two looks at the clock.
CHECK_EVERY = 64

_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar("deadline", default=None)
_countdown = [CHECK_EVERY]


def start(max_time_ms: Any) -> None:
    """Start the current command's deadline (``None``/0: no limit)."""
    if isinstance(max_time_ms, bool) or not isinstance(max_time_ms, int | float) \
            or not max_time_ms > 0 or max_time_ms == float("inf"):
        _deadline.set(None)
        return
    _deadline.set(time.monotonic() + float(max_time_ms) / 1000.0)


def clear() -> None:
    """End the current command's deadline."""
    _deadline.set(None)


def tick() -> None:
    """Raise MaxTimeMSExpired if the current command is past its deadline (checked now and
    then)."""
    _countdown[0] -= 1
    if _countdown[0] > 0:
        return
    _countdown[0] = CHECK_EVERY
    check()


def check() -> None:
    """Raise MaxTimeMSExpired if the current command is past its deadline."""
    deadline = _deadline.get()
    if deadline is not None and time.monotonic() > deadline:
        raise CommandError(MAX_TIME_MS_EXPIRED, "operation exceeded time limit")


def remaining() -> float | None:
    """Seconds left before the current command's deadline (``None``: no limit; never below 0)."""
    deadline = _deadline.get()
    return None if deadline is None else max(0.0, deadline - time.monotonic())
