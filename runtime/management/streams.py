"""Change-stream positions: read a database planner's state and request a reset.

The leader's planner of each database saves its stream position in ``reactgen_meta``
``planner:<db>``. A reset request (``resetRequest: {at, by}`` on that document) makes the
running leader reopen that database's change stream at "now" and queue a reconciliation scan
of every reactor of the database, so that nothing written meanwhile is missed: the scan plans
every existing document from its current state (a no-op where the task is up to date). Use it
when the saved position is known to be bad (e.g. after restoring the database from a backup).
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import Any

from runtime.management.errors import NotFound
from runtime.management.scope import Scope, naive_utc
from runtime.meta import MetaStore, planner_id


def _date(value: Any) -> datetime.datetime | None:
    value = naive_utc(value)
    return value if isinstance(value, datetime.datetime) else None


@dataclass(frozen=True)
class StreamState:
    """A database planner's saved state (``planner:<db>``)."""

    database: str
    has_position: bool
    """Whether a resume token is saved."""
    updated_at: datetime.datetime | None
    leader_token: int | None
    reset_requested_at: datetime.datetime | None
    """A reset request not yet picked up by the leader."""
    reset_requested_by: str | None


async def stream_state(scope: Scope, database: str | None = None) -> StreamState:
    """The saved state of a database's planner (default: the runtime database); raises
    :class:`NotFound` if no planner ever ran on it."""
    name = database or scope.db.name
    doc = await scope.meta.find_one({"_id": planner_id(name)})
    if doc is None:
        raise NotFound(f"no planner state for database {name!r} (planner:{name} is missing in "
                       f"{scope.db.name}.reactgen_meta): no leader has planned it yet")
    return _state(name, doc)


def _state(name: str, doc: dict[str, Any]) -> StreamState:
    request = doc.get("resetRequest")
    token = doc.get("leaderToken")
    return StreamState(name, isinstance(doc.get("resumeToken"), dict),
                       _date(doc.get("updatedAt")),
                       token if isinstance(token, int) else None,
                       _date(request.get("at")) if isinstance(request, dict) else None,
                       str(request.get("by")) if isinstance(request, dict) else None)


async def reset_stream(scope: Scope, database: str | None = None,
                       by: str | None = None) -> StreamState:
    """Request a reset of a database's stream position (default: the runtime database).

    Writes ``resetRequest: {at: $$NOW, by}`` on ``planner:<db>``; the running leader picks it
    up, reopens the stream at "now" and queues a scan of every reactor of the database. Raises
    :class:`NotFound` if no planner ever ran on that database (nothing to reset).
    """
    name = database or scope.db.name
    doc = await MetaStore(scope.db).request_position_reset(name, by or scope.actor)
    if doc is None:
        raise NotFound(f"no planner state for database {name!r} (planner:{name} is missing in "
                       f"{scope.db.name}.reactgen_meta): no leader has planned it yet, so "
                       "there is no position to reset")
    return _state(name, doc)
