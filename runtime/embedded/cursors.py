"""Open cursors of ``find``, ``aggregate`` and ``listX`` commands, served by ``getMore``.

Under ``runtime db --auth`` a cursor belongs to whoever opened it, as on mongod 7.0: the
user of the connection and the command's session (``lsid``). A ``getMore`` from another
session is Unauthorized (13) "Cursor session id (...) is not the same as the operation
context's session id (...)", from another user without sessions "cursor id N was not created
by the authenticated user"; ``killCursors`` of another user's cursor is Unauthorized unless
the caller may kill any cursor (clusterAdmin, root). A refused request leaves the cursor as
it was.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import bson
from bson.int64 import Int64

from runtime.embedded.auth import current_caller
from runtime.embedded.errors import CommandError, ErrorCode
from runtime.embedded.sessions import session_id
from runtime.embedded.wire import CODEC

if TYPE_CHECKING:
    from runtime.embedded.scans import Scan

DEFAULT_FIRST_BATCH = 101
MAX_BATCH_BYTES = 16 * 1024 * 1024 - 16 * 1024


@dataclass(frozen=True)
class CursorOwner:
    """Who opened a cursor under ``--auth``: the user and the session (``lsid.id``)."""

    user: tuple[str, str] | None  # (db, name)
    session: bytes | None

    def session_text(self) -> str:
        """The session as mongod names it in errors: ``<uuid> - <user digest> -  - ``."""
        if self.session is None:
            return "none"
        name = f"{self.user[1]}@{self.user[0]}" if self.user is not None else ""
        digest = base64.b64encode(hashlib.sha256(name.encode()).digest()).decode() \
            if self.user is not None else ""
        return f"{uuid.UUID(bytes=self.session)} - {digest} -  - "


def current_owner() -> CursorOwner | None:
    """The owner a cursor opened by the current command gets (None without ``--auth``)."""
    caller = current_caller()
    if caller is None:
        return None
    return CursorOwner(caller.user, session_id(caller.lsid))


@dataclass
class QueryCursor:
    """A cursor over already-computed results (or a lazy iterator of them)."""

    cursor_id: int
    ns: str
    results: Iterator[dict[str, Any]]
    exhausted: bool = False
    owner: CursorOwner | None = None

    def next_batch(self, batch_size: int | None) -> list[dict[str, Any]]:
        """Up to ``batch_size`` documents (and under 16 MiB); marks the cursor exhausted."""
        batch: list[dict[str, Any]] = []
        size = 0
        limit = batch_size if batch_size and batch_size > 0 else None
        for doc in self.results:
            batch.append(doc)
            size += len(bson.encode(doc, codec_options=CODEC))
            if (limit is not None and len(batch) >= limit) or size > MAX_BATCH_BYTES:
                break
        else:
            self.exhausted = True
        return batch


@dataclass
class ScanCursor:
    """A cursor whose results a :class:`~runtime.embedded.scans.Scan` computes slice by slice
    (each ``getMore`` continues the scan, yielding the event loop between slices)."""

    cursor_id: int
    ns: str
    scan: Scan
    owner: CursorOwner | None = None

    @property
    def exhausted(self) -> bool:
        """Whether every result was returned."""
        return self.scan.exhausted

    async def next_batch(self, batch_size: int | None) -> list[dict[str, Any]]:
        """Up to ``batch_size`` documents (and under 16 MiB). A second ``getMore`` while one is
        still running is CursorInUse (143), as on mongod."""
        scan = self.scan
        if scan.busy:
            raise CommandError(ErrorCode.CursorInUse,
                               f"cursor id {self.cursor_id} is already in use")
        scan.busy = True
        try:
            limit = batch_size if batch_size and batch_size > 0 else None
            batch = await scan.take(limit, MAX_BATCH_BYTES)
        finally:
            scan.busy = False
        if not scan.exhausted:
            scan.freeze()
        return batch


class CursorRegistry:
    """Cursor ids to cursors."""

    def __init__(self) -> None:
        self._ids = itertools.count(1001)
        self.cursors: dict[int, Any] = {}

    def new_id(self) -> int:
        """A fresh, never reused cursor id."""
        return next(self._ids)

    def add(self, cursor: Any) -> None:
        """Register a cursor that has more results, owned by the current command's caller."""
        cursor.owner = current_owner()
        self.cursors[cursor.cursor_id] = cursor

    def get(self, cursor_id: Any, ns: str) -> Any:
        """The cursor for a ``getMore``: 43 CursorNotFound if unknown; 13 Unauthorized if
        opened by another session or user, or for another namespace (checked in that order,
        as on mongod)."""
        cursor = self.cursors.get(int(cursor_id)) if isinstance(cursor_id, int) else None
        if cursor is None:
            raise CommandError(ErrorCode.CursorNotFound, f"cursor id {cursor_id} not found")
        caller = current_owner()
        opener: CursorOwner | None = cursor.owner
        if caller is not None and opener is not None and caller != opener:
            if opener.session is None and caller.session is None:
                raise CommandError(ErrorCode.Unauthorized,
                                   f"cursor id {cursor_id} was not created by the "
                                   "authenticated user")
            raise CommandError(ErrorCode.Unauthorized,
                               f"Cursor session id ({opener.session_text()}) is not the "
                               "same as the operation context's session id "
                               f"({caller.session_text()})")
        if cursor.ns != ns and not ns.endswith(".$cmd.aggregate"):
            raise CommandError(ErrorCode.Unauthorized,
                               f"Requested getMore on namespace '{ns}', but cursor belongs "
                               f"to a different namespace {cursor.ns}")
        return cursor

    def check_kill(self, cursor_id: int, db: str, kill_any: bool) -> None:
        """Unauthorized (13) unless the caller may kill the cursor: its own (whatever the
        session), or any with ``kill_any``; an unknown cursor passes (killCursors reports it
        under ``cursorsNotFound``)."""
        cursor = self.cursors.get(int(cursor_id))
        caller = current_owner()
        if cursor is None or kill_any or caller is None or cursor.owner is None \
                or caller.user == cursor.owner.user:
            return
        raise CommandError(ErrorCode.Unauthorized,
                           f"not authorized on {db} to execute command killCursors: "
                           f"cursor id {cursor_id} on {cursor.ns} was not created by the "
                           "authenticated user; only its owner, or a user with a role such "
                           "as clusterAdmin or root, may kill it")

    def remove(self, cursor_id: int) -> bool:
        """Close a cursor; returns whether it existed."""
        cursor = self.cursors.pop(int(cursor_id), None)
        if isinstance(cursor, ScanCursor):
            cursor.scan.close()
        return cursor is not None


def first_batch_reply(registry: CursorRegistry, ns: str, results: Iterator[dict[str, Any]],
                      batch_size: int | None, single_batch: bool = False) -> dict[str, Any]:
    """Cursor reply for a command's first batch, registering the cursor if more remain."""
    cursor = QueryCursor(registry.new_id(), ns, results)
    size = DEFAULT_FIRST_BATCH if batch_size is None else batch_size
    batch = cursor.next_batch(size) if size != 0 else []
    cursor_id = 0
    if not cursor.exhausted and not single_batch:
        registry.add(cursor)
        cursor_id = cursor.cursor_id
    return {"cursor": {"firstBatch": batch, "id": Int64(cursor_id), "ns": ns}, "ok": 1.0}


async def scan_first_batch_reply(registry: CursorRegistry, ns: str, scan: Scan,
                                 batch_size: int | None,
                                 single_batch: bool = False) -> dict[str, Any]:
    """:func:`first_batch_reply` for a :class:`~runtime.embedded.scans.Scan`: the first batch
    is read slice by slice; an open cursor continues the same scan on ``getMore``."""
    size = DEFAULT_FIRST_BATCH if batch_size is None else batch_size
    batch = await scan.take(size if size > 0 else None, MAX_BATCH_BYTES) if size != 0 else []
    cursor_id = 0
    if not scan.exhausted and not single_batch:
        cursor = ScanCursor(registry.new_id(), ns, scan)
        registry.add(cursor)
        cursor_id = cursor.cursor_id
        scan.freeze()
    else:
        scan.close()
    return {"cursor": {"firstBatch": batch, "id": Int64(cursor_id), "ns": ns}, "ok": 1.0}
