"""The change log (our oplog): every committed change, in commit order, with resume tokens.

Change streams read from here. Each entry gets a sequence number; its resume token encodes
``(clusterTime, txnOpIndex, sequence, kind)`` as fixed-width hex, so tokens compare like the log.
The log is bounded by size (``--oplog-size-mb``); resuming from a position that fell out of it is
``ChangeStreamHistoryLost`` (286).
"""

from __future__ import annotations

import asyncio
import bisect
import datetime
import itertools
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import bson
from bson.timestamp import Timestamp

from runtime.embedded.errors import CommandError, ErrorCode
from runtime.embedded.update_description import describe_update
from runtime.embedded.wire import CODEC, encoded_size

TOKEN_EVENT = 0
TOKEN_INVALIDATE = 1
TOKEN_HIGH_WATER_MARK = 2
_TOKEN_LENGTH = 8 + 8 + 8 + 16 + 2


@dataclass
class ResumePosition:
    """A decoded resume token."""

    cluster_time: Timestamp
    txn_index: int
    seq: int
    kind: int


def encode_token(cluster_time: Timestamp, txn_index: int, seq: int, kind: int) -> dict[str, Any]:
    """The ``{_data: hex}`` resume token for a log position."""
    return {"_data": _position_hex(cluster_time, txn_index, seq) + _kind_hex(kind)}


def _position_hex(cluster_time: Timestamp, txn_index: int, seq: int) -> str:
    return f"{cluster_time.time:08X}{cluster_time.inc:08X}{txn_index:08X}{seq:016X}"


_KIND_HEX = {kind: f"{kind:02X}" for kind in (TOKEN_EVENT, TOKEN_INVALIDATE,
                                               TOKEN_HIGH_WATER_MARK)}


def _kind_hex(kind: int) -> str:
    return _KIND_HEX.get(kind) or f"{kind:02X}"


def decode_token(token: Any) -> ResumePosition:
    """Parse a resume token; malformed tokens are ``InvalidResumeToken`` (260)."""
    data = token.get("_data") if isinstance(token, dict) else None
    if not isinstance(data, str) or len(data) != _TOKEN_LENGTH:
        raise CommandError(ErrorCode.InvalidResumeToken, f"invalid resume token: {token!r}")
    try:
        return ResumePosition(
            cluster_time=Timestamp(int(data[0:8], 16), int(data[8:16], 16)),
            txn_index=int(data[16:24], 16),
            seq=int(data[24:40], 16),
            kind=int(data[40:42], 16),
        )
    except ValueError as exc:
        raise CommandError(ErrorCode.InvalidResumeToken,
                           f"invalid resume token: {token!r}") from exc


@dataclass
class ChangeEntry:
    """One committed change as the log keeps it (images included, event shape decided later)."""

    op: str
    db: str
    coll: str | None
    cluster_time: Timestamp
    wall_time: datetime.datetime
    txn_index: int = 0
    seq: int = 0
    document_key: dict[str, Any] | None = None
    post_image: dict[str, Any] | None = None
    pre_image: dict[str, Any] | None = None
    images_enabled: bool = False
    update_description: dict[str, Any] | None = None
    to: dict[str, Any] | None = None
    operation_description: dict[str, Any] | None = None
    state_before_change: dict[str, Any] | None = None
    collection_uuid: Any = None
    lsid: dict[str, Any] | None = None
    txn_number: Any = None
    size: int = field(default=0, compare=False)
    #: The document before an update, until :meth:`described` turns it into the description
    #: (computed only if a stream or the write-ahead log asks for it).
    before: dict[str, Any] | None = field(default=None, compare=False, repr=False)
    #: The hex of this entry's position in its tokens, once one was encoded: every stream
    #: that shows the entry encodes the same token (set only once the entry is in the log).
    position_hex: str | None = field(default=None, compare=False, repr=False)

    def described(self) -> dict[str, Any] | None:
        """The ``updateDescription`` of an update entry (computed on first use)."""
        if self.update_description is None and self.before is not None:
            self.update_description = describe_update(self.before, self.post_image or {})
            self.before = None
        return self.update_description

    def token(self, kind: int = TOKEN_EVENT) -> dict[str, Any]:
        """This entry's resume token (a new document each time)."""
        position = self.position_hex
        if position is None:
            position = self.position_hex = _position_hex(self.cluster_time, self.txn_index,
                                                         self.seq)
        return {"_data": position + _kind_hex(kind)}

    def to_document(self) -> dict[str, Any]:
        """BSON-ready form, for the write-ahead log."""
        self.described()
        doc = {k: v for k, v in self.__dict__.items()
               if k not in ("size", "before", "position_hex") and v is not None}
        return doc

    @classmethod
    def from_document(cls, doc: dict[str, Any]) -> ChangeEntry:
        """Inverse of :meth:`to_document`."""
        fields = {k: v for k, v in doc.items() if k in cls.__dataclass_fields__}
        fields.setdefault("coll", None)  # database-level entries (dropDatabase) have none
        entry = cls(**fields)
        entry.size = len(bson.encode(doc, codec_options=CODEC))
        return entry


#: What an entry costs beyond its documents (names, times, the document key, the description).
ENTRY_OVERHEAD_BYTES = 200


def estimated_size(entry: ChangeEntry, post_image_size: int | None = None) -> int:
    """An entry's size for the history bound: its images encoded, plus a fixed overhead (the
    update description is not computed for this: it is never larger than the post-image).
    ``post_image_size``: the post-image's encoded size when the caller measured it already."""
    size = ENTRY_OVERHEAD_BYTES
    if post_image_size is not None:
        size += post_image_size
    elif entry.post_image is not None:
        size += encoded_size(entry.post_image)
    if entry.pre_image is not None:
        size += encoded_size(entry.pre_image)
    return size


def _release(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


def _seq_of(entry: ChangeEntry) -> int:
    return entry.seq


def _time_of(entry: ChangeEntry) -> tuple[int, int]:
    return entry.cluster_time.time, entry.cluster_time.inc


class ChangeLog:
    """A bounded, in-order log of :class:`ChangeEntry` with awaitable appends."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.entries: deque[ChangeEntry] = deque()
        self.last_seq = 0
        self.last_time = Timestamp(0, 0)
        self.evicted_through = 0  # every entry with seq <= this is gone
        self.evicted_time = Timestamp(0, 0)  # cluster time of the last evicted entry, if known
        self._bytes = 0
        self._high_water_mark: tuple[tuple[Timestamp, int] | None, str] = (None, "")
        #: Futures of the reads waiting for an append (see :meth:`wait`).
        self._waiters: set[asyncio.Future[None]] = set()

    def append(self, entries: list[ChangeEntry], assign: bool = True) -> None:
        """Add committed entries (one command or one transaction) and wake waiting streams."""
        for entry in entries:
            if assign:
                self.last_seq += 1
                entry.seq = self.last_seq
            else:
                self.last_seq = max(self.last_seq, entry.seq)
            if not entry.size:
                entry.size = estimated_size(entry)
            self.entries.append(entry)
            self._bytes += entry.size
            self.last_time = entry.cluster_time
        while self._bytes > self.max_bytes and len(self.entries) > 1:
            gone = self.entries.popleft()
            self._bytes -= gone.size
            self.evicted_through = gone.seq
            self.evicted_time = gone.cluster_time
        if entries and self._waiters:
            waiters, self._waiters = self._waiters, set()
            for waiter in waiters:
                _release(waiter)

    def reset_notifier(self) -> None:
        """Forget waiting reads (of an earlier event loop: the log may be built, and recovered,
        before the server's loop starts)."""
        self._waiters = set()

    async def wait(self, timeout: float) -> None:
        """Wait until something is appended, or ``timeout`` seconds pass.

        A plain future released by :meth:`append` or a timer: no task per wait, as
        ``asyncio.wait_for`` would create (every idle change-stream getMore waits here).
        """
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        self._waiters.add(waiter)
        timer = loop.call_later(max(0.0, timeout), _release, waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            self._waiters.discard(waiter)

    def _index_after(self, seq: int) -> int:
        """The position of the first entry with a sequence number greater than ``seq``.

        Sequence numbers are usually consecutive (assigned on append): then it is arithmetic.
        A deque is slow to index in the middle, so bisecting a long log is the fallback.
        """
        first = self.entries[0].seq
        if self.entries[-1].seq - first == len(self.entries) - 1:
            return min(len(self.entries), max(0, seq - first + 1))
        return bisect.bisect_right(self.entries, seq, key=_seq_of)

    def get(self, seq: int) -> ChangeEntry | None:
        """The entry with sequence number ``seq``, if the log still holds it."""
        if not self.entries:
            return None
        index = self._index_after(seq - 1)
        if index < len(self.entries) and self.entries[index].seq == seq:
            return self.entries[index]
        return None

    def after(self, seq: int) -> Iterator[ChangeEntry]:
        """Entries with a sequence number greater than ``seq``, oldest first.

        The caller must not append while it iterates (nothing awaits in between). Readers
        are usually near the end of the log: the entries are then taken from the tail, so
        a read costs what it returns, not the length of the log.
        """
        if not self.entries or seq >= self.last_seq:
            return iter(())
        start = self._index_after(seq)
        count = len(self.entries) - start
        if start <= count:
            return itertools.islice(self.entries, start, None)
        tail = list(itertools.islice(reversed(self.entries), count))
        tail.reverse()
        return iter(tail)

    def require_available(self, seq: int) -> None:
        """Raise 286 if the entries after ``seq`` are no longer all in the log."""
        if seq < self.evicted_through:
            raise CommandError(ErrorCode.ChangeStreamHistoryLost,
                "Resume of change stream was not possible, as the resume point may no longer be "
                "in the oplog.",
                labels=["NonResumableChangeStreamError"],
            )

    def seq_at_time(self, ts: Timestamp) -> int:
        """The position just before the first entry at or after ``ts`` (inclusive start).

        ``ChangeStreamHistoryLost`` (286) when entries at or after ``ts`` may have been evicted.
        """
        key = (ts.time, ts.inc)
        index = bisect.bisect_left(self.entries, key, key=_time_of)
        if self.evicted_through:
            evicted = (self.evicted_time.time, self.evicted_time.inc)
            if key <= evicted or (evicted == (0, 0) and index == 0):
                self.require_available(-1)
        if index < len(self.entries):
            return self.entries[index].seq - 1
        return self.last_seq

    def high_water_mark(self) -> dict[str, Any]:
        """Token meaning "everything in the log so far has been seen" (a new document each
        time; its text is kept while the log's end stays where it is: idle streams ask for
        it on every read)."""
        position = (self.last_time, self.last_seq)
        if self._high_water_mark[0] != position:
            self._high_water_mark = (position, encode_token(
                self.last_time, 0xFFFFFFFF, self.last_seq, TOKEN_HIGH_WATER_MARK)["_data"])
        return {"_data": self._high_water_mark[1]}
