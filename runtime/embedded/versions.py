"""Document version history, for reads at a point in time (snapshot reads and transactions).

Every committed document write is recorded as ``(cluster time, collection uuid, _id key,
previous version)`` in one time-ordered list (the previous version is ``None`` for an insert).
Stored documents are immutable, so a record only keeps alive the dictionary that the write
replaced. The state of a document at time ``T`` is then its current version unless a write
later than ``T`` touched it, in which case it is the previous version recorded by the *first*
write after ``T`` (``None``: the document did not exist at ``T``).

What is kept, and how it is bounded (MongoDB keeps ``minSnapshotHistoryWindowInSeconds``,
300 s by default):

* records older than :data:`HISTORY_WINDOW_S` seconds of cluster time are dropped (the window
  is ``setParameter minSnapshotHistoryWindowInSeconds``; records go when a later write comes);
* at most :data:`HISTORY_MAX_VERSIONS` records are kept: beyond that the oldest are dropped
  even inside the window (memory is bounded by that many superseded documents);
* dropping a record moves the *horizon* (the time of the newest dropped record) forward: a read
  at a time older than the horizon or than the window is ``SnapshotTooOld`` (239), and so is a
  later read of an open :class:`SnapshotView` whose unread records were dropped. Transactions
  (60 s lifetime) and snapshot cursors therefore never need to pin history themselves.

A server started on a data folder has no history from before the start: the horizon starts at
the latest cluster time recovered.

:class:`SnapshotView` is the small API readers use: ``resolve`` (the version of a document at
the view's time), ``changed`` (whether a write after that time touched it) and ``missing``
(documents that existed at that time but are no longer current, e.g. deleted since). A view
catches up with records appended after it was made lazily, on each call, so it can be used
across event-loop yields and getMores: it reads one consistent state for its whole life.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Iterator
from typing import Any

from bson.timestamp import Timestamp

from runtime.embedded.errors import CommandError, ErrorCode
from runtime.embedded.ordering import Key

HISTORY_WINDOW_S = 300
HISTORY_MAX_VERSIONS = 100_000

#: (cluster time as (seconds, increment), collection uuid, _id key, previous version)
Version = tuple[tuple[int, int], Any, Key, dict[str, Any] | None]


def _time_of(version: Version) -> tuple[int, int]:
    return version[0]


def too_old(at: Timestamp) -> CommandError:
    """``SnapshotTooOld`` (239) for a read at ``at``."""
    return CommandError(ErrorCode.SnapshotTooOld,
                        f"Read timestamp {at} is older than the oldest available timestamp.")


class VersionHistory:
    """The time-ordered record of document writes still needed by readers."""

    def __init__(self, horizon: Timestamp) -> None:
        self._versions: list[Version] = []
        self._start = 0  # records before this index were dropped (compacted now and then)
        self.dropped = 0  # how many records were dropped in all (absolute numbering)
        self.horizon = (horizon.time, horizon.inc)
        self.window_s = HISTORY_WINDOW_S
        self.max_versions = HISTORY_MAX_VERSIONS

    @property
    def end(self) -> int:
        """Absolute number of the next record (records are numbered from 0 since start)."""
        return self.dropped + len(self._versions) - self._start

    def record(self, versions: list[Version]) -> None:
        """Append the writes of one committed unit (times ascending) and drop what expired."""
        self._versions.extend(versions)
        live = len(self._versions) - self._start
        first = self._versions[self._start][0] if live else None
        cutoff = int(time.time()) - self.window_s
        if first is None or (first[0] >= cutoff and live <= self.max_versions):
            return
        start = self._start
        while start < len(self._versions) and (
                self._versions[start][0][0] < cutoff
                or len(self._versions) - start > self.max_versions):
            self.horizon = max(self.horizon, self._versions[start][0])
            start += 1
        self.dropped += start - self._start
        self._start = start
        if start > 4096 and start * 2 > len(self._versions):
            del self._versions[:start]
            self._start = 0

    def check(self, at: Timestamp, requested: bool) -> None:
        """Raise ``SnapshotTooOld`` (239) if the state at ``at`` can no longer be rebuilt, or
        (for a time the client ``requested``) if ``at`` is older than the history window."""
        key = (at.time, at.inc)
        if key < self.horizon or (requested and at.time < int(time.time()) - self.window_s):
            raise too_old(at)

    def position_after(self, at: Timestamp) -> int:
        """Absolute number of the first record later than ``at``."""
        index = bisect.bisect_right(self._versions, (at.time, at.inc), lo=self._start,
                                    key=_time_of)
        return self.dropped + index - self._start

    def since(self, position: int) -> list[Version]:
        """Records from absolute number ``position`` on (239 if some were dropped)."""
        if position < self.dropped:
            raise too_old(Timestamp(*self.horizon))
        return self._versions[self._start + position - self.dropped:]

    def view(self, at: Timestamp, requested: bool = False) -> SnapshotView:
        """A view of every document as it was at cluster time ``at`` (``requested``: a time
        the client chose, which must also be within the history window)."""
        self.check(at, requested)
        return SnapshotView(self, at)


class SnapshotView:
    """Documents as they were at one cluster time (see the module docstring)."""

    def __init__(self, history: VersionHistory, at: Timestamp) -> None:
        self.history = history
        self.at = at
        self._position = history.position_after(at)
        #: (collection uuid, _id key) -> the version at ``at``, for documents written since.
        self._before: dict[tuple[Any, Key], dict[str, Any] | None] = {}

    def _catch_up(self) -> None:
        history = self.history
        if self._position == history.end:
            return
        before = self._before
        for _ts, uuid, key, previous in history.since(self._position):
            before.setdefault((uuid, key), previous)
        self._position = history.end

    def resolve(self, uuid: Any, key: Key, current: dict[str, Any] | None
                ) -> dict[str, Any] | None:
        """The version at the view's time of the document whose current version is
        ``current`` (None: it did not exist then)."""
        self._catch_up()
        return self._before.get((uuid, key), current)

    def changed(self, uuid: Any, key: Key) -> bool:
        """Whether a write later than the view's time touched this document."""
        self._catch_up()
        return (uuid, key) in self._before

    def missing(self, uuid: Any, seen: set[Key]) -> Iterator[dict[str, Any]]:
        """Documents of the collection that existed at the view's time, written since, and not
        in ``seen`` (the ones a scan of the current documents may have missed)."""
        self._catch_up()
        for (coll_uuid, key), previous in list(self._before.items()):
            if previous is not None and coll_uuid == uuid and key not in seen:
                yield previous

    def untouched(self, uuid: Any) -> bool:
        """True when no document of the collection was written since the view's time (the
        current documents, in index order, are then exactly the view's)."""
        self._catch_up()
        return not any(coll_uuid == uuid for coll_uuid, _ in self._before)
