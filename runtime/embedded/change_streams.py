"""Change streams: the ``$changeStream`` stage's cursors, which entries they see, and reading.

A stream is a position in the change log plus a scope (collection, database or cluster) and
options. ``getMore`` reads entries after the position, turns each one that is in scope into the
event document drivers expect and runs the user's further stages on it (see
:mod:`.change_events`), and, when nothing is there, waits on the log's append notification up
to ``maxTimeMS``: no polling inside the server. A drop or rename of the watched namespace ends
the stream with an invalidate event.

Document changes take a faster way when the stream's stages start with ``$match``: the filter
is decided per kind of entry (scope included, remembered on the cursor) and on the entry itself
(see :mod:`.change_filters`), and the event is built only for entries that pass.

The stream's ``postBatchResumeToken`` is the token of the last event returned or, past entries
that produced no event, a high-water-mark token for the position; both compare like the log.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from bson.int64 import Int64
from bson.timestamp import Timestamp

from runtime.embedded import change_filters
from runtime.embedded.change_events import (
    ERROR_FATAL,
    NON_RESUMABLE,
    VIEW_EVENTS,
    apply_stages,
    build_event,
    fast_event,
)
from runtime.embedded.change_stream_options import validate_options, validate_stages
from runtime.embedded.changelog import (
    TOKEN_EVENT,
    TOKEN_HIGH_WATER_MARK,
    TOKEN_INVALIDATE,
    ChangeEntry,
    ChangeLog,
    ResumePosition,
    decode_token,
    encode_token,
)
from runtime.embedded.datastore import INTERNAL_DATABASES
from runtime.embedded.errors import CommandError, ErrorCode
from runtime.embedded.storage import Catalog

if TYPE_CHECKING:
    from runtime.embedded.cursors import CursorOwner

EXPANDED_EVENTS = frozenset({"create", "createIndexes", "dropIndexes", "modify"})
DEFAULT_AWAIT_MS = 1000
#: The longest one getMore waits for events, whatever its ``maxTimeMS`` (which may be up to
#: 2^31-1 ms): it then answers with an empty batch and the driver simply asks again, so a
#: forgotten connection or a hostile value never holds a server task for days.
MAX_AWAIT_MS = 10_000

ERROR_CLUSTER_STREAM = ErrorCode.InvalidNamespace
#: The operations of document changes: whether a stream sees them depends only on their
#: namespace, and they never invalidate a stream.
DOCUMENT_OPS = frozenset({"insert", "update", "replace", "delete"})


@dataclass
class ChangeStreamCursor:
    """An open change stream."""

    cursor_id: int
    ns: str
    db: str
    coll: str | None  # None: database or cluster stream
    cluster: bool
    position: int  # sequence number of the last log entry this stream has consumed
    position_token: dict[str, Any]
    full_document: str = "default"
    before_change: str = "off"
    expanded: bool = False
    stages: list[dict[str, Any]] = field(default_factory=list)
    #: the trailing ``$project`` compiled (None: not yet tried; False: needs the engine)
    projection: change_filters.InclusionProjection | Literal[False] | None = None
    #: whether events need ``updateDescription`` (None: not decided yet)
    wants_description: bool | None = None
    #: the leading ``$match`` stages in their fast form (None: not yet tried; False: general)
    entry_filter: change_filters.EntryFilter | Literal[False] | None = None
    #: the stages after the leading ``$match`` stages (set with ``entry_filter``)
    rest_stages: list[dict[str, Any]] = field(default_factory=list)
    #: per kind of document change (operation, database, collection): whether its entries
    #: are skipped (False), all pass the filter (True), or what decides (see :mod:`.change_filters`)
    verdicts: dict[tuple[str, str, str | None], change_filters.Verdict] = field(
        default_factory=dict)
    closed: bool = False
    # startAtOperationTime: entries committed before it are skipped even if they follow the
    # position (the time may lie in the future).
    start_time: Timestamp | None = None
    # An entry that invalidates this stream whose event was delivered but whose invalidate was
    # not yet (the batch was full, or the stream resumed right after it).
    pending_invalidate: ChangeEntry | None = None
    #: who opened it under ``--auth`` (set by the cursor registry; see :mod:`.cursors`)
    owner: CursorOwner | None = None


def _resume_point(position: ResumePosition, token: Any, log: ChangeLog) -> ChangeEntry | None:
    """Check that the log can resume after ``position``; returns its entry when still held."""
    if position.seq > log.last_seq:
        raise _token_not_found(token)
    log.require_available(position.seq)
    entry = log.get(position.seq)
    if position.kind == TOKEN_HIGH_WATER_MARK or entry is None:
        return entry
    if entry.cluster_time != position.cluster_time or entry.txn_index != position.txn_index:
        # A token of another log (e.g. of an earlier in-memory server): its position means
        # nothing here, and resuming from it would silently skip or repeat changes.
        raise _token_not_found(token)
    return entry


def _token_not_found(token: Any) -> CommandError:
    return CommandError(ERROR_FATAL, f"cannot resume stream; the resume token was not found. "
                        f"{token!r}", labels=[NON_RESUMABLE])


def open_stream(cursor_id: int, db: str, coll: str | None, pipeline: list[dict[str, Any]],
                log: ChangeLog) -> ChangeStreamCursor:
    """Validate a change-stream pipeline and create its cursor at the right log position."""
    spec = validate_options(pipeline[0]["$changeStream"])
    cluster = bool(spec.get("allChangesForCluster"))
    if cluster and (db != "admin" or coll is not None):
        raise CommandError(ERROR_CLUSTER_STREAM, "A $changeStream with 'allChangesForCluster:true' "
                           "may only be opened on the 'admin' database, and with no collection")
    if db == "admin" and not cluster:
        raise CommandError(ERROR_CLUSTER_STREAM, "$changeStream may not be opened on the internal "
                           "admin database")
    stages = pipeline[1:]
    validate_stages(stages)
    start_time: Timestamp | None = None
    resumed_entry: ChangeEntry | None = None
    if "resumeAfter" in spec or "startAfter" in spec:
        token: dict[str, Any] = spec.get("resumeAfter", spec.get("startAfter")) or {}
        position = decode_token(token)
        if "resumeAfter" in spec and position.kind == TOKEN_INVALIDATE:
            raise CommandError(ErrorCode.InvalidResumeToken,
                               "Attempting to resume a change stream using 'resumeAfter' is "
                               "not allowed from an invalidate notification.")
        entry = _resume_point(position, token, log)
        if position.kind == TOKEN_EVENT:
            resumed_entry = entry
        start, start_token = position.seq, dict(token)
    elif "startAtOperationTime" in spec:
        start_time = spec["startAtOperationTime"]
        assert isinstance(start_time, Timestamp)
        start = log.seq_at_time(start_time)
        # Sorts after every entry before the start time and before every entry from it on.
        start_token = encode_token(start_time, 0, start, TOKEN_HIGH_WATER_MARK)
    else:
        start, start_token = log.last_seq, log.high_water_mark()
    ns = f"{db}.{coll}" if coll is not None else f"{db}.$cmd.aggregate"
    stream = ChangeStreamCursor(
        cursor_id=cursor_id,
        ns=ns,
        db=db,
        coll=coll,
        cluster=cluster,
        position=start,
        position_token=start_token,
        full_document=spec.get("fullDocument", "default"),
        before_change=spec.get("fullDocumentBeforeChange", "off"),
        expanded=bool(spec.get("showExpandedEvents", False)),
        stages=stages,
        start_time=start_time,
    )
    if resumed_entry is not None and _in_scope(stream, resumed_entry) and _invalidates(
        stream, resumed_entry
    ):
        # Resuming right after a drop or rename of the watched namespace: the invalidate that
        # followed it is still owed.
        stream.pending_invalidate = resumed_entry
    return stream


def _namespace_of_target(entry: ChangeEntry) -> tuple[Any, Any]:
    to = entry.to or {}
    return to.get("db"), to.get("coll")


def _in_scope(stream: ChangeStreamCursor, entry: ChangeEntry) -> bool:
    if entry.db in INTERNAL_DATABASES:
        return False
    if entry.op in VIEW_EVENTS:
        return stream.expanded and (stream.cluster or stream.coll is None) and (
            stream.cluster or entry.db == stream.db)
    if entry.op in EXPANDED_EVENTS and not stream.expanded:
        return False
    if stream.cluster:
        return True
    renamed_to = _namespace_of_target(entry) if entry.op == "rename" else (None, None)
    if stream.coll is None:
        return entry.db == stream.db or renamed_to[0] == stream.db
    if entry.op == "dropDatabase":
        return False
    return (entry.db, entry.coll) == (stream.db, stream.coll) or renamed_to == (stream.db,
                                                                                 stream.coll)


def _invalidates(stream: ChangeStreamCursor, entry: ChangeEntry) -> bool:
    if stream.cluster:
        return False
    if stream.coll is None:
        return entry.op == "dropDatabase" and entry.db == stream.db
    if entry.op == "drop":
        return (entry.db, entry.coll) == (stream.db, stream.coll)
    if entry.op == "rename":
        # Renaming the watched collection away, or another collection onto its name.
        return (entry.db, entry.coll) == (stream.db, stream.coll) or _namespace_of_target(
            entry) == (stream.db, stream.coll)
    return False


def _before_start(stream: ChangeStreamCursor, entry: ChangeEntry) -> bool:
    start = stream.start_time
    return start is not None and (entry.cluster_time.time, entry.cluster_time.inc) < (
        start.time, start.inc)


def _invalidate(stream: ChangeStreamCursor, entry: ChangeEntry,
                variables: dict[str, Any]) -> dict[str, Any] | None:
    """Close the stream with the invalidate that follows ``entry``; the event unless filtered."""
    event: dict[str, Any] = {
        "_id": entry.token(TOKEN_INVALIDATE),
        "operationType": "invalidate",
        "clusterTime": entry.cluster_time,
        "wallTime": entry.wall_time,
    }
    result = apply_stages(stream, event, variables)
    stream.position_token = entry.token(TOKEN_INVALIDATE)
    stream.pending_invalidate = None
    stream.closed = True
    return result


def _entry_filter(stream: ChangeStreamCursor) -> change_filters.EntryFilter | None:
    """The stream's leading ``$match`` stages in their fast form, or None (general path:
    also for required images, whose absence is an error even for events filtered out)."""
    if stream.entry_filter is None:
        stream.entry_filter = False
        if stream.full_document != "required" and stream.before_change != "required":
            leading = 0
            for stage in stream.stages:
                if "$match" not in stage or not isinstance(stage["$match"], dict):
                    break
                leading += 1
            found = change_filters.entry_filter([s["$match"] for s in stream.stages[:leading]])
            if found is not None:
                stream.entry_filter = found
                stream.rest_stages = stream.stages[leading:]
    return stream.entry_filter or None


def _verdict(stream: ChangeStreamCursor, fast: change_filters.EntryFilter,
             entry: ChangeEntry) -> change_filters.Verdict:
    """Whether a document change of this kind is outside the stream or filtered out (False),
    passes the leading ``$match`` stages (True), or what decides (remembered per kind)."""
    kind = (entry.op, entry.db, entry.coll)
    verdict = stream.verdicts.get(kind)
    if verdict is None:
        verdict = fast.decide(entry.op, entry.db, entry.coll) if _in_scope(stream, entry) \
            else False
        if len(stream.verdicts) >= change_filters.MAX_KINDS:
            stream.verdicts.clear()
        stream.verdicts[kind] = verdict
    return verdict


SCAN_CHUNK = 5_000
"""Log entries one read of a change stream looks at before it yields to other clients."""


def collect(stream: ChangeStreamCursor, log: ChangeLog, catalog: Catalog,
            batch_size: int | None, variables: dict[str, Any]) -> list[dict[str, Any]]:
    """Events available now after the stream's position (advancing it).

    ``batch_size`` None means no limit; 0 gives an empty batch (an aggregate's first batch).
    An error (a missing required image, a modified ``_id``) leaves the position before the
    entry that caused it.
    """
    batch: list[dict[str, Any]] = []
    limit = None if batch_size is None else max(0, batch_size)
    if stream.closed:
        return batch
    if stream.pending_invalidate is None:
        log.require_available(stream.position)
        fast = _entry_filter(stream)
        timed = stream.start_time is not None
        # The entry after which the stream's token is a high-water mark, when no event
        # followed it: the token is encoded once, when the read stops (even by an error).
        passed: ChangeEntry | None = None
        try:
            for scanned, entry in enumerate(log.after(stream.position)):
                if limit is not None and len(batch) >= limit:
                    break
                if scanned >= SCAN_CHUNK:
                    # A long backlog that the stream filters out is read in chunks, so other
                    # clients are served in between (the getMore goes on after yielding).
                    break
                before_start = timed and _before_start(stream, entry)
                in_scope = False  # (only the general path may invalidate)
                if fast is not None and entry.op in DOCUMENT_OPS:
                    # Never invalidates; in or out of scope by its namespace (see _verdict).
                    event = None if before_start else fast_event(
                        stream, _verdict(stream, fast, entry), entry, catalog, variables)
                else:
                    in_scope = _in_scope(stream, entry) and not before_start
                    event = apply_stages(stream, build_event(stream, entry, catalog),
                                         variables) if in_scope else None
                stream.position = entry.seq
                if event is not None:
                    batch.append(event)
                    stream.position_token = event["_id"]
                    passed = None
                elif not before_start:
                    passed = entry
                if in_scope and _invalidates(stream, entry):
                    stream.pending_invalidate = entry
                    break
        finally:
            if passed is not None:
                stream.position_token = encode_token(passed.cluster_time, 0xFFFFFFFF,
                                                     passed.seq, TOKEN_HIGH_WATER_MARK)
    pending = stream.pending_invalidate
    if pending is not None:
        if limit is None or len(batch) < limit:
            invalidate = _invalidate(stream, pending, variables)
            if invalidate is not None:
                batch.append(invalidate)
        return batch
    if not batch and stream.position >= log.last_seq and not _before_start_of_log(stream, log):
        stream.position_token = log.high_water_mark()
    return batch


def _before_start_of_log(stream: ChangeStreamCursor, log: ChangeLog) -> bool:
    """Whether a (future) ``startAtOperationTime`` lies beyond everything in the log."""
    start = stream.start_time
    return start is not None and (log.last_time.time, log.last_time.inc) < (start.time,
                                                                             start.inc)


async def next_batch(stream: ChangeStreamCursor, log: ChangeLog, catalog: Catalog,
                     batch_size: int | None, max_time_ms: int | None,
                     variables: dict[str, Any]) -> list[dict[str, Any]]:
    """A getMore: events now, or wait for a commit up to ``maxTimeMS`` (validated by the
    dispatcher; default 1 s, at most :data:`MAX_AWAIT_MS`)."""
    if not batch_size:
        batch_size = None  # a getMore's batchSize 0 (or none) means "no limit"
    wait_ms = DEFAULT_AWAIT_MS if max_time_ms is None else max_time_ms
    deadline = time.monotonic() + min(max(0, wait_ms), MAX_AWAIT_MS) / 1000
    while True:
        batch = collect(stream, log, catalog, batch_size, variables)
        remaining = deadline - time.monotonic()
        if batch or stream.closed or remaining <= 0:
            return batch
        if stream.position < log.last_seq and stream.pending_invalidate is None:
            await asyncio.sleep(0)  # more backlog to read: let other clients in first
            continue
        await log.wait(remaining)


def cursor_reply(stream: ChangeStreamCursor, batch: list[dict[str, Any]], first: bool,
                 cursor_id: int) -> dict[str, Any]:
    """The aggregate/getMore reply of a change stream, always with ``postBatchResumeToken``."""
    return {
        "cursor": {
            "firstBatch" if first else "nextBatch": batch,
            "postBatchResumeToken": stream.position_token,
            "id": Int64(0 if stream.closed else cursor_id),
            "ns": stream.ns,
        },
        "ok": 1.0,
    }
