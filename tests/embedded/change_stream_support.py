"""Reading change streams in tests without sleeping (shared by the change-stream test files).

``try_next`` issues one ``getMore`` that the server holds until a change commits or the await
time passes; the helpers repeat it under a generous deadline.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from pymongo.change_stream import ChangeStream

Change = dict[str, Any]
Stream = ChangeStream[dict[str, Any]]

#: Upper bound for anything that should happen "soon"; never a sleep, only a deadline.
DEADLINE_S = 30.0
#: getMore await used when reading events that are (about to be) committed.
AWAIT_MS = 500


def next_change(stream: Stream, timeout: float = DEADLINE_S) -> Change:
    """The stream's next event: one awaiting ``getMore`` per attempt, within ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        change = stream.try_next()
        if change is not None:
            return change
        assert stream.alive, "the change stream closed without another event"
        assert time.monotonic() < deadline, f"no change event within {timeout:g}s"


def changes(stream: Stream, count: int) -> list[Change]:
    """The next ``count`` events."""
    return [next_change(stream) for _ in range(count)]


def expect_sentinel(stream: Stream, sentinel: Mapping[str, Any]) -> Change:
    """Read up to the insert of ``sentinel`` and assert nothing came before it."""
    change = next_change(stream)
    assert change["operationType"] == "insert", change
    assert change["documentKey"] == {"_id": sentinel["_id"]}, change
    return change
