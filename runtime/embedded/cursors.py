"""Open cursors of ``find``, ``aggregate`` and ``listX`` commands, served by ``getMore``."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import bson
from bson.int64 import Int64

from runtime.embedded.errors import CommandError
from runtime.embedded.wire import CODEC

DEFAULT_FIRST_BATCH = 101
MAX_BATCH_BYTES = 16 * 1024 * 1024 - 16 * 1024


@dataclass
class QueryCursor:
    """A cursor over already-computed results (or a lazy iterator of them)."""

    cursor_id: int
    ns: str
    results: Iterator[dict[str, Any]]
    lsid: Any = None
    exhausted: bool = False

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


class CursorRegistry:
    """Cursor ids to cursors."""

    def __init__(self) -> None:
        self._ids = itertools.count(1001)
        self.cursors: dict[int, Any] = {}

    def new_id(self) -> int:
        """A fresh, never reused cursor id."""
        return next(self._ids)

    def add(self, cursor: Any) -> None:
        """Register a cursor that has more results."""
        self.cursors[cursor.cursor_id] = cursor

    def get(self, cursor_id: Any, ns: str) -> Any:
        """The cursor for a ``getMore``; 43 CursorNotFound if unknown or for another namespace."""
        cursor = self.cursors.get(int(cursor_id)) if isinstance(cursor_id, int) else None
        if cursor is None:
            raise CommandError(43, f"cursor id {cursor_id} not found")
        if cursor.ns != ns and not ns.endswith(".$cmd.aggregate"):
            raise CommandError(13, f"Requested getMore on namespace '{ns}', but cursor belongs "
                               f"to a different namespace {cursor.ns}")
        return cursor

    def remove(self, cursor_id: int) -> bool:
        """Close a cursor; returns whether it existed."""
        return self.cursors.pop(int(cursor_id), None) is not None


def first_batch_reply(registry: CursorRegistry, ns: str, results: Iterator[dict[str, Any]],
                      batch_size: int | None, single_batch: bool = False,
                      lsid: Any = None) -> dict[str, Any]:
    """Cursor reply for a command's first batch, registering the cursor if more remain."""
    cursor = QueryCursor(registry.new_id(), ns, results, lsid)
    size = DEFAULT_FIRST_BATCH if batch_size is None else batch_size
    batch = cursor.next_batch(size) if size != 0 else []
    cursor_id = 0
    if not cursor.exhausted and not single_batch:
        registry.add(cursor)
        cursor_id = cursor.cursor_id
    return {"cursor": {"firstBatch": batch, "id": Int64(cursor_id), "ns": ns}, "ok": 1.0}
